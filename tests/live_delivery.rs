//! An update for a connected device reaches its socket while the store is still working on it,
//! but only for a channel that socket knows is registered; the app server's answer still waits
//! for the store. Shown with a real memcached held by SIGSTOP, so that the store's answer comes
//! only when the test lets it.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{chid, have_memcached, memcached_node, put, Client, Got, Memcached, Server};
use serde_json::Value;

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
/// How long memcached is held: under the 300 ms timeout, so the store's answer is only late.
const HOLD: Duration = Duration::from_millis(250);

fn node(mc: &Memcached) -> Server {
    memcached_node(mc, KEY, "")
}

/// The PUT of `body`, answered on another thread: its status comes through the receiver.
fn put_later(ep: &str, body: &str) -> mpsc::Receiver<u16> {
    let (tx, rx) = mpsc::channel();
    let (ep, body) = (ep.to_string(), body.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(put(&ep, &body).status);
    });
    rx
}

/// The notification frame for `version`, if one arrives within `wait`.
fn notified(c: &mut Client, wait: Duration) -> Option<Value> {
    match c.next(wait) {
        Got::Text(t) => Some(serde_json::from_str(&t).expect("JSON")),
        Got::Nothing => None,
        other => panic!("unexpected {other:?}"),
    }
}

fn version_of(n: &Value) -> u64 {
    assert_eq!(n["messageType"], "notification", "{n}");
    n["updates"][0]["version"].as_u64().expect("version")
}

/// PUTs `version` with memcached held: whether the device had it before memcached went on, and
/// the PUT's status once it did.
fn put_while_held(mc: &Memcached, c: &mut Client, ep: &str, version: u64) -> (bool, u16) {
    mc.signal("STOP");
    let started = Instant::now();
    let answer = put_later(ep, &format!("version={version}"));
    let early = notified(c, HOLD);
    let unanswered = answer.try_recv().is_err();
    if let Some(n) = &early {
        assert_eq!(version_of(n), version);
        assert!(unanswered, "the answer must wait for the store");
    }
    std::thread::sleep(HOLD.saturating_sub(started.elapsed()));
    mc.signal("CONT");
    let status = answer.recv_timeout(Duration::from_secs(5)).expect("answer");
    if early.is_none() {
        let late = notified(c, Duration::from_secs(3));
        if status == 200 {
            assert_eq!(version_of(&late.expect("delivered once stored")), version);
        } else {
            assert_eq!(late, None, "refused: never delivered");
        }
    }
    c.ack(&chid(0), version);
    (early.is_some(), status)
}

#[test]
fn an_update_for_a_known_channel_reaches_the_socket_before_the_store_answers() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(0));
    // Registered on this socket: written at once, answered 200 once stored.
    assert_eq!(put_while_held(&mc, &mut c, &ep, 1), (true, 200));
    assert_eq!(put_while_held(&mc, &mut c, &ep, 2), (true, 200));

    // A new socket for the same UAID has not seen the channel registered: its first update
    // waits for the store, the next ones do not.
    c.close();
    let mut c = s.client();
    c.hello(&uaid, &[&chid(0)]);
    assert_eq!(put_while_held(&mc, &mut c, &ep, 3), (false, 200));
    assert_eq!(put_while_held(&mc, &mut c, &ep, 4), (true, 200));
}

#[test]
fn an_unregistered_channel_never_reaches_the_socket() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(0));
    assert_eq!(put_while_held(&mc, &mut c, &ep, 1), (true, 200));
    c.send_json(serde_json::json!({"messageType":"unregister","channelID":chid(0)}));
    assert_eq!(c.recv()["status"], 200);
    let (early, status) = put_while_held(&mc, &mut c, &ep, 2);
    assert!(
        !early,
        "an unregistered channel's update waited for the store"
    );
    assert!(
        matches!(status, 404 | 410),
        "refused by the store: {status}"
    );
}
