//! The memcached backend against real memcached processes: restarts, spreading, outages.

mod common;

use std::time::{Duration, Instant};

use common::{chid, have_memcached, memcached_section, put, request, Memcached, Server};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

fn node(mc: &[&Memcached]) -> Server {
    node_with(mc, "")
}

/// A node on these memcached servers, with more `[storage]` keys, once it has reached them (until
/// then a register answers 503, which a loaded machine showed).
fn node_with(mc: &[&Memcached], storage_keys: &str) -> Server {
    let s = start_node(mc, storage_keys);
    assert!(s.wait_log("memcached reachable"), "{}", s.log());
    s
}

/// A node on these memcached servers, not waiting for them.
fn start_node(mc: &[&Memcached], storage_keys: &str) -> Server {
    let addrs: Vec<_> = mc.iter().map(|m| m.addr).collect();
    Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}{storage_keys}\n",
            memcached_section(&addrs)
        ),
    )
}

#[test]
fn a_stored_version_survives_a_node_restart() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&[&mc]);
    assert!(s.wait_log("memcached reachable"));
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    assert_eq!(put(&ep, "version=41").status, 202);
    drop(s);
    let s = node(&[&mc]);
    let ep2 = format!("http://{}{}", s.addr, common::split_url(&ep).1);
    assert_eq!(
        put(&ep2, "version=42").status,
        202,
        "the endpoint still works"
    );
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 42);
    c.ack(&chid(1), 42);
    c.close();
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn keys_spread_over_two_servers() {
    if !have_memcached() {
        return;
    }
    let (a, b) = (Memcached::start(), Memcached::start());
    let s = node_with(&[&a, &b], "replicas = 1");
    for i in 0..20 {
        let mut c = s.client();
        c.hello_new();
        for j in 0..5 {
            c.register(&chid(i * 10 + j));
        }
    }
    let (na, nb) = (a.items(), b.items());
    // One record per UAID holds its five channels; each server also holds its data marker.
    assert_eq!(
        na + nb,
        20 + 2,
        "one record per UAID, one marker per server"
    );
    assert!(na >= 5 && nb >= 5, "both servers hold keys: {na} / {nb}");
}

#[test]
fn with_two_servers_every_record_is_on_both() {
    if !have_memcached() {
        return;
    }
    let (a, b) = (Memcached::start(), Memcached::start());
    let s = node(&[&a, &b]);
    for i in 0..20 {
        let mut c = s.client();
        c.hello_new();
        c.register(&chid(i));
    }
    assert_eq!((a.items(), b.items()), (21, 21), "replicas defaults to 2");
}

#[test]
fn memcached_outage_gives_503_and_recovers_without_restart() {
    if !have_memcached() {
        return;
    }
    let mut mc = Memcached::start();
    let port = mc.addr.port();
    let s = node(&[&mc]);
    assert!(s.wait_log("memcached reachable"));
    let mut live = s.client();
    live.hello_new();
    let ep = live.register(&chid(1));
    assert_eq!(put(&ep, "version=1").status, 200);
    live.recv();

    mc.kill();
    let r = put(&ep, "version=2");
    assert_eq!(r.status, 503);
    assert!(r.head.contains("Retry-After:"), "{}", r.head);
    assert_eq!(put(&ep, "version=3").status, 503);
    assert_eq!(request(s.addr, "GET", "/health", &[], "").status, 503);
    let mut c = s.client();
    c.send(r#"{"messageType":"hello","uaid":"9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e","channelIDs":[]}"#);
    let reply = c.recv();
    assert_eq!(reply["status"], 503);
    assert_eq!(reply["error"], "Service Unavailable");
    c.expect_close();
    // A client that needs no storage still gets served; the held socket is untouched. (It may
    // have been handed version 2 before the store failed it: a device is written to while the
    // store works, and the app server, told 503, sends it again.)
    live.send("{}");
    loop {
        let text = live.recv_text();
        if text == "{}" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            v["updates"][0]["version"], 2,
            "only the first refused PUT: {v}"
        );
    }

    let _mc = Memcached::start_on(port).expect("memcached back on its port");
    let end = Instant::now() + Duration::from_secs(10);
    while request(s.addr, "GET", "/health", &[], "").status != 200 {
        assert!(Instant::now() < end, "no recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The restarted memcached is empty, and the node noticed (its data marker is gone): the old
    // channel's genuine token still delivers to the connected device, never 410.
    assert_eq!(put(&ep, "version=4").status, 200);
    assert_eq!(live.recv()["updates"][0]["version"], 4);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(2));
    assert_eq!(put(&ep, "version=5").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 5);
    let log = s.log();
    assert_eq!(
        log.matches("memcached unavailable").count(),
        1,
        "logged once"
    );
    assert_eq!(
        log.matches("memcached reachable").count(),
        2,
        "up at start, up again"
    );
}

#[test]
fn a_node_starts_while_memcached_is_down_and_serves_once_it_is_up() {
    if !have_memcached() {
        return;
    }
    let mut mc = Memcached::start();
    let port = mc.addr.port();
    mc.kill();
    let s = start_node(&[&mc], "");
    assert!(s.wait_log("memcached not reachable yet"));
    assert_eq!(request(s.addr, "GET", "/health", &[], "").status, 503);
    let _mc = Memcached::start_on(port).expect("memcached up");
    assert!(s.wait_log("memcached reachable"));
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=9").status, 200);
}

#[test]
fn acks_racing_updates_never_drop_a_newer_version() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&[&mc]);
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    // The app server sends 300 versions as fast as it can while the device acks each one it sees.
    let sender = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            for v in 1..=300u64 {
                let st = put(&ep, &format!("version={v}")).status;
                assert!(st == 200 || st == 202, "{st}");
            }
        })
    };
    // Each ack is for the version before the one just received, so it reaches the store after a
    // newer version was stored: it must not clear that one.
    let mut last = 0;
    while last < 300 {
        let n = c.recv();
        let v = n["updates"][0]["version"].as_u64().unwrap();
        if last > 0 {
            c.ack(&chid(1), last);
        }
        last = v;
    }
    sender.join().unwrap();
    c.close();
    // 300 was never acked: the acks of older versions that landed after it was stored left it there.
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 300);
}

