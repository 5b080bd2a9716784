//! Client messages in: one WebSocket payload becomes a typed [`Inbound`] (protocol.md 3.1).

use serde_json::{Map, Value};

use crate::broadcast::{self, Subscriptions};
use crate::ids::{ChannelId, Id, Uaid};
use crate::wake::Wake;
use crate::webpush::AppKey;

/// Ack items taken from one frame: a device never has more than a few hundred things waiting
/// (200 channels, 100 WebPush messages); the rest of a larger ack is ignored.
pub const MAX_ACK_ITEMS: usize = 512;

/// The `uaid` a hello carried.
#[derive(Clone, Debug, PartialEq)]
pub enum HelloUaid {
    /// Missing, null or `""`: the client asks for a new UAID.
    Empty,
    /// A well-formed UAID.
    Valid(Uaid),
    /// Present but not UUID-shaped (503 in pushgo 1.4).
    Invalid,
}

/// A parsed `hello`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    /// The UAID the client offers.
    pub uaid: HelloUaid,
    /// The length of `channelIDs`, or `None` when the key is missing or null.
    pub channel_count: Option<usize>,
    /// The well-formed ids among `channelIDs` (a store that lost data re-creates them).
    pub channels: Vec<ChannelId>,
    /// The autopush/Firefox `use_webpush` flag.
    pub use_webpush: bool,
    /// The broadcasts the client follows, with the versions it has (`None`: no `broadcasts`).
    pub broadcasts: Option<Subscriptions>,
    /// How the device can be woken while offline, if it said.
    pub wake: Option<Wake>,
}

/// The version an ack names: a SimplePush number, or a WebPush message id.
#[derive(Clone, Debug, PartialEq)]
pub enum AckVersion {
    /// SimplePush: the integer version.
    Number(u64),
    /// WebPush: the message id, echoed as received.
    Message(String),
}

impl std::fmt::Display for AckVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckVersion::Number(n) => write!(f, "{n}"),
            AckVersion::Message(id) => f.write_str(id),
        }
    }
}

/// The `key` of a register (WebPush): the app server's VAPID public key.
#[derive(Clone, Debug, PartialEq)]
pub enum RegisterKey {
    /// No key: a v1 endpoint.
    None,
    /// A well-formed key: a v2 endpoint bound to it.
    Valid(AppKey),
    /// A key that is not a base64url uncompressed P-256 point.
    Invalid,
}

/// One `{channelID, version}` of an ack.
#[derive(Clone, Debug, PartialEq)]
pub struct AckItem {
    /// The acknowledged channel.
    pub channel_id: ChannelId,
    /// The acknowledged version.
    pub version: AckVersion,
    /// Firefox's delivery code (100 delivered, 101 decryption error, 102 not delivered).
    pub code: Option<u64>,
}

/// What a client message asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// `{}` or `ping`.
    Ping,
    /// The test suite's `purge`.
    Purge,
    /// The handshake.
    Hello(Hello),
    /// Register a channel; the id is already validated.
    Register {
        /// The new channel.
        channel: ChannelId,
        /// The app server's key, for WebPush.
        key: RegisterKey,
    },
    /// Unregister a channel, as the client spelled it; `id` is `None` when it is not UUID-shaped.
    Unregister {
        /// The channelID exactly as sent, for the reply.
        raw: String,
        /// The parsed id, when it parses.
        id: Option<ChannelId>,
    },
    /// Acknowledge updates; items without a usable channelID or version are dropped.
    Ack(Vec<AckItem>),
    /// Firefox's `broadcast_subscribe`: more broadcasts to follow, with the versions the client has.
    BroadcastSubscribe(Subscriptions),
    /// Firefox's `nack`: its service worker failed on a message. Accepted; the message stays stored.
    Nack,
}

/// Why a payload was not turned into an [`Inbound`].
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// A zero-length payload: skipped.
    Empty,
    /// Not JSON, or JSON that is not an object: close without a reply.
    Malformed,
    /// A JSON object the server refuses: echo it with 401 and close.
    Invalid,
}

/// A parsed message: what it asks for, and the object itself for error echoes.
#[derive(Clone, Debug)]
pub struct Request {
    /// The meaning.
    pub kind: Inbound,
    /// The object as received, echoed back in an error reply.
    pub raw: Map<String, Value>,
}

/// A payload that failed to parse as a command but was a JSON object, kept for the echo.
#[derive(Clone, Debug)]
pub struct Refused {
    /// Why.
    pub rejection: Rejection,
    /// The object, when there was one.
    pub raw: Option<Map<String, Value>>,
}

/// Looks a key up the way Go's `encoding/json` does: an exact match first, then ASCII case-folded.
/// A JSON `null` reads as absent.
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let found = obj.get(name).or_else(|| {
        obj.iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    });
    found.filter(|v| !v.is_null())
}

