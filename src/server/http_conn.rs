//! HTTP connections on the event loop: reading requests, routing them, writing answers.

use super::*;

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
                // Only the last TLS records were left (sent by `conn_event`): done once they are.
                if !h.stream.pending() {
                    self.drop_conn(key);
                }
                return;
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
                    h.stream.shutdown_write();
                    if h.stream.pending() {
                        h.closing = true;
                        let at = self.now_ms() + self.cfg.server.close_timeout_ms;
                        self.set_deadline(key, at);
                        return;
                    }
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
                        let r = Response::json(413, "\"Request body too large\"")
                            .closing()
                            .counted(metrics::Reason::TooLarge);
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
                Parsed::Bad(r) => self.respond(key, r.counted(metrics::Reason::Malformed), false),
            }
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
