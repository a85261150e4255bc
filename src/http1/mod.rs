//! The router's own HTTP/1.1, on the path every proxied request takes: the client's
//! connection ([`server`]) and the message pieces both ends share ([`fields`], [`framing`]);
//! the upstream end is [`crate::upstream::plain`].
//!
//! Why not hyper here: measured on the 2-core benchmark machine, the router spent 26 µs of
//! user CPU per proxied request against nginx's 8–9 µs, and a bare HTTP/1 relay written on
//! tokio with `httparse` 2–3 µs. Most of the difference was layers a proxy does not need:
//! hyper's server dispatcher and axum's routing around the handler, a `HeaderMap` built,
//! hashed and copied on each side, and hyper's client driving each upstream connection from a
//! task of its own, reached through channels. Here one task per client connection reads a
//! request, writes it upstream, and relays the answer, with header fields kept as slices of
//! the bytes they arrived in.
//!
//! What it serves itself: HTTP/1.0 and 1.1 (a later 1.x as 1.1), keep-alive and pipelining, `Content-Length` and
//! chunked bodies both ways, `Expect: 100-continue`. Everything else goes to code that
//! already handles it: requests other than a proxied `POST` to the axum app (the same
//! handlers as before), and a connection that opens with HTTP/2's preface to hyper.
//! Ambiguous framing (`Transfer-Encoding` with `Content-Length`, conflicting lengths, a
//! transfer coding other than chunked) is refused with 400 and the connection closed, so
//! nothing in front of the router can disagree with it about where a request ends.

pub mod fields;
pub mod framing;
pub mod head;
pub mod http2;
pub mod io;
pub mod server;

/// Largest request head (request line and header fields) a client may send: 431 beyond it.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;

/// Most header fields in a request head: 431 beyond it (hyper's limit too).
pub const MAX_FIELDS: usize = 100;

/// Most header fields in an upstream's answer head (bounded by [`MAX_HEAD_BYTES`] too): an
/// answer the upstream has made, and billed, is not thrown away for the number of its
/// fields alone; a provider's rate-limit, tracing and CDN fields together pass 100 more
/// easily than a client's request does. The slots for them are on the stack and left
/// uninitialised, so a larger limit costs an answer nothing.
pub const MAX_RESPONSE_FIELDS: usize = 256;

/// Longest request target (path and query) a request the axum app answers may have: the
/// limit of `http::Uri` (`u16::MAX - 1`), which the app's request is built on; 414 beyond
/// it. A proxied `POST` or a forwarded `GET`/`DELETE` never becomes a `Uri` and takes
/// targets up to [`MAX_HEAD_BYTES`].
pub const MAX_URI_BYTES: usize = u16::MAX as usize - 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// [`MAX_URI_BYTES`] is `http::Uri`'s own limit: the longest target it parses.
    #[test]
    fn the_uri_limit_is_that_of_http_uri() {
        let longest = format!("/{}", "a".repeat(MAX_URI_BYTES - 1));
        assert!(longest.parse::<http::Uri>().is_ok());
        assert!(format!("{longest}a").parse::<http::Uri>().is_err());
    }
}
