//! The presence of every document, shared by the handlers: one [`DocPresence`] per document
//! behind its own mutex (never held across an `.await`), the room channels that carry events to
//! SSE subscribers, the periodic sweep, and connection-bound leaves.
//!
//! Events of a room are rendered to SSE bytes once, under the document's lock, and sent on the
//! room's broadcast channel, so every subscriber sees them in the order they happened; a
//! subscriber's snapshot is taken and its receiver made under the same lock, so nothing falls
//! between the two.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::connections::Live;
use super::machine::{Beat, Change, DocPresence, Limits, Reason, Refused, View};
use crate::config::Config;
use crate::error::ApiError;
use crate::ops::metrics::Metrics;
use crate::state::AppState;

/// Events buffered per room for a subscriber that is behind; past that it gets a new snapshot.
pub const ROOM_QUEUE: usize = 1024;
/// How often expired members are swept (they also leave whenever their room is touched).
pub const SWEEP: Duration = Duration::from_secs(1);

/// Where "now" comes from: the system clock, or a test's hand.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::time_fmt::now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A member as the API shows it.
pub fn view_json(v: &View) -> Value {
    json!({
        "member": v.member,
        "state": v.state,
        "since": crate::time_fmt::from_unix_ms(v.since_ms),
        "expires_at": crate::time_fmt::from_unix_ms(v.expires_ms),
    })
}

fn change_frame(change: &Change) -> (&'static str, Bytes) {
    let (kind, data) = match change {
        Change::Join(v) => ("join", view_json(v)),
        Change::Update(v) => ("update", view_json(v)),
        Change::Leave { member, reason } => (
            "leave",
            json!({"member": member, "reason": reason.as_str()}),
        ),
    };
    (
        kind,
        crate::pubsub::sse_event(kind, None, &data.to_string()),
    )
}

struct Doc {
    machine: DocPresence,
    channels: HashMap<String, broadcast::Sender<Bytes>>,
    /// Removed from the map (it was empty): whoever still holds it looks again.
    dead: bool,
}

impl Doc {
    /// Sends `changes` of `room` to its subscribers.
    fn announce(&self, room: &str, changes: &[Change], metrics: &Metrics) {
        for change in changes {
            let (kind, frame) = change_frame(change);
            metrics.presence.event(kind);
            if let Some(tx) = self.channels.get(room) {
                let _ = tx.send(frame);
            }
        }
    }
}

struct Inner {
    docs: Mutex<HashMap<String, Arc<Mutex<Doc>>>>,
    limits: Limits,
    max_members_total: usize,
    members: AtomicUsize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Connection serial → the documents with members bound to it (one watcher task each).
    watched: Mutex<HashMap<u64, HashSet<String>>>,
}

/// Every document's presence. Cheap to clone.
#[derive(Clone)]
pub struct Presence(Arc<Inner>);

/// What a subscriber starts from.
pub struct Subscribed {
    pub members: Vec<View>,
    pub ttl_ms: i64,
    pub rx: broadcast::Receiver<Bytes>,
    /// Unpins the room when dropped.
    pub pin: Pin,
}

/// Keeps a room alive while a subscriber watches it.
pub struct Pin {
    presence: Presence,
    db: String,
    room: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let p = &self.presence;
        p.0.metrics.presence.subscribers.dec();
        p.with_doc(&self.db, false, |d, now| {
            d.machine.unpin(now, &self.room);
            p.collect_room(d, now, &self.room);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::RoomFull(max) => ApiError::conflict(
            "room_full",
            format!("the room has {max} members, the most allowed"),
        ),
        Refused::TooManyRooms(max) => ApiError::conflict(
            "too_many_rooms",
            format!("the document has {max} presence rooms, the most allowed"),
        ),
    }
}

impl Presence {
    pub fn new(config: &Config, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        Self(Arc::new(Inner {
            docs: Mutex::default(),
            limits: Limits {
                default_ttl_ms: i64::try_from(config.presence_ttl_secs)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000),
                max_members_per_room: config.presence_max_members_per_room,
                max_rooms: config.presence_max_rooms_per_document,
            },
            max_members_total: config.presence_max_members_total,
            members: AtomicUsize::new(0),
            clock,
            metrics,
            watched: Mutex::default(),
        }))
    }

