//! The run over time, for the HTML report: once a second, the tester's counters (all processes
//! together) and, with --server-pid, the server's RSS and CPU time. Kept only with --html.

use std::time::Instant;

use crate::procstat;
use crate::progress::Snapshot;

/// Most points kept (a day at one a second); later ones are dropped.
const MAX_POINTS: usize = 86_400;

/// One second of the run.
#[derive(Clone, Debug)]
pub struct Point {
    /// Seconds since the run started.
    pub t: f64,
    pub open: u64,
    pub ok: u64,
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
    pub cycles: u64,
    pub rss_bytes: Option<u64>,
    pub cpu_us: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Timeline {
    /// None: not recording (no --html).
    start: Option<Instant>,
    pid: Option<u32>,
    pub points: Vec<Point>,
}

impl Timeline {
    /// Recording from now (a first point of zeros), sampling `pid` too if given.
    pub fn recording(pid: Option<u32>) -> Self {
        let mut t = Self {
            start: Some(Instant::now()),
            pid,
            points: Vec::new(),
        };
        t.record(&Snapshot::default());
        t
    }

    pub fn record(&mut self, s: &Snapshot) {
        let Some(start) = self.start else { return };
        if self.points.len() >= MAX_POINTS {
            return;
        }
        let server = self.pid.and_then(|pid| procstat::sample(pid).ok());
        self.points.push(Point {
            t: start.elapsed().as_secs_f64(),
            open: s.open,
            ok: s.ok,
            failed: s.failed,
            sent: s.sent,
            received: s.received,
            cycles: s.cycles,
            rss_bytes: server.map(|x| x.rss_bytes),
            cpu_us: server.map(|x| x.cpu_us),
        });
    }

    /// Per-second rates of a counter between consecutive points.
    pub fn rate(&self, f: impl Fn(&Point) -> Option<u64>) -> Vec<(f64, f64)> {
        self.points
            .windows(2)
            .filter_map(|w| {
                let dt = w[1].t - w[0].t;
                let (a, b) = (f(&w[0])?, f(&w[1])?);
                (dt > 0.0).then(|| (w[1].t, b.saturating_sub(a) as f64 / dt))
            })
            .collect()
    }

    /// A quantity at each point that has it.
    pub fn series(&self, f: impl Fn(&Point) -> Option<f64>) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.t, f(p)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_between_points() {
        let mut t = Timeline::default();
        t.record(&Snapshot::default());
        assert!(t.points.is_empty(), "not recording");
        let mut t = Timeline::recording(Some(std::process::id()));
        assert_eq!(t.points.len(), 1);
        t.points.clear();
        for (i, sent) in [0u64, 100, 300].iter().enumerate() {
            let snap = Snapshot {
                sent: *sent,
                ..Snapshot::default()
            };
            t.record(&snap);
            t.points[i].t = i as f64;
        }
        assert_eq!(t.rate(|p| Some(p.sent)), [(1.0, 100.0), (2.0, 200.0)]);
        assert!(t.points.iter().all(|p| p.rss_bytes.is_some()));
        assert_eq!(t.series(|p| Some(p.sent as f64)).len(), 3);
    }
}
