//! memcached's meta protocol (`mg`/`ms`/`md`/`mn`) and `stats`: commands out, replies in.
//!
//! Pure encoding and parsing, no sockets: a connection appends commands to its write buffer and
//! parses replies off its read buffer, in order (memcached answers pipelined commands in order).

use std::fmt::Write as _;

/// How `ms` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store whatever is there (`MS`); with a CAS, only over that exact item.
    Set,
    /// Store only if absent (`ME`).
    Add,
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `mg <key> v c t`: the value, its CAS and its remaining lifetime.
    Get(String),
    /// `mg <key> T<ttl>`: a new lifetime, no value.
    Touch(String, u32),
    /// `ms <key> <len> T<ttl> M<mode> [C<cas>]`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lifetime in seconds (0: none).
        ttl: u32,
        /// Add or set.
        mode: Mode,
        /// Store only over the item with this CAS.
        cas: Option<u64>,
    },
    /// `md <key>`.
    Delete(String),
    /// `stats` or `stats <group>`.
    Stats(Option<&'static str>),
}

/// One reply, in the order of the commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `VA`: a value with its CAS and lifetime (`None`: no expiry).
    Value {
        /// The bytes stored.
        data: Vec<u8>,
        /// The item's CAS.
        cas: u64,
        /// Seconds left, if it expires.
        ttl: Option<u32>,
    },
    /// `EN`: no such item.
    Miss,
    /// `HD`: done (stored, deleted, touched), with the item's new CAS after a store.
    Done(Option<u64>),
    /// `NS`: not stored (an add found the item).
    NotStored,
    /// `EX`: the CAS did not match (another writer got there first).
    Exists,
    /// `NF`: not found (a CAS write, touch or delete of a missing item).
    NotFound,
    /// `SERVER_ERROR out of memory ...`: full, and not allowed to evict.
    OutOfMemory,
    /// The lines of a `stats` reply.
    Stats(Vec<(String, String)>),
}

/// A reply memcached should not have sent: the connection is out of step and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memcached protocol: {}", self.0)
    }
}

/// Appends a command to a write buffer.
pub fn encode(cmd: &Cmd, out: &mut Vec<u8>) {
    let mut line = String::with_capacity(64);
    match cmd {
        Cmd::Get(key) => {
            let _ = write!(line, "mg {key} v c t\r\n");
        }
        Cmd::Touch(key, ttl) => {
            let _ = write!(line, "mg {key} T{ttl}\r\n");
        }
        Cmd::Set {
            key,
            value,
            ttl,
            mode,
            cas,
        } => {
            let m = match mode {
                Mode::Set => 'S',
                Mode::Add => 'E',
            };
            // `c`: the new CAS comes back, so the next change needs no read.
            let _ = write!(line, "ms {key} {} T{ttl} M{m} c", value.len());
            if let Some(c) = cas {
                let _ = write!(line, " C{c}");
            }
            line.push_str("\r\n");
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            return;
        }
        Cmd::Delete(key) => {
            let _ = write!(line, "md {key}\r\n");
        }
        Cmd::Stats(None) => line.push_str("stats\r\n"),
        Cmd::Stats(Some(group)) => {
            let _ = write!(line, "stats {group}\r\n");
        }
    }
    out.extend_from_slice(line.as_bytes());
}

/// Parses one reply to `cmd` off the front of `buf`: the reply and the bytes it took, or
/// `Ok(None)` when more bytes are needed.
pub fn parse(cmd: &Cmd, buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if let Cmd::Stats(_) = cmd {
        return parse_stats(buf);
    }
    let Some(end) = find_crlf(buf, 0) else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProtocolError("a reply line that is not UTF-8".into()))?;
    let used = end + 2;
    let mut words = line.split(' ');
    let head = words.next().unwrap_or("");
    let reply = match head {
        "VA" => return parse_value(line, buf, used),
        "EN" => Reply::Miss,
        "HD" => Reply::Done(words.find_map(|w| w.strip_prefix('c')?.parse().ok())),
        "NS" => Reply::NotStored,
        "EX" => Reply::Exists,
        "NF" => Reply::NotFound,
        "SERVER_ERROR" if line.contains("out of memory") => Reply::OutOfMemory,
        // An item over memcached's -I: refused like a full store, not a broken connection.
        "SERVER_ERROR" if line.contains("too large") => Reply::OutOfMemory,
        _ => return Err(ProtocolError(format!("unexpected reply {line:?}"))),
    };
    Ok(Some((reply, used)))
}

