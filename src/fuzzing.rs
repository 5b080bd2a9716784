//! The bodies of the `cargo fuzz` targets (`fuzz/`), shared with `tests/fuzz_corpus.rs`, which
//! replays the checked-in corpus on stable Rust in the normal test run.
//!
//! Each function takes arbitrary bytes and must neither panic nor allocate without bound. The
//! assertions inside check invariants (every frame sent is a JSON object, tokens round-trip), so a
//! broken invariant is reported by the fuzzer as a crash too.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sm::webpush::Encoding;
use sm::{
    AppKey, ChannelId, Effect, Id, IdForm, Limits, Message, Session, StoreOp, StoreReply, Uaid,
};

use crate::chunked::Chunked;
use crate::endpoint::{self, Route};
use crate::http::{self, Parsed};
use crate::token::Tokens;
use crate::{vapid, webpush};

/// The token key the targets and the corpus use: base64url of 32 bytes of 7.
pub const TOKEN_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";
/// A second key, so that rotation (several keys opening) is exercised.
pub const OLD_TOKEN_KEY: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg";
/// The origin VAPID tokens must name (`server.public_url`).
pub const ORIGIN: &str = "http://127.0.0.1:8080";
/// The fixed clock of the targets (Unix seconds), so that the corpus's VAPID tokens stay valid.
pub const NOW_SECS: u64 = 1_800_000_000;
/// `endpoint.max_header_size`.
pub const MAX_HEAD: usize = 8192;
/// `endpoint.max_body_size`.
pub const MAX_BODY: usize = 65536;
/// `endpoint.max_data_len`.
pub const MAX_DATA: usize = 4096;
/// `webpush.max_ttl_secs`.
pub const MAX_TTL: u64 = 2_592_000;

/// The token keys of the targets.
pub fn tokens() -> Tokens {
    Tokens::new(&[TOKEN_KEY.to_string(), OLD_TOKEN_KEY.to_string()])
        .expect("the fuzzing token keys are valid")
}

/// Bytes the driver takes decisions from; once used up, every answer is the default.
struct Choices<'a> {
    bytes: &'a [u8],
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    fn id(&mut self) -> Id {
        let seed = self.byte();
        Id::from_parts(
            [seed; 16],
            IdForm::from_byte(seed & 3).unwrap_or(IdForm::Hex),
        )
    }
}

/// Client frames into a [`Session`]: the WebSocket half of the protocol.
///
/// The input is frames separated by `\n`, so corpus files read as one JSON message per line.
/// An optional first line starting with `#` holds control bytes. The first sets the limits
/// (bit 0 turns WebPush off, bit 1 the ping interval check off, bits 2-3 pick `max_channels`
/// from 200, 1, 0, 2); each following one picks the storage answer to the next
/// [`Effect::Store`] (low 2 bits: 0 success, 1 unavailable, 2 an answer of the wrong kind,
/// 3 success with other details), and the bytes after it shape that answer. Without control
/// bytes (or once they are used up) storage always succeeds.
pub fn client_message(data: &[u8]) {
    let (control, frames) = match data.strip_prefix(b"#") {
        Some(rest) => match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], &rest[n + 1..]),
            None => (rest, &[][..]),
        },
        None => (&[][..], data),
    };
    let mut choices = Choices { bytes: control };
    let setup = choices.byte();
    let limits = Limits {
        max_channels: [200, 1, 0, 2][usize::from((setup >> 2) & 3)],
        min_ping_interval_ms: if setup & 2 == 0 { 20_000 } else { 0 },
        webpush: setup & 1 == 0,
        refresh_ms: if setup & 16 == 0 { 0 } else { 30_000 },
    };
    let mut session = Session::new();
    let mut now_ms = NOW_SECS * 1000;
    let mut fresh_counter = 0u8;
    let mut fresh = move || {
        fresh_counter = fresh_counter.wrapping_add(1);
        [fresh_counter; 16]
    };
    let probe = ChannelId(Id::fresh([0xc1; 16]));
    for frame in frames.split(|&b| b == b'\n') {
        if session.is_closed() {
            break;
        }
        // Frames 15 s apart: two pings in a row are too close (20 s), with a frame between not.
        now_ms += 15_000;
        let mut effects = match sm::parse(frame) {
            Ok(req) => session.handle(req, &limits, now_ms, &mut fresh),
            Err(refused) => session.refused(refused),
        };
        // Storage answers at once, so the session is never busy when the next frame comes.
        for _ in 0..4 {
            check_effects(&session, &effects);
            let Some(Effect::Store(op)) = effects.last().cloned() else {
                break;
            };
            assert!(session.is_busy(), "a Store effect leaves the session busy");
            let answer = store_reply(&op, &mut choices);
            effects = session.on_store(answer);
        }
        assert!(!session.is_busy(), "the session waits on no answer");
        // What a live update or message would look like on this socket now.
        let frame = session.notify(&probe, 7, Some("data"));
        let message = session.notify_message(&Message {
            channel: probe,
            id: "m1".into(),
            ttl: 60,
            topic: None,
            payload: Some(("AAEC".into(), Encoding::Aes128gcm)),
        });
        for text in frame.iter().chain(message.iter()) {
            assert_json_object(text);
        }
    }
}

