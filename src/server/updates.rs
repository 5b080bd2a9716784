//! App-server updates and storage answers: storing, delivering live, finishing jobs.

use super::*;
use crate::metrics::{track, track_drop};

/// A TTL-0 message that reached no socket is gone: it was never stored.
fn count_unsent(d: &Delivery) {
    if matches!(&d.notice, Notice::Message(m) if m.ttl == 0) {
        track_drop(Dropped::Offline, &d.uaid, &d.channel, &d.label());
    }
}

/// Tracks what a hello's answer flushes, by the dialect the socket reads (unless the UAID is
/// reset).
fn track_flushed(session: &Session, op: &StoreOp, reply: &StoreReply) {
    let StoreReply::Hello {
        pending, messages, ..
    } = reply
    else {
        return;
    };
    let uaid = op.uaid();
    if session.is_webpush() {
        for m in messages {
            track(Event::DeliveredStored, &uaid, &m.channel, &m.id);
        }
    } else {
        for (channel, version) in pending {
            track(Event::DeliveredStored, &uaid, channel, version);
        }
    }
}

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
            &self.tokens.get(),
        );
        let (uaid, channel, upd) = match parsed {
            Ok(p) => p,
            Err(r) => return Some(r),
        };
        let conn = self.park(key, head.keep_alive)?;
        let d = Delivery {
            uaid,
            channel,
            notice: Notice::Version {
                version: upd.version,
                data: upd.data,
            },
            received: Instant::now(),
        };
        track(Event::Received, &d.uaid, &d.channel, &d.label());
        self.submit_owned(Job::Put {
            conn,
            d,
            live: false,
        });
        None
    }

    /// Starts storing a WebPush message (`POST /wpush/...`); `Some` is an immediate answer.
    pub(super) fn push(
        &mut self,
        key: usize,
        head: &Head,
        v2: bool,
        token: &str,
        body: &[u8],
    ) -> Option<Response> {
        let tokens = self.tokens.get();
        let cx = webpush::PushContext {
            tokens: &tokens,
            origin: &self.origin,
            max_ttl: self.cfg.webpush.max_ttl_secs,
            now: wall_secs(),
        };
        let (uaid, msg) = match webpush::parse_push(head, v2, token, body, &cx) {
            Ok(p) => p,
            Err(e) => return Some(webpush::error(&e)),
        };
        let conn = self.park(key, head.keep_alive)?;
        let d = Delivery {
            uaid,
            channel: msg.channel,
            notice: Notice::Message(Box::new(msg)),
            received: Instant::now(),
        };
        track(Event::Received, &d.uaid, &d.channel, &d.label());
        self.submit_owned(Job::Put {
            conn,
            d,
            live: false,
        });
        None
    }

    /// Starts removing a waiting message (`DELETE /m/<id>`); `Some` is an immediate answer.
    pub(super) fn delete_message(&mut self, key: usize, head: &Head, id: &str) -> Option<Response> {
        let (uaid, channel) = match webpush::parse_delete(head, id, &self.tokens.get()) {
            Ok(ids) => ids,
            Err(e) => return Some(webpush::error(&e)),
        };
        let conn = self.park(key, head.keep_alive)?;
        self.submit_owned(Job::DeleteMessage {
            conn,
            uaid,
            channel,
            id: id.to_string(),
        });
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
            w if w == self.id => self.submit_here(job),
            w => {
                if let Err(Cross::Store(job)) = self.peers.send(w, Cross::Store(job)) {
                    // The owner has stopped (shutdown): answer as if storage were down.
                    self.finish(job.failed());
                }
            }
        }
    }

    /// Hands a job of a UAID this loop owns to the store. An update whose device is connected
    /// here, for a channel the socket knows is registered, is written to its socket at once: the device need not wait for the store's round trip
    /// or sync. The app server's 2xx still waits for the store, and the device's ack queues
    /// behind the write. A write the store then refuses (gone, full, down) has reached the device
    /// anyway; the app server, told 4xx/5xx, may send it again, so a device can see it twice.
    /// (A store known to be down answers 503 at once: nothing goes out early then.)
    pub(super) fn submit_here(&mut self, job: Job) {
        let job = match job {
            Job::Put {
                conn,
                d,
                live: false,
            } if self.store.healthy() && self.knows_channel(&d.uaid, &d.channel) => {
                let live = self.deliver(&d) == Outcome::Delivered;
                Job::Put { conn, d, live }
            }
            other => other,
        };
        self.store.submit(job);
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
            Done::Put {
                conn,
                d,
                live,
                result,
            } => self.put_done(conn, d, live, result),
            Done::Deleted {
                conn,
                uaid,
                channel,
                id,
                result,
            } => {
                let resp = match result {
                    Ok(true) => {
                        track_drop(Dropped::Deleted, &uaid, &channel, &id);
                        Response::json(204, "").counted(metrics::Reason::Ok)
                    }
                    Ok(false) => webpush::error(&PushError::NoMessage),
                    Err(Unavailable) => webpush::error(&PushError::Unavailable),
                };
                self.answer(conn, resp);
            }
            Done::Forwarded { conn, d, delivered } => {
                let outcome = if delivered {
                    track(Event::Routed, &d.uaid, &d.channel, &d.label());
                    Outcome::Delivered
                } else {
                    count_unsent(&d);
                    Outcome::Stored
                };
                let resp = self.stored_answer(&d, outcome);
                self.answer(conn, resp);
            }
            Done::Bound {
                uaid,
                previous,
                found,
            } => {
                self.kick_elsewhere(uaid, previous);
                if let Some(found) = found {
                    self.deliver_found(uaid, found);
                }
            }
            Done::Broadcasts { conn, table } => self.broadcasts_stored(conn, table),
            Done::Nothing => {}
        }
    }

    /// Delivers what was stored for a UAID while its node record was being written.
    fn deliver_found(&mut self, uaid: Uaid, found: crate::store::HelloFound) {
        let received = std::time::Instant::now();
        let versions = found
            .pending
            .into_iter()
            .map(|(channel, version)| Delivery {
                uaid,
                channel,
                notice: Notice::Version {
                    version,
                    data: None,
                },
                received,
            });
        let messages = found.messages.into_iter().map(|m| Delivery {
            uaid,
            channel: m.channel,
            notice: Notice::Message(Box::new(m)),
            received,
        });
        for d in versions.chain(messages) {
            let outcome = self.deliver(&d);
            debug!(
                uaid:%, channel:% = d.channel, version:% = d.label(), outcome:?;
                "stored before the bind"
            );
        }
    }

    pub(super) fn put_done(
        &mut self,
        conn: ConnRef,
        d: Delivery,
        live: bool,
        result: Result<PutResult, Unavailable>,
    ) {
        let webpush = matches!(d.notice, Notice::Message(_));
        match &result {
            Ok(PutResult::Stored { .. }) => track(Event::Stored, &d.uaid, &d.channel, &d.label()),
            Ok(PutResult::UnknownChannel) => {
                track_drop(Dropped::Unregistered, &d.uaid, &d.channel, &d.label())
            }
            Ok(PutResult::Full) => track_drop(Dropped::Full, &d.uaid, &d.channel, &d.label()),
            Err(Unavailable) => track_drop(Dropped::StoreError, &d.uaid, &d.channel, &d.label()),
        }
        let (node, wake) = match (result, webpush) {
            (Ok(PutResult::Stored { node, wake }), _) => (node, wake),
            (Ok(PutResult::UnknownChannel), false) => return self.answer(conn, endpoint::gone()),
            (Err(Unavailable), false) => return self.answer(conn, endpoint::unavailable()),
            (Ok(PutResult::Full), false) => {
                let full = endpoint::unavailable().counted(metrics::Reason::Full);
                return self.answer(conn, full);
            }
            (Ok(PutResult::UnknownChannel), true) => {
                return self.answer(conn, webpush::error(&PushError::Gone))
            }
            (Ok(PutResult::Full), true) => {
                return self.answer(conn, webpush::error(&PushError::Full))
            }
            (Err(Unavailable), true) => {
                return self.answer(conn, webpush::error(&PushError::Unavailable))
            }
        };
        let outcome = if live {
            Outcome::Delivered
        } else {
            self.deliver(&d)
        };
        if outcome == Outcome::Delivered {
            self.remember_channel(&d.uaid, &d.channel);
        }
        debug!(
            uaid:% = d.uaid, channel:% = d.channel, version:% = d.label(), outcome:?;
            "update"
        );
        let remote = match (&self.cluster, node.as_deref().map(node_url)) {
            (Some(c), Some(url)) if outcome == Outcome::Stored && url != c.url => {
                Some((c, url.to_string()))
            }
            _ => None,
        };
        // An update that waits for a device that said how to wake it: wake it (not for TTL 0,
        // which does not wait).
        let waker = self
            .peers
            .waker
            .clone()
            .filter(|_| !matches!(&d.notice, Notice::Message(m) if m.ttl == 0))
            .zip(wake);
        let Some((cluster, node)) = remote else {
            if outcome == Outcome::Stored {
                count_unsent(&d);
                if let Some((w, wake)) = waker {
                    w.wake(d.uaid, wake);
                }
            }
            let resp = self.stored_answer(&d, outcome);
            return self.answer(conn, resp);
        };
        let peering = cluster.peering.clone();
        self.store.forward(Box::new(move || {
            let delivered = router::forward(&node, &peering, &d);
            if let (false, Some((w, wake))) = (delivered, waker) {
                w.wake(d.uaid, wake);
            }
            debug!(
                uaid:% = d.uaid, version:% = d.label(), node:%, delivered;
                "forwarded"
            );
            Done::Forwarded {
                conn,
                d: Box::new(d),
                delivered,
            }
        }));
    }

    /// The app server's answer once an update is stored: 200/202 for a version, 201 for a message.
    fn stored_answer(&self, d: &Delivery, outcome: Outcome) -> Response {
        match &d.notice {
            Notice::Version { .. } => endpoint::outcome(outcome),
            Notice::Message(m) => webpush::created(&self.public_url, m),
        }
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
                    ..
                },
                StoreReply::Hello { known: true, .. },
            ) => Some(*uaid),
            _ => None,
        };
        let reply = match (op, reply) {
            (
                StoreOp::Register {
                    uaid,
                    channel,
                    kind,
                    ..
                },
                StoreReply::Registered { .. },
            ) => match self.endpoint_url(uaid, channel, kind) {
                Some(endpoint) => StoreReply::Registered { endpoint },
                None => StoreReply::Unavailable,
            },
            (_, r) => r,
        };
        let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(conn.key)
        else {
            return;
        };
        // A first hello whose UAID the store does not know gets a fresh one, or keeps the unknown
        // one it named: either way the UAID's first registration creates it in the store.
        match (op, &reply) {
            (StoreOp::Hello { forget, .. }, StoreReply::Hello { known, .. })
                if w.session.uaid().is_none() =>
            {
                w.novelty = match *forget || !*known {
                    true => Novelty::Unknown,
                    false => Novelty::Known,
                };
            }
            (StoreOp::Register { .. }, StoreReply::Registered { .. }) => w.novelty = Novelty::Known,
            _ => {}
        }
        if let (StoreOp::Register { channel, .. }, StoreReply::Registered { .. }) = (op, &reply) {
            w.known.add(channel);
        }
        track_flushed(&w.session, op, &reply);
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

    /// The endpoint URL for a new registration; `None` without randomness for its nonce.
    fn endpoint_url(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        kind: &EndpointKind,
    ) -> Option<String> {
        let base = &self.public_url;
        let tokens = self.tokens.get();
        Some(match kind {
            EndpointKind::SimplePush => {
                format!("{base}/update/{}", tokens.seal(uaid, channel)?)
            }
            EndpointKind::WebPush(key) => {
                let token = tokens.seal_webpush(uaid, channel, key.as_deref())?;
                let v = if key.is_some() { 2 } else { 1 };
                format!("{base}/wpush/v{v}/{token}")
            }
        })
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
        let frame = match &d.notice {
            Notice::Version { version, data } => {
                w.session.notify(&d.channel, *version, data.as_deref())
            }
            Notice::Message(m) => w.session.notify_message(m),
        };
        let Some(frame) = frame else {
            return Outcome::Stored;
        };
        let max_output = self.cfg.websocket.max_output_buffer;
        let sent = w
            .link
            .send_text(&frame)
            .and_then(|()| w.link.flush(max_output));
        match sent {
            Ok(()) => {
                track(Event::DeliveredLive, &d.uaid, &d.channel, &d.label());
                METRICS.delivery_latency.observe(d.received.elapsed());
                Outcome::Delivered
            }
            Err(e) => {
                debug!(conn:% = ConnName(self.id, key); "live delivery failed: {e}");
                self.drop_conn(key);
                Outcome::Stored
            }
        }
    }
}
