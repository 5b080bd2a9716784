//! The event loop: one `mio::Poll`, a slab of connections, timers, and the effects `sm` asks for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use sm::message::HelloUaid;
use sm::update::Outcome;
use sm::{Effect, Id, Inbound, Limits, Session, StoreOp, StoreReply, Uaid};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Config;
use crate::endpoint::{self, Route};
use crate::http::{self, Head, Parsed, Response};
use crate::registry::Registry;
use crate::router::{self, RouteRequest};
use crate::store::memcached::{self, MemcachedStore};
use crate::store::memory::MemoryStore;
use crate::store::workers::Pool;
use crate::store::{ConnRef, Delivery, Done, Job, PutResult, Runner, Unavailable};
use crate::token::Tokens;
use crate::ws::{Incoming, Link};

const SIGNALS: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const LISTENER_BASE: usize = usize::MAX - 16;
const READ_CHUNK: usize = 4096;
/// Messages or requests handled per connection per wakeup, so that one busy peer cannot starve the rest.
const BUDGET: usize = 64;

/// What a listener serves.
#[derive(Clone, Copy, Debug)]
struct Roles {
    websocket: bool,
    endpoint: bool,
    router: bool,
}

struct Listener {
    socket: TcpListener,
    roles: Roles,
}

/// An HTTP connection reading a request or writing a response.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    close_after: bool,
    /// `Some(keep_alive)` while the request's answer waits on storage or another node.
    waiting: Option<bool>,
    /// `100 Continue` was sent for the request being read.
    continued: bool,
}

/// A WebSocket with its protocol session.
struct WsConn {
    link: Link,
    session: Session,
    /// The UAID this socket is registered for, kept here because a closed session forgets it.
    bound: Option<Uaid>,
    /// Our close frame is out (or the peer's was read): only waiting for the end.
    closing: bool,
}

// The WebSocket variant is the long-lived, common one: boxing it would add an allocation and a
// pointer to every idle connection, while the short-lived HTTP states merely waste some padding.
#[allow(clippy::large_enum_variant)]
enum State {
    Http(HttpConn),
    Ws(WsConn),
    /// Only for the instant a connection changes state; its socket is in hand.
    Moving,
}

struct Conn {
    gen: u32,
    /// Monotonic ms at which the current timer fires; 0 = none.
    deadline: u64,
    /// The time of this connection's entry in the timer heap; 0 = none. A later deadline reuses
    /// it (re-armed when it fires), so the heap holds about one entry per connection.
    queued: u64,
    roles: Roles,
    state: State,
}

/// This node's place in a cluster.
struct Cluster {
    url: String,
    secret: String,
    timeout: Duration,
}

/// A WebSocket handed from the event loop that accepted it to the one that owns its UAID.
pub struct Adopted {
    link: Link,
    session: Session,
    /// The hello that named the UAID, to be handled by the new owner.
    payload: Vec<u8>,
}

/// Messages between the event loops of one process.
pub enum Cross {
    /// Take over this WebSocket.
    Adopt(Box<Adopted>),
    /// A storage job for a UAID this loop owns (an update to store and deliver, a cluster
    /// forward to check and deliver); its answer goes back to the job's connection.
    Store(Job),
    /// A cluster kick for a UAID this loop owns.
    Kick {
        /// The UAID.
        uaid: Uaid,
        /// The socket named by the node record.
        conn: String,
    },
    /// The answer to a request that waited on another loop.
    Answer {
        /// The waiting request.
        conn: ConnRef,
        /// Its response.
        resp: Response,
    },
    /// Stop: the process is shutting down.
    Shutdown,
}

/// What the event loops of one process share: mailboxes and counters, no locks.
pub struct Peers {
    mail: Vec<(Sender<Cross>, Arc<mio::Waker>)>,
    /// Live UAIDs per loop, for `/status`.
    clients: Vec<AtomicUsize>,
    /// Open connections in the whole process, for `max_connections`.
    open: AtomicUsize,
}

impl Peers {
    /// Mails `msg` to a loop; gives it back if that loop has already stopped.
    fn send(&self, worker: usize, msg: Cross) -> Result<(), Cross> {
        let Some((tx, waker)) = self.mail.get(worker) else {
            return Err(msg);
        };
        tx.send(msg).map_err(|e| e.0)?;
        let _ = waker.wake();
        Ok(())
    }
}

/// The event loop that owns a UAID: its socket, its registry entry and (memory store) its records.
pub fn owner(uaid: &Uaid, loops: usize) -> usize {
    (crate::store::ring::hash(uaid.0.bytes()) & 0xffff_ffff) as usize % loops.max(1)
}

/// A fresh UAID owned by loop `id` of `loops`.
fn fresh_owned(id: usize, loops: usize) -> [u8; 16] {
    loop {
        let b = fresh_uaid_bytes();
        if owner(&Uaid(Id::fresh(b)), loops) == id {
            return b;
        }
    }
}

