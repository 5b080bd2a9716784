//! `notify`: hold N devices, PUT versions to random channels at --rate for --duration, measure
//! PUT -> notification latency, then wait --grace for stragglers and count the lost.

use std::time::{Duration, Instant};

use crate::client::Mode;
use crate::control::Point;
use crate::driver::{Driver, PutResult};

use super::{close_all, connect_list, open_clients, Pacer};

/// Random picks tried per PUT before giving up for this step (devices dropped, no endpoint).
const PICK_TRIES: usize = 16;

pub fn run(d: &mut Driver) {
    let all: Vec<usize> = (0..d.slots()).collect();
    d.barrier(Point::Start);
    d.tally.connect_secs = connect_list(d, &all, Mode::Fresh);
    d.barrier(Point::Connected);
    let targets = open_clients(d);
    if !targets.is_empty() {
        put_phase(d, &targets);
    }
    grace(d);
    d.barrier(Point::End);
    close_all(d);
}

fn put_phase(d: &mut Driver, targets: &[usize]) {
    d.begin("notify", super::timed(d.cfg.duration));
    d.open_http(Duration::from_secs(2));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(d.cfg.duration);
    let mut pacer = Pacer::new(d.cfg.rate);
    let channels = d.cfg.channels as usize;
    d.run_until(until, Duration::from_millis(1), |d| {
        pacer.refill(Instant::now());
        while pacer.take() {
            if !put_random(d, targets, channels) {
                break;
            }
        }
        d.finished.clear();
        false
    });
    d.tally.put_secs = start.elapsed().as_secs_f64();
}

/// One PUT to a random open device's random channel; false if none could be sent now.
fn put_random(d: &mut Driver, targets: &[usize], channels: usize) -> bool {
    for _ in 0..PICK_TRIES {
        let c = targets[d.rng.below(targets.len())];
        if !d.phase_of(c).is_open() {
            continue;
        }
        let chan = d.rng.below(channels);
        // One PUT in flight per channel, as an app server that cares about its versions sends
        // them: SimplePush keeps the newest, so of two sent together the older may rightly
        // never be delivered (and would be counted lost).
        if d.put_in_flight(c, chan) {
            continue;
        }
        match d.put(c, chan) {
            PutResult::Sent => return true,
            PutResult::NoRoom => return false,
            PutResult::NoEndpoint => {}
        }
    }
    false
}

/// Waits up to --grace for answers and notifications still outstanding.
fn grace(d: &mut Driver) {
    d.begin("grace", super::timed(d.cfg.grace));
    let until = Instant::now() + Duration::from_secs_f64(d.cfg.grace);
    d.run_until(until, Duration::from_millis(5), |d| {
        d.tracker.unanswered() == 0 && d.tracker.undelivered() == 0
    });
}
