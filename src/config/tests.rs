//! The configuration's unit tests: loading, layering, validation and where errors point.

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

fn write(text: &str) -> std::path::PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("sp-cfg-{}-{n}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_are_valid() {
    let c = Config::load(None, env(&[])).unwrap().config;
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.websocket.hello_timeout_ms, 30_000);
}

#[test]
fn the_sample_file_loads() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.sample.toml");
    let c = Config::load(Some(&p), env(&[])).unwrap().config;
    let mut d = Config::default();
    // The one difference: `make run` (the sample) keeps its data on disk; a server given no
    // file keeps it in memory rather than creating ./data wherever it was started.
    assert_eq!(c.storage.backend, "disk");
    d.storage.backend = "disk".into();
    assert_eq!(
        toml::Table::try_from(&c).unwrap(),
        toml::Table::try_from(&d).unwrap(),
        "config.sample.toml must state the defaults"
    );
    // And state every one of them: a missing key would load as its default too.
    let text: toml::Table = std::fs::read_to_string(&p).unwrap().parse().unwrap();
    for (section, keys) in toml::Table::try_from(&d).unwrap() {
        for key in keys.as_table().unwrap().keys() {
            let present = text
                .get(&section)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.contains_key(key));
            assert!(present, "config.sample.toml lacks {section}.{key}");
        }
    }
}

/// A copy of config.sample.toml whose last line reading `from` reads `to`; and that line's
/// number, counted in the copy.
fn sample_with(from: &str, to: &str) -> (PathBuf, usize) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.sample.toml");
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().rposition(|l| *l == from).expect(from);
    lines[at] = to;
    let copy = write(&(lines.join("\n") + "\n"));
    let written = std::fs::read_to_string(&copy).unwrap();
    assert_eq!(written.lines().nth(at), Some(to));
    (copy, at + 1)
}

fn file_error(e: ConfigError) -> (PathBuf, usize, usize, String, String) {
    match e {
        ConfigError::File {
            path,
            line: Some(line),
            column: Some(column),
            key: Some(key),
            message,
        } => (path, line, column, key, message),
        other => panic!("not placed in the file: {other:?}"),
    }
}

#[test]
fn an_unknown_key_deep_in_a_long_file_is_reported_at_its_own_line() {
    let (p, line) = sample_with("secret = \"\"", "secrte = \"\"");
    // Near the end of the file: the old report, from a re-serialized copy, said line 13.
    assert!(line > 150, "{line}");
    let e = Config::load(Some(&p), env(&[])).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "config file {}, line {line}, column 1, key cluster.secrte: unknown key `secrte`",
            p.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("expected one of") && text.contains("`secret`"),
        "{text}"
    );
    assert_eq!(file_error(e).1, line);
}

#[test]
fn a_wrong_type_near_the_end_names_line_column_key_and_the_type_expected() {
    // `timeout_ms = 1000` is in [wake] and [cluster]: the last one is the cluster's.
    let (p, line) = sample_with("timeout_ms = 1000", "timeout_ms = \"1s\"");
    assert!(line > 150, "{line}");
    let (path, at, column, key, message) =
        file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!(path, p);
    assert_eq!((at, column), (line, 14), "the value's first character");
    assert_eq!(key, "cluster.timeout_ms");
    assert_eq!(
        message,
        "invalid type: string \"1s\", expected a non-negative integer"
    );
}

