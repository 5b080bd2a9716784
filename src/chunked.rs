//! Chunked request bodies (RFC 9112 section 7.1), decoded as the bytes arrive.
//!
//! The decoder is a byte-level state machine: it keeps the body's data and a few counters, never
//! the framing, so a request holds at most its body (bounded like a Content-Length body) however
//! its bytes are split between reads. Chunk extensions and trailer fields are read and ignored,
//! within bounds.

/// Extension bytes (and leading zeros past 16 digits) one body may carry in all: enough for any
/// client that uses them, and no way to make the server read framing without end.
pub const MAX_EXTENSIONS: usize = 16 * 1024;
/// Hex digits of a chunk size: 16 fill a u64.
const MAX_SIZE_DIGITS: u8 = 16;

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The framing is not RFC 9112's (400).
    Malformed(&'static str),
    /// The body would be longer than the limit (413): known as soon as a chunk size says so.
    TooLarge,
    /// The trailer section is longer than the limit (431).
    TrailerTooLarge,
}

/// Where in the framing the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Hex digits of a chunk size.
    Size,
    /// Whitespace after the size, before a `;`.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// LF ending the size line.
    SizeLf,
    /// Chunk data: `left` bytes to go.
    Data,
    /// CR after a chunk's data.
    DataCr,
    /// LF after a chunk's data.
    DataLf,
    /// The start of a trailer line, or CR of the final empty line.
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// LF ending a trailer field line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// A chunked body being decoded.
#[derive(Debug)]
pub struct Chunked {
    step: Step,
    /// The size being read, then the data left in the chunk.
    left: u64,
    digits: u8,
    extensions: usize,
    trailer: usize,
    body: Vec<u8>,
    max_body: usize,
    max_trailer: usize,
}

impl Chunked {
    /// A decoder for a body of at most `max_body` bytes with a trailer section of at most
    /// `max_trailer` bytes.
    pub fn new(max_body: usize, max_trailer: usize) -> Chunked {
        Chunked {
            step: Step::Size,
            left: 0,
            digits: 0,
            extensions: 0,
            trailer: 0,
            body: Vec::new(),
            max_body,
            max_trailer,
        }
    }

