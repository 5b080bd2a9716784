//! Abuse limits: each bound a hostile or broken client runs into, with what it gets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Reads until the server closes; how long after `t` that was.
fn closed_after(mut s: TcpStream, t: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn a_slow_handshake_or_body_is_closed_after_the_request_timeout() {
    let s = Server::start_with("request_timeout_ms = 400", "");
    let t = Instant::now();
    // An upgrade request that never ends its head.
    let mut handshake = TcpStream::connect(s.addr).unwrap();
    handshake
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        .unwrap();
    // A complete head whose body never comes.
    let mut body = TcpStream::connect(s.addr).unwrap();
    body.write_all(b"PUT /update/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nversion=")
        .unwrap();
    for (what, conn) in [("handshake", handshake), ("body", body)] {
        let took = closed_after(conn, t);
        assert!(
            took > Duration::from_millis(200) && took < Duration::from_secs(3),
            "{what}: {took:?}"
        );
    }
    // Meanwhile, and after, others are served.
    let mut c = s.client();
    c.hello_new();
}

#[test]
fn register_beyond_max_channels_is_refused_and_the_socket_stays() {
    let s = Server::start_with("", "[websocket]\nmax_channels = 3\n");
    let mut c = s.client();
    let uaid = c.hello_new();
    for n in 0..3 {
        c.register(&chid(n));
    }
    // Registering one of them again is fine; a fourth is not.
    c.register(&chid(1));
    c.send_json(json!({"messageType":"register","channelID":chid(3)}));
    let reply = c.recv();
    assert_eq!(reply["status"], 429, "{reply}");
    assert_eq!(reply["channelID"], chid(3));
    // The socket is open, and an unregister makes room.
    c.send_json(json!({"messageType":"unregister","channelID":chid(0)}));
    assert_eq!(c.recv()["status"], 200);
    let ep = c.register(&chid(3));
    assert_eq!(put(&ep, "version=4").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 4);
    c.ack(&chid(3), 4);
    // The cap belongs to the UAID, not the socket.
    c.close();
    drop(c);
    let mut again = s.client();
    again.hello(&uaid, &[]);
    again.send_json(json!({"messageType":"register","channelID":chid(9)}));
    // Version 4 comes again first if the new socket's hello overtook the old one's ack.
    let mut reply = again.recv();
    if reply["messageType"] == "notification" {
        reply = again.recv();
    }
    assert_eq!(reply["status"], 429, "{reply}");
}

#[test]
fn a_client_that_never_reads_is_dropped_not_buffered() {
    let s = Server::start_with(
        "workers = 1",
        "[websocket]\nmax_output_buffer = 65536\n[endpoint]\nmax_data_len = 4096\n[webpush]\nenabled = false\n",
    );
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let rss_before = s.rss();
    // The client stops reading. Updates with data pile up: first in the kernel's socket buffers,
    // then in the server's, until the server gives up on the socket.
    let data = "x".repeat(4000);
    let (addr, path) = split_url(&ep);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stored_at = None;
    for n in 1..=20_000u32 {
        let body = format!("version={n}&data={data}");
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        let mut rest = [0u8; 128];
        let _ = conn.read(&mut rest);
        if &head[9..12] == b"202" {
            stored_at = Some(n);
            break;
        }
        assert_eq!(&head[9..12], b"200", "update {n}");
    }
    let n = stored_at.expect("the server kept buffering for a client that never reads");
    assert!(s.wait_log("peer does not read its output"));
    // Far less than what was sent (n × 4 KB) stayed in the server.
    let grown = s.rss().saturating_sub(rss_before);
    assert!(
        grown < 8 << 20,
        "RSS grew by {grown} bytes after {n} updates"
    );
    drop(c);
}
