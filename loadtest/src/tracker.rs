//! Follows every PUT from the moment it is written to its HTTP answer and its notification.
//! Versions are unique within a process, so a notification is matched by its version alone.

use std::collections::HashMap;
use std::time::Instant;

struct Put {
    client: u32,
    chan: u16,
    sent_at: Instant,
    /// HTTP status, 0 until answered.
    status: u16,
    delivered: bool,
}

/// What a notification matched.
pub enum Matched {
    /// The PUT we waited on: when it was written, whether it came to the right device, and
    /// whether its HTTP answer is in (then the PUT is complete).
    Put {
        sent_at: Instant,
        right_client: bool,
        answered: bool,
    },
    /// No PUT waits for this version (a duplicate or a redelivery).
    Unexpected,
}

#[derive(Default)]
pub struct Tracker {
    next_version: u64,
    puts: HashMap<u64, Put>,
    /// PUTs not yet answered.
    unanswered: usize,
    /// PUTs answered 200/202 and not yet delivered.
    undelivered: usize,
}

/// A 2xx a push service answers a push it will deliver with (SimplePush 200/202, WebPush 201).
pub fn accepted(status: u16) -> bool {
    matches!(status, 200..=202)
}

impl Tracker {
    pub fn new() -> Self {
        Self {
            next_version: 1,
            ..Self::default()
        }
    }

    /// A fresh version for a PUT to channel `chan` of `client`, written now.
    pub fn start(&mut self, client: u32, chan: u16, now: Instant) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        self.puts.insert(
            v,
            Put {
                client,
                chan,
                sent_at: now,
                status: 0,
                delivered: false,
            },
        );
        self.unanswered += 1;
        v
    }

    /// The PUT could not be written after all.
    pub fn cancel(&mut self, version: u64) {
        if self.puts.remove(&version).is_some() {
            self.unanswered -= 1;
        }
    }

    /// The PUT was answered. Returns the client and channel it was for, and whether the PUT
    /// is complete (delivered already, or refused).
    pub fn answered(&mut self, version: u64, status: u16) -> Option<(u32, u16, bool)> {
        let p = self.puts.get_mut(&version)?;
        if p.status != 0 {
            return Some((p.client, p.chan, false));
        }
        p.status = status;
        self.unanswered -= 1;
        let client = (p.client, p.chan);
        let done = p.delivered || !accepted(status);
        if done {
            self.puts.remove(&version);
        } else {
            self.undelivered += 1;
        }
        Some((client.0, client.1, done))
    }

    /// The PUT's connection failed before its answer: it is forgotten (a later notification for
    /// it counts as unexpected). Returns the client and channel it was for.
    pub fn abandoned(&mut self, version: u64) -> Option<(u32, u16)> {
        let p = self.puts.get(&version)?;
        let to = (p.client, p.chan);
        if p.status == 0 {
            self.unanswered -= 1;
            self.puts.remove(&version);
        }
        Some(to)
    }

    /// A notification for `version` arrived on `client`.
    pub fn delivered(&mut self, version: u64, client: u32) -> Matched {
        let Some(p) = self.puts.get_mut(&version) else {
            return Matched::Unexpected;
        };
        if p.delivered {
            return Matched::Unexpected;
        }
        p.delivered = true;
        let m = Matched::Put {
            sent_at: p.sent_at,
            right_client: p.client == client,
            answered: p.status != 0,
        };
        if p.status != 0 {
            self.undelivered -= 1;
            self.puts.remove(&version);
        }
        m
    }

    pub fn unanswered(&self) -> usize {
        self.unanswered
    }

    pub fn undelivered(&self) -> usize {
        self.undelivered
    }

    /// End of run: (lost = answered 200/202 but never delivered, unanswered).
    pub fn finish(&mut self) -> (u64, u64) {
        let lost = self.undelivered as u64;
        let unanswered = self.unanswered as u64;
        self.puts.clear();
        self.unanswered = 0;
        self.undelivered = 0;
        (lost, unanswered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_puts_in_any_order() {
        let now = Instant::now();
        let mut t = Tracker::new();
        let a = t.start(1, 0, now);
        let b = t.start(2, 0, now);
        let c = t.start(3, 0, now);
        let d = t.start(4, 0, now);
        // a: notification before the answer.
        assert!(matches!(
            t.delivered(a, 1),
            Matched::Put {
                right_client: true,
                ..
            }
        ));
        assert_eq!(t.answered(a, 200), Some((1, 0, true)));
        // b: answer, then notification on the wrong device.
        assert_eq!(t.answered(b, 201), Some((2, 0, false)));
        assert_eq!(t.undelivered(), 1);
        assert!(matches!(
            t.delivered(b, 9),
            Matched::Put {
                right_client: false,
                ..
            }
        ));
        assert!(matches!(t.delivered(b, 2), Matched::Unexpected));
        // c: an error status; d: never answered.
        t.answered(c, 410);
        assert_eq!((t.unanswered(), t.undelivered()), (1, 0));
        let e = t.start(5, 0, now);
        t.answered(e, 200);
        assert_eq!(t.finish(), (1, 1));
        let _ = d;
    }
}
