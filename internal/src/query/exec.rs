//! Running one prepared statement under the bounds: time (progress handler → interrupt, `504`),
//! rows (cut at `max_rows`, `truncated: true`) and result size (`413`).

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, Statement};
use serde_json::{Map, Value as Json, json};

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

/// Runs a bound statement to completion and shapes its answer. `budget` is the result bytes
/// still allowed (shared by the statements of a batch).
pub fn run(
    conn: &Connection,
    mut stmt: Statement<'_>,
    readonly: bool,
    limits: &Limits,
    budget: &mut usize,
) -> Result<Json, DocError> {
    let deadline = Instant::now() + limits.timeout;
    conn.progress_handler(1_000, Some(move || Instant::now() >= deadline));
    let result = run_inner(conn, &mut stmt, readonly, limits, budget);
    conn.progress_handler(0, None::<fn() -> bool>);
    result
}

fn run_inner(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    readonly: bool,
    limits: &Limits,
    budget: &mut usize,
) -> Result<Json, DocError> {
    let ncols = stmt.column_count();
    let mut out = Map::new();
    if ncols > 0 {
        let columns: Vec<Json> = stmt
            .column_names()
            .into_iter()
            .map(|c| Json::String(c.to_owned()))
            .collect();
        let mut rows = Vec::new();
        let mut truncated = false;
        let mut raw = stmt.raw_query();
        while let Some(row) = raw.next().map_err(sql_error)? {
            if rows.len() >= limits.max_rows {
                truncated = true;
                if readonly {
                    break;
                }
                // A write with RETURNING still runs to completion; extra rows are not returned.
                continue;
            }
            let mut cells = Vec::with_capacity(ncols);
            let mut size = 2;
            for i in 0..ncols {
                let v = value::to_json(row.get_ref(i).map_err(sql_error)?);
                size += approx_size(&v) + 1;
                cells.push(v);
            }
            if size > *budget {
                return Err(ApiError::too_large(format!(
                    "the result is larger than {} bytes; add a LIMIT or lower max_rows",
                    limits.max_bytes
                ))
                .into());
            }
            *budget -= size;
            rows.push(Json::Array(cells));
        }
        out.insert("columns".into(), Json::Array(columns));
        out.insert("row_count".into(), json!(rows.len()));
        out.insert("rows".into(), Json::Array(rows));
        out.insert("truncated".into(), json!(truncated));
    } else {
        stmt.raw_execute().map_err(sql_error)?;
    }
    if !readonly {
        out.insert("rows_affected".into(), json!(conn.changes()));
        out.insert("last_insert_id".into(), json!(conn.last_insert_rowid()));
    }
    Ok(Json::Object(out))
}

/// A close upper estimate of a value's JSON length, without serializing it.
fn approx_size(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) => 5,
        Json::Number(_) => 24,
        Json::String(s) => s.len() + s.len() / 8 + 2,
        Json::Object(m) => {
            m.iter()
                .map(|(k, v)| k.len() + approx_size(v) + 4)
                .sum::<usize>()
                + 2
        }
        Json::Array(a) => a.iter().map(approx_size).sum::<usize>() + a.len() + 2,
    }
}
