//! Token storage in `service.db`: plain functions over a connection, used by the server (on the
//! service actor) and by the offline CLI alike.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use time::OffsetDateTime;

use super::scope::{Action, Scope};
use super::token::{self, InstallKey};
use crate::config::Secret;
use crate::time_fmt::rfc3339;

/// A token as stored (no secret, no hash).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenMeta {
    pub id: String,
    pub label: String,
    pub is_admin: bool,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    /// Who made it: a person's subject, `token:{id}`, `cli`, `bootstrap` or `env` (`None` for
    /// tokens made before this was recorded).
    #[schema(required)]
    pub created_by: Option<String>,
    #[schema(required)]
    pub expires_at: Option<String>,
    #[schema(required)]
    pub last_used_at: Option<String>,
    #[schema(required)]
    pub revoked_at: Option<String>,
}

/// A token with its hash, as the authenticator caches it.
#[derive(Debug)]
pub struct TokenRow {
    pub meta: TokenMeta,
    pub hash: [u8; 32],
    pub expires_at: Option<OffsetDateTime>,
    pub revoked: bool,
    /// Unix seconds of the last successful authentication not yet written to `last_used_at`
    /// (0 = nothing pending). Set lock-free on the request path, flushed in batches.
    pub used_at: std::sync::atomic::AtomicI64,
}

/// What a new token should be.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub label: String,
    pub is_admin: bool,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Inserts a token with the given plaintext (hashed here) and returns its metadata.
pub fn insert(
    conn: &Connection,
    key: &InstallKey,
    id: &str,
    plaintext: &str,
    new: &NewToken,
    created_by: &str,
) -> rusqlite::Result<TokenMeta> {
    let now = rfc3339(OffsetDateTime::now_utc());
    let expires = new.expires_at.map(rfc3339);
    conn.execute(
        "INSERT INTO tokens (id, label, hash, is_admin, created_at, expires_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            new.label,
            key.hash(plaintext).as_slice(),
            new.is_admin,
            now,
            expires,
            created_by
        ],
    )?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO token_scopes (token_id, db_id, action, resource_prefix) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for scope in &new.scopes {
        stmt.execute(params![
            id,
            scope.db_id,
            scope.action.as_str(),
            scope.resource_prefix
        ])?;
    }
    Ok(TokenMeta {
        id: id.to_owned(),
        label: new.label.clone(),
        is_admin: new.is_admin,
        scopes: new.scopes.clone(),
        created_at: now,
        created_by: Some(created_by.to_owned()),
        expires_at: expires,
        last_used_at: None,
        revoked_at: None,
    })
}

/// Mints a new token, stores its hash, returns `(metadata, plaintext)`.
pub fn create(
    conn: &Connection,
    key: &InstallKey,
    new: &NewToken,
    created_by: &str,
) -> rusqlite::Result<(TokenMeta, String)> {
    let (id, plaintext) = token::mint();
    let meta = insert(conn, key, &id, &plaintext, new, created_by)?;
    crate::audit::record(
        conn,
        created_by,
        "token.create",
        Some(&id),
        Some(&format!("label {:?}, admin {}", new.label, new.is_admin)),
    )?;
    Ok((meta, plaintext))
}

/// Every token with its scopes, oldest first.
pub fn load_all(conn: &Connection) -> rusqlite::Result<Vec<TokenRow>> {
    let mut scopes_stmt = conn.prepare_cached(
        "SELECT token_id, db_id, action, resource_prefix FROM token_scopes ORDER BY rowid",
    )?;
    let mut scopes: std::collections::HashMap<String, Vec<Scope>> = Default::default();
    let rows = scopes_stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (token_id, db_id, action, resource_prefix) = row?;
        // An action this binary does not know (written by a newer one) grants nothing.
        if let Ok(action) = action.parse::<Action>() {
            scopes.entry(token_id).or_default().push(Scope {
                db_id,
                action,
                resource_prefix,
            });
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, label, hash, is_admin, created_at, expires_at, last_used_at, revoked_at,
                created_by
         FROM tokens ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([], |r| {
        let hash: Vec<u8> = r.get(2)?;
        let expires_at: Option<String> = r.get(5)?;
        let revoked_at: Option<String> = r.get(7)?;
        let id: String = r.get(0)?;
        Ok(TokenRow {
            hash: hash.as_slice().try_into().unwrap_or([0; 32]),
            expires_at: expires_at
                .as_deref()
                .and_then(crate::time_fmt::parse_rfc3339),
            revoked: revoked_at.is_some(),
            used_at: Default::default(),
            meta: TokenMeta {
                label: r.get(1)?,
                is_admin: r.get(3)?,
                created_at: r.get(4)?,
                created_by: r.get(8)?,
                expires_at,
                last_used_at: r.get(6)?,
                revoked_at,
                scopes: Vec::new(),
                id,
            },
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let mut row = row?;
        row.meta.scopes = scopes.remove(&row.meta.id).unwrap_or_default();
        out.push(row);
    }
    Ok(out)
}

/// Marks a token revoked. Returns its label if it existed and was not revoked before.
pub fn revoke(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL RETURNING label",
        params![id, rfc3339(OffsetDateTime::now_utc())],
        |r| r.get(0),
    )
    .optional()
}

/// Records when tokens were last used (batched by the caller).
pub fn touch_last_used(
    conn: &Connection,
    used: &[(String, OffsetDateTime)],
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1")?;
    for (id, at) in used {
        stmt.execute(params![id, rfc3339(*at)])?;
    }
    Ok(())
}

/// First-start bootstrap. On the very first start (no `bootstrapped` marker) creates an admin
/// token and returns its plaintext to print once — unless a live admin token already exists
/// (created offline with `patchwork token create --admin` before the first `serve`). If
/// `env_token` is given it is used instead (and is (re)registered on every start if missing), and
/// nothing is returned for printing.
pub fn bootstrap(
    conn: &Connection,
    key: &InstallKey,
    env_token: Option<&Secret>,
) -> rusqlite::Result<Option<String>> {
    let done: Option<String> = conn
        .query_row(
            "SELECT value FROM _patchwork_meta WHERE key = 'bootstrapped'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let admin = |label: &str| NewToken {
        label: label.to_owned(),
        is_admin: true,
        scopes: Vec::new(),
        expires_at: None,
    };
    let mut to_print = None;
    if let Some(env_token) = env_token {
        let hash = key.hash(env_token.expose());
        let known: Option<String> = conn
            .query_row(
                "SELECT id FROM tokens WHERE hash = ?1",
                [hash.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_none() {
            insert(
                conn,
                key,
                &token::new_id(),
                env_token.expose(),
                &admin("env-admin"),
                "env",
            )?;
        }
    } else if done.is_none() {
        let live_admin: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE is_admin = 1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > ?1))",
            [rfc3339(OffsetDateTime::now_utc())],
            |r| r.get(0),
        )?;
        if !live_admin {
            let (_, plaintext) = create(conn, key, &admin("bootstrap-admin"), "bootstrap")?;
            to_print = Some(plaintext);
        }
    }
    if done.is_none() {
        conn.execute(
            "INSERT INTO _patchwork_meta (key, value) VALUES ('bootstrapped', ?1)",
            [rfc3339(OffsetDateTime::now_utc())],
        )?;
    }
    Ok(to_print)
}