fn check_effects(session: &Session, effects: &[Effect]) {
    for (n, effect) in effects.iter().enumerate() {
        match effect {
            Effect::Send(text) => assert_json_object(text),
            Effect::Store(_) => assert_eq!(n + 1, effects.len(), "Store comes last"),
            Effect::Close => assert!(session.is_closed(), "Close leaves the session closed"),
            Effect::Bind(uaid, _) => assert_eq!(session.uaid(), Some(*uaid), "Bind names the UAID"),
            Effect::Refresh(uaid) => {
                assert_eq!(session.uaid(), Some(*uaid), "Refresh names the UAID")
            }
            Effect::Wake(uaid, wake) => {
                assert_eq!(session.uaid(), Some(*uaid), "Wake names the UAID");
                assert!(
                    wake.to_json().len() <= sm::wake::MAX_LEN,
                    "wake data is bounded"
                );
            }
        }
    }
}

fn assert_json_object(text: &str) {
    let value: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
    assert!(value.is_object(), "frame is not a JSON object: {text}");
}

fn store_reply(op: &StoreOp, c: &mut Choices<'_>) -> StoreReply {
    let pick = c.byte();
    match pick & 3 {
        1 => return StoreReply::Unavailable,
        2 => {
            // The wrong kind of answer: a caller bug the session must survive.
            return match op {
                StoreOp::Hello { .. } => StoreReply::Done,
                _ => StoreReply::Hello {
                    known: true,
                    pending: Vec::new(),
                    messages: Vec::new(),
                },
            };
        }
        _ => {}
    }
    let detailed = pick & 3 == 3;
    match op {
        StoreOp::Hello { .. } => {
            let known = !detailed || pick & 4 != 0;
            let count = if detailed {
                usize::from((pick >> 3) & 3)
            } else {
                1
            };
            let pending = (0..count)
                .map(|_| (ChannelId(c.id()), u64::from(c.byte()) << 40))
                .collect();
            let messages = (0..count)
                .map(|_| {
                    let b = c.byte();
                    Message {
                        channel: ChannelId(c.id()),
                        id: URL_SAFE_NO_PAD.encode([b; 20]),
                        ttl: u64::from(b) * 60,
                        topic: (b & 1 == 1).then(|| "topic".to_string()),
                        payload: match b % 3 {
                            0 => None,
                            1 => Some(("AAECAw".into(), Encoding::Aes128gcm)),
                            _ => Some((
                                "AAECAw".into(),
                                Encoding::Aesgcm {
                                    encryption: "salt=AAEC".into(),
                                    crypto_key: "dh=BAEC".into(),
                                },
                            )),
                        },
                    }
                })
                .collect();
            StoreReply::Hello {
                known,
                pending,
                messages,
            }
        }
        StoreOp::Register { kind, .. } => StoreReply::Registered {
            endpoint: match kind {
                sm::EndpointKind::SimplePush => format!("{ORIGIN}/update/tok"),
                sm::EndpointKind::WebPush(None) => format!("{ORIGIN}/wpush/v1/tok"),
                sm::EndpointKind::WebPush(Some(_)) => format!("{ORIGIN}/wpush/v2/tok\"\\\u{0}"),
            },
        },
        StoreOp::Unregister { .. } | StoreOp::Ack { .. } => StoreReply::Done,
    }
}

