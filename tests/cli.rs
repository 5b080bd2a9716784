//! The command line, configuration errors and shutdown, against the real binary.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{chid, Got, Server};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simplepush"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn temp_file(name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("sp-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().to_string()
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("--config") && out.contains("SIMPLEPUSH_"));
    assert!(out.contains("SIMPLEPUSH_CONFIG=FILE"), "{out}");
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("simplepush "));
}

#[test]
fn usage_and_config_errors_exit_2_naming_the_problem() {
    let (code, _, err) = run(&["--frobnicate"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--frobnicate"));
    let (code, _, err) = run(&["--config", "/no/such/file.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/file.toml"), "{err}");
    let f = temp_file(
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
    );
    let (code, _, err) = run(&["--config", &f], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{f}, line 3, column 1, key server.lisen: unknown key"
        )),
        "{err}"
    );
    let f = temp_file("type.toml", "[websocket]\nmax_channels = \"lots\"\n");
    let (code, _, err) = run(&["--config", &f], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{f}, line 2, column 16, key websocket.max_channels: invalid type: string \"lots\", \
             expected a non-negative integer"
        )),
        "{err}"
    );
    let f = temp_file("small.toml", "[websocket]\nmax_message_size = 1000\n");
    let (code, _, err) = run(&["--config", &f], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{f}, line 2, column 20, key websocket.max_message_size: must be at least"
        )),
        "{err}"
    );
    let (code, _, err) = run(&[], &[("SIMPLEPUSH_SERVER_LISTEN", "nowhere")]);
    assert_eq!(code, 2);
    assert!(err.contains("server.listen"), "{err}");
    let (code, _, err) = run(&[], &[("SIMPLEPUSH_ENDPOINT_TOKEN_KEYS", "tooshort")]);
    assert_eq!(code, 2);
    assert!(err.contains("token_keys"), "{err}");
}

/// A copy of config.sample.toml with its last line reading `from` changed to `to`, and that
/// line's number in the copy.
fn sample_with(name: &str, from: &str, to: &str) -> (String, usize) {
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.sample.toml"))
            .unwrap();
    let mut lines: Vec<&str> = sample.lines().collect();
    let at = lines.iter().rposition(|l| *l == from).expect(from);
    lines[at] = to;
    (temp_file(name, &(lines.join("\n") + "\n")), at + 1)
}

#[test]
fn config_errors_deep_in_a_long_file_name_its_line_column_and_key() {
    let (f, line) = sample_with("misspelt.toml", "router_url = \"\"", "router_ur1 = \"\"");
    assert!(line > 150, "near the end of the file: {line}");
    let (code, out, err) = run(&["--config", &f], &[]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "simplepush: config file {f}, line {line}, column 1, key cluster.router_ur1: \
             unknown key `router_ur1`, expected one of `router_listen`, `router_url`"
        )),
        "{err}"
    );
    let (f, line) = sample_with(
        "wrongtype.toml",
        "max_messages = 100",
        "max_messages = true",
    );
    assert!(line > 150, "{line}");
    let (code, _, err) = run(&["--config", &f], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "config file {f}, line {line}, column 16, key webpush.max_messages: \
             invalid type: boolean `true`, expected a non-negative integer"
        )),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let f = temp_file("env.toml", "[server]\nlisten = \"127.0.0.1:1\"\n");
    let mut s = Server::spawn(
        &["--config", &f],
        &[
            ("SIMPLEPUSH_SERVER_LISTEN", "127.0.0.1:0"),
            ("SIMPLEPUSH_SERVER_PUBLIC_URL", "https://push.example.com/"),
        ],
    );
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert!(ep.starts_with("https://push.example.com/update/"), "{ep}");
    assert!(s.log().contains("no endpoint.token_keys configured"));
    assert_eq!(
        s.terminate(Duration::from_secs(5)).and_then(|st| st.code()),
        Some(0)
    );
}

#[test]
fn kubernetes_service_variables_are_warned_about_and_ignored() {
    let f = temp_file("k8s.toml", "[server]\nlisten = \"127.0.0.1:0\"\n");
    // What Kubernetes injects into every pod of the namespace for a Service named `simplepush`.
    let s = Server::spawn(
        &["--config", &f],
        &[
            ("SIMPLEPUSH_SERVICE_HOST", "10.0.0.1"),
            ("SIMPLEPUSH_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ],
    );
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(common::put(&ep, "version=7").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 7);
    let log = s.log();
    for name in ["SIMPLEPUSH_SERVICE_HOST", "SIMPLEPUSH_PORT_8080_TCP"] {
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("environment variable {name} ignored")))
            .collect();
        assert_eq!(warned.len(), 1, "one warning for {name}: {log}");
        assert!(warned[0].contains("WARN"), "{log}");
    }
}

