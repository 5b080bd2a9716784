//! Several nodes sharing one memcached: routing between nodes, takeover, and a node that dies.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    chid, have_memcached, memcached_section, put, raw_http, split_url, Got, Memcached, Server,
};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const SECRET: &str = "cluster-secret-0123456789";

fn node(mc: &Memcached) -> Server {
    Server::start_with(
        "",
        &format!(
            "[endpoint]\ntoken_keys = [\"{KEY}\"]\n{}\n[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntimeout_ms = 500\n",
            memcached_section(&[mc.addr])
        ),
    )
}

fn router(s: &Server) -> SocketAddr {
    *s.addrs.last().unwrap()
}

/// The same endpoint, sent to another node.
fn via(s: &Server, endpoint: &str) -> String {
    format!("http://{}{}", s.addr, split_url(endpoint).1)
}

#[test]
fn updates_route_between_nodes_and_survive_a_dead_node() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2, n3) = (node(&mc), node(&mc), node(&mc));
    assert!(n1.wait_log("memcached reachable"));
    let mut c1 = n1.client();
    let uaid = c1.hello_new();
    let ep = c1.register(&chid(1));
    std::thread::sleep(Duration::from_millis(100));

    // Sent to node 2, delivered live by node 1.
    let r = put(&via(&n2, &ep), "version=10&data=routed");
    assert_eq!(r.status, 200, "{}", r.body);
    let n = c1.recv();
    assert_eq!(n["updates"][0]["version"], 10);
    assert_eq!(n["updates"][0]["data"], "routed");
    c1.ack(&chid(1), 10);

    // Node 1 dies: updates are stored, and answered within the router timeout.
    drop(c1);
    drop(n1);
    let t = Instant::now();
    assert_eq!(put(&via(&n2, &ep), "version=11").status, 202);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // The device reconnects to node 3 and gets what was stored.
    let mut c3 = n3.client();
    c3.hello(&uaid, &[&chid(1)]);
    assert_eq!(c3.recv()["updates"][0]["version"], 11);
    c3.ack(&chid(1), 11);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(put(&via(&n2, &ep), "version=12").status, 200);
    assert_eq!(c3.recv()["updates"][0]["version"], 12);
}

#[test]
fn a_hello_on_another_node_closes_the_old_socket() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let (n1, n2) = (node(&mc), node(&mc));
    let mut old = n1.client();
    let uaid = old.hello_new();
    let ep = old.register(&chid(1));
    std::thread::sleep(Duration::from_millis(100));
    let mut new = n2.client();
    new.hello(&uaid, &[&chid(1)]);
    assert!(
        matches!(old.next(Duration::from_secs(5)), Got::Close(_)),
        "the older socket is closed"
    );
    std::thread::sleep(Duration::from_millis(100));
    // Updates now reach the new socket, through whichever node they arrive at.
    assert_eq!(put(&via(&n1, &ep), "version=20").status, 200);
    assert_eq!(new.recv()["updates"][0]["version"], 20);
    assert_eq!(put(&via(&n2, &ep), "version=21").status, 200);
    assert_eq!(new.recv()["updates"][0]["version"], 21);
}

#[test]
fn the_router_listener_needs_the_shared_secret() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let n1 = node(&mc);
    let mut c = n1.client();
    let uaid = c.hello_new();
    c.register(&chid(1));
    let body = format!(r#"{{"channelID":"{}","version":66}}"#, chid(1));
    for auth in ["", "Authorization: Bearer wrong-secret-wrong-secret\r\n"] {
        let req = format!(
            "PUT /route/{uaid} HTTP/1.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(raw_http(router(&n1), req.as_bytes()).status, 401);
    }
    c.expect_silence(Duration::from_millis(300));
    let req = format!(
        "PUT /route/{uaid} HTTP/1.1\r\nAuthorization: Bearer {SECRET}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw_http(router(&n1), req.as_bytes()).status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 66);
    // The router is not an endpoint or WebSocket listener.
    let r = common::request(router(&n1), "GET", "/status", &[], "");
    assert_eq!(r.status, 401);
}
