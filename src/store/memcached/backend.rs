//! The memcached backend's answers to the store's operations (`Backend`), built on the helpers
//! in `mod.rs` (reads, conditional writes, node records) and the layout of its keys.

use sm::{ChannelId, Message, Uaid};

use super::layout::{msgs_key, node_key, record_key, wake_key};
use super::replicas::{Fail, Written};
use super::*;

/// A full memcached is a refused push (503 or 429), never a 2xx.
fn put_outcome(r: Result<PutResult, Fail>) -> Result<PutResult, Unavailable> {
    match r {
        Ok(p) => Ok(p),
        Err(Fail::Full) => Ok(PutResult::Full),
        Err(Fail::Unavailable) => Err(Unavailable),
    }
}

impl Backend for MemcachedStore {
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        node: Option<&str>,
        channels: &[ChannelId],
    ) -> Result<HelloFound, Unavailable> {
        if forget {
            self.forget(uaid).map_err(unavailable)?;
            return Ok(HelloFound::default());
        }
        self.hello_known(uaid, node, channels).map_err(unavailable)
    }

    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable> {
        let item = self.read_one(record_key(uaid)).map_err(unavailable)?;
        let now = now_secs();
        Ok(record_of(&item).and_then(|r| r.live(channel, now).and_then(|c| c.pending)))
    }

    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable> {
        self.update(record_key(uaid), &[], |item, _| {
            let now = now_secs();
            match self.with_channel(record_of(item).unwrap_or_default(), channel, max, now) {
                Some(rec) => (true, self.record_write(&rec, now)),
                None => (false, None),
            }
        })
        .map_err(unavailable)
    }

    fn register_minted(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max: usize,
        node: &str,
    ) -> Result<bool, Unavailable> {
        // Nothing can name a UAID minted on this socket a moment ago: its record and its node
        // record are added in one round, with no read first. Were either there after all, its add
        // is a conflict and the usual read and write follow.
        let now = now_secs();
        let Some(rec) = self.with_channel(Record::default(), channel, max, now) else {
            return Ok(false);
        };
        let record = self.cluster.unwritten(&record_key(uaid));
        let claim = self.cluster.unwritten(&node_key(uaid));
        let (Ok(record), Ok(claim), Some((body, ttl))) =
            (record, claim, self.record_write(&rec, now))
        else {
            return Err(Unavailable);
        };
        let writes = [
            (&record, body, ttl),
            (&claim, node.as_bytes().to_vec(), NODE_TTL),
        ];
        let written = self.cluster.write(&writes).map_err(unavailable)?;
        if written.get(1) != Some(&Written::Yes) {
            self.bind_node(uaid, node)?;
        }
        if written.first() != Some(&Written::Yes) {
            return self.register(uaid, channel, max);
        }
        Ok(true)
    }

    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable> {
        // The record first: from then on an update finds no channel (410).
        self.update(record_key(uaid), &[], |item, _| {
            let now = now_secs();
            let Some(mut rec) = record_of(item) else {
                return ((), None);
            };
            let before = rec.channels.len();
            rec.channels.retain(|c| c.id != *channel);
            if rec.channels.len() == before {
                return ((), None);
            }
            ((), self.record_write(&rec, now))
        })
        .map_err(unavailable)?;
        self.remove_messages(uaid, |m| m.msg.channel == *channel)
            .map(drop)
            .map_err(unavailable)
    }

    fn ack(
        &self,
        uaid: &Uaid,
        items: &[(ChannelId, u64)],
        messages: &[(ChannelId, String)],
    ) -> Result<(), Unavailable> {
        if !messages.is_empty() {
            self.remove_messages(uaid, |m| acked(&m.msg, messages))
                .map_err(unavailable)?;
        }
        if items.is_empty() {
            return Ok(());
        }
        self.update(record_key(uaid), &[], |item, _| {
            let now = now_secs();
            let Some(mut rec) = record_of(item) else {
                return ((), None);
            };
            let until = self.registered_until(now, 0);
            let mut changed = false;
            for (channel, version) in items {
                // A newer version stored meanwhile stays pending.
                if let Some(c) = rec
                    .live_mut(channel, now)
                    .filter(|c| c.pending == Some(*version))
                {
                    c.pending = None;
                    if c.exp != 0 {
                        c.exp = until;
                    }
                    changed = true;
                }
            }
            ((), changed.then(|| self.record_write(&rec, now)).flatten())
        })
        .map_err(unavailable)
    }

    fn put(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<PutResult, Unavailable> {
        put_outcome(
            self.put_version(uaid, channel, version)
                .map(|r| self.node_again(uaid, r)),
        )
    }

    fn put_message(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Unavailable> {
        put_outcome(
            self.put_webpush(uaid, msg)
                .map(|r| self.node_again(uaid, r)),
        )
    }

    fn message_pending(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        let item = self.read_one(msgs_key(uaid)).map_err(unavailable)?;
        let now = now_secs();
        Ok(messages_of(&item)
            .iter()
            .any(|m| m.msg.id == id && m.live(now)))
    }

    fn delete_message(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable> {
        self.remove_messages(uaid, |m| m.msg.id == id)
            .map_err(unavailable)
    }

    fn set_wake(&self, uaid: &Uaid, wake: &str) -> Result<(), Unavailable> {
        let ttl = self.wake_ttl();
        self.update(wake_key(uaid), &[], |item, _| {
            let same = item.text() == Some(wake);
            ((), (!same).then(|| (wake.as_bytes().to_vec(), ttl)))
        })
        .map_err(unavailable)
    }

    fn refresh(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        self.hello_known(uaid, None, &[]).map_err(unavailable)?;
        self.cluster
            .touch(&[(wake_key(uaid), self.wake_ttl())])
            .map_err(unavailable)
    }

    fn bind_node(&self, uaid: &Uaid, node: &str) -> Result<Option<String>, Unavailable> {
        // A conditional write: of two nodes claiming the UAID at once, the second sees the first.
        self.update(node_key(uaid), &[], |item, _| {
            let previous = node_of(item).filter(|p| p != node);
            (previous, Some((node.as_bytes().to_vec(), NODE_TTL)))
        })
        .map_err(unavailable)
    }

    fn unbind_node(&self, uaid: &Uaid, node: &str) -> Result<(), Unavailable> {
        self.update(node_key(uaid), &[], |item, _| {
            let ours = item.text() == Some(node);
            ((), ours.then(|| (b"-".to_vec(), RELEASED_TTL)))
        })
        .map_err(unavailable)
    }

    fn healthy(&self) -> bool {
        self.healthy_now()
    }
}
