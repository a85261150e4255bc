//! The HTTP transport of the span exporter: sends one OTLP export request to one destination
//! with that destination's own headers, retrying 429, 5xx and network errors with
//! exponential backoff (honouring `Retry-After`). An endpoint that is down or busy (see
//! [`endpoint_unavailable`]) has its batches held and retried until it answers.
//!
//! It runs on the tokio runtime, in the exporter's tasks, never on a request. Once shutdown
//! began it still waits before each retry as asked, as long as one more attempt fits before
//! the shutdown deadline; nothing it does lasts past that deadline.
//! It sends only the headers its destination was configured with (plus the body's content
//! type and encoding), so headers meant for one backend (`OTEL_EXPORTER_OTLP_HEADERS`, which
//! the OTLP crate also reads) never reach another, and it never logs a header value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http::{Request, Response};
use opentelemetry_http::{HttpClient, HttpError};
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;

/// Longest `Retry-After` honoured; a server asking for more gets retried sooner (or the batch
/// is given up by the time budget) rather than stalling every later batch.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Largest response body read from an OTLP endpoint (its answer is a few bytes).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// During shutdown, a retry is made only when at least this long is left before the
/// deadline for it: an export to a live endpoint takes well under a second.
const LAST_ATTEMPT_TIME: Duration = Duration::from_secs(1);

/// Shutdown as the transport sees it: from [`Self::begin`] on, every attempt and every wait
/// between attempts ends by the deadline given there (the flush budget). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct ShutdownDeadline {
    begun: CancellationToken,
    deadline: Arc<OnceLock<Instant>>,
}

impl ShutdownDeadline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Shutdown began: exports must be done by `deadline`. Only the first call counts.
    pub fn begin(&self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.begun.cancel();
    }

    /// The deadline, once shutdown began.
    fn deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }
}

/// How an export request is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included, for a batch the endpoint fails (a 500, a
    /// timeout); one it cannot take while it is down or busy is retried without this limit
    /// (see [`endpoint_unavailable`]).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt, connect to last byte.
    pub attempt_timeout: Duration,
    /// No new attempt starts after this much time since the first (the same exception as
    /// for `max_attempts`); a batch held longer than this is warned of.
    pub budget: Duration,
}

/// Enough attempts for the backoff to span most of the 60 s budget (0.5 + 1 + 2 + 4 + 8 × 5 =
/// 47.5 s of waits before jitter): a Langfuse that answers 500 for up to ~45 s costs no
/// batch, where six attempts gave up after ~15 s. One that is down (refused, 502, 503) or
/// throttling (429) is waited for as long as it takes, 8 s between tries.
impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(10),
            budget: Duration::from_secs(60),
        }
    }
}

/// Whether a status is worth another try: throttling and server errors.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// What an endpoint refused of an export it answered with success: OTLP's
/// `partial_success`. The client must not send those spans again, but they are lost and
/// must be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub spans: u64,
    /// The endpoint's `error_message`, as it sent it (not redacted, not bounded).
    pub message: String,
}

/// Where a transport leaves what the endpoint refused of its latest export, for the one
/// exporter that sends through it (an exporter never has two exports under way).
pub type RejectedSlot = Arc<Mutex<Option<Rejected>>>;

/// Where a transport leaves why its latest export failed without an answer (the network
/// error, said without URL or header), for the one exporter that sends through it: the
/// OTLP crate replaces every such error with its own "network error", which told an
/// operator nothing (a refused connection, a TLS problem and a timeout all read the same).
/// Of an export answered with a redirect, where it points when that can be named (see
/// [`redirect_target`]): the crate says only the status.
pub type CauseSlot = Arc<Mutex<Option<String>>>;

/// One OTLP/HTTP destination's transport. `Debug` shows the endpoint's name only.
pub struct OtlpTransport {
    name: &'static str,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    headers: Arc<HeaderMap>,
    policy: RetryPolicy,
    stopping: ShutdownDeadline,
    retries: Arc<AtomicU64>,
    held_warned: HeldWarned,
    rejected: RejectedSlot,
    cause: CauseSlot,
}

