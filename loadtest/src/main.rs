//! simplepush-loadtest: drives thousands of SimplePush devices (WebSockets) and app-server PUTs
//! (keep-alive HTTP/1.1) against a simplepush server on this machine, from one mio event loop
//! per process, and reports rates, latencies, losses and the server's memory and CPU.

mod addrs;
mod cli;
mod client;
mod control;
mod driver;
mod http;
mod net;
mod parent;
mod procstat;
mod progress;
mod report;
mod rng;
mod rsslog;
mod scenario;
mod tally;
mod target;
mod tracker;

use std::process::ExitCode;

use crate::cli::{ChildSpec, Command, Config, FD_HEADROOM};
use crate::control::{ChildLink, ChildMsg, Control, ServerSamples};
use crate::report::Report;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(cfg)) => run(cfg),
        Ok(Command::Child(spec)) => run_child(spec),
        Err(e) => {
            eprintln!("simplepush-loadtest: {e}");
            ExitCode::from(2)
        }
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
        let control = Control::Solo(ServerSamples::new(cfg.server_pid));
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
