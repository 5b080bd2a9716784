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

/// The header of a masked text frame of `len` bytes.
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x81, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

/// Sends the header of a 1,048,000-byte frame and all but its last 1,000 bytes, then goes quiet
/// (the socket is kept open by the caller); write errors mean the server closed it.
fn pin_a_megabyte(mut s: TcpStream) -> TcpStream {
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s
        .write_all(&frame_header(1_048_000))
        .and_then(|()| s.write_all(&vec![b'x'; 1_047_000]));
    s
}

#[test]
fn unfinished_frames_cannot_pin_the_servers_memory() {
    let s = Server::start();
    let ep_of = |c: &mut Client, i: u32| {
        c.hello_new();
        c.register(&chid(i))
    };
    let before = s.rss();
    // 1,000 sockets after hello and 1,000 before it, each sending most of a 1 MiB frame.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut c = s.client();
        c.hello_new();
        let stream = c.ws.get_ref().try_clone().unwrap();
        held.push((c, pin_a_megabyte(stream)));
    }
    let mut before_hello = Vec::new();
    for _ in 0..1000 {
        let c = s.client();
        let stream = c.ws.get_ref().try_clone().unwrap();
        before_hello.push((c, pin_a_megabyte(stream)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = s.rss().saturating_sub(before);
    assert!(
        grown <= 64 << 20,
        "2,000 unfinished frames cost {} MiB",
        grown >> 20
    );
    // A frame too long for a hello is refused at its header, with 1009.
    let (mut c, _) = before_hello.pop().unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    // Well-behaved devices register and receive meanwhile.
    for i in 0..100 {
        let mut c = s.client();
        let ep = ep_of(&mut c, i);
        assert_eq!(put(&ep, &format!("version={}", i + 1)).status, 200);
        assert_eq!(c.recv()["updates"][0]["version"], i + 1);
    }
    // The budget (32 MiB), plus at most 4 KiB for each socket holding less than that.
    let m = s.metrics();
    let partial = m["simplepush_websocket_partial_input_bytes"];
    assert!(partial <= ((32u64 << 20) + 2000 * 4096) as f64, "{partial}");
    eprintln!(
        "2,000 unfinished frames: server RSS {} -> {} MiB, partial input held {:.1} MiB",
        before >> 20,
        (before + grown) >> 20,
        partial / 1048576.0
    );
    drop(held);
}

/// A slowloris client: up to `n` sockets to `addr`, each sending one more byte of a request head
/// that never ends every `every`, each reopened when the server closes it, until `until`.
fn slowloris(addr: std::net::SocketAddr, n: usize, every: Duration, until: Instant) -> usize {
    let head = b"PUT /update/abc HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    // From a source address of its own, as an attacker's host is.
    let open = || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        let from: std::net::SocketAddr = "127.0.0.2:0".parse().ok()?;
        sock.bind(&from.into()).ok()?;
        sock.connect(&addr.into()).ok()?;
        let s: TcpStream = sock.into();
        s.set_nonblocking(true).ok()?;
        Some((s, 0usize))
    };
    let mut socks: Vec<Option<(TcpStream, usize)>> = (0..n).map(|_| open()).collect();
    let mut reopened = 0;
    while Instant::now() < until {
        for slot in socks.iter_mut() {
            let alive = match slot.as_mut() {
                Some((s, sent)) => {
                    // Anything but "nothing yet" (EOF, an answer, a reset) means the server is
                    // done with this socket.
                    let mut probe = [0u8; 512];
                    let closed = !matches!(s.read(&mut probe),
                        Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
                    let byte = head.get(*sent).copied().unwrap_or(b'a');
                    *sent += 1;
                    !closed && s.write(&[byte]).is_ok()
                }
                None => false,
            };
            if !alive {
                *slot = open();
                reopened += 1;
            }
        }
        std::thread::sleep(every);
    }
    reopened
}

#[test]
fn slowloris_requests_cost_little_and_do_not_keep_app_servers_out() {
    // Memory: 1,000 requests whose head stops half-way.
    let s = Server::start();
    let before = s.rss();
    let mut half: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut t = TcpStream::connect(s.addr).unwrap();
            t.write_all(b"PUT /update/abc HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .unwrap();
            t
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let grown = s.rss().saturating_sub(before);
    assert!(
        grown <= 1 << 20,
        "1,000 half-read requests cost {} KiB",
        grown >> 10
    );
    half.clear();
    drop(s);

    // Availability: 400 slowloris sockets against 300 connections; real PUTs still get in.
    let s = Server::start_with("max_connections = 300", "");
    let mut device = s.client();
    device.hello_new();
    let ep = device.register(&chid(1));
    let addr = s.addr;
    let until = Instant::now() + Duration::from_secs(9);
    let attack =
        std::thread::spawn(move || slowloris(addr, 400, Duration::from_millis(200), until));
    std::thread::sleep(Duration::from_secs(2));
    let mut ok = 0;
    for v in 1..=100 {
        match try_put(&ep, &format!("version={v}")) {
            Some(r) if r.status == 200 => {
                ok += 1;
                assert_eq!(device.recv()["updates"][0]["version"], v);
            }
            other => eprintln!("PUT {v}: {:?}", other.map(|r| (r.status, r.body))),
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    let reopened = attack.join().unwrap();
    eprintln!(
        "slowloris: 1,000 half-read requests cost {} KiB of RSS; {ok} of 100 PUTs answered 200 \
         under 400 slow sockets against max_connections = 300 ({reopened} reopened)",
        grown >> 10
    );
    assert!(ok >= 99, "{ok} of 100 PUTs succeeded");
    assert!(reopened > 100, "the attack was not pressing: {reopened}");
}

#[test]
fn unfinished_heads_past_the_budget_get_503() {
    // Long timeouts: the heads stay for the whole test.
    let s = Server::start_with(
        "header_timeout_ms = 60000\nrequest_timeout_ms = 60000",
        "[endpoint]\npartial_head_budget = 65536\n",
    );
    let head = format!(
        "PUT /update/abc HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(4000)
    );
    // Each holds about 4 KiB of a head: the budget holds 16 of them.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        t.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = t.read(&mut buf) {
            let reply = parse_reply(&String::from_utf8_lossy(&buf[..n]));
            if n > 0 {
                assert_eq!(reply.status, 503, "{}", reply.body);
                assert_eq!(reply.header("retry-after").as_deref(), Some("5"));
                refused += 1;
            }
        }
        held.push(t);
    }
    assert!((20..=26).contains(&refused), "{refused} refused");
    // A whole request still gets in at once.
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=1").status, 200);
}

#[test]
fn the_memory_store_forgets_registrations_unseen_for_their_ttl() {
    // memcached and the disk store expire by themselves (tests/memcached*.rs, tests/disk.rs).
    if memcached_backend() || disk_backend() {
        return;
    }
    let s = Server::start_with(
        "",
        "[websocket]\nmin_ping_interval_ms = 0\n[storage]\nregistration_ttl_secs = 2\n",
    );
    // 100 devices with 20 channels each go away; one stays connected and talks.
    let mut gone = Vec::new();
    for d in 0..100u32 {
        let mut c = s.client();
        c.hello_new();
        let eps: Vec<String> = (0..20).map(|i| c.register(&chid(d * 100 + i))).collect();
        c.close();
        gone.push(eps);
    }
    let mut kept = s.client();
    kept.hello_new();
    let kept_ep = kept.register(&chid(99_999));
    let end = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < end {
        // A ping every 400 ms: each message past a third of the TTL refreshes the registration.
        kept.send("{}");
        assert_eq!(kept.recv_text(), "{}");
        std::thread::sleep(Duration::from_millis(400));
    }
    // The gone devices' channels are unknown now.
    for eps in &gone {
        assert_eq!(put(&eps[19], "version=1").status, 410);
    }
    // The device that stayed keeps its registration.
    assert_eq!(put(&kept_ep, "version=2").status, 200);
    assert_eq!(kept.recv()["updates"][0]["version"], 2);
}
