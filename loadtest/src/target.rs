//! Target URLs: `ws://`/`wss://` device URLs, `http://`/`https://` endpoints. By default only this
//! machine is a target: every address a host resolves to must be in 127.0.0.0/8 or `::1`, or the
//! URL is refused; `--allow-remote` lifts that for testing a real deployment.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Where a URL points, before any name lookup: the part that keys an HTTP pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `https://` / `wss://`.
    pub tls: bool,
    /// `host:port` as written (the Host header).
    pub authority: String,
    /// The host without brackets: what is resolved, and the TLS server name.
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The address to connect to: refused unless every address of the host is loopback (or
    /// `allow_remote`). Names are resolved (a blocking lookup: callers cache the answer).
    pub fn resolve(&self, allow_remote: bool) -> Result<SocketAddr, String> {
        let addrs = lookup(&self.host, self.port)?;
        choose(&self.host, &addrs, allow_remote)
    }
}

/// The parts of a URL that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: String,
    origin: Origin,
    /// Path and query, starting with `/`.
    path: String,
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
    let (tls, default_port) = match scheme.as_str() {
        "ws" | "http" => (false, 80),
        "wss" | "https" => (true, 443),
        _ => {
            return Err(format!(
                "{url:?}: only ws://, wss://, http:// and https:// are supported"
            ))
        }
    };
    let (host, port) = host_port(authority, default_port).map_err(|e| format!("{url:?}: {e}"))?;
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Parts {
        scheme,
        origin: Origin {
            tls,
            authority: authority.to_string(),
            host: host.to_string(),
            port,
        },
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

/// The addresses of `host` (an IP literal needs no lookup).
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// The address used for `host`, after the loopback rule: every address must be loopback unless
/// `allow_remote` (a name that also resolves elsewhere could send traffic there). IPv4 is
/// preferred, as servers listen on IPv4 by default (`localhost` may list `::1` first).
pub fn choose(host: &str, addrs: &[SocketAddr], allow_remote: bool) -> Result<SocketAddr, String> {
    if !allow_remote {
        if let Some(far) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            let shown = if far.ip().to_string() == host {
                String::new()
            } else {
                format!(" (it resolves to {})", far.ip())
            };
            return Err(format!(
                "refusing non-loopback host {host}{shown}: only 127.0.0.0/8 and ::1 are targets \
                 unless --allow-remote is given (for testing a deployment you run)"
            ));
        }
    }
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

/// In 127.0.0.0/8 or `::1`.
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
    pub origin: Origin,
}

impl WsTarget {
    pub fn parse(url: &str, allow_remote: bool) -> Result<Self, String> {
        let p = split(url).map_err(|e| format!("--ws-url {e}"))?;
        if p.scheme != "ws" && p.scheme != "wss" {
            return Err(format!("--ws-url {url:?}: must start with ws:// or wss://"));
        }
        let addr = p
            .origin
            .resolve(allow_remote)
            .map_err(|e| format!("--ws-url {url}: {e}"))?;
        Ok(Self {
            addr,
            origin: p.origin,
        })
    }
}

/// `--endpoint-base`: what replaces scheme://host:port of a pushEndpoint.
#[derive(Debug, Clone)]
pub struct EndpointBase {
    pub origin: Origin,
    pub addr: SocketAddr,
}

impl EndpointBase {
    pub fn parse(url: &str, allow_remote: bool) -> Result<Self, String> {
        let p = split(url).map_err(|e| format!("--endpoint-base {e}"))?;
        if p.scheme != "http" && p.scheme != "https" {
            return Err(format!(
                "--endpoint-base {url:?}: must start with http:// or https://"
            ));
        }
        if p.path != "/" {
            return Err(format!(
                "--endpoint-base {url:?}: give only scheme://host:port"
            ));
        }
        let addr = p
            .origin
            .resolve(allow_remote)
            .map_err(|e| format!("--endpoint-base {url}: {e}"))?;
        Ok(Self {
            origin: p.origin,
            addr,
        })
    }
}

