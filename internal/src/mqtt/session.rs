//! One MQTT connection, from CONNECT to close: authentication, subscriptions (one hub
//! subscription per document, so MQTT subscribers get SSE's gapless replay-then-live), publishes
//! through the one durable publish path (acknowledged only after the commit), QoS 1 deliveries
//! within an in-flight window, keep-alive, last will and persistent sessions.
//!
//! The connection is one task: it reads packets, and between reads it takes deliveries from its
//! documents' subscriptions while the in-flight window and the output buffer have room. When
//! they do not, deliveries wait in the subscription's bounded queue; a subscriber that stays
//! behind until that queue is full is disconnected (the hub's slow-consumer rule), and a
//! persistent session resumes from its cursor when the client comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
    LastWill, LastWillProperties, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, Publish, PublishProperties, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Takeover;
use super::codec::{self, Codec, CodecError, Incoming, Version};
use super::store::{self, SessionState, StoredSub};
use super::topic;
use crate::auth::{Action, Authorized, TokenRow};
use crate::pubsub::hub::{self, Delivery, Filters, Start, Subscription};
use crate::pubsub::sql::{Message, NewMessage};
use crate::pubsub::{MAX_PAYLOAD, check_filters, publish_messages};
use crate::registry::{DbId, DocGuard};
use crate::state::AppState;

/// Output bytes buffered for a client before deliveries pause.
const OUT_HIGH: usize = 1024 * 1024;
/// Publishes already received are committed together, up to this many.
const MAX_GROUP: usize = 256;
/// Retained messages sent for one subscription at most.
const MAX_RETAINED: usize = 1_000;
/// How often a persistent session's cursors are saved while it is connected.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Filters per SUBSCRIBE and subscriptions per connection at most.
const MAX_FILTERS: usize = 100;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client: no will.
    Clean,
    /// DISCONNECT asking for the will (MQTT 5).
    CleanWithWill,
    /// The client vanished, timed out or broke the protocol: the will is published.
    Dropped,
    /// The server ends it (shutdown, takeover, revoked token): no will.
    Server,
}

/// A document's subscription on this connection.
struct DocSub {
    /// The MQTT filters within the document and their granted QoS.
    filters: Vec<(String, u8)>,
    /// The same filters as the hub sees them (edited in place on SUBSCRIBE / UNSUBSCRIBE).
    hub_filters: Filters,
    rx: mpsc::Receiver<Delivery>,
    task: JoinHandle<()>,
    /// Ids of QoS 1 deliveries not yet acknowledged.
    pending: BTreeSet<i64>,
    /// The highest id handed to the client.
    sent: i64,
}

impl DocSub {
    /// How far the client has everything: below the oldest unacknowledged delivery.
    fn cursor(&self) -> i64 {
        self.pending.first().map_or(self.sent, |oldest| oldest - 1)
    }

    fn qos_for(&self, topic: &str) -> Option<u8> {
        self.filters
            .iter()
            .filter(|(f, _)| crate::pubsub::topic::matches(f, topic))
            .map(|(_, q)| *q)
            .max()
    }
}

impl Drop for DocSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The session a client asked to keep, and for how long while it is away.
struct Persist {
    token_id: String,
    client_id: String,
    expiry_secs: u64,
}

struct Conn {
    state: AppState,
    codec: Codec,
    token: Arc<TokenRow>,
    client_id: String,
    subs: BTreeMap<DbId, DocSub>,
    /// Packet id → (document, message id; `None` for a retained message) of a QoS 1 delivery.
    inflight: HashMap<u16, (DbId, Option<i64>)>,
    next_pkid: u16,
    /// The client's receive maximum (MQTT 5) or ours, whichever is lower.
    window: usize,
    /// QoS 2 packet ids stored and not yet released.
    qos2: HashSet<u16>,
    will: Option<(LastWill, Option<LastWillProperties>)>,
    persist: Option<Persist>,
    dirty: bool,
    /// A 3.1.1 client's QoS 1/2 publish was refused: the connection ends (see
    /// `refuse_publish`).
    poisoned: bool,
    /// The client resumed a stored session.
    resumed: bool,
    /// Cancelled when one of the documents' subscriptions ended on its own (the client fell
    /// too far behind, or its document failed): noticed even while deliveries are paused.
    sub_ended: CancellationToken,
    out: BytesMut,
}

