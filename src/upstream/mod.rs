//! The client proxied requests go upstream through: each lane's own keep-alive HTTP/1
//! connections for plain `http://` upstreams ([`plain`], written and read by the request's
//! own task), hyper's pooled client for TLS upstreams (it speaks HTTP/2 to those that offer
//! it, but for a request with a configured `Host`: [`UpstreamClient::http1`]), and reqwest kept for the few targets it handles and hyper does not. Both HTTP/1
//! clients read an answer the upstream sent before it had the whole request, whether it then
//! closed the connection or kept it open unread ([`plain`], [`keep_reading`]), and refuse an
//! answer in a transfer coding they cannot undo (`refuse_unrequested_coding`).
//!
//! Why not reqwest for everything: its redirect layer parses the URL twice and clones the
//! headers on every request, even with redirects off, and its tower stack adds a dozen
//! allocations; together about an eighth of what proxying a request costs (see README
//! "Benchmark"). The router needs none of it: it follows no redirects, sets its own timeouts
//! and sends bodies it already holds. reqwest still sends what needs its features: targets an
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` setting covers (`NO_PROXY` honoured, as reqwest reads
//! them). A URL with `user:password@` goes as any other, with the Basic credentials reqwest
//! made of it ([`url_credentials`]), so its answers meet the same limits and words.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::http1::fields::{FieldSource, Fields, header_map_of};
use crate::http1::head::write_field;
use crate::http1::{MAX_HEAD_BYTES, MAX_RESPONSE_FIELDS};
use crate::state::{CONNECT_TIMEOUT, HttpClients};

mod keep_reading;
pub mod plain;
mod pool;
mod proxy_env;
mod request_body;
pub(crate) mod url_credentials;

use keep_reading::KeepReading;
pub use proxy_env::{ProxyEnv, Via};
pub use request_body::{Frames, RequestBody};

/// The TCP connection and the TLS handshake together, as reqwest's `connect_timeout` bounds
/// them: hyper's connector times only the TCP part.
#[derive(Clone)]
struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl Connector {
    /// A connector whose TLS handshakes offer `alpn` (`h2` lets an upstream choose HTTP/2),
    /// with `tls`'s roots; plain `http://` too.
    fn new(timeout: Duration, mut tls: rustls::ClientConfig, alpn: Alpn) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        tls.alpn_protocols = match alpn {
            Alpn::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
        };
        // What `HttpsConnectorBuilder::https_or_http()` builds, with the ALPN set here (the
        // builder sets no `http/1.1` for an HTTP/1-only connector: it would offer none).
        let inner = HttpsConnector::from((http, tls));
        Self { inner, timeout }
    }

    /// A new connection to `uri`'s host, TLS when it is `https`, within the connect timeout.
    fn connect(&self, uri: http::Uri) -> <Self as tower_service::Service<http::Uri>>::Future {
        use tower_service::Service as _;
        self.clone().call(uri)
    }
}

/// Which protocols a TLS handshake offers the upstream (ALPN).
#[derive(Clone, Copy)]
enum Alpn {
    Http2AndHttp1,
    /// For a request with a configured `Host` ([`UpstreamClient::http1`]).
    Http1Only,
}

type Connection =
    KeepReading<hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Connection;
    type Error = BoxError;
    /// Boxed once per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limits = ConnectLimits::now(self.timeout);
        Box::pin(async move {
            let connected = limits.apply(connecting).await?;
            let multiplexed = match &connected {
                hyper_rustls::MaybeHttpsStream::Https(tls) => {
                    tls.inner().get_ref().1.alpn_protocol() == Some(b"h2")
                }
                hyper_rustls::MaybeHttpsStream::Http(_) => false,
            };
            Ok(KeepReading::new(connected, multiplexed))
        })
    }
}

tokio::task_local! {
    /// The exchange's limit while a request is sent by a client that connects on its own
    /// (hyper's pool for TLS upstreams, reqwest): their connectors run on the request's task
    /// when it needs a new connection, and read it there ([`ConnectLimits::now`]).
    static EXCHANGE: Within;
}

/// When a new connection must be made by: the connect timeout, or the exchange's deadline
/// ([`EXCHANGE`], when connecting for one) if that comes first, so that a `timeout_secs`
/// that runs out while connecting is said to be the connection, as for plain-HTTP upstreams.
struct ConnectLimits {
    timeout: Duration,
    exchange: Option<Within>,
}

impl ConnectLimits {
    fn now(timeout: Duration) -> Self {
        Self {
            timeout,
            exchange: EXCHANGE.try_with(|within| *within).ok(),
        }
    }

    /// `connecting`, given up at the first limit with an error that names it.
    async fn apply<T, E: Into<BoxError>>(
        self,
        connecting: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BoxError> {
        let by = tokio::time::Instant::now() + self.timeout;
        let exchange = self.exchange.filter(|within| within.deadline < by);
        let deadline = exchange.map_or(by, |within| within.deadline);
        let Ok(connected) = tokio::time::timeout_at(deadline, connecting).await else {
            let limit = match exchange {
                Some(within) => format!("{} s (timeout_secs)", within.timeout.as_secs_f64()),
                None => format!(
                    "{} s (the connect timeout, TLS handshake included)",
                    self.timeout.as_secs_f64()
                ),
            };
            return Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {limit}"),
            )));
        };
        connected.map_err(Into::into)
    }
}

/// The layer reqwest's connector gets ([`crate::state::build_http_client`]) in place of its
/// `connect_timeout`: the same limits as the router's own connections, and the same words.
#[derive(Clone, Copy)]
pub struct ConnectLimitLayer;

impl<S> tower_layer::Layer<S> for ConnectLimitLayer {
    type Service = ConnectLimited<S>;

    fn layer(&self, inner: S) -> ConnectLimited<S> {
        ConnectLimited(inner)
    }
}

/// reqwest's connector, each new connection bounded by [`ConnectLimits`].
#[derive(Clone)]
pub struct ConnectLimited<S>(S);

