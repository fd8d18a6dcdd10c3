//! The keys that sign invite links, in `service.db` (`invite_keys`), each sealed with a key
//! derived from the install key. The newest (highest `kid`) signs; it and the one before are
//! accepted. [`rotate`] (the offline `patchwork keys rotate`) adds a new newest key and drops
//! the ones before the previous: links they signed stop working.

use rusqlite::{Connection, params};

use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks::SecretBox;

/// The context the sealing key is derived under.
pub const SEAL_CONTEXT: &str = "patchwork 2026 invite keys v1";

fn sealer(install: &crate::auth::InstallKey) -> SecretBox {
    SecretBox::new(install.derive(SEAL_CONTEXT))
}

/// The accepted keys, newest first (at most two).
fn load(conn: &Connection, sealer: &SecretBox) -> rusqlite::Result<Vec<(i64, [u8; 32])>> {
    let mut stmt =
        conn.prepare_cached("SELECT kid, sealed FROM invite_keys ORDER BY kid DESC LIMIT 2")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (kid, sealed) = row?;
        // A key sealed under another install key (a copied service.db) is unusable: skipped.
        if let Some(key) = sealer
            .open(&sealed)
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
        {
            out.push((kid, key));
        }
    }
    Ok(out)
}

/// Adds a new newest key and deletes all but it and the previous one, in one transaction
/// (the offline CLI); its `kid`.
pub fn rotate(conn: &Connection, install: &crate::auth::InstallKey) -> anyhow::Result<i64> {
    let tx = conn.unchecked_transaction()?;
    let kid = rotate_in(&tx, install)?;
    tx.commit()?;
    Ok(kid)
}

/// [`rotate`] inside the caller's transaction (the server's actor write).
fn rotate_in(conn: &Connection, install: &crate::auth::InstallKey) -> anyhow::Result<i64> {
    let sealer = sealer(install);
    let key: [u8; 32] = rand::random();
    let sealed = sealer
        .seal(&key)
        .map_err(|e| anyhow::anyhow!("sealing the key: {}", e.message))?;
    let kid: i64 = conn.query_row(
        "SELECT coalesce(max(kid), 0) + 1 FROM invite_keys",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO invite_keys (kid, sealed, created_at) VALUES (?1, ?2, ?3)",
        params![
            kid,
            sealed,
            crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc())
        ],
    )?;
    conn.execute("DELETE FROM invite_keys WHERE kid < ?1", [kid - 1])?;
    Ok(kid)
}

/// The keys a redemption may be signed with (read each time: `patchwork keys rotate` may
/// have run meanwhile).
pub async fn accepted(state: &AppState) -> Result<Vec<(i64, [u8; 32])>, ApiError> {
    let sealer = sealer(&state.install_key);
    Ok(state.service.read(move |c| Ok(load(c, &sealer)?)).await?)
}

/// The key that signs new links, made on first use.
pub async fn current(state: &AppState) -> Result<(i64, [u8; 32]), ApiError> {
    if let Some(first) = accepted(state).await?.into_iter().next() {
        return Ok(first);
    }
    let install = state.install_key.clone();
    let sealer = sealer(&state.install_key);
    state
        .service
        .write(move |c| {
            // Another request may have made it meanwhile.
            if load(c, &sealer)?.is_empty() {
                rotate_in(c, &install).map_err(|e| ApiError::internal(e.to_string()))?;
            }
            Ok(())
        })
        .await?;
    accepted(state)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("no invite key after creating one"))
}