/// When this destination last warned that it holds batches for an endpoint that is down
/// (see [`Attempts::warn_held`]); shared by all of its exporters.
type HeldWarned = Arc<Mutex<Option<Instant>>>;

impl std::fmt::Debug for OtlpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OtlpTransport({}, headers redacted)", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}: invalid header name")]
    HeaderName(String),
    #[error("{0}: invalid header value")]
    HeaderValue(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("no async runtime to send exports on")]
    NoRuntime,
}

impl OtlpTransport {
    /// A transport sending `headers` (values are secrets: marked sensitive, never printed).
    /// Must be called inside a tokio runtime: requests run on it.
    pub fn new(
        name: &'static str,
        headers: &[(String, Secret)],
        policy: RetryPolicy,
        stopping: ShutdownDeadline,
        retries: Arc<AtomicU64>,
    ) -> Result<Self, TransportError> {
        let mut map = HeaderMap::new();
        for (key, value) in headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| TransportError::HeaderName(key.clone()))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| TransportError::HeaderValue(key.to_string()))?;
            value.set_sensitive(true);
            map.insert(key, value);
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(policy.attempt_timeout.min(Duration::from_secs(5)))
            .timeout(policy.attempt_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        // reqwest's own reading of `NO_PROXY=*` leaves IP addresses proxied.
        let builder = if crate::env::no_proxy_for_any_host() {
            builder.no_proxy()
        } else {
            builder
        };
        let client = builder
            .build()
            .map_err(|e| TransportError::Client(e.to_string()))?;
        Ok(Self {
            name,
            client,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| TransportError::NoRuntime)?,
            headers: Arc::new(map),
            policy,
            stopping,
            retries,
            held_warned: HeldWarned::default(),
            rejected: RejectedSlot::default(),
            cause: CauseSlot::default(),
        })
    }

    /// A transport for one more exporter: the same connections, headers and counters, its
    /// own [`RejectedSlot`] and [`CauseSlot`] (returned too), so that what an endpoint
    /// refused, or why an export failed, is told with the export it belongs to.
    pub fn for_one_exporter(&self) -> (Self, RejectedSlot, CauseSlot) {
        let rejected = RejectedSlot::default();
        let cause = CauseSlot::default();
        let transport = Self {
            name: self.name,
            client: self.client.clone(),
            runtime: self.runtime.clone(),
            headers: self.headers.clone(),
            policy: self.policy,
            stopping: self.stopping.clone(),
            retries: self.retries.clone(),
            held_warned: self.held_warned.clone(),
            rejected: rejected.clone(),
            cause: cause.clone(),
        };
        (transport, rejected, cause)
    }
}

/// The OTLP exporter's HTTP client: `opentelemetry_otlp::SpanExporter` encodes each batch
/// and hands the request here.
#[async_trait::async_trait]
impl HttpClient for OtlpTransport {
    /// Sends one export request; the answer (an error status included) or the last network
    /// error once the attempts or the time budget are spent. The error names no URL and no
    /// header value.
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut headers = (*self.headers).clone();
        for name in [CONTENT_TYPE, CONTENT_ENCODING] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        let send = Attempts {
            name: self.name,
            client: self.client.clone(),
            url: parts.uri.to_string(),
            headers,
            body,
            policy: self.policy,
            stopping: self.stopping.clone(),
            retries: self.retries.clone(),
            held_warned: self.held_warned.clone(),
        };
        // The request runs as a task on the runtime the transport was made in, whatever
        // polls the exporter's future (the HttpClient trait does not say); this only waits.
        let sent = self
            .runtime
            .spawn(send.run())
            .await
            .map_err(|e| Box::new(e) as HttpError)?;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                if let Ok(mut slot) = self.cause.lock() {
                    *slot = Some(error.to_string());
                }
                return Err(error);
            }
        };
        if response.status().is_redirection() {
            // The OTLP crate says only the status; where it points is what to configure.
            if let Ok(mut slot) = self.cause.lock() {
                *slot =
                    redirect_target(response.headers()).map(|to| format!("it redirects to {to}"));
            }
        }
        if response.status().is_success() {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let rejected = rejected_spans(content_type, response.body());
            if let Ok(mut slot) = self.rejected.lock() {
                *slot = rejected;
            }
        }
        Ok(response)
    }
}

