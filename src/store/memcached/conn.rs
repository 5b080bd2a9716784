//! Connections to one memcached server: buffered, pipelined, blocking with a deadline.
//!
//! A storage thread takes a connection per server it needs, writes every command of a round with
//! one `write`, and reads the replies back with as few `read`s as they take. Connections are kept
//! idle per server and reused, so a round costs about two system calls per server whatever the
//! number of commands in it.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use log::{debug, warn};

use super::wire::{self, Cmd, ProtocolError, Reply};

/// Reads are made into a buffer this large.
const READ_CHUNK: usize = 32 * 1024;
/// Idle connections kept per server; more are closed when handed back.
const MAX_IDLE: usize = 512;
/// The per-server marker of this memcached process's data (see `health`).
pub const MARKER_KEY: &str = "g/marker";

/// System calls and commands sent, for the metrics (`simplepush_memcached_*`).
pub static SYSCALLS: AtomicU64 = AtomicU64::new(0);
/// Commands sent.
pub static COMMANDS: AtomicU64 = AtomicU64::new(0);
/// Rounds tried a second time after a slow, broken or garbled answer.
pub static RETRIES: AtomicU64 = AtomicU64::new(0);

/// Why a round with a server failed.
#[derive(Debug)]
pub enum ConnError {
    /// Connect, read or write failed, or timed out.
    Io(io::Error),
    /// The server's reply made no sense.
    Protocol(ProtocolError),
    /// The server is marked down, refused, or lost its data since this node last looked.
    Unusable,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Protocol(e) => write!(f, "{e}"),
            ConnError::Unusable => write!(f, "server marked down"),
        }
    }
}

