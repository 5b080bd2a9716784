//! The app-server endpoint and offline storage, over real sockets against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{chid, now_secs, parse_reply, put, raw_http, request, split_url, Got, Server};
use serde_json::json;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn live_update_is_200_and_carries_data() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let r = put(&ep, "version=12&data=hello%20world");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{}");
    assert!(r.head.contains("Content-Type: application/json"));
    assert_eq!(
        c.recv(),
        json!({"messageType":"notification","updates":[{"channelID":chid(1),"version":12,"data":"hello world"}]})
    );
    assert_eq!(put(&ep, "version=13").status, 200);
    let n = c.recv();
    assert!(
        n["updates"][0].get("data").is_none(),
        "no data key without data: {n}"
    );
}

#[test]
fn offline_update_is_202_and_flushed_right_after_hello() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    let e1 = c.register(&chid(1));
    let e2 = c.register(&chid(2));
    c.close();
    assert!(matches!(
        c.next(Duration::from_secs(5)),
        Got::Close(_) | Got::Eof
    ));
    assert_eq!(put(&e1, "version=5&data=dropped").status, 202);
    assert_eq!(put(&e2, "version=6").status, 202);
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1), &chid(2)]);
    let n = c.recv();
    assert_eq!(n["messageType"], "notification");
    let mut got: Vec<(String, u64)> = n["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(u.get("data").is_none(), "data is never stored: {u}");
            (
                u["channelID"].as_str().unwrap().to_string(),
                u["version"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(chid(1), 5), (chid(2), 6)]);
}

#[test]
fn unacked_live_update_is_redelivered_on_next_hello_and_acked_one_is_not() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    let e1 = c.register(&chid(1));
    let e2 = c.register(&chid(2));
    assert_eq!(put(&e1, "version=7&data=x").status, 200);
    c.recv();
    assert_eq!(put(&e2, "version=8").status, 200);
    c.recv();
    c.ack(&chid(2), 8);
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    c.close();
    for _ in 0..2 {
        let mut c = s.client();
        c.hello(&uaid, &[&chid(1), &chid(2)]);
        assert_eq!(
            c.recv(),
            json!({"messageType":"notification","updates":[{"channelID":chid(1),"version":7}]})
        );
        c.close();
    }
}

#[test]
fn ack_of_another_version_keeps_the_stored_one() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    assert_eq!(put(&ep, "version=20").status, 202);
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 20);
    c.ack(&chid(1), 19);
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    c.close();
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 20);
    c.ack(&chid(1), 20);
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    c.close();
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    c.expect_silence(SHORT);
}

#[test]
fn update_right_after_a_close_frame_is_202() {
    let s = Server::start();
    // An offline channel to keep the endpoint connection busy with a burst of updates, so that the
    // client's close frame and the update behind it arrive while the server is still reading them.
    let mut other = s.client();
    other.hello_new();
    let busy_ep = other.register(&chid(999));
    other.close();
    let (addr, busy_path) = split_url(&busy_ep);
    let burst =
        format!("PUT {busy_path} HTTP/1.1\r\nContent-Length: 9\r\n\r\nversion=1").repeat(400);
    for n in 0..10 {
        let mut c = s.client();
        let uaid = c.hello_new();
        let ep = c.register(&chid(n));
        let path = split_url(&ep).1;
        let mut http = TcpStream::connect(addr).unwrap();
        let reader = http.try_clone().unwrap();
        let responses = std::thread::spawn(move || read_responses(reader, 401));
        http.write_all(burst.as_bytes()).unwrap();
        c.close();
        let last = format!(
            "PUT {path} HTTP/1.1\r\nContent-Length: 11\r\nConnection: close\r\n\r\nversion={}",
            100 + n
        );
        http.write_all(last.as_bytes()).unwrap();
        let statuses = responses.join().unwrap();
        assert_eq!(statuses.len(), 401);
        assert!(statuses[..400].iter().all(|&st| st == 202));
        assert_eq!(
            statuses[400], 202,
            "round {n}: the close frame was read first"
        );
        let mut c = s.client();
        c.hello(&uaid, &[&chid(n)]);
        assert_eq!(c.recv()["updates"][0]["version"], 100 + n);
    }
}

/// Reads `count` pipelined responses and returns their statuses.
fn read_responses(mut conn: TcpStream, count: usize) -> Vec<u16> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let mut statuses = Vec::new();
    while statuses.len() < count {
        let n = conn.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all).to_string();
        statuses = text
            .split("HTTP/1.1 ")
            .skip(1)
            .filter_map(|r| r.get(..3)?.parse().ok())
            .collect();
    }
    statuses
}

