//! Phase barriers and the server samples taken at them. A single process samples the server
//! itself; a child tells its parent (one JSON line on stdout) and waits for `go` on stdin, so
//! the parent samples once every child has reached the same point and starts the next phase
//! everywhere at once.

use std::io::{self, Write};
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};

use crate::procstat::{self, Sample};
use crate::progress::Snapshot;
use crate::tally::Tally;
use crate::timeline::Timeline;

/// Where the server is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Point {
    /// Before the first connection.
    Start,
    /// Every device connected, hello'd and registered.
    Connected,
    /// The scenario's main phase is over (before the final closes).
    End,
    /// Churn with a fixed population: round N is over, every device checked and closed, and
    /// --settle seconds have passed.
    Round(u32),
}

impl Point {
    /// The name used in the RSS CSV.
    pub fn label(self) -> String {
        match self {
            Self::Start => "start".into(),
            Self::Connected => "connected".into(),
            Self::End => "end".into(),
            Self::Round(n) => format!("round{n}"),
        }
    }
}

/// Server readings at the barriers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServerSamples {
    pub pid: Option<u32>,
    pub start: Option<Sample>,
    pub connected: Option<Sample>,
    pub end: Option<Sample>,
    /// After each round (churn with --devices), in order.
    pub rounds: Vec<Sample>,
    pub errors: Vec<String>,
    /// The run second by second (with --html).
    #[serde(skip)]
    pub timeline: Timeline,
}

impl ServerSamples {
    /// Samples of `pid` at the barriers, and once a second if `timeline` (for --html).
    pub fn new(pid: Option<u32>, timeline: bool) -> Self {
        Self {
            pid,
            timeline: if timeline {
                Timeline::recording(pid)
            } else {
                Timeline::default()
            },
            ..Self::default()
        }
    }

    pub fn take(&mut self, point: Point) {
        let Some(pid) = self.pid else { return };
        match procstat::sample(pid) {
            Ok(s) => match point {
                Point::Start => self.start = Some(s),
                Point::Connected => self.connected = Some(s),
                Point::End => self.end = Some(s),
                Point::Round(_) => self.rounds.push(s),
            },
            Err(e) => self
                .errors
                .push(format!("sampling pid {pid} at {point:?}: {e}")),
        }
    }
}

/// A child's lines to its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChildMsg {
    Progress { snap: Snapshot },
    Barrier { point: Point },
    Result { tally: Box<Tally> },
}

/// Writes one message as a line on stdout.
pub fn send(msg: &ChildMsg) -> io::Result<()> {
    let line = serde_json::to_string(msg).map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// How this process coordinates.
pub enum Control {
    Solo(ServerSamples),
    Child(ChildLink),
}

/// A child's end of the link: counts `go` lines arriving on stdin.
#[derive(Default)]
pub struct ChildLink {
    pub gos: u32,
    pub eof: bool,
    partial: Vec<u8>,
}

impl ChildLink {
    /// Puts stdin in non-blocking mode so the event loop can watch it.
    pub fn new() -> io::Result<Self> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: fcntl on our own stdin descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self::default())
    }

    /// Reads what stdin has; counts complete `go` lines; notes EOF (the parent is gone).
    pub fn on_readable(&mut self) {
        let mut buf = [0u8; 256];
        for _ in 0..64 {
            // SAFETY: reading into a local buffer of the given length.
            let n =
                unsafe { libc::read(io::stdin().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                self.eof = true;
                return;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    self.eof = e.kind() != io::ErrorKind::WouldBlock;
                    return;
                }
                continue;
            }
            self.partial.extend_from_slice(&buf[..n as usize]);
            self.count_lines();
        }
    }

    fn count_lines(&mut self) {
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            if self.partial[..i].trim_ascii() == b"go" {
                self.gos += 1;
            }
            self.partial.drain(..=i);
        }
    }
}
