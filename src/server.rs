//! The event loop: one `mio::Poll`, a slab of connections, timers, and the effects `sm` asks for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use sm::update::Outcome;
use sm::{ChannelId, Effect, Inbound, Limits, Session, Uaid};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::config::Config;
use crate::endpoint::{self, Route};
use crate::http::{self, Head, Parsed, Response};
use crate::registry::Registry;
use crate::store::{self, PutResult, Store};
use crate::token::Tokens;

const SIGNALS: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 16;
const READ_CHUNK: usize = 4096;

/// What a listener serves.
#[derive(Clone, Copy, Debug)]
struct Roles {
    websocket: bool,
    endpoint: bool,
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
}

/// A 101 response being written; then the socket becomes a WebSocket.
struct Upgrading {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    leftover: Vec<u8>,
}

/// A WebSocket with its protocol session.
struct WsConn {
    ws: WebSocket<TcpStream>,
    session: Session,
}

// The WebSocket variant is the long-lived, common one: boxing it would add an allocation and a
// pointer to every idle connection, while the short-lived HTTP states merely waste some padding.
#[allow(clippy::large_enum_variant)]
enum State {
    Http(HttpConn),
    Upgrading(Upgrading),
    Ws(WsConn),
    /// Only for the instant a connection changes state; its socket is in hand.
    Moving,
}

struct Conn {
    gen: u32,
    /// Monotonic ms at which the current timer fires; 0 = none.
    deadline: u64,
    roles: Roles,
    state: State,
}

/// The server: listeners, connections and everything they share. Runs on one thread.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Signals,
    conns: Slab<Conn>,
    registry: Registry,
    store: Box<dyn Store>,
    tokens: Tokens,
    cfg: Config,
    public_url: String,
    limits: Limits,
    ws_config: WebSocketConfig,
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    start: Instant,
    next_gen: u32,
    spare_fd: Option<File>,
    shutdown_at: Option<u64>,
    last_refusal_log: u64,
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fresh_uaid_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
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

