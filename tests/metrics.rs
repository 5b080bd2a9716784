//! `GET /metrics` on the admin listener: Prometheus text that follows what the server did.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

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

/// A test application server's VAPID key.
struct AppServer(p256::ecdsa::SigningKey);

impl AppServer {
    fn new(seed: u8) -> AppServer {
        AppServer(p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap())
    }

    /// The public key as a page's `applicationServerKey`.
    fn public_key(&self) -> String {
        let point = self.0.verifying_key().to_sec1_point(false);
        URL_SAFE_NO_PAD.encode(point.as_bytes())
    }

    /// A valid `Authorization` header for the push service at `origin`.
    fn auth(&self, origin: &str) -> String {
        use p256::ecdsa::signature::Signer;
        let claims = json!({"aud": origin, "exp": now_secs() + 3600, "sub": "mailto:a@b"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(sig.to_bytes());
        format!(
            "Authorization: vapid t={input}.{sig}, k={}",
            self.public_key()
        )
    }
}

const RESPONSES: &str = "simplepush_endpoint_responses_total";

/// The endpoint-answer series of a scrape.
fn responses(s: &Server) -> HashMap<String, f64> {
    let mut m = s.metrics();
    m.retain(|k, _| k.starts_with(RESPONSES));
    m
}

/// Asserts that `got` (an answer's status) is `status`, and that since `seen` exactly one answer
/// was counted, as `{status, reason}`; then remembers the new figures.
fn counted_once(s: &Server, seen: &mut HashMap<String, f64>, got: u16, status: u16, reason: &str) {
    assert_eq!(got, status, "{reason}");
    let now = responses(s);
    let series = format!("{RESPONSES}{{status=\"{status}\",reason=\"{reason}\"}}");
    let moved: Vec<(&String, f64)> = now
        .iter()
        .map(|(k, v)| (k, v - seen.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    assert_eq!(moved, vec![(&series, 1.0)], "{status} {reason}");
    *seen = now;
}

/// An HTTP request's status; the server may close before taking a body it refuses.
fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    raw_http(addr, bytes).status
}

#[test]
fn every_app_server_answer_is_counted_by_status_and_reason() {
    let s = Server::start_with("", "[webpush]\nmax_messages = 1\n");
    let origin = format!("http://{}", s.addr);
    let seen = &mut responses(&s);
    assert_eq!(
        seen.len(),
        22,
        "the expected series are there at 0: {seen:?}"
    );
    assert!(seen.values().all(|v| *v == 0.0), "{seen:?}");

    // SimplePush.
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let gone = c.register(&chid(2));
    c.send_json(json!({"messageType":"unregister","channelID":chid(2)}));
    c.recv();
    counted_once(&s, seen, put(&ep, "version=1").status, 200, "ok");
    c.recv();
    counted_once(&s, seen, put(&ep, "version=x").status, 400, "version");
    let data = format!("version=2&data={}", "d".repeat(4097));
    counted_once(&s, seen, put(&ep, &data).status, 413, "too_large");
    counted_once(
        &s,
        seen,
        put(&format!("{ep}x"), "version=3").status,
        404,
        "token",
    );
    let (addr, path) = split_url(&ep);
    let get = request(addr, "GET", &path, &[], "").status;
    counted_once(&s, seen, get, 405, "method");
    counted_once(&s, seen, put(&gone, "version=4").status, 410, "gone");
    c.close();
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    counted_once(&s, seen, put(&ep, "version=5").status, 202, "ok");

    // WebPush, to a device that is offline (so that messages wait).
    let mut w = s.client();
    w.webpush_hello("");
    let app = AppServer::new(7);
    w.send_json(json!({"messageType":"register","channelID":chid(3),"key":app.public_key()}));
    let v2 = w.recv()["pushEndpoint"].as_str().unwrap().to_string();
    w.send_json(json!({"messageType":"register","channelID":chid(4)}));
    let v1 = w.recv()["pushEndpoint"].as_str().unwrap().to_string();
    w.send_json(json!({"messageType":"register","channelID":chid(5)}));
    let unregistered = w.recv()["pushEndpoint"].as_str().unwrap().to_string();
    w.send_json(json!({"messageType":"unregister","channelID":chid(5)}));
    w.recv();
    w.close();
    drop(w);
    std::thread::sleep(Duration::from_millis(200));
    let post = |url: &str, headers: &[&str], body: &[u8]| {
        let (addr, path) = split_url(url);
        request(addr, "POST", &path, headers, body)
    };
    let auth = app.auth(&origin);
    let ttl = "TTL: 60";
    let aes = "Content-Encoding: aes128gcm";
    let created = post(&v2, &[ttl, aes, &auth], b"x");
    counted_once(&s, seen, created.status, 201, "ok");
    counted_once(&s, seen, post(&v2, &[ttl, aes], b"x").status, 401, "vapid");
    let other = AppServer::new(8).auth(&origin);
    counted_once(
        &s,
        seen,
        post(&v2, &[ttl, aes, &other], b"x").status,
        403,
        "vapid",
    );
    counted_once(&s, seen, post(&v1, &[aes], b"x").status, 400, "ttl");
    counted_once(&s, seen, post(&v1, &[ttl], b"x").status, 400, "encoding");
    let topic = post(&v1, &[ttl, "Topic: not a topic"], b"").status;
    counted_once(&s, seen, topic, 400, "topic");
    let urgency = post(&v1, &[ttl, "Urgency: now"], b"").status;
    counted_once(&s, seen, urgency, 400, "urgency");
    let big = post(&v1, &[ttl, aes], &[0u8; 4097]).status;
    counted_once(&s, seen, big, 413, "too_large");
    let forged = post(&format!("{v1}x"), &[ttl], b"").status;
    counted_once(&s, seen, forged, 404, "token");
    let put_wpush = request(addr, "PUT", &split_url(&v1).1, &[ttl], "").status;
    counted_once(&s, seen, put_wpush, 405, "method");
    counted_once(
        &s,
        seen,
        post(&unregistered, &[ttl], b"").status,
        410,
        "gone",
    );
    // max_messages = 1, and one waits already.
    counted_once(&s, seen, post(&v1, &[ttl], b"").status, 429, "full");
    let message = created.header("Location").expect("Location");
    let (maddr, mpath) = split_url(&message);
    let delete = |m: &str| request(maddr, m, &mpath, &[], "").status;
    counted_once(&s, seen, delete("DELETE"), 204, "ok");
    counted_once(&s, seen, delete("DELETE"), 404, "no_message");
    counted_once(&s, seen, delete("GET"), 405, "method");

    // Requests refused before any route: body too long, malformed, a coding other than chunked,
    // head too long.
    let long_body = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    let status = raw_status(addr, long_body.as_bytes());
    counted_once(&s, seen, status, 413, "too_large");
    let status = raw_status(addr, b"NOT HTTP AT ALL\r\n\r\n");
    counted_once(&s, seen, status, 400, "malformed");
    let gzip = format!("PUT {path} HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    counted_once(
        &s,
        seen,
        raw_status(addr, gzip.as_bytes()),
        501,
        "malformed",
    );
    let huge = format!("PUT {path} HTTP/1.1\r\nX: {}\r\n\r\n", "h".repeat(9000));
    counted_once(
        &s,
        seen,
        raw_status(addr, huge.as_bytes()),
        431,
        "malformed",
    );

    // Not app-server answers: status, health, unknown paths, the admin listener.
    for path in ["/status", "/health", "/nowhere"] {
        request(s.addr, "GET", path, &[], "");
    }
    request(
        s.admin_addr.unwrap(),
        "PUT",
        "/update/abc",
        &[],
        "version=1",
    );
    assert_eq!(responses(&s), *seen);
}

#[test]
fn a_store_outage_is_counted_as_503_unavailable() {
    if !have_memcached() {
        return;
    }
    let mut memcached = Memcached::start();
    // Its own file: under PUSH_TEST_BACKEND the harness would add a second [storage].
    let cfg = std::env::temp_dir().join(format!("sp-metrics-503-{}.toml", std::process::id()));
    let section = memcached_section(&[memcached.addr]);
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{section}"),
    )
    .unwrap();
    let s = Server::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let seen = &mut responses(&s);
    counted_once(&s, seen, put(&ep, "version=1").status, 200, "ok");
    c.recv();
    memcached.kill();
    counted_once(&s, seen, put(&ep, "version=2").status, 503, "unavailable");
}

#[test]
fn process_and_build_figures_are_there_and_plausible() {
    let s = Server::start();
    let m = s.metrics();
    let started = get(&m, "process_start_time_seconds");
    assert!(
        (started - now_secs() as f64).abs() < 60.0,
        "started at {started}, now {}",
        now_secs()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let soft: f64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("Max open files");
    assert_eq!(get(&m, "process_max_fds"), soft);
    // The sampler reads /proc every 5 s: give it a round if the start took no full tick.
    let end = Instant::now() + Duration::from_secs(12);
    while get(&s.metrics(), "process_cpu_seconds_total") <= 0.0 {
        assert!(Instant::now() < end, "no CPU time after 12 s");
        for _ in 0..50 {
            request(s.addr, "GET", "/status", &[], "");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, version) = scrape_json(&s, "/__version__");
    let commit = version["commit"].as_str().expect("commit");
    let info = format!(
        "simplepush_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(get(&m, &info), 1.0, "{m:?}");
}

fn scrape_json(s: &Server, path: &str) -> (u16, Value) {
    let r = request(s.admin_addr.unwrap(), "GET", path, &[], "");
    (r.status, serde_json::from_str(&r.body).unwrap())
}