/// Where a redirect points (its `Location`), when it can be named in a log line: an
/// absolute `http(s)` URL without user info, query or fragment, which may hold credentials
/// or a signature; at most [`MAX_LOCATION_CHARS`] characters. `None` otherwise.
pub fn redirect_target(headers: &HeaderMap) -> Option<String> {
    let location = headers.get(http::header::LOCATION)?.to_str().ok()?;
    let url = url::Url::parse(location.trim()).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    // Serialized, the URL is ASCII (percent-encoded), one line.
    plain.then(|| crate::error::clip(url.as_str(), MAX_LOCATION_CHARS))
}

/// Most characters of a redirect's target named in a warning.
const MAX_LOCATION_CHARS: usize = 200;

/// The spans a successful export answer says were rejected (`partial_success`), read from
/// its body in the protobuf or JSON encoding its content type names; `None` when none were
/// (an empty body, the usual answer) or the body cannot be read.
pub fn rejected_spans(content_type: Option<&str>, body: &[u8]) -> Option<Rejected> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message as _;
    if body.is_empty() {
        return None;
    }
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let rejected = match media.as_deref() {
        Some("application/x-protobuf" | "application/protobuf") => {
            let partial = ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            Rejected {
                spans: u64::try_from(partial.rejected_spans).unwrap_or(0),
                message: partial.error_message,
            }
        }
        Some("application/json") => rejected_in_json(body)?,
        _ => return None,
    };
    (rejected.spans > 0).then_some(rejected)
}

