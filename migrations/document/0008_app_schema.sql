-- Per-document (application) migrations applied through `POST /migrations`: each version once,
-- with the SHA-256 of its SQL, so a changed migration is refused instead of silently skipped.
CREATE TABLE _patchwork_app_migrations (
    version    INTEGER PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

-- Row expiry rules (`PUT /expiry`): rows of `table_name` whose `column_name` time has passed are
-- deleted by the sweep. `format`: how the column holds time (`unix_seconds`, `unix_ms` or
-- `rfc3339` text in UTC).
CREATE TABLE _patchwork_expiry (
    table_name  TEXT NOT NULL,
    column_name TEXT NOT NULL,
    format      TEXT NOT NULL,
    PRIMARY KEY (table_name, column_name)
) WITHOUT ROWID;
