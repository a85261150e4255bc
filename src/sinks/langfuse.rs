//! The Langfuse exporter: every record becomes one OpenTelemetry span (a Langfuse trace
//! holding one generation), exported over OTLP/HTTP (protobuf) to Langfuse and/or a generic
//! OTLP backend.
//!
//! Spans are the SDK's `SpanData`, built straight from the record (a record is a span that
//! already ended), and exported by `opentelemetry_otlp::SpanExporter`, which posts through
//! our [`OtlpTransport`] (the destination's headers, and retries of 429, 5xx and network
//! errors). The crates cost about 24 K instructions per span more than writing the protobuf
//! by hand did (README "Observability"); they are OpenTelemetry's maintained OTLP encoding.
//!
//! Off the request path twice over: `accept` only queues the record; one builder thread turns
//! records into spans and batches them per destination; one task per destination hands the
//! batches to its exporters. Memory is bounded per destination (spans and bytes waiting or in
//! flight); when full, spans are dropped and counted, never waited for. It must never block a
//! request, and never write a key: every text goes through the [`Redactor`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::HttpClient;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::mpsc;

use crate::env::EnvSettings;
use crate::record::{RecordSink, RequestRecord};
use crate::secret::Secret;
use crate::sinks::clock::rfc3339_micros;
use crate::sinks::generation::{
    self, GENERATION_NAME, Level, ParamValue, bounded, bounded_list, bounded_str,
};
use crate::sinks::loss::LossWarnings;
use crate::sinks::otlp_http::{
    CauseSlot, OtlpTransport, Rejected, RejectedSlot, RetryPolicy, ShutdownDeadline, TransportError,
};
use crate::sinks::redact::Redactor;
use crate::sinks::{BATCH_WINDOW, Batch, next_batch_until};

/// The instrumentation scope: a plain name, so Langfuse applies no SDK-specific parsing.
pub const SCOPE_NAME: &str = "llmsrouter";

/// One place spans go.
#[derive(Debug, Clone)]
pub struct Destination {
    /// `langfuse` or `otlp`, in logs and stats.
    pub name: &'static str,
    /// The full traces URL.
    pub endpoint: String,
    pub headers: Vec<(String, Secret)>,
}

impl Destination {
    /// Langfuse's OTLP endpoint with Basic auth and ingestion version 4 (spans go straight
    /// to the tables its UI reads).
    pub fn langfuse(endpoint: String, public_key: &Secret, secret_key: &Secret) -> Self {
        let credentials = basic_credentials(public_key, secret_key);
        Self {
            name: "langfuse",
            endpoint,
            headers: vec![
                (
                    "authorization".to_owned(),
                    Secret::new(format!("Basic {}", credentials.expose())),
                ),
                ("x-langfuse-ingestion-version".to_owned(), Secret::new("4")),
            ],
        }
    }
}

/// Langfuse's Basic credentials, `base64(public:secret)`: a secret (it holds the secret key).
pub fn basic_credentials(public_key: &Secret, secret_key: &Secret) -> Secret {
    Secret::new(base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        public_key.expose(),
        secret_key.expose()
    )))
}

/// Knobs of the exporter; [`Self::from_env`] gives the production values.
#[derive(Debug, Clone)]
pub struct LangfuseOptions {
    pub destinations: Vec<Destination>,
    pub redactor: Redactor,
    /// Input plus output per span (`LLMSROUTER_TRACE_MAX_IO_BYTES`).
    pub max_io_bytes: usize,
    /// Spans waiting or in flight, per destination, before new ones are dropped.
    pub max_queued_spans: usize,
    /// Bytes of span text waiting or in flight, per destination, before dropping.
    pub max_queued_bytes: usize,
    /// How often a batch leaves (sooner when a batch is full).
    pub export_interval: Duration,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// A batch holding this much span text leaves at once, however few its spans: one
    /// export request stays far below what endpoints accept (the OTLP crate refuses bodies
    /// over 64 MiB), whatever `LLMSROUTER_TRACE_MAX_IO_BYTES` allows one span.
    pub max_batch_bytes: usize,
    pub retry: RetryPolicy,
    /// Gzip every export request (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// Longest the final flush may take on shutdown.
    pub shutdown_timeout: Duration,
    /// The spans' resource attributes (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// Warnings about dropped or failed spans come at most this often.
    pub warning_interval: Duration,
}

impl LangfuseOptions {
    pub const DEFAULT_MAX_QUEUED_SPANS: usize = 8192;
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

