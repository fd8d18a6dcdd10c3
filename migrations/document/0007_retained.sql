-- Retained messages (MQTT adapter, and `"retain": true` on `POST /messages`): the last retained
-- message of each topic, kept apart from `_patchwork_messages` so that retention sweeps, which
-- delete old messages, never drop a topic's retained state. An empty retained payload deletes
-- the topic's row.
CREATE TABLE _patchwork_retained (
    topic        TEXT PRIMARY KEY NOT NULL,
    message_id   INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_ms   INTEGER NOT NULL,
    producer     TEXT
) WITHOUT ROWID;
