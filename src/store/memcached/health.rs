//! The probe: which servers can be used, whether they evict, and whether one lost its data.
//!
//! Each server holds a marker item (`g/marker`, a random id written once by the first node that
//! finds it missing). A node remembers the marker it saw; a server whose marker is gone or changed
//! was restarted (or flushed) and lost what it held. That is recorded cluster-wide (`g/losses`),
//! and for as long as the loss may explain a missing registration the store answers unknown
//! channels as if registered (see `MemcachedStore::in_loss_window`). A new connection checks the
//! marker too, so no operation reads a restarted server as empty before the probe has noticed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::conn::{self, Conn, ConnError, Server, State, MARKER_KEY};
use super::replicas::{CONFLICTS, REPAIRS};
use super::wire::{Cmd, Mode, Reply};
use super::MemcachedStore;
use crate::store::now_secs;

/// How often servers that are down are tried again, and how often the others are checked.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often `stats` and the cluster's loss records are read.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// The cluster-wide record of servers that lost their data: address → when it was noticed.
const LOSSES_KEY: &str = "g/losses";

/// What `stats` said of one server, for the metrics.
#[derive(Debug, Clone, Default)]
struct ServerStats {
    addr: String,
    up: bool,
    evictions: u64,
    bytes: u64,
    limit: u64,
    items: u64,
}

static STATS: Mutex<Vec<ServerStats>> = Mutex::new(Vec::new());