impl<S, R> tower_service::Service<R> for ConnectLimited<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let connecting = self.0.call(request);
        Box::pin(ConnectLimits::now(CONNECT_TIMEOUT).apply(connecting))
    }
}

/// The caller's limit on a whole exchange (`timeout_secs`): its deadline, and how long it
/// was, for the message. A new connection to a plain-HTTP upstream that is not made by then
/// fails as a connect timeout naming it, a moment before the caller's own timer (the same
/// deadline: the exchange is polled first), so the client is told the connection could not
/// be made, not that an upstream it never reached did not answer. So does one to a TLS
/// upstream or one reqwest makes (see [`ConnectLimits`]).
#[derive(Debug, Clone, Copy)]
pub struct Within {
    pub deadline: tokio::time::Instant,
    pub timeout: Duration,
}

/// What an answer reqwest reads (one through the proxy the environment names) is refused
/// past: hyper's own limits, 100 header fields and a read buffer of 417,792 bytes
/// (`8192 + 4096 * 100`) for the head, which reqwest 0.12 does not let the router set to
/// [`crate::http1::MAX_RESPONSE_FIELDS`] and [`crate::http1::MAX_HEAD_BYTES`]. hyper says
/// both as one error.
const REQWEST_HEAD_LIMITS: &str = "the answer's head has more than 100 header fields or is \
                                   larger than 417792 bytes (the limits of the client that \
                                   sends requests through a proxy)";

/// What an answer hyper's pool reads (a TLS upstream's) is refused past: the limits the
/// plain-HTTP client keeps ([`MAX_RESPONSE_FIELDS`] fields, a head of [`MAX_HEAD_BYTES`]),
/// set on hyper's HTTP/1 client, whose read buffer a head must fit in (hyper's own defaults,
/// 100 fields and 417,792 bytes, threw away billed answers with many rate-limit and CDN
/// fields). hyper says both as one error.
const HTTPS_HEAD_LIMITS: &str = "the answer's head has more than 256 header fields or is \
                                 larger than 262144 bytes";

/// hyper's refusals of a TLS upstream's chunked body past limits of its own, which the
/// plain-HTTP client does not keep (it has 4096 bytes for each chunk extension and no count of
/// trailer fields), and what the router says of each: the trailer fields count against the
/// head's field limit, [`MAX_RESPONSE_FIELDS`], set on hyper's client.
const HTTPS_BODY_LIMITS: [(&str, &str); 2] = [
    (
        "chunk extensions over limit",
        "the upstream's answer went past a limit: chunk extensions over 16 KiB in all (the \
         limit of the client that reads TLS answers)",
    ),
    (
        "chunk trailers count overflow",
        "the upstream's answer went past a limit: a trailer section of more than 256 fields \
         (the limit of the client that reads TLS answers)",
    ),
];

/// An HTTP/2 answer's header list (names, values and 32 bytes each, as RFC 9113 counts it)
/// may be as large as an HTTP/1 head: hyper's default, 16 KiB, is smaller than many an
/// HTTP/1.1 answer the router takes.
// MAX_HEAD_BYTES is 256 KiB: it fits in a u32.
#[allow(clippy::cast_possible_truncation)]
const HTTP2_MAX_HEADER_LIST: u32 = MAX_HEAD_BYTES as u32;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Sends proxied requests. Cheap to clone: the pools are shared.
#[derive(Clone)]
pub struct UpstreamClient {
    /// One pool per lane (see [`crate::lanes`]): a request uses connections its own thread
    /// drives, so sending it wakes no other thread.
    direct: Arc<[Client<Connector, Frames>]>,
    /// One pool per lane for TLS requests with a configured `Host` (a server's `headers`),
    /// whose handshakes offer only HTTP/1.1: over HTTP/2 the upstream is named by
    /// `:authority`, the URL's host, and a `host` field besides one naming another host makes
    /// the request malformed (RFC 9113 §8.3.1), so strict servers (nginx, hypercorn, Google's
    /// front-ends) reset the stream, or the whole connection, which would fail the other
    /// servers' requests on it too. Over HTTP/1.1 the `Host` is sent as written; the other
    /// servers of that origin keep HTTP/2 on connections of their own.
    http1: Arc<[Client<Connector, Frames>]>,
    /// Each lane's idle connections to plain-HTTP upstreams.
    plain: Arc<pool::LanePools>,
    connector: Connector,
    /// reqwest's clients: its HTTP/1.1-only one for a request with a configured `Host`, as
    /// [`Self::http1`] is hyper's.
    fallback: HttpClients,
    /// The proxy environment, read once at start (as reqwest reads it).
    proxy: &'static ProxyEnv,
}

/// Why an upstream request failed, described without its URL (which may carry a key in its
/// query).
#[derive(Debug, Clone)]
pub struct UpstreamError {
    timeout: bool,
    /// The body arrived but its `Content-Encoding` could not be undone.
    undecodable: bool,
    /// The upstream answered, but not in a form the router can read (malformed framing or
    /// head, a head cut short by the connection's end, an invalid status, an unrequested
    /// transfer coding, an upgrade): it was reached.
    unreadable: bool,
    /// The upstream had the whole request, then closed or reset the connection without
    /// answering: it was reached (see [`plain::PlainError::ClosedAfterRequest`]).
    had_request: bool,
    /// A request sent through the proxy the environment names got no answer within
    /// `timeout_secs` ([`UpstreamClient::send_fallback`]): the connection was made, so it is
    /// not a connect timeout, and the message names the proxy, which may be the one silent.
    unanswered: bool,
    description: String,
}

