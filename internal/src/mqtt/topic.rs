//! MQTT topic names and filters ↔ a document and one of its durable topics (pure).
//!
//! MQTT's one topic space maps onto Patchwork's per-document topics as `db/{db_id}/{topic}`.
//! A filter names exactly one document: its first two levels are literally `db` and a document
//! id, so `#`, `+/…` and `db/+/…` (filters spanning documents) are refused.

use crate::pubsub::topic::{validate_filter, validate_topic};
use crate::registry::DbId;

const PREFIX: &str = "db/";

/// Splits `db/{db_id}/{rest}` at the document id.
fn split(name: &str) -> Result<(&str, &str), String> {
    let Some(after) = name.strip_prefix(PREFIX) else {
        return Err("MQTT topics are db/{db_id}/{topic}".into());
    };
    after
        .split_once('/')
        .ok_or_else(|| "MQTT topics are db/{db_id}/{topic}".into())
}

fn db_id(id: &str) -> Result<DbId, String> {
    if id.contains(['+', '#']) {
        return Err("a filter may not span documents: the db_id level must be literal".into());
    }
    DbId::parse(id).map_err(|e| e.to_string())
}

/// A published topic name: its document and the document's topic.
pub fn parse_topic(name: &str) -> Result<(DbId, &str), String> {
    let (id, topic) = split(name)?;
    let db = db_id(id)?;
    validate_topic(topic)?;
    Ok((db, topic))
}

/// A subscription filter: its document and the filter within the document.
pub fn parse_filter(filter: &str) -> Result<(DbId, &str), String> {
    if filter.starts_with("$share/") {
        return Err("shared subscriptions are not supported".into());
    }
    let (id, rest) = split(filter)?;
    let db = db_id(id)?;
    validate_filter(rest)?;
    Ok((db, rest))
}

/// The MQTT topic name of a document's message.
pub fn mqtt_name(db: &DbId, topic: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + db.as_str().len() + 1 + topic.len());
    out.push_str(PREFIX);
    out.push_str(db.as_str());
    out.push('/');
    out.push_str(topic);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_one_document() {
        let (db, t) = parse_topic("db/chat-1/rooms/a").unwrap();
        assert_eq!((db.as_str(), t), ("chat-1", "rooms/a"));
        assert_eq!(mqtt_name(&db, t), "db/chat-1/rooms/a");
        for bad in [
            "",
            "db",
            "db/",
            "db/x",
            "db/x/",
            "dbx/a/b",
            "db/x/a/+",
            "db/x/#",
            "db//t",
            "other/x/t",
        ] {
            assert!(parse_topic(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn filters_never_span_documents() {
        assert_eq!(parse_filter("db/d/#").unwrap().1, "#");
        assert_eq!(parse_filter("db/d/a/+/c").unwrap().1, "a/+/c");
        for bad in [
            "#",
            "+/d/#",
            "db/#",
            "db/+/#",
            "db/+/t",
            "db/d#/t",
            "db/d",
            "$share/g/db/d/t",
            "db/d/a#",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