/// One TCP connection.
pub struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl Conn {
    /// Connects, with `timeout` for the connect and for every read and write after it.
    pub fn open(addr: &str, timeout: Duration) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Conn {
                        stream,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes every command with as few writes as the socket takes.
    pub fn send(&mut self, cmds: &[Cmd]) -> Result<(), ConnError> {
        self.wbuf.clear();
        for c in cmds {
            wire::encode(c, &mut self.wbuf);
        }
        COMMANDS.fetch_add(cmds.len() as u64, Ordering::Relaxed);
        let mut at = 0;
        while at < self.wbuf.len() {
            SYSCALLS.fetch_add(1, Ordering::Relaxed);
            match self.stream.write(&self.wbuf[at..]) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads one reply per command, in order.
    pub fn recv(&mut self, cmds: &[Cmd]) -> Result<Vec<Reply>, ConnError> {
        let mut replies = Vec::with_capacity(cmds.len());
        let mut at = 0;
        for c in cmds {
            loop {
                match wire::parse(c, &self.rbuf[at..]).map_err(ConnError::Protocol)? {
                    Some((r, used)) => {
                        replies.push(r);
                        at += used;
                        break;
                    }
                    None => {
                        self.rbuf.drain(..at);
                        at = 0;
                        self.fill()?;
                    }
                }
            }
        }
        self.rbuf.drain(..at);
        Ok(replies)
    }

    /// Sends the commands and reads their replies.
    pub fn call(&mut self, cmds: &[Cmd]) -> Result<Vec<Reply>, ConnError> {
        self.send(cmds)?;
        self.recv(cmds)
    }

    fn fill(&mut self) -> Result<(), ConnError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            SYSCALLS.fetch_add(1, Ordering::Relaxed);
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }
}

/// Whether a server can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not reached yet, or failed: the probe thread tries it again.
    Down = 0,
    /// Answering, checked (no eviction, marker known).
    Up = 1,
    /// Reachable but evicts items while `allow_eviction` is off: never used.
    Refused = 2,
}

/// One memcached server: its address, state, known data marker and idle connections.
pub struct Server {
    /// `host:port`.
    pub addr: String,
    timeout: Duration,
    state: AtomicU8,
    /// The marker this node last saw on the server; a connection that finds another is refused.
    marker: Mutex<Option<String>>,
    idle: Mutex<Vec<Conn>>,
    /// Probes in a row that got no answer.
    probe_misses: AtomicU8,
}

impl Server {
    /// A server not reached yet.
    pub fn new(addr: &str, timeout: Duration) -> Server {
        Server {
            addr: addr.to_string(),
            timeout,
            state: AtomicU8::new(State::Down as u8),
            marker: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            probe_misses: AtomicU8::new(0),
        }
    }

    /// Its state now.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::SeqCst) {
            1 => State::Up,
            2 => State::Refused,
            _ => State::Down,
        }
    }

    /// Sets the state; whether it changed.
    pub fn set_state(&self, s: State) -> bool {
        self.state.swap(s as u8, Ordering::SeqCst) != s as u8
    }

    /// Usable for operations now.
    pub fn up(&self) -> bool {
        self.state() == State::Up
    }

    /// The marker this node knows for the server.
    pub fn marker(&self) -> Option<String> {
        self.marker.lock().map_or(None, |m| m.clone())
    }

    /// Records the marker the probe found.
    pub fn set_marker(&self, m: Option<String>) {
        if let Ok(mut g) = self.marker.lock() {
            *g = m;
        }
    }

    /// A fresh connection, not from the idle list (the probe's own).
    pub fn open(&self) -> Result<Conn, ConnError> {
        SYSCALLS.fetch_add(1, Ordering::Relaxed);
        Conn::open(&self.addr, self.timeout).map_err(ConnError::Io)
    }

    /// An idle connection, or a new one (see `open_checked`).
    pub fn checkout(&self) -> Result<Conn, ConnError> {
        if !self.up() {
            return Err(ConnError::Unusable);
        }
        if let Some(c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(c);
        }
        self.open_checked()
    }

    /// A new connection whose server still holds the marker this node knows (a restarted
    /// memcached must be noticed by the probe before any operation reads it as empty).
    fn open_checked(&self) -> Result<Conn, ConnError> {
        let mut c = self.open().inspect_err(|e| self.failed(e))?;
        let found = c
            .call(&[Cmd::Get(MARKER_KEY.into())])
            .inspect_err(|e| self.failed(e))?;
        let now = match found.first() {
            Some(Reply::Value { data, .. }) => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        };
        if now.is_none() || now != self.marker() {
            self.mark_down("its data marker changed");
            return Err(ConnError::Unusable);
        }
        Ok(c)
    }

    /// Hands a healthy connection back for reuse.
    pub fn checkin(&self, c: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(c);
            }
        }
    }

    /// Marks the server down and closes its idle connections (they may hold late replies).
    pub fn mark_down(&self, why: &str) {
        if self.state() == State::Up && self.set_state(State::Down) {
            warn!(
                "memcached unavailable: {} ({why}); its keys answer 503 until the probe finds \
                 it back",
                self.addr
            );
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        self.probe_answered();
    }

    /// Runs one round of commands. A failed round is tried once more on a new connection, so
    /// one slow or garbled answer is not an outage; a second failure marks the server down.
    pub fn round(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, ConnError> {
        let mut conn = self.checkout()?;
        match conn.call(cmds) {
            Ok(r) => {
                self.checkin(conn);
                Ok(r)
            }
            Err(e) => {
                drop(conn);
                self.retry(cmds, &e)
            }
        }
    }

    /// The second try of a round that failed on a connection (dropped: it may hold a late
    /// reply). Commands are safe to repeat: writes are conditional (CAS or add), so one that
    /// took effect the first time comes back as a conflict and is redone from a fresh read.
    fn retry(&self, cmds: &[Cmd], first: &ConnError) -> Result<Vec<Reply>, ConnError> {
        match first {
            ConnError::Unusable => return Err(ConnError::Unusable),
            ConnError::Protocol(e) => {
                warn!("memcached {}: {e}; retrying on a new connection", self.addr)
            }
            ConnError::Io(e) => debug!("memcached {}: {e}; retrying once", self.addr),
        }
        RETRIES.fetch_add(1, Ordering::Relaxed);
        let mut fresh = self.open_checked()?;
        let r = fresh.call(cmds).inspect_err(|e| self.failed(e))?;
        self.checkin(fresh);
        Ok(r)
    }

    /// Counts a failed probe; whether it is the second in a row (then the server is down: one
    /// slow answer under load is not).
    pub fn probe_missed(&self) -> bool {
        self.probe_misses.fetch_add(1, Ordering::SeqCst) >= 1
    }

    /// A probe answered.
    pub fn probe_answered(&self) {
        self.probe_misses.store(0, Ordering::SeqCst);
    }

    fn failed(&self, e: &ConnError) {
        if !matches!(e, ConnError::Unusable) {
            self.mark_down(&e.to_string());
        }
    }
}

/// Runs rounds on several servers at once: every server's commands are written before any reply
/// is read, so the servers work in parallel and the round costs one round trip.
pub fn rounds(
    servers: &[Server],
    batches: &[(usize, Vec<Cmd>)],
) -> Vec<Result<Vec<Reply>, ConnError>> {
    if batches.len() == 1 {
        let (i, cmds) = &batches[0];
        return vec![servers[*i].round(cmds)];
    }
    let mut open: Vec<Result<Conn, ConnError>> = batches
        .iter()
        .map(|(i, cmds)| {
            let mut c = servers[*i].checkout()?;
            c.send(cmds)?;
            Ok(c)
        })
        .collect();
    let mut out = Vec::with_capacity(batches.len());
    for ((i, cmds), conn) in batches.iter().zip(open.drain(..)) {
        let server = &servers[*i];
        let result = conn.and_then(|mut c| c.recv(cmds).map(|r| (c, r)));
        out.push(match result {
            Ok((c, r)) => {
                server.checkin(c);
                Ok(r)
            }
            Err(e) => server.retry(cmds, &e),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// A stand-in for memcached that answers the marker check, then `answer` to the next
    /// command, on each of `conns` connections in turn.
    fn fake(answers: Vec<&'static str>) -> (String, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let mut served = 0;
            for answer in answers {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let _ = out.write_all(b"VA 3 c1 t-1\r\nabc\r\n");
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let _ = out.write_all(answer.as_bytes());
                served += 1;
            }
            served
        });
        (addr, t)
    }

    #[test]
    fn a_reply_that_does_not_parse_is_retried_once_on_a_new_connection() {
        let (addr, t) = fake(vec!["GARBAGE here\r\n", "EN\r\n"]);
        let s = Server::new(&addr, Duration::from_secs(2));
        s.set_marker(Some("abc".into()));
        s.set_state(State::Up);
        let r = s.round(&[Cmd::Get("u/x".into())]).unwrap();
        assert!(matches!(r[..], [Reply::Miss]));
        assert!(s.up(), "one bad reply does not mark the server down");
        assert_eq!(t.join().unwrap(), 2, "the second try used a new connection");
    }

    #[test]
    fn two_bad_replies_fail_the_round_without_a_panic() {
        let (addr, t) = fake(vec!["VA x\r\n", "NOPE\r\n"]);
        let s = Server::new(&addr, Duration::from_secs(2));
        s.set_marker(Some("abc".into()));
        s.set_state(State::Up);
        assert!(matches!(
            s.round(&[Cmd::Get("u/x".into())]),
            Err(ConnError::Protocol(_))
        ));
        t.join().unwrap();
    }

    #[test]
    fn a_new_connection_to_a_server_with_another_marker_is_refused() {
        let (addr, t) = fake(vec!["EN\r\n"]);
        let s = Server::new(&addr, Duration::from_secs(2));
        s.set_marker(Some("something else".into()));
        s.set_state(State::Up);
        assert!(matches!(s.checkout(), Err(ConnError::Unusable)));
        assert!(!s.up(), "marked down until the probe has looked");
        drop(t);
    }
}