impl UpstreamError {
    /// The connection (or the TLS handshake) was not made in time.
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }

    /// A body the router decodes as it arrives (a compressed event stream) is corrupt: the
    /// connection is fine, the upstream's answer is not.
    pub fn undecodable(error: &crate::content_coding::DecodeError) -> Self {
        Self {
            timeout: false,
            undecodable: true,
            unreadable: false,
            had_request: false,
            unanswered: false,
            description: error.to_string(),
        }
    }

    pub fn is_undecodable(&self) -> bool {
        self.undecodable
    }

    /// The upstream answered something the router cannot read (see the `unreadable` field).
    pub fn is_unreadable(&self) -> bool {
        self.unreadable
    }

    /// The upstream had the whole request when it ended the connection unanswered (see the
    /// `had_request` field).
    pub fn had_request(&self) -> bool {
        self.had_request
    }

    /// No answer came through the proxy within `timeout_secs` (see the `unanswered` field).
    pub fn is_unanswered(&self) -> bool {
        self.unanswered
    }

    /// An exchange over the lane's own connections failed: unreadable when the upstream's
    /// answer was the trouble, as [`Self::from_hyper`] says for hyper's parse errors.
    fn from_plain(error: &plain::PlainError) -> Self {
        // A body cut by the connection's end is not unreadable: it broke off.
        let unreadable = matches!(
            error,
            plain::PlainError::Framing(framing)
                if *framing != crate::http1::framing::FramingError::Truncated
        ) || matches!(
            error,
            plain::PlainError::Head(_) | plain::PlainError::HeadCut | plain::PlainError::Upgrade
        );
        Self {
            unreadable,
            had_request: error.had_request(),
            // Connected already: a `TimedOut` here is a write the upstream stopped taking
            // ([`plain`]'s stall), not the connect timeout ([`plain::SendError::Connect`]).
            timeout: false,
            ..Self::from_hyper(error)
        }
    }

    fn from_hyper(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut parts: Vec<String> = Vec::new();
        let mut timeout = false;
        let mut unreadable = false;
        let mut next = Some(error);
        while let Some(cause) = next {
            if cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            {
                timeout = true;
            }
            if cause
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse)
            {
                unreadable = true;
            }
            if !is_client_wrapper(cause) {
                let text = cause_text(cause);
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
            }
            next = cause.source();
        }
        Self {
            timeout,
            undecodable: false,
            unreadable,
            had_request: false,
            unanswered: false,
            description: join_causes(parts),
        }
    }

    /// A request hyper's pool (TLS upstreams) could not get an answer to. A connection the
    /// upstream ended (closed, reset, its TLS session cut) before a byte of answer, once it
    /// had the whole request, is said as the plain-HTTP client says it
    /// ([`plain::PlainError::ClosedAfterRequest`]): a connection made, a request written whole
    /// ([`keep_reading`] marks the errors of one that was not, and all over HTTP/2, where it
    /// cannot be told), and nothing of an answer parsed. One that ended after part of an
    /// answer's head came (HTTP/1: [`keep_reading::AnswerBegun`]) is
    /// [`plain::PlainError::HeadCut`], unreadable, as the plain-HTTP client says it.
    fn from_direct(error: &hyper_util::client::legacy::Error) -> Self {
        let described = Self::from_hyper(error);
        // Only a connection's `TimedOut` is the connect timeout ([`ConnectLimits`]); one met
        // on a connection made (a write stalled, keep-alive probes unanswered) is not.
        let described = Self {
            timeout: described.timeout && error.is_connect(),
            ..described
        };
        if described.unreadable && past_head_limits(error) {
            return Self::unreadable(HTTPS_HEAD_LIMITS);
        }
        if error.is_connect() || described.timeout || described.unreadable {
            return described;
        }
        // Some of an answer came, and the connection ended before its head did.
        let answer_begun = keep_reading::AnswerBegun::of(error).is_some_and(|begun| begun.get());
        if answer_begun && connection_ended(error) {
            return Self {
                unreadable: true,
                description: plain::PlainError::HeadCut.to_string(),
                ..described
            };
        }
        match ended_after_request(error) {
            Some(ended) => Self {
                had_request: true,
                description: ended.to_string(),
                ..described
            },
            None => described,
        }
    }

    /// A TLS upstream's body hyper could not read. One past hyper's limits of chunked framing
    /// went past a limit, as the plain-HTTP client says of its own ([`plain::PlainError`]):
    /// not "broke off", since the upstream may well have sent it all. A trailer section over
    /// 16 KiB is hyper's limit and the plain-HTTP client's alike, said in the same words; the
    /// others are hyper's own ([`HTTPS_BODY_LIMITS`]).
    fn from_direct_body(error: &hyper::Error) -> Self {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = next {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::InvalidData {
                    let said = io.to_string();
                    if said == "chunk trailers bytes over limit" {
                        let framing = crate::http1::framing::FramingError::TrailersTooLarge;
                        return Self::unreadable(&plain::PlainError::Framing(framing).to_string());
                    }
                    if let Some((_, ours)) = HTTPS_BODY_LIMITS.iter().find(|(h, _)| *h == said) {
                        return Self::unreadable(ours);
                    }
                }
            }
            next = cause.source();
        }
        Self::from_hyper(error)
    }

    /// A request reqwest could not get an answer to: as [`Self::from_direct`], but reqwest's
    /// connections do not say whether a failed read came before the request was written
    /// whole, so only a connection that closed cleanly (hyper's "connection closed before
    /// message completed") counts as one the upstream had the request on: hyper fails the
    /// request as soon as a write fails, and a clean close with part of the request unread
    /// would have been a reset. An answer hyper could not parse is unreadable, as
    /// [`Self::from_hyper`] says it; one past hyper's head limits (which reqwest 0.12 does not
    /// let the router set) is said with those limits ([`REQWEST_HEAD_LIMITS`]), as the
    /// router's own client names its own.
    fn from_reqwest_send(error: &reqwest::Error) -> Self {
        let described = Self::from_reqwest(error);
        if error.is_connect() || described.timeout {
            return described;
        }
        let mut next = std::error::Error::source(error);
        while let Some(cause) = next {
            if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
                if hyper.is_incomplete_message() {
                    return Self {
                        had_request: true,
                        description: plain::PlainError::ClosedAfterRequest.to_string(),
                        ..described
                    };
                }
                if hyper.is_parse_too_large() {
                    return Self::unreadable(REQWEST_HEAD_LIMITS);
                }
                if hyper.is_parse() {
                    return Self {
                        unreadable: true,
                        ..described
                    };
                }
            }
            next = cause.source();
        }
        described
    }

    /// A request that could not go out at all.
    fn unsendable(why: &str) -> Self {
        Self {
            timeout: false,
            undecodable: false,
            unreadable: false,
            had_request: false,
            unanswered: false,
            description: why.to_owned(),
        }
    }

    /// An answer whose status line the router cannot use.
    fn unreadable(why: &str) -> Self {
        Self {
            timeout: false,
            undecodable: false,
            unreadable: true,
            had_request: false,
            unanswered: false,
            description: why.to_owned(),
        }
    }

    fn from_reqwest(error: &reqwest::Error) -> Self {
        Self {
            // As for [`Self::from_direct`]: the connect timeout, not a `TimedOut` after it.
            timeout: error.is_timeout() && error.is_connect(),
            undecodable: false,
            unreadable: false,
            had_request: false,
            unanswered: false,
            description: crate::proxy::describe_reqwest_error(error),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl std::error::Error for UpstreamError {}

/// Whether a write failed because the upstream closed the connection (it may have answered
/// first: see [`plain`] and [`keep_reading`]). A write that stalled (`TimedOut`) is not such a
/// failure: that upstream is still there, and waiting for an answer it may never send would
/// turn the stall into a hang.
fn closed_by_upstream(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

/// One cause of a failure in a message's words: its own, but what a TLS failure most likely
/// means where rustls's words do not say it (a plain-HTTP server behind an `https://` url,
/// whose `HTTP/1.1 400` reads as "corrupt message of type InvalidContentType"; a private CA;
/// a CA's certificate as the server's own), and without the documentation link some rustls
/// errors end with.
pub(crate) fn cause_text(cause: &(dyn std::error::Error + 'static)) -> String {
    let mut text = cause.to_string();
    if let Some(at) = text.find(": https://docs.rs/") {
        text.truncate(at);
    }
    if let Some(refusal) = tunnel_refusal(&text) {
        return refusal.to_owned();
    }
    match tls_error(cause) {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            format!(
                "{text} (the upstream did not answer in TLS: is it a plain http:// server behind an https:// url?)"
            )
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            format!(
                "{text} (its certificate is not signed by a CA the router trusts; a private CA is trusted with SSL_CERT_FILE or SSL_CERT_DIR)"
            )
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            webpki_refusal(other)
        }
        _ => text,
    }
}

/// The words of a proxy's refusal to open a tunnel (its answer to `CONNECT` for an
/// `https://` upstream was not 200), for hyper-util's ("tunnel error: unsuccessful", "tunnel
/// error: proxy authorization required"), which neither say it was the proxy that refused
/// nor read as the refusal of a request to an `http://` upstream does. hyper-util keeps no
/// more than that (not the proxy's status): its error is known by its text, and a test
/// holds the words.
fn tunnel_refusal(text: &str) -> Option<&'static str> {
    // After "through the proxy the environment names (...): ", which names the proxy.
    match text {
        "tunnel error: proxy authorization required" => Some(
            "it refused to open a tunnel to the upstream: 407 Proxy Authentication Required; \
             check the credentials in HTTPS_PROXY (or ALL_PROXY)",
        ),
        "tunnel error: unsuccessful" => Some(
            "it refused to open a tunnel to the upstream: its answer to CONNECT was not 200 (a \
             403 or 502 of the proxy's, say)",
        ),
        "tunnel error: unexpected end of file" => {
            Some("it closed the connection without answering CONNECT (the tunnel to the upstream)")
        }
        _ => None,
    }
}

/// A certificate refusal webpki made that rustls has no variant for: rustls writes it with
/// its debug text ("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))"), so it
/// is said without the wrappers, and in words for the one a self-signed certificate made the
/// usual way meets (`openssl req -x509` makes a CA, `CA:TRUE`, which TLS does not accept as a
/// server's own certificate, even one trusted through `SSL_CERT_FILE`). webpki's error is
/// known by its text (its `Display` is its variant's name): the router does not depend on
/// webpki itself, and a test holds the words.
fn webpki_refusal(other: &rustls::OtherError) -> String {
    let reason = other.to_string();
    if reason == "CaUsedAsEndEntity" {
        "the server's certificate is a CA certificate (basicConstraints CA:TRUE), which TLS does \
         not accept as a server's own: sign a server certificate with that CA, or make it with \
         `-addext basicConstraints=critical,CA:FALSE`"
            .to_owned()
    } else {
        format!("invalid peer certificate: {reason}")
    }
}

/// The rustls error a cause is, or wraps in I/O errors (tokio-rustls wraps it twice), which
/// the cause chain skips: an `io::Error`'s source is its inner error's source.
fn tls_error<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut error = cause;
    for _ in 0..4 {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        error = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
    None
}

/// hyper-util's client error, when it only wraps its cause ("client error (Connect)"): said
/// in no message, so the client reads the same words whichever client failed.
pub(crate) fn is_client_wrapper(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.is::<hyper_util::client::legacy::Error>() && cause.source().is_some()
}

/// How the connection of a request written whole ended before a byte of answer, in the
/// plain-HTTP client's words: hyper's "connection closed before message completed", a TLS
/// session ended without `close_notify`, or a reset; `None` for any other failure (and one
/// [`keep_reading`] marked is another).
fn ended_after_request(error: &(dyn std::error::Error + 'static)) -> Option<plain::PlainError> {
    let mut ended = None;
    let mut next = Some(error);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                ended.get_or_insert(plain::PlainError::ClosedAfterRequest);
            } else if closed_by_upstream(io) {
                let reset = std::io::Error::new(io.kind(), io.to_string());
                ended.get_or_insert(plain::PlainError::ResetAfterRequest(reset));
            }
        }
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            ended.get_or_insert(plain::PlainError::ClosedAfterRequest);
        }
        next = cause.source();
    }
    ended
}

