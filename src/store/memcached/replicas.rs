//! Items kept on several servers of the ring, so that losing one server loses no write.
//!
//! Each item's value starts with a stamp, a counter raised by every write. A key's first server on
//! the ring (its primary) orders the writes: a change is written there first, conditional on the CAS
//! read (or as an add when absent), and only once that sticks to the next `replicas - 1` servers
//! that are up. A writer that loses on the primary writes nowhere and starts again, so every copy
//! with stamp `n` is the primary's `n`th value, and the newest copy holds every change before it.
//! A read asks every copy, takes the highest stamp, and writes it back where a copy is missing or
//! older (a server restarted empty). The primary is fixed, not elected: a node that thinks it is
//! down cannot order writes elsewhere while another node still writes to it. While a key's primary
//! is down its writes fail (503) and its reads are served by the other copies.

use std::sync::atomic::{AtomicU64, Ordering};

use super::conn::{rounds, ConnError, Server};
use super::wire::{Cmd, Mode, Reply};
use crate::store::ring::Ring;

/// Copies written back by reads (a server restarted empty, or missed a write).
pub static REPAIRS: AtomicU64 = AtomicU64::new(0);
/// Writes that lost a race on the primary and started again.
pub static CONFLICTS: AtomicU64 = AtomicU64::new(0);
/// How often a secondary copy is retried when another writer moved it meanwhile.
const SECONDARY_RETRIES: usize = 8;

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// A server it needs is down or did not answer in time.
    Unavailable,
    /// memcached is full and refuses to evict (`-M`).
    Full,
}

/// One server's copy of an item, as read.
#[derive(Debug, Clone)]
struct Slot {
    server: usize,
    /// `None`: the server has no such item.
    cas: Option<u64>,
    /// `None`: absent, or present but unreadable (then overwritten as if absent).
    stamp: Option<u64>,
}

/// An item read from all its copies: the newest value, and what a write needs.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key.
    pub key: String,
    slots: Vec<Slot>,
    /// Stamp, body and seconds left (`None`: no expiry) of the newest copy.
    newest: Option<(u64, Vec<u8>, Option<u32>)>,
    /// Whether the first slot is the key's primary (writes need it).
    primary: bool,
}

impl Item {
    /// The newest value, without its stamp.
    pub fn body(&self) -> Option<&[u8]> {
        self.newest.as_ref().map(|(_, b, _)| b.as_slice())
    }

    /// The newest value as text (`None` also when it is not UTF-8).
    pub fn text(&self) -> Option<&str> {
        self.body().and_then(|b| std::str::from_utf8(b).ok())
    }

    fn stamp(&self) -> u64 {
        self.newest.as_ref().map_or(0, |(s, _, _)| *s)
    }
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// On every copy.
    Yes,
    /// Another writer changed the item since it was read: read again and redo.
    Conflict,
}

/// Splits a stored value into its stamp and body.
fn unstamp(data: &[u8]) -> Option<(u64, &[u8])> {
    let sp = data.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
    Some((stamp, &data[sp + 1..]))
}

fn stamped(stamp: u64, body: &[u8]) -> Vec<u8> {
    let mut v = stamp.to_string().into_bytes();
    v.push(b' ');
    v.extend_from_slice(body);
    v
}

fn set_over(key: &str, slot: &Slot, value: Vec<u8>, ttl: u32) -> Cmd {
    Cmd::Set {
        key: key.to_string(),
        value,
        ttl,
        mode: if slot.cas.is_some() {
            Mode::Set
        } else {
            Mode::Add
        },
        cas: slot.cas,
    }
}

/// The servers and how keys map onto them.
pub struct Cluster {
    /// The servers, in configuration order.
    pub servers: Vec<Server>,
    ring: Ring,
    replicas: usize,
}

impl Cluster {
    /// Servers with `replicas` copies of every item (at least one, at most every server).
    pub fn new(servers: Vec<Server>, replicas: usize) -> Cluster {
        let names: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
        Cluster {
            ring: Ring::new(&names),
            replicas: replicas.clamp(1, servers.len().max(1)),
            servers,
        }
    }

    /// How many copies each item has.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Where a key's copies are now: its primary if up, then the next servers that are up. The
    /// flag says whether the primary is among them.
    fn targets(&self, key: &str) -> (Vec<usize>, bool) {
        let order = self.ring.order(key, self.servers.len());
        let primary = order.first().is_some_and(|&p| self.servers[p].up());
        let live = order
            .into_iter()
            .filter(|&s| self.servers[s].up())
            .take(self.replicas)
            .collect();
        (live, primary)
    }

