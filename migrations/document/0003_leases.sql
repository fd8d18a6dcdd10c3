-- Leases with fencing tokens. A row is kept after release or expiry (owner NULL) so the fence of
-- a resource only ever grows, across releases, expiries and restarts.
CREATE TABLE _patchwork_leases (
    resource   TEXT PRIMARY KEY NOT NULL,
    owner      TEXT,
    token_hash BLOB,
    fence      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
