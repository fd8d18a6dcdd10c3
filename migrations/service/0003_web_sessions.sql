-- Web sessions (tower-sessions records). The session id is the cookie's secret, so only its
-- keyed BLAKE3 hash is stored (as for tokens). `data` is the record's JSON map; `expires_at`
-- is Unix seconds (idle expiry, moved forward when the session is saved), swept periodically.
CREATE TABLE sessions (
    id_hash    BLOB PRIMARY KEY NOT NULL,
    data       TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_expiry ON sessions(expires_at);
