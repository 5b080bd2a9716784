//! TLS terminated in the event loop: wss:// for devices and https:// for app servers, with a
//! self-signed certificate made for the test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A fresh self-signed certificate for 127.0.0.1.
fn new_cert() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap()
}

/// Writes `cert.pem` and `key.pem` in `dir`, each replaced whole (renamed into place), as a
/// deployment tool would.
fn write_pair(dir: &Path, cert: &str, key: &str) {
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A client config trusting these certificates.
fn trusting(certs: &[&rcgen::CertifiedKey<rcgen::KeyPair>]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(CertificateDer::from(c.cert.der().to_vec()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A server whose certificate files are in `dir`.
fn tls_server_in(dir: &Path, server_keys: &str) -> Server {
    Server::start_with(
        server_keys,
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )
}

fn cert_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sp-tls-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server with a fresh self-signed certificate for 127.0.0.1; also the client config trusting it.
fn tls_server(server_keys: &str) -> (Server, Arc<ClientConfig>) {
    let cert = new_cert();
    let dir = cert_dir();
    write_pair(&dir, &cert.cert.pem(), &cert.signing_key.serialize_pem());
    (tls_server_in(&dir, server_keys), trusting(&[&cert]))
}

/// Unique per call: tests run in parallel threads, each with its own certificate files.
fn rand_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{n}-{nanos}")
}

fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Tls {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    StreamOwned::new(ClientConnection::new(cfg.clone(), name).unwrap(), sock)
}

fn wss(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> WebSocket<Tls> {
    let (ws, _) = tungstenite::client(format!("wss://{addr}/"), tls_connect(addr, cfg)).unwrap();
    ws
}

fn send(ws: &mut WebSocket<Tls>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

fn recv(ws: &mut WebSocket<Tls>) -> Value {
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// One HTTPS request; the status line's code and the body.
fn https(
    cfg: &Arc<ClientConfig>,
    url: &str,
    method: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String) {
    let rest = url.strip_prefix("https://").expect("an https endpoint");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tls_connect(host.parse().unwrap(), cfg);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let r = parse_reply(&text);
    (r.status, r.body)
}

#[test]
fn devices_and_app_servers_speak_tls() {
    let (s, cfg) = tls_server("");
    let mut ws = wss(s.addr, &cfg);
    send(
        &mut ws,
        json!({"messageType":"hello","uaid":"","channelIDs":[]}),
    );
    assert_eq!(recv(&mut ws)["status"], 200);
    send(
        &mut ws,
        json!({"messageType":"register","channelID":chid(1)}),
    );
    let ep = recv(&mut ws)["pushEndpoint"].as_str().unwrap().to_string();
    assert!(
        ep.starts_with(&format!("https://{}/update/", s.addr)),
        "{ep}"
    );
    let (status, _) = https(
        &cfg,
        &ep,
        "PUT",
        &["Content-Type: application/x-www-form-urlencoded"],
        b"version=7&data=over-tls",
    );
    assert_eq!(status, 200);
    let n = recv(&mut ws);
    assert_eq!(n["updates"][0]["version"], 7);
    assert_eq!(n["updates"][0]["data"], "over-tls");

    // WebPush too, with a payload larger than one TLS record's worth of small writes.
    let mut wp = wss(s.addr, &cfg);
    send(
        &mut wp,
        json!({"messageType":"hello","use_webpush":true,"broadcasts":{}}),
    );
    recv(&mut wp);
    send(
        &mut wp,
        json!({"messageType":"register","channelID":chid(2)}),
    );
    let ep = recv(&mut wp)["pushEndpoint"].as_str().unwrap().to_string();
    let body = vec![7u8; 4096];
    let (status, _) = https(
        &cfg,
        &ep,
        "POST",
        &["TTL: 60", "Content-Encoding: aes128gcm"],
        &body,
    );
    assert_eq!(status, 201);
    assert_eq!(recv(&mut wp)["data"].as_str().unwrap().len(), 5462);
}

#[test]
fn plain_text_on_a_tls_port_is_closed_and_others_go_on() {
    let (s, cfg) = tls_server("");
    let mut plain = TcpStream::connect(s.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    // The server answers with a TLS alert at most, then closes; it never answers in plain HTTP.
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{got:?}"
    );
    // Others are served meanwhile.
    let mut ws = wss(s.addr, &cfg);
    send(
        &mut ws,
        json!({"messageType":"hello","uaid":"","channelIDs":[]}),
    );
    assert_eq!(recv(&mut ws)["status"], 200);
    // The admin listener stays plain HTTP on loopback.
    let admin = s.admin_addr.unwrap();
    assert_eq!(request(admin, "GET", "/metrics", &[], "").status, 200);
}

#[test]
fn a_stalled_tls_handshake_is_closed_after_the_request_timeout() {
    let (s, _) = tls_server("request_timeout_ms = 300");
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    // The first bytes of a ClientHello record, and then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        t.elapsed() > Duration::from_millis(150) && t.elapsed() < Duration::from_secs(3),
        "{:?} {}",
        t.elapsed(),
        s.log()
    );
}

#[test]
fn unreadable_tls_files_stop_the_server_with_their_name() {
    let dir = std::env::temp_dir().join(format!("sp-tls-bad-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    let cert =
        "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n";
    std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:0\"\n{cert}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .args(["--config", path.to_str().unwrap()])
        .env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    // Half a pair is a configuration error (exit 2).
    std::fs::write(&path, "[tls]\ncert_file = \"x.pem\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The certificate a new TLS client is shown (its leaf's DER).
fn served_cert(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let mut s = tls_connect(addr, cfg);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn sighup_serves_a_new_certificate_to_new_clients_and_keeps_devices() {
    let (old, new, other) = (new_cert(), new_cert(), new_cert());
    let dir = cert_dir();
    write_pair(&dir, &old.cert.pem(), &old.signing_key.serialize_pem());
    let mut s = tls_server_in(&dir, "");
    let cfg = trusting(&[&old, &new, &other]);
    let mut device = wss(s.addr, &cfg);
    send(
        &mut device,
        json!({"messageType":"hello","uaid":"","channelIDs":[]}),
    );
    assert_eq!(recv(&mut device)["status"], 200);
    send(
        &mut device,
        json!({"messageType":"register","channelID":chid(1)}),
    );
    let ep = recv(&mut device)["pushEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(served_cert(s.addr, &cfg), old.cert.der().to_vec());
    let push = |version: u64| {
        let body = format!("version={version}");
        let form = ["Content-Type: application/x-www-form-urlencoded"];
        https(&cfg, &ep, "PUT", &form, body.as_bytes()).0
    };

    write_pair(&dir, &new.cert.pem(), &new.signing_key.serialize_pem());
    s.signal(1);
    let changed = format!(
        "tls certificate sha256 {} -> {}",
        sha256_hex(old.cert.der()),
        sha256_hex(new.cert.der())
    );
    assert!(s.wait_log(&changed), "{}", s.log());
    assert_eq!(served_cert(s.addr, &cfg), new.cert.der().to_vec());
    // The device connected before the reload is still served, over its old session.
    assert_eq!(push(7), 200);
    assert_eq!(recv(&mut device)["updates"][0]["version"], 7);

    // A certificate that does not go with the key, then one that does not parse: each refused,
    // logged, and the last good one kept.
    write_pair(&dir, &other.cert.pem(), &new.signing_key.serialize_pem());
    s.signal(1);
    assert!(s.wait_log("reload failed"), "{}", s.log());
    std::fs::write(dir.join("cert.pem"), "not a certificate\n").unwrap();
    s.signal(1);
    let failures = || s.log().matches("reload failed").count();
    for _ in 0..250 {
        if failures() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(failures(), 2, "{}", s.log());
    let log = s.log();
    assert!(
        log.contains("KeyMismatch") && log.contains("no certificate in PEM"),
        "{log}"
    );
    assert!(s.running(), "a failed reload must not stop the server");
    assert_eq!(served_cert(s.addr, &cfg), new.cert.der().to_vec());
    assert_eq!(push(8), 200);
    assert_eq!(recv(&mut device)["updates"][0]["version"], 8);
}
