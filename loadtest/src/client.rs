//! One simulated device: a non-blocking WebSocket (tungstenite framing on a mio socket, in TLS
//! for wss://) walked through connect -> upgrade -> hello -> register -> ready -> close, in
//! SimplePush or (webpush scenario) WebPush. Every event is drained until the socket would block
//! (mio is edge-triggered); what happened is reported as [`Out`]s.

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde_json::{json, Value};
use tungstenite::client::client_with_config;
use tungstenite::handshake::MidHandshake;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{ClientHandshake, Error as WsError, HandshakeError, Message, WebSocket};

use crate::net;
use crate::rng::Rng;
use crate::stream::{Stream, TlsTarget};
use crate::webpush::{self, Received, SubKeys};

/// Messages read per readiness event before yielding to other sockets (the socket is re-armed).
const READ_BUDGET: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Connecting,
    Upgrading,
    Hello,
    Registering,
    Ready,
    Pinging,
    /// Open, replacing one channel: unregister sent, then register of a fresh channel.
    Rotating,
    Closing,
    Done,
}

impl Phase {
    /// Between the connect and the last register reply (or, resuming, the hello reply).
    pub fn in_setup(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Upgrading | Self::Hello | Self::Registering
        )
    }

    pub fn is_open(self) -> bool {
        matches!(self, Self::Ready | Self::Pinging | Self::Rotating)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Connecting => "connect",
            Self::Upgrading => "upgrade",
            Self::Hello => "hello",
            Self::Registering => "register",
            Self::Ready => "ready",
            Self::Pinging => "ping",
            Self::Rotating => "rotate",
            Self::Closing => "close",
            Self::Done => "done",
        }
    }
}

/// Fresh: hello with an empty uaid and no channels, then register new channels.
/// Resume: hello with the uaid and channelIDs this client already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fresh,
    Resume,
}

/// Where a channel's pushEndpoint points: an HTTP pool and the request path.
#[derive(Clone, Debug)]
pub struct EndpointRef {
    pub pool: u16,
    pub path: Box<str>,
}

#[derive(Clone, Debug)]
pub struct Channel {
    pub chid: String,
    pub endpoint: Option<EndpointRef>,
    /// Delivery book (churn with --devices): the highest version the server accepted (200/202)
    /// and the highest version this device received; SimplePush versions overwrite, so the
    /// channel is owed something exactly while `acked > received`.
    pub acked: u64,
    pub received: u64,
    /// A PUT to this channel is waiting for its answer (at most one at a time, as an app server
    /// that wants its versions in order does).
    pub inflight: bool,
    /// Being unregistered: no PUTs to it.
    pub retiring: bool,
    /// WebPush: the subscription's keys (p256dh and auth for the app server, the private key
    /// for the device).
    pub keys: Option<Box<SubKeys>>,
    /// WebPush: the number of the message waiting for this channel's notification (0 = none).
    pub outstanding: u64,
}

impl Channel {
    pub fn new(chid: String) -> Self {
        Self {
            chid,
            endpoint: None,
            acked: 0,
            received: 0,
            inflight: false,
            retiring: false,
            keys: None,
            outstanding: 0,
        }
    }

    /// Accepted versions not delivered yet.
    pub fn owed(&self) -> bool {
        self.acked > self.received
    }
}

/// What a client reports to the loop.
#[derive(Debug)]
pub enum Out {
    /// Setup complete: registered every channel (Fresh) or hello answered 200 (Resume).
    Up,
    /// Setup failed (the socket is gone); the kind names the phase and cause.
    SetupFailed(String),
    /// A register reply carried this pushEndpoint for channel `chan`.
    Endpoint {
        chan: usize,
        url: String,
    },
    /// A resumed hello was answered with another uaid.
    UaidChanged,
    /// Rotation: channel `chan` was unregistered; `owed` if an accepted version had not arrived.
    Unregistered {
        owed: bool,
    },
    /// Rotation complete: the fresh channel is registered (its Endpoint came just before).
    Rotated,
    /// Rotation failed (the socket stays open); the kind names the step and cause.
    RotateFailed(String),
    /// A notification's updates (channelID, version); already acked.
    Notification(Vec<(String, u64)>),
    /// A WebPush message on channel `chan`, opened and checked; already acked.
    Message {
        chan: usize,
        got: Received,
    },
    Pong,
    PingLost,
    /// Our close completed (clean) or broke/timed out.
    Closed {
        clean: bool,
    },
    /// An open socket ended without our asking.
    Dropped(String),
}

