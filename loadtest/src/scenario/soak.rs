//! `churn --devices N`: churn over a fixed population of devices, with app-server PUTs and a
//! check that every accepted version is delivered, in rounds (the soak test, `make soak`).
//!
//! * Setup: the N devices are created once (hello with an empty uaid, --channels registers), in
//!   batches of at most --connections sockets, and closed. After --settle seconds the server is
//!   sampled (barrier Connected: the baseline).
//! * Each round, for --duration seconds: offline devices are reconnected at --rate per second
//!   (hello with their uaid and channelIDs, which flushes what is stored for them) while fewer
//!   than --connections are online or being set up. Each stays online for a random dwell
//!   (uniform in 0..2×--dwell), replaces one of its channels with probability --rotate
//!   (unregister, register a fresh one), then closes with a close frame, or with probability
//!   --drop just drops its socket. Meanwhile PUTs go at --put-rate to random channels of any
//!   device, online (200 expected) or not (202), at most one in flight per channel.
//! * The check ending each round: PUT answers and cycles in flight are awaited, every device is
//!   closed, then reconnected (in batches) so that it receives what is stored for it. A channel
//!   whose highest version answered 200/202 never arrived (nor a newer one: SimplePush versions
//!   overwrite) is lost; owed channels of a device that could not reconnect are unverified.
//!   Every device is closed again, --settle seconds pass, and the server is sampled (barrier
//!   Round(k)). Rounds are identical, so server memory that keeps growing from round to round
//!   is a leak, while growth in the first round alone is warm-up (allocator, table capacity).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::client::{Mode, Phase};
use crate::control::Point;
use crate::driver::{Driver, OnUp, PutResult};

use super::{close_all, connect_list, hold, Pacer};

/// Random picks tried per PUT before giving up for this step.
const PICK_TRIES: usize = 16;
/// A device whose dwell ends mid-rotation is looked at again after this.
const ROTATE_RETRY: Duration = Duration::from_millis(50);
/// Longest wait at the end of a round for PUT answers and cycles in flight.
const FINISH_WAIT: Duration = Duration::from_secs(30);

pub fn run(d: &mut Driver) {
    d.barrier(Point::Start);
    let pop = setup(d);
    d.tally.population = pop.len() as u64;
    settle(d);
    d.barrier(Point::Connected);
    for round in 1..=d.cfg.rounds {
        let secs = churn(d, &pop);
        finish_cycles(d);
        check(d, &pop);
        d.tally.end_round(secs);
        settle(d);
        d.barrier(Point::Round(round));
    }
    d.barrier(Point::End);
}

/// Creates every device (in batches of --connections) and closes it; returns those set up.
fn setup(d: &mut Driver) -> Vec<usize> {
    let start = Instant::now();
    let all: Vec<usize> = (0..d.slots()).collect();
    let batch = (d.cfg.connections as usize).max(1);
    for chunk in all.chunks(batch) {
        connect_list(d, chunk, Mode::Fresh);
        close_all(d);
    }
    d.tally.connect_secs = start.elapsed().as_secs_f64();
    all.into_iter()
        .filter(|&i| d.has_uaid(i) && d.channels(i).iter().all(|c| c.endpoint.is_some()))
        .collect()
}

fn settle(d: &mut Driver) {
    d.phase = "settle";
    let secs = d.cfg.settle;
    hold(d, secs);
}

/// One round of churn; returns its duration in seconds.
fn churn(d: &mut Driver, pop: &[usize]) -> f64 {
    d.begin("churn", super::timed(d.cfg.duration));
    d.on_up = OnUp::Report;
    d.finished.clear();
    d.came_up.clear();
    for &i in pop {
        d.reset_client(i);
    }
    let put_rate = d.cfg.put_rate;
    if put_rate > 0.0 && !pop.is_empty() {
        d.open_http(Duration::from_secs(2));
    }
    let mut offline: Vec<usize> = pop.to_vec();
    // Each start of a device bumps its generation, so a stale dwell entry is recognised.
    let mut gen = vec![0u32; d.slots()];
    let mut dwell: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::new();
    let mut cycles = Pacer::new(d.cfg.rate);
    let mut puts = Pacer::new(put_rate);
    let cap = d.cfg.connections as usize;
    let max_setup = d.cfg.max_handshakes as usize;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(d.cfg.duration);
    d.run_until(until, Duration::from_millis(1), |d| {
        let now = Instant::now();
        for idx in std::mem::take(&mut d.finished) {
            d.reset_client(idx);
            offline.push(idx);
        }
        for idx in std::mem::take(&mut d.came_up) {
            if d.phase_of(idx).is_open() {
                maybe_rotate(d, idx);
                let secs = d.cfg.dwell * 2.0 * d.rng.unit();
                dwell.push(Reverse((
                    now + Duration::from_secs_f64(secs),
                    idx,
                    gen[idx],
                )));
            }
        }
        while let Some(Reverse((at, idx, g))) = dwell.peek().copied() {
            if at > now {
                break;
            }
            dwell.pop();
            if g != gen[idx] {
                continue;
            }
            match d.phase_of(idx) {
                Phase::Rotating => dwell.push(Reverse((now + ROTATE_RETRY, idx, g))),
                p if p.is_open() => end_cycle(d, idx, &mut offline),
                _ => {}
            }
        }
        cycles.refill(now);
        while !offline.is_empty()
            && pop.len() - offline.len() < cap
            && d.setting_up < max_setup
            && cycles.take()
        {
            let k = d.rng.below(offline.len());
            let idx = offline.swap_remove(k);
            gen[idx] = gen[idx].wrapping_add(1);
            d.start_client(idx, Mode::Resume);
        }
        if put_rate > 0.0 {
            puts.refill(now);
            while puts.take() {
                if !put_any(d, pop) {
                    break;
                }
            }
        }
        false
    });
    let secs = start.elapsed().as_secs_f64();
    d.tally.churn_secs += secs;
    d.tally.put_secs += secs;
    secs
}

