//! Per-source rate limits on what costs the server memory for good: new UAIDs and registrations
//! (issue 13). Who a WebSocket's source is (its TCP peer, or, behind a trusted proxy, the client
//! that proxy names in `X-Forwarded-For`), and one bounded table of token buckets for the whole
//! process, so that a source's limit holds whichever event loop its sockets land on. The table's
//! lock is taken only for a register, never per frame.
//!
//! A UAID costs nothing lasting until its first registration: no store keeps a UAID without
//! channels, and Firefox without subscriptions is given a fresh UAID at every reconnect. So the
//! new-UAID token is taken by that first registration, not by the hello, and a NAT full of idle
//! browsers reconnecting spends none.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use log::warn;

use crate::config::RateLimitConfig;
use crate::wake::Net;

/// Refusals, by [`What`] (process-wide, for `/metrics`).
static REFUSED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Sources the table holds (for `/metrics`).
static TRACKED: AtomicUsize = AtomicUsize::new(0);
/// A refusal is logged at most this often (µs), so that an attack cannot flood the log.
const WARN_EVERY_US: u64 = 10_000_000;

/// What a token is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// A UAID's first registration, which creates it in the store (the UAID of a hello the store
    /// did not know: a device resuming its own UAID takes none).
    Uaid,
    /// Any register.
    Register,
}

impl What {
    fn index(self) -> usize {
        match self {
            What::Uaid => 0,
            What::Register => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            What::Uaid => "uaid",
            What::Register => "register",
        }
    }
}

/// A source as the limiter counts it: an IPv4 address, or an IPv6 prefix (`ipv6_prefix` bits, a
/// /64 by default: what one subscriber is given), hashed with the process's secret key to four
/// bytes, which a WebSocket keeps in what was padding (an idle connection costs nothing more).
/// Two sources may share a bucket by chance (about one in 40,000 with 100,000 tracked), never
/// by an attacker's choice: the key is random.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Source(u32);

/// One rate, as GCRA keeps it: each bucket is a single time, the moment it will be full again.
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Time one token takes to come back, µs.
    interval_us: u64,
    /// How far ahead of now a bucket's full time may run: the burst less one token, µs.
    tolerance_us: u64,
}

impl Rate {
    fn new(per_minute: u64, burst: u64) -> Option<Rate> {
        if per_minute == 0 {
            return None;
        }
        let interval_us = (60_000_000 / per_minute).max(1);
        Some(Rate {
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst.max(1) - 1),
        })
    }

    /// Takes a token from the bucket full again at `*full_at`; `false` when it has none.
    fn take(&self, full_at: &mut u64, now: u64) -> bool {
        let from = (*full_at).max(now);
        if from - now > self.tolerance_us {
            return false;
        }
        *full_at = from + self.interval_us;
        true
    }
}

/// The process's per-source limits (`[rate_limit]`).
pub struct Limiter {
    /// By [`What::index`]; `None` = no limit.
    rates: [Option<Rate>; 2],
    max_sources: usize,
    ipv6_prefix: u8,
    trusted: Vec<Net>,
    /// The secret key of [`Source`]s.
    key: RandomState,
    epoch: Instant,
    /// Source → the time (µs since `epoch`) each of its buckets is full again. A source whose
    /// buckets are both full holds nothing worth keeping and is forgotten when room is needed.
    table: Mutex<HashMap<Source, [u64; 2]>>,
    last_warning_us: AtomicU64,
}

impl Limiter {
    /// The limits of `cfg` (checked when the configuration was loaded).
    pub fn new(cfg: &RateLimitConfig) -> Limiter {
        Limiter {
            rates: [
                Rate::new(cfg.new_uaids_per_minute, cfg.new_uaid_burst),
                Rate::new(cfg.registers_per_minute, cfg.register_burst),
            ],
            max_sources: cfg.max_sources.max(1),
            ipv6_prefix: cfg.ipv6_prefix,
            trusted: cfg
                .trusted_proxies
                .iter()
                .filter_map(|n| Net::parse(n))
                .collect(),
            key: RandomState::new(),
            epoch: Instant::now(),
            table: Mutex::new(HashMap::new()),
            last_warning_us: AtomicU64::new(0),
        }
    }

    /// Whether any limit is on (else a WebSocket's source need not even be looked up).
    pub fn enabled(&self) -> bool {
        self.rates.iter().any(Option::is_some)
    }

    /// The source of a WebSocket whose TCP peer is `peer` and whose upgrade request carried
    /// `forwarded` (its `X-Forwarded-For` lines, joined).
    pub fn source(&self, peer: SocketAddr, forwarded: Option<&str>) -> Source {
        self.source_of(client_of(peer.ip(), forwarded, &self.trusted))
    }

