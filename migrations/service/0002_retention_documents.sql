-- Documents that have message retention rules, so the sweep visits only those.
CREATE TABLE retention_documents (
    db_id TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
