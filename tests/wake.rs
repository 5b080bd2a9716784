//! Wake drivers: an offline device that told how to wake it is woken when an update waits for it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn metric(s: &Server, outcome: &str) -> f64 {
    let name = format!("simplepush_wakes_total{{outcome=\"{outcome}\"}}");
    let m = s.metrics();
    *m.get(&name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
}

/// A device that says hello with wake data, registers, and goes offline; its endpoint.
fn offline_device(s: &Server, wake: Value) -> (String, String) {
    let mut c = s.client();
    let mut hello = json!({"messageType":"hello","uaid":"","channelIDs":[]});
    for (k, v) in wake.as_object().unwrap() {
        hello[k] = v.clone();
    }
    c.send_json(hello);
    let uaid = c.recv()["uaid"].as_str().unwrap().to_string();
    let ep = c.register(&chid(1));
    c.close();
    drop(c);
    std::thread::sleep(Duration::from_millis(150));
    (uaid, ep)
}

fn udp_listener() -> (UdpSocket, u16) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    (sock, port)
}

#[test]
fn udp_wakes_an_offline_device_inside_the_allowed_networks_at_a_bounded_rate() {
    let s = Server::start_with(
        "",
        "[wake]\ndriver = \"udp\"\nudp_allow = [\"127.0.0.0/8\"]\nmin_interval_ms = 60000\n",
    );
    let (sock, port) = udp_listener();
    let (uaid, ep) = offline_device(
        &s,
        json!({"wakeup_hostport":{"ip":"127.0.0.1","port":port},"mobilenetwork":{"mcc":"214","mnc":"07"}}),
    );
    assert_eq!(put(&ep, "version=1").status, 202);
    let mut buf = [0u8; 128];
    let (n, _) = sock.recv_from(&mut buf).expect("a wake datagram");
    assert_eq!(&buf[..n], format!("wake {uaid}").as_bytes());
    // A second update within min_interval_ms: stored (202), no second datagram.
    assert_eq!(put(&ep, "version=2").status, 202);
    assert!(sock.recv_from(&mut buf).is_err(), "rate-limited per UAID");
    assert_eq!(metric(&s, "sent"), 1.0);
    assert_eq!(metric(&s, "refused"), 1.0);
    // A connected device is not woken: the update goes to its socket.
    let mut c = s.client();
    c.hello(&uaid, &[]);
    c.recv();
    assert_eq!(put(&ep, "version=3").status, 200);
    assert!(sock.recv_from(&mut buf).is_err());
}

#[test]
fn udp_sends_nothing_outside_the_allowed_networks() {
    let s = Server::start_with(
        "",
        "[wake]\ndriver = \"udp\"\nudp_allow = [\"10.0.0.0/8\"]\n",
    );
    let (sock, port) = udp_listener();
    let (_, ep) = offline_device(
        &s,
        json!({"wakeup_hostport":{"ip":"127.0.0.1","port":port}}),
    );
    assert_eq!(put(&ep, "version=1").status, 202);
    let mut buf = [0u8; 64];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "127.0.0.1 is not in 10.0.0.0/8"
    );
    assert_eq!(metric(&s, "refused"), 1.0);
    assert_eq!(metric(&s, "sent"), 0.0);
}

#[test]
fn the_webhook_gets_the_uaid_and_its_wake_data() {
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/wake", receiver.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = receiver.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Some(got) = read_request(&mut conn) {
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(got);
        }
    });
    let s = Server::start_with(
        "",
        &format!("[wake]\ndriver = \"webhook\"\nwebhook_url = \"{url}\"\n"),
    );
    let (uaid, ep) = offline_device(&s, json!({"connect":{"type":"bridge","token":"t-1"}}));
    assert_eq!(put(&ep, "version=1").status, 202);
    let (head, body) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a webhook call");
    assert!(head.starts_with("POST /wake HTTP/1.1"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"uaid": uaid, "wake": {"connect": {"type":"bridge","token":"t-1"}}})
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(&s, "sent"), 1.0);
}

#[test]
fn a_failing_webhook_is_counted_and_the_update_is_still_stored() {
    // Nothing listens there.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Server::start_with(
        "",
        &format!("[wake]\ndriver = \"webhook\"\nwebhook_url = \"http://127.0.0.1:{port}/\"\ntimeout_ms = 300\n"),
    );
    let (uaid, ep) = offline_device(&s, json!({"connect":{"k":"v"}}));
    assert_eq!(put(&ep, "version=9").status, 202);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(metric(&s, "failed"), 1.0);
    let mut c = s.client();
    c.hello(&uaid, &[]);
    assert_eq!(c.recv()["updates"][0]["version"], 9);
}

/// `simplepush_wakes_total{outcome}` once it reaches `want`, and how long that took (at most 3 s).
fn wait_for_wakes(s: &Server, outcome: &str, want: f64) -> Option<Duration> {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if metric(s, outcome) >= want {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A test CA, and a certificate for `localhost` it signed; the CA's PEM and the server's TLS config.
fn test_ca() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "simplepush test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca_cert.pem(), Arc::new(cfg))
}

/// An https webhook on loopback: each request's head and body, answered 204; stops after 10 s.
fn tls_webhook(cfg: Arc<rustls::ServerConfig>) -> (u16, mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            let Ok((sock, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let (cfg, tx) = (cfg.clone(), tx.clone());
            std::thread::spawn(move || {
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                if let Some(got) = read_request(&mut tls) {
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                    let _ = tls.flush();
                    let _ = tx.send(got);
                }
            });
        }
    });
    (port, rx)
}

