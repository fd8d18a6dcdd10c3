//! `POST /sync/changes?on_conflict=abort|server_wins|client_wins` (`sync.write`): a client's
//! changeset applied as one write of the next group commit, so it gets a version, reaches
//! watches, subscribers and sync streams, and is checked against `Patch-Fence` like any write.
//!
//! Conflicts (SQLite's session extension decides what is one) are reported per row:
//! `data` (the row's old values differ from the server's), `not_found` (update or delete of a
//! row the server no longer has), `conflict` (insert of a key that exists), `constraint`,
//! `foreign_key`. `abort` rolls the whole push back (`409 sync_conflict`); `server_wins` keeps
//! the server's row; `client_wins` replaces it where SQLite allows (data and conflict) and
//! skips the rest (a row already gone stays gone). A constraint or foreign-key violation aborts
//! under every policy. The user's triggers that fire are held to the same statement policy as
//! SQL from the query API.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use rusqlite::session::{ConflictAction, ConflictType};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::auth::Authorized;
use crate::error::{ApiError, Json as ApiJson};
use crate::registry::DocError;
use crate::state::AppState;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Abort,
    ServerWins,
    ClientWins,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    #[serde(default)]
    on_conflict: Policy,
}

fn kind(t: &ConflictType) -> &'static str {
    match t {
        ConflictType::SQLITE_CHANGESET_DATA => "data",
        ConflictType::SQLITE_CHANGESET_NOTFOUND => "not_found",
        ConflictType::SQLITE_CHANGESET_CONFLICT => "conflict",
        ConflictType::SQLITE_CHANGESET_CONSTRAINT => "constraint",
        ConflictType::SQLITE_CHANGESET_FOREIGN_KEY => "foreign_key",
        _ => "unknown",
    }
}

/// What to do with one conflict under `policy`.
fn decide(policy: Policy, t: &ConflictType) -> ConflictAction {
    match (policy, t) {
        (
            _,
            ConflictType::SQLITE_CHANGESET_CONSTRAINT | ConflictType::SQLITE_CHANGESET_FOREIGN_KEY,
        ) => ConflictAction::SQLITE_CHANGESET_ABORT,
        (Policy::Abort, _) => ConflictAction::SQLITE_CHANGESET_ABORT,
        (Policy::ServerWins, _) => ConflictAction::SQLITE_CHANGESET_OMIT,
        (
            Policy::ClientWins,
            ConflictType::SQLITE_CHANGESET_DATA | ConflictType::SQLITE_CHANGESET_CONFLICT,
        ) => ConflictAction::SQLITE_CHANGESET_REPLACE,
        (Policy::ClientWins, _) => ConflictAction::SQLITE_CHANGESET_OMIT,
    }
}

/// The primary key of a conflicting row, by column position (`cN`; [`name_columns`] names them
/// once the changeset has been applied: the conflict handler cannot query the schema).
fn pk_of(item: &rusqlite::session::ChangesetItem, op_new: bool) -> Json {
    let mut pk = serde_json::Map::new();
    if let Ok(flags) = item.pk() {
        for (i, flag) in flags.iter().enumerate() {
            if *flag == 0 {
                continue;
            }
            let v = if op_new {
                item.new_value(i)
            } else {
                item.old_value(i)
            };
            if let Ok(v) = v {
                pk.insert(format!("c{i}"), crate::query::value::to_json(v));
            }
        }
    }
    Json::Object(pk)
}

