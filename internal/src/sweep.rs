//! What the periodic sweeps over documents share (message retention, row expiry): a pass every
//! period until shutdown, the documents a service table lists, and giving back the pages a
//! sweep freed so deleted data is gone from the files.

use std::future::Future;
use std::time::Duration;

use crate::registry::{DbId, DocError, DocHandle};
use crate::state::AppState;

/// Runs `pass` every `period` (the first after one period) until shutdown.
pub async fn periodically<F, Fut>(state: AppState, period: Duration, pass: F)
where
    F: Fn(AppState) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        pass(state.clone()).await;
    }
}

/// Sweeps each document listed in the service table `table` (a `db_id` column) with `sweep`,
/// logging what each deleted (`what` names the sweep in the log).
pub async fn listed<F, Fut>(state: &AppState, table: &'static str, what: &'static str, sweep: F)
where
    F: Fn(DbId) -> Fut,
    Fut: Future<Output = Result<usize, DocError>>,
{
    let ids: Vec<String> = match state
        .service
        .read(move |c| {
            let mut stmt = c.prepare(&format!("SELECT db_id FROM {table} ORDER BY db_id"))?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, sweep = what, "sweep could not list documents");
            return;
        }
    };
    for id in ids {
        let Ok(db_id) = DbId::parse(&id) else {
            continue;
        };
        match sweep(db_id.clone()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(db_id = %db_id, deleted = n, sweep = what, "sweep"),
            Err(e) => tracing::warn!(db_id = %db_id, error = %e, sweep = what, "sweep failed"),
        }
    }
}

/// Adds `db_id` to the service table `table` (the documents a sweep visits) when it has rules,
/// removes it otherwise.
pub async fn list(
    state: &AppState,
    table: &'static str,
    db_id: &DbId,
    has_rules: bool,
) -> Result<(), DocError> {
    let id = db_id.to_string();
    state
        .service
        .write(move |c| {
            if has_rules {
                c.execute(
                    &format!("INSERT OR IGNORE INTO {table} (db_id) VALUES (?1)"),
                    [&id],
                )?;
            } else {
                c.execute(&format!("DELETE FROM {table} WHERE db_id = ?1"), [&id])?;
            }
            Ok(())
        })
        .await
}

/// After a sweep deleted something: free pages back to the file system and the WAL folded in
/// and truncated, so the deleted bytes are gone from disk.
pub async fn reclaim(doc: &DocHandle) -> Result<(), DocError> {
    doc.write(|c| Ok(c.execute_batch("PRAGMA incremental_vacuum")?))
        .await?;
    doc.read(|c| {
        crate::sqlite::checkpoint(c);
        Ok(())
    })
    .await
}