/// A pushEndpoint as returned by the server, split (no lookup yet): the caller resolves each
/// distinct origin once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub origin: Origin,
    pub path: String,
}

impl Endpoint {
    /// Parses a pushEndpoint; rewritten onto `base` if given (then the endpoint's own host is
    /// never contacted, so it is not checked).
    pub fn parse(url: &str, base: Option<&EndpointBase>) -> Result<Self, String> {
        let p = split(url).map_err(|e| format!("pushEndpoint {e}"))?;
        if let Some(b) = base {
            return Ok(Self {
                origin: b.origin.clone(),
                path: p.path,
            });
        }
        if p.scheme != "http" && p.scheme != "https" {
            return Err(format!(
                "pushEndpoint {url:?}: only http:// and https:// endpoints are supported"
            ));
        }
        Ok(Self {
            origin: p.origin,
            path: p.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(url: &str) -> Result<WsTarget, String> {
        WsTarget::parse(url, false)
    }

    #[test]
    fn loopback_unless_allowed() {
        assert!(ws("ws://127.0.0.1:8080/").is_ok());
        assert!(ws("ws://127.3.2.1/").is_ok());
        assert!(ws("wss://127.0.0.1/").unwrap().origin.tls);
        assert_eq!(ws("wss://127.0.0.1/").unwrap().addr.port(), 443);
        assert!(ws("ws://[::1]:8080/x").is_ok());
        // localhost is looked up; whatever it lists is loopback.
        let l = ws("ws://localhost:9/").unwrap();
        assert!(is_loopback(l.addr.ip()) && l.addr.port() == 9);
        for far in ["ws://10.0.0.1:8080/", "ws://[::2]:1/", "wss://192.0.2.7/"] {
            let e = ws(far).unwrap_err();
            assert!(e.contains("--allow-remote"), "{e}");
            assert!(WsTarget::parse(far, true).is_ok(), "{far}");
        }
        assert!(ws("ws://user@127.0.0.1/").is_err());
        assert!(ws("http://127.0.0.1/").is_err());
        assert!(ws("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn every_resolved_address_is_checked() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let far: SocketAddr = "198.51.100.4:80".parse().unwrap();
        // IPv4 is preferred over ::1 (localhost often lists ::1 first).
        assert_eq!(choose("localhost", &[v6, lo], false), Ok(lo));
        assert_eq!(choose("h", &[v6], false), Ok(v6));
        let e = choose("push.example", &[lo, far], false).unwrap_err();
        assert!(
            e.contains("resolves to 198.51.100.4") && e.contains("--allow-remote"),
            "{e}"
        );
        assert_eq!(choose("push.example", &[far, lo], true), Ok(far));
    }

    #[test]
    fn endpoint_rewrite() {
        let base = EndpointBase::parse("http://127.0.0.1:9000", false).unwrap();
        let e = Endpoint::parse("http://127.0.0.1:8080/update/abc", Some(&base)).unwrap();
        assert_eq!(e.origin.authority, "127.0.0.1:9000");
        assert_eq!(e.path, "/update/abc");
        let e = Endpoint::parse("https://localhost/wpush/v2/x", None).unwrap();
        assert!(e.origin.tls && e.origin.port == 443 && e.origin.host == "localhost");
        let far = Endpoint::parse("http://192.168.1.1/update/x", None).unwrap();
        assert!(far.origin.resolve(false).is_err());
        assert!(far.origin.resolve(true).is_ok());
        assert!(Endpoint::parse("ws://127.0.0.1/update/x", None).is_err());
        assert!(EndpointBase::parse("http://127.0.0.1:9000/p", false).is_err());
        assert!(EndpointBase::parse("https://10.1.1.1", false).is_err());
        let e = Endpoint::parse("https://push.example.com/update/t", Some(&base)).unwrap();
        assert_eq!(
            e.origin.resolve(false),
            Ok("127.0.0.1:9000".parse().unwrap())
        );
    }
}
