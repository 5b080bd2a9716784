//! The per-socket state machine (protocol.md sections 3, 4 and 10).
//!
//! The caller feeds it parsed messages and storage answers; it returns [`Effect`]s for the caller to
//! carry out, in order. While a storage operation is outstanding the session is busy and the caller
//! holds further input back, so every connection's messages are handled strictly in order.

use serde_json::{Map, Value};

use crate::broadcast::{self, Broadcasts, Subscriptions};
use crate::ids::{ChannelId, Id, Uaid};
use crate::message::{
    AckVersion, Hello, HelloUaid, Inbound, Refused, RegisterKey, Rejection, Request,
};
use crate::reply::{self, ErrorStatus};
use crate::wake::Wake;
use crate::webpush::{AppKey, Message};

mod throttle;

/// Protocol limits the session enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// More channelIDs than this in a hello drops the UAID's data and issues a new UAID; a
    /// register beyond it is refused (429).
    pub max_channels: usize,
    /// Pings closer together than this are an error; 0 disables the check.
    pub min_ping_interval_ms: u64,
    /// Honour `use_webpush`; when false every client is answered as SimplePush.
    pub webpush: bool,
    /// A connected device's registrations are refreshed in storage this often (on its next
    /// message, a ping included), so that they do not expire while it stays connected; 0 = never.
    pub refresh_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_channels: 200,
            min_ping_interval_ms: 20_000,
            webpush: true,
            refresh_ms: 0,
        }
    }
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send this text frame.
    Send(String),
    /// Close gracefully: close frame, then wait for the peer's.
    Close,
    /// Run this storage operation and pass its answer to [`Session::on_store`].
    Store(StoreOp),
    /// This socket is now the UAID's live connection; close any older one.
    Bind(Uaid, Origin),
    /// Store how the UAID's device can be woken (its hello said so).
    Wake(Uaid, Box<Wake>),
    /// Extend the lifetime of the UAID's registrations in storage (no answer is awaited).
    Refresh(Uaid),
}

/// Where the UAID a hello bound came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Minted by this hello just now: no store holds anything for it, and no other socket can
    /// claim it, so its first writes need no read before them.
    Minted,
    /// Named by the client (known to the store or not): another node may hold or claim it.
    Named,
}

/// Which endpoint a registration gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// `/update/<token>`: SimplePush versions.
    SimplePush,
    /// `/wpush/v1/<token>` without a key, `/wpush/v2/<token>` bound to the app server's key.
    WebPush(Option<Box<AppKey>>),
}

/// A storage operation the session waits on.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Is the UAID known, and what is pending for it? With `forget`, drop all its data first.
    Hello {
        /// The UAID the client offered.
        uaid: Uaid,
        /// Drop everything stored for it (too many channels).
        forget: bool,
        /// The channels a SimplePush client says it has; a store that knows it lost data
        /// re-creates them instead of forgetting the UAID.
        channels: Vec<ChannelId>,
    },
    /// Record the channel as registered; the answer carries the endpoint URL.
    Register {
        /// The owner.
        uaid: Uaid,
        /// The new channel.
        channel: ChannelId,
        /// The endpoint to mint once it is recorded.
        kind: EndpointKind,
        /// Refuse a new channel when the UAID has this many already.
        max_channels: usize,
    },
    /// Forget the channel and anything pending for it.
    Unregister {
        /// The owner.
        uaid: Uaid,
        /// The channel.
        channel: ChannelId,
    },
    /// Remove each pending version that equals the acked one, and each acked message.
    Ack {
        /// The owner.
        uaid: Uaid,
        /// The acked SimplePush versions.
        items: Vec<(ChannelId, u64)>,
        /// The acked WebPush message ids.
        messages: Vec<(ChannelId, String)>,
    },
}

impl StoreOp {
    /// The UAID it is for.
    pub fn uaid(&self) -> Uaid {
        match self {
            StoreOp::Hello { uaid, .. }
            | StoreOp::Register { uaid, .. }
            | StoreOp::Unregister { uaid, .. }
            | StoreOp::Ack { uaid, .. } => *uaid,
        }
    }
}

