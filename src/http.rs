//! One HTTP/1.1 request head read with `httparse`, and the bytes of a response.

use crate::metrics::Reason;

/// Request methods the server tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// POST
    Post,
    /// DELETE
    Delete,
    /// Any other method.
    Other,
}

/// What a WebSocket upgrade request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// The client offered the `push-notification` subprotocol.
    pub push_protocol: bool,
    /// Every `X-Forwarded-For` line, joined as one list (read only from a trusted proxy).
    pub forwarded_for: Option<String>,
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// The query string without `?`.
    pub query: String,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// `Content-Length` (0 if absent), or the decoded length once a chunked body is complete.
    pub content_length: usize,
    /// `Transfer-Encoding: chunked`: the body is framed in chunks (`crate::chunked`).
    pub chunked: bool,
    /// `Authorization`, if sent.
    pub authorization: Option<String>,
    /// The WebPush headers (RFC 8030/8291), if sent.
    pub push: PushFields,
    /// `Expect: 100-continue`: the client waits for a go-ahead before the body.
    pub expect_continue: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Present when the request asks for a WebSocket (`Upgrade: websocket`).
    pub upgrade: Option<Result<Upgrade, Response>>,
    /// Bytes taken by the head.
    pub head_len: usize,
}

/// An HTTP response about to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Its media type (`application/json` unless set).
    pub content_type: &'static str,
    /// Extra header lines, each without CRLF.
    pub headers: Vec<String>,
    /// Close the connection after this response.
    pub close: bool,
    /// What `simplepush_endpoint_responses_total` counts it as, when an app server gets it.
    pub counted: Option<Reason>,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            body: body.into(),
            content_type: "application/json",
            headers: Vec::new(),
            close: false,
            counted: None,
        }
    }

    /// The same, counted as an app-server answer for this reason.
    pub fn counted(mut self, why: Reason) -> Response {
        self.counted = Some(why);
        self
    }

    /// The same with another media type.
    pub fn typed(mut self, content_type: &'static str) -> Response {
        self.content_type = content_type;
        self
    }

    /// The same, closing the connection afterwards.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The same with one more header line.
    pub fn header(mut self, line: impl Into<String>) -> Response {
        self.headers.push(line.into());
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.close || !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The result of looking at the bytes read so far.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A complete head.
    Complete(Box<Head>),
    /// A request to refuse, then close.
    Bad(Response),
}

const MAX_HEADERS: usize = 48;

fn bad(status: u16, body: &str) -> Parsed {
    Parsed::Bad(Response::json(status, format!("\"{body}\"")).closing())
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a request head from `buf`, refusing heads longer than `max_head`.
pub fn parse_head(buf: &[u8], max_head: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return bad(431, "Request header too large")
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return bad(431, "Too many headers"),
        Err(_) => return bad(400, "Malformed request"),
    };
    if head_len > max_head {
        return bad(431, "Request header too large");
    }
    let version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut h = Fields::default();
    for header in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return bad(400, "Header is not UTF-8");
        };
        if let Err(resp) = h.take(header.name, value.trim()) {
            return Parsed::Bad(resp);
        }
    }
    let chunked = match h.body_framing() {
        Ok(chunked) => chunked,
        Err(resp) => return resp,
    };
    let keep_alive = match (version, &h.connection) {
        // RFC 9112 section 6.1: framing an HTTP/1.0 peer sent this way cannot be trusted further.
        (0, _) if chunked => false,
        (_, Some(c)) if has_token(c, "close") => false,
        (0, Some(c)) => has_token(c, "keep-alive"),
        (0, None) => false,
        _ => true,
    };
    let upgrade = h.upgrade_websocket.then(|| h.upgrade(method));
    Parsed::Complete(Box::new(Head {
        method,
        path: path.to_string(),
        query: query.to_string(),
        content_type: h.content_type,
        content_length: h.content_length.unwrap_or(0),
        chunked,
        authorization: h.authorization,
        push: h.push,
        expect_continue: h.expect_continue,
        keep_alive,
        upgrade,
        head_len,
    }))
}

/// The headers of a WebPush request.
#[derive(Clone, Debug, Default)]
pub struct PushFields {
    /// `TTL`
    pub ttl: Option<String>,
    /// `Urgency`
    pub urgency: Option<String>,
    /// `Topic`
    pub topic: Option<String>,
    /// `Content-Encoding`
    pub content_encoding: Option<String>,
    /// `Encryption`
    pub encryption: Option<String>,
    /// `Crypto-Key`
    pub crypto_key: Option<String>,
}

