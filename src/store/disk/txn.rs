//! The storage operations inside one write transaction: the [`Backend`] the writer runs jobs on.
//!
//! The rules are the memcached backend's (one record per UAID, registrations that expire unless
//! used, pending versions that keep their channel alive, a message list per UAID), without its
//! compare-and-swap: the writer runs every operation in turn, so a read and the write that
//! follows it can never be interleaved with another writer's.

use std::cell::{Cell, RefCell};

use log::warn;
use redb::ReadableTable;
use sm::{ChannelId, Message, Uaid};

use super::tables::{
    get, live_version, stamped, unstamp, version_key, version_value, Tables, BROADCASTS,
};
use super::Settings;
use crate::metrics::{track, track_drop, Drop, Event};
use crate::store::codec::{decode_list, encode_list};
use crate::store::message_list::{acked, list_life, same_topic, with_message};
use crate::store::record::{expiry, Channel, Record};
use crate::store::{now_secs, Backend, HelloFound, PutResult, StoredMessage, Unavailable};

/// One batch's view of the store. A storage error poisons the whole batch: the writer then
/// rolls it back and answers every job in it as unavailable.
pub struct Txn<'a, 't> {
    tables: RefCell<&'a mut Tables<'t>>,
    settings: &'a Settings,
    broken: Cell<bool>,
}

impl<'a, 't> Txn<'a, 't> {
    /// Operations on these tables.
    pub fn new(tables: &'a mut Tables<'t>, settings: &'a Settings) -> Txn<'a, 't> {
        Txn {
            tables: RefCell::new(tables),
            settings,
            broken: Cell::new(false),
        }
    }

    /// Whether a storage error happened: nothing of this batch may be committed.
    pub fn broken(&self) -> bool {
        self.broken.get()
    }

    /// Notes a storage error outside a job (the sweeper's): the batch is rolled back.
    pub fn poison<E: std::fmt::Display>(&self, e: E) {
        self.fail(e);
    }

    /// Notes a storage error and turns it into the job's answer.
    fn fail<E: std::fmt::Display>(&self, e: E) -> Unavailable {
        if !self.broken.replace(true) {
            warn!("disk store: {e}");
        }
        Unavailable
    }

