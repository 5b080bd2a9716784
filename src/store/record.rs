//! A UAID's channels as one value (their expiry and pending version), shared by the memcached
//! and disk backends: a register, an update or an ack reads and writes this one value.

use sm::{ChannelId, Id};

/// The longest relative lifetime: memcached reads a larger one as an absolute Unix time.
pub const MAX_RELATIVE_TTL: u32 = 30 * 24 * 3600;

/// One channel of a UAID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The channel.
    pub id: ChannelId,
    /// When it expires, Unix seconds; 0 = never.
    pub exp: u64,
    /// The version waiting for the device, if any.
    pub pending: Option<u64>,
}

impl Channel {
    /// Still registered at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.exp == 0 || self.exp > now
    }
}

/// A UAID's channels, in registration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The channels, expired ones included until the next write drops them.
    pub channels: Vec<Channel>,
}

impl Record {
    /// Parses a record body; `None` if any line is malformed.
    pub fn parse(text: &str) -> Option<Record> {
        let mut channels: Vec<Channel> = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut w = line.split(' ');
            let id = ChannelId(Id::parse(w.next()?)?);
            let exp = w.next()?.parse().ok()?;
            let pending = match w.next()? {
                "-" => None,
                v => Some(v.parse().ok()?),
            };
            if w.next().is_some() {
                return None;
            }
            if !channels.iter().any(|c| c.id == id) {
                channels.push(Channel { id, exp, pending });
            }
        }
        Some(Record { channels })
    }

    /// The body to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.channels.len() * 56);
        for c in &self.channels {
            let pending = c.pending.map_or_else(|| "-".to_string(), |v| v.to_string());
            out.push_str(&format!("{} {} {pending}\n", c.id, c.exp));
        }
        out.into_bytes()
    }

    /// The channel, if recorded and live.
    pub fn live(&self, id: &ChannelId, now: u64) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == *id && c.live(now))
    }

    /// The channel for changing, if recorded and live.
    pub fn live_mut(&mut self, id: &ChannelId, now: u64) -> Option<&mut Channel> {
        self.channels
            .iter_mut()
            .find(|c| c.id == *id && c.live(now))
    }

    /// Drops expired channels (a write is going out anyway).
    pub fn prune(&mut self, now: u64) {
        self.channels.retain(|c| c.live(now));
    }

    /// The item's lifetime: until its last channel expires (`empty` for a record of none).
    pub fn ttl(&self, now: u64, empty: u32) -> u32 {
        if self.channels.is_empty() {
            return empty;
        }
        if self.channels.iter().any(|c| c.exp == 0) {
            return 0;
        }
        let last = self.channels.iter().map(|c| c.exp).max().unwrap_or(now);
        relative(last, now)
    }
}

/// memcached's relative lifetime for an absolute expiry: one second more, because its clock
/// ticks once a second and may lag ours; at most 30 days.
pub fn relative(exp: u64, now: u64) -> u32 {
    let secs = exp.saturating_sub(now).saturating_add(1);
    u32::try_from(secs).map_or(MAX_RELATIVE_TTL, |s| s.min(MAX_RELATIVE_TTL))
}

/// The absolute expiry `secs` from now (0 = never).
pub fn expiry(secs: u32, now: u64) -> u64 {
    match secs {
        0 => 0,
        s => now + u64::from(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(b: u8, exp: u64, pending: Option<u64>) -> Channel {
        Channel {
            id: ChannelId(Id::fresh([b; 16])),
            exp,
            pending,
        }
    }

    #[test]
    fn records_round_trip_and_keep_the_clients_spelling() {
        let dashed = ChannelId(Id::parse("0CB8A613-8E2B-4B47-B370-51098DAA8401").unwrap());
        let r = Record {
            channels: vec![
                ch(1, 100, None),
                ch(2, 0, Some(7)),
                Channel {
                    id: dashed,
                    exp: 5,
                    pending: None,
                },
            ],
        };
        let text = String::from_utf8(r.encode()).unwrap();
        let back = Record::parse(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.channels[2].id.to_string(),
            "0CB8A613-8E2B-4B47-B370-51098DAA8401"
        );
        assert_eq!(Record::parse(""), Some(Record::default()));
        for bad in [
            "nope 1 -",
            "0cb8a6138e2b4b47b37051098daa8401 x -",
            "0cb8a6138e2b4b47b37051098daa8401 1 -1",
            "0cb8a6138e2b4b47b37051098daa8401 1 - extra",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn lifetimes_follow_the_last_channel() {
        let r = Record {
            channels: vec![ch(1, 160, None), ch(2, 130, Some(1))],
        };
        assert_eq!(r.ttl(100, 9), 61);
        assert_eq!(Record::default().ttl(100, 9), 9);
        let forever = Record {
            channels: vec![ch(1, 0, None)],
        };
        assert_eq!(forever.ttl(100, 9), 0);
        assert_eq!(relative(100 + 40 * 24 * 3600, 100), MAX_RELATIVE_TTL);
        assert_eq!((expiry(0, 5), expiry(10, 5)), (0, 15));
        let mut r = r;
        assert!(r.live(&ch(2, 0, None).id, 129).is_some());
        assert!(r.live(&ch(2, 0, None).id, 130).is_none());
        r.prune(150);
        assert_eq!(r.channels.len(), 1);
    }
}
