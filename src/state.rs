//! Shared state of a running router: the config snapshot, the one upstream HTTP client, the
//! key index, the model catalog and the record queue. Built once, shared behind an `Arc`;
//! nothing in it is locked across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use crate::hard_stop::HardStop;
use arc_swap::ArcSwap;

use crate::auth::KeyIndex;
use crate::config::Config;
use crate::models::ModelCatalog;
use crate::proxy::failure_log::FailureLog;
use crate::record::Recorder;
use crate::sinks::redact::Redactor;
use crate::upstream::{ClientError, UpstreamClient};

/// How long the upstream may take to accept a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The rest of a request head must arrive within this of its first bytes (hyper's default).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body may not pause longer than this between reads (nginx's
/// `client_body_timeout`). A body that arrived with its head never waits on it.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A write to a client (or an upstream) that takes nothing for this long fails, and the
/// connection is closed (nginx's `send_timeout`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A client connection waiting for its next request is closed after this long (nginx's
/// `keepalive_timeout`). Longer than the clients' own idle limits (httpx 5 s, Node's undici
/// 4 s), so a client never sends a request on a connection the router is closing; short
/// enough that clients which never close theirs do not pile up open sockets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A comment goes to a streaming client after this much upstream silence.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

pub struct AppState {
    /// Swapped whole, so a request never sees half a config.
    pub config: ArcSwap<Config>,
    /// The model-list fetch's clients: keep-alive connections are reused across fetches.
    pub client: HttpClients,
    /// What proxied requests are sent with (hyper's client; reqwest for proxied targets).
    pub upstream: UpstreamClient,
    pub recorder: Recorder,
    /// `Some` when account management is on.
    pub keys: Option<Arc<dyn KeyIndex>>,
    pub models: ModelCatalog,
    pub keepalive_interval: Duration,
    /// How often at most the accept loop warns that accepting failed (out of descriptors).
    pub warning_interval: Duration,
    /// How long the rest of a request head may take once its first bytes arrived.
    pub head_timeout: Duration,
    /// How long a request body may pause between two reads.
    pub body_read_timeout: Duration,
    /// How long a client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a write to a client may wait for it to take anything.
    pub send_timeout: Duration,
    /// Fired when shutdown's grace period is over: running requests and streams end at once.
    pub hard_stop: HardStop,
    /// The config's secrets (api keys, credential headers) and the proxy variables'
    /// credentials (`serve` adds the Langfuse and OTLP credentials): removed from upstream
    /// error bodies before they reach a client, since an upstream may echo the key it was
    /// sent (and a proxy may pass its credentials on).
    pub redactor: Redactor,
    /// Rate limit of the WARN lines for router errors (one per code per 10 s).
    pub failures: Arc<FailureLog>,
    /// Targets that refused the `stream_options` the router adds to chat streams.
    pub stream_options_refused: Arc<crate::proxy::stream_options::Refusals>,
    /// What the decodes of compressed whole answers may hold together (see
    /// [`crate::content_coding::DECODE_BUDGET`]): one small gzip may decode to 64 MiB, and
    /// many at once exhausted the router's memory. The recorder's, shared: its decodes for
    /// records take from it too.
    pub decode_budget: crate::content_coding::DecodeBudget,
}

impl AppState {
    pub fn new(
        config: Config,
        client: HttpClients,
        recorder: Recorder,
    ) -> Result<Self, ClientError> {
        let proxies = crate::env::process_proxy_secrets();
        let redactor = Redactor::new(config.secrets().chain(&proxies));
        let decode_budget = recorder.decode_budget();
        Ok(Self {
            redactor,
            config: ArcSwap::from_pointee(config),
            upstream: UpstreamClient::new(client.clone(), crate::lanes::count())?,
            client,
            recorder,
            keys: None,
            models: ModelCatalog::default(),
            keepalive_interval: KEEPALIVE_INTERVAL,
            warning_interval: crate::sinks::loss::DEFAULT_WARNING_INTERVAL,
            head_timeout: HEAD_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
            failures: Arc::default(),
            hard_stop: HardStop::new(),
            stream_options_refused: Default::default(),
            decode_budget,
        })
    }
}

/// reqwest's clients, as [`build_http_client`] makes them: the model-list fetch's and the one
/// requests through the proxy the environment names go with.
#[derive(Clone)]
pub struct HttpClients {
    /// HTTP/2 with a TLS server that offers it.
    any: reqwest::Client,
    /// HTTP/1.1 only (its TLS handshakes offer nothing else), for a request with a configured
    /// `Host`: over HTTP/2 a `host` field naming another host than `:authority` (the URL's)
    /// makes the request malformed (RFC 9113 §8.3.1), and strict servers reset it, or the
    /// connection the other servers of that origin share (see [`UpstreamClient`]).
    http1: reqwest::Client,
}

impl HttpClients {
    /// The client for a request with these header fields (a server's configured `headers`,
    /// or all of a request's).
    pub fn for_headers(&self, headers: &http::HeaderMap) -> &reqwest::Client {
        if headers.contains_key(http::header::HOST) {
            &self.http1
        } else {
            &self.any
        }
    }
}

/// The upstream clients ([`HttpClients`]): connect timeout (or the request's `timeout_secs`, if shorter: see
/// [`crate::upstream::ConnectLimitLayer`]), no total timeout (each request sets its own), no
/// redirects followed (a 3xx goes back to the client as the upstream sent it), no automatic
/// decompression (bodies pass through as sent), no proxy with `NO_PROXY=*`
/// ([`crate::env::no_proxy_for_any_host`]).
pub fn build_http_client() -> Result<HttpClients, reqwest::Error> {
    let build = |http1_only: bool| {
        let mut builder = reqwest::Client::builder()
            .connector_layer(crate::upstream::ConnectLimitLayer)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if http1_only {
            builder = builder.http1_only();
        }
        // reqwest's own reading of `NO_PROXY=*` leaves IP addresses proxied.
        if crate::env::no_proxy_for_any_host() {
            builder = builder.no_proxy();
        }
        builder.build()
    };
    Ok(HttpClients {
        any: build(false)?,
        http1: build(true)?,
    })
}
