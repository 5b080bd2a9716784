//! WebPush messages on the memcached backend, against real memcached processes and real server
//! nodes: offline delivery, acks, restarts, topics, the per-UAID cap, expiry, DELETE, unregister,
//! and concurrent pushes through two nodes.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{chid, have_memcached, memcached_node, request, split_url, Client, Memcached, Server};
use serde_json::{json, Value};

/// Fixed, so that endpoints and message URLs stay valid across node restarts and between nodes.
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

/// A node on this memcached, with more config sections.
fn node_with(mc: &Memcached, sections: &str) -> Server {
    memcached_node(mc, KEY, sections)
}

fn node(mc: &Memcached) -> Server {
    node_with(mc, "")
}

/// A WebPush client after its hello (a new UAID when `uaid` is empty); returns it and the UAID.
fn wp_client(s: &Server, uaid: &str) -> (Client, String) {
    let mut c = s.client();
    let reply = c.webpush_hello(uaid);
    let got = reply["uaid"].as_str().unwrap().to_string();
    if !uaid.is_empty() {
        assert_eq!(got, uaid, "the same UAID");
    }
    (c, got)
}

/// Registers a channel without a key; returns its `/wpush/v1/` endpoint.
fn register(c: &mut Client, ch: &str) -> String {
    c.send_json(json!({"messageType":"register","channelID":ch}));
    let reply = c.recv();
    assert_eq!(reply["status"], 200, "{reply}");
    let ep = reply["pushEndpoint"].as_str().unwrap().to_string();
    assert!(ep.contains("/wpush/v1/"), "{ep}");
    ep
}

/// Closes a client and gives the server a moment to unbind it, so pushes are stored, not written.
fn leave(mut c: Client) {
    c.close();
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
}

/// An app server's push; returns the status and the message id from `Location` (if 201).
fn post(ep: &str, headers: &[&str], body: &str) -> (u16, String) {
    let (addr, path) = split_url(ep);
    let r = request(addr, "POST", &path, headers, body);
    if r.status != 201 {
        return (r.status, String::new());
    }
    let loc = r.header("Location").expect("Location");
    assert!(r.header("TTL").is_some(), "{}", r.head);
    (
        r.status,
        loc.rsplit_once("/m/").expect("message URL").1.to_string(),
    )
}

/// A 60 s encrypted push with `body`; returns the message id.
fn push(ep: &str, body: &str) -> String {
    let (status, id) = post(ep, &["TTL: 60", "Content-Encoding: aes128gcm"], body);
    assert_eq!(status, 201, "push of {body:?}");
    id
}

fn delete(s: &Server, id: &str) -> u16 {
    request(s.addr, "DELETE", &format!("/m/{id}"), &[], "").status
}

/// Reads one notification and checks it is the message `id` of channel `ch` carrying `body`.
fn expect_message(c: &mut Client, ch: &str, id: &str, body: &str) -> Value {
    let n = c.recv();
    assert_eq!(n["messageType"], "notification", "{n}");
    assert_eq!(n["channelID"], ch, "{n}");
    assert_eq!(n["version"], id, "{n}");
    assert_eq!(n["data"], URL_SAFE_NO_PAD.encode(body), "{n}");
    assert_eq!(n["headers"], json!({"encoding":"aes128gcm"}), "{n}");
    let ttl = n["ttl"].as_u64().unwrap();
    assert!((58..=60).contains(&ttl), "counted down from 60: {n}");
    n
}

#[test]
fn an_offline_message_arrives_after_hello_and_an_ack_removes_it() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    let id = push(&ep, "sealed");
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &id, "sealed");
    c.expect_silence(Duration::from_millis(200));
    // Not acked: the next hello gets it again.
    leave(c);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &id, "sealed");
    c.ack_message(&ch, &id);
    c.expect_silence(Duration::from_millis(200));
    leave(c);
    let (mut c, _) = wp_client(&s, &uaid);
    c.expect_silence(Duration::from_millis(400));
    // Gone from memcached too, not just from this hello.
    assert_eq!(delete(&s, &id), 404);
}

#[test]
fn a_waiting_message_survives_a_node_restart() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    let id = push(&ep, "kept");
    // TTL 0: only for a live socket, never stored.
    assert_eq!(post(&ep, &["TTL: 0"], "").0, 201);
    let empty = post(&ep, &["TTL: 60"], "");
    assert_eq!(empty.0, 201);
    drop(s);
    let s = node(&mc);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &id, "kept");
    let n = c.recv();
    assert_eq!(n["version"], empty.1.as_str(), "{n}");
    assert!(n.get("data").is_none() && n.get("headers").is_none(), "{n}");
    c.expect_silence(Duration::from_millis(300));
    // The endpoint minted by the old node still works on the new one.
    let moved = ep.replace(&split_url(&ep).0.to_string(), &s.addr.to_string());
    let (status, _) = post(&moved, &["TTL: 60"], "");
    assert_eq!(status, 201);
}

