//! `churn`: connect / hello / register / close cycles started at --rate for --duration, with at
//! most --connections in flight; latency is the whole cycle.

use std::time::{Duration, Instant};

use crate::client::Mode;
use crate::control::Point;
use crate::driver::{Driver, OnUp};

use super::{close_all, Pacer};

/// Extra time after the last cycle starts for the cycles in flight to end.
const DRAIN_EXTRA: Duration = Duration::from_secs(5);

pub fn run(d: &mut Driver) {
    let slots = d.slots();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    d.barrier(Point::Start);
    d.on_up = OnUp::Close;
    d.begin("churn", super::timed(d.cfg.duration));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(d.cfg.duration);
    let mut pacer = Pacer::new(d.cfg.rate);
    let max_setup = d.cfg.max_handshakes as usize;
    d.run_until(until, Duration::from_millis(1), |d| {
        reclaim(d, &mut free);
        pacer.refill(Instant::now());
        while !free.is_empty() && d.setting_up < max_setup && pacer.take() {
            if let Some(slot) = free.pop() {
                d.start_client(slot, Mode::Fresh);
            }
        }
        false
    });
    d.tally.churn_secs = start.elapsed().as_secs_f64();
    d.begin("drain", crate::driver::Step::Open);
    let drain_until = Instant::now() + Duration::from_secs_f64(d.cfg.timeout) + DRAIN_EXTRA;
    d.run_until(drain_until, Duration::from_millis(5), |d| {
        reclaim(d, &mut free);
        free.len() == slots
    });
    d.barrier(Point::End);
    close_all(d);
}

/// Returns the slots of finished cycles to the free list.
fn reclaim(d: &mut Driver, free: &mut Vec<usize>) {
    for idx in std::mem::take(&mut d.finished) {
        d.reset_client(idx);
        free.push(idx);
    }
}