/// `partialSuccess` of an OTLP/JSON answer (`rejectedSpans` is an int64: a number or, as
/// proto3's JSON mapping writes it, a string).
fn rejected_in_json(body: &[u8]) -> Option<Rejected> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let partial = answer
        .get("partialSuccess")
        .or_else(|| answer.get("partial_success"))?;
    let count = partial
        .get("rejectedSpans")
        .or_else(|| partial.get("rejected_spans"))?;
    let spans = match count {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    let message = partial
        .get("errorMessage")
        .or_else(|| partial.get("error_message"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(Rejected { spans, message })
}

struct Attempts {
    name: &'static str,
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    policy: RetryPolicy,
    stopping: ShutdownDeadline,
    retries: Arc<AtomicU64>,
    held_warned: HeldWarned,
}

/// Whether a failed attempt says the endpoint cannot take any export now, rather than that
/// this one failed: no connection was made (refused, no route, a name that does not
/// resolve, a TLS handshake), or it answered 429 (throttled), 502 or 503 (down behind its
/// proxy, restarting). Such a batch is held and retried, as long as it takes, instead of
/// being given up after the policy's attempts and budget: a Langfuse down for an hour
/// otherwise lost every span of all but its last minute, while the exporter's queue (8192
/// spans or 64 MiB per destination, counting the batches held) had room for them, and at
/// a few requests a second holds hours of them. Only once that queue is full are new
/// spans dropped (and counted). A 500, a 504 or a timeout may be this batch's own doing
/// (too large, or a span the endpoint cannot take): given up as before, so no batch
/// blocks the others for good.
fn endpoint_unavailable(outcome: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match outcome {
        Ok(response) => matches!(response.status().as_u16(), 429 | 502 | 503),
        Err(error) => error.is_connect(),
    }
}

impl Attempts {
    /// Returns the last response (an error status included: the exporter reports it), or the
    /// last network error once the attempts, the budget or the shutdown deadline are spent;
    /// only the deadline for an endpoint that is down ([`endpoint_unavailable`]).
    async fn run(self) -> Result<Response<Bytes>, HttpError> {
        let first = Instant::now();
        let mut backoff = self.policy.initial_backoff;
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(self.body.clone());
            if let Some(deadline) = self.stopping.deadline() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("OTLP export not sent: the shutdown flush time ran out".into());
                }
                request = request.timeout(left.min(self.policy.attempt_timeout));
            }
            let sent = request.send().await;
            let (outcome, retry_after) = match sent {
                Ok(response) if !is_retryable(response.status()) => {
                    return into_http_response(response).await;
                }
                Ok(response) => {
                    let retry_after = retry_after(response.headers());
                    (Ok(response), retry_after)
                }
                Err(error) => (Err(error), None),
            };
            let wait = retry_after.unwrap_or(backoff).min(MAX_RETRY_AFTER) + jitter(backoff);
            let out_of_time = first.elapsed() + wait > self.policy.budget;
            let held = endpoint_unavailable(&outcome);
            if held && out_of_time {
                self.warn_held(first.elapsed(), &outcome);
            }
            let given_up = !held && (attempt >= self.policy.max_attempts || out_of_time);
            if given_up || !self.wait_before_retry(wait).await {
                return match outcome {
                    Ok(response) => into_http_response(response).await,
                    Err(error) => Err(network_error(&error)),
                };
            }
            attempt += 1;
            backoff = (backoff * 2).min(self.policy.max_backoff);
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Warns that this batch has waited `held` for an endpoint that is down, longer than the
    /// policy gives a failing one: at most once per budget (60 s) for the destination, so
    /// an outage is in the log long before the queue fills and spans are dropped.
    fn warn_held(&self, held: Duration, outcome: &Result<reqwest::Response, reqwest::Error>) {
        let Ok(mut last) = self.held_warned.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.policy.budget) {
            return;
        }
        *last = Some(now);
        let reason = match outcome {
            Ok(response) => format!("it answers {}", response.status()),
            Err(error) => network_error(error).to_string(),
        };
        tracing::warn!(
            destination = self.name,
            held_s = held.as_secs(),
            "trace endpoint unavailable ({reason}): its spans are kept and retried until it \
             answers; new spans are dropped only once its export queue is full"
        );
    }

    /// Waits `wait` (the backoff or the endpoint's `Retry-After`) before the next attempt;
    /// `false` when no attempt should follow. Shutdown, begun before or during the wait, keeps
    /// the wait as long as one more attempt still fits before the deadline
    /// ([`LAST_ATTEMPT_TIME`]); a wait that would pass that point is cut short to end there,
    /// and when not even that is left, no attempt follows.
    async fn wait_before_retry(&self, wait: Duration) -> bool {
        let wake = Instant::now() + wait;
        if self.stopping.deadline().is_none() {
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => return true,
                () = self.stopping.begun.cancelled() => {}
            }
        }
        let Some(deadline) = self.stopping.deadline() else {
            return true;
        };
        let Some(latest) = deadline.checked_sub(LAST_ATTEMPT_TIME) else {
            return false;
        };
        if Instant::now() >= latest {
            return false;
        }
        tokio::time::sleep_until(wake.min(latest).into()).await;
        true
    }
}

/// A network error, described without its URL.
fn network_error(error: &reqwest::Error) -> HttpError {
    let text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        crate::proxy::describe_reqwest_error(error)
    };
    format!("OTLP export failed: {text}").into()
}

