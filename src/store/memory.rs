//! The embedded store: everything in one process's memory, lost on restart.

use std::cell::RefCell;
use std::collections::HashMap;

use sm::{ChannelId, Message, Uaid};

use crate::metrics::{track, track_drop, Drop, Event};

use super::{now_secs, Backend, HelloFound, PutResult, StoredMessage, Unavailable};

/// "Nothing pending": versions are never 0 (an update's 0 means "now").
const NONE: u64 = 0;

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
    users: RefCell<HashMap<Uaid, Channels>>,
    /// UAID → its waiting WebPush messages, oldest first. Apart from `users`, so that the
    /// SimplePush devices (most of them) pay nothing for it.
    messages: RefCell<HashMap<Uaid, Vec<StoredMessage>>>,
    /// Waiting messages allowed per UAID.
    max_messages: usize,
    /// UAID → how its device can be woken (only devices that said so).
    wakes: RefCell<HashMap<Uaid, Box<str>>>,
    /// Bytes held by waiting messages, all UAIDs together.
    message_bytes: std::cell::Cell<usize>,
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
            messages: RefCell::default(),
            max_messages,
            wakes: RefCell::default(),
            message_bytes: std::cell::Cell::new(0),
            max_message_bytes,
        }
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
        let total = self.message_bytes.get() + after;
        self.message_bytes.set(total.saturating_sub(before));
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
            self.users.borrow_mut().remove(uaid);
            if let Some(list) = self.messages.borrow_mut().remove(uaid) {
                let total = self.message_bytes.get();
                self.message_bytes
                    .set(total.saturating_sub(list_bytes(&list)));
            }
            self.wakes.borrow_mut().remove(uaid);
            return Ok(HelloFound::default());
        }
        let pending = match self.users.borrow().get(uaid) {
            Some(channels) => channels.pending(),
            None => return Ok(HelloFound::default()),
        };
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
        let v = users.get_mut(uaid).and_then(|c| c.get_mut(channel));
        Ok(v.map(|v| *v).filter(|v| *v != NONE))
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable> {
        let mut users = self.users.borrow_mut();
        let channels = users.entry(*uaid).or_default();
        if !channels.contains(channel) && channels.len() >= max {
            return Ok(false);
        }
        channels.insert_if_absent(*channel);
        Ok(true)
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        if let Some(channels) = self.users.borrow_mut().get_mut(uaid) {
            channels.remove(channel);
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
        let Some(channels) = users.get_mut(uaid) else {
            return Ok(());
        };
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
        let slot = users.get_mut(uaid).and_then(|c| c.get_mut(channel));
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
            .is_some_and(|c| c.contains(&msg.channel));
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
            let over_budget = self.message_bytes.get() + stored.msg.size() > self.max_message_bytes;
            if list.len() >= max || over_budget {
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
