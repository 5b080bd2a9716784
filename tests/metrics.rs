//! `GET /metrics` on the admin listener: Prometheus text that follows what the server did.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// The admin listener's `/metrics` answer, and its samples.
fn scrape(s: &Server) -> (HttpReply, HashMap<String, f64>) {
    let r = request(
        s.admin_addr.expect("admin listener"),
        "GET",
        "/metrics",
        &[],
        "",
    );
    (r, s.metrics())
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
}

#[test]
fn counters_follow_connections_commands_and_notifications() {
    let s = Server::start_with("workers = 1", "");
    let (r, m0) = scrape(&s);
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    assert_eq!(get(&m0, "simplepush_connections{state=\"ready\"}"), 0.0);

    let mut c = s.client();
    let mut waiting = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=5").status, 200);
    c.recv();
    c.ack(&chid(1), 5);
    std::thread::sleep(Duration::from_millis(200));
    let (_, m) = scrape(&s);
    assert_eq!(get(&m, "simplepush_connections{state=\"ready\"}"), 1.0);
    assert_eq!(
        get(&m, "simplepush_connections{state=\"awaiting_hello\"}"),
        1.0
    );
    // The scrape's own connection.
    assert!(get(&m, "simplepush_connections{state=\"http\"}") >= 1.0);
    assert_eq!(get(&m, "simplepush_commands_total{command=\"hello\"}"), 1.0);
    assert_eq!(
        get(&m, "simplepush_commands_total{command=\"register\"}"),
        1.0
    );
    assert_eq!(get(&m, "simplepush_commands_total{command=\"ack\"}"), 1.0);
    for event in ["received", "stored", "delivered_live", "acked"] {
        let name = format!("simplepush_notifications_total{{event=\"{event}\"}}");
        assert_eq!(get(&m, &name), 1.0, "{event}");
    }
    assert_eq!(get(&m, "simplepush_delivery_seconds_count"), 1.0);
    assert!(get(&m, "simplepush_store_seconds_count") >= 3.0);
    assert!(get(&m, "process_resident_memory_bytes") > 1e6);
    assert!(get(&m, "process_open_fds") >= 4.0);

    // Offline: stored, then delivered from storage after the next hello; a gone channel is a drop.
    c.close();
    drop(c);
    waiting.close();
    drop(waiting);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(put(&ep, "version=6").status, 202);
    let mut c = s.client();
    c.hello(&uaid, &[]);
    c.recv();
    c.send(&format!(
        r#"{{"messageType":"unregister","channelID":"{}"}}"#,
        chid(1)
    ));
    c.recv();
    assert_eq!(put(&ep, "version=7").status, 410);
    let (_, m) = scrape(&s);
    let n = |e: &str| {
        get(
            &m,
            &format!("simplepush_notifications_total{{event=\"{e}\"}}"),
        )
    };
    assert_eq!(n("received"), 3.0);
    assert_eq!(n("stored"), 2.0);
    assert_eq!(n("delivered_stored"), 1.0);
    assert_eq!(
        get(
            &m,
            "simplepush_notifications_dropped_total{reason=\"unregistered\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&m, "simplepush_connections{state=\"awaiting_hello\"}"),
        0.0
    );
}

#[test]
fn metrics_live_only_on_the_admin_listener() {
    let s = Server::start();
    assert_eq!(request(s.addr, "GET", "/metrics", &[], "").status, 404);
    let admin = s.admin_addr.unwrap();
    assert_eq!(request(admin, "GET", "/health", &[], "").status, 200);
    assert_eq!(
        request(admin, "PUT", "/update/abc", &[], "version=1").status,
        405
    );
    assert_eq!(request(admin, "GET", "/update/abc", &[], "").status, 404);
    assert!(s.log().contains("admin listener on 127.0.0.1:"));
}