/// Settings every client shares.
pub struct Shared {
    /// The --ws-url list; a client's target is picked by the driver (`Ctx::target`).
    pub urls: Vec<String>,
    pub ws_config: WebSocketConfig,
    pub channels: u32,
    pub setup_timeout: Duration,
    pub close_timeout: Duration,
    pub ping_timeout: Duration,
    /// Per URL: its TLS settings (wss://) or None.
    pub tls: Vec<Option<TlsTarget>>,
    /// The webpush scenario's settings (None: SimplePush).
    pub webpush: Option<WebPushShared>,
}

/// What WebPush devices share.
pub struct WebPushShared {
    /// The app server's VAPID public key, sent as each register's `key`.
    pub application_server_key: String,
    /// --payload-size: what each message's size must be.
    pub sizes: Vec<usize>,
}

impl Shared {
    /// `waits`: (ping, close) timeouts, scaled by the caller with the run's size.
    pub fn new(
        urls: &[String],
        channels: u32,
        setup_timeout: Duration,
        waits: (Duration, Duration),
        tls: Vec<Option<TlsTarget>>,
        webpush: Option<WebPushShared>,
    ) -> Self {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(2048)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
            .max_message_size(Some(1 << 20));
        Self {
            urls: urls.to_vec(),
            ws_config,
            channels,
            setup_timeout,
            ping_timeout: waits.0,
            close_timeout: waits.1,
            tls,
            webpush,
        }
    }
}

/// What a client needs from the loop while it handles an event.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub shared: &'a Shared,
    /// Which of `shared.urls` this client connects to.
    pub target: usize,
    pub rng: &'a mut Rng,
    pub out: &'a mut Vec<Out>,
    pub now: Instant,
}

enum Conn {
    None,
    Tcp(TcpStream),
    Mid(Box<MidHandshake<ClientHandshake<Stream>>>),
    Ws(Box<WebSocket<Stream>>),
}

pub struct Client {
    pub phase: Phase,
    conn: Conn,
    pub mode: Mode,
    pub uaid: String,
    pub channels: Vec<Channel>,
    awaiting: usize,
    pub started: Instant,
    pub hello_at: Instant,
    pub deadline: Instant,
    close_by_us: bool,
    /// The channel being replaced while Rotating.
    rotating: Option<usize>,
}

