//! WebPush (RFC 8030 / 8291) rules for app-server requests: which headers a push needs, what a
//! stored message is, and the JSON errors app servers get.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::ids::ChannelId;

/// RFC 8030's limit on a push message body (the encrypted record), in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// RFC 8030 section 5.4: a topic is at most 32 characters of the base64url alphabet.
pub const MAX_TOPIC_LEN: usize = 32;
/// Longest `Encryption` or `Crypto-Key` value kept with a message (aesgcm); real ones are ~100 bytes.
pub const MAX_CRYPTO_HEADER: usize = 512;
/// The largest notification frame a message makes: base64url payload, two crypto headers, id, JSON.
pub const MAX_FRAME: usize = 7 * 1024;
/// Length of an uncompressed P-256 public key (`0x04 ‖ x ‖ y`).
pub const KEY_LEN: usize = 65;

/// An application server's VAPID public key as registered (an uncompressed P-256 point).
/// `{:?}` prints its base64url, not 65 numbers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AppKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppKey({})", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl AppKey {
    /// Decodes base64url, with or without `=` padding (Firefox pads), into a 65-byte `0x04` point.
    pub fn parse(text: &str) -> Option<AppKey> {
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .ok()?;
        let key: [u8; KEY_LEN] = raw.try_into().ok()?;
        (key[0] == 0x04).then_some(AppKey(key))
    }
}

/// RFC 8030 section 5.3 urgency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// `very-low`
    VeryLow,
    /// `low`
    Low,
    /// `normal` (the default)
    Normal,
    /// `high`
    High,
}

/// How the payload was encrypted, with the headers the client needs to decrypt it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 8291 `aes128gcm`: everything is in the body.
    Aes128gcm,
    /// The legacy draft `aesgcm`: salt and sender key travel in headers.
    Aesgcm {
        /// The `Encryption` header (`salt=…`).
        encryption: String,
        /// The `Crypto-Key` header (`dh=…`, maybe also `p256ecdsa=…`).
        crypto_key: String,
    },
}

/// A push message: stored until acked or expired, and sent to the client as one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The channel it is for.
    pub channel: ChannelId,
    /// The message id: the notification's `version`, and the last part of its message URL.
    pub id: String,
    /// Seconds it may still wait for the client (0: live delivery only).
    pub ttl: u64,
    /// The RFC 8030 topic: a newer message with the same topic replaces this one.
    pub topic: Option<String>,
    /// The encrypted body, base64url without padding, with how it was encrypted.
    pub payload: Option<(String, Encoding)>,
}

impl Message {
    /// The bytes the message holds in memory, for budgets.
    pub fn size(&self) -> usize {
        let payload = self.payload.as_ref().map_or(0, |(d, e)| {
            d.len()
                + match e {
                    Encoding::Aes128gcm => 0,
                    Encoding::Aesgcm {
                        encryption,
                        crypto_key,
                    } => encryption.len() + crypto_key.len(),
                }
        });
        std::mem::size_of::<Message>()
            + self.id.len()
            + self.topic.as_ref().map_or(0, String::len)
            + payload
    }
}

/// The WebPush headers of a push request, as sent.
#[derive(Clone, Debug, Default)]
pub struct PushHeaders<'a> {
    /// `TTL`
    pub ttl: Option<&'a str>,
    /// `Urgency`
    pub urgency: Option<&'a str>,
    /// `Topic`
    pub topic: Option<&'a str>,
    /// `Content-Encoding`
    pub content_encoding: Option<&'a str>,
    /// `Encryption` (aesgcm)
    pub encryption: Option<&'a str>,
    /// `Crypto-Key` (aesgcm)
    pub crypto_key: Option<&'a str>,
}

/// A valid push request, not yet given an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The TTL after capping at the server's maximum.
    pub ttl: u64,
    /// The urgency.
    pub urgency: Urgency,
    /// The topic, if any.
    pub topic: Option<String>,
    /// The body (base64url) and its encoding; `None` for an empty body.
    pub payload: Option<(String, Encoding)>,
}

