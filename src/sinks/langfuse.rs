//! The Langfuse exporter: every record becomes one OpenTelemetry span (a Langfuse trace
//! holding one generation), exported over OTLP/HTTP (protobuf) by the OpenTelemetry OTLP
//! exporter (`opentelemetry_otlp::SpanExporter`) to Langfuse and/or a generic OTLP backend.
//!
//! Off the request path twice over: `accept` only queues the record; one builder thread turns
//! records into finished spans (`SpanData`, built directly: a record is a span that already
//! ended, so the SDK's tracer and batch processor — a live span per record and a second
//! thread — would only add work) and batches them per destination; one task per destination
//! exports the batches. Memory is bounded per destination (spans and bytes waiting or in
//! flight); when full, spans are dropped and counted, never waited for. It must never block a
//! request, and never write a key: every text goes through the [`Redactor`].

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::env::EnvSettings;
use crate::record::{RecordSink, RequestRecord};
use crate::secret::Secret;
use crate::sinks::BATCH_WINDOW;
use crate::sinks::clock::rfc3339_millis;
use crate::sinks::generation::{self, GENERATION_NAME, Level, ParamValue};
use crate::sinks::otlp_http::{OtlpTransport, RetryPolicy, TransportError};
use crate::sinks::redact::{Redactor, RequestRedactor};

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
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            public_key.expose(),
            secret_key.expose()
        ));
        Self {
            name: "langfuse",
            endpoint,
            headers: vec![
                (
                    "authorization".to_owned(),
                    Secret::new(format!("Basic {credentials}")),
                ),
                ("x-langfuse-ingestion-version".to_owned(), Secret::new("4")),
            ],
        }
    }
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
    pub max_batch: usize,
    pub retry: RetryPolicy,
    /// Longest the final flush may take on shutdown.
    pub shutdown_timeout: Duration,
}

impl LangfuseOptions {
    pub const DEFAULT_MAX_QUEUED_SPANS: usize = 2048;
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

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
            retry: RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(15),
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
    last_drop_warning: Mutex<Option<Instant>>,
    last_failure_warning: Mutex<Option<Instant>>,
}

/// At most one warning per this interval per destination and kind.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl DestinationStats {
    fn new(name: &'static str, max_spans: usize, max_bytes: usize) -> Self {
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
            last_drop_warning: Mutex::new(None),
            last_failure_warning: Mutex::new(None),
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

    fn count_dropped(&self, n: u64) {
        let dropped = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if rate_limit(&self.last_drop_warning) {
            tracing::warn!(
                destination = self.name,
                dropped,
                "trace export queue full (the endpoint is slow or down): spans dropped"
            );
        }
    }

    fn count_failed(&self, n: u64, reason: &str) {
        let failed = self.failed.fetch_add(n, Ordering::Relaxed) + n;
        if rate_limit(&self.last_failure_warning) {
            tracing::warn!(
                destination = self.name,
                failed,
                "trace export failed after retries, spans lost: {reason}"
            );
        }
    }
}

fn rate_limit(last: &Mutex<Option<Instant>>) -> bool {
    let Ok(mut last) = last.lock() else {
        return false;
    };
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARNING_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

/// Text a span holds, for the byte bound (the same sum on the way in and out).
fn span_bytes(span: &SpanData) -> usize {
    span.attributes
        .iter()
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().len(),
            _ => 8,
        })
        .sum()
}

