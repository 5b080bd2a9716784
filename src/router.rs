//! The cluster router: updates forwarded between nodes that share memcached.
//!
//! A node that stores an update for a UAID whose socket is on another node sends
//! `PUT /route/<uaid>` with `{"channelID","version","data"}` (a WebPush message: `{"channelID",
//! "message"}`) to that node's router listener; it
//! answers 200 if it wrote the update to the socket, 404 if the UAID is not connected there. A node
//! that takes over a UAID sends `DELETE /route/<uaid>` to the previous one, which closes its socket.
//! Each is signed: `Authorization: SimplePush-HMAC t=<unix seconds>, sig=<base64url HMAC-SHA256
//! of method, target, t and body under the shared secret>`, refused more than [`WINDOW_SECS`] from
//! the receiver's clock, so the secret itself never travels and a captured request is worth
//! nothing elsewhere or later. Requests go only to addresses `cluster.peers` allows: a node record
//! forged in memcached cannot send them to an attacker: the list judges the addresses a node's name
//! resolves to, before connecting. They are made on the forwarding threads, never on the event
//! loop, over connections kept alive between requests (see [`crate::outbound`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

use serde_json::{json, Value};
use sm::{ChannelId, Id, Uaid};

use crate::metrics::METRICS;
use crate::outbound::{self, Failure};
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

/// Seconds a signed request stays good either side of the receiver's clock.
pub const WINDOW_SECS: u64 = 30;
const SCHEME: &str = "SimplePush-HMAC ";

/// One entry of `cluster.peers`: a network, or one exact address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Net(IpAddr, u8),
    Addr(SocketAddr),
}

/// Where this node may send router requests (`cluster.peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(Vec<Peer>);

impl Peers {
    /// Parses `10.0.0.0/8`, `fd00::/8` or `10.1.2.3:3000` entries.
    pub fn parse(entries: &[String]) -> Result<Peers, String> {
        entries
            .iter()
            .map(|e| peer(e))
            .collect::<Result<_, _>>()
            .map(Peers)
    }

    /// Whether a request may go to `addr`.
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        self.0.iter().any(|p| match p {
            Peer::Addr(a) => a == addr,
            Peer::Net(net, bits) => in_net(addr.ip(), *net, *bits),
        })
    }
}

fn peer(entry: &str) -> Result<Peer, String> {
    if let Ok(a) = entry.parse::<SocketAddr>() {
        return Ok(Peer::Addr(a));
    }
    let bad = || {
        format!("{entry:?} is neither a network like 10.0.0.0/8 nor an address like 10.0.0.5:3000")
    };
    let (ip, bits) = entry.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(bad());
    }
    Ok(Peer::Net(ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    ip >> shift == net >> shift
}

/// What this node signs its router requests with, where it may send them, and its connections.
#[derive(Clone)]
pub struct Peering {
    /// The shared secret (never sent).
    pub secret: String,
    /// The client, kept-alive connections to other nodes; it connects only where `cluster.peers`
    /// allows.
    client: outbound::Client,
}

impl Peering {
    /// One per process: `senders` threads at most send at once (to one node, in the worst case),
    /// each within `timeout`.
    pub fn new(
        secret: String,
        peers: Peers,
        timeout: Duration,
        senders: usize,
    ) -> std::io::Result<Peering> {
        let peers = Arc::new(peers);
        let client = outbound::Client::new(outbound::Options {
            timeout,
            allow: Some(Arc::new(move |a: &SocketAddr| peers.allows(a))),
            roots: outbound::Roots::Bundled,
            idle_per_host: senders,
        })?;
        Ok(Peering { secret, client })
    }
}

fn signature(secret: &str, method: &str, target: &str, t: u64, body: &[u8]) -> Hmac<sha2::Sha256> {
    // Any key length is accepted by HMAC.
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in [
        method.as_bytes(),
        b"\n",
        target.as_bytes(),
        b"\n",
        t.to_string().as_bytes(),
        b"\n",
    ] {
        mac.update(part);
    }
    mac.update(body);
    mac
}

/// The `Authorization` value for a request signed at `now` (unix seconds).
pub fn authorization(secret: &str, method: &str, target: &str, body: &[u8], now: u64) -> String {
    let sig = signature(secret, method, target, now, body)
        .finalize()
        .into_bytes();
    format!("{SCHEME}t={now}, sig={}", URL_SAFE_NO_PAD.encode(sig))
}

/// Whether `auth` signs this request with `secret`, within the window around `now`.
pub fn verify(auth: &str, secret: &str, method: &str, target: &str, body: &[u8], now: u64) -> bool {
    let Some(rest) = auth.strip_prefix(SCHEME) else {
        return false;
    };
    let mut t = None;
    let mut sig = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("t=") {
            t = v.parse::<u64>().ok();
        } else if let Some(v) = part.strip_prefix("sig=") {
            sig = URL_SAFE_NO_PAD.decode(v).ok();
        }
    }
    let (Some(t), Some(sig)) = (t, sig) else {
        return false;
    };
    if t.abs_diff(now) > WINDOW_SECS {
        return false;
    }
    signature(secret, method, target, t, body)
        .verify_slice(&sig)
        .is_ok()
}