/// Why a push request is refused, in autopush's numbering (errno) where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The token does not open, or names a different endpoint kind.
    InvalidToken,
    /// Unregistered channel or unknown UAID.
    Gone,
    /// Body over [`MAX_PAYLOAD`].
    TooLarge,
    /// VAPID missing where required, or invalid.
    Unauthorized(String),
    /// Valid VAPID, but not by the key this endpoint was registered with.
    WrongKey,
    /// A body without a usable `Content-Encoding` (and its aesgcm headers).
    BadCrypto(String),
    /// `TTL` missing.
    MissingTtl,
    /// `TTL` not a non-negative integer.
    BadTtl,
    /// `Topic` too long or outside the base64url alphabet.
    BadTopic,
    /// `Urgency` not one of the four values.
    BadUrgency,
    /// Not POST.
    Method,
    /// Too many messages waiting for this device.
    Full,
    /// The message URL does not name a pending message.
    NoMessage,
    /// Storage is down.
    Unavailable,
}

impl PushError {
    /// HTTP status, autopush errno, and message.
    pub fn parts(&self) -> (u16, u16, String) {
        match self {
            PushError::InvalidToken => (404, 102, "Invalid endpoint token".into()),
            PushError::Gone => (410, 103, "Subscription is not registered".into()),
            PushError::TooLarge => (
                413,
                104,
                format!("Message body exceeds {MAX_PAYLOAD} bytes"),
            ),
            PushError::Unauthorized(why) => (401, 109, format!("Invalid VAPID: {why}")),
            PushError::WrongKey => (
                403,
                109,
                "VAPID key does not match the key this subscription was made with".into(),
            ),
            PushError::BadCrypto(why) => (400, 110, why.clone()),
            PushError::MissingTtl => (400, 111, "Missing TTL header".into()),
            PushError::BadTtl => (400, 112, "Invalid TTL header".into()),
            PushError::BadTopic => (
                400,
                113,
                format!("Topic must be at most {MAX_TOPIC_LEN} base64url characters"),
            ),
            PushError::BadUrgency => (400, 114, "Invalid Urgency header".into()),
            PushError::Method => (405, 105, "Method not allowed".into()),
            PushError::Full => (
                429,
                115,
                "Too many messages waiting for this subscription".into(),
            ),
            PushError::NoMessage => (404, 106, "No such message pending".into()),
            PushError::Unavailable => (503, 201, "Storage unavailable; retry".into()),
        }
    }

    /// The status and the JSON body `{"code","errno","error","message"}`.
    pub fn response(&self) -> (u16, String) {
        let (code, errno, message) = self.parts();
        let body = json!({
            "code": code,
            "errno": errno,
            "error": reason(code),
            "message": message,
        });
        (code, body.to_string())
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    }
}

fn urgency(raw: Option<&str>) -> Result<Urgency, PushError> {
    let Some(raw) = raw else {
        return Ok(Urgency::Normal);
    };
    Ok(match raw.trim().to_ascii_lowercase().as_str() {
        "very-low" => Urgency::VeryLow,
        "low" => Urgency::Low,
        "normal" => Urgency::Normal,
        "high" => Urgency::High,
        _ => return Err(PushError::BadUrgency),
    })
}

fn ttl(raw: Option<&str>, max_ttl: u64) -> Result<u64, PushError> {
    let raw = raw.ok_or(PushError::MissingTtl)?.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PushError::BadTtl);
    }
    // Any run of digits is a valid delta-seconds (RFC 9110 5.6.1); huge ones just mean "the maximum".
    Ok(raw.parse::<u64>().unwrap_or(u64::MAX).min(max_ttl))
}

fn topic(raw: Option<&str>) -> Result<Option<String>, PushError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let ok = !raw.is_empty()
        && raw.len() <= MAX_TOPIC_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(Some(raw.to_string()))
    } else {
        Err(PushError::BadTopic)
    }
}