    pub fn now(&self) -> i64 {
        self.0.clock.now_ms()
    }

    /// Runs `f` on document `db`'s presence under its lock (creating it if `create`), keeps the
    /// member count in step, and drops the document's entry once it holds nothing. `None`:
    /// the document has no presence and `create` is false.
    ///
    /// Lock order: a document's lock, then the map's; the map's lock is never held while
    /// waiting for a document's.
    fn with_doc<R>(&self, db: &str, create: bool, f: impl FnOnce(&mut Doc, i64) -> R) -> Option<R> {
        loop {
            let doc = {
                let mut docs = lock(&self.0.docs);
                match docs.get(db) {
                    Some(d) => d.clone(),
                    None if create => {
                        let d = Arc::new(Mutex::new(Doc {
                            machine: DocPresence::new(self.0.limits),
                            channels: HashMap::new(),
                            dead: false,
                        }));
                        docs.insert(db.to_owned(), d.clone());
                        d
                    }
                    None => return None,
                }
            };
            let mut d = lock(&doc);
            if d.dead {
                continue;
            }
            let before = d.machine.members();
            let result = f(&mut d, self.now());
            self.recount(before, d.machine.members());
            self.forget_if_empty(db, &doc, &mut d);
            return Some(result);
        }
    }

    fn forget_if_empty(&self, db: &str, doc: &Arc<Mutex<Doc>>, d: &mut Doc) {
        if d.machine.is_empty() {
            d.dead = true;
            let mut docs = lock(&self.0.docs);
            if docs.get(db).is_some_and(|x| Arc::ptr_eq(x, doc)) {
                docs.remove(db);
            }
        }
    }

    /// Keeps the members gauge and total in step with a document's count.
    fn recount(&self, before: usize, after: usize) {
        let m = &self.0.metrics.presence;
        if after > before {
            self.0.members.fetch_add(after - before, Ordering::Relaxed);
            m.members.inc_by((after - before) as i64);
        } else if before > after {
            self.0.members.fetch_sub(before - after, Ordering::Relaxed);
            m.members.dec_by((before - after) as i64);
        }
    }

    fn collect_room(&self, d: &mut Doc, now: i64, room: &str) {
        if d.machine.collect_room(now, room) {
            d.channels.remove(room);
            self.0.metrics.presence.rooms.dec();
        }
    }

    fn refuse(&self, r: Refused) -> ApiError {
        self.0.metrics.presence.refused(match r {
            Refused::RoomFull(_) => "room_full",
            Refused::TooManyRooms(_) => "too_many_rooms",
        });
        refused(r)
    }

    /// A heartbeat (see [`DocPresence::heartbeat`]); `conn` is a live connection to bind to.
    pub fn heartbeat(
        &self,
        db: &str,
        room: &str,
        member: &str,
        state: Option<Value>,
        conn: Option<Live>,
    ) -> Result<View, ApiError> {
        let serial = conn.as_ref().map(|c| c.serial);
        let view = self
            .with_doc(db, true, |d, now| {
                if self.0.members.load(Ordering::Relaxed) >= self.0.max_members_total
                    && !d.machine.has_member(room, member)
                {
                    self.0.metrics.presence.refused("capacity");
                    return Err(ApiError::overloaded(format!(
                        "the server holds {} presence members, the most allowed",
                        self.0.max_members_total
                    )));
                }
                let Beat {
                    view,
                    changes,
                    room_created,
                    ..
                } = d
                    .machine
                    .heartbeat(now, room, member, state, serial)
                    .map_err(|r| self.refuse(r))?;
                if room_created {
                    self.0.metrics.presence.rooms.inc();
                }
                d.announce(room, &changes, &self.0.metrics);
                Ok(view)
            })
            .expect("created")?;
        self.0.metrics.presence.heartbeats.inc();
        if let Some(live) = conn {
            self.watch(db, live);
        }
        Ok(view)
    }

