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

use super::tables::{get, stamped, unstamp, Tables, BROADCASTS};
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
        Ok(())
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
        let pending = rec
            .channels
            .iter()
            .filter(|c| c.live(now))
            .filter_map(|c| Some((c.id, c.pending?)))
            .collect();
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
        Ok(self
            .record(uaid)?
            .and_then(|r| r.live(channel, now).and_then(|c| c.pending)))
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
        let mut changed = false;
        for (channel, version) in items {
            // A newer version stored meanwhile stays pending.
            if let Some(c) = rec
                .live_mut(channel, now)
                .filter(|c| c.pending == Some(*version))
            {
                c.pending = None;
                if c.exp != 0 {
                    c.exp = until;
                }
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
        let pending_until = expiry(self.pending_ttl(), now);
        let Some(mut rec) = self.record(uaid)? else {
            return Ok(PutResult::UnknownChannel);
        };
        let Some(c) = rec.live_mut(channel, now) else {
            return Ok(PutResult::UnknownChannel);
        };
        c.pending = Some(version);
        if c.exp != 0 {
            c.exp = c.exp.max(pending_until);
        }
        self.put_record(uaid, &rec, now)?;
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