/// Runs one accepted connection to its end.
pub(super) async fn run<S>(state: AppState, stream: S, takeovers: Arc<Takeover>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut inbuf = BytesMut::with_capacity(8 * 1024);
    let max_packet = state.config.mqtt_max_packet_bytes;
    let deadline = Duration::from_secs(state.config.header_read_timeout_secs);
    // CONNECT, within the header timeout (a connection that never sends one is cut).
    let first = tokio::time::timeout(deadline, async {
        loop {
            if let Some(version) = codec::detect(&inbuf)? {
                let codec = Codec::new(version, max_packet);
                if let Some(incoming) = codec.read(&mut inbuf)? {
                    return Ok::<_, CodecError>(Some((codec, incoming)));
                }
            }
            match reader.read_buf(&mut inbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })
    .await;
    let (codec, incoming) = match first {
        Ok(Ok(Some(first))) => first,
        Ok(Err(CodecError::UnsupportedProtocol(_))) => {
            // 3.1.1's answer to an unknown level (a 3.1 client understands it too).
            let mut out = BytesMut::new();
            let _ = Codec::new(Version::V4, max_packet).write(
                Packet::ConnAck(
                    ConnAck {
                        session_present: false,
                        code: ConnectReturnCode::RefusedProtocolVersion,
                    },
                    None,
                ),
                &mut out,
            );
            let _ = writer.write_all(&out).await;
            state.metrics.mqtt.refused("protocol");
            return;
        }
        Ok(Err(_)) | Ok(Ok(None)) => {
            state.metrics.mqtt.refused("malformed");
            return;
        }
        Err(_) => {
            state.metrics.mqtt.refused("timeout");
            return;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = incoming.packet else {
        return;
    };
    let refuse = |code: ConnectReturnCode, out: &mut BytesMut| {
        let _ = codec.write(
            Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code: connack_code(codec.version, code),
                },
                None,
            ),
            out,
        );
    };
    let mut out = BytesMut::new();
    // The machine token is the password; the user name is free.
    let token = match login
        .as_ref()
        .map(|l| state.tokens.authenticate(&l.password))
    {
        Some(Ok(token)) => token,
        failed => {
            let reason = match &failed {
                Some(Err((failure, _))) => format!("{failure:?}"),
                _ => "Missing".into(),
            };
            tracing::info!(reason, "audit: MQTT auth failure");
            refuse(ConnectReturnCode::BadUserNamePassword, &mut out);
            let _ = writer.write_all(&out).await;
            state.metrics.mqtt.refused("auth");
            return;
        }
    };
    // The will is checked now, as a publish would be: a client cannot leave behind a message
    // it could not send.
    if let Some(w) = &will
        && let Err(code) = check_will(&token, w)
    {
        refuse(code, &mut out);
        let _ = writer.write_all(&out).await;
        state.metrics.mqtt.refused("will");
        return;
    }
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        if !connect.clean_session {
            refuse(ConnectReturnCode::ClientIdentifierNotValid, &mut out);
            let _ = writer.write_all(&out).await;
            state.metrics.mqtt.refused("client_id");
            return;
        }
        client_id = format!("pw-{}", crate::auth::token::new_id());
        assigned = Some(client_id.clone());
    }
    if client_id.len() > 256 {
        refuse(ConnectReturnCode::ClientIdentifierNotValid, &mut out);
        let _ = writer.write_all(&out).await;
        state.metrics.mqtt.refused("client_id");
        return;
    }
    // How long the session outlives the connection: 3.1.1 keeps a non-clean session (for our
    // longest expiry); MQTT 5 says how long itself.
    let max_expiry = state.config.mqtt_session_expiry_secs;
    let expiry_secs = match codec.version {
        Version::V4 if !connect.clean_session => max_expiry,
        Version::V4 => 0,
        Version::V5 => props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .map_or(0, |s| u64::from(s).min(max_expiry)),
    };
    let resume = !connect.clean_session;

    // One connection per (token, client id): a newer one takes over (the older one saves its
    // session first).
    let key = (token.meta.id.clone(), client_id.clone());
    let (stop, done) = takeovers.claim(key.clone()).await;

    let stored = {
        let (token_id, client) = key.clone();
        let service = state.service.clone();
        let wants = resume;
        service
            .write(move |c| {
                if wants {
                    Ok(store::take(c, &token_id, &client)?)
                } else {
                    store::delete(c, &token_id, &client)?;
                    Ok(None)
                }
            })
            .await
    };
    let stored = match stored {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "MQTT session load failed");
            refuse(ConnectReturnCode::ServerUnavailable, &mut out);
            let _ = writer.write_all(&out).await;
            takeovers.release(&key, done);
            return;
        }
    };
    let ours = state.config.mqtt_max_inflight;
    let window = props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .map_or(ours, |theirs| theirs.min(ours));
    let max_keep = state.config.mqtt_max_keep_alive_secs;
    let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > max_keep {
        max_keep
    } else {
        connect.keep_alive
    };
    let mut conn = Conn {
        state: state.clone(),
        codec,
        token: token.clone(),
        client_id: client_id.clone(),
        subs: BTreeMap::new(),
        inflight: HashMap::new(),
        next_pkid: 1,
        window: usize::from(window.max(1)),
        qos2: HashSet::new(),
        will: will.map(|w| (w, will_props)),
        persist: (expiry_secs > 0).then(|| Persist {
            token_id: token.meta.id.clone(),
            client_id: client_id.clone(),
            expiry_secs,
        }),
        dirty: false,
        poisoned: false,
        resumed: stored.is_some(),
        sub_ended: CancellationToken::new(),
        out,
    };
    let session_present = stored.is_some();
    let connack_props = (conn.codec.version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: Some(u32::try_from(expiry_secs).unwrap_or(u32::MAX)),
        receive_max: Some(ours),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(u32::try_from(max_packet).unwrap_or(u32::MAX)),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(0),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
        // The id a presence heartbeat names to leave when this connection closes.
        user_properties: vec![("connection_id".into(), format!("mqtt:{client_id}"))],
        ..ConnAckProperties::default()
    });
    let _ = conn.codec.write(
        Packet::ConnAck(
            ConnAck {
                session_present,
                code: ConnectReturnCode::Success,
            },
            connack_props,
        ),
        &mut conn.out,
    );
    state.metrics.mqtt.connects.inc();
    let _live = super::LiveCount::new(state.metrics.clone());
    let _connection = state.connections.register_as(
        format!("token:{}", token.meta.id),
        format!("mqtt:{client_id}"),
    );
    if let Some(stored) = stored {
        conn.restore(stored).await;
    }
    let keep_alive = Duration::from_millis(u64::from(keep_alive) * 1500);
    let end = conn
        .serve(&mut reader, &mut writer, inbuf, keep_alive, &stop)
        .await;
    conn.finish(end, &mut writer).await;
    takeovers.release(&key, done);
}