/// The OTLP exporter, releasing the gate once a batch is sent or given up.
#[derive(Debug)]
struct CountingExporter {
    stats: Arc<DestinationStats>,
    inner: opentelemetry_otlp::SpanExporter,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let bytes: usize = batch.iter().map(span_bytes).sum();
        let result = self.inner.export(batch).await;
        self.stats.release(spans, bytes);
        match &result {
            Ok(()) => {
                self.stats
                    .exported
                    .fetch_add(spans as u64, Ordering::Relaxed);
            }
            Err(error) => self.stats.count_failed(spans as u64, &error.to_string()),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
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
    stopping: CancellationToken,
    shutdown_timeout: Duration,
}

/// Batches waiting for a destination's export loop. Small: a batch is only handed over when
/// the gate admitted its spans, so this never holds more than the gate allows.
const EXPORT_QUEUE: usize = 64;

impl LangfuseSink {
    /// Starts the exporter (inside a tokio runtime: exports run on it).
    pub fn start(options: LangfuseOptions) -> Result<Self, LangfuseError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| LangfuseError::Exporter {
                destination: "langfuse",
                reason: format!("no async runtime: {e}"),
            })?;
        let stopping = CancellationToken::new();
        let resource = Resource::builder_empty()
            .with_service_name("llmsrouter")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut stats = Vec::new();
        let mut outboxes = Vec::new();
        let mut exporters = Vec::new();
        for destination in &options.destinations {
            let destination_stats = Arc::new(DestinationStats::new(
                destination.name,
                options.max_queued_spans,
                options.max_queued_bytes,
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
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(destination.endpoint.clone())
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(options.retry.budget)
                .with_http_client(transport)
                // Retries live in the transport (the crate's own skip 500).
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                .build()
                .map_err(|e| LangfuseError::Exporter {
                    destination: destination.name,
                    reason: e.to_string(),
                })?;
            exporter.set_resource(&resource);
            let exporter = CountingExporter {
                stats: destination_stats.clone(),
                inner: exporter,
            };
            let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
            exporters.push(runtime.spawn(export_loop(exporter, rx)));
            outboxes.push(Outbox {
                stats: destination_stats.clone(),
                spans: Vec::new(),
                bytes: 0,
                since: None,
                tx,
            });
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
            max_batch: options.max_batch.max(1),
        };
        let worker = std::thread::Builder::new()
            .name("llmsrouter-spans".into())
            .spawn(move || builder.run(rx))
            .map_err(LangfuseError::Thread)?;
        for destination in &options.destinations {
            tracing::info!(
                destination = destination.name,
                "tracing to {}",
                destination.endpoint
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

/// Exports the batches of one destination, one after the other, until the builder thread is
/// gone; then shuts the exporter down.
async fn export_loop(exporter: CountingExporter, mut rx: mpsc::Receiver<Vec<SpanData>>) {
    while let Some(batch) = rx.recv().await {
        // Failures are counted (and warned about) by the exporter itself.
        let _ = exporter.export(batch).await;
    }
    let _ = exporter.shutdown();
}

impl RecordSink for LangfuseSink {
    fn name(&self) -> &'static str {
        "langfuse"
    }

    fn accept(&self, record: &Arc<RequestRecord>) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(record.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                for stats in &self.stats {
                    stats.count_dropped(1);
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
            drop(tx);
            let worker = self.worker.lock().ok().and_then(|mut w| w.take());
            // The builder thread hands over its last batches and ends; the export loops then
            // end once those are sent.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(worker) = worker {
                    let _ = worker.join();
                }
            })
            .await;
            let exporters: Vec<_> = self
                .exporters
                .lock()
                .map(|mut e| e.drain(..).collect())
                .unwrap_or_default();
            let all_sent = async {
                for exporter in exporters {
                    let _ = exporter.await;
                }
            };
            // From here on a dead endpoint gets quick last tries, not a minute of backoff.
            self.stopping.cancel();
            let timeout = self.shutdown_timeout;
            if tokio::time::timeout(timeout, all_sent).await.is_err() {
                tracing::warn!(
                    "trace flush on shutdown incomplete after {} s",
                    timeout.as_secs()
                );
            }
            for stats in &self.stats {
                tracing::info!(
                    destination = stats.name,
                    exported = stats.exported(),
                    dropped = stats.dropped(),
                    failed = stats.failed(),
                    "trace exporter stopped"
                );
            }
        })
    }
}

/// Spans gathered for one destination, waiting to leave as a batch.
struct Outbox {
    stats: Arc<DestinationStats>,
    spans: Vec<SpanData>,
    bytes: usize,
    /// When the first span of this batch was added.
    since: Option<Instant>,
    tx: mpsc::Sender<Vec<SpanData>>,
}

impl Outbox {
    fn push(&mut self, span: SpanData, bytes: usize) {
        if self.spans.is_empty() {
            self.since = Some(Instant::now());
        }
        self.spans.push(span);
        self.bytes += bytes;
    }

