//! App-server updates and storage answers: storing, delivering live, finishing jobs.

use super::*;

impl Server {
    /// Starts storing an update; `Some` is an immediate answer, `None` means the answer will follow.
    pub(super) fn update(
        &mut self,
        key: usize,
        head: &Head,
        token: &str,
        body: &[u8],
    ) -> Option<Response> {
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
        let conn = self.park(key, head.keep_alive)?;
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
    pub(super) fn bound_to(&self, key: usize) -> Option<Uaid> {
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Ws(w)) => w.bound,
            _ => None,
        }
    }

    /// Runs a job on the loop that owns its UAID: here, or through that loop's mailbox.
    pub(super) fn submit_owned(&mut self, job: Job) {
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

    /// Handles every finished storage job and forward.
    pub(super) fn finish_jobs(&mut self) {
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

    pub(super) fn finish(&mut self, done: Done) {
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

    pub(super) fn put_done(
        &mut self,
        conn: ConnRef,
        d: Delivery,
        result: Result<PutResult, Unavailable>,
    ) {
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

    /// Forgets that connection `key` (of generation `gen`) is the UAID's socket; in a cluster, also
    /// the node record if it still names that socket.
    pub(super) fn unbind(&mut self, uaid: &Uaid, key: usize, gen: u32) {
        self.registry.unbind(uaid, key);
        self.peers.clients[self.id].store(self.registry.len(), Ordering::Relaxed);
        if let Some(node) = self.node_id(key, gen) {
            self.store.submit(Job::Unbound { uaid: *uaid, node });
        }
    }

    pub(super) fn unbind_current(&mut self, uaid: &Uaid, key: usize) {
        let gen = self.conns.get(key).map_or(0, |c| c.gen);
        self.unbind(uaid, key, gen);
    }

    pub(super) fn session_done(
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
    pub(super) fn deliver(&mut self, d: &Delivery) -> Outcome {
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
}
