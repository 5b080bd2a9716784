//! SIGHUP reloads the endpoint token keys and the log settings (the certificate: tests/tls.rs)
//! while devices stay connected; a bad file changes nothing and stops nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use sha2::Digest;

/// A test's own config file (the harness's would be rewritten under it).
fn config_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sp-reload-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("config.toml")
}

fn write_config(path: &Path, sections: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(
        &tmp,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{sections}"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spawn(path: &Path) -> Server {
    Server::spawn(&["--config", path.to_str().unwrap()], &[])
}

fn key(byte: u8) -> String {
    URL_SAFE_NO_PAD.encode([byte; 32])
}

/// How the server names a key in its log: 8 hex digits of its SHA-256.
fn fingerprint(byte: u8) -> String {
    sha2::Sha256::digest([byte; 32])[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn keys_section(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!("[endpoint]\ntoken_keys = [{}]\n", quoted.join(", "))
}

/// Waits until `needle` is in the log `n` times.
fn wait_count(s: &Server, needle: &str, n: usize) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if s.log().matches(needle).count() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn new_keys_seal_new_endpoints_and_old_ones_still_open() {
    let path = config_file("keys");
    let (a, b) = (key(1), key(2));
    let (fa, fb) = (fingerprint(1), fingerprint(2));
    write_config(&path, &keys_section(std::slice::from_ref(&a)));
    let s = spawn(&path);
    let mut device = s.client();
    device.hello_new();
    let old_ep = device.register(&chid(1));

    write_config(&path, &keys_section(&[b.clone(), a.clone()]));
    s.signal(1);
    let line = format!("endpoint.token_keys [{fa}] -> [{fb}, {fa}] (new endpoints sealed by {fb})");
    assert!(s.wait_log(&line), "{}", s.log());
    // The endpoint minted with the old key still works, on the same connection.
    assert_eq!(put(&old_ep, "version=1").status, 200);
    assert_eq!(device.recv()["updates"][0]["version"], 1);
    let new_ep = device.register(&chid(2));

    // With the old key gone, only the new endpoint opens: it was sealed by the new key.
    write_config(&path, &keys_section(std::slice::from_ref(&b)));
    s.signal(1);
    assert!(
        s.wait_log(&format!("[{fb}, {fa}] -> [{fb}]")),
        "{}",
        s.log()
    );
    assert_eq!(put(&new_ep, "version=2").status, 200);
    assert_eq!(device.recv()["updates"][0]["version"], 2);
    assert_eq!(put(&old_ep, "version=3").status, 404);

    // A bad key, or no key at all (a random one would orphan every endpoint): refused, kept.
    write_config(&path, &keys_section(&["short".into()]));
    s.signal(1);
    assert!(wait_count(&s, "reload failed", 1), "{}", s.log());
    write_config(&path, "");
    s.signal(1);
    assert!(wait_count(&s, "reload failed", 2), "{}", s.log());
    assert!(s
        .log()
        .contains("endpoint.token_keys[0]: must be base64url"));
    assert!(s.log().contains("cannot be emptied by a reload"));
    assert_eq!(put(&new_ep, "version=4").status, 200);
    assert_eq!(device.recv()["updates"][0]["version"], 4);
    let log = s.log();
    assert!(
        !log.contains(&a) && !log.contains(&b),
        "key material logged: {log}"
    );
}

#[test]
fn the_log_level_changes_and_bad_files_change_nothing() {
    let path = config_file("level");
    write_config(&path, "[log]\nlevel = \"info\"\n");
    let mut s = spawn(&path);
    // log.level wins over the harness's RUST_LOG=debug.
    let mut quiet = s.client();
    quiet.hello_new();
    let ep = quiet.register(&chid(1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.log().contains("hello received"), "{}", s.log());

    write_config(&path, "[log]\nlevel = \"debug\"\n");
    s.signal(1);
    assert!(s.wait_log("log.level \"info\" -> \"debug\""), "{}", s.log());
    let mut loud = s.client();
    loud.hello_new();
    assert!(s.wait_log("hello received"), "{}", s.log());

    // A level env_logger cannot read, then a file that is not TOML: refused, debug stays.
    write_config(&path, "[log]\nlevel = \"simplepush=loud\"\n");
    s.signal(1);
    assert!(wait_count(&s, "reload failed", 1), "{}", s.log());
    write_config(&path, "[log\nlevel = \"warn\"\n");
    s.signal(1);
    assert!(wait_count(&s, "reload failed", 2), "{}", s.log());
    assert!(s.log().contains("key log.level"), "{}", s.log());
    let before = s.log().matches("hello received").count();
    s.client().hello_new();
    assert!(wait_count(&s, "hello received", before + 1), "{}", s.log());

    // Back to info, as JSON; a setting that needs a restart is named, not applied.
    write_config(
        &path,
        "max_connections = 5000\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
    );
    s.signal(1);
    assert!(
        s.wait_log("\"target\":\"simplepush::reload\""),
        "{}",
        s.log()
    );
    let log = s.log();
    assert!(
        log.contains("take effect only at a restart: server.max_connections"),
        "{log}"
    );
    assert!(log.contains("log.format text -> json"), "{log}");
    let before = log.matches("hello received").count();
    s.client().hello_new();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.log().matches("hello received").count(), before);
    // The devices connected all along are still served.
    assert_eq!(put(&ep, "version=9").status, 200);
    assert_eq!(quiet.recv()["updates"][0]["version"], 9);
    assert!(s.running());
}

#[test]
fn the_disk_stores_generated_key_is_never_remade_by_a_reload() {
    let path = config_file("disk");
    let data = path.with_file_name("data");
    write_config(&path, &disk_section(&data, ""));
    let s = spawn(&path);
    let mut device = s.client();
    device.hello_new();
    let ep = device.register(&chid(1));
    // Even with the key file gone (a careless clean-up), a reload keeps the key in use.
    std::fs::remove_file(data.join("endpoint.key")).unwrap();
    s.signal(1);
    assert!(s.wait_log("reload: nothing changed"), "{}", s.log());
    assert_eq!(put(&ep, "version=1").status, 200);
    assert_eq!(device.recv()["updates"][0]["version"], 1);
}
