//! Actions and scopes (pure): what a token may do, on which document, under which resource
//! prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! actions {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every action of the contract. Actions are independent: none implies another.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action { $($variant),* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Action::$variant => $name),* }
            }
        }

        impl FromStr for Action {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Action::$variant),)*
                    other => Err(format!("unknown action {other:?}")),
                }
            }
        }
    };
}

actions! {
    QueryRead => "query.read",
    QueryWrite => "query.write",
    QueryAdmin => "query.admin",
    PubPublish => "pub.publish",
    PubSubscribe => "pub.subscribe",
    StreamRead => "stream.read",
    StreamWrite => "stream.write",
    WebhookIngest => "webhook.ingest",
    LeaseAcquire => "lease.acquire",
    LeaseRenew => "lease.renew",
    LeaseRelease => "lease.release",
    BlobUpload => "blob.upload",
    BlobRead => "blob.read",
    BlobClaim => "blob.claim",
    BlobRelease => "blob.release",
    BlobPublish => "blob.publish",
    AdminToken => "admin.token",
    SyncRead => "sync.read",
    SyncWrite => "sync.write",
    PresenceWrite => "presence.write",
    PresenceRead => "presence.read",
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// In the OpenAPI document: one of the action names, listed from [`Action::ALL`] so the schema
/// cannot fall behind the enum.
impl utoipa::PartialSchema for Action {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Action::ALL.iter().map(|a| a.as_str())))
            .description(Some("An action a scope grants; none implies another."))
            .into()
    }
}

impl utoipa::ToSchema for Action {}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One grant: `action` on `db_id` (or every document with `*`), optionally only for resources
/// starting with `resource_prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub db_id: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_prefix: Option<String>,
}

impl Scope {
    /// Whether this scope covers `action` on `db_id` (the resource is checked separately).
    pub fn covers(&self, db_id: &str, action: Action) -> bool {
        self.action == action && (self.db_id == "*" || self.db_id == db_id)
    }
}
