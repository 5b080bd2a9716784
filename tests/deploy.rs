//! The deployment files in deploy/ and the Dockerfile, exercised: the Grafana dashboard against a
//! real server's /metrics, the compose cluster's configuration as three real nodes, the image's
//! configuration step, and the systemd template unit's start check.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const SECRET: &str = "compose-secret-0123456789";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sp-deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every metric name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    let mut names = BTreeSet::new();
    for panel in d["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                words
                    .filter(|w| w.starts_with("simplepush_") || w.starts_with("process_"))
                    .map(str::to_string),
            );
        }
    }
    names
}

#[test]
fn the_dashboard_shows_every_metric_a_server_exports_and_no_other() {
    if !have_memcached() {
        return;
    }
    // On memcached, so that the storage backend's own series are there too.
    let mc = Memcached::start();
    let s = Server::start_with("", &memcached_section(&[mc.addr]));
    let exported: BTreeSet<String> = s
        .metrics()
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .collect();
    let shown = dashboard_metrics();
    let unknown: Vec<_> = shown.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}"
    );
    // A histogram counts as shown when any of its series is.
    let family = |n: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| n.strip_suffix(suffix))
            .filter(|base| exported.contains(&format!("{base}_bucket")))
            .unwrap_or(n)
            .to_string()
    };
    let shown_families: BTreeSet<String> = shown.iter().map(|n| family(n)).collect();
    let blind: Vec<_> = exported
        .iter()
        .map(|n| family(n))
        .filter(|f| !shown_families.contains(f))
        .collect();
    assert!(
        blind.is_empty(),
        "exported but on no panel of deploy/grafana-dashboard.json: {blind:?}"
    );
}

/// `KEY: value` lines of a compose service's `environment:` map.
fn compose_env(compose: &str, service: &str) -> Vec<(String, String)> {
    let mut lines = compose
        .lines()
        .skip_while(|l| *l != format!("  {service}:"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "));
    let mut env = Vec::new();
    if lines
        .by_ref()
        .find(|l| l.trim() == "environment:")
        .is_none()
    {
        return env;
    }
    for l in lines.take_while(|l| l.starts_with("      ")) {
        let (k, v) = l.trim().split_once(": ").unwrap();
        env.push((k.to_string(), v.to_string()));
    }
    env
}

#[test]
fn the_compose_cluster_runs_as_three_nodes_on_its_configuration() {
    if !have_memcached() {
        return;
    }
    let compose = read("deploy/compose.yaml");
    // memcached with the compose file's own flags (-M among them).
    let command = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: "))
        .expect("memcached's command");
    let argv: Vec<String> = serde_json::from_str(command).unwrap();
    assert_eq!(argv[0], "memcached");
    assert!(
        argv.contains(&"-M".to_string()),
        "memcached must run with -M: {argv:?}"
    );
    let flags: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let mc = Memcached::start_with(&flags);
    let config = root().join("deploy/compose-cluster.toml");
    let servers = mc.addr.to_string();
    let nodes: Vec<Server> = ["node1", "node2", "node3"]
        .iter()
        .map(|name| {
            let mut env: Vec<(String, String)> = compose_env(&compose, name)
                .into_iter()
                .map(|(k, v)| match k.as_str() {
                    "SIMPLEPUSH_CLUSTER_SECRET" => (k, SECRET.to_string()),
                    "SIMPLEPUSH_ENDPOINT_TOKEN_KEYS" => (k, KEY.to_string()),
                    // `nodeN` is a name only the compose network resolves: here each node is
                    // reached at its router listener's address (the default URL).
                    "SIMPLEPUSH_CLUSTER_ROUTER_URL" => (k, String::new()),
                    _ => (k, v),
                })
                .collect();
            assert_eq!(env.len(), 4, "{name}: {env:?}");
            // Container addresses made loopback ones: the file's ports would collide here.
            for (k, v) in [
                ("SIMPLEPUSH_SERVER_LISTEN", "127.0.0.1:0"),
                ("SIMPLEPUSH_CLUSTER_ROUTER_LISTEN", "127.0.0.1:0"),
                ("SIMPLEPUSH_STORAGE_SERVERS", servers.as_str()),
            ] {
                env.push((k.into(), v.into()));
            }
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Server::spawn(&["--config", config.to_str().unwrap()], &env)
        })
        .collect();
    assert!(
        nodes[0].wait_log("memcached reachable"),
        "{}",
        nodes[0].log()
    );
    let mut device = nodes[0].client();
    device.hello_new();
    let ep = device.register(&chid(1));
    assert!(
        ep.starts_with("http://localhost:8080/"),
        "public_url from compose.yaml: {ep}"
    );
    std::thread::sleep(Duration::from_millis(100));
    // After `http://localhost:8080`.
    let path = format!("/{}", ep.splitn(4, '/').nth(3).unwrap());
    for (version, node) in [(1u64, &nodes[1]), (2, &nodes[2])] {
        let r = put(
            &format!("http://{}{path}", node.addr),
            &format!("version={version}"),
        );
        assert_eq!(r.status, 200, "routed to node1 and delivered: {}", r.body);
        assert_eq!(device.recv()["updates"][0]["version"], version);
        device.ack(&chid(1), version);
    }
}

/// The Dockerfile's `RUN sed ...` instruction (with its continuation lines), as a shell command.
fn image_config_step(dockerfile: &str) -> String {
    let mut lines = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("RUN sed "));
    let mut cmd = String::new();
    for l in lines.by_ref() {
        let (part, more) = match l.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (l, false),
        };
        cmd.push_str(part.trim_start_matches("RUN "));
        cmd.push(' ');
        if !more {
            break;
        }
    }
    assert!(!cmd.is_empty(), "no RUN sed step in the Dockerfile");
    cmd
}