impl Client {
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Idle,
            conn: Conn::None,
            mode: Mode::Fresh,
            uaid: String::new(),
            channels: Vec::new(),
            awaiting: 0,
            started: now,
            hello_at: now,
            deadline: now,
            close_by_us: false,
            rotating: None,
        }
    }

    /// Takes a socket whose connect is under way and registers it under `token`.
    pub fn start(&mut self, token: Token, mut stream: TcpStream, mode: Mode, ctx: &mut Ctx) {
        self.mode = mode;
        self.close_by_us = false;
        self.started = ctx.now;
        self.deadline = ctx.now + ctx.shared.setup_timeout;
        self.phase = Phase::Connecting;
        if let Err(e) =
            ctx.registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            return self.fail(ctx, format!("register_fd: {}", io_kind(&e)));
        }
        self.conn = Conn::Tcp(stream);
    }

    /// Handles a readiness event on this client's socket.
    pub fn on_event(&mut self, token: Token, ctx: &mut Ctx) {
        match self.phase {
            Phase::Connecting => self.on_connecting(ctx),
            Phase::Upgrading => self.on_upgrading(ctx),
            Phase::Idle | Phase::Done => {}
            _ => self.on_ws(token, ctx),
        }
    }

    /// Sends the ping `{}`; a `{}` answer brings [`Out::Pong`].
    pub fn ping(&mut self, ctx: &mut Ctx) {
        if self.phase != Phase::Ready {
            return;
        }
        self.phase = Phase::Pinging;
        self.deadline = ctx.now + ctx.shared.ping_timeout;
        self.send(ctx, "{}".to_string());
    }

    /// Replaces channel `chan` (Ready only): unregister it, then register a fresh channel in
    /// its place. Reports Unregistered, then Endpoint and Rotated (or RotateFailed).
    pub fn rotate(&mut self, chan: usize, ctx: &mut Ctx) {
        if self.phase != Phase::Ready || chan >= self.channels.len() {
            return;
        }
        self.channels[chan].retiring = true;
        self.rotating = Some(chan);
        self.phase = Phase::Rotating;
        self.deadline = ctx.now + ctx.shared.setup_timeout;
        let msg = json!({"messageType": "unregister", "channelID": self.channels[chan].chid});
        self.send(ctx, msg.to_string());
    }

    fn rotate_failed(&mut self, ctx: &mut Ctx, kind: String) {
        if let Some(chan) = self.rotating.take() {
            self.channels[chan].retiring = false;
        }
        self.phase = Phase::Ready;
        ctx.out.push(Out::RotateFailed(kind));
    }

    /// Starts a clean close (close frame, then wait for the server's close and its FIN).
    pub fn close(&mut self, ctx: &mut Ctx) {
        if matches!(self.phase, Phase::Idle | Phase::Done | Phase::Closing) {
            return;
        }
        self.close_by_us = true;
        let Conn::Ws(ws) = &mut self.conn else {
            self.conn = Conn::None;
            self.phase = Phase::Done;
            ctx.out.push(Out::Closed { clean: false });
            return;
        };
        self.phase = Phase::Closing;
        self.deadline = ctx.now + ctx.shared.close_timeout;
        match ws.close(None) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.ended(ctx, Some(ws_kind(&e))),
        }
    }

    /// Called when `deadline` has passed.
    pub fn expire(&mut self, ctx: &mut Ctx) {
        match self.phase {
            p if p.in_setup() => self.fail(ctx, format!("timeout_{}", p.name())),
            Phase::Pinging => {
                self.phase = Phase::Ready;
                ctx.out.push(Out::PingLost);
            }
            Phase::Rotating => self.rotate_failed(ctx, "timeout_rotate".to_string()),
            Phase::Closing => {
                self.conn = Conn::None;
                self.phase = Phase::Done;
                ctx.out.push(Out::Closed { clean: false });
            }
            _ => {}
        }
    }

    /// Drops the socket at once, reporting nothing (end of run).
    pub fn abandon(&mut self) {
        self.conn = Conn::None;
        self.phase = Phase::Done;
    }

    /// Readies a finished client for another cycle.
    pub fn reset(&mut self) {
        self.conn = Conn::None;
        self.phase = Phase::Idle;
        // A rotation cut short by the socket's end: the channel was settled and got no PUTs
        // since, so whether or not the server saw the unregister, nothing is owed on it.
        if let Some(chan) = self.rotating.take() {
            self.channels[chan].retiring = false;
        }
    }

    pub fn has_deadline(&self) -> bool {
        self.phase.in_setup()
            || matches!(
                self.phase,
                Phase::Pinging | Phase::Closing | Phase::Rotating
            )
    }

    fn on_connecting(&mut self, ctx: &mut Ctx) {
        let Conn::Tcp(stream) = &self.conn else {
            return;
        };
        match net::connect_result(stream) {
            Ok(false) => {}
            Ok(true) => {
                if let Conn::Tcp(sock) = std::mem::replace(&mut self.conn, Conn::None) {
                    self.phase = Phase::Upgrading;
                    let stream = match Stream::new(sock, ctx.shared.tls[ctx.target].as_ref()) {
                        Ok(s) => s,
                        Err(e) => return self.fail(ctx, format!("tls: {e}")),
                    };
                    let res = client_with_config(
                        ctx.shared.urls[ctx.target].as_str(),
                        stream,
                        Some(ctx.shared.ws_config),
                    );
                    self.on_handshake(res, ctx);
                }
            }
            Err(e) => self.fail(ctx, format!("connect: {}", io_kind(&e))),
        }
    }

    fn on_upgrading(&mut self, ctx: &mut Ctx) {
        if let Conn::Mid(mid) = std::mem::replace(&mut self.conn, Conn::None) {
            self.on_handshake(mid.handshake(), ctx);
        }
    }

    fn on_handshake<R>(
        &mut self,
        res: Result<(WebSocket<Stream>, R), HandshakeError<ClientHandshake<Stream>>>,
        ctx: &mut Ctx,
    ) {
        match res {
            Ok((ws, _response)) => self.opened(ws, ctx),
            Err(HandshakeError::Interrupted(mid)) => self.conn = Conn::Mid(Box::new(mid)),
            Err(HandshakeError::Failure(e)) => self.fail(ctx, format!("upgrade: {}", ws_kind(&e))),
        }
    }

    fn opened(&mut self, ws: WebSocket<Stream>, ctx: &mut Ctx) {
        self.conn = Conn::Ws(Box::new(ws));
        self.phase = Phase::Hello;
        self.hello_at = ctx.now;
        let hello = match self.mode {
            // As Firefox says it: no channelIDs.
            Mode::Fresh if ctx.shared.webpush.is_some() => {
                json!({"messageType": "hello", "use_webpush": true, "broadcasts": {}})
            }
            Mode::Fresh => json!({"messageType": "hello", "uaid": "", "channelIDs": []}),
            Mode::Resume => {
                let ids: Vec<&str> = self.channels.iter().map(|c| c.chid.as_str()).collect();
                json!({"messageType": "hello", "uaid": self.uaid, "channelIDs": ids})
            }
        };
        self.send(ctx, hello.to_string());
    }

    fn send(&mut self, ctx: &mut Ctx, text: String) {
        let Conn::Ws(ws) = &mut self.conn else { return };
        match ws.send(Message::text(text)) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.ended(ctx, Some(ws_kind(&e))),
        }
    }

    fn on_ws(&mut self, token: Token, ctx: &mut Ctx) {
        for _ in 0..READ_BUDGET {
            let msg = match &mut self.conn {
                Conn::Ws(ws) => ws.read(),
                _ => return,
            };
            match msg {
                Ok(Message::Text(t)) => self.on_text(t.as_str(), ctx),
                Ok(Message::Binary(b)) => {
                    if let Ok(t) = std::str::from_utf8(&b) {
                        self.on_text(t, ctx);
                    }
                }
                Ok(_) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.flush(ctx)
                }
                Err(WsError::ConnectionClosed) => return self.ended(ctx, None),
                Err(e) => return self.ended(ctx, Some(ws_kind(&e))),
            }
            if matches!(self.phase, Phase::Done | Phase::Idle) {
                return;
            }
        }
        // Budget used up with input possibly left: flush, and re-arm so epoll reports it again.
        self.flush(ctx);
        if let Conn::Ws(ws) = &mut self.conn {
            let _ = ctx.registry.reregister(
                ws.get_mut().tcp_mut(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }

    fn flush(&mut self, ctx: &mut Ctx) {
        let Conn::Ws(ws) = &mut self.conn else { return };
        match ws.flush() {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::ConnectionClosed) => self.ended(ctx, None),
            Err(e) => self.ended(ctx, Some(ws_kind(&e))),
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let kind = v
            .get("messageType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        match kind.as_str() {
            "hello" => self.on_hello(&v, ctx),
            "register" if self.phase == Phase::Rotating => self.on_rotate_register(&v, ctx),
            "register" => self.on_register(&v, ctx),
            "unregister" => self.on_unregister(&v, ctx),
            "notification" => self.on_notification(&v, ctx),
            "" if self.phase == Phase::Pinging => {
                self.phase = Phase::Ready;
                ctx.out.push(Out::Pong);
            }
            _ => {}
        }
    }

    fn on_hello(&mut self, v: &Value, ctx: &mut Ctx) {
        if self.phase != Phase::Hello {
            return;
        }
        let status = status_of(v);
        if status != 200 {
            return self.fail(ctx, format!("hello_status_{status}"));
        }
        let uaid = v.get("uaid").and_then(Value::as_str).unwrap_or("");
        match self.mode {
            Mode::Fresh => {
                self.uaid = uaid.to_string();
                self.register_all(ctx);
            }
            Mode::Resume => {
                if uaid != self.uaid {
                    ctx.out.push(Out::UaidChanged);
                    self.uaid = uaid.to_string();
                }
                self.up(ctx);
            }
        }
    }

    fn register_all(&mut self, ctx: &mut Ctx) {
        let k = ctx.shared.channels as usize;
        self.channels = (0..k).map(|_| Channel::new(ctx.rng.uuid())).collect();
        self.awaiting = k;
        self.phase = Phase::Registering;
        for i in 0..k {
            let mut msg = json!({"messageType": "register", "channelID": self.channels[i].chid});
            if let Some(wp) = &ctx.shared.webpush {
                match SubKeys::generate(ctx.rng) {
                    Ok(keys) => self.channels[i].keys = Some(Box::new(keys)),
                    Err(e) => return self.fail(ctx, format!("subscription_keys: {e:?}")),
                }
                msg["key"] = wp.application_server_key.as_str().into();
            }
            self.send(ctx, msg.to_string());
        }
    }

    fn on_register(&mut self, v: &Value, ctx: &mut Ctx) {
        if self.phase != Phase::Registering {
            return;
        }
        let status = status_of(v);
        if status != 200 {
            return self.fail(ctx, format!("register_status_{status}"));
        }
        let chid = v.get("channelID").and_then(Value::as_str).unwrap_or("");
        let Some(chan) = self
            .channels
            .iter()
            .position(|c| c.chid.eq_ignore_ascii_case(chid))
        else {
            return self.fail(ctx, "register_unknown_channel".to_string());
        };
        let url = v
            .get("pushEndpoint")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        ctx.out.push(Out::Endpoint { chan, url });
        self.awaiting = self.awaiting.saturating_sub(1);
        if self.awaiting == 0 {
            self.up(ctx);
        }
    }

    fn on_unregister(&mut self, v: &Value, ctx: &mut Ctx) {
        let Some(chan) = self.rotating.filter(|_| self.phase == Phase::Rotating) else {
            return;
        };
        let status = status_of(v);
        if status != 200 {
            return self.rotate_failed(ctx, format!("unregister_status_{status}"));
        }
        let chid = v.get("channelID").and_then(Value::as_str).unwrap_or("");
        if !self.channels[chan].chid.eq_ignore_ascii_case(chid) {
            return self.rotate_failed(ctx, "unregister_unknown_channel".to_string());
        }
        // Every version the server accepted for it was written to this socket before it read
        // the unregister, so it must have arrived by now.
        ctx.out.push(Out::Unregistered {
            owed: self.channels[chan].owed(),
        });
        self.channels[chan] = Channel::new(ctx.rng.uuid());
        let msg = json!({"messageType": "register", "channelID": self.channels[chan].chid});
        self.send(ctx, msg.to_string());
    }

    fn on_rotate_register(&mut self, v: &Value, ctx: &mut Ctx) {
        let Some(chan) = self.rotating else { return };
        let status = status_of(v);
        if status != 200 {
            return self.rotate_failed(ctx, format!("register_status_{status}"));
        }
        let chid = v.get("channelID").and_then(Value::as_str).unwrap_or("");
        if !self.channels[chan].chid.eq_ignore_ascii_case(chid) {
            return self.rotate_failed(ctx, "register_unknown_channel".to_string());
        }
        let url = v
            .get("pushEndpoint")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        ctx.out.push(Out::Endpoint { chan, url });
        self.rotating = None;
        self.phase = Phase::Ready;
        ctx.out.push(Out::Rotated);
    }

    fn up(&mut self, ctx: &mut Ctx) {
        self.phase = Phase::Ready;
        ctx.out.push(Out::Up);
    }

    fn on_notification(&mut self, v: &Value, ctx: &mut Ctx) {
        if ctx.shared.webpush.is_some() {
            return self.on_message(v, ctx);
        }
        let Some(list) = v.get("updates").and_then(Value::as_array) else {
            return;
        };
        let updates: Vec<(String, u64)> = list
            .iter()
            .filter_map(|u| {
                let chid = u.get("channelID")?.as_str()?;
                Some((chid.to_string(), u.get("version")?.as_u64()?))
            })
            .collect();
        if updates.is_empty() {
            return;
        }
        let acks: Vec<Value> = updates
            .iter()
            .map(|(c, v)| json!({"channelID": c, "version": v}))
            .collect();
        if !matches!(self.phase, Phase::Closing) {
            self.send(
                ctx,
                json!({"messageType": "ack", "updates": acks}).to_string(),
            );
        }
        ctx.out.push(Out::Notification(updates));
    }

    /// A WebPush notification: opened with its channel's keys, checked, acked by version
    /// (code 100 delivered, 101 not decryptable, as Firefox answers).
    fn on_message(&mut self, v: &Value, ctx: &mut Ctx) {
        let chid = v.get("channelID").and_then(Value::as_str).unwrap_or("");
        let version = v.get("version").and_then(Value::as_str).unwrap_or("");
        let Some(chan) = self
            .channels
            .iter()
            .position(|c| c.chid.eq_ignore_ascii_case(chid))
        else {
            return;
        };
        let sizes = ctx.shared.webpush.as_ref().map_or(&[][..], |w| &w.sizes);
        let aes128gcm = v
            .pointer("/headers/encoding")
            .and_then(Value::as_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("aes128gcm"));
        let data = v.get("data").and_then(Value::as_str).filter(|_| aes128gcm);
        let got = match &self.channels[chan].keys {
            Some(keys) => webpush::receive(keys, data, sizes),
            None => Received::Unreadable,
        };
        let code = if matches!(got, Received::Unreadable) {
            101
        } else {
            100
        };
        if !matches!(self.phase, Phase::Closing) && !version.is_empty() {
            let ack = json!({"messageType": "ack",
                "updates": [{"channelID": chid, "version": version, "code": code}]});
            self.send(ctx, ack.to_string());
        }
        ctx.out.push(Out::Message { chan, got });
    }

    fn fail(&mut self, ctx: &mut Ctx, kind: String) {
        self.conn = Conn::None;
        self.phase = Phase::Done;
        ctx.out.push(Out::SetupFailed(kind));
    }

    /// The socket ended: `err` None after a close handshake, else what broke.
    fn ended(&mut self, ctx: &mut Ctx, err: Option<String>) {
        let phase = self.phase;
        self.conn = Conn::None;
        self.phase = Phase::Done;
        if phase.in_setup() {
            let why = err.unwrap_or_else(|| "closed_by_server".to_string());
            ctx.out
                .push(Out::SetupFailed(format!("{}: {why}", phase.name())));
        } else if phase == Phase::Closing && self.close_by_us {
            ctx.out.push(Out::Closed {
                clean: err.is_none(),
            });
        } else if phase.is_open() {
            ctx.out.push(Out::Dropped(
                err.unwrap_or_else(|| "closed_by_server".to_string()),
            ));
        }
    }
}

fn status_of(v: &Value) -> u64 {
    v.get("status").and_then(Value::as_u64).unwrap_or(0)
}

/// A short, stable name for an I/O error (used as a failure-count key).
pub fn io_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no_local_port".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out_of_fds".into(),
        Some(libc::ETIMEDOUT) => "timed_out".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        Some(n) => format!("errno_{n}"),
        // What rustls refused (a certificate, a protocol error): its own words.
        None if e.kind() == io::ErrorKind::InvalidData => format!("tls: {e}"),
        None => format!("{:?}", e.kind()).to_lowercase(),
    }
}

fn ws_kind(e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_kind(io),
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}
