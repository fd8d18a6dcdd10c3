//! Registry and actor behaviour through the library API (real threads, real SQLite files).

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::*;
use crate::config::Synchronous;
use crate::sqlite::OpenOptions;

fn config(
    dir: &std::path::Path,
    mailbox: usize,
    idle: Duration,
    max_open: usize,
) -> RegistryConfig {
    std::fs::create_dir_all(dir).unwrap();
    RegistryConfig {
        documents_dir: dir.to_path_buf(),
        actor: ActorConfig {
            open: OpenOptions {
                synchronous: Synchronous::Normal,
                busy_timeout: Duration::from_secs(5),
                max_value_bytes: 16 << 20,
                wal_autocheckpoint: crate::sqlite::DEFAULT_WAL_AUTOCHECKPOINT,
            },
            mailbox_capacity: mailbox,
            sync_keep_versions: 10_000,
            sync_keep_secs: 604_800,
            max_batch: 512,
            hooks: None,
        },
        idle_timeout: idle,
        max_open,
        shrink_after: Duration::from_secs(3600),
    }
}

fn id(s: &str) -> DbId {
    DbId::parse(s).unwrap()
}

use crate::testing::block_actor;

/// A registry in a fresh directory (mailbox 1024, 60 s idle, 16 open) and the document `name`
/// with `ddl` applied.
async fn doc_with(
    name: &str,
    ddl: &'static str,
) -> (tempfile::TempDir, Arc<Metrics>, Registry, DocGuard) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let registry = Registry::new(
        config(dir.path(), 1024, Duration::from_secs(60), 16),
        metrics.clone(),
    );
    let doc = registry.get(&id(name)).await.unwrap();
    doc.write(move |c| Ok(c.execute_batch(ddl)?)).await.unwrap();
    (dir, metrics, registry, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_waiting_writes_and_isolates_failures() {
    let (_dir, metrics, _registry, doc) =
        doc_with("gc", "CREATE TABLE t (v INTEGER PRIMARY KEY)").await;
    let mut events = doc.subscribe();
    let seq_before = doc.commit_seq();
    let commits_before = metrics.commits.get();

    // Hold the actor so the writes below wait in the mailbox together.
    let release = block_actor(&doc).await;
    let mut tasks = Vec::new();
    for v in 0..50i64 {
        let doc = doc.clone();
        tasks.push(tokio::spawn(async move {
            doc.write(move |c| {
                if v == 17 {
                    // Fails after changing something: must roll back only itself.
                    c.execute("INSERT INTO t VALUES (1000)", [])?;
                    c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                }
                if v == 33 {
                    panic!("deliberate panic in a write");
                }
                Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?)
            })
            .await
        }));
    }
    // Let every write reach the mailbox before the actor is released.
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send(()).unwrap();
    let mut ok = 0;
    for (v, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        match v {
            17 => assert!(matches!(result, Err(DocError::Sqlite(_))), "{result:?}"),
            33 => assert!(matches!(result, Err(DocError::Aborted)), "{result:?}"),
            _ => {
                assert_eq!(result.unwrap(), 1);
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 48);
    let (count, has_1000): (i64, bool) = doc
        .read(|c| {
            Ok((
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?,
                c.query_row("SELECT count(*) FROM t WHERE v = 1000", [], |r| {
                    r.get::<_, i64>(0)
                })? > 0,
            ))
        })
        .await
        .unwrap();
    assert_eq!(count, 48);
    assert!(
        !has_1000,
        "the failed write's first insert must be rolled back"
    );
    // All 50 waited together: one commit, one event, one commit_seq step.
    assert_eq!(
        metrics.commits.get() - commits_before,
        1,
        "one group commit"
    );
    assert_eq!(doc.commit_seq(), seq_before + 1);
    let event = events.recv().await.unwrap();
    assert_eq!(event.commit_seq, seq_before + 1);
    assert_eq!(&*event.tables_written, &["t".to_owned()]);
    assert!(
        metrics
            .render()
            .contains("patchwork_actor_restarts_total{reason=\"panic\"} 1")
    );
}

/// Waits until `n` messages wait in the mailbox (each send is in place before the next).
async fn queued(metrics: &Metrics, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.mailbox_depth.get() < n as i64 {
        assert!(Instant::now() < deadline, "{n} messages never queued");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Queries waiting together share one read transaction, in mailbox order around writes: the
/// queries before a write do not see it, those after it do, a failing or panicking query
/// answers alone, and the rest still get their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_queries_share_a_read_transaction_in_mailbox_order() {
    let (_dir, metrics, _registry, doc) =
        doc_with("qb", "CREATE TABLE t (v INTEGER PRIMARY KEY)").await;
    let release = block_actor(&doc).await;
    let count = |doc: &DocHandle, fail: Option<&'static str>| {
        let doc = doc.clone();
        tokio::spawn(async move {
            doc.query(move |c| {
                match fail {
                    Some("panic") => panic!("deliberate panic in a query"),
                    Some(sql) => {
                        c.query_row(sql, [], |r| r.get::<_, i64>(0))?;
                    }
                    None => {}
                }
                let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                // Inside the shared transaction (a lone query would be in autocommit mode).
                Ok((n, !c.is_autocommit()))
            })
            .await
        })
    };
    let mut before = Vec::new();
    for i in 0..20 {
        let fail = match i {
            5 => Some("SELECT * FROM no_such_table"),
            9 => Some("panic"),
            _ => None,
        };
        before.push(count(&doc, fail));
        queued(&metrics, i + 1).await;
    }
    let writer = {
        let doc = doc.clone();
        tokio::spawn(async move {
            doc.write(|c| Ok(c.execute("INSERT INTO t VALUES (1)", [])?))
                .await
        })
    };
    queued(&metrics, 21).await;
    let mut after = Vec::new();
    for i in 0..10 {
        after.push(count(&doc, None));
        queued(&metrics, 22 + i).await;
    }
    release.send(()).unwrap();
    for (i, task) in before.into_iter().enumerate() {
        let result = task.await.unwrap();
        match i {
            5 => assert!(matches!(result, Err(DocError::Sqlite(_))), "{result:?}"),
            9 => assert!(matches!(result, Err(DocError::Aborted)), "{result:?}"),
            _ => assert_eq!(result.unwrap().0, 0, "query {i} ran before the write"),
        }
    }
    writer.await.unwrap().unwrap();
    for task in after {
        let (n, shared) = task.await.unwrap().unwrap();
        assert_eq!(n, 1, "queries after the write see it");
        assert!(shared, "queued queries share a read transaction");
    }
    let text = metrics.render();
    assert!(
        text.contains("patchwork_query_batch_size_count 2"),
        "two batches (20 before the write, 10 after):\n{text}"
    );
    assert!(text.contains("patchwork_actor_restarts_total{reason=\"panic\"} 1"));
    // A lone query runs on its own, outside a transaction, as before.
    let (n, shared) = doc
        .query(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            Ok((n, !c.is_autocommit()))
        })
        .await
        .unwrap();
    assert_eq!((n, shared), (1, false));
}

/// The first write of a batch runs without a savepoint; when it fails, the transaction is
/// begun again and the writes behind it still commit together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_write_of_a_batch_fails_alone() {
    let (_dir, metrics, _registry, doc) =
        doc_with("first", "CREATE TABLE t (v INTEGER PRIMARY KEY)").await;
    let commits_before = metrics.commits.get();
    let release = block_actor(&doc).await;
    let first = {
        let doc = doc.clone();
        tokio::spawn(async move {
            doc.write(|c| {
                c.execute("INSERT INTO t VALUES (1000)", [])?;
                Ok(c.execute("INSERT INTO no_such_table VALUES (1)", [])?)
            })
            .await
        })
    };
    // Queued strictly after the failing one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rest = Vec::new();
    for v in 0..5i64 {
        let doc = doc.clone();
        rest.push(tokio::spawn(async move {
            doc.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.send(()).unwrap();
    assert!(matches!(first.await.unwrap(), Err(DocError::Sqlite(_))));
    for task in rest {
        assert_eq!(task.await.unwrap().unwrap(), 1);
    }
    let values: Vec<i64> = doc
        .read(|c| {
            let mut stmt = c.prepare("SELECT v FROM t ORDER BY v")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![0, 1, 2, 3, 4],
        "the failed first write left nothing behind"
    );
    assert_eq!(
        metrics.commits.get() - commits_before,
        1,
        "one group commit"
    );
}

/// A write that rolls back the whole transaction (here an `ON CONFLICT ROLLBACK` clause) takes
/// the earlier writes of its batch with it: they must not be acknowledged, and the writes after
/// it still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_rolls_back_the_transaction_acknowledges_none_of_its_batch() {
    let (_dir, _metrics, _registry, doc) = doc_with(
        "rb",
        "CREATE TABLE t (v INTEGER PRIMARY KEY ON CONFLICT ROLLBACK); INSERT INTO t VALUES (1)",
    )
    .await;
    let mut events = doc.subscribe();
    let release = block_actor(&doc).await;
    let mut tasks = Vec::new();
    for (i, sql) in [
        "INSERT INTO t VALUES (10)", // before the rollback: must not be acknowledged
        "INSERT INTO t VALUES (11)",
        "INSERT INTO t VALUES (1)", // conflict: ROLLBACK of the whole transaction
        "INSERT INTO t VALUES (12)", // after it: commits
    ]
    .into_iter()
    .enumerate()
    {
        let doc = doc.clone();
        tasks.push(tokio::spawn(async move {
            doc.write(move |c| Ok(c.execute(sql, [])?)).await
        }));
        // Queued in this order.
        tokio::time::sleep(Duration::from_millis(30 + i as u64)).await;
    }
    release.send(()).unwrap();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(
        matches!(results[0], Err(DocError::RolledBack)),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(DocError::RolledBack)),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(DocError::Sqlite(_))),
        "{:?}",
        results[2]
    );
    assert_eq!(results[3].as_ref().unwrap(), &1);
    let values: Vec<i64> = doc
        .read(|c| {
            let mut stmt = c.prepare("SELECT v FROM t ORDER BY v")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(values, vec![1, 12]);
    // One change event, for the write that really committed.
    let event = events.recv().await.unwrap();
    assert_eq!(&*event.tables_written, &["t".to_owned()]);
    assert!(
        events.try_recv().is_err(),
        "no event for the rolled-back writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_name_tables_and_commit_seq_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64, Duration::from_secs(60), 16);
    let registry = Registry::new(cfg.clone(), Metrics::new());
    let doc = registry.get(&id("ev")).await.unwrap();
    let mut events = doc.subscribe();
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE a (x); CREATE TABLE b (y);")?))
        .await
        .unwrap();
    doc.write(|c| Ok(c.execute_batch("INSERT INTO b VALUES (1); INSERT INTO a VALUES (2);")?))
        .await
        .unwrap();
    // A write that changes no rows publishes nothing.
    doc.write(|c| Ok(c.execute("DELETE FROM a WHERE x = 99", [])?))
        .await
        .unwrap();
    let first = events.recv().await.unwrap();
    assert_eq!(&*first.tables_written, &["a".to_owned(), "b".to_owned()]);
    assert!(events.try_recv().is_err(), "no event for a no-op write");
    let seq = doc.commit_seq();
    assert_eq!(first.commit_seq, seq);
    assert!(doc.last_write_at_ms().is_some());
    drop(doc);
    assert!(registry.shutdown(Duration::from_secs(5)).await);

    let registry = Registry::new(cfg, Metrics::new());
    let doc = registry.get(&id("ev")).await.unwrap();
    assert_eq!(doc.commit_seq(), seq, "commit_seq is persisted");
    doc.write(|c| Ok(c.execute("INSERT INTO a VALUES (3)", [])?))
        .await
        .unwrap();
    assert_eq!(doc.commit_seq(), seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_opens_one_actor() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(
        config(dir.path(), 64, Duration::from_secs(60), 16),
        Metrics::new(),
    );
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            registry.get(&id("same")).await.map(|g| g.created)
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one caller sees created");
    assert_eq!(registry.live_actors(), 1);
    assert_eq!(registry.open_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_is_refused_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let registry = Registry::new(
        config(dir.path(), 2, Duration::from_secs(60), 16),
        metrics.clone(),
    );
    let doc = registry.get(&id("busy")).await.unwrap();
    let release = block_actor(&doc).await;
    // The actor is busy; two messages fit in the mailbox, the third is refused at once.
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let doc = doc.clone();
            tokio::spawn(async move { doc.read(|_| Ok(())).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = doc.read(|_| Ok(())).await;
    assert!(matches!(refused, Err(DocError::Overloaded)), "{refused:?}");
    assert_eq!(metrics.mailbox_full.get(), 1);
    release.send(()).unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
    doc.read(|_| Ok(())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let registry = Registry::new(
        config(dir.path(), 64, Duration::from_millis(200), 16),
        metrics.clone(),
    );
    {
        let doc = registry.get(&id("idle")).await.unwrap();
        doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (x)")?))
            .await
            .unwrap();
        // In use: not evicted however long it takes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(registry.is_open(&id("idle")));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.live_actors() > 0 {
        assert!(Instant::now() < deadline, "idle actor was not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!registry.is_open(&id("idle")));
    assert!(metrics.render().contains("reason=\"idle\""));
    // Closing checkpointed the WAL and truncated it (the file is kept: see `sqlite::persist_wal`).
    let wal = std::fs::metadata(dir.path().join("idle.sqlite3-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0);
    let doc = registry.get(&id("idle")).await.unwrap();
    assert!(!doc.created);
    let n: i64 = doc
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Opening and reading an existing document writes nothing: its WAL stays empty (so closing
    // it has nothing to checkpoint, and its files keep their times).
    let wal = std::fs::metadata(dir.path().join("idle.sqlite3-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_cap_evicts_the_least_recently_used_idle_document() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(
        config(dir.path(), 64, Duration::from_secs(600), 2),
        Metrics::new(),
    );
    let a = registry.get(&id("a")).await.unwrap();
    drop(registry.get(&id("b")).await.unwrap());
    // `a` is in use, `b` is idle: opening `c` closes `b`.
    drop(registry.get(&id("c")).await.unwrap());
    assert!(registry.is_open(&id("a")));
    assert!(!registry.is_open(&id("b")));
    // Both open documents busy: a third is refused rather than exceeding the cap.
    let c = registry.get(&id("c")).await.unwrap();
    let refused = registry.get(&id("d")).await;
    assert!(matches!(refused, Err(DocError::TooManyOpen)));
    drop((a, c));
    registry.get(&id("d")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_read_leaves_the_actor_serving() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let registry = Registry::new(
        config(dir.path(), 64, Duration::from_secs(60), 16),
        metrics.clone(),
    );
    let doc = registry.get(&id("p")).await.unwrap();
    let result: Result<(), DocError> = doc
        .read(|c| {
            c.execute_batch("BEGIN; CREATE TABLE leak (x);")?;
            panic!("deliberate panic in a read")
        })
        .await;
    assert!(matches!(result, Err(DocError::Aborted)));
    // The transaction the panicking request left open was rolled back.
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE ok (x)")?))
        .await
        .unwrap();
    let leaked: i64 = doc
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'leak'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    assert!(metrics.render().contains("reason=\"panic\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queued_writes_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(
        config(dir.path(), 1024, Duration::from_secs(60), 16),
        Metrics::new(),
    );
    let doc = registry.get(&id("drain")).await.unwrap();
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (v)")?))
        .await
        .unwrap();
    let release = block_actor(&doc).await;
    let writes: Vec<_> = (0..100i64)
        .map(|v| {
            let doc = doc.clone();
            tokio::spawn(async move {
                doc.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let registry2 = registry.clone();
    let shutdown = tokio::spawn(async move { registry2.shutdown(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).unwrap();
    let mut acked = 0;
    for w in writes {
        if w.await.unwrap().is_ok() {
            acked += 1;
        }
    }
    drop(doc);
    assert!(shutdown.await.unwrap(), "actors stopped");
    assert_eq!(acked, 100, "queued writes are finished, not dropped");
    assert!(matches!(
        registry.get(&id("drain")).await,
        Err(DocError::ShuttingDown)
    ));
    let conn = rusqlite::Connection::open(dir.path().join("drain.sqlite3")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_with_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64, Duration::from_secs(60), 16);
    let registry = Registry::new(cfg.clone(), Metrics::new());
    drop(registry.get(&id("future")).await.unwrap());
    assert!(registry.shutdown(Duration::from_secs(5)).await);
    let conn = rusqlite::Connection::open(dir.path().join("future.sqlite3")).unwrap();
    conn.execute(
        "INSERT INTO _patchwork_migrations (version, name) VALUES (9999, 'x')",
        [],
    )
    .unwrap();
    drop(conn);
    let registry = Registry::new(cfg, Metrics::new());
    let err = registry.get(&id("future")).await.err().expect("refused");
    assert!(err.to_string().contains("newer than this binary"), "{err}");
}

static SHRINKS: AtomicUsize = AtomicUsize::new(0);

static COUNTING_HOOKS: ConnectionHooks = ConnectionHooks {
    opened: |_| {},
    shrink: |_| {
        SHRINKS.fetch_add(1, SeqCst);
    },
    closing: || {},
};

#[tokio::test]
async fn a_quiet_open_document_shrinks_once_until_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64, Duration::from_secs(3600), 16);
    cfg.shrink_after = Duration::from_millis(200);
    cfg.actor.hooks = Some(&COUNTING_HOOKS);
    let registry = Registry::new(cfg, Metrics::new());
    let doc = registry.get(&id("quiet")).await.unwrap();
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")?))
        .await
        .unwrap();
    drop(doc);
    let wait_for = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while SHRINKS.load(SeqCst) < n {
            assert!(Instant::now() < deadline, "not shrunk");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(1).await;
    // Once per quiet spell; still open and serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(SHRINKS.load(SeqCst), 1);
    assert!(registry.is_open(&id("quiet")));
    let doc = registry.get(&id("quiet")).await.unwrap();
    let n: i64 = doc
        .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(doc);
    wait_for(2).await;
}

static REOPEN_OPENS: AtomicUsize = AtomicUsize::new(0);
static REOPEN_SHRINKS: AtomicUsize = AtomicUsize::new(0);
static REOPEN_CLOSINGS: AtomicUsize = AtomicUsize::new(0);

static REOPEN_HOOKS: ConnectionHooks = ConnectionHooks {
    opened: |_| {
        REOPEN_OPENS.fetch_add(1, SeqCst);
    },
    shrink: |_| {
        REOPEN_SHRINKS.fetch_add(1, SeqCst);
    },
    closing: || {
        REOPEN_CLOSINGS.fetch_add(1, SeqCst);
    },
};

#[tokio::test]
async fn a_quiet_document_closes_its_connection_and_reopens_it_on_next_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64, Duration::from_secs(3600), 16);
    cfg.shrink_after = Duration::from_millis(200);
    cfg.actor.hooks = Some(&REOPEN_HOOKS);
    let registry = Registry::new(cfg, Metrics::new());
    let wait_until = |what: &'static AtomicUsize, n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while what.load(SeqCst) < n {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let doc = registry.get(&id("napper")).await.unwrap();
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")?))
        .await
        .unwrap();
    let seq = doc.commit_seq();
    let mut events = doc.subscribe();
    drop(doc);
    assert_eq!(REOPEN_OPENS.load(SeqCst), 1);
    wait_until(&REOPEN_CLOSINGS, 1).await;
    assert_eq!(REOPEN_SHRINKS.load(SeqCst), 1);
    assert!(registry.is_open(&id("napper")));

    // The next write opens the connection again (with the hooks), commits after the last
    // commit_seq and announces its tables, as before the quiet spell.
    let doc = registry.get(&id("napper")).await.unwrap();
    doc.write(|c| Ok(c.execute("INSERT INTO t VALUES (2)", [])?))
        .await
        .unwrap();
    assert_eq!(REOPEN_OPENS.load(SeqCst), 2);
    assert_eq!(doc.commit_seq(), seq + 1);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.commit_seq, seq + 1);
    assert_eq!(&*event.tables_written, &["t".to_owned()]);
    let n: i64 = doc
        .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert!(doc.stats().await.unwrap().page_count > 0);
    drop(doc);
    wait_until(&REOPEN_CLOSINGS, 2).await;

    // A connection holding a temporary table stays open: the table would go with it.
    let doc = registry.get(&id("napper")).await.unwrap();
    doc.read(|c| Ok(c.execute_batch("CREATE TEMP TABLE tt (x); INSERT INTO tt VALUES (7)")?))
        .await
        .unwrap();
    let opens = REOPEN_OPENS.load(SeqCst);
    let shrinks = REOPEN_SHRINKS.load(SeqCst);
    drop(doc);
    wait_until(&REOPEN_SHRINKS, shrinks + 1).await;
    assert_eq!(REOPEN_CLOSINGS.load(SeqCst), 2);
    let doc = registry.get(&id("napper")).await.unwrap();
    let kept: i64 = doc
        .read(|c| Ok(c.query_row("SELECT x FROM temp.tt", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(kept, 7);
    assert_eq!(REOPEN_OPENS.load(SeqCst), opens);
    drop(doc);

    // A document whose actor went dormant (connection closed, no thread) is still counted as
    // open, and shutting down ends it like any other.
    let doc = registry.get(&id("sleeper")).await.unwrap();
    doc.write(|c| Ok(c.execute_batch("CREATE TABLE s (x)")?))
        .await
        .unwrap();
    drop(doc);
    wait_until(&REOPEN_CLOSINGS, 3).await;
    assert_eq!(registry.open_count(), 2);
    assert_eq!(registry.inner.metrics.open_documents.get(), 2);
    assert!(registry.shutdown(Duration::from_secs(5)).await);
    assert_eq!(registry.inner.metrics.open_documents.get(), 0);
}

/// Checkpoints run beside the writer (`checkpoint.rs`): with a threshold of 100 pages, 1,500
/// commits see background passes and finishes, the WAL never holds much more than four
/// thresholds of frames, and after the document closes (its WAL truncated) every row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_run_beside_the_writer_and_keep_the_wal_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut cfg = config(dir.path(), 1024, Duration::from_millis(300), 16);
    cfg.actor.open.wal_autocheckpoint = 100;
    let registry = Registry::new(cfg, metrics.clone());
    let wal = dir.path().join("ckpt.sqlite3-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let mut largest = 0;
    {
        let doc = registry.get(&id("ckpt")).await.unwrap();
        doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (v BLOB)")?))
            .await
            .unwrap();
        for _ in 0..1_500 {
            doc.write(|c| Ok(c.execute("INSERT INTO t VALUES (randomblob(3000))", [])?))
                .await
                .unwrap();
            largest = largest.max(wal_len());
        }
    }
    let count = |reason| {
        metrics
            .wal_checkpoints
            .get_or_create(&ReasonLabel { reason })
            .get()
    };
    assert!(count("background") >= 3, "{}", metrics.render());
    assert!(count("finish") >= 3, "{}", metrics.render());
    // The file keeps its largest size (under `journal_size_limit`): four thresholds of frames,
    // and a commit's worth past the last check.
    let frame = 4096 + 24;
    assert!(
        largest <= (4 * 100 + 20) * frame,
        "WAL grew to {largest} bytes"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.live_actors() > 0 {
        assert!(Instant::now() < deadline, "idle actor was not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wal_len(), 0, "closing truncates the WAL");
    let doc = registry.get(&id("ckpt")).await.unwrap();
    let (rows, check): (i64, String) = doc
        .read(|c| {
            let rows = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            let check = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok((rows, check))
        })
        .await
        .unwrap();
    assert_eq!((rows, check.as_str()), (1_500, "ok"));
}
