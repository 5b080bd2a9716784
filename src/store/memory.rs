//! The embedded store: everything in one process's memory, lost on restart.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sm::{ChannelId, Message, Uaid};

use crate::metrics::{track, track_drop, Drop, Event};

use super::{now_secs, Backend, HelloFound, PutResult, StoredMessage, Unavailable};

/// "Nothing pending": versions are never 0 (an update's 0 means "now").
const NONE: u64 = 0;
/// Expired UAIDs removed per sweep (one a second per loop): about a millisecond's work.
const SWEEP_BATCH: usize = 10_000;

/// A UAID's registrations and when its device was last heard of.
#[derive(Default)]
struct Entry {
    channels: Channels,
    /// Unix seconds of the last hello, register, unregister, ack or refresh.
    seen: u32,
}

/// Unix seconds as stored (u32 lasts until 2106).
fn secs32(now: u64) -> u32 {
    u32::try_from(now).unwrap_or(u32::MAX)
}

/// A UAID's channels: inline while there is one (nearly every device), a map beyond.
#[derive(Default)]
enum Channels {
    #[default]
    Empty,
    One(ChannelId, u64),
    // Boxed on purpose: a map inline would make every one-channel entry 48 bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<ChannelId, u64>>),
}

impl Channels {
    fn get_mut(&mut self, channel: &ChannelId) -> Option<&mut u64> {
        match self {
            Channels::One(c, v) if c == channel => Some(v),
            Channels::Many(m) => m.get_mut(channel),
            _ => None,
        }
    }

    fn insert_if_absent(&mut self, channel: ChannelId) {
        match self {
            Channels::Empty => *self = Channels::One(channel, NONE),
            Channels::One(c, _) if *c == channel => {}
            Channels::One(c, v) => {
                let mut m = HashMap::with_capacity(2);
                m.insert(*c, *v);
                m.insert(channel, NONE);
                *self = Channels::Many(Box::new(m));
            }
            Channels::Many(m) => {
                m.entry(channel).or_insert(NONE);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Channels::Empty => 0,
            Channels::One(..) => 1,
            Channels::Many(m) => m.len(),
        }
    }

    fn contains(&self, channel: &ChannelId) -> bool {
        match self {
            Channels::One(c, _) => c == channel,
            Channels::Many(m) => m.contains_key(channel),
            Channels::Empty => false,
        }
    }

    fn remove(&mut self, channel: &ChannelId) {
        match self {
            Channels::One(c, _) if c == channel => *self = Channels::Empty,
            Channels::Many(m) => {
                m.remove(channel);
            }
            _ => {}
        }
    }

    fn pending(&self) -> Vec<(ChannelId, u64)> {
        match self {
            Channels::Empty => Vec::new(),
            Channels::One(c, v) => (*v != NONE).then_some((*c, *v)).into_iter().collect(),
            Channels::Many(m) => m
                .iter()
                .filter(|(_, v)| **v != NONE)
                .map(|(c, v)| (*c, *v))
                .collect(),
        }
    }
}

/// Registrations, pending versions and WebPush messages; used from the loop's thread only.
pub struct MemoryStore {
    /// UAID → its channels and their pending versions.
    users: RefCell<HashMap<Uaid, Entry>>,
    /// Every UAID once, with when it was last seen as of its turn in the queue: the sweep takes
    /// from the front, expires what is still unseen since, and queues the rest again.
    expiry: RefCell<VecDeque<(Uaid, u32)>>,
    /// Seconds a registration lives unseen; 0 = for ever.
    ttl_secs: Cell<u32>,
    /// UAID → its waiting WebPush messages, oldest first. Apart from `users`, so that the
    /// SimplePush devices (most of them) pay nothing for it.
    messages: RefCell<HashMap<Uaid, Vec<StoredMessage>>>,
    /// Waiting messages allowed per UAID.
    max_messages: usize,
    /// UAID → how its device can be woken (only devices that said so).
    wakes: RefCell<HashMap<Uaid, Box<str>>>,
    /// Bytes held by waiting messages, all UAIDs together.
    /// Shared by every event loop's store: the budget is the process's, not each loop's.
    message_bytes: Arc<AtomicUsize>,
    /// Their limit: a push beyond it is refused (429) until messages are acked or expire.
    max_message_bytes: usize,
}

impl MemoryStore {
    /// An empty store that keeps at most `max_messages` WebPush messages per UAID.
    pub fn new(max_messages: usize) -> MemoryStore {
        MemoryStore::with_budget(max_messages, usize::MAX)
    }