/// Whether hyper refused an answer for its head's size or number of fields.
fn past_head_limits(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse_too_large)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

/// Whether a request failed because its connection ended: closed (hyper's "connection closed
/// before message completed"), reset, or a TLS session ended without `close_notify`, the
/// error marked by [`keep_reading`] or not.
fn connection_ended(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let marked = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
            if ended_by_upstream(io) || marked.is_some_and(ended_by_upstream) {
                return true;
            }
        }
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

/// Whether a read or write failed because the upstream ended the connection: closed it
/// ([`closed_by_upstream`]) or, over TLS, ended the session without `close_notify`.
fn ended_by_upstream(error: &std::io::Error) -> bool {
    closed_by_upstream(error) || error.kind() == std::io::ErrorKind::UnexpectedEof
}

fn join_causes(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "connection failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// An upstream answer's body, from whichever client sent the request.
pub enum UpstreamBody {
    Direct(hyper::body::Incoming),
    Plain(plain::PlainBody),
    Fallback(reqwest::Body),
    /// A body whose first frame the router read ahead (to tell an event stream by its first
    /// bytes), put back in front of the rest.
    ReadAhead(Box<ReadAhead>),
}

/// Frames read off a body, and the body they came from: it yields them again first, then the
/// rest as it comes (nothing is copied).
pub struct ReadAhead {
    /// The frames read ahead, in order, until polled again; an error stays an error.
    read: std::collections::VecDeque<Result<Frame<Bytes>, UpstreamError>>,
    /// `None`: the body had ended when it was read ahead.
    rest: Option<UpstreamBody>,
}

impl UpstreamBody {
    /// `read`, the frames read off the body in order, put back in front of `rest`; `ended`:
    /// the body's end was read too.
    pub fn read_ahead(
        read: Vec<Result<Frame<Bytes>, UpstreamError>>,
        ended: bool,
        rest: Self,
    ) -> Self {
        let rest = (!ended).then_some(rest);
        Self::ReadAhead(Box::new(ReadAhead {
            read: read.into(),
            rest,
        }))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Direct(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| UpstreamError::from_direct_body(&e)),
            Self::Plain(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| UpstreamError::from_plain(&e)),
            Self::Fallback(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| UpstreamError::from_reqwest(&e)),
            Self::ReadAhead(body) => match (body.read.pop_front(), &mut body.rest) {
                (Some(read), _) => Poll::Ready(Some(read)),
                (None, Some(rest)) => Pin::new(rest).poll_frame(cx),
                (None, None) => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(body) => body.is_end_stream(),
            Self::Plain(body) => body.is_end_stream(),
            Self::Fallback(body) => body.is_end_stream(),
            Self::ReadAhead(body) => {
                body.read.is_empty() && body.rest.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(body) => body.size_hint(),
            Self::Plain(body) => body.size_hint(),
            Self::Fallback(body) => body.size_hint(),
            Self::ReadAhead(body) => {
                let mut hint = body
                    .rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), Body::size_hint);
                let read: u64 = body
                    .read
                    .iter()
                    .filter_map(|frame| frame.as_ref().ok()?.data_ref())
                    .map(|data| data.len() as u64)
                    .sum();
                if read > 0 {
                    let len = read;
                    // The upper bound first: a lower bound over it panics.
                    if let Some(upper) = hint.upper() {
                        hint.set_upper(upper.saturating_add(len));
                    }
                    hint.set_lower(hint.lower().saturating_add(len));
                }
                hint
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the upstream HTTP client: {0}")]
    Reqwest(#[from] reqwest::Error),
    #[error("cannot set up TLS for the upstream HTTP client: {0}")]
    Tls(#[from] rustls::Error),
}

impl UpstreamClient {
    /// Connect timeout, TCP_NODELAY and keep-alive, no redirects followed (a 3xx goes back to
    /// the client as the upstream sent it), no decompression (bodies pass through as sent),
    /// HTTP/2 when a TLS upstream offers it. `fallback` is the shared reqwest client. One
    /// pool for each of `lanes` lanes.
    pub fn new(fallback: HttpClients, lanes: usize) -> Result<Self, ClientError> {
        let tls = tls_config()?;
        let connector = Connector::new(CONNECT_TIMEOUT, tls.clone(), Alpn::Http2AndHttp1);
        let http1 = Connector::new(CONNECT_TIMEOUT, tls, Alpn::Http1Only);
        let pools = |connector: &Connector| -> Arc<[Client<Connector, Frames>]> {
            (0..lanes.max(1))
                .map(|_| {
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                        .pool_timer(TokioTimer::new())
                        .timer(TokioTimer::new())
                        .http1_max_headers(MAX_RESPONSE_FIELDS)
                        .http1_max_buf_size(MAX_HEAD_BYTES)
                        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST)
                        .build(connector.clone())
                })
                .collect()
        };
        Ok(Self {
            direct: pools(&connector),
            http1: pools(&http1),
            plain: Arc::new(pool::LanePools::new(lanes, POOL_IDLE_TIMEOUT)),
            connector,
            fallback,
            proxy: ProxyEnv::get(),
        })
    }

    /// How many lanes this client has a pool for.
    pub fn lanes(&self) -> usize {
        self.direct.len()
    }

    /// One request with the header fields `fields` yields (all but `Host`, which comes from
    /// the URL unless `fields` names one, and the framing), ready to send: its fields are
    /// written here, so it borrows nothing and its exchange ([`Self::send_prepared`]) may be
    /// awaited by whatever outlives the request's own fields (a stream the router answered
    /// before its upstream did). `method` is `POST`, or the `GET` or `DELETE` forwarded to the
    /// target a request names (`?proxy=`, `settings.default_server`); never `HEAD`, whose
    /// answer's body would be read by its length.
    pub fn prepare(
        &self,
        method: &Method,
        url: String,
        fields: &(dyn FieldSource + Sync),
        body: RequestBody,
    ) -> Prepared {
        // A URL with user info goes without it, its credentials in the fields: through the
        // proxy too, whose request line would show them (reqwest takes out only user info
        // that is UTF-8 once decoded).
        if url_credentials::has_user_info(&url) {
            if let Some((bare, basic)) = url_credentials::split(&url) {
                let basic = basic.as_ref();
                let fields = url_credentials::WithBasic { fields, basic };
                return self.route(method, bare, &fields, basic, body);
            }
        }
        self.route(method, url, fields, None, body)
    }

    /// [`Self::prepare`] for a URL without user info: `basic` is the `Authorization` made of
    /// the user info taken out, which reqwest marked sensitive (HTTP/2 never indexes it).
    fn route(
        &self,
        method: &Method,
        url: String,
        fields: &(dyn FieldSource + Sync),
        basic: Option<&http::HeaderValue>,
        body: RequestBody,
    ) -> Prepared {
        if let Some((authority, origin)) = url.strip_prefix("http://").and_then(plain_target) {
            if !self.proxy.is_set() || self.direct_uri(&url).is_some() {
                let head = plain_head(method, authority, origin, fields, body.len());
                let start = "http://".len();
                let authority = start..start + authority.len();
                return Prepared(Route::Plain {
                    url,
                    authority,
                    head,
                    body,
                });
            }
        }
        let Some(uri) = self.direct_uri(&url) else {
            let headers = headers_with_basic(fields, basic);
            return Prepared(Route::Fallback {
                method: method.clone(),
                url,
                headers,
                body,
            });
        };
        let mut request = Request::new(body.into_frames());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        let headers = headers_with_basic(fields, basic);
        // Only a server's configured `headers` name a Host (the client's is never passed on).
        let http1 = headers.contains_key(http::header::HOST);
        *request.headers_mut() = headers;
        Prepared(Route::Direct { request, http1 })
    }

    /// Sends a request [`Self::prepare`] made. Timeouts beyond connecting are the caller's;
    /// `within` is the caller's, which bounds a new connection to a plain-HTTP upstream too
    /// (see [`Within`]).
    pub async fn send_prepared(
        &self,
        prepared: Prepared,
        within: Within,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (request, http1) = match prepared.0 {
            Route::Plain {
                url,
                authority,
                head,
                body,
            } => {
                // Always there: `prepare` found it in this URL.
                let Some(authority) = url.get(authority) else {
                    return Err(UpstreamError::unsendable(
                        "the upstream URL has no authority",
                    ));
                };
                return self.send_plain(authority, &head, &body, within).await;
            }
            Route::Fallback {
                method,
                url,
                headers,
                body,
            } => {
                let sending = self.send_fallback(method, &url, headers, body, within);
                return EXCHANGE.scope(within, sending).await;
            }
            Route::Direct { request, http1 } => (request, http1),
        };
        let pools = if http1 { &self.http1 } else { &self.direct };
        let pool = &pools[crate::lanes::current() % pools.len()];
        // Only a `timeout_secs` no longer than the connect timeout can run out while
        // connecting: only then does the pool's connector need it.
        let response = if within.timeout <= CONNECT_TIMEOUT {
            EXCHANGE.scope(within, pool.request(request)).await
        } else {
            pool.request(request).await
        };
        let response = response.map_err(|e| UpstreamError::from_direct(&e))?;
        let (parts, body) = response.into_parts();
        let fields = Fields::from_header_map(&parts.headers);
        refuse_unrequested_coding(parts.version, &fields)?;
        Ok(UpstreamResponse {
            status: parts.status,
            fields,
            body: UpstreamBody::Direct(body),
        })
    }

    /// Sends the request over this lane's own connections to a plain-HTTP upstream (see
    /// [`plain`]): its head written by [`plain_head`].
    async fn send_plain(
        &self,
        authority: &str,
        head: &[u8],
        body: &RequestBody,
        within: Within,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let connect = || self.connect_plain(authority, within);
        let lane = crate::lanes::current();
        match plain::send(&self.plain, lane, authority, head, body, connect).await {
            Ok((head, body)) => Ok(UpstreamResponse {
                status: StatusCode::from_u16(head.status).map_err(|_| {
                    UpstreamError::unreadable(&format!(
                        "the upstream answered with the invalid status {}",
                        head.status
                    ))
                })?,
                fields: head.fields,
                body: UpstreamBody::Plain(body),
            }),
            Err(plain::SendError::Connect(error)) => Err(UpstreamError::from_hyper(error.as_ref())),
            Err(plain::SendError::Exchange(error)) => Err(UpstreamError::from_plain(&error)),
        }
    }

    /// A new TCP connection to `authority`, with the connector's timeout, keep-alive and
    /// `TCP_NODELAY`, and given up at `within`'s deadline if that comes first.
    async fn connect_plain(
        &self,
        authority: &str,
        within: Within,
    ) -> Result<tokio::net::TcpStream, BoxError> {
        let uri: http::Uri = format!("http://{authority}/").parse()?;
        let connecting = self.connector.connect(uri);
        let Ok(connected) = tokio::time::timeout_at(within.deadline, connecting).await else {
            return Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {} s (timeout_secs)",
                    within.timeout.as_secs_f64()
                ),
            )));
        };
        match connected?.into_inner() {
            hyper_rustls::MaybeHttpsStream::Http(io) => Ok(io.into_inner()),
            hyper_rustls::MaybeHttpsStream::Https(_) => {
                Err("a plain-HTTP upstream answered with TLS".into())
            }
        }
    }

    /// The URL as hyper takes it, or `None` when reqwest must send it: a proxy, credentials
    /// in a URL the proxy covers (reqwest sends them as Basic auth), or a URL hyper cannot
    /// take.
    fn direct_uri(&self, url: &str) -> Option<http::Uri> {
        let uri = http::Uri::try_from(url).ok()?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return None;
        }
        if self.proxy.covers_uri(&uri) {
            return None;
        }
        Some(uri)
    }

    /// `error`, saying that the request went through the proxy the environment names, when
    /// it did (see [`ProxyEnv::through`]).
    fn through_proxy(&self, url: &str, mut error: UpstreamError) -> UpstreamError {
        error.description = self.proxy.through(url, error.description);
        error
    }

    /// No answer through the proxy within `within`'s `timeout_secs`, said as
    /// [`Self::through_proxy`] says a failure.
    fn unanswered_through_proxy(&self, url: &str, within: Within) -> UpstreamError {
        let description = format!(
            "no answer within {} s (timeout_secs)",
            within.timeout.as_secs_f64()
        );
        let error = UpstreamError {
            unanswered: true,
            ..UpstreamError::unsendable(&description)
        };
        self.through_proxy(url, error)
    }

    /// A 407 the proxy answered a request to an `http://` target (see
    /// [`ProxyEnv::refusal`]): the proxy's own refusal, not the provider's answer, so it is
    /// the router's error (502).
    fn proxy_refusal(&self, url: &str, status: StatusCode) -> Option<UpstreamError> {
        let refusal = self.proxy.refusal(url, status)?;
        Some(UpstreamError::unsendable(&refusal))
    }

    /// Sends the request with reqwest. One through the proxy the environment names is given
    /// up at `within`'s deadline, a moment before the caller's own timer (the same deadline:
    /// the exchange is polled first, see [`Within`]), so that the message names the proxy,
    /// which may be the one that does not answer, as it does when the proxy cannot be reached.
    async fn send_fallback(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: RequestBody,
        within: Within,
    ) -> Result<UpstreamResponse, UpstreamError> {
        // A whole body goes as reqwest keeps it, reusable; pieces as one frame each.
        let body = match body.as_whole() {
            Some(whole) => reqwest::Body::from(whole.clone()),
            None => reqwest::Body::wrap(body.into_frames()),
        };
        let sending = self
            .fallback
            .for_headers(&headers)
            .request(method, url)
            .headers(headers)
            .body(body)
            .send();
        let sent = if self.proxy.covers(url) {
            match tokio::time::timeout_at(within.deadline, sending).await {
                Ok(sent) => sent,
                Err(_) => return Err(self.unanswered_through_proxy(url, within)),
            }
        } else {
            sending.await
        };
        let response =
            sent.map_err(|e| self.through_proxy(url, UpstreamError::from_reqwest_send(&e)))?;
        if let Some(refusal) = self.proxy_refusal(url, response.status()) {
            return Err(refusal);
        }
        let response: Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let fields = Fields::from_header_map(&parts.headers);
        refuse_unrequested_coding(parts.version, &fields)?;
        Ok(UpstreamResponse {
            status: parts.status,
            fields,
            body: UpstreamBody::Fallback(body),
        })
    }
}