pub async fn push(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    query: Result<Query<PushQuery>, axum::extract::rejection::QueryRejection>,
    crate::error::Bytes(body): crate::error::Bytes,
) -> Result<(StatusCode, ApiJson<Json>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let policy = query.on_conflict;
    let base: Option<i64> = match headers.get("patch-base-version") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_base_version",
                        "Patch-Base-Version must be a version number",
                    )
                })?,
        ),
    };
    let fences = crate::leases::parse_fences(&headers)?;
    // The changeset is read once before the write, so a malformed body is a 400 without
    // occupying the document's writer.
    let tables = super::log::tables(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_changeset",
            format!("the body is not a changeset: {e}"),
        )
    })?;
    if body.is_empty() || tables.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_changeset",
            "the changeset is empty",
        ));
    }
    if let Some(t) = tables.iter().find(|t| !super::log::synced(t)) {
        return Err(ApiError::forbidden(format!(
            "{t} is maintained by Patchwork and is not part of sync"
        )));
    }
    let doc = state.registry.get(auth.db()?).await?;
    let answer = doc
        .write(move |conn| {
            let (version, _) = super::versions(conn)?;
            if let Some(base) = base
                && base > version
            {
                return Err(ApiError::bad_request(
                    "invalid_base_version",
                    format!(
                        "Patch-Base-Version {base} is ahead of the document's version {version}"
                    ),
                )
                .into());
            }
            crate::leases::check_fences(conn, &fences)?;
            let conflicts = Arc::new(Mutex::new(Vec::<Json>::new()));
            let omitted = Arc::new(Mutex::new(0usize));
            let (sink, skipped) = (conflicts.clone(), omitted.clone());
            let enforcing = crate::query::classify::enforce(conn);
            let mut input: &[u8] = &body;
            let applied = conn.apply_strm(
                &mut input,
                Some(super::log::synced),
                move |t: ConflictType, item| {
                    let action = decide(policy, &t);
                    let op = item.op();
                    let (table, op_name, new) = match &op {
                        Ok(op) => (
                            op.table_name().to_owned(),
                            match op.code() {
                                rusqlite::hooks::Action::SQLITE_INSERT => "insert",
                                rusqlite::hooks::Action::SQLITE_DELETE => "delete",
                                _ => "update",
                            },
                            matches!(op.code(), rusqlite::hooks::Action::SQLITE_INSERT),
                        ),
                        Err(_) => (String::new(), "unknown", false),
                    };
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(json!({
                        "table": table,
                        "op": op_name,
                        "kind": kind(&t),
                        "pk": pk_of(&item, new),
                    }));
                    if action == ConflictAction::SQLITE_CHANGESET_OMIT {
                        *skipped.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    }
                    action
                },
            );
            if let Some(why) = enforcing.finish() {
                return Err(ApiError::forbidden(why)
                    .with_details(json!({"reason": "refused_statement"}))
                    .into());
            }
            let mut conflicts =
                std::mem::take(&mut *conflicts.lock().unwrap_or_else(|p| p.into_inner()));
            name_columns(conn, &mut conflicts)?;
            if let Err(e) = applied {
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationAborted)
                    || !conflicts.is_empty()
                {
                    return Err(DocError::Api(
                        ApiError::conflict(
                            "sync_conflict",
                            "the changeset conflicts with the document; nothing was applied",
                        )
                        .with_details(json!({"conflicts": conflicts})),
                    ));
                }
                return Err(ApiError::bad_request(
                    "invalid_changeset",
                    format!("the changeset could not be applied: {e}"),
                )
                .into());
            }
            let total = count_changes(&body);
            let omitted = *omitted.lock().unwrap_or_else(|p| p.into_inner());
            let applied = total.saturating_sub(omitted);
            // This write's group commit takes the next version if it changed anything.
            let version = if applied > 0 { version + 1 } else { version };
            Ok(json!({"version": version, "applied": applied, "conflicts": conflicts}))
        })
        .await?;
    Ok((StatusCode::OK, ApiJson(answer)))
}

fn count_changes(changeset: &[u8]) -> usize {
    use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator as _;
    let mut input: &[u8] = changeset;
    let reader: &mut dyn std::io::Read = &mut input;
    let Ok(mut iter) = rusqlite::session::ChangesetIter::start_strm(&reader) else {
        return 0;
    };
    let mut n = 0;
    while let Ok(Some(_)) = iter.next() {
        n += 1;
    }
    n
}

/// Renames each conflict's `cN` primary-key fields to the table's column names.
fn name_columns(conn: &rusqlite::Connection, conflicts: &mut [Json]) -> rusqlite::Result<()> {
    let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
    for conflict in conflicts.iter_mut() {
        let table = conflict["table"].as_str().unwrap_or_default().to_owned();
        if !names.contains_key(&table) {
            let cols = conn
                .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
                .query_map([&table], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names.insert(table.clone(), cols);
        }
        let cols = &names[&table];
        if let Some(Json::Object(pk)) = conflict.get_mut("pk") {
            let named = std::mem::take(pk)
                .into_iter()
                .map(|(k, v)| {
                    let name = k
                        .strip_prefix('c')
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| cols.get(i).cloned())
                        .unwrap_or(k);
                    (name, v)
                })
                .collect();
            *pk = named;
        }
    }
    Ok(())
}
