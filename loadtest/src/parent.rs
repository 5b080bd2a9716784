//! `--procs P`: re-runs this binary P times with `--child` (each with its share of the devices
//! and rates and a slice of the source addresses), reads their JSON lines, releases barriers
//! once every child has reached them (sampling the server there), prints one progress line for
//! all, and merges their results.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use crate::addrs::SourceAddrs;
use crate::cli::{ChildSpec, Config};
use crate::control::{ChildMsg, Point, ServerSamples};
use crate::progress::{Printer, Snapshot};
use crate::rsslog::RssLog;
use crate::tally::Tally;

/// Time past --max-seconds after which children still running are killed.
const KILL_AFTER: Duration = Duration::from_secs(30);

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    last: Snapshot,
    waiting: Option<Point>,
    result: Option<Tally>,
    gone: bool,
}

/// A line from child `usize`, or None at the end of its output.
type Line = (usize, Option<ChildMsg>);

/// Child `i`'s share of the run.
pub fn share(cfg: &Config, i: usize, procs: usize, addrs: Option<&SourceAddrs>) -> Config {
    let part = |n: usize| n / procs + usize::from(i < n % procs);
    let mut c = cfg.clone();
    c.connections = part(cfg.connections as usize) as u64;
    c.devices = part(cfg.devices as usize) as u64;
    // Each process's clients are its devices (churn --devices) or its connections.
    let slots = if cfg.devices > 0 {
        cfg.devices
    } else {
        cfg.connections
    } as usize;
    c.first_device = cfg.first_device + (i * (slots / procs) + i.min(slots % procs)) as u64;
    c.put_rate = cfg.put_rate / procs as f64;
    c.rss_csv = None;
    c.rate = cfg.rate / procs as f64;
    c.ramp = cfg.ramp / procs as f64;
    c.max_handshakes = (cfg.max_handshakes / procs as u64).max(1);
    c.source_addrs = addrs.map(|a| a.slice(i, procs).spec());
    c.procs = 1;
    c.server_pid = None;
    c.json = None;
    c.html = None;
    c.progress = false;
    c
}

pub fn run(cfg: &Config) -> Result<(Tally, ServerSamples), String> {
    let procs = cfg.procs as usize;
    let addrs = cfg
        .source_addrs
        .as_deref()
        .map(|s| SourceAddrs::parse(s, cfg.allow_remote))
        .transpose()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut kids = Vec::with_capacity(procs);
    for i in 0..procs {
        let spec = ChildSpec {
            index: i as u32,
            config: share(cfg, i, procs, addrs.as_ref()),
        };
        match spawn(&exe, &spec, i, tx.clone()) {
            Ok(kid) => kids.push(kid),
            Err(e) => {
                kill_all(&mut kids);
                return Err(format!("starting child {i}: {e}"));
            }
        }
    }
    drop(tx);
    let mut samples = ServerSamples::new(cfg.server_pid, cfg.html.is_some());
    let mut log = match (&cfg.rss_csv, cfg.server_pid) {
        (Some(path), Some(pid)) => match RssLog::create(path, pid, cfg.sample_secs) {
            Ok(l) => Some(l),
            Err(e) => {
                kill_all(&mut kids);
                return Err(format!("{}: {e}", path.display()));
            }
        },
        _ => None,
    };
    supervise(cfg, &mut kids, &rx, &mut samples, &mut log);
    Ok((collect(&mut kids), samples))
}

fn spawn(
    exe: &std::path::Path,
    spec: &ChildSpec,
    i: usize,
    tx: Sender<Line>,
) -> std::io::Result<Kid> {
    let arg = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<ChildMsg>(&line) {
                Ok(msg) => {
                    if tx.send((i, Some(msg))).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!(
                    "simplepush-loadtest: child {i} said something unreadable ({e}): {line}"
                ),
            }
        }
        let _ = tx.send((i, None));
    });
    let stdin = child.stdin.take();
    Ok(Kid {
        child,
        stdin,
        last: Snapshot::default(),
        waiting: None,
        result: None,
        gone: false,
    })
}

