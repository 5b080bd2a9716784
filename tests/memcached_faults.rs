//! The promises of a 2xx against real memcached faults: one of three servers killed and started
//! again empty, the only server restarted empty, a full memcached, one that evicts; and the races
//! of two nodes claiming one UAID.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{
    chid, have_memcached, memcached_section, put, request, split_url, Client, Got, Memcached,
    Server,
};
use serde_json::{json, Value};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const SECRET: &str = "cluster-secret-0123456789";

/// A node on these memcached servers, with more `[storage]` keys and more sections.
fn node(mc: &[&Memcached], storage_keys: &str, sections: &str) -> Server {
    let addrs: Vec<_> = mc.iter().map(|m| m.addr).collect();
    let s = Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}{storage_keys}\n{sections}\n",
            memcached_section(&addrs)
        ),
    );
    assert!(s.wait_log("memcached reachable"), "{}", s.log());
    s
}

fn cluster_node(mc: &Memcached) -> Server {
    node(
        &[mc],
        "",
        &format!(
            "[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntimeout_ms = 500"
        ),
    )
}

/// One device: SimplePush (one channel) or WebPush (one channel, messages by id).
struct Device {
    uaid: String,
    ch: String,
    ep: String,
    webpush: bool,
    /// Held open during the load; `None` for devices that wait offline.
    socket: Option<Client>,
}

fn webpush_register(c: &mut Client, ch: &str) -> String {
    c.send_json(json!({"messageType":"register","channelID":ch}));
    let reply = c.recv();
    assert_eq!(reply["status"], 200, "{reply}");
    reply["pushEndpoint"].as_str().unwrap().to_string()
}

