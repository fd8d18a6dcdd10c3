//! The in-memory meeting points of the byte relay. Nothing is stored: a channel is a set of FIFO
//! queues of waiting parties, and a match hands the producer's body *stream* to the consumer,
//! so bytes flow while the upload is still running, with backpressure both ways.
//!
//! Every waiting party is registered with an id and removed by a guard when its request ends
//! (matched, timed out, or the client went away), so nobody is ever matched with a party that
//! has gone. Waiting parties are capped per channel and in total.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;

/// Channel identity: namespace (document id) plus the route family (`/p` keeps its own channels)
/// plus the channel name (the path below the namespace, query string excluded).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub namespace: String,
    pub family: Family,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `/public/...`, `/u/{user}/...` and the canonical `/api/v1/db/{db_id}/streams/...`.
    Main,
    /// `/p/...`: same document (`public`), distinct channels.
    P,
}

/// What a consumer (or requester, or observing responder) receives.
pub struct Delivery {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// A consumer's mailbox: where its delivery goes.
pub struct Slot {
    pub tx: oneshot::Sender<Delivery>,
    /// Double-clutch requesters waiting on an answer channel honour the answer's `Patch-Status`.
    pub honour_status: bool,
}

/// What a requester gets back from a responder.
pub enum Reply {
    Response(Delivery),
    /// Double clutch: the answer will be published on this channel.
    Switch(ChannelKey),
}

/// A request waiting for a responder.
pub struct RequestOffer {
    /// The requester's waiter id (its guard removes whatever entry carries it).
    pub id: u64,
    pub method: String,
    /// The requester's path and query as sent.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Body,
    /// Where the requester's response goes.
    pub reply: oneshot::Sender<Reply>,
}

/// A responder waiting for a request.
pub type ResponderSlot = oneshot::Sender<RequestOffer>;

enum Waiter {
    Consumer(u64, Slot),
    Producer(u64, oneshot::Sender<Slot>),
    Request(u64, RequestOffer),
    Responder(u64, ResponderSlot),
    /// A requester whose request was taken, waiting for a response (FIFO, uncorrelated, as in
    /// the legacy service).
    Awaiting(u64, oneshot::Sender<Reply>),
}

impl Waiter {
    fn id(&self) -> u64 {
        match self {
            Waiter::Consumer(id, _)
            | Waiter::Producer(id, _)
            | Waiter::Request(id, _)
            | Waiter::Responder(id, _)
            | Waiter::Awaiting(id, _) => *id,
        }
    }
}

#[derive(Default)]
struct Channel {
    waiters: VecDeque<Waiter>,
}

/// Caps on waiting parties.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub per_channel: usize,
    pub total: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("too many parties are waiting on this channel")]
    ChannelFull,
    #[error("too many parties are waiting on this server")]
    ServerFull,
}

pub struct Relay {
    channels: Mutex<HashMap<ChannelKey, Channel>>,
    next_id: AtomicU64,
    waiting: AtomicUsize,
    caps: Caps,
}

/// Removes a waiting party when its request ends, however it ends.
pub struct WaitGuard {
    relay: Arc<Relay>,
    key: ChannelKey,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.relay.remove(&self.key, self.id);
    }
}

