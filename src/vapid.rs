//! VAPID (RFC 8292): an application server proves which key it holds with an ES256-signed JWT.
//!
//! `Authorization: vapid t=<JWT>, k=<public key>`; the older draft's `WebPush <JWT>` with
//! `Crypto-Key: p256ecdsa=<public key>` is accepted too (py_vapid's `Vapid01` still sends it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::Value;
use sm::webpush::{AppKey, KEY_LEN};

/// RFC 8292 section 2: `exp` must not be more than 24 hours after the request.
pub const MAX_EXPIRY_SECS: u64 = 24 * 3600;
/// Clock difference tolerated between app servers and us, either way, on `exp` only.
const SKEW_SECS: u64 = 60;

/// Why a VAPID header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VapidError {
    /// No VAPID credentials at all.
    Missing,
    /// The header or token is not shaped as RFC 8292 says.
    Malformed(&'static str),
    /// The signature does not verify with the key given.
    BadSignature,
    /// `exp` is more than the tolerated skew in the past.
    Expired,
    /// `exp` is more than 24 hours (plus the skew) away.
    TooLong,
    /// `aud` is not this server's origin, or not an origin at all (a path, query or userinfo).
    WrongAudience,
}

impl std::fmt::Display for VapidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            VapidError::Missing => "missing Authorization: vapid t=..., k=...",
            VapidError::Malformed(why) => why,
            VapidError::BadSignature => "signature does not verify",
            VapidError::Expired => "token expired",
            VapidError::TooLong => "exp is more than 24 hours away",
            VapidError::WrongAudience => "aud is not this push service's origin",
        };
        f.write_str(text)
    }
}

/// The token and key out of the request's headers.
fn credentials<'a>(
    authorization: Option<&'a str>,
    crypto_key: Option<&'a str>,
) -> Result<(&'a str, &'a str), VapidError> {
    let auth = authorization.map(str::trim).ok_or(VapidError::Missing)?;
    let (scheme, rest) = auth.split_once(' ').ok_or(VapidError::Missing)?;
    if scheme.eq_ignore_ascii_case("webpush") {
        let key = crypto_key
            .into_iter()
            .flat_map(|v| v.split([';', ',']))
            .find_map(|p| p.trim().strip_prefix("p256ecdsa="))
            .ok_or(VapidError::Malformed(
                "WebPush scheme needs Crypto-Key: p256ecdsa=",
            ))?;
        return Ok((rest.trim(), key));
    }
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(VapidError::Missing);
    }
    let mut token = None;
    let mut key = None;
    for param in rest.split(',') {
        let Some((name, value)) = param.trim().split_once('=') else {
            continue;
        };
        // RFC 7235 auth-params: names are case-insensitive, values may be quoted strings.
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        match name.trim().to_ascii_lowercase().as_str() {
            "t" => token = Some(value),
            "k" => key = Some(value),
            _ => {}
        }
    }
    match (token, key) {
        (Some(t), Some(k)) => Ok((t, k)),
        _ => Err(VapidError::Malformed("vapid needs both t= and k=")),
    }
}

fn b64(text: &str) -> Result<Vec<u8>, VapidError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| VapidError::Malformed("not base64url"))
}

/// The scheme, host and port of a URL, as `aud` must spell it; default ports dropped.
pub fn origin(url: &str) -> String {
    let lower = url.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").unwrap_or(("http", &lower));
    let host = rest.split('/').next().unwrap_or("");
    let host = match (scheme, host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h,
        _ => host,
    };
    format!("{scheme}://{host}")
}

/// Checks the request's VAPID credentials: the key they name, if the JWT is valid for `origin`
/// at `now` (Unix seconds).
pub fn verify(
    authorization: Option<&str>,
    crypto_key: Option<&str>,
    origin_want: &str,
    now: u64,
) -> Result<AppKey, VapidError> {
    let (token, key_text) = credentials(authorization, crypto_key)?;
    let key_raw: [u8; KEY_LEN] = b64(key_text)?
        .try_into()
        .map_err(|_| VapidError::Malformed("k is not a 65-byte P-256 public key"))?;
    let key = VerifyingKey::from_sec1_bytes(&key_raw)
        .map_err(|_| VapidError::Malformed("k is not a P-256 public key"))?;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::Malformed("t is not a JWT"));
    };
    let header: Value =
        serde_json::from_slice(&b64(h)?).map_err(|_| VapidError::Malformed("JWT header"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(VapidError::Malformed("JWT alg must be ES256"));
    }
    let sig = Signature::from_slice(&b64(s)?).map_err(|_| VapidError::BadSignature)?;
    let signed = &token[..h.len() + 1 + p.len()];
    key.verify(signed.as_bytes(), &sig)
        .map_err(|_| VapidError::BadSignature)?;
    let claims: Value =
        serde_json::from_slice(&b64(p)?).map_err(|_| VapidError::Malformed("JWT claims"))?;
    check_claims(&claims, origin_want, now)?;
    Ok(AppKey(key_raw))
}

