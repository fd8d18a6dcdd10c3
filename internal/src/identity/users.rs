//! People and the documents they own, in `service.db` (`users`, `document_owners`). Ownership is
//! also kept in memory, since every request from a non-admin session asks for it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::params;
use time::OffsetDateTime;

use crate::auth::{Action, Scope, TokenMeta, TokenRow};
use crate::registry::{DocError, DocHandle};
use crate::time_fmt::rfc3339;

/// Who signed in, as the ID token says.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub is_admin: bool,
}

/// Inserts or updates a user at login (`is_admin` as evaluated now).
pub async fn upsert(service: &DocHandle, user: SignedIn) -> Result<(), DocError> {
    service
        .write(move |conn| {
            let now = rfc3339(OffsetDateTime::now_utc());
            conn.execute(
                "INSERT INTO users (subject, name, email, is_admin, created_at, last_login_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (subject) DO UPDATE SET name = ?2, email = ?3, is_admin = ?4,
                     last_login_at = ?5",
                params![user.subject, user.name, user.email, user.is_admin, now],
            )?;
            Ok(())
        })
        .await
}

/// `db_id` → owner subject, mirrored from `document_owners`.
#[derive(Default)]
pub struct Owners {
    by_db: RwLock<HashMap<String, String>>,
}

impl Owners {
    pub async fn load(service: &DocHandle) -> Result<Arc<Self>, DocError> {
        let rows: Vec<(String, String)> = service
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT db_id, owner FROM document_owners")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        Ok(Arc::new(Self {
            by_db: RwLock::new(rows.into_iter().collect()),
        }))
    }

    pub fn owner(&self, db_id: &str) -> Option<String> {
        self.by_db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(db_id)
            .cloned()
    }

    /// The documents `subject` owns.
    pub fn owned_by(&self, subject: &str) -> Vec<String> {
        self.by_db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, owner)| owner.as_str() == subject)
            .map(|(db, _)| db.clone())
            .collect()
    }

    /// Makes `subject` the owner of `db_id` unless someone already owns it; whether `subject`
    /// owns it now.
    pub async fn claim(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
    ) -> Result<bool, DocError> {
        let (db, who) = (db_id.to_owned(), subject.to_owned());
        let owner: String = service
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO document_owners (db_id, owner, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (db_id) DO NOTHING",
                    params![db, who, rfc3339(OffsetDateTime::now_utc())],
                )?;
                Ok(conn.query_row(
                    "SELECT owner FROM document_owners WHERE db_id = ?1",
                    [&db],
                    |r| r.get(0),
                )?)
            })
            .await?;
        let owns = owner == subject;
        self.by_db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db_id.to_owned(), owner);
        Ok(owns)
    }
}

impl Owners {
    /// Takes back `subject`'s claim on `db_id` (the claim did not lead to a new document).
    pub async fn unclaim(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
    ) -> Result<(), DocError> {
        let (db, who) = (db_id.to_owned(), subject.to_owned());
        service
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM document_owners WHERE db_id = ?1 AND owner = ?2",
                    params![db, who],
                )?;
                Ok(())
            })
            .await?;
        let mut map = self.by_db.write().unwrap_or_else(|p| p.into_inner());
        if map.get(db_id).is_some_and(|o| o == subject) {
            map.remove(db_id);
        }
        Ok(())
    }
}

/// The principal a signed-in person acts as on the one authorization path: an admin passes
/// every check; anyone else holds every action on the documents they own, and nothing else.
pub fn principal_row(
    subject: &str,
    name: Option<&str>,
    is_admin: bool,
    owners: &Owners,
) -> TokenRow {
    let scopes = if is_admin {
        Vec::new()
    } else {
        owners
            .owned_by(subject)
            .into_iter()
            .flat_map(|db_id| {
                Action::ALL.iter().map(move |&action| Scope {
                    db_id: db_id.clone(),
                    action,
                    resource_prefix: None,
                })
            })
            .collect()
    };
    TokenRow {
        meta: TokenMeta {
            id: format!("user:{subject}"),
            label: name.unwrap_or(subject).to_owned(),
            is_admin,
            scopes,
            created_at: String::new(),
            created_by: None,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        },
        hash: [0; 32],
        expires_at: None,
        revoked: false,
        used_at: Default::default(),
    }
}
