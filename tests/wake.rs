//! Wake drivers: an offline device that told how to wake it is woken when an update waits for it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::mpsc;
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
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                    let _ = tx.send((head.to_string(), body.to_string()));
                    break;
                }
            }
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
