//! The WebPush app-server endpoint (RFC 8030): `POST /wpush/v{1,2}/<token>` and `DELETE /m/<id>`.
//!
//! The header and body rules are in `sm::webpush`; this module adds what needs keys and crypto:
//! opening tokens, checking VAPID, minting message ids, and the HTTP answers.

use sm::webpush::{self, PushError};
use sm::{ChannelId, Message, Uaid};

use crate::http::{Head, Method, Response};
use crate::metrics::Reason;
use crate::token::{key_hash, Tokens};
use crate::vapid;

/// What a push request needs from the server.
pub struct PushContext<'a> {
    /// Opens endpoint tokens and seals message ids.
    pub tokens: &'a Tokens,
    /// The origin VAPID tokens must name as `aud`.
    pub origin: &'a str,
    /// The largest TTL kept.
    pub max_ttl: u64,
    /// Unix seconds.
    pub now: u64,
}

/// The JSON error answer.
pub fn error(e: &PushError) -> Response {
    let (status, body) = e.response();
    let resp = Response::json(status, body).counted(reason(e));
    match e {
        PushError::Method => resp.header("Allow: POST"),
        PushError::Unavailable => resp.header("Retry-After: 5"),
        // Room comes back as devices fetch their messages (or as a full store drains).
        PushError::Full => resp.header("Retry-After: 30"),
        PushError::Unauthorized(_) => resp.header("WWW-Authenticate: vapid"),
        _ => resp,
    }
}

/// What an error answer counts as.
fn reason(e: &PushError) -> Reason {
    match e {
        PushError::InvalidToken => Reason::Token,
        PushError::Gone => Reason::Gone,
        PushError::TooLarge => Reason::TooLarge,
        PushError::Unauthorized(_) | PushError::WrongKey => Reason::Vapid,
        PushError::BadCrypto(_) => Reason::Encoding,
        PushError::MissingTtl | PushError::BadTtl => Reason::Ttl,
        PushError::BadTopic => Reason::Topic,
        PushError::BadUrgency => Reason::Urgency,
        PushError::Method => Reason::Method,
        PushError::Full => Reason::Full,
        PushError::NoMessage => Reason::NoMessage,
        PushError::Unavailable => Reason::Unavailable,
    }
}

/// Checks a push request in this order: method, token, VAPID, then headers and body.
pub fn parse_push(
    head: &Head,
    v2: bool,
    token: &str,
    body: &[u8],
    cx: &PushContext<'_>,
) -> Result<(Uaid, Message), PushError> {
    if head.method != Method::Post {
        return Err(PushError::Method);
    }
    let (uaid, channel, bound) = cx
        .tokens
        .open_webpush(v2, token)
        .ok_or(PushError::InvalidToken)?;
    let auth = head.authorization.as_deref();
    let crypto_key = head.push.crypto_key.as_deref();
    // v2 requires VAPID by the registered key; v1 checks VAPID only when it is sent.
    if bound.is_some() || auth.is_some() {
        let key = vapid::verify(auth, crypto_key, cx.origin, cx.now)
            .map_err(|e| PushError::Unauthorized(e.to_string()))?;
        if bound.is_some_and(|h| h != key_hash(&key)) {
            return Err(PushError::WrongKey);
        }
    }
    let push = webpush::parse(&head.push.as_headers(), body, cx.max_ttl)?;
    let id = cx
        .tokens
        .seal_message(&uaid, &channel)
        .ok_or(PushError::Unavailable)?;
    Ok((
        uaid,
        Message {
            channel,
            id,
            ttl: push.ttl,
            topic: push.topic,
            payload: push.payload,
        },
    ))
}

/// `201 Created` with the message URL and the TTL it is kept for.
pub fn created(public_url: &str, msg: &Message) -> Response {
    Response::json(201, "")
        .header(format!("Location: {public_url}/m/{}", msg.id))
        .header(format!("TTL: {}", msg.ttl))
        .counted(Reason::Ok)
}

