//! Every WebSocket message type and error path, over real sockets against the real binary.

mod common;

use std::time::Duration;

use common::{chid, put, Got, Server};
use serde_json::{json, Value};
use tungstenite::Message;

const SHORT: Duration = Duration::from_millis(300);

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn without_status(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("status");
    o.remove("error");
    v
}

#[test]
fn ping_and_purge_before_hello_answer_raw_braces() {
    let s = Server::start();
    let mut c = s.client();
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    c.send(r#"{"messageType":"purge"}"#);
    assert_eq!(c.recv_text(), "{}");
}

#[test]
fn hello_issues_lower_case_hex_uaid_with_lower_case_type() {
    let s = Server::start();
    let mut c = s.client();
    c.send(r#"{"messageType":"HELLO","uaid":"","channelIDs":[]}"#);
    let r = c.recv();
    assert_eq!(r["messageType"], "hello");
    assert_eq!(r["status"], 200);
    assert!(is_hex32(r["uaid"].as_str().unwrap()), "{r}");
}

#[test]
fn keys_match_case_insensitively() {
    let s = Server::start();
    let mut c = s.client();
    c.send(r#"{"MessageType":"hello","UAID":"","ChannelIds":[]}"#);
    assert_eq!(c.recv()["status"], 200);
    c.send(&format!(
        r#"{{"messagetype":"Register","CHANNELID":"{}"}}"#,
        chid(1)
    ));
    let r = c.recv();
    assert_eq!(r["messageType"], "register");
    assert_eq!(r["status"], 200);
}

#[test]
fn invalid_json_closes_without_reply() {
    for bad in ["banana", "[1,2]", "\"hello\"", "42", "{\"messageType\":"] {
        let s = Server::start();
        let mut c = s.client();
        c.send(bad);
        assert!(c.expect_close().is_some(), "{bad}");
    }
}

#[test]
fn empty_message_is_ignored() {
    let s = Server::start();
    let mut c = s.client();
    c.send("");
    c.expect_silence(SHORT);
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
}

#[test]
fn unknown_or_bad_message_types_are_401_echo_then_close() {
    for msg in [
        json!({"messageType":"bogus","extra":[1]}),
        json!({"messageType":123}),
        json!({"messageType":null}),
        json!({"messageType":""}),
        json!({"nothing":"here"}),
    ] {
        let s = Server::start();
        let mut c = s.client();
        c.send_json(msg.clone());
        let r = c.recv();
        assert_eq!(r["status"], 401, "{msg}");
        assert_eq!(r["error"], "Invalid Command");
        assert_eq!(without_status(r), msg);
        c.expect_close();
    }
}

#[test]
fn commands_before_hello_are_401_echo_then_close() {
    for msg in [
        json!({"messageType":"register","channelID":chid(1)}),
        json!({"messageType":"unregister","channelID":chid(1)}),
        json!({"messageType":"ack","updates":[{"channelID":"abc","version":23}]}),
    ] {
        let s = Server::start();
        let mut c = s.client();
        c.send_json(msg.clone());
        let r = c.recv();
        assert_eq!(r["status"], 401);
        assert_eq!(without_status(r), msg);
        c.expect_close();
    }
}

#[test]
fn hello_without_channel_ids_is_401_unless_webpush() {
    let s = Server::start();
    let mut c = s.client();
    c.send(r#"{"messageType":"hello","uaid":""}"#);
    assert_eq!(c.recv()["status"], 401);
    c.expect_close();

    let mut c = s.client();
    c.send(r#"{"messageType":"hello","broadcasts":{},"use_webpush":true}"#);
    let r = c.recv();
    assert_eq!(r["status"], 200);
    assert!(is_hex32(r["uaid"].as_str().unwrap()));
}

#[test]
fn broadcast_subscribe_keeps_the_socket_open() {
    let s = Server::start();
    let mut c = s.client();
    c.send(r#"{"messageType":"hello","broadcasts":{"remote-settings/monitor_changes":"\"0\""},"use_webpush":true}"#);
    assert_eq!(c.recv()["status"], 200);
    c.send(r#"{"messageType":"broadcast_subscribe","broadcasts":{"remote-settings/monitor_changes":"\"0\""}}"#);
    // Answered; an id the server does not hold is reported as such.
    let answer = c.recv();
    assert_eq!(answer["messageType"], "broadcast");
    assert_eq!(
        answer["broadcasts"]["remote-settings/monitor_changes"],
        "Broadcast not found"
    );
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
}

#[test]
fn invalid_uaid_is_503() {
    let s = Server::start();
    let mut c = s.client();
    c.send(r#"{"messageType":"hello","uaid":"not-valid","channelIDs":[]}"#);
    let r = c.recv();
    assert_eq!(r["status"], 503);
    assert_eq!(r["error"], "Service Unavailable");
    assert_eq!(r["uaid"], "not-valid");
    c.expect_close();
}

#[test]
fn second_hello_on_a_socket() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    assert_eq!(c.hello(&uaid, &[])["uaid"], uaid.as_str());
    assert_eq!(c.hello("", &[])["uaid"], uaid.as_str());
    c.send_json(
        json!({"messageType":"hello","uaid":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","channelIDs":[]}),
    );
    assert_eq!(c.recv()["status"], 503);
    c.expect_close();
}

#[test]
fn uaid_rules_unknown_and_known() {
    let s = Server::start();
    // Unknown UAID with an empty list: kept verbatim, in the client's spelling.
    let dashed = "9F3C0B6E-5D2A-4C8E-9B7A-6D5C4B3A2F1E";
    let mut c = s.client();
    assert_eq!(c.hello(dashed, &[])["uaid"], dashed);
    drop(c);
    // Unknown UAID with channels: a new one.
    let mut c = s.client();
    let other = "0123456789abcdef0123456789abcdef";
    let r = c.hello(other, &[&chid(1)]);
    assert_ne!(r["uaid"], other);
    let fresh = r["uaid"].as_str().unwrap().to_string();
    c.register(&chid(1));
    c.close();
    // Known (it registered): kept, with channels or without.
    let mut c = s.client();
    assert_eq!(c.hello(&fresh, &[&chid(1)])["uaid"], fresh.as_str());
}

#[test]
fn too_many_channels_resets_the_uaid() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    c.register(&chid(1));
    c.close();
    let list: Vec<String> = (0..201).map(chid).collect();
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let mut c = s.client();
    assert_ne!(c.hello(&uaid, &list)["uaid"], uaid.as_str());
    c.close();
    // Its data is gone: coming back with the old UAID and a channel gives yet another.
    let mut c = s.client();
    assert_ne!(c.hello(&uaid, &[&chid(1)])["uaid"], uaid.as_str());
}

#[test]
fn exactly_max_channels_is_accepted() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    c.register(&chid(1));
    c.close();
    let list: Vec<String> = (0..200).map(chid).collect();
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let mut c = s.client();
    assert_eq!(c.hello(&uaid, &list)["uaid"], uaid.as_str());
}

#[test]
fn a_newer_socket_for_the_uaid_closes_the_older_one() {
    let s = Server::start();
    let mut a = s.client();
    let uaid = a.hello_new();
    let ep = a.register(&chid(1));
    let mut b = s.client();
    assert_eq!(b.hello(&uaid, &[&chid(1)])["uaid"], uaid.as_str());
    assert!(matches!(a.next(Duration::from_secs(5)), Got::Close(_)));
    assert_eq!(put(&ep, "version=5").status, 200);
    assert_eq!(b.recv()["updates"][0]["version"], 5);
}

#[test]
fn register_and_reregister() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    c.send_json(json!({"messageType":"register","channelID":chid(7),"uaid":"ignored"}));
    let r = c.recv();
    assert_eq!(r["messageType"], "register");
    assert_eq!(r["uaid"], uaid.as_str());
    assert_eq!(r["channelID"], chid(7));
    let ep = r["pushEndpoint"].as_str().unwrap();
    let prefix = format!("http://{}/update/", s.addr);
    assert!(ep.starts_with(&prefix), "{ep}");
    assert!(
        !ep.contains(&uaid) && !ep.contains("8e2b"),
        "token must not reveal ids: {ep}"
    );
    let again = c.register(&chid(7));
    assert!(again.starts_with(&prefix));
    // Both endpoints work.
    assert_eq!(put(ep, "version=1").status, 200);
    c.recv();
    assert_eq!(put(&again, "version=2").status, 200);
    c.recv();
}

#[test]
fn same_channel_under_two_uaids() {
    let s = Server::start();
    let mut a = s.client();
    a.hello_new();
    let ea = a.register(&chid(3));
    let mut b = s.client();
    b.hello_new();
    let eb = b.register(&chid(3));
    assert_eq!(put(&ea, "version=10").status, 200);
    assert_eq!(a.recv()["updates"][0]["version"], 10);
    b.expect_silence(SHORT);
    assert_eq!(put(&eb, "version=20").status, 200);
    assert_eq!(b.recv()["updates"][0]["version"], 20);
}

#[test]
fn register_with_bad_channel_id_is_401() {
    for bad in [
        json!(null),
        json!(""),
        json!("abc"),
        json!(5),
        json!("0cb8a6138e2b4b47b37051098daa8401ab"),
    ] {
        let s = Server::start();
        let mut c = s.client();
        c.hello_new();
        let mut msg = json!({"messageType":"register"});
        if !bad.is_null() {
            msg["channelID"] = bad.clone();
        }
        c.send_json(msg);
        assert_eq!(c.recv()["status"], 401, "{bad}");
        c.expect_close();
    }
}

#[test]
fn unregister_is_always_200_and_drops_pending() {
    let s = Server::start();
    let mut c = s.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));
    c.close();
    assert_eq!(put(&ep, "version=9").status, 202);
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    assert_eq!(c.recv()["updates"][0]["version"], 9);
    c.send_json(json!({"messageType":"unregister","channelID":chid(1)}));
    assert_eq!(
        c.recv(),
        json!({"messageType":"unregister","status":200,"channelID":chid(1)})
    );
    c.send_json(json!({"messageType":"unregister","channelID":"not-even-a-uuid"}));
    assert_eq!(c.recv()["status"], 200);
    c.close();
    // Nothing for that channel again, even when listed in hello; the endpoint is gone.
    let mut c = s.client();
    c.hello(&uaid, &[&chid(1)]);
    c.expect_silence(SHORT);
    assert_eq!(put(&ep, "version=10").status, 410);
    c.expect_silence(SHORT);
}

#[test]
fn unregister_without_channel_is_401() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    c.send(r#"{"messageType":"unregister"}"#);
    assert_eq!(c.recv()["status"], 401);
    c.expect_close();
}

#[test]
fn ack_without_updates_is_401() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    c.send(r#"{"messageType":"ack","updates":[]}"#);
    assert_eq!(c.recv()["status"], 401);
    c.expect_close();
}

#[test]
fn ack_has_no_reply() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    assert_eq!(put(&ep, "version=3").status, 200);
    c.recv();
    c.ack(&chid(1), 3);
    c.expect_silence(SHORT);
    assert!(s.wait_log(&format!("channel={} version=3 code=-", chid(1))));
}

#[test]
fn binary_frames_are_parsed_like_text() {
    let s = Server::start();
    let mut c = s.client();
    c.ws.send(Message::binary(
        br#"{"messageType":"hello","uaid":"","channelIDs":[]}"#.to_vec(),
    ))
    .unwrap();
    let r = c.recv();
    assert_eq!(r["status"], 200);
}

#[test]
fn messages_of_128_kb_are_answered() {
    let big = "ab".repeat(64_000);
    let s = Server::start();
    // As an unknown key: ignored.
    let mut c = s.client();
    let mut msg = json!({"messageType":"hello","uaid":"","channelIDs":[]});
    msg[big.as_str()] = json!("x");
    c.send_json(msg);
    assert_eq!(c.recv()["status"], 200);
    // As a uaid: invalid, 503, echoed in full.
    let mut c = s.client();
    c.send_json(json!({"messageType":"hello","uaid":big,"channelIDs":[]}));
    let r = c.recv();
    assert_eq!(r["status"], 503);
    assert_eq!(r["uaid"].as_str().unwrap().len(), 128_000);
    // As a messageType: 401.
    let mut c = s.client();
    c.send_json(json!({"messageType":big}));
    assert_eq!(c.recv()["status"], 401);
}

#[test]
fn messages_over_the_limit_close_with_1009() {
    let s = Server::start();
    let mut c = s.client();
    c.send(&format!("{{\"x\":\"{}\"}}", "a".repeat(1 << 21)));
    assert_eq!(c.expect_close(), Some(1009));
}

#[test]
fn pings_too_often_are_401() {
    let s = Server::start();
    let mut c = s.client();
    c.send("{}");
    assert_eq!(c.recv_text(), "{}");
    c.send(r#"{"messageType":"ping"}"#);
    let r = c.recv();
    assert_eq!(r["status"], 401);
    c.expect_close();
}

#[test]
fn ping_limit_can_be_disabled() {
    let s = Server::start_with("", "[websocket]\nmin_ping_interval_ms = 0\n");
    let mut c = s.client();
    for _ in 0..5 {
        c.send("{}");
        assert_eq!(c.recv_text(), "{}");
    }
}

#[test]
fn sockets_without_hello_are_closed_after_the_timeout() {
    let s = Server::start_with("", "[websocket]\nhello_timeout_ms = 300\n");
    let mut slow = s.client();
    let mut quick = s.client();
    quick.hello_new();
    assert!(matches!(
        slow.next(Duration::from_secs(5)),
        Got::Close(Some(1008))
    ));
    quick.expect_silence(Duration::from_millis(500));
    quick.send("{}");
    assert_eq!(quick.recv_text(), "{}");
}

#[test]
fn nothing_is_sent_unsolicited_while_idle() {
    let s = Server::start();
    let mut c = s.client();
    c.hello_new();
    c.register(&chid(1));
    c.expect_silence(Duration::from_secs(1));
}

#[test]
fn status_counts_clients_after_hello() {
    let s = Server::start();
    let status = || {
        let r = common::request(s.addr, "GET", "/status", &[], "");
        assert_eq!(r.status, 200);
        serde_json::from_str::<Value>(&r.body).unwrap()
    };
    assert_eq!(status()["clients"], 0);
    let mut c = s.client();
    assert_eq!(status()["clients"], 0, "no hello yet");
    c.hello_new();
    let st = status();
    assert_eq!(st["clients"], 1);
    assert_eq!(st["status"], "OK");
    assert!(st["version"].is_string());
    c.close();
    assert!(matches!(
        c.next(Duration::from_secs(5)),
        Got::Close(_) | Got::Eof
    ));
    assert_eq!(status()["clients"], 0);
}

#[test]
fn a_session_closed_by_an_error_is_offline_at_once() {
    let s = Server::start();
    let mut a = s.client();
    let uaid = a.hello_new();
    let ep = a.register(&chid(1));
    a.send("banana");
    a.expect_close();
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    // Another device, quite possibly in the slot the closed one left.
    let mut b = s.client();
    b.hello_new();
    assert_eq!(put(&ep, "version=5").status, 202);
    b.expect_silence(SHORT);
    let r = common::request(s.addr, "GET", "/status", &[], "");
    assert!(r.body.contains("\"clients\":1"), "{}", r.body);
    // The first device comes back and gets its version; the other one is left alone.
    let mut a = s.client();
    a.hello(&uaid, &[&chid(1)]);
    assert_eq!(a.recv()["updates"][0]["version"], 5);
    b.send("{}");
    assert_eq!(b.recv_text(), "{}");
}

#[test]
fn a_closing_socket_cannot_extend_its_life_with_bad_frames() {
    use std::io::{Read, Write};
    let s = Server::start_with("close_timeout_ms = 500", "");
    let mut c = s.client();
    c.send("banana");
    assert!(matches!(c.next(Duration::from_secs(5)), Got::Close(_)));
    let raw = c.ws.get_mut();
    raw.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(5) {
        // A masked, empty text frame with all three reserved bits set: a protocol error each time.
        if raw.write_all(&[0xF1, 0x80, 1, 2, 3, 4]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match raw.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after 5 s");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_flooding_client_does_not_starve_the_others() {
    let s = Server::start();
    let mut flooder = s.client();
    flooder.send(r#"{"messageType":"hello","use_webpush":true}"#);
    flooder.recv();
    let frame = r#"{"messageType":"broadcast_subscribe","broadcasts":{}}"#;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let flood = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !flag.load(std::sync::atomic::Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..1000 {
                if flooder.ws.write(Message::text(frame)).is_err() {
                    return;
                }
            }
            if flooder.ws.flush().is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let r = common::request(s.addr, "GET", "/status", &[], "");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status took {:?}",
            t.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
}

#[test]
fn a_ping_flood_neither_starves_others_nor_grows_memory() {
    use std::io::Write;
    let s = Server::start_with(
        "",
        "[websocket]\nmax_output_buffer = 65536\n[webpush]\nenabled = false\n",
    );
    let mut flooder = s.client();
    flooder.hello_new();
    // Masked 125-byte WebSocket pings, written raw and never read: every pong piles up unread.
    let mut frame = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    frame.extend(std::iter::repeat_n(b'p' ^ 1, 125));
    let burst: Vec<u8> = frame.repeat(1000);
    let raw = flooder.ws.get_mut().try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let mut raw = raw;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if raw.write_all(&burst).is_err() {
                return true;
            }
        }
        false
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(
            common::request(s.addr, "GET", "/status", &[], "").status,
            200
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status took {:?}",
            t.elapsed()
        );
    }
    let dropped = flood.join().unwrap();
    assert!(dropped, "a peer that never reads its pongs is dropped");
    assert!(s.rss() < 64 << 20, "server RSS {} bytes", s.rss());
}

#[test]
fn a_frame_left_incomplete_after_hello_is_closed_after_the_request_timeout() {
    use std::io::Write;
    let s = Server::start_with("request_timeout_ms = 300", "");
    let mut c = s.client();
    c.hello_new();
    // A masked text frame announcing 60,000 bytes, of which 10 are sent.
    let mut partial = vec![0x81, 0x80 | 126];
    partial.extend_from_slice(&60_000u16.to_be_bytes());
    partial.extend_from_slice(&[1, 2, 3, 4]);
    partial.extend_from_slice(&[b'x'; 10]);
    c.ws.get_mut().write_all(&partial).unwrap();
    assert_eq!(c.expect_close(), Some(1008));
    // A whole frame in time is fine: another client sending slowly but completely stays.
    let mut ok = s.client();
    ok.hello_new();
    std::thread::sleep(Duration::from_millis(500));
    ok.send("{}");
    assert_eq!(ok.recv_text(), "{}");
}
