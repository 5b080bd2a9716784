//! The disk store's promises against real faults: `kill -9` under load, a clean restart of
//! 10,000 devices, a damaged store file, an unusable data directory, a full disk (a file-size
//! limit set on the running server with prlimit), and `[cluster]` refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{chid, disk_section, parse_reply, split_url, Client, Got, HttpReply, Server};
use serde_json::{json, Value};

/// A fresh data directory's parent (the server's config lives beside the data).
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "sp-disk-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The config of a server on the disk store in `dir/data`, with more `[storage]` keys.
fn config(dir: &Path, storage_keys: &str, sections: &str) -> PathBuf {
    let cfg = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n{sections}\n",
        disk_section(&dir.join("data"), storage_keys)
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn start(dir: &Path, storage_keys: &str) -> Server {
    let cfg = config(dir, storage_keys, "");
    Server::spawn(&["--config", cfg.to_str().unwrap()], &[])
}

/// Runs the server expecting it to refuse to start: its exit code and what it printed.
fn refused(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sigkill(s: &Server) {
    let _ = Command::new("kill")
        .args(["-9", &s.pid().to_string()])
        .status();
}

/// One request on its own connection; `None` when the server did not answer.
fn try_request(url: &str, method: &str, headers: &[&str], body: &str) -> Option<HttpReply> {
    let (addr, path) = split_url(url);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    (!buf.is_empty()).then(|| parse_reply(&String::from_utf8_lossy(&buf)))
}

/// An app server's keep-alive connection: requests one after another on one socket.
struct AppServer {
    addr: SocketAddr,
    sock: Option<TcpStream>,
}

impl AppServer {
    fn new(addr: SocketAddr) -> AppServer {
        AppServer { addr, sock: None }
    }

    /// One push on the kept connection (opened again if it broke); `None`: no answer.
    fn push(&mut self, ep: &str, webpush: bool, n: u64) -> Option<HttpReply> {
        let (_, path) = split_url(ep);
        let (method, headers, body) = if webpush {
            (
                "POST",
                "TTL: 3600\r\nContent-Encoding: aes128gcm\r\n",
                format!("m{n}"),
            )
        } else {
            (
                "PUT",
                "Content-Type: application/x-www-form-urlencoded\r\n",
                format!("version={n}"),
            )
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let reply = self.exchange(req.as_bytes());
        if reply.is_none() {
            self.sock = None;
        }
        reply
    }

    fn exchange(&mut self, req: &[u8]) -> Option<HttpReply> {
        if self.sock.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            self.sock = Some(s);
        }
        let s = self.sock.as_mut()?;
        s.write_all(req).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let reply = parse_reply(&text[..end]);
            let len: usize = reply
                .header("Content-Length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(reply);
            }
        }
    }
}

/// A push: a SimplePush version or a WebPush body.
fn push(ep: &str, webpush: bool, n: u64) -> Option<HttpReply> {
    if webpush {
        let headers = ["TTL: 3600", "Content-Encoding: aes128gcm"];
        try_request(ep, "POST", &headers, &format!("m{n}"))
    } else {
        let headers = ["Content-Type: application/x-www-form-urlencoded"];
        try_request(ep, "PUT", &headers, &format!("version={n}"))
    }
}

/// A registered device.
#[derive(Clone)]
struct Device {
    uaid: String,
    ch: String,
    ep: String,
    webpush: bool,
}

impl Device {
    /// The endpoint on a restarted server (a new port).
    fn moved_to(&self, addr: SocketAddr) -> String {
        let (old, path) = split_url(&self.ep);
        let _ = old;
        format!("http://{addr}{path}")
    }
}

fn register_device(s: &Server, i: u32, webpush: bool) -> (Device, Client) {
    let mut c = s.client();
    let ch = chid(10_000 + i);
    let uaid = if webpush {
        c.webpush_hello("")["uaid"].as_str().unwrap().to_string()
    } else {
        c.hello_new()
    };
    c.send_json(json!({"messageType":"register","channelID":ch}));
    let reply = c.recv();
    assert_eq!(reply["status"], 200, "{reply}");
    let ep = reply["pushEndpoint"].as_str().unwrap().to_string();
    (
        Device {
            uaid,
            ch,
            ep,
            webpush,
        },
        c,
    )
}

/// What app servers were told was stored: the newest version and every body per device.
#[derive(Default)]
struct Promised {
    versions: BTreeMap<usize, u64>,
    bodies: BTreeMap<usize, BTreeSet<String>>,
    statuses: BTreeMap<u16, u64>,
}

impl Promised {
    fn record(&mut self, i: usize, d: &Device, n: u64, status: u16) {
        *self.statuses.entry(status).or_insert(0) += 1;
        match (d.webpush, status) {
            (true, 201) => {
                self.bodies.entry(i).or_default().insert(format!("m{n}"));
            }
            (false, 200 | 202) => {
                self.versions.insert(i, n);
            }
            _ => {}
        }
    }

    fn merge(&mut self, other: Promised) {
        self.versions.extend(other.versions);
        for (i, b) in other.bodies {
            self.bodies.entry(i).or_default().extend(b);
        }
        for (st, n) in other.statuses {
            *self.statuses.entry(st).or_insert(0) += n;
        }
    }
}

/// `threads` pushers, each over its own devices (so versions per device only grow), until `stop`.
fn pushers(
    devices: &[Device],
    threads: usize,
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Promised>> {
    (0..threads)
        .map(|t| {
            let mine: Vec<(usize, Device)> = devices
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| i % threads == t)
                .collect();
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut p = Promised::default();
                let mut n = 0u64;
                let mut app = AppServer::new(split_url(&mine[0].1.ep).0);
                while !stop.load(Ordering::Relaxed) {
                    for (i, d) in &mine {
                        n += 1;
                        let Some(r) = app.push(&d.ep, d.webpush, n) else {
                            continue;
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        p.record(*i, d, n, r.status);
                    }
                }
                p
            })
        })
        .collect()
}

