//! The memcached backend: records shared by every node of a cluster.
//!
//! Data layout (keys use the ids' 32 lower-case hex digits):
//! - `c/<uaid>/<chid>`: the channel record, `r` (registered, nothing pending) or `p<version>`.
//!   Every write of an existing record is a `gets` + `cas`, so a PUT racing an ack, or two nodes
//!   writing at once, never lose a version: the loser re-reads and retries, and an ack clears
//!   the record only if it still holds the acked version.
//! - `u/<uaid>`: the UAID's channel list, the channel ids as the client spelled them, comma-separated
//!   (needed because memcached cannot list keys). Changed only by register/unregister, with `cas`.
//! - `n/<uaid>`: the router URL of the node holding the UAID's socket, or `-`.
//! - `m/<uaid>`: the UAID's waiting WebPush messages, a JSON list oldest first (`codec::encode_list`),
//!   expiring with the last of them. Every change is a `gets` + `cas`; only a missing list is
//!   created, with `add`, and then read back (see [`MemcachedStore::update_messages`]).
//!
//! Keys are spread over the servers by a consistent-hash ring. After any error the backend is marked
//! unhealthy and fails fast (503 upstream) until a probe thread reaches every server again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use log::{info, warn};
use memcache::{Client, CommandError, MemcacheError};
use sm::{ChannelId, Id, Message, Uaid};

use super::codec::{decode_list, encode_list};
use super::ring::Ring;
use super::{now_secs, Backend, HelloFound, PutResult, StoredMessage, Unavailable};
use crate::metrics::{track, track_drop, Drop, Event};

/// How many times a `cas` write is retried when another writer got there first.
const CAS_RETRIES: usize = 16;
/// Lifetime of a node record: a socket's record is replaced or released long before, unless its
/// node died; then it must not stay for ever. (memcached's longest relative expiry, 30 days.)
const NODE_TTL: u32 = 30 * 24 * 3600;
/// Lifetime of a released node record (`-`).
const RELEASED_TTL: u32 = 60;
/// memcached's longest relative expiry: a larger one is read as an absolute Unix time.
const MAX_RELATIVE_TTL: u32 = 30 * 24 * 3600;
/// The largest message list written: memcached refuses items over 1 MiB (its default `-I`), and
/// that refusal is an error that would mark the whole backend down. Beyond this a push gets 429.
const MAX_LIST_BYTES: usize = 1_000_000;
/// How often an unhealthy backend probes the servers.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Connection settings and record lifetimes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// Connect, read and write timeout.
    pub timeout: Duration,
    /// Connections per server.
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
}

/// The memcached backend.
pub struct MemcachedStore {
    /// One client (a connection pool) per server, replaced after an error: a connection that timed
    /// out mid-command could otherwise hand its late reply to the next command.
    clients: Vec<RwLock<Client>>,
    ring: Ring,
    settings: Settings,
    healthy: AtomicBool,
}

/// The broadcast table, one item for the whole cluster.
const BROADCASTS_KEY: &str = "b/broadcasts";
/// The cluster's nodes: router URL → when it last said it is up (Unix seconds).
const NODES_KEY: &str = "r/nodes";
/// A node not heard of for this long is left out of the list.
const NODE_STALE_SECS: u64 = 90;

fn hex(bytes: &[u8; 16]) -> String {
    Id::fresh(*bytes).to_string()
}

fn chan_key(uaid: &Uaid, channel: &ChannelId) -> String {
    format!("c/{}/{}", hex(uaid.0.bytes()), hex(channel.0.bytes()))
}

fn list_key(uaid: &Uaid) -> String {
    format!("u/{}", hex(uaid.0.bytes()))
}

fn wake_key(uaid: &Uaid) -> String {
    format!("w/{}", hex(uaid.0.bytes()))
}

fn node_key(uaid: &Uaid) -> String {
    format!("n/{}", hex(uaid.0.bytes()))
}

fn msgs_key(uaid: &Uaid) -> String {
    format!("m/{}", hex(uaid.0.bytes()))
}

