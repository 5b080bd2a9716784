//! App-server side: a small pool of keep-alive HTTP/1.1 connections (https:// in TLS) to one
//! endpoint address, on the same mio loop. Pushes (SimplePush PUTs, WebPush POSTs) are pipelined
//! (answers come back in order) up to a depth per connection; a connection that fails is
//! reopened after a pause, a bounded number of times.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::client::io_kind;
use crate::net;
use crate::stream::{Stream, TlsTarget};

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Pause before reopening a failed connection.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Reopens allowed per connection per run.
const MAX_REOPENS: u32 = 50;
/// Bytes read per readiness event before yielding (the socket is re-armed).
const READ_BUDGET: usize = 1 << 20;

/// What the pool reports.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpOut {
    /// The PUT with this id was answered with this status.
    Answer(u64, u16),
    /// The PUT with this id will never be answered (its connection failed).
    Lost(u64),
    /// A connection failed and will be reopened.
    Reopen(String),
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum State {
    Closed,
    Connecting,
    Open,
}

struct Conn {
    state: State,
    /// The socket while connecting; the stream (TLS or not) once open.
    sock: Option<TcpStream>,
    stream: Option<Stream>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    /// Ids of the PUTs written and not yet answered, oldest first.
    inflight: VecDeque<u64>,
    retry_at: Instant,
    reopens: u32,
}

pub struct Pool {
    authority: String,
    /// `scheme://authority`: the VAPID audience of pushes sent here.
    audience: String,
    addr: SocketAddr,
    tls: Option<TlsTarget>,
    conns: Vec<Conn>,
    depth: usize,
    /// Token of connection 0; connection i uses token_base + i.
    token_base: usize,
    next: usize,
    /// Connections are opened only once a PUT is wanted (an idle pool would just be closed by
    /// the server's request timeout and reopened, over and over).
    active: bool,
}

