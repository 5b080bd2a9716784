//! The answer to a register the server turns away because its source creates registrations, or
//! UAIDs, too fast (its per-source rate limit: the server decides, the session answers).
//!
//! Status 429 in the register reply, as for too many channels: the page's subscribe fails, the
//! socket and the other channels carry on, and the client may try again later.

use super::{Effect, Session};
use crate::message::{Inbound, Request};
use crate::reply::{self, ErrorStatus};

impl Session {
    /// Answers `req`, a register the server refuses for now. A register before hello (or any
    /// other command: a caller's mistake) is an invalid command, as it would be anyway.
    pub fn throttled(&mut self, req: Request) -> Vec<Effect> {
        let Request { kind, raw } = req;
        match kind {
            Inbound::Register { channel, .. } if self.uaid().is_some() => {
                vec![Effect::Send(reply::register_error(
                    &channel,
                    429,
                    "Too many registrations from this address: try again later",
                ))]
            }
            _ => self.closing(super::fail(raw, ErrorStatus::InvalidCommand)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse;
    use crate::session::Limits;
    use serde_json::json;

    const C1: &str = "0cb8a613-8e2b-4b47-b370-51098daa8401";

    fn req(v: serde_json::Value) -> Request {
        parse(v.to_string().as_bytes()).unwrap()
    }

    fn sent(effects: &[Effect]) -> serde_json::Value {
        match &effects[0] {
            Effect::Send(text) => serde_json::from_str(text).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_register_gets_429_and_the_socket_stays() {
        let mut s = Session::new();
        let hello = req(json!({"messageType":"hello","uaid":"","channelIDs":[]}));
        s.handle(hello, &Limits::default(), 1, &mut || [7; 16]);
        let uaid = s.uaid();
        assert!(uaid.is_some());
        let out = s.throttled(req(json!({"messageType":"register","channelID":C1})));
        assert_eq!(out.len(), 1);
        let v = sent(&out);
        assert_eq!(
            (v["status"].clone(), v["channelID"].clone()),
            (json!(429), json!(C1))
        );
        assert_eq!(s.uaid(), uaid);
        assert!(!s.is_closed());
    }

    #[test]
    fn before_hello_it_is_the_invalid_command_it_always_was() {
        let mut s = Session::new();
        let out = s.throttled(req(json!({"messageType":"register","channelID":C1})));
        assert_eq!(
            (sent(&out)["status"].clone(), &out[1]),
            (json!(401), &Effect::Close)
        );
        assert!(s.is_closed());
    }
}
