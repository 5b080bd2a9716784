//! The webpush scenario's side of the loop: the tester as app server POSTs encrypted,
//! VAPID-signed messages, and books what each device found in them (intact, corrupted,
//! duplicated). A channel has at most one message waiting, from its POST until its device has
//! it, so a message that arrives undecryptable is still known to be that channel's.

use std::time::Instant;

use super::{Driver, PutResult};
use crate::client::WebPushShared;
use crate::rng::Rng;
use crate::tally::Tally;
use crate::tracker::Matched;
use crate::vapid::Vapid;
use crate::webpush::{self, CryptoError, Received};

/// How long the push service may keep a message for its device, in seconds.
const TTL_SECS: u32 = 300;

/// The app server's identity and the messages' delivery book.
pub struct WebPushState {
    vapid: Vapid,
    sizes: Vec<usize>,
    /// Bit n set: message n has arrived (a later arrival is a duplicate).
    seen: Vec<u64>,
}

impl WebPushState {
    pub fn new(rng: &mut Rng, sizes: &[usize]) -> Result<Self, CryptoError> {
        Ok(Self {
            vapid: Vapid::generate(rng)?,
            sizes: sizes.to_vec(),
            seen: Vec::new(),
        })
    }

    /// What the devices need to know.
    pub fn shared(&self) -> WebPushShared {
        WebPushShared {
            application_server_key: self.vapid.application_server_key.clone(),
            sizes: self.sizes.clone(),
        }
    }

    /// Marks message `seq` arrived; false if it had arrived before.
    fn first_arrival(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let was = self.seen[word] & (1 << bit) != 0;
        self.seen[word] |= 1 << bit;
        !was
    }
}

impl Driver {
    /// POSTs a fresh message to channel `chan` of client `idx`: its plaintext (numbered, of the
    /// size its number picks) encrypted to the subscription's keys, with a VAPID header.
    pub(super) fn post_message(&mut self, idx: usize, chan: usize) -> PutResult {
        let Some(ch) = self.clients[idx].channels.get(chan) else {
            return PutResult::NoEndpoint;
        };
        let (Some(ep), Some(keys), Some(wp)) = (&ch.endpoint, &ch.keys, &mut self.wp) else {
            return PutResult::NoEndpoint;
        };
        let pool = &mut self.pools[ep.pool as usize];
        if !pool.has_room() {
            pool.activate();
            return PutResult::NoRoom;
        }
        let seq = self.tracker.start(idx as u32, chan as u16, Instant::now());
        let plain = webpush::payload(seq, webpush::size_of(seq, &wp.sizes));
        let body = match webpush::encrypt(keys, &plain, &mut self.rng) {
            Ok(b) => b,
            Err(e) => {
                self.tracker.cancel(seq);
                Tally::count(&mut self.tally.failures, &format!("encrypt: {e:?}"));
                return PutResult::NoEndpoint;
            }
        };
        let headers = format!(
            "TTL: {TTL_SECS}\r\nContent-Encoding: aes128gcm\r\nContent-Type: application/octet-stream\r\nAuthorization: {}\r\n",
            wp.vapid.header(pool.audience())
        );
        if !pool.post(&ep.path, &headers, &body, seq, &mut self.http_outs) {
            self.tracker.cancel(seq);
            return PutResult::NoRoom;
        }
        let ch = &mut self.clients[idx].channels[chan];
        ch.inflight = true;
        ch.outstanding = seq;
        self.tally.sent += 1;
        self.drain_http();
        PutResult::Sent
    }

    /// What device `idx` found in a message on channel `chan`.
    pub(super) fn on_message(&mut self, idx: usize, chan: usize, got: Received, now: Instant) {
        let Some(wp) = self.wp.as_mut() else { return };
        let seq = match got {
            Received::Intact(seq) => {
                if !wp.first_arrival(seq) {
                    self.tally.duplicated += 1;
                    return;
                }
                seq
            }
            Received::Altered(_) | Received::Unreadable => {
                self.tally.corrupted += 1;
                // The channel's waiting message came, damaged: it is accounted for, not lost.
                let waiting = self.clients[idx]
                    .channels
                    .get(chan)
                    .map_or(0, |c| c.outstanding);
                if waiting == 0 || !wp.first_arrival(waiting) {
                    return;
                }
                if let Matched::Put { answered, .. } = self.tracker.delivered(waiting, idx as u32) {
                    if answered {
                        self.settle(idx as u32, chan as u16);
                    }
                }
                return;
            }
        };
        match self.tracker.delivered(seq, idx as u32) {
            Matched::Put {
                sent_at,
                right_client,
                answered,
            } => {
                self.tally.received += 1;
                if !right_client {
                    self.tally.misrouted += 1;
                } else if answered {
                    self.settle(idx as u32, chan as u16);
                }
                self.latency_hist
                    .record_us(now.saturating_duration_since(sent_at).as_micros() as u64);
            }
            Matched::Unexpected => self.tally.unexpected += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_arrival_is_a_duplicate() {
        let mut w = WebPushState::new(&mut Rng::from_seed(1), &[8]).unwrap();
        assert!(w.first_arrival(1));
        assert!(w.first_arrival(200));
        assert!(!w.first_arrival(1));
        assert!(!w.first_arrival(200));
        assert!(w.first_arrival(63) && w.first_arrival(64));
    }
}
