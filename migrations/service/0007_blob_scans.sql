-- When blob GC last read a document's `blobs` table into the `blob_refs` index (Unix ms). A
-- document whose files changed since is read again; the others are not opened.
CREATE TABLE blob_scans (
    db_id      TEXT PRIMARY KEY NOT NULL,
    scanned_ms INTEGER NOT NULL
) WITHOUT ROWID;
