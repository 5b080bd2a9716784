//! What the memcached backend stores under which key, and how each value is spelled.
//!
//! Keys use the ids' 32 lower-case hex digits:
//! - `u/<uaid>`: the UAID's record, one line per channel: `<channel id as the client spelled it>
//!   <expiry> <pending version or ->` (expiry in Unix seconds, 0 = none). One item per UAID, so a
//!   register, an update or an ack is one read and one conditional write.
//! - `m/<uaid>`: the UAID's waiting WebPush messages, a JSON list oldest first (`codec`).
//! - `n/<uaid>`: the router URL and connection of the node holding the UAID's socket, or `-`.
//! - `w/<uaid>`: how the UAID's device can be woken (JSON of `sm::wake::Wake`).
//! - `b/broadcasts`, `r/nodes`, `g/losses`: cluster-wide JSON objects.
//! - `g/marker`: per server, not replicated: which memcached process's data this is (`health`).
//!
//! Every replicated value is prefixed with a stamp by `replicas`; what is here is the body.

use std::collections::HashSet;
use std::sync::Mutex;

use log::warn;
use sm::{Id, Uaid};

pub use crate::store::record::MAX_RELATIVE_TTL;
/// Keys whose unreadable values were logged already (bounded: past it, nothing more is logged).
static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
const MAX_LOGGED: usize = 10_000;

fn hex(bytes: &[u8; 16]) -> String {
    Id::fresh(*bytes).to_string()
}

/// The UAID's record.
pub fn record_key(uaid: &Uaid) -> String {
    format!("u/{}", hex(uaid.0.bytes()))
}

/// The UAID's waiting messages.
pub fn msgs_key(uaid: &Uaid) -> String {
    format!("m/{}", hex(uaid.0.bytes()))
}

/// The UAID's node record.
pub fn node_key(uaid: &Uaid) -> String {
    format!("n/{}", hex(uaid.0.bytes()))
}

/// The UAID's wake data.
pub fn wake_key(uaid: &Uaid) -> String {
    format!("w/{}", hex(uaid.0.bytes()))
}

/// Logs a value that does not decode, once per key; the caller treats it as absent.
pub fn unreadable(key: &str, why: &str) {
    let Ok(mut guard) = LOGGED.lock() else {
        return;
    };
    let seen = guard.get_or_insert_with(HashSet::new);
    if seen.len() < MAX_LOGGED && seen.insert(key.to_string()) {
        warn!("memcached value of {key} does not decode ({why}); treated as absent");
    }
}
