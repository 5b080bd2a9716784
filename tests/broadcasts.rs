//! Broadcasts: versions in hello and broadcast_subscribe, and changes pushed to every follower
//! through the admin API, in every event loop and (through memcached) on every node.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789";
const RS: &str = "remote-settings/monitor_changes";

fn server(extra: &str) -> Server {
    Server::start_with(
        "",
        &format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[broadcasts]\nversions = {{ \"{RS}\" = '\"5\"', \"other\" = \"1\" }}\npoll_ms = 100\n{extra}"
        ),
    )
}

fn follower(s: &Server, have: &str) -> (Client, Value) {
    let mut c = s.client();
    c.send_json(json!({"messageType":"hello","use_webpush":true,"broadcasts":{RS: have}}));
    let reply = c.recv();
    assert_eq!(reply["status"], 200, "{reply}");
    (c, reply)
}

fn put_broadcasts(admin: SocketAddr, auth: Option<&str>, body: &str) -> HttpReply {
    let header = auth.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    request(admin, "PUT", "/broadcasts", &headers, body)
}

#[test]
fn hello_and_subscribe_report_versions_that_differ() {
    let s = server("");
    let (mut stale, reply) = follower(&s, "\"0\"");
    assert_eq!(reply["broadcasts"], json!({RS: "\"5\""}));
    let (_, reply) = follower(&s, "\"5\"");
    assert_eq!(reply["broadcasts"], json!({}));
    // A later subscribe: answered about what it names; unknown ids as such.
    stale.send_json(
        json!({"messageType":"broadcast_subscribe","broadcasts":{"other":"0","nope":"1"}}),
    );
    assert_eq!(
        stale.recv(),
        json!({"messageType":"broadcast","broadcasts":{"other":"1","nope":"Broadcast not found"}})
    );
    stale.send("{}");
    assert_eq!(stale.recv_text(), "{}");
    let table = request(s.admin_addr.unwrap(), "GET", "/broadcasts", &[], "");
    assert_eq!(
        serde_json::from_str::<Value>(&table.body).unwrap(),
        json!({RS: "\"5\"", "other": "1"})
    );
}

#[test]
fn a_change_reaches_every_follower_in_every_loop_and_no_one_else() {
    let s = server("");
    let admin = s.admin_addr.unwrap();
    // Enough sockets that both event loops hold some (each UAID belongs to one loop).
    let mut followers: Vec<Client> = (0..8).map(|_| follower(&s, "\"5\"").0).collect();
    let mut others: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = s.client();
            c.send_json(
                json!({"messageType":"hello","use_webpush":true,"broadcasts":{"other":"1"}}),
            );
            c.recv();
            c
        })
        .collect();
    assert_eq!(put_broadcasts(admin, None, r#"{"x":"1"}"#).status, 401);
    assert_eq!(
        put_broadcasts(admin, Some("wrong-token-0123456789"), r#"{"x":"1"}"#).status,
        401
    );
    assert_eq!(put_broadcasts(admin, Some(TOKEN), r#"{"x":1}"#).status, 400);
    assert_eq!(put_broadcasts(admin, Some(TOKEN), "[]").status, 400);
    let r = put_broadcasts(admin, Some(TOKEN), &json!({RS: "\"6\""}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()[RS], "\"6\"");
    for c in &mut followers {
        assert_eq!(
            c.recv(),
            json!({"messageType":"broadcast","broadcasts":{RS: "\"6\""}})
        );
    }
    for c in &mut others {
        c.expect_silence(Duration::from_millis(100));
    }
    // Setting the same version again tells no one.
    assert_eq!(
        put_broadcasts(admin, Some(TOKEN), &json!({RS: "\"6\""}).to_string()).status,
        200
    );
    followers[0].expect_silence(Duration::from_millis(200));
    // The endpoint listener has no such route; the admin one is where it lives.
    assert_eq!(request(s.addr, "PUT", "/broadcasts", &[], "{}").status, 404);
}

#[test]
fn without_a_token_broadcasts_cannot_be_changed() {
    let s = Server::start();
    let admin = s.admin_addr.unwrap();
    assert_eq!(
        put_broadcasts(admin, Some(TOKEN), r#"{"a":"1"}"#).status,
        403
    );
    assert_eq!(request(admin, "GET", "/broadcasts", &[], "").body, "{}");
}

#[test]
fn a_change_made_on_one_node_reaches_followers_on_another() {
    // Starts its own memcached; the memcached rerun of this suite has nothing to add here.
    if !have_memcached() || memcached_backend() || disk_backend() {
        return;
    }
    let mc = Memcached::start();
    let section = memcached_section(&[mc.addr]);
    let (n1, n2) = (server(&section), server(&section));
    let (mut on_n2, _) = follower(&n2, "\"5\"");
    let r = put_broadcasts(
        n1.admin_addr.unwrap(),
        Some(TOKEN),
        &json!({RS: "\"9\""}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t = Instant::now();
    assert_eq!(
        on_n2.recv(),
        json!({"messageType":"broadcast","broadcasts":{RS: "\"9\""}})
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    // A node started later learns the cluster's versions too.
    let n3 = server(&section);
    std::thread::sleep(Duration::from_millis(400));
    let (_, reply) = follower(&n3, "\"5\"");
    assert_eq!(reply["broadcasts"], json!({RS: "\"9\""}));
}

#[test]
fn in_a_cluster_a_change_is_pushed_through_the_router_at_once() {
    if !have_memcached() || memcached_backend() || disk_backend() {
        return;
    }
    let mc = Memcached::start();
    // Polling once a minute: only the router's push can be this quick.
    let cluster = |mc: &Memcached| {
        Server::start_with(
            "",
            &format!(
                "[admin]\ntoken = \"{TOKEN}\"\n[broadcasts]\nversions = {{ \"{RS}\" = '\"5\"' }}\npoll_ms = 60000\n{}\n[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"cluster-secret-0123456789\"\n",
                memcached_section(&[mc.addr])
            ),
        )
    };
    let (n1, n2) = (cluster(&mc), cluster(&mc));
    std::thread::sleep(Duration::from_millis(300));
    let (mut on_n2, _) = follower(&n2, "\"5\"");
    let r = put_broadcasts(
        n1.admin_addr.unwrap(),
        Some(TOKEN),
        &json!({RS: "\"7\""}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t = Instant::now();
    assert_eq!(
        on_n2.recv(),
        json!({"messageType":"broadcast","broadcasts":{RS: "\"7\""}})
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The router listener takes broadcasts only with the cluster secret.
    let router = *n2.addrs.last().unwrap();
    assert_eq!(
        request(router, "PUT", "/broadcasts", &[], r#"{"a":"1"}"#).status,
        401
    );
}