/// With probability --rotate, replaces one channel of the device that just came up, if that
/// channel has no PUT in flight and nothing owed (so its unregister settles its book).
fn maybe_rotate(d: &mut Driver, idx: usize) {
    if d.cfg.rotate <= 0.0 || d.rng.unit() >= d.cfg.rotate {
        return;
    }
    let n = d.channel_count(idx);
    if n == 0 {
        return;
    }
    let chan = d.rng.below(n);
    let ch = &d.channels(idx)[chan];
    if ch.inflight || ch.owed() {
        return;
    }
    d.rotate_client(idx, chan);
}

/// Ends an online device's cycle: a close frame, or (--drop) the socket just dropped.
fn end_cycle(d: &mut Driver, idx: usize, offline: &mut Vec<usize>) {
    if d.rng.unit() < d.cfg.drop {
        d.drop_client(idx);
        d.tally.drops += 1;
        d.tally.cycles_ok += 1;
        d.reset_client(idx);
        offline.push(idx);
    } else {
        d.close_client(idx);
    }
}

/// One PUT to a random channel of a random device (online or not) that has an endpoint, no
/// PUT in flight and is not being unregistered; false if none could be sent now.
fn put_any(d: &mut Driver, pop: &[usize]) -> bool {
    if pop.is_empty() {
        return false;
    }
    for _ in 0..PICK_TRIES {
        let idx = pop[d.rng.below(pop.len())];
        let n = d.channel_count(idx);
        if n == 0 {
            continue;
        }
        let chan = d.rng.below(n);
        let ch = &d.channels(idx)[chan];
        if ch.inflight || ch.retiring || ch.endpoint.is_none() {
            continue;
        }
        match d.put(idx, chan) {
            PutResult::Sent => return true,
            PutResult::NoRoom => return false,
            PutResult::NoEndpoint => {}
        }
    }
    false
}

/// End of a round's churn: waits for PUT answers, setups and rotations in flight, then closes
/// every device (each close ends its cycle).
fn finish_cycles(d: &mut Driver) {
    d.begin("finish", crate::driver::Step::Open);
    let until = Instant::now() + FINISH_WAIT;
    d.run_until(until, Duration::from_millis(5), |d| {
        d.came_up.clear();
        d.tracker.unanswered() == 0
            && d.setting_up == 0
            && d.count_where(|p| p == Phase::Rotating) == 0
    });
    close_all(d);
    d.came_up.clear();
    d.on_up = OnUp::Hold;
}

/// Reconnects every device (in batches of --connections) so that it receives what is stored for
/// it, and counts the channels still owed: lost (device reconnected) or unverified (it could not).
fn check(d: &mut Driver, pop: &[usize]) {
    d.on_up = OnUp::Hold;
    for &i in pop {
        d.reset_client(i);
    }
    let batch = (d.cfg.connections as usize).max(1);
    for chunk in pop.chunks(batch) {
        connect_list(d, chunk, Mode::Resume);
        d.begin("check", crate::driver::Step::Open);
        let until = Instant::now() + Duration::from_secs_f64(d.cfg.grace);
        d.run_until(until, Duration::from_millis(5), |d| {
            chunk
                .iter()
                .all(|&i| !d.phase_of(i).is_open() || !d.channels(i).iter().any(|c| c.owed()))
        });
        for &i in chunk {
            let open = d.phase_of(i).is_open();
            let (mut lost, mut unverified) = (0, 0);
            for ch in d.channels_mut(i) {
                if ch.owed() {
                    if open {
                        lost += 1;
                    } else {
                        unverified += 1;
                    }
                    // Written off, so that the next round does not count it again.
                    ch.received = ch.acked;
                }
            }
            d.tally.lost += lost;
            d.tally.unverified += unverified;
        }
        close_all(d);
    }
}
