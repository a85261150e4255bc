//! Reading the client's request body, with a size limit that still lets the client see the 413.
//!
//! An HTTP/1.1 client writes its whole body before it reads the answer. A server that answers
//! 413 and closes while the body is still arriving makes the client fail with a broken pipe
//! or a reset instead, and SDKs then retry the same oversized request. So, as nginx's
//! "lingering close" does, the router reads the rest of a too-large body and throws it away
//! before answering, up to [`DISCARD_AT_MOST`] bytes and [`DISCARD_FOR_AT_MOST`]; past either,
//! it answers at once and the connection closes.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt as _;

use crate::error::ProxyError;
use crate::http1::fields::Fields;

/// The most bytes of a too-large body read and thrown away so the client can read its 413.
pub const DISCARD_AT_MOST: u64 = 64 * 1024 * 1024;

/// The longest a too-large body is read and thrown away before the 413 goes out anyway.
pub const DISCARD_FOR_AT_MOST: Duration = Duration::from_secs(5);

/// Refuses a compressed request body: the router reads the body (JSON, or a form) to route it.
/// Every `Content-Encoding` line of the request counts, read as one list (RFC 9110: lines of
/// one field are one comma-separated list): `identity` on one line and `gzip` on the next is
/// a gzip body as much as `identity, gzip` is. A body whose codings are all `identity` (or
/// none: a blank value) is not compressed; the request goes upstream without the field (see
/// `headers::UpstreamFields`), so the upstream is told nothing else of it.
pub fn check_encoding(fields: &Fields) -> Result<(), ProxyError> {
    let compressed = fields
        .get_all("content-encoding")
        .flat_map(|value| value.split(|b| *b == b','))
        .map(crate::http1::fields::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"));
    if compressed {
        return Err(ProxyError::InvalidRequest(
            "compressed request bodies (Content-Encoding) are not supported; send the body uncompressed"
                .into(),
        ));
    }
    Ok(())
}

/// Why a request body was not read whole.
#[derive(Debug)]
pub enum Unread {
    /// Refused: answered with this error, and logged as a refusal.
    Refused(ProxyError),
    /// The client went away while sending it (it reset the stream, or the connection ended),
    /// or sent nothing for the body read timeout with its stream left open: nobody is left
    /// to answer, and nothing was refused, as the router's HTTP/1 treats a connection that
    /// ends, or falls silent, in a body (it closes it without an answer).
    Gone,
}

impl From<ProxyError> for Unread {
    fn from(error: ProxyError) -> Self {
        Self::Refused(error)
    }
}

/// Reads the client's body (hyper's side of the server), refusing more than `limit` bytes
/// with 413, and a compressed one ([`check_encoding`]). `fields` are the request's.
pub async fn read_body(
    body: Body,
    fields: &Fields,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, Unread> {
    check_encoding(fields)?;
    let declared = fields.get_str("content-length");
    let expects_continue = fields
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let declared = declared.and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&len| len > limit as u64) {
        // A client that asked `Expect: 100-continue` waits for this answer before it sends
        // anything; reading would tell it to go ahead.
        if declared <= DISCARD_AT_MOST && !expects_continue {
            discard(body).await;
        }
        return Err(ProxyError::BodyTooLarge { limit }.into());
    }
    collect_within(body, limit, declared, stall).await
}

/// Collects a body whose length was not declared (or was declared within `limit`), stopping
/// at the first byte past `limit`. A body that sends nothing for `stall` is given up as a
/// client gone, as the router's HTTP/1 gives one up (a client must not hold a request open
/// without sending): it was refused 400, logged and counted as a refusal, where over HTTP/1
/// the same client is neither.
async fn collect_within(
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
    stall: Duration,
) -> Result<Bytes, Unread> {
    let mut gathered = Gathered::expecting(declared.map_or(0, |len| len as usize)).within(limit);
    loop {
        let Ok(frame) = tokio::time::timeout(stall, body.frame()).await else {
            tracing::debug!(
                "an HTTP/2 request body sent nothing for {} s; its stream is reset",
                stall.as_secs_f64()
            );
            return Err(Unread::Gone);
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|error| {
            if client_gone(&error) {
                Unread::Gone
            } else {
                unreadable().into()
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing the router uses
        };
        if gathered.size().saturating_add(data.len()) > limit {
            discard(body).await;
            return Err(ProxyError::BodyTooLarge { limit }.into());
        }
        gathered.push(data);
    }
    Ok(gathered.into_bytes())
}

/// The frames of a body joined into one buffer. A body that arrives in one frame, the usual
/// case for both clients and upstreams, is kept as it is, without a copy.
pub struct Gathered {
    first: Option<Bytes>,
    joined: Option<Vec<u8>>,
    expected: usize,
    /// The most the body may be (see [`Self::within`]); 0 when not given.
    limit: usize,
}

/// How far the buffer of a body of unknown length grows by doubling when [`Gathered::within`]
/// gave its limit; past it, room up to the limit is reserved at once.
const DOUBLED_UP_TO: usize = 1024 * 1024;

impl Gathered {
    /// `expected` is the declared length, used as the capacity once a second frame comes.
    pub fn expecting(expected: usize) -> Self {
        Self {
            first: None,
            joined: None,
            expected,
            limit: 0,
        }
    }

    /// A body the caller refuses past `limit` bytes: one of unknown length (chunked) that
    /// outgrows [`DOUBLED_UP_TO`] gets room up to `limit` at once, as a declared length gets
    /// it from the start. Grown by doubling, its buffer was copied at each step and the old
    /// ones were still held by the allocator: a 32 MiB upload took about 96 MiB. Room not
    /// written to is address space, not memory.
    pub fn within(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn size(&self) -> usize {
        match (&self.first, &self.joined) {
            (_, Some(buffer)) => buffer.len(),
            (Some(only), None) => only.len(),
            (None, None) => 0,
        }
    }

    pub fn push(&mut self, data: Bytes) {
        if let Some(buffer) = &mut self.joined {
            let needed = buffer.len().saturating_add(data.len());
            if needed > buffer.capacity() && needed > DOUBLED_UP_TO && self.limit >= needed {
                // Address space refused: grown by doubling, as without a limit.
                let _ = buffer.try_reserve_exact(self.limit - buffer.len());
            }
            buffer.extend_from_slice(&data);
        } else if let Some(head) = self.first.take() {
            let capacity = self.expected.max(head.len() + data.len());
            let mut buffer = Vec::with_capacity(capacity);
            buffer.extend_from_slice(&head);
            buffer.extend_from_slice(&data);
            self.joined = Some(buffer);
        } else {
            self.first = Some(data);
        }
    }

    pub fn into_bytes(self) -> Bytes {
        self.joined
            .map(Bytes::from)
            .or(self.first)
            .unwrap_or_default()
    }
}

/// Before answering a refusal to a request whose body was not read (a key it does not know,
/// a cross-site post): reads the body and drops it, within bounds, as the router's HTTP/1
/// does before its refusals. An HTTP/2 client still sending would otherwise get the answer
/// followed by a reset of its stream, which httpx (so the openai SDK over HTTP/2) reports as
/// a connection error, and retries, instead of the refusal. Not read: a body declared longer
/// than [`DISCARD_AT_MOST`], or one a client holds back until `100 Continue`.
pub async fn drain_before_refusal(body: Body, fields: &Fields) {
    let expects_continue = fields
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let declared = fields
        .get_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if expects_continue || declared.is_some_and(|len| len > DISCARD_AT_MOST) {
        return;
    }
    discard(body).await;
}

/// Reads what is left of `body` and drops it, within [`DISCARD_AT_MOST`] and
/// [`DISCARD_FOR_AT_MOST`].
async fn discard(mut body: Body) {
    let read_rest = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
            }
            if read > DISCARD_AT_MOST {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_FOR_AT_MOST, read_rest).await;
}

/// Whether a body ended in `error` because the client went away: it reset the stream
/// (RST_STREAM), said GOAWAY, or the connection was lost (closed or failed). A fault h2 found
/// in what the client sent (a body longer than its `Content-Length`) is no such thing.
fn client_gone(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_io() || (h2.is_remote() && (h2.is_reset() || h2.is_go_away()));
        }
        if error.is::<std::io::Error>() {
            return true;
        }
        cause = error.source();
    }
    false
}

fn unreadable() -> ProxyError {
    ProxyError::InvalidRequest("could not read the request body".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of unknown length grows by doubling up to [`DOUBLED_UP_TO`], then gets room up
    /// to its limit at once, and is never grown (copied) again.
    #[test]
    fn a_chunked_body_past_a_mebibyte_gets_room_to_its_limit_at_once() {
        const LIMIT: usize = 8 * 1024 * 1024;
        let piece = Bytes::from(vec![7u8; 64 * 1024]);
        let mut gathered = Gathered::expecting(0).within(LIMIT);
        let mut capacities = Vec::new();
        while gathered.size() + piece.len() <= LIMIT {
            gathered.push(piece.clone());
            if let Some(buffer) = &gathered.joined {
                capacities.push(buffer.capacity());
            }
        }
        let past = capacities.iter().position(|&c| c > DOUBLED_UP_TO);
        let past = past.expect("grown past a mebibyte");
        assert_eq!(capacities[past], LIMIT);
        assert!(capacities[past..].iter().all(|&c| c == LIMIT));
        let body = gathered.into_bytes();
        assert_eq!(body.len(), LIMIT);
        assert!(body.iter().all(|&b| b == 7));
    }
}
