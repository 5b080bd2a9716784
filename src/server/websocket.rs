//! WebSocket connections on the event loop: upgrade, frames in, session effects out, close.

use super::*;

pub(super) fn log_request(conn: ConnName, uaid: Option<Uaid>, kind: &Inbound) {
    count_request(kind);
    if let (Inbound::Ack(items), Some(u)) = (kind, uaid) {
        for i in items {
            crate::metrics::track(Event::Acked, &u, &i.channel_id, &i.version);
        }
    }
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    // Ids as the client spelled them; "-" before hello.
    let uaid = uaid.map_or_else(|| "-".to_string(), |u| u.to_string());
    match kind {
        Inbound::Ack(items) => {
            for i in items {
                let code = i.code.map_or_else(|| "-".to_string(), |c| c.to_string());
                debug!(
                    conn:%, uaid:%, channel:% = i.channel_id, version:% = i.version, code:%;
                    "ack"
                );
            }
        }
        Inbound::Hello(h) => {
            let offered = match &h.uaid {
                HelloUaid::Valid(u) => u.to_string(),
                HelloUaid::Empty => String::new(),
                HelloUaid::Invalid => "invalid".into(),
            };
            let channels = h.channels.len();
            debug!(conn:%, uaid:%, offered:%, channels, webpush = h.use_webpush; "hello received");
        }
        Inbound::Register { channel, key } => {
            let key = match key {
                sm::message::RegisterKey::None => "none",
                sm::message::RegisterKey::Valid(_) => "valid",
                sm::message::RegisterKey::Invalid => "invalid",
            };
            debug!(conn:%, uaid:%, channel:%, key; "register");
        }
        Inbound::Unregister { id, .. } => {
            let channel = id.map_or_else(|| "invalid".to_string(), |c| c.to_string());
            debug!(conn:%, uaid:%, channel:%; "unregister");
        }
        other => debug!(conn:%, uaid:%; "{}", command_name(other)),
    }
}

fn command_name(kind: &Inbound) -> &'static str {
    match kind {
        Inbound::Ping => "ping",
        Inbound::Purge => "purge",
        Inbound::Hello(_) => "hello",
        Inbound::Register { .. } => "register",
        Inbound::Unregister { .. } => "unregister",
        Inbound::Ack(_) => "ack",
        Inbound::BroadcastSubscribe(_) => "broadcast_subscribe",
        Inbound::Nack => "nack",
    }
}

fn count_request(kind: &Inbound) {
    let m = &METRICS;
    match kind {
        Inbound::Hello(_) => m.command(Command::Hello, 1),
        Inbound::Register { .. } => m.command(Command::Register, 1),
        Inbound::Unregister { .. } => m.command(Command::Unregister, 1),
        Inbound::Ping => m.command(Command::Ping, 1),
        Inbound::Ack(items) => m.command(Command::Ack, items.len() as u64),
        _ => {}
    }
}

/// Takes the tokens a register needs from the socket's source: one for the registration, and
/// one for a new UAID when the socket's UAID is not in the store yet (its first registration
/// creates it there); `false` when the source is over a limit. Anything else needs none.
fn may_create(limiter: &Limiter, w: &WsConn, req: &sm::Request) -> bool {
    match &req.kind {
        Inbound::Register { .. } if w.session.uaid().is_some() => {
            let wanted: &[What] = match w.novelty {
                Novelty::Unknown | Novelty::Minted => &[What::Register, What::Uaid],
                Novelty::Known => &[What::Register],
            };
            allow(limiter, w, wanted)
        }
        _ => true,
    }
}

/// Takes a token for each of `wanted` from the socket's source, or none; `false` (counted, and
/// logged now and then with the socket's peer) when the source is over a limit.
fn allow(limiter: &Limiter, w: &WsConn, wanted: &[What]) -> bool {
    limiter.allow(w.source, wanted, || match w.link.peer_addr() {
        Some(peer) => format!("the source of {peer}"),
        None => "a source".to_string(),
    })
}

impl Server {
    /// Turns the HTTP connection into a WebSocket. The 101 response goes out with the replies to
    /// whatever the client sent right behind its upgrade request, in one write.
    pub(super) fn start_upgrade(&mut self, key: usize, head: &Head, up: &http::Upgrade) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(mut h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return self.drop_conn(key);
        };
        let source = self.source_of(h.stream.socket(), up);
        let leftover = h
            .buf
            .get(head.head_len..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let mut link = Link::new(h.stream, leftover);
        link.cork();
        link.queue_raw(http::switching_protocols(up));
        self.open_ws(key, link, Session::new(), source);
        self.ws_event(key);
    }

    /// Who a new WebSocket counts against for the rate limits: its peer, or the client a trusted
    /// proxy names in the upgrade request. Looked up once, and only with a limit on.
    fn source_of(&self, socket: &TcpStream, up: &http::Upgrade) -> Source {
        let limiter = &self.peers.limiter;
        if !limiter.enabled() {
            return Source::default();
        }
        match socket.peer_addr() {
            Ok(peer) => limiter.source(peer, up.forwarded_for.as_deref()),
            // The peer is gone already: its socket fails at the next read.
            Err(_) => Source::default(),
        }
    }