impl Pool {
    pub fn new(
        authority: &str,
        addr: SocketAddr,
        tls: Option<TlsTarget>,
        (size, depth): (usize, usize),
        token_base: usize,
    ) -> Self {
        let now = Instant::now();
        let conns = (0..size)
            .map(|_| Conn {
                state: State::Closed,
                sock: None,
                stream: None,
                out: Vec::new(),
                out_pos: 0,
                inbuf: Vec::new(),
                inflight: VecDeque::new(),
                retry_at: now,
                reopens: 0,
            })
            .collect();
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            authority: authority.to_string(),
            audience: format!("{scheme}://{authority}"),
            addr,
            tls,
            conns,
            depth,
            token_base,
            next: 0,
            active: false,
        }
    }

    /// PUTs are wanted: open the connections from now on.
    pub fn activate(&mut self) {
        self.active = true;
    }

    /// Opens (or reopens, once their pause is over) the connections that are closed.
    pub fn maintain(
        &mut self,
        registry: &Registry,
        src: &mut dyn FnMut() -> Option<IpAddr>,
        out: &mut Vec<HttpOut>,
    ) {
        if !self.active {
            return;
        }
        let now = Instant::now();
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.state == State::Closed && now >= c.retry_at && c.reopens <= MAX_REOPENS {
                self.open(i, registry, src(), out);
            }
        }
    }

    fn open(&mut self, i: usize, registry: &Registry, src: Option<IpAddr>, out: &mut Vec<HttpOut>) {
        let token = Token(self.token_base + i);
        let opened = net::connect(self.addr, src).and_then(|mut s| {
            registry.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        let c = &mut self.conns[i];
        c.reopens += 1;
        match opened {
            Ok(s) => {
                c.sock = Some(s);
                c.state = State::Connecting;
            }
            Err(e) => {
                c.retry_at = Instant::now() + RETRY_PAUSE;
                out.push(HttpOut::Reopen(format!("connect: {}", io_kind(&e))));
            }
        }
    }

    /// The origin pushes sent here are for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Room for more PUTs right now.
    pub fn has_room(&self) -> bool {
        self.conns
            .iter()
            .any(|c| c.state == State::Open && c.inflight.len() < self.depth)
    }

    /// Writes `PUT path` with body `version=V` on the least busy open connection. False when
    /// every connection is full or closed.
    pub fn put(&mut self, path: &str, version: u64, id: u64, out: &mut Vec<HttpOut>) -> bool {
        let Some(i) = self.pick() else { return false };
        let body = format!("version={version}");
        let c = &mut self.conns[i];
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            self.authority,
            body.len()
        );
        c.out.extend_from_slice(head.as_bytes());
        c.out.extend_from_slice(body.as_bytes());
        c.inflight.push_back(id);
        self.write(i, out);
        true
    }

    /// Writes `POST path` with `headers` (each ending in CRLF) and a binary body on the least
    /// busy open connection (a WebPush message). False when every connection is full or closed.
    pub fn post(
        &mut self,
        path: &str,
        headers: &str,
        body: &[u8],
        id: u64,
        out: &mut Vec<HttpOut>,
    ) -> bool {
        let Some(i) = self.pick() else { return false };
        let c = &mut self.conns[i];
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\n\r\n",
            self.authority,
            body.len()
        );
        c.out.extend_from_slice(head.as_bytes());
        c.out.extend_from_slice(body);
        c.inflight.push_back(id);
        self.write(i, out);
        true
    }

    fn pick(&mut self) -> Option<usize> {
        let n = self.conns.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let c = &self.conns[i];
            if c.state != State::Open || c.inflight.len() >= self.depth {
                continue;
            }
            if best.is_none_or(|b| c.inflight.len() < self.conns[b].inflight.len()) {
                best = Some(i);
            }
        }
        self.next = (self.next + 1) % n.max(1);
        best
    }

    /// Handles readiness on connection `token - token_base`.
    pub fn on_event(&mut self, token: Token, registry: &Registry, out: &mut Vec<HttpOut>) {
        let i = token.0 - self.token_base;
        if i >= self.conns.len() {
            return;
        }
        if self.conns[i].state == State::Connecting {
            let done = match &self.conns[i].sock {
                Some(s) => net::connect_result(s),
                None => return,
            };
            match done {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => return self.broken(i, format!("connect: {}", io_kind(&e)), out),
            }
            let Some(sock) = self.conns[i].sock.take() else {
                return;
            };
            match Stream::new(sock, self.tls.as_ref()) {
                Ok(s) => {
                    self.conns[i].stream = Some(s);
                    self.conns[i].state = State::Open;
                }
                Err(e) => return self.broken(i, format!("tls: {e}"), out),
            }
        }
        self.write(i, out);
        self.read(i, token, registry, out);
    }

    fn write(&mut self, i: usize, out: &mut Vec<HttpOut>) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else { return };
        if c.state != State::Open {
            return;
        }
        while c.out_pos < c.out.len() {
            match s.write(&c.out[c.out_pos..]) {
                Ok(0) => return self.broken(i, "write: zero".into(), out),
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(i, format!("write: {}", io_kind(&e)), out),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        // TLS records rustls could not hand to the socket yet (plain TCP: nothing to do).
        match s.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.broken(i, format!("write: {}", io_kind(&e)), out),
        }
    }

    fn read(&mut self, i: usize, token: Token, registry: &Registry, out: &mut Vec<HttpOut>) {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        loop {
            let c = &mut self.conns[i];
            let Some(s) = c.stream.as_mut() else { return };
            match s.read(&mut buf) {
                Ok(0) => return self.broken(i, "closed_by_server".into(), out),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.broken(i, format!("read: {}", io_kind(&e)), out),
            }
            if let Err(why) = self.parse(i, out) {
                return self.broken(i, why, out);
            }
            if total >= READ_BUDGET {
                if let Some(s) = self.conns[i].stream.as_mut() {
                    let s = s.tcp_mut();
                    let _ = registry.reregister(s, token, Interest::READABLE | Interest::WRITABLE);
                }
                return;
            }
        }
    }

    /// Takes every complete response out of the input buffer.
    fn parse(&mut self, i: usize, out: &mut Vec<HttpOut>) -> Result<(), String> {
        let c = &mut self.conns[i];
        loop {
            let Some(resp) = parse_response(&c.inbuf)? else {
                if c.inbuf.len() > MAX_HEAD + 1_000_000 {
                    return Err("response too long".into());
                }
                return Ok(());
            };
            c.inbuf.drain(..resp.len);
            let id = c.inflight.pop_front().ok_or("answer to no request")?;
            out.push(HttpOut::Answer(id, resp.status));
            if resp.close {
                return Err("server asked to close".into());
            }
        }
    }

    fn broken(&mut self, i: usize, why: String, out: &mut Vec<HttpOut>) {
        let c = &mut self.conns[i];
        c.stream = None;
        c.sock = None;
        c.state = State::Closed;
        c.out.clear();
        c.out_pos = 0;
        c.inbuf.clear();
        c.retry_at = Instant::now() + RETRY_PAUSE;
        out.extend(c.inflight.drain(..).map(HttpOut::Lost));
        out.push(HttpOut::Reopen(why));
    }

    /// Closes every connection; their unanswered PUTs are reported lost.
    pub fn shutdown(&mut self, out: &mut Vec<HttpOut>) {
        for c in &mut self.conns {
            c.stream = None;
            c.sock = None;
            c.state = State::Closed;
            c.reopens = MAX_REOPENS + 1;
            out.extend(c.inflight.drain(..).map(HttpOut::Lost));
        }
    }
}

struct Response {
    status: u16,
    /// Head plus body, in bytes.
    len: usize,
    close: bool,
}

/// One complete response at the start of `buf`, None if more bytes are needed.
fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response head too long".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".into());
        }
    }
    let length = length.ok_or("response without Content-Length")?;
    let total = end + 4 + length;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        len: total,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_responses() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{";
        let r = parse_response(two).unwrap().unwrap();
        assert_eq!((r.status, r.len, r.close), (200, 40, false));
        assert!(parse_response(&two[r.len..]).unwrap().is_none());
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(closing).unwrap().unwrap().close);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
