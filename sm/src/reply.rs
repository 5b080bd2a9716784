//! Server messages out: the exact JSON text of every reply (protocol.md 3.2-3.6).

use serde_json::{json, Map, Value};

use crate::ids::{ChannelId, Uaid};
use crate::webpush::{Encoding, Message};

/// The text of a pong (and of a purge reply).
pub const PONG: &str = "{}";

/// An error status of the WebSocket protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStatus {
    /// Anything the client did wrong.
    InvalidCommand,
    /// A bad UAID, a UAID conflict on the socket, or storage trouble.
    ServiceUnavailable,
}

impl ErrorStatus {
    fn code_and_text(self) -> (u16, &'static str) {
        match self {
            ErrorStatus::InvalidCommand => (401, "Invalid Command"),
            ErrorStatus::ServiceUnavailable => (503, "Service Unavailable"),
        }
    }
}

/// The request echoed back with `status` and `error` added (pushgo 1.4).
pub fn error(raw: Map<String, Value>, status: ErrorStatus) -> String {
    let (code, text) = status.code_and_text();
    let mut obj = raw;
    obj.insert("status".into(), code.into());
    obj.insert("error".into(), text.into());
    Value::Object(obj).to_string()
}

/// The hello reply; a WebPush hello gets autopush's `use_webpush` and `broadcasts` too.
pub fn hello(uaid: &Uaid, webpush: Option<&Map<String, Value>>) -> String {
    if let Some(broadcasts) = webpush {
        return json!({
            "messageType": "hello",
            "uaid": uaid.to_string(),
            "status": 200,
            "use_webpush": true,
            "broadcasts": broadcasts,
        })
        .to_string();
    }
    json!({"messageType": "hello", "uaid": uaid.to_string(), "status": 200}).to_string()
}

/// Broadcast versions the client is to know of.
pub fn broadcast(broadcasts: Map<String, Value>) -> String {
    json!({"messageType": "broadcast", "broadcasts": broadcasts}).to_string()
}

/// A register that failed without closing the socket (a bad `key`): the client's subscribe fails.
pub fn register_error(channel: &ChannelId, status: u16, error: &str) -> String {
    json!({
        "messageType": "register",
        "channelID": channel.to_string(),
        "status": status,
        "error": error,
    })
    .to_string()
}

/// A WebPush notification: one message, with its payload and the headers to decrypt it.
pub fn message(m: &Message) -> String {
    let mut out = json!({
        "messageType": "notification",
        "channelID": m.channel.to_string(),
        "version": m.id,
        "ttl": m.ttl,
    });
    if let (Some((data, enc)), Value::Object(obj)) = (&m.payload, &mut out) {
        let headers = match enc {
            Encoding::Aes128gcm => json!({"encoding": "aes128gcm"}),
            Encoding::Aesgcm {
                encryption,
                crypto_key,
            } => json!({
                "encoding": "aesgcm",
                "encryption": encryption,
                "crypto_key": crypto_key,
            }),
        };
        obj.insert("data".into(), data.as_str().into());
        obj.insert("headers".into(), headers);
    }
    out.to_string()
}

/// The register reply.
pub fn register(uaid: &Uaid, channel: &ChannelId, endpoint: &str) -> String {
    json!({
        "messageType": "register",
        "uaid": uaid.to_string(),
        "status": 200,
        "channelID": channel.to_string(),
        "pushEndpoint": endpoint,
    })
    .to_string()
}

/// The unregister reply, with the channelID as the client sent it.
pub fn unregister(raw_channel: &str) -> String {
    json!({"messageType": "unregister", "status": 200, "channelID": raw_channel}).to_string()
}

