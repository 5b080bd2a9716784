//! The event loop: one `mio::Poll`, a slab of connections, timers, and the effects `sm` asks for.
//!
//! This file holds the loop itself (listeners, accepting, timers, shutdown); the connections'
//! work is in `http_conn`, `websocket` and `updates`, the cluster's in `cluster`, and what several
//! loops of one process share in `loops`. The submodules see this one's imports (`use super::*`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use sm::webpush::PushError;
use sm::{
    ChannelId, Effect, EndpointKind, Id, Inbound, Limits, Origin, Session, StoreOp, StoreReply,
    Uaid,
};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Config;
use crate::endpoint::{self, Route};
use crate::http::{self, Head, Parsed, Response};
use crate::metrics::{self, Command, Drop as Dropped, Event, METRICS};
use crate::nonblocking::{would_block, write_some};
use crate::registry::Registry;
use crate::reload::{Live, Swap};
use crate::router::{self, RouteRequest};
use crate::sources::{Limiter, Source, What};
use crate::store::disk::{self, DiskStore};
use crate::store::memcached::{self, MemcachedStore};
use crate::store::memory::MemoryStore;
use crate::store::workers::Pool;
use crate::store::{
    ConnRef, Delivery, Done, Job, JobRunner, Notice, PutResult, Runner, Unavailable,
};
use crate::token::Tokens;
use crate::transport::{Stream, TlsFiles};
use crate::webpush;
use crate::ws::{Incoming, Link, ReadLimits};

mod accept;
mod broadcasts;
mod cluster;
mod health;
mod http_body;
mod http_conn;
mod known_channels;
mod loops;
mod stores;
mod updates;
mod websocket;

use stores::{loops_wanted, open_store, Shared};

use cluster::{node_url, Cluster};
use loops::{fresh_owned, owner, Cross, Peers};
pub use loops::{run_all, start};

const SIGNALS: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const LISTENER_BASE: usize = usize::MAX - 16;
const READ_CHUNK: usize = 4096;
/// Messages or requests handled per connection per wakeup, so that one busy peer cannot starve the rest.
const BUDGET: usize = 64;

/// How often a drain closes its next share of sockets.
const DRAIN_TICK_MS: u64 = 20;
/// Admin connections allowed past `max_connections` (within the descriptors kept at start).
const ADMIN_EXTRA: usize = 16;

/// A connection as log lines name it: its event loop and slab key (`conn=1/4711`), since keys
/// repeat from loop to loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnName(pub usize, pub usize);

impl std::fmt::Display for ConnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// A shutdown's sockets, closed a share at a time.
struct Drain {
    /// Monotonic ms when it began.
    started: u64,
    total: usize,
    /// Still open: (slab key, generation).
    sockets: Vec<(usize, u32)>,
}

/// What a listener serves.
#[derive(Clone, Copy, Debug)]
struct Roles {
    websocket: bool,
    endpoint: bool,
    router: bool,
    admin: bool,
    /// Connections speak TLS (device and endpoint listeners, when `[tls]` is set).
    tls: bool,
}

struct Listener {
    socket: TcpListener,
    roles: Roles,
}

/// An HTTP connection reading a request or writing a response.
struct HttpConn {
    stream: Stream,
    buf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    close_after: bool,
    /// `Some(keep_alive)` while the request's answer waits on storage or another node.
    waiting: Option<bool>,
    /// `100 Continue` was sent for the request being read.
    continued: bool,
    /// The last response is out: our side shuts once TLS records are sent, and the peer's input
    /// is read and discarded until it closes too (`http_conn::linger`).
    closing: bool,
    /// The request being read has its whole head (its body has the request timeout).
    head_done: bool,
    /// A response went out on this connection (a kept-alive client, not a slow stranger).
    served: bool,
    /// When the connection, or the request being read, started (ms on the loop's clock).
    started_ms: u64,
    /// The peer's address, folded to 32 bits (`http_conn::source_of`).
    source: u32,
    /// This connection's part of the process's unfinished request heads.
    head_bytes: http_conn::HeadBytes,
    /// Bytes discarded while closing.
    drained: u32,
    /// The chunked body being read (`http_body`).
    chunked: Option<Box<crate::chunked::Chunked>>,
}

