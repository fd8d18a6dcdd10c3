-- Documents that have row-expiry rules, so the expiry sweep visits only those.
CREATE TABLE expiry_documents (
    db_id TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
