//! Embedded, numbered schema migrations for the service database and for every document.
//!
//! Applied once on open inside `BEGIN IMMEDIATE`, recorded in `_patchwork_migrations` (not
//! `PRAGMA user_version`, which belongs to the applications that store their own schema in a
//! document). A database that records a number this binary does not know is refused.

use rusqlite::{Connection, OptionalExtension};

/// One migration file.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Which set of migrations a database gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    Service,
    Document,
}

const SERVICE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../migrations/service/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_retention_documents",
        sql: include_str!("../../migrations/service/0002_retention_documents.sql"),
    },
    Migration {
        version: 3,
        name: "0003_web_sessions",
        sql: include_str!("../../migrations/service/0003_web_sessions.sql"),
    },
    Migration {
        version: 4,
        name: "0004_users",
        sql: include_str!("../../migrations/service/0004_users.sql"),
    },
    Migration {
        version: 5,
        name: "0005_audit",
        sql: include_str!("../../migrations/service/0005_audit.sql"),
    },
    Migration {
        version: 6,
        name: "0006_blobs",
        sql: include_str!("../../migrations/service/0006_blobs.sql"),
    },
    Migration {
        version: 7,
        name: "0007_blob_scans",
        sql: include_str!("../../migrations/service/0007_blob_scans.sql"),
    },
    Migration {
        version: 8,
        name: "0008_blob_parts",
        sql: include_str!("../../migrations/service/0008_blob_parts.sql"),
    },
    Migration {
        version: 9,
        name: "0009_mqtt_sessions",
        sql: include_str!("../../migrations/service/0009_mqtt_sessions.sql"),
    },
    Migration {
        version: 10,
        name: "0010_expiry_documents",
        sql: include_str!("../../migrations/service/0010_expiry_documents.sql"),
    },
    Migration {
        version: 11,
        name: "0011_invites",
        sql: include_str!("../../migrations/service/0011_invites.sql"),
    },
];

const DOCUMENT: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../migrations/document/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_messages",
        sql: include_str!("../../migrations/document/0002_messages.sql"),
    },
    Migration {
        version: 3,
        name: "0003_leases",
        sql: include_str!("../../migrations/document/0003_leases.sql"),
    },
    Migration {
        version: 4,
        name: "0004_webhooks",
        sql: include_str!("../../migrations/document/0004_webhooks.sql"),
    },
    Migration {
        version: 5,
        name: "0005_sync",
        sql: include_str!("../../migrations/document/0005_sync.sql"),
    },
    Migration {
        version: 6,
        name: "0006_blobs",
        sql: include_str!("../../migrations/document/0006_blobs.sql"),
    },
    Migration {
        version: 7,
        name: "0007_retained",
        sql: include_str!("../../migrations/document/0007_retained.sql"),
    },
    Migration {
        version: 8,
        name: "0008_app_schema",
        sql: include_str!("../../migrations/document/0008_app_schema.sql"),
    },
    Migration {
        version: 9,
        name: "0009_messages_by_id",
        sql: include_str!("../../migrations/document/0009_messages_by_id.sql"),
    },
];

impl Schema {
    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Schema::Service => SERVICE,
            Schema::Document => DOCUMENT,
        }
    }

    pub fn latest(self) -> i64 {
        self.migrations().last().map_or(0, |m| m.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); \
         upgrade patchwork instead of downgrading"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("migration {name} failed: {source}")]
    Failed {
        name: &'static str,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

pub(crate) fn current_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("SELECT max(version) FROM _patchwork_migrations", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|v| v.flatten().unwrap_or(0))
}

/// Brings `conn` up to the latest version of `schema`. Idempotent and safe when two connections
/// race on one file: the version is re-read under the write lock.
pub fn apply(conn: &Connection, schema: Schema) -> Result<(), MigrationError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _patchwork_migrations (
             version INTEGER PRIMARY KEY NOT NULL,
             name TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
         )",
    )?;
    let latest = schema.latest();
    let found = current_version(conn)?;
    if found > latest {
        return Err(MigrationError::TooNew {
            found,
            supported: latest,
        });
    }
    if found == latest {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let found = current_version(conn)?;
        if found > latest {
            return Err(MigrationError::TooNew {
                found,
                supported: latest,
            });
        }
        for m in schema.migrations().iter().filter(|m| m.version > found) {
            conn.execute_batch(m.sql)
                .map_err(|source| MigrationError::Failed {
                    name: m.name,
                    source,
                })?;
            conn.execute(
                "INSERT INTO _patchwork_migrations (version, name) VALUES (?1, ?2)",
                (m.version, m.name),
            )?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_applies_to_an_empty_database_and_is_idempotent() {
        for schema in [Schema::Service, Schema::Document] {
            let conn = Connection::open_in_memory().unwrap();
            apply(&conn, schema).unwrap();
            apply(&conn, schema).unwrap();
            assert_eq!(current_version(&conn).unwrap(), schema.latest());
            let versions: Vec<i64> = schema.migrations().iter().map(|m| m.version).collect();
            let mut sorted = versions.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(versions, sorted, "migration numbers must be increasing");
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        apply(&conn, Schema::Document).unwrap();
        conn.execute(
            "INSERT INTO _patchwork_migrations (version, name) VALUES (999, 'future')",
            [],
        )
        .unwrap();
        let err = apply(&conn, Schema::Document).unwrap_err();
        assert!(
            matches!(err, MigrationError::TooNew { found: 999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this binary"));
    }
}