#[test]
fn a_value_the_checks_refuse_is_reported_where_it_was_set() {
    let (p, line) = sample_with("max_messages = 100", "max_messages = 0");
    let (_, at, column, key, message) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!((at, column), (line, 16));
    assert_eq!(key, "webpush.max_messages");
    assert_eq!(message, "must be 1 to 1000");
    // Set by a variable, the variable is named instead of the file's line.
    let e = Config::load(Some(&p), env(&[("SIMPLEPUSH_WEBPUSH_MAX_MESSAGES", "0")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "environment variable SIMPLEPUSH_WEBPUSH_MAX_MESSAGES (key webpush.max_messages): \
         must be 1 to 1000"
    );
    // And a variable with a good value overrides the file's bad one.
    let c = Config::load(Some(&p), env(&[("SIMPLEPUSH_WEBPUSH_MAX_MESSAGES", "50")]))
        .unwrap()
        .config;
    assert_eq!(c.webpush.max_messages, 50);
    // A section-wide check points at the section.
    let p = write("# tls\n\n[tls]\ncert_file = \"/etc/cert.pem\"\n");
    let (_, at, _, key, message) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!((at, key.as_str()), (3, "tls"));
    assert_eq!(message, "cert_file and key_file go together");
}

#[test]
fn syntax_errors_unknown_sections_and_nested_keys_have_their_place() {
    let p = write("[server]\nworkers = 1\nlisten = 127.0.0.1\n");
    let (_, at, _, key, _) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!((at, key.as_str()), (3, "server.listen"));
    let p = write("# broadcasts\n\n[broadcasts.versions]\n\"a/b\" = 1\n");
    let (_, at, column, key, message) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!((at, column), (4, 9));
    assert_eq!(key, "broadcasts.versions.a/b");
    assert_eq!(message, "invalid type: integer `1`, expected a string");
    let p = write("[server]\nworkers = 1\n\n[serverz]\nlisten = \"x\"\n");
    let (_, at, column, key, message) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!((at, column, key.as_str()), (4, 2, "serverz"));
    assert!(message.starts_with("unknown key `serverz`"), "{message}");
    let p = write("[server]\nworkers = 1\n[server]\n");
    let (_, at, _, key, message) = file_error(Config::load(Some(&p), env(&[])).unwrap_err());
    assert_eq!(
        (at, key.as_str(), message.as_str()),
        (3, "server", "duplicate key")
    );
}

#[test]
fn a_variable_out_of_its_keys_range_is_named() {
    let e = Config::load(None, env(&[("SIMPLEPUSH_SERVER_LISTEN_BACKLOG", "-1")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable SIMPLEPUSH_SERVER_LISTEN_BACKLOG (key server.listen_backlog): \
         \"-1\": invalid value: integer `-1`, expected an integer from 0 to 4294967295"
    );
}

#[test]
fn env_overrides_file() {
    let p = write("[server]\nlisten = \"127.0.0.1:9000\"\n");
    let c = Config::load(
        Some(&p),
        env(&[
            ("SIMPLEPUSH_SERVER_LISTEN", "127.0.0.1:9001"),
            ("SIMPLEPUSH_WEBSOCKET_MAX_CHANNELS", "7"),
            ("SIMPLEPUSH_ENDPOINT_TOKEN_KEYS", "a, b"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap()
    .config;
    assert_eq!(c.server.listen, "127.0.0.1:9001");
    assert_eq!(c.websocket.max_channels, 7);
    assert_eq!(c.endpoint.token_keys, vec!["a", "b"]);
}

#[test]
fn unknown_variables_are_ignored_and_reported() {
    // What Kubernetes injects for a Service named `simplepush`, beside a real override.
    let loaded = Config::load(
        None,
        env(&[
            ("SIMPLEPUSH_SERVICE_HOST", "10.0.0.1"),
            ("SIMPLEPUSH_SERVICE_PORT", "8080"),
            ("SIMPLEPUSH_PORT", "tcp://10.0.0.1:8080"),
            ("SIMPLEPUSH_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("SIMPLEPUSH_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("SIMPLEPUSH_SERVER_NOPE", "1"),
            ("SIMPLEPUSH_WEBSOCKET_MAX_CHANNELS", "9"),
            ("SIMPLEPUSH_CONFIG", "/somewhere.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(loaded.config.websocket.max_channels, 9);
    let ignored = &loaded.ignored;
    assert_eq!(ignored.len(), 6, "{ignored:?}");
    for name in [
        "SIMPLEPUSH_SERVICE_HOST ",
        "SIMPLEPUSH_SERVICE_PORT ",
        "SIMPLEPUSH_PORT ",
        "SIMPLEPUSH_PORT_8080_TCP ",
        "SIMPLEPUSH_PORT_8080_TCP_ADDR ",
    ] {
        let line = ignored.iter().find(|l| l.contains(name));
        assert!(
            line.is_some_and(|l| l.contains("ignored: not a simplepush setting")),
            "{name}: {ignored:?}"
        );
    }
    // A misspelt key of a real section says which section lacks it.
    assert!(
        ignored.contains(
            &"environment variable SIMPLEPUSH_SERVER_NOPE ignored: [server] has no key \"nope\""
                .to_string()
        ),
        "{ignored:?}"
    );
    // The variable that names the file is not a setting, and not unknown either.
    assert!(!ignored.iter().any(|l| l.contains("SIMPLEPUSH_CONFIG")));
}

#[test]
fn a_known_variable_with_a_bad_value_is_still_an_error() {
    let e = Config::load(
        None,
        env(&[
            ("SIMPLEPUSH_SERVICE_HOST", "10.0.0.1"),
            ("SIMPLEPUSH_SERVER_MAX_CONNECTIONS", "many"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SIMPLEPUSH_SERVER_MAX_CONNECTIONS"), "{e}");
    assert!(e.contains("\"many\""), "{e}");
}

#[test]
fn the_flag_names_the_file_before_the_variable() {
    let flag = Some(PathBuf::from("/from/flag.toml"));
    let var = Some(OsString::from("/from/env.toml"));
    assert_eq!(file_path(flag.clone(), var.clone()), flag);
    assert_eq!(file_path(None, var), Some(PathBuf::from("/from/env.toml")));
    assert_eq!(file_path(None, Some(OsString::new())), None);
    assert_eq!(file_path(None, None), None);
}

#[test]
fn pings_and_keepalive_are_bounded_and_either_zero_turns_pings_off() {
    let load = |k: &str, v: &str| Config::load(None, env(&[(k, v)]));
    let c = load("SIMPLEPUSH_WEBSOCKET_AUTO_PING_TIMEOUT_SECS", "1").unwrap();
    assert_eq!(c.config.websocket.auto_ping_ms(), Some((300_000, 1_000)));
    for off in [
        "SIMPLEPUSH_WEBSOCKET_AUTO_PING_INTERVAL_SECS",
        "SIMPLEPUSH_WEBSOCKET_AUTO_PING_TIMEOUT_SECS",
    ] {
        let c = load(off, "0").unwrap().config;
        assert_eq!(c.websocket.auto_ping_ms(), None, "{off}");
    }
    for (var, too_big) in [
        ("SIMPLEPUSH_WEBSOCKET_AUTO_PING_INTERVAL_SECS", "86401"),
        ("SIMPLEPUSH_WEBSOCKET_AUTO_PING_TIMEOUT_SECS", "3601"),
        ("SIMPLEPUSH_SERVER_TCP_KEEPALIVE_SECS", "32768"),
    ] {
        let e = load(var, too_big).unwrap_err().to_string();
        assert!(e.contains(var), "{e}");
    }
}

#[test]
fn the_output_cap_must_hold_a_webpush_backlog() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    };
    let e = Config::load(
        None,
        env(&[("SIMPLEPUSH_WEBSOCKET_MAX_OUTPUT_BUFFER", "262144")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("websocket.max_output_buffer"), "{e}");
    assert!(Config::load(
        None,
        env(&[
            ("SIMPLEPUSH_WEBSOCKET_MAX_OUTPUT_BUFFER", "262144"),
            ("SIMPLEPUSH_WEBPUSH_MAX_MESSAGES", "20"),
        ])
    )
    .is_ok());
    assert!(Config::load(None, env(&[])).is_ok());
}

#[test]
fn errors_name_the_key() {
    let p = write("[server]\nlisten = \"127.0.0.1:9000\"\nbogus = 1\n");
    let e = Config::load(Some(&p), env(&[])).unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    let p = write("[server]\nmax_connections = \"many\"\n");
    let e = Config::load(Some(&p), env(&[])).unwrap_err().to_string();
    assert!(e.contains("max_connections"), "{e}");
    let e = Config::load(None, env(&[("SIMPLEPUSH_WEBSOCKET_MAX_CHANNELS", "x")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SIMPLEPUSH_WEBSOCKET_MAX_CHANNELS"), "{e}");
    let e = Config::load(None, env(&[("SIMPLEPUSH_SERVER_LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.listen"), "{e}");
    let e = Config::load(None, env(&[("SIMPLEPUSH_STORAGE_BACKEND", "redis")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.backend"), "{e}");
    let e = Config::load(None, env(&[("SIMPLEPUSH_STORAGE_SERVERS", "nohost")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.servers"), "{e}");
    let e = Config::load(
        None,
        env(&[("SIMPLEPUSH_CLUSTER_ROUTER_LISTEN", "127.0.0.1:0")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cluster.secret"), "{e}");
    let e = Config::load(
        None,
        env(&[
            ("SIMPLEPUSH_CLUSTER_ROUTER_LISTEN", "127.0.0.1:0"),
            ("SIMPLEPUSH_CLUSTER_SECRET", "0123456789abcdef"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("memcached"), "{e}");
    let e = Config::load(None, env(&[("SIMPLEPUSH_SERVER_REQUEST_TIMEOUT_MS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.request_timeout_ms"), "{e}");
    let e = Config::load(Some(Path::new("/nonexistent/x.toml")), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn rate_limits_have_generous_defaults_and_bounds() {
    let c = Config::load(None, env(&[])).unwrap().config;
    let r = &c.rate_limit;
    assert_eq!((r.new_uaids_per_minute, r.new_uaid_burst), (60, 100));
    assert_eq!((r.registers_per_minute, r.register_burst), (600, 1000));
    assert!(
        r.trusted_proxies.is_empty(),
        "no proxy is trusted unless configured"
    );
    let c = Config::load(
        None,
        env(&[
            ("SIMPLEPUSH_RATE_LIMIT_NEW_UAIDS_PER_MINUTE", "0"),
            (
                "SIMPLEPUSH_RATE_LIMIT_TRUSTED_PROXIES",
                "10.0.0.0/8, fd00::1",
            ),
        ]),
    )
    .unwrap()
    .config;
    assert_eq!(c.rate_limit.new_uaids_per_minute, 0);
    assert_eq!(c.rate_limit.trusted_proxies, vec!["10.0.0.0/8", "fd00::1"]);
    for (var, bad) in [
        ("SIMPLEPUSH_RATE_LIMIT_NEW_UAID_BURST", "0"),
        ("SIMPLEPUSH_RATE_LIMIT_REGISTER_BURST", "1000001"),
        ("SIMPLEPUSH_RATE_LIMIT_REGISTERS_PER_MINUTE", "60000001"),
        ("SIMPLEPUSH_RATE_LIMIT_IPV6_PREFIX", "65"),
        ("SIMPLEPUSH_RATE_LIMIT_MAX_SOURCES", "10"),
        ("SIMPLEPUSH_RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/33"),
    ] {
        let e = Config::load(None, env(&[(var, bad)])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Env { name, .. } if name == var),
            "{var}={bad}: {e}"
        );
    }
}