/// One event loop: its listeners, connections and everything they share. Runs on one thread.
pub struct Server {
    /// This loop's number.
    id: usize,
    peers: Arc<Peers>,
    inbox: Receiver<Cross>,
    poll: Poll,
    listeners: Vec<Listener>,
    /// Only loop 0 takes the signals, and tells the others.
    signals: Option<Signals>,
    conns: Slab<Conn>,
    registry: Registry,
    store: Runner,
    cluster: Option<Cluster>,
    tokens: Arc<Tokens>,
    cfg: Config,
    public_url: String,
    limits: Limits,
    /// Read buffer shared by every WebSocket: sockets keep only leftovers of their own.
    scratch: Vec<u8>,
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    start: Instant,
    next_gen: u32,
    spare_fd: Option<File>,
    shutdown_at: Option<u64>,
    last_refusal_log: u64,
    /// Connections that used up their budget with input left: served again after the next poll.
    again: Vec<usize>,
    /// The WebSocket whose input is being read right now.
    reading: Option<usize>,
    /// An accept failed for a reason other than file descriptors: retry soon.
    accept_retry: bool,
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fresh_uaid_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if !crate::random::fill(&mut b) {
        // Never seen in practice; the clock still makes a unique enough id for one process.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    b
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

/// Writes as much of `out[*written..]` as the socket takes. `Ok(true)` when all is written.
fn write_out(stream: &mut TcpStream, out: &[u8], written: &mut usize) -> io::Result<bool> {
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Server {
    /// Binds this loop's listeners (on `same` addresses, when loop 0 already chose them).
    #[allow(clippy::too_many_arguments)]
    fn bind(
        cfg: Config,
        tokens: Arc<Tokens>,
        id: usize,
        peers: Arc<Peers>,
        inbox: Receiver<Cross>,
        poll: Poll,
        waker: Arc<mio::Waker>,
        same: Option<&[SocketAddr]>,
        memcached: Option<Arc<MemcachedStore>>,
    ) -> io::Result<Server> {
        let store = open_store(&cfg, memcached, waker);
        let parse = |text: &str, key: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| io::Error::new(ErrorKind::InvalidInput, key.to_string()))
        };
        let split = !cfg.server.endpoint_listen.is_empty();
        let mut wanted = vec![(
            parse(&cfg.server.listen, "server.listen")?,
            Roles {
                websocket: true,
                endpoint: !split,
                router: false,
            },
        )];
        if split {
            wanted.push((
                parse(&cfg.server.endpoint_listen, "server.endpoint_listen")?,
                Roles {
                    websocket: false,
                    endpoint: true,
                    router: false,
                },
            ));
        }
        if !cfg.cluster.router_listen.is_empty() {
            wanted.push((
                parse(&cfg.cluster.router_listen, "cluster.router_listen")?,
                Roles {
                    websocket: false,
                    endpoint: false,
                    router: true,
                },
            ));
        }
        let mut listeners = Vec::new();
        for (i, (addr, roles)) in wanted.into_iter().enumerate() {
            let addr = same.and_then(|a| a.get(i).copied()).unwrap_or(addr);
            listeners.push(Listener {
                socket: listen_shared(addr)?,
                roles,
            });
        }
        let endpoint_addr = listeners[if split { 1 } else { 0 }].socket.local_addr()?;
        let cluster = match listeners.iter().find(|l| l.roles.router) {
            None => None,
            Some(l) => Some(Cluster {
                url: if cfg.cluster.router_url.is_empty() {
                    format!("http://{}", l.socket.local_addr()?)
                } else {
                    cfg.cluster.router_url.trim_end_matches('/').to_string()
                },
                secret: cfg.cluster.secret.clone(),
                timeout: Duration::from_millis(cfg.cluster.timeout_ms),
            }),
        };
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                &mut l.socket,
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )?;
        }
        let signals = if id == 0 {
            let mut signals = Signals::new([SIGTERM, SIGINT])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let public_url = if cfg.server.public_url.is_empty() {
            format!("http://{endpoint_addr}")
        } else {
            cfg.server.public_url.trim_end_matches('/').to_string()
        };
        let limits = Limits {
            max_channels: cfg.websocket.max_channels,
            min_ping_interval_ms: cfg.websocket.min_ping_interval_ms,
        };
        Ok(Server {
            id,
            peers,
            inbox,
            poll,
            listeners,
            signals,
            conns: Slab::with_capacity(1024),
            registry: Registry::default(),
            store,
            cluster,
            tokens,
            cfg,
            public_url,
            limits,
            scratch: Vec::with_capacity(crate::ws::READ_CHUNK),
            timers: BinaryHeap::new(),
            start: Instant::now(),
            next_gen: 0,
            spare_fd: File::open("/dev/null").ok(),
            shutdown_at: None,
            last_refusal_log: 0,
            again: Vec::new(),
            reading: None,
            accept_retry: false,
        })
    }

