//! Blocking HTTP/1.1 requests to other services (cluster nodes, the wake webhook), made on worker
//! threads, never on an event loop.
//!
//! A [`Client`] keeps its connections alive between requests (the forwards from one node to
//! another share a few connections instead of opening one each), speaks `https://` (rustls), and
//! bounds each request as a whole: one deadline covers the name lookup, connecting, sending and
//! reading the whole answer, whose body is bounded too. Requests follow no redirects and use no
//! proxy: the allowlist must judge the address actually connected to.

mod lookup;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use lookup::Allow;
use lookup::{host_port, Lookup, Refused};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::transport::DefaultConnector;

/// Largest answer body read; a longer one fails the request.
pub const MAX_BODY: u64 = 64 * 1024;
/// An idle connection is closed after this long: before a simplepush receiver's own idle limit
/// (`server.keep_alive_timeout_ms`, 30 s by default) closes it, so a request is not sent on a
/// connection the other end is closing.
const IDLE_FOR: Duration = Duration::from_secs(15);

/// Which certificates an `https://` server may present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Roots {
    /// Mozilla's root certificates, built in (the webpki-roots crate).
    #[default]
    Bundled,
    /// Only the certificates in this PEM file: a private CA, or the system's bundle
    /// (`/etc/ssl/certs/ca-certificates.crt` on Debian).
    File(PathBuf),
}

/// How a [`Client`] is set up.
pub struct Options {
    /// The most one request may take, name lookup to the end of the answer.
    pub timeout: Duration,
    /// Addresses requests may go to; `None` = any.
    pub allow: Option<Allow>,
    /// Trusted certificates for `https://`.
    pub roots: Roots,
    /// Idle connections kept per host: as many as requests run at once to one host.
    pub idle_per_host: usize,
}

/// A server's answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The whole body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Every address of the host is outside the allowlist: nothing was sent.
    Refused(Vec<SocketAddr>),
    /// The deadline passed (lookup, connect, send or answer).
    Timeout,
    /// The answer's body was longer than [`MAX_BODY`].
    TooLarge,
    /// Anything else: no such host, connection refused, TLS, a malformed answer.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(addrs) => write!(f, "{addrs:?} is not allowed"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::TooLarge => write!(f, "answer longer than {MAX_BODY} bytes"),
            Failure::Failed(why) => f.write_str(why),
        }
    }
}

/// An HTTP client for one purpose; clones share its connections.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    lookup: Lookup,
}

impl Client {
    /// A client; fails only when the roots file cannot be read or holds no certificate.
    pub fn new(opts: Options) -> io::Result<Client> {
        let roots = match &opts.roots {
            Roots::Bundled => RootCerts::WebPki,
            Roots::File(path) => RootCerts::new_with_certs(&certificates(path)?),
        };
        let per_host = opts.idle_per_host.max(1);
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .max_idle_connections_per_host(per_host)
            .max_idle_connections(per_host.saturating_mul(64))
            .max_idle_age(IDLE_FOR)
            .user_agent(concat!("simplepush/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build();
        let lookup = Lookup::new(opts.allow);
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), lookup.clone());
        Ok(Client { agent, lookup })
    }

    /// Sends one request and reads the whole answer.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Failure> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body).map_err(|e| Failure::Failed(e.to_string()))?;
        let uri = req.uri().clone();
        let answer = self.agent.run(req).and_then(|mut resp| {
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_vec()?;
            Ok(Answer { status, body })
        });
        answer.map_err(|e| {
            let failure = failure(e);
            if !matches!(failure, Failure::Refused(_)) {
                // Perhaps the host moved: look it up again next time.
                if let Some(hp) = host_port(&uri) {
                    self.lookup.forget(&hp);
                }
            }
            failure
        })
    }
}

fn failure(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Timeout(_) => Failure::Timeout,
        ureq::Error::BodyExceedsLimit(_) => Failure::TooLarge,
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Failure::Timeout
        }
        ureq::Error::Other(e) => match e.downcast::<Refused>() {
            Ok(refused) => Failure::Refused(refused.0),
            Err(e) => Failure::Failed(e.to_string()),
        },
        e => Failure::Failed(e.to_string()),
    }
}

/// The certificates of a PEM file.
fn certificates(path: &std::path::Path) -> io::Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path)?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
