//! Request bodies on the event loop: when one is all here, and chunked ones decoded as they are
//! read (`crate::chunked`), held by the connection until the request is handled.

use super::*;
use crate::chunked::{ChunkError, Chunked};

fn too_large() -> Response {
    Response::json(413, "\"Request body too large\"")
        .closing()
        .counted(metrics::Reason::TooLarge)
}

/// The answer to a chunked body the decoder refused; the connection closes after it, since where
/// the next request would start is unknown.
fn refusal(e: ChunkError) -> Response {
    match e {
        ChunkError::TooLarge => too_large(),
        ChunkError::TrailerTooLarge => Response::json(431, "\"Request trailer too large\"")
            .closing()
            .counted(metrics::Reason::Malformed),
        ChunkError::Malformed(why) => {
            Response::json(400, format!("\"Malformed chunked body: {why}\""))
                .closing()
                .counted(metrics::Reason::Malformed)
        }
    }
}

impl Server {
    /// Whether `head`'s body has all arrived (a chunked one is decoded on as far as it has), or
    /// the answer that refuses it.
    pub(super) fn body_ready(&mut self, key: usize, head: &Head) -> Result<bool, Response> {
        let max_body = self.cfg.endpoint.max_body_size;
        let max_trailer = self.cfg.endpoint.max_header_size;
        if head.content_length > max_body {
            return Err(too_large());
        }
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return Ok(false);
        };
        if head.upgrade.is_some() {
            return Ok(true);
        }
        if !head.chunked {
            return Ok(h.buf.len() >= head.head_len.saturating_add(head.content_length));
        }
        let decoder = h
            .chunked
            .get_or_insert_with(|| Box::new(Chunked::new(max_body, max_trailer)));
        match decoder.feed(&h.buf[head.head_len..]) {
            Ok((used, done)) => {
                // The framing is gone once decoded: the buffer keeps the head and what is not
                // yet decoded (at most one read), the decoder the data.
                h.buf.drain(head.head_len..head.head_len + used);
                Ok(done)
            }
            Err(e) => {
                h.chunked = None;
                Err(refusal(e))
            }
        }
    }

    /// Waits for more of the body, after a `100 Continue` if the client asked for one. `false`
    /// when there is nothing more to do now.
    pub(super) fn await_body(&mut self, key: usize, head: &Head) -> bool {
        if let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        {
            if head.expect_continue && !h.continued && h.out.is_empty() {
                // curl waits a second for this before sending a body over 1 KiB (or chunked).
                h.continued = true;
                h.out = http::CONTINUE.to_vec();
                h.written = 0;
                return true;
            }
        }
        self.read_more(key)
    }

    /// Puts a decoded chunked body where a Content-Length body would be, so that the request is
    /// handled as one; the pipelined bytes after it stay after it.
    pub(super) fn unchunk(&mut self, key: usize, head: &mut Head) {
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let Some(decoder) = h.chunked.take() else {
            return;
        };
        let body = decoder.into_body();
        let rest = h.buf.split_off(head.head_len);
        h.buf.extend_from_slice(&body);
        h.buf.extend_from_slice(&rest);
        head.content_length = body.len();
    }
}