/// An HTTP/1 answer in a transfer coding the router did not ask for and cannot undo
/// (`gzip, chunked`) is refused, as [`plain`] refuses it (see
/// [`crate::http1::framing::response_codings`]): hyper undoes only a final `chunked` and would
/// hand on a body still in the other coding, which the router relays without the (hop-by-hop)
/// `Transfer-Encoding` that named it. HTTP/2 has no transfer codings (h2 rejects the field).
/// The body is dropped unread, so hyper does not keep that connection.
fn refuse_unrequested_coding(version: http::Version, fields: &Fields) -> Result<(), UpstreamError> {
    if version >= http::Version::HTTP_2 {
        return Ok(());
    }
    match crate::http1::framing::response_codings(fields) {
        Ok(_) => Ok(()),
        Err(error) => Err(UpstreamError::from_plain(&plain::PlainError::Framing(
            error,
        ))),
    }
}

/// A request [`UpstreamClient::prepare`] made, ready to send; it borrows nothing.
pub struct Prepared(Route);

/// How a prepared request goes: which of the clients sends it, in the form that one takes.
enum Route {
    /// Over the lane's own connections; `authority` is the range of `url` that names the
    /// server.
    Plain {
        url: String,
        authority: std::ops::Range<usize>,
        head: BytesMut,
        body: RequestBody,
    },
    /// By hyper's pool; `http1`: by the HTTP/1.1-only one ([`UpstreamClient::http1`]).
    Direct {
        request: Request<Frames>,
        http1: bool,
    },
    Fallback {
        method: Method,
        url: String,
        headers: HeaderMap,
        body: RequestBody,
    },
}

