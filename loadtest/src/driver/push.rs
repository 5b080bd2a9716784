//! The app-server side of the loop: endpoints as devices register them, one HTTP pool per
//! endpoint origin (resolved and checked once), SimplePush PUTs and their answers, and the
//! delivery books those answers and the notifications keep.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Driver, LatencyRef, PutResult, HTTP_BASE, MAX_POOLS, POOL_SPAN};
use crate::client::{Channel, EndpointRef};
use crate::http::{HttpOut, Pool};
use crate::stream::TlsTarget;
use crate::tally::Tally;
use crate::target::{Endpoint, EndpointBase, Origin};
use crate::tracker::{self, Matched};

impl Driver {
    pub(super) fn on_endpoint(&mut self, idx: usize, chan: usize, url: &str) {
        let endpoint = match Endpoint::parse(url, self.endpoint_base_of(idx)) {
            Ok(e) => e,
            Err(e) => return self.bad_endpoint(&e),
        };
        let pool = match self.pool_for(&endpoint) {
            Ok(p) => p,
            Err(e) => return self.bad_endpoint(&e),
        };
        if let Some(ch) = self.clients[idx].channels.get_mut(chan) {
            ch.endpoint = Some(EndpointRef {
                pool,
                path: endpoint.path.into_boxed_str(),
            });
        }
    }

    /// The --endpoint-base client `idx`'s PUTs go to: the one after its --ws-url's, so that
    /// with both lists naming the same nodes every push crosses to another node.
    fn endpoint_base_of(&self, idx: usize) -> Option<&EndpointBase> {
        let n = self.endpoint_bases.len();
        if n == 0 {
            return None;
        }
        let device = self.cfg.first_device as usize + idx;
        self.endpoint_bases.get((device + 1) % n)
    }

    fn bad_endpoint(&mut self, why: &str) {
        Tally::count(&mut self.tally.failures, "bad_push_endpoint");
        if !self.endpoint_error_shown {
            self.endpoint_error_shown = true;
            eprintln!("simplepush-loadtest: unusable pushEndpoint (not PUT to): {why}");
        }
    }

    /// The pool for an endpoint's origin, made when the origin is first seen: its name is
    /// resolved and checked then (once; a refusal is remembered).
    fn pool_for(&mut self, e: &Endpoint) -> Result<u16, String> {
        if let Some(&p) = self.pool_keys.get(&e.origin) {
            return Ok(p);
        }
        if let Some(why) = self.bad_origins.get(&e.origin) {
            return Err(why.clone());
        }
        if self.pools.len() >= MAX_POOLS {
            return Err("too many distinct endpoint addresses".into());
        }
        let made = self.origin_target(&e.origin);
        let (addr, tls) = match made {
            Ok(x) => x,
            Err(why) => {
                self.bad_origins.insert(e.origin.clone(), why.clone());
                return Err(why);
            }
        };
        let p = self.pools.len();
        let base = HTTP_BASE + p * POOL_SPAN;
        let shape = (self.cfg.http_conns as usize, self.cfg.pipeline as usize);
        self.pools
            .push(Pool::new(&e.origin.authority, addr, tls, shape, base));
        self.pool_keys.insert(e.origin.clone(), p as u16);
        self.maintain_pools();
        Ok(p as u16)
    }

    fn origin_target(
        &mut self,
        origin: &Origin,
    ) -> Result<(SocketAddr, Option<TlsTarget>), String> {
        let base = self.endpoint_bases.iter().find(|b| &b.origin == origin);
        let addr = match base {
            Some(b) => b.addr,
            None => origin.resolve(self.cfg.allow_remote)?,
        };
        Ok((addr, self.tls.target(origin)?))
    }

    pub(super) fn maintain_pools(&mut self) {
        let registry = self.poll.registry();
        let src = &mut self.src;
        for pool in &mut self.pools {
            pool.maintain(registry, &mut || src.next_addr(), &mut self.http_outs);
        }
        self.drain_http();
    }

