//! One tester run for a whole cluster: real simplepush nodes sharing a real memcached, driven by
//! one `simplepush-loadtest` run with several `--ws-url`s over child processes, pushing through
//! the next node with several `--endpoint-base`s, and one merged report that counts each node.
//!
//! The server binary is the workspace's own `target/<profile>/simplepush`, built by
//! `cargo test --workspace` (or `cargo build --bin simplepush`) beside the tester.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const TESTER: &str = env!("CARGO_BIN_EXE_simplepush-loadtest");
const KEY: &str = "iG5xUO-bgd9b5ZCbJr-wFyf9AQMpbIaDPSvNpKGNMXY";
const SECRET: &str = "loadtest-cluster-secret-0123";

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_bin() -> PathBuf {
    let bin = Path::new(TESTER).with_file_name("simplepush");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` or `cargo build --bin simplepush` first",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn memcached() -> (Proc, SocketAddr) {
    let port = free_port();
    let child = Command::new("memcached")
        .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
        .args(["-m", "64", "-M", "-u", "root"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached (Debian's package) must be installed");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let proc = Proc(child);
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "memcached did not come up on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, addr)
}

/// A cluster node: its process, its public and its admin address.
struct Node {
    _proc: Proc,
    public: SocketAddr,
    admin: SocketAddr,
}

/// A cluster node on memcached, once it listens.
fn node(dir: &Path, i: usize, mc: SocketAddr) -> Node {
    let cfg = dir.join(format!("node{i}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [endpoint]\ntoken_keys = [\"{KEY}\"]\n\
         [rate_limit]\nnew_uaids_per_minute = 0\nregisters_per_minute = 0\n\
         [storage]\nbackend = \"memcached\"\nservers = [\"{mc}\"]\n\
         [cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\n"
    );
    std::fs::write(&cfg, text).expect("write the node's config");
    let mut child = Command::new(server_bin())
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start simplepush");
    let stderr = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            for (said, what) in [(" listening on ", 0), (" admin listener on ", 1)] {
                if let Some(rest) = line.split(said).nth(1) {
                    let _ = tx.send((what, rest.split(' ').next().unwrap_or("").to_string()));
                }
            }
        }
    });
    let proc = Proc(child);
    let mut addrs: [Option<SocketAddr>; 2] = [None, None];
    while addrs.iter().any(Option::is_none) {
        let (what, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the node says where it listens");
        addrs[what] = addr.parse().ok();
    }
    let [Some(public), Some(admin)] = addrs else {
        unreachable!("both addresses were read")
    };
    Node {
        _proc: proc,
        public,
        admin,
    }
}

/// `simplepush_notifications_total{event="routed"}` of a node: pushes it handed to another.
fn routed(admin: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(admin).expect("the admin listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("simplepush_notifications_total{event=\"routed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no routed counter in {body}"))
}

fn tester(args: &[String]) -> Value {
    let json = std::env::temp_dir().join(format!("lt-cluster-{}.json", std::process::id()));
    let out = Command::new(TESTER)
        .args(args)
        .args(["--no-progress", "--json"])
        .arg(&json)
        .output()
        .expect("run the tester");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tester failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&report).expect("JSON")
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{} missing in {v}", path.join(".")))
}

#[test]
fn one_run_drives_every_node_and_pushes_through_the_next() {
    let dir = std::env::temp_dir().join(format!("lt-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (_mc, mc_addr) = memcached();
    let nodes: Vec<Node> = (0..3).map(|i| node(&dir, i, mc_addr)).collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://{}/", n.public))
        .collect();
    let bases: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", n.public))
        .collect();
    // 302 devices over 3 nodes and 2 processes: each process holds 151, so numbering the devices per process would give 102, 100, 100.
    let mut args: Vec<String> = "notify --connections 302 --procs 2 --rate 300 --duration 3"
        .split(' ')
        .map(String::from)
        .collect();
    args.extend(["--ws-url".into(), urls.join(",")]);
    for b in &bases {
        args.extend(["--endpoint-base".into(), b.clone()]);
    }
    let r = tester(&args);
    assert_eq!(num(&r, &["connections", "ok"]), 302, "{r:#}");
    let by_target = r["connections"]["by_target"]
        .as_object()
        .expect("by_target");
    assert_eq!(by_target.len(), 3, "{r:#}");
    let counts: Vec<u64> = urls
        .iter()
        .map(|u| num(&by_target[u.as_str()], &["ok"]))
        .collect();
    // Device i goes to URL i mod 3, whichever process holds it.
    assert_eq!(counts, [101, 101, 100], "{r:#}");
    let sent = num(&r, &["notifications", "sent"]);
    assert!(sent >= 600, "{r:#}");
    assert_eq!(num(&r, &["notifications", "received"]), sent, "{r:#}");
    assert_eq!(num(&r, &["notifications", "lost"]), 0, "{r:#}");
    assert_eq!(num(&r, &["notifications", "misrouted"]), 0, "{r:#}");
    // Each push was sent to the node after its device's, which handed it over.
    let handed: Vec<u64> = nodes.iter().map(|n| routed(n.admin)).collect();
    assert_eq!(handed.iter().sum::<u64>(), sent, "{handed:?}: {r:#}");
    assert!(handed.iter().all(|&h| h > 0), "{handed:?}");

    // connect: the shared phases end with every device answering its ping on every node.
    let mut args: Vec<String> = "connect --connections 90 --procs 3 --duration 1"
        .split(' ')
        .map(String::from)
        .collect();
    for u in &urls {
        args.extend(["--ws-url".into(), u.clone()]);
    }
    let r = tester(&args);
    for u in &urls {
        let t = &r["connections"]["by_target"][u.as_str()];
        assert_eq!(
            (
                num(t, &["ok"]),
                num(t, &["ping_ok"]),
                num(t, &["ping_failed"])
            ),
            (30, 30, 0),
            "{u}: {r:#}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
