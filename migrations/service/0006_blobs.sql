-- Blob control plane (issue 13). The bytes live in the object store (`{data_dir}/blobs/` for the
-- local store); these tables say what is there and who references it.

-- Uploads in progress: `init-upload` made the row, the signed `PUT` writes the staging object
-- `staging/{blob_id}`, `complete-upload` verifies it and deletes the row.
CREATE TABLE blob_uploads (
    blob_id      TEXT PRIMARY KEY NOT NULL,
    db_id        TEXT NOT NULL,
    hash         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blob_uploads_hash ON blob_uploads (hash, expires_ms);

-- Complete (verified) objects, at `objects/{hash[0..2]}/{hash}`.
CREATE TABLE blob_objects (
    hash         TEXT PRIMARY KEY NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT,
    completed_at TEXT NOT NULL,
    completed_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Which document references which object, mirrored from the documents' own tables whenever a
-- reference is made or dropped through the API (GC reads this instead of opening documents).
-- A reference is added here before the document and removed after it, so a crash in between
-- leaves an extra reference (an object kept longer), never a missing one.
CREATE TABLE blob_refs (
    hash             TEXT NOT NULL,
    db_id            TEXT NOT NULL,
    kept             INTEGER NOT NULL DEFAULT 0,
    claimed_until_ms INTEGER NOT NULL DEFAULT 0,
    published        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hash, db_id)
) WITHOUT ROWID;
CREATE INDEX blob_refs_db ON blob_refs (db_id);
