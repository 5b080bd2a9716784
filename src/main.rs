//! simplepush: a SimplePush server. One WebSocket per device; app servers wake devices with
//! `PUT /update/<token>`.

use std::path::PathBuf;
use std::process::ExitCode;

use log::{info, warn};

use simplepush::config::{self, Config};
use simplepush::logging;
use simplepush::reload::{Live, Reloader};
use simplepush::server;

const HELP: &str = "\
simplepush: a push server for Mozilla's SimplePush and WebPush (RFC 8030) over WebSocket

USAGE:
    simplepush [--config FILE]

OPTIONS:
    -c, --config FILE   TOML configuration (see config.sample.toml; every key is optional);
                        without it, SIMPLEPUSH_CONFIG=FILE names the file (the flag wins)
    -h, --help          print this help
    -V, --version       print the version

Every key can also be set by an environment variable SIMPLEPUSH_<SECTION>_<KEY>,
e.g. SIMPLEPUSH_SERVER_LISTEN=0.0.0.0:8080; lists are comma-separated. Other SIMPLEPUSH_*
variables (Kubernetes sets SIMPLEPUSH_SERVICE_HOST and the like) are logged and ignored.
Logging: log.level (an env_logger filter such as info or warn,simplepush::reliability=debug;
when empty, RUST_LOG, else info) and log.format = text or json (one object per line).
Listeners: devices and app servers on server.listen (TLS with [tls]), metrics on
admin.listen (127.0.0.1:8081 by default), cluster forwards on cluster.router_listen.
Health on admin.listen (and, with server.public_health = true, on server.listen):
GET /__lbheartbeat__ (liveness), /__heartbeat__ (readiness: storage, draining), /__version__.
Dead sockets: a device silent for websocket.auto_ping_interval_secs (300) gets a WebSocket
ping and is closed unless it answers within websocket.auto_ping_timeout_secs (30); device
connections carry TCP keepalive (server.tcp_keepalive_secs, 300).
Rate limits per source address on registers (600/min, bursts of 1000) and the new UAIDs
they create (60/min, bursts of 100), see [rate_limit]; behind a proxy, list it in
rate_limit.trusted_proxies so that its X-Forwarded-For names the source.
SIGTERM/SIGINT: stop accepting, close device sockets over server.drain_ms, exit.
SIGHUP: re-read the config file for the TLS certificate and key, endpoint.token_keys (the
first seals, all open) and [log]; sockets stay up, a bad file keeps the old settings.
Exit codes: 0 after a clean SIGTERM/SIGINT shutdown, 1 on a runtime failure,
2 on a usage or configuration error.
";

enum Cli {
    Run(Option<PathBuf>),
    Help,
    Version,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Cli::Help),
            "-V" | "--version" => return Ok(Cli::Version),
            "-c" | "--config" => {
                let file = args.next().ok_or("--config needs a file")?;
                config = Some(PathBuf::from(file));
            }
            other => match other.strip_prefix("--config=") {
                Some(file) => config = Some(PathBuf::from(file)),
                None => return Err(format!("unknown argument {other:?} (try --help)")),
            },
        }
    }
    Ok(Cli::Run(config))
}

fn main() -> ExitCode {
    let path = match parse_args(std::env::args().skip(1)) {
        Ok(Cli::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Version) => {
            println!("simplepush {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Run(path)) => path,
        Err(e) => {
            eprintln!("simplepush: {e}");
            return ExitCode::from(2);
        }
    };
    // Before anything else: SIGHUP's default action would end the process.
    let hup = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simplepush: cannot handle SIGHUP: {e}");
            return ExitCode::from(2);
        }
    };
    let path = config::file_path(path, std::env::var_os(config::CONFIG_ENV));
    let loaded = match Config::load(path.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("simplepush: {e}");
            return ExitCode::from(2);
        }
    };
    let log = logging::Settings::of(&loaded.config.log, std::env::var("RUST_LOG").ok());
    logging::init(log);
    if let Some(p) = &path {
        info!("configuration from {}", p.display());
    }
    for line in &loaded.ignored {
        warn!("{line}");
    }
    let running = loaded.config;
    let mut cfg = running.clone();
    simplepush::host_limits::fit(&mut cfg.server);
    let live = match Live::load(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("simplepush: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.endpoint.token_keys.is_empty() && cfg.storage.backend != "disk" {
        warn!("no endpoint.token_keys configured: using a random key, so endpoints die with this process");
    }
    let reloader = Reloader::new(path, running, live.clone());
    // A file-size limit (ulimit -f) must fail a write with EFBIG, answered 503, not kill us.
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        warn!("cannot ignore SIGXFSZ: {e}");
    }
    let servers = match server::start(cfg, live) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simplepush: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(first) = servers.first() else {
        return ExitCode::from(2);
    };
    let addrs: Vec<String> = first
        .service_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if let Some(admin) = first.admin_addr() {
        info!("admin listener on {admin} (GET /metrics, /health, /status, /__lbheartbeat__, /__heartbeat__, /__version__)");
    }
    info!(
        "simplepush {} listening on {} (endpoints at {}/update/..., {} event loops)",
        env!("CARGO_PKG_VERSION"),
        addrs.join(" and "),
        first.public_url(),
        servers.len()
    );
    if let Err(e) = reloader.watch(hup) {
        warn!("no reload thread ({e}): SIGHUP is ignored");
    }
    simplepush::metrics::start_sampler();
    ExitCode::from(server::run_all(servers) as u8)
}
