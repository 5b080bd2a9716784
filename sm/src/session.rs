//! The per-socket state machine (protocol.md sections 3, 4 and 10).
//!
//! The caller feeds it parsed messages and storage answers; it returns [`Effect`]s for the caller to
//! carry out, in order. While a storage operation is outstanding the session is busy and the caller
//! holds further input back, so every connection's messages are handled strictly in order.

use serde_json::{Map, Value};

use crate::ids::{ChannelId, Id, Uaid};
use crate::message::{Hello, HelloUaid, Inbound, Refused, Rejection, Request};
use crate::reply::{self, ErrorStatus};

/// Protocol limits the session enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// More channelIDs than this in a hello drops the UAID's data and issues a new UAID.
    pub max_channels: usize,
    /// Pings closer together than this are an error; 0 disables the check.
    pub min_ping_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_channels: 200,
            min_ping_interval_ms: 20_000,
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
    Bind(Uaid),
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
    },
    /// Record the channel as registered; the answer carries the endpoint URL.
    Register {
        /// The owner.
        uaid: Uaid,
        /// The new channel.
        channel: ChannelId,
    },
    /// Forget the channel and anything pending for it.
    Unregister {
        /// The owner.
        uaid: Uaid,
        /// The channel.
        channel: ChannelId,
    },
    /// Remove each pending version that equals the acked one.
    Ack {
        /// The owner.
        uaid: Uaid,
        /// The acked versions.
        items: Vec<(ChannelId, u64)>,
    },
}

