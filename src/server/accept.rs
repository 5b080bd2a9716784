//! Accepting connections: the limits a new one meets (max_connections, the device share, the
//! admin listener's extra room), descriptor exhaustion, and making room by closing a slow request.

use super::*;

impl Server {
    pub(super) fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let roles = listener.roles;
            match listener.socket.accept() {
                Ok((stream, peer)) => self.admit(stream, roles, http_conn::source_of(peer)),
                Err(e) if would_block(&e) => return,
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                    // EMFILE/ENFILE: free the spare descriptor to take one connection off the backlog
                    // and close it. Linux reports EMFILE even with an empty backlog, so stop as soon
                    // as that second accept finds nothing.
                    self.log_refusal("out of file descriptors");
                    self.spare_fd = None;
                    // The accepted stream is closed here, before the spare is reopened in its place.
                    let second = self
                        .listeners
                        .get(index)
                        .map(|l| l.socket.accept().map(drop));
                    self.spare_fd = File::open("/dev/null").ok();
                    match second {
                        Some(Ok(())) if self.spare_fd.is_some() => {}
                        Some(Err(e)) if would_block(&e) => return,
                        // Still out of descriptors (another loop of this process took the one
                        // freed): connections may wait in the backlog with no new event to tell
                        // of them, so try again shortly.
                        _ => {
                            self.accept_retry = true;
                            return;
                        }
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

    pub(super) fn log_refusal(&mut self, why: &str) {
        METRICS.refused();
        let now = self.now_ms();
        if now.saturating_sub(self.last_refusal_log) >= 1000 || self.last_refusal_log == 0 {
            warn!("refusing connections: {why}");
            self.last_refusal_log = now.max(1);
        }
    }

    /// Device WebSockets hold their share of `max_connections`: the rest is kept for app servers.
    pub(super) fn device_share_full(&self) -> bool {
        self.peers.websockets.load(Ordering::Relaxed) >= self.cfg.server.device_share()
    }

    fn admit(&mut self, stream: TcpStream, roles: Roles, source: u32) {
        // The admin listener may go a little past max_connections (the descriptors reserved at
        // start cover it), so that operators still see a server whose connections are full.
        let most = self.cfg.server.max_connections + if roles.admin { ADMIN_EXTRA } else { 0 };
        if self.peers.open.load(Ordering::Relaxed) >= most
            && (roles.admin || !self.evict_slow_http(source))
        {
            self.log_refusal("max_connections reached");
            return;
        }
        let _ = stream.set_nodelay(true);
        if roles.websocket {
            self.keep_alive(&stream);
        }
        // The certificate of the moment: a reload reaches every connection accepted after it.
        let tls = self
            .peers
            .tls
            .as_ref()
            .filter(|_| roles.tls)
            .map(|s| s.get());
        let mut stream = match Stream::new(stream, tls.as_ref().map(|t| &t.config)) {
            Ok(s) => s,
            Err(e) => return warn!("tls: {e}"),
        };
        let now = self.now_ms();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            stream.socket(),
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
                closing: false,
                head_done: false,
                served: false,
                started_ms: now,
                source,
                head_bytes: http_conn::HeadBytes::default(),
                drained: 0,
                chunked: None,
            }),
        });
        self.set_deadline(key, now + self.cfg.server.header_timeout_ms());
    }

    /// TCP keepalive on a device connection: the kernel finds a peer that vanished (a phone gone
    /// out of coverage) even with WebSocket pings off, at no cost to the loop.
    fn keep_alive(&self, stream: &TcpStream) {
        let secs = self.cfg.server.tcp_keepalive_secs;
        if secs == 0 {
            return;
        }
        let idle = socket2::TcpKeepalive::new().with_time(Duration::from_secs(secs));
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&idle) {
            debug!("tcp keepalive: {e}");
        }
    }
}
