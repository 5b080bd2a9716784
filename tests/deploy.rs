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
