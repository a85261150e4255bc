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
//! What it serves itself: HTTP/1.0 and 1.1, keep-alive and pipelining, `Content-Length` and
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

/// Most header fields in one message head: 431 beyond it (hyper's limit too).
pub const MAX_FIELDS: usize = 100;
