//! `GET /sync/snapshot`: a consistent SQLite file of a document's user tables.
//!
//! A second, read-only connection opens a read transaction (its snapshot is the version it
//! reads) and copies the file with SQLite's backup API a few hundred pages per step. In WAL mode
//! the actor keeps committing meanwhile: the writer is never held. Patchwork's own tables are
//! then dropped from the copy and it is vacuumed, so the client gets only what sync covers.
//! The file is streamed (`Patch-Version`, `ETag: "V"`); a `Range` is served when `If-Range`
//! names the current version (or is absent), else the whole file of the new version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::Authorized;
use crate::error::ApiError;
use crate::state::AppState;

/// Pages copied per backup step (the source's read transaction stays open between steps).
const PAGES_PER_STEP: i32 = 1024;
const CHUNK: usize = 64 * 1024;

/// Copies the document at `src` into a new file `dst` (user tables only); returns its version.
pub fn make(src: &Path, dst: &Path) -> Result<i64, rusqlite::Error> {
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(Duration::from_secs(5))?;
    // The read transaction fixes the snapshot: the version read here is the copy's.
    source.execute_batch("BEGIN")?;
    let version = super::meta_int(&source, "commit_seq")?;
    let mut copy = Connection::open(dst)?;
    {
        let backup = Backup::new(&source, &mut copy)?;
        loop {
            match backup.step(PAGES_PER_STEP)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    source.execute_batch("COMMIT")?;
    drop(source);
    // A standalone file: no WAL, no Patchwork tables.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    let internal: Vec<String> = copy
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table'
               AND name LIKE '\\_patchwork\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in internal {
        copy.execute_batch(&format!("DROP TABLE \"{}\"", table.replace('"', "\"\"")))?;
    }
    copy.execute_batch("VACUUM")?;
    Ok(version)
}

fn scratch_path(state: &AppState, db: &str) -> PathBuf {
    state.config.data_dir.join("tmp").join(format!(
        "snapshot-{db}-{:016x}.sqlite3",
        rand::random::<u64>()
    ))
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` against `len`: `(start, end_inclusive)`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.trim();
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len - 1
        } else {
            b.parse::<u64>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

pub async fn snapshot(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let db = auth.db()?.clone();
    // Opens (and migrates, or creates) the document first, like every other route.
    state.registry.get(&db).await?;
    let src = state.registry.documents_dir().join(db.file_name());
    let dst = scratch_path(&state, db.as_str());
    let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
    let made = dst.clone();
    let version = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        make(&src, &made).map_err(std::io::Error::other)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        let _ = std::fs::remove_file(&dst);
        ApiError::internal(format!("snapshot failed: {e}"))
    })?;
    let mut file = tokio::fs::File::open(&dst)
        .await
        .map_err(ApiError::internal)?;
    // Unlinked at once: the open file is all that is left, gone when the response is.
    let _ = tokio::fs::remove_file(&dst).await;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let etag = format!("\"{version}\"");
    let same_version = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| same_version);
    let (status, start, end) = match range {
        Some(r) => match parse_range(r, len) {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "invalid_range",
                        "the range is not within the snapshot",
                    )
                    .into_response(),
                )
                    .into_response());
            }
        },
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(ApiError::internal)?;
    let stream = futures_util::stream::unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.sqlite3"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("patch-version", HeaderValue::from(version));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