    /// Makes the members bound to `live` leave when it closes (one task per connection).
    fn watch(&self, db: &str, live: Live) {
        let mut watched = lock(&self.0.watched);
        if let Some(dbs) = watched.get_mut(&live.serial) {
            dbs.insert(db.to_owned());
            return;
        }
        watched.insert(live.serial, HashSet::from([db.to_owned()]));
        drop(watched);
        let presence = self.clone();
        tokio::spawn(async move {
            live.closed.cancelled().await;
            presence.disconnected(live.serial);
        });
    }

    /// Connection `serial` closed: its members leave (`disconnected`).
    pub fn disconnected(&self, serial: u64) {
        let dbs = lock(&self.0.watched).remove(&serial).unwrap_or_default();
        for db in dbs {
            self.with_doc(&db, false, |d, now| {
                for (room, change) in d.machine.disconnect(serial) {
                    d.announce(&room, std::slice::from_ref(&change), &self.0.metrics);
                    self.collect_room(d, now, &room);
                }
            });
        }
    }

    /// `member` leaves `room`; whether it was there.
    pub fn leave(&self, db: &str, room: &str, member: &str) -> bool {
        self.with_doc(db, false, |d, now| {
            let changes = d.machine.leave(now, room, member);
            d.announce(room, &changes, &self.0.metrics);
            self.collect_room(d, now, room);
            changes.iter().any(
                |c| matches!(c, Change::Leave { member: m, reason: Reason::Left } if m == member),
            )
        })
        .unwrap_or(false)
    }

    /// The members of `room`, by name.
    pub fn list(&self, db: &str, room: &str) -> Vec<View> {
        self.with_doc(db, false, |d, now| {
            let (views, changes) = d.machine.list(now, room);
            d.announce(room, &changes, &self.0.metrics);
            self.collect_room(d, now, room);
            views
        })
        .unwrap_or_default()
    }

