//! Fuzzes the statement policy with the classifier's authorizer installed once on the
//! connection and statements served from the statement cache: thousands of generated statements
//! (reads, writes, DDL, PRAGMAs, transaction control, ATTACH, VACUUM, EXPLAIN, several at once,
//! odd case and comments) from a fixed seed, each run the way a read-scoped token runs it (only
//! class [`Class::Read`] reaches `run`), interleaved with an admin changing the schema under the
//! cache. Whatever a read-scoped statement is, it writes nothing: no row changes, no schema
//! change, no connection setting changed. Plus the cache's own promises: a statement classifies
//! the same from the cache as compiled, a schema change is seen by the next classification, and
//! a user statement no longer expires Patchwork's own cached statements.

use std::time::Duration;

use rusqlite::Connection;

use super::classify::{self, Class};
use super::exec::{self, Limits};

/// A small deterministic generator (xorshift64*): reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const TABLES: &[&str] = &[
    "a",
    "b",
    "va",
    "c",
    "main.a",
    "temp.tt",
    "_patchwork_meta",
    "_patchwork_messages",
    "webhook_inbox",
    "blobs",
    "sqlite_schema",
    "sqlite_sequence",
    "sqlite_temp_schema",
];
const COLUMNS: &[&str] = &["x", "y", "id", "*", "rowid", "k", "v", "count(*)", "max(x)"];
const VALUES: &[&str] = &[
    "1",
    "'s'",
    "NULL",
    "x'00ff'",
    "randomblob(4)",
    "(SELECT count(*) FROM a)",
    "zeroblob(10)",
    "-9223372036854775808",
];
const PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "foreign_keys",
    "query_only",
    "journal_mode",
    "synchronous",
    "cache_size",
    "recursive_triggers",
    "writable_schema",
    "trusted_schema",
    "temp_store",
    "secure_delete",
    "table_info(a)",
    "index_list(a)",
    "integrity_check",
    "optimize",
    "wal_checkpoint",
    "shrink_memory",
    "hard_heap_limit",
    "soft_heap_limit",
    "defer_foreign_keys",
    "locking_mode",
    "mmap_size",
    "schema_version",
    "data_version",
    "incremental_vacuum",
    "database_list",
    "cell_size_check",
];