/// Whether `aud` is an origin, `scheme://host[:port]`: RFC 8292 section 2 asks for the origin of
/// the push resource, so a path (even `/`), query, fragment or userinfo makes it another claim.
fn is_origin(aud: &str) -> bool {
    let Some((scheme, authority)) = aud.split_once("://") else {
        return false;
    };
    let web = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
    web && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
}

fn check_claims(claims: &Value, origin_want: &str, now: u64) -> Result<(), VapidError> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(VapidError::Malformed("JWT needs a numeric exp"))?;
    // The skew goes both ways: by our clock, an app server whose clock is behind ours makes tokens
    // that expire early, one whose clock is ahead makes tokens that reach a little too far.
    if exp.saturating_add(SKEW_SECS) < now {
        return Err(VapidError::Expired);
    }
    if exp > now.saturating_add(MAX_EXPIRY_SECS + SKEW_SECS) {
        return Err(VapidError::TooLong);
    }
    let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
    // Case and a default port are spellings of the same origin; anything past the authority is not.
    if !is_origin(aud) || origin(aud) != origin(origin_want) {
        return Err(VapidError::WrongAudience);
    }
    if claims.get("sub").is_some_and(|s| !s.is_string()) {
        return Err(VapidError::Malformed("JWT sub must be a string"));
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;

    /// A VAPID `Authorization` header for `claims`, signed by `secret` (a test app server).
    pub fn sign(secret: &[u8; 32], claims: &Value) -> String {
        let sk = SigningKey::from_bytes(&(*secret).into()).unwrap();
        let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        let sig: Signature = sk.sign(input.as_bytes());
        let key = sk.verifying_key().to_sec1_point(false);
        format!(
            "vapid t={input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes()),
            URL_SAFE_NO_PAD.encode(key.as_bytes())
        )
    }

    const NOW: u64 = 1_800_000_000;
    const ORIGIN: &str = "https://push.example.com";

    fn claims(exp: u64) -> Value {
        serde_json::json!({"aud": ORIGIN, "exp": exp, "sub": "mailto:a@example.com"})
    }

    #[test]
    fn a_good_token_names_its_key() {
        let auth = sign(&[7; 32], &claims(NOW + 3600));
        let key = verify(Some(&auth), None, ORIGIN, NOW).unwrap();
        assert_eq!(key.0[0], 4);
        // The same key every time.
        let again = sign(&[7; 32], &claims(NOW + 60));
        assert_eq!(verify(Some(&again), None, ORIGIN, NOW).unwrap(), key);
        let other = sign(&[8; 32], &claims(NOW + 60));
        assert_ne!(verify(Some(&other), None, ORIGIN, NOW).unwrap(), key);
    }

    fn v(c: Value) -> Result<AppKey, VapidError> {
        verify(Some(&sign(&[7; 32], &c)), None, ORIGIN, NOW)
    }

    #[test]
    fn exp_in_the_past_is_allowed_the_skew_and_no_more() {
        assert!(v(claims(NOW)).is_ok());
        assert!(v(claims(NOW - 10)).is_ok());
        assert!(v(claims(NOW - SKEW_SECS)).is_ok());
        assert_eq!(v(claims(NOW - SKEW_SECS - 1)), Err(VapidError::Expired));
        assert_eq!(v(claims(NOW - 3600)), Err(VapidError::Expired));
        assert_eq!(v(claims(0)), Err(VapidError::Expired));
    }

    #[test]
    fn exp_is_at_most_24_hours_away_plus_the_skew() {
        assert!(v(claims(NOW + MAX_EXPIRY_SECS)).is_ok());
        assert!(v(claims(NOW + MAX_EXPIRY_SECS + SKEW_SECS)).is_ok());
        assert_eq!(
            v(claims(NOW + MAX_EXPIRY_SECS + SKEW_SECS + 1)),
            Err(VapidError::TooLong)
        );
        assert_eq!(v(claims(u64::MAX)), Err(VapidError::TooLong));
    }

    #[test]
    fn aud_must_be_an_origin_without_path_query_or_userinfo() {
        let aud = |a: &str| {
            let mut c = claims(NOW + 60);
            c["aud"] = a.into();
            v(c)
        };
        for same in [
            ORIGIN,
            "https://PUSH.example.com",
            "HTTPS://push.example.com:443",
        ] {
            assert!(aud(same).is_ok(), "{same}");
        }
        for bad in [
            "https://push.example.com/",
            "https://push.example.com/foo",
            "https://push.example.com:443/foo",
            "https://push.example.com?x=1",
            "https://push.example.com#frag",
            "https://user@push.example.com",
            "https://push.example.com:8443",
            "http://push.example.com",
            "push.example.com",
            "https://",
            " https://push.example.com",
            "https://push.example.com ",
            "wss://push.example.com",
            "",
        ] {
            assert_eq!(aud(bad), Err(VapidError::WrongAudience), "{bad:?}");
        }
        // The server's own origin is taken from public_url, which may carry a path.
        let c = serde_json::json!({"aud": "http://127.0.0.1:8080", "exp": NOW + 60});
        let auth = sign(&[7; 32], &c);
        assert!(verify(Some(&auth), None, "http://127.0.0.1:8080/push", NOW).is_ok());
    }

    #[test]
    fn expiry_and_audience_are_enforced() {
        assert_eq!(v(claims(NOW - 3600)), Err(VapidError::Expired));
        assert_eq!(
            v(claims(NOW + MAX_EXPIRY_SECS + 3600)),
            Err(VapidError::TooLong)
        );
        let mut c = claims(NOW + 60);
        c["aud"] = "https://evil.example.com".into();
        assert_eq!(v(c.clone()), Err(VapidError::WrongAudience));
        c["aud"] = "https://PUSH.example.com:443".into();
        assert!(v(c.clone()).is_ok());
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(v(c), Err(VapidError::WrongAudience));
        let mut c = claims(NOW + 60);
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(v(c), Err(VapidError::Malformed(_))));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let auth = sign(&[7; 32], &claims(NOW + 60));
        // Another app server's key with this token.
        let other = sign(&[9; 32], &claims(NOW + 60));
        let k_other = other.split("k=").nth(1).unwrap();
        let forged = format!("{}k={k_other}", auth.split("k=").next().unwrap());
        assert_eq!(
            verify(Some(&forged), None, ORIGIN, NOW),
            Err(VapidError::BadSignature)
        );
        // Claims swapped for others under the old signature.
        let t = auth.strip_prefix("vapid t=").unwrap();
        let parts: Vec<&str> = t.split(['.', ',']).collect();
        let evil = URL_SAFE_NO_PAD.encode(claims(NOW + 7200).to_string());
        let swapped = auth.replace(parts[1], &evil);
        assert_eq!(
            verify(Some(&swapped), None, ORIGIN, NOW),
            Err(VapidError::BadSignature)
        );
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(verify(None, None, ORIGIN, NOW), Err(VapidError::Missing));
        assert_eq!(
            verify(Some("Bearer x"), None, ORIGIN, NOW),
            Err(VapidError::Missing)
        );
        for bad in [
            "vapid t=a.b.c",
            "vapid k=abc",
            "vapid t=a.b, k=BAAA",
            "vapid t=x.y.z, k=!!!",
        ] {
            assert!(
                matches!(
                    verify(Some(bad), None, ORIGIN, NOW),
                    Err(VapidError::Malformed(_))
                ),
                "{bad}"
            );
        }
        // A 65-byte string that is not a point on the curve.
        let mut not_point = [1u8; 65];
        not_point[0] = 4;
        let bad = format!("vapid t=a.b.c, k={}", URL_SAFE_NO_PAD.encode(not_point));
        assert!(matches!(
            verify(Some(&bad), None, ORIGIN, NOW),
            Err(VapidError::Malformed(_))
        ));
    }

    #[test]
    fn quoted_and_upper_case_params_are_read() {
        let auth = sign(&[7; 32], &claims(NOW + 60));
        let (t, k) = auth
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        let quoted = format!("Vapid T=\"{t}\",K=\"{k}\"");
        assert!(verify(Some(&quoted), None, ORIGIN, NOW).is_ok());
    }

    #[test]
    fn legacy_webpush_scheme_takes_the_key_from_crypto_key() {
        let auth = sign(&[7; 32], &claims(NOW + 60));
        let (t, k) = auth
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        let crypto = format!("dh=abc;p256ecdsa={k}");
        let legacy = format!("WebPush {t}");
        assert!(verify(Some(&legacy), Some(&crypto), ORIGIN, NOW).is_ok());
        assert!(matches!(
            verify(Some(&legacy), Some("dh=abc"), ORIGIN, NOW),
            Err(VapidError::Malformed(_))
        ));
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("http://127.0.0.1:8080/push"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin("HTTPS://Example.com:443"), "https://example.com");
        assert_eq!(origin("http://example.com:80/"), "http://example.com");
    }
}