    /// The same, holding at most `max_message_bytes` of messages in all.
    pub fn with_budget(max_messages: usize, max_message_bytes: usize) -> MemoryStore {
        MemoryStore {
            users: RefCell::default(),
            expiry: RefCell::default(),
            ttl_secs: Cell::new(0),
            messages: RefCell::default(),
            max_messages,
            wakes: RefCell::default(),
            message_bytes: Arc::default(),
            max_message_bytes,
        }
    }

    /// Counts message bytes in `total`, shared with the other event loops' stores.
    pub fn sharing(mut self, total: Arc<AtomicUsize>) -> MemoryStore {
        self.message_bytes = total;
        self
    }

    fn release(&self, n: usize) {
        let _ = self
            .message_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
    }

    /// Whether a message of `size` bytes fits for a UAID holding `waiting` messages. Past the
    /// budget, a UAID holding less than a tenth of `max_messages` still gets in (up to a quarter
    /// more): whoever filled the store is refused, not the devices with a message or two waiting.
    fn room_for(&self, waiting: usize, size: usize) -> bool {
        let total = self.message_bytes.load(Ordering::Relaxed) + size;
        if total <= self.max_message_bytes {
            return true;
        }
        let hard = self
            .max_message_bytes
            .saturating_add(self.max_message_bytes / 4);
        waiting < (self.max_messages / 10).max(1) && total <= hard
    }

    /// Registrations unseen for `secs` expire (0: never), as on memcached and disk.
    pub fn with_ttl(self, secs: u64) -> MemoryStore {
        self.ttl_secs.set(u32::try_from(secs).unwrap_or(u32::MAX));
        self
    }

    /// Marks the UAID's device as heard of now.
    fn touch(&self, uaid: &Uaid) {
        if let Some(e) = self.users.borrow_mut().get_mut(uaid) {
            e.seen = secs32(now_secs());
        }
    }

    /// Forgets everything held for the UAID.
    fn forget(&self, uaid: &Uaid) {
        self.users.borrow_mut().remove(uaid);
        if let Some(list) = self.messages.borrow_mut().remove(uaid) {
            self.release(list_bytes(&list));
        }
        self.wakes.borrow_mut().remove(uaid);
    }

    /// Removes up to [`SWEEP_BATCH`] UAIDs unseen for the TTL; returns how many.
    fn sweep_expired(&self, now: u64) -> usize {
        let ttl = self.ttl_secs.get();
        if ttl == 0 {
            return 0;
        }
        let now = secs32(now);
        let mut expired = 0;
        for _ in 0..SWEEP_BATCH {
            let Some(&(uaid, seen)) = self.expiry.borrow().front() else {
                break;
            };
            if seen.saturating_add(ttl) > now {
                break;
            }
            self.expiry.borrow_mut().pop_front();
            let last = self.users.borrow().get(&uaid).map(|e| e.seen);
            match last {
                Some(last) if last.saturating_add(ttl) > now => {
                    self.expiry.borrow_mut().push_back((uaid, last));
                }
                Some(_) => {
                    self.forget(&uaid);
                    expired += 1;
                }
                None => {}
            }
        }
        expired
    }

    fn wake_of(&self, uaid: &Uaid) -> Option<String> {
        self.wakes.borrow().get(uaid).map(|w| w.to_string())
    }