fn stat(stats: &[(String, String)], name: &str) -> Option<String> {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn random_marker() -> String {
    let mut b = [0u8; 16];
    if !crate::random::fill(&mut b) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// What the probe found on a server's marker.
enum Marker {
    /// The one this node knew (or the first it sees).
    Same,
    /// Gone or changed since this node last looked: the server lost its data.
    Lost,
}

impl MemcachedStore {
    /// Checks every server once.
    pub(super) fn probe_all(&self) {
        for s in &self.cluster.servers {
            match s.state() {
                State::Up => self.check_up(s),
                State::Down | State::Refused => self.revive(s),
            }
        }
    }

    /// A server that is up: still the same data?
    fn check_up(&self, s: &Server) {
        let Ok(mut c) = s.open() else {
            s.mark_down("probe could not connect");
            return;
        };
        match read_marker(&mut c) {
            Ok(found) if found.is_some() && found == s.marker() => s.probe_answered(),
            Ok(_) => s.mark_down("its data marker changed: restarted or flushed"),
            // Slow is not down: one probe without an answer in time may be a busy machine.
            Err(e) if s.probe_missed() => s.mark_down(&e.to_string()),
            Err(_) => {}
        }
    }

    /// A server that was down or refused: reachable, not evicting, and what of its data?
    fn revive(&self, s: &Server) {
        let Ok(mut c) = s.open() else {
            return;
        };
        match self.settle(&mut c, s) {
            Ok(Some(Marker::Same)) => {
                if s.set_state(State::Up) {
                    info!("memcached reachable: {}", s.addr);
                }
            }
            Ok(Some(Marker::Lost)) => {
                // The loss is known here before any operation can read the empty server; the
                // cluster-wide record needs the server up (it may hold that record).
                let at = self.note_loss(s);
                s.set_state(State::Up);
                info!("memcached reachable: {}", s.addr);
                self.publish_loss(s, at);
            }
            Ok(None) => {}
            Err(e) => log::debug!("memcached {} still unavailable: {e}", s.addr),
        }
    }

    /// Checks eviction and the marker on a fresh connection. `None`: refused for eviction.
    fn settle(&self, c: &mut Conn, s: &Server) -> Result<Option<Marker>, ConnError> {
        let settings = c.call(&[Cmd::Stats(Some("settings"))])?;
        let evicts = match settings.first() {
            Some(Reply::Stats(st)) => stat(st, "evictions").as_deref() != Some("off"),
            _ => true,
        };
        if evicts && !self.settings.allow_eviction {
            if s.set_state(State::Refused) {
                error!(
                    "memcached {} evicts items (started without -M): not used, since eviction \
                     would drop pushes already answered 2xx; restart it with -M or set \
                     storage.allow_eviction = true",
                    s.addr
                );
            }
            return Ok(None);
        }
        let known = s.marker();
        let found = read_marker(c)?;
        match (found, known) {
            (Some(f), Some(k)) if f == k => Ok(Some(Marker::Same)),
            (Some(f), None) => {
                s.set_marker(Some(f));
                Ok(Some(Marker::Same))
            }
            (Some(f), Some(_)) => {
                s.set_marker(Some(f));
                Ok(Some(Marker::Lost))
            }
            (None, known) => {
                let set = Cmd::Set {
                    key: MARKER_KEY.into(),
                    value: random_marker().into_bytes(),
                    ttl: 0,
                    mode: Mode::Add,
                    cas: None,
                };
                c.call(&[set])?;
                // Another node may have added its own first: theirs is the one.
                let now = read_marker(c)?;
                s.set_marker(now);
                Ok(Some(if known.is_some() {
                    Marker::Lost
                } else {
                    Marker::Same
                }))
            }
        }
    }

    /// Notes here that a server lost its data; returns when.
    fn note_loss(&self, s: &Server) -> u64 {
        let now = now_secs();
        warn!(
            "memcached {} lost its data (restarted or flushed); unknown channels with genuine \
             tokens are stored, not refused, while that may explain them",
            s.addr
        );
        if let Ok(mut l) = self.losses.lock() {
            l.insert(s.addr.clone(), now);
        }
        now
    }

    /// Records a loss cluster-wide, so that nodes that did not see it answer the same way.
    fn publish_loss(&self, s: &Server, at: u64) {
        let addr = s.addr.clone();
        let recorded = self.update_map(LOSSES_KEY, |m: &mut BTreeMap<String, u64>| {
            m.insert(addr.clone(), at);
        });
        if recorded.is_err() {
            warn!(
                "the loss of memcached {} could not be recorded cluster-wide",
                s.addr
            );
        }
    }

    /// Reads the cluster's loss records (another node may have noticed one) and each server's stats.
    pub(super) fn refresh_stats(&self) {
        if let Ok(m) = self.read_map::<u64>(LOSSES_KEY) {
            if let Ok(mut l) = self.losses.lock() {
                for (addr, at) in m {
                    let e = l.entry(addr).or_insert(at);
                    *e = (*e).max(at);
                }
            }
        }
        let mut all = Vec::new();
        for s in &self.cluster.servers {
            let mut st = ServerStats {
                addr: s.addr.clone(),
                up: s.up(),
                ..ServerStats::default()
            };
            if let Some(Reply::Stats(v)) = s
                .open()
                .ok()
                .and_then(|mut c| c.call(&[Cmd::Stats(None)]).ok())
                .and_then(|mut r| r.pop())
            {
                let num = |k: &str| stat(&v, k).and_then(|x| x.parse().ok()).unwrap_or(0);
                st.evictions = num("evictions");
                st.bytes = num("bytes");
                st.limit = num("limit_maxbytes");
                st.items = num("curr_items");
            }
            all.push(st);
        }
        if let Ok(mut g) = STATS.lock() {
            *g = all;
        }
    }
}

fn read_marker(c: &mut Conn) -> Result<Option<String>, ConnError> {
    let r = c.call(&[Cmd::Get(MARKER_KEY.into())])?;
    Ok(match r.first() {
        Some(Reply::Value { data, .. }) => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    })
}

/// Starts the probe thread; it ends when the store is dropped.
pub(super) fn spawn_probe(store: &Arc<MemcachedStore>) -> Result<(), String> {
    let weak = Arc::downgrade(store);
    std::thread::Builder::new()
        .name("memcached-probe".into())
        .spawn(move || probe_loop(&weak))
        .map(drop)
        .map_err(|e| format!("cannot start the memcached probe: {e}"))
}

fn probe_loop(store: &Weak<MemcachedStore>) {
    let mut last_stats: Option<Instant> = None;
    loop {
        std::thread::sleep(PROBE_EVERY);
        let Some(s) = store.upgrade() else {
            return;
        };
        s.probe_all();
        if last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            s.refresh_stats();
            last_stats = Some(Instant::now());
        }
    }
}

/// The memcached figures in Prometheus text (nothing when the backend is not memcached).
pub fn render(out: &mut String) {
    let Ok(stats) = STATS.lock() else {
        return;
    };
    if stats.is_empty() {
        return;
    }
    type Gauge = (&'static str, &'static str, fn(&ServerStats) -> u64);
    let gauges: [Gauge; 5] = [
        (
            "simplepush_memcached_up",
            "Whether the server is in use (1) or down or refused (0).",
            |s| u64::from(s.up),
        ),
        (
            "simplepush_memcached_evictions",
            "Items the server evicted (must stay 0: run it with -M).",
            |s| s.evictions,
        ),
        (
            "simplepush_memcached_bytes",
            "Bytes the server holds.",
            |s| s.bytes,
        ),
        (
            "simplepush_memcached_limit_bytes",
            "The server's memory limit (-m).",
            |s| s.limit,
        ),
        (
            "simplepush_memcached_items",
            "Items the server holds.",
            |s| s.items,
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in stats.iter() {
            let _ = writeln!(out, "{name}{{server=\"{}\"}} {}", s.addr, f(s));
        }
    }
    let counters = [
        (
            "simplepush_memcached_commands_total",
            "Commands sent to memcached.",
            &conn::COMMANDS,
        ),
        (
            "simplepush_memcached_syscalls_total",
            "read, write and connect calls on memcached connections.",
            &conn::SYSCALLS,
        ),
        (
            "simplepush_memcached_retries_total",
            "Rounds tried again on a new connection after a slow, broken or garbled answer.",
            &conn::RETRIES,
        ),
        (
            "simplepush_memcached_repairs_total",
            "Copies written back by reads (missing or older).",
            &REPAIRS,
        ),
        (
            "simplepush_memcached_conflicts_total",
            "Writes redone because another writer changed the item first.",
            &CONFLICTS,
        ),
    ];
    for (name, help, c) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            c.load(Ordering::Relaxed)
        );
    }
}
