//! Message retention: `GET|PUT /messages/retention` and the periodic sweep.
//!
//! Rules live in the document (`_patchwork_retention`); `service.db` remembers which documents
//! have rules so the sweep opens only those. The sweep deletes in small batches, each its own
//! write in the document's group commit (publishers interleave), then returns the freed pages to
//! the file system (`PRAGMA incremental_vacuum`) and checkpoints the WAL, so expired messages are
//! really gone from disk.

use std::time::Duration;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::sql::{self, RetentionRule};
use super::topic;
use crate::auth::Authorized;
use crate::error::{ApiError, Json};
use crate::registry::{DbId, DocError};
use crate::state::AppState;

const BATCH: usize = 500;
const SCAN: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    rules: Vec<RetentionRule>,
}

impl RulesBody {
    /// The checks `PUT /messages/retention` makes before it opens the document.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if self.rules.len() > 100 {
            return Err(ApiError::bad_request("invalid_rules", "at most 100 rules"));
        }
        for r in &self.rules {
            topic::validate_filter(&r.topic_filter)
                .map_err(|e| ApiError::bad_request("invalid_rules", e))?;
            if r.max_age_seconds.is_none() && r.max_messages.is_none() {
                return Err(ApiError::bad_request(
                    "invalid_rules",
                    "a rule needs max_age_seconds or max_messages",
                ));
            }
            if r.max_age_seconds.is_some_and(|s| s < 1) || r.max_messages.is_some_and(|n| n < 0) {
                return Err(ApiError::bad_request(
                    "invalid_rules",
                    "max_age_seconds must be >= 1 and max_messages >= 0",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if !self
            .rules
            .iter()
            .all(|r| seen.insert(r.topic_filter.clone()))
        {
            return Err(ApiError::bad_request(
                "invalid_rules",
                "each topic_filter may appear once",
            ));
        }
        Ok(())
    }
}

pub async fn get_rules(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let rules = doc.read(|c| Ok(sql::retention_rules(c)?)).await?;
    Ok(Json(json!({"rules": rules})))
}

pub async fn put_rules(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<RulesBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    body.check()?;
    let db_id = auth.db()?.clone();
    let doc = state.registry.get(&db_id).await?;
    let rules = body.rules;
    let has_rules = !rules.is_empty();
    let stored = doc
        .write(move |c| {
            sql::set_retention_rules(c, &rules)?;
            Ok(sql::retention_rules(c)?)
        })
        .await?;
    crate::sweep::list(&state, "retention_documents", &db_id, has_rules).await?;
    Ok(Json(json!({"rules": stored})))
}

/// Applies the rules of one document; returns how many messages it deleted.
pub async fn sweep_document(state: &AppState, db_id: &DbId) -> Result<usize, DocError> {
    let doc = state.registry.get(db_id).await?;
    let rules = doc.read(|c| Ok(sql::retention_rules(c)?)).await?;
    let mut total = 0;
    for rule in rules {
        // The age scan resumes where the last pass stopped, so old messages of other topics
        // cannot hide matching ones behind the scan limit.
        let mut age_after = 0;
        loop {
            let r = rule.clone();
            let swept = doc
                .write(move |c| {
                    // Whole pages the delete frees are zeroed too (see the helper).
                    Ok(crate::schema::expiry::with_full_secure_delete(c, || {
                        sql::sweep_rule(c, &r, age_after, BATCH, SCAN)
                    })?)
                })
                .await?;
            total += swept.deleted;
            match swept.age_resume_after {
                Some(id) => age_after = id,
                None if swept.deleted >= BATCH => {}
                None => break,
            }
            // Let publishers in between batches.
            tokio::task::yield_now().await;
        }
    }
    if total > 0 {
        crate::sweep::reclaim(&doc).await?;
        state.metrics.retention_deleted.inc_by(total as u64);
    }
    Ok(total)
}

/// Sweeps every document with rules, every `period`, until shutdown.
pub async fn sweeper(state: AppState, period: Duration) {
    crate::sweep::periodically(
        state,
        period,
        |state| async move { sweep_all(&state).await },
    )
    .await;
}

/// One pass over every document with retention rules.
pub async fn sweep_all(state: &AppState) {
    crate::sweep::listed(
        state,
        "retention_documents",
        "retention",
        |db_id| async move { sweep_document(state, &db_id).await },
    )
    .await;
}
