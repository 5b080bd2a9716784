//! Live progress on stderr: on a terminal, a progress bar (indicatif) for the current phase with
//! the run's elapsed time and the phase's ETA, above the status line; otherwise the status line
//! once a second. Children send their snapshots to the parent, which adds them up and shows one
//! for the whole run.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// The current phase's progress: `done` of `total` (devices, or milliseconds of a timed
    /// phase); total 0 = not measurable (waiting for answers). Sums across processes keep the
    /// ratio.
    #[serde(default)]
    pub done: u64,
    #[serde(default)]
    pub total: u64,
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
        self.done += o.done;
        self.total += o.total;
    }
}

/// Where progress goes.
enum Sink {
    Off,
    /// A line per second (not a terminal).
    Lines,
    /// A bar redrawn in place (a terminal), with the phase it shows.
    Bar(ProgressBar, String),
}

pub struct Printer {
    sink: Sink,
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

const BAR: &str =
    "{elapsed_precise} {prefix:<9} [{bar:28.cyan/blue}] {percent:>3}% eta {eta:<4}\n{wide_msg}";
const NO_BAR: &str = "{elapsed_precise} {prefix:<9} {spinner}\n{wide_msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Printer {
    pub fn new(enabled: bool) -> Self {
        let sink = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Sink::Off,
            (true, false) => Sink::Lines,
            (true, true) => {
                let pb = bar(ProgressDrawTarget::stderr_with_hz(4));
                // The clock and spinner move between the once-a-second updates.
                pb.enable_steady_tick(Duration::from_millis(250));
                Sink::Bar(pb, String::new())
            }
        };
        Self {
            sink,
            start: Instant::now(),
            last: None,
        }
    }

    /// A bar drawn on `target` (tests draw into a terminal in memory).
    #[cfg(test)]
    fn on(target: ProgressDrawTarget) -> Self {
        Self {
            sink: Sink::Bar(bar(target), String::new()),
            start: Instant::now(),
            last: None,
        }
    }

    pub fn print(&mut self, s: &Snapshot) {
        if matches!(self.sink, Sink::Off) {
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
        let status = format!(
            "conns ok {} failed {} open {} setup {} ({:.0}/s) | put {} ({:.0}/s) recv {} ({:.0}/s) | cycles {} ({:.0}/s)",
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
        let elapsed = now.duration_since(self.start).as_secs_f64();
        match &mut self.sink {
            Sink::Off => {}
            Sink::Lines => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "[{elapsed:>5.0}s {:<9}] {status}", s.phase);
                let _ = err.flush();
            }
            Sink::Bar(pb, shown) => show(pb, shown, s, status),
        }
        self.last = Some((now, s.clone()));
    }

    /// Ends the live display before other output (the bar's last state stays on screen).
    pub fn done(&mut self) {
        if let Sink::Bar(pb, _) = &self.sink {
            pb.abandon();
            // indicatif leaves the cursor after the last line it drew.
            if !pb.is_hidden() {
                eprintln!();
            }
        }
        self.last = None;
    }
}

fn bar(target: ProgressDrawTarget) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(0), target);
    pb.set_style(style(NO_BAR));
    pb
}

/// Updates the bar: a new phase restarts its length and ETA (elapsed is the whole run's).
fn show(pb: &ProgressBar, shown: &mut String, s: &Snapshot, status: String) {
    if *shown != s.phase {
        *shown = s.phase.clone();
        pb.set_prefix(s.phase.clone());
        pb.set_style(style(if s.total > 0 { BAR } else { NO_BAR }));
        pb.set_length(s.total.max(1));
        pb.set_position(0);
        pb.reset_eta();
    }
    if s.total > 0 {
        pb.set_length(s.total);
        pb.set_position(s.done.min(s.total));
    } else {
        pb.tick();
    }
    pb.set_message(status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    #[test]
    fn a_terminal_gets_a_bar_with_elapsed_time_and_eta() {
        let term = InMemoryTerm::new(4, 120);
        let mut p = Printer::on(ProgressDrawTarget::term_like(Box::new(term.clone())));
        let mut s = Snapshot {
            phase: "connect".into(),
            total: 1000,
            done: 0,
            ..Snapshot::default()
        };
        p.print(&s);
        std::thread::sleep(Duration::from_millis(300));
        s.done = 500;
        s.ok = 500;
        p.print(&s);
        let screen = term.contents();
        assert!(screen.contains("00:00:00 connect"), "{screen}");
        assert!(screen.contains(" 50% eta "), "{screen}");
        assert!(screen.contains("conns ok 500 failed 0"), "{screen}");
        // A phase without a measurable end: no bar, the status still shown.
        s.phase = "grace".into();
        s.total = 0;
        p.print(&s);
        let screen = term.contents();
        assert!(
            screen.contains("grace") && !screen.contains("eta"),
            "{screen}"
        );
        p.done();
    }
}
