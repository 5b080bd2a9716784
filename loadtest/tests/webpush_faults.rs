//! The webpush scenario's accounting against real faults: an HTTP relay between the tester (as
//! app server) and a real server damages some messages, sends some twice and answers some
//! without passing them on. The tester must count exactly those as corrupted, duplicated and
//! lost.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// What the relay did, by kind.
#[derive(Default)]
struct Done {
    requests: AtomicU64,
    corrupted: AtomicU64,
    doubled: AtomicU64,
    dropped: AtomicU64,
}

/// One HTTP/1.1 message (request or response) with a Content-Length body; None at EOF.
fn read_message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn forward(
    up: &mut TcpStream,
    from_up: &mut BufReader<TcpStream>,
    head: &str,
    body: &[u8],
) -> Option<Vec<u8>> {
    // One write per request: with two, Nagle's algorithm holds the body for the server's
    // delayed ACK (40 ms a message).
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    up.write_all(&req).ok()?;
    let (h, b) = read_message(from_up)?;
    let mut out = h.into_bytes();
    out.extend_from_slice(&b);
    Some(out)
}

/// Relays one app-server connection: message n (over all connections) is damaged when
/// n % 10 == 3, sent twice when n % 10 == 5, and answered 201 unsent when n % 10 == 7.
fn relay(client: TcpStream, server: SocketAddr, done: &Done) -> Option<()> {
    let mut up = TcpStream::connect(server).ok()?;
    up.set_nodelay(true).ok()?;
    client.set_nodelay(true).ok()?;
    let mut from_up = BufReader::new(up.try_clone().ok()?);
    let mut out = client.try_clone().ok()?;
    let mut from_client = BufReader::new(client);
    while let Some((head, mut body)) = read_message(&mut from_client) {
        let n = done.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = match n % 10 {
            3 if body.len() > 100 => {
                // A byte of the ciphertext: the record's tag no longer verifies.
                let i = body.len() - 20;
                body[i] ^= 0x40;
                done.corrupted.fetch_add(1, Ordering::SeqCst);
                forward(&mut up, &mut from_up, &head, &body)?
            }
            5 => {
                let first = forward(&mut up, &mut from_up, &head, &body)?;
                forward(&mut up, &mut from_up, &head, &body)?;
                done.doubled.fetch_add(1, Ordering::SeqCst);
                first
            }
            7 => {
                done.dropped.fetch_add(1, Ordering::SeqCst);
                b"HTTP/1.1 201 Created\r\nTTL: 300\r\nContent-Length: 0\r\n\r\n".to_vec()
            }
            _ => forward(&mut up, &mut from_up, &head, &body)?,
        };
        out.write_all(&answer).ok()?;
    }
    Some(())
}

#[test]
fn lost_corrupted_and_duplicated_messages_are_counted_exactly() {
    let dir = temp_dir("wp-faults");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a relay port");
    let relay_addr = listener.local_addr().unwrap();
    // The server hands out endpoints on the relay, so VAPID's audience is the relay's origin.
    let s = server(&dir, &format!("public_url = \"http://{relay_addr}\""));
    let done = Arc::new(Done::default());
    let (server_addr, d) = (s.addr, done.clone());
    std::thread::spawn(move || {
        for c in listener.incoming().map_while(Result::ok) {
            let d = d.clone();
            std::thread::spawn(move || relay(c, server_addr, &d));
        }
    });
    let mut a = args(
        "webpush --connections 30 --channels 4 --rate 100 --duration 2 --grace 2 \
         --payload-size 200 --http-conns 2",
    );
    a.extend(["--ws-url".into(), format!("ws://{}/", s.addr)]);
    let r = tester_json(&dir, &a);
    // The relay's last answers are in before the tester reports.
    std::thread::sleep(Duration::from_millis(50));
    let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
    let sent = num(&r, "notifications.sent");
    assert_eq!(get(&done.requests), sent, "{r:#}");
    assert!(
        get(&done.corrupted) >= 10 && get(&done.doubled) >= 10,
        "{r:#}"
    );
    assert_eq!(
        num(&r, "notifications.corrupted"),
        get(&done.corrupted),
        "{r:#}"
    );
    assert_eq!(
        num(&r, "notifications.duplicated"),
        get(&done.doubled),
        "{r:#}"
    );
    assert_eq!(num(&r, "notifications.lost"), get(&done.dropped), "{r:#}");
    let intact = sent - get(&done.corrupted) - get(&done.dropped);
    assert_eq!(num(&r, "notifications.received"), intact, "{r:#}");
    assert_eq!(num(&r, "notifications.unexpected"), 0, "{r:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
