//! A run's settings: the scenario, every option with its value, and the checks made before
//! anything connects. The command line (`cli.rs`) fills it in; children receive it as JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::addrs::SourceAddrs;
use crate::target::{self, WsTarget};

/// Most --ws-url URLs in one run.
const MAX_TARGETS: usize = 1024;

/// Smallest and largest webpush plaintext: the message's number, up to a 4096-byte aes128gcm body.
pub const MIN_PAYLOAD: usize = 8;
pub const MAX_PAYLOAD: usize = 3993;

/// Most connections one process holds; the rest of the open-file limit is headroom.
pub const FD_HEADROOM: u64 = 1000;

/// What a run does (see `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Connect,
    Notify,
    Churn,
    Offline,
    /// Notify over WebPush: encrypted payloads from a VAPID-signing app server.
    Webpush,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Notify => "notify",
            Self::Churn => "churn",
            Self::Offline => "offline",
            Self::Webpush => "webpush",
        }
    }

    /// --rate when not given.
    pub fn default_rate(self) -> f64 {
        match self {
            Self::Notify | Self::Webpush => 100.0,
            Self::Churn => 50.0,
            Self::Connect | Self::Offline => 0.0,
        }
    }
}

/// Everything a run needs. Children receive theirs as JSON (`--child`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub scenario: Scenario,
    pub ws_urls: Vec<String>,
    pub endpoint_bases: Vec<String>,
    pub connections: u64,
    pub channels: u32,
    pub rate: f64,
    pub duration: f64,
    pub ramp: f64,
    pub max_handshakes: u64,
    pub source_addrs: Option<String>,
    pub procs: u32,
    pub server_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub max_seconds: f64,
    pub timeout: f64,
    pub grace: f64,
    pub http_conns: u32,
    pub pipeline: u32,
    pub progress: bool,
    /// Churn with a fixed population (0 = a fresh device per cycle).
    pub devices: u64,
    pub put_rate: f64,
    pub dwell: f64,
    pub rotate: f64,
    pub drop: f64,
    pub rounds: u32,
    pub settle: f64,
    pub rss_csv: Option<PathBuf>,
    pub sample_secs: f64,
    /// Targets outside 127.0.0.0/8 and ::1 are allowed.
    pub allow_remote: bool,
    /// Extra trusted roots (PEM) for wss:// and https:// targets.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (self-signed test certificates).
    pub insecure: bool,
    /// webpush: plaintext sizes in bytes; message n has size `payload_sizes[n % len]`.
    pub payload_sizes: Vec<usize>,
    /// Write a self-contained HTML report here.
    pub html: Option<PathBuf>,
    /// The run's index of this process's first device (children get a slice of the devices).
    pub first_device: u64,
    /// Devices in the whole run, all processes together: the end-of-run waits scale with it.
    pub run_devices: u64,
}

impl Config {
    /// An end-of-run wait (pings, closes) of `base_secs` for a small run, plus a second per
    /// 10,000 devices in the whole run: every process pings and closes at the same barrier, so
    /// the servers answer all of them at once (1,000,000 devices: base + 100 s). A wait ends as
    /// soon as every answer is in, so the allowance costs nothing when the servers keep up.
    pub fn end_wait(&self, base_secs: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(base_secs + self.run_devices as f64 / 10_000.0)
    }
}

/// What a child process is told: its share of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    pub index: u32,
    pub config: Config,
}

