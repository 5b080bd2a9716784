//! The event loop: one mio `Poll` owning every device socket, the HTTP pools and (in a child)
//! stdin. Scenarios drive it with [`Driver::run_until`], which pumps events until their step
//! says done or a deadline passes; every wait is capped by the run's hard deadline.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::addrs::{SourceAddrs, SourceCycle};
use crate::cli::Config;
use crate::client::{io_kind, Channel, Client, Ctx, Mode, Out, Phase, Shared};
use crate::control::{self, ChildLink, ChildMsg, Control, Point};
use crate::http::{HttpOut, Pool};
use crate::net;
use crate::procstat;
use crate::progress::{Printer, Snapshot};
use crate::rng::Rng;
use crate::rsslog::RssLog;
use crate::tally::{Hist, Tally, TargetTally};
use crate::target::{EndpointBase, Origin, WsTarget};
use crate::tls::TlsSettings;
use crate::tracker::Tracker;

mod push;
mod wp;

pub use wp::WebPushState;

/// Tokens: clients use their index; HTTP pool p connection i uses HTTP_BASE + p * POOL_SPAN + i.
const HTTP_BASE: usize = 1 << 40;
const POOL_SPAN: usize = 1 << 16;
const MAX_POOLS: usize = 64;
const STDIN: Token = Token(usize::MAX - 1);
const SWEEP_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A client's wait for its ping's answer and for its close handshake, in seconds, for a small
/// run (scaled with the run's size by `Config::end_wait`).
const PING_TIMEOUT: f64 = 5.0;
const CLOSE_TIMEOUT: f64 = 3.0;

/// What a notification's latency is measured from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LatencyRef {
    PutSent,
    HelloSent,
}

/// What a device does once set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnUp {
    Hold,
    /// Close at once (churn): a clean close completes a cycle.
    Close,
    /// Report it in `came_up` (churn with --devices decides how long it stays): a close or a
    /// failed setup ends a cycle; the connect latency of a resumed hello is recorded.
    Report,
}

/// How far the current phase is, for the progress bar.
#[derive(Clone, Copy)]
pub enum Step {
    /// No measurable end (waiting for answers).
    Open,
    /// `total` devices to set up; `base` = ok + failed when the phase began.
    Devices { base: u64, total: u64 },
    /// A timed phase of `secs` from `start`.
    Timed { start: Instant, secs: f64 },
}

/// A client's phase and deadline, kept apart from the (large) clients so that sweeping and
/// counting thousands of them touches a few hundred kilobytes, not megabytes: a full scan of the
/// clients themselves stalls the loop for milliseconds and shows up in the latency tail.
#[derive(Clone, Copy)]
struct Mark {
    /// Milliseconds since the driver started, rounded up; 0 = no deadline.
    due_ms: u32,
    phase: Phase,
}

pub enum PutResult {
    Sent,
    /// Every HTTP connection is full (or reconnecting).
    NoRoom,
    /// The channel has no usable endpoint.
    NoEndpoint,
}

pub struct Driver {
    pub cfg: Config,
    poll: Poll,
    events: Events,
    ready: Vec<Token>,
    clients: Vec<Client>,
    marks: Vec<Mark>,
    shared: Shared,
    /// The --ws-url addresses; client `idx` uses `targets[(first_device + idx) % len]`.
    targets: Vec<SocketAddr>,
    per_target: Vec<TargetTally>,
    src: SourceCycle,
    pools: Vec<Pool>,
    /// Pool by endpoint origin (each distinct origin is resolved once, when first seen).
    pool_keys: HashMap<Origin, u16>,
    /// Origins that could not be resolved or are refused: not looked up again.
    bad_origins: HashMap<Origin, String>,
    tls: TlsSettings,
    /// The webpush scenario: the app server's key and the delivery book.
    wp: Option<WebPushState>,
    endpoint_bases: Vec<EndpointBase>,
    endpoint_error_shown: bool,
    pub tracker: Tracker,
    pub rng: Rng,
    pub control: Control,
    printer: Printer,
    pub tally: Tally,
    connect_hist: Hist,
    latency_hist: Hist,
    pub phase: &'static str,
    /// How far `phase` is (the progress bar).
    pub step: Step,
    started: Instant,
    pub hard_deadline: Instant,
    /// Devices between connect and set up.
    pub setting_up: usize,
    pub latency_ref: LatencyRef,
    pub on_up: OnUp,
    /// Clients that reached Done since the scenario last looked.
    pub finished: Vec<usize>,
    /// Clients set up since the scenario last looked (OnUp::Report).
    pub came_up: Vec<usize>,
    /// Churn with --devices: keep the per-channel delivery books.
    books: bool,
    rss_log: Option<RssLog>,
    outs: Vec<Out>,
    http_outs: Vec<HttpOut>,
    last_sweep: Instant,
    last_progress: Instant,
    /// The hard deadline passed, or the parent went away: wind down now.
    pub stop: bool,
}