    fn due(&self, now: Instant, interval: Duration, max_batch: usize) -> bool {
        self.spans.len() >= max_batch
            || self
                .since
                .is_some_and(|t| now.duration_since(t) >= interval)
    }

    /// Hands the batch to the export loop; a batch it cannot take is dropped and counted.
    fn send(&mut self) {
        if self.spans.is_empty() {
            return;
        }
        let spans = std::mem::take(&mut self.spans);
        let bytes = std::mem::take(&mut self.bytes);
        self.since = None;
        let count = spans.len();
        if self.tx.try_send(spans).is_err() {
            self.stats.release(count, bytes);
            self.stats.count_dropped(count as u64);
        }
    }
}

struct SpanBuilderThread {
    outboxes: Vec<Outbox>,
    scope: InstrumentationScope,
    redactor: Redactor,
    max_io_bytes: usize,
    export_interval: Duration,
    max_batch: usize,
}

impl SpanBuilderThread {
    /// Until the sink closes its end: one span per record, batches sent when full or due.
    fn run(mut self, rx: Receiver<Arc<RequestRecord>>) {
        let mut records = Vec::with_capacity(256);
        loop {
            let deadline = self
                .outboxes
                .iter()
                .filter_map(|o| o.since)
                .min()
                .map(|since| since + self.export_interval);
            let first = match deadline {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(record) => {
                    records.push(record);
                    // Let a few more gather: a busy router wakes this thread a few dozen
                    // times a second, not once per request.
                    std::thread::sleep(BATCH_WINDOW.min(self.export_interval));
                    while records.len() < 256 {
                        match rx.try_recv() {
                            Ok(record) => records.push(record),
                            Err(_) => break,
                        }
                    }
                    for record in records.drain(..) {
                        self.emit(&record);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            for outbox in &mut self.outboxes {
                if outbox.due(now, self.export_interval, self.max_batch) {
                    outbox.send();
                }
            }
        }
        for outbox in &mut self.outboxes {
            outbox.send();
        }
    }

    fn emit(&mut self, record: &RequestRecord) {
        // Every destination full: skip the work of building a span nobody takes.
        if self.outboxes.iter().all(|o| o.stats.is_full()) {
            for outbox in &self.outboxes {
                outbox.stats.count_dropped(1);
            }
            return;
        }
        let span = self.span_of(record);
        let bytes = span_bytes(&span);
        let last = self.outboxes.len().saturating_sub(1);
        let mut span = Some(span);
        for (i, outbox) in self.outboxes.iter_mut().enumerate() {
            if !outbox.stats.admit(bytes) {
                continue;
            }
            let this = if i == last { span.take() } else { span.clone() };
            if let Some(this) = this {
                outbox.push(this, bytes);
            }
            if outbox.spans.len() >= self.max_batch {
                outbox.send();
            }
        }
    }

    /// The record as a finished span: its trace id is the request id, so the
    /// `x-llmsrouter-request-id` header finds the trace in Langfuse.
    fn span_of(&self, record: &RequestRecord) -> SpanData {
        let (attributes, error) = span_attributes(record, &self.redactor, self.max_io_bytes);
        let trace_id = TraceId::from_hex(&record.request_id)
            .unwrap_or_else(|_| TraceId::from(fastrand::u128(1..)));
        let span_id = SpanId::from(fastrand::u64(1..));
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
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
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    usage_partial: bool,
}

/// A built span's attributes and, for failures, its error status text. Public for tests of
/// the attribute contract without a network.
pub fn span_attributes(
    record: &RequestRecord,
    redactor: &Redactor,
    max_io_bytes: usize,
) -> (Vec<KeyValue>, Option<String>) {
    let redactor = redactor.for_request(record.client_key.as_ref());
    let g = generation::build_with(record, &redactor, max_io_bytes);
    let mut a: Vec<KeyValue> = Vec::with_capacity(48);
    // Langfuse's own keys.
    a.push(KeyValue::new("langfuse.observation.type", "generation"));
    a.push(KeyValue::new("langfuse.trace.name", GENERATION_NAME));
    a.push(KeyValue::new(
        "langfuse.trace.tags",
        Value::Array(Array::String(vec![StringValue::from(
            record.provider.clone(),
        )])),
    ));
    if let Some(user) = &record.user {
        a.push(KeyValue::new("user.id", user.clone()));
        a.push(KeyValue::new("langfuse.user.id", user.clone()));
    }
    a.push(KeyValue::new(
        "langfuse.observation.model.name",
        g.model.clone(),
    ));
    if let Some(parameters) = g.parameters {
        a.push(KeyValue::new(
            "langfuse.observation.model.parameters",
            parameters,
        ));
    }
    if let Some(usage) = g.usage_details {
        a.push(KeyValue::new("langfuse.observation.usage_details", usage));
    }
    if let Some(cost) = g.cost_details {
        a.push(KeyValue::new("langfuse.observation.cost_details", cost));
    }
    if let Some(first) = record.first_token_at.or(match record.outcome {
        // A whole answer's first token came with its headers.
        crate::record::Outcome::Success if !record.stream => record.response_started_at,
        _ => None,
    }) {
        a.push(KeyValue::new(
            "langfuse.observation.completion_start_time",
            rfc3339_millis(first),
        ));
    }
    if let Some(input) = g.input {
        a.push(KeyValue::new("langfuse.observation.input", input));
    }
    if let Some(output) = g.output {
        a.push(KeyValue::new("langfuse.observation.output", output));
    }
    // DEFAULT is Langfuse's own default: only a warning or an error is sent.
    if g.level != Level::Default {
        a.push(KeyValue::new(
            "langfuse.observation.level",
            g.level.as_str(),
        ));
    }
    if let Some(message) = &g.status_message {
        a.push(KeyValue::new(
            "langfuse.observation.status_message",
            message.clone(),
        ));
    }
    // One JSON attribute; the request id is the trace id and the provider the tag.
    let metadata = TraceMetadata {
        route_mode: record.mode.as_str(),
        endpoint: &record.endpoint,
        requested_model: &record.requested_model,
        outcome: record.outcome.as_str(),
        stream: record.stream,
        usage_partial: record.usage_partial(),
    };
    if let Ok(metadata) = serde_json::to_string(&metadata) {
        a.push(KeyValue::new("langfuse.trace.metadata", metadata));
    }
    // OpenTelemetry GenAI conventions, for any OTLP backend.
    a.push(KeyValue::new("gen_ai.operation.name", g.operation));
    a.push(KeyValue::new(
        "gen_ai.provider.name",
        record.provider.clone(),
    ));
    a.push(KeyValue::new(
        "gen_ai.request.model",
        record.upstream_model.clone(),
    ));
    for (key, value) in g.request_attributes {
        a.push(match value {
            ParamValue::Int(v) => KeyValue::new(key, v),
            ParamValue::Float(v) => KeyValue::new(key, v),
            ParamValue::Strings(v) => KeyValue::new(
                key,
                Value::Array(Array::String(
                    v.into_iter().map(StringValue::from).collect(),
                )),
            ),
        });
    }
    if let Some(model) = &record.response.model {
        a.push(KeyValue::new("gen_ai.response.model", model.clone()));
    }
    if let Some(id) = &record.response.id {
        a.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    if let Some(reason) = &record.response.finish_reason {
        a.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(vec![StringValue::from(reason.clone())])),
        ));
    }
    if let Some(usage) = &record.response.usage {
        a.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            usage.input as i64,
        ));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            usage.output as i64,
        ));
    }
    if let Some(status) = record.status {
        a.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    let error = match g.level {
        Level::Error => {
            a.push(KeyValue::new("error.type", record.outcome.as_str()));
            g.status_message
        }
        Level::Default | Level::Warning => None,
    };
    // The generation's texts are redacted already; this sweep covers every other attribute
    // (model names, parameters as gen_ai.request.*, metadata) so nothing slips through.
    for kv in &mut a {
        redact_value(&mut kv.value, &redactor);
    }
    (a, error)
}

fn redact_value(value: &mut Value, redactor: &RequestRedactor<'_>) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = redactor.redact(s.as_str()) {
                *s = StringValue::from(clean);
            }
        }
        Value::Array(Array::String(items)) => {
            for item in items {
                if let std::borrow::Cow::Owned(clean) = redactor.redact(item.as_str()) {
                    *item = StringValue::from(clean);
                }
            }
        }
        _ => {}
    }
}
