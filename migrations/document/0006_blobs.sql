-- Blobs this document references (issue 13). `blobs` is user-visible (the contract names it, and
-- SQL may write it): a row keeps the blob. `IF NOT EXISTS`: a document that already had its own
-- `blobs` table keeps it (Patchwork writes it with an explicit column list).
CREATE TABLE IF NOT EXISTS blobs (
    hash         TEXT PRIMARY KEY NOT NULL,
    size         INTEGER,
    content_type TEXT,
    created_at   TEXT
);

-- Expiring claims (uploads claim what they complete; `POST /blobs/{hash}/claim`).
CREATE TABLE _patchwork_blob_claims (
    hash     TEXT PRIMARY KEY NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Published blobs: served to anyone at `/o/{hash}`.
CREATE TABLE _patchwork_blob_published (
    hash         TEXT PRIMARY KEY NOT NULL,
    published_at TEXT NOT NULL
) WITHOUT ROWID;