/// `n` devices of each kind, half of them left offline.
fn devices(s: &Server, n: u32) -> Vec<Device> {
    let mut out = Vec::new();
    for i in 0..2 * n {
        let webpush = i % 2 == 1;
        let mut c = s.client();
        let ch = chid(1000 + i);
        let (uaid, ep) = if webpush {
            let uaid = c.webpush_hello("")["uaid"].as_str().unwrap().to_string();
            (uaid, webpush_register(&mut c, &ch))
        } else {
            let uaid = c.hello_new();
            (uaid, c.register(&ch))
        };
        let socket = if (i / 2) % 2 == 0 {
            Some(c)
        } else {
            c.close();
            None
        };
        out.push(Device {
            uaid,
            ch,
            ep,
            webpush,
            socket,
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    out
}

/// What the app servers were promised: per device, the SimplePush versions and WebPush message
/// bodies answered 2xx, and every status seen.
#[derive(Default)]
struct Promised {
    versions: BTreeMap<usize, u64>,
    bodies: BTreeMap<usize, BTreeSet<String>>,
    statuses: BTreeMap<u16, u64>,
}

/// Pushes to every device in turn until `stop`, at most `limit` requests. Only answers to requests
/// sent while `counting` is set are recorded as promises.
fn load(
    targets: Vec<(String, bool)>,
    stop: Arc<AtomicBool>,
    counting: Arc<AtomicBool>,
    limit: u64,
) -> std::thread::JoinHandle<Promised> {
    std::thread::spawn(move || {
        let mut p = Promised::default();
        for n in 0..limit {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let i = (n as usize) % targets.len();
            let (ep, webpush) = &targets[i];
            let counted = counting.load(Ordering::Relaxed);
            let version = n + 1;
            let status = if *webpush {
                let body = format!("m{version}");
                let (addr, path) = split_url(ep);
                let headers = ["TTL: 600", "Content-Encoding: aes128gcm"];
                let st = request(addr, "POST", &path, &headers, &body).status;
                if st == 201 && counted {
                    p.bodies.entry(i).or_default().insert(body);
                }
                st
            } else {
                let st = put(ep, &format!("version={version}")).status;
                if (st == 200 || st == 202) && counted {
                    p.versions.insert(i, version);
                }
                st
            };
            *p.statuses.entry(status).or_insert(0) += 1;
        }
        p
    })
}

/// Everything a socket receives until it is quiet: SimplePush versions and WebPush bodies.
fn drain(c: &mut Client, versions: &mut BTreeSet<u64>, bodies: &mut BTreeSet<String>) {
    while let Got::Text(t) = c.next(Duration::from_millis(400)) {
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        if let Some(updates) = v["updates"].as_array() {
            versions.extend(updates.iter().filter_map(|u| u["version"].as_u64()));
        }
        if v["messageType"] == "notification" {
            let data = v["data"].as_str().unwrap_or_default();
            let body = URL_SAFE_NO_PAD.decode(data).unwrap_or_default();
            bodies.insert(String::from_utf8_lossy(&body).into_owned());
            let id = v["version"].as_str().unwrap_or_default();
            c.ack_message(v["channelID"].as_str().unwrap_or_default(), id);
        }
    }
}

/// Checks every promise against what each device receives, held sockets first, then offline
/// devices reconnecting with their UAID.
fn check_delivered(s: &Server, devices: &mut [Device], p: &Promised) {
    for (i, d) in devices.iter_mut().enumerate() {
        let (mut versions, mut bodies) = (BTreeSet::new(), BTreeSet::new());
        if let Some(c) = d.socket.as_mut() {
            drain(c, &mut versions, &mut bodies);
        }
        let mut c = s.client();
        let reply = if d.webpush {
            c.webpush_hello(&d.uaid)
        } else {
            c.hello(&d.uaid, &[&d.ch])
        };
        assert_eq!(reply["uaid"], d.uaid.as_str(), "device {i} kept its UAID");
        drain(&mut c, &mut versions, &mut bodies);
        if let Some(&v) = p.versions.get(&i) {
            let newest = versions.iter().max().copied().unwrap_or(0);
            assert!(
                newest >= v,
                "device {i}: version {v} answered 2xx, got {versions:?}"
            );
        }
        if let Some(want) = p.bodies.get(&i) {
            // Bodies may be long: name them by their first characters.
            let lost: Vec<_> = want
                .difference(&bodies)
                .map(|b| &b[..b.len().min(8)])
                .collect();
            assert!(
                lost.is_empty(),
                "device {i}: {} of {} answered 201, never delivered: {lost:?} ({} delivered)",
                lost.len(),
                want.len(),
                bodies.len()
            );
        }
    }
}

fn targets(devices: &[Device]) -> Vec<(String, bool)> {
    devices.iter().map(|d| (d.ep.clone(), d.webpush)).collect()
}

#[test]
fn one_of_three_memcached_killed_and_restarted_empty_loses_nothing_answered() {
    if !have_memcached() {
        return;
    }
    let mut mcs = [Memcached::start(), Memcached::start(), Memcached::start()];
    let s = node(&mcs.iter().collect::<Vec<_>>(), "", "");
    let mut devs = devices(&s, 12);
    let (stop, counting) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let traffic = load(targets(&devs), stop.clone(), counting, 200_000);
    std::thread::sleep(Duration::from_millis(500));
    let port = mcs[1].addr.port();
    mcs[1].kill();
    std::thread::sleep(Duration::from_millis(500));
    mcs[1] = Memcached::start_on(port).expect("memcached back, empty");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let p = traffic.join().unwrap();
    let answered: u64 = p.statuses.values().sum();
    assert!(
        answered > 300,
        "too little load to mean anything: {:?}",
        p.statuses
    );
    for st in p.statuses.keys() {
        // 429: a WebPush subscription holds webpush.max_messages unacked (no promise made).
        assert!([200, 201, 202, 429, 503].contains(st), "{:?}", p.statuses);
    }
    check_delivered(&s, &mut devs, &p);
    // The restarted server got its copies back from the surviving replicas.
    assert!(s.metrics()["simplepush_memcached_repairs_total"] > 0.0);
    assert!(!s.log().contains("panicked"));
}

#[test]
fn the_only_memcached_restarted_empty_under_load_answers_no_410() {
    if !have_memcached() {
        return;
    }
    let mut mc = Memcached::start();
    let s = node(&[&mc], "", "");
    let mut devs = devices(&s, 10);
    let (stop, counting) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let traffic = load(targets(&devs), stop.clone(), counting.clone(), 200_000);
    std::thread::sleep(Duration::from_millis(400));
    let port = mc.addr.port();
    mc.kill();
    std::thread::sleep(Duration::from_millis(400));
    let _mc = Memcached::start_on(port).expect("memcached back, empty");
    // What was stored before is gone with the only copy (the README says so); what is answered
    // after the restart must arrive.
    counting.store(true, Ordering::Relaxed);
    assert!(s.wait_log("lost its data"));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let p = traffic.join().unwrap();
    for st in p.statuses.keys() {
        // 429: a WebPush subscription holds webpush.max_messages unacked (no promise made).
        assert!([200, 201, 202, 429, 503].contains(st), "{:?}", p.statuses);
    }
    assert!(
        p.versions.len() + p.bodies.len() >= devs.len() / 2,
        "{:?}",
        p.statuses
    );
    check_delivered(&s, &mut devs, &p);
}

#[test]
fn a_full_memcached_refuses_pushes_and_keeps_every_201() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start_with(&["-m", "16"]);
    let s = node(&[&mc], "", "");
    let mut devs: Vec<Device> = (0..60)
        .map(|i| {
            let mut c = s.client();
            let uaid = c.webpush_hello("")["uaid"].as_str().unwrap().to_string();
            let ch = chid(i);
            let ep = webpush_register(&mut c, &ch);
            c.close();
            Device {
                uaid,
                ch,
                ep,
                webpush: true,
                socket: None,
            }
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut p = Promised::default();
    let filler = "x".repeat(3900);
    let mut retry_after = false;
    for n in 0..12_000usize {
        let i = n % devs.len();
        let body = format!("{n:06}{filler}");
        let (addr, path) = split_url(&devs[i].ep);
        let headers = ["TTL: 600", "Content-Encoding: aes128gcm"];
        let r = request(addr, "POST", &path, &headers, &body);
        let st = r.status;
        retry_after |= st == 429 && r.header("Retry-After").is_some();
        *p.statuses.entry(st).or_insert(0) += 1;
        if st == 201 {
            p.bodies.entry(i).or_default().insert(body);
        }
        if p.statuses.get(&503).copied().unwrap_or(0) + p.statuses.get(&429).copied().unwrap_or(0)
            >= 200
        {
            break;
        }
    }
    // 429 (a WebPush app server backs off and retries), never 201 for what could not be stored.
    let refused = p.statuses.get(&429).copied().unwrap_or(0);
    assert!(refused >= 100, "memcached never filled: {:?}", p.statuses);
    for st in p.statuses.keys() {
        assert!([201, 429].contains(st), "{:?}", p.statuses);
    }
    assert!(retry_after, "a 429 says when to retry");
    check_delivered(&s, &mut devs, &p);
}

/// Runs the server with this config to its exit; (exit code, stderr).
fn run_to_exit(config: &str) -> (Option<i32>, String) {
    let dir =
        std::env::temp_dir().join(format!("sp-evict-{}-{}", std::process::id(), config.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .args(["--config", file.to_str().unwrap()])
        .env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_memcached_that_evicts_is_refused_unless_allowed() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start_evicting();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        memcached_section(&[mc.addr])
    );
    let (code, err) = run_to_exit(&base);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("-M") && err.contains("allow_eviction"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let s = node(&[&mc], "allow_eviction = true", "");
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=1").status, 200);
}

/// Whether a socket is still served: a ping gets its answer.
fn alive(c: &mut Client) -> bool {
    c.send("{}");
    matches!(c.next(Duration::from_secs(2)), Got::Text(t) if t == "{}")
}

#[test]
fn two_nodes_claiming_one_uaid_at_once_leave_one_socket() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2) = (cluster_node(&mc), cluster_node(&mc));
    let mut first = n1.client();
    let uaid = first.hello_new();
    first.register(&chid(1));
    first.close();
    for round in 0..25 {
        let barrier = Arc::new(Barrier::new(2));
        let sockets: Vec<_> = [&n1, &n2]
            .iter()
            .map(|n| {
                let (addr, uaid, b) = (n.addr, uaid.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    b.wait();
                    c.hello(&uaid, &[&chid(1)]);
                    c
                })
            })
            .collect();
        let mut sockets: Vec<Client> = sockets.into_iter().map(|t| t.join().unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let open = sockets.iter_mut().map(alive).filter(|a| *a).count();
        assert_eq!(open, 1, "round {round}: one UAID, {open} sockets served");
        for c in &mut sockets {
            c.close();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn racing_registers_of_one_uaid_on_two_nodes_keep_every_channel_answered() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let nodes = [node(&[&mc], "", ""), node(&[&mc], "", "")];
    let lost = Arc::new(Mutex::new(Vec::new()));
    for round in 0..25u32 {
        // A UAID the store has never seen (a SimplePush hello may bring its own), with one socket
        // per node (no [cluster]: both stay open): both registers create its record at once.
        let uaid = format!("9f3c0b6e5d2a4c8e9b7a6d5c4b3a{round:04x}");
        let barrier = Arc::new(Barrier::new(2));
        let workers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let (addr, uaid, b) = (n.addr, uaid.clone(), barrier.clone());
                let ch = chid(round * 10 + k as u32);
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    c.hello(&uaid, &[]);
                    b.wait();
                    let ep = c.register(&ch);
                    c.close();
                    ep
                })
            })
            .collect();
        let eps: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        for ep in eps {
            let st = put(&ep, "version=7").status;
            if st != 202 {
                lost.lock().unwrap().push((round, st));
            }
        }
    }
    assert!(
        lost.lock().unwrap().is_empty(),
        "{:?}",
        lost.lock().unwrap()
    );
}

/// Stores a raw value in memcached, under our server's feet.
fn mc_set(mc: &Memcached, key: &str, value: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(mc.addr).unwrap();
    write!(s, "set {key} 0 0 {}\r\n{value}\r\n", value.len()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STORED\r\n");
}

#[test]
fn a_value_that_does_not_decode_is_absent_and_logged_once() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = node(&[&mc], "", "");
    let uaid = "9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e";
    let mut c = s.client();
    c.hello(uaid, &[]);
    let ep = c.register(&chid(1));
    c.close();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(put(&ep, "version=1").status, 202);
    mc_set(&mc, &format!("u/{uaid}"), "7 this is not a channel record");
    // Never delivered as garbage: the channel is unknown now.
    assert_eq!(put(&ep, "version=2").status, 410);
    assert_eq!(put(&ep, "version=3").status, 410);
    let mut c = s.client();
    let reply = c.hello(uaid, &[&chid(1)]);
    assert_ne!(
        reply["uaid"], uaid,
        "an unreadable record is an unknown UAID"
    );
    let log = s.log();
    assert_eq!(log.matches("does not decode").count(), 1, "{log}");
    assert!(!log.contains("panicked"));
}

/// Hello + register cycles and PUTs to a held device until `stop`; every status or error seen.
fn hello_load(s: &Server, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<String, u64>> {
    let addr = s.addr;
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        let mut held = Client::connect(addr);
        held.hello_new();
        let ep = held.register(&chid(1));
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) && n < 5_000 {
            n += 1;
            let mut c = Client::connect(addr);
            c.send(r#"{"messageType":"hello","uaid":"","channelIDs":[]}"#);
            let hello = c.recv();
            c.send_json(json!({"messageType":"register","channelID":chid(n)}));
            let reg = match hello["status"].as_u64() {
                Some(200) => c.recv()["status"].as_u64().unwrap_or(0),
                _ => 0,
            };
            *seen
                .entry(format!("hello {} register {reg}", hello["status"]))
                .or_insert(0) += 1;
            c.close();
            let st = put(&ep, &format!("version={n}")).status;
            *seen.entry(format!("put {st}")).or_insert(0) += 1;
            if st == 200 {
                held.recv();
            }
        }
        seen
    })
}

#[test]
fn short_memcached_stalls_are_waited_for_and_an_outage_still_gives_503() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    // timeout_ms = 300 (memcached_section): each stall outlasts it, but not its retry.
    let s = node(&[&mc], "", "");
    let stop = Arc::new(AtomicBool::new(false));
    let load = hello_load(&s, stop.clone());
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        mc.signal("STOP");
        std::thread::sleep(Duration::from_millis(450));
        mc.signal("CONT");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    let bad: Vec<_> = seen
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "hello 200 register 200" | "put 200"))
        .collect();
    assert!(bad.is_empty(), "slow is not down: {seen:?}");
    assert!(seen.get("put 200").copied().unwrap_or(0) >= 20, "{seen:?}");
    assert!(s.metrics()["simplepush_memcached_retries_total"] > 0.0);
    // A real outage: 503 with Retry-After within about two timeouts, and back by itself.
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(9));
    mc.signal("STOP");
    let t = Instant::now();
    let r = put(&ep, "version=1");
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some(), "{}", r.head);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(put(&ep, "version=2").status, 503);
    mc.signal("CONT");
    let end = Instant::now() + Duration::from_secs(10);
    while put(&ep, "version=3").status != 200 {
        assert!(Instant::now() < end, "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
}