/// Checks a message-URL request: `DELETE` of a message id we sealed.
pub fn parse_delete(
    head: &Head,
    id: &str,
    tokens: &Tokens,
) -> Result<(Uaid, ChannelId), PushError> {
    if head.method != Method::Delete {
        return Err(PushError::Method);
    }
    tokens.open_message(id).ok_or(PushError::NoMessage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Parsed};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use sm::{AppKey, ChannelId, Id};

    const ORIGIN: &str = "http://127.0.0.1:8080";
    const NOW: u64 = 1_800_000_000;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes(), 8192) {
            Parsed::Complete(h) => *h,
            other => panic!("{other:?}"),
        }
    }

    fn ids() -> (Uaid, ChannelId) {
        (
            Uaid(Id::fresh([1; 16])),
            ChannelId(Id::parse("0cb8a613-8e2b-4b47-b370-51098daa8401").unwrap()),
        )
    }

    fn app_key(secret: &[u8; 32]) -> (String, AppKey) {
        let auth = crate::vapid::tests::sign(
            secret,
            &serde_json::json!({"aud": ORIGIN, "exp": NOW + 600, "sub": "mailto:x@y"}),
        );
        let k = auth.split("k=").nth(1).unwrap();
        let raw: [u8; 65] = URL_SAFE_NO_PAD.decode(k).unwrap().try_into().unwrap();
        (auth, AppKey(raw))
    }

    fn post(path: &str, extra: &str) -> Head {
        head(&format!("POST {path} HTTP/1.1\r\nTTL: 60\r\n{extra}\r\n"))
    }

    #[test]
    fn v2_needs_vapid_by_the_registered_key() {
        let tokens = Tokens::new(&[]).unwrap();
        let cx = PushContext {
            tokens: &tokens,
            origin: ORIGIN,
            max_ttl: 100,
            now: NOW,
        };
        let (u, c) = ids();
        let (auth, key) = app_key(&[5; 32]);
        let tok = tokens.seal_webpush(&u, &c, Some(&key)).unwrap();
        let path = format!("/wpush/v2/{tok}");
        let ok = post(&path, &format!("Authorization: {auth}\r\n"));
        let (uaid, msg) = parse_push(&ok, true, &tok, b"", &cx).unwrap();
        assert_eq!(uaid, u);
        assert_eq!(msg.channel, c);
        assert_eq!(msg.ttl, 60);
        assert!(tokens.open_message(&msg.id).is_some());

        let none = post(&path, "");
        assert!(matches!(
            parse_push(&none, true, &tok, b"", &cx),
            Err(PushError::Unauthorized(_))
        ));
        let (other, _) = app_key(&[6; 32]);
        let wrong = post(&path, &format!("Authorization: {other}\r\n"));
        assert_eq!(
            parse_push(&wrong, true, &tok, b"", &cx),
            Err(PushError::WrongKey)
        );
        // The v2 token is not a v1 token.
        assert_eq!(
            parse_push(&ok, false, &tok, b"", &cx),
            Err(PushError::InvalidToken)
        );
        let put = head(&format!("PUT {path} HTTP/1.1\r\nTTL: 60\r\n\r\n"));
        assert_eq!(
            parse_push(&put, true, &tok, b"", &cx),
            Err(PushError::Method)
        );
    }

    #[test]
    fn v1_checks_vapid_only_when_sent_and_headers_after_it() {
        let tokens = Tokens::new(&[]).unwrap();
        let cx = PushContext {
            tokens: &tokens,
            origin: ORIGIN,
            max_ttl: 100,
            now: NOW,
        };
        let (u, c) = ids();
        let tok = tokens.seal_webpush(&u, &c, None).unwrap();
        let path = format!("/wpush/v1/{tok}");
        assert!(parse_push(&post(&path, ""), false, &tok, b"", &cx).is_ok());
        let (auth, _) = app_key(&[5; 32]);
        assert!(parse_push(
            &post(&path, &format!("Authorization: {auth}\r\n")),
            false,
            &tok,
            b"",
            &cx
        )
        .is_ok());
        let bad = post(&path, "Authorization: vapid t=a.b.c, k=xyz\r\n");
        assert!(matches!(
            parse_push(&bad, false, &tok, b"", &cx),
            Err(PushError::Unauthorized(_))
        ));
        let no_ttl = head(&format!("POST {path} HTTP/1.1\r\n\r\n"));
        assert_eq!(
            parse_push(&no_ttl, false, &tok, b"", &cx),
            Err(PushError::MissingTtl)
        );
        let long = post(&path, "TTL: 60\r\n");
        assert_eq!(parse_push(&long, false, &tok, b"", &cx).unwrap().1.ttl, 60);
        let capped = head(&format!("POST {path} HTTP/1.1\r\nTTL: 5000\r\n\r\n"));
        assert_eq!(
            parse_push(&capped, false, &tok, b"", &cx).unwrap().1.ttl,
            100
        );
        assert_eq!(
            parse_push(&post(&path, ""), false, "nope", b"", &cx),
            Err(PushError::InvalidToken)
        );
    }

    #[test]
    fn created_names_the_message_url() {
        let (u, c) = ids();
        let tokens = Tokens::new(&[]).unwrap();
        let msg = Message {
            channel: c,
            id: tokens.seal_message(&u, &c).unwrap(),
            ttl: 42,
            topic: None,
            payload: None,
        };
        let r = created("http://h:1", &msg);
        assert_eq!(r.status, 201);
        assert!(r
            .headers
            .contains(&format!("Location: http://h:1/m/{}", msg.id)));
        assert!(r.headers.contains(&"TTL: 42".to_string()));
        let del = head(&format!("DELETE /m/{} HTTP/1.1\r\n\r\n", msg.id));
        assert_eq!(parse_delete(&del, &msg.id, &tokens), Ok((u, c)));
        assert_eq!(
            parse_delete(&del, "junk", &tokens),
            Err(PushError::NoMessage)
        );
        let get = head(&format!("GET /m/{} HTTP/1.1\r\n\r\n", msg.id));
        assert_eq!(parse_delete(&get, &msg.id, &tokens), Err(PushError::Method));
    }
}
