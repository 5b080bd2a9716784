//! The cluster router: updates forwarded between nodes that share memcached.
//!
//! A node that stores an update for a UAID whose socket is on another node sends
//! `PUT /route/<uaid>` with `{"channelID","version","data"}` (a WebPush message: `{"channelID",
//! "message"}`) to that node's router listener; it
//! answers 200 if it wrote the update to the socket, 404 if the UAID is not connected there. A node
//! that takes over a UAID sends `DELETE /route/<uaid>` to the previous one, which closes its socket.
//! Both carry `Authorization: Bearer <secret>`. The requests are made on worker threads, never on
//! the event loop.

use std::net::ToSocketAddrs;
use std::time::Duration;

use serde_json::{json, Value};
use sm::{ChannelId, Id, Uaid};

use crate::metrics::METRICS;
use crate::outbound;
use crate::store::{codec, Delivery, Notice};

use crate::http::{Head, Response};

/// What the router listener is asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteRequest {
    /// Deliver this update live if the UAID is connected here (and the version is still pending).
    Deliver(Delivery),
    /// New broadcast versions, set through another node's admin API.
    Broadcasts(std::collections::BTreeMap<String, String>),
    /// Close the UAID's socket here, if it is still the one named: it connected elsewhere.
    Kick {
        /// The UAID.
        uaid: Uaid,
        /// The socket's id (`<loop>.<key>.<generation>`) from the node record.
        conn: String,
    },
}

/// Compares a presented secret with ours in constant time.
pub fn secret_matches(given: &str, secret: &str) -> bool {
    // Compare every byte so that the time taken does not tell how much of a guess was right.
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Checks and parses a request on the router listener.
pub fn parse(head: &Head, body: &[u8], secret: &str) -> Result<RouteRequest, Response> {
    let auth = head.authorization.as_deref().unwrap_or("");
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if !secret_matches(token, secret) {
        return Err(Response::json(401, "\"Unauthorized\""));
    }
    if head.path == "/broadcasts" && head.method == crate::http::Method::Put {
        let changes = sm::broadcast::parse_changes(body)
            .map_err(|why| Response::json(400, format!("\"{why}\"")))?;
        return Ok(RouteRequest::Broadcasts(changes));
    }
    let Some(raw) = head.path.strip_prefix("/route/") else {
        return Err(Response::json(404, "\"Not Found\""));
    };
    let Some(uaid) = Id::parse(raw).map(Uaid) else {
        return Err(Response::json(400, "\"Invalid UAID\""));
    };
    match head.method {
        crate::http::Method::Delete => {
            let conn = head.query.strip_prefix("conn=").unwrap_or("").to_string();
            return Ok(RouteRequest::Kick { uaid, conn });
        }
        crate::http::Method::Put => {}
        _ => return Err(Response::json(405, "\"Method Not Allowed\"").header("Allow: PUT, DELETE")),
    }
    let bad = || Response::json(400, "\"Invalid body\"");
    let v: Value = serde_json::from_slice(body).map_err(|_| bad())?;
    let channel = v["channelID"]
        .as_str()
        .and_then(Id::parse)
        .map(ChannelId)
        .ok_or_else(bad)?;
    let notice = match v.get("message") {
        Some(m) => {
            let (msg, _) = codec::decode(m).ok_or_else(bad)?;
            if msg.channel != channel {
                return Err(bad());
            }
            Notice::Message(Box::new(msg))
        }
        None => Notice::Version {
            version: v["version"].as_u64().ok_or_else(bad)?,
            data: v["data"].as_str().map(str::to_string),
        },
    };
    Ok(RouteRequest::Deliver(Delivery {
        uaid,
        channel,
        notice,
        received: std::time::Instant::now(),
    }))
}

/// Sends one request to another node; `Some(status)` if it answered within `timeout` in all.
fn send(
    url: &str,
    method: &str,
    path: &str,
    secret: &str,
    body: &str,
    timeout: Duration,
) -> Option<u16> {
    let host = url.strip_prefix("http://")?.trim_end_matches('/');
    let addr = host.to_socket_addrs().ok()?.next()?;
    let auth = format!("Authorization: Bearer {secret}\r\n");
    outbound::status_of(addr, host, (method, path), &auth, body, timeout)
}

/// Forwards an update; true if the other node wrote it to the UAID's socket.
pub fn forward(url: &str, secret: &str, timeout: Duration, d: &Delivery) -> bool {
    let body = match &d.notice {
        Notice::Version { version, data } => {
            json!({"channelID": d.channel.to_string(), "version": version, "data": data})
        }
        Notice::Message(m) => {
            json!({"channelID": d.channel.to_string(), "message": codec::encode(m, None)})
        }
    }
    .to_string();
    let path = format!("/route/{}", d.uaid);
    match send(url, "PUT", &path, secret, &body, timeout) {
        Some(status) => status == 200,
        None => {
            METRICS.router_error();
            false
        }
    }
}

/// Tells another node of new broadcast versions; true if it took them.
pub fn push_broadcasts(
    url: &str,
    secret: &str,
    timeout: Duration,
    changes: &std::collections::BTreeMap<String, String>,
) -> bool {
    let body = serde_json::to_string(changes).unwrap_or_else(|_| "{}".into());
    match send(url, "PUT", "/broadcasts", secret, &body, timeout) {
        Some(status) => status == 200,
        None => {
            METRICS.router_error();
            false
        }
    }
}

/// Tells another node to close its socket `conn` for the UAID.
pub fn kick(url: &str, secret: &str, timeout: Duration, uaid: &Uaid, conn: &str) {
    let path = format!("/route/{uaid}?conn={conn}");
    if send(url, "DELETE", &path, secret, "", timeout).is_none() {
        METRICS.router_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Parsed};

    const SECRET: &str = "0123456789abcdef";

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes(), 8192) {
            Parsed::Complete(h) => *h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn needs_the_secret() {
        let h = head("DELETE /route/9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e HTTP/1.1\r\nAuthorization: Bearer wrong-wrong-wrong\r\n\r\n");
        assert_eq!(parse(&h, b"", SECRET).unwrap_err().status, 401);
        let h = head("DELETE /route/9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&h, b"", SECRET).unwrap_err().status, 401);
    }

    #[test]
    fn parses_deliver_and_kick() {
        let auth = format!("Authorization: Bearer {SECRET}");
        let h = head(&format!(
            "DELETE /route/9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e HTTP/1.1\r\n{auth}\r\n\r\n"
        ));
        assert!(matches!(
            parse(&h, b"", SECRET),
            Ok(RouteRequest::Kick { .. })
        ));
        let h = head(&format!(
            "PUT /route/9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e HTTP/1.1\r\n{auth}\r\n\r\n"
        ));
        let body =
            br#"{"channelID":"0cb8a613-8e2b-4b47-b370-51098daa8401","version":5,"data":"x"}"#;
        match parse(&h, body, SECRET).unwrap() {
            RouteRequest::Deliver(d) => assert_eq!(
                d.notice,
                Notice::Version {
                    version: 5,
                    data: Some("x".into())
                }
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&h, b"{}", SECRET).unwrap_err().status, 400);
        let h = head(&format!("PUT /route/nope HTTP/1.1\r\n{auth}\r\n\r\n"));
        assert_eq!(parse(&h, b"{}", SECRET).unwrap_err().status, 400);
    }
}
