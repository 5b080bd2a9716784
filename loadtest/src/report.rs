//! The results: the JSON document (`--json`) and the human summary, built from the merged
//! tally and the server samples.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{Config, Scenario};
use crate::control::ServerSamples;
use crate::procstat::Sample;
use crate::tally::{Hist, Percentiles, RoundTally, Tally, TargetTally};

#[derive(Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub parameters: Config,
    pub connections: Connections,
    /// Devices set up (connect + upgrade + hello + register) per second of the connect phase.
    pub connect_rate_per_sec: f64,
    /// What `latency_us` measures.
    pub latency_kind: &'static str,
    pub latency_us: Percentiles,
    /// Connect start -> every channel registered.
    pub connect_latency_us: Percentiles,
    pub notifications: Notifications,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<Offline>,
    /// Churn with a fixed population (--devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
    pub server: Server,
    pub tester: Tester,
    pub elapsed_secs: f64,
}

#[derive(Serialize)]
pub struct Connections {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub dropped_by_server: u64,
    pub ping_ok: u64,
    pub ping_failed: u64,
    pub connect_phase_secs: f64,
    /// The same by --ws-url (devices round-robin over the URLs).
    pub by_target: BTreeMap<String, TargetTally>,
}

#[derive(Serialize)]
pub struct Notifications {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub unanswered: u64,
    pub unexpected: u64,
    pub misrouted: u64,
    /// WebPush: delivered but not decryptable, or not the bytes sent.
    pub corrupted: u64,
    /// WebPush: delivered intact more than once.
    pub duplicated: u64,
    /// PUT answers by HTTP status.
    pub responses: BTreeMap<String, u64>,
    /// Why HTTP connections to the endpoints failed or were closed (each is then reopened).
    pub http_errors: BTreeMap<String, u64>,
    pub put_phase_secs: f64,
    pub put_rate_per_sec: f64,
}

#[derive(Serialize)]
pub struct Churn {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub cycles_per_sec: f64,
    pub churn_secs: f64,
}

#[derive(Serialize)]
pub struct Offline {
    pub reconnect_ok: u64,
    pub reconnect_failed: u64,
    pub uaid_changed: u64,
    /// Versions answered 200/202 whose flush never came (= notifications.lost).
    pub missing: u64,
}

#[derive(Serialize)]
pub struct Soak {
    pub devices: u64,
    /// Devices whose first setup succeeded (the ones cycled and checked).
    pub population: u64,
    /// Channels whose highest version answered 200/202 was never delivered (at the end-of-round
    /// checks, or when the channel was unregistered).
    pub lost: u64,
    pub lost_at_unregister: u64,
    /// Owed channels of devices that could not reconnect for the check.
    pub unverified: u64,
    /// Accepted versions never delivered themselves: overwritten by a newer version of the same
    /// channel before the device came back (and any of lost channels).
    pub superseded: u64,
    pub drops: u64,
    pub rotations_ok: u64,
    pub rotations_failed: u64,
    /// Resumed hellos answered with another uaid (the server forgot the device).
    pub uaid_changed: u64,
    /// Server RSS after the setup, every device closed, --settle later.
    pub baseline_rss_bytes: Option<u64>,
    /// Server VmHWM at the end (the peak RSS over the whole run).
    pub peak_rss_bytes: Option<u64>,
    pub rounds: Vec<SoakRound>,
}

/// One round's figures (deltas) and the server's RSS after it.
#[derive(Serialize)]
pub struct SoakRound {
    pub round: u32,
    pub churn_secs: f64,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub drops: u64,
    pub rotations_ok: u64,
    pub reconnect_failed: u64,
    pub puts_sent: u64,
    pub puts_accepted: u64,
    pub lost: u64,
    pub unverified: u64,
    pub rss_after_bytes: Option<u64>,
    /// RSS after this round minus RSS after the previous one (the baseline for round 1).
    pub rss_growth_bytes: Option<i64>,
}

#[derive(Serialize, Default)]
pub struct Server {
    pub pid: Option<u32>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    /// (RSS after the connect phase - RSS before) / devices set up.
    pub rss_per_connection_bytes: Option<f64>,
    pub cpu_before_us: Option<u64>,
    pub cpu_after_us: Option<u64>,
    pub cpu_end_us: Option<u64>,
    /// Server CPU during the connect phase / devices set up.
    pub cpu_us_per_hello_register: Option<f64>,
    /// Server CPU after the connect phase / notifications received (notify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_notification: Option<f64>,
    /// Server CPU over the run / cycles (churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_cycle: Option<f64>,
    pub errors: Vec<String>,
}

