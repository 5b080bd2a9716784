//! One WebSocket after the upgrade: frames in and out of a non-blocking socket.
//!
//! Frames are parsed and formatted with tungstenite's frame codec (`FrameHeader`); the buffering is
//! ours, so that an idle socket holds no buffer at all. Input is read into a buffer the event loop
//! shares; only bytes left over (part of a frame, a fragmented message) are kept per socket, and
//! only until they are consumed. Output goes straight to the socket; only what the socket does not
//! take is kept, up to a cap.

use std::io::{self, Cursor, ErrorKind, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::share::{Share, Total};

use mio::net::TcpStream;

use crate::transport::Stream;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::nonblocking::{would_block, write_some};

/// Bytes read from the socket per read call.
pub const READ_CHUNK: usize = 16 * 1024;
/// The longest control frame payload (RFC 6455 5.5).
const MAX_CONTROL: usize = 125;
/// Reads per call to [`Link::next`] before it yields, so one flooding peer cannot hold the loop.
const READ_BUDGET: usize = 4;
/// Frames that complete no message (pings, pongs, fragments) per call before it yields.
const FRAME_BUDGET: usize = 64;

/// A socket holding at most this much partial input is never the one closed when the process is
/// over its budget, so that devices still connect and talk while attackers hold the budget
/// (their sockets then cost at most this each, until the request or hello timeout).
const FAIR_SHARE: usize = 4096;

/// Bytes of partial input (unfinished frames, fragmented messages) every socket of the process
/// holds together; each [`Link`] adds and takes back its own share.
static PARTIAL_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Partial input held by every WebSocket of the process, in bytes.
pub fn partial_bytes() -> usize {
    PARTIAL_BYTES.load(Ordering::Relaxed)
}

/// What one read may let a socket hold.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// The longest message (a frame, or a fragmented message put together).
    pub max_size: usize,
    /// Partial input of the whole process above which a socket holding more than its fair share
    /// is closed when a read adds to it.
    pub budget: usize,
}

/// A complete message, or the peer's close.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text or binary message (the protocol parses both alike).
    Data(Vec<u8>),
    /// The peer's close frame; our reply is already queued.
    Close,
    /// This call's share of work is spent and input may remain: call again after other sockets.
    Busy,
}

/// Why the socket must be closed.
#[derive(Debug)]
pub enum WsError {
    /// A frame or message above the size limit (close code 1009).
    TooBig,
    /// A framing violation (close code 1002).
    Protocol(&'static str),
    /// A text message that is not UTF-8 (close code 1007).
    BadUtf8,
    /// Unsent output above the cap: a peer that does not read.
    OutputFull,
    /// The process holds its budget of partial input and this socket more than its fair share
    /// (close code 1008).
    OverBudget,
    /// The connection ended or failed.
    Io(io::Error),
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::TooBig => f.write_str("message too big"),
            WsError::Protocol(why) => write!(f, "protocol error: {why}"),
            WsError::BadUtf8 => f.write_str("text message is not UTF-8"),
            WsError::OutputFull => f.write_str("peer does not read its output"),
            WsError::OverBudget => f.write_str("partial input over the process's budget"),
            WsError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl WsError {
    /// The close code to send for this error, if a close frame still makes sense.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            WsError::TooBig => Some(CloseCode::Size),
            WsError::Protocol(_) => Some(CloseCode::Protocol),
            WsError::BadUtf8 => Some(CloseCode::Invalid),
            WsError::OverBudget => Some(CloseCode::Policy),
            WsError::OutputFull | WsError::Io(_) => None,
        }
    }
}

/// Unconsumed input.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    pos: usize,
}

/// A fragmented message being put together.
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// Unsent output.
struct Output {
    buf: Vec<u8>,
    written: usize,
}

/// A WebSocket connection's framing state.
pub struct Link {
    stream: Stream,
    input: Option<Box<Input>>,
    fragments: Option<Box<Fragments>>,
    output: Option<Box<Output>>,
    close_sent: bool,
    close_received: bool,
    /// Frames are gathered in `output` until [`Link::uncork`]: one write for several replies.
    corked: bool,
    /// Bytes arrived since [`Link::take_heard`] last looked: the peer is alive.
    heard: bool,
    /// This socket's part of [`PARTIAL_BYTES`].
    held: Share<PartialInput>,
}

