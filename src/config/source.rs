//! The config file as written: its text, and where each key and value sits in it, so that an error
//! names the file, line, column and key path of the fault.
//!
//! Errors are found while deserializing the file's own text, never a re-serialized copy of it: the
//! positions are then those of the file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// One key of the file: its dotted path and the byte ranges of the key and its value.
struct Written {
    path: String,
    key: Range<usize>,
    value: Range<usize>,
}

/// A config file read into memory, with the place of every key.
pub(super) struct Source {
    path: PathBuf,
    text: String,
    keys: Vec<Written>,
}

impl Source {
    /// Reads and parses the file (a syntax error is reported at its place).
    pub(super) fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut source = Source {
            path: path.to_path_buf(),
            text,
            keys: Vec::new(),
        };
        // Recoverable: what parsed still places the key a syntax error is in.
        let (doc, errors) = toml::de::DeTable::parse_recoverable(&source.text);
        let mut keys = Vec::new();
        collect(doc.get_ref(), "", &mut keys);
        drop(doc);
        source.keys = keys;
        match errors.first() {
            Some(e) => Err(source.error(e)),
            None => Ok(source),
        }
    }

    /// The configuration the file states (unknown keys and wrong types reported at their place).
    pub(super) fn config(&self) -> Result<Config, ConfigError> {
        toml::from_str(&self.text).map_err(|e| self.error(&e))
    }

    /// Whether the file sets this key (a dotted path, or a section).
    pub(super) fn sets(&self, key: &str) -> bool {
        self.keys.iter().any(|w| w.path == key)
    }

    /// A refused value, reported where the file sets `key`.
    pub(super) fn refused(&self, key: String, message: String) -> ConfigError {
        let offset = self
            .keys
            .iter()
            .find(|w| w.path == key)
            .map(|w| w.value.start);
        self.at(offset, Some(key), message)
    }

    /// A parse or deserialization error, at its place and under the key it is in.
    fn error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map(|s| s.start);
        let key = offset.and_then(|o| self.key_at(o)).map(str::to_string);
        self.at(offset, key, plain(e.message()))
    }

    fn at(&self, offset: Option<usize>, key: Option<String>, message: String) -> ConfigError {
        let (line, column) = offset.map_or((None, None), |o| {
            let (l, c) = position(&self.text, o);
            (Some(l), Some(c))
        });
        ConfigError::File {
            path: self.path.clone(),
            line,
            column,
            key,
            message,
        }
    }

    /// The innermost key whose name or value covers `offset`.
    fn key_at(&self, offset: usize) -> Option<&str> {
        let covers = |r: &Range<usize>| r.start <= offset && (offset < r.end || r.is_empty());
        self.keys
            .iter()
            .filter(|w| covers(&w.key) || covers(&w.value))
            .max_by_key(|w| w.path.len())
            .map(|w| w.path.as_str())
    }
}

/// Every key of `table` and of the tables inside it, with `prefix` before their names.
fn collect(table: &toml::de::DeTable<'_>, prefix: &str, out: &mut Vec<Written>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if let Some(inner) = v.get_ref().as_table() {
            collect(inner, &path, out);
        }
        out.push(Written {
            path,
            key: k.span(),
            value: v.span(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// serde's words for what was wrong, in the words of a TOML file.
pub(super) fn plain(message: &str) -> String {
    let mut m = message.trim().replacen("unknown field", "unknown key", 1);
    // A section given as something other than a table: serde names the Rust struct.
    if let Some(i) = m.find("expected struct ") {
        m.truncate(i);
        m.push_str("expected a table");
    }
    for (rust, toml) in [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
    ] {
        if m.ends_with(rust) {
            m.truncate(m.len() - rust.len());
            m.push_str(toml);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\n# é\nbé = 2\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 4), (1, 5));
        // After a two-byte character the column still counts characters.
        let b = text.find("= 2").unwrap();
        assert_eq!(position(text, b), (3, 4));
        assert_eq!(position(text, text.len()), (4, 1));
    }

    #[test]
    fn serde_types_are_named_as_toml_types() {
        assert_eq!(
            plain("invalid type: string \"x\", expected usize"),
            "invalid type: string \"x\", expected a non-negative integer"
        );
        assert_eq!(
            plain("invalid type: integer `1`, expected struct ServerConfig"),
            "invalid type: integer `1`, expected a table"
        );
        assert_eq!(
            plain("unknown field `x`, expected one of `a`, `b`"),
            "unknown key `x`, expected one of `a`, `b`"
        );
    }
}
