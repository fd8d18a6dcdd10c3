//! People and the documents they own, in `service.db` (`users`, `document_owners`). Ownership is
//! also kept in memory, since every request from a non-admin session asks for it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::{OptionalExtension, params};
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

/// `db_id` → owner subject, mirrored from `document_owners`; and the grants people hold on
/// documents they joined by invite (`document_members`), by subject.
pub struct Owners {
    by_db: RwLock<HashMap<String, String>>,
    members: RwLock<HashMap<String, Vec<Scope>>>,
    /// Announces every change of a member's grants (after the in-memory copy is updated), so
    /// open streams re-check theirs at once ([`Owners::grant_changes`]).
    changes: tokio::sync::broadcast::Sender<Arc<GrantChange>>,
}

impl Default for Owners {
    fn default() -> Self {
        Self {
            by_db: Default::default(),
            members: Default::default(),
            changes: tokio::sync::broadcast::channel(GRANT_CHANGES).0,
        }
    }
}

/// Grant changes a lagging listener may fall behind by before it re-checks unconditionally.
const GRANT_CHANGES: usize = 256;

/// `subject`'s grants on `db_id` changed (joined, changed, or ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantChange {
    pub db_id: String,
    pub subject: String,
}

/// One member of a document (joined through an invite from a web session).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Member {
    pub subject: String,
    pub name: Option<String>,
    pub scopes: Vec<crate::invites::Grant>,
    pub invite_id: Option<String>,
    pub created_at: String,
}

