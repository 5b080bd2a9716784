//! The embedded store: everything in one process's memory, lost on restart.

use std::cell::RefCell;
use std::collections::HashMap;

use sm::{ChannelId, Uaid};

use super::{Backend, HelloFound, PutResult, Unavailable};

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

/// Registrations and pending versions; used from the loop's thread only.
#[derive(Default)]
pub struct MemoryStore {
    /// UAID → its channels and their pending versions.
    users: RefCell<HashMap<Uaid, Channels>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Backend for MemoryStore {
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        _node: Option<&str>,
    ) -> Result<HelloFound, Unavailable> {
        if forget {
            self.users.borrow_mut().remove(uaid);
            return Ok(HelloFound::default());
        }
        let users = self.users.borrow();
        let Some(channels) = users.get(uaid) else {
            return Ok(HelloFound::default());
        };
        let pending = channels.pending();
        Ok(HelloFound {
            known: true,
            pending,
            previous_node: None,
        })
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let mut users = self.users.borrow_mut();
        let v = users.get_mut(uaid).and_then(|c| c.get_mut(channel));
        Ok(v.map(|v| *v).filter(|v| *v != NONE))
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        self.users
            .borrow_mut()
            .entry(*uaid)
            .or_default()
            .insert_if_absent(*channel);
        Ok(())
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        if let Some(channels) = self.users.borrow_mut().get_mut(uaid) {
            channels.remove(channel);
        }
        Ok(())
    }

    fn ack(&self, uaid: &Uaid, items: &[(ChannelId, u64)]) -> Result<(), Unavailable> {
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
                PutResult::Stored { node: None }
            }
            None => PutResult::UnknownChannel,
        })
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
        let s = MemoryStore::new();
        assert_eq!(s.hello(&u(1), false, None), Ok(HelloFound::default()));
        assert_eq!(s.put(&u(1), &c(1), 5), Ok(PutResult::UnknownChannel));
        s.register(&u(1), &c(1)).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None),
            Ok(HelloFound {
                known: true,
                ..HelloFound::default()
            })
        );
    }

    #[test]
    fn put_overwrites_and_ack_removes_only_the_same_version() {
        let s = MemoryStore::new();
        s.register(&u(1), &c(1)).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        s.put(&u(1), &c(1), 3).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None).unwrap().pending,
            vec![(c(1), 3)]
        );
        s.ack(&u(1), &[(c(1), 5)]).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None).unwrap().pending,
            vec![(c(1), 3)]
        );
        s.ack(&u(1), &[(c(1), 3)]).unwrap();
        assert_eq!(s.hello(&u(1), false, None).unwrap().pending, vec![]);
    }

    #[test]
    fn register_again_keeps_pending_and_unregister_drops_it() {
        let s = MemoryStore::new();
        s.register(&u(1), &c(1)).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        s.register(&u(1), &c(1)).unwrap();
        assert_eq!(
            s.hello(&u(1), false, None).unwrap().pending,
            vec![(c(1), 5)]
        );
        s.unregister(&u(1), &c(1)).unwrap();
        assert_eq!(s.hello(&u(1), false, None).unwrap().pending, vec![]);
        assert_eq!(s.put(&u(1), &c(1), 6), Ok(PutResult::UnknownChannel));
    }

    #[test]
    fn channels_are_scoped_per_uaid_and_forget_drops_all() {
        let s = MemoryStore::new();
        s.register(&u(1), &c(1)).unwrap();
        s.register(&u(2), &c(1)).unwrap();
        s.put(&u(1), &c(1), 5).unwrap();
        assert_eq!(s.hello(&u(2), false, None).unwrap().pending, vec![]);
        assert_eq!(s.hello(&u(1), true, None), Ok(HelloFound::default()));
        assert_eq!(s.hello(&u(1), false, None), Ok(HelloFound::default()));
        assert_eq!(
            s.hello(&u(2), false, None),
            Ok(HelloFound {
                known: true,
                ..HelloFound::default()
            })
        );
    }

    #[test]
    fn several_channels_per_uaid() {
        let s = MemoryStore::new();
        for n in 1..=3 {
            s.register(&u(1), &c(n)).unwrap();
        }
        s.put(&u(1), &c(1), 10).unwrap();
        s.put(&u(1), &c(3), 30).unwrap();
        let mut got = s.hello(&u(1), false, None).unwrap().pending;
        got.sort_by_key(|(_, v)| *v);
        assert_eq!(got, vec![(c(1), 10), (c(3), 30)]);
        s.unregister(&u(1), &c(3)).unwrap();
        assert_eq!(s.put(&u(1), &c(3), 31), Ok(PutResult::UnknownChannel));
        assert_eq!(s.pending(&u(1), &c(1)), Ok(Some(10)));
        assert_eq!(s.pending(&u(1), &c(2)), Ok(None));
        s.ack(&u(1), &[(c(1), 10)]).unwrap();
        assert_eq!(s.hello(&u(1), false, None).unwrap().pending, vec![]);
        // Down to none: still a known UAID.
        s.unregister(&u(1), &c(1)).unwrap();
        s.unregister(&u(1), &c(2)).unwrap();
        assert!(s.hello(&u(1), false, None).unwrap().known);
    }
}