fn method_name(m: crate::http::Method) -> &'static str {
    match m {
        crate::http::Method::Get => "GET",
        crate::http::Method::Put => "PUT",
        crate::http::Method::Post => "POST",
        crate::http::Method::Delete => "DELETE",
        crate::http::Method::Other => "OTHER",
    }
}

/// The request target as signed: path, and `?query` when there is one.
fn target_of(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
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

/// Checks and parses a request on the router listener, signed within the window around `now`.
pub fn parse(head: &Head, body: &[u8], secret: &str, now: u64) -> Result<RouteRequest, Response> {
    let auth = head.authorization.as_deref().unwrap_or("");
    let target = target_of(&head.path, &head.query);
    if !verify(auth, secret, method_name(head.method), &target, body, now) {
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

/// Sends one request to another node; `Some(status)` if it answered within the timeout.
/// An address `cluster.peers` does not allow gets nothing (counted, warned about).
fn send(url: &str, method: &str, target: &str, peering: &Peering, body: &str) -> Option<u16> {
    let base = url.trim_end_matches('/');
    if !base.starts_with("http://") {
        log::warn!("router request to {url} not sent: a node's router URL starts with http://");
        return None;
    }
    let now = crate::store::now_secs();
    let auth = authorization(&peering.secret, method, target, body.as_bytes(), now);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let url = format!("{base}{target}");
    match peering.client.send(method, &url, &headers, body.as_bytes()) {
        Ok(answer) => Some(answer.status),
        Err(Failure::Refused(addrs)) => {
            METRICS.router_refused();
            log::warn!("router request to {base} ({addrs:?}) refused: not in cluster.peers");
            None
        }
        Err(e) => {
            log::debug!("router request {method} {url}: {e}");
            None
        }
    }
}

/// Forwards an update; true if the other node wrote it to the UAID's socket.
pub fn forward(url: &str, peering: &Peering, d: &Delivery) -> bool {
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
    match send(url, "PUT", &path, peering, &body) {
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
    peering: &Peering,
    changes: &std::collections::BTreeMap<String, String>,
) -> bool {
    let body = serde_json::to_string(changes).unwrap_or_else(|_| "{}".into());
    match send(url, "PUT", "/broadcasts", peering, &body) {
        Some(status) => status == 200,
        None => {
            METRICS.router_error();
            false
        }
    }
}

/// Tells another node to close its socket `conn` for the UAID.
pub fn kick(url: &str, peering: &Peering, uaid: &Uaid, conn: &str) {
    let path = format!("/route/{uaid}?conn={conn}");
    if send(url, "DELETE", &path, peering, "").is_none() {
        METRICS.router_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Parsed};

    const SECRET: &str = "0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    const UAID: &str = "9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e";

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes(), 8192) {
            Parsed::Complete(h) => *h,
            other => panic!("{other:?}"),
        }
    }

    /// A request signed at `at`.
    fn signed(method: &str, target: &str, body: &[u8], at: u64) -> Head {
        let auth = authorization(SECRET, method, target, body, at);
        head(&format!(
            "{method} {target} HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n"
        ))
    }

    #[test]
    fn needs_a_signature_by_the_secret_within_the_window() {
        let target = format!("/route/{UAID}");
        let h = head(&format!(
            "DELETE {target} HTTP/1.1\r\nAuthorization: Bearer {SECRET}\r\n\r\n"
        ));
        assert_eq!(parse(&h, b"", SECRET, NOW).unwrap_err().status, 401);
        let h = head(&format!("DELETE {target} HTTP/1.1\r\n\r\n"));
        assert_eq!(parse(&h, b"", SECRET, NOW).unwrap_err().status, 401);
        let h = signed("DELETE", &target, b"", NOW);
        assert!(parse(&h, b"", SECRET, NOW).is_ok());
        // The edges of the window, and past them.
        assert!(parse(&h, b"", SECRET, NOW + WINDOW_SECS).is_ok());
        assert!(parse(&h, b"", SECRET, NOW - WINDOW_SECS).is_ok());
        assert_eq!(
            parse(&h, b"", SECRET, NOW + WINDOW_SECS + 1)
                .unwrap_err()
                .status,
            401
        );
        // Another secret, body, method or target.
        assert_eq!(
            parse(&h, b"", "another-secret-xyz", NOW)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(parse(&h, b"x", SECRET, NOW).unwrap_err().status, 401);
        let other = signed("PUT", &target, b"", NOW);
        let moved = head(&format!(
            "DELETE {target} HTTP/1.1\r\nAuthorization: {}\r\n\r\n",
            other.authorization.unwrap_or_default()
        ));
        assert_eq!(parse(&moved, b"", SECRET, NOW).unwrap_err().status, 401);
        let with_query = signed("DELETE", &format!("{target}?conn=1.2.3"), b"", NOW);
        assert!(parse(&with_query, b"", SECRET, NOW).is_ok());
        let h = head(&format!(
            "DELETE {target}?conn=9.9.9 HTTP/1.1\r\nAuthorization: {}\r\n\r\n",
            with_query.authorization.clone().unwrap_or_default()
        ));
        assert_eq!(parse(&h, b"", SECRET, NOW).unwrap_err().status, 401);
    }

    #[test]
    fn parses_deliver_and_kick() {
        let target = format!("/route/{UAID}");
        assert!(matches!(
            parse(&signed("DELETE", &target, b"", NOW), b"", SECRET, NOW),
            Ok(RouteRequest::Kick { .. })
        ));
        let body =
            br#"{"channelID":"0cb8a613-8e2b-4b47-b370-51098daa8401","version":5,"data":"x"}"#;
        let h = signed("PUT", &target, body, NOW);
        match parse(&h, body, SECRET, NOW).unwrap() {
            RouteRequest::Deliver(d) => assert_eq!(
                d.notice,
                Notice::Version {
                    version: 5,
                    data: Some("x".into())
                }
            ),
            other => panic!("{other:?}"),
        }
        let h = signed("PUT", &target, b"{}", NOW);
        assert_eq!(parse(&h, b"{}", SECRET, NOW).unwrap_err().status, 400);
        let h = signed("PUT", "/route/nope", b"{}", NOW);
        assert_eq!(parse(&h, b"{}", SECRET, NOW).unwrap_err().status, 400);
    }

    #[test]
    fn peers_are_networks_or_addresses() {
        let p = Peers::parse(&[
            "10.0.0.0/8".into(),
            "192.168.1.7:3000".into(),
            "fd00::/8".into(),
        ])
        .unwrap();
        let yes = |a: &str| p.allows(&a.parse().unwrap());
        assert!(yes("10.200.3.4:3000") && yes("192.168.1.7:3000") && yes("[fd12::1]:1"));
        assert!(!yes("11.0.0.1:3000") && !yes("192.168.1.7:3001") && !yes("[fe80::1]:1"));
        assert!(Peers::parse(&["0.0.0.0/0".into()])
            .unwrap()
            .allows(&"8.8.8.8:1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nowhere", "10.0.0.0/x", "host:3000"] {
            assert!(Peers::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(!Peers::default().allows(&"127.0.0.1:1".parse().unwrap()));
    }
}
