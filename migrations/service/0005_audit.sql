-- Who made a token: a person's subject, `token:{id}` for a token, `cli`, `bootstrap`, `env`.
ALTER TABLE tokens ADD COLUMN created_by TEXT;

-- What admins can read back: sign-ins and sign-outs, token and document changes, webhook
-- configuration changes. `actor` is a subject, `token:{id}` or a system name.
CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
