//! Small helpers for non-blocking sockets, shared by the HTTP and WebSocket connections.

use std::io::{self, ErrorKind, Write};

/// The socket has nothing more for now (or takes nothing more).
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

/// Writes what the socket takes now; the number of bytes written.
pub fn write_some(stream: &mut impl Write, mut buf: &[u8]) -> io::Result<usize> {
    let mut total = 0;
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                buf = &buf[n..];
            }
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