fn encoding(h: &PushHeaders<'_>) -> Result<Encoding, PushError> {
    let bad = |why: &str| Err(PushError::BadCrypto(why.into()));
    let Some(ce) = h.content_encoding.map(str::trim) else {
        return bad("A body needs Content-Encoding: aes128gcm");
    };
    if ce.eq_ignore_ascii_case("aes128gcm") {
        return Ok(Encoding::Aes128gcm);
    }
    if !ce.eq_ignore_ascii_case("aesgcm") {
        return bad("Content-Encoding must be aes128gcm (or the legacy aesgcm)");
    }
    let has = |v: Option<&str>, param: &str| {
        v.is_some_and(|v| {
            v.split([';', ','])
                .any(|p| p.trim().to_ascii_lowercase().starts_with(param))
        })
    };
    let too_long = |v: Option<&str>| v.is_some_and(|v| v.len() > MAX_CRYPTO_HEADER);
    if too_long(h.encryption) || too_long(h.crypto_key) {
        return bad("Encryption and Crypto-Key are limited to 512 bytes each");
    }
    if !has(h.encryption, "salt=") {
        return bad("aesgcm needs an Encryption header with salt=");
    }
    if !has(h.crypto_key, "dh=") {
        return bad("aesgcm needs a Crypto-Key header with dh=");
    }
    Ok(Encoding::Aesgcm {
        encryption: h.encryption.unwrap_or("").trim().to_string(),
        crypto_key: h.crypto_key.unwrap_or("").trim().to_string(),
    })
}

