-- Persistent MQTT sessions (clean session off / clean start with a session expiry): what a
-- client subscribed to and how far it got in each document, so a reconnect, even after a
-- server restart, resumes where it left off. Keyed by token and client id: a client id names a
-- session only within the token that made it, so one token can neither resume nor end another's.
--   state: JSON {"subscriptions": [{"db_id", "filter", "qos"}], "cursors": {db_id: last_id},
--          "qos2": [packet ids received at QoS 2 and not yet released]}
--   disconnected_at: unix seconds, NULL while a connection holds the session.
CREATE TABLE mqtt_sessions (
    token_id        TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    state           TEXT NOT NULL,
    expiry_secs     INTEGER NOT NULL,
    disconnected_at INTEGER,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (token_id, client_id)
) WITHOUT ROWID;
