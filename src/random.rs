//! Unpredictable bytes for UAIDs and token nonces, without a system call each time.
//!
//! Each thread keeps a ChaCha20 keystream keyed once from the operating system's random source:
//! the bytes are as unguessable as the key, and cost a few nanoseconds instead of a `getrandom`
//! call per hello. UAIDs must be unguessable: a known UAID is accepted at hello.

use std::cell::RefCell;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;

thread_local! {
    static STREAM: RefCell<Option<ChaCha20>> = const { RefCell::new(None) };
}

fn seeded() -> Option<ChaCha20> {
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut key).ok()?;
    getrandom::fill(&mut nonce).ok()?;
    Some(ChaCha20::new(&key.into(), &nonce.into()))
}

/// Fills `buf` with unpredictable bytes; `false` only if the OS could not seed the generator.
pub fn fill(buf: &mut [u8]) -> bool {
    STREAM.with(|cell| {
        let mut stream = cell.borrow_mut();
        if stream.is_none() {
            *stream = seeded();
        }
        let Some(s) = stream.as_mut() else {
            return false;
        };
        buf.fill(0);
        // A keystream of 2^70 bytes per key: far beyond any process's life, but re-key anyway.
        if s.try_apply_keystream(buf).is_err() {
            *stream = seeded();
            return stream
                .as_mut()
                .is_some_and(|s| s.try_apply_keystream(buf).is_ok());
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_differ_and_are_not_zero() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        assert!(fill(&mut a) && fill(&mut b));
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 16]);
    }

    #[test]
    fn threads_get_their_own_streams() {
        let mut here = [0u8; 16];
        fill(&mut here);
        let there = std::thread::spawn(|| {
            let mut b = [0u8; 16];
            fill(&mut b);
            b
        })
        .join()
        .unwrap();
        assert_ne!(here, there);
    }
}