impl Driver {
    pub fn new(cfg: Config, control: Control, slots: usize) -> io::Result<Self> {
        let now = Instant::now();
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let parsed = cfg
            .ws_urls
            .iter()
            .map(|u| WsTarget::parse(u, cfg.allow_remote))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let mut tls = TlsSettings::new(cfg.ca.as_deref(), cfg.insecure);
        let ws_tls = parsed
            .iter()
            .map(|t| tls.target(&t.origin))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let targets: Vec<SocketAddr> = parsed.iter().map(|t| t.addr).collect();
        let endpoint_bases = cfg
            .endpoint_bases
            .iter()
            .map(|u| EndpointBase::parse(u, cfg.allow_remote))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let addrs = cfg
            .source_addrs
            .as_deref()
            .map(|s| SourceAddrs::parse(s, cfg.allow_remote))
            .transpose()
            .map_err(bad)?;
        let mut rng = Rng::seeded();
        let wp = match cfg.scenario {
            crate::config::Scenario::Webpush => Some(
                WebPushState::new(&mut rng, &cfg.payload_sizes)
                    .map_err(|e| bad(format!("VAPID key: {e:?}")))?,
            ),
            _ => None,
        };
        let poll = Poll::new()?;
        let mut control = control;
        if let Control::Child(_) = control {
            control = Control::Child(ChildLink::new()?);
            let fd = 0;
            poll.registry()
                .register(&mut SourceFd(&fd), STDIN, Interest::READABLE)?;
        }
        let shared = Shared::new(
            &cfg.ws_urls,
            cfg.channels,
            Duration::from_secs_f64(cfg.timeout),
            (cfg.end_wait(PING_TIMEOUT), cfg.end_wait(CLOSE_TIMEOUT)),
            ws_tls,
            wp.as_ref().map(WebPushState::shared),
        );
        let printer = Printer::new(cfg.progress && matches!(control, Control::Solo(_)));
        let rss_log = match (&control, &cfg.rss_csv, cfg.server_pid) {
            (Control::Solo(_), Some(path), Some(pid)) => Some(
                RssLog::create(path, pid, cfg.sample_secs)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            ),
            _ => None,
        };
        let books = cfg.devices > 0;
        Ok(Self {
            hard_deadline: now + Duration::from_secs_f64(cfg.max_seconds),
            cfg,
            poll,
            events: Events::with_capacity(4096),
            ready: Vec::with_capacity(4096),
            clients: (0..slots).map(|_| Client::new(now)).collect(),
            marks: vec![
                Mark {
                    due_ms: 0,
                    phase: Phase::Idle
                };
                slots
            ],
            shared,
            per_target: vec![TargetTally::default(); targets.len()],
            targets,
            src: SourceCycle::new(addrs),
            pools: Vec::new(),
            pool_keys: HashMap::new(),
            bad_origins: HashMap::new(),
            tls,
            wp,
            endpoint_bases,
            endpoint_error_shown: false,
            tracker: Tracker::new(),
            rng,
            control,
            printer,
            tally: Tally::default(),
            connect_hist: Hist::new(),
            latency_hist: Hist::new(),
            phase: "start",
            step: Step::Open,
            started: now,
            setting_up: 0,
            latency_ref: LatencyRef::PutSent,
            on_up: OnUp::Hold,
            finished: Vec::new(),
            came_up: Vec::new(),
            books,
            rss_log,
            outs: Vec::new(),
            http_outs: Vec::new(),
            last_sweep: now,
            last_progress: now,
            stop: false,
        })
    }

