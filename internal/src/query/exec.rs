//! Running one prepared statement under the bounds: time (progress handler → interrupt, `504`),
//! rows (cut at `max_rows`, `truncated: true`) and result size (`413`).

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, Statement};
use serde_json::{Value as Json, json};

use super::classify::{self, Change, Class, ClassifyError, Prepared};
use super::value;
use crate::error::ApiError;
use crate::registry::DocError;

/// Effective bounds of one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max_rows: usize,
    pub max_bytes: usize,
}

/// Maps a SQLite error from user SQL to the client's error.
pub fn sql_error(e: rusqlite::Error) -> ApiError {
    match e.sqlite_error_code() {
        Some(ErrorCode::OperationInterrupted) => {
            ApiError::timeout("the statement ran longer than its time limit and was stopped")
        }
        Some(ErrorCode::ConstraintViolation) => {
            ApiError::conflict("constraint_violation", e.to_string())
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            ApiError::overloaded("the document is busy; retry")
        }
        Some(ErrorCode::DiskFull) => ApiError::internal(e),
        Some(ErrorCode::OutOfMemory) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "out_of_memory",
            "the statement ran out of memory",
        )
        .with_retry_after(1),
        Some(ErrorCode::TooBig) => ApiError::too_large(format!(
            "{e}: a string or blob is over the server's value size limit"
        )),
        _ => ApiError::bad_request("sql_error", e.to_string()),
    }
}