/// [`PARTIAL_BYTES`], as the count that [`Link::held`] is part of.
struct PartialInput;

impl Total for PartialInput {
    fn total() -> &'static AtomicUsize {
        &PARTIAL_BYTES
    }
}

impl Link {
    /// Wraps an upgraded socket; `leftover` is what the client sent right after its upgrade request.
    pub fn new(stream: Stream, leftover: Vec<u8>) -> Link {
        let input = (!leftover.is_empty()).then(|| {
            Box::new(Input {
                buf: leftover,
                pos: 0,
            })
        });
        let mut link = Link {
            stream,
            input,
            fragments: None,
            output: None,
            close_sent: false,
            close_received: false,
            corked: false,
            heard: false,
            held: Share::default(),
        };
        link.account();
        link
    }

    /// Brings this socket's part of [`PARTIAL_BYTES`] up to date; returns what it holds.
    fn account(&mut self) -> usize {
        let now = self.input.as_ref().map_or(0, |i| i.buf.capacity())
            + self.fragments.as_ref().map_or(0, |f| f.data.capacity());
        self.held.set(now)
    }

    /// Gathers the frames sent from now on, to write them together at [`Link::uncork`].
    pub fn cork(&mut self) {
        self.corked = true;
    }

    /// Queues raw bytes (the 101 response) ahead of the frames that follow.
    pub fn queue_raw(&mut self, bytes: Vec<u8>) {
        match self.output.as_mut() {
            Some(out) => out.buf.extend_from_slice(&bytes),
            None => {
                self.output = Some(Box::new(Output {
                    buf: bytes,
                    written: 0,
                }))
            }
        }
    }

    /// Writes what was gathered (and anything left from before).
    pub fn uncork(&mut self, max_output: usize) -> Result<(), WsError> {
        self.corked = false;
        self.flush(max_output)
    }

