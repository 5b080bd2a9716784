//! The memcached backend: records shared by every node of a cluster, on our own client for
//! memcached's meta protocol.
//!
//! - `wire`: the commands and replies; `conn`: buffered, pipelined connections per server;
//! - `replicas`: every item on `storage.replicas` servers, written through its primary;
//! - `layout`: keys and values (the record is `store::record`, the message list
//!   `store::message_list`);
//! - `health`: the probe that checks each server (no eviction, its data marker) and notices a
//!   server that lost its data.
//!
//! A UAID is one record (`u/<uaid>`) holding all its channels, so a register, an update or an ack
//! is one read and one conditional write, and two nodes writing at once never lose each other's
//! change (`cas`: the loser reads again and redoes its change). Operations that need several keys
//! read them in one round trip.

mod backend;
pub mod conn;
pub mod health;
pub mod layout;
pub mod replicas;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sm::{ChannelId, Message, Uaid};

use self::conn::Server;
use self::layout::{msgs_key, node_key, record_key, wake_key};
use self::replicas::{Cluster, Fail, Item, Written};
use super::codec::{decode_list, encode_list};
use super::message_list::{acked, list_life, same_topic, with_message};
use super::record::{expiry, Channel, Record};
use super::{now_secs, Backend, HelloFound, PutResult, StoredMessage, Unavailable};
use crate::metrics::{track, track_drop, Drop, Event};

/// How many times a conditional write is redone when another writer got there first.
const CAS_RETRIES: usize = 16;
/// Lifetime of a node record: a socket's record is replaced or released long before, unless its
/// node died; then it must not stay for ever. (memcached's longest relative expiry, 30 days.)
const NODE_TTL: u32 = 30 * 24 * 3600;
/// Lifetime of a released node record (`-`).
const RELEASED_TTL: u32 = 60;
/// The broadcast table, one item for the whole cluster.
const BROADCASTS_KEY: &str = "b/broadcasts";
/// The cluster's nodes: router URL → when it last said it is up (Unix seconds).
const NODES_KEY: &str = "r/nodes";
/// A node not heard of for this long is left out of the list.
const NODE_STALE_SECS: u64 = 90;

/// Connection settings and record lifetimes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// Connect, read and write timeout.
    pub timeout: Duration,
    /// Connections per server (kept idle for reuse; the storage threads bound how many are used).
    pub pool_size: u32,
    /// Lifetime of a pending version, seconds.
    pub pending_ttl: u32,
    /// Lifetime of a registration without use, seconds.
    pub registration_ttl: u32,
    /// WebPush messages allowed to wait per UAID.
    pub max_messages: usize,
    /// Servers that hold each write.
    pub replicas: usize,
    /// Start even if a server evicts.
    pub allow_eviction: bool,
    /// Nodes share this memcached (`[cluster]`): devices' node records matter.
    pub cluster: bool,
}

/// The memcached backend.
pub struct MemcachedStore {
    cluster: Cluster,
    settings: Settings,
    /// Servers that lost their data (restarted), by address, with when it was noticed.
    losses: Mutex<BTreeMap<String, u64>>,
}

fn unavailable(_: Fail) -> Unavailable {
    Unavailable
}

/// The record in an item; an unreadable one counts as absent.
fn record_of(item: &Item) -> Option<Record> {
    let body = item.body()?;
    let parsed = std::str::from_utf8(body).ok().and_then(Record::parse);
    if parsed.is_none() {
        layout::unreadable(&item.key, "not a channel record");
    }
    parsed
}

fn messages_of(item: &Item) -> Vec<StoredMessage> {
    item.text().map(decode_list).unwrap_or_default()
}

/// A node record's text, `-` and absence both meaning none.
fn node_of(item: &Item) -> Option<String> {
    item.text().filter(|n| *n != "-").map(str::to_string)
}

impl MemcachedStore {
    /// Sets up the servers, checks each once, and starts the health probe. Fails (the server
    /// exits with 2) when a reachable server evicts items and `allow_eviction` is off.
    pub fn start(settings: Settings) -> Result<Arc<MemcachedStore>, String> {
        let servers = settings
            .servers
            .iter()
            .map(|s| Server::new(s, settings.timeout))
            .collect();
        let store = Arc::new(MemcachedStore {
            cluster: Cluster::new(servers, settings.replicas),
            settings,
            losses: Mutex::new(BTreeMap::new()),
        });
        store.probe_all();
        if let Some(s) = store
            .cluster
            .servers
            .iter()
            .find(|s| s.state() == conn::State::Refused)
        {
            return Err(format!(
                "memcached {} evicts items when full (started without -M), which would silently \
                 drop pushes already answered 2xx: restart it with -M, or set \
                 storage.allow_eviction = true to accept that risk",
                s.addr
            ));
        }
        for s in store.cluster.servers.iter().filter(|s| !s.up()) {
            log::warn!(
                "memcached not reachable yet: {}; its keys answer 503 until it is",
                s.addr
            );
        }
        // The metrics exist from the first scrape on.
        store.refresh_stats();
        health::spawn_probe(&store)?;
        Ok(store)
    }

