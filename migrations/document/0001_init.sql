-- Patchwork's bookkeeping inside every document.
-- commit_seq: incremented by every group commit that changed a table; change events and sync
-- versions are numbered by it, so it survives restarts.
CREATE TABLE _patchwork_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) WITHOUT ROWID, STRICT;
INSERT INTO _patchwork_meta (key, value) VALUES ('commit_seq', 0), ('last_write_at', '');
