//! SQL argument decoding: any JSON as `args` (array or object) is decoded and bound to a
//! statement with positional and named parameters without panicking; decoded values survive the
//! round trip through SQLite and back to JSON.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use patchwork::query::{exec, value};
use rusqlite::Connection;

thread_local! {
    static CONN: RefCell<Connection> = RefCell::new(Connection::open_in_memory().unwrap());
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    // A single value: decoded, stored, read back as the same JSON (when it decodes).
    if let Ok(sql) = value::from_json(&json) {
        CONN.with(|c| {
            let c = c.borrow();
            let back = c
                .query_row("SELECT ?1", [&sql], |r| Ok(value::to_json(r.get_ref(0)?)))
                .unwrap();
            let again = value::from_json(&back).expect("what to_json gives, from_json takes");
            assert_eq!(again, sql, "{json} -> {back}");
        });
    }
    // As `args` of statements with positional, numbered and named parameters.
    CONN.with(|c| {
        let c = c.borrow();
        for sql in ["SELECT ?, ?", "SELECT ?1, ?3", "SELECT :a, @b, $c", "SELECT 1"] {
            let mut stmt = c.prepare(sql).unwrap();
            if exec::bind(&mut stmt, Some(&json)).is_ok() {
                let mut rows = stmt.raw_query();
                while let Ok(Some(_)) = rows.next() {}
            }
        }
    });
});