    /// Whether some server answers now.
    pub fn healthy_now(&self) -> bool {
        self.cluster.servers.iter().any(Server::up)
    }

    /// Reads `key` (and `extra` keys in the same round trip) and writes what `change` makes of it,
    /// redoing both when another writer changed it meanwhile. `change` may run several times, and
    /// what it writes must depend on the item alone (`extra` only shapes its answer).
    fn update<R>(
        &self,
        key: String,
        extra: &[String],
        mut change: impl FnMut(&Item, &[Item]) -> (R, Option<(Vec<u8>, u32)>),
    ) -> Result<R, Fail> {
        if let Some(answer) = self.update_cached(&key, extra, &mut change)? {
            return Ok(answer);
        }
        let mut keys = vec![key];
        keys.extend_from_slice(extra);
        for _ in 0..CAS_RETRIES {
            let items = self.cluster.read(&keys)?;
            let (answer, new) = change(&items[0], &items[1..]);
            let Some((body, ttl)) = new else {
                return Ok(answer);
            };
            if self.cluster.write(&[(&items[0], body, ttl)])?[0] == Written::Yes {
                return Ok(answer);
            }
        }
        Err(Fail::Unavailable)
    }

    /// `update` in one round trip instead of two: the change written over the item as this node
    /// last wrote it (its CAS proves nobody changed it since), with `extra` read in the same round.
    /// `None` when nothing is remembered, the change writes nothing (an answer that needs no
    /// write is only trusted from a fresh read), or another writer got there first.
    fn update_cached<R>(
        &self,
        key: &str,
        extra: &[String],
        change: &mut impl FnMut(&Item, &[Item]) -> (R, Option<(Vec<u8>, u32)>),
    ) -> Result<Option<R>, Fail> {
        let Some(item) = self.cluster.cached(key) else {
            return Ok(None);
        };
        let unread: Vec<Item> = extra.iter().map(|k| Item::absent(k)).collect();
        let (_, Some((body, ttl))) = change(&item, &unread) else {
            return Ok(None);
        };
        let (written, read) = self.cluster.write_reading(&[(&item, body, ttl)], extra)?;
        if written.first() != Some(&Written::Yes) {
            return Ok(None);
        }
        Ok(Some(change(&item, &read).0))
    }

    fn read_one(&self, key: String) -> Result<Item, Fail> {
        let mut items = self.cluster.read(&[key])?;
        items.pop().ok_or(Fail::Unavailable)
    }

    /// Lifetime of a pending version: at least a registration's (0 = no expiry, then none either).
    fn pending_ttl(&self) -> u32 {
        match self.settings.registration_ttl {
            0 => 0,
            reg => self.settings.pending_ttl.max(reg),
        }
    }

    /// Wake data serves offline devices, whose registrations a waiting update can keep alive for
    /// the pending TTL: it lives as long as the longer of the two.
    fn wake_ttl(&self) -> u32 {
        self.settings.registration_ttl.max(self.pending_ttl())
    }

    /// A registration's expiry if used now, stretched to cover `life` seconds of waiting messages.
    fn registered_until(&self, now: u64, life: u32) -> u64 {
        match self.settings.registration_ttl {
            0 => 0,
            reg => expiry(reg.max(life), now),
        }
    }

    fn record_ttl(&self, rec: &Record, now: u64) -> u32 {
        rec.ttl(now, self.settings.registration_ttl)
    }

    /// The record with `channel` registered (or its registration refreshed); `None` when the
    /// channel is new and the record already has `max` live ones.
    fn with_channel(
        &self,
        mut rec: Record,
        channel: &ChannelId,
        max: usize,
        now: u64,
    ) -> Option<Record> {
        let until = self.registered_until(now, 0);
        if let Some(c) = rec.live_mut(channel, now) {
            if c.pending.is_none() && c.exp != 0 {
                c.exp = c.exp.max(until);
            }
            return Some(rec);
        }
        rec.prune(now);
        if rec.channels.len() >= max {
            return None;
        }
        rec.channels.push(Channel {
            id: *channel,
            exp: until,
            pending: None,
        });
        Some(rec)
    }

