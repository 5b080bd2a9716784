//! Command line: the options, their defaults, `--help`, and the checks made before anything runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::addrs::SourceAddrs;
use crate::target::{self, WsTarget};

pub const HELP: &str = "\
simplepush-loadtest: drive thousands of SimplePush devices and app-server PUTs against a
simplepush server on this machine (loopback targets only), from one mio loop per process.

USAGE:
    simplepush-loadtest SCENARIO [OPTIONS]

SCENARIOS:
    connect   open --connections sockets, hello (new uaid) + register --channels each,
              hold them --duration seconds, check each still answers a ping, close them
    notify    like connect, then PUT version=N to random held channels (at most one PUT in flight
              per channel) at --rate per second for
              --duration seconds over keep-alive HTTP/1.1; latency = PUT sent -> notification
              received; every notification is acked; lost = answered 200/202 but never
              delivered by the end of --grace
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

OPTIONS:
    --ws-url URL[,URL..]  WebSocket URL of the server; give several (repeat the flag or separate
                          with commas) to drive a whole cluster in one run: device i connects to
                          URL i mod N, all share the phases (connect, hold, ping, close) and
                          one report counts each URL [default: ws://127.0.0.1:8080/]
    --endpoint-base URL[,URL..]
                          replace scheme://host:port of every pushEndpoint with this (split
                          listeners, clusters); with several, device i's PUTs go to base
                          (i + 1) mod M, so listing the nodes in --ws-url's order sends every
                          push through the next node [default: use pushEndpoint as given]
    --connections N       devices (churn: cycles in flight) [default: 100]
    --channels K          channels registered per device, 1..=200 [default: 1]
    --rate R              per second: notify PUTs [default: 100], churn cycles [default: 50],
                          offline PUTs [default: 0 = as fast as the HTTP pool takes them]
    --duration SECS       hold (connect), PUT (notify) or churn time [default: 10]
    --ramp R              new connections per second while connecting [default: 0 = unlimited,
                          bounded by --max-handshakes]
    --max-handshakes N    connections being set up at once (connect+upgrade+hello+register)
                          [default: 500]
    --source-addrs RANGE  local source IPs for outgoing sockets, round-robin, e.g.
                          127.0.0.2-127.0.0.50 or one IP; each address gives ~28k more ports
                          [default: let the kernel choose]
    --procs P             spread the devices over P child processes (each gets its share of
                          --connections, --rate, --ramp and --max-handshakes, and a slice of
                          --source-addrs); the parent aggregates their results [default: 1]
    --server-pid PID      sample the server's RSS (/proc/PID/status VmRSS) and CPU time
                          (/proc/PID/stat utime+stime) before and after the phases
    --json FILE           write the results as JSON to FILE
    --max-seconds SECS    hard cap on the whole run; it stops and reports when reached
                          [default: 600]
    --timeout SECS        per connection: connect+upgrade+hello+register must finish within
                          this [default: 15]
    --grace SECS          wait this long after the last PUT for notifications [default: 5]
    --http-conns N        keep-alive HTTP/1.1 connections per process for PUTs [default: 8]
    --pipeline N          PUTs in flight (pipelined) per HTTP connection [default: 64]
    --no-progress         no progress line on stderr
    -h, --help            print this help

CHURN WITH A FIXED POPULATION (--devices; --connections is then the most online at once):
    --devices N           devices set up once and cycled [default: 0 = a fresh device per cycle]
    --put-rate R          PUTs per second to random channels of the devices, at most one in
                          flight per channel [default: 0]
    --dwell SECS          mean time online per cycle, uniform in 0..2*SECS [default: 2]
    --rotate P            fraction of cycles that unregister one channel and register a fresh
                          one in its place [default: 0.1]
    --drop P              fraction of cycles that end by dropping the socket without a close
                          frame [default: 0.1]
    --rounds K            churn rounds of --duration s, each ending with every device
                          reconnected and checked, then a server sample [default: 1]
    --settle SECS         wait after closing every device before sampling the server [default: 5]
    --rss-csv FILE        with --server-pid: write the server's RSS to FILE (CSV), a row every
                          --sample-secs and one at every phase barrier
    --sample-secs SECS    [default: 10]

