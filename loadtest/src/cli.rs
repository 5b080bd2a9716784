//! The command line (clap derive): the options, their defaults, `--help`, and the result as a
//! [`Config`]. Every flag keeps the name and meaning it had before clap; list-valued flags take
//! repeats and commas alike.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::config::{validate, MAX_PAYLOAD};
pub use crate::config::{ChildSpec, Config, Scenario, FD_HEADROOM};

const ABOUT: &str = "\
simplepush-loadtest: drive thousands of SimplePush or WebPush devices and app-server pushes against
a simplepush server (loopback targets only, unless --allow-remote), from one mio loop per process.";

const AFTER_HELP: &str = "\
SCENARIOS:
    connect   open --connections sockets, hello (new uaid) + register --channels each,
              hold them --duration seconds, check each still answers a ping, close them
    notify    like connect, then PUT version=N to random held channels (at most one PUT in flight
              per channel) at --rate per second for --duration seconds over keep-alive HTTP/1.1;
              latency = PUT sent -> notification received; every notification is acked;
              lost = answered 200/202 but never delivered by the end of --grace
    churn     connect / hello / register / close-frame cycles started at --rate per second for
              --duration seconds, at most --connections in flight; latency = the whole cycle.
              With --devices N: a fixed population of N devices (set up once), each cycle
              reconnecting one with its uaid and channelIDs, taking its stored versions, staying
              --dwell s, maybe replacing a channel (--rotate), then closing (or dropping the
              socket, --drop); PUTs at --put-rate go to any device, online or not; after each of
              --rounds rounds every device reconnects and lost = channels whose highest version
              answered 200/202 never arrived; the server is sampled after each round (--settle)
    offline   connect + hello + register --connections clients, close them, PUT one version to
              each channel (202 expected), reconnect each with its uaid and channelIDs;
              latency = hello sent -> stored version flushed; lost = missing versions
    webpush   like notify in WebPush: hello with use_webpush, register with the tester's VAPID
              public key (applicationServerKey); the tester, as the app server, POSTs VAPID-signed
              (ES256) RFC 8291 aes128gcm messages of --payload-size bytes (at most one waiting per
              channel); each device decrypts with its subscription's keys, checks every byte and
              acks; lost, corrupted and duplicated messages are counted

OUTPUT:
    A progress bar (elapsed, ETA) with the status line on a terminal, the status line once a
    second otherwise (phase, connections ok/failed/open, rates, notifications sent/received), a
    summary on stdout at the end; --json writes every figure, --html a report with charts.
    Exit status: 0 when the run completed (whatever it measured), 1 on a runtime failure,
    2 on a usage error (bad option, non-loopback target without --allow-remote, too many
    connections for one process, unreadable pid or --ca file).

WAITS:
    The end-of-hold ping wait (6 s), a device's ping timeout (5 s), its close timeout (3 s)
    and the close phase (5 s) each get one more second per 10,000 devices in the whole run.

LIMITS:
    One process may hold at most its open-file limit (raised to the hard limit at start)
    minus 1000 sockets: above ~19,000 connections on a 20,000-file machine use --procs.";

/// The options as clap reads them; [`Args::into_config`] checks and completes them.
#[derive(Parser, Debug)]
#[command(
    name = "simplepush-loadtest",
    about = ABOUT,
    after_help = AFTER_HELP,
    max_term_width = 100,
    disable_version_flag = true
)]
struct Args {
    /// connect, notify, churn, offline or webpush (see SCENARIOS below)
    #[arg(value_enum, hide_possible_values = true)]
    scenario: Option<Scenario>,

    /// WebSocket URL (ws:// or wss://) of the server; give several (repeat the flag or separate
    /// with commas) to drive a whole cluster in one run: device i connects to URL i mod N, all
    /// share the phases (connect, hold, ping, close) and one report counts each URL
    /// [default: ws://127.0.0.1:8080/]
    #[arg(long = "ws-url", value_name = "URL[,URL..]", value_delimiter = ',', action = ArgAction::Append)]
    ws_url: Vec<String>,

    /// Replace scheme://host:port of every pushEndpoint with this (http:// or https://; split
    /// listeners, clusters); with several, device i's pushes go to base (i + 1) mod M, so listing
    /// the nodes in --ws-url's order sends every push through the next node [default: use
    /// pushEndpoint as given]
    #[arg(long = "endpoint-base", value_name = "URL[,URL..]", value_delimiter = ',', action = ArgAction::Append)]
    endpoint_base: Vec<String>,

    /// Devices (churn: cycles in flight)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = whole::<u64>)]
    connections: u64,