/// The storage layer's answer to a [`StoreOp`].
#[derive(Clone, Debug, PartialEq)]
pub enum StoreReply {
    /// For [`StoreOp::Hello`].
    Hello {
        /// The store has a record of the UAID (it has registered a channel).
        known: bool,
        /// Stored versions, to flush after the reply (SimplePush).
        pending: Vec<(ChannelId, u64)>,
        /// Stored messages, to flush after the reply (WebPush).
        messages: Vec<Message>,
    },
    /// For [`StoreOp::Register`]: the endpoint URL to hand out.
    Registered {
        /// `<public_url>/update/<token>`.
        endpoint: String,
    },
    /// For [`StoreOp::Register`]: the UAID has `max_channels` channels already.
    TooManyChannels,
    /// For [`StoreOp::Unregister`] and [`StoreOp::Ack`].
    Done,
    /// The store could not do it.
    Unavailable,
}

/// What the session waits for.
#[derive(Debug)]
enum Pending {
    Hello {
        requested: Uaid,
        fresh: Uaid,
        /// The hello reply's `broadcasts` (WebPush), worked out when the hello came.
        told: Option<Map<String, Value>>,
        /// Issue `fresh` unless the store knows `requested`.
        need_known: bool,
        forget: bool,
        raw: Map<String, Value>,
    },
    Register {
        channel: ChannelId,
        raw: Map<String, Value>,
    },
    Unregister {
        raw_channel: String,
        raw: Map<String, Value>,
    },
    Ack,
}

#[derive(Debug)]
enum State {
    AwaitingHello,
    /// Waiting on storage; `uaid` is the UAID this socket is bound to, if any.
    Busy {
        uaid: Option<Uaid>,
        pending: Box<Pending>,
    },
    Ready(Uaid),
    Closed,
}

/// One WebSocket's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// When the last ping came; 0 = none yet.
    last_ping_ms: u64,
    /// The last hello asked for WebPush (autopush's dialect).
    webpush: bool,
    /// What few sockets have: followed broadcasts, wake data. One pointer for all idle sockets.
    extra: Option<Box<Extra>>,
    /// When the registrations were last refreshed in storage (a hello refreshes them too).
    refreshed_ms: u64,
}

/// The rarely used part of a session.
#[derive(Debug, Default)]
struct Extra {
    /// The broadcasts this socket follows.
    subs: Subscriptions,
    /// A hello's wake data, until the hello completes and the UAID is known.
    wake: Option<Box<Wake>>,
}

impl Default for Session {
    fn default() -> Session {
        Session::new()
    }
}

fn fail(raw: Map<String, Value>, status: ErrorStatus) -> Vec<Effect> {
    vec![Effect::Send(reply::error(raw, status)), Effect::Close]
}

impl Session {
    /// A session that has not said hello yet.
    pub fn new() -> Session {
        Session {
            state: State::AwaitingHello,
            last_ping_ms: 0,
            webpush: false,
            extra: None,
            refreshed_ms: 0,
        }
    }

    /// The UAID this socket delivers for, once a hello has completed.
    pub fn uaid(&self) -> Option<Uaid> {
        match &self.state {
            State::Ready(u) => Some(*u),
            State::Busy { uaid, .. } => *uaid,
            _ => None,
        }
    }

    /// The hello's wake data, once; the extra part goes when nothing is left in it.
    fn take_wake(&mut self) -> Option<Box<Wake>> {
        let extra = self.extra.as_mut()?;
        let wake = extra.wake.take();
        if extra.subs.is_empty() {
            self.extra = None;
        }
        wake
    }

    /// True once a hello asked for WebPush: messages, not versions, are delivered.
    pub fn is_webpush(&self) -> bool {
        self.webpush
    }

    /// True while a storage operation is outstanding: hold further input back.
    pub fn is_busy(&self) -> bool {
        matches!(self.state, State::Busy { .. })
    }

    /// True once the session has decided to close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Marks the session closed (peer close, kick, shutdown): it delivers nothing more.
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    fn closing(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        self.state = State::Closed;
        effects
    }

    /// Handles a payload that did not parse into a command.
    pub fn refused(&mut self, refused: Refused) -> Vec<Effect> {
        match (refused.rejection, refused.raw) {
            (Rejection::Empty, _) => Vec::new(),
            (Rejection::Invalid, Some(raw)) => self.closing(fail(raw, ErrorStatus::InvalidCommand)),
            _ => self.closing(vec![Effect::Close]),
        }
    }