#[test]
fn versions_default_to_now_and_may_go_backwards() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let version_of = |c: &mut common::Client| c.recv()["updates"][0]["version"].as_u64().unwrap();
    for body in ["", "version=", "version=0"] {
        let before = now_secs();
        assert_eq!(put(&ep, body).status, 200, "{body:?}");
        let v = version_of(&mut c);
        assert!(v >= before && v <= now_secs(), "{body:?} gave {v}");
    }
    assert_eq!(put(&ep, "version=12345789").status, 200);
    assert_eq!(version_of(&mut c), 12345789);
    assert_eq!(put(&ep, "version=1").status, 200);
    assert_eq!(version_of(&mut c), 1);
}

#[test]
fn body_is_parsed_only_for_form_or_no_content_type() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let (addr, path) = split_url(&ep);
    let version_of = |c: &mut common::Client| c.recv()["updates"][0]["version"].as_u64().unwrap();

    let r = request(
        addr,
        "PUT",
        &path,
        &["Content-Type: application/json"],
        "version=999",
    );
    assert_eq!(r.status, 200);
    assert!(
        version_of(&mut c) >= now_secs() - 5,
        "json body is not read"
    );

    assert_eq!(request(addr, "PUT", &path, &[], "version=998").status, 200);
    assert_eq!(version_of(&mut c), 998, "no content type: parsed as a form");

    let q = format!("{path}?version=997");
    assert_eq!(
        request(addr, "PUT", &q, &["Content-Type: text/plain"], "version=1").status,
        200
    );
    assert_eq!(version_of(&mut c), 997, "query string is used");

    let charset = "Content-Type: application/x-www-form-urlencoded; charset=UTF-8";
    assert_eq!(
        request(addr, "PUT", &q, &[charset], "version=996").status,
        200
    );
    assert_eq!(version_of(&mut c), 996, "body wins over query");
}

#[test]
fn bad_versions_data_tokens_and_methods() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let (addr, path) = split_url(&ep);
    for bad in [
        "version=abc",
        "version=-1",
        "version=1.5",
        "version=99999999999999999999",
    ] {
        let r = put(&ep, bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.body, "\"Invalid Version\"");
    }
    let r = put(&ep, &format!("version=1&data={}", "a".repeat(4097)));
    assert_eq!(r.status, 413);
    assert_eq!(r.body, "\"Data exceeds max length of 4096 bytes\"");
    assert_eq!(
        put(&ep, &format!("version=1&data={}", "a".repeat(4096))).status,
        200
    );
    assert_eq!(c.recv()["updates"][0]["data"].as_str().unwrap().len(), 4096);

    let bad_token = format!("http://{addr}/update/AAAA{}", &path[12..]);
    let r = put(&bad_token, "version=1");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "\"Invalid Token\"");
    assert_eq!(
        put(&format!("http://{addr}/update/"), "version=1").status,
        404
    );
    assert_eq!(
        put(&format!("http://{addr}/update/x.y"), "version=1").status,
        404
    );
    // Checks run method, then version, then token.
    assert_eq!(
        put(&format!("http://{addr}/update/x"), "version=x").status,
        400
    );

    for method in ["GET", "POST", "DELETE"] {
        let r = request(addr, method, &path, &[], "");
        assert_eq!(r.status, 405, "{method}");
        assert!(r.head.contains("Allow: PUT"));
    }
    c.expect_silence(SHORT);
}

#[test]
fn bad_http_requests_get_clear_answers() {
    let s = Server::start();
    let a = s.addr;
    assert_eq!(raw_http(a, b"GARBAGE\r\n\r\n").status, 400);
    let huge = format!(
        "GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(raw_http(a, huge.as_bytes()).status, 431);
    // Chunked bodies are read (tests/http.rs); other transfer codings are not implemented.
    let gzip = b"PUT /update/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_http(a, gzip).status, 501);
    let too_big = b"PUT /update/x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n";
    assert_eq!(raw_http(a, too_big).status, 413);
    let bad_len = b"PUT /update/x HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
    assert_eq!(raw_http(a, bad_len).status, 400);
    assert_eq!(request(a, "GET", "/nowhere", &[], "").status, 404);
    let old_ws = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n";
    let r = raw_http(a, old_ws);
    assert_eq!(r.status, 426);
    assert!(r.head.contains("Sec-WebSocket-Version: 13"));
    // A half-sent request is dropped after the request timeout, not kept forever.
    let s = Server::start_with("request_timeout_ms = 300", "");
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"PUT /update/x HTTP/1.1\r\nContent-Le")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        slow.read(&mut buf).unwrap_or(0),
        0,
        "closed without an answer"
    );
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let (addr, path) = split_url(&ep);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Two requests in one write (pipelined), then a third.
    let one = |v: u32| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nversion={v}",
            format!("version={v}").len()
        )
    };
    conn.write_all(format!("{}{}", one(1), one(2)).as_bytes())
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("HTTP/1.1 200").count() < 2 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    conn.write_all(one(3).as_bytes()).unwrap();
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(parse_reply(&String::from_utf8_lossy(&buf[..n])).status, 200);
    for v in 1..=3 {
        assert_eq!(c.recv()["updates"][0]["version"], v);
    }
}

