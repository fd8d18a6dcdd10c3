-- Control plane: install metadata, machine tokens and their scopes.
CREATE TABLE _patchwork_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- A machine token. The plaintext is never stored: `hash` is the keyed BLAKE3 hash of the whole
-- token string under the install key (`secret.key` in the data dir).
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    label        TEXT NOT NULL,
    hash         BLOB NOT NULL UNIQUE,
    is_admin     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE token_scopes (
    token_id        TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    db_id           TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource_prefix TEXT
);
CREATE INDEX token_scopes_token ON token_scopes(token_id);
