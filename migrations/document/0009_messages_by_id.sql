-- Retention by age walks messages in id order and stops at the first young one: a publish
-- stamps `created_ms` no earlier than the message before it (`pubsub::sql::insert`), so along
-- ids the times never decrease. The index on `created_ms` only cost every publish a WAL page.
DROP INDEX IF EXISTS _patchwork_messages_created;