    /// Handles one client command. `now_ms` is wall-clock milliseconds; `fresh` makes new UAID bytes.
    /// Must not be called while [`Session::is_busy`] or after close.
    pub fn handle(
        &mut self,
        req: Request,
        limits: &Limits,
        now_ms: u64,
        fresh: &mut dyn FnMut() -> [u8; 16],
    ) -> Vec<Effect> {
        self.handle_with(req, limits, &Broadcasts::default(), now_ms, fresh)
    }

    /// [`Session::handle`], with the server's current broadcasts for hello and `broadcast_subscribe`.
    pub fn handle_with(
        &mut self,
        req: Request,
        limits: &Limits,
        broadcasts: &Broadcasts,
        now_ms: u64,
        fresh: &mut dyn FnMut() -> [u8; 16],
    ) -> Vec<Effect> {
        if matches!(self.state, State::Closed | State::Busy { .. }) {
            return Vec::new();
        }
        let Request { kind, raw } = req;
        if matches!(kind, Inbound::Hello(_)) {
            self.refreshed_ms = now_ms;
        }
        let mut out = self.dispatch(kind, raw, limits, broadcasts, now_ms, fresh);
        let due =
            limits.refresh_ms > 0 && now_ms.saturating_sub(self.refreshed_ms) >= limits.refresh_ms;
        if let (true, Some(uaid), false) = (due, self.uaid(), self.is_closed()) {
            self.refreshed_ms = now_ms;
            // First: a storage effect, if any, stays last (the session waits on it).
            out.insert(0, Effect::Refresh(uaid));
        }
        out
    }

    fn dispatch(
        &mut self,
        kind: Inbound,
        raw: Map<String, Value>,
        limits: &Limits,
        broadcasts: &Broadcasts,
        now_ms: u64,
        fresh: &mut dyn FnMut() -> [u8; 16],
    ) -> Vec<Effect> {
        match kind {
            Inbound::Ping => self.ping(raw, limits, now_ms),
            Inbound::Purge => vec![Effect::Send(reply::PONG.into())],
            Inbound::BroadcastSubscribe(more) => self.subscribe(more, broadcasts),
            Inbound::Hello(h) => self.hello(h, raw, limits, broadcasts, fresh),
            other => self.command(other, raw, limits),
        }
    }

    fn ping(&mut self, raw: Map<String, Value>, limits: &Limits, now_ms: u64) -> Vec<Effect> {
        let last = self.last_ping_ms;
        let too_soon = last > 0
            && limits.min_ping_interval_ms > 0
            && now_ms.saturating_sub(last) < limits.min_ping_interval_ms;
        if too_soon {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        }
        self.last_ping_ms = now_ms.max(1);
        vec![Effect::Send(reply::PONG.into())]
    }

    fn subscribe(&mut self, more: Subscriptions, broadcasts: &Broadcasts) -> Vec<Effect> {
        let subs = &mut self.extra.get_or_insert_with(Box::default).subs;
        let new: Vec<String> = more.iter().map(|(id, _)| id.clone()).collect();
        broadcast::merge(subs, more);
        // Only about what this subscribe named; always answered, so the client knows it was heard.
        let mut named: Subscriptions = subs
            .iter()
            .filter(|(id, _)| new.contains(id))
            .cloned()
            .collect();
        let told = broadcasts.tell(&mut named, None);
        for (id, version) in named {
            if let Some(entry) = subs.iter_mut().find(|(i, _)| *i == id) {
                entry.1 = version;
            }
        }
        vec![Effect::Send(reply::broadcast(told))]
    }

    /// The `broadcast` message for a change of `changed` ids, if this socket follows any of them
    /// with another version (and has said hello).
    pub fn broadcast_changed(
        &mut self,
        broadcasts: &Broadcasts,
        changed: &[String],
    ) -> Option<String> {
        self.uaid()?;
        let subs = &mut self.extra.as_mut()?.subs;
        if subs.is_empty() {
            return None;
        }
        let told = broadcasts.tell(subs, Some(changed));
        (!told.is_empty()).then(|| reply::broadcast(told))
    }

