//! Small blocking HTTP requests to other services (cluster nodes, wake webhooks), made on worker
//! threads, never on an event loop: one deadline covers connecting, sending and the status line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends one request (`Connection: close`, JSON body, `extra` header lines each ending in CRLF) and
/// reads the status; `None` if that did not happen within `timeout` in all.
pub fn status_of(
    addr: SocketAddr,
    host: &str,
    request_line: (&str, &str),
    extra: &str,
    body: &str,
    timeout: Duration,
) -> Option<u16> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let (method, path) = request_line;
    let mut s = TcpStream::connect_timeout(&addr, left()?).ok()?;
    s.set_write_timeout(left()).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    // "HTTP/1.1 200": the status is bytes 9 to 12.
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        s.set_read_timeout(Some(left()?)).ok()?;
        let n = s.read(&mut head[got..]).ok()?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got < head.len() {
        return None;
    }
    std::str::from_utf8(&head[9..]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn reads_the_status_and_gives_up_in_time() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            c.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            // A second client that is never answered.
            let (_silent, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            req
        });
        let t = Duration::from_secs(2);
        let status = status_of(addr, "h", ("PUT", "/x"), "X-A: 1\r\n", "{}", t);
        assert_eq!(status, Some(204));
        let started = Instant::now();
        let none = status_of(
            addr,
            "h",
            ("PUT", "/x"),
            "",
            "{}",
            Duration::from_millis(200),
        );
        assert_eq!(none, None);
        assert!(started.elapsed() < Duration::from_millis(450));
        let req = server.join().unwrap();
        assert!(
            req.starts_with("PUT /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n{}"), "{req}");
    }
}
