//! Test harness: the real `simplepush` binary on a free loopback port, and real WebSocket and HTTP clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    /// The WebSocket listener (and endpoint, unless split).
    pub addr: SocketAddr,
    /// The endpoint listener when split.
    pub endpoint_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`), on a free port unless the test configured it.
    pub admin_addr: Option<SocketAddr>,
    /// Every listener, in the order the server logs them (WebSocket, endpoint if split, router).
    pub addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// The memcached this server uses, when the test backend is memcached.
    pub memcached: Option<Memcached>,
}

/// Whether the suite runs against memcached (`PUSH_TEST_BACKEND=memcached`).
pub fn memcached_backend() -> bool {
    std::env::var("PUSH_TEST_BACKEND").as_deref() == Ok("memcached")
}

/// Whether the suite runs against the disk store (`PUSH_TEST_BACKEND=disk`), each server in a
/// data directory of its own.
pub fn disk_backend() -> bool {
    std::env::var("PUSH_TEST_BACKEND").as_deref() == Ok("disk")
}

/// The `[storage]` section of a disk store in `dir`, with more keys.
pub fn disk_section(dir: &std::path::Path, keys: &str) -> String {
    format!(
        "[storage]\nbackend = \"disk\"\npath = \"{}\"\n{keys}\n",
        dir.display()
    )
}

impl Server {
    /// Starts with defaults on an ephemeral port.
    pub fn start() -> Server {
        Server::start_with("", "")
    }

    /// Starts with extra `[server]` keys and extra sections appended.
    pub fn start_with(server_keys: &str, sections: &str) -> Server {
        Server::start_env(server_keys, sections, &[])
    }

    /// [`Server::start_with`], with environment variables too (they win over the file, and over
    /// the harness's own: `SIMPLEPUSH_RATE_LIMIT_*` turn the rate limits back on).
    pub fn start_env(server_keys: &str, sections: &str, env: &[(&str, &str)]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "sp-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        let memcached = memcached_backend().then(Memcached::start);
        let mut storage = memcached
            .as_ref()
            .map(|m| memcached_section(&[m.addr]))
            .unwrap_or_default();
        if disk_backend() {
            storage = disk_section(&dir.join("data"), "");
        }
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{server_keys}\n{sections}\n{storage}\n"),
        )
        .unwrap();
        let mut s = Server::spawn(&["--config", cfg.to_str().unwrap()], env);
        s.memcached = memcached;
        s
    }

    /// Spawns the binary with these arguments and environment.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_env(env!("CARGO_BIN_EXE_simplepush"), args, env)
    }

    /// Spawns another program (a wrapper that execs the server).
    pub fn spawn_program(program: &str, args: &[&str]) -> Server {
        Server::spawn_env(program, args, &[])
    }

    fn spawn_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(program);
        // Tests run in parallel: the admin listener's default port would be shared by all.
        cmd.env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0");
        // Tests make devices by the hundred a second, all from 127.0.0.1: no per-source limits
        // (tests/rate_limit.rs sets its own, which win, being set after these).
        cmd.env("SIMPLEPUSH_RATE_LIMIT_NEW_UAIDS_PER_MINUTE", "0");
        cmd.env("SIMPLEPUSH_RATE_LIMIT_REGISTERS_PER_MINUTE", "0");
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn simplepush");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" admin listener on ").nth(1) {
                    let _ = tx.send(format!("admin {}", rest.split(' ').next().unwrap_or("")));
                }
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut admin_addr = None;
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
            match line.strip_prefix("admin ") {
                Some(a) => admin_addr = a.parse().ok(),
                None => break line,
            }
        };
        let addrs: Vec<SocketAddr> = line
            .split(" (")
            .next()
            .unwrap()
            .split(" and ")
            .map(|a| a.parse().unwrap())
            .collect();
        Server {
            child,
            addr: addrs[0],
            endpoint_addr: addrs.get(1).copied(),
            admin_addr,
            addrs,
            log,
            memcached: None,
        }
    }

    /// The process id (of the wrapper, for `start_with_fd_limit`, which execs the server).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// `GET /metrics` on the admin listener: each sample line's name (labels included) → value.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let addr = self.admin_addr.expect("admin listener");
        let r = request(addr, "GET", "/metrics", &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A new WebSocket client.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and waits for the exit status (at most `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.child.id(), 15);
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal (`1` for SIGHUP) to the server process.
    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.child.id(), sig);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What one read from the socket produced.
