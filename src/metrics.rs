//! Process-wide counters and histograms, exposed as Prometheus text on the admin listener.
//!
//! One static set of relaxed atomics: the event loops, storage workers and stores all count into
//! it without locks or handles, and a scrape reads it while they run.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What happened to a notification (a SimplePush version or a WebPush message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A valid app-server request reached storage.
    Received,
    /// The store accepted it (answered 200/201/202).
    Stored,
    /// Written to the device's socket as it arrived.
    DeliveredLive,
    /// Written to the device's socket after a hello, from storage.
    DeliveredStored,
    /// Handed to the node holding the device's socket.
    Routed,
    /// The device acknowledged it.
    Acked,
    /// Its TTL ran out before the device acked it.
    Expired,
}

const EVENTS: [(Event, &str); 7] = [
    (Event::Received, "received"),
    (Event::Stored, "stored"),
    (Event::DeliveredLive, "delivered_live"),
    (Event::DeliveredStored, "delivered_stored"),
    (Event::Routed, "routed"),
    (Event::Acked, "acked"),
    (Event::Expired, "expired"),
];

/// Why a notification was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Its channel is not registered (410).
    Unregistered,
    /// Too many messages wait for the UAID (429).
    Full,
    /// The store failed (503).
    StoreError,
    /// TTL 0 and the device was not connected.
    Offline,
    /// A newer message with the same topic replaced it.
    Replaced,
    /// The app server deleted it.
    Deleted,
}

const DROPS: [(Drop, &str); 6] = [
    (Drop::Unregistered, "unregistered"),
    (Drop::Full, "full"),
    (Drop::StoreError, "store_error"),
    (Drop::Offline, "offline"),
    (Drop::Replaced, "replaced"),
    (Drop::Deleted, "deleted"),
];

/// Client commands counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// hello
    Hello,
    /// register
    Register,
    /// unregister
    Unregister,
    /// ack (one per acked item)
    Ack,
    /// ping
    Ping,
}

const COMMANDS: [(Command, &str); 5] = [
    (Command::Hello, "hello"),
    (Command::Register, "register"),
    (Command::Unregister, "unregister"),
    (Command::Ack, "ack"),
    (Command::Ping, "ping"),
];

/// How a wake-up of an offline device ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The driver did its part (datagram sent, webhook answered 2xx).
    Sent,
    /// The driver failed (socket error, timeout, webhook non-2xx).
    Failed,
    /// Not attempted: rate limit, address outside the allowed networks, no usable wake data.
    Refused,
    /// Not attempted: the queue was full.
    Dropped,
}

const WAKES: [(WakeOutcome, &str); 4] = [
    (WakeOutcome::Sent, "sent"),
    (WakeOutcome::Failed, "failed"),
    (WakeOutcome::Refused, "refused"),
    (WakeOutcome::Dropped, "dropped"),
];

/// Why the app-server endpoint (`/update`, `/wpush`, `/m`) answered as it did: the `reason` label
/// of `simplepush_endpoint_responses_total`, beside the answer's own status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// 2xx: delivered, stored, created, deleted.
    Ok,
    /// 405: a method the route does not take.
    Method,
    /// 404: a token we did not seal (or of another endpoint kind).
    Token,
    /// 401 or 403: VAPID missing, invalid, or not by the subscription's key.
    Vapid,
    /// 400: `TTL` missing or not a non-negative integer.
    Ttl,
    /// 400: no usable `Content-Encoding`, or aesgcm without its headers.
    Encoding,
    /// 400: a bad `Topic`.
    Topic,
    /// 400: a bad `Urgency`.
    Urgency,
    /// 400: a SimplePush version that is not an integer.
    Version,
    /// 413: the body or its `data` too long.
    TooLarge,
    /// 410: the channel is unregistered or the UAID unknown.
    Gone,
    /// 404: `DELETE` of a message that is not waiting.
    NoMessage,
    /// 429 (WebPush) or 503 (SimplePush): too many messages wait for the UAID.
    Full,
    /// 503: the store failed.
    Unavailable,
    /// 400, 431, 501: not a request we take (malformed framing, head too long, a transfer
    /// coding other than chunked).
    Malformed,
}