    /// The body and lifetime to write for a record.
    fn record_write(&self, rec: &Record, now: u64) -> Option<(Vec<u8>, u32)> {
        Some((rec.encode(), self.record_ttl(rec, now)))
    }

    /// Whether a missing registration may be explained by a memcached that lost its data: then a
    /// genuine token for an unknown channel is stored (202), not refused (410).
    pub fn in_loss_window(&self) -> bool {
        let window = match self
            .settings
            .registration_ttl
            .max(self.settings.pending_ttl)
        {
            0 => u64::from(layout::MAX_RELATIVE_TTL),
            w => u64::from(w),
        };
        let now = now_secs();
        let recent = self.losses.lock().map_or(0, |l| {
            l.values()
                .filter(|t| now.saturating_sub(**t) < window)
                .count()
        });
        recent >= self.cluster.replicas()
    }

    /// The broadcast versions set through the admin API (`b/broadcasts`), shared by every node.
    pub fn broadcasts(&self) -> Result<BTreeMap<String, String>, Unavailable> {
        self.read_map(BROADCASTS_KEY).map_err(unavailable)
    }

    /// Merges new broadcast versions into `b/broadcasts`; the whole table after.
    pub fn set_broadcasts(
        &self,
        changes: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Unavailable> {
        self.update_map(BROADCASTS_KEY, |table| {
            table.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        })
        .map_err(unavailable)
    }

    /// Records that the node with this router URL is up, and forgets nodes not heard of lately.
    pub fn announce_node(&self, url: &str) -> Result<(), Unavailable> {
        self.update_map(NODES_KEY, |nodes: &mut BTreeMap<String, u64>| {
            let now = now_secs();
            nodes.retain(|_, seen| now.saturating_sub(*seen) < NODE_STALE_SECS);
            nodes.insert(url.to_string(), now);
        })
        .map(drop)
        .map_err(unavailable)
    }

    /// The router URLs of the nodes heard of lately.
    pub fn nodes(&self) -> Result<Vec<String>, Unavailable> {
        let now = now_secs();
        let nodes: BTreeMap<String, u64> = self.read_map(NODES_KEY).map_err(unavailable)?;
        Ok(nodes
            .into_iter()
            .filter(|(_, seen)| now.saturating_sub(*seen) < NODE_STALE_SECS)
            .map(|(url, _)| url)
            .collect())
    }

    /// A cluster-wide JSON object item (no expiry); empty when absent or unreadable.
    fn read_map<V: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<BTreeMap<String, V>, Fail> {
        let item = self.read_one(key.to_string())?;
        Ok(item
            .text()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default())
    }

    /// Changes a cluster-wide JSON object item until the change sticks; the object after.
    fn update_map<V: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        change: impl Fn(&mut BTreeMap<String, V>),
    ) -> Result<BTreeMap<String, V>, Fail> {
        self.update(key.to_string(), &[], |item, _| {
            let mut map: BTreeMap<String, V> = item
                .text()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default();
            change(&mut map);
            let text = serde_json::to_string(&map).unwrap_or_else(|_| "{}".into());
            (map, Some((text.into_bytes(), 0)))
        })
    }

    /// Changes the UAID's message list until the change sticks; returns `change`'s answer.
    /// `change` gets the live messages and returns its answer and the new list (`None`: no write).
    /// An emptied list is written, not deleted (a delete cannot be conditional): it expires
    /// within a second or two.
    fn update_messages<R>(
        &self,
        uaid: &Uaid,
        mut change: impl FnMut(&[StoredMessage]) -> (R, Option<Vec<StoredMessage>>),
    ) -> Result<R, Fail> {
        let mut expired = Vec::new();
        let answer = self.update(msgs_key(uaid), &[], |item, _| {
            let now = now_secs();
            let (live, gone): (Vec<_>, Vec<_>) =
                messages_of(item).into_iter().partition(|m| m.live(now));
            expired = gone;
            let (answer, new) = change(&live);
            let write = new.map(|n| (encode_list(&n).into_bytes(), list_life(&n, now)));
            (answer, write)
        })?;
        // Counted once they are gone for good (a hello only skips them).
        for m in &expired {
            track(Event::Expired, uaid, &m.msg.channel, &m.msg.id);
        }
        Ok(answer)
    }