/// Parses one text or binary payload.
pub fn parse(payload: &[u8]) -> Result<Request, Refused> {
    let refuse = |rejection, raw| Err(Refused { rejection, raw });
    if payload.is_empty() {
        return refuse(Rejection::Empty, None);
    }
    let raw = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => map,
        _ => return refuse(Rejection::Malformed, None),
    };
    if raw.is_empty() {
        return Ok(Request {
            kind: Inbound::Ping,
            raw,
        });
    }
    match classify(&raw) {
        Some(kind) => Ok(Request { kind, raw }),
        None => refuse(Rejection::Invalid, Some(raw)),
    }
}

fn classify(obj: &Map<String, Value>) -> Option<Inbound> {
    let kind = match field(obj, "messageType") {
        None => return None,
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(_) => return None,
    };
    match kind.as_str() {
        "ping" => Some(Inbound::Ping),
        "purge" => Some(Inbound::Purge),
        "hello" => hello(obj).map(Inbound::Hello),
        "register" => register(obj),
        "unregister" => unregister(obj),
        "ack" => ack(obj),
        "broadcast_subscribe" => Some(Inbound::BroadcastSubscribe(
            broadcast::parse(field(obj, "broadcasts")).unwrap_or_default(),
        )),
        "nack" => Some(Inbound::Nack),
        _ => None,
    }
}

fn hello(obj: &Map<String, Value>) -> Option<Hello> {
    let uaid = match field(obj, "uaid") {
        None => HelloUaid::Empty,
        Some(Value::String(s)) if s.is_empty() => HelloUaid::Empty,
        Some(Value::String(s)) => {
            Id::parse(s).map_or(HelloUaid::Invalid, |id| HelloUaid::Valid(Uaid(id)))
        }
        Some(_) => return None,
    };
    let (channel_count, channels) = match field(obj, "channelIDs") {
        None => (None, Vec::new()),
        Some(Value::Array(list)) => {
            let ids = list
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Id::parse)
                .map(ChannelId)
                .collect();
            (Some(list.len()), ids)
        }
        Some(_) => return None,
    };
    let use_webpush = match field(obj, "use_webpush") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    Some(Hello {
        uaid,
        channel_count,
        channels,
        use_webpush,
        broadcasts: broadcast::parse(field(obj, "broadcasts")),
        wake: Wake::parse(
            field(obj, "connect"),
            field(obj, "wakeup_hostport"),
            field(obj, "mobilenetwork"),
        ),
    })
}

fn register(obj: &Map<String, Value>) -> Option<Inbound> {
    let channel = match field(obj, "channelID") {
        Some(Value::String(s)) => ChannelId(Id::parse(s)?),
        _ => return None,
    };
    let key = match field(obj, "key") {
        None => RegisterKey::None,
        Some(Value::String(s)) => AppKey::parse(s).map_or(RegisterKey::Invalid, RegisterKey::Valid),
        Some(_) => RegisterKey::Invalid,
    };
    Some(Inbound::Register { channel, key })
}

fn unregister(obj: &Map<String, Value>) -> Option<Inbound> {
    match field(obj, "channelID") {
        Some(Value::String(s)) if !s.is_empty() => Some(Inbound::Unregister {
            raw: s.clone(),
            id: Id::parse(s).map(ChannelId),
        }),
        _ => None,
    }
}

fn ack(obj: &Map<String, Value>) -> Option<Inbound> {
    let list = match field(obj, "updates") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return None,
    };
    let mut items = Vec::with_capacity(list.len().min(MAX_ACK_ITEMS));
    for entry in list {
        let Value::Object(item) = entry else {
            return None;
        };
        match ack_item(item)? {
            // Beyond what any device waits for: dropped, so that one frame costs the store little.
            Some(_) if items.len() >= MAX_ACK_ITEMS => {}
            Some(parsed) => items.push(parsed),
            None => {}
        }
    }
    Some(Inbound::Ack(items))
}

