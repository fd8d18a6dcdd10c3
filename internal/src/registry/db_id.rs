//! `DbId`: the only way from a URL segment to a document file name.

use std::fmt;
use std::sync::Arc;

use crate::error::ApiError;

/// Longest accepted `db_id`.
pub const MAX_LEN: usize = 128;

/// A validated document id: `^[A-Za-z0-9._-]{1,128}$`, never `.` or `..`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDbId {
    #[error("db_id must not be empty")]
    Empty,
    #[error("db_id is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("db_id may only contain A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadChar,
    #[error("db_id must not be '.' or '..'")]
    Dots,
}

impl DbId {
    pub fn parse(s: &str) -> Result<Self, InvalidDbId> {
        if s.is_empty() {
            return Err(InvalidDbId::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(InvalidDbId::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidDbId::BadChar);
        }
        if s == "." || s == ".." {
            return Err(InvalidDbId::Dots);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document's file name inside `documents/`.
    pub fn file_name(&self) -> String {
        format!("{}.sqlite3", self.0)
    }
}

impl From<InvalidDbId> for ApiError {
    fn from(e: InvalidDbId) -> Self {
        ApiError::bad_request("invalid_db_id", e.to_string())
    }
}

impl fmt::Display for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in [
            "a",
            "chat",
            "A.b_c-9",
            "...",
            ".hidden",
            "a..b",
            &"x".repeat(128),
        ] {
            assert!(DbId::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "x".repeat(129);
        let cases: &[(&str, InvalidDbId)] = &[
            ("", InvalidDbId::Empty),
            (".", InvalidDbId::Dots),
            ("..", InvalidDbId::Dots),
            ("a/b", InvalidDbId::BadChar),
            ("a\\b", InvalidDbId::BadChar),
            ("a b", InvalidDbId::BadChar),
            ("é", InvalidDbId::BadChar),
            ("a\0", InvalidDbId::BadChar),
            ("a%2Fb", InvalidDbId::BadChar),
            (&long, InvalidDbId::TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(DbId::parse(input).unwrap_err(), *want, "{input:?}");
        }
    }

    #[test]
    fn file_name_stays_inside_the_directory() {
        // Any accepted id is one path component: no separator, not `.`/`..`.
        for id in ["a", "...", "a.b"] {
            let name = DbId::parse(id).unwrap().file_name();
            assert_eq!(std::path::Path::new(&name).components().count(), 1);
        }
    }
}