    /// Removes the UAID's waiting messages that `gone` picks; whether there were any.
    fn remove_messages(
        &self,
        uaid: &Uaid,
        gone: impl Fn(&StoredMessage) -> bool,
    ) -> Result<bool, Fail> {
        self.update_messages(uaid, |list| {
            let rest: Vec<StoredMessage> = list.iter().filter(|m| !gone(m)).cloned().collect();
            let removed = rest.len() != list.len();
            (removed, removed.then_some(rest))
        })
    }

    /// Stretches a channel's registration to outlive the UAID's waiting messages (`life` seconds):
    /// an offline device must still be known when it comes back for them. `false` if it is gone.
    fn keep_channel(&self, uaid: &Uaid, channel: &ChannelId, life: u32) -> Result<bool, Fail> {
        let reg = self.settings.registration_ttl;
        self.update(record_key(uaid), &[], |item, _| {
            let now = now_secs();
            let Some(mut rec) = record_of(item) else {
                return (false, None);
            };
            let Some(c) = rec.live_mut(channel, now) else {
                return (false, None);
            };
            let wanted = expiry(reg.max(life), now);
            if c.exp == 0 || reg == 0 || c.exp >= wanted {
                return (true, None);
            }
            c.exp = wanted;
            (true, self.record_write(&rec, now))
        })
    }

    /// What a stored update needs next: where the UAID's socket is, and how to wake its device.
    fn stored_for(node: &Item, wake: &Item) -> PutResult {
        PutResult::Stored {
            node: node_of(node),
            wake: wake.text().map(str::to_string),
        }
    }

    fn forget(&self, uaid: &Uaid) -> Result<(), Fail> {
        self.cluster
            .delete(&[record_key(uaid), wake_key(uaid), msgs_key(uaid)])
    }

    /// A record for `channels` (a SimplePush hello's list) after a loss: the channels it lacks are
    /// registered again. `None` when nothing is to be added.
    fn recreated(&self, rec: Option<&Record>, channels: &[ChannelId], now: u64) -> Option<Record> {
        let mut rec = rec.cloned().unwrap_or_default();
        rec.prune(now);
        let mut added = false;
        for c in channels {
            if rec.live(c, now).is_none() {
                rec.channels.push(Channel {
                    id: *c,
                    exp: self.registered_until(now, 0),
                    pending: None,
                });
                added = true;
            }
        }
        added.then_some(rec)
    }

    /// The record a hello leaves: registrations used now live on (only written when a third of
    /// their life has passed, so a busy device's hellos are reads).
    fn refreshed(&self, rec: &Record, now: u64, life: u32) -> Option<Record> {
        let until = self.registered_until(now, life);
        let reg = u64::from(self.settings.registration_ttl);
        let stale = |c: &Channel| c.exp != 0 && c.exp.saturating_add(reg / 3) < until;
        if until == 0
            || !rec
                .channels
                .iter()
                .any(|c| c.live(now) && c.pending.is_none() && stale(c))
        {
            return None;
        }
        let mut next = rec.clone();
        next.prune(now);
        for c in next.channels.iter_mut().filter(|c| c.pending.is_none()) {
            c.exp = c.exp.max(until);
        }
        Some(next)
    }

    fn hello_known(
        &self,
        uaid: &Uaid,
        node: Option<&str>,
        channels: &[ChannelId],
    ) -> Result<HelloFound, Fail> {
        let mut keys = vec![record_key(uaid), msgs_key(uaid)];
        keys.extend(node.map(|_| node_key(uaid)));
        for _ in 0..CAS_RETRIES {
            let items = self.cluster.read(&keys)?;
            let now = now_secs();
            let rec = record_of(&items[0]);
            let live_any = rec
                .as_ref()
                .is_some_and(|r| r.channels.is_empty() || r.channels.iter().any(|c| c.live(now)));
            let loss = self.in_loss_window() && !channels.is_empty();
            let recreated = if loss {
                self.recreated(rec.as_ref(), channels, now)
            } else {
                None
            };
            if !live_any && recreated.is_none() {
                // Unknown, or every registration expired: the device starts over with a new UAID.
                return Ok(HelloFound::default());
            }
            let live: Vec<StoredMessage> = messages_of(&items[1])
                .into_iter()
                .filter(|m| m.live(now))
                .collect();
            let life = list_life(&live, now);
            let current = recreated.or(rec).unwrap_or_default();
            let written = self
                .refreshed(&current, now, life)
                .unwrap_or_else(|| current.clone());
            let mut writes: Vec<(&Item, Vec<u8>, u32)> = Vec::new();
            if written != current || record_of(&items[0]).as_ref() != Some(&current) {
                writes.push((&items[0], written.encode(), self.record_ttl(&written, now)));
            }
            // Claim the UAID in the same round: an update stored after this read then finds this
            // socket in the node record and is routed here.
            let previous = match (node, items.get(2)) {
                (Some(n), Some(item)) => {
                    writes.push((item, n.as_bytes().to_vec(), NODE_TTL));
                    node_of(item).filter(|p| p != n)
                }
                _ => None,
            };
            if !writes.is_empty() && self.cluster.write(&writes)?.contains(&Written::Conflict) {
                continue;
            }
            let pending = written
                .channels
                .iter()
                .filter(|c| c.live(now))
                .filter_map(|c| Some((c.id, c.pending?)))
                .collect();
            return Ok(HelloFound {
                known: true,
                pending,
                messages: live.iter().map(|m| m.at(now)).collect(),
                previous_node: previous,
            });
        }
        Err(Fail::Unavailable)
    }

