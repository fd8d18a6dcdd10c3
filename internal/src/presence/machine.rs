//! Presence of one document, as pure state: rooms, their members and what changed. No clock
//! and no I/O: every operation takes `now` (Unix milliseconds) and returns the [`Change`]s it
//! made, which the caller announces. Unit tests drive time by passing it.
//!
//! Rules:
//! - A heartbeat joins a member (`join`), or refreshes its expiry; when it carries a state that
//!   differs from the stored one it is an `update`. A refresh alone announces nothing.
//! - A member expires `ttl` after its last heartbeat (the room's own TTL, else the default).
//!   Expired members leave (`expired`) when the sweep runs or when their room is next touched,
//!   whichever comes first, so a listing never shows a member past its `expires_at`.
//! - A member bound to a connection leaves (`disconnected`) when [`DocPresence::disconnect`]
//!   is called for it; the TTL still applies meanwhile.
//! - A room exists while it has members, subscribers (pins) or its own TTL; one with only a TTL
//!   is forgotten once it has been unused for [`CONFIG_IDLE_MS`].

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// An empty room kept only for its TTL setting is forgotten after this long unused.
pub const CONFIG_IDLE_MS: i64 = 3_600_000;

/// The bounds of one document's presence.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub default_ttl_ms: i64,
    pub max_members_per_room: usize,
    pub max_rooms: usize,
}

/// Why a member left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Left,
    Expired,
    Disconnected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Left => "left",
            Reason::Expired => "expired",
            Reason::Disconnected => "disconnected",
        }
    }
}

/// A member as listed and announced.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub member: String,
    pub state: Value,
    pub since_ms: i64,
    pub expires_ms: i64,
}

/// One change to a room.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Join(View),
    Update(View),
    Leave { member: String, reason: Reason },
}

/// What refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The room has `max_members_per_room` members.
    RoomFull(usize),
    /// The document has `max_rooms` rooms.
    TooManyRooms(usize),
}

#[derive(Debug)]
struct Member {
    state: Value,
    since_ms: i64,
    expires_ms: i64,
    /// The connection (registry serial) this member leaves with.
    conn: Option<u64>,
}

#[derive(Debug, Default)]
struct Room {
    ttl_ms: Option<i64>,
    members: HashMap<String, Member>,
    /// Live subscribers.
    pins: usize,
    last_used_ms: i64,
}

impl Room {
    fn view(name: &str, m: &Member) -> View {
        View {
            member: name.to_owned(),
            state: m.state.clone(),
            since_ms: m.since_ms,
            expires_ms: m.expires_ms,
        }
    }

    fn removable(&self, now: i64) -> bool {
        self.members.is_empty()
            && self.pins == 0
            && (self.ttl_ms.is_none() || now - self.last_used_ms >= CONFIG_IDLE_MS)
    }
}

/// The presence of one document.
#[derive(Debug)]
pub struct DocPresence {
    limits: Limits,
    rooms: HashMap<String, Room>,
    /// Connection serial → the (room, member) pairs bound to it.
    bound: HashMap<u64, HashSet<(String, String)>>,
    members: usize,
    /// No member expires before this (a lower bound): the sweep skips the document until then.
    next_expiry_ms: i64,
}

/// What a heartbeat did.
#[derive(Debug)]
pub struct Beat {
    pub view: View,
    /// Leaves of members that had expired in the room, then this member's join or update.
    pub changes: Vec<Change>,
    /// The member is new.
    pub joined: bool,
    /// The room is new.
    pub room_created: bool,
}