#[test]
fn a_slow_memcached_gives_503_within_the_timeout_and_recovers() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&[&mc]);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    mc.signal("STOP");
    let t = Instant::now();
    let r = put(&ep, "version=1");
    assert_eq!(r.status, 503);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    mc.signal("CONT");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let st = put(&ep, "version=2").status;
        if st == 200 {
            break;
        }
        assert!(Instant::now() < end, "no recovery, last status {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Version 1 may have reached the socket while the store was failing it (see above).
    let mut n = c.recv();
    if n["updates"][0]["version"] == 1 {
        n = c.recv();
    }
    assert_eq!(n["updates"][0]["version"], 2, "{n}");
}

#[test]
fn traffic_through_a_memcached_restart_gets_defined_answers() {
    if !have_memcached() {
        return;
    }
    let mut mc = Memcached::start();
    let port = mc.addr.port();
    let s = node(&[&mc]);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let ep2 = ep.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeMap::new();
        let mut v = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && v < 20_000 {
            v += 1;
            *seen
                .entry(put(&ep, &format!("version={v}")).status)
                .or_insert(0) += 1;
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    mc.kill();
    std::thread::sleep(Duration::from_millis(500));
    let _mc = Memcached::start_on(port).expect("memcached back");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = traffic.join().unwrap();
    // Before: 200. During: 503. After: the restarted memcached lost the channel, but the node
    // noticed the loss, so the connected device keeps receiving (200), never 410.
    assert!(seen.keys().all(|st| [200, 503].contains(st)), "{seen:?}");
    assert!(
        seen.contains_key(&200) && seen.contains_key(&503),
        "{seen:?}"
    );
    let after = put(&ep2, "version=999999");
    assert_eq!(after.status, 200, "{}", after.head);
    assert_eq!(request(s.addr, "GET", "/health", &[], "").status, 200);
    assert!(!s.log().contains("panicked"));
}

#[test]
fn unused_registrations_expire_and_use_refreshes_them() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // memcached's clock ticks once a second, so a 3 s lifetime ends 2 to 3 s after the last use:
    // hellos come every 0.8 s, and the unused device waits 4.8 s.
    let s = node_with(&[&mc], "registration_ttl_secs = 3");
    let mut c = s.client();
    let uaid = c.hello_new();
    let first = c.register(&chid(1));
    let second = c.register(&chid(2));
    c.close();
    // Another device registers and is never seen again.
    let mut d = s.client();
    d.hello_new();
    let unused = d.register(&chid(3));
    d.close();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(800));
        let mut c = s.client();
        c.hello(&uaid, &[&chid(1), &chid(2)]);
        c.close();
    }
    // Both channels of the device that keeps saying hello outlive the 3 s lifetime.
    assert_eq!(
        put(&first, "version=1").status,
        202,
        "refreshed by each hello"
    );
    assert_eq!(
        put(&second, "version=1").status,
        202,
        "refreshed by each hello"
    );
    assert_eq!(
        put(&unused, "version=1").status,
        410,
        "expired after 3 s unused"
    );
}