/// `code` as the connection's protocol can say it (rumqttd's encoder knows only each version's
/// own codes).
fn connack_code(version: Version, code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode as C;
    match (version, code) {
        (Version::V5, C::ServiceUnavailable) => C::ServerUnavailable,
        (Version::V5, C::RefusedProtocolVersion) => C::UnsupportedProtocolVersion,
        (Version::V5, c) => c,
        (
            Version::V4,
            c @ (C::Success
            | C::RefusedProtocolVersion
            | C::ClientIdentifierNotValid
            | C::ServiceUnavailable
            | C::BadUserNamePassword
            | C::NotAuthorized),
        ) => c,
        (Version::V4, C::ServerUnavailable | C::ServerBusy) => C::ServiceUnavailable,
        (Version::V4, C::UnsupportedProtocolVersion) => C::RefusedProtocolVersion,
        (Version::V4, _) => C::NotAuthorized,
    }
}

/// Checks a will's topic and the token's right to publish on it.
fn check_will(token: &Arc<TokenRow>, will: &LastWill) -> Result<(), ConnectReturnCode> {
    let name = std::str::from_utf8(&will.topic).map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    let (db, topic) = topic::parse_topic(name).map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    if will.message.len() > MAX_PAYLOAD {
        return Err(ConnectReturnCode::PacketTooLarge);
    }
    authorized(token, db)
        .resource(Action::PubPublish, topic)
        .map_err(|_| ConnectReturnCode::NotAuthorized)
}

/// The token, as an HTTP request to document `db` would carry it.
fn authorized(token: &Arc<TokenRow>, db: DbId) -> Authorized {
    Authorized {
        token: Some(token.clone()),
        db_id: Some(db),
        resource: None,
        web: None,
        session_id: None,
        checks: Default::default(),
    }
}

/// A received PUBLISH waiting for its commit.
struct Pending {
    qos: u8,
    pkid: u16,
    message: NewMessage,
}

