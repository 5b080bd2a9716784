//! HTTP connections on the event loop: reading requests, routing them, writing answers.

use super::*;

/// Bytes of unfinished request heads held by every HTTP connection of the process.
static HEAD_BYTES: AtomicUsize = AtomicUsize::new(0);
/// A connection holding at most this much of a head is never refused for the budget: a real
/// request's head arrives whole and is rarely longer.
const HEAD_FAIR_SHARE: usize = 2048;
/// A connection that has not sent a whole head this long after it started may be closed to let
/// a new one in (the oldest such is): real clients send their head at once.
const SLOW_AFTER_MS: u64 = 100;

/// Unfinished request heads held by every HTTP connection, in bytes.
pub fn partial_head_bytes() -> usize {
    HEAD_BYTES.load(Ordering::Relaxed)
}

/// [`HEAD_BYTES`], as the count a connection's [`HeadBytes`] is part of.
pub(super) struct Heads;

impl crate::share::Total for Heads {
    fn total() -> &'static AtomicUsize {
        &HEAD_BYTES
    }
}

/// One connection's part of the process's unfinished heads, given back when it is dropped.
pub(super) type HeadBytes = crate::share::Share<Heads>;

/// A peer address folded to 32 bits: which connections come from one source.
pub(super) fn source_of(peer: SocketAddr) -> u32 {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => u32::from(v4),
        std::net::IpAddr::V6(v6) => {
            let b = v6.octets();
            // The /64 is the unit an attacker gets; fold it.
            let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            (hi ^ (hi >> 32)) as u32
        }
    }
}

/// Input a closing connection reads and discards at most: enough for the rest of a pipeline or
/// of a refused body in flight, and no more, or a peer could hold the connection open by sending.
const LINGER_BYTES: u32 = 64 * 1024;

/// What reading a closing connection's input came to.
enum Discarded {
    /// All read for now; the peer is still open.
    WouldBlock,
    /// The peer closed its side: nothing more will come.
    End,
    /// More than `LINGER_BYTES` came, or the socket failed: stop waiting.
    GiveUp,
}

/// Reads the raw socket (TLS records need no decrypting to be thrown away) until it would block.
fn discard_input(sock: &mut TcpStream, drained: &mut u32) -> Discarded {
    let mut sink = [0u8; READ_CHUNK];
    loop {
        match sock.read(&mut sink) {
            Ok(0) => return Discarded::End,
            Ok(n) => {
                *drained = drained.saturating_add(n as u32);
                if *drained > LINGER_BYTES {
                    return Discarded::GiveUp;
                }
            }
            Err(e) if would_block(&e) => return Discarded::WouldBlock,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Discarded::GiveUp,
        }
    }
}

/// Whether `h` is a connection that has made a stranger's start (nothing answered yet, no whole
/// head) for longer than a real client takes.
fn is_slow(h: &HttpConn, now_ms: u64) -> bool {
    h.waiting.is_none()
        && h.out.is_empty()
        && !h.closing
        && !h.head_done
        && (!h.served || !h.buf.is_empty())
        && now_ms.saturating_sub(h.started_ms) >= SLOW_AFTER_MS
}

/// Writes as much of `out[*written..]` as the socket takes. `Ok(true)` when all is written.
pub(super) fn write_out(stream: &mut Stream, out: &[u8], written: &mut usize) -> io::Result<bool> {
    *written += write_some(stream, &out[*written..])?;
    Ok(*written == out.len())
}

impl Server {
    /// Holds the HTTP request on `key` until its answer arrives (`answer`); the reference to answer.
    pub(super) fn park(&mut self, key: usize, keep_alive: bool) -> Option<ConnRef> {
        let conn = self.conn_ref(key)?;
        if let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        {
            h.waiting = Some(keep_alive);
        }
        Some(conn)
    }

