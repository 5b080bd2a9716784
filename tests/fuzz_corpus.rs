//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets' code on stable
//! Rust, so every input that once found a bug, or that seeds the fuzzer, stays a regression test.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` rewrites the seed files (named
//! `seed-*`), for instance after a change to the token format or the fuzzing key.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use simplepush::fuzzing;
use sm::{AppKey, ChannelId, Id, Uaid};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("client_message", fuzzing::client_message),
    ("http_request", fuzzing::http_request),
    ("token", fuzzing::token),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        for file in files {
            let data = fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{target} panics on {} (base64 {})",
                file.display(),
                URL_SAFE_NO_PAD.encode(&data)
            );
        }
    }
}

/// The seeds reach past token, signature and header checks, so the fuzzer starts deep: a seed
/// that no longer does (say the token format changed) needs `write_seed_corpus` again.
#[test]
fn seeds_reach_the_deep_paths() {
    use simplepush::endpoint::{self, Route};
    use simplepush::http::{parse_head, Parsed};
    use simplepush::webpush::{self, PushContext};

    let tokens = fuzzing::tokens();
    let cx = PushContext {
        tokens: &tokens,
        origin: fuzzing::ORIGIN,
        max_ttl: fuzzing::MAX_TTL,
        now: fuzzing::NOW_SECS,
    };
    for name in [
        "update",
        "update-old-key",
        "wpush-v1",
        "wpush-v2-vapid",
        "wpush-aesgcm-draft-vapid",
        "delete-message",
    ] {
        let data = fs::read(corpus_dir("http_request").join(format!("seed-{name}"))).unwrap();
        let Parsed::Complete(head) = parse_head(&data, fuzzing::MAX_HEAD) else {
            panic!("{name}: head does not parse");
        };
        let body = &data[head.head_len..];
        let ok = match endpoint::route(&head) {
            Route::Update(t) => endpoint::parse_update(
                &head,
                t,
                body,
                fuzzing::NOW_SECS,
                fuzzing::MAX_DATA,
                &tokens,
            )
            .is_ok(),
            Route::WebPush { v2, token } => webpush::parse_push(&head, v2, token, body, &cx)
                .map_err(|e| panic!("{name}: {e:?}"))
                .is_ok(),
            Route::Message(id) => webpush::parse_delete(&head, id, &tokens).is_ok(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(ok, "{name}: refused");
    }
    for name in [
        "simplepush",
        "simplepush-old-key",
        "wpush-v1",
        "wpush-v2",
        "message",
    ] {
        let data = fs::read(corpus_dir("token").join(format!("seed-{name}"))).unwrap();
        let text = std::str::from_utf8(&data).unwrap();
        let opens = tokens.open(text).is_some()
            || tokens.open_webpush(false, text).is_some()
            || tokens.open_webpush(true, text).is_some()
            || tokens.open_message(text).is_some();
        assert!(opens, "token seed {name} does not open");
    }
}

const C1: &str = "0cb8a613-8e2b-4b47-b370-51098daa8401";
const C2: &str = "1cb8a6138e2b4b47b37051098daa8402";
const U1: &str = "9f3c0b6e5d2a4c8e9b7a6d5c4b3a2f1e";

/// A VAPID app server: the page's `applicationServerKey` and `Authorization` headers.
struct AppServer(SigningKey);

impl AppServer {
    fn public(&self) -> Vec<u8> {
        self.0
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }

    /// `vapid t=<JWT>, k=<key>` (RFC 8292), or the draft's `WebPush <JWT>` and its Crypto-Key value.
    fn auth(&self, rfc: bool) -> (String, String) {
        let claims = serde_json::json!({
            "aud": fuzzing::ORIGIN,
            "exp": fuzzing::NOW_SECS + 3600,
            "sub": "mailto:ops@example.com",
        });
        let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        let sig: Signature = self.0.sign(input.as_bytes());
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        let k = URL_SAFE_NO_PAD.encode(self.public());
        if rfc {
            (format!("vapid t={jwt}, k={k}"), String::new())
        } else {
            (format!("WebPush {jwt}"), format!("p256ecdsa={k}"))
        }
    }
}

fn lines(frames: &[&str]) -> Vec<u8> {
    frames.join("\n").into_bytes()
}

fn request(start: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{start} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

/// Writes the hand-made seed inputs (tokens are sealed with the fuzzing key, so each run differs).
#[test]
#[ignore]
fn write_seed_corpus() {
    let app = AppServer(SigningKey::from_bytes(&[9u8; 32].into()).unwrap());
    let app_key = URL_SAFE_NO_PAD.encode(app.public());

    // Client frames, one per line; a first line starting with `#` holds the control bytes.
    let hello_sp = r#"{"messageType":"hello","uaid":"","channelIDs":[]}"#;
    let hello_wp = r#"{"messageType":"hello","use_webpush":true,"broadcasts":{}}"#;
    let register = format!(r#"{{"messageType":"register","channelID":"{C1}"}}"#);
    let register_key =
        format!(r#"{{"messageType":"register","channelID":"{C2}","key":"{app_key}="}}"#);
    let unregister = format!(r#"{{"messageType":"unregister","channelID":"{C1}","code":200}}"#);
    let ack_sp =
        format!(r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":12}}]}}"#);
    let ack_wp = format!(
        r#"{{"messageType":"ack","updates":[{{"channelID":"{C1}","version":"gAAAAABm","code":100}}]}}"#
    );
    let seeds: [(&str, Vec<u8>); 8] = [
        (
            "simplepush",
            lines(&[
                hello_sp,
                &register,
                &ack_sp,
                &unregister,
                "{}",
                r#"{"messageType":"ping"}"#,
            ]),
        ),
        (
            "webpush",
            lines(&[
                hello_wp,
                &register,
                &register_key,
                &ack_wp,
                r#"{"messageType":"nack","version":"gAAAAABm","code":301}"#,
                r#"{"messageType":"broadcast_subscribe","broadcasts":{"remote-settings/monitor_changes":"v1"}}"#,
                &unregister,
            ]),
        ),
        (
            // Known UAID: stored versions flushed, stored messages resent, then a repeated hello.
            "known-uaid-pending",
            lines(&[
                "#\x00??7",
                &format!(r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}"]}}"#),
                &format!(
                    r#"{{"MessageType":"HELLO","UAID":"{}","ChannelIDs":[]}}"#,
                    U1.to_uppercase()
                ),
                r#"{"messageType":"hello","uaid":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","channelIDs":[]}"#,
            ]),
        ),
        (
            "webpush-known-uaid",
            lines(&[
                "#\x00?3",
                &format!(r#"{{"messageType":"hello","uaid":"{U1}","use_webpush":true}}"#),
                &ack_wp,
                &register,
            ]),
        ),
        (
            // Storage answers: success, unavailable, the wrong kind.
            "store-failures",
            lines(&[
                "#\x000012",
                hello_sp,
                &register,
                &unregister,
                &ack_sp,
                &register,
            ]),
        ),
        (
            // WebPush off, no ping limit, at most one channel: the hello's data is forgotten.
            "limits",
            lines(&[
                "#\x07",
                &format!(
                    r#"{{"messageType":"hello","uaid":"{U1}","channelIDs":["{C1}","{C2}"],"use_webpush":true}}"#
                ),
                "{}",
                "{ }",
                &ack_wp,
            ]),
        ),
        (
            "refusals",
            lines(&[
                "",
                r#"{"messageType":"register","channelID":"not-a-uuid"}"#,
                r#"{"messageType":"bogus","x":[1,{"y":null}]}"#,
            ]),
        ),
        (
            "malformed",
            lines(&[
                r#"{"messageType":"hello","uaid":"not-a-uuid","channelIDs":[]}"#,
                "[1,2]",
                "banana",
            ]),
        ),
    ];
    for (name, data) in seeds {
        write("client_message", name, &data);
    }

    let tokens = fuzzing::tokens();
    let uaid = Uaid(Id::parse(U1).unwrap());
    let chid = ChannelId(Id::parse(C1).unwrap());
    let key = AppKey::parse(&app_key).unwrap();
    let simple = tokens.seal(&uaid, &chid).unwrap();
    let v1 = tokens.seal_webpush(&uaid, &chid, None).unwrap();
    let v2 = tokens.seal_webpush(&uaid, &chid, Some(&key)).unwrap();
    let message = tokens.seal_message(&uaid, &chid).unwrap();
    let old = simplepush::token::Tokens::new(&[fuzzing::OLD_TOKEN_KEY.to_string()])
        .unwrap()
        .seal(&uaid, &chid)
        .unwrap();
    let (vapid, _) = app.auth(true);
    let (draft, crypto_key) = app.auth(false);
    let form = "Content-Type: application/x-www-form-urlencoded";
    let aes = "Content-Encoding: aes128gcm";
    let record: Vec<u8> = (0u8..=40).collect();
    let mut pipelined = request(&format!("PUT /update/{simple}?version=5&data=hi"), &[], b"");
    pipelined.extend(request("GET /status", &["Connection: keep-alive"], b""));
    pipelined.extend(request("GET /health/", &["Connection: close"], b""));
    let mut chunked_update = request(
        &format!("PUT /update/{simple}"),
        &[form, "Transfer-Encoding: chunked"],
        b"",
    );
    chunked_update
        .extend_from_slice(b"8;ext=\"a\"\r\nversion=\r\n2\r\n12\r\n0\r\nX-Trailer: t\r\n\r\n");
    chunked_update.extend(request("GET /status", &[], b""));
    let seeds: [(&str, Vec<u8>); 11] = [
        (
            "update",
            request(
                &format!("PUT /update/{simple}"),
                &[form],
                b"version=12&data=hello",
            ),
        ),
        ("update-pipelined", pipelined),
        ("update-chunked-pipelined", chunked_update),
        (
            "update-old-key",
            request(
                &format!("PUT /update/{old}?version=3"),
                &["Expect: 100-continue"],
                b"",
            ),
        ),
        (
            "wpush-minimal",
            request(
                "POST /wpush/v1/x",
                &["TTL: 60", aes, "Authorization: vapid t=a.b.c, k=BAAA"],
                &record,
            ),
        ),
        (
            "wpush-v1",
            request(
                &format!("POST /wpush/v1/{v1}"),
                &["TTL: 3600", "Urgency: high", "Topic: news", aes],
                &record,
            ),
        ),
        (
            "wpush-v2-vapid",
            request(
                &format!("POST /wpush/v2/{v2}"),
                &[
                    "TTL: 99999999",
                    "Urgency: very-low",
                    aes,
                    &format!("Authorization: {vapid}"),
                ],
                &record,
            ),
        ),
        (
            "wpush-aesgcm-draft-vapid",
            request(
                &format!("POST /wpush/v1/{v1}"),
                &[
                    "TTL: 0",
                    "Content-Encoding: aesgcm",
                    "Encryption: salt=AAECAwQFBgcICQoLDA0ODw",
                    &format!("Crypto-Key: dh=BAECAwQ;{crypto_key}"),
                    &format!("Authorization: {draft}"),
                ],
                &record,
            ),
        ),
        (
            "delete-message",
            request(&format!("DELETE /m/{message}"), &[], b""),
        ),
        (
            "websocket-upgrade",
            request(
                "GET /",
                &[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Version: 13",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol: push-notification",
                ],
                b"",
            ),
        ),
        (
            "chunked",
            request(
                "POST /wpush/v1/x",
                &[
                    "Transfer-Encoding: chunked",
                    "Content-Length: 5",
                    "Content-Length: 6",
                ],
                b"",
            ),
        ),
    ];
    for (name, data) in seeds {
        write("http_request", name, &data);
    }

    // Token strings of each kind; the first 33 bytes also drive the seal/open round trip.
    let mut raw_ids = vec![0x5a; 16];
    raw_ids.extend([0xa5; 16]);
    raw_ids.push(0b1110);
    raw_ids.extend(app.public());
    let seeds = [
        ("simplepush", simple.into_bytes()),
        ("simplepush-old-key", old.into_bytes()),
        ("wpush-v1", v1.into_bytes()),
        ("wpush-v2", v2.into_bytes()),
        ("message", message.into_bytes()),
        ("app-key", format!("{app_key}=").into_bytes()),
        ("raw-ids", raw_ids),
    ];
    for (name, data) in seeds {
        write("token", name, &data);
    }
}
