//! HTTP/1.1 framing on real sockets against the real binary: chunked request bodies (from curl
//! and from raw sockets), pipelining after them, and how a connection the server closes ends (its
//! answers survive, no reset).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{chid, parse_reply, split_url, Client, HttpReply, Server};
use serde_json::json;
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

/// Whether curl is here; under CI its absence is a failure, elsewhere a loud skip.
fn have_curl() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "curl is not installed");
        eprintln!("SKIP: curl is not installed (apt-get install curl)");
    }
    found
}

/// What curl got and sent.
struct Curled {
    /// The final answer.
    reply: HttpReply,
    /// The request head curl says it sent (`-v`: its lines start with `> `).
    sent: String,
    /// A `100 Continue` came before the answer.
    continued: bool,
}

/// curl sends `body` from a file with `Transfer-Encoding: chunked`.
fn curl_chunked(method: &str, url: &str, headers: &[&str], body: &[u8]) -> Curled {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("sp-chunked-{}-{n}", std::process::id()));
    std::fs::write(&file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-v", "-i", "--max-time", "10", "-X", method]);
    cmd.args(["-H", "Transfer-Encoding: chunked"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", file.display()));
    let out = cmd.arg(url).output().expect("run curl");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let sent: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("> "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    // With Expect: 100-continue the interim answer comes first.
    let last = stdout.rsplit("HTTP/1.1 ").next().unwrap_or("");
    Curled {
        reply: parse_reply(&format!("HTTP/1.1 {last}")),
        sent,
        continued: stdout.contains("HTTP/1.1 100 Continue"),
    }
}

fn assert_sent_chunked(sent: &str) {
    let lower = sent.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{sent}");
    assert!(!lower.contains("content-length"), "{sent}");
}

#[test]
fn curl_sends_a_simplepush_version_chunked() {
    if !have_curl() {
        return;
    }
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let got = curl_chunked("PUT", &ep, &[], b"version=42");
    assert_sent_chunked(&got.sent);
    let r = got.reply;
    assert_eq!(r.status, 200, "{} {}", r.head, r.body);
    assert_eq!(c.recv()["updates"][0]["version"], 42);
}

#[test]
fn curl_sends_a_webpush_message_chunked() {
    if !have_curl() {
        return;
    }
    let s = Server::start();
    let mut c = s.client();
    c.webpush_hello("");
    c.send_json(json!({"messageType":"register","channelID":chid(1)}));
    let reg = c.recv();
    let ep = reg["pushEndpoint"].as_str().expect("endpoint").to_string();
    // An aes128gcm record as an app server streams it (the server never decrypts).
    let record: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    // Expect: 100-continue, as curl sends it for large uploads: the go-ahead comes first.
    let headers = [
        "TTL: 60",
        "Content-Encoding: aes128gcm",
        "Expect: 100-continue",
    ];
    let got = curl_chunked("POST", &ep, &headers, &record);
    assert_sent_chunked(&got.sent);
    assert!(got.continued, "no 100 Continue");
    let r = got.reply;
    assert_eq!(r.status, 201, "{} {}", r.head, r.body);
    let n = c.recv();
    assert_eq!(n["data"], URL_SAFE_NO_PAD.encode(&record));
    assert_eq!(n["headers"]["encoding"], "aes128gcm");
}

/// A SimplePush device and its endpoint's (address, path).
fn device(s: &Server) -> (Client, SocketAddr, String) {
    let mut c = s.client();
    c.hello_new();
    let (addr, path) = split_url(&c.register(&chid(1)));
    (c, addr, path)
}

/// `body` as chunks of at most `size` bytes, each with an extension, and a trailer field.
fn chunks(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend(format!("{:X};n=v\r\n", piece.len()).into_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Checksum: none\r\n\r\n");
    out
}

fn chunked_put(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    req.extend(chunks(body, 3));
    req
}

/// Reads `n` answers (each with Content-Length) from a kept-alive connection.
fn read_answers(s: &mut TcpStream, n: usize) -> Vec<HttpReply> {
    let mut got = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < n {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = parse_reply(head)
                .header("Content-Length")
                .and_then(|v| v.parse().ok())
                .expect("Content-Length");
            if rest.len() >= len {
                answers.push(parse_reply(&text[..head.len() + 4 + len]));
                got.drain(..head.len() + 4 + len);
                continue;
            }
        }
        let k = s.read(&mut buf).expect("an answer");
        assert!(k > 0, "closed after {} answers", answers.len());
        got.extend_from_slice(&buf[..k]);
    }
    answers
}

#[test]
fn chunked_requests_split_across_writes_and_pipelined_are_each_answered() {
    let s = Server::start();
    let (mut c, addr, path) = device(&s);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.set_nodelay(true).unwrap();
    // One chunked request a few bytes per write, so its framing is split across reads.
    for piece in chunked_put(&path, "", b"version=7").chunks(5) {
        conn.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_answers(&mut conn, 1)[0].status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 7);
    // Then three requests in one write: chunked, Content-Length, chunked.
    let mut pipeline = chunked_put(&path, "", b"version=8");
    pipeline.extend_from_slice(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    pipeline.extend(chunked_put(&path, "", b"version=9"));
    conn.write_all(&pipeline).unwrap();
    let answers = read_answers(&mut conn, 3);
    let status: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(status, [200, 200, 200]);
    assert!(
        answers[1].body.contains("\"status\":\"OK\""),
        "{}",
        answers[1].body
    );
    assert_eq!(c.recv()["updates"][0]["version"], 8);
    assert_eq!(c.recv()["updates"][0]["version"], 9);
    // The connection is still kept alive.
    conn.write_all(&chunked_put(&path, "", b"version=10"))
        .unwrap();
    assert_eq!(read_answers(&mut conn, 1)[0].status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 10);
}

/// Sends `req` on a new connection; the first answer and the connection.
fn answer(addr: SocketAddr, req: &[u8]) -> (HttpReply, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    (read_answers(&mut s, 1).remove(0), s)
}

/// Sends `req` on a new connection; the one answer, and whether the connection then closed.
fn answer_then_end(addr: SocketAddr, req: &[u8]) -> (HttpReply, bool) {
    let (answer, mut s) = answer(addr, req);
    let mut rest = [0u8; 64];
    let closed = matches!(s.read(&mut rest), Ok(0));
    (answer, closed)
}

#[test]
fn bad_chunked_framing_is_400_and_closes() {
    let s = Server::start();
    let (mut c, addr, path) = device(&s);
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for framing in [
        &b"9\r\nversion=77\r\n0\r\n\r\n"[..],
        b"zz\r\nversion=7\r\n0\r\n\r\n",
        b"9\nversion=7\r\n0\r\n\r\n",
        b"9\r\nversion=7\n0\r\n\r\n",
        b"9\r\nversion=7\r\n0\r\n\n",
    ] {
        let mut req = head.clone().into_bytes();
        req.extend_from_slice(framing);
        let (r, closed) = answer_then_end(addr, &req);
        let text = String::from_utf8_lossy(framing);
        assert_eq!(r.status, 400, "{text:?}: {}", r.body);
        assert!(r.body.contains("chunked"), "{}", r.body);
        assert!(closed, "{text:?}");
    }
    // Content-Length with Transfer-Encoding: the smuggling shape, refused whatever the order.
    for both in [
        format!("PUT {path} HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nversion=7\r\n0\r\n\r\n"),
        format!("PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\nversion=7"),
    ] {
        let (r, closed) = answer_then_end(addr, both.as_bytes());
        assert_eq!((r.status, closed), (400, true), "{both:?}");
    }
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn other_transfer_codings_are_501() {
    let s = Server::start();
    let (mut c, addr, path) = device(&s);
    for coding in ["gzip", "gzip, chunked", "chunked, chunked", "identity"] {
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n9\r\nversion=7\r\n0\r\n\r\n"
        );
        let (r, closed) = answer_then_end(addr, req.as_bytes());
        assert_eq!((r.status, closed), (501, true), "{coding}: {}", r.body);
    }
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn chunked_bodies_over_the_limit_are_413_as_soon_as_a_size_says_so() {
    let s = Server::start_with("", "[endpoint]\nmax_body_size = 2000\n");
    let (mut c, addr, path) = device(&s);
    // The size line alone: the answer comes before any data is sent.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.write_all(format!("{head}7D1\r\n").as_bytes()).unwrap();
    let r = read_answers(&mut conn, 1).remove(0);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.head.contains("Connection: close"));
    // Chunks that each fit but add up to one byte too many.
    let over = format!("version=5&data={}", "a".repeat(2001 - 15));
    let mut req = head.clone().into_bytes();
    req.extend(chunks(over.as_bytes(), 200));
    let (r, closed) = answer_then_end(addr, &req);
    assert_eq!((r.status, closed), (413, true), "{}", r.body);
    c.expect_silence(Duration::from_millis(200));
    // Exactly the limit is taken.
    let exact = format!("version=5&data={}", "a".repeat(2000 - 15));
    let mut req = head.into_bytes();
    req.extend(chunks(exact.as_bytes(), 200));
    let (r, _) = answer(addr, &req);
    assert_eq!(r.status, 200, "{}", r.body);
    let n = c.recv();
    assert_eq!(n["updates"][0]["version"], 5);
    assert_eq!(n["updates"][0]["data"].as_str().map(str::len), Some(1985));
}

#[test]
fn a_chunked_trailer_over_the_head_limit_is_431() {
    let s = Server::start();
    let (mut c, addr, path) = device(&s);
    let req = format!(
        "PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nversion=7\r\n0\r\nX-Big: {}\r\n\r\n",
        "t".repeat(9000)
    );
    let (r, closed) = answer_then_end(addr, req.as_bytes());
    assert_eq!((r.status, closed), (431, true), "{}", r.body);
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_chunked_http_1_0_request_is_answered_then_closed() {
    let s = Server::start();
    let (mut c, addr, path) = device(&s);
    let req = format!(
        "PUT {path} HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nversion=3\r\n0\r\n\r\n"
    );
    let (r, closed) = answer_then_end(addr, req.as_bytes());
    assert_eq!((r.status, closed), (200, true), "{}", r.body);
    assert!(r.head.contains("Connection: close"));
    assert_eq!(c.recv()["updates"][0]["version"], 3);
}
