//! Dead sockets: WebSocket pings find a device that stopped answering (its process frozen, its
//! connection half-open), and device connections carry TCP keepalive.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// The variable that hands the server's address to `frozen_client_helper`.
const HELPER_ENV: &str = "SP_TEST_FROZEN_CLIENT_ADDR";
/// What the helper prints once its hello is answered.
const READY: &str = "frozen-client-ready";

/// The child process of [`FrozenClient`]: connects, says hello, reports, then never reads again.
#[test]
#[ignore = "a child process that FrozenClient starts, not a test of its own"]
fn frozen_client_helper() {
    let addr: SocketAddr = std::env::var(HELPER_ENV)
        .expect("run by FrozenClient")
        .parse()
        .unwrap();
    let mut c = Client::connect(addr);
    let uaid = c.hello_new();
    println!("{READY} {uaid}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A device whose process is stopped (SIGSTOP) after its hello: the kernel still ACKs what the
/// server sends, but nothing reads it, so a WebSocket ping goes unanswered. Killed on drop.
struct FrozenClient {
    child: Child,
}

impl FrozenClient {
    fn start(addr: SocketAddr) -> FrozenClient {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "frozen_client_helper",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(HELPER_ENV, addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the test binary as a client");
        let out = BufReader::new(child.stdout.take().unwrap());
        let ready = out
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with(READY));
        let client = FrozenClient { child };
        assert!(ready, "the frozen client did not say hello");
        let stopped = Command::new("kill")
            .args(["-STOP", &client.child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        client
    }
}

impl Drop for FrozenClient {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
}

const READY_GAUGE: &str = "simplepush_connections{state=\"ready\"}";
const DEAD: &str = "simplepush_dead_sockets_total";

/// Reads for `span`, answering pings as tungstenite does; the pings seen.
fn answer_pings(c: &mut Client, span: Duration) -> usize {
    let end = Instant::now() + span;
    let mut pings = 0;
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < end {
        match c.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the live client lost its socket: {e}"),
        }
    }
    pings
}

#[test]
fn a_frozen_client_is_closed_after_an_unanswered_ping_and_a_live_one_stays() {
    let s = Server::start_with(
        "",
        "[websocket]\nauto_ping_interval_secs = 1\nauto_ping_timeout_secs = 2\n",
    );
    let mut live = s.client();
    live.hello_new();
    let ep = live.register(&chid(1));
    let frozen = FrozenClient::start(s.addr);
    let t = Instant::now();
    assert_eq!(get(&s.metrics(), READY_GAUGE), 2.0);
    let reader = std::thread::spawn(move || {
        let pings = answer_pings(&mut live, Duration::from_secs(6));
        (live, pings)
    });
    // Silent since its hello: pinged after 1 s, dead 2 s later.
    let closed = loop {
        let m = s.metrics();
        if get(&m, DEAD) >= 1.0 {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never closed: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        closed >= Duration::from_millis(2500) && closed <= Duration::from_secs(5),
        "closed {closed:?} after its hello, not about 3 s"
    );
    let m = s.metrics();
    assert_eq!(get(&m, READY_GAUGE), 1.0);
    assert_eq!(
        get(&m, "simplepush_connections{state=\"awaiting_hello\"}"),
        0.0
    );
    assert!(s.log().contains("no answer to a ping"), "{}", s.log());
    // The live client answered every ping over the same time and more, and is still served.
    let (mut live, pings) = reader.join().unwrap();
    assert!(pings >= 3, "{pings} pings in 6 s at one a second");
    assert_eq!(put(&ep, "version=5").status, 200);
    assert_eq!(live.recv()["updates"][0]["version"], 5);
    let m = s.metrics();
    assert_eq!(get(&m, DEAD), 1.0);
    assert_eq!(get(&m, READY_GAUGE), 1.0);
    drop(frozen);
}

#[test]
fn pings_can_be_switched_off() {
    let s = Server::start_with(
        "",
        "[websocket]\nauto_ping_interval_secs = 1\nauto_ping_timeout_secs = 0\n",
    );
    let mut c = s.client();
    c.hello_new();
    // Silent for three intervals, and never read.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(answer_pings(&mut c, Duration::from_millis(300)), 0);
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    assert_eq!(get(&s.metrics(), DEAD), 0.0);
}

#[test]
fn a_partial_frame_keeps_the_request_timeout_and_the_ping_timer_follows_it() {
    let s = Server::start_with(
        "request_timeout_ms = 3500",
        "[websocket]\nauto_ping_interval_secs = 1\nauto_ping_timeout_secs = 1\n",
    );
    // `{}` in a masked text frame, to be sent in two parts.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x82];
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&[b'{' ^ mask[0], b'}' ^ mask[1]]);
    let (mut held, mut finished) = (s.client(), s.client());
    held.hello_new();
    finished.hello_new();
    let t = Instant::now();
    held.ws.get_mut().write_all(&frame[..4]).unwrap();
    finished.ws.get_mut().write_all(&frame[..4]).unwrap();
    // Past the ping interval, then one of them finishes its frame.
    std::thread::sleep(Duration::from_millis(1500));
    finished.ws.get_mut().write_all(&frame[4..]).unwrap();
    // The other still holds part of a frame: the request timeout closes it, not a ping.
    assert_eq!(held.expect_close(), Some(1008));
    assert!(
        t.elapsed() >= Duration::from_millis(3300),
        "{:?}",
        t.elapsed()
    );
    // The finished one, silent and never reading since, is pinged and closed as dead.
    let end = Instant::now() + Duration::from_secs(5);
    while get(&s.metrics(), DEAD) < 1.0 {
        assert!(
            Instant::now() < end,
            "the finished socket was never pinged to death"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let m = s.metrics();
    assert_eq!(get(&m, DEAD), 1.0);
    assert_eq!(get(&m, READY_GAUGE), 0.0);
}

/// The kernel's timer on the server's end of the connection from `client`, from
/// `/proc/net/tcp`: (kind, time left in hundredths of a second). Kind 2 is the keepalive timer,
/// 0 none; 1 (retransmission, tail loss probe) is pending until the client's delayed ACK of the
/// server's last bytes comes, and shows the keepalive timer only then.
fn server_side_timer(server: SocketAddr, client: SocketAddr) -> (u32, u64) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let timer = tcp_timer(server, client);
        if timer.0 != 1 || Instant::now() > end {
            return timer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tcp_timer(server: SocketAddr, client: SocketAddr) -> (u32, u64) {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("loopback IPv4 only"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let timer = table
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
                .then(|| f[5].to_string())
        })
        .unwrap_or_else(|| panic!("no server side for {remote} in {table}"));
    let (kind, left) = timer.split_once(':').unwrap();
    (
        u32::from_str_radix(kind, 16).unwrap(),
        u64::from_str_radix(left, 16).unwrap(),
    )
}

/// A device after its hello (so the server has accepted it and set its options): its address.
fn device(s: &Server) -> (Client, SocketAddr) {
    let mut c = s.client();
    c.hello_new();
    let addr = c.ws.get_ref().local_addr().unwrap();
    (c, addr)
}

#[test]
fn device_connections_carry_tcp_keepalive() {
    let s = Server::start_with(
        "tcp_keepalive_secs = 7\nendpoint_listen = \"127.0.0.1:0\"",
        "",
    );
    let (_held, addr) = device(&s);
    let (kind, left) = server_side_timer(s.addr, addr);
    assert_eq!(kind, 2, "no keepalive timer on a device connection");
    assert!(
        left > 400 && left <= 700,
        "{left} hundredths, not about 7 s"
    );
    // App servers' connections on their own listener are not devices.
    let endpoint = s.endpoint_addr.unwrap();
    let mut app = TcpStream::connect(endpoint).unwrap();
    app.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    app.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert_eq!(server_side_timer(endpoint, app.local_addr().unwrap()).0, 0);

    let off = Server::start_with("tcp_keepalive_secs = 0", "");
    let (_held, addr) = device(&off);
    assert_eq!(server_side_timer(off.addr, addr).0, 0);
}
