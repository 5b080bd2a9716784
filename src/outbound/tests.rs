use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the test server does with each request on a connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers 200 with `ok`, keeping the connection open.
    Ok,
    /// Reads the request and never answers.
    Silent,
    /// Answers with a body longer than `MAX_BODY`.
    Huge,
    /// Sends the head at once and the body a byte every 100 ms.
    Dribble,
}

/// A loopback HTTP server that counts the connections it accepts; it stops after 5 s.
fn server(behaviour: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match l.accept() {
                Ok((c, _)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || serve(c, behaviour, end));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (addr, accepted)
}

/// Reads requests (head and Content-Length body) and answers each as told, until `end`.
fn serve(mut c: TcpStream, behaviour: Behaviour, end: Instant) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let Some(len) = request_len(&got) else {
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            continue;
        };
        got.drain(..len);
        let written = match behaviour {
            Behaviour::Ok => c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Behaviour::Silent => continue,
            Behaviour::Huge => {
                let body = vec![b'x'; MAX_BODY as usize + 1];
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                c.write_all(head.as_bytes())
                    .and_then(|_| c.write_all(&body))
            }
            Behaviour::Dribble => dribble(&mut c, end),
        };
        if written.is_err() {
            return;
        }
    }
}

fn dribble(c: &mut TcpStream, end: Instant) -> std::io::Result<()> {
    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")?;
    while Instant::now() < end {
        c.write_all(b"x")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The length of the first whole request in `got`, if it is all there.
fn request_len(got: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(got).ok()?;
    let (head, _) = text.split_once("\r\n\r\n")?;
    let body: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let len = head.len() + 4 + body;
    (got.len() >= len).then_some(len)
}

fn client(timeout_ms: u64, allow: Option<Allow>) -> Client {
    Client::new(Options {
        timeout: Duration::from_millis(timeout_ms),
        allow,
        roots: Roots::Bundled,
        idle_per_host: 2,
    })
    .unwrap()
}

#[test]
fn requests_to_one_host_share_a_kept_alive_connection() {
    let (addr, accepted) = server(Behaviour::Ok);
    let c = client(2000, None);
    for i in 0..5 {
        let url = format!("http://{addr}/route/{i}");
        let a = c.send("PUT", &url, &[("X-N", "1")], b"{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
    }
    let a = c
        .send("DELETE", &format!("http://{addr}/x"), &[], b"")
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for six requests"
    );
}

#[test]
fn a_server_that_never_answers_is_given_up_on_in_time() {
    let (addr, _) = server(Behaviour::Silent);
    let c = client(300, None);
    let t = Instant::now();
    let r = c.send("PUT", &format!("http://{addr}/"), &[], b"{}");
    assert!(matches!(r, Err(Failure::Timeout)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn the_whole_answer_is_bounded_in_time_and_size() {
    let (addr, _) = server(Behaviour::Dribble);
    let c = client(400, None);
    let t = Instant::now();
    let r = c.send("GET", &format!("http://{addr}/"), &[], b"");
    assert!(matches!(r, Err(Failure::Timeout)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let (addr, _) = server(Behaviour::Huge);
    let r = client(2000, None).send("GET", &format!("http://{addr}/"), &[], b"");
    assert!(matches!(r, Err(Failure::TooLarge)), "{r:?}");
}

#[test]
fn the_allowlist_judges_the_address_a_name_resolves_to() {
    let (addr, accepted) = server(Behaviour::Ok);
    // `localhost` is 127.0.0.1 in /etc/hosts: a name the allowlist does not see, an address it does.
    let url = format!("http://localhost:{}/", addr.port());
    let only_ten: Allow =
        Arc::new(|a: &SocketAddr| matches!(a.ip(), std::net::IpAddr::V4(v) if v.octets()[0] == 10));
    match client(2000, Some(only_ten)).send("PUT", &url, &[], b"") {
        Err(Failure::Refused(addrs)) => {
            assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}")
        }
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was sent");
    let loopback: Allow = Arc::new(|a: &SocketAddr| a.ip().is_loopback());
    let a = client(2000, Some(loopback))
        .send("PUT", &url, &[], b"")
        .unwrap();
    assert_eq!(a.status, 200);
}

#[test]
fn a_roots_file_without_certificates_is_refused() {
    let path = std::env::temp_dir().join(format!("sp-roots-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate\n").unwrap();
    let r = Client::new(Options {
        timeout: Duration::from_secs(1),
        allow: None,
        roots: Roots::File(path.clone()),
        idle_per_host: 1,
    });
    let _ = std::fs::remove_file(&path);
    assert!(r.is_err());
}