/// One request's head and body; `None` if the stream fails first (a refused handshake).
fn read_request(s: &mut impl Read) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if body.len() >= len {
            return Some((head.to_string(), body.to_string()));
        }
    }
}

#[test]
fn an_https_webhook_is_trusted_through_the_configured_ca_only() {
    let (ca_pem, tls) = test_ca();
    let ca_file = std::env::temp_dir().join(format!("sp-wake-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (port, rx) = tls_webhook(tls);
    let url = format!("https://localhost:{port}/wake");
    let s = Server::start_with(
        "",
        &format!(
            "[wake]\ndriver = \"webhook\"\nwebhook_url = \"{url}\"\nca_file = \"{}\"\n",
            ca_file.display()
        ),
    );
    let (uaid, ep) = offline_device(&s, json!({"connect":{"type":"bridge","token":"t-2"}}));
    assert_eq!(put(&ep, "version=1").status, 202);
    let (head, body) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a webhook call over TLS");
    assert!(head.starts_with("POST /wake HTTP/1.1"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["uaid"], uaid.as_str());
    assert!(wait_for_wakes(&s, "sent", 1.0).is_some());
    drop(s);

    // Without the CA file (Mozilla's roots) the test CA's certificate is refused.
    let s = Server::start_with(
        "",
        &format!("[wake]\ndriver = \"webhook\"\nwebhook_url = \"{url}\"\n"),
    );
    let (_, ep) = offline_device(&s, json!({"connect":{"k":"v"}}));
    assert_eq!(put(&ep, "version=1").status, 202);
    assert!(wait_for_wakes(&s, "failed", 1.0).is_some(), "{}", s.log());
    assert_eq!(metric(&s, "sent"), 0.0);
    assert!(rx.try_recv().is_err(), "no request without trust");
    let _ = std::fs::remove_file(&ca_file);
}

#[test]
fn a_ca_file_without_certificates_stops_the_server() {
    let bad = std::env::temp_dir().join(format!("sp-wake-bad-ca-{}.pem", std::process::id()));
    std::fs::write(&bad, "no certificate here\n").unwrap();
    let cfg = std::env::temp_dir().join(format!("sp-wake-bad-ca-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[wake]\ndriver = \"webhook\"\nwebhook_url = \"https://localhost/\"\nca_file = \"{}\"\n",
            bad.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let _ = (std::fs::remove_file(&bad), std::fs::remove_file(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wake.ca_file"), "{err}");
}

#[test]
fn a_webhook_that_accepts_and_never_answers_is_given_up_on_in_time() {
    // The kernel completes the connection (backlog); nobody reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let s = Server::start_with(
        "",
        &format!("[wake]\ndriver = \"webhook\"\nwebhook_url = \"{url}\"\ntimeout_ms = 300\n"),
    );
    let (_, ep) = offline_device(&s, json!({"connect":{"k":"v"}}));
    assert_eq!(put(&ep, "version=1").status, 202);
    let took = wait_for_wakes(&s, "failed", 1.0).expect("given up on");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// A single-label name: glibc reads $HOSTALIASES for it before any DNS query.
const SLOW_NAME: &str = "simplepush-slow-lookup";

/// A FIFO nobody writes: glibc's resolver opens $HOSTALIASES, and an open of a FIFO without a
/// writer waits for one, so a lookup of `SLOW_NAME` hangs inside getaddrinfo, sending nothing. `None`
/// (said loudly) where that does not hold, checked with getent first.
fn hanging_lookup() -> Option<std::path::PathBuf> {
    let fifo = std::env::temp_dir().join(format!("sp-hostaliases-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: no mkfifo, cannot make a name lookup hang");
        return None;
    }
    let child = std::process::Command::new("getent")
        .args(["ahosts", SLOW_NAME])
        .env("HOSTALIASES", &fifo)
        .stdout(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: no getent, cannot check that a name lookup hangs here");
        return None;
    };
    std::thread::sleep(Duration::from_millis(500));
    let hung = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    if !hung {
        eprintln!("SKIPPED: getaddrinfo does not read HOSTALIASES here; cannot make a lookup hang");
        let _ = std::fs::remove_file(&fifo);
        return None;
    }
    Some(fifo)
}

#[test]
fn a_webhook_whose_name_lookup_hangs_is_given_up_on_in_time() {
    let Some(fifo) = hanging_lookup() else {
        return;
    };
    let s = Server::start_env(
        "",
        &format!(
            "[wake]\ndriver = \"webhook\"\nwebhook_url = \"http://{SLOW_NAME}:9/\"\ntimeout_ms = 300\n"
        ),
        &[("HOSTALIASES", fifo.to_str().unwrap())],
    );
    let (_, ep) = offline_device(&s, json!({"connect":{"k":"v"}}));
    assert_eq!(put(&ep, "version=1").status, 202);
    let took = wait_for_wakes(&s, "failed", 1.0);
    drop(s);
    let _ = std::fs::remove_file(&fifo);
    let took = took.expect("a lookup that hangs is given up on");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}