#[derive(Serialize)]
pub struct Tester {
    pub procs: u32,
    pub cpu_secs: f64,
    pub http_reconnects: u64,
}

fn per(x: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| x / n as f64)
}

fn diff(a: Option<Sample>, b: Option<Sample>, f: fn(Sample) -> u64) -> Option<f64> {
    Some(f(b?) as f64 - f(a?) as f64)
}

fn rss(s: Sample) -> u64 {
    s.rss_bytes
}

fn cpu(s: Sample) -> u64 {
    s.cpu_us
}

impl Report {
    pub fn build(cfg: &Config, t: &Tally, s: &ServerSamples) -> Self {
        let latency = Hist::from_pairs(&t.latency_hist).summary();
        let connect = Hist::from_pairs(&t.connect_hist).summary();
        let (kind, main) = match cfg.scenario {
            Scenario::Connect => ("connect_hello_register", connect),
            Scenario::Notify => ("put_to_notification", latency),
            Scenario::Webpush => ("push_to_notification", latency),
            // With --devices, devices are often offline when a PUT comes: its latency includes
            // the wait for the device's next hello.
            Scenario::Churn if cfg.devices > 0 => ("put_to_notification_incl_offline", latency),
            Scenario::Churn => ("churn_cycle", latency),
            Scenario::Offline => ("hello_to_flush", latency),
        };
        Self {
            scenario: cfg.scenario.name(),
            parameters: cfg.clone(),
            connections: connections(t),
            // With --devices, devices are created in the setup phase only (connect_secs).
            connect_rate_per_sec: if cfg.devices > 0 {
                rate(t.conn_ok as f64, t.connect_secs)
            } else {
                rate(t.conn_ok as f64, t.connect_secs.max(t.churn_secs))
            },
            latency_kind: kind,
            latency_us: main,
            connect_latency_us: connect,
            notifications: notifications(t),
            churn: (cfg.scenario == Scenario::Churn).then(|| Churn {
                cycles_ok: t.cycles_ok,
                cycles_failed: t.cycles_failed,
                cycles_per_sec: rate(t.cycles_ok as f64, t.churn_secs),
                churn_secs: t.churn_secs,
            }),
            offline: (cfg.scenario == Scenario::Offline).then_some(Offline {
                reconnect_ok: t.reconnect_ok,
                reconnect_failed: t.reconnect_failed,
                uaid_changed: t.uaid_changed,
                missing: t.lost,
            }),
            soak: (cfg.devices > 0).then(|| soak(cfg, t, s)),
            server: server(cfg.scenario, t, s),
            tester: Tester {
                procs: cfg.procs,
                cpu_secs: t.tester_cpu_us as f64 / 1e6,
                http_reconnects: t.http_reconnects,
            },
            elapsed_secs: t.elapsed_secs,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        let c = &self.connections;
        out.push(format!(
            "== simplepush-loadtest {} ({:.1} s) ==",
            self.scenario, self.elapsed_secs
        ));
        let secs = match (&self.churn, &self.soak) {
            (Some(ch), None) => ch.churn_secs,
            _ => c.connect_phase_secs,
        };
        out.push(format!(
            "connections: {} ok, {} failed; {:.0}/s connect+hello+register over {:.2} s; {} dropped by the server",
            c.ok, c.failed, self.connect_rate_per_sec, secs, c.dropped_by_server
        ));
        if !c.failures.is_empty() {
            let list: Vec<String> = c
                .failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push(format!("  failures: {}", list.join(", ")));
        }
        if c.ping_ok + c.ping_failed > 0 {
            out.push(format!(
                "  end-of-hold ping: {} answered, {} not",
                c.ping_ok, c.ping_failed
            ));
        }
        if c.by_target.len() > 1 {
            for (url, t) in &c.by_target {
                let ping = if t.ping_ok + t.ping_failed > 0 {
                    format!(", ping {} answered / {} not", t.ping_ok, t.ping_failed)
                } else {
                    String::new()
                };
                out.push(format!(
                    "  {url}: {} ok, {} failed, {} dropped{ping}",
                    t.ok, t.failed, t.dropped
                ));
            }
        }
        out.push(format!(
            "connect latency: {}",
            pct(&self.connect_latency_us)
        ));
        if self.latency_kind != "connect_hello_register" {
            out.push(format!(
                "latency ({}): {}",
                self.latency_kind,
                pct(&self.latency_us)
            ));
        }
        self.text_notifications(&mut out);
        self.text_scenario(&mut out);
        self.text_server(&mut out);
        let http: Vec<String> = self
            .notifications
            .http_errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push(format!(
            "tester: {} process(es), {:.1} s CPU, {} HTTP reconnects{}",
            self.tester.procs,
            self.tester.cpu_secs,
            self.tester.http_reconnects,
            if http.is_empty() {
                String::new()
            } else {
                format!(" ({})", http.join(", "))
            }
        ));
        out.join("\n")
    }

    fn text_notifications(&self, out: &mut Vec<String>) {
        let n = &self.notifications;
        if n.sent == 0 {
            return;
        }
        let answers: Vec<String> = n
            .responses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push(format!(
            "notifications: {} sent ({:.0}/s over {:.2} s), {} received, {} lost, {} unanswered, {} unexpected, {} misrouted; answers {}",
            n.sent,
            n.put_rate_per_sec,
            n.put_phase_secs,
            n.received,
            n.lost,
            n.unanswered,
            n.unexpected,
            n.misrouted,
            answers.join(", ")
        ));
        if self.scenario == "webpush" {
            out.push(format!(
                "  webpush: {} corrupted, {} duplicated",
                n.corrupted, n.duplicated
            ));
        }
    }

    fn text_scenario(&self, out: &mut Vec<String>) {
        if let Some(ch) = &self.churn {
            out.push(format!(
                "churn: {} cycles ok, {} failed, {:.0} cycles/s over {:.2} s",
                ch.cycles_ok, ch.cycles_failed, ch.cycles_per_sec, ch.churn_secs
            ));
        }
        if let Some(k) = &self.soak {
            let mib = |b: Option<u64>| {
                b.map_or("?".to_string(), |b| {
                    format!("{:.1} MiB", b as f64 / 1048576.0)
                })
            };
            out.push(format!(
                "soak: {} devices ({} set up); {} lost ({} at unregister), {} unverified, {} superseded, {} uaids changed; {} drops, {} rotations ({} failed)",
                k.devices,
                k.population,
                k.lost,
                k.lost_at_unregister,
                k.unverified,
                k.superseded,
                k.uaid_changed,
                k.drops,
                k.rotations_ok,
                k.rotations_failed
            ));
            out.push(format!(
                "  server RSS baseline {}, peak {}",
                mib(k.baseline_rss_bytes),
                mib(k.peak_rss_bytes)
            ));
            for r in &k.rounds {
                let growth = r.rss_growth_bytes.map_or("?".to_string(), |g| {
                    format!("{:+.0} KiB", g as f64 / 1024.0)
                });
                out.push(format!(
                    "  round {}: {:.0} s, {} cycles ok, {} failed, {} drops, {} rotations; {} PUTs, {} accepted, {} lost, {} unverified; server RSS after {} ({})",
                    r.round,
                    r.churn_secs,
                    r.cycles_ok,
                    r.cycles_failed,
                    r.drops,
                    r.rotations_ok,
                    r.puts_sent,
                    r.puts_accepted,
                    r.lost,
                    r.unverified,
                    mib(r.rss_after_bytes),
                    growth
                ));
            }
        }
        if let Some(o) = &self.offline {
            out.push(format!(
                "offline: {} reconnected, {} failed, {} uaid changed, {} versions missing",
                o.reconnect_ok, o.reconnect_failed, o.uaid_changed, o.missing
            ));
        }
    }

    fn text_server(&self, out: &mut Vec<String>) {
        let s = &self.server;
        let Some(pid) = s.pid else { return };
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        let mut parts = Vec::new();
        if let Some(b) = s.rss_before_bytes {
            parts.push(format!("RSS {} before", mib(b)));
        }
        if let Some(b) = s.rss_after_bytes {
            parts.push(format!("{} after connect", mib(b)));
        }
        if let Some(b) = s.rss_end_bytes {
            parts.push(format!("{} at end", mib(b)));
        }
        if let Some(b) = s.rss_per_connection_bytes {
            parts.push(format!("{b:.0} B per connection"));
        }
        if let Some(u) = s.cpu_us_per_hello_register {
            parts.push(format!("{u:.1} µs CPU per hello+register"));
        }
        out.push(format!("server pid {pid}: {}", parts.join(", ")));
        if let Some(u) = s.cpu_us_per_notification {
            out.push(format!(
                "  server CPU per notification delivered: {u:.1} µs"
            ));
        }
        if let Some(u) = s.cpu_us_per_cycle {
            out.push(format!("  server CPU per churn cycle: {u:.1} µs"));
        }
        for e in &s.errors {
            out.push(format!("  {e}"));
        }
    }
}

fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

fn pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "none recorded".into();
    }
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p99_9),
        ms(p.max),
        p.count
    )
}