    /// The socket, for (de)registration.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.stream.socket()
    }

    /// The peer's address, if the socket still has one.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    /// The byte stream (plain or TLS).
    pub fn transport(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Whether the peer sent anything since the last call: any byte counts as an answer to a
    /// ping, so that a busy client never needs to pong in time.
    pub fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    /// Part of a frame or message is held, waiting for the rest.
    pub fn has_partial(&self) -> bool {
        self.input.is_some() || self.fragments.is_some()
    }

    /// Both close frames are through and nothing is left to send: drop the connection.
    pub fn finished(&self) -> bool {
        self.close_sent && self.close_received && self.output.is_none()
    }

    /// The next complete message. `Ok(None)`: nothing more for now (the socket would block).
    /// `scratch` is a read buffer shared by all connections.
    pub fn next(
        &mut self,
        scratch: &mut Vec<u8>,
        limits: ReadLimits,
    ) -> Result<Option<Incoming>, WsError> {
        let got = self.read_message(scratch, limits);
        self.account();
        got
    }

    fn read_message(
        &mut self,
        scratch: &mut Vec<u8>,
        limits: ReadLimits,
    ) -> Result<Option<Incoming>, WsError> {
        let (mut reads, mut frames) = (0, 0);
        loop {
            if let Some(msg) = self.parse(limits.max_size, &mut frames)? {
                return Ok(Some(msg));
            }
            // Checked once what was read is parsed, so a frame too long is refused as such.
            if self.account() > FAIR_SHARE && partial_bytes() > limits.budget {
                return Err(WsError::OverBudget);
            }
            if reads == READ_BUDGET {
                return Ok(Some(Incoming::Busy));
            }
            reads += 1;
            scratch.resize(READ_CHUNK, 0);
            let n = match self.stream.read(scratch) {
                Ok(0) => return Err(WsError::Io(ErrorKind::UnexpectedEof.into())),
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(WsError::Io(e)),
            };
            self.heard = true;
            let input = self.input.get_or_insert_with(Box::default);
            input.buf.extend_from_slice(&scratch[..n]);
        }
    }

    /// Parses frames from the kept input until one completes a message (or the frame budget is
    /// spent: [`Incoming::Busy`]).
    fn parse(&mut self, max_size: usize, frames: &mut usize) -> Result<Option<Incoming>, WsError> {
        loop {
            if *frames >= FRAME_BUDGET {
                return Ok(Some(Incoming::Busy));
            }
            *frames += 1;
            let Some(input) = self.input.as_mut() else {
                return Ok(None);
            };
            let rest = &input.buf[input.pos..];
            let mut cursor = Cursor::new(rest);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|_| WsError::Protocol("bad frame header"))?;
            let Some((header, len)) = parsed else {
                self.keep_rest();
                return Ok(None);
            };
            if len > max_size as u64 {
                return Err(WsError::TooBig);
            }
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if rest.len() < end {
                self.keep_rest();
                return Ok(None);
            }
            let mut payload = rest[start..end].to_vec();
            input.pos += end;
            if input.pos == input.buf.len() {
                self.input = None;
            }
            let Some(mask) = header.mask else {
                return Err(WsError::Protocol("unmasked client frame"));
            };
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            if let Some(msg) = self.on_frame(&header, payload, max_size)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Keeps only the unconsumed bytes, so a socket never holds more than one partial frame.
    fn keep_rest(&mut self) {
        if let Some(input) = self.input.as_mut() {
            if input.pos > 0 {
                input.buf.drain(..input.pos);
                input.pos = 0;
                input.buf.shrink_to_fit();
            }
        }
    }

    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: Vec<u8>,
        max_size: usize,
    ) -> Result<Option<Incoming>, WsError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        match header.opcode {
            OpCode::Control(c) => self.on_control(c, header.is_final, payload),
            OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) if self.fragments.is_some() => {
                Err(WsError::Protocol("new message inside a fragmented one"))
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                let text = d == Data::Text;
                if header.is_final {
                    return complete(text, payload).map(Some);
                }
                self.fragments = Some(Box::new(Fragments {
                    text,
                    data: payload,
                }));
                Ok(None)
            }
            OpCode::Data(Data::Continue) => {
                let Some(frag) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if frag.data.len() + payload.len() > max_size {
                    return Err(WsError::TooBig);
                }
                frag.data.extend_from_slice(&payload);
                if !header.is_final {
                    return Ok(None);
                }
                let Some(frag) = self.fragments.take() else {
                    return Ok(None);
                };
                complete(frag.text, frag.data).map(Some)
            }
            OpCode::Data(Data::Reserved(_)) => Err(WsError::Protocol("reserved opcode")),
        }
    }

    fn on_control(
        &mut self,
        c: Control,
        is_final: bool,
        payload: Vec<u8>,
    ) -> Result<Option<Incoming>, WsError> {
        if !is_final || payload.len() > MAX_CONTROL {
            return Err(WsError::Protocol("bad control frame"));
        }
        match c {
            Control::Ping => {
                self.send(OpCode::Control(Control::Pong), &payload)?;
                Ok(None)
            }
            Control::Pong => Ok(None),
            Control::Close => {
                let code = close_code(&payload)?;
                self.close_received = true;
                if !self.close_sent {
                    // Echo the peer's code, as RFC 6455 5.5.1 suggests.
                    let echo = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                    self.close_sent = true;
                    self.send(OpCode::Control(Control::Close), &echo)?;
                }
                Ok(Some(Incoming::Close))
            }
            Control::Reserved(_) => Err(WsError::Protocol("reserved control opcode")),
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        if self.close_sent {
            return Ok(());
        }
        self.send(OpCode::Data(Data::Text), text.as_bytes())
    }

    /// Sends an empty ping (the peer's pong, or anything else it sends, shows it is alive).
    pub fn send_ping(&mut self) -> Result<(), WsError> {
        if self.close_sent {
            return Ok(());
        }
        self.send(OpCode::Control(Control::Ping), &[])
    }

    /// Sends our close frame (once).
    pub fn send_close(&mut self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        let mut payload = u16::from(code).to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        payload.truncate(MAX_CONTROL);
        self.send(OpCode::Control(Control::Close), &payload)
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), WsError> {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut frame = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
        header
            .format(payload.len() as u64, &mut frame)
            .map_err(|_| WsError::Protocol("frame too large"))?;
        frame.extend_from_slice(payload);
        if let Some(out) = self.output.as_mut() {
            out.buf.extend_from_slice(&frame);
            return Ok(());
        }
        if self.corked {
            self.output = Some(Box::new(Output {
                buf: frame,
                written: 0,
            }));
            return Ok(());
        }
        let written = write_some(&mut self.stream, &frame).map_err(WsError::Io)?;
        if written < frame.len() {
            self.output = Some(Box::new(Output {
                buf: frame,
                written,
            }));
        }
        Ok(())
    }

    /// Writes kept output; fails when more than `max_output` bytes stay unsent.
    pub fn flush(&mut self, max_output: usize) -> Result<(), WsError> {
        if self.corked {
            return Ok(());
        }
        let Some(out) = self.output.as_mut() else {
            return Ok(());
        };
        out.written +=
            write_some(&mut self.stream, &out.buf[out.written..]).map_err(WsError::Io)?;
        if out.written == out.buf.len() {
            self.output = None;
        } else if out.buf.len() - out.written > max_output {
            return Err(WsError::OutputFull);
        }
        Ok(())
    }
}

