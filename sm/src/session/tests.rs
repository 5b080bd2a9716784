//! The session's protocol rules, one test each.

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
            messages: vec![],
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
    assert_eq!(eff[0], Effect::Bind(fresh, Origin::Minted));
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
            forget: false,
            channels: vec![],
        })]
    );
    assert!(t.s.is_busy());
    let eff = t.s.on_store(StoreReply::Hello {
        known: false,
        pending: vec![],
        messages: vec![],
    });
    // Kept, not minted: another node may be given the same UAID, so its binding reads first.
    assert_eq!(eff[0], Effect::Bind(uaid(dashed), Origin::Named));
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
        messages: vec![],
    });
    assert_eq!(eff[0], Effect::Bind(uaid(FRESH_STR), Origin::Minted));
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
        messages: vec![],
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
        messages: vec![],
    });
    assert_eq!(eff[0], Effect::Bind(uaid(U1), Origin::Named));
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
            forget: true,
            channels: vec![],
        })]
    );
    let eff = t.s.on_store(StoreReply::Hello {
        known: false,
        pending: vec![],
        messages: vec![],
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
                forget: false,
                channels: vec![],
            })]
        );
        let eff = t.s.on_store(StoreReply::Hello {
            known: true,
            pending: vec![(chid(C1), 9)],
            messages: vec![],
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
fn a_simplepush_hello_hands_its_channels_to_the_store_and_webpush_none() {
    let mut t = T::new();
    let eff = t.send(&format!(
        r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}","junk"]}}"#
    ));
    let [Effect::Store(StoreOp::Hello { channels, .. })] = &eff[..] else {
        panic!("{eff:?}")
    };
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].to_string(), C1);
    let mut t = T::new();
    let eff = t.send(&format!(
        r#"{{"messageType":"hello","uaid":"{U1}","use_webpush":true,"channelIDs":["{C1}"]}}"#
    ));
    assert!(
        matches!(&eff[..], [Effect::Store(StoreOp::Hello { channels, .. })] if channels.is_empty()),
        "{eff:?}"
    );
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
            channel: chid(C1),
            kind: EndpointKind::SimplePush,
            max_channels: 200,
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
            channel: chid(C1),
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
            items: vec![(chid(C1), 5)],
            messages: vec![]
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
    // Answered (an unknown id as such), never closed.
    let eff = t.send(r#"{"messageType":"broadcast_subscribe","broadcasts":{"x":"1"}}"#);
    assert_eq!(
        sent(&eff)[0],
        json!({"messageType":"broadcast","broadcasts":{"x": broadcast::NOT_FOUND}})
    );
    assert!(!closes(&eff) && !t.s.is_closed());
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

fn webpush_ready(t: &mut T, pending: Vec<(ChannelId, u64)>, messages: Vec<Message>) -> Vec<Effect> {
    let eff = t.send(&format!(
        r#"{{"messageType":"hello","use_webpush":true,"broadcasts":{{}},"uaid":"{U1}"}}"#
    ));
    assert!(matches!(eff[..], [Effect::Store(StoreOp::Hello { .. })]));
    t.s.on_store(StoreReply::Hello {
        known: true,
        pending,
        messages,
    })
}

fn msg(id: &str) -> Message {
    Message {
        channel: chid(C1),
        id: id.into(),
        ttl: 30,
        topic: None,
        payload: None,
    }
}

#[test]
fn webpush_hello_flushes_messages_not_versions() {
    let mut t = T::new();
    let eff = webpush_ready(&mut t, vec![(chid(C2), 9)], vec![msg("a"), msg("b")]);
    let out = sent(&eff);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0]["use_webpush"], true);
    assert_eq!(out[0]["broadcasts"], json!({}));
    assert_eq!(out[1]["version"], "a");
    assert_eq!(out[2]["version"], "b");
    assert!(t.s.is_webpush());

    // A SimplePush hello of the same data gets the versions and no messages.
    let mut t = T::new();
    let eff = t.send(&format!(
        r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":[]}}"#
    ));
    assert_eq!(eff.len(), 1);
    let eff = t.s.on_store(StoreReply::Hello {
        known: true,
        pending: vec![(chid(C2), 9)],
        messages: vec![msg("a")],
    });
    let out = sent(&eff);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["updates"][0]["version"], 9);
}

