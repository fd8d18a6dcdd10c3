//! The contract's value encoding between JSON and SQLite: null, numbers, text, booleans (stored
//! 0/1), `{"$base64": "..."}` BLOBs, and `{"$int": "digits"}` for integers beyond ±2^53.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rusqlite::types::{Value as Sql, ValueRef};
use serde_json::{Map, Value as Json};

/// Largest integer a JSON double represents exactly.
const SAFE: i64 = 1 << 53;

pub fn from_json(v: &Json) -> Result<Sql, String> {
    Ok(match v {
        Json::Null => Sql::Null,
        Json::Bool(b) => Sql::Integer(i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None if n.is_u64() => return Err(format!("integer {n} is out of range")),
            None => Sql::Real(
                n.as_f64()
                    .ok_or_else(|| format!("number {n} is not representable"))?,
            ),
        },
        Json::String(s) => Sql::Text(s.clone()),
        Json::Object(map) if map.len() == 1 => {
            if let Some(Json::String(b)) = map.get("$base64") {
                Sql::Blob(B64.decode(b).map_err(|e| format!("invalid $base64: {e}"))?)
            } else if let Some(Json::String(digits)) = map.get("$int") {
                Sql::Integer(
                    digits
                        .parse()
                        .map_err(|_| format!("invalid $int {digits:?}"))?,
                )
            } else {
                return Err("objects must be {\"$base64\": ...} or {\"$int\": ...}".into());
            }
        }
        Json::Object(_) | Json::Array(_) => {
            return Err(
                "arguments must be null, numbers, strings, booleans, {\"$base64\"} or {\"$int\"}"
                    .into(),
            );
        }
    })
}

/// A SQLite value serialized exactly as [`to_json`] would make it, without building the
/// `serde_json::Value` (results are written straight to their bytes).
pub struct Cell<'a>(pub ValueRef<'a>);

impl serde::Serialize for Cell<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            ValueRef::Null => s.serialize_unit(),
            ValueRef::Integer(i) if (-SAFE..=SAFE).contains(&i) => s.serialize_i64(i),
            ValueRef::Integer(i) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$int", &i.to_string())?;
                m.end()
            }
            ValueRef::Real(f) if f.is_finite() => s.serialize_f64(f),
            ValueRef::Real(_) => s.serialize_unit(),
            ValueRef::Text(t) => s.serialize_str(&String::from_utf8_lossy(t)),
            ValueRef::Blob(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$base64", &B64.encode(b))?;
                m.end()
            }
        }
    }
}

pub fn to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) if (-SAFE..=SAFE).contains(&i) => Json::from(i),
        ValueRef::Integer(i) => {
            let mut m = Map::new();
            m.insert("$int".into(), Json::String(i.to_string()));
            Json::Object(m)
        }
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        ValueRef::Text(t) => Json::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            let mut m = Map::new();
            m.insert("$base64".into(), Json::String(B64.encode(b)));
            Json::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_serialize_as_to_json_makes_them() {
        let values = [
            ValueRef::Null,
            ValueRef::Integer(0),
            ValueRef::Integer(-42),
            ValueRef::Integer(SAFE),
            ValueRef::Integer(SAFE + 1),
            ValueRef::Integer(i64::MIN),
            ValueRef::Real(2.5),
            ValueRef::Real(-0.0),
            ValueRef::Real(1e300),
            ValueRef::Real(f64::NAN),
            ValueRef::Real(f64::INFINITY),
            ValueRef::Text(b"plain \"quoted\" \n\x01"),
            ValueRef::Text(b"\xff\xfe not utf-8"),
            ValueRef::Blob(b"\x00\x01\x02"),
        ];
        for v in values {
            assert_eq!(
                serde_json::to_string(&Cell(v)).unwrap(),
                serde_json::to_string(&to_json(v)).unwrap(),
                "{v:?}"
            );
        }
    }

    #[test]
    fn round_trips() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for v in [
            json!(null),
            json!(42),
            json!(-7),
            json!(1.5),
            json!("héllo"),
            json!({"$base64": "AAEC/w=="}),
            json!({"$int": "9007199254740993"}),
            json!({"$int": "-9223372036854775808"}),
            json!(9007199254740992i64),
        ] {
            let sql = from_json(&v).unwrap();
            let back: Json = conn
                .query_row("SELECT ?1", [&sql], |r| Ok(to_json(r.get_ref(0)?)))
                .unwrap();
            assert_eq!(back, v);
        }
        assert_eq!(from_json(&json!(true)).unwrap(), Sql::Integer(1));
        assert!(from_json(&json!({"$int": "12x"})).is_err());
        assert!(from_json(&json!({"$base64": "!!"})).is_err());
        assert!(from_json(&json!([1])).is_err());
        assert!(from_json(&json!({"a": 1})).is_err());
        assert!(from_json(&json!(18446744073709551615u64)).is_err());
    }
}
