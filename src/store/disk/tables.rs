//! What the disk backend keeps in which redb table, and how each value is spelled.
//!
//! Keys are a UAID's 16 bytes. Values that can expire start with their expiry (8 bytes, big
//! endian, Unix seconds, 0 = never), so the sweeper drops them without decoding the rest:
//! - `records`: expiry + the UAID's channels (`store::record`, the same text memcached holds);
//! - `messages`: expiry (of the last message) + the waiting WebPush messages, a JSON list;
//! - `wakes`: how the UAID's device can be woken (JSON), dropped with the record;
//! - `meta`: named JSON values (`broadcasts`).

use redb::{ReadableTable, StorageError, Table, TableDefinition, WriteTransaction};
use sm::Uaid;

/// UAID → expiry + channel record.
pub const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// UAID → expiry + JSON list of waiting messages.
pub const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// UAID → wake data.
pub const WAKES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("wakes");
/// Name → JSON.
pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The broadcast table's name in `META`.
pub const BROADCASTS: &str = "broadcasts";

/// A value with its expiry in front.
pub fn stamped(exp: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&exp.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The expiry and body of a stamped value; `None` if it is too short to be one.
pub fn unstamp(value: &[u8]) -> Option<(u64, &[u8])> {
    let (head, body) = value.split_at_checked(8)?;
    let exp = u64::from_be_bytes(head.try_into().ok()?);
    Some((exp, body))
}

/// Whether a stamped value's expiry has passed.
pub fn expired(value: &[u8], now: u64) -> bool {
    unstamp(value).is_none_or(|(exp, _)| exp != 0 && exp <= now)
}

/// The tables of one write transaction, opened once per commit.
pub struct Tables<'t> {
    /// `RECORDS`.
    pub records: Table<'t, &'static [u8], &'static [u8]>,
    /// `MESSAGES`.
    pub messages: Table<'t, &'static [u8], &'static [u8]>,
    /// `WAKES`.
    pub wakes: Table<'t, &'static [u8], &'static [u8]>,
    /// `META`.
    pub meta: Table<'t, &'static str, &'static str>,
}

impl<'t> Tables<'t> {
    /// Opens (creating on first use) every table in `txn`.
    pub fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, redb::TableError> {
        Ok(Tables {
            records: txn.open_table(RECORDS)?,
            messages: txn.open_table(MESSAGES)?,
            wakes: txn.open_table(WAKES)?,
            meta: txn.open_table(META)?,
        })
    }
}

/// Reads a UAID's value from one of the byte tables.
pub fn get(
    table: &Table<'_, &'static [u8], &'static [u8]>,
    uaid: &Uaid,
) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(table
        .get(uaid.0.bytes().as_slice())?
        .map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_short_values_count_as_expired() {
        let v = stamped(42, b"body");
        assert_eq!(unstamp(&v), Some((42, &b"body"[..])));
        assert!(!expired(&v, 41));
        assert!(expired(&v, 42));
        assert!(!expired(&stamped(0, b""), u64::MAX));
        assert_eq!(unstamp(b"short"), None);
        assert!(expired(b"short", 0));
    }
}