#[test]
fn webpush_can_be_switched_off() {
    let mut t = T::new();
    t.limits.webpush = false;
    let eff = t.send(r#"{"messageType":"hello","use_webpush":true,"broadcasts":{}}"#);
    let out = sent(&eff);
    assert!(out[0].get("use_webpush").is_none());
    assert!(!t.s.is_webpush());
}

#[test]
fn fresh_webpush_hello_needs_no_channel_ids() {
    let mut t = T::new();
    let eff = t.send(r#"{"messageType":"hello","use_webpush":true,"broadcasts":{}}"#);
    let out = sent(&eff);
    assert_eq!(out[0]["uaid"], FRESH_STR);
    assert_eq!(out[0]["use_webpush"], true);
}

#[test]
fn webpush_register_binds_the_key_and_refuses_a_bad_one() {
    let mut t = T::new();
    webpush_ready(&mut t, vec![], vec![]);
    let eff = t.send(&format!(
        r#"{{"messageType":"register","channelID":"{C1}"}}"#
    ));
    assert!(matches!(
        eff[..],
        [Effect::Store(StoreOp::Register {
            kind: EndpointKind::WebPush(None),
            ..
        })]
    ));
    t.s.on_store(StoreReply::Registered {
        endpoint: "e".into(),
    });
    let key = format!("BA{}", "A".repeat(85));
    let eff = t.send(&format!(
        r#"{{"messageType":"register","channelID":"{C1}","key":"{key}"}}"#
    ));
    assert!(matches!(
        eff[..],
        [Effect::Store(StoreOp::Register {
            kind: EndpointKind::WebPush(Some(_)),
            ..
        })]
    ));
    t.s.on_store(StoreReply::Registered {
        endpoint: "e".into(),
    });
    let eff = t.send(&format!(
        r#"{{"messageType":"register","channelID":"{C2}","key":"nope"}}"#
    ));
    let out = sent(&eff);
    assert_eq!(out[0]["status"], 400);
    assert_eq!(out[0]["channelID"], C2);
    assert!(!closes(&eff));
    assert!(!t.s.is_closed());
}

#[test]
fn register_beyond_max_channels_fails_without_closing() {
    let mut t = T::new();
    t.limits.max_channels = 3;
    t.ready(U1);
    let eff = t.send(&format!(
        r#"{{"messageType":"register","channelID":"{C1}"}}"#
    ));
    assert!(matches!(
        eff[..],
        [Effect::Store(StoreOp::Register {
            max_channels: 3,
            ..
        })]
    ));
    let eff = t.s.on_store(StoreReply::TooManyChannels);
    let out = sent(&eff);
    assert_eq!(out[0]["status"], 429);
    assert_eq!(out[0]["channelID"], C1);
    assert!(!closes(&eff) && !t.s.is_busy() && !t.s.is_closed());
    assert!(t.send("{}").len() == 1);
}

#[test]
fn simplepush_register_ignores_a_key() {
    let mut t = T::new();
    t.ready(U1);
    let eff = t.send(&format!(
        r#"{{"messageType":"register","channelID":"{C1}","key":"nope"}}"#
    ));
    assert!(matches!(
        eff[..],
        [Effect::Store(StoreOp::Register {
            kind: EndpointKind::SimplePush,
            ..
        })]
    ));
}

#[test]
fn webpush_acks_remove_messages_and_simplepush_refuses_string_versions() {
    let mut t = T::new();
    webpush_ready(&mut t, vec![], vec![]);
    let eff = t.send(&format!(
        r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":"m-1","code":100}},{{"channelID":"{C2}","version":4}}]}}"#
    ));
    assert_eq!(
        eff,
        vec![Effect::Store(StoreOp::Ack {
            uaid: uaid(U1),
            items: vec![(chid(C2), 4)],
            messages: vec![(chid(C1), "m-1".into())],
        })]
    );
    assert!(t.s.on_store(StoreReply::Done).is_empty());
    assert!(t
        .send(r#"{"messageType":"nack","version":"m-1","code":301}"#)
        .is_empty());

    let mut t = T::new();
    t.ready(U1);
    let eff = t.send(&format!(
        r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":"m-1"}}]}}"#
    ));
    assert_eq!(error_status(&eff), 401);
    let mut t = T::new();
    t.ready(U1);
    assert_eq!(
        error_status(&t.send(r#"{"messageType":"nack","version":"m-1","code":301}"#)),
        401
    );
}

#[test]
fn live_delivery_matches_the_dialect() {
    let mut t = T::new();
    webpush_ready(&mut t, vec![], vec![]);
    assert!(t.s.notify(&chid(C1), 5, None).is_none());
    let frame = t.s.notify_message(&msg("x")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(v["version"], "x");
    assert_eq!(v["ttl"], 30);

    let mut t = T::new();
    t.ready(U1);
    assert!(t.s.notify_message(&msg("x")).is_none());
    assert!(t.s.notify(&chid(C1), 5, None).is_some());
    // Before any hello, neither.
    let t = T::new();
    assert!(t.s.notify_message(&msg("x")).is_none());
}

fn bc(pairs: &[(&str, &str)]) -> Broadcasts {
    Broadcasts::new(
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

#[test]
fn hello_and_subscribe_tell_followed_broadcasts() {
    let table = bc(&[("rs", "\"5\"")]);
    let mut s = Session::new();
    let mut fresh = || FRESH;
    let hello = parse(
        br#"{"messageType":"hello","use_webpush":true,"broadcasts":{"rs":"\"0\"","gone":"1"}}"#,
    )
    .unwrap();
    let eff = s.handle_with(hello, &Limits::default(), &table, 0, &mut fresh);
    let out = sent(&eff);
    assert_eq!(
        out[0]["broadcasts"],
        json!({"rs": "\"5\"", "gone": broadcast::NOT_FOUND})
    );
    // A change reaches it; the same version again does not.
    let mut table = table;
    let changed = table.update(&[("rs".to_string(), "\"6\"".to_string())].into());
    let frame = s.broadcast_changed(&table, &changed).unwrap();
    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        v,
        json!({"messageType":"broadcast","broadcasts":{"rs":"\"6\""}})
    );
    assert!(s.broadcast_changed(&table, &changed).is_none());
    // broadcast_subscribe is always answered, about what it named only.
    let sub =
        parse(br#"{"messageType":"broadcast_subscribe","broadcasts":{"rs":"\"6\""}}"#).unwrap();
    let eff = s.handle_with(sub, &Limits::default(), &table, 0, &mut fresh);
    assert_eq!(
        sent(&eff)[0],
        json!({"messageType":"broadcast","broadcasts":{}})
    );
    assert!(!s.is_closed());
}

#[test]
fn simplepush_hello_carries_no_broadcasts_but_subscribe_is_answered() {
    let table = bc(&[("rs", "1")]);
    let mut s = Session::new();
    let mut fresh = || FRESH;
    let hello =
        parse(br#"{"messageType":"hello","uaid":"","channelIDs":[],"broadcasts":{"rs":"0"}}"#)
            .unwrap();
    let out = sent(&s.handle_with(hello, &Limits::default(), &table, 0, &mut fresh));
    assert!(out[0].get("broadcasts").is_none());
    let sub = parse(br#"{"messageType":"broadcast_subscribe","broadcasts":{"rs":"0"}}"#).unwrap();
    let out = sent(&s.handle_with(sub, &Limits::default(), &table, 0, &mut fresh));
    assert_eq!(
        out[0],
        json!({"messageType":"broadcast","broadcasts":{"rs":"1"}})
    );
    // Before hello, changes are not pushed (there is no session to speak of yet).
    let mut early = Session::new();
    let sub = parse(br#"{"messageType":"broadcast_subscribe","broadcasts":{"rs":"0"}}"#).unwrap();
    early.handle_with(
        sub,
        &Limits::default(),
        &Broadcasts::default(),
        0,
        &mut fresh,
    );
    assert!(early
        .broadcast_changed(&table, &["rs".to_string()])
        .is_none());
}

#[test]
fn a_completed_hello_hands_over_its_wake_data() {
    let mut t = T::new();
    let eff = t.send(r#"{"messageType":"hello","uaid":"","channelIDs":[],"wakeup_hostport":{"ip":"10.0.0.2","port":5000},"mobilenetwork":{"mcc":"214","mnc":"07"}}"#);
    let Some(Effect::Wake(u, w)) = eff.last() else {
        panic!("{eff:?}")
    };
    assert_eq!(*u, uaid(FRESH_STR));
    assert_eq!(w.hostport, Some("10.0.0.2:5000".parse().unwrap()));
    // A known UAID's hello: after the store's answer, for the UAID it kept.
    let mut t = T::new();
    t.send(&format!(
        r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}"],"connect":{{"k":"v"}}}}"#
    ));
    let eff = t.s.on_store(StoreReply::Hello {
        known: true,
        pending: vec![],
        messages: vec![],
    });
    assert!(matches!(eff.last(), Some(Effect::Wake(u, _)) if *u == uaid(U1)));
    // No wake data, no effect.
    let mut t = T::new();
    let eff = t.send(r#"{"messageType":"hello","uaid":"","channelIDs":[]}"#);
    assert!(!eff.iter().any(|e| matches!(e, Effect::Wake(..))));
}

#[test]
fn a_connected_device_refreshes_its_registrations_now_and_then() {
    let mut t = T::new();
    t.limits.refresh_ms = 3_600_000;
    t.ready(U1);
    t.now += 1_800_000;
    assert_eq!(t.send("{}"), vec![Effect::Send("{}".into())]);
    t.now += 1_800_000;
    assert_eq!(
        t.send("{}"),
        vec![Effect::Refresh(uaid(U1)), Effect::Send("{}".into())]
    );
    // Also when the message waits on storage itself (an ack): the storage effect stays last.
    t.now += 3_600_000;
    let eff = t.send(&format!(
        r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":1}}]}}"#
    ));
    assert!(
        matches!(eff[..], [Effect::Refresh(_), Effect::Store(_)]),
        "{eff:?}"
    );
    t.s.on_store(StoreReply::Done);
    t.now += 1_800_000;
    assert_eq!(t.send("{}").len(), 1);
    // Off by default; and never before hello.
    let mut t = T::new();
    t.now += 10_000_000;
    t.limits.refresh_ms = 1;
    assert_eq!(t.send("{}").len(), 1);
}
