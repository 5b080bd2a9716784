//! Removes expired data in the background, a bounded slice per pass.
//!
//! A record past its expiry (its last channel expired) goes with the UAID's messages and wake
//! data; a message list whose last message expired goes on its own, and so does a version. Each pass reads at most
//! `PER_PASS` entries of each table from where the last pass stopped, so a pass costs the same
//! whatever the store holds, and a full cycle over N entries takes N / `PER_PASS` passes.

use redb::{ReadableTable, StorageError, Table};

use super::tables::{expired, unstamp};
use super::txn::Txn;
use crate::metrics::{track, Event};
use crate::store::codec::decode_list;
use crate::store::now_secs;
use sm::{Id, Uaid};

/// Entries of each table looked at per pass.
const PER_PASS: usize = 2000;

/// Where the next pass starts in each table.
#[derive(Default)]
pub struct Sweeper {
    records_from: Vec<u8>,
    messages_from: Vec<u8>,
    versions_from: Vec<u8>,
}

impl Sweeper {
    /// One pass, inside the batch's transaction. A storage error poisons the batch as any other.
    pub fn sweep(&mut self, ops: &Txn<'_, '_>) {
        let now = now_secs();
        let mut t = ops.tables();
        let gone = match due(&t.records, &mut self.records_from, now) {
            Ok(keys) => keys,
            Err(e) => return ops.poison(e),
        };
        for key in &gone {
            let k = key.as_slice();
            let removed = [
                t.records.remove(k).map(drop),
                t.messages.remove(k).map(drop),
                t.wakes.remove(k).map(drop),
            ];
            if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
                return ops.poison(e);
            }
        }
        let lists = match due(&t.messages, &mut self.messages_from, now) {
            Ok(keys) => keys,
            Err(e) => return ops.poison(e),
        };
        for key in &lists {
            match t.messages.remove(key.as_slice()) {
                Ok(Some(v)) => count_expired(key, v.value()),
                Ok(None) => {}
                Err(e) => return ops.poison(e),
            }
        }
        // A version expires no later than its channel, so it goes here even if its record is not
        // due yet; one whose record went above goes when its own expiry comes.
        let versions = match due(&t.versions, &mut self.versions_from, now) {
            Ok(keys) => keys,
            Err(e) => return ops.poison(e),
        };
        for key in &versions {
            if let Err(e) = t.versions.remove(key.as_slice()) {
                return ops.poison(e);
            }
        }
        if !gone.is_empty() || !lists.is_empty() || !versions.is_empty() {
            log::debug!(
                "disk store: swept {} expired records, {} message lists and {} versions",
                gone.len(),
                lists.len(),
                versions.len()
            );
        }
    }
}

/// The keys past their expiry among the next `PER_PASS` entries from `from`, which moves on
/// (back to the start at the end of the table).
fn due(
    table: &Table<'_, &'static [u8], &'static [u8]>,
    from: &mut Vec<u8>,
    now: u64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut out = Vec::new();
    let mut seen = 0;
    let mut last = None;
    for entry in table.range(from.as_slice()..)? {
        let (k, v) = entry?;
        seen += 1;
        if expired(v.value(), now) {
            out.push(k.value().to_vec());
        }
        last = Some(k.value().to_vec());
        if seen >= PER_PASS {
            break;
        }
    }
    *from = match last {
        // Just after the last key seen.
        Some(mut k) if seen >= PER_PASS => {
            k.push(0);
            k
        }
        _ => Vec::new(),
    };
    Ok(out)
}

/// Counts the messages of a list that expired unacked.
fn count_expired(key: &[u8], value: &[u8]) {
    let Ok(bytes) = <[u8; 16]>::try_from(key) else {
        return;
    };
    let uaid = Uaid(Id::fresh(bytes));
    let Some(text) = unstamp(value).and_then(|(_, b)| std::str::from_utf8(b).ok()) else {
        return;
    };
    for m in decode_list(text) {
        track(Event::Expired, &uaid, &m.msg.channel, &m.msg.id);
    }
}