/// A WebSocket with its protocol session.
struct WsConn {
    link: Link,
    session: Session,
    /// The UAID this socket is registered for, kept here because a closed session forgets it.
    bound: Option<Uaid>,
    /// Our close frame is out (or the peer's was read): only waiting for the end.
    closing: bool,
    /// What the connection's deadline means once hello is done (before it, the hello timeout;
    /// while closing, the close timeout).
    watch: Watch,
    /// Channels known to be registered: their updates go to the socket before the store answers.
    known: known_channels::KnownChannels,
    /// Who the socket counts against for the rate limits (four bytes, in what was padding).
    source: Source,
    /// What the store knows of its UAID until the first registration.
    novelty: Novelty,
}

/// What the store knows of a socket's UAID until its first registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Novelty {
    /// Stored: a registration is only a registration.
    Known,
    /// Not stored: the first registration creates it there, which takes a new-UAID token from
    /// the source too.
    Unknown,
    /// Minted on this socket: unknown, and its node record is not written either. Nothing can
    /// reach a UAID before its first registration, which writes both in one round.
    Minted,
}

/// The timer of a WebSocket after hello. One deadline per connection serves them all, so that an
/// idle socket costs one timer-heap entry and no allocation of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Nothing held: at the deadline (the last frame plus the ping interval) it gets a ping.
    Idle,
    /// A ping is out: at the deadline, with nothing heard since, the socket is dead.
    Pinged,
    /// Part of a frame is held: at the deadline (the request timeout) it is closed.
    Partial,
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
    /// The endpoint keys; read once per request or registration, so that a reload's keys apply
    /// from the next one.
    tokens: Arc<Swap<Tokens>>,
    cfg: Config,
    public_url: String,
    /// The origin of `public_url`: what VAPID tokens must name as `aud`.
    origin: String,
    limits: Limits,
    /// Read buffer shared by every WebSocket: sockets keep only leftovers of their own.
    scratch: Vec<u8>,
    /// When the inline store next removes expired registrations (once a second).
    next_sweep_ms: u64,
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    start: Instant,
    next_gen: u32,
    spare_fd: Option<File>,
    shutdown_at: Option<u64>,
    /// The WebSockets still to close during a drain.
    drain: Option<Drain>,
    /// The broadcasts clients can follow, as this loop knows them.
    broadcasts: sm::broadcast::Broadcasts,
    /// The stores every loop shares, for what is not per UAID (the broadcast table).
    shared: Shared,
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

/// The address to listen on, with a port no other socket holds. SO_REUSEPORT lets every process of
/// the same user bind a port already in use, and the kernel would then split connections between
/// the two servers; bind(0) may even hand out such a port. A plain bind first refuses a taken port
/// (EADDRINUSE), and for port 0 finds a free one, which the loops then share.
fn claim_port(addr: SocketAddr) -> io::Result<SocketAddr> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
    let probe = std::net::TcpListener::bind(addr).map_err(named)?;
    probe.local_addr()
}

