//! WebPush messages as JSON: how memcached keeps them and how the cluster router forwards them.

use serde_json::{json, Map, Value};
use sm::webpush::Encoding;
use sm::{ChannelId, Id, Message};

use super::StoredMessage;

/// A message as a JSON object; `expires_at` is added when given.
pub fn encode(m: &Message, expires_at: Option<u64>) -> Value {
    let mut v = json!({"ch": m.channel.to_string(), "id": m.id, "ttl": m.ttl});
    let Value::Object(obj) = &mut v else {
        return v;
    };
    if let Some(t) = &m.topic {
        obj.insert("topic".into(), t.as_str().into());
    }
    if let Some(exp) = expires_at {
        obj.insert("exp".into(), exp.into());
    }
    if let Some((data, enc)) = &m.payload {
        obj.insert("data".into(), data.as_str().into());
        match enc {
            Encoding::Aes128gcm => {
                obj.insert("enc".into(), "aes128gcm".into());
            }
            Encoding::Aesgcm {
                encryption,
                crypto_key,
            } => {
                obj.insert("enc".into(), "aesgcm".into());
                obj.insert("encryption".into(), encryption.as_str().into());
                obj.insert("crypto_key".into(), crypto_key.as_str().into());
            }
        }
    }
    v
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The inverse of [`encode`]: the message and its `exp`, if it had one.
pub fn decode(v: &Value) -> Option<(Message, Option<u64>)> {
    let obj = v.as_object()?;
    let channel = ChannelId(Id::parse(obj.get("ch")?.as_str()?)?);
    let payload = match text(obj, "data") {
        None => None,
        Some(data) => {
            let enc = match obj.get("enc")?.as_str()? {
                "aes128gcm" => Encoding::Aes128gcm,
                "aesgcm" => Encoding::Aesgcm {
                    encryption: text(obj, "encryption")?,
                    crypto_key: text(obj, "crypto_key")?,
                },
                _ => return None,
            };
            Some((data, enc))
        }
    };
    let msg = Message {
        channel,
        id: text(obj, "id")?,
        ttl: obj.get("ttl")?.as_u64()?,
        topic: text(obj, "topic"),
        payload,
    };
    Some((msg, obj.get("exp").and_then(Value::as_u64)))
}

/// A stored message list as JSON text (memcached's `m/<uaid>`).
pub fn encode_list(list: &[StoredMessage]) -> String {
    let items: Vec<Value> = list
        .iter()
        .map(|s| encode(&s.msg, Some(s.expires_at)))
        .collect();
    Value::Array(items).to_string()
}

/// The inverse of [`encode_list`]; entries that do not decode are dropped.
pub fn decode_list(text: &str) -> Vec<StoredMessage> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(decode)
        .filter_map(|(msg, exp)| {
            Some(StoredMessage {
                msg,
                expires_at: exp?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: Option<(String, Encoding)>, topic: Option<&str>) -> Message {
        Message {
            channel: ChannelId(Id::parse("0CB8A613-8E2B-4B47-B370-51098DAA8401").unwrap()),
            id: "abc".into(),
            ttl: 60,
            topic: topic.map(str::to_string),
            payload,
        }
    }

    #[test]
    fn round_trips_every_shape() {
        let shapes = [
            msg(None, None),
            msg(Some(("AAEC".into(), Encoding::Aes128gcm)), Some("t1")),
            msg(
                Some((
                    "AAEC".into(),
                    Encoding::Aesgcm {
                        encryption: "salt=x".into(),
                        crypto_key: "dh=y".into(),
                    },
                )),
                None,
            ),
        ];
        for m in shapes {
            let (back, exp) = decode(&encode(&m, Some(9))).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.channel.to_string(), m.channel.to_string());
            assert_eq!(exp, Some(9));
        }
        let list = vec![StoredMessage {
            msg: msg(None, None),
            expires_at: 5,
        }];
        assert_eq!(decode_list(&encode_list(&list)), list);
        assert!(decode_list("garbage").is_empty());
        assert!(decode(&json!({"ch": "nope", "id": "a", "ttl": 1})).is_none());
    }
}
