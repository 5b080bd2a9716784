//! Per-source rate limits on new UAIDs and registrations (`[rate_limit]`, issue 13): one source
//! past its limits is refused while devices elsewhere get in, and `X-Forwarded-For` names the
//! source only when a trusted proxy sent it. A new UAID is counted at its first register, which
//! creates it in the store (a hello alone stores nothing and is never refused). Sources are addresses of 127.0.0.0/8, each socket
//! bound to its own before it connects.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use tungstenite::client::IntoClientRequest;

/// The limits of these tests: five new UAIDs and twelve registers per source, refilling at one a
/// minute (nothing refills while a test runs); the proxy at 127.0.0.9 is trusted.
const LIMITS: [(&str, &str); 5] = [
    ("SIMPLEPUSH_RATE_LIMIT_NEW_UAIDS_PER_MINUTE", "1"),
    ("SIMPLEPUSH_RATE_LIMIT_NEW_UAID_BURST", "5"),
    ("SIMPLEPUSH_RATE_LIMIT_REGISTERS_PER_MINUTE", "1"),
    ("SIMPLEPUSH_RATE_LIMIT_REGISTER_BURST", "12"),
    ("SIMPLEPUSH_RATE_LIMIT_TRUSTED_PROXIES", "127.0.0.9/32"),
];
const NEW_UAIDS: usize = 5;
const REGISTERS: usize = 12;
const PROXY: &str = "127.0.0.9";

/// A WebSocket from local address `from`, its upgrade request carrying `forwarded` as
/// `X-Forwarded-For`.
fn connect_from(server: SocketAddr, from: &str, forwarded: Option<&str>) -> Client {
    let ip: IpAddr = from.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("ws://{server}/").into_client_request().unwrap();
    if let Some(list) = forwarded {
        let value = list.parse().unwrap();
        request.headers_mut().insert("X-Forwarded-For", value);
    }
    let (ws, _) = tungstenite::client(request, stream).expect("upgrade");
    Client { ws }
}

/// Sends a register: `true` if answered 200; `false` if refused, which must be status 429 with
/// the socket left open (a purge, unlike a ping not limited in rate, is still answered).
fn try_register(c: &mut Client, chid: &str) -> bool {
    c.send_json(json!({"messageType":"register","channelID":chid}));
    let reply: Value = c.recv();
    assert_eq!(reply["channelID"], chid, "{reply}");
    if reply["status"] == 200 {
        return true;
    }
    assert_eq!(reply["status"], 429, "{reply}");
    c.send_json(json!({"messageType":"purge"}));
    assert_eq!(c.recv_text(), "{}", "the socket stays after a 429");
    false
}

/// `tries` new devices from `from`, each a hello (never refused) and one register, which creates
/// its UAID in the store; how many got their register.
fn new_devices(s: &Server, from: &str, forwarded: Option<&str>, tries: usize) -> usize {
    (0..tries)
        .filter(|_| {
            let mut c = connect_from(s.addr, from, forwarded);
            c.hello_new();
            try_register(&mut c, &chid(0))
        })
        .count()
}

#[test]
fn one_source_past_its_limits_is_refused_while_another_gets_in() {
    let s = Server::start_env("", "", &LIMITS);
    // 127.0.0.2 creates devices: as many as its new-UAID burst, then its subscribes get 429.
    let mut first = connect_from(s.addr, "127.0.0.2", None);
    let uaid = first.hello_new();
    assert!(try_register(&mut first, &chid(1)));
    first.close();
    assert_eq!(
        new_devices(&s, "127.0.0.2", None, NEW_UAIDS + 2),
        NEW_UAIDS - 1
    );
    // A UAID the store does not know is a new one as well, whatever the client claims: with
    // channels it is replaced by a fresh one, without it is kept, and either way its first
    // register is refused.
    for channels in [vec![chid(1)], vec![]] {
        let mut c = connect_from(s.addr, "127.0.0.2", None);
        let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        c.hello("0123456789abcdef0123456789abcdef", &channels);
        assert!(
            !try_register(&mut c, &chid(2)),
            "unknown UAID, channels {channels:?}"
        );
    }
    // The first device resumes its known UAID: no new-UAID token, and its registers go on
    // until the source's register burst is spent (NEW_UAIDS of it went to the new devices).
    let mut again = connect_from(s.addr, "127.0.0.2", None);
    assert_eq!(again.hello(&uaid, &[&chid(1)])["uaid"], uaid.as_str());
    let granted = (10..10 + REGISTERS as u32)
        .filter(|n| try_register(&mut again, &chid(*n)))
        .count();
    assert_eq!(
        granted,
        REGISTERS - NEW_UAIDS,
        "the rest of the register burst"
    );
    // Another source is not affected: its device says hello and registers.
    assert_eq!(new_devices(&s, "127.0.0.3", None, 1), 1);
    // Refused: 3 new devices and the 2 unknown UAIDs; 5 registers of the resumed device.
    let m = s.metrics();
    assert_eq!(
        m["simplepush_rate_limited_total{what=\"uaid\"}"], 5.0,
        "{m:?}"
    );
    assert_eq!(
        m["simplepush_rate_limited_total{what=\"register\"}"], 5.0,
        "{m:?}"
    );
    assert!(s.wait_log("rate limit: the source of 127.0.0.2:"));
}