OUTPUT:
    A progress line on stderr once a second (phase, connections ok/failed/open, rates,
    notifications sent/received), a summary on stdout at the end, and with --json the
    scenario, parameters, connections ok/failed, connect+hello+register rate, latency
    p50/p90/p99/p99.9/max in microseconds, notifications sent/received/lost, server RSS
    before/after and RSS per connection, server CPU microseconds per hello+register, elapsed.
    Exit status: 0 when the run completed (whatever it measured), 1 on a runtime failure,
    2 on a usage error.

WAITS:
    The end-of-hold ping wait (6 s), a device's ping timeout (5 s), its close timeout (3 s)
    and the close phase (5 s) each get one more second per 10,000 devices in the whole run.

LIMITS:
    One process may hold at most its open-file limit (raised to the hard limit at start)
    minus 1000 sockets: above ~19,000 connections on a 20,000-file machine use --procs.
";

/// Most --ws-url URLs in one run.
const MAX_TARGETS: usize = 1024;

/// Most connections one process holds; the rest of the open-file limit is headroom.
pub const FD_HEADROOM: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Connect,
    Notify,
    Churn,
    Offline,
}

impl Scenario {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(Self::Connect),
            "notify" => Some(Self::Notify),
            "churn" => Some(Self::Churn),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Notify => "notify",
            Self::Churn => "churn",
            Self::Offline => "offline",
        }
    }

    fn default_rate(self) -> f64 {
        match self {
            Self::Notify => 100.0,
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

pub enum Command {
    Run(Config),
    Child(ChildSpec),
    Help,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut b = Builder::default();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        if arg == "--child" {
            let spec = args.next().ok_or("--child needs a value")?;
            let spec: ChildSpec =
                serde_json::from_str(&spec).map_err(|e| format!("--child: {e}"))?;
            return Ok(Command::Child(spec));
        }
        b.arg(arg, &mut args)?;
    }
    b.finish().map(Command::Run)
}

#[derive(Default)]
struct Builder {
    scenario: Option<Scenario>,
    ws_urls: Vec<String>,
    endpoint_bases: Vec<String>,
    connections: Option<u64>,
    channels: Option<u32>,
    rate: Option<f64>,
    duration: Option<f64>,
    ramp: Option<f64>,
    max_handshakes: Option<u64>,
    source_addrs: Option<String>,
    procs: Option<u32>,
    server_pid: Option<u32>,
    json: Option<PathBuf>,
    max_seconds: Option<f64>,
    timeout: Option<f64>,
    grace: Option<f64>,
    http_conns: Option<u32>,
    pipeline: Option<u32>,
    no_progress: bool,
    devices: Option<u64>,
    put_rate: Option<f64>,
    dwell: Option<f64>,
    rotate: Option<f64>,
    drop: Option<f64>,
    rounds: Option<u32>,
    settle: Option<f64>,
    rss_csv: Option<PathBuf>,
    sample_secs: Option<f64>,
}

impl Builder {
    fn arg(&mut self, arg: String, rest: &mut impl Iterator<Item = String>) -> Result<(), String> {
        let Some(flag) = arg.strip_prefix("--") else {
            return self.positional(&arg);
        };
        if flag == "no-progress" {
            self.no_progress = true;
            return Ok(());
        }
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                let v = rest
                    .next()
                    .ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag.to_string(), v)
            }
        };
        self.option(&name, &value)
    }

    fn positional(&mut self, arg: &str) -> Result<(), String> {
        if self.scenario.is_some() {
            return Err(format!("unexpected argument {arg:?} (try --help)"));
        }
        let s = Scenario::parse(arg).ok_or_else(|| {
            format!("unknown scenario {arg:?}: connect, notify, churn or offline")
        })?;
        self.scenario = Some(s);
        Ok(())
    }

    fn option(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "ws-url" => self.ws_urls.extend(list(name, v)?),
            "endpoint-base" => self.endpoint_bases.extend(list(name, v)?),
            "connections" => self.connections = Some(num(name, v)?),
            "channels" => self.channels = Some(num(name, v)?),
            "rate" => self.rate = Some(real(name, v)?),
            "duration" => self.duration = Some(real(name, v)?),
            "ramp" => self.ramp = Some(real(name, v)?),
            "max-handshakes" => self.max_handshakes = Some(num(name, v)?),
            "source-addrs" => self.source_addrs = Some(v.to_string()),
            "procs" => self.procs = Some(num(name, v)?),
            "server-pid" => self.server_pid = Some(num(name, v)?),
            "json" => self.json = Some(PathBuf::from(v)),
            "max-seconds" => self.max_seconds = Some(real(name, v)?),
            "timeout" => self.timeout = Some(real(name, v)?),
            "grace" => self.grace = Some(real(name, v)?),
            "http-conns" => self.http_conns = Some(num(name, v)?),
            "pipeline" => self.pipeline = Some(num(name, v)?),
            "devices" => self.devices = Some(num(name, v)?),
            "put-rate" => self.put_rate = Some(real(name, v)?),
            "dwell" => self.dwell = Some(real(name, v)?),
            "rotate" => self.rotate = Some(real(name, v)?),
            "drop" => self.drop = Some(real(name, v)?),
            "rounds" => self.rounds = Some(num(name, v)?),
            "settle" => self.settle = Some(real(name, v)?),
            "rss-csv" => self.rss_csv = Some(PathBuf::from(v)),
            "sample-secs" => self.sample_secs = Some(real(name, v)?),
            _ => return Err(format!("unknown option --{name} (try --help)")),
        }
        Ok(())
    }

    fn finish(self) -> Result<Config, String> {
        let scenario = self
            .scenario
            .ok_or("no scenario given: connect, notify, churn or offline (try --help)")?;
        let mut ws_urls = self.ws_urls;
        if ws_urls.is_empty() {
            ws_urls.push("ws://127.0.0.1:8080/".to_string());
        }
        let connections = self.connections.unwrap_or(100);
        let devices = self.devices.unwrap_or(0);
        let cfg = Config {
            scenario,
            ws_urls,
            endpoint_bases: self.endpoint_bases,
            connections,
            channels: self.channels.unwrap_or(1),
            rate: self.rate.unwrap_or_else(|| scenario.default_rate()),
            duration: self.duration.unwrap_or(10.0),
            ramp: self.ramp.unwrap_or(0.0),
            max_handshakes: self.max_handshakes.unwrap_or(500),
            source_addrs: self.source_addrs,
            procs: self.procs.unwrap_or(1),
            server_pid: self.server_pid,
            json: self.json,
            max_seconds: self.max_seconds.unwrap_or(600.0),
            timeout: self.timeout.unwrap_or(15.0),
            grace: self.grace.unwrap_or(5.0),
            http_conns: self.http_conns.unwrap_or(8),
            pipeline: self.pipeline.unwrap_or(64),
            progress: !self.no_progress,
            devices,
            put_rate: self.put_rate.unwrap_or(0.0),
            dwell: self.dwell.unwrap_or(2.0),
            rotate: self.rotate.unwrap_or(0.1),
            drop: self.drop.unwrap_or(0.1),
            rounds: self.rounds.unwrap_or(1),
            settle: self.settle.unwrap_or(5.0),
            rss_csv: self.rss_csv,
            sample_secs: self.sample_secs.unwrap_or(10.0),
            first_device: 0,
            run_devices: connections.max(devices),
        };
        validate(&cfg)?;
        Ok(cfg)
    }
}