    /// Defaults for `destinations`.
    pub fn new(destinations: Vec<Destination>, redactor: Redactor) -> Self {
        Self {
            destinations,
            redactor,
            max_io_bytes: crate::env::DEFAULT_TRACE_MAX_IO_BYTES,
            max_queued_spans: Self::DEFAULT_MAX_QUEUED_SPANS,
            max_queued_bytes: Self::DEFAULT_MAX_QUEUED_BYTES,
            export_interval: crate::env::DEFAULT_TRACE_EXPORT_INTERVAL,
            max_batch: 256,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
            retry: RetryPolicy::default(),
            gzip: false,
            shutdown_timeout: Duration::from_secs(15),
            warning_interval: crate::sinks::loss::DEFAULT_WARNING_INTERVAL,
            resource: vec![
                (
                    "service.name".to_owned(),
                    crate::env::DEFAULT_SERVICE_NAME.to_owned(),
                ),
                (
                    "service.version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ],
        }
    }

    /// `None` when neither Langfuse nor a generic OTLP endpoint is configured.
    pub fn from_env(env: &EnvSettings, redactor: Redactor) -> Option<Self> {
        let mut destinations = Vec::new();
        if let Some(lf) = &env.langfuse {
            destinations.push(Destination::langfuse(
                lf.endpoint.clone(),
                &lf.public_key,
                &lf.secret_key,
            ));
        }
        if let Some(otlp) = &env.otlp {
            destinations.push(Destination {
                name: "otlp",
                endpoint: otlp.endpoint.clone(),
                headers: otlp.headers.clone(),
            });
        }
        if destinations.is_empty() {
            return None;
        }
        let mut options = Self::new(destinations, redactor);
        options.max_io_bytes = env.trace_max_io_bytes;
        options.export_interval = env.trace_export_interval;
        options.gzip = env.trace_gzip;
        options.resource = env.resource.clone();
        options.warning_interval = env.warning_interval();
        Some(options)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LangfuseError {
    #[error("{destination}: {source}")]
    Transport {
        destination: &'static str,
        source: TransportError,
    },
    #[error("{destination}: cannot build the OTLP exporter: {reason}")]
    Exporter {
        destination: &'static str,
        reason: String,
    },
    #[error("cannot start the span builder thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of one destination: the exporter's metrics. Also its bounded-queue gate.
#[derive(Debug)]
pub struct DestinationStats {
    pub name: &'static str,
    max_spans: usize,
    max_bytes: usize,
    pending_spans: AtomicUsize,
    pending_bytes: AtomicUsize,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retries: Arc<AtomicU64>,
    drop_warnings: Mutex<LossWarnings>,
    /// With the reason of the latest failure, for the catch-up warning.
    failure_warnings: Mutex<(LossWarnings, String)>,
}

/// Between two looks at the counters when their locks are poisoned (a panic elsewhere).
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl DestinationStats {
    fn new(name: &'static str, max_spans: usize, max_bytes: usize, warnings: Duration) -> Self {
        Self {
            name,
            max_spans,
            max_bytes,
            pending_spans: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: Arc::new(AtomicU64::new(0)),
            drop_warnings: Mutex::new(LossWarnings::every(warnings)),
            failure_warnings: Mutex::new((LossWarnings::every(warnings), String::new())),
        }
    }

    /// Spans accepted by the endpoint.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
    /// Spans dropped because the queue was full (the endpoint slow or down).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Spans lost because their export failed after every retry.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Export attempts repeated after a 429, 5xx or network error.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Spans waiting or being sent right now.
    pub fn pending(&self) -> usize {
        self.pending_spans.load(Ordering::Relaxed)
    }
    /// Bytes of span text waiting or being sent right now.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    fn is_full(&self) -> bool {
        self.pending_spans.load(Ordering::Relaxed) >= self.max_spans
            || self.pending_bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Takes room for a span of `bytes`, or counts it dropped.
    fn admit(&self, bytes: usize) -> bool {
        let spans = self.pending_spans.fetch_add(1, Ordering::AcqRel);
        let total = self.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
        if spans < self.max_spans && total + bytes <= self.max_bytes.max(bytes) {
            return true;
        }
        self.release(1, bytes);
        self.count_dropped(1);
        false
    }

    fn release(&self, spans: usize, bytes: usize) {
        self.pending_spans.fetch_sub(spans, Ordering::AcqRel);
        self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Counts `n` spans dropped, and nothing else: for callers a request may wait on
    /// ([`LangfuseSink::accept`]). The builder thread gives the warning.
    fn note_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` spans dropped and warns if a warning is due (off the request path only).
    fn count_dropped(&self, n: u64) {
        self.note_dropped(n);
        self.warn_dropped(Instant::now());
    }

    /// Counts `n` spans lost for `reason` and warns if a warning is due.
    fn count_failed(&self, n: u64, reason: &str) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut warnings) = self.failure_warnings.lock() {
            reason.clone_into(&mut warnings.1);
        }
        self.warn_failed(Instant::now());
    }

    /// Warns about spans dropped since the last warning, when one is due.
    fn warn_dropped(&self, now: Instant) {
        let Ok(mut warnings) = self.drop_warnings.lock() else {
            return;
        };
        let Some(lost) = warnings.due(self.dropped(), now) else {
            return;
        };
        tracing::warn!(
            destination = self.name,
            dropped = lost.total,
            since_last_warning = lost.new,
            "trace export queue full (the endpoint is slow or down): spans dropped"
        );
    }

    /// Warns about spans lost since the last warning, when one is due, with the latest
    /// reason.
    fn warn_failed(&self, now: Instant) {
        let Ok(mut warnings) = self.failure_warnings.lock() else {
            return;
        };
        let (warnings, reason) = &mut *warnings;
        let Some(lost) = warnings.due(self.failed(), now) else {
            return;
        };
        // Only 429, 5xx and network errors are retried: "after retries" misled for a 401.
        let hint = if reason.contains("status code: 401") || reason.contains("status code: 403") {
            " (the endpoint refused the credentials: check LANGFUSE_PUBLIC_KEY and \
             LANGFUSE_SECRET_KEY, or OTEL_EXPORTER_OTLP_HEADERS)"
        } else if reason.contains("status code: 3") {
            // An `http://` LANGFUSE_HOST in front of an https-only endpoint: the exporter
            // does not follow redirects (a POST's body and credentials would go along).
            " (the endpoint redirected: set LANGFUSE_HOST (or OTEL_EXPORTER_OTLP_ENDPOINT) to \
             where it redirects, e.g. https://)"
        } else {
            ""
        };
        tracing::warn!(
            destination = self.name,
            failed = lost.total,
            since_last_warning = lost.new,
            "trace export failed, spans lost (429, 5xx and network errors are retried \
             first, others not): {reason}{hint}"
        );
    }

    /// The catch-up of both warnings: losses counted within the last interval and not
    /// reported yet (the builder thread calls this whenever it wakes).
    fn warn_losses(&self, now: Instant) {
        self.warn_dropped(now);
        self.warn_failed(now);
    }

    /// The last warnings, before the exporter stops: every span lost so far is in one,
    /// whether or not the interval has passed.
    fn warn_losses_at_exit(&self) {
        if let Ok(mut warnings) = self.drop_warnings.lock() {
            warnings.closing();
        }
        if let Ok(mut warnings) = self.failure_warnings.lock() {
            warnings.0.closing();
        }
        self.warn_losses(Instant::now());
    }

    /// When [`Self::warn_losses`] should run next.
    fn next_loss_check(&self, now: Instant) -> Instant {
        let dropped = self
            .drop_warnings
            .lock()
            .map(|w| w.next_check(self.dropped(), now));
        let failed = self
            .failure_warnings
            .lock()
            .map(|w| w.0.next_check(self.failed(), now));
        match (dropped, failed) {
            (Ok(a), Ok(b)) => a.min(b),
            (Ok(at), Err(_)) | (Err(_), Ok(at)) => at,
            (Err(_), Err(_)) => now + WARNING_INTERVAL,
        }
    }
}

/// Text a span holds, for the byte bounds (the same sum on the way in and out): its
/// attributes' keys and values and its status message, about what its protobuf takes, so
/// that a batch's byte limit bounds the export request.
fn span_bytes(span: &SpanData) -> usize {
    let status = match &span.status {
        Status::Error { description } => description.len(),
        Status::Unset | Status::Ok => 0,
    };
    let attributes: usize = span
        .attributes
        .iter()
        .map(|kv| {
            kv.key.as_str().len()
                + match &kv.value {
                    Value::String(s) => s.as_str().len(),
                    Value::Array(Array::String(items)) => {
                        items.iter().map(|s| s.as_str().len()).sum()
                    }
                    _ => 8,
                }
        })
        .sum();
    attributes + status
}

/// Spans on their way to one destination, and the text they hold (for the gate).
#[derive(Debug, Default)]
struct SpanBatch {
    spans: Vec<SpanData>,
    bytes: usize,
}

/// One destination's OTLP exporter (`opentelemetry_otlp::SpanExporter`, which converts the
/// spans to OTLP protobuf and posts them through our [`OtlpTransport`]), counting the outcome
/// and releasing the gate once a batch is sent or given up.
struct CountingExporter {
    stats: Arc<DestinationStats>,
    inner: opentelemetry_otlp::SpanExporter,
    /// What the endpoint rejected of the latest export (its transport's).
    rejected: RejectedSlot,
    /// Why the latest export failed without an answer, or where its redirect pointed (its
    /// transport's).
    cause: CauseSlot,
    /// For the endpoint's message about rejected spans: it may quote them.
    redactor: Redactor,
}

/// The OTLP crate's error, with the transport's cause when it has one: the crate says only
/// "network error" for every failure without an answer.
fn failure_reason(error: &impl std::fmt::Display, cause: Option<String>) -> String {
    match cause {
        Some(cause) => {
            let cause = cause.strip_prefix("OTLP export failed: ").unwrap_or(&cause);
            format!("{error} ({cause})")
        }
        None => error.to_string(),
    }
}

/// Most characters of an endpoint's message about rejected spans kept in the warning.
const MAX_ENDPOINT_MESSAGE_CHARS: usize = 300;

impl CountingExporter {
    async fn export(&self, batch: SpanBatch) {
        let count = batch.spans.len();
        let result = self.inner.export(batch.spans).await;
        let rejected = self.rejected.lock().ok().and_then(|mut slot| slot.take());
        let cause = self.cause.lock().ok().and_then(|mut slot| slot.take());
        self.stats.release(count, batch.bytes);
        match result {
            Ok(()) => self.count_accepted(count as u64, rejected),
            Err(error) => {
                // A cause quoting the endpoint (where it redirects) goes out without a key.
                let cause = cause.map(|cause| self.redactor.redact(&cause, &[]).into_owned());
                self.stats
                    .count_failed(count as u64, &failure_reason(&error, cause));
            }
        }
    }

    /// Counts an export the endpoint answered with success: its spans exported, but those
    /// it `rejected` (OTLP `partial_success`) failed. Those are not sent again, as the spec
    /// says, yet lost: counted and warned of with the endpoint's message.
    fn count_accepted(&self, spans: u64, rejected: Option<Rejected>) {
        let refused = rejected.as_ref().map_or(0, |r| r.spans.min(spans));
        self.stats
            .exported
            .fetch_add(spans - refused, Ordering::Relaxed);
        let Some(rejected) = rejected.filter(|_| refused > 0) else {
            return;
        };
        let message = endpoint_message(&rejected.message, &self.redactor);
        self.stats.count_failed(
            refused,
            &format!("the endpoint rejected {refused} of {spans} spans: {message}"),
        );
    }
}

/// An endpoint's message for the log: keys redacted, one line, at most
/// [`MAX_ENDPOINT_MESSAGE_CHARS`] characters.
fn endpoint_message(text: &str, redactor: &Redactor) -> String {
    if text.trim().is_empty() {
        return "(no message)".to_owned();
    }
    // Redacted before the cut, so that no cut leaves half a key.
    let redacted = redactor.redact(text, &[]);
    let mut line: String = redacted
        .chars()
        .take(MAX_ENDPOINT_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if redacted.chars().nth(MAX_ENDPOINT_MESSAGE_CHARS).is_some() {
        line.push_str("...");
    }
    line
}

/// Depth of the queue between `accept` and the builder thread (a few batch windows at
/// tens of thousands of requests a second).
const BUILD_QUEUE: usize = 4096;

/// The Langfuse / OTLP sink.
pub struct LangfuseSink {
    tx: Mutex<Option<SyncSender<Arc<RequestRecord>>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// One export loop per destination, on the tokio runtime.
    exporters: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stats: Vec<Arc<DestinationStats>>,
    stopping: ShutdownDeadline,
    shutdown_timeout: Duration,
}

/// Of the shutdown flush time, the end kept back from the exports (their attempts and
/// waits stop before it) so that what they did is counted and logged in time.
const FLUSH_SETTLE: Duration = Duration::from_millis(250);

/// Batches handed to a destination's export loop and not taken yet. Small: when the endpoint
/// is slower than spans come, they gather into big batches in the [`Outbox`] rather than
/// queue here as many small ones (each a round trip of its own). A batch that finds this full
/// waits in the outbox, never dropped: the gate is the only limit.
const EXPORT_QUEUE: usize = 8;

/// How soon the builder offers again a batch the export loop had no room for.
const OFFER_AGAIN: Duration = Duration::from_millis(10);

/// Export requests one destination may have under way at once.
const EXPORTS_IN_FLIGHT: usize = 4;

impl LangfuseSink {
    /// Starts the exporter (inside a tokio runtime: exports run on it).
    pub fn start(options: LangfuseOptions) -> Result<Self, LangfuseError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| LangfuseError::Exporter {
                destination: "langfuse",
                reason: format!("no async runtime: {e}"),
            })?;
        let stopping = ShutdownDeadline::new();
        let resource = Resource::builder_empty()
            .with_attributes(
                options
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let mut stats = Vec::new();
        let mut outboxes = Vec::new();
        let mut exporters = Vec::new();
        for destination in &options.destinations {
            let destination_stats = Arc::new(DestinationStats::new(
                destination.name,
                options.max_queued_spans,
                options.max_queued_bytes,
                options.warning_interval,
            ));
            let transport = OtlpTransport::new(
                destination.name,
                &destination.headers,
                options.retry,
                stopping.clone(),
                destination_stats.retries.clone(),
            )
            .map_err(|source| LangfuseError::Transport {
                destination: destination.name,
                source,
            })?;
            // The SDK's exporter is not called again before its export returns; several
            // exports under way need as many exporters (sharing one connection pool, each
            // with its own transport, which tells it what the endpoint rejected).
            let pool = (0..EXPORTS_IN_FLIGHT)
                .map(|_| {
                    let (transport, rejected, cause) = transport.for_one_exporter();
                    let transport: Arc<dyn HttpClient> = Arc::new(transport);
                    build_exporter(destination, &transport, &options, &resource).map(|inner| {
                        CountingExporter {
                            stats: destination_stats.clone(),
                            inner,
                            rejected,
                            cause,
                            redactor: options.redactor.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
            exporters.push(runtime.spawn(export_loop(pool, destination_stats.clone(), rx)));
            outboxes.push(Outbox::new(destination_stats.clone(), tx));
            stats.push(destination_stats);
        }
        let scope = InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let (tx, rx) = sync_channel(BUILD_QUEUE);
        let builder = SpanBuilderThread {
            outboxes,
            scope,
            redactor: options.redactor.clone(),
            max_io_bytes: options.max_io_bytes,
            export_interval: options.export_interval,
            limits: BatchLimits {
                spans: options.max_batch.max(1),
                bytes: options.max_batch_bytes.max(1),
            },
        };
        let worker = std::thread::Builder::new()
            .name("llmsrouter-spans".into())
            .spawn(move || builder.run(rx))
            .map_err(LangfuseError::Thread)?;
        for destination in &options.destinations {
            tracing::info!(
                destination = destination.name,
                "tracing to {}",
                crate::env::shown_url(&destination.endpoint)
            );
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            exporters: Mutex::new(exporters),
            stats,
            stopping,
            shutdown_timeout: options.shutdown_timeout,
        })
    }

    /// Per-destination counters, in the order of the options' destinations.
    pub fn stats(&self) -> &[Arc<DestinationStats>] {
        &self.stats
    }
}

/// The OTLP/HTTP protobuf exporter of `destination`, sending through `transport`. Retries are
/// the transport's: the crate's own policy skips a plain 500, which Langfuse answers while
/// its database is unavailable. Headers are the transport's too, so the
/// `OTEL_EXPORTER_OTLP_HEADERS` the crate reads for every exporter never reach Langfuse.
/// Compression is the crate's: it gzips the body and says so in `Content-Encoding`.
fn build_exporter(
    destination: &Destination,
    transport: &Arc<dyn HttpClient>,
    options: &LangfuseOptions,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, LangfuseError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(destination.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(options.retry.budget)
        .with_shared_http_client(transport.clone())
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
    if options.gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    let mut exporter = builder.build().map_err(|e| LangfuseError::Exporter {
        destination: destination.name,
        reason: e.to_string(),
    })?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Exports a destination's batches, one per idle exporter of `pool`, until the builder
/// thread is gone and every batch is sent; then shuts the exporters down. Several in flight:
/// a busy router fills a batch every few milliseconds, faster than one round trip at a time
/// can carry under load.
async fn export_loop(
    mut pool: Vec<CountingExporter>,
    stats: Arc<DestinationStats>,
    mut rx: mpsc::Receiver<SpanBatch>,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(batch) = rx.recv().await {
        let exporter = loop {
            if let Some(idle) = pool.pop() {
                break Some(idle);
            }
            match in_flight.join_next().await {
                Some(Ok(done)) => break Some(done),
                // An export that panicked took its exporter along; wait for another.
                Some(Err(_)) => continue,
                None => break None,
            }
        };
        let Some(exporter) = exporter else {
            stats.release(batch.spans.len(), batch.bytes);
            stats.count_failed(batch.spans.len() as u64, "no exporter left");
            continue;
        };
        in_flight.spawn(async move {
            exporter.export(batch).await;
            exporter
        });
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok(done) = done {
            pool.push(done);
        }
    }
    for exporter in pool {
        let _ = exporter.inner.shutdown();
    }
}

impl RecordSink for LangfuseSink {
    fn name(&self) -> &'static str {
        "langfuse"
    }

    fn metrics(&self, out: &mut crate::sinks::Metrics) {
        for stats in &self.stats {
            let labels = [("destination", stats.name)];
            out.counter(
                "spans_exported",
                "Spans the trace endpoint accepted.",
                &labels,
                stats.exported(),
            );
            out.counter(
                "spans_dropped",
                "Spans dropped because the export queue was full.",
                &labels,
                stats.dropped(),
            );
            out.counter(
                "spans_failed",
                "Spans lost because their export failed after every retry.",
                &labels,
                stats.failed(),
            );
            out.counter(
                "span_export_retries",
                "Export attempts repeated after a 429, 5xx or network error.",
                &labels,
                stats.retries(),
            );
        }
    }

    fn accept(&self, record: &Arc<RequestRecord>) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(record.clone()) {
            Ok(()) => {}
            // Only counted here: the builder thread, busy with the full queue, warns.
            Err(TrySendError::Full(_)) => {
                for stats in &self.stats {
                    stats.note_dropped(1);
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // The flush budget starts now. Retries keep waiting as asked (Retry-After, backoff)
            // as long as one more attempt fits before the deadline; none lasts past it.
            let start = Instant::now();
            let deadline = start + self.shutdown_timeout;
            self.stopping
                .begin(start + self.shutdown_timeout.saturating_sub(FLUSH_SETTLE));
            let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
            drop(tx);
            let worker = self.worker.lock().ok().and_then(|mut w| w.take());
            let exporters: Vec<_> = self
                .exporters
                .lock()
                .map(|mut e| e.drain(..).collect())
                .unwrap_or_default();
            // The builder thread hands over its last batches and ends; the export loops then
            // end once those are sent.
            let all_sent = async {
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(worker) = worker {
                        let _ = worker.join();
                    }
                })
                .await;
                for exporter in exporters {
                    let _ = exporter.await;
                }
            };
            if tokio::time::timeout_at(deadline.into(), all_sent)
                .await
                .is_err()
            {
                tracing::warn!(
                    "trace flush on shutdown incomplete after {} s",
                    self.shutdown_timeout.as_secs()
                );
            }
            for stats in &self.stats {
                stats.warn_losses_at_exit();
                tracing::info!(
                    destination = stats.name,
                    exported = stats.exported(),
                    dropped = stats.dropped(),
                    failed = stats.failed(),
                    retries = stats.retries(),
                    "trace exporter stopped"
                );
            }
        })
    }
}

/// Spans gathered for one destination, waiting to leave as a batch, and complete batches the
/// export loop had no room for yet. Every span here was admitted by the gate
/// ([`DestinationStats::admit`]), so what the outbox holds is bounded by it; nothing is
/// dropped here for want of room in the export loop's queue.
struct Outbox {
    stats: Arc<DestinationStats>,
    /// The batch gathering spans.
    spans: SpanBatch,
    /// When the first span of this batch was added.
    since: Option<Instant>,
    /// Full batches the export loop could not take yet, oldest first.
    waiting: VecDeque<SpanBatch>,
    /// When a handover last found the export loop's queue full; cleared once all went.
    blocked_at: Option<Instant>,
    tx: mpsc::Sender<SpanBatch>,
}

impl Outbox {
    fn new(stats: Arc<DestinationStats>, tx: mpsc::Sender<SpanBatch>) -> Self {
        Self {
            stats,
            spans: SpanBatch::default(),
            since: None,
            waiting: VecDeque::new(),
            blocked_at: None,
            tx,
        }
    }

    /// Adds one span holding `bytes` of text.
    fn push(&mut self, span: SpanData, bytes: usize) {
        if self.spans.spans.is_empty() {
            self.since = Some(Instant::now());
        }
        self.spans.spans.push(span);
        self.spans.bytes += bytes;
    }

    /// Adds an admitted span of `bytes`. The gathering batch leaves first when the span
    /// would take it past its byte limit (an endpoint may refuse a bigger request whole,
    /// every user's spans in it lost: Langfuse Cloud above 5 MB), and after it when full.
    fn add(&mut self, span: SpanData, bytes: usize, limits: BatchLimits) {
        if self.would_overflow(bytes, limits) {
            self.seal();
            self.hand_over_waiting();
        }
        self.push(span, bytes);
        if self.full(limits) {
            self.seal();
            self.hand_over_waiting();
        }
    }

    /// A span of `bytes` would take the gathering batch past its byte limit (a span alone
    /// is never refused: it is a batch of its own).
    fn would_overflow(&self, bytes: usize, limits: BatchLimits) -> bool {
        !self.spans.spans.is_empty() && self.spans.bytes + bytes > limits.bytes
    }

    fn full(&self, limits: BatchLimits) -> bool {
        self.spans.spans.len() >= limits.spans || self.spans.bytes >= limits.bytes
    }

    fn due(&self, now: Instant, interval: Duration, limits: BatchLimits) -> bool {
        self.full(limits)
            || self
                .since
                .is_some_and(|t| now.duration_since(t) >= interval)
    }

    /// When the builder must look at this outbox again without a new record: to offer again
    /// what the export loop had no room for (the gathering batch cannot leave before that
    /// anyway), else when the gathering batch falls due.
    fn next_wake(&self, interval: Duration) -> Option<Instant> {
        match self.blocked_at {
            Some(t) => Some(t + OFFER_AGAIN),
            None => self.since.map(|since| since + interval),
        }
    }

    /// Hands over what may leave: the waiting batches, oldest first, then the gathering one
    /// if it is due. What the export loop has no room for stays: a full batch waits, a
    /// smaller one keeps gathering (up to the batch limits); both are offered again.
    fn send(&mut self, now: Instant, interval: Duration, limits: BatchLimits) {
        if self.full(limits) {
            self.seal();
        }
        if !self.hand_over_waiting() || !self.due(now, interval, limits) {
            return;
        }
        let batch = std::mem::take(&mut self.spans);
        match self.hand_over(batch) {
            Ok(()) => self.since = None,
            Err(batch) => {
                self.spans = batch;
                self.blocked_at = Some(Instant::now());
            }
        }
    }

    /// Moves the gathering batch, if any, to the end of the waiting ones.
    fn seal(&mut self) {
        if !self.spans.spans.is_empty() {
            self.waiting.push_back(std::mem::take(&mut self.spans));
        }
        self.since = None;
    }

    /// Hands the waiting batches over, oldest first, as far as the export loop has room;
    /// `true` when none is left waiting.
    fn hand_over_waiting(&mut self) -> bool {
        while let Some(batch) = self.waiting.pop_front() {
            if let Err(batch) = self.hand_over(batch) {
                self.waiting.push_front(batch);
                self.blocked_at = Some(Instant::now());
                return false;
            }
        }
        self.blocked_at = None;
        true
    }

    /// `Err` gives back a batch the export loop has no room for yet. An export loop that is
    /// gone (it cannot end before the builder does, unless it panicked) loses the batch:
    /// counted as dropped.
    fn hand_over(&self, batch: SpanBatch) -> Result<(), SpanBatch> {
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => Err(batch),
            Err(mpsc::error::TrySendError::Closed(batch)) => {
                self.stats.release(batch.spans.len(), batch.bytes);
                self.stats.count_dropped(batch.spans.len() as u64);
                Ok(())
            }
        }
    }
}

/// Most records the builder takes at one go before it checks whether a batch is due.
const MAX_RECORDS_PER_WAKE: usize = 1024;

struct SpanBuilderThread {
    outboxes: Vec<Outbox>,
    scope: InstrumentationScope,
    redactor: Redactor,
    max_io_bytes: usize,
    export_interval: Duration,
    limits: BatchLimits,
}

/// When a batch is full and leaves before its interval is up.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    spans: usize,
    bytes: usize,
}

impl SpanBuilderThread {
    /// Until the sink closes its end: one span per record, batches sent when full or due.
    fn run(mut self, rx: Receiver<Arc<RequestRecord>>) {
        let mut records = Vec::with_capacity(MAX_RECORDS_PER_WAKE);
        loop {
            match self.gather(&rx, &mut records) {
                Batch::Taken => {
                    for record in records.drain(..) {
                        self.emit(&record);
                    }
                }
                Batch::TimedOut => {}
                Batch::Closed => break,
            }
            let now = Instant::now();
            for outbox in &mut self.outboxes {
                outbox.send(now, self.export_interval, self.limits);
                outbox.stats.warn_losses(now);
            }
        }
        self.hand_over_the_rest();
    }

    /// On close: every batch still here goes to its export loop, each as soon as it has room
    /// (the loops keep taking batches until the shutdown deadline has cut every export), so
    /// a slow destination does not hold up another's last batches.
    fn hand_over_the_rest(&mut self) {
        for outbox in &mut self.outboxes {
            outbox.seal();
        }
        loop {
            let mut all = true;
            for outbox in &mut self.outboxes {
                all &= outbox.hand_over_waiting();
            }
            if all {
                return;
            }
            std::thread::sleep(OFFER_AGAIN);
        }
    }

    /// Takes the records waiting into `records` (see [`next_batch_until`]); when none
    /// waits, waits no longer than the next batch falls due, or a loss warning (spans
    /// dropped or failed since the last one) may be due.
    fn gather(
        &self,
        rx: &Receiver<Arc<RequestRecord>>,
        records: &mut Vec<Arc<RequestRecord>>,
    ) -> Batch {
        let now = Instant::now();
        let deadline = self
            .outboxes
            .iter()
            .filter_map(|o| o.next_wake(self.export_interval))
            .chain(self.outboxes.iter().map(|o| o.stats.next_loss_check(now)))
            .min();
        next_batch_until(
            rx,
            records,
            MAX_RECORDS_PER_WAKE,
            BATCH_WINDOW.min(self.export_interval),
            deadline,
            &mut std::thread::sleep,
        )
    }

    fn emit(&mut self, record: &RequestRecord) {
        // Every destination full: skip the work of building a span nobody takes.
        if self.outboxes.iter().all(|o| o.stats.is_full()) {
            for outbox in &self.outboxes {
                outbox.stats.count_dropped(1);
            }
            return;
        }
        let span = span_of(record, &self.scope, &self.redactor, self.max_io_bytes);
        let bytes = span_bytes(&span);
        let last = self.outboxes.len().saturating_sub(1);
        let mut span = Some(span);
        for (i, outbox) in self.outboxes.iter_mut().enumerate() {
            if !outbox.stats.admit(bytes) {
                continue;
            }
            // The last destination takes the span itself, the others a copy.
            let this = if i == last { span.take() } else { span.clone() };
            if let Some(this) = this {
                outbox.add(this, bytes, self.limits);
            }
        }
    }
}

/// The record as a finished span. Its trace id is the request id, so the
/// `x-llmsrouter-request-id` header finds the trace in Langfuse.
///
/// A record is a span that already ended, so it is built as the SDK's `SpanData` directly,
/// not through a tracer: the tracer route (a live span, then `SpanData`) only adds a copy of
/// every attribute.
pub fn span_of(
    record: &RequestRecord,
    scope: &InstrumentationScope,
    redactor: &Redactor,
    max_io_bytes: usize,
) -> SpanData {
    let trace_id = u128::from_str_radix(&record.request_id, 16)
        .ok()
        .filter(|id| *id != 0 && record.request_id.len() == 32)
        .unwrap_or_else(|| fastrand::u128(1..));
    let mut attributes = Attributes(Vec::with_capacity(40));
    let error = write_attributes(&mut attributes, record, redactor, max_io_bytes);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(fastrand::u64(1..)),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Borrowed(GENERATION_NAME),
        start_time: record.started_at,
        end_time: record.ended_at,
        attributes: attributes.0,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match error {
            Some(message) => Status::error(message),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

/// A span's attributes, added by value kind. Keys are static; values move in when owned.
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn str(&mut self, key: &'static str, value: impl Into<StringValue>) {
        self.0.push(KeyValue::new(key, Value::String(value.into())));
    }

    fn strs(&mut self, key: &'static str, values: Vec<String>) {
        let values = values.into_iter().map(StringValue::from).collect();
        self.0
            .push(KeyValue::new(key, Value::Array(Array::String(values))));
    }

    fn int(&mut self, key: &'static str, value: i64) {
        self.0.push(KeyValue::new(key, value));
    }

    fn double(&mut self, key: &'static str, value: f64) {
        self.0.push(KeyValue::new(key, value));
    }
}

/// `langfuse.trace.metadata`: what Langfuse has no field of its own for.
#[derive(serde::Serialize)]
struct TraceMetadata<'a> {
    route_mode: &'static str,
    endpoint: &'a str,
    requested_model: &'a str,
    outcome: &'static str,
    stream: bool,
    /// Always present, `false` too: a filter on it must not miss the records without it.
    usage_partial: bool,
}

/// Writes the span's attributes; returns its error status text for failures.
fn write_attributes(
    a: &mut Attributes,
    record: &RequestRecord,
    redactor: &Redactor,
    max_io_bytes: usize,
) -> Option<String> {
    let redactor = redactor.for_record(&record.secrets);
    let g = generation::build_with(record, &redactor, max_io_bytes);
    // Texts that came from the client or the upstream and were not redacted by the
    // generation view (which did input, output, parameters and the status message).
    // Langfuse's own keys.
    a.str("langfuse.observation.type", "generation");
    a.str("langfuse.trace.name", GENERATION_NAME);
    // Every text beyond input, output and parameters is cut to `MAX_ATTRIBUTE_BYTES`
    // (after redaction, so that no cut leaves half a key), so a span is at most the
    // input/output cap plus a few KiB.
    let text = |s: &str| bounded(redactor.redact(s).into_owned());
    let provider = text(&record.provider);
    a.strs("langfuse.trace.tags", vec![provider.clone()]);
    // The account, when accounts are on: a client's own word for who it is counts only
    // when no key says it (else any user could file traces under another's name).
    let user = match &record.user {
        Some(user) => Some(bounded_str(user.as_str()).into_owned()),
        None => g.client_user.clone(),
    };
    if let Some(user) = user {
        a.str("user.id", user.clone());
        a.str("langfuse.user.id", user);
    }
    if let Some(session) = &g.session_id {
        a.str("session.id", session.clone());
        a.str("langfuse.session.id", session.clone());
    }
    a.str("langfuse.observation.model.name", g.model);
    if let Some(parameters) = g.parameters {
        a.str("langfuse.observation.model.parameters", parameters);
    }
    if let Some(usage) = g.usage_details {
        a.str("langfuse.observation.usage_details", usage);
    }
    if let Some(cost) = g.cost_details {
        a.str("langfuse.observation.cost_details", cost);
    }
    // A whole answer's first token came with its headers.
    if let Some(first) = record.completion_start() {
        a.str(
            "langfuse.observation.completion_start_time",
            rfc3339_micros(first),
        );
    }
    if let Some(input) = g.input {
        a.str("langfuse.observation.input", input);
    }
    if let Some(output) = g.output {
        a.str("langfuse.observation.output", output);
    }
    // DEFAULT is Langfuse's own default: only a warning or an error is sent.
    if g.level != Level::Default {
        a.str("langfuse.observation.level", g.level.as_str());
    }
    if let Some(message) = &g.status_message {
        a.str("langfuse.observation.status_message", message.clone());
    }
    // One JSON attribute; the request id is the trace id and the provider the tag.
    let metadata = TraceMetadata {
        route_mode: record.mode.as_str(),
        endpoint: &bounded(redactor.redact_path(&record.endpoint).into_owned()),
        requested_model: &text(&record.requested_model),
        outcome: record.outcome.as_str(),
        stream: record.stream,
        usage_partial: record.usage_partial(),
    };
    if let Ok(metadata) = serde_json::to_string(&metadata) {
        a.str("langfuse.trace.metadata", redactor.redact_owned(metadata));
    }
    // OpenTelemetry GenAI conventions, for any OTLP backend.
    a.str("gen_ai.operation.name", g.operation);
    a.str("gen_ai.provider.name", provider);
    a.str("gen_ai.request.model", text(&record.upstream_model));
    for (key, value) in g.request_attributes {
        match value {
            ParamValue::Int(v) => a.int(key, v),
            ParamValue::Float(v) => a.double(key, v),
            ParamValue::Strings(v) => {
                a.strs(
                    key,
                    bounded_list(v.into_iter().map(|s| redactor.redact_owned(s)).collect()),
                );
            }
        }
    }
    if let Some(model) = &record.response.model {
        a.str("gen_ai.response.model", text(model));
    }
    if let Some(id) = &record.response.id {
        a.str("gen_ai.response.id", text(id));
    }
    // One per choice, choice 0's first, as the GenAI conventions have them.
    let mut more = record
        .response
        .more_finish_reasons
        .iter()
        .collect::<Vec<_>>();
    more.sort_by_key(|(index, _)| *index);
    let reasons: Vec<String> = record
        .response
        .finish_reason
        .iter()
        .chain(more.into_iter().map(|(_, reason)| reason))
        .map(|reason| text(reason))
        .collect();
    if !reasons.is_empty() {
        a.strs("gen_ai.response.finish_reasons", bounded_list(reasons));
    }
    if let Some(usage) = &record.response.usage {
        a.int(
            "gen_ai.usage.input_tokens",
            i64::try_from(usage.input).unwrap_or(i64::MAX),
        );
        a.int(
            "gen_ai.usage.output_tokens",
            i64::try_from(usage.output).unwrap_or(i64::MAX),
        );
    }
    if let Some(status) = record.status {
        a.int("http.response.status_code", i64::from(status));
    }
    match g.level {
        Level::Error => {
            a.str("error.type", record.outcome.as_str());
            g.status_message
        }
        Level::Default | Level::Warning => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;

    fn attribute<'s>(span: &'s SpanData, key: &str) -> Option<&'s Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn a_span() -> SpanData {
        let scope = InstrumentationScope::builder(SCOPE_NAME).build();
        span_of(
            &crate::record::tests::sample(),
            &scope,
            &Redactor::new(Vec::new()),
            1 << 20,
        )
    }

    /// An outbox whose export loop takes `room` batches before it is full, and the loop's end.
    fn outbox(room: usize) -> (Outbox, mpsc::Receiver<SpanBatch>) {
        let (tx, rx) = mpsc::channel(room);
        let stats = Arc::new(DestinationStats::new(
            "test",
            1000,
            1 << 30,
            crate::sinks::loss::DEFAULT_WARNING_INTERVAL,
        ));
        (Outbox::new(stats, tx), rx)
    }

    /// Adds a span as the builder does: admitted by the gate, then sealed when full.
    fn add(outbox: &mut Outbox, limits: BatchLimits) {
        assert!(outbox.stats.admit(10));
        outbox.add(a_span(), 10, limits);
    }

    /// A batch never goes past its byte limit: the span that would take it there starts the
    /// next one (before, a batch under 4 MiB took one more span of up to the input/output
    /// cap, and went over the 5 MB Langfuse Cloud accepts). A span alone is a batch.
    #[test]
    fn a_span_that_would_take_a_batch_past_its_byte_limit_starts_the_next() {
        let (mut batches, mut rx) = outbox(8);
        let limits = BatchLimits {
            spans: 100,
            bytes: 25,
        };
        for _ in 0..5 {
            add(&mut batches, limits);
        }
        let mut sizes = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            assert!(batch.bytes <= 25, "{}", batch.bytes);
            sizes.push(batch.spans.len());
        }
        assert_eq!(sizes, [2, 2]);
        assert_eq!(
            batches.spans.spans.len(),
            1,
            "the fifth gathers the next batch"
        );

        let (mut alone, mut rx) = outbox(8);
        add(
            &mut alone,
            BatchLimits {
                spans: 100,
                bytes: 5,
            },
        );
        assert_eq!(rx.try_recv().expect("a batch").spans.len(), 1);
    }

    #[test]
    fn full_batches_the_export_loop_has_no_room_for_wait_and_are_offered_again() {
        let (mut outbox, mut rx) = outbox(1);
        let limits = BatchLimits {
            spans: 1,
            bytes: 1 << 20,
        };
        for _ in 0..5 {
            add(&mut outbox, limits);
        }
        // One batch in the loop's queue, four waiting: none dropped.
        assert_eq!(outbox.waiting.len(), 4);
        assert_eq!(outbox.stats.dropped(), 0);
        assert_eq!(outbox.stats.pending(), 5);
        let blocked = outbox.blocked_at.expect("blocked");
        assert_eq!(
            outbox.next_wake(Duration::ZERO),
            Some(blocked + OFFER_AGAIN),
            "offered again after a pause, not in a busy loop"
        );
        let mut taken = 0;
        while taken < 5 {
            assert_eq!(rx.try_recv().expect("a batch").spans.len(), 1);
            taken += 1;
            outbox.send(Instant::now(), Duration::from_secs(3600), limits);
        }
        assert!(outbox.waiting.is_empty());
        assert_eq!(outbox.blocked_at, None);
        assert_eq!(outbox.next_wake(Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_due_batch_the_export_loop_cannot_take_keeps_gathering_up_to_the_batch_limits() {
        let (mut outbox, mut rx) = outbox(1);
        let limits = BatchLimits {
            spans: 3,
            bytes: 1 << 20,
        };
        let due_at_once = Duration::ZERO;
        add(&mut outbox, limits);
        outbox.send(Instant::now(), due_at_once, limits);
        assert!(outbox.spans.spans.is_empty(), "the loop had room");
        // The loop's queue is full: the due batch stays and keeps gathering.
        for _ in 0..2 {
            add(&mut outbox, limits);
            outbox.send(Instant::now(), due_at_once, limits);
        }
        assert_eq!(outbox.spans.spans.len(), 2);
        let blocked = outbox.blocked_at.expect("blocked");
        assert_eq!(
            outbox.next_wake(due_at_once),
            Some(blocked + OFFER_AGAIN),
            "due long ago, yet no busy loop"
        );
        // Full at 3: it waits whole, and a new batch begins.
        add(&mut outbox, limits);
        add(&mut outbox, limits);
        assert_eq!(outbox.waiting.len(), 1);
        assert_eq!(outbox.spans.spans.len(), 1);
        let mut sizes = Vec::new();
        while sizes.len() < 3 {
            sizes.push(rx.try_recv().expect("a batch").spans.len());
            outbox.send(Instant::now(), due_at_once, limits);
        }
        assert_eq!(sizes, [1, 3, 1]);
        assert_eq!(outbox.stats.dropped(), 0);
    }

    #[test]
    fn a_record_becomes_a_finished_client_span_traced_by_its_request_id() {
        let mut record = crate::record::tests::sample();
        record.request_id = "0123456789abcdef0123456789abcdef".into();
        let scope = InstrumentationScope::builder(SCOPE_NAME).build();
        let span = span_of(&record, &scope, &Redactor::new(Vec::new()), 1 << 20);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from(0x0123456789abcdef0123456789abcdef_u128)
        );
        assert_ne!(span.span_context.span_id(), SpanId::INVALID);
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.name, GENERATION_NAME);
        assert_eq!(span.status, Status::Unset);
        assert_eq!(
            (span.start_time, span.end_time),
            (record.started_at, record.ended_at)
        );
        assert_eq!(
            attribute(&span, "langfuse.trace.tags"),
            Some(&Value::Array(Array::String(vec!["p".into()])))
        );
        assert_eq!(
            attribute(&span, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(span.instrumentation_scope.name(), SCOPE_NAME);
    }

    /// The byte count behind the batch limit takes in what the export request carries
    /// beside the attribute values: their keys, and the status message (an error span's is
    /// up to 4 KiB, a second copy of the attribute's).
    #[test]
    fn a_spans_bytes_count_its_keys_and_status_message() {
        let mut record = crate::record::tests::sample();
        record.outcome = Outcome::UpstreamError;
        record.status = Some(500);
        record.error = Some("e".repeat(3000));
        let scope = InstrumentationScope::builder(SCOPE_NAME).build();
        let span = span_of(&record, &scope, &Redactor::new(Vec::new()), 1 << 20);
        let keys: usize = span.attributes.iter().map(|kv| kv.key.as_str().len()).sum();
        assert!(keys > 300, "{keys}");
        assert!(
            span_bytes(&span) >= 2 * 3000 + keys,
            "{}",
            span_bytes(&span)
        );
    }

    #[test]
    fn a_failed_request_is_an_error_span_and_an_id_that_is_no_trace_id_gets_a_random_one() {
        let mut record = crate::record::tests::sample();
        record.request_id = "not-hex".into();
        record.status = Some(500);
        record.outcome = Outcome::UpstreamError;
        record.error = Some("upstream answered 500".into());
        let scope = InstrumentationScope::builder(SCOPE_NAME).build();
        let span = span_of(&record, &scope, &Redactor::new(Vec::new()), 1 << 20);
        assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{:?}",
            span.status
        );
        assert_eq!(
            attribute(&span, "error.type"),
            Some(&Value::String("upstream_error".into()))
        );
    }
}