    /// Channels registered per device, 1..=200
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = whole::<u32>)]
    channels: u32,

    /// Per second: notify and webpush pushes [default: 100], churn cycles [default: 50], offline
    /// PUTs [default: 0 = as fast as the HTTP pool takes them]
    #[arg(long, value_name = "R", value_parser = real)]
    rate: Option<f64>,

    /// Hold (connect), push (notify, webpush) or churn time, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = real)]
    duration: f64,

    /// New connections per second while connecting [default: 0 = unlimited, bounded by
    /// --max-handshakes]
    #[arg(long, value_name = "R", value_parser = real)]
    ramp: Option<f64>,

    /// Connections being set up at once (connect+upgrade+hello+register)
    #[arg(long = "max-handshakes", value_name = "N", default_value_t = 500, value_parser = whole::<u64>)]
    max_handshakes: u64,

    /// Local source IPs for outgoing sockets, round-robin, e.g. 127.0.0.2-127.0.0.50 or one IP;
    /// each address gives ~28k more ports [default: let the kernel choose]
    #[arg(long = "source-addrs", value_name = "RANGE")]
    source_addrs: Option<String>,

    /// Spread the devices over P child processes (each gets its share of --connections, --rate,
    /// --ramp and --max-handshakes, and a slice of --source-addrs); the parent aggregates their
    /// results
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = whole::<u32>)]
    procs: u32,

    /// Sample the server's RSS (/proc/PID/status VmRSS) and CPU time (/proc/PID/stat
    /// utime+stime) before and after the phases (and once a second for --html)
    #[arg(long = "server-pid", value_name = "PID", value_parser = whole::<u32>)]
    server_pid: Option<u32>,

    /// Write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write a self-contained HTML report to FILE: latency histogram and percentile curve,
    /// connections and rates over time, server RSS and CPU over time (with --server-pid), and
    /// the figures
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Hard cap on the whole run; it stops and reports when reached
    #[arg(long = "max-seconds", value_name = "SECS", default_value_t = 600.0, value_parser = real)]
    max_seconds: f64,

    /// Per connection: connect+upgrade+hello+register must finish within this
    #[arg(long, value_name = "SECS", default_value_t = 15.0, value_parser = real)]
    timeout: f64,

    /// Wait this long after the last push for notifications
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = real)]
    grace: f64,

    /// Keep-alive HTTP/1.1 connections per process and endpoint host for pushes
    #[arg(long = "http-conns", value_name = "N", default_value_t = 8, value_parser = whole::<u32>)]
    http_conns: u32,

    /// Pushes in flight (pipelined) per HTTP connection
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = whole::<u32>)]
    pipeline: u32,

    /// No progress bar or status line on stderr
    #[arg(long = "no-progress")]
    no_progress: bool,

    /// Allow targets (--ws-url, --endpoint-base, pushEndpoints) and --source-addrs outside
    /// 127.0.0.0/8 and ::1: for testing a deployment you run. Without it, any URL whose host
    /// resolves to another address is refused
    #[arg(long = "allow-remote", help_heading = "REMOTE AND TLS TARGETS")]
    allow_remote: bool,

    /// Trust the certificates in this PEM file (besides the system's roots) for wss:// and
    /// https:// targets, e.g. a test CA or a self-signed server certificate
    #[arg(long, value_name = "FILE", help_heading = "REMOTE AND TLS TARGETS")]
    ca: Option<PathBuf>,

    /// Accept any server certificate without checking it (self-signed test certificates only)
    #[arg(long, help_heading = "REMOTE AND TLS TARGETS")]
    insecure: bool,

    /// webpush: plaintext bytes per message, 8..=3993; several sizes (commas) are used in turn
    #[arg(long = "payload-size", value_name = "BYTES[,BYTES..]", value_delimiter = ',',
          action = ArgAction::Append, value_parser = whole::<usize>, help_heading = "WEBPUSH")]
    payload_size: Vec<usize>,

    /// Devices set up once and cycled [default: 0 = a fresh device per cycle]
    #[arg(long, value_name = "N", value_parser = whole::<u64>, help_heading = CHURN)]
    devices: Option<u64>,

    /// PUTs per second to random channels of the devices, at most one in flight per channel
    #[arg(long = "put-rate", value_name = "R", default_value_t = 0.0, value_parser = real, help_heading = CHURN)]
    put_rate: f64,

    /// Mean time online per cycle, uniform in 0..2*SECS
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = real, help_heading = CHURN)]
    dwell: f64,

    /// Fraction of cycles that unregister one channel and register a fresh one in its place
    #[arg(long, value_name = "P", default_value_t = 0.1, value_parser = real, help_heading = CHURN)]
    rotate: f64,

    /// Fraction of cycles that end by dropping the socket without a close frame
    #[arg(long, value_name = "P", default_value_t = 0.1, value_parser = real, help_heading = CHURN)]
    drop: f64,

    /// Churn rounds of --duration s, each ending with every device reconnected and checked,
    /// then a server sample
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = whole::<u32>, help_heading = CHURN)]
    rounds: u32,

    /// Wait after closing every device before sampling the server
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = real, help_heading = CHURN)]
    settle: f64,

    /// With --server-pid: write the server's RSS to FILE (CSV), a row every --sample-secs and
    /// one at every phase barrier
    #[arg(long = "rss-csv", value_name = "FILE", help_heading = CHURN)]
    rss_csv: Option<PathBuf>,

    /// Seconds between --rss-csv rows
    #[arg(long = "sample-secs", value_name = "SECS", default_value_t = 10.0, value_parser = real, help_heading = CHURN)]
    sample_secs: f64,

    /// A child's share of a --procs run (JSON), set by the parent
    #[arg(long, hide = true)]
    child: Option<String>,
}

