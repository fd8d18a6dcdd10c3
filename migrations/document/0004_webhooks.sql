-- Webhook inbox. User-visible (the contract names it); ingest inserts with an explicit column
-- list, so columns users add (with defaults) never break it.
CREATE TABLE webhook_inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    method          TEXT NOT NULL,
    query_string    TEXT NOT NULL,
    headers_json    TEXT NOT NULL,
    content_type    TEXT,
    payload         BLOB NOT NULL,
    signature_valid INTEGER,
    delivery_id     TEXT
);
CREATE INDEX webhook_inbox_endpoint ON webhook_inbox (endpoint, id);

-- Per-endpoint signature checks; the secret is encrypted with a key derived from the install key.
CREATE TABLE _patchwork_webhook_config (
    endpoint         TEXT PRIMARY KEY NOT NULL,
    scheme           TEXT NOT NULL,
    secret_enc       BLOB NOT NULL,
    enforce          INTEGER NOT NULL DEFAULT 0,
    signature_header TEXT,
    publish_topic    TEXT
) WITHOUT ROWID;
