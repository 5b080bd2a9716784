//! Server messages out: the exact JSON text of every reply (protocol.md 3.2-3.6).

use serde_json::{json, Map, Value};

use crate::ids::{ChannelId, Uaid};

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

/// The hello reply.
pub fn hello(uaid: &Uaid) -> String {
    json!({"messageType": "hello", "uaid": uaid.to_string(), "status": 200}).to_string()
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
}