fn supervise(
    cfg: &Config,
    kids: &mut [Kid],
    rx: &Receiver<Line>,
    samples: &mut ServerSamples,
    log: &mut Option<RssLog>,
) {
    let kill_at = Instant::now() + Duration::from_secs_f64(cfg.max_seconds) + KILL_AFTER;
    let mut printer = Printer::new(cfg.progress);
    let mut last_print = Instant::now();
    while kids.iter().any(|k| !k.gone) {
        if Instant::now() >= kill_at {
            eprintln!(
                "simplepush-loadtest: children still running past --max-seconds; killing them"
            );
            kill_all(kids);
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, msg)) => on_line(&mut kids[i], msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(point) = release_barrier(kids, samples) {
            if let Some(l) = log.as_mut() {
                l.row(&point.label(), &total(kids));
            }
        }
        if let Some(l) = log.as_mut().filter(|l| l.due(Instant::now())) {
            let t = total(kids);
            l.row(&t.phase, &t);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let t = total(kids);
            printer.print(&t);
            samples.timeline.record(&t);
        }
    }
    printer.done();
}

/// The children's latest progress, added up.
fn total(kids: &[Kid]) -> Snapshot {
    let mut total = Snapshot::default();
    kids.iter()
        .filter(|k| !k.gone)
        .for_each(|k| total.add(&k.last));
    total
}

fn on_line(kid: &mut Kid, msg: Option<ChildMsg>) {
    match msg {
        Some(ChildMsg::Progress { snap }) => kid.last = snap,
        Some(ChildMsg::Barrier { point }) => kid.waiting = Some(point),
        Some(ChildMsg::Result { tally }) => kid.result = Some(*tally),
        None => {
            kid.gone = true;
            kid.waiting = None;
        }
    }
}

/// When every running child waits at a barrier: sample the server, then tell them all `go`.
/// Returns the point released.
fn release_barrier(kids: &mut [Kid], samples: &mut ServerSamples) -> Option<Point> {
    let mut live = kids.iter().filter(|k| !k.gone).peekable();
    if live.peek().is_none() || !live.all(|k| k.waiting.is_some()) {
        return None;
    }
    let point = kids.iter().find_map(|k| k.waiting);
    if let Some(point) = point {
        samples.take(point);
    }
    for kid in kids.iter_mut().filter(|k| k.waiting.is_some()) {
        kid.waiting = None;
        let ok = kid
            .stdin
            .as_mut()
            .map(|s| s.write_all(b"go\n").and_then(|()| s.flush()));
        if !matches!(ok, Some(Ok(()))) {
            kid.stdin = None;
        }
    }
    point
}

fn kill_all(kids: &mut [Kid]) {
    for kid in kids {
        if !kid.gone {
            let _ = kid.child.kill();
            kid.gone = true;
        }
    }
}

/// Waits for every child and merges their results.
fn collect(kids: &mut [Kid]) -> Tally {
    let mut total = Tally::default();
    for (i, kid) in kids.iter_mut().enumerate() {
        kid.stdin = None;
        match kid.child.wait() {
            Ok(status) if !status.success() => {
                eprintln!("simplepush-loadtest: child {i} exited with {status}")
            }
            Err(e) => eprintln!("simplepush-loadtest: waiting for child {i}: {e}"),
            Ok(_) => {}
        }
        match &kid.result {
            Some(t) => total.merge(t),
            None => {
                eprintln!("simplepush-loadtest: child {i} sent no result; its share is missing")
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    #[test]
    fn shares_add_up() {
        let args =
            "notify --connections 19001 --rate 1000 --procs 3 --source-addrs 127.0.0.2-127.0.0.20";
        let Ok(Command::Run(cfg)) = parse(args.split_whitespace().map(String::from)) else {
            panic!()
        };
        let addrs = SourceAddrs::parse("127.0.0.2-127.0.0.20", false).unwrap();
        let shares: Vec<Config> = (0..3).map(|i| share(&cfg, i, 3, Some(&addrs))).collect();
        assert_eq!(shares.iter().map(|c| c.connections).sum::<u64>(), 19001);
        assert!((shares.iter().map(|c| c.rate).sum::<f64>() - 1000.0).abs() < 1e-9);
        assert_eq!(
            shares[0].source_addrs.as_deref(),
            Some("127.0.0.2-127.0.0.7")
        );
        assert!(shares
            .iter()
            .all(|c| c.procs == 1 && c.server_pid.is_none() && c.json.is_none()));
        // Device numbers run on from one child to the next, so URL i mod N spreads them evenly.
        let firsts: Vec<u64> = shares.iter().map(|c| c.first_device).collect();
        assert_eq!(firsts, [0, 6334, 12668]);
        assert!(shares.iter().all(|c| c.run_devices == 19001));
    }
}
