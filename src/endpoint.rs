//! App-server requests: which route a request takes, and what an update request means.

use sm::update::{self, Outcome, Update, UpdateError};
use sm::{ChannelId, Uaid};

use crate::http::{Head, Method, Response};
use crate::metrics::Reason;
use crate::token::Tokens;

/// Where a plain (non-upgrade) HTTP request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/update/<token>`.
    Update(&'a str),
    /// `/wpush/v1/<token>` and `/wpush/v2/<token>`.
    WebPush {
        /// A v2 token (bound to an app server key).
        v2: bool,
        /// The token.
        token: &'a str,
    },
    /// `/m/<message id>`: a message URL.
    Message(&'a str),
    /// `GET /status`.
    Status,
    /// `GET /health`.
    Health,
    /// Anything else.
    NotFound,
}

/// Picks the route for a request head.
pub fn route(head: &Head) -> Route<'_> {
    let path = head.path.as_str();
    if let Some(token) = path.strip_prefix("/update/") {
        return Route::Update(token);
    }
    if let Some(token) = path.strip_prefix("/wpush/v1/") {
        return Route::WebPush { v2: false, token };
    }
    if let Some(token) = path.strip_prefix("/wpush/v2/") {
        return Route::WebPush { v2: true, token };
    }
    if let Some(id) = path.strip_prefix("/m/") {
        return Route::Message(id);
    }
    match (head.method, head.path.as_str()) {
        (Method::Get, "/status" | "/status/") => Route::Status,
        (Method::Get, "/health" | "/health/") => Route::Health,
        _ => Route::NotFound,
    }
}

/// The answer for an unknown path.
pub fn not_found() -> Response {
    Response::json(404, "\"Not Found\"")
}

/// Checks an update request in pushgo's order (method, then version and data, then token).
pub fn parse_update(
    head: &Head,
    token: &str,
    body: &[u8],
    now_secs: u64,
    max_data: usize,
    tokens: &Tokens,
) -> Result<(Uaid, ChannelId, Update), Response> {
    if head.method != Method::Put {
        return Err(Response::json(405, "\"Method Not Allowed\"")
            .header("Allow: PUT")
            .counted(Reason::Method));
    }
    let upd = update::parse(
        head.content_type.as_deref(),
        &head.query,
        body,
        now_secs,
        max_data,
    )
    .map_err(|e| {
        let (status, body) = e.response();
        let why = match e {
            UpdateError::BadVersion => Reason::Version,
            UpdateError::DataTooLong { .. } => Reason::TooLarge,
        };
        Response::json(status, body).counted(why)
    })?;
    let (uaid, channel) = tokens
        .open(token)
        .ok_or_else(|| Response::json(404, "\"Invalid Token\"").counted(Reason::Token))?;
    Ok((uaid, channel, upd))
}

/// 200 or 202 with `{}`.
pub fn outcome(o: Outcome) -> Response {
    Response::json(o.status(), "{}").counted(Reason::Ok)
}

/// The channel behind a valid token is not registered (unregistered, or lost with the store).
pub fn gone() -> Response {
    Response::json(410, "\"Channel not registered\"").counted(Reason::Gone)
}

/// The store failed; the app server should retry.
pub fn unavailable() -> Response {
    Response::json(503, "\"Could not update channel version\"")
        .header("Retry-After: 5")
        .counted(Reason::Unavailable)
}