#[test]
fn simplepush_config_names_the_file_unless_the_flag_does() {
    let from_env = temp_file(
        "from-env.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://env-file.example\"\n",
    );
    let s = Server::spawn(&[], &[("SIMPLEPUSH_CONFIG", &from_env)]);
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert!(ep.starts_with("https://env-file.example/update/"), "{ep}");
    assert!(s.log().contains(&format!("configuration from {from_env}")));
    assert!(
        !s.log().contains("SIMPLEPUSH_CONFIG ignored"),
        "{}",
        s.log()
    );
    drop(s);
    let from_flag = temp_file(
        "from-flag.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://flag-file.example\"\n",
    );
    let s = Server::spawn(
        &["--config", &from_flag],
        &[("SIMPLEPUSH_CONFIG", &from_env)],
    );
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert!(ep.starts_with("https://flag-file.example/update/"), "{ep}");
    drop(s);
    // A file named by the variable that is not there stops the server like a missing --config.
    let (code, _, err) = run(&[], &[("SIMPLEPUSH_CONFIG", "/no/such/env-file.toml")]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/env-file.toml"), "{err}");
}

#[test]
fn sigterm_closes_clients_and_exits_promptly() {
    let mut s = Server::start_with("drain_ms = 300", "");
    let mut clients: Vec<common::Client> = (0..20).map(|_| s.client()).collect();
    for c in &mut clients {
        c.hello_new();
    }
    let status = s
        .terminate(Duration::from_secs(5))
        .expect("exited within 5 s");
    assert_eq!(status.code(), Some(0));
    for c in &mut clients {
        assert!(
            matches!(c.next(Duration::from_secs(1)), Got::Close(Some(1001))),
            "every client gets a going-away close frame"
        );
    }
    assert!(s.log().contains("shutdown complete"));
}

#[test]
fn shutdown_keeps_to_its_timeout_when_clients_do_not_answer() {
    let mut s = Server::start_with(
        "shutdown_timeout_ms = 800\nclose_timeout_ms = 5000\ndrain_ms = 0",
        "",
    );
    let mut clients: Vec<common::Client> = (0..10).map(|_| s.client()).collect();
    for c in &mut clients {
        c.hello_new();
    }
    // Nobody reads the close frames, so nobody answers them: only the shutdown timeout ends it.
    let t = std::time::Instant::now();
    let status = s.terminate(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn sigterm_drains_sockets_gradually() {
    let mut s = Server::start_with("drain_ms = 1500\nworkers = 1", "");
    let mut clients: Vec<common::Client> = (0..15).map(|_| s.client()).collect();
    for c in &mut clients {
        c.hello_new();
    }
    let pid = s.pid();
    let t = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // Every client answers its close frame at once, as a device would; note when each came.
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let got = c.next(Duration::from_secs(5));
                (got, t.elapsed())
            })
        })
        .collect();
    let mut times: Vec<Duration> = handles
        .into_iter()
        .map(|h| {
            let (got, at) = h.join().unwrap();
            assert!(matches!(got, Got::Close(Some(1001))), "{got:?}");
            at
        })
        .collect();
    times.sort();
    assert!(times[0] < Duration::from_millis(500), "{times:?}");
    assert!(times[14] > Duration::from_millis(1000), "{times:?}");
    assert!(times[14] < Duration::from_millis(2500), "{times:?}");
    // Spread out, not in one burst: the middle one about halfway.
    assert!(
        times[7] > Duration::from_millis(400) && times[7] < Duration::from_millis(1200),
        "{times:?}"
    );
    let status = s.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(s.log().contains("draining 15 sockets over 1500 ms"));
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    let first = Server::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .env("SIMPLEPUSH_SERVER_LISTEN", first.addr.to_string())
        .env("SIMPLEPUSH_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&first.addr.to_string()) && err.contains("in use"),
        "{err}"
    );
    // The first one is unharmed.
    let mut c = first.client();
    c.hello_new();
}

#[test]
fn host_limits_that_cap_the_configuration_are_warned_at_start() {
    // 300 descriptors against the default max_connections of 100,000.
    let s = Server::start_with_fd_limit(300);
    assert!(
        s.wait_log(
            "host limit: server.max_connections lowered from 100000 to 236: the open-files \
             limit (RLIMIT_NOFILE) is 300"
        ),
        "{}",
        s.log()
    );
    assert!(s.log().contains("ulimit -n"), "{}", s.log());
    drop(s);
    // A backlog above net.core.somaxconn is named with the sysctl that raises it.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if somaxconn >= 65535 {
        return;
    }
    let s = Server::start_with(&format!("listen_backlog = {}", somaxconn + 1), "");
    assert!(
        s.wait_log(&format!("net.core.somaxconn is {somaxconn}")),
        "{}",
        s.log()
    );
    assert!(
        s.log().contains("sysctl -w net.core.somaxconn="),
        "{}",
        s.log()
    );
    // The default fits this machine's somaxconn, so nothing about it is said.
    let quiet = Server::start();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        quiet.log().contains("somaxconn"),
        somaxconn < 4096,
        "{}",
        quiet.log()
    );
}

#[test]
fn devices_that_fill_their_share_leave_room_for_operators_and_app_servers() {
    // 300 descriptors: max_connections becomes 236, of which 5% (11) devices cannot take.
    let s = Server::start_with_fd_limit(300);
    let mut devices: Vec<common::Client> = (0..225).map(|_| s.client()).collect();
    let mut eps = Vec::new();
    for (i, c) in devices.iter_mut().enumerate().take(3) {
        c.hello_new();
        eps.push(c.register(&chid(i as u32)));
    }
    // One device more is refused with a status, not left hanging.
    let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let refused = common::raw_http(s.addr, upgrade);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after").as_deref(), Some("30"));
    assert!(
        s.wait_log("device WebSockets fill their share"),
        "{}",
        s.log()
    );
    // App servers and operators are still served.
    assert_eq!(common::put(&eps[0], "version=7").status, 200);
    assert_eq!(devices[0].recv()["updates"][0]["version"], 7);
    let m = s.metrics();
    let ws = m[r#"simplepush_connections{state="awaiting_hello"}"#]
        + m[r#"simplepush_connections{state="ready"}"#];
    assert_eq!(ws, 225.0, "{m:?}");
    assert!(m["simplepush_refused_connections_total"] >= 1.0, "{m:?}");
    // Idle HTTP connections fill what is left of max_connections: the admin listener still answers.
    let fillers: Vec<TcpStream> = (0..11)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let m = s.metrics();
    // 236 open before the admin request came: 225 devices, 11 idle fillers.
    assert!(
        m[r#"simplepush_connections{state="http"}"#] >= 11.0,
        "{m:?}"
    );
    drop(fillers);
}