    pub(super) fn http_event(&mut self, key: usize) {
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
            if h.closing {
                return self.linger(key);
            }
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
                    h.closing = true;
                    h.stream.close_notify();
                    let at = self.now_ms() + self.cfg.server.close_timeout_ms;
                    self.set_deadline(key, at);
                    return self.linger(key);
                }
                if !h.continued {
                    let at = self.now_ms() + self.cfg.server.keep_alive_timeout_ms;
                    self.set_deadline(key, at);
                }
                continue;
            }
            match http::parse_head(&h.buf, max_head) {
                Parsed::Complete(mut head) => {
                    h.head_bytes.set(0);
                    if !h.head_done {
                        // The body gets the rest of the request timeout.
                        h.head_done = true;
                        let at = h.started_ms + self.cfg.server.request_timeout_ms;
                        self.set_deadline(key, at);
                    }
                    match self.body_ready(key, &head) {
                        Ok(true) => {}
                        Ok(false) if self.await_body(key, &head) => continue,
                        Ok(false) => return,
                        Err(r) => {
                            self.respond(key, r, false);
                            continue;
                        }
                    }
                    handled += 1;
                    if handled > BUDGET {
                        self.again.push(key);
                        return;
                    }
                    self.unchunk(key, &mut head);
                    self.request(key, *head);
                    let still_http = matches!(
                        self.conns.get(key).map(|c| &c.state),
                        Some(State::Http(h)) if h.waiting.is_none()
                    );
                    if !still_http {
                        return;
                    }
                }
                Parsed::Partial => {
                    let budget = self.cfg.endpoint.partial_head_budget;
                    if h.head_bytes.set(h.buf.capacity()) > HEAD_FAIR_SHARE
                        && partial_head_bytes() > budget
                    {
                        let r = Response::json(503, "\"Server busy; try again later\"")
                            .header("Retry-After: 5")
                            .closing()
                            .counted(metrics::Reason::Unavailable);
                        self.respond(key, r, false);
                        continue;
                    }
                    if !self.read_more(key) {
                        return;
                    }
                }
                Parsed::Bad(r) => self.respond(key, r.counted(metrics::Reason::Malformed), false),
            }
        }
    }

    /// A closing connection whose answers are all written. Closing a socket with unread input
    /// makes the kernel send a reset, which can destroy answers the peer has not read yet (the
    /// ones before a bad request in a pipeline), so: our side is shut once the last TLS records
    /// are out (`conn_event` sends them), and what the peer still sends is read and thrown away
    /// until it closes too, [`LINGER_BYTES`] have come, or the close timeout (`expire`) fires.
    fn linger(&mut self, key: usize) {
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let pending = h.stream.pending();
        if !pending {
            // Again on each event until the end: a second shutdown of the same side does nothing.
            h.stream.shutdown_write();
        }
        match discard_input(h.stream.socket(), &mut h.drained) {
            Discarded::WouldBlock => {}
            // The peer may still read what rustls holds: wait for it to be sent.
            Discarded::End if pending => {}
            Discarded::End | Discarded::GiveUp => self.drop_conn(key),
        }
    }

    /// Reads what the socket has. `false` when there is nothing more to do now.
    pub(super) fn read_more(&mut self, key: usize) -> bool {
        let now = self.now_ms();
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return false;
        };
        let was_idle = h.buf.is_empty();
        // Into the loop's buffer first: a request read a byte at a time then holds its bytes,
        // not a read buffer each.
        self.scratch.resize(READ_CHUNK, 0);
        let res = h.stream.read(&mut self.scratch);
        if let Ok(n) = res {
            h.buf.extend_from_slice(&self.scratch[..n]);
        }
        match res {
            Ok(0) => {
                self.drop_conn(key);
                false
            }
            Ok(_) => {
                if was_idle {
                    // A new request started: its head gets the header timeout, not the idle one.
                    h.started_ms = now;
                    let at = now + self.cfg.server.header_timeout_ms();
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

    /// Every connection is taken: closes the oldest HTTP connection of this loop that has been
    /// slow to send its request (a slowloris socket), so that a new one from `source` can come in.
    /// `false`: none found, or `source` itself holds half the slow ones (an attacker whose own
    /// connections would otherwise push out each other, and real clients' chances with them).
    pub(super) fn evict_slow_http(&mut self, source: u32) -> bool {
        let now = self.now_ms();
        // A pass over this loop's connections (tens of microseconds at 20,000), made only while
        // every connection is taken.
        let (mut slow, mut theirs) = (0usize, 0usize);
        let mut oldest: Option<(u64, usize)> = None;
        for (key, c) in self.conns.iter() {
            let State::Http(h) = &c.state else {
                continue;
            };
            if !is_slow(h, now) {
                continue;
            }
            slow += 1;
            theirs += usize::from(h.source == source);
            if oldest.is_none_or(|(t, _)| h.started_ms < t) {
                oldest = Some((h.started_ms, key));
            }
        }
        if theirs * 2 >= slow {
            return false;
        }
        let Some((_, key)) = oldest else {
            return false;
        };
        self.drop_conn(key);
        self.log_refusal("closing a slow HTTP request to let a new connection in");
        true
    }

    /// Queues a response and removes the request bytes it answers. Every answer to an app server
    /// passes here (immediate ones and those that waited), so this is where they are counted.
    pub(super) fn respond(&mut self, key: usize, resp: Response, keep_alive: bool) {
        let Some(Conn {
            state: State::Http(h),
            roles,
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        // The router's and the admin listener's answers are not app servers' (their listeners do
        // not serve the endpoint), nor are /status and the like (built uncounted).
        if let (true, Some(why)) = (roles.endpoint, resp.counted) {
            METRICS.response(resp.status, why);
        }
        let keep = keep_alive && !resp.close && self.shutdown_at.is_none();
        h.waiting = None;
        h.continued = false;
        h.head_done = false;
        h.served = true;
        h.out = resp.to_bytes(keep);
        h.written = 0;
        h.close_after |= !keep;
        if h.close_after {
            h.buf = Vec::new();
        }
    }

    pub(super) fn request(&mut self, key: usize, head: Head) {
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
                Ok(_) if self.device_share_full() => {
                    self.log_refusal("device WebSockets fill their share of max_connections");
                    let r = Response::json(503, "\"Too many devices connected; try again later\"")
                        .header("Retry-After: 30")
                        .closing();
                    self.respond(key, r, false)
                }
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
        if roles.admin {
            let resp = if head.path == "/broadcasts" {
                match self.broadcasts_request(key, &head, &body) {
                    Some(r) => r,
                    None => return,
                }
            } else {
                self.admin_request(&head)
            };
            return self.respond(key, resp, head.keep_alive);
        }
        if self.cfg.server.public_health && head.method == http::Method::Get {
            if let Some(resp) = self.health_route(&head.path) {
                return self.respond(key, resp, head.keep_alive);
            }
        }
        let resp = match endpoint::route(&head) {
            Route::Update(token) if roles.endpoint => match self.update(key, &head, token, &body) {
                Some(r) => r,
                None => return,
            },
            Route::WebPush { v2, token } if roles.endpoint && self.cfg.webpush.enabled => {
                match self.push(key, &head, v2, token, &body) {
                    Some(r) => r,
                    None => return,
                }
            }
            Route::Message(id) if roles.endpoint && self.cfg.webpush.enabled => {
                match self.delete_message(key, &head, id) {
                    Some(r) => r,
                    None => return,
                }
            }
            Route::Status => self.status(),
            Route::Health => self.health(),
            _ => endpoint::not_found(),
        };
        self.respond(key, resp, head.keep_alive);
    }

    fn clients(&self) -> usize {
        self.peers
            .clients
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn status(&self) -> Response {
        let body = format!(
            "{{\"status\":\"OK\",\"clients\":{},\"version\":\"{}\"}}",
            self.clients(),
            env!("CARGO_PKG_VERSION")
        );
        Response::json(200, body)
    }

    fn health(&self) -> Response {
        if self.store.healthy() {
            Response::json(200, "{\"status\":\"OK\"}")
        } else {
            Response::json(503, "{\"status\":\"NOT OK\"}")
        }
    }

    /// The admin listener: metrics, health (old and split) and status for operators.
    fn admin_request(&self, head: &Head) -> Response {
        if head.method != http::Method::Get {
            return Response::json(405, "\"Method Not Allowed\"").header("Allow: GET");
        }
        match head.path.as_str() {
            "/metrics" => {
                let gauges = metrics::Gauges {
                    open: self.peers.open.load(Ordering::Relaxed),
                    websockets: self.peers.websockets.load(Ordering::Relaxed),
                    clients: self.clients(),
                };
                Response::json(200, metrics::render(&gauges))
                    .typed("text/plain; version=0.0.4; charset=utf-8")
            }
            "/health" => self.health(),
            "/status" => self.status(),
            other => self.health_route(other).unwrap_or_else(endpoint::not_found),
        }
    }

    /// Answers a request that waited, then goes on with the connection's next request.
    pub(super) fn answer(&mut self, conn: ConnRef, resp: Response) {
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
}
