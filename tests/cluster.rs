//! Several nodes sharing one memcached: routing between nodes, takeover, and a node that dies.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    chid, have_memcached, memcached_node, memcached_section, now_secs, put, raw_http, split_url,
    Got, Memcached, Server,
};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const SECRET: &str = "cluster-secret-0123456789";

/// A cluster node on `mc`, once it has reached it.
fn node(mc: &Memcached) -> Server {
    node_with_peers(mc, "")
}

fn router(s: &Server) -> SocketAddr {
    *s.addrs.last().unwrap()
}

/// The same endpoint, sent to another node.
fn via(s: &Server, endpoint: &str) -> String {
    format!("http://{}{}", s.addr, split_url(endpoint).1)
}

#[test]
fn updates_route_between_nodes_and_survive_a_dead_node() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2, n3) = (node(&mc), node(&mc), node(&mc));
    assert!(n1.wait_log("memcached reachable"));
    let mut c1 = n1.client();
    let uaid = c1.hello_new();
    let ep = c1.register(&chid(1));
    std::thread::sleep(Duration::from_millis(100));

    // Sent to node 2, delivered live by node 1.
    let r = put(&via(&n2, &ep), "version=10&data=routed");
    assert_eq!(r.status, 200, "{}", r.body);
    let n = c1.recv();
    assert_eq!(n["updates"][0]["version"], 10);
    assert_eq!(n["updates"][0]["data"], "routed");
    c1.ack(&chid(1), 10);

    // Node 1 dies: updates are stored, and answered within the router timeout.
    drop(c1);
    drop(n1);
    let t = Instant::now();
    assert_eq!(put(&via(&n2, &ep), "version=11").status, 202);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // The device reconnects to node 3 and gets what was stored.
    let mut c3 = n3.client();
    c3.hello(&uaid, &[&chid(1)]);
    assert_eq!(c3.recv()["updates"][0]["version"], 11);
    c3.ack(&chid(1), 11);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(put(&via(&n2, &ep), "version=12").status, 200);
    assert_eq!(c3.recv()["updates"][0]["version"], 12);
}

#[test]
fn a_hello_on_another_node_closes_the_old_socket() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2) = (node(&mc), node(&mc));
    let mut old = n1.client();
    let uaid = old.hello_new();
    let ep = old.register(&chid(1));
    std::thread::sleep(Duration::from_millis(100));
    let mut new = n2.client();
    new.hello(&uaid, &[&chid(1)]);
    assert!(
        matches!(old.next(Duration::from_secs(5)), Got::Close(_)),
        "the older socket is closed"
    );
    std::thread::sleep(Duration::from_millis(100));
    // Updates now reach the new socket, through whichever node they arrive at.
    assert_eq!(put(&via(&n1, &ep), "version=20").status, 200);
    assert_eq!(new.recv()["updates"][0]["version"], 20);
    assert_eq!(put(&via(&n2, &ep), "version=21").status, 200);
    assert_eq!(new.recv()["updates"][0]["version"], 21);
}

