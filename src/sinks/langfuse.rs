//! The Langfuse exporter: every record becomes one OpenTelemetry span (a Langfuse trace
//! holding one generation), exported over OTLP/HTTP (protobuf) to Langfuse and/or a generic
//! OTLP backend.
//!
//! The spans are OTLP `Span` messages written straight from the record into protobuf wire
//! format ([`otlp_wire`]), byte for byte what prost writes for `opentelemetry-proto`'s types
//! (tests decode every export with that crate). A record is a span that already ended, and
//! the SDK's route to the same bytes (a tracer span, then `SpanData`, then a converted copy,
//! grouped by scope) measured 40 K instructions per span; building `opentelemetry-proto`
//! structs and encoding them with prost still cost 30 K, writing them directly 12 K. See
//! README "Observability".
//!
//! Off the request path twice over: `accept` only queues the record; one builder thread turns
//! records into spans and batches them per destination; one task per destination encodes and
//! sends the batches. Memory is bounded per destination (spans and bytes waiting or in
//! flight); when full, spans are dropped and counted, never waited for. It must never block a
//! request, and never write a key: every text goes through the [`Redactor`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::env::EnvSettings;
use crate::record::{RecordSink, RequestRecord};
use crate::secret::Secret;
use crate::sinks::clock::rfc3339_millis;
use crate::sinks::generation::{self, GENERATION_NAME, Level, ParamValue};
use crate::sinks::otlp_http::{OtlpTransport, RetryPolicy, TransportError};
use crate::sinks::otlp_wire::{self, SpanWriter};
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
    pub const DEFAULT_MAX_QUEUED_SPANS: usize = 8192;
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

/// A batch of spans, each already encoded and framed as a `ScopeSpans.spans` entry (field 2,
/// length-delimited), one after the other: the body of a `ScopeSpans` minus its scope.
/// Encoding a span once, when it is built, saves recomputing every span's length at each of
/// the three message levels above it.
#[derive(Debug, Default)]
struct SpanBatch {
    bytes: Vec<u8>,
    count: usize,
}

/// Protobuf wire tag of a length-delimited field.
const fn len_tag(field: u32) -> u8 {
    ((field << 3) | 2) as u8
}

