//! The scenarios, and the phases they share: connecting a set of devices, closing them.

mod churn;
mod connect;
mod notify;
mod offline;
mod soak;

use std::io;
use std::time::{Duration, Instant};

use crate::cli::{Config, Scenario};
use crate::client::{Mode, Phase};
use crate::control::Control;
use crate::driver::{Driver, Step};
use crate::tally::Tally;

/// Longest wait for every close handshake to finish in a small run, in seconds (scaled with
/// the run's size).
const CLOSE_WAIT: f64 = 5.0;

/// Runs `cfg`'s scenario in this process.
pub fn run(cfg: Config, control: Control) -> io::Result<(Tally, Control)> {
    // Churn with a fixed population keeps one client per device, most of them offline.
    let slots = if cfg.devices > 0 {
        cfg.devices
    } else {
        cfg.connections
    } as usize;
    let scenario = cfg.scenario;
    let mut d = Driver::new(cfg, control, slots)?;
    match scenario {
        Scenario::Connect => connect::run(&mut d),
        // The same phases; the driver pushes WebPush messages instead of PUTs.
        Scenario::Notify | Scenario::Webpush => notify::run(&mut d),
        Scenario::Churn if d.cfg.devices > 0 => soak::run(&mut d),
        Scenario::Churn => churn::run(&mut d),
        Scenario::Offline => offline::run(&mut d),
    }
    Ok(d.finish())
}

/// Paces actions at `rate` per second (token bucket holding at most 50 ms of them, so a
/// stall is not followed by a burst). A rate of 0 means no limit.
pub struct Pacer {
    rate: f64,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: 1.0,
            cap: (rate * 0.05).max(1.0),
            last: Instant::now(),
        }
    }

    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + self.rate * dt).min(self.cap);
    }

    pub fn take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sets up the clients in `list` (at --ramp, at most --max-handshakes at once); returns the
/// phase's duration in seconds. Clients not set up by the end are counted failed.
pub fn connect_list(d: &mut Driver, list: &[usize], mode: Mode) -> f64 {
    let phase = if mode == Mode::Fresh {
        "connect"
    } else {
        "reconnect"
    };
    let step = d.devices_step(list.len());
    d.begin(phase, step);
    let start = Instant::now();
    let mut pacer = Pacer::new(d.cfg.ramp);
    let max_inflight = d.cfg.max_handshakes as usize;
    let mut next = 0;
    let far = d.hard_deadline;
    d.run_until(far, Duration::from_millis(2), |d| {
        pacer.refill(Instant::now());
        while next < list.len() && d.setting_up < max_inflight && !d.stop && pacer.take() {
            d.start_client(list[next], mode);
            next += 1;
        }
        next >= list.len() && d.setting_up == 0
    });
    for &i in list {
        if d.phase_of(i).in_setup() {
            d.close_client(i);
        }
    }
    let not_started = (list.len() - next) as u64;
    if not_started > 0 {
        match mode {
            Mode::Fresh => d.tally.conn_failed += not_started,
            Mode::Resume => d.tally.reconnect_failed += not_started,
        }
        *d.tally.failures.entry("not_started".into()).or_default() += not_started;
    }
    d.finished.clear();
    start.elapsed().as_secs_f64()
}

/// Clients 0..n that are set up and open.
pub fn open_clients(d: &Driver) -> Vec<usize> {
    d.clients_where(Phase::is_open)
}

/// Closes every client (close frame, wait for the server's close and FIN), for at most
/// CLOSE_WAIT; stragglers are dropped when the run ends.
pub fn close_all(d: &mut Driver) {
    d.begin("close", Step::Open);
    for i in d.clients_where(|p| !settled(p)) {
        d.close_client(i);
    }
    let until = Instant::now() + d.cfg.end_wait(CLOSE_WAIT);
    d.run_until(until, Duration::from_millis(10), |d| {
        d.count_where(|p| !settled(p)) == 0
    });
    d.finished.clear();
}

/// A phase of `secs` seconds from now.
pub fn timed(secs: f64) -> Step {
    Step::Timed {
        start: Instant::now(),
        secs,
    }
}

fn settled(p: Phase) -> bool {
    matches!(p, Phase::Idle | Phase::Done)
}

/// Lets events flow for `secs` seconds.
pub fn hold(d: &mut Driver, secs: f64) {
    d.step = timed(secs);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    d.run_until(until, Duration::from_millis(100), |d| {
        d.finished.clear();
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_holds_the_rate_and_no_burst() {
        let mut p = Pacer::new(1000.0);
        let start = p.last;
        let mut taken = 0;
        for ms in 1..=100 {
            p.refill(start + Duration::from_millis(ms));
            while p.take() {
                taken += 1;
            }
        }
        assert!((95..=102).contains(&taken), "{taken}");
        // A one-second stall allows at most 50 ms of catch-up.
        p.refill(start + Duration::from_millis(1100));
        let mut burst = 0;
        while p.take() {
            burst += 1;
        }
        assert_eq!(burst, 50);
        let mut unlimited = Pacer::new(0.0);
        assert!((0..1000).all(|_| unlimited.take()));
    }
}
