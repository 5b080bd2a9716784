//! The channels a socket has seen the store accept, so that an update for one of them can be
//! written to the socket before the store answers (`Server::submit_here`).
//!
//! Sessions keep no channel list (an idle socket stays small), and an update for a channel that
//! is not registered must never reach the device. So a socket remembers the last two channels it
//! registered or received a stored update for, as 64-bit folds of their IDs: 16 bytes. An update
//! for any other channel waits for the store as before. A fold can only collide with another
//! channel of the same socket, and the store still answers the app server for it.

use sm::{ChannelId, Uaid};

use super::{Conn, Server, State, WsConn};

/// The last two channels of one socket known to be registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KnownChannels([u64; 2]);

/// A channel's 64-bit fold; never 0, which marks an empty slot.
fn fold(channel: &ChannelId) -> u64 {
    let b = channel.0.bytes();
    let (mut hi, mut lo) = ([0u8; 8], [0u8; 8]);
    hi.copy_from_slice(&b[..8]);
    lo.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(hi) ^ u64::from_le_bytes(lo).rotate_left(29)).max(1)
}

impl KnownChannels {
    /// Whether the channel is one of the two remembered.
    pub(super) fn knows(&self, channel: &ChannelId) -> bool {
        self.0.contains(&fold(channel))
    }

    /// Remembers a channel, forgetting the older of the two.
    pub(super) fn add(&mut self, channel: &ChannelId) {
        let f = fold(channel);
        if self.0[0] != f {
            self.0 = [f, self.0[0]];
        }
    }

    /// Forgets a channel (it is being unregistered).
    pub(super) fn forget(&mut self, channel: &ChannelId) {
        let f = fold(channel);
        for slot in &mut self.0 {
            if *slot == f {
                *slot = 0;
            }
        }
    }
}

impl Server {
    /// The socket bound to this UAID here, if any.
    fn bound_socket(&mut self, uaid: &Uaid) -> Option<&mut WsConn> {
        let key = self.registry.get(uaid)?;
        match self.conns.get_mut(key) {
            Some(Conn {
                state: State::Ws(w),
                ..
            }) if w.bound == Some(*uaid) => Some(w),
            _ => None,
        }
    }

    /// Whether the UAID's socket here knows the channel is registered.
    pub(super) fn knows_channel(&mut self, uaid: &Uaid, channel: &ChannelId) -> bool {
        self.bound_socket(uaid)
            .is_some_and(|w| w.known.knows(channel))
    }

    /// The store accepted an update for the channel and the UAID's socket here took it.
    pub(super) fn remember_channel(&mut self, uaid: &Uaid, channel: &ChannelId) {
        if let Some(w) = self.bound_socket(uaid) {
            w.known.add(channel);
        }
    }

    /// The socket `key` is unregistering the channel.
    pub(super) fn forget_channel(&mut self, key: usize, channel: &ChannelId) {
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            w.known.forget(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::Id;

    fn ch(n: u8) -> ChannelId {
        let mut b = [0u8; 16];
        b[3] = n;
        b[12] = n.wrapping_mul(7);
        ChannelId(Id::fresh(b))
    }

    #[test]
    fn remembers_the_last_two_and_forgets_on_request() {
        let mut k = KnownChannels::default();
        assert!(!k.knows(&ch(1)));
        k.add(&ch(1));
        k.add(&ch(2));
        assert!(k.knows(&ch(1)) && k.knows(&ch(2)));
        k.add(&ch(2));
        assert!(
            k.knows(&ch(1)),
            "adding the newest again keeps the older one"
        );
        k.add(&ch(3));
        assert!(!k.knows(&ch(1)) && k.knows(&ch(2)) && k.knows(&ch(3)));
        k.forget(&ch(3));
        assert!(!k.knows(&ch(3)) && k.knows(&ch(2)));
    }

    #[test]
    fn an_idle_connection_stays_small() {
        // Every idle socket pays for a `Conn`: 168 bytes before these 16.
        let size = std::mem::size_of::<crate::server::Conn>();
        assert!(size <= 184, "size_of::<Conn>() = {size}");
    }

    #[test]
    fn an_all_zero_channel_is_not_taken_for_an_empty_slot() {
        let zero = ChannelId(Id::fresh([0; 16]));
        let k = KnownChannels::default();
        assert!(!k.knows(&zero));
    }
}