/// The code of a close frame (`None` for an empty one), refusing what RFC 6455 7.4 forbids on the
/// wire: a one-byte payload, reserved or never-sent codes, a reason that is not UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    let Some(code) = payload.get(..2) else {
        return match payload.len() {
            0 => Ok(None),
            _ => Err(WsError::Protocol("one-byte close frame")),
        };
    };
    let code = u16::from_be_bytes([code[0], code[1]]);
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !allowed {
        return Err(WsError::Protocol("close code not allowed on the wire"));
    }
    if std::str::from_utf8(&payload[2..]).is_err() {
        return Err(WsError::BadUtf8);
    }
    Ok(Some(code))
}

fn complete(text: bool, data: Vec<u8>) -> Result<Incoming, WsError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(WsError::BadUtf8);
    }
    Ok(Incoming::Data(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_size: usize) -> ReadLimits {
        ReadLimits {
            max_size,
            budget: usize::MAX,
        }
    }
    use std::io::Write;
    use std::time::Duration;

    /// A connected pair: our Link on one end, a plain socket as the peer.
    fn pair() -> (Link, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (
            Link::new(Stream::Plain(TcpStream::from_std(ours)), Vec::new()),
            peer,
        )
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn next(link: &mut Link) -> Result<Option<Incoming>, WsError> {
        let mut scratch = Vec::new();
        // The peer's bytes may take a moment to arrive on loopback.
        for _ in 0..100 {
            match link.next(&mut scratch, limits(1 << 20)) {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                other => return other,
            }
        }
        Ok(None)
    }

    #[test]
    fn reads_messages_split_and_batched() {
        let (mut link, mut peer) = pair();
        let mut bytes = masked(0x81, b"hello");
        bytes.extend(masked(0x82, b"bin"));
        let big = vec![b'x'; 70_000];
        bytes.extend(masked(0x81, &big));
        peer.write_all(&bytes[..3]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut scratch = Vec::new();
        assert!(link.next(&mut scratch, limits(1 << 20)).unwrap().is_none());
        peer.write_all(&bytes[3..]).unwrap();
        assert_eq!(
            next(&mut link).unwrap(),
            Some(Incoming::Data(b"hello".to_vec()))
        );
        assert_eq!(
            next(&mut link).unwrap(),
            Some(Incoming::Data(b"bin".to_vec()))
        );
        assert_eq!(next(&mut link).unwrap(), Some(Incoming::Data(big)));
        assert!(link.input.is_none(), "an idle link keeps no buffer");
    }

    #[test]
    fn fragments_and_interleaved_pings() {
        let (mut link, mut peer) = pair();
        let mut bytes = masked(0x01, b"hel");
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x80, b"lo"));
        peer.write_all(&bytes).unwrap();
        assert_eq!(
            next(&mut link).unwrap(),
            Some(Incoming::Data(b"hello".to_vec()))
        );
        let mut pong = [0u8; 3];
        peer.read_exact(&mut pong).unwrap();
        assert_eq!(pong, [0x8A, 1, b'p']);
    }

    #[test]
    fn protocol_errors() {
        for (bytes, what) in [
            (vec![0x81, 0x02, b'h', b'i'], "unmasked"),
            (masked(0xC1, b"x"), "rsv1"),
            (masked(0x80, b"x"), "continuation first"),
            (masked(0x09, b"x"), "fragmented ping"),
            (masked(0x83, b"x"), "reserved opcode"),
        ] {
            let (mut link, mut peer) = pair();
            peer.write_all(&bytes).unwrap();
            assert!(
                matches!(next(&mut link), Err(WsError::Protocol(_))),
                "{what}"
            );
        }
        let (mut link, mut peer) = pair();
        peer.write_all(&masked(0x81, &[0xff, 0xfe])).unwrap();
        assert!(matches!(next(&mut link), Err(WsError::BadUtf8)));
    }

    #[test]
    fn size_limits_apply_to_frames_and_messages() {
        let (mut link, mut peer) = pair();
        peer.write_all(&masked(0x81, &vec![b'a'; 2000])).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut scratch = Vec::new();
        assert!(matches!(
            link.next(&mut scratch, limits(1000)),
            Err(WsError::TooBig)
        ));
        let (mut link, mut peer) = pair();
        let mut bytes = masked(0x01, &[b'a'; 600]);
        bytes.extend(masked(0x80, &[b'a'; 600]));
        peer.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            link.next(&mut scratch, limits(1000)),
            Err(WsError::TooBig)
        ));
    }

    #[test]
    fn corked_frames_go_out_together() {
        let (mut link, mut peer) = pair();
        link.cork();
        link.send_text("a").unwrap();
        link.send_text("b").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert!(peer.read(&mut buf).is_err(), "nothing written while corked");
        link.uncork(1 << 20).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        peer.read_exact(&mut buf[..6]).unwrap();
        assert_eq!(&buf[..6], &[0x81, 1, b'a', 0x81, 1, b'b']);
        assert!(link.output.is_none());
    }

    #[test]
    fn bad_close_frames_are_protocol_errors() {
        for (payload, what) in [
            (vec![3u8], "one byte"),
            (1005u16.to_be_bytes().to_vec(), "1005"),
            (999u16.to_be_bytes().to_vec(), "999"),
            (5000u16.to_be_bytes().to_vec(), "5000"),
        ] {
            let (mut link, mut peer) = pair();
            peer.write_all(&masked(0x88, &payload)).unwrap();
            assert!(
                matches!(next(&mut link), Err(WsError::Protocol(_))),
                "{what}"
            );
        }
        let (mut link, mut peer) = pair();
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(&[0xff, 0xfe]);
        peer.write_all(&masked(0x88, &p)).unwrap();
        assert!(matches!(next(&mut link), Err(WsError::BadUtf8)));
    }

    #[test]
    fn a_flood_of_control_frames_yields() {
        let (mut link, mut peer) = pair();
        let mut bytes = Vec::new();
        for _ in 0..200 {
            bytes.extend(masked(0x8A, b"pong"));
        }
        bytes.extend(masked(0x81, b"after"));
        peer.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut scratch = Vec::new();
        let mut busy = 0;
        loop {
            match link.next(&mut scratch, limits(1 << 20)).unwrap() {
                Some(Incoming::Busy) => busy += 1,
                Some(Incoming::Data(d)) => {
                    assert_eq!(d, b"after");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(busy >= 3, "yielded {busy} times");
    }

    #[test]
    fn pings_go_out_and_any_bytes_in_count_as_heard() {
        let (mut link, mut peer) = pair();
        link.send_ping().unwrap();
        let mut ping = [0u8; 2];
        peer.read_exact(&mut ping).unwrap();
        assert_eq!(ping, [0x89, 0]);
        assert!(!link.take_heard(), "nothing read yet");
        peer.write_all(&masked(0x8A, b"")).unwrap();
        assert_eq!(next(&mut link).unwrap(), None);
        assert!(link.take_heard(), "the pong was heard");
        assert!(!link.take_heard(), "and only once");
    }

    #[test]
    fn close_handshake_from_the_peer() {
        let (mut link, mut peer) = pair();
        peer.write_all(&masked(0x88, &1000u16.to_be_bytes()))
            .unwrap();
        assert_eq!(next(&mut link).unwrap(), Some(Incoming::Close));
        assert!(link.finished());
        let mut reply = [0u8; 4];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn our_close_then_theirs() {
        let (mut link, mut peer) = pair();
        link.send_text("{}").unwrap();
        link.send_close(CloseCode::Normal, "bye").unwrap();
        link.send_text("ignored").unwrap();
        assert!(!link.finished());
        let mut got = [0u8; 4 + 7];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &[0x81, 2, b'{', b'}']);
        assert_eq!(&got[4..], &[0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        peer.write_all(&masked(0x88, &[])).unwrap();
        assert_eq!(next(&mut link).unwrap(), Some(Incoming::Close));
        assert!(link.finished());
    }
}