/// Checks a push request's headers and body (RFC 8030 section 5, RFC 8291), in autopush's order:
/// TTL, then urgency and topic, then size and encryption.
pub fn parse(h: &PushHeaders<'_>, body: &[u8], max_ttl: u64) -> Result<Push, PushError> {
    let ttl = ttl(h.ttl, max_ttl)?;
    let urgency = urgency(h.urgency)?;
    let topic = topic(h.topic)?;
    if body.len() > MAX_PAYLOAD {
        return Err(PushError::TooLarge);
    }
    let payload = if body.is_empty() {
        None
    } else {
        Some((URL_SAFE_NO_PAD.encode(body), encoding(h)?))
    };
    Ok(Push {
        ttl,
        urgency,
        topic,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 2_592_000;

    fn hdr<'a>(ttl: &'a str) -> PushHeaders<'a> {
        PushHeaders {
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    #[test]
    fn ttl_is_required_and_must_be_digits() {
        let none = PushHeaders::default();
        assert_eq!(parse(&none, b"", MAX), Err(PushError::MissingTtl));
        for bad in ["", "-1", "1.5", "ten", "0x10", " "] {
            assert_eq!(
                parse(&hdr(bad), b"", MAX),
                Err(PushError::BadTtl),
                "{bad:?}"
            );
        }
        assert_eq!(parse(&hdr("0"), b"", MAX).unwrap().ttl, 0);
        assert_eq!(parse(&hdr(" 60 "), b"", MAX).unwrap().ttl, 60);
        assert_eq!(
            parse(&hdr("99999999999999999999999"), b"", MAX)
                .unwrap()
                .ttl,
            MAX
        );
        assert_eq!(parse(&hdr("2592001"), b"", MAX).unwrap().ttl, MAX);
    }

    #[test]
    fn urgency_has_four_values() {
        for (raw, want) in [
            ("very-low", Urgency::VeryLow),
            ("low", Urgency::Low),
            ("NORMAL", Urgency::Normal),
            ("high", Urgency::High),
        ] {
            let h = PushHeaders {
                urgency: Some(raw),
                ..hdr("5")
            };
            assert_eq!(parse(&h, b"", MAX).unwrap().urgency, want);
        }
        let h = PushHeaders {
            urgency: Some("urgent"),
            ..hdr("5")
        };
        assert_eq!(parse(&h, b"", MAX), Err(PushError::BadUrgency));
        assert_eq!(parse(&hdr("5"), b"", MAX).unwrap().urgency, Urgency::Normal);
    }

    #[test]
    fn topic_is_short_base64url() {
        let ok = PushHeaders {
            topic: Some("abc-DEF_123"),
            ..hdr("5")
        };
        assert_eq!(
            parse(&ok, b"", MAX).unwrap().topic.as_deref(),
            Some("abc-DEF_123")
        );
        let long = "a".repeat(33);
        for bad in ["", "has space", "a+b", "a/b", "é", long.as_str()] {
            let h = PushHeaders {
                topic: Some(bad),
                ..hdr("5")
            };
            assert_eq!(parse(&h, b"", MAX), Err(PushError::BadTopic), "{bad:?}");
        }
        let h = PushHeaders {
            topic: Some(&long[..32]),
            ..hdr("5")
        };
        assert!(parse(&h, b"", MAX).is_ok());
    }

    #[test]
    fn body_needs_an_encoding_and_a_size_limit() {
        let h = hdr("5");
        assert!(matches!(parse(&h, b"x", MAX), Err(PushError::BadCrypto(_))));
        let h = PushHeaders {
            content_encoding: Some("aes128gcm"),
            ..hdr("5")
        };
        let p = parse(&h, b"\xff\x00hi", MAX).unwrap();
        assert_eq!(p.payload, Some(("_wBoaQ".into(), Encoding::Aes128gcm)));
        assert!(parse(&h, &[7; MAX_PAYLOAD], MAX).is_ok());
        assert_eq!(
            parse(&h, &[7; MAX_PAYLOAD + 1], MAX),
            Err(PushError::TooLarge)
        );
        let h = PushHeaders {
            content_encoding: Some("gzip"),
            ..hdr("5")
        };
        assert!(matches!(parse(&h, b"x", MAX), Err(PushError::BadCrypto(_))));
        // An empty body needs no encoding at all.
        assert_eq!(parse(&h, b"", MAX).unwrap().payload, None);
    }

    #[test]
    fn aesgcm_needs_salt_and_dh() {
        let base = PushHeaders {
            content_encoding: Some("aesgcm"),
            ..hdr("5")
        };
        assert!(matches!(
            parse(&base, b"x", MAX),
            Err(PushError::BadCrypto(_))
        ));
        let salt_only = PushHeaders {
            encryption: Some("salt=abc"),
            ..base.clone()
        };
        assert!(matches!(
            parse(&salt_only, b"x", MAX),
            Err(PushError::BadCrypto(_))
        ));
        let both = PushHeaders {
            crypto_key: Some("dh=BNk;p256ecdsa=BAx"),
            ..salt_only
        };
        let p = parse(&both, b"x", MAX).unwrap();
        assert_eq!(
            p.payload.unwrap().1,
            Encoding::Aesgcm {
                encryption: "salt=abc".into(),
                crypto_key: "dh=BNk;p256ecdsa=BAx".into()
            }
        );
    }

    #[test]
    fn aesgcm_headers_are_bounded() {
        let long = format!("salt={}", "a".repeat(MAX_CRYPTO_HEADER));
        let h = PushHeaders {
            content_encoding: Some("aesgcm"),
            encryption: Some(&long),
            crypto_key: Some("dh=abc"),
            ..hdr("5")
        };
        assert!(matches!(parse(&h, b"x", 60), Err(PushError::BadCrypto(_))));
    }

    #[test]
    fn app_keys_are_uncompressed_points_with_or_without_padding() {
        let mut raw = [9u8; KEY_LEN];
        raw[0] = 4;
        let padded = base64::engine::general_purpose::URL_SAFE.encode(raw);
        assert!(padded.ends_with('='));
        assert_eq!(AppKey::parse(&padded), Some(AppKey(raw)));
        assert_eq!(
            AppKey::parse(padded.trim_end_matches('=')),
            Some(AppKey(raw))
        );
        raw[0] = 2;
        assert_eq!(AppKey::parse(&URL_SAFE_NO_PAD.encode(raw)), None);
        assert_eq!(AppKey::parse("short"), None);
        assert_eq!(AppKey::parse("!!!"), None);
    }

    #[test]
    fn errors_are_json_with_code_and_errno() {
        let (status, body) = PushError::MissingTtl.response();
        assert_eq!(status, 400);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], 400);
        assert_eq!(v["errno"], 111);
        assert_eq!(v["error"], "Bad Request");
        assert!(v["message"].as_str().unwrap().contains("TTL"));
        assert_eq!(PushError::Gone.response().0, 410);
        assert_eq!(PushError::WrongKey.response().0, 403);
        assert_eq!(PushError::Unauthorized("x".into()).response().0, 401);
        assert_eq!(PushError::TooLarge.response().0, 413);
    }
}
