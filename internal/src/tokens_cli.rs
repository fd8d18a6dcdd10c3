//! Token administration that works offline against a data dir (the `patchwork token ...` CLI).
//! It opens `service.db` directly; a running server picks the change up within a second.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

use crate::auth::{InstallKey, NewToken, TokenMeta, sql};
use crate::config::Synchronous;
use crate::migrations::Schema;
use crate::sqlite::{self, OpenOptions};

fn open(data_dir: &Path) -> anyhow::Result<(Connection, InstallKey)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let key = InstallKey::load_or_create(data_dir)?;
    let path = data_dir.join("service.db");
    let conn = sqlite::open(
        &path,
        Schema::Service,
        OpenOptions {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(10),
            max_value_bytes: 16 << 20,
            wal_autocheckpoint: sqlite::DEFAULT_WAL_AUTOCHECKPOINT,
        },
    )
    .with_context(|| format!("opening {}", path.display()))?;
    Ok((conn, key))
}

/// Creates a token; returns its metadata and the plaintext (shown once).
pub fn create(data_dir: &Path, new: &NewToken) -> anyhow::Result<(TokenMeta, String)> {
    let (conn, key) = open(data_dir)?;
    let created = sql::create(&conn, &key, new, "cli")?;
    tracing::info!(token_id = %created.0.id, label = %created.0.label, "audit: token created (cli)");
    Ok(created)
}

/// Every token's metadata.
pub fn list(data_dir: &Path) -> anyhow::Result<Vec<TokenMeta>> {
    let (conn, _) = open(data_dir)?;
    Ok(sql::load_all(&conn)?.into_iter().map(|r| r.meta).collect())
}

/// Revokes `id`; `false` if there is no such live token.
pub fn revoke(data_dir: &Path, id: &str) -> anyhow::Result<bool> {
    let (conn, _) = open(data_dir)?;
    let label = sql::revoke(&conn, id)?;
    if label.is_some() {
        crate::audit::record(&conn, "cli", "token.revoke", Some(id), None)?;
    }
    if let Some(label) = &label {
        tracing::info!(token_id = %id, label = %label, "audit: token revoked (cli)");
    }
    Ok(label.is_some())
}

/// Rotates the invite signing keys (`patchwork keys rotate`); the new key's id.
pub fn rotate_invite_key(data_dir: &Path) -> anyhow::Result<i64> {
    let (conn, key) = open(data_dir)?;
    let kid = crate::invites::keys::rotate(&conn, &key)?;
    crate::audit::record(
        &conn,
        "cli",
        "invite_key.rotate",
        Some(&kid.to_string()),
        None,
    )?;
    tracing::info!(kid, "audit: invite key rotated (cli)");
    Ok(kid)
}