async fn into_http_response(mut response: reqwest::Response) -> Result<Response<Bytes>, HttpError> {
    let status = response.status();
    let mut body = BytesMut::new();
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let mut out = Response::new(body.freeze());
    *out.status_mut() = status;
    // What is read of an answer: a partial success's encoding, a redirect's target.
    for name in [CONTENT_TYPE, http::header::LOCATION] {
        if let Some(value) = response.headers().get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    Ok(out)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from OTLP backends and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Up to a quarter of `backoff`, so many routers restarting together do not retry in step.
fn jitter(backoff: Duration) -> Duration {
    let quarter = backoff.as_millis() as u64 / 4;
    if quarter == 0 {
        return Duration::ZERO;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(nanos % (quarter + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect's target is named only as a plain absolute http(s) URL: none with user
    /// info, a query or a fragment (credentials, a signature), none relative or of another
    /// scheme, and cut when long.
    #[test]
    fn a_redirects_target_is_named_only_when_plain() {
        let target = |location: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::LOCATION,
                HeaderValue::from_str(location).expect("value"),
            );
            redirect_target(&headers)
        };
        assert_eq!(
            target("https://cloud.langfuse.com/api/public/otel/v1/traces").as_deref(),
            Some("https://cloud.langfuse.com/api/public/otel/v1/traces")
        );
        assert_eq!(
            target("HTTPS://Host:8443/v1").as_deref(),
            Some("https://host:8443/v1")
        );
        for unsafe_or_unknown in [
            "https://user:pw@host/v1",
            "https://token@host/v1",
            "https://host/v1?sig=abc",
            "https://host/v1#frag",
            "/api/public/otel/v1/traces",
            "ftp://host/v1",
            "not a url",
        ] {
            assert_eq!(target(unsafe_or_unknown), None, "{unsafe_or_unknown}");
        }
        let long = target(&format!("https://host/{}", "a".repeat(500))).expect("named");
        assert!(
            long.starts_with("https://host/aaa") && long.ends_with(" bytes)"),
            "{long}"
        );
        assert_eq!(redirect_target(&HeaderMap::new()), None);
    }

    #[test]
    fn a_partial_success_is_read_from_protobuf_and_json_answers() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        use prost::Message as _;
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let rejected = Rejected {
            spans: 3,
            message: "too old".into(),
        };
        let protobuf = Some("application/x-protobuf");
        assert_eq!(rejected_spans(protobuf, &answer), Some(rejected.clone()));
        // Int64 in OTLP/JSON: a string, or a number from lenient servers.
        for json in [
            r#"{"partialSuccess":{"rejectedSpans":"3","errorMessage":"too old"}}"#,
            r#"{"partialSuccess":{"rejectedSpans":3,"errorMessage":"too old"}}"#,
        ] {
            let got = rejected_spans(Some("application/json; charset=utf-8"), json.as_bytes());
            assert_eq!(got, Some(rejected.clone()), "{json}");
        }
        // The usual answers: nothing rejected.
        assert_eq!(rejected_spans(protobuf, b""), None);
        let none = ExportTraceServiceResponse::default().encode_to_vec();
        assert_eq!(rejected_spans(protobuf, &none), None);
        assert_eq!(rejected_spans(Some("application/json"), b"{}"), None);
        assert_eq!(rejected_spans(Some("text/plain"), b"ok"), None);
        assert_eq!(rejected_spans(protobuf, b"\xff\xff\xff"), None);
    }

    #[test]
    fn retryable_statuses() {
        for s in [429, 500, 502, 503, 504] {
            assert!(
                is_retryable(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
        for s in [200, 400, 401, 403, 404, 413] {
            assert!(
                !is_retryable(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    /// The waits before every retry, without jitter, as [`Attempts::run`] takes them.
    fn backoff_waits(policy: RetryPolicy) -> Duration {
        let mut backoff = policy.initial_backoff;
        let mut total = Duration::ZERO;
        for _ in 1..policy.max_attempts {
            total += backoff;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
        total
    }

    #[test]
    fn the_default_policy_rides_out_a_45_second_outage_within_its_budget() {
        let policy = RetryPolicy::default();
        let waits = backoff_waits(policy);
        assert!(waits >= Duration::from_secs(45), "{waits:?}");
        // Jitter adds up to a quarter: the budget, not the count, ends the last tries.
        assert!(waits <= policy.budget, "{waits:?}");
    }

    #[test]
    fn jitter_is_bounded() {
        for ms in [0u64, 1, 100, 8000] {
            assert!(jitter(Duration::from_millis(ms)) <= Duration::from_millis(ms / 4));
        }
    }

    #[tokio::test]
    async fn debug_never_shows_headers() {
        let t = OtlpTransport::new(
            "langfuse",
            &[("authorization".into(), Secret::new("Basic c2VjcmV0"))],
            RetryPolicy::default(),
            ShutdownDeadline::new(),
            Arc::default(),
        )
        .expect("transport");
        let shown = format!("{t:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }
}
