//! Wake drivers: waking an offline device whose hello said how, off the event loop.
//!
//! One thread per process takes wake requests from a bounded queue (a full queue drops them,
//! counted), applies the per-UAID and overall rate limits, and calls the configured driver with a
//! timeout: `udp` sends a datagram to the device's `wakeup_hostport` (only inside the configured
//! networks, so the server cannot be made to send traffic anywhere), `webhook` POSTs
//! `{"uaid", "wake"}` to a configured `http://` or `https://` URL (a carrier service, or a bridge
//! to FCM/APNs) over a kept-alive connection.
//!
//! The `[wake]` configuration is declared here, and `config` uses it: this module needs nothing
//! of `config`'s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use sm::wake::Wake;
use sm::Uaid;

use crate::metrics::{WakeOutcome as Outcome, METRICS};
use crate::outbound;

/// `[wake]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WakeConfig {
    /// `none`, `udp` or `webhook`.
    pub driver: String,
    /// Networks (CIDR) the UDP driver may send to; empty = none.
    pub udp_allow: Vec<String>,
    /// Where the webhook driver POSTs (`http://` or `https://`).
    pub webhook_url: String,
    /// PEM file of the certificates an `https://` webhook may chain to; empty = Mozilla's roots,
    /// built in.
    pub ca_file: String,
    /// Time a wake may take in all (name lookup, connect, send, the whole answer).
    pub timeout_ms: u64,
    /// At most one wake per UAID this often.
    pub min_interval_ms: u64,
    /// At most this many wakes per second in all.
    pub max_per_sec: u64,
}

impl Default for WakeConfig {
    fn default() -> WakeConfig {
        WakeConfig {
            driver: "none".into(),
            udp_allow: Vec::new(),
            webhook_url: String::new(),
            ca_file: String::new(),
            timeout_ms: 1000,
            min_interval_ms: 60_000,
            max_per_sec: 100,
        }
    }
}

impl WakeConfig {
    /// Checks the values; the key and the reason for the first one refused.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !["none", "udp", "webhook"].contains(&self.driver.as_str()) {
            return Err((
                "wake.driver",
                "must be \"none\", \"udp\" or \"webhook\"".into(),
            ));
        }
        if let Some(n) = self.udp_allow.iter().find(|n| Net::parse(n).is_none()) {
            return Err((
                "wake.udp_allow",
                format!("{n:?} is not a network like 10.0.0.0/8"),
            ));
        }
        if self.driver == "webhook" && !webhook_url_ok(&self.webhook_url) {
            return Err((
                "wake.webhook_url",
                "the webhook driver needs an http:// or https:// URL with a host".into(),
            ));
        }
        if self.timeout_ms == 0 || self.max_per_sec == 0 {
            return Err((
                "wake",
                "timeout_ms and max_per_sec must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The certificates an `https://` webhook may present.
    fn roots(&self) -> outbound::Roots {
        match self.ca_file.as_str() {
            "" => outbound::Roots::Bundled,
            path => outbound::Roots::File(PathBuf::from(path)),
        }
    }
}

fn webhook_url_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    scheme_ok && uri.host().is_some_and(|h| !h.is_empty())
}

/// Wake requests waiting for the driver thread; more are dropped.
const QUEUE: usize = 4096;
/// Per-UAID rate-limit entries kept; older ones are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// An IPv4 or IPv6 network, `addr/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (one host).
    pub fn parse(text: &str) -> Option<Net> {
        let (a, p) = text.split_once('/').unwrap_or((text, ""));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim().parse().ok()?
        };
        (prefix <= max).then_some(Net { addr, prefix })
    }

    /// Whether `ip` is inside. IPv4-mapped IPv6 addresses count as the IPv4 address they map, so
    /// that `::ffff:8.8.8.8` cannot slip past an IPv4 allowlist through an IPv6 entry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (ip, addr) = (ip.to_canonical(), self.addr.to_canonical());
        let prefix = match (self.addr, addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) => self.prefix.saturating_sub(96),
            _ => self.prefix,
        };
        Net { addr, prefix }.contains_exact(ip)
    }

    fn contains_exact(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> Option<u128> {
            match ip {
                IpAddr::V4(v) => Some(u32::from(v) as u128),
                IpAddr::V6(v) => Some(u128::from(v)),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let (Some(a), Some(b)) = (bits(self.addr), bits(ip)) else {
            return false;
        };
        let shift = width - u32::from(self.prefix);
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

/// The per-UAID and overall limits.
struct Limits {
    per_uaid: Duration,
    per_sec: u64,
    last: HashMap<Uaid, Instant>,
    window: Instant,
    in_window: u64,
}

impl Limits {
    fn allow(&mut self, uaid: &Uaid, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.in_window = 0;
        }
        if self.in_window >= self.per_sec {
            return false;
        }
        if self
            .last
            .get(uaid)
            .is_some_and(|t| now.duration_since(*t) < self.per_uaid)
        {
            return false;
        }
        if self.last.len() >= MAX_TRACKED {
            let per_uaid = self.per_uaid;
            self.last.retain(|_, t| now.duration_since(*t) < per_uaid);
        }
        self.last.insert(*uaid, now);
        self.in_window += 1;
        true
    }
}

/// The configured driver.
enum Driver {
    Udp {
        allow: Vec<Net>,
    },
    Webhook {
        url: String,
        /// Keeps the connection to the webhook alive between wakes.
        client: outbound::Client,
    },
}

/// Hands wake requests to the driver thread.
#[derive(Clone)]
pub struct Waker {
    tx: SyncSender<(Uaid, String)>,
}

impl Waker {
    /// Starts the driver thread; `None` for driver `none` (or a UDP driver with no network
    /// allowed). Fails if `wake.ca_file` cannot be read.
    pub fn start(cfg: &WakeConfig) -> io::Result<Option<Waker>> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let driver = match cfg.driver.as_str() {
            "udp" => {
                let allow: Vec<Net> = cfg.udp_allow.iter().filter_map(|n| Net::parse(n)).collect();
                if allow.is_empty() {
                    warn!("wake.driver = \"udp\" with an empty wake.udp_allow: no datagram will be sent");
                    return Ok(None);
                }
                Driver::Udp { allow }
            }
            "webhook" => Driver::Webhook {
                url: cfg.webhook_url.clone(),
                client: webhook_client(cfg, timeout)?,
            },
            _ => return Ok(None),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let limits = Limits {
            per_uaid: Duration::from_millis(cfg.min_interval_ms),
            per_sec: cfg.max_per_sec,
            last: HashMap::new(),
            window: Instant::now(),
            in_window: 0,
        };
        let spawned = std::thread::Builder::new()
            .name("wake".into())
            .spawn(move || run(rx, driver, limits));
        match spawned {
            Ok(_) => Ok(Some(Waker { tx })),
            Err(e) => {
                warn!("wake: no driver thread ({e}); offline devices will not be woken");
                Ok(None)
            }
        }
    }

    /// Asks for a wake-up of the UAID's device; never blocks.
    pub fn wake(&self, uaid: Uaid, wake: String) {
        match self.tx.try_send((uaid, wake)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.wake(Outcome::Dropped)
            }
        }
    }
}

/// The webhook's client: one connection is enough, wakes are sent one at a time.
fn webhook_client(cfg: &WakeConfig, timeout: Duration) -> io::Result<outbound::Client> {
    let opts = outbound::Options {
        timeout,
        allow: None,
        roots: cfg.roots(),
        idle_per_host: 1,
    };
    outbound::Client::new(opts)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("wake.ca_file: {e}")))
}