    fn hello(
        &mut self,
        h: Hello,
        raw: Map<String, Value>,
        limits: &Limits,
        broadcasts: &Broadcasts,
        fresh: &mut dyn FnMut() -> [u8; 16],
    ) -> Vec<Effect> {
        // pushgo 1.4 requires channelIDs; Firefox (use_webpush) never sends it.
        if h.channel_count.is_none() && !h.use_webpush {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        }
        let current = self.uaid();
        self.webpush = h.use_webpush && limits.webpush;
        if let Some(w) = h.wake {
            self.extra.get_or_insert_with(Box::default).wake = Some(Box::new(w));
        }
        if let Some(subs) = h.broadcasts.filter(|s| !s.is_empty()) {
            self.extra.get_or_insert_with(Box::default).subs = subs;
        }
        // Only the WebPush dialect carries broadcasts in its hello reply.
        let told = self.webpush.then(|| match self.extra.as_mut() {
            Some(extra) => broadcasts.tell(&mut extra.subs, None),
            None => Map::new(),
        });
        let requested = match (h.uaid, current) {
            (HelloUaid::Invalid, _) => {
                return self.closing(fail(raw, ErrorStatus::ServiceUnavailable))
            }
            (HelloUaid::Empty, Some(cur)) => cur,
            (HelloUaid::Valid(u), Some(cur)) if u == cur => cur,
            (HelloUaid::Valid(_), Some(_)) => {
                return self.closing(fail(raw, ErrorStatus::ServiceUnavailable))
            }
            (HelloUaid::Empty, None) => {
                let uaid = Uaid(Id::fresh(fresh()));
                self.state = State::Ready(uaid);
                let mut out = vec![
                    Effect::Bind(uaid, Origin::Minted),
                    Effect::Send(reply::hello(&uaid, told.as_ref())),
                ];
                out.extend(self.take_wake().map(|w| Effect::Wake(uaid, w)));
                return out;
            }
            (HelloUaid::Valid(u), None) => u,
        };
        let count = h.channel_count.unwrap_or(0);
        let forget = current.is_none() && count > limits.max_channels;
        // A repeated hello keeps its UAID; a first one with channels (or from Firefox) must be known.
        let need_known = current.is_none() && (count > 0 || h.channel_count.is_none());
        self.state = State::Busy {
            uaid: current,
            pending: Box::new(Pending::Hello {
                requested,
                fresh: Uaid(Id::fresh(fresh())),
                told,
                need_known,
                forget,
                raw,
            }),
        };
        let channels = if forget || self.webpush {
            Vec::new()
        } else {
            h.channels
        };
        vec![Effect::Store(StoreOp::Hello {
            uaid: requested,
            forget,
            channels,
        })]
    }

    fn command(&mut self, kind: Inbound, raw: Map<String, Value>, limits: &Limits) -> Vec<Effect> {
        let Some(uaid) = self.uaid() else {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        };
        let (pending, op) = match kind {
            Inbound::Register { channel, key } => {
                let kind = match (self.webpush, key) {
                    (false, _) => EndpointKind::SimplePush,
                    (true, RegisterKey::None) => EndpointKind::WebPush(None),
                    (true, RegisterKey::Valid(k)) => EndpointKind::WebPush(Some(Box::new(k))),
                    (true, RegisterKey::Invalid) => {
                        // The client's subscribe fails; its socket and other channels are fine.
                        return vec![Effect::Send(reply::register_error(
                            &channel,
                            400,
                            "Invalid key: not a base64url uncompressed P-256 public key",
                        ))];
                    }
                };
                (
                    Pending::Register { channel, raw },
                    StoreOp::Register {
                        uaid,
                        channel,
                        kind,
                        max_channels: limits.max_channels,
                    },
                )
            }
            Inbound::Unregister {
                raw: raw_channel,
                id,
            } => {
                let Some(channel) = id else {
                    // Not UUID-shaped, so never registered: nothing to forget (always 200).
                    return vec![Effect::Send(reply::unregister(&raw_channel))];
                };
                (
                    Pending::Unregister { raw_channel, raw },
                    StoreOp::Unregister { uaid, channel },
                )
            }
            Inbound::Ack(list) => {
                let mut items = Vec::new();
                let mut messages = Vec::new();
                for i in list {
                    match i.version {
                        AckVersion::Number(v) => items.push((i.channel_id, v)),
                        AckVersion::Message(id) if self.webpush => {
                            messages.push((i.channel_id, id))
                        }
                        // pushgo: a string version is an invalid command.
                        AckVersion::Message(_) => {
                            return self.closing(fail(raw, ErrorStatus::InvalidCommand))
                        }
                    }
                }
                if items.is_empty() && messages.is_empty() {
                    return Vec::new();
                }
                (
                    Pending::Ack,
                    StoreOp::Ack {
                        uaid,
                        items,
                        messages,
                    },
                )
            }
            // pushgo answers a messageType it does not know with 401 and a close.
            Inbound::Nack if !self.webpush => {
                return self.closing(fail(raw, ErrorStatus::InvalidCommand))
            }
            Inbound::Nack
            | Inbound::Ping
            | Inbound::Purge
            | Inbound::Hello(_)
            | Inbound::BroadcastSubscribe(_) => return Vec::new(),
        };
        self.state = State::Busy {
            uaid: Some(uaid),
            pending: Box::new(pending),
        };
        vec![Effect::Store(op)]
    }

