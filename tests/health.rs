//! The split health paths against the real binary: liveness (`/__lbheartbeat__`), readiness
//! (`/__heartbeat__`: storage and draining), `/__version__`, where they are served, and the
//! Dockerfile's and the systemd unit's checks run against a real server.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{have_memcached, memcached_section, request, Memcached, Server};
use serde_json::{json, Value};

const PATHS: [&str; 3] = ["/__lbheartbeat__", "/__heartbeat__", "/__version__"];

fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let r = request(addr, "GET", path, &[], "");
    let v = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{path}: not JSON: {r:?}"));
    (r.status, v)
}

/// Polls readiness until it answers `status` (at most 10 s); the last body.
fn wait_readiness(addr: std::net::SocketAddr, status: u16) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = get_json(addr, "/__heartbeat__");
        if got == status {
            return body;
        }
        assert!(Instant::now() < end, "readiness stayed {got}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn liveness_holds_while_readiness_follows_a_stopped_memcached() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let s = Server::start_with("", &memcached_section(&[mc.addr]));
    assert!(s.wait_log("memcached reachable"), "{}", s.log());
    let admin = s.admin_addr.expect("admin listener");
    assert_eq!(
        get_json(admin, "/__lbheartbeat__"),
        (200, json!({"status":"ok"}))
    );
    let (status, body) = get_json(admin, "/__heartbeat__");
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status":"ok","storage":"ok","draining":false}));

    // Frozen, not gone: connections stay open and nothing answers.
    mc.signal("STOP");
    let body = wait_readiness(admin, 503);
    assert_eq!(
        body,
        json!({"status":"error","storage":"unavailable","draining":false})
    );
    let t = Instant::now();
    assert_eq!(
        get_json(admin, "/__lbheartbeat__"),
        (200, json!({"status":"ok"}))
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "liveness waited on storage: {:?}",
        t.elapsed()
    );
    // The old path keeps its meaning: 503 while the store is unusable.
    assert_eq!(request(admin, "GET", "/health", &[], "").status, 503);

    mc.signal("CONT");
    let body = wait_readiness(admin, 200);
    assert_eq!(body, json!({"status":"ok","storage":"ok","draining":false}));
}

#[test]
fn readiness_says_draining_while_a_shutdown_closes_sockets() {
    // Ten sockets over 10 s: the last ones stay open for seconds after the signal, whatever the
    // machine's load (each closed one also waits for its close frame, which nobody answers).
    let mut s = Server::start_with("drain_ms = 10000\nworkers = 1", "");
    let admin = s.admin_addr.expect("admin listener");
    let mut clients: Vec<common::Client> = (0..10).map(|_| s.client()).collect();
    for c in &mut clients {
        c.hello_new();
    }
    assert_eq!(wait_readiness(admin, 200)["draining"], false);
    Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(s.wait_log("draining 10 sockets"), "{}", s.log());
    // Device sockets are still open, and the admin listener with them.
    let (status, body) = get_json(admin, "/__heartbeat__");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"status":"error","storage":"ok","draining":true})
    );
    assert_eq!(get_json(admin, "/__lbheartbeat__").0, 200);
    // The public listener closed at once, as before.
    assert!(std::net::TcpStream::connect(s.addr).is_err());
    // Once the devices are gone the process ends, and the admin listener with it.
    drop(clients);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(std::net::TcpStream::connect(admin).is_err());
}

#[test]
fn version_names_the_package_version_commit_and_build_date() {
    let s = Server::start();
    let (status, v) = get_json(s.admin_addr.unwrap(), "/__version__");
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let commit = v["commit"].as_str().expect("commit");
    // The tests are built from this tree, so build.rs saw the same HEAD (or no git at all).
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) if std::env::var_os("GIT_COMMIT").is_none() => assert_eq!(commit, head),
        _ => assert!(!commit.is_empty()),
    }
    let date = v["build_date"].as_str().expect("build_date");
    let shape: String = date
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect();
    assert_eq!(shape, "0000-00-00T00:00:00Z", "{date}");
    assert!(date >= "2024", "{date}");
}

#[test]
fn the_public_listener_serves_them_only_when_switched_on() {
    let s = Server::start();
    for path in PATHS {
        assert_eq!(request(s.addr, "GET", path, &[], "").status, 404, "{path}");
        assert_eq!(
            request(s.admin_addr.unwrap(), "GET", path, &[], "").status,
            200,
            "{path}"
        );
    }
    // What existing users call is unchanged.
    let r = request(s.addr, "GET", "/health", &[], "");
    assert_eq!((r.status, r.body.as_str()), (200, "{\"status\":\"OK\"}"));
    let (status, v) = get_json(s.addr, "/status");
    assert_eq!((status, v["status"].as_str()), (200, Some("OK")));
    drop(s);

    let s = Server::start_with("public_health = true", "");
    assert_eq!(
        get_json(s.addr, "/__lbheartbeat__"),
        (200, json!({"status":"ok"}))
    );
    let (status, v) = get_json(s.addr, "/__heartbeat__");
    assert_eq!((status, &v["storage"]), (200, &json!("ok")));
    let (status, v) = get_json(s.addr, "/__version__");
    assert_eq!(
        (status, &v["version"]),
        (200, &json!(env!("CARGO_PKG_VERSION")))
    );
    // GET only, like /status.
    assert_eq!(
        request(s.addr, "POST", "/__heartbeat__", &[], "").status,
        404
    );
}

/// A deployment file's check with the admin port replaced by this server's.
fn check_with_port(script: &str, port: u16) -> std::process::ExitStatus {
    assert!(script.contains("/__lbheartbeat__"), "{script}");
    assert!(script.contains("127.0.0.1/8081"), "{script}");
    let script = script
        .replace("127.0.0.1/8081", &format!("127.0.0.1/{port}"))
        // The unit retries for 10 s; a refused check need not take that long here.
        .replace("sleep 0.2", "sleep 0.01");
    Command::new("bash").args(["-c", &script]).status().unwrap()
}

/// The Dockerfile's HEALTHCHECK command and the systemd unit's ExecStartPost script.
fn deployment_checks() -> Vec<(&'static str, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let docker = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let cmd = docker
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("HEALTHCHECK CMD");
    let argv: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD");
    assert_eq!(argv[..2], ["bash", "-c"]);
    let unit = std::fs::read_to_string(format!("{root}/deploy/simplepush.service")).unwrap();
    let post = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPost=/bin/bash -c '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("ExecStartPost=/bin/bash -c '...'");
    // systemd would expand these; the script is written without them, so it runs as written.
    assert!(!post.contains('$') && !post.contains('%'), "{post}");
    vec![
        ("Dockerfile", argv[2].clone()),
        ("systemd unit", post.to_string()),
    ]
}

#[test]
fn the_dockerfile_and_the_systemd_unit_check_the_liveness_path() {
    if !have_memcached() {
        return;
    }
    // With storage down, so that passing proves the checks do not depend on it.
    let mut mc = Memcached::start();
    let s = Server::start_with("", &memcached_section(&[mc.addr]));
    mc.kill();
    wait_readiness(s.admin_addr.unwrap(), 503);
    let port = s.admin_addr.unwrap().port();
    for (file, script) in deployment_checks() {
        assert!(check_with_port(&script, port).success(), "{file}: {script}");
    }
    drop(s);
    // Nothing listening: both checks fail.
    for (file, script) in deployment_checks() {
        assert!(
            !check_with_port(&script, port).success(),
            "{file}: {script}"
        );
    }
}
