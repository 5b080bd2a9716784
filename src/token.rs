//! Endpoint tokens: `uaid+chid` sealed with XChaCha20-Poly1305, so they can be neither forged nor read.
//!
//! A token is base64url (no padding) of `nonce(24) ‖ ciphertext ‖ tag(16)`. The plaintext is
//! the two 16-byte ids and one byte with both spellings; a WebPush v2 token adds the SHA-256 of
//! the app server's key, a message id 16 random bytes. Each kind has its own associated data, so
//! none opens as another. The first key seals; every key opens, so keys can be rotated by
//! prepending a new one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use sm::{AppKey, ChannelId, Id, IdForm, Uaid};

const NONCE_LEN: usize = 24;
const PLAIN_LEN: usize = 33;
const TAG_LEN: usize = 16;
/// The longest sealed string: a v2 endpoint token (ids and a key hash).
const MAX_SEALED: usize = NONCE_LEN + PLAIN_LEN + 32 + TAG_LEN;
/// Binds tokens to this use, so a ciphertext made for something else never opens here.
const AAD: &[u8] = b"simplepush endpoint v1";

/// Why the token keys could not be set up.
#[derive(Debug)]
pub enum TokenKeyError {
    /// Key number `n` (from 0) is not base64url of 32 bytes.
    BadKey(usize),
    /// The system random source failed.
    Random,
}

impl std::fmt::Display for TokenKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKeyError::BadKey(n) => write!(
                f,
                "config: endpoint.token_keys[{n}]: must be base64url of 32 bytes (try: head -c32 /dev/urandom | basenc --base64url)"
            ),
            TokenKeyError::Random => f.write_str("no system randomness for a token key"),
        }
    }
}

impl std::error::Error for TokenKeyError {}

/// The keys that seal and open endpoint tokens.
pub struct Tokens {
    ciphers: Vec<XChaCha20Poly1305>,
    /// Per key, the first 8 hex digits of its SHA-256: names it in logs without revealing it.
    fingerprints: Vec<String>,
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let t = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD.decode(t).ok()?.try_into().ok()
}