    /// Feeds the answer to the outstanding [`Effect::Store`].
    pub fn on_store(&mut self, answer: StoreReply) -> Vec<Effect> {
        let old = std::mem::replace(&mut self.state, State::Closed);
        let State::Busy { uaid, pending } = old else {
            // Not waiting (closed meanwhile): nothing to do.
            self.state = old;
            return Vec::new();
        };
        let restore = |s: &mut Session| {
            if let Some(u) = uaid {
                s.state = State::Ready(u);
            }
        };
        match (*pending, answer) {
            (Pending::Hello { raw, .. }, StoreReply::Unavailable)
            | (Pending::Register { raw, .. }, StoreReply::Unavailable)
            | (Pending::Unregister { raw, .. }, StoreReply::Unavailable) => {
                fail(raw, ErrorStatus::ServiceUnavailable)
            }
            (
                Pending::Hello {
                    requested,
                    fresh,
                    told,
                    need_known,
                    forget,
                    ..
                },
                StoreReply::Hello {
                    known,
                    pending,
                    messages,
                },
            ) => {
                let reset = forget || (need_known && !known);
                let (chosen, origin, pending, messages) = if reset {
                    (fresh, Origin::Minted, Vec::new(), Vec::new())
                } else {
                    (requested, Origin::Named, pending, messages)
                };
                self.state = State::Ready(chosen);
                let mut out = vec![
                    Effect::Bind(chosen, origin),
                    Effect::Send(reply::hello(&chosen, told.as_ref())),
                ];
                out.extend(self.take_wake().map(|w| Effect::Wake(chosen, w)));
                // Each dialect gets what it can read; the rest stays stored for a client that can.
                if self.webpush {
                    out.extend(messages.iter().map(|m| Effect::Send(reply::message(m))));
                } else if !pending.is_empty() {
                    out.push(Effect::Send(reply::notification(&pending, None)));
                }
                out
            }
            (Pending::Register { channel, .. }, StoreReply::TooManyChannels) => {
                restore(self);
                // The client's subscribe fails; the socket and the other channels are fine.
                vec![Effect::Send(reply::register_error(
                    &channel,
                    429,
                    "Too many channels for this UAID",
                ))]
            }
            (Pending::Register { channel, .. }, StoreReply::Registered { endpoint }) => {
                restore(self);
                match uaid {
                    Some(u) => vec![Effect::Send(reply::register(&u, &channel, &endpoint))],
                    None => Vec::new(),
                }
            }
            (Pending::Unregister { raw_channel, .. }, StoreReply::Done) => {
                restore(self);
                vec![Effect::Send(reply::unregister(&raw_channel))]
            }
            (Pending::Ack, _) => {
                // An ack has no reply; a failed delete only means a later redelivery.
                restore(self);
                Vec::new()
            }
            (_, _) => {
                // An answer of the wrong kind is a caller bug: fail closed.
                vec![Effect::Close]
            }
        }
    }

    /// The frame for a live update, or `None` when this socket cannot take one (no hello yet, or closed).
    /// Also while a storage call is out, a repeated hello's included: that socket already had its
    /// hello reply, and an update stored after the hello's read would otherwise wait for the next one.
    /// A WebPush socket takes no SimplePush versions: the version stays stored (202).
    pub fn notify(&self, channel: &ChannelId, version: u64, data: Option<&str>) -> Option<String> {
        self.uaid()?;
        if self.webpush {
            return None;
        }
        Some(reply::notification(&[(*channel, version)], data))
    }

    /// The frame for a live WebPush message, or `None` when this socket cannot take one (no hello
    /// yet, closed, or a SimplePush socket, which could not decrypt it).
    pub fn notify_message(&self, message: &Message) -> Option<String> {
        self.uaid()?;
        if !self.webpush {
            return None;
        }
        Some(reply::message(message))
    }
}

#[cfg(test)]
mod tests;