impl Relay {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            channels: Mutex::default(),
            next_id: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            caps,
        })
    }

    /// Parties waiting right now, over all channels.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, key: &ChannelKey, id: u64) {
        let mut channels = self.lock();
        if let Some(ch) = channels.get_mut(key) {
            let before = ch.waiters.len();
            ch.waiters.retain(|w| w.id() != id);
            let removed = before - ch.waiters.len();
            if removed > 0 {
                self.waiting.fetch_sub(removed, Ordering::Relaxed);
            }
            if ch.waiters.is_empty() {
                channels.remove(key);
            }
        }
    }

    fn push(
        self: &Arc<Self>,
        channels: &mut HashMap<ChannelKey, Channel>,
        key: &ChannelKey,
        make: impl FnOnce(u64) -> Waiter,
    ) -> Result<WaitGuard, RelayError> {
        if self.waiting.load(Ordering::Relaxed) >= self.caps.total {
            return Err(RelayError::ServerFull);
        }
        let ch = channels.entry(key.clone()).or_default();
        if ch.waiters.len() >= self.caps.per_channel {
            return Err(RelayError::ChannelFull);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ch.waiters.push_back(make(id));
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(WaitGuard {
            relay: self.clone(),
            key: key.clone(),
            id,
        })
    }

    /// Takes the first waiter `pick` accepts (FIFO), removing it.
    fn take<T>(
        &self,
        channels: &mut HashMap<ChannelKey, Channel>,
        key: &ChannelKey,
        pick: impl Fn(&Waiter) -> bool,
        unwrap: impl FnOnce(Waiter) -> T,
    ) -> Option<T> {
        let ch = channels.get_mut(key)?;
        let pos = ch.waiters.iter().position(pick)?;
        let w = ch.waiters.remove(pos)?;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if ch.waiters.is_empty() {
            channels.remove(key);
        }
        Some(unwrap(w))
    }

    /// A consumer arrives: hand its slot to the first live waiting producer, or wait in line.
    /// Returns the receiver of its delivery and the guard that keeps it registered.
    pub fn consume(
        self: &Arc<Self>,
        key: &ChannelKey,
        honour_status: bool,
    ) -> Result<(oneshot::Receiver<Delivery>, Option<WaitGuard>), RelayError> {
        let (tx, rx) = oneshot::channel();
        let guard = self.offer_consumer(key, Slot { tx, honour_status })?;
        Ok((rx, guard))
    }

    /// Gives `slot` to the first live waiting producer, or queues it (returning its guard).
    pub fn offer_consumer(
        self: &Arc<Self>,
        key: &ChannelKey,
        mut slot: Slot,
    ) -> Result<Option<WaitGuard>, RelayError> {
        let mut channels = self.lock();
        loop {
            let producer = self.take(
                &mut channels,
                key,
                |w| matches!(w, Waiter::Producer(..)),
                |w| match w {
                    Waiter::Producer(_, want) => want,
                    _ => unreachable!("picked a producer"),
                },
            );
            match producer {
                Some(want) => match want.send(slot) {
                    Ok(()) => return Ok(None),
                    // That producer has gone: try the next one.
                    Err(back) => slot = back,
                },
                None => {
                    return self
                        .push(&mut channels, key, |id| Waiter::Consumer(id, slot))
                        .map(Some);
                }
            }
        }
    }

    /// A queue producer arrives: the first waiting consumer's slot, or a place in line.
    pub fn produce(
        self: &Arc<Self>,
        key: &ChannelKey,
    ) -> Result<Result<Slot, (oneshot::Receiver<Slot>, WaitGuard)>, RelayError> {
        let mut channels = self.lock();
        if let Some(slot) = self.take(
            &mut channels,
            key,
            |w| matches!(w, Waiter::Consumer(_, s) if !s.tx.is_closed()),
            |w| match w {
                Waiter::Consumer(_, slot) => slot,
                _ => unreachable!("picked a consumer"),
            },
        ) {
            return Ok(Ok(slot));
        }
        let (tx, rx) = oneshot::channel();
        let guard = self.push(&mut channels, key, |id| Waiter::Producer(id, tx))?;
        Ok(Err((rx, guard)))
    }

    /// A pubsub publisher: every consumer waiting at this moment.
    pub fn take_all_consumers(&self, key: &ChannelKey) -> Vec<Slot> {
        let mut channels = self.lock();
        let mut out = Vec::new();
        while let Some(slot) = self.take(
            &mut channels,
            key,
            |w| matches!(w, Waiter::Consumer(..)),
            |w| match w {
                Waiter::Consumer(_, slot) => slot,
                _ => unreachable!("picked a consumer"),
            },
        ) {
            if !slot.tx.is_closed() {
                out.push(slot);
            }
        }
        out
    }

    /// A requester arrives: give the request to the first live waiting responder, or queue it.
    /// The returned guard covers the requester for its whole wait (request, then response).
    pub fn request(
        self: &Arc<Self>,
        key: &ChannelKey,
        make: impl FnOnce(u64) -> RequestOffer,
    ) -> Result<WaitGuard, RelayError> {
        let mut channels = self.lock();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let guard = WaitGuard {
            relay: self.clone(),
            key: key.clone(),
            id,
        };
        let mut offer = make(id);
        loop {
            let responder = self.take(
                &mut channels,
                key,
                |w| matches!(w, Waiter::Responder(..)),
                |w| match w {
                    Waiter::Responder(_, r) => r,
                    _ => unreachable!("picked a responder"),
                },
            );
            match responder {
                Some(r) => match r.send(offer) {
                    Ok(()) => return Ok(guard),
                    Err(back) => offer = back,
                },
                None => {
                    if self.waiting.load(Ordering::Relaxed) >= self.caps.total {
                        return Err(RelayError::ServerFull);
                    }
                    let ch = channels.entry(key.clone()).or_default();
                    if ch.waiters.len() >= self.caps.per_channel {
                        return Err(RelayError::ChannelFull);
                    }
                    ch.waiters.push_back(Waiter::Request(id, offer));
                    self.waiting.fetch_add(1, Ordering::Relaxed);
                    return Ok(guard);
                }
            }
        }
    }

    /// A responder arrives: the first live pending request, or a place in line.
    pub fn respond(
        self: &Arc<Self>,
        key: &ChannelKey,
    ) -> Result<Result<RequestOffer, (oneshot::Receiver<RequestOffer>, WaitGuard)>, RelayError>
    {
        let mut channels = self.lock();
        while let Some(offer) = self.take(
            &mut channels,
            key,
            |w| matches!(w, Waiter::Request(..)),
            |w| match w {
                Waiter::Request(_, o) => o,
                _ => unreachable!("picked a request"),
            },
        ) {
            if !offer.reply.is_closed() {
                return Ok(Ok(offer));
            }
        }
        let (tx, rx) = oneshot::channel();
        let guard = self.push(&mut channels, key, |id| Waiter::Responder(id, tx))?;
        Ok(Err((rx, guard)))
    }

    /// A requester whose request was taken now waits for a response (under its own id, so
    /// its guard still covers it).
    pub fn await_response(&self, key: &ChannelKey, id: u64, reply: oneshot::Sender<Reply>) {
        let mut channels = self.lock();
        channels
            .entry(key.clone())
            .or_default()
            .waiters
            .push_back(Waiter::Awaiting(id, reply));
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// The longest-waiting live requester on `key` whose request was taken.
    pub fn take_awaiting(&self, key: &ChannelKey) -> Option<oneshot::Sender<Reply>> {
        let mut channels = self.lock();
        while let Some(tx) = self.take(
            &mut channels,
            key,
            |w| matches!(w, Waiter::Awaiting(..)),
            |w| match w {
                Waiter::Awaiting(_, s) => s,
                _ => unreachable!("picked an awaiting requester"),
            },
        ) {
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }
}