const CHURN: &str =
    "CHURN WITH A FIXED POPULATION (--devices; --connections is then the most online at once)";

/// What the command line asks for.
pub enum Command {
    Run(Config),
    Child(ChildSpec),
}

/// Why the command line gave no run: clap's own answer (help, or a malformed option, which it
/// prints and exits with) or a check that failed.
pub enum CliError {
    Clap(clap::Error),
    Invalid(String),
}

impl CliError {
    /// Prints the error (or the help) and exits: 0 for help, 2 for a usage error.
    pub fn exit(self) -> ! {
        match self {
            Self::Clap(e) => e.exit(),
            Self::Invalid(msg) => {
                eprintln!("simplepush-loadtest: {msg}");
                std::process::exit(2)
            }
        }
    }

    /// Whether this is the help text (not an error).
    #[cfg(test)]
    pub fn is_help(&self) -> bool {
        matches!(self, Self::Clap(e) if e.kind() == clap::error::ErrorKind::DisplayHelp)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Clap(e) => write!(f, "{}", e.render()),
            Self::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let argv = std::iter::once("simplepush-loadtest".to_string()).chain(args);
    let a = Args::try_parse_from(argv).map_err(CliError::Clap)?;
    if let Some(spec) = &a.child {
        let spec: ChildSpec =
            serde_json::from_str(spec).map_err(|e| CliError::Invalid(format!("--child: {e}")))?;
        return Ok(Command::Child(spec));
    }
    a.into_config().map(Command::Run).map_err(CliError::Invalid)
}

impl Args {
    fn into_config(self) -> Result<Config, String> {
        let scenario = self
            .scenario
            .ok_or("no scenario given: connect, notify, churn, offline or webpush (try --help)")?;
        let mut ws_urls = urls("--ws-url", self.ws_url)?;
        if ws_urls.is_empty() {
            ws_urls.push("ws://127.0.0.1:8080/".to_string());
        }
        let mut payload_sizes = self.payload_size;
        if payload_sizes.is_empty() {
            payload_sizes.push(DEFAULT_PAYLOAD);
        }
        let devices = self.devices.unwrap_or(0);
        let cfg = Config {
            scenario,
            ws_urls,
            endpoint_bases: urls("--endpoint-base", self.endpoint_base)?,
            connections: self.connections,
            channels: self.channels,
            rate: self.rate.unwrap_or_else(|| scenario.default_rate()),
            duration: self.duration,
            ramp: self.ramp.unwrap_or(0.0),
            max_handshakes: self.max_handshakes,
            source_addrs: self.source_addrs,
            procs: self.procs,
            server_pid: self.server_pid,
            json: self.json,
            max_seconds: self.max_seconds,
            timeout: self.timeout,
            grace: self.grace,
            http_conns: self.http_conns,
            pipeline: self.pipeline,
            progress: !self.no_progress,
            devices,
            put_rate: self.put_rate,
            dwell: self.dwell,
            rotate: self.rotate,
            drop: self.drop,
            rounds: self.rounds,
            settle: self.settle,
            rss_csv: self.rss_csv,
            sample_secs: self.sample_secs,
            allow_remote: self.allow_remote,
            ca: self.ca,
            insecure: self.insecure,
            payload_sizes,
            html: self.html,
            first_device: 0,
            run_devices: self.connections.max(devices),
        };
        validate(&cfg)?;
        Ok(cfg)
    }
}

/// webpush plaintext size when --payload-size is not given.
const DEFAULT_PAYLOAD: usize = 256;
const _: () = assert!(DEFAULT_PAYLOAD <= MAX_PAYLOAD);

/// A list flag's non-empty parts (`a,b,` is a and b); given with nothing in it, an error.
fn urls(flag: &str, given: Vec<String>) -> Result<Vec<String>, String> {
    let was_given = !given.is_empty();
    let parts: Vec<String> = given
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if was_given && parts.is_empty() {
        return Err(format!("{flag} needs at least one URL"));
    }
    Ok(parts)
}

/// A whole number; `_` may group digits (`19_000`).
fn whole<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number"))
}

/// A finite number >= 0.
fn real(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{v:?} is not a number >= 0")),
    }
}

#[cfg(test)]
mod tests;
