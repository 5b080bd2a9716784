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
//!
//! Keys are spread over the servers by a consistent-hash ring. After any error the backend is marked
//! unhealthy and fails fast (503 upstream) until a probe thread reaches every server again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use log::{info, warn};
use memcache::{Client, MemcacheError};
use sm::{ChannelId, Id, Uaid};

use super::ring::Ring;
use super::{Backend, HelloFound, PutResult, Unavailable};

/// How many times a `cas` write is retried when another writer got there first.
const CAS_RETRIES: usize = 16;
/// Lifetime of a node record: a socket's record is replaced or released long before, unless its
/// node died; then it must not stay for ever. (memcached's longest relative expiry, 30 days.)
const NODE_TTL: u32 = 30 * 24 * 3600;
/// Lifetime of a released node record (`-`).
const RELEASED_TTL: u32 = 60;
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

fn hex(bytes: &[u8; 16]) -> String {
    Id::fresh(*bytes).to_string()
}

fn chan_key(uaid: &Uaid, channel: &ChannelId) -> String {
    format!("c/{}/{}", hex(uaid.0.bytes()), hex(channel.0.bytes()))
}

fn list_key(uaid: &Uaid) -> String {
    format!("u/{}", hex(uaid.0.bytes()))
}

fn node_key(uaid: &Uaid) -> String {
    format!("n/{}", hex(uaid.0.bytes()))
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
                None => {
                    if let Some(new) = change(None) {
                        self.set(&key, &new, ttl)?;
                    }
                    return Ok(());
                }
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

    fn forget(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        if let Some(list) = self.get(&list_key(uaid))? {
            for c in parse_list(&list) {
                self.delete(&chan_key(uaid, &c))?;
            }
        }
        self.delete(&list_key(uaid))
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
        let keys: Vec<String> = channels.iter().map(|c| chan_key(uaid, c)).collect();
        let records = self.get_many(&keys)?;
        // Every registration expired: the device must start over with a new UAID and register again.
        if !channels.is_empty() && records.is_empty() {
            if let Some(n) = node {
                self.unbind_node(uaid, n)?;
            }
            return Ok(HelloFound::default());
        }
        let ttl = self.settings.registration_ttl;
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
        self.touch(&list_key(uaid), self.list_ttl())?;
        Ok(HelloFound {
            known: true,
            pending,
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

    fn register(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        self.check()?;
        let key = chan_key(uaid, channel);
        match self.get(&key)? {
            None => self.set(&key, "r", self.settings.registration_ttl)?,
            Some(r) if r == "r" => self.touch(&key, self.settings.registration_ttl)?,
            Some(_) => {}
        }
        let spelled = channel.to_string();
        self.update_list(uaid, |list| match list {
            None => Some(spelled.clone()),
            Some(l) if parse_list(l).contains(channel) => None,
            Some(l) => Some(format!("{l},{spelled}")),
        })
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
        })
    }

    fn ack(&self, uaid: &Uaid, items: &[(ChannelId, u64)]) -> Result<(), Unavailable> {
        self.check()?;
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
        let node = self.get(&node_key(uaid))?.filter(|n| n != "-");
        Ok(PutResult::Stored { node })
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
