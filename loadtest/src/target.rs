//! Target URLs. Only this machine is ever a target: a host must be in 127.0.0.0/8, `localhost`
//! or `[::1]`, or the URL is refused. No name lookup is made (`localhost` is 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The parts of an `http://` or `ws://` URL that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: String,
    /// `host:port` as written (used for the Host header and as a key).
    authority: String,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl Parts {
    /// The address to connect to; refused unless loopback.
    fn addr(&self) -> Result<SocketAddr, String> {
        let ip = loopback_ip(&self.host)
            .map_err(|e| format!("{}://{}: {e}", self.scheme, self.authority))?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

fn split(url: &str) -> Result<Parts, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!("{url:?}: user info is not supported"));
    }
    let default_port = match scheme.as_str() {
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => return Err(format!("{url:?}: only ws:// and http:// are supported")),
    };
    let (host, port) = host_port(authority, default_port).map_err(|e| format!("{url:?}: {e}"))?;
    Ok(Parts {
        scheme,
        authority: authority.to_string(),
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

fn host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        None => default_port,
    };
    Ok((host, port))
}

/// The address of a loopback host, or why it is refused.
pub fn loopback_ip(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("refusing host {host:?}: only 127.0.0.0/8, localhost or [::1] (no name lookups)")
    })?;
    if is_loopback(ip) {
        Ok(ip)
    } else {
        Err(format!(
            "refusing non-loopback host {host}: only 127.0.0.0/8, localhost or [::1]"
        ))
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// The WebSocket server to connect to.
#[derive(Debug, Clone)]
pub struct WsTarget {
    pub addr: SocketAddr,
}

impl WsTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let p = split(url)?;
        if p.scheme != "ws" {
            return Err(format!("--ws-url {url:?}: must start with ws:// (no TLS)"));
        }
        Ok(Self { addr: p.addr()? })
    }
}

/// `--endpoint-base`: what replaces scheme://host:port of a pushEndpoint.
#[derive(Debug, Clone)]
pub struct EndpointBase {
    authority: String,
    addr: SocketAddr,
}

impl EndpointBase {
    pub fn parse(url: &str) -> Result<Self, String> {
        let p = split(url)?;
        if p.scheme != "http" {
            return Err(format!("--endpoint-base {url:?}: must start with http://"));
        }
        if p.path != "/" {
            return Err(format!(
                "--endpoint-base {url:?}: give only scheme://host:port"
            ));
        }
        let addr = p.addr()?;
        Ok(Self {
            authority: p.authority,
            addr,
        })
    }
}

/// A pushEndpoint ready to PUT to: where to connect, the Host header, and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    /// Parses a pushEndpoint returned by the server, rewritten onto `base` if given (then the
    /// endpoint's own host is never contacted, so it need not be loopback).
    pub fn parse(url: &str, base: Option<&EndpointBase>) -> Result<Self, String> {
        let p = split(url)?;
        if let Some(b) = base {
            return Ok(Self {
                authority: b.authority.clone(),
                addr: b.addr,
                path: p.path,
            });
        }
        if p.scheme != "http" {
            return Err(format!(
                "pushEndpoint {url:?}: only http:// endpoints are supported"
            ));
        }
        let addr = p.addr()?;
        Ok(Self {
            authority: p.authority,
            addr,
            path: p.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_only() {
        assert!(WsTarget::parse("ws://127.0.0.1:8080/").is_ok());
        assert!(WsTarget::parse("ws://127.3.2.1/").is_ok());
        assert!(WsTarget::parse("ws://localhost:9/").is_ok());
        assert!(WsTarget::parse("ws://[::1]:8080/x").is_ok());
        assert!(WsTarget::parse("ws://10.0.0.1:8080/").is_err());
        assert!(WsTarget::parse("ws://example.com/").is_err());
        assert!(WsTarget::parse("ws://[::2]:1/").is_err());
        assert!(WsTarget::parse("wss://127.0.0.1/").is_err());
        assert!(WsTarget::parse("ws://user@127.0.0.1/").is_err());
    }

    #[test]
    fn endpoint_rewrite() {
        let base = EndpointBase::parse("http://127.0.0.1:9000").unwrap();
        let e = Endpoint::parse("http://127.0.0.1:8080/update/abc", Some(&base)).unwrap();
        assert_eq!(e.authority, "127.0.0.1:9000");
        assert_eq!(e.path, "/update/abc");
        let e = Endpoint::parse("http://localhost/update/x", None).unwrap();
        assert_eq!(e.addr, "127.0.0.1:80".parse().unwrap());
        assert!(Endpoint::parse("http://192.168.1.1/update/x", None).is_err());
        assert!(Endpoint::parse("https://127.0.0.1/update/x", None).is_err());
        assert!(EndpointBase::parse("http://127.0.0.1:9000/p").is_err());
        let e = Endpoint::parse("https://push.example.com/update/t", Some(&base)).unwrap();
        assert_eq!(e.addr, "127.0.0.1:9000".parse().unwrap());
    }
}