impl PushFields {
    /// Borrowed, as the protocol crate takes them.
    pub fn as_headers(&self) -> sm::webpush::PushHeaders<'_> {
        sm::webpush::PushHeaders {
            ttl: self.ttl.as_deref(),
            urgency: self.urgency.as_deref(),
            topic: self.topic.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            encryption: self.encryption.as_deref(),
            crypto_key: self.crypto_key.as_deref(),
        }
    }

    fn take(&mut self, name: &str, value: &str) -> bool {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let slot = if is("ttl") {
            &mut self.ttl
        } else if is("urgency") {
            &mut self.urgency
        } else if is("topic") {
            &mut self.topic
        } else if is("content-encoding") {
            &mut self.content_encoding
        } else if is("encryption") {
            &mut self.encryption
        } else if is("crypto-key") {
            &mut self.crypto_key
        } else {
            return false;
        };
        *slot = Some(value.to_string());
        true
    }
}

/// The headers the server acts on.
#[derive(Default)]
struct Fields {
    content_type: Option<String>,
    content_length: Option<usize>,
    authorization: Option<String>,
    push: PushFields,
    expect_continue: bool,
    connection: Option<String>,
    /// Every `Transfer-Encoding` line, joined as one list.
    transfer_encoding: Option<String>,
    upgrade_websocket: bool,
    ws_key: Option<String>,
    ws_version: Option<String>,
    push_protocol: bool,
    /// Every `X-Forwarded-For` line, joined as one list.
    forwarded_for: Option<String>,
}

/// `list` with `more` appended, for a header that may come in several lines.
fn joined(list: Option<String>, more: &str) -> String {
    match list {
        Some(before) => format!("{before}, {more}"),
        None => more.to_string(),
    }
}

impl Fields {
    fn take(&mut self, name: &str, value: &str) -> Result<(), Response> {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if self.push.take(name, value) {
            return Ok(());
        }
        if is("content-type") {
            self.content_type = Some(value.to_string());
        } else if is("content-length") {
            // Digits only, and no second, different length: either could smuggle a request past a proxy.
            let invalid = || Response::json(400, "\"Invalid Content-Length\"").closing();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: usize = value.parse().map_err(|_| invalid())?;
            if self.content_length.is_some_and(|old| old != n) {
                return Err(invalid());
            }
            self.content_length = Some(n);
        } else if is("expect") {
            self.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if is("authorization") {
            self.authorization = Some(value.to_string());
        } else if is("connection") {
            self.connection = Some(value.to_string());
        } else if is("transfer-encoding") {
            self.transfer_encoding = Some(joined(self.transfer_encoding.take(), value));
        } else if is("x-forwarded-for") {
            self.forwarded_for = Some(joined(self.forwarded_for.take(), value));
        } else if is("upgrade") {
            self.upgrade_websocket = has_token(value, "websocket");
        } else if is("sec-websocket-key") {
            self.ws_key = Some(value.to_string());
        } else if is("sec-websocket-version") {
            self.ws_version = Some(value.to_string());
        } else if is("sec-websocket-protocol") {
            self.push_protocol |= has_token(value, "push-notification");
        }
        Ok(())
    }

    /// Whether the body is chunked. Content-Length with Transfer-Encoding is how requests are
    /// smuggled past a proxy that reads the other one (RFC 9112 section 6.3): refused. Codings
    /// other than chunked alone (gzip, chunked twice, the old identity) are not implemented.
    fn body_framing(&self) -> Result<bool, Parsed> {
        let Some(te) = &self.transfer_encoding else {
            return Ok(false);
        };
        if self.content_length.is_some() {
            return Err(bad(400, "Content-Length and Transfer-Encoding together"));
        }
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return Err(bad(501, "Only Transfer-Encoding: chunked is implemented"));
        }
        Ok(true)
    }

