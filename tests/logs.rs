//! Log lines as operators read them: JSON objects with fields, ids as the client spelled them,
//! connections named by event loop and key.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::Value;

const UAID: &str = "9F3C0B6E5D2A4C8E9B7A6D5C4B3A2F1E";
const CHID: &str = "0CB8A613-8E2B-4B47-B370-51098DAA8401";

/// A hello with an upper-case UAID, a register of an upper-case channel, a push and its ack; the
/// device stays connected (a closed connection's key is used again).
fn traffic(s: &Server) -> Client {
    let mut c = s.client();
    c.hello(UAID, &[]);
    let ep = c.register(CHID);
    assert_eq!(put(&ep, "version=5").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 5);
    c.ack(CHID, 5);
    c
}

/// `conn` names `loop/key`, both numbers.
fn conn_name_ok(v: &Value) -> bool {
    v.as_str()
        .and_then(|t| t.split_once('/'))
        .is_some_and(|(l, k)| l.parse::<usize>().is_ok() && k.parse::<usize>().is_ok())
}

#[test]
fn json_lines_carry_fields_and_ids_as_spelled() {
    let s = Server::start_with("workers = 2", "[log]\nformat = \"json\"\n");
    let _device = traffic(&s);
    // Several devices at once, so that both loops hold connections with the same slab keys.
    let mut held: Vec<Client> = (0..16).map(|_| s.client()).collect();
    for c in &mut held {
        c.hello_new();
    }
    assert!(s.wait_log("\"message\":\"ack\""), "{}", s.log());
    // A hello's line is written after its reply went out: wait for all seventeen.
    let hellos = |log: &str| log.matches("\"message\":\"hello\",").count();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while hellos(&s.log()) < 17 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        let ts = l["timestamp"].as_str().unwrap_or_else(|| panic!("{l}"));
        assert!(ts.contains('T') && ts.ends_with('Z'), "{l}");
        let level = l["level"].as_str().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{l}"
        );
        assert!(
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("simplepush")),
            "{l}"
        );
        assert!(l["message"].is_string() && l["fields"].is_object(), "{l}");
        if let Some(conn) = l["fields"].get("conn") {
            assert!(conn_name_ok(conn), "{l}");
        }
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["fields"]["uaid"] == UAID)
            .unwrap_or_else(|| panic!("no {message} line for {UAID}: {log}"))
    };
    let register = &find("register")["fields"];
    assert_eq!(register["channel"], CHID, "{register}");
    assert_eq!(register["key"], "none");
    let ack = &find("ack")["fields"];
    assert_eq!(
        (&ack["channel"], &ack["version"]),
        (&CHID.into(), &"5".into())
    );
    let received = lines
        .iter()
        .find(|l| l["message"] == "notification" && l["fields"]["event"] == "received")
        .expect("a reliability line");
    assert_eq!(received["target"], "simplepush::reliability");
    assert_eq!(
        (&received["fields"]["uaid"], &received["fields"]["channel"]),
        (&UAID.into(), &CHID.into())
    );
    assert!(!log.contains("bytes: ["), "an id printed as bytes: {log}");
    // One name per connection, whichever loop holds it.
    let mut named: BTreeMap<String, String> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["message"] == "hello") {
        let (conn, uaid) = (&l["fields"]["conn"], &l["fields"]["uaid"]);
        let before = named.insert(conn.as_str().unwrap().into(), uaid.as_str().unwrap().into());
        assert!(before.is_none(), "{conn} named twice: {log}");
    }
    assert_eq!(named.len(), 17, "{log}");
    let loops: BTreeSet<&str> = named.keys().filter_map(|c| c.split('/').next()).collect();
    assert_eq!(loops.len(), 2, "both loops hold devices: {named:?}");
}

#[test]
fn text_lines_name_connections_and_spell_ids() {
    let s = Server::start();
    let _device = traffic(&s);
    assert!(
        s.wait_log(&format!("uaid={UAID} channel={CHID} version=5 code=-")),
        "{}",
        s.log()
    );
    let log = s.log();
    assert!(
        log.contains(" register conn=")
            && log.contains(&format!("uaid={UAID} channel={CHID} key=none")),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(" conn="))
            .all(|l| l.split(" conn=").nth(1).is_some_and(|r| {
                conn_name_ok(&Value::from(r.split(' ').next().unwrap_or("")))
            })),
        "{log}"
    );
    assert!(!log.contains("bytes: ["), "an id printed as bytes: {log}");
}