fn parse_value(
    line: &str,
    buf: &[u8],
    used: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut words = line.split(' ').skip(1);
    let size: usize = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError(format!("bad VA line {line:?}")))?;
    let (mut cas, mut ttl) = (None, None);
    for w in words {
        if let Some(c) = w.strip_prefix('c') {
            cas = c.parse().ok();
        } else if let Some(t) = w.strip_prefix('t') {
            // -1: no expiry.
            ttl = t.parse::<u32>().ok();
        }
    }
    let cas = cas.ok_or_else(|| ProtocolError(format!("VA without a CAS {line:?}")))?;
    if buf.len() < used + size + 2 {
        return Ok(None);
    }
    if &buf[used + size..used + size + 2] != b"\r\n" {
        return Err(ProtocolError("a value not ended by CRLF".into()));
    }
    let data = buf[used..used + size].to_vec();
    Ok(Some((Reply::Value { data, cas, ttl }, used + size + 2)))
}

fn parse_stats(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut at = 0;
    let mut stats = Vec::new();
    while let Some(end) = find_crlf(buf, at) {
        let line = std::str::from_utf8(&buf[at..end])
            .map_err(|_| ProtocolError("a stats line that is not UTF-8".into()))?;
        at = end + 2;
        if line == "END" {
            return Ok(Some((Reply::Stats(stats), at)));
        }
        let Some(rest) = line.strip_prefix("STAT ") else {
            return Err(ProtocolError(format!("unexpected stats line {line:?}")));
        };
        let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
        stats.push((k.to_string(), v.to_string()));
    }
    Ok(None)
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(cmd: &Cmd) -> String {
        let mut out = Vec::new();
        encode(cmd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn commands_encode_as_meta_commands() {
        assert_eq!(enc(&Cmd::Get("u/a".into())), "mg u/a v c t\r\n");
        assert_eq!(enc(&Cmd::Touch("u/a".into(), 60)), "mg u/a T60\r\n");
        let set = Cmd::Set {
            key: "k".into(),
            value: b"abc".to_vec(),
            ttl: 5,
            mode: Mode::Set,
            cas: Some(9),
        };
        assert_eq!(enc(&set), "ms k 3 T5 MS c C9\r\nabc\r\n");
        let add = Cmd::Set {
            key: "k".into(),
            value: Vec::new(),
            ttl: 0,
            mode: Mode::Add,
            cas: None,
        };
        assert_eq!(enc(&add), "ms k 0 T0 ME c\r\n\r\n");
        assert_eq!(enc(&Cmd::Delete("k".into())), "md k\r\n");
        assert_eq!(enc(&Cmd::Stats(Some("settings"))), "stats settings\r\n");
    }

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        let get = Cmd::Get("k".into());
        let full = b"VA 3 c7 t-1\r\nabc\r\nEN\r\n";
        let (r, used) = parse(&get, full).unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Value {
                data: b"abc".to_vec(),
                cas: 7,
                ttl: None
            }
        );
        assert_eq!(parse(&get, &full[used..]).unwrap(), Some((Reply::Miss, 4)));
        for cut in 1..used {
            assert_eq!(parse(&get, &full[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (r, _) = parse(&get, b"VA 0 c1 t30\r\n\r\n").unwrap().unwrap();
        assert!(matches!(r, Reply::Value { ttl: Some(30), .. }));
        for (text, want) in [
            ("HD c3\r\n", Reply::Done(Some(3))),
            ("NS c0\r\n", Reply::NotStored),
            ("EX\r\n", Reply::Exists),
            ("NF\r\n", Reply::NotFound),
            (
                "SERVER_ERROR out of memory storing object\r\n",
                Reply::OutOfMemory,
            ),
        ] {
            assert_eq!(parse(&get, text.as_bytes()).unwrap().unwrap().0, want);
        }
    }

    #[test]
    fn nonsense_is_a_protocol_error() {
        let get = Cmd::Get("k".into());
        for bad in [
            &b"CLIENT_ERROR bad command line format\r\n"[..],
            b"ERROR\r\n",
            b"VA x c1\r\n",
            b"VA 1 t5\r\nx\r\n",
            b"VA 1 c1\r\nxyz\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse(&get, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stats_parse_until_end() {
        let cmd = Cmd::Stats(Some("settings"));
        let text = b"STAT evictions off\r\nSTAT maxbytes 64\r\nEND\r\n";
        assert_eq!(parse(&cmd, &text[..20]).unwrap(), None);
        let (r, used) = parse(&cmd, text).unwrap().unwrap();
        assert_eq!(used, text.len());
        assert_eq!(
            r,
            Reply::Stats(vec![
                ("evictions".into(), "off".into()),
                ("maxbytes".into(), "64".into())
            ])
        );
    }
}