/// Bytes from an app server: request heads (pipelined), bodies, routes, update, WebPush and
/// VAPID rules, as the HTTP half of the server runs them, minus storage and sockets.
pub fn http_request(data: &[u8]) {
    let tokens = tokens();
    let mut buf = data;
    // Each complete request takes at least one byte, so this ends.
    loop {
        let head = match http::parse_head(buf, MAX_HEAD) {
            Parsed::Partial => return,
            Parsed::Bad(resp) => {
                let _ = resp.to_bytes(false);
                return;
            }
            Parsed::Complete(head) => head,
        };
        assert!(head.head_len > 0 && head.head_len <= buf.len().min(MAX_HEAD));
        let rest = &buf[head.head_len..];
        // The body as far as it arrived (the server waits for the rest; the rules must not mind),
        // and the bytes it takes once complete.
        let Some((body, used)) = body(&head, rest) else {
            return;
        };
        request(&head, &body, &tokens);
        match used {
            Some(n) if head.upgrade.is_none() => buf = &rest[n..],
            _ => return,
        }
    }
}

/// A request's body, decoded if chunked, and its length on the wire once complete; `None` for a
/// chunked body the server refuses.
fn body(head: &http::Head, rest: &[u8]) -> Option<(Vec<u8>, Option<usize>)> {
    if !head.chunked || head.upgrade.is_some() {
        let end = head.content_length.min(rest.len());
        let complete = head.content_length <= rest.len();
        return Some((rest[..end].to_vec(), complete.then_some(end)));
    }
    let mut decoder = Chunked::new(MAX_BODY, MAX_HEAD);
    let (used, done) = decoder.feed(rest).ok()?;
    assert!(used <= rest.len() && (done || used == rest.len()));
    let body = decoder.into_body();
    assert!(body.len() <= MAX_BODY);
    Some((body, done.then_some(used)))
}

fn request(head: &http::Head, body: &[u8], tokens: &Tokens) {
    if let Some(upgrade) = &head.upgrade {
        match upgrade {
            Ok(up) => {
                let _ = http::switching_protocols(up);
            }
            Err(resp) => {
                let _ = resp.to_bytes(false);
            }
        }
    }
    let answer = match endpoint::route(head) {
        Route::Update(token) => {
            match endpoint::parse_update(head, token, body, NOW_SECS, MAX_DATA, tokens) {
                Ok((_, _, upd)) => {
                    assert!(upd.data.as_ref().is_none_or(|d| d.len() <= MAX_DATA));
                    None
                }
                Err(resp) => Some(resp),
            }
        }
        Route::WebPush { v2, token } => {
            let cx = webpush::PushContext {
                tokens,
                origin: ORIGIN,
                max_ttl: MAX_TTL,
                now: NOW_SECS,
            };
            match webpush::parse_push(head, v2, token, body, &cx) {
                Ok((_, msg)) => {
                    assert!(msg.ttl <= MAX_TTL);
                    Some(webpush::created(ORIGIN, &msg))
                }
                Err(e) => Some(webpush::error(&e)),
            }
        }
        Route::Message(id) => match webpush::parse_delete(head, id, tokens) {
            Ok(_) => None,
            Err(e) => Some(webpush::error(&e)),
        },
        Route::Status | Route::Health | Route::NotFound => Some(endpoint::not_found()),
    };
    if let Some(resp) = answer {
        let _ = resp.to_bytes(head.keep_alive);
    }
    // The rules on their own too, whatever the route, so that every header reaches them.
    if let Ok(push) = sm::webpush::parse(&head.push.as_headers(), body, MAX_TTL) {
        assert!(push.ttl <= MAX_TTL);
    }
    if let Ok(upd) = sm::update::parse(
        head.content_type.as_deref(),
        &head.query,
        body,
        NOW_SECS,
        MAX_DATA,
    ) {
        assert!(upd.data.as_ref().is_none_or(|d| d.len() <= MAX_DATA));
    }
    let _ = vapid::verify(
        head.authorization.as_deref(),
        head.push.crypto_key.as_deref(),
        ORIGIN,
        NOW_SECS,
    );
}