/// Every version and body a device gets after a hello with its UAID on the server at `addr`
/// (messages are acked, versions not: they stay pending).
fn received(addr: SocketAddr, d: &Device) -> (BTreeSet<u64>, BTreeSet<String>) {
    let mut c = Client::connect(addr);
    let reply = if d.webpush {
        c.webpush_hello(&d.uaid)
    } else {
        c.hello(&d.uaid, &[&d.ch])
    };
    assert_eq!(reply["uaid"], d.uaid.as_str(), "the device kept its UAID");
    let (mut versions, mut bodies) = (BTreeSet::new(), BTreeSet::new());
    while let Got::Text(t) = c.next(Duration::from_millis(300)) {
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
            c.ack_message(&d.ch, id);
        }
    }
    c.close();
    (versions, bodies)
}

/// Checks every promise on the restarted server `s`, eight devices at a time.
fn check_promises(s: &Server, devices: &[Device], p: &Promised) {
    let addr = s.addr;
    let got: Vec<(BTreeSet<u64>, BTreeSet<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .chunks(devices.len().div_ceil(8))
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|d| received(addr, d)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (i, (versions, bodies)) in got.into_iter().enumerate() {
        if let Some(&v) = p.versions.get(&i) {
            let newest = versions.iter().max().copied().unwrap_or(0);
            assert!(
                newest >= v,
                "device {i}: version {v} answered 2xx, got {versions:?}"
            );
        }
        if let Some(want) = p.bodies.get(&i) {
            let lost: Vec<_> = want.difference(&bodies).collect();
            assert!(
                lost.is_empty(),
                "device {i}: {} of {} bodies answered 201 never arrived: {lost:?}",
                lost.len(),
                want.len()
            );
        }
    }
}

#[test]
fn kill_9_under_load_loses_nothing_answered_and_no_endpoint_dies() {
    let dir = temp_dir("kill");
    // One message per push: make room for all of them (a 429 would promise nothing anyway).
    let s = start(&dir, "");
    let mut devices = Vec::new();
    let mut held = Vec::new();
    for i in 0..64 {
        let (d, c) = register_device(&s, i, i % 2 == 1);
        devices.push(d);
        // Half stay connected (their pushes go out live, unacked), half wait offline.
        if (i / 2) % 2 == 0 {
            held.push(c);
        }
    }
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let threads = pushers(&devices, 48, &stop, &sent);
    let began = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let rate = sent.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64();
    sigkill(&s);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut p = Promised::default();
    for t in threads {
        p.merge(t.join().unwrap());
    }
    drop(held);
    eprintln!("load: {rate:.0} pushes/s, {:?}", p.statuses);
    assert!(
        rate >= 2000.0,
        "only {rate:.0} pushes/s: too little load to mean anything"
    );
    for st in p.statuses.keys() {
        assert!([200, 201, 202, 429].contains(st), "{:?}", p.statuses);
    }
    let s = start(&dir, "");
    assert!(s.wait_log("disk store"), "{}", s.log());
    check_promises(&s, &devices, &p);
    // The acks of the messages just delivered are in; now every endpoint must take a push.
    std::thread::sleep(Duration::from_millis(300));
    for (i, d) in devices.iter().enumerate() {
        let r = push(&d.moved_to(s.addr), d.webpush, 1 << 40).expect("an answer");
        assert!(
            [200, 201, 202].contains(&r.status),
            "device {i}: {} {}",
            r.status,
            r.body
        );
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn a_clean_restart_keeps_10000_devices_endpoints() {
    let dir = temp_dir("restart");
    let mut s = start(&dir, "");
    let addr = s.addr;
    let workers: Vec<_> = (0..8u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut eps = Vec::new();
                for i in (t..10_000).step_by(8) {
                    let mut c = Client::connect(addr);
                    c.hello_new();
                    eps.push(c.register(&chid(i)));
                    c.close();
                }
                eps
            })
        })
        .collect();
    let eps: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(eps.len(), 10_000);
    assert_eq!(
        s.terminate(Duration::from_secs(10))
            .and_then(|st| st.code()),
        Some(0)
    );
    let s = start(&dir, "");
    assert!(s.wait_log("10000 UAIDs"), "{}", s.log());
    let new_addr = s.addr;
    let chunks: Vec<Vec<String>> = eps.chunks(1250).map(|c| c.to_vec()).collect();
    let checks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for ep in chunk {
                    let (_, path) = split_url(&ep);
                    let url = format!("http://{new_addr}{path}");
                    let st = push(&url, false, 7).map_or(0, |r| r.status);
                    if st != 200 && st != 202 {
                        bad.push((ep, st));
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<_> = checks.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(
        bad.is_empty(),
        "{} endpoints died: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

/// A store holding a few devices, stopped cleanly: its file.
fn stopped_store(dir: &Path) -> PathBuf {
    let mut s = start(dir, "");
    for i in 0..50 {
        register_device(&s, i, false);
    }
    s.terminate(Duration::from_secs(10));
    dir.join("data").join("simplepush.redb")
}

#[test]
fn a_truncated_or_corrupted_store_file_stops_the_server_with_exit_2() {
    let dir = temp_dir("damaged");
    let file = stopped_store(&dir);
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let cfg = config(&dir, "", "");
    let (code, err) = refused(&cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("simplepush.redb") && err.contains("backup"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Every page after the header overwritten: nothing in it can be trusted.
    let mut bad = good.clone();
    for (i, b) in bad.iter_mut().enumerate().skip(4096) {
        *b = (i * 7919 % 251) as u8;
    }
    std::fs::write(&file, &bad).unwrap();
    let (code, err) = refused(&cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("simplepush.redb") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // The file put back: the server starts and knows its devices.
    std::fs::write(&file, &good).unwrap();
    let s = start(&dir, "");
    assert!(s.wait_log("50 UAIDs"), "{}", s.log());
}

#[test]
fn a_data_directory_that_cannot_be_written_stops_the_server_with_exit_2() {
    let dir = temp_dir("unwritable");
    // Under a regular file: no directory can be made there, whoever we run as.
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            disk_section(&blocker.join("data"), "")
        ),
    )
    .unwrap();
    let (code, err) = refused(&cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("storage.path") && err.contains("not-a-dir"),
        "{err}"
    );
    // A second server on a directory in use.
    let other = temp_dir("shared");
    let _first = start(&other, "");
    let (code, err) = refused(&config(&other, "", ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another process"), "{err}");
}

#[test]
fn disk_with_a_cluster_is_a_configuration_error() {
    let dir = temp_dir("cluster");
    let cfg = config(
        &dir,
        "",
        "[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"cluster-secret-0123456789\"\n",
    );
    let (code, err) = refused(&cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("memcached") && err.contains("disk"), "{err}");
}

/// Sets the running server's file-size limit (`None`: unlimited). Only the soft limit: raising
/// a hard one back needs CAP_SYS_RESOURCE, which a container may not have.
fn limit_file_size(s: &Server, bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited".to_string(), |b| b.to_string());
    let st = Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), &format!("--fsize={limit}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
}

#[test]
fn a_full_disk_answers_503_keeps_every_2xx_and_recovers() {
    let dir = temp_dir("full");
    let s = start(&dir, "");
    let devices: Vec<Device> = (0..8)
        .map(|i| register_device(&s, i, i % 2 == 1).0)
        .collect();
    let file = dir.join("data").join("simplepush.redb");
    let size = std::fs::metadata(&file).unwrap().len();
    limit_file_size(&s, Some(size));
    let mut p = Promised::default();
    let mut retry_after = true;
    let filler = "x".repeat(3000);
    let mut n = 0u64;
    // Push (big messages, to need more room) until the store refuses.
    while p.statuses.get(&503).copied().unwrap_or(0) < 20 && n < 5000 {
        n += 1;
        let i = (n as usize) % devices.len();
        let d = &devices[i];
        let r = if d.webpush {
            let headers = ["TTL: 3600", "Content-Encoding: aes128gcm"];
            try_request(&d.ep, "POST", &headers, &format!("m{n}{filler}"))
        } else {
            push(&d.ep, false, n)
        }
        .expect("an answer");
        if r.status == 503 {
            retry_after &= r.header("Retry-After").is_some();
        }
        if r.status == 201 {
            p.bodies
                .entry(i)
                .or_default()
                .insert(format!("m{n}{filler}"));
            *p.statuses.entry(201).or_insert(0) += 1;
        } else {
            p.record(i, d, n, r.status);
        }
    }
    assert!(
        p.statuses.get(&503).copied().unwrap_or(0) >= 20,
        "never full: {:?}",
        p.statuses
    );
    assert!(retry_after, "a 503 without Retry-After");
    for st in p.statuses.keys() {
        assert!([200, 201, 202, 429, 503].contains(st), "{:?}", p.statuses);
    }
    // Room again: service resumes without a restart.
    limit_file_size(&s, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = &devices[0];
    loop {
        n += 1;
        let st = push(&d.ep, false, n).map_or(0, |r| r.status);
        if st == 200 || st == 202 {
            p.versions.insert(0, n);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the disk had room: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.wait_log("writable again"), "{}", s.log());
    check_promises(&s, &devices, &p);
}

#[test]
fn waiting_messages_cost_bounded_disk_space() {
    let dir = temp_dir("bytes");
    let s = start(&dir, "");
    let file = dir.join("data").join("simplepush.redb");
    let devices: Vec<Device> = (0..20).map(|i| register_device(&s, i, true).0).collect();
    // Settled: the registrations' pages are written.
    std::thread::sleep(Duration::from_millis(1200));
    let before = std::fs::metadata(&file).unwrap().len();
    let body = "b".repeat(100);
    let mut app = AppServer::new(s.addr);
    let mut stored = 0u64;
    for n in 0..50 {
        for d in &devices {
            let (_, path) = split_url(&d.ep);
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nTTL: 3600\r\nContent-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n{body}",
                s.addr,
                body.len()
            );
            let r = app.exchange(req.as_bytes()).expect("an answer");
            assert_eq!(r.status, 201, "message {n}: {}", r.body);
            stored += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    let grown = std::fs::metadata(&file)
        .unwrap()
        .len()
        .saturating_sub(before);
    let per = grown / stored;
    eprintln!("disk: {stored} messages of 100 bytes grew the store by {grown} B: {per} B each");
    // A message is its body, headers and id in a JSON list, plus copy-on-write page overhead.
    assert!(per <= 2048, "{per} B per 100-byte message");
}

#[test]
fn every_sync_mode_keeps_what_it_answered_across_a_clean_restart() {
    for mode in ["always", "batch", "none"] {
        let dir = temp_dir(mode);
        let keys = format!("sync = \"{mode}\"");
        let mut s = start(&dir, &keys);
        let (d, c) = register_device(&s, 1, false);
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
        let r = push(&d.ep, false, 42).expect("an answer");
        assert_eq!(r.status, 202, "{mode}: {}", r.body);
        assert_eq!(
            s.terminate(Duration::from_secs(10))
                .and_then(|st| st.code()),
            Some(0)
        );
        let s = start(&dir, &keys);
        let (versions, _) = received(s.addr, &d);
        assert!(versions.contains(&42), "{mode}: got {versions:?}");
    }
}