#[test]
fn a_topic_replaces_the_waiting_message_of_its_channel_only() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let (ch1, ch2) = (chid(1), chid(2));
    let (ep1, ep2) = (register(&mut c, &ch1), register(&mut c, &ch2));
    leave(c);
    let topic = ["TTL: 60", "Content-Encoding: aes128gcm", "Topic: t"];
    let (_, first) = post(&ep1, &topic, "1-0");
    let (_, other) = post(&ep2, &topic, "other");
    let (st, second) = post(&ep1, &topic, "2-0");
    assert_eq!(st, 201);
    assert_eq!(delete(&s, &first), 404, "replaced");
    let (mut c, _) = wp_client(&s, &uaid);
    // Oldest first: the replacement goes to the end.
    expect_message(&mut c, &ch2, &other, "other");
    expect_message(&mut c, &ch1, &second, "2-0");
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn the_per_uaid_cap_answers_429_until_an_ack_makes_room() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node_with(&mc, "[webpush]\nmax_messages = 2\n");
    let (mut c, uaid) = wp_client(&s, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    let a = push(&ep, "a");
    let b = push(&ep, "b");
    assert_eq!(post(&ep, &["TTL: 60"], "").0, 429);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &a, "a");
    expect_message(&mut c, &ch, &b, "b");
    c.ack_message(&ch, &a);
    c.expect_silence(Duration::from_millis(200));
    leave(c);
    let d = push(&ep, "d");
    assert_eq!(post(&ep, &["TTL: 60"], "").0, 429);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &b, "b");
    expect_message(&mut c, &ch, &d, "d");
}

#[test]
fn an_expired_message_is_not_delivered() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    let (st, short) = post(&ep, &["TTL: 1"], "");
    assert_eq!(st, 201);
    std::thread::sleep(Duration::from_millis(2500));
    let (mut c, _) = wp_client(&s, &uaid);
    c.expect_silence(Duration::from_millis(400));
    assert_eq!(delete(&s, &short), 404, "expired");
    // The channel itself is still registered.
    leave(c);
    let id = push(&ep, "later");
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &id, "later");
}

#[test]
fn delete_of_the_message_url_removes_it_once() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    let gone = push(&ep, "gone");
    let kept = push(&ep, "kept");
    assert_eq!(delete(&s, &gone), 204);
    assert_eq!(delete(&s, &gone), 404);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch, &kept, "kept");
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn unregister_drops_the_channels_messages_and_later_pushes_get_410() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&mc);
    let (mut c, uaid) = wp_client(&s, "");
    let (ch1, ch2) = (chid(1), chid(2));
    let (ep1, ep2) = (register(&mut c, &ch1), register(&mut c, &ch2));
    leave(c);
    let dropped = push(&ep1, "dropped");
    let kept = push(&ep2, "kept");
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch1, &dropped, "dropped");
    expect_message(&mut c, &ch2, &kept, "kept");
    c.send_json(json!({"messageType":"unregister","channelID":ch1}));
    assert_eq!(c.recv()["status"], 200);
    assert_eq!(post(&ep1, &["TTL: 60"], "").0, 410);
    assert_eq!(delete(&s, &dropped), 404, "went with its channel");
    leave(c);
    let (mut c, _) = wp_client(&s, &uaid);
    expect_message(&mut c, &ch2, &kept, "kept");
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn concurrent_pushes_through_two_nodes_lose_nothing() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (a, b) = (node(&mc), node(&mc));
    let (mut c, uaid) = wp_client(&a, "");
    let ch = chid(1);
    let ep = register(&mut c, &ch);
    leave(c);
    // The list does not exist yet: the first writers race to create it, on both nodes.
    let other = ep.replace(&a.addr.to_string(), &b.addr.to_string());
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let ep = if i % 2 == 0 {
                ep.clone()
            } else {
                other.clone()
            };
            std::thread::spawn(move || {
                (0..3)
                    .map(|j| push(&ep, &format!("{i}-{j}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut sent: Vec<String> = senders
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let (mut c, _) = wp_client(&a, &uaid);
    let mut got: Vec<String> = (0..sent.len())
        .map(|_| c.recv()["version"].as_str().unwrap().to_string())
        .collect();
    c.expect_silence(Duration::from_millis(300));
    sent.sort();
    got.sort();
    assert_eq!(got, sent);
}