/// The header fields of a request for hyper or reqwest, the URL's credentials (`basic`, when
/// [`url_credentials::WithBasic`] added them: they come first) marked sensitive, as reqwest
/// marked them (HTTP/2 never indexes them).
fn headers_with_basic(
    fields: &(dyn FieldSource + Sync),
    basic: Option<&http::HeaderValue>,
) -> HeaderMap {
    let mut headers = header_map_of(fields);
    if let Some(value) = headers.get_mut(http::header::AUTHORIZATION) {
        if basic.is_some_and(|basic| value == basic) {
            value.set_sensitive(true);
        }
    }
    headers
}

/// A plain-HTTP request's head as bytes, with the `Host` hyper-util's client would add (the
/// URL's authority; a URL never names the default port) and the body's length (left out of
/// a `GET` or `DELETE` without a body, as hyper leaves it out).
fn plain_head(
    method: &Method,
    authority: &str,
    origin: &str,
    fields: &(dyn FieldSource + Sync),
    body_len: usize,
) -> BytesMut {
    let mut head = BytesMut::with_capacity(512);
    head.extend_from_slice(method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    if !origin.starts_with('/') {
        head.extend_from_slice(b"/");
    }
    head.extend_from_slice(origin.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    fields.for_each(&mut |name, value| {
        has_host |= name.eq_ignore_ascii_case(b"host");
        write_field(&mut head, name, value);
    });
    if !has_host {
        write_field(&mut head, b"host", authority.as_bytes());
    }
    if body_len > 0 || *method == Method::POST {
        write_field(
            &mut head,
            b"content-length",
            itoa::Buffer::new().format(body_len).as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An upstream's answer: its status, header fields and body.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: UpstreamBody,
}

/// The authority and origin form (path and query) of an `http://` URL given without its
/// scheme, as the url crate writes it; `None` for one with credentials (only one the proxy
/// covers still has them: reqwest sends it).
fn plain_target(rest: &str) -> Option<(&str, &str)> {
    let bytes = rest.as_bytes();
    let end = memchr::memchr3(b'/', b'?', b'#', bytes).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || memchr::memchr(b'@', authority.as_bytes()).is_some() {
        return None;
    }
    let origin = &rest[end..];
    let origin = match memchr::memchr(b'#', origin.as_bytes()) {
        Some(hash) => &origin[..hash],
        None => origin,
    };
    Some((authority, origin))
}

/// rustls with the bundled Mozilla roots plus the system's (as the reqwest client is set up),
/// so a provider behind a private CA in the system store still verifies.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the system store holds but rustls cannot use is skipped, as reqwest
        // skips it.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL with credentials goes as any other, without them: over the lane's connections
    /// (`http://`) or hyper's pool (`https://`), with the Basic credentials reqwest made of
    /// them, unless the request has an `Authorization` of its own (a server's `api_key`).
    #[tokio::test]
    async fn urls_with_credentials_go_as_others_with_basic_credentials() {
        let reqwest = crate::state::build_http_client().expect("reqwest");
        let client = UpstreamClient::new(reqwest, 1).expect("client");
        if client.proxy.is_set() {
            return;
        }
        let mut map = HeaderMap::new();
        map.insert("accept", http::HeaderValue::from_static("*/*"));
        let fields = Fields::from_header_map(&map);
        let body = || RequestBody::from(Bytes::from_static(b"{}"));
        let url = "http://user:pass@127.0.0.1:9/v1/chat/completions".to_owned();
        let Prepared(Route::Plain { url, head, .. }) =
            client.prepare(&Method::POST, url, &fields, body())
        else {
            panic!("not over the lane's connections");
        };
        assert_eq!(url, "http://127.0.0.1:9/v1/chat/completions");
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(
            head.starts_with(
                "POST /v1/chat/completions HTTP/1.1\r\nauthorization: Basic dXNlcjpwYXNz\r\n"
            ) && head.contains("\r\nhost: 127.0.0.1:9\r\n")
                && !head.contains("pass@"),
            "{head}"
        );

        let url = "https://user:pass@127.0.0.1:9/v1/chat/completions".to_owned();
        let Prepared(Route::Direct { request, .. }) =
            client.prepare(&Method::POST, url, &fields, body())
        else {
            panic!("not by hyper's pool");
        };
        assert_eq!(
            request.uri().to_string(),
            "https://127.0.0.1:9/v1/chat/completions"
        );
        let basic = &request.headers()["authorization"];
        assert_eq!(basic, "Basic dXNlcjpwYXNz");
        assert!(basic.is_sensitive());

        map.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer sk-own"),
        );
        let fields = Fields::from_header_map(&map);
        let url = "http://user:pass@127.0.0.1:9/v1/chat/completions".to_owned();
        let Prepared(Route::Plain { head, .. }) =
            client.prepare(&Method::POST, url, &fields, body())
        else {
            panic!("not over the lane's connections");
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(
            head.contains("authorization: Bearer sk-own") && !head.contains("Basic"),
            "{head}"
        );
    }

    /// A server that accepts the TCP connection and then says nothing: the TLS handshake
    /// never completes, and the connect timeout must still end it.
    #[tokio::test]
    async fn a_tls_handshake_that_hangs_times_out() {
        use tower_service::Service as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            std::future::pending::<()>().await;
            drop(socket);
        });
        let tls = tls_config().expect("tls");
        let mut connector = Connector::new(Duration::from_millis(200), tls, Alpn::Http2AndHttp1);
        let uri: http::Uri = format!("https://{addr}/").parse().expect("uri");
        let error = match connector.call(uri).await {
            Ok(_) => panic!("a silent server cannot complete a TLS handshake"),
            Err(error) => UpstreamError::from_hyper(error.as_ref()),
        };
        assert!(error.is_timeout(), "{error}");
        silent.abort();
    }

    /// A refusal webpki made that rustls writes with its debug text is said without the
    /// wrappers (`Other(OtherError(...))`), and as an I/O error's cause as tokio-rustls wraps it.
    #[test]
    fn webpki_refusals_are_said_without_debug_wrappers() {
        let refusal = |name: &str| {
            let other = rustls::OtherError(Arc::new(std::io::Error::other(name.to_owned())));
            let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other));
            cause_text(&std::io::Error::other(tls))
        };
        assert_eq!(
            refusal("RequiredEkuNotFound"),
            "invalid peer certificate: RequiredEkuNotFound"
        );
        assert!(
            refusal("CaUsedAsEndEntity")
                .starts_with("the server's certificate is a CA certificate"),
            "{}",
            refusal("CaUsedAsEndEntity")
        );
    }

    /// A write the upstream stopped taking fails with `TimedOut` on a connection made: not
    /// the connect timeout, whose message says "could not connect".
    #[test]
    fn a_stalled_write_is_no_connect_timeout() {
        let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "took nothing");
        let error = UpstreamError::from_plain(&plain::PlainError::Io(stalled));
        assert!(!error.is_timeout(), "{error}");
    }

    #[test]
    fn causes_are_joined_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let error = UpstreamError::from_hyper(&io);
        assert!(error.is_timeout());
        assert_eq!(error.to_string(), "connect timed out");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!UpstreamError::from_hyper(&refused).is_timeout());
    }
}