    fn record(&self, uaid: &Uaid) -> Result<Option<Record>, Unavailable> {
        let raw = get(&self.tables.borrow().records, uaid).map_err(|e| self.fail(e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let parsed = unstamp(&raw)
            .and_then(|(_, body)| std::str::from_utf8(body).ok())
            .and_then(Record::parse);
        if parsed.is_none() {
            warn!("disk store: the record of uaid={uaid} does not decode; treated as absent");
        }
        Ok(parsed)
    }

    /// Writes a record with its expiry: when its last channel expires.
    fn put_record(&self, uaid: &Uaid, rec: &Record, now: u64) -> Result<(), Unavailable> {
        let reg = self.settings.registration_ttl;
        let exp = if rec.channels.is_empty() {
            expiry(reg, now)
        } else if rec.channels.iter().any(|c| c.exp == 0) {
            0
        } else {
            rec.channels.iter().map(|c| c.exp).max().unwrap_or(now)
        };
        let value = stamped(exp, &rec.encode());
        let key = uaid.0.bytes().as_slice();
        let mut t = self.tables.borrow_mut();
        t.records
            .insert(key, value.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The UAID's messages, expired ones included.
    fn messages(&self, uaid: &Uaid) -> Result<Vec<StoredMessage>, Unavailable> {
        let raw = get(&self.tables.borrow().messages, uaid).map_err(|e| self.fail(e))?;
        Ok(raw
            .as_deref()
            .and_then(unstamp)
            .and_then(|(_, body)| std::str::from_utf8(body).ok())
            .map(decode_list)
            .unwrap_or_default())
    }

    /// Writes the UAID's message list (an empty one is removed).
    fn put_messages(&self, uaid: &Uaid, list: &[StoredMessage]) -> Result<(), Unavailable> {
        let key = uaid.0.bytes().as_slice();
        let mut t = self.tables.borrow_mut();
        if list.is_empty() {
            t.messages.remove(key).map_err(|e| self.fail(e))?;
            return Ok(());
        }
        let exp = list.iter().map(|m| m.expires_at).max().unwrap_or(0);
        let value = stamped(exp, encode_list(list).as_bytes());
        t.messages
            .insert(key, value.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Changes the UAID's live messages (expired ones are dropped and counted); `change` returns
    /// its answer and the new list (`None`: nothing to write).
    fn update_messages<R>(
        &self,
        uaid: &Uaid,
        change: impl FnOnce(&[StoredMessage]) -> (R, Option<Vec<StoredMessage>>),
    ) -> Result<R, Unavailable> {
        let now = now_secs();
        let (live, gone): (Vec<_>, Vec<_>) =
            self.messages(uaid)?.into_iter().partition(|m| m.live(now));
        let (answer, new) = change(&live);
        match new {
            Some(list) => self.put_messages(uaid, &list)?,
            None if !gone.is_empty() => self.put_messages(uaid, &live)?,
            None => {}
        }
        for m in &gone {
            track(Event::Expired, uaid, &m.msg.channel, &m.msg.id);
        }
        Ok(answer)
    }

    fn remove_messages(
        &self,
        uaid: &Uaid,
        gone: impl Fn(&StoredMessage) -> bool,
    ) -> Result<bool, Unavailable> {
        self.update_messages(uaid, |list| {
            let rest: Vec<StoredMessage> = list.iter().filter(|m| !gone(m)).cloned().collect();
            let removed = rest.len() != list.len();
            (removed, removed.then_some(rest))
        })
    }

    fn wake(&self, uaid: &Uaid) -> Result<Option<String>, Unavailable> {
        let raw = get(&self.tables.borrow().wakes, uaid).map_err(|e| self.fail(e))?;
        Ok(raw.and_then(|w| String::from_utf8(w).ok()))
    }

    /// The channel's waiting version: the `versions` table's, else one an older file kept in
    /// the record.
    fn version(&self, uaid: &Uaid, channel: &Channel) -> Result<Option<u64>, Unavailable> {
        Ok(self.stored_version(uaid, &channel.id)?.or(channel.pending))
    }

    /// The channel's live version in the `versions` table.
    fn stored_version(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let key = version_key(uaid, channel);
        let t = self.tables.borrow();
        let raw = t.versions.get(key.as_slice()).map_err(|e| self.fail(e))?;
        Ok(raw.and_then(|v| live_version(v.value(), now_secs())))
    }

    fn set_version(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
        exp: u64,
    ) -> Result<(), Unavailable> {
        let key = version_key(uaid, channel);
        let value = version_value(version, exp);
        let mut t = self.tables.borrow_mut();
        t.versions
            .insert(key.as_slice(), value.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn drop_version(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        let key = version_key(uaid, channel);
        let mut t = self.tables.borrow_mut();
        t.versions
            .remove(key.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Drops every waiting version of the UAID.
    fn drop_versions(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        let mut from = [0u8; 32];
        from[..16].copy_from_slice(uaid.0.bytes());
        let mut to = from;
        to[16..].fill(0xff);
        let mut t = self.tables.borrow_mut();
        let keys: Vec<Vec<u8>> = t
            .versions
            .range(from.as_slice()..=to.as_slice())
            .map_err(|e| self.fail(e))?
            .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))?;
        for k in keys {
            t.versions.remove(k.as_slice()).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn stored(&self, uaid: &Uaid) -> Result<PutResult, Unavailable> {
        Ok(PutResult::Stored {
            node: None,
            wake: self.wake(uaid)?,
        })
    }

    fn forget(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        let key = uaid.0.bytes().as_slice();
        let mut t = self.tables.borrow_mut();
        t.records.remove(key).map_err(|e| self.fail(e))?;
        t.messages.remove(key).map_err(|e| self.fail(e))?;
        t.wakes.remove(key).map_err(|e| self.fail(e))?;
        drop(t);
        self.drop_versions(uaid)
    }

    /// A pending version keeps its channel at least a registration's lifetime (0: no expiry).
    fn pending_ttl(&self) -> u32 {
        match self.settings.registration_ttl {
            0 => 0,
            reg => self.settings.pending_ttl.max(reg),
        }
    }

    /// A registration's expiry if used now, stretched to cover `life` seconds of messages.
    fn registered_until(&self, now: u64, life: u32) -> u64 {
        match self.settings.registration_ttl {
            0 => 0,
            reg => expiry(reg.max(life), now),
        }
    }

    /// The record a hello leaves: registrations used now live on, written only once a third of
    /// their life has passed (so a busy device's hellos are reads).
    fn refreshed(&self, rec: &Record, now: u64, life: u32) -> Option<Record> {
        let until = self.registered_until(now, life);
        let reg = u64::from(self.settings.registration_ttl);
        let stale = |c: &Channel| c.exp != 0 && c.exp.saturating_add(reg / 3) < until;
        let due = rec
            .channels
            .iter()
            .any(|c| c.live(now) && c.pending.is_none() && stale(c));
        if until == 0 || !due {
            return None;
        }
        let mut next = rec.clone();
        next.prune(now);
        for c in next.channels.iter_mut().filter(|c| c.pending.is_none()) {
            c.exp = c.exp.max(until);
        }
        Some(next)
    }

    fn hello_known(&self, uaid: &Uaid) -> Result<HelloFound, Unavailable> {
        let now = now_secs();
        let Some(rec) = self.record(uaid)? else {
            return Ok(HelloFound::default());
        };
        if !(rec.channels.is_empty() || rec.channels.iter().any(|c| c.live(now))) {
            // Every registration expired: the device starts over with a new UAID.
            return Ok(HelloFound::default());
        }
        let live: Vec<StoredMessage> = self.update_messages(uaid, |l| (l.to_vec(), None))?;
        let life = list_life(&live, now);
        let rec = match self.refreshed(&rec, now, life) {
            Some(next) => {
                self.put_record(uaid, &next, now)?;
                next
            }
            None => rec,
        };
        let mut pending = Vec::new();
        for c in rec.channels.iter().filter(|c| c.live(now)) {
            if let Some(v) = self.version(uaid, c)? {
                pending.push((c.id, v));
            }
        }
        Ok(HelloFound {
            known: true,
            pending,
            messages: live.iter().map(|m| m.at(now)).collect(),
            previous_node: None,
        })
    }

    /// Stretches a channel's registration to outlive the UAID's waiting messages (`life`
    /// seconds): an offline device must still be known when it comes back for them.
    fn keep_channel(&self, uaid: &Uaid, channel: &ChannelId, life: u32) -> Result<(), Unavailable> {
        let now = now_secs();
        let reg = self.settings.registration_ttl;
        let Some(mut rec) = self.record(uaid)? else {
            return Ok(());
        };
        let Some(c) = rec.live_mut(channel, now) else {
            return Ok(());
        };
        let wanted = expiry(reg.max(life), now);
        if c.exp == 0 || reg == 0 || c.exp >= wanted {
            return Ok(());
        }
        c.exp = wanted;
        self.put_record(uaid, &rec, now)
    }

    /// The broadcast versions stored through the admin API.
    pub fn broadcasts(&self) -> Result<std::collections::BTreeMap<String, String>, Unavailable> {
        let t = self.tables.borrow();
        let raw = t.meta.get(BROADCASTS).map_err(|e| self.fail(e))?;
        Ok(raw
            .and_then(|v| serde_json::from_str(v.value()).ok())
            .unwrap_or_default())
    }

    /// Stores the broadcast table.
    pub fn set_broadcasts(
        &self,
        table: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Unavailable> {
        let text = serde_json::to_string(table).map_err(|e| self.fail(e))?;
        let mut t = self.tables.borrow_mut();
        t.meta
            .insert(BROADCASTS, text.as_str())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The tables, for the sweeper (which runs after the batch's jobs).
    pub fn tables(&self) -> std::cell::RefMut<'_, &'a mut Tables<'t>> {
        self.tables.borrow_mut()
    }
}

impl Backend for Txn<'_, '_> {
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        _node: Option<&str>,
        _channels: &[ChannelId],
    ) -> Result<HelloFound, Unavailable> {
        if forget {
            self.forget(uaid)?;
            return Ok(HelloFound::default());
        }
        self.hello_known(uaid)
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let now = now_secs();
        let Some(rec) = self.record(uaid)? else {
            return Ok(None);
        };
        match rec.live(channel, now) {
            Some(c) => self.version(uaid, c),
            None => Ok(None),
        }
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable> {
        let now = now_secs();
        let mut rec = self.record(uaid)?.unwrap_or_default();
        let until = self.registered_until(now, 0);
        if let Some(c) = rec.live_mut(channel, now) {
            if c.pending.is_none() && c.exp != 0 {
                c.exp = c.exp.max(until);
            }
        } else {
            rec.prune(now);
            if rec.channels.len() >= max {
                return Ok(false);
            }
            rec.channels.push(Channel {
                id: *channel,
                exp: until,
                pending: None,
            });
        }
        self.put_record(uaid, &rec, now)?;
        Ok(true)
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        let now = now_secs();
        if let Some(mut rec) = self.record(uaid)? {
            let before = rec.channels.len();
            rec.channels.retain(|c| c.id != *channel);
            if rec.channels.len() != before {
                self.put_record(uaid, &rec, now)?;
            }
        }
        self.drop_version(uaid, channel)?;
        self.remove_messages(uaid, |m| m.msg.channel == *channel)
            .map(drop)
    }

    fn ack(
        &self,
        uaid: &Uaid,
        items: &[(ChannelId, u64)],
        messages: &[(ChannelId, String)],
    ) -> Result<(), Unavailable> {
        if !messages.is_empty() {
            self.remove_messages(uaid, |m| acked(&m.msg, messages))?;
        }
        if items.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        let Some(mut rec) = self.record(uaid)? else {
            return Ok(());
        };
        let until = self.registered_until(now, 0);
        let reg = u64::from(self.settings.registration_ttl);
        let mut changed = false;
        for (channel, version) in items {
            let Some(c) = rec.live_mut(channel, now) else {
                continue;
            };
            // A newer version stored meanwhile stays pending.
            if self.stored_version(uaid, channel)? == Some(*version) {
                self.drop_version(uaid, channel)?;
            }
            if c.pending == Some(*version) {
                c.pending = None;
                changed = true;
            }
            // An ack is use: the registration is renewed, written once a third of it has passed.
            if c.exp != 0 && c.exp.saturating_add(reg / 3) < until {
                c.exp = until;
                changed = true;
            }
        }
        if changed {
            self.put_record(uaid, &rec, now)?;
        }
        Ok(())
    }

    fn put(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Unavailable> {
        let now = now_secs();
        let life = self.pending_ttl();
        let pending_until = expiry(life, now);
        let Some(mut rec) = self.record(uaid)? else {
            return Ok(PutResult::UnknownChannel);
        };
        let Some(c) = rec.live_mut(channel, now) else {
            return Ok(PutResult::UnknownChannel);
        };
        self.set_version(uaid, channel, version, pending_until)?;
        // The version keeps its channel alive. The record is written only when it must be
        // stretched, and then by a third more, so that most updates leave it alone.
        let stretch = c.exp != 0 && c.exp < pending_until;
        if stretch {
            c.exp = pending_until.saturating_add(u64::from(life / 3));
        }
        let old_format = c.pending.take().is_some();
        if stretch || old_format {
            self.put_record(uaid, &rec, now)?;
        }
        self.stored(uaid)
    }

    fn put_message(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Unavailable> {
        let now = now_secs();
        let registered = self
            .record(uaid)?
            .is_some_and(|r| r.live(&msg.channel, now).is_some());
        if !registered {
            return Ok(PutResult::UnknownChannel);
        }
        if msg.ttl == 0 {
            return self.stored(uaid);
        }
        let new = StoredMessage::new(msg.clone(), now);
        let max = self.settings.max_messages;
        let mut replaced = Vec::new();
        let life = self.update_messages(uaid, |list| {
            replaced = same_topic(list, &new);
            with_message(list, &new, max, now)
        })?;
        let Some(life) = life else {
            return Ok(PutResult::Full);
        };
        for (channel, id) in replaced {
            track_drop(Drop::Replaced, uaid, &channel, &id);
        }
        self.keep_channel(uaid, &msg.channel, life)?;
        self.stored(uaid)
    }

    fn message_pending(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        let now = now_secs();
        Ok(self
            .messages(uaid)?
            .iter()
            .any(|m| m.msg.id == id && m.live(now)))
    }

    fn delete_message(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        self.remove_messages(uaid, |m| m.msg.id == id)
    }

    fn set_wake(&self, uaid: &Uaid, wake: &str) -> Result<(), Unavailable> {
        if self.wake(uaid)?.as_deref() == Some(wake) {
            return Ok(());
        }
        let key = uaid.0.bytes().as_slice();
        let mut t = self.tables.borrow_mut();
        t.wakes
            .insert(key, wake.as_bytes())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn refresh(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        self.hello_known(uaid).map(drop)
    }

    fn bind_node(&self, _uaid: &Uaid, _node: &str) -> Result<Option<String>, Unavailable> {
        // One node: no cluster (refused by the configuration).
        Ok(None)
    }

    fn unbind_node(&self, _uaid: &Uaid, _node: &str) -> Result<(), Unavailable> {
        Ok(())
    }

    fn healthy(&self) -> bool {
        !self.broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::Sync;
    use sm::Id;

    const U: [u8; 16] = [7; 16];
    const C: [u8; 16] = [9; 16];

    fn settings() -> Settings {
        Settings {
            pending_ttl: 3000,
            registration_ttl: 300,
            max_messages: 10,
            sync: Sync::Batch,
            cache_bytes: 1 << 20,
        }
    }

    /// Runs `f` in one committed transaction of the database at `file`.
    fn with_txn<R>(file: &std::path::Path, f: impl FnOnce(&Txn<'_, '_>) -> R) -> R {
        let db = redb::Database::create(file).unwrap();
        let txn = db.begin_write().unwrap();
        let settings = settings();
        let out = {
            let mut tables = Tables::open(&txn).unwrap();
            let ops = Txn::new(&mut tables, &settings);
            let out = f(&ops);
            assert!(!ops.broken());
            out
        };
        txn.commit().unwrap();
        out
    }

    fn versions_held(file: &std::path::Path) -> u64 {
        with_txn(file, |t| {
            use redb::ReadableTableMetadata;
            t.tables().versions.len().unwrap()
        })
    }

    fn record_text(file: &std::path::Path) -> String {
        let uaid = Uaid(Id::fresh(U));
        with_txn(file, |t| {
            let raw = get(&t.tables().records, &uaid).unwrap().unwrap();
            String::from_utf8(unstamp(&raw).unwrap().1.to_vec()).unwrap()
        })
    }

    #[test]
    fn versions_live_in_their_own_table_and_an_ack_empties_it() {
        let dir = std::env::temp_dir().join(format!("sp-txn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("versions.redb");
        let _ = std::fs::remove_file(&file);
        let (uaid, ch) = (Uaid(Id::fresh(U)), ChannelId(Id::fresh(C)));
        with_txn(&file, |t| assert!(t.register(&uaid, &ch, 8).unwrap()));
        let registered = record_text(&file);
        with_txn(&file, |t| {
            assert!(matches!(
                t.put(&uaid, &ch, 5).unwrap(),
                PutResult::Stored { .. }
            ))
        });
        assert_eq!(versions_held(&file), 1);
        let stretched = record_text(&file);
        assert_ne!(
            stretched, registered,
            "the first update stretches the channel's life"
        );
        with_txn(&file, |t| t.put(&uaid, &ch, 6).unwrap());
        assert_eq!(
            record_text(&file),
            stretched,
            "a later update leaves the record alone"
        );
        let found = with_txn(&file, |t| t.hello(&uaid, false, None, &[]).unwrap());
        assert_eq!(found.pending, vec![(ch, 6)]);
        with_txn(&file, |t| t.ack(&uaid, &[(ch, 5)], &[]).unwrap());
        assert_eq!(
            versions_held(&file),
            1,
            "an ack of an older version keeps the newer"
        );
        with_txn(&file, |t| t.ack(&uaid, &[(ch, 6)], &[]).unwrap());
        assert_eq!(versions_held(&file), 0);
        assert_eq!(with_txn(&file, |t| t.pending(&uaid, &ch).unwrap()), None);
        with_txn(&file, |t| t.put(&uaid, &ch, 7).unwrap());
        with_txn(&file, |t| t.unregister(&uaid, &ch).unwrap());
        assert_eq!(versions_held(&file), 0, "unregister drops the version");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_an_older_file_kept_in_the_record_is_read_and_cleared() {
        let dir = std::env::temp_dir().join(format!("sp-txn-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("old.redb");
        let _ = std::fs::remove_file(&file);
        let (uaid, ch) = (Uaid(Id::fresh(U)), ChannelId(Id::fresh(C)));
        let now = now_secs();
        let old = Record {
            channels: vec![Channel {
                id: ch,
                exp: now + 5000,
                pending: Some(4),
            }],
        };
        with_txn(&file, |t| t.put_record(&uaid, &old, now).unwrap());
        let found = with_txn(&file, |t| t.hello(&uaid, false, None, &[]).unwrap());
        assert_eq!(found.pending, vec![(ch, 4)]);
        with_txn(&file, |t| t.ack(&uaid, &[(ch, 4)], &[]).unwrap());
        assert_eq!(with_txn(&file, |t| t.pending(&uaid, &ch).unwrap()), None);
        assert!(
            !record_text(&file).contains(" 4\n"),
            "the record's copy is cleared"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