    fn upgrade(&self, method: Method) -> Result<Upgrade, Response> {
        let refuse = |why: &str| Err(Response::json(400, format!("\"{why}\"")).closing());
        if method != Method::Get {
            return refuse("WebSocket upgrade needs GET");
        }
        if !self
            .connection
            .as_deref()
            .is_some_and(|c| has_token(c, "upgrade"))
        {
            return refuse("WebSocket upgrade needs Connection: Upgrade");
        }
        if self.ws_version.as_deref() != Some("13") {
            return Err(Response::json(426, "\"WebSocket version 13 required\"")
                .header("Sec-WebSocket-Version: 13")
                .closing());
        }
        let Some(key) = self.ws_key.clone().filter(|k| !k.is_empty()) else {
            return refuse("WebSocket upgrade needs Sec-WebSocket-Key");
        };
        Ok(Upgrade {
            key,
            push_protocol: self.push_protocol,
            forwarded_for: self.forwarded_for.clone(),
        })
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The 101 response completing a WebSocket handshake.
pub fn switching_protocols(upgrade: &Upgrade) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let protocol = if upgrade.push_protocol {
        "Sec-WebSocket-Protocol: push-notification\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Head {
        match parse_head(raw.as_bytes(), 8192) {
            Parsed::Complete(h) => *h,
            other => panic!("{other:?}"),
        }
    }

    fn refused(raw: &str) -> Response {
        match parse_head(raw.as_bytes(), 8192) {
            Parsed::Bad(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_with_body_and_query() {
        let h = complete("PUT /update/abc?version=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nversion=4");
        assert_eq!(h.method, Method::Put);
        assert_eq!(h.path, "/update/abc");
        assert_eq!(h.query, "version=3");
        assert_eq!(h.content_length, 9);
        assert!(h.keep_alive);
        assert!(h.upgrade.is_none());
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert!(matches!(
            parse_head(b"PUT /update/abc HTTP/1.1\r\nHost", 8192),
            Parsed::Partial
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert!(matches!(parse_head(big.as_bytes(), 8192), Parsed::Bad(r) if r.status == 431));
    }

    #[test]
    fn chunked_is_read_and_other_codings_are_not_implemented() {
        let h = complete("PUT /x HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n5\r\n");
        assert!(h.chunked && h.keep_alive);
        assert_eq!(h.content_length, 0);
        assert!(!complete("PUT /x HTTP/1.1\r\n\r\n").chunked);
        // HTTP/1.0 framing with Transfer-Encoding: answered, then closed.
        let old = complete(
            "PUT /x HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(old.chunked && !old.keep_alive);
        for other in [
            "gzip",
            "gzip, chunked",
            "chunked, gzip",
            "chunked, chunked",
            "identity",
            "",
            "chunked;q=1",
        ] {
            let raw = format!("PUT /x HTTP/1.1\r\nTransfer-Encoding: {other}\r\n\r\n");
            let r = refused(&raw);
            assert_eq!((r.status, r.close), (501, true), "{other:?}");
        }
        let twice =
            "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(twice).status, 501);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        for raw in [
            "PUT /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
        ] {
            let r = refused(raw);
            assert_eq!((r.status, r.close), (400, true), "{raw}");
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(refused("GARBAGE\r\n\r\n").status, 400);
        assert_eq!(
            refused("PUT /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n").status,
            400
        );
        for bad in [
            "PUT /x HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "PUT /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            assert!(refused(bad).status >= 400, "{bad}");
        }
        let twice = "PUT /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(complete(twice).content_length, 5);
    }

    #[test]
    fn forwarded_for_lines_are_joined_in_order() {
        let h = complete("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 203.0.113.7, 10.0.0.9\r\n\r\n");
        let up = h.upgrade.unwrap().unwrap();
        assert_eq!(
            up.forwarded_for.as_deref(),
            Some("6.6.6.6, 203.0.113.7, 10.0.0.9")
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn websocket_upgrade() {
        let h = complete("GET /any/path HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: push-notification\r\n\r\n");
        let up = h.upgrade.unwrap().unwrap();
        assert!(up.push_protocol);
        assert_eq!(up.forwarded_for, None);
        let resp = String::from_utf8(switching_protocols(&up)).unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: push-notification\r\n"));
        let h = complete("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n");
        assert_eq!(h.upgrade.unwrap().unwrap_err().status, 426);
        let h = complete("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
        assert_eq!(h.upgrade.unwrap().unwrap_err().status, 400);
    }

    #[test]
    fn response_bytes() {
        let r = Response::json(202, "{}").to_bytes(true);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let r = String::from_utf8(
            Response::json(405, "\"x\"")
                .header("Allow: PUT")
                .to_bytes(false),
        )
        .unwrap();
        assert!(r.contains("Connection: close\r\nAllow: PUT\r\n"));
    }
}