#[test]
fn health_is_ok_while_the_store_is() {
    let s = Server::start();
    let r = request(s.addr, "GET", "/health", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"status\":\"OK\"}");
}

#[test]
fn configured_token_keys_survive_restarts_and_rotate() {
    let k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
    let k2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";
    let s = Server::start_with("", &format!("[endpoint]\ntoken_keys = [\"{k1}\"]\n"));
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let path = split_url(&ep).1;
    drop(c);
    drop(s);
    // Rotated: the old key still opens the token (the memory store forgot the channel: 410, not 404).
    let s = Server::start_with(
        "",
        &format!("[endpoint]\ntoken_keys = [\"{k2}\", \"{k1}\"]\n"),
    );
    let r = put(&format!("http://{}{path}", s.addr), "version=1");
    assert_eq!(r.status, 410, "{}", r.body);
    drop(s);
    // A key that never sealed it: the token is invalid.
    let s = Server::start_with("", &format!("[endpoint]\ntoken_keys = [\"{k2}\"]\n"));
    assert_eq!(
        put(&format!("http://{}{path}", s.addr), "version=1").status,
        404
    );
}

#[test]
fn split_listeners_serve_their_own_roles() {
    let s = Server::start_with("endpoint_listen = \"127.0.0.1:0\"", "");
    let ep_addr = s.endpoint_addr.expect("two listeners");
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert!(ep.starts_with(&format!("http://{ep_addr}/update/")), "{ep}");
    assert_eq!(put(&ep, "version=3").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 3);
    let on_ws_port = format!("http://{}{}", s.addr, split_url(&ep).1);
    assert_eq!(put(&on_ws_port, "version=4").status, 404);
    let upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(raw_http(ep_addr, upgrade).status, 404);
    assert_eq!(request(ep_addr, "GET", "/status", &[], "").status, 200);
}

#[test]
fn connections_above_the_cap_are_refused_and_held_ones_keep_working() {
    let s = Server::start_with("max_connections = 5", "");
    let mut held: Vec<common::Client> = (0..4).map(|_| s.client()).collect();
    let mut eps = Vec::new();
    for (i, c) in held.iter_mut().enumerate() {
        c.hello_new();
        eps.push(c.register(&chid(i as u32)));
    }
    // Fill the last slot with an HTTP connection, then try more.
    let _filler = TcpStream::connect(s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..10 {
        let mut extra = TcpStream::connect(s.addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = extra.write_all(b"GET /status HTTP/1.1\r\n\r\n");
        let mut buf = [0u8; 64];
        assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "refused at the cap");
    }
    assert!(s.wait_log("max_connections reached"));
    drop(_filler);
    // Once the server has seen the filler go, one slot is free again: take it with a kept-alive
    // connection (retrying while the close is still on its way) and send every update through it.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        assert!(
            std::time::Instant::now() < end,
            "the freed slot never came back"
        );
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(b"GET /status HTTP/1.1\r\n\r\n");
        let mut buf = [0u8; 512];
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (i, c) in held.iter_mut().enumerate() {
        let path = split_url(&eps[i]).1;
        let req = format!("PUT {path} HTTP/1.1\r\nContent-Length: 10\r\n\r\nversion=77");
        conn.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).unwrap();
        assert_eq!(parse_reply(&String::from_utf8_lossy(&buf[..n])).status, 200);
        assert_eq!(c.recv()["updates"][0]["version"], 77);
    }
}

#[test]
fn expect_100_continue_gets_the_go_ahead() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    let (addr, path) = split_url(&ep);
    let body = format!("version=5&data={}", "d".repeat(2000));
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue\r\n\r\n"));
    conn.write_all(body.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = conn.read_to_string(&mut rest);
    assert_eq!(parse_reply(&rest).status, 200, "{rest}");
    assert_eq!(c.recv()["updates"][0]["data"].as_str().unwrap().len(), 2000);
}

#[test]
fn a_pipelining_app_server_does_not_starve_the_others() {
    let s = Server::start_with("workers = 1", "");
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    let (addr, path) = split_url(&ep);
    let one = format!("PUT {path} HTTP/1.1\r\nContent-Length: 9\r\n\r\nversion=1");
    let burst = one.repeat(2000);
    let mut conn = TcpStream::connect(addr).unwrap();
    let reader = conn.try_clone().unwrap();
    // Drain the answers so that the server keeps reading requests.
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 65536];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let flood = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if conn.write_all(burst.as_bytes()).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(request(s.addr, "GET", "/status", &[], "").status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "status took {:?}",
            t.elapsed()
        );
    }
    flood.join().unwrap();
}
