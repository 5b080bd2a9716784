//! `connect`: open N devices (hello + K registers each), hold them, check they still answer a
//! ping, close them.

use std::time::{Duration, Instant};

use crate::client::{Mode, Phase};
use crate::control::Point;
use crate::driver::Driver;

use super::{close_all, connect_list, hold, open_clients};

/// Longest wait for the end-of-hold pings in a small run, in seconds (scaled with the run's
/// size; a second more than a client's own ping timeout, so each has timed out by then).
const PING_WAIT: f64 = 6.0;

pub fn run(d: &mut Driver) {
    let all: Vec<usize> = (0..d.slots()).collect();
    d.barrier(Point::Start);
    d.tally.connect_secs = connect_list(d, &all, Mode::Fresh);
    d.barrier(Point::Connected);
    if !open_clients(d).is_empty() {
        d.phase = "hold";
        let secs = d.cfg.duration;
        hold(d, secs);
        ping_all(d);
    }
    d.barrier(Point::End);
    close_all(d);
}

/// Sends `{}` on every open socket and waits for the `{}` answers.
fn ping_all(d: &mut Driver) {
    d.begin("ping", crate::driver::Step::Open);
    for i in open_clients(d) {
        d.ping_client(i);
    }
    let until = Instant::now() + d.cfg.end_wait(PING_WAIT);
    d.run_until(until, Duration::from_millis(10), |d| {
        d.count_where(|p| p == Phase::Pinging) == 0
    });
}
