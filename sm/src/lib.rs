//! The SimplePush protocol as a pure, deterministic state machine.
//!
//! No sockets, clocks, threads or storage live here: the server feeds parsed client messages,
//! the time and storage answers in, and carries out the [`session::Effect`]s that come out.

pub mod broadcast;
pub mod ids;
pub mod message;
pub mod reply;
pub mod session;
pub mod update;
pub mod wake;
pub mod webpush;

pub use ids::{ChannelId, Id, IdForm, Uaid};
pub use message::{parse, Inbound, Refused, Rejection, Request};
pub use session::{Effect, EndpointKind, Limits, Origin, Session, StoreOp, StoreReply};
pub use webpush::{AppKey, Message};