#[test]
fn a_device_that_stays_connected_keeps_its_registrations() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // Refreshed every ttl/3 = 1 s on the device's next message (Firefox's are pings; here acks of
    // nothing, which touch no registration themselves, and are not held to the ping interval).
    let s = node_with(&[&mc], "registration_ttl_secs = 3");
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let mut d = s.client();
    d.hello_new();
    let idle = d.register(&chid(2));
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(500));
        c.ack(&chid(9), 1);
    }
    // 6 s later: the pinging device's channel lives, the silent one's has expired.
    assert_eq!(put(&ep, "version=1").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 1);
    assert_eq!(put(&idle, "version=1").status, 410);
}

#[test]
fn a_pending_version_outlives_the_registration_lifetime() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node_with(&[&mc], "registration_ttl_secs = 2\npending_ttl_secs = 600");
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    for v in 1..=4 {
        assert_eq!(put(&ep, &format!("version={v}")).status, 202);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let mut c = s.client();
    assert_eq!(
        c.hello(&uaid, &[&chid(1)])["uaid"],
        uaid.as_str(),
        "still known"
    );
    assert_eq!(c.recv()["updates"][0]["version"], 4);
}

#[test]
fn a_register_after_an_update_does_not_shorten_the_pending_version() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node_with(&[&mc], "registration_ttl_secs = 2\npending_ttl_secs = 8");
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    assert_eq!(put(&ep, "version=42").status, 202);
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 42);
    c.register(&chid(2));
    c.close();
    std::thread::sleep(Duration::from_millis(3500));
    // Channel 2's registration has expired, but version 42 lives 8 s and keeps the UAID known.
    let mut c = s.client();
    assert_eq!(c.hello(&uaid, &[&chid(1), &chid(2)])["uaid"], uaid.as_str());
    assert_eq!(c.recv()["updates"][0]["version"], 42);
}

#[test]
fn registration_ttl_zero_means_nothing_expires() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node_with(&[&mc], "registration_ttl_secs = 0\npending_ttl_secs = 2");
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=5").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 5);
    c.ack(&chid(1), 5);
    c.close();
    std::thread::sleep(Duration::from_millis(3500));
    let mut c = s.client();
    assert_eq!(
        c.hello(&uaid, &[&chid(1)])["uaid"],
        uaid.as_str(),
        "still known"
    );
    assert_eq!(put(&ep, "version=6").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 6);
}

#[test]
fn a_device_whose_registrations_all_expired_starts_over() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node_with(&[&mc], "registration_ttl_secs = 1\npending_ttl_secs = 600");
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(put(&ep, "version=1").status, 410);
    let mut c = s.client();
    assert_ne!(
        c.hello(&uaid, &[&chid(1)])["uaid"],
        uaid.as_str(),
        "a new UAID, to re-register"
    );
}

#[test]
fn sigterm_answers_an_update_still_waiting_on_storage() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // A PUT against a stopped memcached takes a few storage timeouts: leave it time to finish.
    let mut s = Server::start_with(
        "drain_ms = 0\nshutdown_timeout_ms = 8000",
        &memcached_section(&[mc.addr]),
    );
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    // memcached stops answering: the update waits on a storage worker.
    mc.signal("STOP");
    let waiting = std::thread::spawn(move || common::try_put(&ep, "version=5"));
    std::thread::sleep(Duration::from_millis(150));
    let pid = s.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // The answer (503 after the storage timeout) still comes, not a closed connection.
    let answer = waiting.join().unwrap();
    mc.signal("CONT");
    let answer =
        answer.unwrap_or_else(|| panic!("an answer, not a dropped connection: {}", s.log()));
    assert!(matches!(answer.status, 202 | 503), "{}", answer.status);
    assert!(s.wait_exit(Duration::from_secs(5)).is_some());
}

#[test]
fn an_update_and_its_ack_cost_two_round_trips() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&[&mc]);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let calls = |s: &Server| s.metrics()["simplepush_memcached_syscalls_total"];
    let before = calls(&s);
    for v in 1..=20u64 {
        assert_eq!(put(&ep, &format!("version={v}")).status, 200);
        assert_eq!(c.recv()["updates"][0]["version"], v);
        c.ack(&chid(1), v);
    }
    // Let the last ack's write finish, then count: the record as last written is changed with its
    // CAS (no read first), and the update's node and wake reads share its round trip.
    std::thread::sleep(Duration::from_millis(200));
    let per_notification = (calls(&s) - before) / 20.0;
    assert!(
        per_notification <= 4.5,
        "{per_notification} system calls per update + ack (2 round trips = 4)"
    );
}