const REASONS: [(Reason, &str); 15] = [
    (Reason::Ok, "ok"),
    (Reason::Method, "method"),
    (Reason::Token, "token"),
    (Reason::Vapid, "vapid"),
    (Reason::Ttl, "ttl"),
    (Reason::Encoding, "encoding"),
    (Reason::Topic, "topic"),
    (Reason::Urgency, "urgency"),
    (Reason::Version, "version"),
    (Reason::TooLarge, "too_large"),
    (Reason::Gone, "gone"),
    (Reason::NoMessage, "no_message"),
    (Reason::Full, "full"),
    (Reason::Unavailable, "unavailable"),
    (Reason::Malformed, "malformed"),
];

/// Every status the endpoint answers with (a unit test holds the builders to it).
const STATUSES: [u16; 15] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 410, 413, 429, 431, 501, 503,
];

/// The series shown even at 0, so that a rate over them exists before the first such answer.
const ANSWERS: [(u16, Reason); 22] = [
    (200, Reason::Ok),
    (201, Reason::Ok),
    (202, Reason::Ok),
    (204, Reason::Ok),
    (400, Reason::Version),
    (400, Reason::Ttl),
    (400, Reason::Encoding),
    (400, Reason::Topic),
    (400, Reason::Urgency),
    (400, Reason::Malformed),
    (401, Reason::Vapid),
    (403, Reason::Vapid),
    (404, Reason::Token),
    (404, Reason::NoMessage),
    (405, Reason::Method),
    (410, Reason::Gone),
    (413, Reason::TooLarge),
    (429, Reason::Full),
    (431, Reason::Malformed),
    (501, Reason::Malformed),
    (503, Reason::Unavailable),
    (503, Reason::Full),
];

/// Every counter the server keeps.
pub struct Metrics {
    events: [AtomicU64; EVENTS.len()],
    drops: [AtomicU64; DROPS.len()],
    commands: [AtomicU64; COMMANDS.len()],
    wakes: [AtomicU64; WAKES.len()],
    /// App-server answers by status (as [`STATUSES`]) and reason (as [`REASONS`]).
    responses: [[AtomicU64; REASONS.len()]; STATUSES.len()],
    store_errors: AtomicU64,
    router_errors: AtomicU64,
    router_refused: AtomicU64,
    refused_connections: AtomicU64,
    dead_sockets: AtomicU64,
    /// Time a storage job takes.
    pub store_latency: Histogram,
    /// Time a storage job waits in its worker's queue before it runs.
    pub store_queue_latency: Histogram,
    /// Storage jobs queued and not started yet, over all loops.
    pub store_queued: AtomicU64,
    /// From a valid app-server request to the notification written to the device's socket.
    pub delivery_latency: Histogram,
}

/// The process's counters.
pub static METRICS: Metrics = Metrics {
    events: [const { AtomicU64::new(0) }; EVENTS.len()],
    drops: [const { AtomicU64::new(0) }; DROPS.len()],
    commands: [const { AtomicU64::new(0) }; COMMANDS.len()],
    wakes: [const { AtomicU64::new(0) }; WAKES.len()],
    responses: [const { [const { AtomicU64::new(0) }; REASONS.len()] }; STATUSES.len()],
    store_errors: AtomicU64::new(0),
    router_errors: AtomicU64::new(0),
    router_refused: AtomicU64::new(0),
    refused_connections: AtomicU64::new(0),
    dead_sockets: AtomicU64::new(0),
    store_latency: Histogram::new(),
    store_queue_latency: Histogram::new(),
    store_queued: AtomicU64::new(0),
    delivery_latency: Histogram::new(),
};

