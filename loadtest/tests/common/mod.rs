//! What the tester's integration tests share: a real simplepush server (the workspace's own
//! binary, built by `cargo test --workspace` beside the tester) on a free loopback port, and
//! runs of the tester binary with their JSON report.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const TESTER: &str = env!("CARGO_BIN_EXE_simplepush-loadtest");
pub const KEY: &str = "iG5xUO-bgd9b5ZCbJr-wFyf9AQMpbIaDPSvNpKGNMXY";

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the process group led by a child we started (and everything it spawned) on drop.
pub struct GroupGuard(pub u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            // SAFETY: kill(2) on the group of our own child; a group already gone is ESRCH.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
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

/// A running server: its process and where it listens.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// A server on the memory store with `extra` config sections, once it listens.
pub fn server(dir: &Path, extra: &str) -> Server {
    let cfg = dir.join("server.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{extra}\n[admin]\nlisten = \"\"\n\
         [endpoint]\ntoken_keys = [\"{KEY}\"]\n[storage]\nbackend = \"memory\"\n"
    );
    std::fs::write(&cfg, text).expect("write the server's config");
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
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let _ = tx.send(rest.split(' ').next().unwrap_or("").to_string());
            }
        }
    });
    let proc = Proc(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server says where it listens");
    Server {
        proc,
        addr: addr.parse().expect("a socket address"),
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as cert.pem / key.pem in
/// `dir`; returns the `[tls]` section naming them and the certificate file.
pub fn self_signed(dir: &Path, name: &str) -> (String, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let (cert_file, key_file) = (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_file, cert.cert.pem()).expect("write the certificate");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write the key");
    let section = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    (section, cert_file)
}

/// Runs the tester with `args` (plus --no-progress); its output.
pub fn run_tester(args: &[String]) -> Output {
    Command::new(TESTER)
        .args(args)
        .arg("--no-progress")
        .output()
        .expect("run the tester")
}

/// Runs the tester, which must succeed; its JSON report.
pub fn tester_json(dir: &Path, args: &[String]) -> Value {
    let json = dir.join("report.json");
    let mut all = args.to_vec();
    all.extend(["--json".into(), json.display().to_string()]);
    let out = run_tester(&all);
    assert!(
        out.status.success(),
        "tester failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json).expect("the JSON report");
    serde_json::from_str(&report).expect("JSON")
}

/// Splits "a b c" into arguments.
pub fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The number at `path` in a report.
pub fn num(v: &Value, path: &str) -> u64 {
    let mut x = v;
    for p in path.split('.') {
        x = &x[p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}
