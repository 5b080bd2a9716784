//! HTTP connections on the event loop: reading requests, routing them, writing answers.

use super::*;

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
                    if !self.read_more(key) {
                        return;
                    }
                }
                Parsed::Bad(r) => self.respond(key, r, false),
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
    pub(super) fn respond(&mut self, key: usize, resp: Response, keep_alive: bool) {
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

    /// The admin listener: metrics, health and status for operators.
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
            _ => endpoint::not_found(),
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
