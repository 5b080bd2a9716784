//! The webpush scenario's cryptography, both ends: a subscription's keys (the device's P-256
//! key pair and auth secret), RFC 8291 aes128gcm encryption as the app server does it, the
//! device's decryption, and the test payloads whose every byte the device can check.
//! Primitives come from RustCrypto (p256, hkdf, sha2, aes-gcm); this file only composes them.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use crate::rng::Rng;

/// RFC 8188 record size written in the header: one record holds any message up to 4096 bytes.
const RECORD_SIZE: u32 = 4096;
/// salt (16) + rs (4) + idlen (1) + keyid (65-byte uncompressed point).
const HEADER_LEN: usize = 86;
const TAG_LEN: usize = 16;

/// Why a message could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The header is short or names no P-256 point.
    Header,
    /// More than one record, or a record larger than its record size.
    Records,
    /// The AEAD tag did not verify (wrong keys or altered bytes).
    Tag,
    /// No final-record delimiter after the padding.
    Padding,
    /// A key could not be made from the random bytes (practically never).
    Key,
}

/// A P-256 secret key from the run's generator (these keys protect test data only).
fn random_secret(rng: &mut Rng) -> Result<SecretKey, CryptoError> {
    for _ in 0..8 {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        if let Ok(k) = SecretKey::from_slice(&b) {
            return Ok(k);
        }
    }
    Err(CryptoError::Key)
}

fn uncompressed(key: &PublicKey) -> [u8; 65] {
    let mut out = [0u8; 65];
    out.copy_from_slice(key.to_sec1_point(false).as_bytes());
    out
}

/// A subscription's keys: what a browser keeps (the private key) and what the app server is
/// given (p256dh, auth). The tester is both, so one struct serves both sides.
#[derive(Clone)]
pub struct SubKeys {
    secret: SecretKey,
    public: PublicKey,
    public_bytes: [u8; 65],
    auth: [u8; 16],
}

impl std::fmt::Debug for SubKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubKeys { .. }")
    }
}

impl SubKeys {
    pub fn generate(rng: &mut Rng) -> Result<Self, CryptoError> {
        let secret = random_secret(rng)?;
        let mut auth = [0u8; 16];
        rng.fill(&mut auth);
        Ok(Self::from_parts(secret, auth))
    }

    fn from_parts(secret: SecretKey, auth: [u8; 16]) -> Self {
        let public = secret.public_key();
        Self {
            public_bytes: uncompressed(&public),
            secret,
            public,
            auth,
        }
    }
}

/// CEK and nonce of RFC 8291 section 3.4 from the ECDH secret and the two public keys.
fn derive(
    ecdh: &[u8],
    auth: &[u8; 16],
    ua_public: &[u8; 65],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    // Lengths are constants HKDF-SHA-256 always accepts (at most 255 * 32 bytes).
    let _ = Hkdf::<Sha256>::new(Some(auth), ecdh).expand(&key_info, &mut ikm);
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    let _ = prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek);
    let _ = prk.expand(b"Content-Encoding: nonce\0", &mut nonce);
    (cek, nonce)
}

fn cipher(cek: &[u8; 16]) -> Result<Aes128Gcm, CryptoError> {
    Aes128Gcm::new_from_slice(cek).map_err(|_| CryptoError::Key)
}

/// The app server's side: `plaintext` encrypted to the subscription as one aes128gcm record,
/// with a fresh sender key pair and salt (RFC 8291 wants both new for every message).
pub fn encrypt(to: &SubKeys, plaintext: &[u8], rng: &mut Rng) -> Result<Vec<u8>, CryptoError> {
    let sender = random_secret(rng)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt);
    encrypt_with(
        &to.public,
        &to.public_bytes,
        &to.auth,
        plaintext,
        &sender,
        &salt,
    )
}

fn encrypt_with(
    ua: &PublicKey,
    ua_bytes: &[u8; 65],
    auth: &[u8; 16],
    plaintext: &[u8],
    sender: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, CryptoError> {
    let as_public = uncompressed(&sender.public_key());
    let ecdh = sender.diffie_hellman(ua);
    let (cek, nonce) = derive(ecdh.raw_secret_bytes(), auth, ua_bytes, &as_public, salt);
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    // The last (and only) record's delimiter; no padding.
    record.push(2);
    let sealed = cipher(&cek)?
        .encrypt(&Nonce::from(nonce), record.as_slice())
        .map_err(|_| CryptoError::Records)?;
    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The device's side: the plaintext of a one-record aes128gcm message to `keys`.
pub fn decrypt(keys: &SubKeys, body: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if body.len() < 21 {
        return Err(CryptoError::Header);
    }
    let (salt, rest) = body.split_at(16);
    let rs = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let idlen = usize::from(rest[4]);
    let rest = &rest[5..];
    if rest.len() < idlen {
        return Err(CryptoError::Header);
    }
    let (keyid, sealed) = rest.split_at(idlen);
    let sender = PublicKey::from_sec1_bytes(keyid).map_err(|_| CryptoError::Header)?;
    if rs <= TAG_LEN || sealed.len() > rs || sealed.len() <= TAG_LEN {
        return Err(CryptoError::Records);
    }
    let ecdh = keys.secret.diffie_hellman(&sender);
    let (cek, nonce) = derive(
        ecdh.raw_secret_bytes(),
        &keys.auth,
        &keys.public_bytes,
        keyid,
        salt,
    );
    let mut record = cipher(&cek)?
        .decrypt(&Nonce::from(nonce), sealed)
        .map_err(|_| CryptoError::Tag)?;
    // Padding is zeros after the delimiter, which is 2 in the last record.
    let end = record
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(CryptoError::Padding)?;
    if record[end] != 2 {
        return Err(CryptoError::Padding);
    }
    record.truncate(end);
    Ok(record)
}

/// The applicationServerKey form of a public key: base64url of the uncompressed point, padded,
/// as Firefox sends it in `register`.
pub fn application_server_key(public: &PublicKey) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(uncompressed(public))
}

/// What a device found in a notification.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Decrypted, and every byte is what message `seq` holds.
    Intact(u64),
    /// Decrypted, but the bytes are not those of the message it names (`seq` as it says).
    Altered(u64),
    /// Not decryptable (or no payload at all).
    Unreadable,
}

/// Message `seq`'s plaintext of `size` bytes: its number, then bytes derived from it, so that a
/// device can check every byte without being told what was sent.
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&seq.to_be_bytes());
    let mut r = Rng::from_seed(seq);
    while out.len() < size {
        out.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    out.truncate(size.max(8));
    out
}

/// The size message `seq` has when the run uses `sizes` in turn.
pub fn size_of(seq: u64, sizes: &[usize]) -> usize {
    match sizes.len() {
        0 => 8,
        n => sizes[(seq % n as u64) as usize],
    }
}

/// Opens a notification's `data` (base64url, padded or not) and checks it.
pub fn receive(keys: &SubKeys, data: Option<&str>, sizes: &[usize]) -> Received {
    let Some(body) = data.and_then(|d| URL_SAFE_NO_PAD.decode(d.trim_end_matches('=')).ok()) else {
        return Received::Unreadable;
    };
    let Ok(plain) = decrypt(keys, &body) else {
        return Received::Unreadable;
    };
    let Some(head) = plain.get(..8) else {
        return Received::Unreadable;
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(head);
    let seq = u64::from_be_bytes(n);
    if plain == payload(seq, size_of(seq, sizes)) {
        Received::Intact(seq)
    } else {
        Received::Altered(seq)
    }
}

#[cfg(test)]
mod tests;