    /// Decodes the next bytes of the message. Returns how many it took (all, unless the body ends
    /// inside them: what follows is the next request) and whether the body is complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut used = 0;
        while used < input.len() && self.step != Step::Done {
            if self.step == Step::Data {
                used += self.data(&input[used..]);
            } else {
                self.byte(input[used])?;
                used += 1;
            }
        }
        Ok((used, self.done()))
    }

    /// Whether the whole body (last chunk and trailer section) has been read.
    pub fn done(&self) -> bool {
        self.step == Step::Done
    }

    /// The body decoded so far.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Takes chunk data; the bytes used.
    fn data(&mut self, input: &[u8]) -> usize {
        let n = input
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.body.extend_from_slice(&input[..n]);
        self.left -= n as u64;
        if self.left == 0 {
            self.step = Step::DataCr;
        }
        n
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.step {
            Step::Size => self.size_byte(b),
            Step::SizeSpace => self.space_byte(b),
            Step::Extension => self.extension_byte(b),
            Step::SizeLf => {
                let next = if self.left == 0 {
                    Step::TrailerStart
                } else {
                    Step::Data
                };
                self.expect(b, b'\n', next, "chunk size line must end with CRLF")
            }
            Step::DataCr => self.expect(b, b'\r', Step::DataLf, "chunk data longer than its size"),
            Step::DataLf => self.expect(b, b'\n', Step::Size, "chunk data must end with CRLF"),
            Step::TrailerStart | Step::Trailer | Step::TrailerLf => self.trailer_byte(b),
            Step::EndLf => self.expect(b, b'\n', Step::Done, "chunked body must end with CRLF"),
            // `feed` never passes bytes in these steps.
            Step::Data | Step::Done => Ok(()),
        }
    }

    fn expect(&mut self, b: u8, want: u8, next: Step, why: &'static str) -> Result<(), ChunkError> {
        if b != want {
            return Err(ChunkError::Malformed(why));
        }
        if next == Step::Size {
            self.digits = 0;
        }
        self.step = next;
        Ok(())
    }

    fn size_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        let Some(digit) = (b as char).to_digit(16) else {
            if self.digits == 0 {
                return Err(ChunkError::Malformed("chunk size missing"));
            }
            return self.after_size(b);
        };
        self.digits = self.digits.saturating_add(1);
        if self.digits > MAX_SIZE_DIGITS {
            // Only leading zeros keep a size this long in range; they count as extension bytes.
            self.count_extension()?;
            if self.left >> 60 != 0 {
                return Err(ChunkError::Malformed("chunk size too large"));
            }
        }
        self.left = self.left << 4 | u64::from(digit);
        let total = (self.body.len() as u64).saturating_add(self.left);
        if total > self.max_body as u64 {
            return Err(ChunkError::TooLarge);
        }
        Ok(())
    }

    /// The first byte after a chunk size's digits.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkError> {
        if b == b'\r' {
            self.step = Step::SizeLf;
            return Ok(());
        }
        self.step = Step::SizeSpace;
        self.space_byte(b)
    }

    /// Whitespace after the size is only allowed before an extension (`BWS ";"`).
    fn space_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        match b {
            b' ' | b'\t' => {}
            b';' => self.step = Step::Extension,
            _ => return Err(ChunkError::Malformed("bad chunk size")),
        }
        self.count_extension()
    }

    fn extension_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        match b {
            b'\r' => {
                self.step = Step::SizeLf;
                Ok(())
            }
            // A bare LF or another control byte: framing a proxy may read differently.
            0..=8 | 0x0a..=0x1f | 0x7f => {
                Err(ChunkError::Malformed("control byte in chunk extension"))
            }
            _ => self.count_extension(),
        }
    }

    fn count_extension(&mut self) -> Result<(), ChunkError> {
        self.extensions += 1;
        if self.extensions > MAX_EXTENSIONS {
            return Err(ChunkError::Malformed("chunk extensions too long"));
        }
        Ok(())
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.step = match (self.step, b) {
            (Step::TrailerStart, b'\r') => Step::EndLf,
            (Step::TrailerStart | Step::Trailer, b'\n') => {
                return Err(ChunkError::Malformed("bare LF in trailer"))
            }
            (Step::Trailer, b'\r') => Step::TrailerLf,
            (Step::TrailerStart | Step::Trailer, _) => Step::Trailer,
            (Step::TrailerLf, b'\n') => Step::TrailerStart,
            _ => return Err(ChunkError::Malformed("trailer line must end with CRLF")),
        };
        self.trailer += 1;
        if self.trailer > self.max_trailer {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` fed in the given pieces; the body and the bytes left for the next request.
    fn decode_split(
        raw: &[u8],
        cuts: &[usize],
        max: usize,
    ) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = Chunked::new(max, 1024);
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(raw.len());
        for end in bounds {
            let (used, done) = d.feed(&raw[at..end])?;
            at += used;
            if done {
                return Ok((d.into_body(), raw.len() - at));
            }
            assert_eq!(at, end, "an incomplete body takes every byte");
        }
        Err(ChunkError::Malformed("incomplete"))
    }

    fn decode(raw: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        decode_split(raw, &[], 1 << 20)
    }

    const SAMPLE: &[u8] =
        b"4\r\nWiki\r\n5;name=\"va;l\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\nGET /next";

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let (body, rest) = decode(SAMPLE).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(rest, b"GET /next".len());
        let (body, rest) = decode(b"0\r\n\r\n").unwrap();
        assert!(body.is_empty());
        assert_eq!(rest, 0);
        // Leading zeros and upper- or lower-case hex; whitespace before an extension.
        let (body, _) = decode(b"000a \t;x\r\n0123456789\r\n0000\r\n\r\n").unwrap();
        assert_eq!(body, b"0123456789");
        let (body, _) = decode(b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n").unwrap();
        assert_eq!(body.len(), 26);
    }

    #[test]
    fn every_split_point_gives_the_same_body() {
        let (want, want_rest) = decode(SAMPLE).unwrap();
        for cut in 0..=SAMPLE.len() {
            assert_eq!(
                decode_split(SAMPLE, &[cut], 1 << 20).unwrap(),
                (want.clone(), want_rest),
                "cut at {cut}"
            );
        }
        // A byte at a time.
        let cuts: Vec<usize> = (1..SAMPLE.len()).collect();
        assert_eq!(
            decode_split(SAMPLE, &cuts, 1 << 20).unwrap(),
            (want, want_rest)
        );
    }

    #[test]
    fn every_split_point_gives_the_same_refusal() {
        for (raw, err) in [
            (
                &b"5\r\nabcdef\r\n0\r\n\r\n"[..],
                "chunk data longer than its size",
            ),
            (b"5\r\nabc\ndef", "chunk data longer than its size"),
            (b"5\nabcde\r\n", "bad chunk size"),
            (b"5\r\rabcde\r\n", "chunk size line must end with CRLF"),
            (b"0\r\nX: y\n\r\n", "bare LF in trailer"),
        ] {
            for cut in 0..=raw.len() {
                assert_eq!(
                    decode_split(raw, &[cut], 1 << 20),
                    Err(ChunkError::Malformed(err)),
                    "{raw:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b";ext\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b"5 \r\nabcde\r\n",
            b"5\r\nabcdeXY",
            b"5\r\nabcde\rX",
            b"5;a\x00b\r\n",
            b"5;a\nb\r\n",
            b"0\r\n\r\r",
            b"0\r\n\n",
            b"0\r\nX: y\rZ",
            b"+5\r\n",
        ] {
            assert!(
                matches!(decode(bad), Err(ChunkError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // 17 significant hex digits do not fit in 64 bits.
        assert!(matches!(
            decode_split(b"10000000000000000\r\n", &[], usize::MAX),
            Err(ChunkError::Malformed(_))
        ));
    }

    #[test]
    fn the_body_limit_is_decided_as_soon_as_a_size_passes_it() {
        let ok = b"8\r\n12345678\r\n2\r\n90\r\n0\r\n\r\n";
        assert_eq!(decode_split(ok, &[], 10).unwrap().0, b"1234567890");
        // One byte over, across chunks: refused at the second size, before its data.
        let mut d = Chunked::new(10, 1024);
        assert_eq!(d.feed(b"8\r\n12345678\r\n"), Ok((13, false)));
        assert_eq!(d.feed(b"3"), Err(ChunkError::TooLarge));
        // A huge size is refused at the digit that makes it too large, with no data sent.
        let mut d = Chunked::new(65536, 1024);
        assert_eq!(d.feed(b"1000"), Ok((4, false)));
        assert_eq!(d.feed(b"0"), Ok((1, false)));
        assert_eq!(d.feed(b"1"), Err(ChunkError::TooLarge));
        assert_eq!(
            decode_split(b"ffffffffffffffff\r\n", &[], usize::MAX - 1),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'e', MAX_EXTENSIONS));
        assert_eq!(
            decode(&long_ext),
            Err(ChunkError::Malformed("chunk extensions too long"))
        );
        // The budget is per body, not per chunk.
        let many: Vec<u8> = (0..MAX_EXTENSIONS / 100 + 1)
            .flat_map(|_| format!("1;{}\r\nx\r\n", "e".repeat(99)).into_bytes())
            .collect();
        // Many plain chunks carry no extension bytes at all.
        let plain: Vec<u8> = (0..MAX_EXTENSIONS + 10)
            .flat_map(|_| *b"1\r\nx\r\n")
            .chain(*b"0\r\n\r\n")
            .collect();
        assert_eq!(decode(&plain).unwrap().0.len(), MAX_EXTENSIONS + 10);
        assert_eq!(
            decode(&many),
            Err(ChunkError::Malformed("chunk extensions too long"))
        );
        let zeros = vec![b'0'; MAX_EXTENSIONS + 20];
        assert!(matches!(decode(&zeros), Err(ChunkError::Malformed(_))));
        let mut trailer = b"0\r\n".to_vec();
        trailer.extend(std::iter::repeat_n(b't', 2000));
        assert_eq!(decode(&trailer), Err(ChunkError::TrailerTooLarge));
        let mut fits = b"0\r\nX: ".to_vec();
        fits.extend(std::iter::repeat_n(b't', 1000));
        fits.extend_from_slice(b"\r\n\r\n");
        assert!(decode(&fits).is_ok());
    }
}