    /// The source of address `ip`: IPv4 whole, IPv6 cut to its first `ipv6_prefix` bits.
    fn source_of(&self, ip: IpAddr) -> Source {
        let hash = match ip.to_canonical() {
            IpAddr::V4(v4) => self.key.hash_one((4u8, u32::from(v4))),
            IpAddr::V6(v6) => {
                let top = (u128::from(v6) >> 64) as u64;
                let bits = u32::from(self.ipv6_prefix.min(64));
                let mask = u64::MAX.checked_shl(64 - bits).unwrap_or(0);
                self.key.hash_one((6u8, top & mask))
            }
        };
        Source(hash as u32)
    }

    /// Takes a token from each of `source`'s buckets for `wanted`, or none: `false` (counted
    /// against the first empty bucket, and logged now and then, naming the peer `who` describes)
    /// when one is empty and the request is to be refused. A refused request costs no token.
    pub fn allow(&self, source: Source, wanted: &[What], who: impl FnOnce() -> String) -> bool {
        let limited = |w: &What| self.rates[w.index()].map(|rate| (w.index(), rate));
        if wanted.iter().all(|w| limited(w).is_none()) {
            return true;
        }
        let now = self.epoch.elapsed().as_micros() as u64;
        let empty = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            if table.len() >= self.max_sources && !table.contains_key(&source) {
                make_room(&mut table, self.max_sources, now);
            }
            let buckets = table.entry(source).or_insert([0, 0]);
            let mut after = *buckets;
            let empty = wanted
                .iter()
                .copied()
                .find(|w| limited(w).is_some_and(|(i, rate)| !rate.take(&mut after[i], now)));
            if empty.is_none() {
                *buckets = after;
            }
            TRACKED.store(table.len(), Ordering::Relaxed);
            empty
        };
        match empty {
            Some(what) => {
                self.refused(what, now, who);
                false
            }
            None => true,
        }
    }

    fn refused(&self, what: What, now: u64, who: impl FnOnce() -> String) {
        let n = REFUSED[what.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_warning_us.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY_US {
            return;
        }
        self.last_warning_us.store(now.max(1), Ordering::Relaxed);
        let key = match what {
            What::Uaid => "new_uaids_per_minute",
            What::Register => "registers_per_minute",
        };
        warn!(
            "rate limit: {} is over rate_limit.{key} ({n} {} refused so far); \
             if it is a proxy or load balancer, list it in rate_limit.trusted_proxies",
            who(),
            what.label()
        );
    }
}

/// Makes room for one more source: forgets every source whose buckets are full again, and if
/// that leaves more than three quarters of `max`, the quietest ones down to that (those whose
/// buckets fill soonest), so that each such pass frees a quarter and inserts stay cheap.
fn make_room(table: &mut HashMap<Source, [u64; 2]>, max: usize, now: u64) {
    table.retain(|_, b| b[0] > now || b[1] > now);
    // At least one slot is freed, whatever `max`.
    let keep = (max - max / 4).min(max - 1);
    if table.len() <= keep {
        return;
    }
    let mut fill: Vec<u64> = table.values().map(|b| b[0].max(b[1])).collect();
    let cut = fill.len() - keep;
    let (_, threshold, _) = fill.select_nth_unstable(cut);
    let threshold = *threshold;
    // Strictly above: ties at the threshold go too, so the table never stays full.
    table.retain(|_, b| b[0].max(b[1]) > threshold);
}