    /// A version for a channel: recorded if the channel is registered (or, after a loss, whatever
    /// it is), with the UAID's node and wake records read in the same round trip.
    fn put_version(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Fail> {
        let loss = self.in_loss_window();
        let pending_until = expiry(self.pending_ttl(), now_secs());
        self.update(
            record_key(uaid),
            &[node_key(uaid), wake_key(uaid)],
            |item, extra| {
                let now = now_secs();
                let mut rec = match record_of(item) {
                    Some(r) => r,
                    None if loss => Record::default(),
                    None => return (PutResult::UnknownChannel, None),
                };
                match rec.live_mut(channel, now) {
                    Some(c) => {
                        c.pending = Some(version);
                        if c.exp != 0 {
                            c.exp = c.exp.max(pending_until);
                        }
                    }
                    None if loss => {
                        rec.prune(now);
                        rec.channels.push(Channel {
                            id: *channel,
                            exp: pending_until,
                            pending: Some(version),
                        });
                    }
                    None => return (PutResult::UnknownChannel, None),
                }
                (
                    Self::stored_for(&extra[0], &extra[1]),
                    self.record_write(&rec, now),
                )
            },
        )
    }

    /// A put stored for a UAID no node held when it was read: reads the node record once more,
    /// now that the update is written. A node binds a new UAID (writes the record) and then reads
    /// what is stored for it (`Job::Bound`); with this second read, one of the two always sees
    /// the other, so an update cannot slip between a device's hello and its node record.
    fn node_again(&self, uaid: &Uaid, r: PutResult) -> PutResult {
        if !self.settings.cluster {
            return r;
        }
        match r {
            PutResult::Stored { node: None, wake } => PutResult::Stored {
                node: self.read_one(node_key(uaid)).ok().and_then(|i| node_of(&i)),
                wake,
            },
            other => other,
        }
    }

    /// Registers a channel again after a loss, so that a message for it can be stored.
    fn revive_channel(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Fail> {
        self.update(record_key(uaid), &[], |item, _| {
            let now = now_secs();
            let rec = record_of(item);
            match self.recreated(rec.as_ref(), &[*channel], now) {
                Some(r) => ((), self.record_write(&r, now)),
                None => ((), None),
            }
        })
    }

    fn put_webpush(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Fail> {
        let items = self
            .cluster
            .read(&[record_key(uaid), node_key(uaid), wake_key(uaid)])?;
        let now = now_secs();
        let registered = record_of(&items[0]).is_some_and(|r| r.live(&msg.channel, now).is_some());
        if !registered {
            if !self.in_loss_window() {
                return Ok(PutResult::UnknownChannel);
            }
            self.revive_channel(uaid, &msg.channel)?;
        }
        let stored = Self::stored_for(&items[1], &items[2]);
        if msg.ttl == 0 {
            return Ok(stored);
        }
        let new = StoredMessage::new(msg.clone(), now);
        let max = self.settings.max_messages;
        let mut replaced = Vec::new();
        let Some(life) = self.update_messages(uaid, |list| {
            replaced = same_topic(list, &new);
            with_message(list, &new, max, now)
        })?
        else {
            return Ok(PutResult::Full);
        };
        for (channel, id) in replaced {
            track_drop(Drop::Replaced, uaid, &channel, &id);
        }
        // Checked again after the write: an unregister that dropped the channel between the first
        // read and the write may have cleaned the list before it. If the channel is still there
        // now, its cleanup comes after the write and takes the message with it.
        if !self.keep_channel(uaid, &msg.channel, life)? {
            self.remove_messages(uaid, |m| m.msg.id == msg.id)?;
            return Ok(PutResult::UnknownChannel);
        }
        Ok(stored)
    }
}
