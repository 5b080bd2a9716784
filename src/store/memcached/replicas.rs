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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::conn::{rounds, ConnError, Server};
use super::wire::{Cmd, Mode, Reply};
use crate::store::ring::Ring;

/// Copies written back by reads (a server restarted empty, or missed a write).
pub static REPAIRS: AtomicU64 = AtomicU64::new(0);
/// Writes that lost a race on the primary and started again.
pub static CONFLICTS: AtomicU64 = AtomicU64::new(0);
/// How often a secondary copy is retried when another writer moved it meanwhile.
const SECONDARY_RETRIES: usize = 8;
/// Items remembered as last written (see `Cluster::cached`), and the largest body remembered:
/// under 1 MiB in all. Enough for the common case, an update and its ack moments apart.
const CACHE_ITEMS: usize = 1024;
const CACHE_BODY_MAX: usize = 512;

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
    /// An item not read (yet): no copies, no value.
    pub fn absent(key: &str) -> Item {
        Item {
            key: key.to_string(),
            slots: Vec::new(),
            newest: None,
            primary: false,
        }
    }

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

    /// The item once `body` is written over it (CAS of copy `k` known; the others' filled in as
    /// their writes answer). `None` when it is too large to be worth remembering.
    fn after_write(&self, k: usize, cas: Option<u64>, body: &[u8], ttl: u32) -> Option<Item> {
        if body.len() > CACHE_BODY_MAX {
            return None;
        }
        let stamp = self.stamp() + 1;
        let mut slots: Vec<Slot> = self
            .slots
            .iter()
            .map(|s| Slot {
                server: s.server,
                cas: None,
                stamp: Some(stamp),
            })
            .collect();
        slots[k].cas = cas;
        Some(Item {
            key: self.key.clone(),
            slots,
            newest: Some((stamp, body.to_vec(), (ttl > 0).then_some(ttl))),
            primary: true,
        })
    }
}

/// Where the replies of one key's reads will be.
struct ReadPlan<'k> {
    key: &'k String,
    at: Vec<(usize, (usize, usize))>,
    primary: bool,
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
    cache: Mutex<HashMap<String, Item>>,
}