/// The client address: the TCP peer, unless that is a trusted proxy with an `X-Forwarded-For`,
/// which is then read from the right (each proxy appends the peer it saw) past the trusted
/// proxies to the first address that is not one. A client can write anything on the left of
/// the list, but not the entry our own proxy appended. An entry that is not an address stops
/// the walk at the last trusted hop: that much is known.
fn client_of(peer: IpAddr, forwarded: Option<&str>, trusted: &[Net]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let Some(list) = forwarded.filter(|_| is_trusted(peer)) else {
        return peer;
    };
    let mut hop = peer;
    for entry in list.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some(ip) = address(entry) else {
            return hop;
        };
        if !is_trusted(ip) {
            return ip;
        }
        hop = ip;
    }
    hop
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, and with a port `1.2.3.4:80` or
/// `[2001:db8::1]:80` (some proxies add it).
fn address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The rate-limit families of the Prometheus exposition.
pub fn render_metrics(out: &mut String) {
    let name = "simplepush_rate_limited_total";
    let _ = writeln!(
        out,
        "# HELP {name} Hellos (new UAIDs) and registers refused: their source was over its [rate_limit].\n# TYPE {name} counter"
    );
    for what in [What::Uaid, What::Register] {
        let n = REFUSED[what.index()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{what=\"{}\"}} {n}", what.label());
    }
    let name = "simplepush_rate_limit_sources";
    let _ = writeln!(
        out,
        "# HELP {name} Sources the rate limiter tracks (at most rate_limit.max_sources).\n# TYPE {name} gauge\n{name} {}",
        TRACKED.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Net> {
        list.iter().map(|n| Net::parse(n).unwrap()).collect()
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        // 60 a minute: one a second, five at once.
        let rate = Rate::new(60, 5).unwrap();
        let mut full_at = 0;
        let taken = (0..10).filter(|_| rate.take(&mut full_at, 0)).count();
        assert_eq!(taken, 5);
        assert!(!rate.take(&mut full_at, 999_999));
        assert!(rate.take(&mut full_at, 1_000_000));
        assert!(!rate.take(&mut full_at, 1_000_001));
        // Quiet for a long time: full again, but never more than the burst.
        let later = 3_600_000_000;
        assert_eq!(
            (0..10).filter(|_| rate.take(&mut full_at, later)).count(),
            5
        );
        assert!(Rate::new(0, 5).is_none());
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        let l = limiter(1, 1, 100);
        let of = |s: &str| l.source_of(ip(s));
        let a = of("2001:db8:1:2:aaaa::1");
        assert_eq!(a, of("2001:db8:1:2:bbbb::9"));
        assert_ne!(a, of("2001:db8:1:3::1"));
        assert_eq!(of("::ffff:10.1.2.3"), of("10.1.2.3"));
        assert_ne!(of("10.1.2.3"), of("10.1.2.4"));
        let wide = Limiter::new(&RateLimitConfig {
            ipv6_prefix: 48,
            ..RateLimitConfig::default()
        });
        assert_eq!(
            wide.source_of(ip("2001:db8:1:2::1")),
            wide.source_of(ip("2001:db8:1:3::1"))
        );
        // Another process (another key) counts the same address under another hash.
        let other = limiter(1, 1, 100);
        assert_ne!(other.source_of(ip("10.1.2.3")), of("10.1.2.3"));
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let lb = nets(&["10.0.0.0/8"]);
        let xff = Some("6.6.6.6, 203.0.113.7");
        // An untrusted peer's header is ignored, whatever it says.
        assert_eq!(client_of(ip("198.51.100.1"), xff, &lb), ip("198.51.100.1"));
        // The trusted proxy's entry is the rightmost one: the client's forged ones stay left.
        assert_eq!(client_of(ip("10.0.0.5"), xff, &lb), ip("203.0.113.7"));
        // Chained proxies are skipped from the right.
        let chain = Some("6.6.6.6, 203.0.113.7, 10.0.0.9");
        assert_eq!(client_of(ip("10.0.0.5"), chain, &lb), ip("203.0.113.7"));
        // No header, no trust, or garbage: the last hop known.
        assert_eq!(client_of(ip("10.0.0.5"), None, &lb), ip("10.0.0.5"));
        assert_eq!(client_of(ip("10.0.0.5"), xff, &[]), ip("10.0.0.5"));
        assert_eq!(
            client_of(ip("10.0.0.5"), Some("junk, 10.0.0.9"), &lb),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_of(ip("10.0.0.5"), Some("[2001:db8::1]:443"), &lb),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_of(ip("10.0.0.5"), Some("203.0.113.7:5000"), &lb),
            ip("203.0.113.7")
        );
    }

    fn limiter(uaids: u64, burst: u64, max_sources: usize) -> Limiter {
        Limiter::new(&RateLimitConfig {
            new_uaids_per_minute: uaids,
            new_uaid_burst: burst,
            registers_per_minute: 0,
            max_sources,
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn each_source_has_its_own_bucket_and_off_means_off() {
        let l = limiter(1, 3, 100);
        let (a, b) = (l.source_of(ip("10.0.0.1")), l.source_of(ip("10.0.0.2")));
        let allow = |s, what| l.allow(s, &[what], String::new);
        assert_eq!((0..5).filter(|_| allow(a, What::Uaid)).count(), 3);
        assert!(allow(b, What::Uaid));
        // Registers are unlimited here.
        assert!((0..1000).all(|_| allow(a, What::Register)));
    }

    #[test]
    fn a_request_needing_two_tokens_takes_both_or_none() {
        let l = Limiter::new(&RateLimitConfig {
            new_uaids_per_minute: 1,
            new_uaid_burst: 2,
            registers_per_minute: 1,
            register_burst: 3,
            ..RateLimitConfig::default()
        });
        let a = l.source_of(ip("10.0.0.1"));
        let both = [What::Register, What::Uaid];
        assert!(l.allow(a, &both, String::new));
        assert!(l.allow(a, &both, String::new));
        // No UAID token left: refused, and its register token is not spent either.
        assert!(!l.allow(a, &both, String::new));
        assert!(l.allow(a, &[What::Register], String::new));
        assert!(!l.allow(a, &[What::Register], String::new));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_busiest_sources() {
        let l = limiter(1, 10, 100);
        let busy = l.source_of(ip("192.0.2.1"));
        for _ in 0..10 {
            assert!(l.allow(busy, &[What::Uaid], String::new));
        }
        for i in 0..10_000u32 {
            let one = l.source_of(IpAddr::from(i.to_be_bytes()));
            l.allow(one, &[What::Uaid], String::new);
            assert!(l.table.lock().unwrap().len() <= 100);
        }
        // The busy source's empty bucket survived every sweep: it is still refused.
        assert!(!l.allow(busy, &[What::Uaid], String::new));
    }
}