#[test]
fn the_router_listener_needs_the_shared_secret() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let n1 = node(&mc);
    let mut c = n1.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    // Version 66 is stored (and delivered once), not acked: a forward of it is genuine.
    assert_eq!(put(&ep, "version=66").status, 200);
    c.recv();
    let route = |auth: &str, version: u64| {
        let body = format!(r#"{{"channelID":"{}","version":{version}}}"#, chid(1));
        let req = format!(
            "PUT /route/{uaid} HTTP/1.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        raw_http(router(&n1), req.as_bytes()).status
    };
    assert_eq!(route("", 66), 401);
    assert_eq!(
        route("Authorization: Bearer wrong-secret-wrong-secret\r\n", 66),
        401
    );
    // The secret itself, as a bearer token (the old scheme), is no proof any more.
    assert_eq!(
        route(&format!("Authorization: Bearer {SECRET}\r\n"), 66),
        401
    );
    c.expect_silence(Duration::from_millis(300));
    let path = format!("/route/{uaid}");
    let signed = |version: u64, at: u64, path: &str| {
        let body = format!(r#"{{"channelID":"{}","version":{version}}}"#, chid(1));
        let auth = simplepush::router::authorization(SECRET, "PUT", path, body.as_bytes(), at);
        format!("Authorization: {auth}\r\n")
    };
    let now = now_secs();
    assert_eq!(route(&signed(66, now, &path), 66), 200);
    assert_eq!(c.recv()["updates"][0]["version"], 66);
    // Signed for another body, another path, or too long ago or ahead: refused.
    assert_eq!(route(&signed(65, now, &path), 66), 401);
    assert_eq!(route(&signed(66, now, "/route/elsewhere"), 66), 401);
    assert_eq!(route(&signed(66, now - 120, &path), 66), 401);
    assert_eq!(route(&signed(66, now + 120, &path), 66), 401);
    c.expect_silence(Duration::from_millis(300));
    // A version that is not the stored one (acked, replaced or unregistered meanwhile) is not written.
    assert_eq!(route(&signed(67, now, &path), 67), 404);
    c.expect_silence(Duration::from_millis(300));
    // The router is not an endpoint or WebSocket listener.
    let r = common::request(router(&n1), "GET", "/status", &[], "");
    assert_eq!(r.status, 401);
}

/// Writes one key straight into memcached.
fn mc_set(mc: &Memcached, key: &str, value: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(mc.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(s, "set {key} 0 0 {}\r\n{value}\r\n", value.len()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STORED\r\n");
}

#[test]
fn a_hung_node_does_not_hold_up_storage() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let n1 = Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}pool_size = 1\n[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntimeout_ms = 1500\n",
            memcached_section(&[mc.addr])
        ),
    );
    // A "node" that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = n1.client();
    let ua = a.hello_new();
    let ea = a.register(&chid(1));
    let mut b = n1.client();
    b.hello_new();
    let eb = b.register(&chid(2));
    a.close();
    b.close();
    std::thread::sleep(Duration::from_millis(200));
    mc_set(
        &mc,
        &format!("n/{ua}"),
        // Values carry a write stamp before a space (store/memcached/replicas.rs).
        &format!("1000 http://{} 1.1", hung.local_addr().unwrap()),
    );
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        (put(&ea, "version=1").status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(put(&eb, "version=1").status, 202);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "blocked {:?}",
        t.elapsed()
    );
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 202, "stored, the hung node timed out");
    assert!(
        took < Duration::from_millis(2500),
        "the whole forward is bounded: {took:?}"
    );
}

#[test]
fn a_kick_for_another_socket_leaves_the_current_one_alone() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let n1 = node(&mc);
    let mut c = n1.client();
    let uaid = c.hello_new();
    c.register(&chid(1));
    let target = format!("/route/{uaid}?conn=999.999");
    let auth = simplepush::router::authorization(SECRET, "DELETE", &target, b"", now_secs());
    let req =
        format!("DELETE {target} HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_http(router(&n1), req.as_bytes()).status, 200);
    c.expect_silence(Duration::from_millis(300));
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
}

/// A raw `POST` of a WebPush message; returns the status.
fn push_via(s: &Server, endpoint: &str, body: &str) -> u16 {
    let path = split_url(endpoint).1;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    );
    raw_http(s.addr, req.as_bytes()).status
}

#[test]
fn webpush_messages_route_between_nodes_and_wait_for_the_device() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2) = (node(&mc), node(&mc));
    assert!(n1.wait_log("memcached reachable"));
    let mut c1 = n1.client();
    let uaid = c1.webpush_hello("")["uaid"].as_str().unwrap().to_string();
    c1.send_json(serde_json::json!({"messageType":"register","channelID":chid(1)}));
    let ep = c1.recv()["pushEndpoint"].as_str().unwrap().to_string();
    assert!(ep.contains("/wpush/v1/"), "{ep}");
    std::thread::sleep(Duration::from_millis(100));

    // Sent to node 2, delivered live by node 1, with its payload.
    assert_eq!(push_via(&n2, &ep, "routed"), 201);
    let metrics = n2.metrics();
    let routed = metrics.get("simplepush_notifications_total{event=\"routed\"}");
    assert_eq!(routed, Some(&1.0), "{metrics:?}");
    let n = c1.recv();
    assert_eq!(n["channelID"], chid(1));
    assert_eq!(n["data"], "cm91dGVk");
    let id = n["version"].as_str().unwrap().to_string();
    c1.ack_message(&chid(1), &id);
    std::thread::sleep(Duration::from_millis(100));

    // Away: node 2 stores it; the device comes back on node 2 and gets only the unacked one.
    drop(c1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(push_via(&n1, &ep, "later"), 201);
    let mut c2 = n2.client();
    assert_eq!(c2.webpush_hello(&uaid)["uaid"], uaid);
    assert_eq!(c2.recv()["data"], "bGF0ZXI");
    assert_eq!(c2.next(Duration::from_millis(300)), Got::Nothing);
}

/// One device of the rolling-restart test: its ids, and the highest version it has seen.
struct Device {
    uaid: String,
    chid: String,
    path: String,
    seen: std::sync::atomic::AtomicU64,
    acked_by_server: std::sync::atomic::AtomicU64,
    connects: std::sync::atomic::AtomicU64,
}