/// A notification carrying one or more updates; `data` only on a live single update.
pub fn notification(updates: &[(ChannelId, u64)], data: Option<&str>) -> String {
    let list: Vec<Value> = updates
        .iter()
        .map(|(chid, version)| {
            let mut u = json!({"channelID": chid.to_string(), "version": version});
            if let (Some(d), Value::Object(m)) = (data, &mut u) {
                m.insert("data".into(), d.into());
            }
            u
        })
        .collect();
    json!({"messageType": "notification", "updates": list}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    #[test]
    fn error_echoes_the_request() {
        let raw: Map<String, Value> = serde_json::from_str(
            r#"{"messageType":"ack","updates":[{"channelID":"abc","version":23}]}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&error(raw, ErrorStatus::InvalidCommand)).unwrap();
        assert_eq!(
            v,
            json!({"messageType":"ack","updates":[{"channelID":"abc","version":23}],"status":401,"error":"Invalid Command"})
        );
        let v: Value =
            serde_json::from_str(&error(Map::new(), ErrorStatus::ServiceUnavailable)).unwrap();
        assert_eq!(v, json!({"status":503,"error":"Service Unavailable"}));
    }

    #[test]
    fn notification_carries_data_only_when_given() {
        let chid = ChannelId(Id::parse("0cb8a613-8e2b-4b47-b370-51098daa8401").unwrap());
        let v: Value = serde_json::from_str(&notification(&[(chid, 7)], None)).unwrap();
        assert_eq!(
            v,
            json!({"messageType":"notification","updates":[{"channelID":"0cb8a613-8e2b-4b47-b370-51098daa8401","version":7}]})
        );
        let v: Value = serde_json::from_str(&notification(&[(chid, 7)], Some("hi\""))).unwrap();
        assert_eq!(v["updates"][0]["data"], "hi\"");
    }

    #[test]
    fn the_largest_message_frame_fits_the_budget() {
        use crate::webpush::{MAX_CRYPTO_HEADER, MAX_FRAME, MAX_PAYLOAD};
        let chid = ChannelId(Id::parse("0CB8A613-8E2B-4B47-B370-51098DAA8401").unwrap());
        let payload = "A".repeat(MAX_PAYLOAD.div_ceil(3) * 4);
        let m = Message {
            channel: chid,
            // Sealed message ids are 119 characters; leave room.
            id: "i".repeat(160),
            ttl: 2_592_000,
            topic: Some("t".repeat(32)),
            payload: Some((
                payload,
                Encoding::Aesgcm {
                    encryption: "e".repeat(MAX_CRYPTO_HEADER),
                    crypto_key: "k".repeat(MAX_CRYPTO_HEADER),
                },
            )),
        };
        let len = message(&m).len();
        assert!(len <= MAX_FRAME, "{len} > {MAX_FRAME}");
    }

    #[test]
    fn webpush_hello_and_messages() {
        let u = Uaid(Id::parse("9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e").unwrap());
        let v: Value = serde_json::from_str(&hello(&u, Some(&Map::new()))).unwrap();
        assert_eq!(v["use_webpush"], true);
        assert_eq!(v["broadcasts"], json!({}));
        let v: Value = serde_json::from_str(&hello(&u, None)).unwrap();
        assert!(v.get("use_webpush").is_none());

        let chid = ChannelId(Id::parse("0cb8a613-8e2b-4b47-b370-51098daa8401").unwrap());
        let mut m = Message {
            channel: chid,
            id: "m1".into(),
            ttl: 60,
            topic: None,
            payload: None,
        };
        let v: Value = serde_json::from_str(&message(&m)).unwrap();
        assert_eq!(
            v,
            json!({"messageType":"notification","channelID":"0cb8a613-8e2b-4b47-b370-51098daa8401","version":"m1","ttl":60})
        );
        m.payload = Some((
            "AAA".into(),
            Encoding::Aesgcm {
                encryption: "salt=s".into(),
                crypto_key: "dh=k".into(),
            },
        ));
        let v: Value = serde_json::from_str(&message(&m)).unwrap();
        assert_eq!(v["data"], "AAA");
        assert_eq!(
            v["headers"],
            json!({"encoding":"aesgcm","encryption":"salt=s","crypto_key":"dh=k"})
        );
    }
}