/// A listening socket that several loops can share (SO_REUSEPORT: the kernel spreads connections).
fn listen_shared(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Server {
    /// Binds this loop's listeners (on `same` addresses, when loop 0 already chose them).
    #[allow(clippy::too_many_arguments)]
    fn bind(
        cfg: Config,
        tokens: Arc<Swap<Tokens>>,
        id: usize,
        peers: Arc<Peers>,
        inbox: Receiver<Cross>,
        poll: Poll,
        waker: Arc<mio::Waker>,
        same: Option<&[SocketAddr]>,
        shared: Shared,
    ) -> io::Result<Server> {
        let store = open_store(&cfg, &shared, waker);
        let parse = |text: &str, key: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| io::Error::new(ErrorKind::InvalidInput, key.to_string()))
        };
        let split = !cfg.server.endpoint_listen.is_empty();
        let tls = peers.tls.is_some();
        let mut wanted = vec![(
            parse(&cfg.server.listen, "server.listen")?,
            Roles {
                websocket: true,
                endpoint: !split,
                router: false,
                admin: false,
                tls,
            },
        )];
        if split {
            wanted.push((
                parse(&cfg.server.endpoint_listen, "server.endpoint_listen")?,
                Roles {
                    websocket: false,
                    endpoint: true,
                    router: false,
                    admin: false,
                    tls,
                },
            ));
        }
        if !cfg.admin.listen.is_empty() {
            wanted.push((
                parse(&cfg.admin.listen, "admin.listen")?,
                Roles {
                    websocket: false,
                    endpoint: false,
                    router: false,
                    admin: true,
                    tls: false,
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
                    admin: false,
                    tls: false,
                },
            ));
        }
        let mut listeners = Vec::new();
        for (i, (addr, roles)) in wanted.into_iter().enumerate() {
            let addr = match same.and_then(|a| a.get(i).copied()) {
                Some(a) => a,
                // The first loop claims the port for this process alone (see `claim_port`).
                None => claim_port(addr)?,
            };
            listeners.push(Listener {
                socket: listen_shared(addr, cfg.server.listen_backlog)?,
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
                // One client per process, so that every loop's forwards share its connections.
                peering: peers.peering.clone().ok_or_else(|| {
                    io::Error::other("a router listener without a cluster client")
                })?,
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
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{endpoint_addr}")
        } else {
            cfg.server.public_url.trim_end_matches('/').to_string()
        };
        let limits = Limits {
            max_channels: cfg.websocket.max_channels,
            min_ping_interval_ms: cfg.websocket.min_ping_interval_ms,
            webpush: cfg.webpush.enabled,
            // Registrations expire on every store: refresh them three times per lifetime.
            refresh_ms: cfg.storage.registration_ttl_secs * 1000 / 3,
        };
        let origin = crate::vapid::origin(&public_url);
        let broadcasts = broadcasts::initial(&cfg);
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
            origin,
            limits,
            scratch: Vec::with_capacity(crate::ws::READ_CHUNK),
            next_sweep_ms: 1000,
            timers: BinaryHeap::new(),
            start: Instant::now(),
            next_gen: 0,
            spare_fd: File::open("/dev/null").ok(),
            shutdown_at: None,
            drain: None,
            broadcasts,
            shared,
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

    /// The addresses of the device, endpoint and router listeners (not the admin one).
    pub fn service_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|l| !l.roles.admin)
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let l = self.listeners.iter().find(|l| l.roles.admin)?;
        l.socket.local_addr().ok()
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
            self.peers.beat(self.id);
            // Jobs submitted during the last turn go to the storage threads together.
            self.store.flush();
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
            self.drain_step();
            if self.now_ms() >= self.next_sweep_ms {
                self.next_sweep_ms = self.now_ms() + 1000;
                self.store.sweep();
            }
            if let Some(at) = self.shutdown_at {
                let idle = self.conns.is_empty() && self.store.outstanding() == 0;
                if idle || self.now_ms() >= at {
                    self.peers.stopped(self.id);
                    self.inbox_drop();
                    // What the last turn queued (node records to clear) still goes out.
                    self.store.flush();
                    info!(
                        "event loop {}: shutdown complete, {} connections dropped",
                        self.id,
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
        if self.drain.is_some() {
            return Duration::from_millis(DRAIN_TICK_MS);
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

    /// Stops accepting (but for the admin listener) and closes every connection, gracefully,
    /// within the shutdown timeout.
    fn shut_down(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        let now = self.now_ms();
        let drain_ms = self.cfg.server.drain_ms;
        self.shutdown_at = Some(now + drain_ms + self.cfg.server.shutdown_timeout_ms);
        self.peers.draining.store(true, Ordering::Relaxed);
        self.close_listeners();
        let mut sockets = Vec::new();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            // A request waiting on storage or another node has an empty buffer too: it is not
            // idle, its answer is still to come.
            let idle_http = matches!(
                self.conns.get(key).map(|c| &c.state),
                Some(State::Http(h)) if h.buf.is_empty() && h.written >= h.out.len() && h.waiting.is_none()
            );
            if idle_http {
                self.drop_conn(key);
            } else if let Some(Conn {
                state: State::Http(h),
                ..
            }) = self.conns.get_mut(key)
            {
                h.close_after = true;
            } else if let Some(c) = self.conns.get(key) {
                sockets.push((key, c.gen));
            }
        }
        info!(
            "event loop {}: draining {} sockets over {drain_ms} ms",
            self.id,
            sockets.len()
        );
        self.drain = Some(Drain {
            started: now,
            total: sockets.len(),
            sockets,
        });
        self.drain_step();
    }

    /// Closes the device, endpoint and router listeners. The admin listener stays until the loop
    /// ends, so that readiness can say "draining" and metrics cover the drain.
    fn close_listeners(&mut self) {
        for l in self.listeners.iter_mut().filter(|l| !l.roles.admin) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.listeners.retain(|l| l.roles.admin);
        // A listener's token is its index, which just changed.
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let token = Token(LISTENER_BASE + i);
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut l.socket, token, Interest::READABLE)
            {
                warn!("admin listener during shutdown: {e}");
            }
        }
    }

    /// Closes the share of the drain's sockets that is due by now.
    fn drain_step(&mut self) {
        let Some(d) = self.drain.as_mut() else {
            return;
        };
        let elapsed = self.start.elapsed().as_millis() as u64 - d.started;
        let span = self.cfg.server.drain_ms;
        // Rounded up, so that a few sockets do not all wait for the end of the drain.
        let due = if elapsed >= span {
            d.total
        } else {
            (d.total as u64 * elapsed).div_ceil(span) as usize
        };
        let closed = d.total - d.sockets.len();
        let batch: Vec<(usize, u32)> = d.sockets.drain(..due.saturating_sub(closed)).collect();
        if d.sockets.is_empty() {
            self.drain = None;
        }
        for (key, gen) in batch {
            if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                self.begin_close(key, CloseCode::Away, "server shutting down");
            }
        }
    }

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
                debug!(conn:% = ConnName(self.id, key); "no hello in time");
                self.begin_close(key, CloseCode::Policy, "hello timeout");
            }
            State::Ws(w) if !w.closing => match w.watch {
                Watch::Partial => {
                    debug!(conn:% = ConnName(self.id, key); "a frame left incomplete too long");
                    self.begin_close(key, CloseCode::Policy, "incomplete frame");
                }
                Watch::Idle => self.ping(key),
                Watch::Pinged => self.ping_unanswered(key),
            },
            _ => {
                debug!(conn:% = ConnName(self.id, key); "timed out");
                self.drop_conn(key);
            }
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let conn = self.conns.remove(key);
        self.peers.open.fetch_sub(1, Ordering::Relaxed);
        let registry = self.poll.registry();
        match conn.state {
            State::Http(mut h) => drop(registry.deregister(h.stream.socket())),
            State::Ws(mut w) => {
                self.peers.websockets.fetch_sub(1, Ordering::Relaxed);
                drop(registry.deregister(w.link.stream_mut()));
                if let Some(uaid) = w.bound {
                    self.unbind(&uaid, key, conn.gen);
                }
            }
            State::Moving => {}
        }
    }

    fn conn_event(&mut self, key: usize) {
        // TLS records that could not be sent before go first (the socket may be writable again).
        let flushed = match self.conns.get_mut(key).map(|c| &mut c.state) {
            Some(State::Http(h)) => h.stream.flush_tls(),
            Some(State::Ws(w)) => w.link.transport().flush_tls(),
            _ => Ok(()),
        };
        if flushed.is_err() {
            return self.drop_conn(key);
        }
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Http(_)) => self.http_event(key),
            Some(State::Ws(_)) => self.ws_event(key),
            Some(State::Moving) | None => {}
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
}
