//! What the memcached backend stores under which key, and how each value is spelled.
//!
//! Keys use the ids' 32 lower-case hex digits:
//! - `u/<uaid>`: the UAID's record, one line per channel: `<channel id as the client spelled it>
//!   <expiry> <pending version or ->` (expiry in Unix seconds, 0 = none). One item per UAID, so a
//!   register, an update or an ack is one read and one conditional write.
//! - `m/<uaid>`: the UAID's waiting WebPush messages, a JSON list oldest first (`codec`).
//! - `n/<uaid>`: the router URL and connection of the node holding the UAID's socket, or `-`.
//! - `w/<uaid>`: how the UAID's device can be woken (JSON of `sm::wake::Wake`).
//! - `b/broadcasts`, `r/nodes`, `g/losses`: cluster-wide JSON objects.
//! - `g/marker`: per server, not replicated: which memcached process's data this is (`health`).
//!
//! Every replicated value is prefixed with a stamp by `replicas`; what is here is the body.

use std::collections::HashSet;
use std::sync::Mutex;

use log::warn;
use sm::{ChannelId, Id, Uaid};

/// memcached's longest relative expiry: a larger one is read as an absolute Unix time.
pub const MAX_RELATIVE_TTL: u32 = 30 * 24 * 3600;
/// Keys whose unreadable values were logged already (bounded: past it, nothing more is logged).
static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
const MAX_LOGGED: usize = 10_000;

fn hex(bytes: &[u8; 16]) -> String {
    Id::fresh(*bytes).to_string()
}

/// The UAID's record.
pub fn record_key(uaid: &Uaid) -> String {
    format!("u/{}", hex(uaid.0.bytes()))
}

/// The UAID's waiting messages.
pub fn msgs_key(uaid: &Uaid) -> String {
    format!("m/{}", hex(uaid.0.bytes()))
}

/// The UAID's node record.
pub fn node_key(uaid: &Uaid) -> String {
    format!("n/{}", hex(uaid.0.bytes()))
}

/// The UAID's wake data.
pub fn wake_key(uaid: &Uaid) -> String {
    format!("w/{}", hex(uaid.0.bytes()))
}

/// Logs a value that does not decode, once per key; the caller treats it as absent.
pub fn unreadable(key: &str, why: &str) {
    let Ok(mut guard) = LOGGED.lock() else {
        return;
    };
    let seen = guard.get_or_insert_with(HashSet::new);
    if seen.len() < MAX_LOGGED && seen.insert(key.to_string()) {
        warn!("memcached value of {key} does not decode ({why}); treated as absent");
    }
}

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
