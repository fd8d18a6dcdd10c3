-- People who signed in through OIDC. `is_admin` is re-evaluated at every login from the admin
-- subjects / admin claim settings.
CREATE TABLE users (
    subject       TEXT PRIMARY KEY NOT NULL,
    name          TEXT,
    email         TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    last_login_at TEXT NOT NULL
) WITHOUT ROWID;

-- The user who created a document from a web session owns it; documents created otherwise have
-- no row here (only admins and tokens reach them).
CREATE TABLE document_owners (
    db_id      TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL REFERENCES users(subject),
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX document_owners_owner ON document_owners(owner);
