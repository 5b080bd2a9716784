//! `--html FILE`: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) with
//! the run's key figures, its charts (latency histogram and percentile curve, connections and
//! rates over time, server RSS and CPU over time) and every figure of the JSON report.

use std::fmt::Write;

use serde_json::Value;

use crate::report::Report;
use crate::svg::{self, esc, Axis, Series};
use crate::tally::Percentiles;
use crate::timeline::Timeline;

/// Each series' colour (distinct across the page: the render test finds each chart by them).
pub const HIST: &str = "#1f77b4";
pub const PCT_MAIN: &str = "#d62728";
pub const PCT_CONNECT: &str = "#9467bd";
pub const OPEN: &str = "#2ca02c";
pub const FAILED: &str = "#7f7f7f";
pub const RATE_CONNECT: &str = "#8c564b";
pub const RATE_SENT: &str = "#ff7f0e";
pub const RATE_RECEIVED: &str = "#17becf";
pub const RATE_CYCLES: &str = "#e377c2";
pub const RSS: &str = "#bcbd22";
pub const CPU: &str = "#f032e6";

const STYLE: &str = "body{font-family:sans-serif;margin:16px;color:#222;background:#fff;max-width:800px}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.chart{display:block;margin:6px 0}\
p.note{font-size:12px;color:#555}";

/// The page for `report`; the histograms are (µs, count) pairs, `timeline` the run over time.
pub fn render(
    report: &Report,
    latency: &[(u64, u64)],
    connect: &[(u64, u64)],
    timeline: &Timeline,
) -> String {
    let mut out = String::new();
    let title = format!("simplepush-loadtest {}", report.scenario);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        out,
        "<h1>{}</h1><p class=\"note\">{:.1} s, {} process(es); targets: {}</p>",
        esc(&title),
        report.elapsed_secs,
        report.tester.procs,
        esc(&report.parameters.ws_urls.join(", "))
    );
    out.push_str("<h2>Figures</h2>");
    out.push_str(&key_figures(report));
    out.push_str("<h2>Latency</h2>");
    out.push_str(&latency_charts(report, latency, connect));
    out.push_str("<h2>Over time</h2>");
    out.push_str(&time_charts(timeline));
    out.push_str("<h2>Every figure</h2><details><summary>the JSON report, flattened</summary>");
    out.push_str(&all_figures(report));
    out.push_str("</details></body></html>\n");
    out
}

fn row(out: &mut String, name: &str, value: String) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td class=\"n\">{}</td></tr>",
        esc(name),
        esc(&value)
    );
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "none recorded".into();
    }
    format!(
        "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} (n = {})",
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p99_9),
        ms(p.max),
        p.count
    )
}

fn mib(b: Option<u64>) -> String {
    b.map_or("–".into(), |b| {
        format!("{:.1} MiB", b as f64 / 1_048_576.0)
    })
}

fn key_figures(r: &Report) -> String {
    let mut t = String::from("<table>");
    let c = &r.connections;
    row(
        &mut t,
        "connections ok / failed",
        format!("{} / {}", c.ok, c.failed),
    );
    row(
        &mut t,
        "dropped by the server",
        c.dropped_by_server.to_string(),
    );
    row(
        &mut t,
        "connect rate",
        format!("{:.0}/s", r.connect_rate_per_sec),
    );
    row(
        &mut t,
        &format!("latency ({})", r.latency_kind),
        pct(&r.latency_us),
    );
    row(&mut t, "connect latency", pct(&r.connect_latency_us));
    let n = &r.notifications;
    if n.sent > 0 {
        row(
            &mut t,
            "pushes sent / received",
            format!("{} / {} ({:.0}/s)", n.sent, n.received, n.put_rate_per_sec),
        );
        row(
            &mut t,
            "lost / unanswered / unexpected / misrouted",
            format!(
                "{} / {} / {} / {}",
                n.lost, n.unanswered, n.unexpected, n.misrouted
            ),
        );
        if r.scenario == "webpush" {
            row(
                &mut t,
                "corrupted / duplicated",
                format!("{} / {}", n.corrupted, n.duplicated),
            );
        }
    }
    let s = &r.server;
    if s.pid.is_some() {
        row(
            &mut t,
            "server RSS before / after connect / end",
            format!(
                "{} / {} / {}",
                mib(s.rss_before_bytes),
                mib(s.rss_after_bytes),
                mib(s.rss_end_bytes)
            ),
        );
        if let Some(b) = s.rss_per_connection_bytes {
            row(&mut t, "server RSS per connection", format!("{b:.0} B"));
        }
        if let Some(u) = s.cpu_us_per_hello_register {
            row(
                &mut t,
                "server CPU per hello+register",
                format!("{u:.1} µs"),
            );
        }
    }
    row(&mut t, "tester CPU", format!("{:.1} s", r.tester.cpu_secs));
    t.push_str("</table>");
    t
}

/// Ten bars per decade over the recorded range, in milliseconds.
fn bins(pairs: &[(u64, u64)]) -> Vec<(f64, f64, f64)> {
    let mut bars: Vec<(f64, f64, f64)> = Vec::new();
    for &(us, n) in pairs {
        let v = (us.max(1)) as f64 / 1000.0;
        let k = (v.log10() * 10.0).floor();
        let (lo, hi) = (10f64.powf(k / 10.0), 10f64.powf((k + 1.0) / 10.0));
        match bars.last_mut() {
            Some(b) if (b.0 - lo).abs() < lo * 1e-9 => b.2 += n as f64,
            _ => bars.push((lo, hi, n as f64)),
        }
    }
    bars
}