    /// Makes connection `key` a WebSocket waiting for its hello (the hello timeout runs). While the
    /// server stops it is closed at once with "going away"; `false` then.
    pub(super) fn open_ws(
        &mut self,
        key: usize,
        link: Link,
        session: Session,
        source: Source,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        self.peers.websockets.fetch_add(1, Ordering::Relaxed);
        conn.state = State::Ws(WsConn {
            link,
            session,
            bound: None,
            closing: false,
            watch: Watch::Idle,
            known: Default::default(),
            source,
            novelty: Novelty::Known,
        });
        let at = self.now_ms() + self.cfg.websocket.hello_timeout_ms;
        self.set_deadline(key, at);
        if self.shutdown_at.is_some() {
            self.begin_close(key, CloseCode::Away, "server shutting down");
            return false;
        }
        true
    }

    pub(super) fn ws_event(&mut self, key: usize) {
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
        self.watch(key);
        self.flush_ws(key);
    }

    /// Reads and handles messages until the socket has no more, the session waits on storage, or
    /// the budget is spent.
    pub(super) fn read_ws(&mut self, key: usize) {
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
            let ws = &self.cfg.websocket;
            // Before hello a client is anonymous: a hello is a few KiB, never a megabyte.
            let limits = ReadLimits {
                max_size: match w.bound {
                    None => ws.max_hello_size,
                    Some(_) => ws.max_message_size,
                },
                budget: ws.partial_input_budget,
            };
            match w.link.next(&mut self.scratch, limits) {
                Ok(Some(Incoming::Data(payload))) => self.on_payload(key, &payload),
                Ok(Some(Incoming::Close)) => self.on_peer_close(key),
                Ok(Some(Incoming::Busy)) => {
                    self.again.push(key);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(conn:% = ConnName(self.id, key); "{e}");
                    match e.close_code() {
                        Some(code) => self.begin_close(key, code, "protocol error"),
                        None => return self.drop_conn(key),
                    }
                    break;
                }
            }
        }
    }

    /// After hello, the deadline of a socket that is not closing. A socket holding part of a frame
    /// gets the request timeout to send the rest (otherwise idle sockets could each pin up to a
    /// message's worth of memory for ever); any other is pinged once silent for the ping interval,
    /// counted from the last bytes it sent.
    pub(super) fn watch(&mut self, key: usize) {
        let now = self.now_ms();
        let idle = self.idle_deadline(now);
        let request_ms = self.cfg.server.request_timeout_ms;
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let heard = w.link.take_heard();
        if w.bound.is_none() || w.closing {
            // Before hello the hello timeout applies; while closing, the close timeout.
            return;
        }
        let (watch, at) = match (w.link.has_partial(), w.watch) {
            // The partial frame's timeout runs from its first bytes, not its latest.
            (true, Watch::Partial) => return,
            (true, _) => (Watch::Partial, now + request_ms),
            (false, Watch::Partial) => (Watch::Idle, idle),
            (false, _) if heard => (Watch::Idle, idle),
            // Nothing read (a writable event): the ping timer stands.
            (false, _) => return,
        };
        w.watch = watch;
        self.set_deadline(key, at);
    }

    /// When a socket silent from `now` on is to be pinged; 0 (no timer) with pings off.
    pub(super) fn idle_deadline(&self, now: u64) -> u64 {
        self.cfg
            .websocket
            .auto_ping_ms()
            .map_or(0, |(every, _)| now + every)
    }

    /// The ping interval has passed in silence: ping, and wait the ping timeout for any answer.
    pub(super) fn ping(&mut self, key: usize) {
        let Some((_, wait)) = self.cfg.websocket.auto_ping_ms() else {
            return;
        };
        let at = self.now_ms() + wait;
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        w.watch = Watch::Pinged;
        if let Err(e) = w.link.send_ping() {
            debug!(conn:% = ConnName(self.id, key); "ping failed: {e}");
            return self.drop_conn(key);
        }
        self.set_deadline(key, at);
        self.flush_ws(key);
    }

    /// Nothing came back in the ping timeout: the peer is gone (a half-open connection, a frozen
    /// device) and the socket would count as a client for ever. No close handshake: nobody would
    /// answer it.
    pub(super) fn ping_unanswered(&mut self, key: usize) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        if w.session.is_busy() {
            // Its input waits behind a storage call, unread: an answer may be there.
            let at = self.now_ms() + self.cfg.server.request_timeout_ms;
            return self.set_deadline(key, at);
        }
        debug!(conn:% = ConnName(self.id, key); "no answer to a ping: dead socket closed");
        METRICS.dead_socket();
        // For a peer that is merely slow, a reason; it costs nothing if nobody reads it.
        let _ = w.link.send_close(CloseCode::Away, "ping timeout");
        let _ = w.link.flush(usize::MAX);
        self.drop_conn(key);
    }

    pub(super) fn flush_ws(&mut self, key: usize) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let max_output = self.cfg.websocket.max_output_buffer;
        match w.link.uncork(max_output) {
            // Over TLS, the last records may still wait for the socket: the next writable event
            // sends them and comes back here (the close timeout bounds the wait).
            Ok(()) if w.link.finished() && !w.link.transport().pending() => self.drop_conn(key),
            Ok(()) => {}
            Err(_) => self.drop_conn(key),
        }
    }

    pub(super) fn on_peer_close(&mut self, key: usize) {
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
    pub(super) fn begin_close(&mut self, key: usize, code: CloseCode, reason: &'static str) {
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

    pub(super) fn on_payload(&mut self, key: usize, payload: &[u8]) {
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
                log_request(ConnName(id, key), w.session.uaid(), &req.kind);
                if !may_create(&self.peers.limiter, w, &req) {
                    return self.throttled(key, req);
                }
                // A first hello without a UAID gets a fresh one, which no store knows yet.
                if matches!(&req.kind, Inbound::Hello(h) if h.uaid == HelloUaid::Empty)
                    && w.session.uaid().is_none()
                {
                    w.novelty = Novelty::Unknown;
                }
                w.session
                    .handle_with(req, &self.limits, &self.broadcasts, now, &mut || {
                        fresh_owned(id, loops)
                    })
            }
            Err(refused) => {
                debug!(conn:% = ConnName(id, key), rejection:? = refused.rejection; "refused message");
                w.session.refused(refused)
            }
        };
        self.apply(key, effects, None);
    }

    /// Answers a hello or register the socket's source may not make now.
    fn throttled(&mut self, key: usize, req: sm::Request) {
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        debug!("conn {key}: rate limited: {:?}", req.kind);
        let effects = w.session.throttled(req);
        self.apply(key, effects, None);
    }

    /// Makes socket `key` the UAID's live one here and, in a cluster, in its node record
    /// (unless the hello job wrote it already, or the first register will).
    fn bind_socket(&mut self, key: usize, uaid: Uaid, origin: Origin, claimed: Option<Uaid>) {
        debug!(conn:% = ConnName(self.id, key), uaid:%; "hello");
        // The hello timeout gives way to the ping timer (or to none).
        let idle = self.idle_deadline(self.now_ms());
        self.set_deadline(key, idle);
        let mut owed = origin == Origin::Minted;
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            w.bound = Some(uaid);
            w.watch = Watch::Idle;
            if owed {
                w.novelty = Novelty::Minted;
            }
            // A repeated hello before the first registration: the node record is still owed.
            owed = w.novelty == Novelty::Minted;
        }
        let replaced = self.registry.bind(uaid, key);
        self.peers.clients[self.id].store(self.registry.len(), Ordering::Relaxed);
        if let Some(old) = replaced {
            if self.bound_to(old) == Some(uaid) {
                debug!(
                    conn:% = ConnName(self.id, old), by:% = ConnName(self.id, key), uaid:%;
                    "replaced by a newer connection"
                );
                self.begin_close(old, CloseCode::Normal, "replaced by a newer connection");
            }
        }
        let node = self.conn_ref(key).and_then(|r| self.node_id(key, r.gen));
        if let Some(node) = node.filter(|_| claimed != Some(uaid) && !owed) {
            self.store.submit(Job::Bound { uaid, node });
        }
    }

    /// What the store knows of socket `key`'s UAID (`Known` for anything but a WebSocket).
    fn novelty(&self, key: usize) -> Novelty {
        match self.conns.get(key) {
            Some(Conn {
                state: State::Ws(w),
                ..
            }) => w.novelty,
            _ => Novelty::Known,
        }
    }

    /// Carries out the session's effects in order. `claimed`: a UAID whose node record the hello
    /// job already set for this socket.
    pub(super) fn apply(&mut self, key: usize, effects: Vec<Effect>, claimed: Option<Uaid>) {
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
                        debug!(conn:% = ConnName(self.id, key); "write failed: {e}");
                        return self.drop_conn(key);
                    }
                }
                Effect::Close => self.begin_close(key, CloseCode::Normal, ""),
                Effect::Store(op) => {
                    if let StoreOp::Unregister { channel, .. } = &op {
                        // From now on its updates wait for the store, which refuses them.
                        self.forget_channel(key, channel);
                    }
                    // The session is busy until the answer arrives (`session_done`).
                    if let Some(conn) = self.conn_ref(key) {
                        let node = match op {
                            StoreOp::Hello { .. } => self.node_id(key, conn.gen),
                            StoreOp::Register { .. } if self.novelty(key) == Novelty::Minted => {
                                self.node_id(key, conn.gen)
                            }
                            _ => None,
                        };
                        self.store.submit(Job::Session { conn, op, node });
                        if self.store.is_inline() {
                            // Answered already: reply now, inside this round's single write.
                            self.finish_jobs();
                        }
                    }
                }
                Effect::Refresh(uaid) => self.store.submit(Job::Refresh { uaid }),
                Effect::Wake(uaid, wake) => {
                    // Owned here: the hello that bound it ran on this loop.
                    self.store.submit(Job::SetWake {
                        uaid,
                        wake: wake.to_json(),
                    });
                }
                Effect::Bind(uaid, origin) => self.bind_socket(key, uaid, origin, claimed),
            }
        }
    }
}