/// The storage layer's answer to a [`StoreOp`].
#[derive(Clone, Debug, PartialEq)]
pub enum StoreReply {
    /// For [`StoreOp::Hello`].
    Hello {
        /// The store has a record of the UAID (it has registered a channel).
        known: bool,
        /// Stored versions, to flush after the reply.
        pending: Vec<(ChannelId, u64)>,
    },
    /// For [`StoreOp::Register`]: the endpoint URL to hand out.
    Registered {
        /// `<public_url>/update/<token>`.
        endpoint: String,
    },
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
    last_ping_ms: Option<u64>,
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
            last_ping_ms: None,
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
        if matches!(self.state, State::Closed | State::Busy { .. }) {
            return Vec::new();
        }
        let Request { kind, raw } = req;
        match kind {
            Inbound::Ping => self.ping(raw, limits, now_ms),
            Inbound::Purge => vec![Effect::Send(reply::PONG.into())],
            Inbound::BroadcastSubscribe => Vec::new(),
            Inbound::Hello(h) => self.hello(h, raw, limits, fresh),
            other => self.command(other, raw),
        }
    }

    fn ping(&mut self, raw: Map<String, Value>, limits: &Limits, now_ms: u64) -> Vec<Effect> {
        let too_soon = self.last_ping_ms.is_some_and(|last| {
            limits.min_ping_interval_ms > 0
                && now_ms.saturating_sub(last) < limits.min_ping_interval_ms
        });
        if too_soon {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        }
        self.last_ping_ms = Some(now_ms);
        vec![Effect::Send(reply::PONG.into())]
    }

    fn hello(
        &mut self,
        h: Hello,
        raw: Map<String, Value>,
        limits: &Limits,
        fresh: &mut dyn FnMut() -> [u8; 16],
    ) -> Vec<Effect> {
        // pushgo 1.4 requires channelIDs; Firefox (use_webpush) never sends it.
        if h.channel_count.is_none() && !h.use_webpush {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        }
        let current = self.uaid();
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
                return vec![Effect::Bind(uaid), Effect::Send(reply::hello(&uaid))];
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
                need_known,
                forget,
                raw,
            }),
        };
        vec![Effect::Store(StoreOp::Hello {
            uaid: requested,
            forget,
        })]
    }

    fn command(&mut self, kind: Inbound, raw: Map<String, Value>) -> Vec<Effect> {
        let Some(uaid) = self.uaid() else {
            return self.closing(fail(raw, ErrorStatus::InvalidCommand));
        };
        let (pending, op) = match kind {
            Inbound::Register(channel) => (
                Pending::Register { channel, raw },
                StoreOp::Register { uaid, channel },
            ),
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
            Inbound::Ack(items) => {
                if items.is_empty() {
                    return Vec::new();
                }
                let items = items.iter().map(|i| (i.channel_id, i.version)).collect();
                (Pending::Ack, StoreOp::Ack { uaid, items })
            }
            Inbound::Ping | Inbound::Purge | Inbound::Hello(_) | Inbound::BroadcastSubscribe => {
                return Vec::new()
            }
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
                    need_known,
                    forget,
                    ..
                },
                StoreReply::Hello { known, pending },
            ) => {
                let reset = forget || (need_known && !known);
                let (chosen, pending) = if reset {
                    (fresh, Vec::new())
                } else {
                    (requested, pending)
                };
                self.state = State::Ready(chosen);
                let mut out = vec![Effect::Bind(chosen), Effect::Send(reply::hello(&chosen))];
                if !pending.is_empty() {
                    out.push(Effect::Send(reply::notification(&pending, None)));
                }
                out
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
    pub fn notify(&self, channel: &ChannelId, version: u64, data: Option<&str>) -> Option<String> {
        self.uaid()?;
        Some(reply::notification(&[(*channel, version)], data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse;
    use serde_json::json;

    const U1: &str = "9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e";
    const U2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const C1: &str = "0cb8a613-8e2b-4b47-b370-51098daa8401";
    const C2: &str = "1cb8a613-8e2b-4b47-b370-51098daa8402";
    const FRESH: [u8; 16] = [0x11; 16];
    const FRESH_STR: &str = "11111111111111111111111111111111";

    fn uaid(s: &str) -> Uaid {
        Uaid(Id::parse(s).unwrap())
    }

    fn chid(s: &str) -> ChannelId {
        ChannelId(Id::parse(s).unwrap())
    }

    struct T {
        s: Session,
        limits: Limits,
        now: u64,
    }

    impl T {
        fn new() -> T {
            T {
                s: Session::new(),
                limits: Limits::default(),
                now: 1_000_000,
            }
        }

        fn send(&mut self, text: &str) -> Vec<Effect> {
            let mut fresh = || FRESH;
            match parse(text.as_bytes()) {
                Ok(req) => self.s.handle(req, &self.limits, self.now, &mut fresh),
                Err(r) => self.s.refused(r),
            }
        }

        /// Completes a hello for `u` as a UAID the store knows, with nothing pending.
        fn ready(&mut self, u: &str) {
            let eff = self.send(&format!(
                r#"{{"messageType":"hello","uaid":"{u}","channelIDs":[]}}"#
            ));
            assert!(matches!(eff[..], [Effect::Store(StoreOp::Hello { .. })]));
            self.s.on_store(StoreReply::Hello {
                known: true,
                pending: vec![],
            });
            assert_eq!(self.s.uaid(), Some(uaid(u)));
        }
    }

    fn sent(effects: &[Effect]) -> Vec<serde_json::Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn closes(effects: &[Effect]) -> bool {
        effects.last() == Some(&Effect::Close)
    }

    fn error_status(effects: &[Effect]) -> i64 {
        assert!(closes(effects), "an error must close: {effects:?}");
        sent(effects)[0]["status"].as_i64().unwrap()
    }

    #[test]
    fn ping_and_purge_work_before_hello() {
        let mut t = T::new();
        assert_eq!(t.send("{}"), vec![Effect::Send("{}".into())]);
        assert_eq!(
            t.send(r#"{"messageType":"purge"}"#),
            vec![Effect::Send("{}".into())]
        );
    }

    #[test]
    fn pings_too_close_together_are_an_error() {
        let mut t = T::new();
        t.send("{}");
        t.now += 19_999;
        let eff = t.send(r#"{"messageType":"ping"}"#);
        assert_eq!(error_status(&eff), 401);
        assert_eq!(sent(&eff)[0]["error"], "Invalid Command");
        assert!(t.s.is_closed());
    }

    #[test]
    fn pings_far_enough_apart_are_fine_and_zero_disables_the_limit() {
        let mut t = T::new();
        t.send("{}");
        t.now += 20_000;
        assert_eq!(t.send("{}"), vec![Effect::Send("{}".into())]);
        t.limits.min_ping_interval_ms = 0;
        assert_eq!(t.send("{}"), vec![Effect::Send("{}".into())]);
    }

    #[test]
    fn empty_payload_is_ignored_and_garbage_closes_silently() {
        let mut t = T::new();
        assert!(t.send("").is_empty());
        assert_eq!(t.send("banana"), vec![Effect::Close]);
        assert!(t.s.is_closed());
        let mut t = T::new();
        assert_eq!(t.send("[1,2]"), vec![Effect::Close]);
    }

    #[test]
    fn unknown_type_is_401_with_echo() {
        let mut t = T::new();
        let eff = t.send(r#"{"messageType":"bogus","x":1}"#);
        assert_eq!(error_status(&eff), 401);
        assert_eq!(sent(&eff)[0]["x"], 1);
        assert_eq!(sent(&eff)[0]["messageType"], "bogus");
    }

    #[test]
    fn commands_before_hello_are_401_with_echo() {
        for msg in [
            format!(r#"{{"messageType":"register","channelID":"{C1}"}}"#),
            format!(r#"{{"messageType":"unregister","channelID":"{C1}"}}"#),
            format!(r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":23}}]}}"#),
        ] {
            let mut t = T::new();
            let eff = t.send(&msg);
            assert_eq!(error_status(&eff), 401, "{msg}");
            let mut echo = sent(&eff)[0].clone();
            echo.as_object_mut().unwrap().remove("status");
            echo.as_object_mut().unwrap().remove("error");
            assert_eq!(
                echo,
                serde_json::from_str::<serde_json::Value>(&msg).unwrap()
            );
        }
    }

    #[test]
    fn hello_without_channel_ids_is_401_unless_webpush() {
        let mut t = T::new();
        assert_eq!(error_status(&t.send(r#"{"messageType":"hello"}"#)), 401);
        let mut t = T::new();
        let eff = t.send(r#"{"messageType":"hello","use_webpush":true,"broadcasts":{}}"#);
        assert_eq!(sent(&eff)[0]["status"], 200);
    }

    #[test]
    fn hello_with_empty_uaid_gets_a_fresh_one_at_once() {
        let mut t = T::new();
        let eff = t.send(r#"{"messageType":"HELLO","uaid":"","channelIDs":[]}"#);
        let fresh = uaid(FRESH_STR);
        assert_eq!(eff[0], Effect::Bind(fresh));
        assert_eq!(
            sent(&eff)[0],
            json!({"messageType":"hello","uaid":FRESH_STR,"status":200})
        );
        assert_eq!(t.s.uaid(), Some(fresh));
    }

    #[test]
    fn hello_with_invalid_uaid_is_503() {
        let mut t = T::new();
        let eff = t.send(r#"{"messageType":"hello","uaid":"not-a-uuid","channelIDs":[]}"#);
        assert_eq!(error_status(&eff), 503);
        assert_eq!(sent(&eff)[0]["error"], "Service Unavailable");
    }

    #[test]
    fn unknown_uaid_with_empty_list_is_kept_verbatim() {
        let mut t = T::new();
        let dashed = "9F3C0B6E-5D2A-4C8E-9B7A-6D5C4B3A2F1E";
        let eff = t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{dashed}","channelIDs":[]}}"#
        ));
        assert_eq!(
            eff,
            vec![Effect::Store(StoreOp::Hello {
                uaid: uaid(dashed),
                forget: false
            })]
        );
        assert!(t.s.is_busy());
        let eff = t.s.on_store(StoreReply::Hello {
            known: false,
            pending: vec![],
        });
        assert_eq!(sent(&eff)[0]["uaid"], dashed);
    }

    #[test]
    fn unknown_uaid_with_channels_gets_a_new_one() {
        let mut t = T::new();
        t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}"]}}"#
        ));
        let eff = t.s.on_store(StoreReply::Hello {
            known: false,
            pending: vec![(chid(C1), 3)],
        });
        assert_eq!(eff[0], Effect::Bind(uaid(FRESH_STR)));
        assert_eq!(sent(&eff).len(), 1, "nothing of the old UAID is flushed");
        assert_eq!(sent(&eff)[0]["uaid"], FRESH_STR);
    }

    #[test]
    fn unknown_uaid_from_firefox_gets_a_new_one() {
        let mut t = T::new();
        t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","use_webpush":true}}"#
        ));
        let eff = t.s.on_store(StoreReply::Hello {
            known: false,
            pending: vec![],
        });
        assert_eq!(sent(&eff)[0]["uaid"], FRESH_STR);
    }

    #[test]
    fn known_uaid_is_kept_bound_and_flushed() {
        let mut t = T::new();
        t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}"]}}"#
        ));
        let eff = t.s.on_store(StoreReply::Hello {
            known: true,
            pending: vec![(chid(C1), 3), (chid(C2), 4)],
        });
        assert_eq!(eff[0], Effect::Bind(uaid(U1)));
        let msgs = sent(&eff);
        assert_eq!(
            msgs[0],
            json!({"messageType":"hello","uaid":U1,"status":200})
        );
        assert_eq!(
            msgs[1],
            json!({"messageType":"notification","updates":[{"channelID":C1,"version":3},{"channelID":C2,"version":4}]})
        );
    }

    #[test]
    fn too_many_channels_forgets_the_uaid() {
        let mut t = T::new();
        let list: Vec<String> = (0..201).map(|i| format!("\"{i}\"")).collect();
        let eff = t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":[{}]}}"#,
            list.join(",")
        ));
        assert_eq!(
            eff,
            vec![Effect::Store(StoreOp::Hello {
                uaid: uaid(U1),
                forget: true
            })]
        );
        let eff = t.s.on_store(StoreReply::Hello {
            known: false,
            pending: vec![],
        });
        assert_eq!(sent(&eff)[0]["uaid"], FRESH_STR);
    }

    #[test]
    fn exactly_max_channels_is_fine() {
        let mut t = T::new();
        let list: Vec<String> = (0..200).map(|i| format!("\"{i}\"")).collect();
        let eff = t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":[{}]}}"#,
            list.join(",")
        ));
        assert!(matches!(
            eff[..],
            [Effect::Store(StoreOp::Hello { forget: false, .. })]
        ));
    }

    #[test]
    fn second_hello_same_or_empty_uaid_flushes_again() {
        for again in [U1, ""] {
            let mut t = T::new();
            t.ready(U1);
            let eff = t.send(&format!(
                r#"{{"messageType":"hello","uaid":"{again}","channelIDs":[]}}"#
            ));
            assert_eq!(
                eff,
                vec![Effect::Store(StoreOp::Hello {
                    uaid: uaid(U1),
                    forget: false
                })]
            );
            let eff = t.s.on_store(StoreReply::Hello {
                known: true,
                pending: vec![(chid(C1), 9)],
            });
            let msgs = sent(&eff);
            assert_eq!(msgs[0]["uaid"], U1);
            assert_eq!(msgs[1]["updates"][0]["version"], 9);
        }
    }

    #[test]
    fn second_hello_with_other_uaid_is_503() {
        let mut t = T::new();
        t.ready(U1);
        let eff = t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U2}","channelIDs":[]}}"#
        ));
        assert_eq!(error_status(&eff), 503);
    }

    #[test]
    fn hello_store_failure_is_503() {
        let mut t = T::new();
        t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":[]}}"#
        ));
        let eff = t.s.on_store(StoreReply::Unavailable);
        assert_eq!(error_status(&eff), 503);
        assert!(t.s.is_closed());
    }

    #[test]
    fn register_replies_with_the_endpoint() {
        let mut t = T::new();
        t.ready(U1);
        let eff = t.send(&format!(
            r#"{{"messageType":"register","channelID":"{C1}"}}"#
        ));
        assert_eq!(
            eff,
            vec![Effect::Store(StoreOp::Register {
                uaid: uaid(U1),
                channel: chid(C1)
            })]
        );
        let eff = t.s.on_store(StoreReply::Registered {
            endpoint: "http://h/update/tok".into(),
        });
        assert_eq!(
            sent(&eff)[0],
            json!({"messageType":"register","uaid":U1,"status":200,"channelID":C1,"pushEndpoint":"http://h/update/tok"})
        );
        assert!(!t.s.is_busy());
    }

    #[test]
    fn register_with_bad_channel_is_401() {
        let mut t = T::new();
        t.ready(U1);
        let eff = t.send(r#"{"messageType":"register","channelID":"abc"}"#);
        assert_eq!(error_status(&eff), 401);
    }

    #[test]
    fn register_store_failure_is_503() {
        let mut t = T::new();
        t.ready(U1);
        t.send(&format!(
            r#"{{"messageType":"register","channelID":"{C1}"}}"#
        ));
        assert_eq!(error_status(&t.s.on_store(StoreReply::Unavailable)), 503);
    }

    #[test]
    fn unregister_is_always_200_and_forgets_the_channel() {
        let mut t = T::new();
        t.ready(U1);
        let eff = t.send(&format!(
            r#"{{"messageType":"unregister","channelID":"{C1}"}}"#
        ));
        assert_eq!(
            eff,
            vec![Effect::Store(StoreOp::Unregister {
                uaid: uaid(U1),
                channel: chid(C1)
            })]
        );
        let eff = t.s.on_store(StoreReply::Done);
        assert_eq!(
            sent(&eff)[0],
            json!({"messageType":"unregister","status":200,"channelID":C1})
        );
        let eff = t.send(r#"{"messageType":"unregister","channelID":"whatever"}"#);
        assert_eq!(sent(&eff)[0]["channelID"], "whatever");
        assert_eq!(sent(&eff)[0]["status"], 200);
    }

    #[test]
    fn unregister_without_channel_is_401() {
        let mut t = T::new();
        t.ready(U1);
        assert_eq!(
            error_status(&t.send(r#"{"messageType":"unregister"}"#)),
            401
        );
    }

    #[test]
    fn ack_deletes_matching_versions_and_replies_nothing() {
        let mut t = T::new();
        t.ready(U1);
        let eff = t.send(&format!(
            r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":5,"code":100}}]}}"#
        ));
        assert_eq!(
            eff,
            vec![Effect::Store(StoreOp::Ack {
                uaid: uaid(U1),
                items: vec![(chid(C1), 5)]
            })]
        );
        assert!(t.s.on_store(StoreReply::Done).is_empty());
        assert!(!t.s.is_busy());
    }

    #[test]
    fn ack_with_empty_updates_is_401() {
        let mut t = T::new();
        t.ready(U1);
        assert_eq!(
            error_status(&t.send(r#"{"messageType":"ack","updates":[]}"#)),
            401
        );
    }

    #[test]
    fn broadcast_subscribe_keeps_the_socket_open() {
        let mut t = T::new();
        t.ready(U1);
        assert!(t
            .send(r#"{"messageType":"broadcast_subscribe","broadcasts":{"x":"1"}}"#)
            .is_empty());
        assert!(!t.s.is_closed());
    }

    #[test]
    fn notify_only_after_hello() {
        let mut t = T::new();
        assert!(t.s.notify(&chid(C1), 1, None).is_none());
        t.ready(U1);
        let frame = t.s.notify(&chid(C1), 12, Some("x")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            json!({"messageType":"notification","updates":[{"channelID":C1,"version":12,"data":"x"}]})
        );
        // During a repeated hello's storage call too.
        t.send(&format!(
            r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":[]}}"#
        ));
        assert!(t.s.is_busy());
        assert!(t.s.notify(&chid(C1), 13, None).is_some());
        t.s.close();
        assert!(t.s.notify(&chid(C1), 1, None).is_none());
    }

    #[test]
    fn nothing_is_handled_after_close() {
        let mut t = T::new();
        t.send("banana");
        assert!(t.send("{}").is_empty());
    }
}