impl DocPresence {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            rooms: HashMap::new(),
            bound: HashMap::new(),
            members: 0,
            next_expiry_ms: i64::MAX,
        }
    }

    /// Members over every room.
    pub fn members(&self) -> usize {
        self.members
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn has_member(&self, room: &str, member: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(member))
    }

    /// Nothing left: the document's entry can go.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The room's TTL in milliseconds (its own, else the default).
    pub fn ttl_ms(&self, room: &str) -> i64 {
        self.rooms
            .get(room)
            .and_then(|r| r.ttl_ms)
            .unwrap_or(self.limits.default_ttl_ms)
    }

    fn room_mut(&mut self, now: i64, room: &str) -> Result<(&mut Room, bool), Refused> {
        let created = !self.rooms.contains_key(room);
        if created {
            if self.rooms.len() >= self.limits.max_rooms {
                return Err(Refused::TooManyRooms(self.limits.max_rooms));
            }
            self.rooms.insert(room.to_owned(), Room::default());
        }
        let r = self.rooms.get_mut(room).expect("inserted above");
        r.last_used_ms = now;
        Ok((r, created))
    }

    /// Joins or refreshes `member` in `room`; `state: None` keeps the stored state (`null` for
    /// a new member); `conn: Some` binds the member to that connection (else the binding stays).
    pub fn heartbeat(
        &mut self,
        now: i64,
        room: &str,
        member: &str,
        state: Option<Value>,
        conn: Option<u64>,
    ) -> Result<Beat, Refused> {
        let mut changes = self.expire_room(now, room);
        let default_ttl = self.limits.default_ttl_ms;
        let max_members = self.limits.max_members_per_room;
        let (r, room_created) = self.room_mut(now, room)?;
        let expires_ms = now.saturating_add(r.ttl_ms.unwrap_or(default_ttl));
        let mut old_conn = None;
        let joined;
        let change = match r.members.get_mut(member) {
            Some(m) => {
                joined = false;
                m.expires_ms = expires_ms;
                if conn.is_some() && m.conn != conn {
                    old_conn = m.conn;
                    m.conn = conn;
                }
                match state {
                    Some(s) if s != m.state => {
                        m.state = s;
                        Some(Change::Update(Room::view(member, m)))
                    }
                    _ => None,
                }
            }
            None => {
                if r.members.len() >= max_members {
                    // A room created just now for this heartbeat is empty: not kept.
                    if room_created {
                        self.rooms.remove(room);
                    }
                    return Err(Refused::RoomFull(max_members));
                }
                joined = true;
                let m = Member {
                    state: state.unwrap_or(Value::Null),
                    since_ms: now,
                    expires_ms,
                    conn,
                };
                let view = Room::view(member, &m);
                r.members.insert(member.to_owned(), m);
                Some(Change::Join(view))
            }
        };
        let view = Room::view(member, &r.members[member]);
        if joined {
            self.members += 1;
        }
        if let Some(old) = old_conn {
            self.unbind(old, room, member);
        }
        if let Some(c) = conn {
            self.bound
                .entry(c)
                .or_default()
                .insert((room.to_owned(), member.to_owned()));
        }
        self.next_expiry_ms = self.next_expiry_ms.min(expires_ms);
        changes.extend(change);
        Ok(Beat {
            view,
            changes,
            joined,
            room_created,
        })
    }

    fn unbind(&mut self, conn: u64, room: &str, member: &str) {
        if let Some(set) = self.bound.get_mut(&conn) {
            set.remove(&(room.to_owned(), member.to_owned()));
            if set.is_empty() {
                self.bound.remove(&conn);
            }
        }
    }

    /// Removes a member; `None` if it was not there.
    fn remove(&mut self, room: &str, member: &str, reason: Reason) -> Option<Change> {
        let m = self.rooms.get_mut(room)?.members.remove(member)?;
        self.members -= 1;
        if let Some(c) = m.conn {
            self.unbind(c, room, member);
        }
        Some(Change::Leave {
            member: member.to_owned(),
            reason,
        })
    }

    /// `member` leaves `room` at once (`left`).
    pub fn leave(&mut self, now: i64, room: &str, member: &str) -> Vec<Change> {
        let mut changes = self.expire_room(now, room);
        changes.extend(self.remove(room, member, Reason::Left));
        changes
    }

    /// Whether `member` is in `room` (not expired).
    pub fn is_present(&self, now: i64, room: &str, member: &str) -> bool {
        self.rooms
            .get(room)
            .and_then(|r| r.members.get(member))
            .is_some_and(|m| m.expires_ms > now)
    }

    /// The members of `room` whose time has come leave (`expired`).
    pub fn expire_room(&mut self, now: i64, room: &str) -> Vec<Change> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut gone: Vec<String> = r
            .members
            .iter()
            .filter(|(_, m)| m.expires_ms <= now)
            .map(|(name, _)| name.clone())
            .collect();
        gone.sort();
        gone.iter()
            .filter_map(|name| self.remove(room, name, Reason::Expired))
            .collect()
    }

    /// The members of `room` (expired ones first leave), by name.
    pub fn list(&mut self, now: i64, room: &str) -> (Vec<View>, Vec<Change>) {
        let changes = self.expire_room(now, room);
        let mut views: Vec<View> = self
            .rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|(name, m)| Room::view(name, m))
                    .collect()
            })
            .unwrap_or_default();
        views.sort_by(|a, b| a.member.cmp(&b.member));
        (views, changes)
    }

    /// Sets `room`'s own TTL (creating the room). Members keep their current expiry until
    /// their next heartbeat.
    pub fn set_ttl(&mut self, now: i64, room: &str, ttl_ms: i64) -> Result<bool, Refused> {
        let (r, created) = self.room_mut(now, room)?;
        r.ttl_ms = Some(ttl_ms);
        Ok(created)
    }

    /// A subscriber starts watching `room` (creating it): the room stays while pinned.
    pub fn pin(&mut self, now: i64, room: &str) -> Result<bool, Refused> {
        let (r, created) = self.room_mut(now, room)?;
        r.pins += 1;
        Ok(created)
    }

    /// A subscriber of `room` is gone.
    pub fn unpin(&mut self, now: i64, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.pins = r.pins.saturating_sub(1);
            r.last_used_ms = now;
        }
    }

    /// Every member bound to connection `conn` leaves (`disconnected`), by room.
    pub fn disconnect(&mut self, conn: u64) -> Vec<(String, Change)> {
        let Some(pairs) = self.bound.remove(&conn) else {
            return Vec::new();
        };
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        pairs.sort();
        let mut out = Vec::new();
        for (room, member) in pairs {
            // Still bound to this connection (unbinding keeps `bound` exact, so it is).
            if let Some(change) = self.remove(&room, &member, Reason::Disconnected) {
                out.push((room, change));
            }
        }
        out
    }

    /// Every expired member leaves (`expired`), by room.
    pub fn sweep(&mut self, now: i64) -> Vec<(String, Change)> {
        if now < self.next_expiry_ms {
            return Vec::new();
        }
        let mut rooms: Vec<String> = self.rooms.keys().cloned().collect();
        rooms.sort();
        let mut out = Vec::new();
        for room in rooms {
            for change in self.expire_room(now, &room) {
                out.push((room.clone(), change));
            }
        }
        self.next_expiry_ms = self
            .rooms
            .values()
            .flat_map(|r| r.members.values().map(|m| m.expires_ms))
            .min()
            .unwrap_or(i64::MAX);
        out
    }

    /// Forgets rooms nothing keeps (see the module doc); returns their names.
    pub fn collect(&mut self, now: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.removable(now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.rooms.remove(name);
        }
        gone
    }

    /// Forgets `room` if nothing keeps it; whether it did.
    pub fn collect_room(&mut self, now: i64, room: &str) -> bool {
        if self.rooms.get(room).is_some_and(|r| r.removable(now)) {
            self.rooms.remove(room);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: Limits = Limits {
        default_ttl_ms: 60_000,
        max_members_per_room: 3,
        max_rooms: 2,
    };

    fn leave(member: &str, reason: Reason) -> Change {
        Change::Leave {
            member: member.into(),
            reason,
        }
    }

    #[test]
    fn join_refresh_update_and_leave() {
        let mut p = DocPresence::new(LIMITS);
        let b = p.heartbeat(1_000, "r", "ann", None, None).unwrap();
        assert!(b.joined && b.room_created);
        assert_eq!(b.view.expires_ms, 61_000);
        assert_eq!(b.view.state, Value::Null);
        assert!(matches!(&b.changes[..], [Change::Join(v)] if v.member == "ann"));
        // A refresh moves the expiry and announces nothing.
        let b = p.heartbeat(2_000, "r", "ann", None, None).unwrap();
        assert!(b.changes.is_empty() && !b.joined);
        assert_eq!((b.view.since_ms, b.view.expires_ms), (1_000, 62_000));
        // The same state again: nothing; a new state: an update.
        let b = p
            .heartbeat(3_000, "r", "ann", Some(json!({"typing": true})), None)
            .unwrap();
        assert!(
            matches!(&b.changes[..], [Change::Update(v)] if v.state == json!({"typing": true}))
        );
        let b = p
            .heartbeat(3_500, "r", "ann", Some(json!({"typing": true})), None)
            .unwrap();
        assert!(b.changes.is_empty());
        // No state keeps the stored one.
        let b = p.heartbeat(4_000, "r", "ann", None, None).unwrap();
        assert_eq!(b.view.state, json!({"typing": true}));
        assert_eq!(p.leave(5_000, "r", "ann"), vec![leave("ann", Reason::Left)]);
        assert!(p.leave(5_000, "r", "ann").is_empty());
        assert_eq!(p.members(), 0);
        assert_eq!(p.collect(5_000), vec!["r".to_owned()]);
        assert!(p.is_empty());
    }

    #[test]
    fn members_expire_on_sweep_and_on_touch() {
        let mut p = DocPresence::new(LIMITS);
        p.heartbeat(0, "r", "a", None, None).unwrap();
        p.heartbeat(30_000, "r", "b", None, None).unwrap();
        assert!(p.sweep(59_999).is_empty());
        assert_eq!(
            p.sweep(60_000),
            vec![("r".to_owned(), leave("a", Reason::Expired))]
        );
        // Touching the room expires its due members first, even before a sweep.
        let (views, changes) = p.list(90_000, "r");
        assert!(views.is_empty());
        assert_eq!(changes, vec![leave("b", Reason::Expired)]);
        assert_eq!(p.members(), 0);
    }

    #[test]
    fn a_rooms_own_ttl_applies_from_the_next_heartbeat() {
        let mut p = DocPresence::new(LIMITS);
        p.heartbeat(0, "r", "a", None, None).unwrap();
        assert!(p.set_ttl(0, "r", 2_000).is_ok());
        assert_eq!(p.ttl_ms("r"), 2_000);
        let b = p.heartbeat(1_000, "r", "a", None, None).unwrap();
        assert_eq!(b.view.expires_ms, 3_000);
        assert_eq!(p.sweep(3_000).len(), 1);
        // The configured room stays while used recently, then is forgotten.
        assert!(p.collect(3_000).is_empty());
        assert_eq!(p.collect(1_000 + CONFIG_IDLE_MS).len(), 1);
    }

    #[test]
    fn a_disconnect_removes_only_the_members_bound_to_it() {
        let mut p = DocPresence::new(LIMITS);
        p.heartbeat(0, "r", "a", None, Some(7)).unwrap();
        p.heartbeat(0, "r", "b", None, Some(8)).unwrap();
        p.heartbeat(0, "s", "a", None, Some(7)).unwrap();
        // A later heartbeat without a connection keeps the binding; one naming another moves it.
        p.heartbeat(1, "r", "a", None, None).unwrap();
        p.heartbeat(1, "r", "b", None, Some(9)).unwrap();
        assert!(p.disconnect(8).is_empty());
        let mut gone = p.disconnect(7);
        gone.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            gone,
            vec![
                ("r".to_owned(), leave("a", Reason::Disconnected)),
                ("s".to_owned(), leave("a", Reason::Disconnected)),
            ]
        );
        assert!(p.has_member("r", "b"));
        assert!(p.disconnect(7).is_empty());
        // A member that left is no longer bound.
        p.leave(2, "r", "b");
        assert!(p.disconnect(9).is_empty());
    }

    #[test]
    fn rooms_and_members_are_bounded() {
        let mut p = DocPresence::new(LIMITS);
        for m in ["a", "b", "c"] {
            p.heartbeat(0, "r", m, None, None).unwrap();
        }
        assert_eq!(
            p.heartbeat(0, "r", "d", None, None).unwrap_err(),
            Refused::RoomFull(3)
        );
        // Members already there still beat.
        assert!(p.heartbeat(0, "r", "a", None, None).is_ok());
        p.heartbeat(0, "s", "a", None, None).unwrap();
        assert_eq!(
            p.heartbeat(0, "t", "a", None, None).unwrap_err(),
            Refused::TooManyRooms(2)
        );
        assert_eq!(p.pin(0, "t").unwrap_err(), Refused::TooManyRooms(2));
        assert_eq!(p.rooms(), 2);
        // Expired members free their places.
        p.sweep(60_000);
        assert_eq!(p.members(), 0);
        assert_eq!(p.collect(60_000).len(), 2);
        assert!(p.heartbeat(60_000, "t", "a", None, None).is_ok());
    }

    #[test]
    fn a_pinned_room_stays_until_unpinned() {
        let mut p = DocPresence::new(LIMITS);
        assert!(p.pin(0, "r").unwrap());
        assert!(!p.collect_room(0, "r"));
        p.unpin(1, "r");
        assert!(p.collect_room(1, "r"));
    }
}
