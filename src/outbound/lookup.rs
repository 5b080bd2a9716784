//! Name lookups for outgoing requests: bounded by the request's deadline, remembered for a while,
//! and filtered by an allowlist before any connection is made.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Which addresses requests may go to (`cluster.peers` for the router); `None` = any.
pub type Allow = Arc<dyn Fn(&SocketAddr) -> bool + Send + Sync>;

/// How long a looked-up address is used before it is looked up again.
const REMEMBER: Duration = Duration::from_secs(30);
/// Hosts remembered at most (a cluster's nodes and one webhook: far fewer).
const MAX_REMEMBERED: usize = 1024;
/// Lookups running at once. getaddrinfo cannot be cancelled: a lookup that hangs holds its thread
/// until the system resolver gives up, so a hung resolver must not make one thread per request.
const MAX_IN_FLIGHT: usize = 16;
/// Addresses handed to the connector at most (what its array holds).
const MAX_ADDRS: usize = 16;

/// Every address the host resolved to is outside the allowlist.
#[derive(Debug)]
pub struct Refused(pub Vec<SocketAddr>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} not allowed", self.0)
    }
}

impl std::error::Error for Refused {}

/// The resolver the client's agent uses; clones share what they remember.
#[derive(Clone)]
pub struct Lookup(Arc<Inner>);

struct Inner {
    allow: Option<Allow>,
    remembered: Mutex<HashMap<String, (Vec<SocketAddr>, Instant)>>,
    in_flight: Arc<AtomicUsize>,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("allowlist", &self.0.allow.is_some())
            .finish()
    }
}

/// `host:port` of a URI, the port defaulted from the scheme.
pub fn host_port(uri: &Uri) -> Option<String> {
    DefaultResolver::host_and_port(uri.scheme()?, uri.authority()?)
}

impl Lookup {
    /// A resolver that drops addresses `allow` refuses.
    pub fn new(allow: Option<Allow>) -> Lookup {
        Lookup(Arc::new(Inner {
            allow,
            remembered: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// Forgets `host_port`'s addresses: the host may have moved.
    pub fn forget(&self, host_port: &str) {
        if let Ok(mut m) = self.0.remembered.lock() {
            m.remove(host_port);
        }
    }

    fn remembered(&self, host_port: &str) -> Option<Vec<SocketAddr>> {
        let m = self.0.remembered.lock().ok()?;
        let (addrs, at) = m.get(host_port)?;
        (at.elapsed() < REMEMBER).then(|| addrs.clone())
    }

    fn remember(&self, host_port: &str, addrs: &[SocketAddr]) {
        let Ok(mut m) = self.0.remembered.lock() else {
            return;
        };
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        m.insert(host_port.to_string(), (addrs.to_vec(), Instant::now()));
    }

    /// The addresses of `host_port`: an address as it is, a name looked up on a thread of its own
    /// so that waiting for it ends at `within`.
    fn addresses(
        &self,
        host_port: &str,
        within: NextTimeout,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        let reason = within.reason;
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        if let Some(addrs) = self.remembered(host_port) {
            return Ok(addrs);
        }
        if self.0.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(io::Error::other("too many name lookups in flight").into());
        }
        let (tx, rx) = sync_channel(1);
        let (name, in_flight) = (host_port.to_string(), self.0.in_flight.clone());
        let spawned = std::thread::Builder::new()
            .name("lookup".into())
            .spawn(move || {
                let found = name.to_socket_addrs().map(Iterator::collect::<Vec<_>>);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(found);
            });
        if let Err(e) = spawned {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
        let addrs = match rx.recv_timeout(*within.after) {
            Ok(found) => found?,
            Err(RecvTimeoutError::Timeout) => return Err(ureq::Error::Timeout(reason)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the lookup thread died").into())
            }
        };
        if addrs.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        self.remember(host_port, &addrs);
        Ok(addrs)
    }
}

impl Resolver for Lookup {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host_port = host_port(uri).ok_or_else(|| ureq::Error::BadUri(uri.to_string()))?;
        let found = self.addresses(&host_port, timeout)?;
        // The allowlist judges the addresses connected to, not the name asked for.
        let allowed: Vec<SocketAddr> = match &self.0.allow {
            Some(allow) => found.iter().copied().filter(|a| allow(a)).collect(),
            None => found.clone(),
        };
        if allowed.is_empty() {
            return Err(ureq::Error::Other(Box::new(Refused(found))));
        }
        let mut out = self.empty();
        for a in allowed.into_iter().take(MAX_ADDRS) {
            out.push(a);
        }
        Ok(out)
    }
}