fn run(rx: Receiver<(Uaid, String)>, driver: Driver, mut limits: Limits) {
    while let Ok((uaid, text)) = rx.recv() {
        let outcome = match Wake::from_json(&text) {
            None => Outcome::Refused,
            Some(_) if !limits.allow(&uaid, Instant::now()) => Outcome::Refused,
            Some(wake) => match &driver {
                Driver::Udp { allow } => udp(&uaid, &wake, allow),
                Driver::Webhook { url, client } => webhook(client, url, &uaid, &text),
            },
        };
        debug!("wake uaid={uaid}: {outcome:?}");
        METRICS.wake(outcome);
    }
}

fn udp(uaid: &Uaid, wake: &Wake, allow: &[Net]) -> Outcome {
    let Some(to) = wake.hostport else {
        return Outcome::Refused;
    };
    let ip = to.ip().to_canonical();
    let special = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if special || !allow.iter().any(|n| n.contains(ip)) {
        debug!("wake uaid={uaid}: {to} is outside wake.udp_allow");
        return Outcome::Refused;
    }
    let to = SocketAddr::new(ip, to.port());
    let local: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sent =
        UdpSocket::bind(local).and_then(|s| s.send_to(format!("wake {uaid}").as_bytes(), to));
    match sent {
        Ok(_) => Outcome::Sent,
        Err(e) => {
            debug!("wake uaid={uaid}: udp to {to}: {e}");
            Outcome::Failed
        }
    }
}

/// POSTs `{"uaid","wake"}`; sent when the answer is 2xx within the timeout.
fn webhook(client: &outbound::Client, url: &str, uaid: &Uaid, wake_json: &str) -> Outcome {
    let body = format!("{{\"uaid\":\"{uaid}\",\"wake\":{wake_json}}}");
    let headers = [("Content-Type", "application/json")];
    match client.send("POST", url, &headers, body.as_bytes()) {
        Ok(answer) if (200..300).contains(&answer.status) => Outcome::Sent,
        Ok(answer) => {
            debug!("wake uaid={uaid}: webhook {url}: status {}", answer.status);
            Outcome::Failed
        }
        Err(e) => {
            debug!("wake uaid={uaid}: webhook {url}: {e}");
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::Id;

    #[test]
    fn networks() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.2".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let host = Net::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Net::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        // Mapped IPv6 addresses are judged as the IPv4 address they carry.
        let v4 = Net::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains("::ffff:10.1.2.3".parse().unwrap()));
        let any_v6 = Net::parse("::/0").unwrap();
        assert!(!any_v6.contains("::ffff:8.8.8.8".parse().unwrap()));
        assert!(Net::parse("::ffff:10.0.0.0/104")
            .unwrap()
            .contains("10.9.9.9".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert_eq!(Net::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_per_uaid_and_overall() {
        let t0 = Instant::now();
        let mut l = Limits {
            per_uaid: Duration::from_secs(10),
            per_sec: 3,
            last: HashMap::new(),
            window: t0,
            in_window: 0,
        };
        let u = |n| Uaid(Id::fresh([n; 16]));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(l.allow(&u(1), at(0)));
        assert!(l.allow(&u(2), at(100)));
        assert!(l.allow(&u(3), at(200)));
        // The fourth in the same second, whoever it is for, waits.
        assert!(!l.allow(&u(4), at(500)));
        assert!(l.allow(&u(4), at(1500)));
        // Per UAID: not again within 10 s.
        assert!(!l.allow(&u(1), at(5000)));
        assert!(l.allow(&u(1), at(11_000)));
    }
}