/// Err(msg) unless `ok`.
fn check(ok: bool, msg: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

/// The checks made before anything connects: ranges, targets (loopback unless --allow-remote),
/// source addresses.
pub fn validate(c: &Config) -> Result<(), String> {
    check(
        (1..=10_000_000).contains(&c.connections),
        "--connections must be 1..=10000000",
    )?;
    check(
        (1..=200).contains(&c.channels),
        "--channels must be 1..=200 (the server's max_channels)",
    )?;
    check(c.rate <= 10_000_000.0, "--rate must be at most 10000000")?;
    check(
        c.max_seconds >= 1.0 && c.max_seconds <= 86_400.0,
        "--max-seconds must be 1..=86400",
    )?;
    check(
        c.duration * f64::from(c.rounds.max(1)) <= c.max_seconds,
        "--duration (times --rounds) must not exceed --max-seconds",
    )?;
    check(c.max_handshakes >= 1, "--max-handshakes must be at least 1")?;
    check((1..=64).contains(&c.procs), "--procs must be 1..=64")?;
    check(c.timeout >= 0.1, "--timeout must be at least 0.1 s")?;
    check(c.grace <= 600.0, "--grace must be at most 600 s")?;
    check(
        (1..=256).contains(&c.http_conns),
        "--http-conns must be 1..=256",
    )?;
    check(
        (1..=1024).contains(&c.pipeline),
        "--pipeline must be 1..=1024",
    )?;
    check(
        c.scenario != Scenario::Churn || c.rate > 0.0,
        "churn needs --rate > 0 (cycles started per second)",
    )?;
    check(
        c.devices == 0 || c.scenario == Scenario::Churn,
        "--devices is for churn only",
    )?;
    check(
        c.devices <= 10_000_000,
        "--devices must be at most 10000000",
    )?;
    check(
        c.devices == 0 || c.connections <= c.devices,
        "with --devices, --connections (most online at once) must not exceed --devices",
    )?;
    check(
        c.devices == 0 || c.devices >= u64::from(c.procs),
        "--devices must be at least --procs",
    )?;
    check(
        c.put_rate <= 10_000_000.0,
        "--put-rate must be at most 10000000",
    )?;
    check(c.dwell <= 3600.0, "--dwell must be at most 3600 s")?;
    check(
        c.rotate <= 1.0 && c.drop <= 1.0,
        "--rotate and --drop are fractions, 0..=1",
    )?;
    check((1..=100).contains(&c.rounds), "--rounds must be 1..=100")?;
    check(
        c.rounds == 1 || c.devices > 0,
        "--rounds needs --devices (churn with a fixed population)",
    )?;
    check(c.settle <= 600.0, "--settle must be at most 600 s")?;
    check(c.sample_secs >= 0.1, "--sample-secs must be at least 0.1")?;
    check(
        c.rss_csv.is_none() || c.server_pid.is_some(),
        "--rss-csv needs --server-pid",
    )?;
    check(
        (1..=MAX_TARGETS).contains(&c.ws_urls.len()),
        "--ws-url: give 1 to 1024 URLs",
    )?;
    check(
        c.endpoint_bases.len() <= 64,
        "--endpoint-base: give at most 64 URLs (each gets its own pool of HTTP connections)",
    )?;
    check(
        !c.payload_sizes.is_empty()
            && c.payload_sizes
                .iter()
                .all(|n| (MIN_PAYLOAD..=MAX_PAYLOAD).contains(n)),
        "--payload-size: each size must be 8..=3993 bytes (8 carry the message's number; \
         3993 fill the 4096 bytes a push service must accept)",
    )?;
    check(
        !(c.insecure && c.ca.is_some()),
        "--insecure accepts any certificate: give it or --ca, not both",
    )?;
    let targets = c
        .ws_urls
        .iter()
        .map(|u| WsTarget::parse(u, c.allow_remote))
        .collect::<Result<Vec<_>, _>>()?;
    for base in &c.endpoint_bases {
        target::EndpointBase::parse(base, c.allow_remote)?;
    }
    if let Some(spec) = &c.source_addrs {
        let addrs = SourceAddrs::parse(spec, c.allow_remote)?;
        check(
            targets.iter().all(|t| addrs.family_matches(&t.addr)),
            "--source-addrs must be of the same address family as every --ws-url",
        )?;
    }
    Ok(())
}
