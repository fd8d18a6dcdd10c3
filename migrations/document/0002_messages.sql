-- Durable pub/sub messages. AUTOINCREMENT: ids are never reused, even after retention deletes
-- the newest rows, so `since_id` cursors stay valid.
CREATE TABLE _patchwork_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT NOT NULL,
    content_type TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_ms   INTEGER NOT NULL,
    producer     TEXT,
    dedupe_key   TEXT
);
CREATE UNIQUE INDEX _patchwork_messages_dedupe
    ON _patchwork_messages (topic, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX _patchwork_messages_created ON _patchwork_messages (created_ms);

-- Retention rules (`PUT /messages/retention`); no rule = keep forever.
CREATE TABLE _patchwork_retention (
    topic_filter    TEXT PRIMARY KEY NOT NULL,
    max_age_seconds INTEGER,
    max_messages    INTEGER
) WITHOUT ROWID;