    /// The bound addresses: the WebSocket listener first, then the endpoint listener if split,
    /// then the router listener of a cluster node.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// The base URL of handed-out endpoints.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs until SIGTERM/SIGINT and a drained shutdown.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(),
                    WAKER => self.read_inbox(),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(key) => self.conn_event(key),
                }
                self.finish_jobs();
            }
            self.finish_jobs();
            for key in std::mem::take(&mut self.again) {
                self.conn_event(key);
                self.finish_jobs();
            }
            if std::mem::take(&mut self.accept_retry) {
                for i in 0..self.listeners.len() {
                    self.accept(i);
                }
            }
            self.fire_timers();
            if let Some(at) = self.shutdown_at {
                if self.conns.is_empty() || self.now_ms() >= at {
                    self.inbox_drop();
                    info!(
                        "shutdown complete, {} connections dropped",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        if self.accept_retry {
            return Duration::from_millis(50);
        }
        let now = self.now_ms();
        let next = self
            .timers
            .peek()
            .map(|Reverse((at, _, _))| *at)
            .into_iter()
            .chain(self.shutdown_at)
            .min();
        let wait = next.map_or(1000, |at| at.saturating_sub(now).min(1000));
        Duration::from_millis(wait)
    }

    fn on_signal(&mut self) {
        let got: Vec<i32> = match self.signals.as_mut() {
            Some(s) => s.pending().collect(),
            None => return,
        };
        if got.is_empty() || self.shutdown_at.is_some() {
            return;
        }
        info!(
            "signal {:?}: closing {} connections",
            got,
            self.peers.open.load(Ordering::Relaxed)
        );
        for w in (0..self.peers.mail.len()).filter(|&w| w != self.id) {
            // A loop that has stopped already needs no telling.
            let _ = self.peers.send(w, Cross::Shutdown);
        }
        self.shut_down();
    }

    /// Stops accepting and closes every connection, gracefully, within the shutdown timeout.
    fn shut_down(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(self.now_ms() + self.cfg.server.shutdown_timeout_ms);
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.listeners.clear();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let idle_http = matches!(
                self.conns.get(key).map(|c| &c.state),
                Some(State::Http(h)) if h.buf.is_empty() && h.written >= h.out.len()
            );
            if idle_http {
                self.drop_conn(key);
            } else if let Some(Conn {
                state: State::Http(h),
                ..
            }) = self.conns.get_mut(key)
            {
                h.close_after = true;
            } else {
                self.begin_close(key, CloseCode::Away, "server shutting down");
            }
        }
    }

    // ---- accepting ----

    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let roles = listener.roles;
            match listener.socket.accept() {
                Ok((stream, _)) => self.admit(stream, roles),
                Err(e) if would_block(&e) => return,
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                    // EMFILE/ENFILE: free the spare descriptor to take one connection off the backlog
                    // and close it. Linux reports EMFILE even with an empty backlog, so stop as soon
                    // as that second accept finds nothing.
                    self.log_refusal("out of file descriptors");
                    self.spare_fd = None;
                    // The accepted stream is closed here, before the spare is reopened in its place.
                    let took_one = self
                        .listeners
                        .get(index)
                        .is_some_and(|l| l.socket.accept().is_ok());
                    self.spare_fd = File::open("/dev/null").ok();
                    if !took_one || self.spare_fd.is_none() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // ENOBUFS, ENOMEM and the like: the backlog is not drained, so try again soon
                    // rather than wait for the next connection to signal the listener.
                    warn!("accept: {e}");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn log_refusal(&mut self, why: &str) {
        let now = self.now_ms();
        if now.saturating_sub(self.last_refusal_log) >= 1000 || self.last_refusal_log == 0 {
            warn!("refusing connections: {why}");
            self.last_refusal_log = now.max(1);
        }
    }

    fn admit(&mut self, mut stream: TcpStream, roles: Roles) {
        if self.peers.open.load(Ordering::Relaxed) >= self.cfg.server.max_connections {
            self.log_refusal("max_connections reached");
            return;
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register: {e}");
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        self.peers.open.fetch_add(1, Ordering::Relaxed);
        entry.insert(Conn {
            gen: self.next_gen,
            deadline: 0,
            queued: 0,
            roles,
            state: State::Http(HttpConn {
                stream,
                buf: Vec::new(),
                out: Vec::new(),
                written: 0,
                close_after: false,
                waiting: None,
                continued: false,
            }),
        });
        let at = self.now_ms() + self.cfg.server.request_timeout_ms;
        self.set_deadline(key, at);
    }

    // ---- timers ----

    fn set_deadline(&mut self, key: usize, at: u64) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.deadline = at;
        if at != 0 && (c.queued == 0 || at < c.queued) {
            c.queued = at;
            self.timers.push(Reverse((at, key, c.gen)));
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        while let Some(&Reverse((at, key, gen))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.gen != gen || c.queued != at {
                continue;
            }
            c.queued = 0;
            if c.deadline == 0 {
                continue;
            }
            if c.deadline <= now {
                self.expire(key);
            } else {
                // Pushed later since this entry was queued: wait for the new time.
                c.queued = c.deadline;
                self.timers.push(Reverse((c.deadline, key, gen)));
            }
        }
    }

    fn expire(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match &conn.state {
            State::Ws(w) if !w.closing && w.bound.is_none() => {
                debug!("conn {key}: no hello in time");
                self.begin_close(key, CloseCode::Policy, "hello timeout");
            }
            State::Ws(w) if !w.closing => {
                debug!("conn {key}: a frame left incomplete too long");
                self.begin_close(key, CloseCode::Policy, "incomplete frame");
            }
            _ => {
                debug!("conn {key}: timed out");
                self.drop_conn(key);
            }
        }
    }

    // ---- connections ----

    fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let conn = self.conns.remove(key);
        self.peers.open.fetch_sub(1, Ordering::Relaxed);
        let registry = self.poll.registry();
        match conn.state {
            State::Http(mut h) => drop(registry.deregister(&mut h.stream)),
            State::Ws(mut w) => {
                drop(registry.deregister(w.link.stream_mut()));
                if let Some(uaid) = w.bound {
                    self.unbind(&uaid, key, conn.gen);
                }
            }
            State::Moving => {}
        }
    }

    fn conn_event(&mut self, key: usize) {
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Http(_)) => self.http_event(key),
            Some(State::Ws(_)) => self.ws_event(key),
            Some(State::Moving) | None => {}
        }
    }

    // ---- HTTP ----

    fn http_event(&mut self, key: usize) {
        let mut handled = 0;
        loop {
            let max_head = self.cfg.endpoint.max_header_size;
            let Some(Conn {
                state: State::Http(h),
                ..
            }) = self.conns.get_mut(key)
            else {
                return;
            };
            match write_out(&mut h.stream, &h.out, &mut h.written) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => return self.drop_conn(key),
            }
            if h.waiting.is_some() {
                return;
            }
            if !h.out.is_empty() {
                h.out = Vec::new();
                h.written = 0;
                if h.close_after {
                    let _ = h.stream.shutdown(std::net::Shutdown::Write);
                    return self.drop_conn(key);
                }
                if !h.continued {
                    let at = self.now_ms() + self.cfg.server.keep_alive_timeout_ms;
                    self.set_deadline(key, at);
                }
                continue;
            }
            match http::parse_head(&h.buf, max_head) {
                Parsed::Complete(head) => {
                    let need = head.head_len.saturating_add(head.content_length);
                    if head.content_length > self.cfg.endpoint.max_body_size {
                        let r = Response::json(413, "\"Request body too large\"").closing();
                        self.respond(key, r, false);
                        continue;
                    }
                    if head.upgrade.is_none() && h.buf.len() < need {
                        if head.expect_continue && !h.continued && h.out.is_empty() {
                            // curl waits a second for this before sending a body over 1 KiB.
                            h.continued = true;
                            h.out = http::CONTINUE.to_vec();
                            h.written = 0;
                            continue;
                        }
                        if !self.read_more(key) {
                            return;
                        }
                        continue;
                    }
                    handled += 1;
                    if handled > BUDGET {
                        self.again.push(key);
                        return;
                    }
                    self.request(key, head);
                    let still_http = matches!(
                        self.conns.get(key).map(|c| &c.state),
                        Some(State::Http(h)) if h.waiting.is_none()
                    );
                    if !still_http {
                        return;
                    }
                }
                Parsed::Partial => {
                    if !self.read_more(key) {
                        return;
                    }
                }
                Parsed::Bad(r) => self.respond(key, r, false),
            }
        }
    }

    /// Reads what the socket has. `false` when there is nothing more to do now.
    fn read_more(&mut self, key: usize) -> bool {
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return false;
        };
        let was_idle = h.buf.is_empty();
        let len = h.buf.len();
        h.buf.resize(len + READ_CHUNK, 0);
        let res = h.stream.read(&mut h.buf[len..]);
        let got = match &res {
            Ok(n) => *n,
            Err(_) => 0,
        };
        h.buf.truncate(len + got);
        match res {
            Ok(0) => {
                self.drop_conn(key);
                false
            }
            Ok(_) => {
                if was_idle {
                    // A new request started: it gets the request timeout, not the idle one.
                    let at = self.now_ms() + self.cfg.server.request_timeout_ms;
                    self.set_deadline(key, at);
                }
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.drop_conn(key);
                false
            }
        }
    }

    /// Queues a response and removes the request bytes it answers.
    fn respond(&mut self, key: usize, resp: Response, keep_alive: bool) {
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let keep = keep_alive && !resp.close && self.shutdown_at.is_none();
        h.waiting = None;
        h.continued = false;
        h.out = resp.to_bytes(keep);
        h.written = 0;
        h.close_after |= !keep;
        if h.close_after {
            h.buf = Vec::new();
        }
    }

    fn request(&mut self, key: usize, head: Head) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let roles = conn.roles;
        let State::Http(h) = &mut conn.state else {
            return;
        };
        if let Some(upgrade) = &head.upgrade {
            if !roles.websocket {
                return self.respond(key, endpoint::not_found().closing(), false);
            }
            return match upgrade {
                Ok(up) => self.start_upgrade(key, &head, up),
                Err(r) => self.respond(key, r.clone(), false),
            };
        }
        let need = head.head_len + head.content_length;
        let body: Vec<u8> = h.buf[head.head_len..need].to_vec();
        h.buf.drain(..need);
        if h.buf.is_empty() {
            h.buf = Vec::new();
        }
        if roles.router {
            return self.route_request(key, &head, &body);
        }
        let resp = match endpoint::route(&head) {
            Route::Update(token) if roles.endpoint => match self.update(key, &head, token, &body) {
                Some(r) => r,
                None => return,
            },
            Route::Status => Response::json(
                200,
                format!(
                    "{{\"status\":\"OK\",\"clients\":{},\"version\":\"{}\"}}",
                    self.peers
                        .clients
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .sum::<usize>(),
                    env!("CARGO_PKG_VERSION")
                ),
            ),
            Route::Health if self.store.healthy() => Response::json(200, "{\"status\":\"OK\"}"),
            Route::Health => Response::json(503, "{\"status\":\"NOT OK\"}"),
            _ => endpoint::not_found(),
        };
        self.respond(key, resp, head.keep_alive);
    }

    // ---- app-server updates ----

    /// Starts storing an update; `Some` is an immediate answer, `None` means the answer will follow.
    fn update(&mut self, key: usize, head: &Head, token: &str, body: &[u8]) -> Option<Response> {
        let parsed = endpoint::parse_update(
            head,
            token,
            body,
            wall_secs(),
            self.cfg.endpoint.max_data_len,
            &self.tokens,
        );
        let (uaid, channel, upd) = match parsed {
            Ok(p) => p,
            Err(r) => return Some(r),
        };
        let conn = self.conn_ref(key)?;
        if let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        {
            h.waiting = Some(head.keep_alive);
        }
        let d = Delivery {
            uaid,
            channel,
            version: upd.version,
            data: upd.data,
        };
        self.submit_owned(Job::Put { conn, d });
        None
    }

    /// The UAID a WebSocket connection is registered for.
    fn bound_to(&self, key: usize) -> Option<Uaid> {
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Ws(w)) => w.bound,
            _ => None,
        }
    }

    /// Runs a job on the loop that owns its UAID: here, or through that loop's mailbox.
    fn submit_owned(&mut self, job: Job) {
        match owner(&job.uaid(), self.peers.mail.len()) {
            w if w == self.id => self.store.submit(job),
            w => {
                if let Err(Cross::Store(job)) = self.peers.send(w, Cross::Store(job)) {
                    // The owner has stopped (shutdown): answer as if storage were down.
                    self.finish(job.failed());
                }
            }
        }
    }

    fn conn_ref(&self, key: usize) -> Option<ConnRef> {
        self.conns.get(key).map(|c| ConnRef {
            worker: self.id as u16,
            key,
            gen: c.gen,
        })
    }

    fn is_current(&self, conn: ConnRef) -> bool {
        conn.worker as usize == self.id
            && self.conns.get(conn.key).is_some_and(|c| c.gen == conn.gen)
    }

    /// Answers a request that waited, then goes on with the connection's next request.
    fn answer(&mut self, conn: ConnRef, resp: Response) {
        if conn.worker as usize != self.id {
            // If that loop has stopped, its connection is gone with it.
            let _ = self
                .peers
                .send(conn.worker as usize, Cross::Answer { conn, resp });
            return;
        }
        if !self.is_current(conn) {
            return;
        }
        let keep = match self.conns.get(conn.key).map(|c| &c.state) {
            Some(State::Http(h)) => h.waiting.unwrap_or(false),
            _ => return,
        };
        self.respond(conn.key, resp, keep);
        // The next pipelined request waits for the next round, after the other sockets: answering
        // inline answers would let one client keep this loop to itself.
        self.again.push(conn.key);
    }

    /// Handles every finished storage job and forward.
    fn finish_jobs(&mut self) {
        loop {
            let done = self.store.take_done();
            if done.is_empty() {
                return;
            }
            for d in done {
                self.finish(d);
            }
        }
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Session {
                conn,
                op,
                reply,
                previous_node,
            } => self.session_done(conn, &op, reply, previous_node),
            Done::Checked { conn, d, current } => {
                let resp = match current {
                    Ok(true) => match self.deliver(&d) {
                        Outcome::Delivered => Response::json(200, "{}"),
                        Outcome::Stored => Response::json(404, "\"Not connected\""),
                    },
                    // Acked, replaced by a newer version, or unregistered meanwhile.
                    Ok(false) => Response::json(404, "\"Not pending\""),
                    Err(Unavailable) => endpoint::unavailable(),
                };
                self.answer(conn, resp);
            }
            Done::Put { conn, d, result } => self.put_done(conn, d, result),
            Done::Forwarded { conn, delivered } => {
                let outcome = if delivered {
                    Outcome::Delivered
                } else {
                    Outcome::Stored
                };
                self.answer(conn, endpoint::outcome(outcome));
            }
            Done::Bound { uaid, previous } => self.kick_elsewhere(uaid, previous),
            Done::Nothing => {}
        }
    }

    fn put_done(&mut self, conn: ConnRef, d: Delivery, result: Result<PutResult, Unavailable>) {
        let node = match result {
            Ok(PutResult::Stored { node }) => node,
            Ok(PutResult::UnknownChannel) => return self.answer(conn, endpoint::gone()),
            Err(Unavailable) => return self.answer(conn, endpoint::unavailable()),
        };
        let outcome = self.deliver(&d);
        debug!(
            "update uaid={} channel={} version={} -> {}",
            d.uaid,
            d.channel,
            d.version,
            outcome.status()
        );
        let remote = match (&self.cluster, node.as_deref().map(node_url)) {
            (Some(c), Some(url)) if outcome == Outcome::Stored && url != c.url => {
                Some((c, url.to_string()))
            }
            _ => None,
        };
        let Some((cluster, node)) = remote else {
            return self.answer(conn, endpoint::outcome(outcome));
        };
        let (secret, timeout) = (cluster.secret.clone(), cluster.timeout);
        self.store.forward(Box::new(move || {
            let delivered = router::forward(&node, &secret, timeout, &d);
            debug!(
                "forwarded uaid={} version={} to {node}: delivered={delivered}",
                d.uaid, d.version
            );
            Done::Forwarded { conn, delivered }
        }));
    }

    /// Tells the node that held the UAID before to close that socket (only that one: by then the
    /// device may have connected there again).
    fn kick_elsewhere(&mut self, uaid: Uaid, previous: Option<String>) {
        let (Some(c), Some(record)) = (&self.cluster, previous) else {
            return;
        };
        let (url, conn) = (
            node_url(&record).to_string(),
            node_conn(&record).to_string(),
        );
        if url == c.url {
            // Our own older socket: the registry closed it already.
            return;
        }
        let (secret, timeout) = (c.secret.clone(), c.timeout);
        self.store.forward(Box::new(move || {
            router::kick(&url, &secret, timeout, &uaid, &conn);
            Done::Nothing
        }));
    }

    /// This socket's node record: `<router url> <loop>.<key>.<gen>`.
    fn node_id(&self, key: usize, gen: u32) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|c| format!("{} {}.{key}.{gen}", c.url, self.id))
    }

    fn route_request(&mut self, key: usize, head: &Head, body: &[u8]) {
        let Some(secret) = self.cluster.as_ref().map(|c| c.secret.clone()) else {
            return self.respond(key, endpoint::not_found(), head.keep_alive);
        };
        let resp = match router::parse(head, body, &secret) {
            Err(r) => r,
            Ok(RouteRequest::Deliver(d)) => {
                // Check the version is still pending (not acked, not unregistered) before writing
                // it: it was stored on another node, possibly before an unregister handled here.
                let Some(conn) = self.conn_ref(key) else {
                    return;
                };
                if let Some(Conn {
                    state: State::Http(h),
                    ..
                }) = self.conns.get_mut(key)
                {
                    h.waiting = Some(head.keep_alive);
                }
                return self.submit_owned(Job::Check { conn, d });
            }
            Ok(RouteRequest::Kick { uaid, conn }) => {
                let w = owner(&uaid, self.peers.mail.len());
                if w == self.id {
                    self.kick_here(uaid, &conn);
                } else {
                    // A stopped loop has closed its sockets already.
                    let _ = self.peers.send(w, Cross::Kick { uaid, conn });
                }
                Response::json(200, "{}")
            }
        };
        self.respond(key, resp, head.keep_alive);
    }

    /// Closes this loop's socket for the UAID if it is the one a node record named.
    fn kick_here(&mut self, uaid: Uaid, conn: &str) {
        let target = self.registry.get(&uaid).filter(|&old| {
            self.bound_to(old) == Some(uaid)
                && self
                    .conn_ref(old)
                    .is_some_and(|r| format!("{}.{}.{}", r.worker, r.key, r.gen) == conn)
        });
        if let Some(old) = target {
            debug!("conn {old}: uaid={uaid} connected to another node");
            self.begin_close(old, CloseCode::Normal, "connected elsewhere");
        }
    }

    /// Forgets that connection `key` (of generation `gen`) is the UAID's socket; in a cluster, also
    /// the node record if it still names that socket.
    fn unbind(&mut self, uaid: &Uaid, key: usize, gen: u32) {
        self.registry.unbind(uaid, key);
        self.peers.clients[self.id].store(self.registry.len(), Ordering::Relaxed);
        if let Some(node) = self.node_id(key, gen) {
            self.store.submit(Job::Unbound { uaid: *uaid, node });
        }
    }

    fn unbind_current(&mut self, uaid: &Uaid, key: usize) {
        let gen = self.conns.get(key).map_or(0, |c| c.gen);
        self.unbind(uaid, key, gen);
    }

    fn session_done(
        &mut self,
        conn: ConnRef,
        op: &StoreOp,
        reply: StoreReply,
        previous_node: Option<String>,
    ) {
        if !self.is_current(conn) {
            // The socket is gone; if its hello claimed the UAID, release the claim.
            if let (StoreOp::Hello { uaid, .. }, Some(node)) =
                (op, self.node_id(conn.key, conn.gen))
            {
                self.store.submit(Job::Unbound { uaid: *uaid, node });
            }
            return;
        }
        // A known UAID's hello recorded this socket in the node record already.
        let claimed = match (op, &reply) {
            (
                StoreOp::Hello {
                    uaid,
                    forget: false,
                },
                StoreReply::Hello { known: true, .. },
            ) => Some(*uaid),
            _ => None,
        };
        let reply = match (op, reply) {
            (StoreOp::Register { uaid, channel }, StoreReply::Registered { .. }) => {
                match self.tokens.seal(uaid, channel) {
                    Some(token) => StoreReply::Registered {
                        endpoint: format!("{}/update/{token}", self.public_url),
                    },
                    None => StoreReply::Unavailable,
                }
            }
            (_, r) => r,
        };
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(conn.key)
        else {
            return;
        };
        let effects = w.session.on_store(reply);
        self.apply(conn.key, effects, claimed);
        if let Some(uaid) = claimed {
            self.kick_elsewhere(uaid, previous_node);
        }
        // Input may have waited behind the storage call; the socket will not signal it again.
        // (Unless this answer came inline, inside that socket's own read round, which goes on.)
        if self.reading != Some(conn.key) {
            self.ws_event(conn.key);
        }
    }

    /// Writes a live notification if the UAID has a socket here that can take it.
    fn deliver(&mut self, d: &Delivery) -> Outcome {
        let uaid = &d.uaid;
        let Some(key) = self.registry.get(uaid) else {
            return Outcome::Stored;
        };
        // Read what the client already sent first: a close frame there means it is offline.
        self.ws_event(key);
        let Some(key) = self.registry.get(uaid) else {
            return Outcome::Stored;
        };
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return Outcome::Stored;
        };
        if w.bound != Some(*uaid) {
            return Outcome::Stored;
        }
        let Some(frame) = w.session.notify(&d.channel, d.version, d.data.as_deref()) else {
            return Outcome::Stored;
        };
        let max_output = self.cfg.websocket.max_output_buffer;
        let sent = w
            .link
            .send_text(&frame)
            .and_then(|()| w.link.flush(max_output));
        match sent {
            Ok(()) => Outcome::Delivered,
            Err(e) => {
                debug!("conn {key}: live delivery failed: {e}");
                self.drop_conn(key);
                Outcome::Stored
            }
        }
    }

    // ---- WebSocket handshake ----

    /// Turns the HTTP connection into a WebSocket. The 101 response goes out with the replies to
    /// whatever the client sent right behind its upgrade request, in one write.
    fn start_upgrade(&mut self, key: usize, head: &Head, up: &http::Upgrade) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return self.drop_conn(key);
        };
        let leftover = h
            .buf
            .get(head.head_len..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let mut link = Link::new(h.stream, leftover);
        link.cork();
        link.queue_raw(http::switching_protocols(up));
        conn.state = State::Ws(WsConn {
            link,
            session: Session::new(),
            bound: None,
            closing: false,
        });
        let at = self.now_ms() + self.cfg.websocket.hello_timeout_ms;
        self.set_deadline(key, at);
        if self.shutdown_at.is_some() {
            // Upgraded while the server stops: it gets its 101 and, at once, a going-away close.
            self.begin_close(key, CloseCode::Away, "server shutting down");
        }
        self.ws_event(key);
    }

    // ---- WebSocket traffic ----

    fn ws_event(&mut self, key: usize) {
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            // Replies to everything read in this round go out in one write (`flush_ws`).
            w.link.cork();
        }
        let outer = self.reading.replace(key);
        self.read_ws(key);
        self.reading = outer;
        self.watch_partial(key);
        self.flush_ws(key);
    }

    /// Reads and handles messages until the socket has no more, the session waits on storage, or
    /// the budget is spent.
    fn read_ws(&mut self, key: usize) {
        let mut handled = 0;
        loop {
            let Some(Conn {
                state: State::Ws(w),
                ..
            }) = self.conns.get_mut(key)
            else {
                return;
            };
            if w.session.is_busy() {
                break;
            }
            handled += 1;
            if handled > BUDGET {
                self.again.push(key);
                break;
            }
            let max = self.cfg.websocket.max_message_size;
            match w.link.next(&mut self.scratch, max) {
                Ok(Some(Incoming::Data(payload))) => self.on_payload(key, &payload),
                Ok(Some(Incoming::Close)) => self.on_peer_close(key),
                Ok(Some(Incoming::Busy)) => {
                    self.again.push(key);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!("conn {key}: {e}");
                    match e.close_code() {
                        Some(code) => self.begin_close(key, code, "protocol error"),
                        None => return self.drop_conn(key),
                    }
                    break;
                }
            }
        }
    }

    /// After hello, a socket holding part of a frame gets the request timeout to send the rest:
    /// otherwise idle sockets could each pin up to a message's worth of memory for ever.
    fn watch_partial(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let State::Ws(w) = &conn.state else {
            return;
        };
        if w.bound.is_none() || w.closing {
            // Before hello the hello timeout applies; while closing, the close timeout.
            return;
        }
        match (w.link.has_partial(), conn.deadline) {
            (true, 0) => {
                let at = self.now_ms() + self.cfg.server.request_timeout_ms;
                self.set_deadline(key, at);
            }
            (false, d) if d != 0 => self.set_deadline(key, 0),
            _ => {}
        }
    }

    fn flush_ws(&mut self, key: usize) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let max_output = self.cfg.websocket.max_output_buffer;
        match w.link.uncork(max_output) {
            Ok(()) if w.link.finished() => self.drop_conn(key),
            Ok(()) => {}
            Err(_) => self.drop_conn(key),
        }
    }

    fn on_peer_close(&mut self, key: usize) {
        // The UAID is offline from this moment: the next update is stored (202).
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            w.session.close();
            w.closing = true;
            if let Some(uaid) = w.bound.take() {
                self.unbind_current(&uaid, key);
            }
        }
        let at = self.now_ms() + self.cfg.server.close_timeout_ms;
        self.set_deadline(key, at);
    }

    /// Sends a close frame and waits (bounded) for the peer's.
    fn begin_close(&mut self, key: usize, code: CloseCode, reason: &'static str) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return self.drop_conn(key);
        };
        if w.closing {
            // Already closing: its deadline stands, whatever the peer sends meanwhile.
            return;
        }
        w.closing = true;
        let uaid = w.bound.take();
        w.session.close();
        let closed = w.link.send_close(code, reason).is_ok();
        if let Some(uaid) = uaid {
            self.unbind_current(&uaid, key);
        }
        if !closed {
            return self.drop_conn(key);
        }
        let at = self.now_ms() + self.cfg.server.close_timeout_ms;
        self.set_deadline(key, at);
    }

    /// Moves a WebSocket whose hello names a UAID of another loop to that loop.
    fn hand_over(&mut self, key: usize, to: usize, payload: Vec<u8>) {
        if !self.conns.contains(key) {
            return;
        }
        let conn = self.conns.remove(key);
        let State::Ws(mut w) = conn.state else {
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        debug!("conn {key}: hello for a UAID of loop {to}: handing the socket over");
        let _ = self.poll.registry().deregister(w.link.stream_mut());
        let adopted = Adopted {
            link: w.link,
            session: w.session,
            payload,
        };
        if self
            .peers
            .send(to, Cross::Adopt(Box::new(adopted)))
            .is_err()
        {
            // The owner has stopped (shutdown): the socket is dropped, closing it.
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes over a WebSocket from another loop and handles the hello it brought.
    fn adopt(&mut self, a: Adopted) {
        let Adopted {
            mut link,
            session,
            payload,
        } = a;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let registered = self.poll.registry().register(
            link.stream_mut(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        entry.insert(Conn {
            gen: self.next_gen,
            deadline: 0,
            queued: 0,
            roles: Roles {
                websocket: true,
                endpoint: false,
                router: false,
            },
            state: State::Ws(WsConn {
                link,
                session,
                bound: None,
                closing: false,
            }),
        });
        let at = self.now_ms() + self.cfg.websocket.hello_timeout_ms;
        self.set_deadline(key, at);
        if self.shutdown_at.is_some() {
            self.begin_close(key, CloseCode::Away, "server shutting down");
            return self.flush_ws(key);
        }
        let outer = self.reading.replace(key);
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            w.link.cork();
        }
        self.on_payload(key, &payload);
        self.read_ws(key);
        self.reading = outer;
        self.flush_ws(key);
    }

    /// Handles what the other loops sent.
    fn read_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Cross::Adopt(a) => self.adopt(*a),
                Cross::Store(job) => self.store.submit(job),
                Cross::Kick { uaid, conn } => self.kick_here(uaid, &conn),
                Cross::Answer { conn, resp } => self.answer(conn, resp),
                Cross::Shutdown => self.shut_down(),
            }
            self.finish_jobs();
        }
    }

    /// At exit: what other loops still hand over is closed, not left waiting.
    fn inbox_drop(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            if let Cross::Adopt(_) = msg {
                self.peers.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn on_payload(&mut self, key: usize, payload: &[u8]) {
        let now = self.now_ms();
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let (id, loops) = (self.id, self.peers.mail.len());
        let effects = match sm::parse(payload) {
            Ok(req) => {
                if let (Inbound::Hello(h), false) = (&req.kind, w.closing) {
                    if let (HelloUaid::Valid(u), None) = (&h.uaid, w.session.uaid()) {
                        let to = owner(u, loops);
                        if to != id {
                            return self.hand_over(key, to, payload.to_vec());
                        }
                    }
                }
                log_request(key, w.session.uaid(), &req.kind);
                w.session
                    .handle(req, &self.limits, now, &mut || fresh_owned(id, loops))
            }
            Err(refused) => {
                debug!("conn {key}: refused message: {:?}", refused.rejection);
                w.session.refused(refused)
            }
        };
        self.apply(key, effects, None);
    }

    /// Carries out the session's effects in order. `claimed`: a UAID whose node record the hello
    /// job already set for this socket.
    fn apply(&mut self, key: usize, effects: Vec<Effect>, claimed: Option<Uaid>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Send(text) => {
                    let Some(Conn {
                        state: State::Ws(w),
                        ..
                    }) = self.conns.get_mut(key)
                    else {
                        return;
                    };
                    if let Err(e) = w.link.send_text(&text) {
                        debug!("conn {key}: write failed: {e}");
                        return self.drop_conn(key);
                    }
                }
                Effect::Close => self.begin_close(key, CloseCode::Normal, ""),
                Effect::Store(op) => {
                    // The session is busy until the answer arrives (`session_done`).
                    if let Some(conn) = self.conn_ref(key) {
                        let node = match op {
                            StoreOp::Hello { .. } => self.node_id(key, conn.gen),
                            _ => None,
                        };
                        self.store.submit(Job::Session { conn, op, node });
                        if self.store.is_inline() {
                            // Answered already: reply now, inside this round's single write.
                            self.finish_jobs();
                        }
                    }
                }
                Effect::Bind(uaid) => {
                    debug!("conn {key}: hello uaid={uaid}");
                    self.set_deadline(key, 0);
                    if let Some(Conn {
                        state: State::Ws(w),
                        ..
                    }) = self.conns.get_mut(key)
                    {
                        w.bound = Some(uaid);
                    }
                    let replaced = self.registry.bind(uaid, key);
                    self.peers.clients[self.id].store(self.registry.len(), Ordering::Relaxed);
                    if let Some(old) = replaced {
                        if self.bound_to(old) == Some(uaid) {
                            debug!("conn {old}: replaced by conn {key} for uaid={uaid}");
                            self.begin_close(
                                old,
                                CloseCode::Normal,
                                "replaced by a newer connection",
                            );
                        }
                    }
                    let node = self.conn_ref(key).and_then(|r| self.node_id(key, r.gen));
                    if let Some(node) = node.filter(|_| claimed != Some(uaid)) {
                        self.store.submit(Job::Bound { uaid, node });
                    }
                }
            }
        }
    }
}

