-- Sync: one changeset (SQLite session extension) per committed write transaction that changed
-- user tables, under the commit's version (the document's commit_seq). A changeset larger than
-- one value may be is kept in parts. Pruned by count and age (whichever keeps more).
CREATE TABLE _patchwork_sync_changes (
    version    INTEGER NOT NULL,
    part       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,   -- Unix seconds
    changeset  BLOB NOT NULL,
    PRIMARY KEY (version, part)
) WITHOUT ROWID;

-- `since` values below this cannot be served (pruned, or older than the change log itself):
-- the client takes a snapshot instead.
INSERT INTO _patchwork_meta (key, value)
    SELECT 'sync_since', value FROM _patchwork_meta WHERE key = 'commit_seq';
