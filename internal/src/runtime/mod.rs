//! Runtime routes: open a document, its status, the list of documents.
//!
//! `POST /api/v1/db/{db_id}/_open`, `GET /api/v1/db/{db_id}/_status`, `GET /api/v1/dbs`.

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json};
use crate::registry::DbId;
use crate::state::AppState;
use crate::time_fmt;

const QUERY_READ: Access = Access::Db {
    actions: &[Action::QueryRead],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/_open",
            QUERY_READ,
            post(open),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/_status",
            QUERY_READ,
            get(status),
        ),
        Route::new(Method::GET, "/api/v1/dbs", Access::AnyCaller, get(list)),
    ]
}

async fn open(
    State(state): State<AppState>,
    auth: Authorized,
    claimed: Option<axum::Extension<crate::identity::CreatedByClaim>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let db_id = auth.db()?;
    let doc = state.registry.get(db_id).await?;
    let created = doc.created || claimed.is_some();
    if created {
        crate::audit::log(
            &state.service,
            &auth.actor(),
            "document.create",
            Some(db_id.as_str()),
            None,
        )
        .await;
    }
    Ok(Json(json!({"db_id": db_id.as_str(), "created": created})))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DocStatus {
    db_id: String,
    open: bool,
    size_bytes: u64,
    wal_bytes: u64,
    page_count: i64,
    watches: usize,
    subscribers: usize,
    /// RFC 3339, or `null` before the first write since the document was opened.
    #[schema(required)]
    last_write_at: Option<String>,
}

async fn status(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<DocStatus>, ApiError> {
    let db_id = auth.db()?;
    let doc = state.registry.get(db_id).await?;
    let stats = doc.stats().await?;
    let page_count = stats.page_count;
    let size_bytes = (stats.page_count * stats.page_size).max(0) as u64;
    let wal_bytes = stats.wal_bytes;
    Ok(Json(DocStatus {
        db_id: db_id.to_string(),
        open: true,
        size_bytes,
        wal_bytes,
        page_count,
        watches: doc.watch_count(),
        subscribers: doc.subscriber_count(),
        last_write_at: doc.last_write_at_ms().map(time_fmt::from_unix_ms),
    }))
}

/// A document file found in the data dir: id, size, last modification.
type Found = (DbId, u64, Option<std::time::SystemTime>);

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DbEntry {
    db_id: String,
    /// The main file and the WAL.
    size_bytes: u64,
    open: bool,
    /// The person who created it from a web session; `null` for documents made otherwise.
    #[schema(required)]
    owner: Option<String>,
    /// When its file or WAL last changed (RFC 3339).
    #[schema(required)]
    last_write_at: Option<String>,
}

/// `GET /api/v1/dbs`: every document for admins (tokens and people); a signed-in person who is
/// not an admin gets the documents they own; other tokens are refused, as before people existed.
async fn list(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !auth.is_admin() && auth.person().is_none() {
        return Err(ApiError::forbidden("this route needs an admin token"));
    }
    let dir = state.registry.documents_dir().to_owned();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".sqlite3"))
                .and_then(|n| DbId::parse(n).ok())
            else {
                continue;
            };
            let meta = entry.metadata().ok();
            // Writes land in the WAL first: its time is the latest when it exists.
            let wal = std::fs::metadata(entry.path().with_extension("sqlite3-wal")).ok();
            let modified = [meta.as_ref(), wal.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|m| m.modified().ok())
                .max();
            let size = [meta.as_ref(), wal.as_ref()]
                .into_iter()
                .flatten()
                .map(std::fs::Metadata::len)
                .sum();
            found.push((id, size, modified));
        }
        Ok(found)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut dbs: Vec<DbEntry> = found
        .into_iter()
        .filter(|(id, _, _)| auth.sees(id.as_str()))
        .map(|(id, size_bytes, modified)| DbEntry {
            open: state.registry.is_open(&id),
            owner: state.owners.owner(id.as_str()),
            last_write_at: modified.map(|t| time_fmt::rfc3339(t.into())),
            db_id: id.to_string(),
            size_bytes,
        })
        .collect();
    dbs.sort_by(|a, b| a.db_id.cmp(&b.db_id));
    Ok(Json(json!({"dbs": dbs})))
}