fn log_request(key: usize, uaid: Option<Uaid>, kind: &Inbound) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let who = uaid.map_or_else(|| "-".to_string(), |u| u.to_string());
    match kind {
        Inbound::Ack(items) => {
            for i in items {
                let code = i.code.map_or_else(|| "-".to_string(), |c| c.to_string());
                debug!(
                    "conn {key}: ack uaid={who} channel={} version={} code={code}",
                    i.channel_id, i.version
                );
            }
        }
        other => debug!("conn {key}: uaid={who} {other:?}"),
    }
}

/// Logs why the loop stopped.
pub fn report(result: io::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            error!("event loop failed: {e}");
            1
        }
    }
}

/// The storage runner the configuration asks for.
/// The memcached backend all loops share, if configured.
fn open_memcached(cfg: &Config) -> io::Result<Option<Arc<MemcachedStore>>> {
    if cfg.storage.backend != "memcached" {
        return Ok(None);
    }
    let st = &cfg.storage;
    let settings = memcached::Settings {
        servers: st.servers.clone(),
        timeout: Duration::from_millis(st.timeout_ms),
        pool_size: (st.pool_size * loops_wanted(cfg)) as u32,
        pending_ttl: st.pending_ttl_secs as u32,
        registration_ttl: st.registration_ttl_secs as u32,
    };
    let backend =
        MemcachedStore::start(settings).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    if !backend.healthy_now() {
        warn!(
            "memcached not reachable yet at {}; answering 503 until it is",
            st.servers.join(", ")
        );
    }
    Ok(Some(backend))
}