/// Appends a length-delimited field: tag, length, bytes.
fn put_len_field(out: &mut Vec<u8>, field: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(len_tag(field));
    prost::encoding::encode_varint(len as u64, out);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Framed size of a length-delimited field holding `len` bytes.
fn len_field_size(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Sends one destination's batches: frames the export request around the encoded spans,
/// posts it through the destination's transport (which retries), counts the outcome and
/// releases the gate.
struct Exporter {
    stats: Arc<DestinationStats>,
    transport: OtlpTransport,
    endpoint: http::Uri,
    /// `Resource` and `InstrumentationScope`, encoded once.
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Exporter {
    /// `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource,
    /// scope_spans: [ScopeSpans { scope, spans }] }] }`, field numbers as in OTLP's
    /// trace_service.proto and trace.proto.
    fn request_body(&self, batch: &SpanBatch) -> Vec<u8> {
        let scope_spans = len_field_size(self.scope.len()) + batch.bytes.len();
        let resource_spans = len_field_size(self.resource.len()) + len_field_size(scope_spans);
        let mut out = Vec::with_capacity(len_field_size(resource_spans));
        out.push(len_tag(1)); // ExportTraceServiceRequest.resource_spans
        prost::encoding::encode_varint(resource_spans as u64, &mut out);
        put_len_field(&mut out, 1, &[&self.resource]); // ResourceSpans.resource
        out.push(len_tag(2)); // ResourceSpans.scope_spans
        prost::encoding::encode_varint(scope_spans as u64, &mut out);
        put_len_field(&mut out, 1, &[&self.scope]); // ScopeSpans.scope
        out.extend_from_slice(&batch.bytes); // ScopeSpans.spans, framed already
        out
    }

    async fn export(&self, batch: SpanBatch) {
        let body = Bytes::from(self.request_body(&batch));
        let result = self.send(body).await;
        self.stats.release(batch.count, batch.bytes.len());
        match result {
            Ok(()) => {
                self.stats
                    .exported
                    .fetch_add(batch.count as u64, Ordering::Relaxed);
            }
            Err(reason) => self.stats.count_failed(batch.count as u64, &reason),
        }
    }

    async fn send(&self, body: Bytes) -> Result<(), String> {
        let request = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .map_err(|e| e.to_string())?;
        match self.transport.send_bytes(request).await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!(
                "the endpoint answered HTTP {}",
                response.status().as_u16()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
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
        let stopping = CancellationToken::new();
        let version = env!("CARGO_PKG_VERSION");
        let resource = Resource {
            attributes: vec![
                kv_str("service.name", "llmsrouter"),
                kv_str("service.version", version),
            ],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: SCOPE_NAME.to_owned(),
            version: version.to_owned(),
            ..Default::default()
        };
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
            let endpoint =
                destination
                    .endpoint
                    .parse::<http::Uri>()
                    .map_err(|e| LangfuseError::Exporter {
                        destination: destination.name,
                        reason: format!("{}: {e}", destination.endpoint),
                    })?;
            let exporter = Exporter {
                stats: destination_stats.clone(),
                transport,
                endpoint,
                resource: resource.encode_to_vec(),
                scope: scope.encode_to_vec(),
            };
            let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
            exporters.push(runtime.spawn(export_loop(exporter, rx)));
            outboxes.push(Outbox {
                stats: destination_stats.clone(),
                spans: SpanBatch::default(),
                since: None,
                tx,
            });
            stats.push(destination_stats);
        }
        let (tx, rx) = sync_channel(BUILD_QUEUE);
        let builder = SpanBuilderThread {
            outboxes,
            framed: Vec::with_capacity(4096),
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

/// Exports a destination's batches, a few at a time, until the builder thread is gone and
/// every batch is sent. Several in flight: a busy router fills a batch every few
/// milliseconds, faster than one round trip at a time can carry under load.
async fn export_loop(exporter: Exporter, mut rx: mpsc::Receiver<SpanBatch>) {
    let exporter = Arc::new(exporter);
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(batch) = rx.recv().await {
        while in_flight.len() >= EXPORTS_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let exporter = exporter.clone();
        in_flight.spawn(async move { exporter.export(batch).await });
    }
    while in_flight.join_next().await.is_some() {}
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
    spans: SpanBatch,
    /// When the first span of this batch was added.
    since: Option<Instant>,
    tx: mpsc::Sender<SpanBatch>,
}

impl Outbox {
    /// Adds one framed, encoded span.
    fn push(&mut self, framed: &[u8]) {
        if self.spans.count == 0 {
            self.since = Some(Instant::now());
        }
        self.spans.bytes.extend_from_slice(framed);
        self.spans.count += 1;
    }

    fn due(&self, now: Instant, interval: Duration, max_batch: usize) -> bool {
        self.spans.count >= max_batch
            || self
                .since
                .is_some_and(|t| now.duration_since(t) >= interval)
    }

    /// Hands the batch to the export loop; a batch it cannot take is dropped and counted.
    fn send(&mut self) {
        if self.spans.count == 0 {
            return;
        }
        let batch = std::mem::take(&mut self.spans);
        self.since = None;
        let (count, bytes) = (batch.count, batch.bytes.len());
        if self.tx.try_send(batch).is_err() {
            self.stats.release(count, bytes);
            self.stats.count_dropped(count as u64);
        }
    }
}

/// Most records the builder takes at one go before it checks whether a batch is due.
const MAX_RECORDS_PER_WAKE: usize = 1024;

struct SpanBuilderThread {
    outboxes: Vec<Outbox>,
    /// One span, encoded and framed; reused for every span.
    framed: Vec<u8>,
    redactor: Redactor,
    max_io_bytes: usize,
    export_interval: Duration,
    max_batch: usize,
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
                if outbox.due(now, self.export_interval, self.max_batch) {
                    outbox.send();
                }
            }
        }
        for outbox in &mut self.outboxes {
            outbox.send();
        }
    }

    /// Takes the records waiting into `records` (see [`next_batch_until`]); when none
    /// waits, waits no longer than the next batch falls due.
    fn gather(
        &self,
        rx: &Receiver<Arc<RequestRecord>>,
        records: &mut Vec<Arc<RequestRecord>>,
    ) -> Batch {
        let deadline = self
            .outboxes
            .iter()
            .filter_map(|o| o.since)
            .min()
            .map(|since| since + self.export_interval);
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
        let framed = encode_span(&mut self.framed, record, &self.redactor, self.max_io_bytes);
        let bytes = framed.len();
        for outbox in &mut self.outboxes {
            if !outbox.stats.admit(bytes) {
                continue;
            }
            outbox.push(framed);
            if outbox.spans.count >= self.max_batch {
                outbox.send();
            }
        }
    }
}

/// The record as a finished span, framed as `ScopeSpans.spans` in `buf`. Its trace id is the
/// request id, so the `x-llmsrouter-request-id` header finds the trace in Langfuse.
pub fn encode_span<'b>(
    buf: &'b mut Vec<u8>,
    record: &RequestRecord,
    redactor: &Redactor,
    max_io_bytes: usize,
) -> &'b [u8] {
    let trace_id = u128::from_str_radix(&record.request_id, 16)
        .ok()
        .filter(|id| *id != 0 && record.request_id.len() == 32)
        .unwrap_or_else(|| fastrand::u128(1..));
    let mut span = SpanWriter::new(buf);
    span.ids(trace_id.to_be_bytes(), fastrand::u64(1..).to_be_bytes());
    span.name(GENERATION_NAME);
    span.kind(otlp_wire::KIND_CLIENT);
    span.times(unix_nanos(record.started_at), unix_nanos(record.ended_at));
    let error = write_attributes(&mut span, record, redactor, max_io_bytes);
    span.status(error.as_deref());
    span.finish()
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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

/// Writes the span's attributes; returns its error status text for failures.
fn write_attributes(
    a: &mut SpanWriter<'_>,
    record: &RequestRecord,
    redactor: &Redactor,
    max_io_bytes: usize,
) -> Option<String> {
    let redactor = redactor.for_request(record.client_key.as_ref());
    let g = generation::build_with(record, &redactor, max_io_bytes);
    // Texts that came from the client or the upstream and were not redacted by the
    // generation view (which did input, output, parameters and the status message).
    // Langfuse's own keys.
    a.str("langfuse.observation.type", "generation");
    a.str("langfuse.trace.name", GENERATION_NAME);
    a.strs("langfuse.trace.tags", &[redactor.redact(&record.provider)]);
    if let Some(user) = &record.user {
        a.str("user.id", user.as_str());
        a.str("langfuse.user.id", user.as_str());
    }
    a.str(
        "langfuse.observation.model.name",
        &redactor.redact(&g.model),
    );
    if let Some(parameters) = g.parameters {
        a.str("langfuse.observation.model.parameters", &parameters);
    }
    if let Some(usage) = g.usage_details {
        a.str("langfuse.observation.usage_details", &usage);
    }
    if let Some(cost) = g.cost_details {
        a.str("langfuse.observation.cost_details", &cost);
    }
    if let Some(first) = record.first_token_at.or(match record.outcome {
        // A whole answer's first token came with its headers.
        crate::record::Outcome::Success if !record.stream => record.response_started_at,
        _ => None,
    }) {
        a.str(
            "langfuse.observation.completion_start_time",
            &rfc3339_millis(first),
        );
    }
    if let Some(input) = g.input {
        a.str("langfuse.observation.input", &input);
    }
    if let Some(output) = g.output {
        a.str("langfuse.observation.output", &output);
    }
    // DEFAULT is Langfuse's own default: only a warning or an error is sent.
    if g.level != Level::Default {
        a.str("langfuse.observation.level", g.level.as_str());
    }
    if let Some(message) = &g.status_message {
        a.str("langfuse.observation.status_message", message);
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
        a.str("langfuse.trace.metadata", &redactor.redact(&metadata));
    }
    // OpenTelemetry GenAI conventions, for any OTLP backend.
    a.str("gen_ai.operation.name", &g.operation);
    a.str("gen_ai.provider.name", &redactor.redact(&record.provider));
    a.str(
        "gen_ai.request.model",
        &redactor.redact(&record.upstream_model),
    );
    for (key, value) in g.request_attributes {
        match value {
            ParamValue::Int(v) => a.int(key, v),
            ParamValue::Float(v) => a.double(key, v),
            ParamValue::Strings(v) => {
                let values: Vec<_> = v.iter().map(|s| redactor.redact(s)).collect();
                a.strs(key, &values);
            }
        }
    }
    if let Some(model) = &record.response.model {
        a.str("gen_ai.response.model", &redactor.redact(model));
    }
    if let Some(id) = &record.response.id {
        a.str("gen_ai.response.id", &redactor.redact(id));
    }
    if let Some(reason) = &record.response.finish_reason {
        a.strs("gen_ai.response.finish_reasons", &[redactor.redact(reason)]);
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// A small span, framed as the builder thread frames it.
    fn framed_span(name: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = SpanWriter::new(&mut buf);
        w.ids([1; 16], [2; 8]);
        w.name(name);
        w.str("k", "v");
        w.int("n", 7);
        w.finish().to_vec()
    }

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.to_owned(),
            attributes: vec![
                kv_str("k", "v"),
                KeyValue {
                    key: "n".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn hand_framed_requests_decode_as_otlp() {
        let mut batch = SpanBatch::default();
        for name in ["a", "b"] {
            batch.bytes.extend_from_slice(&framed_span(name));
            batch.count += 1;
        }
        let resource = Resource {
            attributes: vec![kv_str("service.name", "llmsrouter")],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: SCOPE_NAME.to_owned(),
            version: "1".to_owned(),
            ..Default::default()
        };
        let stopping = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let exporter = Exporter {
            stats: Arc::new(DestinationStats::new("t", 10, 1000)),
            transport: OtlpTransport::new(
                "t",
                &[],
                RetryPolicy::default(),
                stopping,
                Arc::default(),
            )
            .expect("transport"),
            endpoint: http::Uri::from_static("http://127.0.0.1:9/v1/traces"),
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
        };
        let body = exporter.request_body(&batch);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid OTLP");
        assert_eq!(decoded.resource_spans.len(), 1);
        let rs = &decoded.resource_spans[0];
        assert_eq!(rs.resource.as_ref(), Some(&resource));
        assert_eq!(rs.scope_spans.len(), 1);
        assert_eq!(rs.scope_spans[0].scope.as_ref(), Some(&scope));
        assert_eq!(rs.scope_spans[0].spans, vec![span("a"), span("b")]);
    }
}
