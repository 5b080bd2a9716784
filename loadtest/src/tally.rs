//! What one process measured, in a form that merges: counters, and HDR histograms shipped as
//! raw (value, count) pairs so a parent can rebuild and add its children's histograms exactly.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (10 minutes); larger values saturate.
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        match Histogram::new_with_bounds(1, MAX_US, 3) {
            Ok(h) => Self(h),
            // The bounds are constants that hdrhistogram accepts.
            Err(e) => panic!("histogram bounds: {e}"),
        }
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// (value, count) pairs: every value recorded, at the top of its bucket.
    pub fn pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn add_pairs(&mut self, pairs: &[(u64, u64)]) {
        for &(value, count) in pairs {
            // A value that fits the bounds cannot fail; saturate anything else.
            if self.0.record_n(value.clamp(1, MAX_US), count).is_err() {
                self.0.saturating_record(MAX_US);
            }
        }
    }

    pub fn from_pairs(pairs: &[(u64, u64)]) -> Self {
        let mut h = Self::new();
        h.add_pairs(pairs);
        h
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean().round() as u64,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Latency summary in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

/// One --ws-url's share of the connections.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct TargetTally {
    /// Devices that completed connect + upgrade + hello + register / that failed to.
    pub ok: u64,
    pub failed: u64,
    /// Held connections the server closed or that broke.
    pub dropped: u64,
    pub ping_ok: u64,
    pub ping_failed: u64,
}

impl TargetTally {
    pub fn add(&mut self, o: &TargetTally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.ping_ok += o.ping_ok;
        self.ping_failed += o.ping_failed;
    }
}

/// Everything a process counted. Child processes send theirs to the parent, which merges them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Devices that completed connect + upgrade + hello + register.
    pub conn_ok: u64,
    pub conn_failed: u64,
    /// Why connections failed, by kind.
    pub failures: BTreeMap<String, u64>,
    /// The same, by --ws-url (fresh connections only).
    pub by_target: BTreeMap<String, TargetTally>,
    /// Duration of the connect phase (merged: the longest).
    pub connect_secs: f64,
    /// Held connections the server closed or that broke while we did not close them.
    pub dropped: u64,
    /// End-of-hold liveness check: `{}` answered / not answered.
    pub ping_ok: u64,
    pub ping_failed: u64,
    /// PUTs written.
    pub sent: u64,
    /// PUT answers by status code.
    pub statuses: BTreeMap<String, u64>,
    /// PUTs whose HTTP connection failed before the answer, or still unanswered at the end.
    pub unanswered: u64,
    /// Notifications matched to a PUT (or, offline, to a stored version).
    pub received: u64,
    /// Answered 200/202 but never delivered by the end of the grace period.
    pub lost: u64,
    /// Notifications for no PUT we were waiting on (duplicates, redeliveries).
    pub unexpected: u64,
    /// Notifications that arrived on another device than the one the PUT was for.
    pub misrouted: u64,
    /// WebPush: messages that arrived but could not be decrypted or whose bytes were not the
    /// ones sent (each also ends its push: corrupted is not counted lost as well).
    pub corrupted: u64,
    /// WebPush: messages that arrived intact a second (or later) time.
    pub duplicated: u64,
    /// Duration of the PUT phase (merged: the longest).
    pub put_secs: f64,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub churn_secs: f64,
    /// Offline: reconnects whose hello was answered 200 / that failed.
    pub reconnect_ok: u64,
    pub reconnect_failed: u64,
    /// Offline: hello answered with another uaid than the one sent.
    pub uaid_changed: u64,
    /// HTTP connections that had to be reopened.
    pub http_reconnects: u64,
    /// Why HTTP connections failed or closed, by kind.
    pub http_errors: BTreeMap<String, u64>,
    /// Churn with --devices: devices set up (the population), cycles ended by dropping the
    /// socket, channel rotations, and the delivery check.
    pub population: u64,
    pub drops: u64,
    pub rotations_ok: u64,
    pub rotations_failed: u64,
    /// Channels found owed (accepted version never delivered) when unregistered: also in `lost`.
    pub lost_at_unregister: u64,
    /// Owed channels of devices that could not reconnect for the check (delivery unknown).
    pub unverified: u64,
    /// Accepted versions overwritten by a newer one before delivery (SimplePush keeps the latest).
    pub superseded: u64,
    /// The counters at the end of each round (cumulative).
    pub rounds: Vec<RoundTally>,
    /// CPU time this process used, microseconds.
    pub tester_cpu_us: u64,
    pub elapsed_secs: f64,
    /// connect start -> registered, microseconds.
    pub connect_hist: Vec<(u64, u64)>,
    /// The scenario's main latency, microseconds.
    pub latency_hist: Vec<(u64, u64)>,
}

/// Cumulative counters at the end of a round.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RoundTally {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub drops: u64,
    pub rotations_ok: u64,
    pub reconnect_failed: u64,
    pub sent: u64,
    pub accepted: u64,
    pub lost: u64,
    pub unverified: u64,
    pub churn_secs: f64,
}

