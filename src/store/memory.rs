//! The embedded store: everything in one process's memory, lost on restart.

use std::cell::RefCell;
use std::collections::HashMap;

use sm::{ChannelId, Uaid};

use super::{Backend, HelloFound, PutResult, Unavailable};

type Users = HashMap<Uaid, HashMap<ChannelId, Option<u64>>>;

/// Registrations and pending versions in hash maps; used from the loop's thread only.
#[derive(Default)]
pub struct MemoryStore {
    /// UAID → (channel → pending version, if any).
    users: RefCell<Users>,
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
        let pending = channels
            .iter()
            .filter_map(|(c, v)| v.map(|v| (*c, v)))
            .collect();
        Ok(HelloFound {
            known: true,
            pending,
            previous_node: None,
        })
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let users = self.users.borrow();
        Ok(users
            .get(uaid)
            .and_then(|c| c.get(channel))
            .copied()
            .flatten())
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        self.users
            .borrow_mut()
            .entry(*uaid)
            .or_default()
            .entry(*channel)
            .or_insert(None);
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
                if *pending == Some(*version) {
                    *pending = None;
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
                *pending = Some(version);
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
}