impl Cluster {
    /// Servers with `replicas` copies of every item (at least one, at most every server).
    pub fn new(servers: Vec<Server>, replicas: usize) -> Cluster {
        let names: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
        Cluster {
            ring: Ring::new(&names),
            replicas: replicas.clamp(1, servers.len().max(1)),
            servers,
            cache: Mutex::new(HashMap::new()),
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
        let plan = self.plan_reads(keys, &mut batches)?;
        let replies = answers(rounds(&self.servers, &batches))?;
        Ok(self.take_reads(plan, &replies))
    }

    /// Adds the `Get`s of every copy of `keys` to `batches`; where each reply will be.
    fn plan_reads<'k>(
        &self,
        keys: &'k [String],
        batches: &mut Vec<(usize, Vec<Cmd>)>,
    ) -> Result<Vec<ReadPlan<'k>>, Fail> {
        let mut plan = Vec::with_capacity(keys.len());
        for key in keys {
            let (targets, primary) = self.targets(key);
            if targets.is_empty() {
                return Err(Fail::Unavailable);
            }
            let at = targets
                .into_iter()
                .map(|s| (s, push_cmd(batches, s, Cmd::Get(key.clone()))))
                .collect();
            plan.push(ReadPlan { key, at, primary });
        }
        Ok(plan)
    }

    /// The items a round's replies make of a read plan, with missing or older copies repaired.
    fn take_reads(&self, plan: Vec<ReadPlan<'_>>, replies: &[Vec<Reply>]) -> Vec<Item> {
        let mut items = Vec::with_capacity(plan.len());
        for ReadPlan { key, at, primary } in plan {
            let mut item = Item {
                key: key.clone(),
                slots: Vec::with_capacity(at.len()),
                newest: None,
                primary,
            };
            for (s, (b, i)) in at {
                item.slots
                    .push(take_slot(&mut item.newest, s, key, &replies[b][i]));
            }
            items.push(item);
        }
        self.repair(&items);
        items
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
        self.write_reading(writes, &[]).map(|(w, _)| w)
    }

    /// Like `write`, and reads `keys` in the same round as the primaries' writes.
    pub fn write_reading(
        &self,
        writes: &[(&Item, Vec<u8>, u32)],
        keys: &[String],
    ) -> Result<(Vec<Written>, Vec<Item>), Fail> {
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
        let plan = self.plan_reads(keys, &mut batches)?;
        let replies = answers(rounds(&self.servers, &batches))?;
        let read = self.take_reads(plan, &replies);
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
        let mut written: Vec<Option<Item>> = Vec::with_capacity(writes.len());
        for ((item, body, ttl), (b, i)) in writes.iter().zip(first) {
            let cas = match &replies[b][i] {
                Reply::Done(cas) => *cas,
                Reply::NotStored | Reply::Exists | Reply::NotFound => {
                    CONFLICTS.fetch_add(1, Ordering::Relaxed);
                    out.push(Written::Conflict);
                    written.push(None);
                    continue;
                }
                _ => return Err(Fail::Unavailable),
            };
            out.push(Written::Yes);
            written.push(item.after_write(0, cas, body, *ttl));
            let value = stamped(item.stamp() + 1, body);
            for (k, slot) in item.slots.iter().enumerate().skip(1) {
                let cmd = set_over(&item.key, slot, value.clone(), *ttl);
                second.push((
                    written.len() - 1,
                    k,
                    (item, slot.server, value.clone(), *ttl),
                    push_cmd(&mut batches, slot.server, cmd),
                ));
            }
        }
        if !batches.is_empty() {
            let replies = answers(rounds(&self.servers, &batches))?;
            for (w, k, (item, server, value, ttl), (b, i)) in second {
                match &replies[b][i] {
                    Reply::Done(cas) => {
                        if let Some(Some(done)) = written.get_mut(w) {
                            done.slots[k].cas = *cas;
                        }
                    }
                    Reply::OutOfMemory => return Err(Fail::Full),
                    Reply::NotStored | Reply::Exists | Reply::NotFound => {
                        written[w] = None;
                        self.catch_up(&item.key, server, value, ttl, item.stamp() + 1)?
                    }
                    _ => return Err(Fail::Unavailable),
                }
            }
        }
        self.remember(written.into_iter().flatten());
        Ok((out, read))
    }

    /// An item of a key nobody has written yet (one of a UAID minted a moment ago): its first
    /// write adds every copy, with no read before it. An add that finds the key written is a
    /// conflict, which the caller handles as any other: read, then redo.
    pub fn unwritten(&self, key: &str) -> Result<Item, Fail> {
        let (targets, primary) = self.targets(key);
        if targets.is_empty() {
            return Err(Fail::Unavailable);
        }
        let slots = targets
            .into_iter()
            .map(|server| Slot {
                server,
                cas: None,
                stamp: None,
            })
            .collect();
        Ok(Item {
            key: key.to_string(),
            slots,
            newest: None,
            primary,
        })
    }

    /// Takes the item as this node last wrote it, if it is remembered: a change to it can then be
    /// written at once, with no read first (its CAS tells whether anyone changed it since).
    pub fn cached(&self, key: &str) -> Option<Item> {
        self.cache.lock().ok()?.remove(key)
    }

    fn remember(&self, items: impl Iterator<Item = Item>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        for item in items.filter(|i| i.slots.iter().all(|s| s.cas.is_some())) {
            if cache.len() >= CACHE_ITEMS {
                // Bounded memory, whatever the number of devices; a dropped entry costs a read.
                cache.clear();
            }
            cache.insert(item.key.clone(), item);
        }
    }

    fn forget(&self, keys: &[String]) {
        if let Ok(mut cache) = self.cache.lock() {
            for k in keys {
                cache.remove(k);
            }
        }
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
            let ok =
                matches!(r, Ok(replies) if replies.iter().all(|x| matches!(x, Reply::Done(_))));
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
            let slot = take_slot(&mut newest, server, key, &got[0]);
            if slot.stamp.is_some_and(|s| s >= stamp) {
                return Ok(());
            }
            let cmd = set_over(key, &slot, value.clone(), ttl);
            match self.servers[server]
                .round(&[cmd])
                .map_err(|_| Fail::Unavailable)?
                .first()
            {
                Some(Reply::Done(_)) => return Ok(()),
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
        answers(rounds(&self.servers, &batches)).map(drop)
    }

    /// Deletes every copy of the items.
    pub fn delete(&self, keys: &[String]) -> Result<(), Fail> {
        self.forget(keys);
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
        answers(rounds(&self.servers, &batches)).map(drop)
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

fn answers(results: Vec<Result<Vec<Reply>, ConnError>>) -> Result<Vec<Vec<Reply>>, Fail> {
    results
        .into_iter()
        .map(|r| r.map_err(|_| Fail::Unavailable))
        .collect()
}

/// One server's copy from its reply to a `Get`, keeping the newest seen in `newest`.
fn take_slot(
    newest: &mut Option<(u64, Vec<u8>, Option<u32>)>,
    server: usize,
    key: &str,
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
        super::layout::unreadable(key, "no stamp");
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
        let a = take_slot(&mut newest, 0, "k", &v(b"3 old", 1));
        let b = take_slot(&mut newest, 1, "k", &v(b"4 new", 2));
        let c = take_slot(&mut newest, 2, "k", &v(b"junk", 3));
        let d = take_slot(&mut newest, 3, "k", &Reply::Miss);
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