impl RoundTally {
    pub fn add(&mut self, o: &RoundTally) {
        self.cycles_ok += o.cycles_ok;
        self.cycles_failed += o.cycles_failed;
        self.drops += o.drops;
        self.rotations_ok += o.rotations_ok;
        self.reconnect_failed += o.reconnect_failed;
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.lost += o.lost;
        self.unverified += o.unverified;
        self.churn_secs = self.churn_secs.max(o.churn_secs);
    }
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl Tally {
    pub fn count(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }

    /// Pushes answered 200, 201 or 202.
    pub fn accepted(&self) -> u64 {
        ["200", "201", "202"]
            .iter()
            .filter_map(|k| self.statuses.get(*k))
            .sum()
    }

    /// Records the end of a round (`churn_secs` is the round's churn time).
    pub fn end_round(&mut self, churn_secs: f64) {
        self.rounds.push(RoundTally {
            cycles_ok: self.cycles_ok,
            cycles_failed: self.cycles_failed,
            drops: self.drops,
            rotations_ok: self.rotations_ok,
            reconnect_failed: self.reconnect_failed,
            sent: self.sent,
            accepted: self.accepted(),
            lost: self.lost,
            unverified: self.unverified,
            churn_secs,
        });
    }

    /// Adds another process's tally to this one.
    pub fn merge(&mut self, o: &Tally) {
        self.conn_ok += o.conn_ok;
        self.conn_failed += o.conn_failed;
        add_map(&mut self.failures, &o.failures);
        for (url, t) in &o.by_target {
            self.by_target.entry(url.clone()).or_default().add(t);
        }
        self.connect_secs = self.connect_secs.max(o.connect_secs);
        self.dropped += o.dropped;
        self.ping_ok += o.ping_ok;
        self.ping_failed += o.ping_failed;
        self.sent += o.sent;
        add_map(&mut self.statuses, &o.statuses);
        self.unanswered += o.unanswered;
        self.received += o.received;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        self.misrouted += o.misrouted;
        self.corrupted += o.corrupted;
        self.duplicated += o.duplicated;
        self.put_secs = self.put_secs.max(o.put_secs);
        self.cycles_ok += o.cycles_ok;
        self.cycles_failed += o.cycles_failed;
        self.churn_secs = self.churn_secs.max(o.churn_secs);
        self.reconnect_ok += o.reconnect_ok;
        self.reconnect_failed += o.reconnect_failed;
        self.uaid_changed += o.uaid_changed;
        self.population += o.population;
        self.drops += o.drops;
        self.rotations_ok += o.rotations_ok;
        self.rotations_failed += o.rotations_failed;
        self.lost_at_unregister += o.lost_at_unregister;
        self.unverified += o.unverified;
        self.superseded += o.superseded;
        if self.rounds.len() < o.rounds.len() {
            self.rounds.resize(o.rounds.len(), RoundTally::default());
        }
        for (a, b) in self.rounds.iter_mut().zip(&o.rounds) {
            a.add(b);
        }
        self.http_reconnects += o.http_reconnects;
        add_map(&mut self.http_errors, &o.http_errors);
        self.tester_cpu_us += o.tester_cpu_us;
        self.elapsed_secs = self.elapsed_secs.max(o.elapsed_secs);
        self.connect_hist = merge_pairs(&self.connect_hist, &o.connect_hist);
        self.latency_hist = merge_pairs(&self.latency_hist, &o.latency_hist);
    }
}

fn merge_pairs(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut h = Hist::from_pairs(a);
    h.add_pairs(b);
    h.pairs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_pairs_and_merge() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        for v in 1..=1000 {
            a.record_us(v);
            b.record_us(v * 1000);
        }
        let mut ta = Tally {
            latency_hist: a.pairs(),
            ..Tally::default()
        };
        let tb = Tally {
            latency_hist: b.pairs(),
            ..Tally::default()
        };
        ta.merge(&tb);
        let s = Hist::from_pairs(&ta.latency_hist).summary();
        assert_eq!(s.count, 2000);
        assert!(s.max >= 1_000_000 && s.max < 1_001_000);
        assert!(s.p50 >= 999 && s.p50 <= 1001, "p50 {}", s.p50);
        assert_eq!(Hist::from_pairs(&a.pairs()).summary().p99, a.summary().p99);
    }

    #[test]
    fn rounds_merge_elementwise() {
        let mut a = Tally::default();
        a.statuses.insert("200".into(), 3);
        a.statuses.insert("202".into(), 2);
        a.statuses.insert("410".into(), 7);
        a.cycles_ok = 10;
        a.end_round(30.0);
        a.cycles_ok = 25;
        a.lost = 1;
        a.end_round(31.0);
        let mut b = Tally {
            cycles_ok: 4,
            ..Tally::default()
        };
        b.end_round(29.0);
        let mut total = Tally::default();
        total.merge(&b);
        total.merge(&a);
        assert_eq!(total.rounds.len(), 2);
        assert_eq!(total.rounds[0].cycles_ok, 14);
        assert_eq!(total.rounds[0].accepted, 5);
        assert_eq!((total.rounds[1].cycles_ok, total.rounds[1].lost), (25, 1));
        assert_eq!(total.rounds[0].churn_secs, 30.0);
    }
}
