//! A UAID's waiting WebPush messages as one list value: what a push, an ack or a DELETE makes of it.

use sm::{ChannelId, Message};

use crate::store::codec::encode_list;
use crate::store::record::MAX_RELATIVE_TTL;
use crate::store::StoredMessage;

/// The largest message list written: memcached refuses items over 1 MiB (its default `-I`).
/// Beyond this a push gets 429.
pub const MAX_LIST_BYTES: usize = 1_000_000;

/// The expiry of a message list: until its last message expires. One second more because
/// memcached's clock ticks once a second and may lag ours; an empty list goes within a second or two.
pub fn list_life(list: &[StoredMessage], now: u64) -> u32 {
    let last = list.iter().map(|m| m.expires_at).max().unwrap_or(now);
    let secs = last.saturating_sub(now).saturating_add(1);
    u32::try_from(secs).map_or(MAX_RELATIVE_TTL, |s| s.min(MAX_RELATIVE_TTL))
}

/// The waiting messages `new` replaces: same channel and topic.
pub fn same_topic(list: &[StoredMessage], new: &StoredMessage) -> Vec<(ChannelId, String)> {
    list.iter()
        .filter(|m| m.msg.id != new.msg.id && replaces(new, m))
        .map(|m| (m.msg.channel, m.msg.id.clone()))
        .collect()
}

fn replaces(new: &StoredMessage, old: &StoredMessage) -> bool {
    old.msg.channel == new.msg.channel && new.msg.topic.is_some() && old.msg.topic == new.msg.topic
}

/// `put_message`'s change to a message list: the stored list's lifetime (`None`: full) and the new
/// list. Finding the message already there is success: our own write, read back after a retry.
pub fn with_message(
    list: &[StoredMessage],
    new: &StoredMessage,
    max: usize,
    now: u64,
) -> (Option<u32>, Option<Vec<StoredMessage>>) {
    if list.iter().any(|m| m.msg.id == new.msg.id) {
        return (Some(list_life(list, now)), None);
    }
    let mut next: Vec<StoredMessage> = list.iter().filter(|m| !replaces(new, m)).cloned().collect();
    if next.len() >= max {
        return (None, None);
    }
    next.push(new.clone());
    if encode_list(&next).len() > MAX_LIST_BYTES {
        return (None, None);
    }
    (Some(list_life(&next, now)), Some(next))
}

/// Whether a message names this channel and id (an ack names both).
pub fn acked(m: &Message, acks: &[(ChannelId, String)]) -> bool {
    acks.iter().any(|(c, id)| *c == m.channel && *id == m.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::Id;

    fn stored(chan: u8, id: &str, expires_at: u64, topic: Option<&str>) -> StoredMessage {
        StoredMessage {
            msg: Message {
                channel: ChannelId(Id::fresh([chan; 16])),
                id: id.into(),
                ttl: 60,
                topic: topic.map(str::to_string),
                payload: None,
            },
            expires_at,
        }
    }

    fn ids(list: &[StoredMessage]) -> Vec<&str> {
        list.iter().map(|m| m.msg.id.as_str()).collect()
    }

    #[test]
    fn list_life_covers_the_last_message_and_stays_relative() {
        assert_eq!(list_life(&[], 100), 1);
        let list = [stored(1, "a", 160, None), stored(1, "b", 130, None)];
        assert_eq!(list_life(&list, 100), 61);
        let far = [stored(1, "a", 100 + 40 * 24 * 3600, None)];
        assert_eq!(list_life(&far, 100), MAX_RELATIVE_TTL);
    }

    #[test]
    fn with_message_replaces_by_topic_caps_and_is_idempotent() {
        let list = vec![
            stored(1, "a", 160, Some("t")),
            stored(2, "b", 160, Some("t")),
        ];
        let (life, next) = with_message(&list, &stored(1, "c", 200, Some("t")), 2, 100);
        let next = next.unwrap();
        assert_eq!((life, ids(&next)), (Some(101), vec!["b", "c"]));
        assert_eq!(same_topic(&list, &stored(1, "c", 200, Some("t"))).len(), 1);
        assert_eq!(with_message(&next, &next[1], 2, 100), (Some(101), None));
        assert_eq!(
            with_message(&next, &stored(1, "d", 200, None), 2, 100),
            (None, None)
        );
        let big = StoredMessage {
            msg: Message {
                payload: Some(("A".repeat(MAX_LIST_BYTES), sm::webpush::Encoding::Aes128gcm)),
                ..stored(1, "e", 200, None).msg
            },
            expires_at: 200,
        };
        assert_eq!(
            with_message(&[], &big, 10, 100),
            (None, None),
            "over memcached's item size"
        );
        let m = stored(1, "a", 1, None).msg;
        assert!(acked(&m, &[(m.channel, "a".into())]));
        assert!(!acked(
            &m,
            &[(stored(2, "a", 1, None).msg.channel, "a".into())]
        ));
    }
}