/// A `document_members` row (`subject, name, scopes, invite_id, created_at`) as a [`Member`].
fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    let scopes: String = r.get(2)?;
    Ok(Member {
        subject: r.get(0)?,
        name: r.get(1)?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        invite_id: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn member_scopes(rows: &[(String, String, String)]) -> HashMap<String, Vec<Scope>> {
    let mut out: HashMap<String, Vec<Scope>> = HashMap::new();
    for (db_id, subject, scopes) in rows {
        let grants: Vec<crate::invites::Grant> = serde_json::from_str(scopes).unwrap_or_default();
        out.entry(subject.clone())
            .or_default()
            .extend(grants.into_iter().map(|g| g.scope(db_id)));
    }
    out
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
        let members = Self::load_members(service).await?;
        Ok(Arc::new(Self {
            by_db: RwLock::new(rows.into_iter().collect()),
            members: RwLock::new(members),
            ..Self::default()
        }))
    }

    async fn load_members(service: &DocHandle) -> Result<HashMap<String, Vec<Scope>>, DocError> {
        let rows: Vec<(String, String, String)> = service
            .read(|conn| {
                let mut stmt =
                    conn.prepare("SELECT db_id, subject, scopes FROM document_members")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        Ok(member_scopes(&rows))
    }

    /// Re-reads the members and announces that `subject`'s grants on `db_id` changed.
    async fn reload_members(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
    ) -> Result<(), DocError> {
        let members = Self::load_members(service).await?;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        // After the swap: a listener woken by this sees the new grants. No listener: no error.
        let _ = self.changes.send(Arc::new(GrantChange {
            db_id: db_id.to_owned(),
            subject: subject.to_owned(),
        }));
        Ok(())
    }

    /// Every later change of a member's grants (`Lagged` when more than 256 came at once: then
    /// re-check whatever you hold). Long-lived streams of a person select on it
    /// ([`crate::auth::Authorized::invalidated`]).
    pub fn grant_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<GrantChange>> {
        self.changes.subscribe()
    }

    /// The grants `subject` holds as a member of other people's documents.
    pub fn member_scopes(&self, subject: &str) -> Vec<Scope> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// Makes `subject` a member of `db_id` with `grants` (replacing earlier grants there).
    pub async fn add_member(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
        name: Option<&str>,
        grants: &[crate::invites::Grant],
        invite_id: &str,
    ) -> Result<serde_json::Value, DocError> {
        let (db, who, name, invite) = (
            db_id.to_owned(),
            subject.to_owned(),
            name.map(str::to_owned),
            invite_id.to_owned(),
        );
        let scopes = serde_json::to_string(grants).unwrap_or_else(|_| "[]".into());
        // An invite admits a person once: an existing member keeps the grants the owner set
        // (redeeming a link again must not undo a downgrade made with `PATCH /members`).
        let (now, added) = service
            .write(move |conn| {
                let added = conn.execute(
                    "INSERT INTO document_members (db_id, subject, name, scopes, invite_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (db_id, subject) DO NOTHING",
                    params![db, who, name, scopes, invite, rfc3339(OffsetDateTime::now_utc())],
                )? == 1;
                let now: String = conn.query_row(
                    "SELECT scopes FROM document_members WHERE db_id = ?1 AND subject = ?2",
                    params![db, who],
                    |r| r.get(0),
                )?;
                Ok((now, added))
            })
            .await?;
        if added {
            self.reload_members(service, db_id, subject).await?;
        }
        Ok(serde_json::from_str(&now).unwrap_or(serde_json::Value::Null))
    }

    /// Replaces the grants of `subject`, a member of `db_id`: the member as it is now, with
    /// whether the grants changed, or `None` when `subject` is not a member there.
    pub async fn set_member_scopes(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
        grants: &[crate::invites::Grant],
    ) -> Result<Option<(Member, bool)>, DocError> {
        let (db, who) = (db_id.to_owned(), subject.to_owned());
        let scopes = serde_json::to_string(grants).unwrap_or_else(|_| "[]".into());
        let updated = service
            .write(move |conn| {
                let before: Option<String> = conn
                    .query_row(
                        "SELECT scopes FROM document_members WHERE db_id = ?1 AND subject = ?2",
                        params![db, who],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(before) = before else {
                    return Ok(None);
                };
                conn.execute(
                    "UPDATE document_members SET scopes = ?3 WHERE db_id = ?1 AND subject = ?2",
                    params![db, who, scopes],
                )?;
                let member = conn.query_row(
                    "SELECT subject, name, scopes, invite_id, created_at FROM document_members
                     WHERE db_id = ?1 AND subject = ?2",
                    params![db, who],
                    member_row,
                )?;
                let before: Vec<crate::invites::Grant> =
                    serde_json::from_str(&before).unwrap_or_default();
                let changed = before != member.scopes;
                Ok(Some((member, changed)))
            })
            .await?;
        if updated.is_some() {
            self.reload_members(service, db_id, subject).await?;
        }
        Ok(updated)
    }

    /// Ends `subject`'s membership of `db_id` (at once: scopes are read per request); whether
    /// there was one.
    pub async fn remove_member(
        &self,
        service: &DocHandle,
        db_id: &str,
        subject: &str,
    ) -> Result<bool, DocError> {
        let (db, who) = (db_id.to_owned(), subject.to_owned());
        let removed = service
            .write(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM document_members WHERE db_id = ?1 AND subject = ?2",
                    params![db, who],
                )? > 0)
            })
            .await?;
        if removed {
            self.reload_members(service, db_id, subject).await?;
        }
        Ok(removed)
    }

    /// The members of `db_id`.
    pub async fn members_of(service: &DocHandle, db_id: &str) -> Result<Vec<Member>, DocError> {
        let db = db_id.to_owned();
        service
            .read(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT subject, name, scopes, invite_id, created_at FROM document_members
                     WHERE db_id = ?1 ORDER BY created_at, subject",
                )?;
                let rows = stmt.query_map([&db], member_row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
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
        let mut scopes: Vec<Scope> = owners
            .owned_by(subject)
            .into_iter()
            .flat_map(|db_id| {
                Action::ALL.iter().map(move |&action| Scope {
                    db_id: db_id.clone(),
                    action,
                    resource_prefix: None,
                })
            })
            .collect();
        // And what they were granted as members of others' documents.
        scopes.extend(owners.member_scopes(subject));
        scopes
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
