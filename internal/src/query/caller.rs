//! Who is calling, inside SQL: `patchwork_caller()` (the token's id, or a person's OIDC subject)
//! and `patchwork_caller_name()` (the token's label — an invite's member name for a redeemed
//! invite — or the person's name), usable in statements, defaults and triggers, so a document
//! can stamp authors server-side: a client cannot forge them.
//!
//! The functions read a per-thread value that the route's closure sets for exactly the time its
//! statements run on the actor thread ([`as_caller`]). A group commit runs many requests' writes
//! one after another on that thread, each in its own savepoint, so each write (and every
//! trigger it fires) sees its own caller. Outside a request (sweeps, Patchwork's own writes)
//! both are NULL.

use std::cell::RefCell;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::auth::Authorized;

/// A caller as SQL sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub name: String,
}

impl Caller {
    /// The caller behind an authorized request: a signed-in person (not a token login) by
    /// subject and name, otherwise the token by id and label.
    pub fn of(auth: &Authorized) -> Option<Caller> {
        if let Some(web) = auth.web.as_deref()
            && web.token_id.is_none()
        {
            return Some(Caller {
                id: web.subject.clone(),
                name: web
                    .name
                    .clone()
                    .or_else(|| web.email.clone())
                    .unwrap_or_else(|| web.subject.clone()),
            });
        }
        auth.token.as_ref().map(|t| Caller {
            id: t.meta.id.clone(),
            name: t.meta.label.clone(),
        })
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Caller>> = const { RefCell::new(None) };
}

/// Runs `f` with `caller` as the thread's SQL caller, then restores the previous one (also when
/// `f` panics).
pub fn as_caller<T>(caller: Option<&Caller>, f: impl FnOnce() -> T) -> T {
    let _scope = Scope::enter(caller.cloned());
    f()
}

/// The thread's SQL caller until dropped (then the previous one again): for closures that run
/// many statements.
pub struct Scope(Option<Caller>);

impl Scope {
    pub fn enter(caller: Option<Caller>) -> Scope {
        Scope(CURRENT.with(|c| c.replace(caller)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Registers `patchwork_caller()` and `patchwork_caller_name()` on a document connection.
/// Innocuous (no side effects), so triggers and views may use them even with
/// `trusted_schema=OFF`; not deterministic (they differ per write).
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("patchwork_caller", 0, flags, |_| {
        Ok(CURRENT.with(|c| c.borrow().as_ref().map(|c| c.id.clone())))
    })?;
    conn.create_scalar_function("patchwork_caller_name", 0, flags, |_| {
        Ok(CURRENT.with(|c| c.borrow().as_ref().map(|c| c.name.clone())))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_sees_its_own_caller_even_in_triggers() {
        let conn = Connection::open_in_memory().unwrap();
        install(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE notes (body TEXT, author TEXT, author_name TEXT);
             CREATE TRIGGER stamp AFTER INSERT ON notes BEGIN
                 UPDATE notes SET author = patchwork_caller(), author_name = patchwork_caller_name()
                 WHERE rowid = NEW.rowid;
             END;",
        )
        .unwrap();
        let alice = Caller {
            id: "t-alice".into(),
            name: "Alice".into(),
        };
        let bob = Caller {
            id: "t-bob".into(),
            name: "Bob".into(),
        };
        as_caller(Some(&alice), || {
            conn.execute(
                "INSERT INTO notes (body, author) VALUES ('a', 'forged')",
                [],
            )
            .unwrap();
            // Nested: restored afterwards.
            as_caller(Some(&bob), || {
                conn.execute("INSERT INTO notes (body) VALUES ('b')", [])
                    .unwrap();
            });
            conn.execute("INSERT INTO notes (body) VALUES ('a2')", [])
                .unwrap();
        });
        conn.execute("INSERT INTO notes (body) VALUES ('nobody')", [])
            .unwrap();
        let rows: Vec<(String, Option<String>, Option<String>)> = conn
            .prepare("SELECT body, author, author_name FROM notes ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = |b: &str, a: Option<&str>, n: Option<&str>| {
            (b.to_owned(), a.map(str::to_owned), n.map(str::to_owned))
        };
        assert_eq!(
            rows,
            vec![
                want("a", Some("t-alice"), Some("Alice")),
                want("b", Some("t-bob"), Some("Bob")),
                want("a2", Some("t-alice"), Some("Alice")),
                want("nobody", None, None),
            ]
        );
    }
}