/// `a,b, c` as its non-empty parts (at least one).
fn list(name: &str, v: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if parts.is_empty() {
        return Err(format!("--{name} needs at least one URL"));
    }
    Ok(parts)
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("--{name}: {v:?} is not a whole number"))
}

fn real(name: &str, v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("--{name}: {v:?} is not a number >= 0")),
    }
}

fn check(ok: bool, msg: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

/// The checks made before anything connects: ranges, loopback-only targets, source addresses.
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
    let targets = c
        .ws_urls
        .iter()
        .map(|u| WsTarget::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    for base in &c.endpoint_bases {
        target::EndpointBase::parse(base)?;
    }
    if let Some(spec) = &c.source_addrs {
        let addrs = SourceAddrs::parse(spec)?;
        check(
            targets.iter().all(|t| addrs.family_matches(&t.addr)),
            "--source-addrs must be of the same address family as every --ws-url",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Config, String> {
        match parse(args.split_whitespace().map(String::from))? {
            Command::Run(c) => Ok(c),
            _ => Err("not a run".into()),
        }
    }

    #[test]
    fn defaults_and_forms() {
        let c = run("notify").unwrap();
        assert_eq!(
            (c.connections, c.channels, c.rate, c.max_handshakes),
            (100, 1, 100.0, 500)
        );
        assert_eq!(c.ws_urls, ["ws://127.0.0.1:8080/"]);
        assert_eq!(c.run_devices, 100);
        let c = run("churn --connections=2_000 --rate 300 --no-progress").unwrap();
        assert_eq!((c.connections, c.rate, c.progress), (2000, 300.0, false));
        assert!(matches!(
            parse(["--help".to_string()].into_iter()),
            Ok(Command::Help)
        ));
    }

    #[test]
    fn refusals() {
        assert!(run("").is_err());
        assert!(run("connect --bogus 1").is_err());
        assert!(run("connect --rate -1").is_err());
        assert!(run("connect --channels 0").is_err());
        assert!(run("connect --ws-url ws://192.168.0.1/").is_err());
        assert!(run("connect --endpoint-base http://8.8.8.8").is_err());
        assert!(run("connect --source-addrs 10.1.1.1").is_err());
        assert!(run("connect --source-addrs ::1").is_err());
        assert!(run("churn --rate 0").is_err());
        assert!(run("notify --devices 10").is_err());
        assert!(run("churn --devices 10 --connections 20").is_err());
        assert!(run("churn --rounds 2").is_err());
        assert!(run("churn --devices 10 --connections 5 --rotate 1.5").is_err());
        assert!(run("churn --devices 10 --connections 5 --rss-csv x.csv").is_err());
        assert!(run("churn --devices 10 --connections 5 --rounds 2 --duration 400").is_err());
        let c = run("churn --devices 10 --connections 5 --rounds 2 --put-rate 50").unwrap();
        assert_eq!((c.devices, c.rounds, c.put_rate), (10, 2, 50.0));
        assert_eq!(c.run_devices, 10);
    }

    #[test]
    fn end_waits_grow_with_the_whole_run() {
        let c = run("connect --connections 1000000 --procs 56").unwrap();
        assert_eq!(c.end_wait(6.0), std::time::Duration::from_secs(106));
        let small = run("connect --connections 100").unwrap();
        assert_eq!(small.end_wait(5.0), std::time::Duration::from_millis(5010));
    }

    #[test]
    fn several_targets() {
        let c = run(
            "connect --ws-url ws://127.0.0.1:1/,ws://127.0.0.2:2/ --ws-url ws://127.0.0.3:3/ \
             --endpoint-base http://127.0.0.1:4 --endpoint-base=http://127.0.0.1:5,",
        )
        .unwrap();
        assert_eq!(
            c.ws_urls,
            [
                "ws://127.0.0.1:1/",
                "ws://127.0.0.2:2/",
                "ws://127.0.0.3:3/"
            ]
        );
        assert_eq!(
            c.endpoint_bases,
            ["http://127.0.0.1:4", "http://127.0.0.1:5"]
        );
        assert!(run("connect --ws-url ws://127.0.0.1:1/,ws://10.0.0.1:2/").is_err());
        assert!(run("connect --ws-url ,").is_err());
        assert!(run("connect --ws-url ws://127.0.0.1:1/ --source-addrs ::1").is_err());
    }
}