    /// Pumps events until `step` returns true (then true) or `deadline` / the hard deadline
    /// passes (then false). `step` runs before every poll; `tick` is the longest poll wait.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        tick: Duration,
        mut step: impl FnMut(&mut Driver) -> bool,
    ) -> bool {
        let deadline = deadline.min(self.hard_deadline);
        loop {
            if step(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.stop {
                return false;
            }
            self.pump(tick.min(deadline - now));
        }
    }

    fn pump(&mut self, timeout: Duration) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("simplepush-loadtest: poll failed: {e}");
                self.stop = true;
            }
            return;
        }
        let now = Instant::now();
        self.ready.clear();
        self.ready.extend(self.events.iter().map(|e| e.token()));
        for i in 0..self.ready.len() {
            let token = self.ready[i];
            self.dispatch(token, now);
        }
        self.maintain_pools();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.sweep(now);
        }
        if now.duration_since(self.last_progress) >= PROGRESS_EVERY {
            self.last_progress = now;
            self.progress();
        }
        if self.rss_log.as_ref().is_some_and(|l| l.due(now)) {
            let snap = self.snapshot();
            if let Some(log) = &mut self.rss_log {
                log.row(self.phase, &snap);
            }
        }
        if now >= self.hard_deadline {
            if !self.stop {
                eprintln!("\nsimplepush-loadtest: --max-seconds reached, stopping");
            }
            self.stop = true;
        }
    }

    fn dispatch(&mut self, token: Token, now: Instant) {
        if token == STDIN {
            if let Control::Child(link) = &mut self.control {
                link.on_readable();
            }
        } else if token.0 < self.clients.len() {
            self.with_client(token.0, now, |c, ctx| c.on_event(token, ctx));
        } else if token.0 >= HTTP_BASE {
            let p = (token.0 - HTTP_BASE) / POOL_SPAN;
            if let Some(pool) = self.pools.get_mut(p) {
                pool.on_event(token, self.poll.registry(), &mut self.http_outs);
            }
            self.drain_http();
        }
    }

    fn with_client(&mut self, idx: usize, now: Instant, f: impl FnOnce(&mut Client, &mut Ctx)) {
        let target = self.target_of(idx);
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            shared: &self.shared,
            target,
            rng: &mut self.rng,
            out: &mut self.outs,
            now,
        };
        f(&mut self.clients[idx], &mut ctx);
        self.remark(idx);
        let mut outs = std::mem::take(&mut self.outs);
        for out in outs.drain(..) {
            self.on_out(idx, out, now);
        }
        self.outs = outs;
    }

    /// Which --ws-url client `idx` connects to: device numbers round-robin over the URLs.
    fn target_of(&self, idx: usize) -> usize {
        ((self.cfg.first_device + idx as u64) % self.targets.len() as u64) as usize
    }

    fn target_tally(&mut self, idx: usize) -> &mut TargetTally {
        let t = self.target_of(idx);
        &mut self.per_target[t]
    }

    fn remark(&mut self, idx: usize) {
        let c = &self.clients[idx];
        let due_ms = if c.has_deadline() {
            let ms = c
                .deadline
                .saturating_duration_since(self.started)
                .as_millis()
                + 1;
            u32::try_from(ms).unwrap_or(u32::MAX)
        } else {
            0
        };
        self.marks[idx] = Mark {
            due_ms,
            phase: c.phase,
        };
    }

    fn on_out(&mut self, idx: usize, out: Out, now: Instant) {
        match out {
            Out::Up => self.on_up(idx, now),
            Out::SetupFailed(kind) => self.on_setup_failed(idx, &kind),
            Out::Endpoint { chan, url } => self.on_endpoint(idx, chan, &url),
            Out::UaidChanged => self.tally.uaid_changed += 1,
            Out::Unregistered { owed } => {
                if owed {
                    self.tally.lost += 1;
                    self.tally.lost_at_unregister += 1;
                }
            }
            Out::Rotated => self.tally.rotations_ok += 1,
            Out::RotateFailed(kind) => {
                self.tally.rotations_failed += 1;
                Tally::count(&mut self.tally.failures, &format!("rotate: {kind}"));
            }
            Out::Notification(updates) => self.on_notification(idx, &updates, now),
            Out::Message { chan, got } => self.on_message(idx, chan, got, now),
            Out::Pong => {
                self.tally.ping_ok += 1;
                self.target_tally(idx).ping_ok += 1;
            }
            Out::PingLost => {
                self.tally.ping_failed += 1;
                self.target_tally(idx).ping_failed += 1;
            }
            Out::Closed { clean } => self.on_closed(idx, clean, now),
            Out::Dropped(why) => {
                self.tally.dropped += 1;
                self.target_tally(idx).dropped += 1;
                Tally::count(&mut self.tally.failures, &format!("dropped: {why}"));
                self.finished.push(idx);
            }
        }
    }

    fn on_up(&mut self, idx: usize, now: Instant) {
        self.setting_up = self.setting_up.saturating_sub(1);
        let us = now.duration_since(self.clients[idx].started).as_micros() as u64;
        match self.clients[idx].mode {
            Mode::Fresh => {
                self.tally.conn_ok += 1;
                self.target_tally(idx).ok += 1;
                self.connect_hist.record_us(us);
            }
            Mode::Resume => {
                self.tally.reconnect_ok += 1;
                if self.on_up == OnUp::Report {
                    self.connect_hist.record_us(us);
                }
            }
        }
        match self.on_up {
            OnUp::Close => self.with_client(idx, now, |c, ctx| c.close(ctx)),
            OnUp::Report => self.came_up.push(idx),
            OnUp::Hold => {}
        }
    }

    /// Cycles are being counted (churn).
    fn cycling(&self) -> bool {
        matches!(self.on_up, OnUp::Close | OnUp::Report)
    }

    fn on_setup_failed(&mut self, idx: usize, kind: &str) {
        self.setting_up = self.setting_up.saturating_sub(1);
        match self.clients[idx].mode {
            Mode::Fresh => {
                self.tally.conn_failed += 1;
                self.target_tally(idx).failed += 1;
                Tally::count(&mut self.tally.failures, kind);
            }
            Mode::Resume => {
                self.tally.reconnect_failed += 1;
                Tally::count(&mut self.tally.failures, &format!("reconnect {kind}"));
            }
        }
        if self.cycling() {
            self.tally.cycles_failed += 1;
        }
        self.finished.push(idx);
    }

    fn on_closed(&mut self, idx: usize, clean: bool, now: Instant) {
        if !clean {
            Tally::count(&mut self.tally.failures, "close_not_clean");
        }
        if self.cycling() {
            if clean {
                self.tally.cycles_ok += 1;
                // A cycle with a dwell (Report) is not a latency.
                if self.on_up == OnUp::Close {
                    let us = now.duration_since(self.clients[idx].started).as_micros() as u64;
                    self.latency_hist.record_us(us);
                }
            } else {
                self.tally.cycles_failed += 1;
            }
        }
        self.finished.push(idx);
    }

    /// Expires clients whose deadline has passed.
    fn sweep(&mut self, now: Instant) {
        let now_ms = now.saturating_duration_since(self.started).as_millis();
        for idx in 0..self.marks.len() {
            let due = self.marks[idx].due_ms;
            if due != 0 && now_ms >= u128::from(due) {
                self.with_client(idx, now, |c, ctx| c.expire(ctx));
            }
        }
    }

    /// Client slots.
    pub fn slots(&self) -> usize {
        self.clients.len()
    }

    pub fn phase_of(&self, idx: usize) -> Phase {
        self.marks[idx].phase
    }

    /// How many clients are in a phase for which `pred` holds.
    pub fn count_where(&self, pred: impl Fn(Phase) -> bool) -> usize {
        self.marks.iter().filter(|m| pred(m.phase)).count()
    }

    /// The clients in a phase for which `pred` holds.
    pub fn clients_where(&self, pred: impl Fn(Phase) -> bool) -> Vec<usize> {
        (0..self.marks.len())
            .filter(|&i| pred(self.marks[i].phase))
            .collect()
    }

    pub fn channel_count(&self, idx: usize) -> usize {
        self.clients[idx].channels.len()
    }

    pub fn channels(&self, idx: usize) -> &[Channel] {
        &self.clients[idx].channels
    }

    pub fn channels_mut(&mut self, idx: usize) -> &mut [Channel] {
        &mut self.clients[idx].channels
    }

    /// Whether client `idx` completed its first setup (it has a uaid).
    pub fn has_uaid(&self, idx: usize) -> bool {
        !self.clients[idx].uaid.is_empty()
    }

    /// Drops client `idx`'s socket without a close frame (the kernel sends a FIN); it is Done.
    pub fn drop_client(&mut self, idx: usize) {
        self.clients[idx].abandon();
        self.remark(idx);
    }

    /// Starts replacing channel `chan` of open client `idx` (unregister, register a fresh one).
    pub fn rotate_client(&mut self, idx: usize, chan: usize) {
        self.with_client(idx, Instant::now(), |c, ctx| c.rotate(chan, ctx));
    }

    /// Readies a finished client for another start (its uaid and channels are kept).
    pub fn reset_client(&mut self, idx: usize) {
        self.clients[idx].reset();
        self.remark(idx);
    }

    /// Starts connecting client `idx` (its socket, hello, and in Fresh mode its registers).
    pub fn start_client(&mut self, idx: usize, mode: Mode) {
        let now = Instant::now();
        self.setting_up += 1;
        self.clients[idx].mode = mode;
        let addr = self.targets[self.target_of(idx)];
        match net::connect(addr, self.src.next_addr()) {
            Ok(stream) => {
                self.with_client(idx, now, |c, ctx| c.start(Token(idx), stream, mode, ctx))
            }
            Err(e) => {
                self.clients[idx].abandon();
                self.remark(idx);
                self.on_setup_failed(idx, &format!("connect: {}", io_kind(&e)));
            }
        }
    }

    /// Starts a clean close; a client still being set up is abandoned (and counted failed).
    pub fn close_client(&mut self, idx: usize) {
        let phase = self.clients[idx].phase;
        if phase.in_setup() {
            self.clients[idx].abandon();
            self.remark(idx);
            self.on_setup_failed(idx, &format!("unfinished_at_phase_end: {phase:?}"));
            return;
        }
        self.with_client(idx, Instant::now(), |c, ctx| c.close(ctx));
    }

    pub fn ping_client(&mut self, idx: usize) {
        self.with_client(idx, Instant::now(), |c, ctx| c.ping(ctx));
    }

    /// Waits at a barrier: sample the server (single process) or report to the parent and wait
    /// for its `go` (child).
    pub fn barrier(&mut self, point: Point) {
        let want = match &mut self.control {
            Control::Solo(samples) => {
                samples.take(point);
                let snap = self.snapshot();
                if let Some(log) = &mut self.rss_log {
                    log.row(&point.label(), &snap);
                }
                return;
            }
            Control::Child(link) => link.gos + 1,
        };
        self.progress();
        if control::send(&ChildMsg::Barrier { point }).is_err() {
            self.stop = true;
            return;
        }
        let far = self.hard_deadline;
        self.run_until(far, Duration::from_millis(50), |d| match &d.control {
            Control::Child(link) => link.gos >= want || link.eof,
            Control::Solo(_) => true,
        });
        if let Control::Child(link) = &self.control {
            if link.eof {
                eprintln!("simplepush-loadtest child: parent gone, stopping");
                self.stop = true;
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            phase: self.phase.to_string(),
            ..Snapshot::default()
        };
        s.ok = self.tally.conn_ok + self.tally.reconnect_ok;
        s.failed = self.tally.conn_failed + self.tally.reconnect_failed;
        s.open = self.count_where(Phase::is_open) as u64;
        s.setting_up = self.setting_up as u64;
        s.sent = self.tally.sent;
        s.received = self.tally.received;
        s.cycles = self.tally.cycles_ok;
        (s.done, s.total) = match self.step {
            Step::Open => (0, 0),
            Step::Devices { base, total } => ((s.ok + s.failed).saturating_sub(base), total),
            Step::Timed { start, secs } => (
                start.elapsed().as_millis() as u64,
                (secs * 1000.0).max(1.0) as u64,
            ),
        };
        s
    }

    /// Starts a phase: its name and how its progress is measured.
    pub fn begin(&mut self, phase: &'static str, step: Step) {
        self.phase = phase;
        self.step = step;
    }

    /// A phase of `total` devices being set up.
    pub fn devices_step(&self, total: usize) -> Step {
        Step::Devices {
            base: self.tally.conn_ok
                + self.tally.reconnect_ok
                + self.tally.conn_failed
                + self.tally.reconnect_failed,
            total: total as u64,
        }
    }

    pub fn progress(&mut self) {
        let snap = self.snapshot();
        match &mut self.control {
            Control::Solo(samples) => {
                self.printer.print(&snap);
                samples.timeline.record(&snap);
            }
            Control::Child(_) => {
                if control::send(&ChildMsg::Progress { snap }).is_err() {
                    self.stop = true;
                }
            }
        }
    }

    /// Ends the run: closes everything at once and returns what was measured.
    pub fn finish(mut self) -> (Tally, Control) {
        let last = self.snapshot();
        if let Control::Solo(samples) = &mut self.control {
            samples.timeline.record(&last);
        }
        self.printer.done();
        for pool in &mut self.pools {
            pool.shutdown(&mut self.http_outs);
        }
        self.drain_http();
        for c in &mut self.clients {
            c.abandon();
        }
        let (lost, unanswered) = self.tracker.finish();
        if self.books {
            // Versions not delivered as such: loss is judged per channel (the books), and
            // these were overwritten by a newer version before their device came back.
            self.tally.superseded += lost;
        } else {
            self.tally.lost += lost;
        }
        self.tally.unanswered += unanswered;
        for (url, t) in self.cfg.ws_urls.iter().zip(&self.per_target) {
            self.tally.by_target.entry(url.clone()).or_default().add(t);
        }
        self.tally.connect_hist = self.connect_hist.pairs();
        self.tally.latency_hist = self.latency_hist.pairs();
        self.tally.tester_cpu_us = procstat::self_cpu_us();
        self.tally.elapsed_secs = self.started.elapsed().as_secs_f64();
        (self.tally, self.control)
    }
}
