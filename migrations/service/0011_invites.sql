-- Invite links (`POST /invites`): the HMAC keys that sign them (sealed with a key derived from
-- the install key; the two newest are accepted, `patchwork keys rotate` adds one and drops the
-- one before the previous), and each invite's redemptions (for `max_uses`, and revocation).
CREATE TABLE invite_keys (
    kid        INTEGER PRIMARY KEY NOT NULL,
    sealed     BLOB NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE invites (
    id         TEXT PRIMARY KEY NOT NULL,
    db_id      TEXT NOT NULL,
    room       TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,   -- Unix seconds
    max_uses   INTEGER,
    uses       INTEGER NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX invites_db ON invites (db_id);

-- People who joined a document through an invite from their web session: their grants on it
-- (JSON list of {action, resource_prefix?}), listed and revoked by the document's owner.
CREATE TABLE document_members (
    db_id      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    name       TEXT,
    scopes     TEXT NOT NULL,
    invite_id  TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (db_id, subject)
) WITHOUT ROWID;
CREATE INDEX document_members_subject ON document_members (subject);