/// `None`: a field of the wrong type (the whole ack is invalid). `Some(None)`: an item to skip.
fn ack_item(item: &Map<String, Value>) -> Option<Option<AckItem>> {
    let chid = match field(item, "channelID") {
        None => None,
        Some(Value::String(s)) => Id::parse(s).map(ChannelId),
        Some(_) => return None,
    };
    let version = match field(item, "version") {
        None => None,
        Some(Value::Number(n)) => Some(AckVersion::Number(n.as_u64()?)),
        // WebPush message ids; a SimplePush session refuses them.
        Some(Value::String(s)) if !s.is_empty() => Some(AckVersion::Message(s.clone())),
        Some(_) => return None,
    };
    let code = match field(item, "code") {
        None => None,
        Some(Value::Number(n)) => Some(n.as_u64()?),
        Some(_) => return None,
    };
    Some(match (chid, version) {
        (Some(channel_id), Some(version)) => Some(AckItem {
            channel_id,
            version,
            code,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHID: &str = "0cb8a613-8e2b-4b47-b370-51098daa8401";

    fn kind(s: &str) -> Inbound {
        parse(s.as_bytes()).expect(s).kind
    }

    fn rejection(s: &str) -> Rejection {
        parse(s.as_bytes()).expect_err(s).rejection
    }

    #[test]
    fn empty_payload_is_skipped() {
        assert_eq!(rejection(""), Rejection::Empty);
    }

    #[test]
    fn empty_object_is_a_ping_with_or_without_spaces() {
        assert_eq!(kind("{}"), Inbound::Ping);
        assert_eq!(kind("{ }"), Inbound::Ping);
        assert_eq!(kind(r#"{"messageType":"PING","x":1}"#), Inbound::Ping);
    }

    #[test]
    fn invalid_json_and_non_objects_are_malformed() {
        for s in ["banana", "[]", "\"hello\"", "12", "null", "{\"a\":", "[{}]"] {
            assert_eq!(rejection(s), Rejection::Malformed, "{s}");
        }
        assert_eq!(
            parse(&[0xff, 0xfe]).unwrap_err().rejection,
            Rejection::Malformed
        );
    }

    #[test]
    fn bad_message_types_are_invalid_and_keep_the_object() {
        for s in [
            r#"{"messageType":123}"#,
            r#"{"messageType":null}"#,
            r#"{"messageType":""}"#,
            r#"{"messageType":"bogus"}"#,
            r#"{"other":"hello"}"#,
            r#"{" messageType ":"hello","channelIDs":[]}"#,
        ] {
            let r = parse(s.as_bytes()).unwrap_err();
            assert_eq!(r.rejection, Rejection::Invalid, "{s}");
            assert!(r.raw.is_some());
        }
    }

    #[test]
    fn types_and_keys_match_case_insensitively() {
        let k = kind(r#"{"MESSAGETYPE":"HeLLo","UAID":"","ChannelIds":[]}"#);
        assert_eq!(
            k,
            Inbound::Hello(Hello {
                uaid: HelloUaid::Empty,
                channel_count: Some(0),
                channels: Vec::new(),
                use_webpush: false,
                broadcasts: None,
                wake: None
            })
        );
        let k = kind(&format!(
            r#"{{"messagetype":"REGISTER","channelid":"{CHID}"}}"#
        ));
        assert!(matches!(
            k,
            Inbound::Register {
                key: RegisterKey::None,
                ..
            }
        ));
    }

    #[test]
    fn exact_key_wins_over_folded_key() {
        let k = kind(r#"{"messageType":"ping","MessageType":"bogus"}"#);
        assert_eq!(k, Inbound::Ping);
    }

    #[test]
    fn hello_keeps_the_well_formed_channel_ids() {
        let k = kind(&format!(
            r#"{{"messageType":"hello","uaid":"","channelIDs":["{CHID}","bad",7]}}"#
        ));
        let Inbound::Hello(h) = k else {
            panic!("{k:?}")
        };
        assert_eq!(h.channel_count, Some(3));
        assert_eq!(h.channels.len(), 1);
        assert_eq!(h.channels[0].to_string(), CHID);
    }

    #[test]
    fn hello_fields() {
        let k = kind(r#"{"messageType":"hello","uaid":"nope","channelIDs":["a","b"]}"#);
        assert_eq!(
            k,
            Inbound::Hello(Hello {
                uaid: HelloUaid::Invalid,
                channel_count: Some(2),
                channels: Vec::new(),
                use_webpush: false,
                broadcasts: None,
                wake: None
            })
        );
        let k = kind(r#"{"messageType":"hello","use_webpush":true,"broadcasts":{"a":"1"}}"#);
        assert_eq!(
            k,
            Inbound::Hello(Hello {
                uaid: HelloUaid::Empty,
                channel_count: None,
                channels: Vec::new(),
                use_webpush: true,
                broadcasts: Some(vec![("a".into(), "1".into())]),
                wake: None
            })
        );
        let k = kind(r#"{"messageType":"hello","uaid":null,"channelIDs":null}"#);
        assert!(matches!(
            k,
            Inbound::Hello(Hello {
                channel_count: None,
                ..
            })
        ));
    }

    #[test]
    fn hello_fields_of_the_wrong_type_are_invalid() {
        for s in [
            r#"{"messageType":"hello","uaid":5,"channelIDs":[]}"#,
            r#"{"messageType":"hello","channelIDs":"x"}"#,
            r#"{"messageType":"hello","channelIDs":[],"use_webpush":"yes"}"#,
        ] {
            assert_eq!(rejection(s), Rejection::Invalid, "{s}");
        }
    }

    #[test]
    fn register_needs_a_uuid_channel_id() {
        for s in [
            r#"{"messageType":"register"}"#,
            r#"{"messageType":"register","channelID":""}"#,
            r#"{"messageType":"register","channelID":5}"#,
            r#"{"messageType":"register","channelID":"0cb8a6138e2b4b47b37051098daa8401ab"}"#,
            r#"{"messageType":"register","channelIDs":["0cb8a613-8e2b-4b47-b370-51098daa8401"]}"#,
        ] {
            assert_eq!(rejection(s), Rejection::Invalid, "{s}");
        }
    }

    #[test]
    fn unregister_needs_a_non_empty_string() {
        assert_eq!(
            rejection(r#"{"messageType":"unregister"}"#),
            Rejection::Invalid
        );
        assert_eq!(
            rejection(r#"{"messageType":"unregister","channelID":""}"#),
            Rejection::Invalid
        );
        assert_eq!(
            rejection(r#"{"messageType":"unregister","channelID":7}"#),
            Rejection::Invalid
        );
        assert_eq!(
            kind(r#"{"messageType":"unregister","channelID":"abc"}"#),
            Inbound::Unregister {
                raw: "abc".into(),
                id: None
            }
        );
    }

    #[test]
    fn ack_items() {
        let s = format!(
            r#"{{"messageType":"ack","updates":[{{"channelID":"{CHID}","version":5,"code":100}},{{"channelID":"{CHID}"}},{{"channelID":"nope","version":1}}]}}"#
        );
        let Inbound::Ack(items) = kind(&s) else {
            panic!("not an ack")
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].version, AckVersion::Number(5));
        assert_eq!(items[0].code, Some(100));
    }

    #[test]
    fn huge_acks_are_cut_to_the_limit() {
        let item = format!(r#"{{"channelID":"{CHID}","version":1}}"#);
        let s = format!(
            r#"{{"messageType":"ack","updates":[{}]}}"#,
            vec![item; MAX_ACK_ITEMS + 100].join(",")
        );
        let Inbound::Ack(items) = kind(&s) else {
            panic!("not an ack")
        };
        assert_eq!(items.len(), MAX_ACK_ITEMS);
    }

    #[test]
    fn ack_without_updates_or_with_wrong_types_is_invalid() {
        for s in [
            r#"{"messageType":"ack"}"#,
            r#"{"messageType":"ack","updates":[]}"#,
            r#"{"messageType":"ack","updates":"x"}"#,
            r#"{"messageType":"ack","updates":[5]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":5,"version":1}]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"x","version":""}]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"x","version":true}]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"x","version":-1}]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"x","version":1.5}]}"#,
        ] {
            assert_eq!(rejection(s), Rejection::Invalid, "{s}");
        }
    }

    #[test]
    fn broadcast_subscribe_is_accepted() {
        assert_eq!(
            kind(r#"{"messageType":"broadcast_subscribe","broadcasts":{"a":"1"}}"#),
            Inbound::BroadcastSubscribe(vec![("a".into(), "1".into())])
        );
        assert_eq!(
            kind(r#"{"messageType":"broadcast_subscribe"}"#),
            Inbound::BroadcastSubscribe(vec![])
        );
    }

    #[test]
    fn register_keys() {
        let key = format!("BA{}", "A".repeat(85));
        let k = kind(&format!(
            r#"{{"messageType":"register","channelID":"{CHID}","key":"{key}="}}"#
        ));
        assert!(matches!(
            k,
            Inbound::Register {
                key: RegisterKey::Valid(_),
                ..
            }
        ));
        for bad in [r#""abc""#, "5", r#""""#] {
            let k = kind(&format!(
                r#"{{"messageType":"register","channelID":"{CHID}","key":{bad}}}"#
            ));
            assert!(
                matches!(
                    k,
                    Inbound::Register {
                        key: RegisterKey::Invalid,
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn webpush_acks_carry_message_ids_and_nack_is_accepted() {
        let s = format!(
            r#"{{"messageType":"ack","updates":[{{"channelID":"{CHID}","version":"msg-1","code":100}}]}}"#
        );
        let Inbound::Ack(items) = kind(&s) else {
            panic!("not an ack")
        };
        assert_eq!(items[0].version, AckVersion::Message("msg-1".into()));
        assert_eq!(
            kind(r#"{"messageType":"nack","version":"x","code":301}"#),
            Inbound::Nack
        );
    }
}