/// One loop's storage runner: its own memory shard, or worker threads over the shared memcached.
fn open_store(cfg: &Config, shared: Option<Arc<MemcachedStore>>, waker: Arc<mio::Waker>) -> Runner {
    match shared {
        None => Runner::inline(Box::new(MemoryStore::new())),
        Some(backend) => Runner::Pool(Pool::start(
            backend,
            cfg.storage.pool_size,
            cfg.storage.pool_size,
            waker,
        )),
    }
}

fn loops_wanted(cfg: &Config) -> usize {
    match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The router URL of a node record (`<url> <connection id>`).
fn node_url(record: &str) -> &str {
    record.split_once(' ').map_or(record, |(url, _)| url)
}

/// The connection id of a node record.
fn node_conn(record: &str) -> &str {
    record.split_once(' ').map_or("", |(_, id)| id)
}

/// A listening socket that several loops can share (SO_REUSEPORT: the kernel spreads connections).
fn listen_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Binds every event loop of this process: `server.workers` of them (0 = one per core).
pub fn start(cfg: Config, tokens: Tokens) -> io::Result<Vec<Server>> {
    let loops = loops_wanted(&cfg);
    let memcached = open_memcached(&cfg)?;
    let mut polls = Vec::new();
    let mut mail = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..loops {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = channel();
        mail.push((tx, waker));
        inboxes.push(rx);
        polls.push(poll);
    }
    let peers = Arc::new(Peers {
        clients: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
        open: AtomicUsize::new(0),
        mail,
    });
    let tokens = Arc::new(tokens);
    let mut servers: Vec<Server> = Vec::with_capacity(loops);
    for (id, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
        let waker = peers.mail[id].1.clone();
        let same = servers.first().map(Server::local_addrs);
        servers.push(Server::bind(
            cfg.clone(),
            tokens.clone(),
            id,
            peers.clone(),
            inbox,
            poll,
            waker,
            same.as_deref(),
            memcached.clone(),
        )?);
    }
    Ok(servers)
}

/// Runs every loop on its own thread (loop 0 on this one) until shutdown; the exit code.
pub fn run_all(mut servers: Vec<Server>) -> i32 {
    let rest: Vec<Server> = servers.drain(1..).collect();
    let threads: Vec<_> = rest
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut s)| {
            std::thread::Builder::new()
                .name(format!("loop-{}", i + 1))
                .spawn(move || report(s.run()))
                .ok()
        })
        .collect();
    let mut code = servers.pop().map_or(1, |mut s| report(s.run()));
    for t in threads {
        code = code.max(t.join().unwrap_or(1));
    }
    code
}