    /// Reads items from all their copies in one round trip, and repairs copies found missing or
    /// older. Fails if a copy's server does not answer.
    pub fn read(&self, keys: &[String]) -> Result<Vec<Item>, Fail> {
        let mut batches: Vec<(usize, Vec<Cmd>)> = Vec::new();
        let mut plan = Vec::with_capacity(keys.len());
        for key in keys {
            let (targets, primary) = self.targets(key);
            if targets.is_empty() {
                return Err(Fail::Unavailable);
            }
            let mut at = Vec::with_capacity(targets.len());
            for s in targets {
                at.push((s, push_cmd(&mut batches, s, Cmd::Get(key.clone()))));
            }
            plan.push((key, at, primary));
        }
        let replies = answers(&rounds(&self.servers, &batches))?;
        let mut items = Vec::with_capacity(keys.len());
        for (key, at, primary) in plan {
            let mut item = Item {
                key: key.clone(),
                slots: Vec::with_capacity(at.len()),
                newest: None,
                primary,
            };
            for (s, (b, i)) in at {
                item.slots
                    .push(take_slot(&mut item.newest, s, &replies[b][i]));
            }
            items.push(item);
        }
        self.repair(&items);
        Ok(items)
    }

    /// Writes the newest copy where one is missing or older; best effort (the next read retries).
    fn repair(&self, items: &[Item]) {
        let mut batches = Vec::new();
        for item in items.iter().filter(|i| i.primary) {
            let Some((stamp, body, ttl)) = &item.newest else {
                continue;
            };
            for slot in item
                .slots
                .iter()
                .filter(|s| s.stamp.is_none_or(|st| st < *stamp))
            {
                let cmd = set_over(&item.key, slot, stamped(*stamp, body), ttl.unwrap_or(0));
                push_cmd(&mut batches, slot.server, cmd);
                REPAIRS.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !batches.is_empty() {
            let _ = rounds(&self.servers, &batches);
        }
    }

    /// Writes new bodies over items as read: the primaries in one round, then the other copies.
    pub fn write(&self, writes: &[(&Item, Vec<u8>, u32)]) -> Result<Vec<Written>, Fail> {
        let mut batches = Vec::new();
        let mut first = Vec::with_capacity(writes.len());
        for (item, body, ttl) in writes {
            let Some(slot) = item.slots.first().filter(|_| item.primary) else {
                return Err(Fail::Unavailable);
            };
            let value = stamped(item.stamp() + 1, body);
            first.push(push_cmd(
                &mut batches,
                slot.server,
                set_over(&item.key, slot, value, *ttl),
            ));
        }
        let replies = answers(&rounds(&self.servers, &batches))?;
        let refused: Vec<&Item> = writes
            .iter()
            .zip(&first)
            .filter(|(_, (b, i))| matches!(replies[*b][*i], Reply::OutOfMemory))
            .map(|((item, _, _), _)| *item)
            .collect();
        if !refused.is_empty() {
            self.restore(&refused);
            return Err(Fail::Full);
        }
        let mut out = Vec::with_capacity(writes.len());
        let mut batches = Vec::new();
        let mut second = Vec::new();
        for ((item, body, ttl), (b, i)) in writes.iter().zip(first) {
            match &replies[b][i] {
                Reply::Done => out.push(Written::Yes),
                Reply::NotStored | Reply::Exists | Reply::NotFound => {
                    CONFLICTS.fetch_add(1, Ordering::Relaxed);
                    out.push(Written::Conflict);
                    continue;
                }
                _ => return Err(Fail::Unavailable),
            }
            let value = stamped(item.stamp() + 1, body);
            for slot in &item.slots[1..] {
                let cmd = set_over(&item.key, slot, value.clone(), *ttl);
                second.push((
                    item,
                    slot.server,
                    value.clone(),
                    *ttl,
                    push_cmd(&mut batches, slot.server, cmd),
                ));
            }
        }
        if batches.is_empty() {
            return Ok(out);
        }
        let replies = answers(&rounds(&self.servers, &batches))?;
        for (item, server, value, ttl, (b, i)) in second {
            match &replies[b][i] {
                Reply::Done => {}
                Reply::OutOfMemory => return Err(Fail::Full),
                Reply::NotStored | Reply::Exists | Reply::NotFound => {
                    self.catch_up(&item.key, server, value, ttl, item.stamp() + 1)?
                }
                _ => return Err(Fail::Unavailable),
            }
        }
        Ok(out)
    }

    /// Puts back the values of items whose primary refused a write for lack of memory: memcached
    /// unlinks the old item when a store into it cannot be allocated, which would otherwise drop
    /// data already answered 2xx. The freed chunk is of the old value's size, so the old value
    /// fits again. A secondary copy, when there is one, still holds it too and repairs it on read.
    fn restore(&self, items: &[&Item]) {
        let mut batches = Vec::new();
        for item in items {
            let (Some(slot), Some((stamp, body, ttl))) = (item.slots.first(), &item.newest) else {
                continue;
            };
            let cmd = Cmd::Set {
                key: item.key.clone(),
                value: stamped(*stamp, body),
                ttl: ttl.unwrap_or(0),
                mode: Mode::Add,
                cas: None,
            };
            push_cmd(&mut batches, slot.server, cmd);
        }
        if batches.is_empty() {
            return;
        }
        for (r, (server, _)) in rounds(&self.servers, &batches).iter().zip(&batches) {
            let ok = matches!(r, Ok(replies) if replies.iter().all(|x| matches!(x, Reply::Done)));
            if !ok {
                log::warn!(
                    "memcached {}: a value unlinked by a refused store could not be put back",
                    self.servers[*server].addr
                );
            }
        }
    }

    /// Brings one secondary copy up to `stamp`, unless a later write already took it past.
    fn catch_up(
        &self,
        key: &str,
        server: usize,
        value: Vec<u8>,
        ttl: u32,
        stamp: u64,
    ) -> Result<(), Fail> {
        for _ in 0..SECONDARY_RETRIES {
            let got = self.servers[server]
                .round(&[Cmd::Get(key.to_string())])
                .map_err(|_| Fail::Unavailable)?;
            let mut newest = None;
            let slot = take_slot(&mut newest, server, &got[0]);
            if slot.stamp.is_some_and(|s| s >= stamp) {
                return Ok(());
            }
            let cmd = set_over(key, &slot, value.clone(), ttl);
            match self.servers[server]
                .round(&[cmd])
                .map_err(|_| Fail::Unavailable)?
                .first()
            {
                Some(Reply::Done) => return Ok(()),
                Some(Reply::OutOfMemory) => return Err(Fail::Full),
                _ => {}
            }
        }
        Err(Fail::Unavailable)
    }

    /// Gives every copy of an item a new lifetime.
    pub fn touch(&self, keys: &[(String, u32)]) -> Result<(), Fail> {
        let mut batches = Vec::new();
        for (key, ttl) in keys {
            for s in self.targets(key).0 {
                push_cmd(&mut batches, s, Cmd::Touch(key.clone(), *ttl));
            }
        }
        answers(&rounds(&self.servers, &batches)).map(drop)
    }

    /// Deletes every copy of the items.
    pub fn delete(&self, keys: &[String]) -> Result<(), Fail> {
        let mut batches = Vec::new();
        for key in keys {
            let (targets, primary) = self.targets(key);
            if !primary {
                return Err(Fail::Unavailable);
            }
            for s in targets {
                push_cmd(&mut batches, s, Cmd::Delete(key.clone()));
            }
        }
        answers(&rounds(&self.servers, &batches)).map(drop)
    }
}

/// Adds a command to the batch of its server; where its reply will be (batch, position).
fn push_cmd(batches: &mut Vec<(usize, Vec<Cmd>)>, server: usize, cmd: Cmd) -> (usize, usize) {
    let b = match batches.iter().position(|(s, _)| *s == server) {
        Some(b) => b,
        None => {
            batches.push((server, Vec::new()));
            batches.len() - 1
        }
    };
    batches[b].1.push(cmd);
    (b, batches[b].1.len() - 1)
}

fn answers(results: &[Result<Vec<Reply>, ConnError>]) -> Result<Vec<Vec<Reply>>, Fail> {
    results
        .iter()
        .map(|r| r.as_ref().cloned().map_err(|_| Fail::Unavailable))
        .collect()
}

/// One server's copy from its reply to a `Get`, keeping the newest seen in `newest`.
fn take_slot(
    newest: &mut Option<(u64, Vec<u8>, Option<u32>)>,
    server: usize,
    reply: &Reply,
) -> Slot {
    let Reply::Value { data, cas, ttl } = reply else {
        return Slot {
            server,
            cas: None,
            stamp: None,
        };
    };
    let parsed = unstamp(data);
    if parsed.is_none() {
        super::layout::unreadable(&format!("server {server}"), "no stamp");
    }
    if let Some((stamp, body)) = parsed {
        if newest.as_ref().is_none_or(|(s, _, _)| stamp > *s) {
            *newest = Some((stamp, body.to_vec(), *ttl));
        }
    }
    Slot {
        server,
        cas: Some(*cas),
        stamp: parsed.map(|(s, _)| s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_garbage_has_none() {
        assert_eq!(unstamp(&stamped(42, b"a b")), Some((42, &b"a b"[..])));
        assert_eq!(unstamp(&stamped(0, b"")), Some((0, &b""[..])));
        assert_eq!(unstamp(b"r"), None);
        assert_eq!(unstamp(b"x1 y"), None);
    }

    #[test]
    fn the_newest_copy_wins_and_unreadable_copies_count_as_absent() {
        let mut newest = None;
        let v = |d: &[u8], cas| Reply::Value {
            data: d.to_vec(),
            cas,
            ttl: Some(5),
        };
        let a = take_slot(&mut newest, 0, &v(b"3 old", 1));
        let b = take_slot(&mut newest, 1, &v(b"4 new", 2));
        let c = take_slot(&mut newest, 2, &v(b"junk", 3));
        let d = take_slot(&mut newest, 3, &Reply::Miss);
        assert_eq!(newest, Some((4, b"new".to_vec(), Some(5))));
        assert_eq!(
            (a.stamp, b.stamp, c.stamp, d.stamp),
            (Some(3), Some(4), None, None)
        );
        assert_eq!(
            (c.cas, d.cas),
            (Some(3), None),
            "garbage is overwritten by CAS, not added"
        );
    }
}
