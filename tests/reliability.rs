//! Every notification's life, counted by state in /metrics and logged one line per transition.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn event(m: &HashMap<String, f64>, e: &str) -> f64 {
    m[&format!("simplepush_notifications_total{{event=\"{e}\"}}")]
}

fn dropped(m: &HashMap<String, f64>, r: &str) -> f64 {
    m[&format!("simplepush_notifications_dropped_total{{reason=\"{r}\"}}")]
}

fn hello(s: &Server, uaid: &str) -> (Client, String) {
    let mut c = s.client();
    let uaid = c.webpush_hello(uaid)["uaid"].as_str().unwrap().to_string();
    (c, uaid)
}

fn post(ep: &str, headers: &[&str]) -> (u16, String) {
    let (addr, path) = split_url(ep);
    let r = request(addr, "POST", &path, headers, "");
    (r.status, r.header("Location").unwrap_or_default())
}

fn away(mut c: Client) {
    c.close();
    drop(c);
    std::thread::sleep(Duration::from_millis(150));
}

#[test]
fn each_transition_is_counted_and_logged() {
    let mut s = Server::start_with("workers = 1", "[webpush]\nmax_messages = 3\n");
    let (mut c, uaid) = hello(&s, "");
    c.send_json(json!({"messageType":"register","channelID":chid(1)}));
    let ep = c.recv()["pushEndpoint"].as_str().unwrap().to_string();
    let m0 = s.metrics();

    // received → stored → delivered_live → acked
    assert_eq!(post(&ep, &["TTL: 60"]).0, 201);
    let n = c.recv();
    c.ack_message(&chid(1), n["version"].as_str().unwrap());
    std::thread::sleep(Duration::from_millis(150));
    let m1 = s.metrics();
    for e in ["received", "stored", "delivered_live", "acked"] {
        assert_eq!(event(&m1, e) - event(&m0, e), 1.0, "{e}");
    }
    away(c);

    // Offline: stored, then delivered_stored after a hello; TTL 0 offline is dropped (offline);
    // a topic replaces (replaced); DELETE (deleted); a fourth waiting message is refused (full).
    assert_eq!(post(&ep, &["TTL: 60", "Topic: t"]).0, 201);
    assert_eq!(post(&ep, &["TTL: 60", "Topic: t"]).0, 201);
    assert_eq!(post(&ep, &["TTL: 0"]).0, 201);
    let (_, gone) = post(&ep, &["TTL: 60"]);
    let (addr, path) = split_url(&gone);
    assert_eq!(request(addr, "DELETE", &path, &[], "").status, 204);
    assert_eq!(post(&ep, &["TTL: 1"]).0, 201);
    assert_eq!(post(&ep, &["TTL: 60"]).0, 201);
    assert_eq!(post(&ep, &["TTL: 60"]).0, 429);
    let m2 = s.metrics();
    assert_eq!(dropped(&m2, "offline") - dropped(&m1, "offline"), 1.0);
    assert_eq!(dropped(&m2, "replaced") - dropped(&m1, "replaced"), 1.0);
    assert_eq!(dropped(&m2, "deleted") - dropped(&m1, "deleted"), 1.0);
    assert_eq!(dropped(&m2, "full") - dropped(&m1, "full"), 1.0);
    // The TTL-1 message runs out; the next write of the UAID's messages finds it expired.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(post(&ep, &["TTL: 60"]).0, 201);
    let (mut c, _) = hello(&s, &uaid);
    let flushed: Vec<Value> = (0..3).map(|_| c.recv()).collect();
    assert!(flushed.iter().all(|n| n["messageType"] == "notification"));
    c.expect_silence(Duration::from_millis(200));
    let m3 = s.metrics();
    assert_eq!(event(&m3, "expired") - event(&m2, "expired"), 1.0);
    assert_eq!(
        event(&m3, "delivered_stored") - event(&m2, "delivered_stored"),
        3.0
    );

    // Unregistered channel (410).
    c.send_json(json!({"messageType":"unregister","channelID":chid(1)}));
    c.recv();
    assert_eq!(post(&ep, &["TTL: 60"]).0, 410);
    let m4 = s.metrics();
    assert_eq!(
        dropped(&m4, "unregistered") - dropped(&m3, "unregistered"),
        1.0
    );

    // Storage down (503), on memcached only.
    if let Some(mc) = s.memcached.as_mut() {
        c.send_json(json!({"messageType":"register","channelID":chid(2)}));
        let ep2 = c.recv()["pushEndpoint"].as_str().unwrap().to_string();
        mc.kill();
        assert_eq!(post(&ep2, &["TTL: 60"]).0, 503);
        let m5 = s.metrics();
        assert_eq!(
            dropped(&m5, "store_error") - dropped(&m4, "store_error"),
            1.0
        );
        assert!(m5["simplepush_store_errors_total"] >= 1.0);
        assert!(s.wait_log("event=dropped reason=store_error"));
    }

    // With RUST_LOG=debug, one structured line per transition.
    for line in [
        "event=received",
        "event=stored",
        "event=delivered_live",
        "event=acked",
        "event=delivered_stored",
        "event=expired",
        "event=dropped reason=offline",
        "event=dropped reason=replaced",
        "event=dropped reason=deleted",
        "event=dropped reason=full",
        "event=dropped reason=unregistered",
    ] {
        assert!(
            s.log()
                .contains(&format!("notification {line} uaid={uaid} channel=")),
            "no {line} line"
        );
    }
}
