//! simplepush-loadtest: drives thousands of SimplePush or WebPush devices (WebSockets, plain or
//! TLS) and app-server pushes (keep-alive HTTP/1.1) against a simplepush server (on this machine
//! unless --allow-remote), from one mio event loop per process, and reports rates, latencies,
//! losses and the server's memory and CPU (summary, JSON, HTML with charts).

mod addrs;
mod cli;
mod client;
mod config;
mod control;
mod driver;
mod html;
mod http;
mod net;
mod parent;
mod procstat;
mod progress;
mod report;
mod rng;
mod rsslog;
mod scenario;
mod stream;
mod svg;
mod tally;
mod target;
mod timeline;
mod tls;
mod tracker;
mod vapid;
mod webpush;

use std::process::ExitCode;

use crate::cli::{ChildSpec, Command, Config, FD_HEADROOM};
use crate::control::{ChildLink, ChildMsg, Control, ServerSamples};
use crate::report::Report;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(cfg)) => run(cfg),
        Ok(Command::Child(spec)) => run_child(spec),
        Err(e) => e.exit(),
    }
}

/// Raises the open-file limit; returns how many connections one process may hold.
fn fd_budget() -> u64 {
    match net::raise_nofile() {
        Ok(limit) => limit.saturating_sub(FD_HEADROOM),
        Err(e) => {
            eprintln!("simplepush-loadtest: warning: cannot raise RLIMIT_NOFILE: {e}");
            1024u64.saturating_sub(100)
        }
    }
}

/// Refuses a run that one process could not hold, or whose server pid cannot be read.
fn preflight(cfg: &Config, budget: u64) -> Result<(), String> {
    let procs = u64::from(cfg.procs);
    if procs > cfg.connections {
        return Err(format!(
            "--procs {procs} is more than --connections {}",
            cfg.connections
        ));
    }
    // The headroom covers the HTTP pool, the poll and stdio descriptors.
    let per_proc = cfg.connections.div_ceil(procs);
    if per_proc > budget {
        let need = cfg.connections.div_ceil(budget.max(1)).max(procs + 1);
        return Err(format!(
            "{per_proc} connections in one process exceed its budget of {budget} \
             (RLIMIT_NOFILE minus {FD_HEADROOM}); use --procs {need} or more"
        ));
    }
    if let Some(pid) = cfg.server_pid {
        procstat::sample(pid)
            .map_err(|e| format!("--server-pid {pid}: cannot read /proc/{pid}: {e}"))?;
    }
    // A bad --ca (or a system without roots) is a usage error, found before anything connects.
    let tls_urls = cfg.ws_urls.iter().chain(&cfg.endpoint_bases);
    if cfg.ca.is_some()
        || tls_urls
            .clone()
            .any(|u| u.starts_with("wss:") || u.starts_with("https:"))
    {
        tls::client_config(cfg.ca.as_deref(), cfg.insecure)?;
    }
    Ok(())
}

fn run(cfg: Config) -> ExitCode {
    let budget = fd_budget();
    if let Err(e) = preflight(&cfg, budget) {
        eprintln!("simplepush-loadtest: {e}");
        return ExitCode::from(2);
    }
    let outcome = if cfg.procs > 1 {
        parent::run(&cfg)
    } else {
        let control = Control::Solo(ServerSamples::new(cfg.server_pid, cfg.html.is_some()));
        scenario::run(cfg.clone(), control)
            .map_err(|e| e.to_string())
            .map(|(tally, control)| match control {
                Control::Solo(samples) => (tally, samples),
                Control::Child(_) => (tally, ServerSamples::default()),
            })
    };
    let (tally, samples) = match outcome {
        Ok(x) => x,
        Err(e) => {
            eprintln!("simplepush-loadtest: {e}");
            return ExitCode::from(1);
        }
    };
    let report = Report::build(&cfg, &tally, &samples);
    println!("{}", report.text());
    if let Some(path) = &cfg.json {
        if let Err(e) = std::fs::write(path, report.json() + "\n") {
            eprintln!("simplepush-loadtest: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &cfg.html {
        let page = html::render(
            &report,
            &tally.latency_hist,
            &tally.connect_hist,
            &samples.timeline,
        );
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("simplepush-loadtest: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn run_child(spec: ChildSpec) -> ExitCode {
    let budget = fd_budget();
    if spec.config.connections > budget {
        eprintln!(
            "simplepush-loadtest child {}: share exceeds the open-file budget",
            spec.index
        );
        return ExitCode::from(2);
    }
    let outcome = scenario::run(spec.config, Control::Child(ChildLink::default()));
    match outcome {
        Ok((tally, _)) => match control::send(&ChildMsg::Result {
            tally: Box::new(tally),
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "simplepush-loadtest child {}: sending the result: {e}",
                    spec.index
                );
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("simplepush-loadtest child {}: {e}", spec.index);
            ExitCode::from(1)
        }
    }
}
