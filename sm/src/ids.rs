//! UAIDs and channel IDs: validated once, held as 16 bytes, printed as the client spelled them.

use std::fmt;
use std::hash::{Hash, Hasher};

/// How an id was spelled, so that replies echo it in the client's own form.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdForm {
    /// 32 lower-case hex digits (also used for mixed case, which has no single form).
    Hex,
    /// 32 upper-case hex digits.
    HexUpper,
    /// 36 characters, dashed 8-4-4-4-12, lower case.
    Dashed,
    /// 36 characters, dashed, upper case.
    DashedUpper,
}

impl IdForm {
    /// One byte for tokens and storage keys.
    pub fn to_byte(self) -> u8 {
        match self {
            IdForm::Hex => 0,
            IdForm::HexUpper => 1,
            IdForm::Dashed => 2,
            IdForm::DashedUpper => 3,
        }
    }

    /// The inverse of [`IdForm::to_byte`].
    pub fn from_byte(b: u8) -> Option<IdForm> {
        Some(match b {
            0 => IdForm::Hex,
            1 => IdForm::HexUpper,
            2 => IdForm::Dashed,
            3 => IdForm::DashedUpper,
            _ => return None,
        })
    }
}

/// A UUID-shaped identifier. Equality and hashing look at the 16 bytes only:
/// `ABCD…` and `abcd…` name the same device. `{:?}` prints it as spelled, like `{}`, so that no
/// log line shows it as a byte array.
#[derive(Clone, Copy)]
pub struct Id {
    bytes: [u8; 16],
    form: IdForm,
}

const DASHES: [usize; 4] = [8, 13, 18, 23];

fn hex_val(c: u8) -> Option<(u8, bool)> {
    match c {
        b'0'..=b'9' => Some((c - b'0', false)),
        b'a'..=b'f' => Some((c - b'a' + 10, false)),
        b'A'..=b'F' => Some((c - b'A' + 10, true)),
        _ => None,
    }
}

impl Id {
    /// Parses 32 hex digits or the dashed 36-character form (protocol.md 3.3, rule 4).
    /// Version and variant nibbles are not checked, as pushgo did not.
    pub fn parse(s: &str) -> Option<Id> {
        let raw = s.as_bytes();
        let dashed = match raw.len() {
            32 => false,
            36 => true,
            _ => return None,
        };
        if dashed && DASHES.iter().any(|&i| raw[i] != b'-') {
            return None;
        }
        let mut bytes = [0u8; 16];
        let (mut upper, mut lower) = (false, false);
        let digits = raw
            .iter()
            .enumerate()
            .filter(|(i, _)| !(dashed && DASHES.contains(i)));
        for (n, (_, &c)) in digits.enumerate() {
            let (v, is_upper) = hex_val(c)?;
            if c.is_ascii_alphabetic() {
                upper |= is_upper;
                lower |= !is_upper;
            }
            bytes[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
        }
        let up = upper && !lower;
        let form = match (dashed, up) {
            (false, false) => IdForm::Hex,
            (false, true) => IdForm::HexUpper,
            (true, false) => IdForm::Dashed,
            (true, true) => IdForm::DashedUpper,
        };
        Some(Id { bytes, form })
    }

    /// Builds an id from raw parts (tokens, storage).
    pub fn from_parts(bytes: [u8; 16], form: IdForm) -> Id {
        Id { bytes, form }
    }

    /// A fresh server-made id: 32 lower-case hex digits, as pushgo issues them.
    pub fn fresh(bytes: [u8; 16]) -> Id {
        Id {
            bytes,
            form: IdForm::Hex,
        }
    }

    /// The 16 bytes.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// The spelling the client used.
    pub fn form(&self) -> IdForm {
        self.form
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Id {}

impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (dashed, upper) = match self.form {
            IdForm::Hex => (false, false),
            IdForm::HexUpper => (false, true),
            IdForm::Dashed => (true, false),
            IdForm::DashedUpper => (true, true),
        };
        let digits: &[u8; 16] = if upper {
            b"0123456789ABCDEF"
        } else {
            b"0123456789abcdef"
        };
        let mut out = [0u8; 36];
        let mut pos = 0;
        for (i, b) in self.bytes.iter().enumerate() {
            if dashed && matches!(i, 4 | 6 | 8 | 10) {
                out[pos] = b'-';
                pos += 1;
            }
            out[pos] = digits[(b >> 4) as usize];
            out[pos + 1] = digits[(b & 15) as usize];
            pos += 2;
        }
        // Only ASCII was written above.
        f.write_str(std::str::from_utf8(&out[..pos]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A UserAgent ID: one per device.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uaid(pub Id);

/// A channel ID: one per app registration, scoped to its UAID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(pub Id);

impl fmt::Debug for Uaid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uaid({:?})", self.0)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({:?})", self.0)
    }
}

impl fmt::Display for Uaid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_the_spelling_not_bytes() {
        let s = "0CB8A613-8E2B-4B47-B370-51098DAA8401";
        let id = Id::parse(s).unwrap();
        assert_eq!(format!("{id:?}"), format!("\"{s}\""));
        assert_eq!(
            format!("{:?}", ChannelId(id)),
            format!("ChannelId(\"{s}\")")
        );
        assert_eq!(format!("{:?}", Uaid(id)), format!("Uaid(\"{s}\")"));
    }

    #[test]
    fn parses_both_forms_and_prints_them_back() {
        for s in [
            "9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e",
            "9F3C0B6E5D2A4C8E9B7A6D5C4B3A2F1E",
            "0cb8a613-8e2b-4b47-b370-51098daa8401",
            "0CB8A613-8E2B-4B47-B370-51098DAA8401",
        ] {
            let id = Id::parse(s).expect(s);
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn same_bytes_in_any_spelling_are_equal() {
        let a = Id::parse("0cb8a613-8e2b-4b47-b370-51098daa8401").unwrap();
        let b = Id::parse("0CB8A6138E2B4B47B37051098DAA8401").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn mixed_case_prints_lower() {
        let id = Id::parse("0cB8a6138e2b4b47b37051098daa8401").unwrap();
        assert_eq!(id.to_string(), "0cb8a6138e2b4b47b37051098daa8401");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "abc",
            "0cb8a6138e2b4b47b37051098daa840",    // 31
            "0cb8a6138e2b4b47b37051098daa84011",  // 33
            "0cb8a6138e2b4b47b37051098daa8401ab", // 34
            "0cb8a613-8e2b-4b47-b370-51098daa840g",
            "0cb8a6138-e2b-4b47-b370-51098daa8401",
            "0cb8a613-8e2b-4b47-b370_51098daa8401",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "0cb8a613-8e2b-4b47-b370-51098daa84é",
        ] {
            assert!(Id::parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn form_byte_round_trips() {
        for f in [
            IdForm::Hex,
            IdForm::HexUpper,
            IdForm::Dashed,
            IdForm::DashedUpper,
        ] {
            assert_eq!(IdForm::from_byte(f.to_byte()), Some(f));
        }
        assert_eq!(IdForm::from_byte(9), None);
    }
}
