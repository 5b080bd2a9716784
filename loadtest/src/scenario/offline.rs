//! `offline`: set up N devices, close them, PUT one version to each channel (202 expected),
//! reconnect each with its uaid and channelIDs, and measure hello -> flushed notification.

use std::time::{Duration, Instant};

use crate::client::Mode;
use crate::control::Point;
use crate::driver::{Driver, LatencyRef, PutResult};

use super::{close_all, connect_list, open_clients, Pacer};

/// Shortest wait for every PUT to be answered.
const MIN_PUT_WAIT: Duration = Duration::from_secs(30);

pub fn run(d: &mut Driver) {
    let all: Vec<usize> = (0..d.slots()).collect();
    d.barrier(Point::Start);
    d.tally.connect_secs = connect_list(d, &all, Mode::Fresh);
    d.barrier(Point::Connected);
    let devices = open_clients(d);
    close_all(d);
    put_all(d, &devices);
    for &i in &devices {
        d.reset_client(i);
    }
    d.latency_ref = LatencyRef::HelloSent;
    connect_list(d, &devices, Mode::Resume);
    d.begin("flush", super::timed(d.cfg.grace));
    let until = Instant::now() + Duration::from_secs_f64(d.cfg.grace);
    d.run_until(until, Duration::from_millis(5), |d| {
        d.tracker.undelivered() == 0
    });
    d.barrier(Point::End);
    close_all(d);
}

/// PUTs one version to every channel of `devices`, and waits for every answer.
fn put_all(d: &mut Driver, devices: &[usize]) {
    d.begin("put", crate::driver::Step::Open);
    d.open_http(Duration::from_secs(2));
    let targets: Vec<(usize, usize)> = devices
        .iter()
        .flat_map(|&i| (0..d.channel_count(i)).map(move |c| (i, c)))
        .collect();
    let start = Instant::now();
    let wait = MIN_PUT_WAIT.max(Duration::from_secs_f64(d.cfg.timeout));
    let mut pacer = Pacer::new(d.cfg.rate);
    let mut next = 0;
    d.run_until(start + wait, Duration::from_millis(1), |d| {
        pacer.refill(Instant::now());
        while next < targets.len() && pacer.take() {
            let (c, chan) = targets[next];
            match d.put(c, chan) {
                PutResult::NoRoom => break,
                PutResult::Sent | PutResult::NoEndpoint => next += 1,
            }
        }
        next >= targets.len() && d.tracker.unanswered() == 0
    });
    d.tally.put_secs = start.elapsed().as_secs_f64();
}
