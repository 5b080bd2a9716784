//! The tester's VAPID identity (RFC 8292) as the webpush scenario's app server: one P-256 key
//! per process, whose public key every subscription is registered with, and the
//! `Authorization: vapid t=<JWT>, k=<key>` header. A JWT is signed (ES256) once per push origin
//! and reused until an hour before it expires, so a push costs no signature.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::SecretKey;

use crate::rng::Rng;
use crate::webpush::{self, CryptoError};

/// A JWT's lifetime (RFC 8292 allows at most 24 hours).
const LIFETIME_SECS: u64 = 12 * 3600;
/// A JWT is replaced when it has less than this left.
const RENEW_SECS: u64 = 3600;
/// The `sub` claim: a contact the push service could reach; this one reaches no one.
const SUBJECT: &str = "mailto:simplepush-loadtest@example.invalid";

pub struct Vapid {
    key: SigningKey,
    /// base64url (no padding) of the uncompressed public key: the header's `k`.
    k: String,
    /// The `register` message's `key`.
    pub application_server_key: String,
    /// Per audience: the header and when its JWT expires.
    headers: HashMap<String, (String, u64)>,
}

impl Vapid {
    pub fn generate(rng: &mut Rng) -> Result<Self, CryptoError> {
        let mut secret = None;
        for _ in 0..8 {
            let mut b = [0u8; 32];
            rng.fill(&mut b);
            if let Ok(k) = SecretKey::from_slice(&b) {
                secret = Some(k);
                break;
            }
        }
        let secret = secret.ok_or(CryptoError::Key)?;
        let public = secret.public_key();
        let application_server_key = webpush::application_server_key(&public);
        Ok(Self {
            key: SigningKey::from(secret),
            k: application_server_key.trim_end_matches('=').to_string(),
            application_server_key,
            headers: HashMap::new(),
        })
    }

    /// `Authorization` for pushes to `audience` (the push resource's origin).
    pub fn header(&mut self, audience: &str) -> &str {
        let now = unix_now();
        let fresh = self
            .headers
            .get(audience)
            .is_some_and(|(_, exp)| exp.saturating_sub(now) > RENEW_SECS);
        if !fresh {
            let exp = now + LIFETIME_SECS;
            let value = self.sign(audience, exp);
            self.headers.insert(audience.to_string(), (value, exp));
        }
        self.headers.get(audience).map_or("", |(h, _)| h.as_str())
    }

    fn sign(&self, audience: &str, exp: u64) -> String {
        let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({"aud": audience, "exp": exp, "sub": SUBJECT});
        let input = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig: Signature = self.key.sign(input.as_bytes());
        format!(
            "vapid t={input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes()),
            self.k
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn signs_a_verifiable_jwt_once_per_audience() {
        let mut v = Vapid::generate(&mut Rng::from_seed(3)).unwrap();
        let h = v.header("https://push.example:8443").to_string();
        assert_eq!(v.header("https://push.example:8443"), h, "reused");
        let rest = h.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, v.k);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split_once('.').unwrap().1)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "https://push.example:8443");
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > unix_now() + 11 * 3600 && exp <= unix_now() + 12 * 3600);
        let point = URL_SAFE_NO_PAD.decode(k).unwrap();
        let vk = VerifyingKey::from_sec1_bytes(&point).unwrap();
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        assert!(vk.verify(input.as_bytes(), &sig).is_ok());
        assert_ne!(v.header("http://127.0.0.1:1"), h);
        assert!(v.application_server_key.ends_with('='));
        assert_eq!(v.application_server_key.len(), 88);
    }
}