/// Keeps a device connected to some live node, reconnecting whenever its socket ends.
fn run_device(
    d: std::sync::Arc<Device>,
    alive: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut attempt = 0usize;
    while !stop.load(Relaxed) {
        attempt += 1;
        let addr = {
            let a = alive.lock().unwrap();
            if a.is_empty() {
                continue;
            }
            a[attempt % a.len()]
        };
        let Ok(stream) = std::net::TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let Ok((mut ws, _)) = tungstenite::client(format!("ws://{addr}/"), stream) else {
            continue;
        };
        let hello = serde_json::json!({"messageType":"hello","uaid":d.uaid,"channelIDs":[d.chid]});
        if ws
            .send(tungstenite::Message::text(hello.to_string()))
            .is_err()
        {
            continue;
        }
        d.connects.fetch_add(1, Relaxed);
        while !stop.load(Relaxed) {
            let msg = match ws.read() {
                Ok(tungstenite::Message::Text(t)) => t,
                Ok(tungstenite::Message::Close(_)) => break,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            if v["messageType"] != "notification" {
                continue;
            }
            for u in v["updates"].as_array().unwrap() {
                let version = u["version"].as_u64().unwrap();
                d.seen.fetch_max(version, Relaxed);
                let ack = serde_json::json!({"messageType":"ack","updates":[{"channelID":d.chid,"version":version}]});
                let _ = ws.send(tungstenite::Message::text(ack.to_string()));
            }
        }
    }
}

#[test]
fn a_rolling_restart_under_load_loses_no_stored_version() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let start = |mc: &Memcached| {
        Server::start_with(
            "drain_ms = 400",
            &format!(
                "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}\n[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntimeout_ms = 500\n",
                memcached_section(&[mc.addr])
            ),
        )
    };
    let mut nodes: Vec<Server> = (0..3).map(|_| start(&mc)).collect();
    assert!(nodes[0].wait_log("memcached reachable"));
    let alive = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect::<Vec<_>>()));
    // Devices, registered once.
    let devices: Vec<Arc<Device>> = (0..12)
        .map(|i| {
            let mut c = nodes[i % 3].client();
            let uaid = c.hello_new();
            let ep = c.register(&chid(i as u32));
            c.close();
            Arc::new(Device {
                uaid,
                chid: chid(i as u32),
                path: split_url(&ep).1,
                seen: AtomicU64::new(0),
                acked_by_server: AtomicU64::new(0),
                connects: AtomicU64::new(0),
            })
        })
        .collect();
    let stop_devices = Arc::new(AtomicBool::new(false));
    let device_threads: Vec<_> = devices
        .iter()
        .map(|d| {
            let (d, alive, stop) = (d.clone(), alive.clone(), stop_devices.clone());
            std::thread::spawn(move || run_device(d, alive, stop))
        })
        .collect();
    // The app server: a new version for every device every round, through whichever node is up.
    let stop_pushing = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (devices, alive, stop) = (devices.clone(), alive.clone(), stop_pushing.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            for version in 1u64.. {
                if stop.load(Relaxed) {
                    return sent;
                }
                for (i, d) in devices.iter().enumerate() {
                    let addr = {
                        let a = alive.lock().unwrap();
                        a[(i + version as usize) % a.len()]
                    };
                    let url = format!("http://{addr}{}", d.path);
                    if let Some(r) = common::try_put(&url, &format!("version={version}")) {
                        sent += 1;
                        if r.status == 200 || r.status == 202 {
                            d.acked_by_server.fetch_max(version, Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            sent
        })
    };
    // Restart every node in turn, under that load.
    std::thread::sleep(Duration::from_millis(500));
    for node in nodes.iter_mut() {
        let old = node.addr;
        alive.lock().unwrap().retain(|a| *a != old);
        let status = node
            .terminate(Duration::from_secs(10))
            .expect("node exited");
        assert_eq!(status.code(), Some(0));
        assert!(node.log().contains("draining"));
        *node = start(&mc);
        alive.lock().unwrap().push(node.addr);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_pushing.store(true, Relaxed);
    let sent = pusher.join().unwrap();
    assert!(sent > 200, "only {sent} updates sent");
    // Every version a node answered 200 or 202 for reaches its device (a newer one counts: versions
    // replace each other).
    let end = Instant::now() + Duration::from_secs(15);
    let behind = || {
        devices
            .iter()
            .filter(|d| d.seen.load(Relaxed) < d.acked_by_server.load(Relaxed))
            .map(|d| {
                (
                    d.chid.clone(),
                    d.seen.load(Relaxed),
                    d.acked_by_server.load(Relaxed),
                )
            })
            .collect::<Vec<_>>()
    };
    while !behind().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_devices.store(true, Relaxed);
    for t in device_threads {
        t.join().unwrap();
    }
    assert!(
        behind().is_empty(),
        "lost: {:?} (channel, seen, answered)",
        behind()
    );
    // The devices did move: every node they were on went away at least once.
    let connects: u64 = devices.iter().map(|d| d.connects.load(Relaxed)).sum();
    assert!(connects >= 2 * devices.len() as u64, "{connects} connects");
}

/// A node whose router requests may go only to `peers` (more `[cluster]` keys), once it has
/// reached memcached.
fn node_with_peers(mc: &Memcached, peers: &str) -> Server {
    memcached_node(
        mc,
        KEY,
        &format!("[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntimeout_ms = 500\n{peers}"),
    )
}

/// A registered device gone offline whose node record names `listener` (as a forged
/// `n/<uaid>` in memcached would); returns its endpoint.
fn forged_device(s: &Server, mc: &Memcached, listener: &std::net::TcpListener) -> String {
    let at = listener.local_addr().unwrap();
    forged_device_at(s, mc, &format!("http://{at}"))
}

/// A registered device gone offline whose node record names the router URL `url`.
fn forged_device_at(s: &Server, mc: &Memcached, url: &str) -> String {
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    std::thread::sleep(Duration::from_millis(200));
    // Values carry a write stamp before a space (store/memcached/replicas.rs).
    mc_set(mc, &format!("n/{uaid}"), &format!("1000 {url} 1.1"));
    ep
}

#[test]
fn a_forged_node_record_gets_neither_a_request_outside_the_peers_nor_the_secret() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // An attacker's listener, on an address the node's peers do not include.
    let attacker = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    let s = node_with_peers(&mc, "peers = [\"127.0.0.3/32\"]");
    let ep = forged_device(&s, &mc, &attacker);
    assert_eq!(put(&ep, "version=5").status, 202, "stored, not forwarded");
    assert!(attacker.accept().is_err(), "the attacker was contacted");
    assert_eq!(s.metrics()["simplepush_router_refused_total"], 1.0);
    assert!(s.wait_log("not in cluster.peers"), "{}", s.log());
    // A record naming a host: judged by the address the name resolves to (localhost, 127.0.0.1).
    let named = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    named.set_nonblocking(true).unwrap();
    let port = named.local_addr().unwrap().port();
    let ep = forged_device_at(&s, &mc, &format!("http://localhost:{port}"));
    assert_eq!(put(&ep, "version=5").status, 202, "stored, not forwarded");
    assert!(named.accept().is_err(), "localhost was contacted");
    assert_eq!(s.metrics()["simplepush_router_refused_total"], 2.0);
    drop(s);

    // With the default peers (private networks and loopback) it is contacted, and what it gets
    // is a signature, never the secret.
    attacker.set_nonblocking(false).unwrap();
    let s = node_with_peers(&mc, "");
    let ep = forged_device(&s, &mc, &attacker);
    let taken = std::thread::spawn(move || {
        let (mut conn, _) = attacker.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    assert_eq!(put(&ep, "version=6").status, 202);
    let request = taken.join().unwrap();
    assert!(request.contains("SimplePush-HMAC t="), "{request}");
    assert!(!request.contains(SECRET), "{request}");
}

/// A TCP relay to `to` that counts the connections it accepts; it stops after `for_how_long`.
fn counting_relay(
    listener: std::net::TcpListener,
    to: SocketAddr,
    for_how_long: Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + for_how_long;
        while Instant::now() < end {
            let Ok((inbound, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            inbound.set_nonblocking(false).unwrap();
            let Ok(outbound) = std::net::TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                (outbound, inbound),
            ] {
                // Each direction ends when its side closes (the servers are killed at the end).
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    count
}

#[test]
fn forwards_between_two_nodes_share_one_kept_alive_connection() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // Node 1 is reached through a relay that counts connections: its router_url names the relay.
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let n1 = Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}\n[cluster]\nrouter_listen = \"127.0.0.1:0\"\nrouter_url = \"http://{relay_addr}\"\nsecret = \"{SECRET}\"\ntimeout_ms = 1000\n",
            memcached_section(&[mc.addr])
        ),
    );
    let connections = counting_relay(relay, router(&n1), Duration::from_secs(20));
    let n2 = node(&mc);
    let mut c1 = n1.client();
    c1.hello_new();
    let ep = c1.register(&chid(1));
    std::thread::sleep(Duration::from_millis(100));
    const FORWARDS: u64 = 10;
    for version in 1..=FORWARDS {
        let r = put(&via(&n2, &ep), &format!("version={version}"));
        assert_eq!(r.status, 200, "forwarded and delivered: {}", r.body);
        assert_eq!(c1.recv()["updates"][0]["version"], version);
        c1.ack(&chid(1), version);
    }
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(opened, 1, "{FORWARDS} forwards opened {opened} connections");
}