/// (1 / (1 - q), latency ms) from the pairs: the percentile curve on a "nines" axis.
fn percentile_curve(pairs: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let total: u64 = pairs.iter().map(|p| p.1).sum();
    let mut cum = 0u64;
    let mut out = vec![];
    for &(us, n) in pairs {
        let before = cum as f64 / total as f64;
        cum += n;
        // The bucket spans the quantiles from `before` to cum/total; the last one ends at the
        // last sample (1 - 1/total), not at infinity.
        let after = (cum as f64 / total as f64).min(1.0 - 1.0 / (total as f64 + 1.0));
        let ms = us.max(1) as f64 / 1000.0;
        out.push((1.0 / (1.0 - before), ms));
        out.push((1.0 / (1.0 - after), ms));
    }
    out
}

/// A "nines" axis tick (1 / (1 - q)) as its percentile: 10 -> 90%, 1000 -> 99.9%.
fn nines(v: f64) -> String {
    let decimals = (v.log10().round() as usize).saturating_sub(2);
    let p = format!("{:.*}", decimals, 100.0 * (1.0 - 1.0 / v));
    format!("{p}%")
}

fn latency_charts(r: &Report, latency: &[(u64, u64)], connect: &[(u64, u64)]) -> String {
    let ms_axis = Axis {
        label: "milliseconds",
        log: true,
        fmt: svg::trim,
    };
    // The connect scenario's main latency is the connect latency itself.
    let main_is_connect = r.latency_kind == "connect_hello_register";
    let main = if main_is_connect { connect } else { latency };
    let mut out = svg::histogram(
        "latency-histogram",
        &format!("Latency histogram ({})", r.latency_kind),
        &ms_axis,
        &bins(main),
        HIST,
    );
    let mut series = vec![Series {
        name: r.latency_kind,
        color: PCT_MAIN,
        points: percentile_curve(main),
    }];
    if !main_is_connect {
        series.push(Series {
            name: "connect_hello_register",
            color: PCT_CONNECT,
            points: percentile_curve(connect),
        });
    }
    let q_axis = Axis {
        label: "percentile",
        log: true,
        fmt: nines,
    };
    out.push_str(&svg::lines(
        "latency-percentiles",
        "Latency by percentile",
        &q_axis,
        &ms_axis,
        &series,
        "no latencies recorded",
    ));
    out
}

fn time_charts(tl: &Timeline) -> String {
    let secs = Axis {
        label: "seconds into the run",
        log: false,
        fmt: svg::trim,
    };
    let counts = |label| Axis {
        label,
        log: false,
        fmt: svg::count,
    };
    let mut conns = vec![Series {
        name: "open",
        color: OPEN,
        points: tl.series(|p| Some(p.open as f64)),
    }];
    if tl.points.iter().any(|p| p.failed > 0) {
        conns.push(Series {
            name: "failed (total)",
            color: FAILED,
            points: tl.series(|p| Some(p.failed as f64)),
        });
    }
    let mut out = svg::lines(
        "connections",
        "Connections",
        &secs,
        &counts("connections"),
        &conns,
        "no samples",
    );
    let mut rates = vec![
        Series {
            name: "set up",
            color: RATE_CONNECT,
            points: tl.rate(|p| Some(p.ok)),
        },
        Series {
            name: "pushes sent",
            color: RATE_SENT,
            points: tl.rate(|p| Some(p.sent)),
        },
        Series {
            name: "received",
            color: RATE_RECEIVED,
            points: tl.rate(|p| Some(p.received)),
        },
        Series {
            name: "cycles",
            color: RATE_CYCLES,
            points: tl.rate(|p| Some(p.cycles)),
        },
    ];
    // A counter that never moved is noise in the legend.
    rates.retain(|s| s.points.iter().any(|p| p.1 > 0.0));
    out.push_str(&svg::lines(
        "rates",
        "Rates",
        &secs,
        &counts("per second"),
        &rates,
        "no samples",
    ));
    let no_pid = "no server samples (run with --server-pid)";
    out.push_str(&svg::lines(
        "server-rss",
        "Server RSS",
        &secs,
        &Axis {
            label: "MiB",
            log: false,
            fmt: svg::trim,
        },
        &[Series {
            name: "VmRSS",
            color: RSS,
            points: tl.series(|p| p.rss_bytes.map(|b| b as f64 / 1_048_576.0)),
        }],
        no_pid,
    ));
    let cpu = tl.rate(|p| p.cpu_us);
    out.push_str(&svg::lines(
        "server-cpu",
        "Server CPU",
        &secs,
        &Axis {
            label: "% of one core",
            log: false,
            fmt: svg::trim,
        },
        &[Series {
            name: "user+system",
            color: CPU,
            points: cpu.into_iter().map(|(t, us)| (t, us / 10_000.0)).collect(),
        }],
        no_pid,
    ));
    out
}

fn all_figures(r: &Report) -> String {
    let mut rows = Vec::new();
    if let Ok(v) = serde_json::to_value(r) {
        flatten("", &v, &mut rows);
    }
    let mut t = String::from("<table>");
    for (k, v) in rows {
        row(&mut t, &k, v);
    }
    t.push_str("</table>");
    t
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| flatten(&key(k), v, out)),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let parts: Vec<String> = a.iter().map(scalar).collect();
            out.push((prefix.to_string(), parts.join(", ")));
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten(&key(&i.to_string()), v, out)),
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_percentiles() {
        let pairs = [(1000, 5), (1050, 5), (20_000, 1)];
        let b = bins(&pairs);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].2, 10.0);
        let c = percentile_curve(&pairs);
        assert_eq!(c.first(), Some(&(1.0, 1.0)));
        assert!(c.windows(2).all(|w| w[1].0 >= w[0].0), "{c:?}");
        assert_eq!(nines(100.0), "99%");
        assert_eq!(nines(1.0), "0%");
        assert_eq!(nines(100_000.0), "99.999%");
    }
}
