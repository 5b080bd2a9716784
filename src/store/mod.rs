//! Storage of registrations and pending versions, behind one trait.
//!
//! The event loop calls these methods directly, so an implementation must answer without blocking;
//! the embedded memory store does. A networked store answers through a queue (memcached issue).

pub mod memory;

use sm::{ChannelId, StoreOp, StoreReply, Uaid};

/// A store that could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What became of a stored update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// The version is stored for the channel.
    Stored,
    /// No such channel under that UAID (never registered, unregistered, or forgotten).
    UnknownChannel,
}

/// Registrations and pending versions, one per (UAID, channel).
pub trait Store {
    /// Whether the UAID is known, and its pending versions; with `forget`, drop it first.
    fn hello(
        &mut self,
        uaid: &Uaid,
        forget: bool,
    ) -> Result<(bool, Vec<(ChannelId, u64)>), Unavailable>;
    /// Records a channel; an existing one keeps its pending version.
    fn register(&mut self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable>;
    /// Forgets a channel and its pending version.
    fn unregister(&mut self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable>;
    /// Drops each pending version that equals the acked one.
    fn ack(&mut self, uaid: &Uaid, items: &[(ChannelId, u64)]) -> Result<(), Unavailable>;
    /// Stores a version for a registered channel, overwriting any older or newer one.
    fn put(
        &mut self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Unavailable>;
    /// Whether the store can serve requests now.
    fn healthy(&self) -> bool;
}

/// Runs a session's storage operation; `endpoint` mints the URL for a register.
pub fn execute(
    store: &mut dyn Store,
    op: &StoreOp,
    endpoint: impl FnOnce(&Uaid, &ChannelId) -> String,
) -> StoreReply {
    let done = |r: Result<(), Unavailable>| match r {
        Ok(()) => StoreReply::Done,
        Err(Unavailable) => StoreReply::Unavailable,
    };
    match op {
        StoreOp::Hello { uaid, forget } => match store.hello(uaid, *forget) {
            Ok((known, pending)) => StoreReply::Hello { known, pending },
            Err(Unavailable) => StoreReply::Unavailable,
        },
        StoreOp::Register { uaid, channel } => match store.register(uaid, channel) {
            Ok(()) => StoreReply::Registered {
                endpoint: endpoint(uaid, channel),
            },
            Err(Unavailable) => StoreReply::Unavailable,
        },
        StoreOp::Unregister { uaid, channel } => done(store.unregister(uaid, channel)),
        StoreOp::Ack { uaid, items } => done(store.ack(uaid, items)),
    }
}