#[test]
fn the_image_configures_the_file_and_sets_no_variable_a_mounted_config_would_lose_to() {
    let dockerfile = read("Dockerfile");
    // ENV instructions with their continuation lines.
    let mut continued = false;
    for l in dockerfile.lines() {
        let in_env = l.starts_with("ENV ") || continued;
        assert!(
            !(in_env && l.contains("SIMPLEPUSH_")),
            "the image sets a variable: {l}"
        );
        continued = in_env && l.ends_with('\\');
    }
    let dir = temp_dir("image");
    let file = dir.join("config.toml");
    std::fs::copy(root().join("config.sample.toml"), &file).unwrap();
    let step = image_config_step(&dockerfile)
        .replace("/etc/simplepush/config.toml", file.to_str().unwrap());
    let ok = Command::new("bash").args(["-c", &step]).status().unwrap();
    assert!(ok.success(), "{step}");
    let sample = read("config.sample.toml");
    let made = std::fs::read_to_string(&file).unwrap();
    let changed: Vec<(&str, &str)> = sample
        .lines()
        .zip(made.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [
            (r#"listen = "127.0.0.1:8080""#, r#"listen = "0.0.0.0:8080""#),
            (r#"path = "data""#, r#"path = "/var/lib/simplepush""#),
        ]
    );
    let v: toml::Value = toml::from_str(&made).unwrap();
    assert_eq!(v["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(v["storage"]["path"].as_str(), Some("/var/lib/simplepush"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What systemd makes of a quoted ExecStartPost argument of an instance: `%i`, `%%`, `$$` and C
/// escapes.
fn systemd_unquote(arg: &str, instance: &str) -> String {
    let mut out = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some('i')) => {
                chars.next();
                out.push_str(instance);
            }
            ('%', Some('%')) | ('$', Some('$')) | ('\\', Some('\\')) | ('\\', Some('"')) => {
                out.push(chars.next().unwrap());
            }
            ('\\', Some('r')) => {
                chars.next();
                out.push('\r');
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push('\n');
            }
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn the_template_unit_checks_each_instance_on_the_admin_port_of_its_own_file() {
    let unit = read("deploy/simplepush@.service");
    let post = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPost=/bin/bash -c '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("ExecStartPost=/bin/bash -c '...'");
    let s = Server::start();
    let admin = s.admin_addr.unwrap();
    let dir = temp_dir("unit");
    let with_admin = |instance: &str, listen: &str| {
        std::fs::write(
            dir.join(format!("{instance}.toml")),
            format!("[server]\nlisten = \"0.0.0.0:8001\"\n\n[admin]\nlisten = \"{listen}\"\n\n[storage]\nbackend = \"memory\"\n"),
        )
        .unwrap();
        let script = systemd_unquote(post, instance)
            .replace("/etc/simplepush/", &format!("{}/", dir.display()))
            // The unit waits up to 10 s; a refused check need not take that long here.
            .replace("sleep 0.2", "sleep 0.01");
        Command::new("bash")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    };
    assert!(
        with_admin("1", &admin.to_string()),
        "instance 1 answers on {admin}"
    );
    assert!(
        with_admin("7", &format!("0.0.0.0:{}", admin.port())),
        "0.0.0.0 is checked on loopback"
    );
    drop(s);
    assert!(
        !with_admin("2", &admin.to_string()),
        "nothing listens there any more"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: no systemd-analyze, the units are not verified");
        return;
    };
    assert!(probe.status.success());
    let dir = temp_dir("verify");
    for (from, to) in [
        ("simplepush.service", "simplepush.service"),
        ("simplepush@.service", "simplepush@3.service"),
    ] {
        // The binary must exist for verify to pass: the one under test.
        let text = read(&format!("deploy/{from}")).replace(
            "/usr/local/bin/simplepush",
            env!("CARGO_BIN_EXE_simplepush"),
        );
        std::fs::write(dir.join(to), text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.join(to))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{from}: {said}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `podman` with the arguments this machine needs, if it can build and run the image here; why
/// not, said loudly, otherwise.
fn podman() -> Option<Vec<String>> {
    let works = |args: &[&str]| {
        Command::new("podman")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&["--version"]) {
        eprintln!("SKIPPED: no podman (apt-get install podman runc): the image is not built");
        return None;
    }
    let mut base = Vec::new();
    // crun cannot set up cgroups in some sandboxes (gVisor); runc can.
    if let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .find(|p| Path::new(p).exists())
    {
        base.extend(["--runtime".to_string(), runc.to_string()]);
    }
    if !works(&["image", "exists", "debian:bookworm-slim"]) {
        eprintln!(
            "SKIPPED: the base image debian:bookworm-slim is not here (podman pull debian:bookworm-slim, \
             or podman import a debootstrap of bookworm under that name): the image is not built"
        );
        return None;
    }
    Some(base)
}

/// `--ulimit` flags at or below this process's own limits: a sandbox may refuse to raise them.
fn ulimits() -> Vec<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = |name: &str, most: u64| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(most, |v| v.min(most))
    };
    let (files, procs) = (soft("Max open files", 65536), soft("Max processes", 4096));
    vec![
        "--ulimit".into(),
        format!("nofile={files}:{files}"),
        "--ulimit".into(),
        format!("nproc={procs}:{procs}"),
    ]
}

/// A container, removed on drop.
struct Container {
    podman: Vec<String>,
    name: String,
}

impl Container {
    fn run(podman: &[String], name: &str, args: &[&str], image: &str) -> Container {
        let c = Container {
            podman: podman.to_vec(),
            name: name.to_string(),
        };
        let out = Command::new("podman")
            .args(podman)
            .args(["run", "-d", "--name", name])
            .args(ulimits())
            .args(args)
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn podman(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .args(&self.podman)
            .args(args)
            .output()
            .unwrap()
    }

    fn logs(&self) -> String {
        let out = self.podman(&["logs", &self.name]);
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// An image built for a test, removed on drop (also when the test fails).
struct Image<'a> {
    podman: &'a [String],
    tag: String,
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(self.podman)
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", &self.name]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether an HTTP request to 127.0.0.1:`port` is answered within 15 s.
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 12];
            let asked = s
                .write_all(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_ok();
            if asked && s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 ") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn the_image_serves_on_its_own_config_and_a_mounted_config_wins() {
    let Some(podman) = podman() else {
        return;
    };
    // The Dockerfile's runtime stage as written, with the binary under test in place of the build
    // stage's (a release build inside the image would take many minutes).
    let dockerfile = read("Dockerfile");
    let runtime = &dockerfile[dockerfile
        .find("FROM debian:bookworm-slim")
        .expect("runtime stage")..];
    let from_build = "COPY --from=build /simplepush ";
    assert!(runtime.contains(from_build));
    let dir = temp_dir("image-build");
    std::fs::write(
        dir.join("Containerfile"),
        runtime.replace(from_build, "COPY simplepush "),
    )
    .unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_simplepush"), dir.join("simplepush")).unwrap();
    std::fs::copy(
        root().join("config.sample.toml"),
        dir.join("config.sample.toml"),
    )
    .unwrap();
    let tag = format!("localhost/simplepush-test:{}", std::process::id());
    let image = Image {
        podman: &podman,
        tag: tag.clone(),
    };
    let built = Command::new("podman")
        .args(&podman)
        .args([
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "-t",
            &tag,
        ])
        .args(ulimits())
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "podman build: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    // The image's own configuration: 0.0.0.0:8080 inside the container, and healthy.
    let p1 = free_port();
    let name = format!("sp-test-own-{}", std::process::id());
    let own = Container::run(
        &podman,
        &name,
        &["-p", &format!("127.0.0.1:{p1}:8080")],
        &tag,
    );
    assert!(answers(p1), "{}", own.logs());
    assert!(
        own.logs().contains("listening on 0.0.0.0:8080"),
        "{}",
        own.logs()
    );
    let health = own.podman(&["healthcheck", "run", &name]);
    assert!(
        health.status.success(),
        "HEALTHCHECK: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    drop(own);

    // A mounted configuration counts as written: its listen is not overridden.
    let cfg = dir.join("mounted.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"0.0.0.0:9090\"\n\n[storage]\nbackend = \"memory\"\n",
    )
    .unwrap();
    let p2 = free_port();
    let mount = format!("{}:/etc/simplepush/config.toml:ro", cfg.display());
    let name = format!("sp-test-mounted-{}", std::process::id());
    let mounted = Container::run(
        &podman,
        &name,
        &["-p", &format!("127.0.0.1:{p2}:9090"), "-v", &mount],
        &tag,
    );
    assert!(answers(p2), "{}", mounted.logs());
    assert!(
        mounted.logs().contains("listening on 0.0.0.0:9090"),
        "{}",
        mounted.logs()
    );
    drop(mounted);
    drop(image);
    let _ = std::fs::remove_dir_all(&dir);
}