impl Tokens {
    /// Keys from config; with none, one random key (tokens then die with the process).
    pub fn new(keys: &[String]) -> Result<Tokens, TokenKeyError> {
        let mut raw = Vec::with_capacity(keys.len().max(1));
        for (n, k) in keys.iter().enumerate() {
            raw.push(decode_key(k).ok_or(TokenKeyError::BadKey(n))?);
        }
        if raw.is_empty() {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).map_err(|_| TokenKeyError::Random)?;
            raw.push(k);
        }
        let ciphers = raw
            .iter()
            .map(|k| XChaCha20Poly1305::new(&(*k).into()))
            .collect();
        let fingerprints = raw.iter().map(fingerprint).collect();
        Ok(Tokens {
            ciphers,
            fingerprints,
        })
    }

    /// The keys' fingerprints, the sealing key first (8 hex digits of each key's SHA-256).
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Seals a SimplePush endpoint token for this channel; `None` only when no random nonce could be had.
    pub fn seal(&self, uaid: &Uaid, channel: &ChannelId) -> Option<String> {
        self.seal_for(Purpose::SimplePush, &ids_plain(uaid, channel))
    }

    /// Opens a SimplePush endpoint token; `None` for anything not sealed by one of our keys for it.
    pub fn open(&self, token: &str) -> Option<(Uaid, ChannelId)> {
        let plain = self.open_for(Purpose::SimplePush, token)?;
        (plain.len() == PLAIN_LEN).then(|| ids_of(&plain))?
    }

    /// Seals a WebPush endpoint token; with a key (v2) the token carries its SHA-256.
    pub fn seal_webpush(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        key: Option<&AppKey>,
    ) -> Option<String> {
        let mut plain = ids_plain(uaid, channel).to_vec();
        let purpose = match key {
            None => Purpose::WebPushV1,
            Some(k) => {
                plain.extend_from_slice(&Sha256::digest(k.0));
                Purpose::WebPushV2
            }
        };
        self.seal_for(purpose, &plain)
    }

    /// Opens a WebPush endpoint token of the given version: the ids, and for v2 the key's SHA-256.
    pub fn open_webpush(
        &self,
        v2: bool,
        token: &str,
    ) -> Option<(Uaid, ChannelId, Option<KeyHash>)> {
        let purpose = if v2 {
            Purpose::WebPushV2
        } else {
            Purpose::WebPushV1
        };
        let plain = self.open_for(purpose, token)?;
        let (uaid, channel) = ids_of(plain.get(..PLAIN_LEN)?)?;
        match (v2, &plain[PLAIN_LEN..]) {
            (false, []) => Some((uaid, channel, None)),
            (true, hash) => Some((uaid, channel, Some(hash.try_into().ok()?))),
            _ => None,
        }
    }

    /// Seals a message id: the ids and 16 random bytes, so that `DELETE /m/<id>` finds its owner.
    pub fn seal_message(&self, uaid: &Uaid, channel: &ChannelId) -> Option<String> {
        let mut plain = ids_plain(uaid, channel).to_vec();
        let mut unique = [0u8; 16];
        if !crate::random::fill(&mut unique) {
            return None;
        }
        plain.extend_from_slice(&unique);
        self.seal_for(Purpose::Message, &plain)
    }

    /// Opens a message id.
    pub fn open_message(&self, id: &str) -> Option<(Uaid, ChannelId)> {
        let plain = self.open_for(Purpose::Message, id)?;
        (plain.len() == PLAIN_LEN + 16).then(|| ids_of(&plain[..PLAIN_LEN]))?
    }

    fn seal_for(&self, purpose: Purpose, plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        if !crate::random::fill(&mut nonce) {
            // Without randomness no nonce is safe to use: hand out no endpoint.
            return None;
        }
        let payload = Payload {
            msg: plain,
            aad: purpose.aad(),
        };
        // Only fails on absurd lengths, which these short messages are not.
        let sealed = self.ciphers[0]
            .encrypt(&XNonce::from(nonce), payload)
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    fn open_for(&self, purpose: Purpose, token: &str) -> Option<Vec<u8>> {
        if token.len() > 2 * MAX_SEALED {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if raw.len() < NONCE_LEN + TAG_LEN || raw.len() > MAX_SEALED {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.ciphers.iter().find_map(|c| {
            c.decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: purpose.aad(),
                },
            )
            .ok()
        })
    }
}

fn fingerprint(key: &[u8; 32]) -> String {
    Sha256::digest(key)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of an application server key, as a v2 token carries it.
pub type KeyHash = [u8; 32];

/// The SHA-256 a v2 token holds for this key.
pub fn key_hash(key: &AppKey) -> KeyHash {
    Sha256::digest(key.0).into()
}

/// What a sealed string is for: each has its own associated data, so none opens as another.
#[derive(Clone, Copy)]
enum Purpose {
    SimplePush,
    WebPushV1,
    WebPushV2,
    Message,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::SimplePush => AAD,
            Purpose::WebPushV1 => b"simplepush wpush v1",
            Purpose::WebPushV2 => b"simplepush wpush v2",
            Purpose::Message => b"simplepush message",
        }
    }
}

fn ids_plain(uaid: &Uaid, channel: &ChannelId) -> [u8; PLAIN_LEN] {
    let mut plain = [0u8; PLAIN_LEN];
    plain[..16].copy_from_slice(uaid.0.bytes());
    plain[16..32].copy_from_slice(channel.0.bytes());
    plain[32] = uaid.0.form().to_byte() << 2 | channel.0.form().to_byte();
    plain
}