    pub(super) fn on_notification(&mut self, idx: usize, updates: &[(String, u64)], now: Instant) {
        if self.books {
            let chans = &mut self.clients[idx].channels;
            for (chid, version) in updates {
                if let Some(ch) = chans.iter_mut().find(|c| c.chid.eq_ignore_ascii_case(chid)) {
                    ch.received = ch.received.max(*version);
                }
            }
        }
        for &(_, version) in updates {
            match self.tracker.delivered(version, idx as u32) {
                Matched::Put {
                    sent_at,
                    right_client,
                    ..
                } => {
                    self.tally.received += 1;
                    if !right_client {
                        self.tally.misrouted += 1;
                    }
                    let from = match self.latency_ref {
                        LatencyRef::PutSent => sent_at,
                        LatencyRef::HelloSent => self.clients[idx].hello_at,
                    };
                    self.latency_hist
                        .record_us(now.saturating_duration_since(from).as_micros() as u64);
                }
                Matched::Unexpected => self.tally.unexpected += 1,
            }
        }
    }

    pub(super) fn drain_http(&mut self) {
        for out in std::mem::take(&mut self.http_outs) {
            match out {
                HttpOut::Answer(version, status) => {
                    Tally::count(&mut self.tally.statuses, &status.to_string());
                    if let Some((c, chan, done)) = self.tracker.answered(version, status) {
                        let accepted = tracker::accepted(status);
                        // A WebPush message is complete when delivered, not when accepted.
                        if self.wp.is_none() || done {
                            self.settle(c, chan);
                        }
                        self.book(c, chan, |ch| {
                            if accepted {
                                ch.acked = ch.acked.max(version);
                            }
                        });
                    }
                }
                HttpOut::Lost(version) => {
                    self.tally.unanswered += 1;
                    if let Some((c, chan)) = self.tracker.abandoned(version) {
                        self.settle(c, chan);
                    }
                }
                HttpOut::Reopen(why) => {
                    self.tally.http_reconnects += 1;
                    Tally::count(&mut self.tally.http_errors, &why);
                }
            }
        }
    }

    /// Updates the delivery book of channel `chan` of client `c` (churn with --devices).
    pub(super) fn channel_mut(&mut self, c: u32, chan: u16) -> Option<&mut Channel> {
        self.clients
            .get_mut(c as usize)
            .and_then(|cl| cl.channels.get_mut(usize::from(chan)))
    }

    /// The PUT to channel `chan` of client `c` is answered (or given up): another may follow.
    pub(super) fn settle(&mut self, c: u32, chan: u16) {
        if let Some(ch) = self.channel_mut(c, chan) {
            ch.inflight = false;
            ch.outstanding = 0;
        }
    }

    /// Whether a PUT to channel `chan` of client `idx` waits for its answer.
    pub fn put_in_flight(&self, idx: usize, chan: usize) -> bool {
        self.clients[idx]
            .channels
            .get(chan)
            .is_some_and(|c| c.inflight)
    }

    pub(super) fn book(&mut self, c: u32, chan: u16, f: impl FnOnce(&mut Channel)) {
        if !self.books {
            return;
        }
        if let Some(ch) = self.channel_mut(c, chan) {
            f(ch);
        }
    }

    /// PUTs a fresh version to channel `chan` of client `idx` (webpush: POSTs a message).
    pub fn put(&mut self, idx: usize, chan: usize) -> PutResult {
        if self.wp.is_some() {
            return self.post_message(idx, chan);
        }
        let Some(ep) = self.clients[idx]
            .channels
            .get(chan)
            .and_then(|c| c.endpoint.as_ref())
        else {
            return PutResult::NoEndpoint;
        };
        let pool = &mut self.pools[ep.pool as usize];
        if !pool.has_room() {
            pool.activate();
            return PutResult::NoRoom;
        }
        let version = self.tracker.start(idx as u32, chan as u16, Instant::now());
        if !pool.put(&ep.path, version, version, &mut self.http_outs) {
            self.tracker.cancel(version);
            return PutResult::NoRoom;
        }
        self.clients[idx].channels[chan].inflight = true;
        self.tally.sent += 1;
        self.drain_http();
        PutResult::Sent
    }

    /// Opens the HTTP connections to every endpoint seen so far and waits (at most `wait`) until
    /// each pool has one open.
    pub fn open_http(&mut self, wait: Duration) {
        for pool in &mut self.pools {
            pool.activate();
        }
        self.maintain_pools();
        let until = Instant::now() + wait;
        self.run_until(until, Duration::from_millis(1), |d| {
            d.pools.iter().all(Pool::has_room)
        });
    }
}
