//! `--source-addrs`: a range of source addresses that outgoing sockets are bound to, round-robin,
//! so more than ~28k connections reach one server address:port. Loopback addresses only, unless
//! `--allow-remote` (then any address of this host's interfaces).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::target::is_loopback;

/// Largest range accepted.
const MAX_ADDRS: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
}

impl SourceAddrs {
    /// `127.0.0.2-127.0.0.50`, `127.0.0.2-50`, or one address (IPv4 or `::1`; any IPv6 address
    /// with `allow_remote`).
    pub fn parse(spec: &str, allow_remote: bool) -> Result<Self, String> {
        let bad = |why: &str| format!("--source-addrs {spec:?}: {why}");
        let addrs = match spec.split_once('-') {
            None => vec![single(spec.trim()).map_err(|e| bad(&e))?],
            Some((a, b)) => v4_range(a.trim(), b.trim()).map_err(|e| bad(&e))?,
        };
        if !allow_remote && !addrs.iter().all(|ip| is_loopback(*ip)) {
            return Err(bad(
                "every address must be in 127.0.0.0/8 or ::1 (unless --allow-remote)",
            ));
        }
        Ok(Self { addrs })
    }

    pub fn count(&self) -> usize {
        self.addrs.len()
    }

    pub fn family_matches(&self, target: &SocketAddr) -> bool {
        self.addrs.iter().all(|a| a.is_ipv4() == target.is_ipv4())
    }

    /// The slice child `index` of `procs` uses: contiguous, as even as possible; when there are
    /// fewer addresses than processes, process i shares address i mod n.
    pub fn slice(&self, index: usize, procs: usize) -> Self {
        let n = self.addrs.len();
        if n < procs {
            return Self {
                addrs: vec![self.addrs[index % n]],
            };
        }
        let start = index * n / procs;
        let end = (index + 1) * n / procs;
        Self {
            addrs: self.addrs[start..end].to_vec(),
        }
    }

    /// The spec a child is given for this set.
    pub fn spec(&self) -> String {
        match (self.addrs.first(), self.addrs.last()) {
            (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
            (Some(a), _) => a.to_string(),
            _ => String::new(),
        }
    }

    pub fn get(&self, i: usize) -> IpAddr {
        self.addrs[i % self.addrs.len()]
    }
}

fn single(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

fn v4_range(a: &str, b: &str) -> Result<Vec<IpAddr>, String> {
    let first: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = match b.parse() {
        Ok(ip) => ip,
        Err(_) => {
            // `127.0.0.2-50`: the last octet only.
            let octet: u8 = b
                .parse()
                .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
            let o = first.octets();
            Ipv4Addr::new(o[0], o[1], o[2], octet)
        }
    };
    let (lo, hi) = (u32::from(first), u32::from(last));
    if hi < lo {
        return Err("the range ends before it starts".into());
    }
    if hi - lo >= MAX_ADDRS {
        return Err(format!("more than {MAX_ADDRS} addresses"));
    }
    Ok((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
}

/// Hands out source addresses round-robin (none configured: the kernel chooses).
pub struct SourceCycle {
    addrs: Option<SourceAddrs>,
    next: usize,
}

impl SourceCycle {
    pub fn new(addrs: Option<SourceAddrs>) -> Self {
        Self { addrs, next: 0 }
    }

    pub fn next_addr(&mut self) -> Option<IpAddr> {
        let addrs = self.addrs.as_ref()?;
        let ip = addrs.get(self.next);
        self.next = (self.next + 1) % addrs.count();
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let parse = |s| SourceAddrs::parse(s, false);
        let r = parse("127.0.0.2-127.0.0.20").unwrap();
        assert_eq!(r.count(), 19);
        assert_eq!(parse("127.0.0.2-20").unwrap(), r);
        assert_eq!(parse("127.0.0.5").unwrap().count(), 1);
        assert_eq!(parse("::1").unwrap().count(), 1);
        assert!(parse("10.0.0.1").is_err());
        assert!(parse("127.255.255.250-128.0.0.3").is_err());
        assert!(parse("127.0.0.9-127.0.0.3").is_err());
        assert_eq!(SourceAddrs::parse("10.0.0.1-3", true).unwrap().count(), 3);
    }

    #[test]
    fn slices_cover_the_range() {
        let r = SourceAddrs::parse("127.0.0.2-127.0.0.20", false).unwrap();
        let total: usize = (0..4).map(|i| r.slice(i, 4).count()).sum();
        assert_eq!(total, 19);
        assert_eq!(r.slice(0, 4).spec(), "127.0.0.2-127.0.0.5");
        let one = SourceAddrs::parse("127.0.0.2-127.0.0.3", false).unwrap();
        assert_eq!(one.slice(2, 3).spec(), "127.0.0.2");
    }
}