fn connections(t: &Tally) -> Connections {
    Connections {
        ok: t.conn_ok,
        failed: t.conn_failed,
        failures: t.failures.clone(),
        dropped_by_server: t.dropped,
        ping_ok: t.ping_ok,
        ping_failed: t.ping_failed,
        connect_phase_secs: t.connect_secs,
        by_target: t.by_target.clone(),
    }
}

fn notifications(t: &Tally) -> Notifications {
    Notifications {
        sent: t.sent,
        received: t.received,
        lost: t.lost,
        unanswered: t.unanswered,
        unexpected: t.unexpected,
        misrouted: t.misrouted,
        corrupted: t.corrupted,
        duplicated: t.duplicated,
        responses: t.statuses.clone(),
        http_errors: t.http_errors.clone(),
        put_phase_secs: t.put_secs,
        put_rate_per_sec: rate(t.sent as f64, t.put_secs),
    }
}

fn soak(cfg: &Config, t: &Tally, s: &ServerSamples) -> Soak {
    let baseline = s.connected.map(rss);
    let mut prev_rss = baseline;
    let mut prev = RoundTally::default();
    let mut rounds = Vec::new();
    for (i, r) in t.rounds.iter().enumerate() {
        let after = s.rounds.get(i).copied().map(rss);
        let growth = match (after, prev_rss) {
            (Some(a), Some(p)) => Some(a as i64 - p as i64),
            _ => None,
        };
        rounds.push(SoakRound {
            round: i as u32 + 1,
            churn_secs: r.churn_secs,
            cycles_ok: r.cycles_ok - prev.cycles_ok,
            cycles_failed: r.cycles_failed - prev.cycles_failed,
            drops: r.drops - prev.drops,
            rotations_ok: r.rotations_ok - prev.rotations_ok,
            reconnect_failed: r.reconnect_failed - prev.reconnect_failed,
            puts_sent: r.sent - prev.sent,
            puts_accepted: r.accepted - prev.accepted,
            lost: r.lost - prev.lost,
            unverified: r.unverified - prev.unverified,
            rss_after_bytes: after,
            rss_growth_bytes: growth,
        });
        prev = *r;
        prev_rss = after;
    }
    let peak = [s.start, s.connected, s.end]
        .into_iter()
        .flatten()
        .chain(s.rounds.iter().copied())
        .map(|x| x.hwm_bytes)
        .max();
    Soak {
        devices: cfg.devices,
        population: t.population,
        lost: t.lost,
        lost_at_unregister: t.lost_at_unregister,
        unverified: t.unverified,
        superseded: t.superseded,
        drops: t.drops,
        rotations_ok: t.rotations_ok,
        rotations_failed: t.rotations_failed,
        uaid_changed: t.uaid_changed,
        baseline_rss_bytes: baseline,
        peak_rss_bytes: peak,
        rounds,
    }
}