    /// Runs `f` on the UAID's live messages (expired ones dropped first), then drops an empty list.
    fn with_messages<R>(&self, uaid: &Uaid, f: impl FnOnce(&mut Vec<StoredMessage>) -> R) -> R {
        let now = now_secs();
        let mut all = self.messages.borrow_mut();
        let list = all.entry(*uaid).or_default();
        let before = list_bytes(list);
        list.retain(|m| {
            let live = m.live(now);
            if !live {
                track(Event::Expired, uaid, &m.msg.channel, &m.msg.id);
            }
            live
        });
        let out = f(list);
        let after = list_bytes(list);
        if after > before {
            self.message_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.release(before - after);
        }
        if list.is_empty() {
            all.remove(uaid);
        }
        out
    }
}

fn list_bytes(list: &[StoredMessage]) -> usize {
    list.iter().map(|m| m.msg.size()).sum()
}

impl Backend for MemoryStore {
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        _node: Option<&str>,
        _channels: &[ChannelId],
    ) -> Result<HelloFound, Unavailable> {
        if forget {
            self.forget(uaid);
            return Ok(HelloFound::default());
        }
        let pending = match self.users.borrow().get(uaid) {
            Some(e) => e.channels.pending(),
            None => return Ok(HelloFound::default()),
        };
        self.touch(uaid);
        let now = now_secs();
        let messages = self.with_messages(uaid, |list| list.iter().map(|m| m.at(now)).collect());
        Ok(HelloFound {
            known: true,
            pending,
            messages,
            previous_node: None,
        })
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let mut users = self.users.borrow_mut();
        let v = users
            .get_mut(uaid)
            .and_then(|e| e.channels.get_mut(channel));
        Ok(v.map(|v| *v).filter(|v| *v != NONE))
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable> {
        let now = secs32(now_secs());
        let mut users = self.users.borrow_mut();
        let entry = users.entry(*uaid).or_insert_with(|| {
            if self.ttl_secs.get() > 0 {
                self.expiry.borrow_mut().push_back((*uaid, now));
            }
            Entry::default()
        });
        entry.seen = now;
        let channels = &mut entry.channels;
        if !channels.contains(channel) && channels.len() >= max {
            return Ok(false);
        }
        channels.insert_if_absent(*channel);
        Ok(true)
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        if let Some(e) = self.users.borrow_mut().get_mut(uaid) {
            e.channels.remove(channel);
            e.seen = secs32(now_secs());
        }
        self.with_messages(uaid, |list| list.retain(|m| m.msg.channel != *channel));
        Ok(())
    }

    fn ack(
        &self,
        uaid: &Uaid,
        items: &[(ChannelId, u64)],
        messages: &[(ChannelId, String)],
    ) -> Result<(), Unavailable> {
        if !messages.is_empty() {
            let acked: std::collections::HashSet<(&ChannelId, &str)> =
                messages.iter().map(|(c, id)| (c, id.as_str())).collect();
            self.with_messages(uaid, |list| {
                list.retain(|m| !acked.contains(&(&m.msg.channel, m.msg.id.as_str())))
            });
        }
        let mut users = self.users.borrow_mut();
        let Some(entry) = users.get_mut(uaid) else {
            return Ok(());
        };
        entry.seen = secs32(now_secs());
        let channels = &mut entry.channels;
        for (channel, version) in items {
            if let Some(pending) = channels.get_mut(channel) {
                if *pending == *version {
                    *pending = NONE;
                }
            }
        }
        Ok(())
    }

    fn put(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Unavailable> {
        let mut users = self.users.borrow_mut();
        let slot = users
            .get_mut(uaid)
            .and_then(|e| e.channels.get_mut(channel));
        Ok(match slot {
            Some(pending) => {
                *pending = version;
                PutResult::Stored {
                    node: None,
                    wake: self.wake_of(uaid),
                }
            }
            None => PutResult::UnknownChannel,
        })
    }

    fn put_message(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Unavailable> {
        let registered = self
            .users
            .borrow()
            .get(uaid)
            .is_some_and(|e| e.channels.contains(&msg.channel));
        if !registered {
            return Ok(PutResult::UnknownChannel);
        }
        if msg.ttl == 0 {
            return Ok(PutResult::Stored {
                node: None,
                wake: self.wake_of(uaid),
            });
        }
        let max = self.max_messages;
        let stored = StoredMessage::new(msg.clone(), now_secs());
        Ok(self.with_messages(uaid, |list| {
            if let Some(topic) = &msg.topic {
                list.retain(|m| {
                    let replaced =
                        m.msg.channel == msg.channel && m.msg.topic.as_ref() == Some(topic);
                    if replaced {
                        track_drop(Drop::Replaced, uaid, &m.msg.channel, &m.msg.id);
                    }
                    !replaced
                });
            }
            if list.len() >= max || !self.room_for(list.len(), stored.msg.size()) {
                return PutResult::Full;
            }
            list.push(stored);
            PutResult::Stored {
                node: None,
                wake: self.wake_of(uaid),
            }
        }))
    }

    fn message_pending(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        Ok(self.with_messages(uaid, |list| list.iter().any(|m| m.msg.id == id)))
    }

    fn delete_message(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        Ok(self.with_messages(uaid, |list| {
            let before = list.len();
            list.retain(|m| m.msg.id != id);
            list.len() != before
        }))
    }

    fn set_wake(&self, uaid: &Uaid, wake: &str) -> Result<(), Unavailable> {
        self.wakes.borrow_mut().insert(*uaid, wake.into());
        Ok(())
    }

    fn bind_node(&self, _uaid: &Uaid, _node: &str) -> Result<Option<String>, Unavailable> {
        // One process, no cluster: there is no other node.
        Ok(None)
    }

    fn unbind_node(&self, _uaid: &Uaid, _node: &str) -> Result<(), Unavailable> {
        Ok(())
    }

    fn refresh(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        self.touch(uaid);
        Ok(())
    }

    fn sweep(&self, now: u64) -> usize {
        self.sweep_expired(now)
    }

    fn healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::Id;

    fn u(n: u8) -> Uaid {
        Uaid(Id::fresh([n; 16]))
    }

    fn c(n: u8) -> ChannelId {
        ChannelId(Id::fresh([n; 16]))
    }

    #[test]
    fn registrations_unseen_for_the_ttl_expire_and_seen_ones_stay() {
        let s = MemoryStore::new(100).with_ttl(100);
        let now = now_secs();
        s.register(&u(1), &c(1), 200).unwrap();
        s.register(&u(2), &c(2), 200).unwrap();
        s.set_wake(&u(1), "w").unwrap();
        assert_eq!(s.sweep(now + 50), 0);
        // u2's device was heard of later than its turn in the queue says.
        s.users.borrow_mut().get_mut(&u(2)).unwrap().seen = secs32(now + 80);
        assert_eq!(s.sweep(now + 101), 1);
        assert_eq!(s.hello(&u(1), false, None, &[]), Ok(HelloFound::default()));
        assert!(s.wakes.borrow().is_empty());
        assert_eq!(
            s.put(&u(2), &c(2), 5).unwrap(),
            PutResult::Stored {
                node: None,
                wake: None
            }
        );
        assert_eq!(s.sweep(now + 181), 1);
        assert!(s.users.borrow().is_empty() && s.expiry.borrow().is_empty());
        // Without a TTL nothing expires and nothing is queued.
        let forever = MemoryStore::new(100);
        forever.register(&u(1), &c(1), 200).unwrap();
        assert_eq!(forever.sweep(u64::MAX / 2), 0);
        assert!(forever.expiry.borrow().is_empty());
    }

    #[test]
    fn unknown_until_registered() {
        let s = MemoryStore::new(100);
        assert_eq!(s.hello(&u(1), false, None, &[]), Ok(HelloFound::default()));
        assert_eq!(s.put(&u(1), &c(1), 5), Ok(PutResult::UnknownChannel));
        s.register(&u(1), &c(1), 200).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None, &[]),
            Ok(HelloFound {
                known: true,
                ..HelloFound::default()
            })
        );
    }

    #[test]
    fn put_overwrites_and_ack_removes_only_the_same_version() {
        let s = MemoryStore::new(100);
        s.register(&u(1), &c(1), 200).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        s.put(&u(1), &c(1), 3).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None, &[]).unwrap().pending,
            vec![(c(1), 3)]
        );
        s.ack(&u(1), &[(c(1), 5)], &[]).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None, &[]).unwrap().pending,
            vec![(c(1), 3)]
        );
        s.ack(&u(1), &[(c(1), 3)], &[]).unwrap();
        assert_eq!(s.hello(&u(1), false, None, &[]).unwrap().pending, vec![]);
    }

    #[test]
    fn register_again_keeps_pending_and_unregister_drops_it() {
        let s = MemoryStore::new(100);
        s.register(&u(1), &c(1), 200).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        s.register(&u(1), &c(1), 200).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None, &[]).unwrap().pending,
            vec![(c(1), 5)]
        );
        s.unregister(&u(1), &c(1)).unwrap();
        assert_eq!(s.hello(&u(1), false, None, &[]).unwrap().pending, vec![]);
        assert_eq!(s.put(&u(1), &c(1), 6), Ok(PutResult::UnknownChannel));
    }

    #[test]
    fn channels_are_scoped_per_uaid_and_forget_drops_all() {
        let s = MemoryStore::new(100);
        s.register(&u(1), &c(1), 200).unwrap();
        s.register(&u(2), &c(1), 200).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        assert_eq!(s.hello(&u(2), false, None, &[]).unwrap().pending, vec![]);
        assert_eq!(s.hello(&u(1), true, None, &[]), Ok(HelloFound::default()));
        assert_eq!(s.hello(&u(1), false, None, &[]), Ok(HelloFound::default()));
        assert_eq!(
            s.hello(&u(2), false, None, &[]),
            Ok(HelloFound {
                known: true,
                ..HelloFound::default()
            })
        );
    }

    #[test]
    fn several_channels_per_uaid() {
        let s = MemoryStore::new(100);
        for n in 1..=3 {
            s.register(&u(1), &c(n), 200).unwrap();
        }
        s.put(&u(1), &c(1), 10).unwrap();
        s.put(&u(1), &c(3), 30).unwrap();
        let mut got = s.hello(&u(1), false, None, &[]).unwrap().pending;
        got.sort_by_key(|(_, v)| *v);
        assert_eq!(got, vec![(c(1), 10), (c(3), 30)]);
        s.unregister(&u(1), &c(3)).unwrap();
        assert_eq!(s.put(&u(1), &c(3), 31), Ok(PutResult::UnknownChannel));
        assert_eq!(s.pending(&u(1), &c(1)), Ok(Some(10)));
        assert_eq!(s.pending(&u(1), &c(2)), Ok(None));
        s.ack(&u(1), &[(c(1), 10)], &[]).unwrap();
        assert_eq!(s.hello(&u(1), false, None, &[]).unwrap().pending, vec![]);
        // Down to none: still a known UAID.
        s.unregister(&u(1), &c(1)).unwrap();
        s.unregister(&u(1), &c(2)).unwrap();
        assert!(s.hello(&u(1), false, None, &[]).unwrap().known);
    }

    fn m(chan: u8, id: &str, ttl: u64, topic: Option<&str>) -> Message {
        Message {
            channel: c(chan),
            id: id.into(),
            ttl,
            topic: topic.map(str::to_string),
            payload: None,
        }
    }

    fn ids(s: &MemoryStore, uaid: &Uaid) -> Vec<String> {
        let found = s.hello(uaid, false, None, &[]).unwrap();
        found.messages.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn messages_wait_until_acked_and_only_for_registered_channels() {
        let s = MemoryStore::new(100);
        assert_eq!(
            s.put_message(&u(1), &m(1, "a", 60, None)),
            Ok(PutResult::UnknownChannel)
        );
        s.register(&u(1), &c(1), 200).unwrap();
        s.register(&u(1), &c(2), 200).unwrap();
        for (chan, id) in [(1, "a"), (2, "b"), (1, "c")] {
            assert!(matches!(
                s.put_message(&u(1), &m(chan, id, 60, None)),
                Ok(PutResult::Stored { .. })
            ));
        }
        assert_eq!(ids(&s, &u(1)), ["a", "b", "c"]);
        assert_eq!(s.message_pending(&u(1), "b"), Ok(true));
        // An ack names the channel too: the wrong one removes nothing.
        s.ack(&u(1), &[], &[(c(1), "b".into())]).unwrap();
        assert_eq!(ids(&s, &u(1)), ["a", "b", "c"]);
        s.ack(&u(1), &[], &[(c(2), "b".into()), (c(1), "a".into())])
            .unwrap();
        assert_eq!(ids(&s, &u(1)), ["c"]);
        assert_eq!(s.message_pending(&u(1), "b"), Ok(false));
        assert_eq!(s.delete_message(&u(1), "c"), Ok(true));
        assert_eq!(s.delete_message(&u(1), "c"), Ok(false));
        assert!(ids(&s, &u(1)).is_empty());
    }

    /// A message with a 1,000-byte payload.
    fn big(chan: u8, id: &str) -> Message {
        Message {
            payload: Some(("x".repeat(1000), sm::webpush::Encoding::Aes128gcm)),
            ..m(chan, id, 60, None)
        }
    }

    #[test]
    fn a_full_store_refuses_who_filled_it_and_the_budget_is_shared() {
        let total = Arc::new(AtomicUsize::new(0));
        // Two loops' stores, 10,000 bytes between them, 20 messages per UAID (a tenth: 2).
        let a = MemoryStore::with_budget(20, 10_000).sharing(total.clone());
        let b = MemoryStore::with_budget(20, 10_000).sharing(total.clone());
        a.register(&u(1), &c(1), 200).unwrap();
        for n in 2..=8 {
            b.register(&u(n), &c(n), 200).unwrap();
        }
        let stored = |s: &MemoryStore, uaid: u8, id: &str| {
            matches!(
                s.put_message(&u(uaid), &big(uaid, id)),
                Ok(PutResult::Stored { .. })
            )
        };
        // The attacker on loop a fills the process's budget, not a's alone.
        let mut held = 0;
        while stored(&a, 1, &format!("a{held}")) {
            held += 1;
        }
        assert!((8..=10).contains(&held), "{held}");
        // A victim on loop b holding fewer than 2 still gets in, past the budget; at 2 it waits.
        assert!(stored(&b, 2, "v0") && stored(&b, 2, "v1"));
        assert!(!stored(&b, 2, "v2"));
        // Other small holders get in up to a quarter past the budget, and no further.
        for n in 3..=8 {
            stored(&b, n, "w");
        }
        assert!(total.load(Ordering::Relaxed) <= 12_500, "{total:?}");
        assert!(!stored(&a, 1, "more"));
        // Acks give the budget back.
        let ids: Vec<(ChannelId, String)> = (0..held).map(|i| (c(1), format!("a{i}"))).collect();
        a.ack(&u(1), &[], &ids).unwrap();
        assert!(total.load(Ordering::Relaxed) < 10_000);
        assert!(stored(&a, 1, "again"));
    }

    #[test]
    fn topic_replaces_cap_refuses_ttl_zero_stores_nothing() {
        let s = MemoryStore::new(2);
        s.register(&u(1), &c(1), 200).unwrap();
        s.register(&u(1), &c(2), 200).unwrap();
        s.put_message(&u(1), &m(1, "a", 60, Some("t"))).unwrap();
        s.put_message(&u(1), &m(2, "b", 60, Some("t"))).unwrap();
        // Same channel and topic: replaces "a"; the other channel's "t" stays.
        s.put_message(&u(1), &m(1, "c", 60, Some("t"))).unwrap();
        assert_eq!(ids(&s, &u(1)), ["b", "c"]);
        assert_eq!(
            s.put_message(&u(1), &m(1, "d", 60, None)),
            Ok(PutResult::Full)
        );
        // A topic replacement frees its own slot, so it fits even when full.
        assert!(matches!(
            s.put_message(&u(1), &m(1, "e", 60, Some("t"))),
            Ok(PutResult::Stored { .. })
        ));
        assert_eq!(ids(&s, &u(1)), ["b", "e"]);
        s.ack(&u(1), &[], &[(c(2), "b".into())]).unwrap();
        assert!(matches!(
            s.put_message(&u(1), &m(1, "z", 0, None)),
            Ok(PutResult::Stored { .. })
        ));
        assert_eq!(ids(&s, &u(1)), ["e"]);
        // Unregister drops the channel's messages; forget drops everything.
        s.unregister(&u(1), &c(1)).unwrap();
        assert!(ids(&s, &u(1)).is_empty());
        s.put_message(&u(1), &m(2, "f", 60, None)).unwrap();
        s.hello(&u(1), true, None, &[]).unwrap();
        assert_eq!(s.message_pending(&u(1), "f"), Ok(false));
    }

    #[test]
    fn messages_expire_and_count_their_ttl_down() {
        let s = MemoryStore::new(10);
        s.register(&u(1), &c(1), 200).unwrap();
        s.put_message(&u(1), &m(1, "short", 1, None)).unwrap();
        s.put_message(&u(1), &m(1, "long", 600, None)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let found = s.hello(&u(1), false, None, &[]).unwrap().messages;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "long");
        assert!((597..600).contains(&found[0].ttl), "{}", found[0].ttl);
    }

    #[test]
    fn all_messages_together_stay_within_the_byte_budget() {
        let one = m(1, "a", 60, None).size();
        let s = MemoryStore::with_budget(100, 3 * one);
        for n in 1..=3 {
            s.register(&u(n), &c(1), 200).unwrap();
        }
        for n in 1..=3 {
            let id = format!("{n}");
            assert!(matches!(
                s.put_message(&u(n), &m(1, &id, 60, None)),
                Ok(PutResult::Stored { .. })
            ));
        }
        assert_eq!(
            s.put_message(&u(1), &m(1, "4", 60, None)),
            Ok(PutResult::Full)
        );
        // An ack frees room; so does forgetting a UAID.
        s.ack(&u(2), &[], &[(c(1), "2".into())]).unwrap();
        assert!(matches!(
            s.put_message(&u(1), &m(1, "5", 60, None)),
            Ok(PutResult::Stored { .. })
        ));
        assert_eq!(
            s.put_message(&u(1), &m(1, "6", 60, None)),
            Ok(PutResult::Full)
        );
        s.hello(&u(3), true, None, &[]).unwrap();
        assert!(matches!(
            s.put_message(&u(1), &m(1, "7", 60, None)),
            Ok(PutResult::Stored { .. })
        ));
    }
}