impl Conn {
    /// Serves packets and deliveries until the connection ends.
    async fn serve<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        mut inbuf: BytesMut,
        keep_alive: Duration,
        stop: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let shutdown = self.state.shutdown.clone();
        let mut invalidated = self.state.tokens.until_invalid(&self.token);
        let mut heard = tokio::time::Instant::now();
        // The last time the client made progress as a subscriber: took bytes off its socket,
        // acknowledged a delivery, or had room for one.
        let mut progress = heard;
        let stall = Duration::from_secs(self.state.config.mqtt_stall_secs);
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything already received is handled before waiting again.
            match self.handle_buffered(&mut inbuf).await {
                Ok(None) => {}
                Ok(Some(end)) => {
                    let _ = write_out(writer, &mut self.out).await;
                    return end;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "MQTT protocol error");
                    self.state.metrics.mqtt.refused("protocol");
                    let reason = match e {
                        CodecError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    };
                    self.disconnect(reason);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Dropped;
                }
            }
            let can_deliver = self.inflight.len() < self.window && self.out.len() < OUT_HIGH;
            if can_deliver {
                progress = tokio::time::Instant::now();
            }
            let sub_ended = self.sub_ended.clone();
            tokio::select! {
                // A client that does not read what it is sent is not read from either: its
                // output stays bounded (and it is cut at its keep-alive).
                read = reader.read_buf(&mut inbuf), if self.out.len() < OUT_HIGH => match read {
                    Ok(0) | Err(_) => return End::Dropped,
                    Ok(_) => heard = tokio::time::Instant::now(),
                },
                written = writer.write_buf(&mut self.out), if !self.out.is_empty() => {
                    if written.is_err() {
                        return End::Dropped;
                    }
                    progress = tokio::time::Instant::now();
                    if self.out.is_empty() && writer.flush().await.is_err() {
                        return End::Dropped;
                    }
                }
                delivery = next_delivery(&mut self.subs), if can_deliver && !self.subs.is_empty() => {
                    if let Some(end) = self.deliver(delivery) {
                        let _ = write_out(writer, &mut self.out).await;
                        return end;
                    }
                }
                // Paused, and a subscription ended meanwhile (its document failed).
                () = sub_ended.cancelled(), if !can_deliver => {
                    self.disconnect(DisconnectReasonCode::UnspecifiedError);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Dropped;
                }
                // Deliveries wait and the client has taken nothing for `mqtt_stall_secs`.
                () = tokio::time::sleep_until(progress + stall), if !can_deliver => {
                    self.state.metrics.mqtt.refused("stalled");
                    self.state.metrics.slow_disconnects.inc();
                    self.disconnect(DisconnectReasonCode::QuotaExceeded);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Dropped;
                }
                () = tokio::time::sleep_until(heard + keep_alive) => {
                    self.state.metrics.mqtt.refused("keep_alive");
                    self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Dropped;
                }
                _ = save.tick(), if self.persist.is_some() && self.dirty => {
                    self.save(false).await;
                }
                () = stop.cancelled() => {
                    self.disconnect(DisconnectReasonCode::SessionTakenOver);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Server;
                }
                () = shutdown.cancelled() => {
                    self.disconnect(DisconnectReasonCode::ServerShuttingDown);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Server;
                }
                _ = &mut invalidated => {
                    self.disconnect(DisconnectReasonCode::NotAuthorized);
                    let _ = write_out(writer, &mut self.out).await;
                    return End::Server;
                }
            }
        }
    }

    /// Decodes and handles every complete packet in `inbuf`; consecutive publishes to one
    /// document are committed together. `Some(end)` when the client disconnected.
    async fn handle_buffered(&mut self, inbuf: &mut BytesMut) -> Result<Option<End>, CodecError> {
        let mut group: Option<(DbId, Vec<Pending>)> = None;
        loop {
            let Some(incoming) = self.codec.read(inbuf)? else {
                break;
            };
            self.state.metrics.mqtt.packets_in.inc();
            let Incoming { packet, publish } = incoming;
            if let Packet::Publish(p, props) = packet {
                let meta = publish.unwrap_or(codec::PubMeta {
                    qos: 0,
                    pkid: 0,
                    dup: false,
                });
                let Some((db, pending)) = self.accept_publish(p, props, meta) else {
                    if self.poisoned {
                        if let Some((db, items)) = group.take() {
                            self.commit(db, items).await;
                        }
                        return Ok(Some(End::Dropped));
                    }
                    continue;
                };
                match &mut group {
                    Some((g, items)) if *g == db && items.len() < MAX_GROUP => items.push(pending),
                    _ => {
                        if let Some((db, items)) = group.take() {
                            self.commit(db, items).await;
                        }
                        group = Some((db, vec![pending]));
                    }
                }
                continue;
            }
            // Anything else keeps its place after the publishes before it.
            if let Some((db, items)) = group.take() {
                self.commit(db, items).await;
            }
            if let Some(end) = self.handle(packet).await {
                return Ok(Some(end));
            }
        }
        if let Some((db, items)) = group.take() {
            self.commit(db, items).await;
        }
        Ok(None)
    }

    /// Validates a PUBLISH; answers refusals at once. `Some` when it is to be stored.
    fn accept_publish(
        &mut self,
        p: Publish,
        props: Option<PublishProperties>,
        meta: codec::PubMeta,
    ) -> Option<(DbId, Pending)> {
        if meta.qos == 2 && self.qos2.contains(&meta.pkid) {
            // A resent QoS 2 publish we already stored: acknowledge again, store nothing.
            self.pubrec(meta.pkid, PubRecReason::Success);
            return None;
        }
        let checked = std::str::from_utf8(&p.topic)
            .map_err(|_| PubAckReason::TopicNameInvalid)
            .and_then(|name| topic::parse_topic(name).map_err(|_| PubAckReason::TopicNameInvalid))
            .and_then(|(db, t)| {
                if p.payload.len() > MAX_PAYLOAD {
                    return Err(PubAckReason::PayloadFormatInvalid);
                }
                authorized(&self.token, db.clone())
                    .resource(Action::PubPublish, t)
                    .map_err(|_| PubAckReason::NotAuthorized)?;
                Ok((db, t.to_owned()))
            });
        let (db, topic) = match checked {
            Ok(ok) => ok,
            Err(reason) => {
                self.state.metrics.mqtt.publishes_refused.inc();
                self.refuse_publish(meta, reason);
                return None;
            }
        };
        let content_type = props
            .and_then(|p| p.content_type)
            .filter(|c| !c.is_empty() && c.len() <= 255 && !c.contains(['\r', '\n']))
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        Some((
            db,
            Pending {
                qos: meta.qos,
                pkid: meta.pkid,
                message: NewMessage {
                    topic,
                    content_type,
                    payload: p.payload.to_vec(),
                    dedupe_key: None,
                    retain: p.retain,
                },
            },
        ))
    }

    /// A refused PUBLISH: MQTT 5 says why in its acknowledgement; 3.1.1 cannot, so a QoS 1 or
    /// 2 refusal there closes the connection rather than acknowledge a message not stored.
    fn refuse_publish(&mut self, meta: codec::PubMeta, reason: PubAckReason) {
        match (self.codec.version, meta.qos) {
            (_, 0) => {}
            (Version::V5, 1) => self.write(Packet::PubAck(
                PubAck {
                    pkid: meta.pkid,
                    reason,
                },
                None,
            )),
            (Version::V5, _) => self.pubrec(
                meta.pkid,
                match reason {
                    PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                    PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                    _ => PubRecReason::PayloadFormatInvalid,
                },
            ),
            (Version::V4, _) => self.poisoned = true,
        }
    }

    /// Stores a group of publishes to one document in one commit, then acknowledges them.
    async fn commit(&mut self, db: DbId, items: Vec<Pending>) {
        let (acks, messages): (Vec<(u8, u16)>, Vec<NewMessage>) = items
            .into_iter()
            .map(|p| ((p.qos, p.pkid), p.message))
            .unzip();
        let count = messages.len() as u64;
        let auth = authorized(&self.token, db);
        match publish_messages(&self.state, &auth, messages, Vec::new()).await {
            Ok(_) => {
                self.state.metrics.mqtt.publishes.inc_by(count);
                let mut new_qos2 = false;
                for (qos, pkid) in acks {
                    match qos {
                        1 => self.write(Packet::PubAck(
                            PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            },
                            None,
                        )),
                        2 => {
                            new_qos2 |= self.qos2.insert(pkid);
                            self.pubrec(pkid, PubRecReason::Success);
                        }
                        _ => {}
                    }
                }
                if new_qos2 && self.persist.is_some() {
                    // Saved before PUBREC leaves: a resent publish after a restart is still
                    // recognised as stored.
                    self.save(false).await;
                }
            }
            Err(e) => {
                tracing::warn!(code = e.code, message = %e.message, "MQTT publish failed");
                self.state.metrics.mqtt.publishes_refused.inc_by(count);
                for (qos, pkid) in acks {
                    self.refuse_publish(
                        codec::PubMeta {
                            qos,
                            pkid,
                            dup: false,
                        },
                        PubAckReason::UnspecifiedError,
                    );
                }
            }
        }
    }

    /// Handles a packet other than PUBLISH. `Some(end)` when the connection is to end.
    async fn handle(&mut self, packet: Packet) -> Option<End> {
        if self.poisoned {
            return Some(End::Dropped);
        }
        match packet {
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::PubAck(ack, _) => self.acked(ack.pkid),
            Packet::PubRel(rel, _) => {
                let reason = if self.qos2.remove(&rel.pkid) {
                    self.dirty = true;
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                self.write(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ));
            }
            // Deliveries are at most QoS 1: nothing else is expected back.
            Packet::PubRec(..) | Packet::PubComp(..) => {}
            Packet::Subscribe(sub, _) => self.subscribe(sub.pkid, sub.filters).await,
            Packet::Unsubscribe(unsub, _) => self.unsubscribe(unsub.pkid, unsub.filters).await,
            Packet::Disconnect(d, props) => {
                if let (Some(persist), Some(expiry)) = (
                    &mut self.persist,
                    props.and_then(|p| p.session_expiry_interval),
                ) {
                    persist.expiry_secs =
                        u64::from(expiry).min(self.state.config.mqtt_session_expiry_secs);
                }
                return Some(
                    if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                        End::CleanWithWill
                    } else {
                        End::Clean
                    },
                );
            }
            // A second CONNECT is a protocol violation.
            _ => return Some(End::Dropped),
        }
        None
    }

    async fn subscribe(&mut self, pkid: u16, filters: Vec<Filter>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut changed = false;
        for f in filters {
            let requested = codec::qos_num(f.qos).min(1);
            match self.add_filter(&f.path, requested).await {
                Ok(db) => {
                    changed = true;
                    codes.push(if requested == 0 {
                        SubscribeReasonCode::QoS0
                    } else {
                        SubscribeReasonCode::QoS1
                    });
                    if f.retain_forward_rule != rumqttd::protocol::RetainForwardRule::Never {
                        retained.push((db, f.path, requested));
                    }
                }
                Err(code) => codes.push(code),
            }
        }
        if changed && self.persist.is_some() {
            // On disk before SUBACK: a granted subscription survives a restart.
            self.save(false).await;
        }
        self.write(Packet::SubAck(
            SubAck {
                pkid,
                return_codes: codes,
            },
            None,
        ));
        for (db, path, qos) in retained {
            self.send_retained(db, &path, qos).await;
        }
    }

    /// Grants one filter, starting (or extending) the document's subscription.
    async fn add_filter(&mut self, path: &str, qos: u8) -> Result<DbId, SubscribeReasonCode> {
        let failure = |code| match self.codec.version {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => code,
        };
        let (db, filter) = topic::parse_filter(path)
            .map_err(|_| failure(SubscribeReasonCode::TopicFilterInvalid))?;
        let auth = authorized(&self.token, db.clone());
        check_filters(&auth, &[filter.to_owned()])
            .map_err(|_| failure(SubscribeReasonCode::NotAuthorized))?;
        if let Some(sub) = self.subs.get_mut(&db) {
            if let Some(existing) = sub.filters.iter_mut().find(|(f, _)| f == filter) {
                existing.1 = qos;
            } else {
                if sub.filters.len() >= MAX_FILTERS {
                    return Err(failure(SubscribeReasonCode::QuotaExceeded));
                }
                sub.filters.push((filter.to_owned(), qos));
                sub.hub_filters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(filter.to_owned());
            }
            return Ok(db);
        }
        if self.subs.len() >= MAX_FILTERS {
            return Err(failure(SubscribeReasonCode::QuotaExceeded));
        }
        let doc = self
            .state
            .registry
            .get(&db)
            .await
            .map_err(|_| failure(SubscribeReasonCode::Unspecified))?;
        // From the document's newest message on: recorded as the cursor, so a persistent
        // session that drops before any delivery still resumes from here.
        let current = doc
            .read(|c| Ok(crate::pubsub::sql::max_id(c)?))
            .await
            .map_err(|_| failure(SubscribeReasonCode::Unspecified))?;
        let sub = self.start_sub(doc, auth, vec![(filter.to_owned(), qos)], current);
        self.subs.insert(db.clone(), sub);
        Ok(db)
    }

    fn start_sub(
        &self,
        doc: DocGuard,
        auth: Authorized,
        filters: Vec<(String, u8)>,
        after: i64,
    ) -> DocSub {
        let hub_filters: Filters =
            Arc::new(Mutex::new(filters.iter().map(|(f, _)| f.clone()).collect()));
        let (tx, rx) = mpsc::channel(hub::QUEUE);
        let subscription = Subscription {
            doc: (*doc).clone(),
            auth,
            filters: hub_filters.clone(),
            start: Start::After(after),
            heartbeat: None,
            metrics: self.state.metrics.clone(),
            shutdown: self.state.shutdown.clone(),
            wait_when_full: true,
        };
        let ended = self.sub_ended.clone();
        let task = tokio::spawn(async move {
            let _doc = doc;
            let failed = tx.clone();
            if let Err(e) = subscription.run(tx).await {
                crate::pubsub::subscription_failed(e, &failed);
            }
            // Not reached when the task is aborted (an UNSUBSCRIBE, or the connection ended).
            ended.cancel();
        });
        DocSub {
            filters,
            hub_filters,
            rx,
            task,
            pending: BTreeSet::new(),
            sent: after,
        }
    }

    async fn send_retained(&mut self, db: DbId, path: &str, qos: u8) {
        let Ok((_, filter)) = topic::parse_filter(path) else {
            return;
        };
        let Ok(doc) = self.state.registry.get(&db).await else {
            return;
        };
        let filters = vec![filter.to_owned()];
        let Ok(messages) = doc
            .read(move |c| Ok(crate::pubsub::sql::retained(c, &filters, MAX_RETAINED)?))
            .await
        else {
            return;
        };
        let auth = authorized(&self.token, db.clone());
        for m in messages {
            // A prefixed scope sees only its own topics, retained ones included.
            if auth.resource(Action::PubSubscribe, &m.topic).is_err() {
                continue;
            }
            // Beyond the window, a retained message goes at QoS 0 (it is state, not a stream).
            let qos = if qos == 1 && self.inflight.len() < self.window {
                1
            } else {
                0
            };
            let pkid = if qos == 1 { self.take_pkid() } else { 0 };
            if qos == 1 {
                self.inflight.insert(pkid, (db.clone(), None));
            }
            self.encode_publish(&db, &m, qos, pkid, true);
        }
    }

    async fn unsubscribe(&mut self, pkid: u16, paths: Vec<String>) {
        let mut reasons = Vec::with_capacity(paths.len());
        for path in &paths {
            let mut found = false;
            if let Ok((db, filter)) = topic::parse_filter(path)
                && let Some(sub) = self.subs.get_mut(&db)
            {
                let before = sub.filters.len();
                sub.filters.retain(|(f, _)| f != filter);
                found = sub.filters.len() != before;
                sub.hub_filters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|f| f != filter);
                if sub.filters.is_empty() {
                    self.subs.remove(&db);
                }
            }
            reasons.push(if found {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
        }
        if self.persist.is_some() {
            self.save(false).await;
        }
        self.write(Packet::UnsubAck(UnsubAck { pkid, reasons }, None));
    }

    /// One delivery from a document's subscription; `Some(end)` ends the connection.
    fn deliver(&mut self, delivery: (DbId, Option<Delivery>)) -> Option<End> {
        let (db, delivery) = delivery;
        let m = match delivery {
            Some(Delivery::Message(m)) => m,
            Some(Delivery::Heartbeat) => return None,
            Some(Delivery::SlowConsumer) => {
                self.disconnect(DisconnectReasonCode::QuotaExceeded);
                return Some(End::Dropped);
            }
            Some(Delivery::Failed { .. } | Delivery::Closed) | None => {
                self.disconnect(DisconnectReasonCode::ServerShuttingDown);
                return Some(End::Server);
            }
        };
        let sub = self.subs.get_mut(&db)?;
        sub.sent = sub.sent.max(m.id);
        self.dirty = true;
        // None: the filter that wanted it was unsubscribed meanwhile.
        let qos = sub.qos_for(&m.topic)?;
        let pkid = if qos == 1 { self.take_pkid() } else { 0 };
        if let Some(sub) = self.subs.get_mut(&db)
            && qos == 1
        {
            sub.pending.insert(m.id);
            self.inflight.insert(pkid, (db.clone(), Some(m.id)));
        }
        self.encode_publish(&db, &m, qos, pkid, false);
        None
    }

    fn encode_publish(&mut self, db: &DbId, m: &Message, qos: u8, pkid: u16, retain: bool) {
        let name = topic::mqtt_name(db, &m.topic);
        let outgoing = codec::Outgoing {
            topic: &name,
            payload: &m.payload,
            qos,
            pkid,
            retain,
            content_type: &m.content_type,
        };
        let written = self.codec.publish(&mut self.out, &outgoing);
        if written.is_ok() {
            self.state.metrics.mqtt.deliveries.inc();
        }
    }

    /// A free packet id for a QoS 1 delivery (1..=65535, skipping those in flight).
    fn take_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    fn acked(&mut self, pkid: u16) {
        let Some((db, id)) = self.inflight.remove(&pkid) else {
            return;
        };
        if let (Some(id), Some(sub)) = (id, self.subs.get_mut(&db)) {
            sub.pending.remove(&id);
            self.dirty = true;
        }
    }

    /// Re-subscribes a stored session, each document from its cursor: what was published while
    /// the client was away is delivered now.
    async fn restore(&mut self, stored: SessionState) {
        self.qos2 = stored.qos2.into_iter().collect();
        let mut by_doc: BTreeMap<String, Vec<(String, u8)>> = BTreeMap::new();
        for s in stored.subscriptions {
            by_doc.entry(s.db_id).or_default().push((s.filter, s.qos));
        }
        for (id, filters) in by_doc {
            let Ok(db) = DbId::parse(&id) else { continue };
            let auth = authorized(&self.token, db.clone());
            // Re-checked: the token may have been narrowed since (its scopes are what counts).
            let filters: Vec<(String, u8)> = filters
                .into_iter()
                .filter(|(f, _)| check_filters(&auth, std::slice::from_ref(f)).is_ok())
                .collect();
            if filters.is_empty() {
                continue;
            }
            let Ok(doc) = self.state.registry.get(&db).await else {
                tracing::warn!(db_id = %db, "MQTT session resume: the document did not open");
                continue;
            };
            let after = stored.cursors.get(&id).copied().unwrap_or(0);
            let sub = self.start_sub(doc, auth, filters, after);
            self.subs.insert(db, sub);
        }
    }

    fn snapshot(&self) -> SessionState {
        let mut state = SessionState {
            qos2: self.qos2.iter().copied().collect(),
            ..SessionState::default()
        };
        for (db, sub) in &self.subs {
            for (filter, qos) in &sub.filters {
                state.subscriptions.push(StoredSub {
                    db_id: db.as_str().to_owned(),
                    filter: filter.clone(),
                    qos: *qos,
                });
            }
            state.cursors.insert(db.as_str().to_owned(), sub.cursor());
        }
        state
    }

    /// Saves the persistent session (no-op otherwise).
    async fn save(&mut self, disconnected: bool) {
        let Some(p) = &self.persist else {
            return;
        };
        let state = self.snapshot();
        let (token_id, client_id, expiry) =
            (p.token_id.clone(), p.client_id.clone(), p.expiry_secs);
        let saved = self
            .state
            .service
            .write(move |c| {
                Ok(store::save(
                    c,
                    &token_id,
                    &client_id,
                    &state,
                    expiry,
                    disconnected,
                )?)
            })
            .await;
        match saved {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(error = %e, "saving an MQTT session failed"),
        }
    }

    /// Ends the connection: the will on an abnormal end, the session saved (or dropped).
    async fn finish<W: AsyncWrite + Unpin>(mut self, end: End, writer: &mut W) {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
        if matches!(end, End::Dropped | End::CleanWithWill)
            && let Some((will, props)) = self.will.take()
        {
            self.publish_will(will, props).await;
        }
        if self.persist.is_some() {
            self.save(true).await;
        } else if self.resumed {
            // Resumed, but not to be kept (MQTT 5, session expiry 0): the row goes.
            let (token_id, client_id) = (self.token.meta.id.clone(), self.client_id.clone());
            let deleted = self
                .state
                .service
                .write(move |c| Ok(store::delete(c, &token_id, &client_id)?))
                .await;
            if let Err(e) = deleted {
                tracing::warn!(error = %e, "deleting an MQTT session failed");
            }
        }
        tracing::debug!(client_id = %self.client_id, ?end, "MQTT connection closed");
    }

    async fn publish_will(&self, will: LastWill, props: Option<LastWillProperties>) {
        let Ok(name) = std::str::from_utf8(&will.topic) else {
            return;
        };
        let Ok((db, topic)) = topic::parse_topic(name) else {
            return;
        };
        let message = NewMessage {
            topic: topic.to_owned(),
            content_type: props
                .and_then(|p| p.content_type)
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            payload: will.message.to_vec(),
            dedupe_key: None,
            retain: will.retain,
        };
        let auth = authorized(&self.token, db);
        match publish_messages(&self.state, &auth, vec![message], Vec::new()).await {
            Ok(_) => {
                self.state.metrics.mqtt.wills.inc();
            }
            Err(e) => tracing::warn!(code = e.code, "publishing an MQTT will failed"),
        }
    }

    fn pubrec(&mut self, pkid: u16, reason: PubRecReason) {
        self.write(Packet::PubRec(PubRec { pkid, reason }, None));
    }

    /// MQTT 5 says why the server closes; 3.1.1 just closes.
    fn disconnect(&mut self, reason_code: DisconnectReasonCode) {
        if self.codec.version == Version::V5 {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None));
        }
    }

    fn write(&mut self, packet: Packet) {
        if let Err(e) = self.codec.write(packet, &mut self.out) {
            tracing::warn!(error = %e, "MQTT encode failed");
        }
    }
}

/// The next delivery from any of the documents' subscriptions (`None`: that one ended).
async fn next_delivery(subs: &mut BTreeMap<DbId, DocSub>) -> (DbId, Option<Delivery>) {
    std::future::poll_fn(|cx| {
        for (db, sub) in subs.iter_mut() {
            if let std::task::Poll::Ready(d) = sub.rx.poll_recv(cx) {
                return std::task::Poll::Ready((db.clone(), d));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Writes everything buffered, bounded in time (used on the way out).
async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    let write = async {
        writer.write_all_buf(out).await?;
        writer.flush().await
    };
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