fn server(scenario: Scenario, t: &Tally, s: &ServerSamples) -> Server {
    let (a, b, e) = (s.start, s.connected, s.end);
    let mut out = Server {
        pid: s.pid,
        rss_before_bytes: a.map(rss),
        rss_after_bytes: b.map(rss),
        rss_end_bytes: e.map(rss),
        rss_per_connection_bytes: diff(a, b, rss).and_then(|d| per(d, t.conn_ok)),
        cpu_before_us: a.map(cpu),
        cpu_after_us: b.map(cpu),
        cpu_end_us: e.map(cpu),
        cpu_us_per_hello_register: diff(a, b, cpu).and_then(|d| per(d, t.conn_ok)),
        errors: s.errors.clone(),
        ..Server::default()
    };
    match scenario {
        Scenario::Notify | Scenario::Webpush => {
            out.cpu_us_per_notification = diff(b, e, cpu).and_then(|d| per(d, t.received))
        }
        Scenario::Churn => {
            out.cpu_us_per_cycle = diff(a, e, cpu).and_then(|d| per(d, t.cycles_ok));
            // Churn has no connect phase to attribute memory to.
            out.rss_per_connection_bytes = None;
            out.cpu_us_per_hello_register = None;
        }
        _ => {}
    }
    out
}
