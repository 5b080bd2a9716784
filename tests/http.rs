//! HTTP/1.1 framing on real sockets against the real binary: how a connection the server closes
//! ends (its answers survive, no reset).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Server;
use socket2::{Domain, Socket, Type};

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

/// A client socket with a small receive buffer: the server's answers then wait in the server's
/// send queue until the test reads them, which is where a reset at close destroys them.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    sock.connect(&addr.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until the end of the stream; the error that ended it instead, if any.
fn read_to_end(s: &mut TcpStream) -> (String, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (String::from_utf8_lossy(&got).into_owned(), Some(e)),
        }
    }
}

/// Sends `good` pipelined requests, a malformed one and `junk` more bytes; returns the socket.
fn pipeline_with_a_bad_request(addr: SocketAddr, good: usize, junk: usize) -> TcpStream {
    let mut s = small_window_client(addr);
    let mut req = HEALTH.repeat(good).into_bytes();
    req.extend_from_slice(b"GARBAGE\r\n\r\n");
    req.extend(std::iter::repeat_n(b'x', junk));
    // The old server reset the connection as soon as it had answered: later writes could fail.
    let _ = s.write_all(&req);
    s
}

#[test]
fn answers_before_a_bad_request_in_a_pipeline_survive_the_close() {
    let s = Server::start();
    let good = 60;
    for round in 0..50 {
        let mut conn = pipeline_with_a_bad_request(s.addr, good, 32 * 1024);
        let (got, err) = read_to_end(&mut conn);
        assert!(
            err.is_none(),
            "round {round}: {err:?} after {} answers",
            got.matches("HTTP/1.1 ").count()
        );
        assert_eq!(
            got.matches("HTTP/1.1 200 OK").count(),
            good,
            "round {round}"
        );
        let last = got.rsplit("HTTP/1.1 ").next().unwrap_or("");
        assert!(last.starts_with("400 "), "round {round}: {last:?}");
        assert!(last.contains("Connection: close"), "{last}");
    }
}

/// Writes `chunk`s until a write fails; the bytes written before that, and when it failed.
fn write_until_refused(s: &mut TcpStream, limit: usize) -> (usize, Option<Instant>) {
    let chunk = [b'y'; 4096];
    let mut written = 0;
    while written < limit {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => return (written, Some(Instant::now())),
        }
    }
    (written, None)
}

#[test]
fn a_closing_connection_reads_at_most_64_kib_more() {
    // A long close timeout: only the byte limit can end this connection soon.
    let s = Server::start_with("close_timeout_ms = 20000", "");
    let mut conn = pipeline_with_a_bad_request(s.addr, 1, 0);
    let (got, err) = read_to_end(&mut conn);
    assert!(
        err.is_none() && got.contains("HTTP/1.1 400 "),
        "{err:?} {got}"
    );
    let start = Instant::now();
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (written, refused) = write_until_refused(&mut conn, 64 << 20);
    let refused = refused.expect("the server kept reading 64 MiB");
    assert!(written >= 64 * 1024, "refused after {written} bytes");
    assert!(refused - start < Duration::from_secs(5));
}

#[test]
fn a_closing_connection_is_dropped_after_the_close_timeout() {
    let s = Server::start_with("close_timeout_ms = 1000", "");
    let mut conn = pipeline_with_a_bad_request(s.addr, 1, 0);
    let (got, err) = read_to_end(&mut conn);
    assert!(
        err.is_none() && got.contains("HTTP/1.1 400 "),
        "{err:?} {got}"
    );
    let start = Instant::now();
    // A byte every 50 ms is read and discarded while the server lingers; once it has closed, the
    // next byte draws a reset and the one after fails.
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(5) {
        if conn.write_all(b"z").is_err() {
            failed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = failed.expect("the connection was never closed");
    assert!(
        failed >= Duration::from_millis(500),
        "closed at once: {failed:?}"
    );
}