#[test]
fn forwarded_for_names_the_source_only_from_a_trusted_proxy() {
    let s = Server::start_env("", "", &LIMITS);
    // 127.0.0.2 uses up its new UAIDs.
    assert_eq!(new_devices(&s, "127.0.0.2", None, NEW_UAIDS + 1), NEW_UAIDS);
    // Through the trusted proxy, a client the proxy names as 127.0.0.2 is that source: refused.
    assert_eq!(new_devices(&s, PROXY, Some("127.0.0.2"), 1), 0);
    // What a client wrote to the left of the proxy's own entry changes nothing.
    assert_eq!(new_devices(&s, PROXY, Some("127.0.0.77, 127.0.0.2"), 1), 0);
    // Another client behind the same proxy has a bucket of its own, not the proxy's.
    let other = Some("127.0.0.2, 127.0.0.5");
    assert_eq!(new_devices(&s, PROXY, other, NEW_UAIDS + 1), NEW_UAIDS);
    assert_eq!(new_devices(&s, PROXY, Some("127.0.0.6"), 1), 1);
    // The same header from an untrusted peer is ignored: 127.0.0.4 counts as itself, so it
    // neither escapes its own limit nor spends 127.0.0.6's.
    let forged = Some("127.0.0.6");
    assert_eq!(
        new_devices(&s, "127.0.0.4", forged, NEW_UAIDS + 1),
        NEW_UAIDS
    );
    assert_eq!(new_devices(&s, PROXY, forged, NEW_UAIDS), NEW_UAIDS - 1);
}

#[test]
fn the_issues_attack_gets_a_burst_at_the_default_limits_not_a_thousand() {
    // The defaults, stated (the harness turns the limits off).
    let defaults = [
        ("SIMPLEPUSH_RATE_LIMIT_NEW_UAIDS_PER_MINUTE", "60"),
        ("SIMPLEPUSH_RATE_LIMIT_REGISTERS_PER_MINUTE", "600"),
    ];
    let s = Server::start_env("", "", &defaults);
    let rss_before = s.rss();
    let started = std::time::Instant::now();
    // Issue 13: 1,000 throwaway WebPush subscriptions from one address (hello, register, close).
    let attempts = 1000;
    let got = (0..attempts)
        .filter(|n| {
            let mut c = connect_from(s.addr, "127.0.0.2", None);
            c.webpush_hello("");
            let ok = try_register(&mut c, &chid(*n));
            c.close();
            ok
        })
        .count();
    let secs = started.elapsed().as_secs_f64();
    // The burst of 100, and one more a second while the attack lasts.
    assert!(
        got >= 100 && got as f64 <= 101.0 + secs,
        "{got} in {secs:.1} s"
    );
    // A device elsewhere still subscribes.
    let mut victim = connect_from(s.addr, "127.0.0.3", None);
    victim.webpush_hello("");
    assert!(try_register(&mut victim, &chid(1)));
    println!(
        "rate limits: {got} of {attempts} throwaway subscriptions from one address in {secs:.1} s \
         (server RSS {} -> {} KiB); another address still subscribes",
        rss_before / 1024,
        s.rss() / 1024
    );
}