/// One generated statement (possibly several, possibly broken).
fn statement(rng: &mut Rng, depth: usize) -> String {
    let t = rng.pick(TABLES);
    let c = rng.pick(COLUMNS);
    let v = rng.pick(VALUES);
    let sql = match rng.below(if depth > 1 { 22 } else { 26 }) {
        0..=2 => format!("SELECT {c} FROM {t} WHERE x = {v}"),
        3 => format!("SELECT {v}, {v} UNION ALL SELECT {c}, 1 FROM {t}"),
        4 => format!("INSERT INTO {t} (x, y) VALUES ({v}, {v}) RETURNING *"),
        5 => format!("REPLACE INTO {t} VALUES ({v}, {v}, {v})"),
        6 => format!("UPDATE {t} SET x = {v} WHERE rowid % 2 = 0 RETURNING x"),
        7 => format!("DELETE FROM {t} WHERE x IS {v}"),
        8 => format!("INSERT INTO {t} (x) VALUES ({v}) ON CONFLICT DO UPDATE SET y = excluded.x"),
        9 => {
            let p = rng.pick(PRAGMAS);
            match rng.below(3) {
                0 => format!("PRAGMA {p}"),
                1 => format!("PRAGMA {p} = {}", rng.pick(&["0", "1", "OFF", "WAL", "-1"])),
                _ => format!(
                    "SELECT * FROM pragma_{}",
                    p.replace('(', "('").replace(')', "')")
                ),
            }
        }
        10 => "CREATE TABLE IF NOT EXISTS c (x, y, id INTEGER PRIMARY KEY)".to_owned(),
        11 => format!("CREATE VIEW IF NOT EXISTS vb AS SELECT {c} FROM {t}"),
        12 => format!(
            "CREATE TRIGGER IF NOT EXISTS tr{} AFTER INSERT ON {t} BEGIN INSERT INTO b (k, v) \
             VALUES (hex(randomblob(8)), {v}); END",
            rng.below(3)
        ),
        13 => format!(
            "DROP {} IF EXISTS {t}",
            rng.pick(&["TABLE", "VIEW", "TRIGGER tr0 --", "INDEX"])
        ),
        14 => format!("ALTER TABLE {t} ADD COLUMN z{}", rng.below(5)),
        15 => rng
            .pick(&[
                "BEGIN",
                "COMMIT",
                "ROLLBACK",
                "SAVEPOINT s",
                "RELEASE s",
                "VACUUM",
                "VACUUM INTO '/tmp/patchwork-fuzz-copy.db'",
                "ATTACH ':memory:' AS m",
                "DETACH m",
                "REINDEX",
                "ANALYZE",
                "SELECT load_extension('x')",
                "CREATE TEMP TABLE tt (x)",
                "CREATE TEMP TRIGGER t1 AFTER INSERT ON a BEGIN SELECT 1; END",
                "CREATE INDEX IF NOT EXISTS ia ON a (x)",
                "  -- only a comment",
                "",
            ])
            .to_owned(),
        16 => format!("WITH w AS (SELECT {c} FROM {t}) SELECT * FROM w"),
        17 => format!("WITH w AS (SELECT 1) DELETE FROM {t} WHERE x IN w"),
        18 => format!("SELECT * FROM {t} LIMIT {}", rng.below(5)),
        19 => format!("SELECT typeof({v}), length({v}) FROM {t}"),
        20 => format!("INSERT INTO a (x) SELECT {c} FROM {t} LIMIT 2"),
        21 => format!("UPDATE a SET y = (SELECT count(*) FROM {t})"),
        22 => format!("EXPLAIN {}", statement(rng, depth + 1)),
        23 => format!("EXPLAIN QUERY PLAN {}", statement(rng, depth + 1)),
        24 => format!(
            "{}; {}",
            statement(rng, depth + 1),
            statement(rng, depth + 1)
        ),
        _ => format!("/* c */ {} -- trailing", statement(rng, depth + 1)),
    };
    match rng.below(4) {
        0 => sql.to_lowercase(),
        1 => sql.to_uppercase(),
        _ => sql,
    }
}

/// What a read must leave alone: row changes, both schemas, and connection settings.
fn fingerprint(conn: &Connection) -> String {
    let mut out = format!("changes={} ", conn.total_changes());
    for pragma in [
        "main.schema_version",
        "temp.schema_version",
        "user_version",
        "application_id",
        "foreign_keys",
        "query_only",
        "recursive_triggers",
        "defer_foreign_keys",
        "writable_schema",
        "trusted_schema",
        "cache_size",
        "synchronous",
        "journal_mode",
        "locking_mode",
        "temp_store",
        "secure_delete",
        "cell_size_check",
        "mmap_size",
        "soft_heap_limit",
        "hard_heap_limit",
    ] {
        let value: String = conn
            .prepare_cached(&format!("PRAGMA {pragma}"))
            .and_then(|mut s| s.query_row([], |r| Ok(format!("{:?}", r.get_ref(0)?))))
            .unwrap_or_else(|e| format!("error {e}"));
        out.push_str(&format!("{pragma}={value} "));
    }
    let attached: i64 = conn
        .query_row("SELECT count(*) FROM pragma_database_list", [], |r| {
            r.get(0)
        })
        .unwrap();
    out.push_str(&format!(
        "databases={attached} autocommit={}",
        conn.is_autocommit()
    ));
    out
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(2),
        max_rows: 100,
        max_bytes: 1 << 20,
    }
}

fn document() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    crate::migrations::apply(&conn, crate::migrations::Schema::Document).unwrap();
    conn.execute_batch(
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x, y);
         CREATE TABLE b (k TEXT PRIMARY KEY, v);
         CREATE VIEW va AS SELECT x FROM a;
         CREATE TRIGGER ta AFTER UPDATE ON a BEGIN INSERT OR REPLACE INTO b VALUES ('t', 1); END;
         INSERT INTO a (x, y) VALUES (1, 2), (3, 4), ('s', NULL);
         INSERT INTO b VALUES ('k', 'v');",
    )
    .unwrap();
    conn
}