    /// Sets `room`'s TTL.
    pub fn set_ttl(&self, db: &str, room: &str, ttl_secs: u64) -> Result<(), ApiError> {
        let ttl_ms = i64::try_from(ttl_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        self.with_doc(db, true, |d, now| {
            if d.machine
                .set_ttl(now, room, ttl_ms)
                .map_err(|r| self.refuse(r))?
            {
                self.0.metrics.presence.rooms.inc();
            }
            Ok(())
        })
        .expect("created")
    }

    /// The room's members and a receiver of what happens next, with nothing between them.
    pub fn subscribe(&self, db: &str, room: &str) -> Result<Subscribed, ApiError> {
        self.with_doc(db, true, |d, now| {
            if d.machine.pin(now, room).map_err(|r| self.refuse(r))? {
                self.0.metrics.presence.rooms.inc();
            }
            self.0.metrics.presence.subscribers.inc();
            let pin = Pin {
                presence: self.clone(),
                db: db.to_owned(),
                room: room.to_owned(),
            };
            let (members, changes) = d.machine.list(now, room);
            d.announce(room, &changes, &self.0.metrics);
            let rx = d
                .channels
                .entry(room.to_owned())
                .or_insert_with(|| broadcast::channel(ROOM_QUEUE).0)
                .subscribe();
            Ok(Subscribed {
                members,
                ttl_ms: d.machine.ttl_ms(room),
                rx,
                pin,
            })
        })
        .expect("created")
    }

    /// A fresh snapshot for a subscriber that fell behind, and a new receiver (its pin keeps
    /// the room and its channel).
    pub fn resubscribe(
        &self,
        db: &str,
        room: &str,
    ) -> Option<(Vec<View>, i64, broadcast::Receiver<Bytes>)> {
        self.with_doc(db, false, |d, now| {
            let (members, changes) = d.machine.list(now, room);
            d.announce(room, &changes, &self.0.metrics);
            let rx = d.channels.get(room)?.subscribe();
            Some((members, d.machine.ttl_ms(room), rx))
        })
        .flatten()
    }

    /// Expires every member whose time has come and forgets unused rooms and documents.
    pub fn sweep(&self) {
        let dbs: Vec<String> = lock(&self.0.docs).keys().cloned().collect();
        for db in dbs {
            self.with_doc(&db, false, |d, now| {
                for (room, change) in d.machine.sweep(now) {
                    d.announce(&room, std::slice::from_ref(&change), &self.0.metrics);
                }
                for room in d.machine.collect(now) {
                    d.channels.remove(&room);
                    self.0.metrics.presence.rooms.dec();
                }
            });
        }
    }

    /// Members held over every document.
    pub fn members(&self) -> usize {
        self.0.members.load(Ordering::Relaxed)
    }
}

/// Sweeps every [`SWEEP`] until shutdown.
pub async fn sweeper(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => state.presence.sweep(),
            () = state.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::presence::connections::Connections;

    fn presence(clock: Arc<ManualClock>) -> (Presence, Arc<Metrics>) {
        let config = Config {
            presence_ttl_secs: 10,
            presence_max_members_per_room: 100,
            presence_max_rooms_per_document: 10,
            presence_max_members_total: 3,
            ..Config::default()
        };
        let metrics = Metrics::new();
        (Presence::new(&config, metrics.clone(), clock), metrics)
    }

    fn event(frame: &Bytes) -> (String, Value) {
        let text = std::str::from_utf8(frame).unwrap();
        let mut lines = text.lines();
        let kind = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        (kind.to_owned(), serde_json::from_str(data).unwrap())
    }

    #[tokio::test]
    async fn subscribers_see_join_update_and_expiry_in_order() {
        let clock = Arc::new(ManualClock::default());
        clock.advance(1_000_000);
        let (p, _) = presence(clock.clone());
        p.heartbeat("d", "r", "ann", None, None).unwrap();
        let mut sub = p.subscribe("d", "r").unwrap();
        assert_eq!(sub.members.len(), 1);
        assert_eq!(sub.ttl_ms, 10_000);
        p.heartbeat("d", "r", "bob", Some(json!(1)), None).unwrap();
        p.heartbeat("d", "r", "bob", Some(json!(2)), None).unwrap();
        clock.advance(10_000);
        p.sweep();
        let got: Vec<(String, Value)> =
            (0..4).map(|_| event(&sub.rx.try_recv().unwrap())).collect();
        assert_eq!(got[0].0, "join");
        assert_eq!(got[1], ("update".into(), got[1].1.clone()));
        assert_eq!(got[1].1["state"], json!(2));
        assert_eq!(got[2].1, json!({"member": "ann", "reason": "expired"}));
        assert_eq!(got[3].1, json!({"member": "bob", "reason": "expired"}));
        assert_eq!(p.members(), 0);
        // The pinned room stays while its subscriber does; then everything is forgotten.
        drop(sub);
        p.sweep();
        assert!(lock(&p.0.docs).is_empty());
    }

    #[tokio::test]
    async fn closing_a_bound_connection_makes_its_members_leave() {
        let clock = Arc::new(ManualClock::default());
        let (p, metrics) = presence(clock);
        let conns = Connections::new(metrics);
        let guard = conns.register("token:t".into(), "sse");
        let live = conns.find("token:t", guard.id()).unwrap();
        p.heartbeat("d", "r", "ann", None, Some(live)).unwrap();
        let mut sub = p.subscribe("d", "r").unwrap();
        drop(guard);
        let frame = tokio::time::timeout(Duration::from_secs(5), sub.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            event(&frame).1,
            json!({"member": "ann", "reason": "disconnected"})
        );
        assert!(p.list("d", "r").is_empty());
    }

    #[tokio::test]
    async fn the_total_is_bounded() {
        let (p, _) = presence(Arc::new(ManualClock::default()));
        for m in ["a", "b", "c"] {
            p.heartbeat("d", "r", m, None, None).unwrap();
        }
        let e = p.heartbeat("e", "r", "d", None, None).unwrap_err();
        assert_eq!(e.code, "overloaded");
        // A member already present still beats.
        assert!(p.heartbeat("d", "r", "a", None, None).is_ok());
        assert!(p.leave("d", "r", "a"));
        assert!(p.heartbeat("e", "r", "d", None, None).is_ok());
    }
}