/// Binds `args` (array: positional; object: named, with or without the sigil).
pub fn bind(stmt: &mut Statement<'_>, args: Option<&Json>) -> Result<(), ApiError> {
    let expected = stmt.parameter_count();
    let bad = |m: String| ApiError::bad_request("invalid_args", m);
    match args {
        None | Some(Json::Null) => {
            if expected > 0 {
                return Err(bad(format!(
                    "the statement has {expected} parameters but no args were given"
                )));
            }
        }
        Some(Json::Array(values)) => {
            if values.len() != expected {
                return Err(bad(format!(
                    "the statement has {expected} parameters but {} args were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                let v = value::from_json(v).map_err(|e| bad(format!("args[{i}]: {e}")))?;
                stmt.raw_bind_parameter(i + 1, v).map_err(sql_error)?;
            }
        }
        Some(Json::Object(map)) => {
            let mut bound = 0;
            for (key, v) in map {
                let candidates: Vec<String> = if key.starts_with([':', '@', '$']) {
                    vec![key.clone()]
                } else {
                    [":", "@", "$"]
                        .iter()
                        .map(|s| format!("{s}{key}"))
                        .collect()
                };
                let index = candidates
                    .iter()
                    .find_map(|name| stmt.parameter_index(name).ok().flatten())
                    .ok_or_else(|| bad(format!("the statement has no parameter named {key:?}")))?;
                let v = value::from_json(v).map_err(|e| bad(format!("args.{key}: {e}")))?;
                stmt.raw_bind_parameter(index, v).map_err(sql_error)?;
                bound += 1;
            }
            if bound != expected {
                return Err(bad(format!(
                    "the statement has {expected} parameters but {bound} were given"
                )));
            }
        }
        Some(_) => return Err(bad("args must be an array or an object".into())),
    }
    Ok(())
}

/// As [`run_text`], the answer as a JSON value (batches, watches).
pub fn run(
    conn: &Connection,
    prepared: Prepared<'_>,
    limits: &Limits,
    budget: &mut usize,
) -> Result<Json, DocError> {
    let text = run_text(conn, prepared, limits, budget)?;
    serde_json::from_str(&text).map_err(|e| ApiError::internal(e).into())
}

/// Runs a bound statement to completion and writes its answer, JSON text (object keys sorted:
/// `columns`, `last_insert_id`, `row_count`, `rows`, `rows_affected`, `truncated`, as the
/// answers always were). `budget` is the result bytes still allowed (shared by the statements
/// of a batch). The classifier's authorizer stays on while it runs, and an `ALTER TABLE` that
/// produced a `_patchwork_` name fails (and so is rolled back with its savepoint).
pub fn run_text(
    conn: &Connection,
    mut prepared: Prepared<'_>,
    limits: &Limits,
    budget: &mut usize,
) -> Result<String, DocError> {
    let fingerprint = |conn: &Connection| classify::ddl_fingerprint(conn).map_err(sql_error);
    let before = if prepared.ddl {
        Some(fingerprint(conn)?)
    } else {
        None
    };
    let deadline = Instant::now() + limits.timeout;
    conn.progress_handler(1_000, Some(move || Instant::now() >= deadline));
    // Only a data write reports its own changes; DDL and the rest leave `changes()` and
    // `last_insert_rowid()` as an earlier statement (maybe another client's) set them.
    let class = prepared.class;
    let change = if class == Class::Write {
        prepared.change
    } else {
        None
    };
    let result = run_inner(
        conn,
        &mut prepared.stmt,
        class == Class::Read,
        change,
        limits,
        budget,
    );
    let refused = prepared.finish();
    conn.progress_handler(0, None::<fn() -> bool>);
    if let Some(why) = refused {
        return Err(super::classify_error(ClassifyError::Refused(why)).into());
    }
    if let Some(before) = before
        && fingerprint(conn)? != before
    {
        return Err(ApiError::forbidden(
            "names starting with _patchwork_ are reserved for Patchwork, and foreign keys may \
             not reference Patchwork's tables or webhook_inbox",
        )
        .with_details(json!({"reason": "refused_statement"}))
        .into());
    }
    result
}

fn run_inner(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    readonly: bool,
    change: Option<Change>,
    limits: &Limits,
    budget: &mut usize,
) -> Result<String, DocError> {
    forget_last_insert_rowid(conn);
    // Rows are written straight to their JSON bytes (no `serde_json::Value` per cell): the
    // answer is assembled around them once the statement has run.
    let mut rows = Vec::new();
    let mut row_count = 0usize;
    let mut truncated = false;
    let has_columns = stmt.column_count() > 0;
    if has_columns {
        let mut raw = stmt.raw_query();
        while let Some(row) = raw.next().map_err(sql_error)? {
            if row_count >= limits.max_rows {
                truncated = true;
                if readonly {
                    break;
                }
                // A write with RETURNING still runs to completion; extra rows are not returned.
                continue;
            }
            let start = rows.len();
            if row_count > 0 {
                rows.push(b',');
            }
            rows.push(b'[');
            // Counted on the running program: a cached statement is recompiled by its first
            // step if the schema changed since it was compiled.
            let ncols = row.as_ref().column_count();
            for i in 0..ncols {
                if i > 0 {
                    rows.push(b',');
                }
                let cell = value::Cell(row.get_ref(i).map_err(sql_error)?);
                serde_json::to_writer(&mut rows, &cell).map_err(ApiError::internal)?;
            }
            rows.push(b']');
            let size = rows.len() - start;
            if size > *budget {
                return Err(ApiError::too_large(format!(
                    "the result is larger than {} bytes; add a LIMIT or lower max_rows",
                    limits.max_bytes
                ))
                .into());
            }
            *budget -= size;
            row_count += 1;
        }
    } else {
        stmt.raw_execute().map_err(sql_error)?;
    }
    let mut out = Vec::with_capacity(rows.len() + 96);
    let mut sep = b'{';
    let mut key = |out: &mut Vec<u8>, name: &str| {
        out.push(sep);
        sep = b',';
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    // Only a data write reports its own changes (see `run_text`).
    let written = (!readonly).then(|| {
        let affected = if change.is_some() { conn.changes() } else { 0 };
        // An UPSERT that updated, or an INSERT into a WITHOUT ROWID table, sets no rowid: the
        // last one was cleared before the statement ran, so no earlier one (maybe another
        // client's) can be reported.
        let rowid = conn.last_insert_rowid();
        let id = (change == Some(Change::Insert) && affected > 0 && rowid != 0).then_some(rowid);
        (affected, id)
    });
    let internal = |e: serde_json::Error| DocError::from(ApiError::internal(e));
    if has_columns {
        // After the first step, so the names are the running program's too.
        key(&mut out, "columns");
        serde_json::to_writer(&mut out, &stmt.column_names()).map_err(internal)?;
    }
    if let Some((_, id)) = written {
        key(&mut out, "last_insert_id");
        serde_json::to_writer(&mut out, &id).map_err(internal)?;
    }
    if has_columns {
        key(&mut out, "row_count");
        serde_json::to_writer(&mut out, &row_count).map_err(internal)?;
        key(&mut out, "rows");
        out.push(b'[');
        out.extend_from_slice(&rows);
        out.push(b']');
    }
    if let Some((affected, _)) = written {
        key(&mut out, "rows_affected");
        serde_json::to_writer(&mut out, &affected).map_err(internal)?;
    }
    if has_columns {
        key(&mut out, "truncated");
        serde_json::to_writer(&mut out, &truncated).map_err(internal)?;
    }
    if sep == b'{' {
        out.push(b'{');
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|e| ApiError::internal(e).into())
}

/// Sets the connection's `last_insert_rowid()` to 0, so what a statement reports afterwards is
/// its own insert or nothing.
#[allow(unsafe_code)]
fn forget_last_insert_rowid(conn: &Connection) {
    // SAFETY: `handle()` is the live connection owned by `conn` (borrowed for this call, on the
    // actor thread that owns it); `sqlite3_set_last_insert_rowid` only stores an integer in it.
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), 0) }
}
