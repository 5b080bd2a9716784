//! What the disk backend keeps in which redb table, and how each value is spelled.
//!
//! Keys are a UAID's 16 bytes. Values that can expire start with their expiry (8 bytes, big
//! endian, Unix seconds, 0 = never), so the sweeper drops them without decoding the rest:
//! - `records`: expiry + the UAID's channels (`store::record`, the same text memcached holds);
//! - `messages`: expiry (of the last message) + the waiting WebPush messages, a JSON list;
//! - `versions`: (UAID, channel) → expiry + the pending SimplePush version (8 bytes, big endian).
//!   Kept apart from `records` so that an update and its ack touch only this table, which holds
//!   nothing but the versions still waiting: a few pages, where the records of random UAIDs
//!   would each dirty a page of their own per commit. (Records of older files may still hold a
//!   pending version in their text; it is read, and cleared at the channel's next update or ack.)
//! - `wakes`: how the UAID's device can be woken (JSON), dropped with the record;
//! - `meta`: named JSON values (`broadcasts`).

use redb::{ReadableTable, StorageError, Table, TableDefinition, WriteTransaction};
use sm::{ChannelId, Uaid};

/// UAID → expiry + channel record.
pub const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// UAID → expiry + JSON list of waiting messages.
pub const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// UAID bytes + channel bytes → expiry + pending version.
pub const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
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
    /// `VERSIONS`.
    pub versions: Table<'t, &'static [u8], &'static [u8]>,
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
            versions: txn.open_table(VERSIONS)?,
            wakes: txn.open_table(WAKES)?,
            meta: txn.open_table(META)?,
        })
    }
}

/// The `VERSIONS` key of a channel.
pub fn version_key(uaid: &Uaid, channel: &ChannelId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(uaid.0.bytes());
    k[16..].copy_from_slice(channel.0.bytes());
    k
}

/// A `VERSIONS` value: the version with its expiry in front.
pub fn version_value(version: u64, exp: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&exp.to_be_bytes());
    v[8..].copy_from_slice(&version.to_be_bytes());
    v
}

/// The version in a `VERSIONS` value, unless it expired or does not decode.
pub fn live_version(value: &[u8], now: u64) -> Option<u64> {
    if expired(value, now) {
        return None;
    }
    let (_, body) = unstamp(value)?;
    Some(u64::from_be_bytes(body.try_into().ok()?))
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

    #[test]
    fn versions_decode_until_they_expire() {
        let v = version_value(7, 100);
        assert_eq!(live_version(&v, 99), Some(7));
        assert_eq!(live_version(&v, 100), None);
        assert_eq!(live_version(&version_value(9, 0), u64::MAX), Some(9));
        assert_eq!(live_version(&stamped(0, b"abc"), 0), None);
    }
}