/// Token strings: opened as every kind, and ids from the input sealed and opened again.
pub fn token(data: &[u8]) {
    let tokens = tokens();
    let text = String::from_utf8_lossy(data);
    let opened = [
        tokens.open(&text).map(|(u, c)| (u, c, None)),
        tokens.open_webpush(false, &text),
        tokens.open_webpush(true, &text),
        tokens.open_message(&text).map(|(u, c)| (u, c, None)),
    ];
    // Each kind has its own associated data: one string opens as one kind at most.
    assert!(opened.iter().filter(|o| o.is_some()).count() <= 1);
    // Key material from the input: every AppKey that parses is a valid key.
    if let Some(key) = AppKey::parse(&text) {
        assert_eq!(key.0[0], 4);
    }
    let Some((ids, rest)) = data.split_first_chunk::<33>() else {
        return;
    };
    let form = |b: u8| IdForm::from_byte(b & 3).unwrap_or(IdForm::Hex);
    let uaid = Uaid(Id::from_parts(
        ids[..16].try_into().unwrap_or([0; 16]),
        form(ids[32]),
    ));
    let channel = ChannelId(Id::from_parts(
        ids[16..32].try_into().unwrap_or([0; 16]),
        form(ids[32] >> 2),
    ));
    let same = |(u, c): (Uaid, ChannelId)| {
        u.to_string() == uaid.to_string() && c.to_string() == channel.to_string()
    };
    let Some(sealed) = tokens.seal(&uaid, &channel) else {
        return;
    };
    assert!(
        tokens.open(&sealed).is_some_and(same),
        "SimplePush round trip"
    );
    assert!(tokens.open_webpush(false, &sealed).is_none());
    let v1 = tokens.seal_webpush(&uaid, &channel, None);
    let v1 = v1.expect("a nonce was had a moment ago");
    let (u, c, hash) = tokens.open_webpush(false, &v1).expect("v1 round trip");
    assert!(same((u, c)) && hash.is_none(), "v1 round trip");
    assert!(tokens.open_webpush(true, &v1).is_none() && tokens.open(&v1).is_none());
    let mut point = [4u8; sm::webpush::KEY_LEN];
    for (p, b) in point.iter_mut().skip(1).zip(rest.iter().cycle()) {
        *p = *b;
    }
    let key = AppKey(point);
    let v2 = tokens.seal_webpush(&uaid, &channel, Some(&key));
    let v2 = v2.expect("a nonce was had a moment ago");
    let (u, c, hash) = tokens.open_webpush(true, &v2).expect("v2 round trip");
    assert!(same((u, c)), "v2 round trip");
    assert_eq!(hash, Some(crate::token::key_hash(&key)));
    let id = tokens.seal_message(&uaid, &channel);
    let id = id.expect("a nonce was had a moment ago");
    assert!(
        tokens.open_message(&id).is_some_and(same),
        "message round trip"
    );
    assert!(tokens.open(&id).is_none());
    // Every sealed string is base64url without padding, so it fits in a URL path as is.
    for s in [&sealed, &v1, &v2, &id] {
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