/// The expiry of a message list: until its last message expires. One second more because
/// memcached's clock ticks once a second and may lag ours; an empty list goes within a second or two.
fn list_life(list: &[StoredMessage], now: u64) -> u32 {
    let last = list.iter().map(|m| m.expires_at).max().unwrap_or(now);
    let secs = last.saturating_sub(now).saturating_add(1);
    u32::try_from(secs).map_or(MAX_RELATIVE_TTL, |s| s.min(MAX_RELATIVE_TTL))
}

/// A lifetime of `base` seconds (0 = none) stretched to cover `life`.
fn outlive(base: u32, life: u32) -> u32 {
    match base {
        0 => 0,
        b => b.max(life),
    }
}

fn parse_list(list: &str) -> Vec<ChannelId> {
    let mut out: Vec<ChannelId> = Vec::new();
    for id in list.split(',').filter_map(Id::parse).map(ChannelId) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn pending_version(record: &str) -> Option<u64> {
    record.strip_prefix('p')?.parse().ok()
}

/// Takes the message list (under `key`) out of fetched records, oldest first.
fn take_messages(records: &mut Vec<(String, String)>, key: Option<&str>) -> Vec<StoredMessage> {
    match records.iter().position(|(k, _)| Some(k.as_str()) == key) {
        Some(i) => decode_list(&records.swap_remove(i).1),
        None => Vec::new(),
    }
}

/// The waiting messages `new` replaces: same channel and topic.
fn same_topic(list: &[StoredMessage], new: &StoredMessage) -> Vec<(ChannelId, String)> {
    list.iter()
        .filter(|m| {
            m.msg.id != new.msg.id
                && m.msg.channel == new.msg.channel
                && new.msg.topic.is_some()
                && m.msg.topic == new.msg.topic
        })
        .map(|m| (m.msg.channel, m.msg.id.clone()))
        .collect()
}

/// `put_message`'s change to a message list: the stored list's lifetime (`None`: full) and the new
/// list. Finding the message already there is success: it is an `add` of ours, read back.
fn with_message(
    list: &[StoredMessage],
    new: &StoredMessage,
    max: usize,
    now: u64,
) -> (Option<u32>, Option<Vec<StoredMessage>>) {
    if list.iter().any(|m| m.msg.id == new.msg.id) {
        return (Some(list_life(list, now)), None);
    }
    let replaced = |m: &StoredMessage| {
        m.msg.channel == new.msg.channel && new.msg.topic.is_some() && m.msg.topic == new.msg.topic
    };
    let mut next: Vec<StoredMessage> = list.iter().filter(|m| !replaced(m)).cloned().collect();
    if next.len() >= max {
        return (None, None);
    }
    next.push(new.clone());
    if encode_list(&next).len() > MAX_LIST_BYTES {
        return (None, None);
    }
    (Some(list_life(&next, now)), Some(next))
}

type Cas = (String, u32, Option<u64>);

/// A client for one server. Its pool is built unchecked: no connection is made now, so a node starts
/// even while memcached is down; each connection gets the read/write timeout from the URL.
fn connect(server: &str, settings: &Settings) -> Result<Client, String> {
    let url = format!(
        "memcache://{server}?tcp_nodelay=true&timeout={}",
        settings.timeout.as_secs_f64()
    );
    let url = memcache::Url::parse(&url)
        .map_err(|e| format!("config: storage.servers: {server}: {e}"))?;
    let pool = r2d2::Pool::builder()
        .max_size(settings.pool_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(settings.timeout)
        .build_unchecked(memcache::ConnectionManager::new(url));
    Client::with_pool(pool).map_err(|e| format!("config: storage.servers: {server}: {e}"))
}

impl MemcachedStore {
    /// Sets up the clients (no connection is made yet) and starts the health probe.
    pub fn start(settings: Settings) -> Result<Arc<MemcachedStore>, String> {
        let mut clients = Vec::new();
        for server in &settings.servers {
            clients.push(RwLock::new(connect(server, &settings)?));
        }
        let store = Arc::new(MemcachedStore {
            ring: Ring::new(&settings.servers),
            clients,
            settings,
            healthy: AtomicBool::new(false),
        });
        store.probe();
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("memcached-probe".into())
            .spawn(move || probe_loop(weak))
            .map_err(|e| format!("cannot start the memcached probe: {e}"))?;
        Ok(store)
    }

    /// Whether the last probe or operation succeeded.
    /// The broadcast versions set through the admin API (`b/broadcasts`), shared by every node.
    pub fn broadcasts(&self) -> Result<BTreeMap<String, String>, Unavailable> {
        self.check()?;
        self.read_map(BROADCASTS_KEY)
    }

    /// Merges new broadcast versions into `b/broadcasts`; the whole table after.
    pub fn set_broadcasts(
        &self,
        changes: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Unavailable> {
        self.check()?;
        // No expiry: broadcasts live until changed (memcached may still evict them under memory
        // pressure; the config's versions are the fallback).
        self.update_map(BROADCASTS_KEY, |table| {
            table.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        })
    }

    /// Records that the node with this router URL is up, and forgets nodes not heard of lately.
    pub fn announce_node(&self, url: &str) -> Result<(), Unavailable> {
        self.check()?;
        self.update_map(NODES_KEY, |nodes: &mut BTreeMap<String, u64>| {
            let now = now_secs();
            nodes.retain(|_, seen| now.saturating_sub(*seen) < NODE_STALE_SECS);
            nodes.insert(url.to_string(), now);
        })
        .map(drop)
    }

    /// The router URLs of the nodes heard of lately.
    pub fn nodes(&self) -> Result<Vec<String>, Unavailable> {
        self.check()?;
        let now = now_secs();
        let nodes: BTreeMap<String, u64> = self.read_map(NODES_KEY)?;
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
    ) -> Result<BTreeMap<String, V>, Unavailable> {
        Ok(self
            .get(key)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// Changes a cluster-wide JSON object item until the change sticks (gets/cas, or add when
    /// absent and then once more over what is there); the object after.
    fn update_map<V: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        change: impl Fn(&mut BTreeMap<String, V>),
    ) -> Result<BTreeMap<String, V>, Unavailable> {
        for _ in 0..CAS_RETRIES {
            let current = self.gets(key)?;
            let mut map: BTreeMap<String, V> = current
                .as_ref()
                .and_then(|(t, _)| serde_json::from_str(t).ok())
                .unwrap_or_default();
            change(&mut map);
            let text = serde_json::to_string(&map).map_err(|_| Unavailable)?;
            match current {
                Some((_, cas)) if self.cas(key, &text, 0, cas)? => return Ok(map),
                Some(_) => {}
                None => self.add(key, &text, 0)?,
            }
        }
        Err(Unavailable)
    }

    pub fn healthy_now(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// The server index for a key, and its client.
    fn client(&self, key: &str) -> (usize, Client) {
        let i = self.ring.pick(key);
        (i, self.client_at(i))
    }

    fn client_at(&self, i: usize) -> Client {
        match self.clients[i].read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Checks every server; flips (and logs) the health state when it changes.
    fn probe(&self) -> bool {
        let ok = (0..self.clients.len()).all(|i| self.client_at(i).version().is_ok());
        if ok && !self.healthy.swap(true, Ordering::SeqCst) {
            info!("memcached reachable: {}", self.settings.servers.join(", "));
        }
        ok
    }

    fn fail(&self, server: usize, e: &MemcacheError) -> Unavailable {
        if self.healthy.swap(false, Ordering::SeqCst) {
            warn!("memcached unavailable ({e}); answering 503 until it is back");
        }
        if let Ok(fresh) = connect(&self.settings.servers[server], &self.settings) {
            match self.clients[server].write() {
                Ok(mut c) => *c = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
        }
        Unavailable
    }

    fn check(&self) -> Result<(), Unavailable> {
        if self.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }

    fn get(&self, key: &str) -> Result<Option<String>, Unavailable> {
        let (i, c) = self.client(key);
        c.get(key).map_err(|e| self.fail(i, &e))
    }

    fn gets(&self, key: &str) -> Result<Option<(String, u64)>, Unavailable> {
        let (i, c) = self.client(key);
        let v: Option<Cas> = c.get(key).map_err(|e| self.fail(i, &e))?;
        Ok(v.and_then(|(value, _, cas)| Some((value, cas?))))
    }

    fn set(&self, key: &str, value: &str, ttl: u32) -> Result<(), Unavailable> {
        let (i, c) = self.client(key);
        c.set(key, value, ttl).map_err(|e| self.fail(i, &e))
    }

    fn cas(&self, key: &str, value: &str, ttl: u32, cas: u64) -> Result<bool, Unavailable> {
        let (i, c) = self.client(key);
        c.cas(key, value, ttl, cas).map_err(|e| self.fail(i, &e))
    }

    /// Stores `value` only if `key` is absent; either way a success (read back to tell).
    fn add(&self, key: &str, value: &str, ttl: u32) -> Result<(), Unavailable> {
        let (i, c) = self.client(key);
        match c.add(key, value, ttl) {
            // The binary protocol reports an existing key as an error; it only means someone else
            // created it first.
            Err(MemcacheError::CommandError(CommandError::KeyExists)) => Ok(()),
            other => other.map_err(|e| self.fail(i, &e)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), Unavailable> {
        let (i, c) = self.client(key);
        c.delete(key).map(|_| ()).map_err(|e| self.fail(i, &e))
    }

    fn touch(&self, key: &str, ttl: u32) -> Result<(), Unavailable> {
        let (i, c) = self.client(key);
        c.touch(key, ttl).map(|_| ()).map_err(|e| self.fail(i, &e))
    }

    /// Lifetime of a pending version: at least a registration's (0 = no expiry, then none either).
    fn pending_ttl(&self) -> u32 {
        match self.settings.registration_ttl {
            0 => 0,
            reg => self.settings.pending_ttl.max(reg),
        }
    }

    /// Lifetime of the channel list: as long as the longest-lived record it leads to. Whether the
    /// UAID is known is decided by its live records, not by the list alone.
    fn list_ttl(&self) -> u32 {
        self.pending_ttl()
    }

    /// Rewrites the channel list with `cas` until it sticks; `change` returns `None` for no change.
    fn update_list(
        &self,
        uaid: &Uaid,
        change: impl Fn(Option<&str>) -> Option<String>,
    ) -> Result<(), Unavailable> {
        let key = list_key(uaid);
        let ttl = self.list_ttl();
        for _ in 0..CAS_RETRIES {
            match self.gets(&key)? {
                None => match change(None) {
                    // `add`, not `set`: a list another node created meanwhile is not overwritten.
                    // Either way the loop reads the list back and applies the change to it (every
                    // change here is idempotent), so ours is in it.
                    Some(new) => self.add(&key, &new, ttl)?,
                    None => return Ok(()),
                },
                Some((list, cas)) => match change(Some(&list)) {
                    None => return self.touch(&key, ttl),
                    Some(new) if self.cas(&key, &new, ttl, cas)? => return Ok(()),
                    Some(_) => {}
                },
            }
        }
        Err(Unavailable)
    }

    /// Fetches many keys, one round trip per server.
    fn get_many(&self, keys: &[String]) -> Result<Vec<(String, String)>, Unavailable> {
        let mut by_server: Vec<Vec<&str>> = vec![Vec::new(); self.clients.len()];
        for k in keys {
            by_server[self.ring.pick(k)].push(k);
        }
        let mut out = Vec::new();
        for (i, ks) in by_server.iter().enumerate() {
            if ks.is_empty() {
                continue;
            }
            let got: std::collections::HashMap<String, String> =
                self.client_at(i).gets(ks).map_err(|e| self.fail(i, &e))?;
            out.extend(got);
        }
        Ok(out)
    }

    /// Wake data serves offline devices, whose registrations a waiting update can keep alive for
    /// the pending TTL: it lives as long as the longer of the two.
    fn wake_ttl(&self) -> u32 {
        self.settings.registration_ttl.max(self.pending_ttl())
    }

    /// What a stored update needs next: where the UAID's socket is, and how to wake its device.
    fn stored_for(&self, uaid: &Uaid) -> Result<PutResult, Unavailable> {
        let (nk, wk) = (node_key(uaid), wake_key(uaid));
        let mut found = self.get_many(&[nk.clone(), wk.clone()])?;
        let mut take = |k: &str| {
            found
                .iter()
                .position(|(key, _)| key == k)
                .map(|i| found.swap_remove(i).1)
        };
        let node = take(&nk).filter(|n| n != "-");
        let wake = take(&wk);
        Ok(PutResult::Stored { node, wake })
    }

    fn forget(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        if let Some(list) = self.get(&list_key(uaid))? {
            for c in parse_list(&list) {
                self.delete(&chan_key(uaid, &c))?;
            }
        }
        self.delete(&list_key(uaid))?;
        self.delete(&wake_key(uaid))?;
        // After the channel records: a `put_message` racing this finds its channel gone when it
        // checks again after writing, and takes its message back.
        self.delete(&msgs_key(uaid))
    }

    /// Changes the UAID's message list until the change sticks; returns `change`'s answer.
    ///
    /// `change` gets the live messages and returns its answer and the new list (`None`: no write).
    /// It may run several times, so it must depend on the list alone. An existing list is changed
    /// with `gets` + `cas`, so concurrent writers (other nodes) lose nothing: the loser re-reads.
    /// A missing list is created with `add`, which stores nothing if another writer created it
    /// first; either way the loop reads the list back and runs `change` again, which finds its work
    /// there or redoes it on the other writer's list. (A plain `set` would silently drop the other
    /// writer's message.) Reading back rather than trusting `add`'s answer also covers the ASCII
    /// protocol, where the crate hides NOT_STORED. Expired messages are dropped by the next write,
    /// and with the key, which expires with its last message.
    ///
    /// Residual race: if our `add` won and another node removed our message (an ack or DELETE of
    /// it, or a same-topic replacement) before we read the list back, we take it for a lost `add`
    /// and store it again. That needs the message delivered and acked, or its URL used, before its
    /// own push was answered, so in practice only a replacement can do it; the result is the
    /// order "theirs, then ours", which concurrent pushes may have anyway.
    fn update_messages<R>(
        &self,
        uaid: &Uaid,
        mut change: impl FnMut(&[StoredMessage]) -> (R, Option<Vec<StoredMessage>>),
    ) -> Result<R, Unavailable> {
        let key = msgs_key(uaid);
        for _ in 0..CAS_RETRIES {
            let now = now_secs();
            let current = self.gets(&key)?;
            let mut list = match &current {
                Some((text, _)) => decode_list(text),
                None => Vec::new(),
            };
            let (live, expired): (Vec<_>, Vec<_>) = list.drain(..).partition(|m| m.live(now));
            list = live;
            let (answer, new) = change(&list);
            let Some(new) = new else {
                return Ok(answer);
            };
            // No `delete` for an emptied list: it cannot be conditional, and could erase a message
            // added meanwhile. An empty list expires within a second or two instead.
            let (text, ttl) = (encode_list(&new), list_life(&new, now));
            match current {
                Some((_, cas)) if self.cas(&key, &text, ttl, cas)? => {
                    // Counted once they are gone for good (a hello only skips them).
                    for m in &expired {
                        track(Event::Expired, uaid, &m.msg.channel, &m.msg.id);
                    }
                    return Ok(answer);
                }
                Some(_) => {}
                None => self.add(&key, &text, ttl)?,
            }
        }
        Err(Unavailable)
    }

    /// Removes the UAID's waiting messages that `gone` picks; whether there were any.
    fn remove_messages(
        &self,
        uaid: &Uaid,
        gone: impl Fn(&StoredMessage) -> bool,
    ) -> Result<bool, Unavailable> {
        self.update_messages(uaid, |list| {
            let rest: Vec<StoredMessage> = list.iter().filter(|m| !gone(m)).cloned().collect();
            let removed = rest.len() != list.len();
            (removed, removed.then_some(rest))
        })
    }

    /// Stretches a channel's registration, and the channel list, to outlive the UAID's waiting
    /// messages (`life` seconds), as `put` does for a pending version: an offline device must still
    /// be known when it comes back for them. `false` if the channel is gone. (A later register or
    /// SimplePush update resets these lifetimes to their own; the next hello stretches them again.)
    fn keep_channel(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        life: u32,
    ) -> Result<bool, Unavailable> {
        let key = chan_key(uaid, channel);
        for _ in 0..CAS_RETRIES {
            let Some((record, cas)) = self.gets(&key)? else {
                return Ok(false);
            };
            // A pending version's record is left alone: it lives `pending_ttl` already, and
            // rewriting it would make a concurrent ack's `cas` fail and leave the version pending.
            // An `r` is written again with `cas` rather than `touch`: a `touch` landing after a
            // concurrent `put` could cut that version's lifetime down to a registration's.
            let kept = pending_version(&record).is_some()
                || self.cas(
                    &key,
                    &record,
                    outlive(self.settings.registration_ttl, life),
                    cas,
                )?;
            if kept {
                self.touch(&list_key(uaid), outlive(self.list_ttl(), life))?;
                return Ok(true);
            }
        }
        // Rewritten under us every time: another writer keeps changing it, so it exists.
        Ok(true)
    }
}

fn probe_loop(store: Weak<MemcachedStore>) {
    loop {
        std::thread::sleep(PROBE_EVERY);
        let Some(s) = store.upgrade() else {
            return;
        };
        if !s.healthy.load(Ordering::SeqCst) {
            s.probe();
        }
    }
}

impl Backend for MemcachedStore {
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        node: Option<&str>,
        _channels: &[ChannelId],
    ) -> Result<HelloFound, Unavailable> {
        self.check()?;
        if forget {
            self.forget(uaid)?;
            return Ok(HelloFound::default());
        }
        let Some(list) = self.get(&list_key(uaid))? else {
            return Ok(HelloFound::default());
        };
        // Claim the UAID before reading what is pending: an update stored after the read then
        // finds this socket in the record and is routed here.
        let previous_node = match node {
            Some(n) => self.bind_node(uaid, n)?,
            None => None,
        };
        let channels = parse_list(&list);
        let mut keys: Vec<String> = channels.iter().map(|c| chan_key(uaid, c)).collect();
        // The messages come in the same round trips as the channel records.
        keys.push(msgs_key(uaid));
        let mut records = self.get_many(&keys)?;
        let stored = take_messages(&mut records, keys.pop().as_deref());
        // Every registration expired: the device must start over with a new UAID and register again.
        if !channels.is_empty() && records.is_empty() {
            if let Some(n) = node {
                self.unbind_node(uaid, n)?;
            }
            return Ok(HelloFound::default());
        }
        let now = now_secs();
        let live: Vec<StoredMessage> = stored.into_iter().filter(|m| m.live(now)).collect();
        // Waiting messages keep the registrations alive as long as they live themselves.
        let life = list_life(&live, now);
        let ttl = outlive(self.settings.registration_ttl, life);
        let mut pending = Vec::new();
        for (c, key) in channels.iter().zip(&keys) {
            let record = records
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            match record.map(pending_version) {
                Some(Some(v)) => pending.push((*c, v)),
                // Registered, nothing pending: a use that keeps the registration alive.
                Some(None) => self.touch(key, ttl)?,
                None => {}
            }
        }
        self.touch(&list_key(uaid), outlive(self.list_ttl(), life))?;
        Ok(HelloFound {
            known: true,
            pending,
            messages: live.iter().map(|m| m.at(now)).collect(),
            previous_node,
        })
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        self.check()?;
        Ok(self
            .get(&chan_key(uaid, channel))?
            .as_deref()
            .and_then(pending_version))
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable> {
        self.check()?;
        // The list first, so that a UAID at its cap gets no channel record.
        let spelled = channel.to_string();
        let full = std::cell::Cell::new(false);
        self.update_list(uaid, |list| {
            full.set(false);
            match list {
                None => Some(spelled.clone()),
                Some(l) => {
                    let all = parse_list(l);
                    if all.contains(channel) {
                        None
                    } else if all.len() >= max {
                        full.set(true);
                        None
                    } else {
                        Some(format!("{l},{spelled}"))
                    }
                }
            }
        })?;
        if full.get() {
            return Ok(false);
        }
        let key = chan_key(uaid, channel);
        match self.get(&key)? {
            None => self.set(&key, "r", self.settings.registration_ttl)?,
            Some(r) if r == "r" => self.touch(&key, self.settings.registration_ttl)?,
            Some(_) => {}
        }
        Ok(true)
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        self.check()?;
        // The record goes first: from then on a PUT finds no channel (410).
        self.delete(&chan_key(uaid, channel))?;
        self.update_list(uaid, |list| {
            let l = list?;
            let all = parse_list(l);
            if !all.contains(channel) {
                return None;
            }
            let rest: Vec<String> = all
                .iter()
                .filter(|c| *c != channel)
                .map(ToString::to_string)
                .collect();
            Some(rest.join(","))
        })?;
        self.remove_messages(uaid, |m| m.msg.channel == *channel)
            .map(|_| ())
    }

    fn ack(
        &self,
        uaid: &Uaid,
        items: &[(ChannelId, u64)],
        messages: &[(ChannelId, String)],
    ) -> Result<(), Unavailable> {
        self.check()?;
        if !messages.is_empty() {
            // An ack names the channel too: an id acked under the wrong channel removes nothing.
            self.remove_messages(uaid, |m| {
                messages
                    .iter()
                    .any(|(c, id)| *c == m.msg.channel && *id == m.msg.id)
            })?;
        }
        for (channel, version) in items {
            let key = chan_key(uaid, channel);
            let Some((record, cas)) = self.gets(&key)? else {
                continue;
            };
            if pending_version(&record) == Some(*version) {
                // Loses (and rightly does nothing) if a newer version was stored meanwhile.
                self.cas(&key, "r", self.settings.registration_ttl, cas)?;
            }
        }
        Ok(())
    }

    fn put(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Unavailable> {
        self.check()?;
        let key = chan_key(uaid, channel);
        let value = format!("p{version}");
        let mut stored = false;
        for _ in 0..CAS_RETRIES {
            let Some((_, cas)) = self.gets(&key)? else {
                return Ok(PutResult::UnknownChannel);
            };
            if self.cas(&key, &value, self.pending_ttl(), cas)? {
                stored = true;
                break;
            }
        }
        if !stored {
            return Err(Unavailable);
        }
        // The hello that flushes this version finds the channel through the list: keep it as long.
        self.touch(&list_key(uaid), self.list_ttl())?;
        self.stored_for(uaid)
    }

    fn put_message(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Unavailable> {
        self.check()?;
        if self.get(&chan_key(uaid, &msg.channel))?.is_none() {
            return Ok(PutResult::UnknownChannel);
        }
        if msg.ttl > 0 {
            let now = now_secs();
            let new = StoredMessage::new(msg.clone(), now);
            let max = self.settings.max_messages;
            let replaced = std::cell::RefCell::new(Vec::new());
            let Some(life) = self.update_messages(uaid, |list| {
                *replaced.borrow_mut() = same_topic(list, &new);
                with_message(list, &new, max, now)
            })?
            else {
                return Ok(PutResult::Full);
            };
            for (channel, id) in replaced.take() {
                track_drop(Drop::Replaced, uaid, &channel, &id);
            }
            // Checked again after the write: an unregister (or forget) that deleted the channel
            // between the first check and the write may have cleaned the list before the write.
            // If the channel is still there now, its cleanup will come after the write and take it.
            if !self.keep_channel(uaid, &msg.channel, life)? {
                self.remove_messages(uaid, |m| m.msg.id == msg.id)?;
                return Ok(PutResult::UnknownChannel);
            }
        }
        self.stored_for(uaid)
    }

    fn message_pending(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        self.check()?;
        let now = now_secs();
        let list = self.get(&msgs_key(uaid))?;
        Ok(list.is_some_and(|l| {
            decode_list(&l)
                .iter()
                .any(|m| m.msg.id == id && m.live(now))
        }))
    }

    fn delete_message(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        self.check()?;
        self.remove_messages(uaid, |m| m.msg.id == id)
    }

    fn set_wake(&self, uaid: &Uaid, wake: &str) -> Result<(), Unavailable> {
        self.check()?;
        self.set(&wake_key(uaid), wake, self.wake_ttl())
    }

    fn refresh(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        self.hello(uaid, false, None, &[])?;
        self.touch(&wake_key(uaid), self.wake_ttl())
    }

    fn bind_node(&self, uaid: &Uaid, node: &str) -> Result<Option<String>, Unavailable> {
        self.check()?;
        let key = node_key(uaid);
        let previous = self.get(&key)?;
        self.set(&key, node, NODE_TTL)?;
        Ok(previous.filter(|p| p != "-" && p != node))
    }

    fn unbind_node(&self, uaid: &Uaid, node: &str) -> Result<(), Unavailable> {
        self.check()?;
        let key = node_key(uaid);
        if let Some((current, cas)) = self.gets(&key)? {
            if current == node {
                self.cas(&key, "-", RELEASED_TTL, cas)?;
            }
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(chan: u8, id: &str, expires_at: u64, topic: Option<&str>) -> StoredMessage {
        StoredMessage {
            msg: Message {
                channel: ChannelId(Id::fresh([chan; 16])),
                id: id.into(),
                ttl: 60,
                topic: topic.map(str::to_string),
                payload: None,
            },
            expires_at,
        }
    }

    fn ids(list: &[StoredMessage]) -> Vec<&str> {
        list.iter().map(|m| m.msg.id.as_str()).collect()
    }

    #[test]
    fn list_life_covers_the_last_message_and_stays_relative() {
        assert_eq!(list_life(&[], 100), 1);
        let list = [stored(1, "a", 160, None), stored(1, "b", 130, None)];
        assert_eq!(list_life(&list, 100), 61);
        // Past 30 days memcached would read an absolute time (long gone): capped.
        let far = [stored(1, "a", 100 + 40 * 24 * 3600, None)];
        assert_eq!(list_life(&far, 100), MAX_RELATIVE_TTL);
        assert_eq!(
            list_life(&[stored(1, "a", MAX_RELATIVE_TTL as u64 + 100, None)], 100),
            MAX_RELATIVE_TTL
        );
        assert_eq!(outlive(0, 500), 0, "no expiry stays no expiry");
        assert_eq!((outlive(10, 500), outlive(900, 500)), (500, 900));
    }

    #[test]
    fn with_message_replaces_by_topic_caps_and_is_idempotent() {
        let list = vec![
            stored(1, "a", 160, Some("t")),
            stored(2, "b", 160, Some("t")),
        ];
        let (life, next) = with_message(&list, &stored(1, "c", 200, Some("t")), 2, 100);
        let next = next.unwrap();
        assert_eq!((life, ids(&next)), (Some(101), vec!["b", "c"]));
        // Read back after our own `add`: nothing to write.
        assert_eq!(with_message(&next, &next[1], 2, 100), (Some(101), None));
        assert_eq!(
            with_message(&next, &stored(1, "d", 200, None), 2, 100),
            (None, None)
        );
        let big = StoredMessage {
            msg: Message {
                payload: Some(("A".repeat(MAX_LIST_BYTES), sm::webpush::Encoding::Aes128gcm)),
                ..stored(1, "e", 200, None).msg
            },
            expires_at: 200,
        };
        assert_eq!(
            with_message(&[], &big, 10, 100),
            (None, None),
            "over memcached's item size"
        );
    }
}