#[derive(Debug, PartialEq)]
pub enum Got {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The server's close frame (code, if any).
    Close(Option<u16>),
    /// Nothing within the wait.
    Nothing,
    /// The TCP connection ended without a close frame.
    Eof,
}

/// A blocking WebSocket client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// Connects and completes the upgrade.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        // A server that never answers fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("upgrade");
        Client { ws }
    }

    /// Sends a text frame.
    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Sends a JSON value as a text frame.
    pub fn send_json(&mut self, v: Value) {
        self.send(&v.to_string());
    }

    /// Reads one frame, waiting at most `wait`.
    pub fn next(&mut self, wait: Duration) -> Got {
        self.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Got::Text(t.to_string()),
                Ok(Message::Binary(b)) => return Got::Binary(b.to_vec()),
                Ok(Message::Close(f)) => {
                    return Got::Close(f.map(|f: CloseFrame| u16::from(f.code)))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Nothing
                }
                Err(_) => return Got::Eof,
            }
        }
    }

    /// Reads one JSON message (panics on anything else within 5 s).
    pub fn recv(&mut self) -> Value {
        match self.next(Duration::from_secs(5)) {
            Got::Text(t) => serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON: {t}")),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads one raw text frame.
    pub fn recv_text(&mut self) -> String {
        match self.next(Duration::from_secs(5)) {
            Got::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        let got = self.next(wait);
        assert_eq!(got, Got::Nothing, "expected no message");
    }

    /// Asserts the server closes with a close frame next (no other message first).
    pub fn expect_close(&mut self) -> Option<u16> {
        match self.next(Duration::from_secs(5)) {
            Got::Close(code) => code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// hello; returns the reply.
    pub fn hello(&mut self, uaid: &str, channels: &[&str]) -> Value {
        self.send_json(json!({"messageType":"hello","uaid":uaid,"channelIDs":channels}));
        let reply = self.recv();
        assert_eq!(reply["status"], 200, "hello failed: {reply}");
        reply
    }

    /// A WebPush hello as Firefox sends it (a new UAID when `uaid` is empty); returns the reply.
    pub fn webpush_hello(&mut self, uaid: &str) -> Value {
        let mut hello = json!({"messageType":"hello","broadcasts":{},"use_webpush":true});
        if !uaid.is_empty() {
            hello["uaid"] = uaid.into();
        }
        self.send_json(hello);
        let reply = self.recv();
        assert_eq!(reply["status"], 200, "hello failed: {reply}");
        reply
    }

    /// Acks a WebPush message (code 100, delivered).
    pub fn ack_message(&mut self, chid: &str, id: &str) {
        self.send_json(
            json!({"messageType":"ack","updates":[{"channelID":chid,"version":id,"code":100}]}),
        );
    }

    /// hello with a new UAID; returns it.
    pub fn hello_new(&mut self) -> String {
        self.hello("", &[])["uaid"].as_str().unwrap().to_string()
    }

    /// register; returns the endpoint URL.
    pub fn register(&mut self, chid: &str) -> String {
        self.send_json(json!({"messageType":"register","channelID":chid}));
        let reply = self.recv();
        assert_eq!(reply["status"], 200, "register failed: {reply}");
        assert_eq!(reply["channelID"], chid);
        reply["pushEndpoint"].as_str().unwrap().to_string()
    }

    /// ack one version.
    pub fn ack(&mut self, chid: &str, version: u64) {
        self.send_json(
            json!({"messageType":"ack","updates":[{"channelID":chid,"version":version}]}),
        );
    }

    /// Sends a close frame.
    pub fn close(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// A fresh random-looking dashed channel ID.
pub fn chid(n: u32) -> String {
    format!("{n:08x}-8e2b-4b47-b370-51098daa8401")
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpReply {
    /// A header's value (the first of that name, any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends raw request bytes and reads the whole response (the request should say Connection: close).
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_reply(&String::from_utf8_lossy(&buf))
}

/// Parses one response.
pub fn parse_reply(text: &str) -> HttpReply {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    HttpReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A request with a body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: impl AsRef<[u8]>,
) -> HttpReply {
    let body = body.as_ref();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw_http(addr, &bytes)
}

/// PUT a form body to an endpoint URL.
pub fn put(endpoint: &str, body: &str) -> HttpReply {
    let (addr, path) = split_url(endpoint);
    request(
        addr,
        "PUT",
        &path,
        &["Content-Type: application/x-www-form-urlencoded"],
        body,
    )
}

/// PUT a form body; `None` when the connection closed without an answer (e.g. refused at a limit).
pub fn try_put(endpoint: &str, body: &str) -> Option<HttpReply> {
    let (addr, path) = split_url(endpoint);
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    (!buf.is_empty()).then(|| parse_reply(&String::from_utf8_lossy(&buf)))
}

/// `http://host:port/path` → (address, path).
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    (host.parse().unwrap(), path.to_string())
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Server {
    /// Starts the binary under `sh -c 'ulimit -n LIMIT; exec …'`, with defaults on an ephemeral port.
    pub fn start_with_fd_limit(limit: u32) -> Server {
        let cfg = std::env::temp_dir().join(format!("sp-fd-{}.toml", std::process::id()));
        std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let script = format!(
            "ulimit -n {limit} && exec {} --config {}",
            env!("CARGO_BIN_EXE_simplepush"),
            cfg.display()
        );
        Server::spawn_program("sh", &["-c", &script])
    }
}

/// A memcached process on a free loopback port, killed on drop.
pub struct Memcached {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
}

/// Whether the memcached binary is here; under CI its absence is a failure, elsewhere a loud skip.
pub fn have_memcached() -> bool {
    let found = Command::new("memcached")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "memcached is not installed (apt-get install memcached)"
        );
        eprintln!("SKIP: memcached is not installed (apt-get install memcached)");
    }
    found
}

impl Memcached {
    /// Starts memcached on a free port.
    pub fn start() -> Memcached {
        Memcached::start_with(&[])
    }

    /// Starts memcached on a free port with extra arguments (they win over the defaults).
    pub fn start_with(extra: &[&str]) -> Memcached {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(m) = Memcached::start_on_with(port, extra) {
                return m;
            }
        }
        panic!("could not start memcached");
    }

    /// Starts memcached on this port (`None` if it did not come up).
    pub fn start_on(port: u16) -> Option<Memcached> {
        Memcached::start_on_with(port, &[])
    }

    /// Starts memcached on this port with extra arguments. `-M` (no eviction) as production needs.
    pub fn start_on_with(port: u16, extra: &[&str]) -> Option<Memcached> {
        Memcached::launch(port, extra, true, None)
    }

    /// Starts memcached with every command it gets written to `log` (`-vv`).
    pub fn start_logged(log: &std::path::Path) -> Memcached {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Memcached::launch(port, &["-vv"], true, Some(log)).expect("memcached started")
    }

    /// Starts memcached as it runs by default: evicting items when full (no `-M`).
    pub fn start_evicting() -> Memcached {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Memcached::launch(port, &[], false, None).expect("memcached started")
    }

    fn launch(
        port: u16,
        extra: &[&str],
        no_evict: bool,
        log: Option<&std::path::Path>,
    ) -> Option<Memcached> {
        let port_text = port.to_string();
        let mut args = vec![
            "-l",
            "127.0.0.1",
            "-p",
            &port_text,
            "-U",
            "0",
            "-m",
            "64",
            "-u",
            "root",
        ];
        if no_evict {
            args.push("-M");
        }
        args.extend_from_slice(extra);
        let child = Command::new("memcached")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).ok()?),
                None => Stdio::null(),
            })
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut m = Memcached { child, addr };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if TcpStream::connect(addr).is_ok() {
                return Some(m);
            }
            if let Ok(Some(_)) = m.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = m.child.kill();
        None
    }

    /// The number of items it holds.
    pub fn items(&self) -> u64 {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"stats\r\n").unwrap();
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while !all.ends_with("END\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        all.lines()
            .find_map(|l| l.strip_prefix("STAT curr_items "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Stops it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server on memcached `mc` with endpoint token key `key` and more config `sections`, once it
/// has reached memcached (a register before that is a 503, which a loaded machine made happen).
pub fn memcached_node(mc: &Memcached, key: &str, sections: &str) -> Server {
    let s = Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{key}\"]\n{}\n{sections}\n",
            memcached_section(&[mc.addr])
        ),
    );
    assert!(s.wait_log("memcached reachable"), "{}", s.log());
    s
}

/// The `[storage]` section for these memcached servers.
pub fn memcached_section(servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[storage]\nbackend = \"memcached\"\nservers = [{}]\ntimeout_ms = 300\n",
        list.join(", ")
    )
}
