//! A connection's byte stream: plain TCP, or TLS terminated in the event loop with rustls.
//!
//! rustls is sans-IO: it takes TLS records in and gives them out, and the loop moves them over the
//! non-blocking socket. `Stream` hides that behind `Read`/`Write` with the socket's would-block
//! semantics, so the HTTP and WebSocket code is the same for both. What rustls could not yet write
//! stays in it; [`Stream::flush_tls`] sends it when the socket is writable again.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};

use crate::nonblocking::would_block;

/// The TLS settings every TLS connection shares.
pub type Tls = Arc<ServerConfig>;

/// TLS settings as loaded from their files, with the certificate's name for logs.
pub struct TlsFiles {
    /// What new TLS connections use.
    pub config: Tls,
    /// SHA-256 of the leaf certificate's DER, lower-case hex (`openssl x509 -fingerprint
    /// -sha256` prints the same digits, upper case with colons).
    pub fingerprint: String,
}

/// Loads a PEM certificate chain and private key into a server configuration.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<TlsFiles, String> {
    let named = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let file = File::open(cert_file).map_err(|e| named(cert_file, &e))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_reader_iter(&mut BufReader::new(file))
            .collect::<Result<_, _>>()
            .map_err(|e| named(cert_file, &e))?;
    let Some(leaf) = certs.first() else {
        return Err(named(cert_file, &"no certificate in PEM"));
    };
    let fingerprint = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| named(key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    Ok(TlsFiles {
        config: Arc::new(config),
        fingerprint,
    })
}

/// A TLS session over its socket.
pub struct TlsStream {
    conn: ServerConnection,
    sock: TcpStream,
}

/// Plain or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP; boxed because a TLS session is large and rare next to idle plain sockets.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Wraps an accepted socket; with TLS settings, a server-side TLS session starts.
    pub fn new(sock: TcpStream, tls: Option<&Tls>) -> io::Result<Stream> {
        let Some(cfg) = tls else {
            return Ok(Stream::Plain(sock));
        };
        let conn = ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(TlsStream { conn, sock })))
    }

    /// The socket, for registering with the poller.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }

    /// The peer's address, if the socket still has one.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Plain(s) => s.peer_addr().ok(),
            Stream::Tls(t) => t.sock.peer_addr().ok(),
        }
    }

    /// Sends TLS records rustls holds (handshake, alerts, encrypted output) as far as the socket
    /// takes them. Plain streams have nothing held.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush_records(),
        }
    }

    /// TLS records are still waiting for the socket: dropping the connection now would lose them
    /// (plain TCP has no such bytes; the kernel sends what it took).
    pub fn pending(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.conn.wants_write())
    }

    /// Queues a TLS close_notify after what is already written and sends what the socket takes.
    /// Plain streams have no such record.
    pub fn close_notify(&mut self) {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush_records();
        }
    }

    /// Ends our sending side with the TCP FIN. Call it once [`Stream::pending`] is false: records
    /// still held by rustls could not be sent after it.
    pub fn shutdown_write(&mut self) {
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

impl TlsStream {
    fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if would_block(&e) => {}
                // The peer closed TCP without close_notify: an end like any other here.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.conn.read_tls(&mut self.sock)? == 0 {
                return Ok(0);
            }
            let processed = self.conn.process_new_packets();
            // Handshake replies, or the alert that tells the peer why we give up.
            let flushed = self.flush_records();
            processed.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            flushed?;
        }
    }

    fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Records still queued mean the socket is full: take nothing more until they are out, so
        // that rustls buffers at most one write's worth per connection.
        self.flush_records()?;
        if self.conn.wants_write() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        self.flush_records()?;
        if n == 0 && !buf.is_empty() {
            // rustls's plaintext buffer is full (before the handshake ends): not an error.
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write_plain(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush_records(),
        }
    }
}