#[test]
fn no_statement_writes_through_a_read_scope() {
    let conn = document();
    classify::install(&conn);
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut reads_run, mut admin_run, mut refused) = (0, 0, 0);
    for i in 0..20_000 {
        let sql = statement(&mut rng, 0);
        // Now and then an admin changes the schema or the data under the statement cache.
        if rng.below(10) == 0 {
            if let Ok(prepared) = classify::prepare(&conn, &sql) {
                let mut budget = 1 << 20;
                let _ = exec::run(&conn, prepared, &limits(), &mut budget);
                admin_run += 1;
            }
            continue;
        }
        let before = fingerprint(&conn);
        // Twice: compiled (or cached from earlier), then certainly from the cache.
        let first = classify::prepare(&conn, &sql).map(|p| p.class);
        let prepared = classify::prepare(&conn, &sql);
        let second = prepared.as_ref().map(|p| p.class);
        match (&first, &second) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "#{i} {sql}"),
            (Err(_), Err(_)) => {}
            _ => panic!("#{i} {sql}: {first:?} then {:?}", second.is_ok()),
        }
        match prepared {
            Ok(prepared) if prepared.class == Class::Read => {
                let mut budget = 1 << 20;
                let _ = exec::run(&conn, prepared, &limits(), &mut budget);
                reads_run += 1;
                assert_eq!(before, fingerprint(&conn), "#{i}: {sql} wrote as a read");
            }
            Ok(_) => {}
            Err(_) => refused += 1,
        }
    }
    classify::uninstall();
    // The generator reaches every kind of outcome.
    assert!(reads_run > 1_500, "{reads_run} reads");
    assert!(admin_run > 300, "{admin_run} admin statements");
    assert!(refused > 3_000, "{refused} refused");
}

#[test]
fn a_schema_change_is_seen_by_the_next_classification() {
    let conn = document();
    classify::install(&conn);
    let reads = |sql: &str| {
        let p = classify::prepare(&conn, sql).unwrap();
        let reads: Vec<String> = p.reads.iter().cloned().collect();
        reads
    };
    let run = |sql: &str| {
        let p = classify::prepare(&conn, sql).unwrap();
        let mut budget = 1 << 20;
        exec::run(&conn, p, &limits(), &mut budget).unwrap();
    };
    assert_eq!(reads("SELECT * FROM va"), vec!["a", "va"]);
    assert_eq!(reads("SELECT * FROM va"), vec!["a", "va"]);
    // The view now reads another table: the cached statement's classification is dropped with
    // the DDL.
    run("DROP VIEW va");
    run("CREATE VIEW va AS SELECT k AS x FROM b");
    assert_eq!(reads("SELECT * FROM va"), vec!["b", "va"]);

    // Patchwork changing the schema itself without saying so: the cached statement is
    // recompiled by SQLite while it runs, which the classifier notices and forgets everything.
    run("SELECT * FROM a");
    conn.execute_batch("ALTER TABLE a ADD COLUMN w").unwrap();
    let p = classify::prepare(&conn, "SELECT * FROM a").unwrap();
    let mut budget = 1 << 20;
    let out = exec::run(&conn, p, &limits(), &mut budget).unwrap();
    assert_eq!(out["columns"], serde_json::json!(["id", "x", "y", "w"]));
    classify::uninstall();
}

#[test]
fn user_statements_leave_patchworks_cached_statements_alone() {
    let conn = document();
    classify::install(&conn);
    let own = "SELECT count(*) FROM _patchwork_meta";
    let count = || -> i64 {
        conn.prepare_cached(own)
            .unwrap()
            .query_row([], |r| r.get(0))
            .unwrap()
    };
    count();
    for sql in [
        "SELECT * FROM a",
        "UPDATE a SET y = 1",
        "PRAGMA table_info(a)",
    ] {
        let p = classify::prepare(&conn, sql).unwrap();
        let mut budget = 1 << 20;
        exec::run(&conn, p, &limits(), &mut budget).unwrap();
        count();
    }
    let stmt = conn.prepare_cached(own).unwrap();
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "Patchwork's statement was never expired"
    );
    drop(stmt);
    // Between user statements Patchwork's own statements are not the user's: they may write
    // Patchwork's tables, which no user statement may.
    conn.execute("DELETE FROM _patchwork_meta WHERE 0", [])
        .unwrap();
    assert!(classify::prepare(&conn, "DELETE FROM _patchwork_meta WHERE 0").is_err());
    classify::uninstall();
}