fn index<T: PartialEq>(table: &[(T, &str)], what: T) -> usize {
    table.iter().position(|(t, _)| *t == what).unwrap_or(0)
}

impl Metrics {
    /// Counts `n` notifications reaching `event`.
    pub fn event(&self, event: Event, n: u64) {
        self.events[index(&EVENTS, event)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` notifications dropped for `why`.
    pub fn dropped(&self, why: Drop, n: u64) {
        self.drops[index(&DROPS, why)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a client command.
    pub fn command(&self, c: Command, n: u64) {
        self.commands[index(&COMMANDS, c)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a wake-up by how it ended.
    pub fn wake(&self, o: WakeOutcome) {
        self.wakes[index(&WAKES, o)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a storage operation that failed.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a forward or kick another node did not answer.
    pub fn router_error(&self) {
        self.router_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a router request not sent: its address is not in `cluster.peers`.
    pub fn router_refused(&self) {
        self.router_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused at the limit or for lack of descriptors.
    pub fn refused(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer to an app server.
    pub fn response(&self, status: u16, why: Reason) {
        // Every status the endpoint's builders use is listed (tested); another is not counted.
        if let Some(row) = STATUSES.iter().position(|s| *s == status) {
            self.responses[row][index(&REASONS, why)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a socket closed because it did not answer a ping.
    pub fn dead_socket(&self) {
        self.dead_sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value of an event counter.
    pub fn events_of(&self, event: Event) -> u64 {
        self.events[index(&EVENTS, event)].load(Ordering::Relaxed)
    }
}

impl Event {
    fn label(self) -> &'static str {
        EVENTS[index(&EVENTS, self)].1
    }
}

impl Drop {
    fn label(self) -> &'static str {
        DROPS[index(&DROPS, self)].1
    }
}

/// Counts one notification reaching `event`; with `RUST_LOG=debug` also logs it as one line
/// (`notification event=… uaid=… channel=… version=…`, target `simplepush::reliability`).
pub fn track(
    event: Event,
    uaid: &dyn std::fmt::Display,
    channel: &dyn std::fmt::Display,
    version: &dyn std::fmt::Display,
) {
    METRICS.event(event, 1);
    log::debug!(
        target: "simplepush::reliability",
        event = event.label(), uaid:%, channel:%, version:%;
        "notification"
    );
}

/// Counts one notification dropped for `why`, logging it like [`track`] (`event=dropped reason=…`).
pub fn track_drop(
    why: Drop,
    uaid: &dyn std::fmt::Display,
    channel: &dyn std::fmt::Display,
    version: &dyn std::fmt::Display,
) {
    METRICS.dropped(why, 1);
    log::debug!(
        target: "simplepush::reliability",
        event = "dropped", reason = why.label(), uaid:%, channel:%, version:%;
        "notification"
    );
}

/// Connection counts at the moment of a scrape.
pub struct Gauges {
    /// Open connections of every kind.
    pub open: usize,
    /// WebSockets (after the upgrade).
    pub websockets: usize,
    /// WebSockets that completed hello.
    pub clients: usize,
}

fn labels<T>(table: &[(T, &'static str)]) -> Vec<&'static str> {
    table.iter().map(|(_, l)| *l).collect()
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The Prometheus text exposition of everything.
pub fn render(g: &Gauges) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(4096);
    let name = "simplepush_connections";
    family(&mut out, name, "Open connections by state.", "gauge");
    let http = g.open.saturating_sub(g.websockets);
    let waiting = g.websockets.saturating_sub(g.clients);
    for (state, n) in [
        ("http", http),
        ("awaiting_hello", waiting),
        ("ready", g.clients),
    ] {
        let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
    }
    let name = "simplepush_websocket_partial_input_bytes";
    family(
        &mut out,
        name,
        "Unfinished WebSocket frames and messages held by all sockets (websocket.partial_input_budget).",
        "gauge",
    );
    let _ = writeln!(out, "{name} {}", crate::ws::partial_bytes());
    crate::sources::render_metrics(&mut out);
    let labelled = [
        (
            "simplepush_commands_total",
            "Client commands handled.",
            "command",
            labels(&COMMANDS),
            &m.commands[..],
        ),
        (
            "simplepush_notifications_total",
            "Notifications by what happened to them.",
            "event",
            labels(&EVENTS),
            &m.events[..],
        ),
        (
            "simplepush_notifications_dropped_total",
            "Notifications not kept, by reason.",
            "reason",
            labels(&DROPS),
            &m.drops[..],
        ),
        (
            "simplepush_wakes_total",
            "Wake-ups of offline devices by outcome.",
            "outcome",
            labels(&WAKES),
            &m.wakes[..],
        ),
    ];
    for (name, help, label, values, counts) in labelled {
        family(&mut out, name, help, "counter");
        for (value, n) in values.iter().zip(counts) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
    responses(&mut out);
    let counters = [
        (
            "simplepush_store_errors_total",
            "Storage operations that failed.",
            &m.store_errors,
        ),
        (
            "simplepush_router_errors_total",
            "Forwards and kicks another node did not answer.",
            &m.router_errors,
        ),
        (
            "simplepush_router_refused_total",
            "Router requests not sent: the node record named an address cluster.peers does not allow.",
            &m.router_refused,
        ),
        (
            "simplepush_refused_connections_total",
            "Connections closed at once: over max_connections or out of descriptors.",
            &m.refused_connections,
        ),
        (
            "simplepush_dead_sockets_total",
            "WebSockets closed because they answered no ping (websocket.auto_ping_timeout_secs).",
            &m.dead_sockets,
        ),
    ];
    for (name, help, c) in counters {
        family(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
    }
    m.store_latency.render(
        &mut out,
        "simplepush_store_seconds",
        "Time a storage operation takes.",
    );
    m.store_queue_latency.render(
        &mut out,
        "simplepush_store_queue_seconds",
        "Time a storage job waits for its worker (a slow store shows here first).",
    );
    family(
        &mut out,
        "simplepush_store_queue_depth",
        "Storage jobs waiting for a worker.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "simplepush_store_queue_depth {}",
        m.store_queued.load(Ordering::Relaxed)
    );
    m.delivery_latency.render(
        &mut out,
        "simplepush_delivery_seconds",
        "From a valid app-server request to the notification written to the device's socket.",
    );
    crate::store::memcached::health::render(&mut out);
    process(&mut out);
    build_info(&mut out);
    out
}

/// `simplepush_endpoint_responses_total`: the expected series always, any other once counted.
fn responses(out: &mut String) {
    let name = "simplepush_endpoint_responses_total";
    family(
        out,
        name,
        "Answers to app servers (/update, /wpush, /m) by status and reason.",
        "counter",
    );
    for (row, status) in STATUSES.iter().enumerate() {
        for (col, (why, label)) in REASONS.iter().enumerate() {
            let n = METRICS.responses[row][col].load(Ordering::Relaxed);
            if n > 0 || ANSWERS.contains(&(*status, *why)) {
                let _ = writeln!(out, "{name}{{status=\"{status}\",reason=\"{label}\"}} {n}");
            }
        }
    }
}

/// Process figures, read by the sampler thread (on an old kernel counting descriptors means
/// listing `/proc/self/fd`, about a second at a million sockets, which no event loop may spend).
static RSS_BYTES: AtomicU64 = AtomicU64::new(0);
static OPEN_FDS: AtomicU64 = AtomicU64::new(0);
/// User and system CPU time, in seconds (the bits of an `f64`).
static CPU_SECONDS: AtomicU64 = AtomicU64::new(0);
/// When the process started, in Unix seconds (the bits of an `f64`; 0 until known).
static START_SECONDS: AtomicU64 = AtomicU64::new(0);
/// The soft open-files limit (`u64::MAX`: unlimited).
static MAX_FDS: AtomicU64 = AtomicU64::new(0);
/// How often the sampler reads `/proc/self`.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Reads the process figures now.
pub fn sample_process() {
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let fds = open_fds();
    RSS_BYTES.store(rss_kb * 1024, Ordering::Relaxed);
    OPEN_FDS.store(fds as u64, Ordering::Relaxed);
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if let Some((cpu, started)) = stat_times(&stat, ticks) {
        CPU_SECONDS.store(cpu.to_bits(), Ordering::Relaxed);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| boot_time(&t));
        if let (0, Some(boot)) = (START_SECONDS.load(Ordering::Relaxed), boot) {
            START_SECONDS.store((boot + started).to_bits(), Ordering::Relaxed);
        }
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let (Some(n), _) = crate::host_limits::open_files_in(&limits) {
        MAX_FDS.store(n, Ordering::Relaxed);
    }
}

/// Clock ticks per second, the unit of `/proc/self/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a system constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// (user + system CPU seconds, start in seconds after boot) from the text of `/proc/self/stat`.
fn stat_times(text: &str, ticks: f64) -> Option<(f64, f64)> {
    // The command name, in parentheses, may hold spaces and parentheses: count after its end.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers the fields from 1; the first after the name, `state`, is field 3.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some(((utime + stime) as f64 / ticks, start as f64 / ticks))
}

/// The boot time in Unix seconds, from the text of `/proc/stat`.
fn boot_time(text: &str) -> Option<f64> {
    let line = text.lines().find_map(|l| l.strip_prefix("btime "))?;
    line.trim().parse().ok()
}

/// Open descriptors. Since Linux 6.2 the size of `/proc/self/fd` is their count, read without
/// listing the directory: a listing makes the kernel build a proc inode and a dentry for every
/// descriptor (about 1.7 KiB of kernel memory per socket, kept while memory allows). Older
/// kernels report 0 there, and only they pay for the listing.
fn open_fds() -> usize {
    match std::fs::metadata("/proc/self/fd").map(|m| m.len()) {
        Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    }
}

/// Starts the thread that keeps the process figures fresh.
pub fn start_sampler() {
    sample_process();
    let _ = std::thread::Builder::new()
        .name("metrics-sampler".into())
        .spawn(|| loop {
            std::thread::sleep(SAMPLE_EVERY);
            sample_process();
        });
}

fn process(out: &mut String) {
    let name = "process_resident_memory_bytes";
    family(
        out,
        name,
        "Resident memory size in bytes (sampled every 5 s).",
        "gauge",
    );
    let _ = writeln!(out, "{name} {}", RSS_BYTES.load(Ordering::Relaxed));
    let name = "process_open_fds";
    family(
        out,
        name,
        "Open file descriptors (sampled every 5 s).",
        "gauge",
    );
    let _ = writeln!(out, "{name} {}", OPEN_FDS.load(Ordering::Relaxed));
    let name = "process_max_fds";
    family(
        out,
        name,
        "Soft limit of open file descriptors (sampled every 5 s).",
        "gauge",
    );
    let max = match MAX_FDS.load(Ordering::Relaxed) {
        u64::MAX => "+Inf".to_string(),
        n => n.to_string(),
    };
    let _ = writeln!(out, "{name} {max}");
    let seconds = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
    let name = "process_cpu_seconds_total";
    family(
        out,
        name,
        "User and system CPU time spent, in seconds (sampled every 5 s).",
        "counter",
    );
    let _ = writeln!(out, "{name} {}", seconds(&CPU_SECONDS));
    let name = "process_start_time_seconds";
    family(
        out,
        name,
        "Start time of the process since the Unix epoch, in seconds.",
        "gauge",
    );
    let _ = writeln!(out, "{name} {}", seconds(&START_SECONDS));
}

/// `simplepush_build_info{version,commit} 1`: the build `/__version__` describes.
fn build_info(out: &mut String) {
    let name = "simplepush_build_info";
    family(
        out,
        name,
        "The running build: version and git commit (always 1).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "{name}{{version=\"{}\",commit=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION")),
        label_value(env!("SP_BUILD_COMMIT"))
    );
}

/// A label value as the text format needs it (`GIT_COMMIT` may say anything).
fn label_value(raw: &str) -> String {
    raw.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_counted_as_a_listing_would() {
        let held: Vec<std::fs::File> = (0..50)
            .filter_map(|_| std::fs::File::open("/dev/null").ok())
            .collect();
        let counted = open_fds() as i64;
        let listed = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as i64;
        // The listing itself holds one more descriptor while it runs; other test threads may
        // open or close a few meanwhile.
        assert!(
            (counted - listed).abs() <= 8,
            "{counted} counted, {listed} listed"
        );
        assert!(counted >= held.len() as i64);
    }

    #[test]
    fn process_files_are_parsed() {
        // A command name with spaces and a parenthesis, as a renamed thread may have.
        let stat = "4242 (sp (loop) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    9 0 123400 1000000 500 18446744073709551615";
        assert_eq!(stat_times(stat, 100.0), Some((3.0, 1234.0)));
        assert_eq!(stat_times("garbage", 100.0), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(
            crate::host_limits::open_files_in(limits),
            (Some(1024), Some(524288))
        );
        let unlimited = "Max open files            unlimited            unlimited            files";
        assert_eq!(
            crate::host_limits::open_files_in(unlimited),
            (Some(u64::MAX), Some(u64::MAX))
        );
        assert_eq!(label_value("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn every_answer_the_endpoint_builds_is_a_series() {
        use sm::webpush::PushError;
        let errors = [
            PushError::InvalidToken,
            PushError::Gone,
            PushError::TooLarge,
            PushError::Unauthorized("x".into()),
            PushError::WrongKey,
            PushError::BadCrypto("x".into()),
            PushError::MissingTtl,
            PushError::BadTtl,
            PushError::BadTopic,
            PushError::BadUrgency,
            PushError::Method,
            PushError::Full,
            PushError::NoMessage,
            PushError::Unavailable,
        ];
        let mut built: Vec<(u16, Option<Reason>)> = errors
            .iter()
            .map(|e| {
                let r = crate::webpush::error(e);
                (r.status, r.counted)
            })
            .collect();
        for r in [
            crate::endpoint::gone(),
            crate::endpoint::unavailable(),
            crate::endpoint::outcome(sm::update::Outcome::Delivered),
            crate::endpoint::outcome(sm::update::Outcome::Stored),
        ] {
            built.push((r.status, r.counted));
        }
        for (status, why) in built {
            let why = why.unwrap_or_else(|| panic!("{status} is not counted"));
            assert!(ANSWERS.contains(&(status, why)), "{status} {why:?}");
        }
        for (status, why) in ANSWERS {
            assert!(STATUSES.contains(&status), "{status}");
            assert!(REASONS.iter().any(|(r, _)| *r == why), "{why:?}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn exposition_has_every_family_once() {
        let text = render(&Gauges {
            open: 5,
            websockets: 3,
            clients: 2,
        });
        assert!(text.contains("simplepush_connections{state=\"http\"} 2\n"));
        assert!(text.contains("simplepush_connections{state=\"awaiting_hello\"} 1\n"));
        assert!(text.contains("simplepush_connections{state=\"ready\"} 2\n"));
        for family in [
            "simplepush_commands_total",
            "simplepush_notifications_total",
            "simplepush_notifications_dropped_total",
            "simplepush_wakes_total",
            "simplepush_store_errors_total",
            "simplepush_router_errors_total",
            "simplepush_router_refused_total",
            "simplepush_dead_sockets_total",
            "simplepush_rate_limited_total",
            "simplepush_rate_limit_sources",
            "simplepush_store_seconds",
            "simplepush_delivery_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "simplepush_build_info",
            "simplepush_endpoint_responses_total",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}"
            );
        }
        assert!(text.ends_with('\n'));
    }
}
