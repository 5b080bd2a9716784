//! The live progress line (stderr, once a second). Children send their snapshots to the parent,
//! which adds them up and prints one line for the whole run.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Counters at one moment; they add up across processes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub phase: String,
    pub ok: u64,
    pub failed: u64,
    pub open: u64,
    pub setting_up: u64,
    pub sent: u64,
    pub received: u64,
    pub cycles: u64,
}

impl Snapshot {
    pub fn add(&mut self, o: &Snapshot) {
        if self.phase.is_empty() {
            self.phase = o.phase.clone();
        } else if self.phase != o.phase && !o.phase.is_empty() && !self.phase.contains(&o.phase) {
            self.phase = format!("{}/{}", self.phase, o.phase);
        }
        self.ok += o.ok;
        self.failed += o.failed;
        self.open += o.open;
        self.setting_up += o.setting_up;
        self.sent += o.sent;
        self.received += o.received;
        self.cycles += o.cycles;
    }
}

pub struct Printer {
    enabled: bool,
    tty: bool,
    start: Instant,
    last: Option<(Instant, Snapshot)>,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        now.saturating_sub(before) as f64 / secs
    }
}

impl Printer {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
        }
    }

    pub fn print(&mut self, s: &Snapshot) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let (secs, prev) = match &self.last {
            Some((t, p)) => (now.duration_since(*t).as_secs_f64(), p.clone()),
            None => (
                now.duration_since(self.start).as_secs_f64(),
                Snapshot::default(),
            ),
        };
        let line = format!(
            "[{:>5.0}s {:<9}] conns ok {} failed {} open {} setup {} ({:.0}/s) | put {} ({:.0}/s) recv {} ({:.0}/s) | cycles {} ({:.0}/s)",
            now.duration_since(self.start).as_secs_f64(),
            s.phase,
            s.ok,
            s.failed,
            s.open,
            s.setting_up,
            rate(s.ok, prev.ok, secs),
            s.sent,
            rate(s.sent, prev.sent, secs),
            s.received,
            rate(s.received, prev.received, secs),
            s.cycles,
            rate(s.cycles, prev.cycles, secs),
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.last = Some((now, s.clone()));
    }

    /// Ends the live line before other output.
    pub fn done(&mut self) {
        if self.enabled && self.tty && self.last.is_some() {
            eprintln!();
        }
        self.last = None;
    }
}