fn ids_of(plain: &[u8]) -> Option<(Uaid, ChannelId)> {
    let uaid: [u8; 16] = plain.get(..16)?.try_into().ok()?;
    let chid: [u8; 16] = plain.get(16..32)?.try_into().ok()?;
    let forms = *plain.get(32)?;
    let uform = IdForm::from_byte(forms >> 2)?;
    let cform = IdForm::from_byte(forms & 3)?;
    Some((
        Uaid(Id::from_parts(uaid, uform)),
        ChannelId(Id::from_parts(chid, cform)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uaid, ChannelId) {
        (
            Uaid(Id::parse("9F3C0B6E5D2A4C8E9B7A6D5C4B3A2F1E").unwrap()),
            ChannelId(Id::parse("0cb8a613-8e2b-4b47-b370-51098daa8401").unwrap()),
        )
    }

    fn key(byte: u8) -> String {
        URL_SAFE_NO_PAD.encode([byte; 32])
    }

    #[test]
    fn round_trip_keeps_ids_and_spelling() {
        let t = Tokens::new(&[key(1)]).unwrap();
        let (u, c) = ids();
        let tok = t.seal(&u, &c).unwrap();
        let (u2, c2) = t.open(&tok).unwrap();
        assert_eq!(u2.to_string(), u.to_string());
        assert_eq!(c2.to_string(), c.to_string());
        assert!(!tok.contains("9f3c") && !tok.to_lowercase().contains("9f3c0b6e"));
    }

    #[test]
    fn tokens_differ_each_time_and_hide_the_ids() {
        let t = Tokens::new(&[key(1)]).unwrap();
        let (u, c) = ids();
        assert_ne!(t.seal(&u, &c).unwrap(), t.seal(&u, &c).unwrap());
    }

    #[test]
    fn tampered_or_foreign_tokens_do_not_open() {
        let t = Tokens::new(&[key(1)]).unwrap();
        let (u, c) = ids();
        let tok = t.seal(&u, &c).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&tok).unwrap();
        bytes[30] ^= 1;
        assert!(t.open(&URL_SAFE_NO_PAD.encode(&bytes)).is_none());
        let other = Tokens::new(&[key(2)]).unwrap();
        assert!(other.open(&tok).is_none());
        for junk in ["", "abc", "!!!!", &"A".repeat(98), &"A".repeat(5000)] {
            assert!(t.open(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn rotation_opens_old_tokens() {
        let old = Tokens::new(&[key(1)]).unwrap();
        let (u, c) = ids();
        let tok = old.seal(&u, &c).unwrap();
        let rotated = Tokens::new(&[key(2), key(1)]).unwrap();
        assert!(rotated.open(&tok).is_some());
        let fresh = rotated.seal(&u, &c).unwrap();
        assert!(old.open(&fresh).is_none());
    }

    #[test]
    fn fingerprints_name_keys_without_showing_them() {
        let t = Tokens::new(&[key(2), key(1)]).unwrap();
        let f = t.fingerprints();
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|p| p.len() == 8), "{f:?}");
        assert_ne!(f[0], f[1]);
        assert_eq!(Tokens::new(&[key(1)]).unwrap().fingerprints()[0], f[1]);
        assert!(!key(1).contains(&f[1]));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            Tokens::new(&["short".into()]),
            Err(TokenKeyError::BadKey(0))
        ));
        assert!(matches!(
            Tokens::new(&[key(1), "!!".into()]),
            Err(TokenKeyError::BadKey(1))
        ));
        assert!(Tokens::new(&[]).is_ok());
    }

    #[test]
    fn webpush_tokens_bind_their_version_and_key() {
        let t = Tokens::new(&[key(1)]).unwrap();
        let (u, c) = ids();
        let v1 = t.seal_webpush(&u, &c, None).unwrap();
        let (u2, c2, h) = t.open_webpush(false, &v1).unwrap();
        assert_eq!(
            (u2.to_string(), c2.to_string(), h),
            (u.to_string(), c.to_string(), None)
        );
        let mut k = [3u8; 65];
        k[0] = 4;
        let app = AppKey(k);
        let v2 = t.seal_webpush(&u, &c, Some(&app)).unwrap();
        assert_eq!(t.open_webpush(true, &v2).unwrap().2, Some(key_hash(&app)));
        // No kind opens as another: v1 as v2, either as SimplePush, a message id as a token.
        assert!(t.open_webpush(true, &v1).is_none());
        assert!(t.open_webpush(false, &v2).is_none());
        assert!(t.open(&v1).is_none() && t.open(&v2).is_none());
        let simple = t.seal(&u, &c).unwrap();
        assert!(t.open_webpush(false, &simple).is_none());
        let m = t.seal_message(&u, &c).unwrap();
        assert_eq!(t.open_message(&m).unwrap().0.to_string(), u.to_string());
        assert!(t.open(&m).is_none() && t.open_webpush(false, &m).is_none());
        assert!(t.open_message(&simple).is_none());
        assert_ne!(t.seal_message(&u, &c), t.seal_message(&u, &c));
    }
}