fn ws_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if would_block(io))
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
    /// Binds the listeners and prepares the loop.
    pub fn bind(cfg: Config, store: Box<dyn Store>, tokens: Tokens) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let main_addr: SocketAddr = cfg
            .server
            .listen
            .parse()
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "server.listen"))?;
        let split = !cfg.server.endpoint_listen.is_empty();
        listeners.push(Listener {
            socket: TcpListener::bind(main_addr)?,
            roles: Roles {
                websocket: true,
                endpoint: !split,
            },
        });
        if split {
            let addr: SocketAddr =
                cfg.server.endpoint_listen.parse().map_err(|_| {
                    io::Error::new(ErrorKind::InvalidInput, "server.endpoint_listen")
                })?;
            listeners.push(Listener {
                socket: TcpListener::bind(addr)?,
                roles: Roles {
                    websocket: false,
                    endpoint: true,
                },
            });
        }
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                &mut l.socket,
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )?;
        }
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let endpoint_addr = listeners[listeners.len() - 1].socket.local_addr()?;
        let public_url = if cfg.server.public_url.is_empty() {
            format!("http://{endpoint_addr}")
        } else {
            cfg.server.public_url.trim_end_matches('/').to_string()
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.websocket.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(cfg.websocket.max_output_buffer)
            .max_message_size(Some(cfg.websocket.max_message_size))
            .max_frame_size(Some(cfg.websocket.max_message_size));
        let limits = Limits {
            max_channels: cfg.websocket.max_channels,
            min_ping_interval_ms: cfg.websocket.min_ping_interval_ms,
        };
        Ok(Server {
            poll,
            listeners,
            signals,
            conns: Slab::with_capacity(1024),
            registry: Registry::default(),
            store,
            tokens,
            cfg,
            public_url,
            limits,
            ws_config,
            timers: BinaryHeap::new(),
            start: Instant::now(),
            next_gen: 0,
            spare_fd: File::open("/dev/null").ok(),
            shutdown_at: None,
            last_refusal_log: 0,
        })
    }

    /// The bound addresses: the WebSocket listener first, then the endpoint listener if split.
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
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(key) => self.conn_event(key),
                }
            }
            self.fire_timers();
            if let Some(at) = self.shutdown_at {
                if self.conns.is_empty() || self.now_ms() >= at {
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
        let now = self.now_ms();
        let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let wait = next.map_or(1000, |at| at.saturating_sub(now).min(1000));
        Duration::from_millis(wait)
    }

    fn on_signal(&mut self) {
        let got: Vec<i32> = self.signals.pending().collect();
        if got.is_empty() || self.shutdown_at.is_some() {
            return;
        }
        info!("signal {:?}: closing {} connections", got, self.conns.len());
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
                    warn!("accept: {e}");
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
        if self.conns.len() >= self.cfg.server.max_connections {
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
        entry.insert(Conn {
            gen: self.next_gen,
            deadline: 0,
            roles,
            state: State::Http(HttpConn {
                stream,
                buf: Vec::new(),
                out: Vec::new(),
                written: 0,
                close_after: false,
            }),
        });
        let at = self.now_ms() + self.cfg.server.request_timeout_ms;
        self.set_deadline(key, at);
    }

    // ---- timers ----

    fn set_deadline(&mut self, key: usize, at: u64) {
        if let Some(c) = self.conns.get_mut(key) {
            c.deadline = at;
            if at != 0 {
                self.timers.push(Reverse((at, key, c.gen)));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        while let Some(&Reverse((at, key, gen))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let live = self
                .conns
                .get(key)
                .is_some_and(|c| c.gen == gen && c.deadline == at);
            if live {
                self.expire(key);
            }
        }
    }

    fn expire(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match &conn.state {
            State::Ws(w) if !w.session.is_closed() => {
                debug!("conn {key}: no hello in time");
                self.begin_close(key, CloseCode::Policy, "hello timeout");
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
        let registry = self.poll.registry();
        match conn.state {
            State::Http(mut h) => drop(registry.deregister(&mut h.stream)),
            State::Upgrading(mut u) => drop(registry.deregister(&mut u.stream)),
            State::Ws(mut w) => {
                if let Some(uaid) = w.session.uaid() {
                    self.registry.unbind(&uaid, key);
                }
                drop(registry.deregister(w.ws.get_mut()));
            }
            State::Moving => {}
        }
    }

    fn conn_event(&mut self, key: usize) {
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Http(_)) => self.http_event(key),
            Some(State::Upgrading(_)) => self.upgrade_event(key),
            Some(State::Ws(_)) => self.ws_event(key),
            Some(State::Moving) | None => {}
        }
    }

    // ---- HTTP ----

    fn http_event(&mut self, key: usize) {
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
            if !h.out.is_empty() {
                h.out = Vec::new();
                h.written = 0;
                if h.close_after {
                    let _ = h.stream.shutdown(std::net::Shutdown::Write);
                    return self.drop_conn(key);
                }
                let at = self.now_ms() + self.cfg.server.keep_alive_timeout_ms;
                self.set_deadline(key, at);
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
                        if !self.read_more(key) {
                            return;
                        }
                        continue;
                    }
                    self.request(key, head);
                    if !matches!(self.conns.get(key).map(|c| &c.state), Some(State::Http(_))) {
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
        let resp = match endpoint::route(&head) {
            Route::Update(token) if roles.endpoint => self.update(&head, token, &body),
            Route::Status => Response::json(
                200,
                format!(
                    "{{\"status\":\"OK\",\"clients\":{},\"version\":\"{}\"}}",
                    self.registry.len(),
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

    fn update(&mut self, head: &Head, token: &str, body: &[u8]) -> Response {
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
            Err(r) => return r,
        };
        match self.store.put(&uaid, &channel, upd.version) {
            Ok(PutResult::Stored) => {}
            Ok(PutResult::UnknownChannel) => return endpoint::gone(),
            Err(_) => return endpoint::unavailable(),
        }
        let outcome = self.deliver(&uaid, &channel, upd.version, upd.data.as_deref());
        debug!(
            "update uaid={uaid} channel={channel} version={} -> {}",
            upd.version,
            outcome.status()
        );
        endpoint::outcome(outcome)
    }

    /// Writes a live notification if the UAID has a socket here that can take it.
    fn deliver(
        &mut self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
        data: Option<&str>,
    ) -> Outcome {
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
        let Some(frame) = w.session.notify(channel, version, data) else {
            return Outcome::Stored;
        };
        let sent = w.ws.write(Message::text(frame)).and_then(|()| w.ws.flush());
        match sent {
            Ok(()) => Outcome::Delivered,
            Err(e) if ws_would_block(&e) => Outcome::Delivered,
            Err(e) => {
                debug!("conn {key}: live delivery failed: {e}");
                self.drop_conn(key);
                Outcome::Stored
            }
        }
    }

    // ---- WebSocket handshake ----

    fn start_upgrade(&mut self, key: usize, head: &Head, up: &http::Upgrade) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return self.drop_conn(key);
        };
        conn.state = State::Upgrading(Upgrading {
            stream: h.stream,
            out: http::switching_protocols(up),
            written: 0,
            leftover: h
                .buf
                .get(head.head_len..)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
        });
        self.upgrade_event(key);
    }

    fn upgrade_event(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Upgrading(u) = &mut conn.state else {
            return;
        };
        match write_out(&mut u.stream, &u.out, &mut u.written) {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => return self.drop_conn(key),
        }
        let State::Upgrading(u) = std::mem::replace(&mut conn.state, State::Moving) else {
            return self.drop_conn(key);
        };
        let ws = WebSocket::from_partially_read(
            u.stream,
            u.leftover,
            Role::Server,
            Some(self.ws_config),
        );
        conn.state = State::Ws(WsConn {
            ws,
            session: Session::new(),
        });
        let at = self.now_ms() + self.cfg.websocket.hello_timeout_ms;
        self.set_deadline(key, at);
        self.ws_event(key);
    }

    // ---- WebSocket traffic ----

    fn ws_event(&mut self, key: usize) {
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
            match w.ws.read() {
                Ok(Message::Text(t)) => self.on_payload(key, t.as_bytes()),
                Ok(Message::Binary(b)) => self.on_payload(key, &b),
                Ok(Message::Close(_)) => self.on_peer_close(key),
                Ok(_) => {}
                Err(e) if ws_would_block(&e) => break,
                Err(tungstenite::Error::Capacity(e)) => {
                    debug!("conn {key}: {e}");
                    return self.begin_close(key, CloseCode::Size, "message too big");
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return self.drop_conn(key),
                Err(tungstenite::Error::Protocol(e)) => {
                    debug!("conn {key}: protocol error: {e}");
                    return self.begin_close(key, CloseCode::Protocol, "protocol error");
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    return self.begin_close(key, CloseCode::Invalid, "invalid UTF-8");
                }
                Err(_) => return self.drop_conn(key),
            }
        }
        self.flush_ws(key);
    }

    fn flush_ws(&mut self, key: usize) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        match w.ws.flush() {
            Ok(()) => {}
            Err(e) if ws_would_block(&e) => {}
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
            if let Some(uaid) = w.session.uaid() {
                self.registry.unbind(&uaid, key);
            }
            w.session.close();
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
        if let Some(uaid) = w.session.uaid() {
            self.registry.unbind(&uaid, key);
        }
        w.session.close();
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        match w.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(e) if ws_would_block(&e) => {}
            Err(_) => return self.drop_conn(key),
        }
        let at = self.now_ms() + self.cfg.server.close_timeout_ms;
        self.set_deadline(key, at);
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
        let effects = match sm::parse(payload) {
            Ok(req) => {
                log_request(key, w.session.uaid(), &req.kind);
                w.session
                    .handle(req, &self.limits, now, &mut fresh_uaid_bytes)
            }
            Err(refused) => {
                debug!("conn {key}: refused message: {:?}", refused.rejection);
                w.session.refused(refused)
            }
        };
        self.apply(key, effects);
    }

    /// Carries out the session's effects in order, feeding storage answers back.
    fn apply(&mut self, key: usize, effects: Vec<Effect>) {
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
                    match w.ws.write(Message::text(text)) {
                        Ok(()) => {}
                        Err(e) if ws_would_block(&e) => {}
                        Err(e) => {
                            debug!("conn {key}: write failed: {e}");
                            return self.drop_conn(key);
                        }
                    }
                }
                Effect::Close => self.begin_close(key, CloseCode::Normal, ""),
                Effect::Store(op) => {
                    let tokens = &self.tokens;
                    let base = &self.public_url;
                    let answer = store::execute(&mut *self.store, &op, |u, c| {
                        format!("{base}/update/{}", tokens.seal(u, c))
                    });
                    let Some(Conn {
                        state: State::Ws(w),
                        ..
                    }) = self.conns.get_mut(key)
                    else {
                        return;
                    };
                    for e in w.session.on_store(answer).into_iter().rev() {
                        queue.push_front(e);
                    }
                }
                Effect::Bind(uaid) => {
                    debug!("conn {key}: hello uaid={uaid}");
                    self.set_deadline(key, 0);
                    if let Some(old) = self.registry.bind(uaid, key) {
                        debug!("conn {old}: replaced by conn {key} for uaid={uaid}");
                        self.begin_close(old, CloseCode::Normal, "replaced by a newer connection");
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
