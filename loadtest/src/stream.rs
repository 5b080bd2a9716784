//! A connection's byte stream: plain TCP, or TLS (rustls) over a non-blocking mio socket. Both
//! are `Read + Write` and report `WouldBlock` like a socket, so tungstenite and the HTTP pool
//! drive either the same way; TLS records that could not be written yet stay in rustls and go
//! out on the next read, write or flush (each writable event triggers one).

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Plaintext rustls may hold before the handshake completes or while the socket is full.
const TLS_BUFFER: usize = 1 << 20;

/// What a TLS connection needs: the client settings and the name the certificate must carry.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Wraps a connected socket, in TLS if `tls` is given (the handshake starts with the
    /// first read or write).
    pub fn new(sock: TcpStream, tls: Option<&TlsTarget>) -> io::Result<Self> {
        let Some(t) = tls else {
            return Ok(Self::Plain(sock));
        };
        let mut conn =
            ClientConnection::new(t.config.clone(), t.name.clone()).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(Self::Tls(Box::new(TlsStream { conn, sock })))
    }

    /// The socket (to re-register it with the poll).
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(t) => t.flush(),
        }
    }
}

pub struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
}

impl TlsStream {
    /// Writes pending TLS records until done or the socket is full (they wait in rustls).
    fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads TLS records from the socket and processes them; Ok(false) at end of stream.
    fn pull(&mut self) -> io::Result<bool> {
        let n = self.conn.read_tls(&mut self.sock)?;
        let processed = self.conn.process_new_packets();
        // An alert about the failure may be waiting to go out.
        let pushed = self.push();
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        pushed?;
        Ok(n > 0)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.push()?;
            if !self.pull()? {
                // End of stream: rustls now says whether it was a clean close_notify (Ok(0))
                // or a truncation (UnexpectedEof).
                return match self.conn.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer is full: the socket has not taken what it holds.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.push()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}
