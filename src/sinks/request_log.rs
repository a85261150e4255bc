//! The request log (`LLMSROUTER_LOG_FILE`): one JSON line per routed request, in a file per
//! UTC day (see [`log_file`](crate::sinks::log_file) for which file, and what happens when it
//! is deleted or cannot be written). The router deletes old ones itself (7 kept, today's
//! included; one dated after today is kept besides), and only files named exactly as it
//! names them.
//!
//! `accept` only queues the record; one writer thread serialises and writes, so neither a
//! request nor the recorder waits for the disk. Every line passes through the [`Redactor`]
//! whole, so no configured key or client key is written, wherever it appeared (bodies, error
//! texts). Request headers are never logged.

use std::borrow::Cow;
use std::io::IoSlice;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use time::Date;

use crate::record::{RecordSink, RequestRecord};
use crate::sinks::clock::{rfc3339_millis, utc_date};
use crate::sinks::log_file::{LogFile, LogStats, MAX_PIECES, Target};
use crate::sinks::loss::DEFAULT_WARNING_INTERVAL;
use crate::sinks::redact::{Pieces, REDACTED, Redactor};
use crate::sinks::{BATCH_WINDOW, Batch, MAX_NAME_CHARS, QueueRx, WriterQueue, clipped_chars};
use crate::usage::ToolCall;

pub use crate::sinks::log_file::KEPT_FILES;

/// Records waiting for the writer before new ones are dropped (and counted).
const QUEUE_DEPTH: usize = 4096;
/// Lines gathered for one `write()`: at most this many bytes, unless one line is longer
/// (it is then written alone).
const WRITE_BYTES: usize = 64 * 1024;
/// How long shutdown waits for the writer to write what is queued. Only a pipe whose reader
/// stopped reading (or a disk that hangs) takes longer; shutdown then goes on without it.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RequestLogOptions {
    /// As configured: `./api_proxy.log` writes `./api_proxy.YYYY-MM-DD.log`.
    pub path: PathBuf,
    /// `LLMSROUTER_LOG_BODIES`.
    pub bodies: bool,
    pub redactor: Redactor,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    #[error("LLMSROUTER_LOG_FILE: {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("cannot start the request log writer thread: {0}")]
    Thread(std::io::Error),
}

/// What `LLMSROUTER_LOG_FILE` names, or the start-up error for a value that cannot be a log
/// (a folder). `check` asks this too, so it refuses what `serve` would.
pub fn target(path: &std::path::Path) -> Result<Target, RequestLogError> {
    Target::of(path).map_err(|reason| RequestLogError::Open {
        path: path.display().to_string(),
        reason,
    })
}

/// The error [`RequestLogSink::start`] would give for `path`, found without leaving a file or
/// folder behind (see [`LogFile::check_at_start`]): `check` asks this, so it refuses a log
/// `serve` could not open (a folder on `/proc` or `/sys`) in `serve`'s words.
pub fn check_opens(path: &std::path::Path) -> Result<(), RequestLogError> {
    let file = LogFile::new(target(path)?, Arc::new(LogStats::default()));
    file.check_at_start(utc_date(SystemTime::now()))
        .map_err(|e| RequestLogError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

pub struct RequestLogSink {
    queue: WriterQueue<Arc<RequestRecord>>,
    stats: Arc<LogStats>,
    close_limit: Duration,
}

impl RequestLogSink {
    /// Opens today's file (creating the directory) and starts the writer thread.
    pub fn start(options: RequestLogOptions) -> Result<Self, RequestLogError> {
        Self::start_warning_every(options, DEFAULT_WARNING_INTERVAL)
    }

    /// [`Self::start`], its loss warnings given at most every `warning_interval`.
    pub fn start_warning_every(
        options: RequestLogOptions,
        warning_interval: Duration,
    ) -> Result<Self, RequestLogError> {
        let target = target(&options.path)?;
        let stats = Arc::new(LogStats::default());
        let mut file = LogFile::new(target, stats.clone()).warning_every(warning_interval);
        let now = SystemTime::now();
        file.open_at_start(utc_date(now))
            .map_err(|e| RequestLogError::Open {
                path: options.path.display().to_string(),
                reason: e.to_string(),
            })?;
        file.prune_once_a_day(now);
        let writer = Writer {
            file,
            line: Vec::with_capacity(LINE_BYTES),
            pending: Pending {
                bytes: Vec::with_capacity(WRITE_BYTES),
                lines: 0,
                day: utc_date(now),
            },
            bodies: options.bodies,
            redactor: options.redactor,
        };
        let queue = WriterQueue::start(
            "llmsrouter-request-log",
            QUEUE_DEPTH,
            "request log writer behind: lines dropped",
            warning_interval,
            move |rx| writer.run(rx),
        )
        .map_err(RequestLogError::Thread)?;
        Ok(Self {
            queue,
            stats,
            close_limit: CLOSE_LIMIT,
        })
    }

    /// Waits at most `limit` for the writer at shutdown, in place of [`CLOSE_LIMIT`].
    pub fn closing_within(mut self, limit: Duration) -> Self {
        self.close_limit = limit;
        self
    }

    /// Lines not written because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Lines written, and lost to a file that could not be opened or written.
    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }
}

impl RecordSink for RequestLogSink {
    fn name(&self) -> &'static str {
        "request-log"
    }

    fn accept(&self, record: &Arc<RequestRecord>) {
        self.queue.offer(record.clone());
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if !self.queue.finish(self.close_limit).await {
                // One line a record: what was queued and neither written nor counted as
                // failed is lost with the process (the writer is left blocked).
                let (written, failed) = (self.stats.written(), self.stats.failed());
                let lost = self
                    .queue
                    .accepted()
                    .saturating_sub(written.saturating_add(failed));
                tracing::warn!(
                    written,
                    dropped = self.dropped(),
                    failed,
                    lost,
                    "request log writer still blocked {} s into shutdown (a pipe nobody \
                     reads?): the lines it holds are lost",
                    self.close_limit.as_secs()
                );
                return;
            }
            let (written, dropped, failed) =
                (self.stats.written(), self.dropped(), self.stats.failed());
            tracing::info!(written, dropped, failed, "request log flushed");
        })
    }

    fn metrics(&self, out: &mut crate::sinks::Metrics) {
        out.counter(
            "request_log_lines_written",
            "Request log lines written.",
            &[],
            self.stats.written(),
        );
        out.counter(
            "request_log_lines_dropped",
            "Request log lines dropped because the writer was behind.",
            &[],
            self.dropped(),
        );
        out.counter(
            "request_log_lines_failed",
            "Request log lines lost because their file could not be opened or written.",
            &[],
            self.stats.failed(),
        );
    }
}

struct Writer {
    file: LogFile,
    /// Reused for every line.
    line: Vec<u8>,
    pending: Pending,
    bodies: bool,
    redactor: Redactor,
}

impl Writer {
    /// Until the sink closes its end: lines written a batch at a time; between batches,
    /// the warnings about lines lost (dropped or failed) that fell due.
    fn run(mut self, mut rx: QueueRx<Arc<RequestRecord>>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let check = self.file.next_loss_check(Instant::now());
            match rx.next(&mut batch, 256, BATCH_WINDOW, check) {
                Batch::Closed => break,
                Batch::TimedOut => {}
                Batch::Taken => {
                    self.file.prune_once_a_day(SystemTime::now());
                    for record in batch.drain(..) {
                        self.add(&record);
                    }
                    self.pending.write(&mut self.file);
                }
            }
            self.file.warn_lost(Instant::now());
        }
        self.pending.write(&mut self.file);
        self.file.warn_lost_at_exit();
    }

    /// Adds `record`'s line to what the next `write()` holds. A line goes to the file of the
    /// UTC day of its `time`, so a clock set back (or a stream begun before midnight) finds
    /// its own day's file, never another.
    ///
    /// A line with bodies longer than [`WRITE_BYTES`] together is written at once from its
    /// pieces ([`Self::add_long`]). Any other is built whole, redacted where it is
    /// (`RequestRedactor::redact_in_place`), and gathered with others in [`Pending`].
    fn add(&mut self, record: &RequestRecord) {
        if self.bodies && long_bodies(record) {
            self.add_long(record);
            return;
        }
        self.line.clear();
        if self.bodies {
            self.line.reserve(line_bytes_expected(record));
        }
        if serialize_line(&mut self.line, record, self.bodies, &self.redactor, None).is_err() {
            return;
        }
        self.redactor
            .for_record(&record.secrets)
            .redact_in_place(&mut self.line);
        if self.line == REDACTED.as_bytes() {
            self.line = unsearched_line(record, &self.redactor);
        }
        self.line.push(b'\n');
        let day = utc_date(record.started_at);
        let pending = &mut self.pending;
        let long = self.line.len() > WRITE_BYTES;
        let full = pending.bytes.len() + self.line.len() > WRITE_BYTES;
        if pending.lines > 0 && (day != pending.day || full) {
            pending.write(&mut self.file);
        }
        if long {
            // Alone in its `write()`, as it would be from `pending`.
            self.file.write_lines(day, &self.line, 1, Instant::now());
            // One huge body must not keep its buffer for good.
            if self.line.capacity() > 4 * WRITE_BYTES {
                self.line = Vec::with_capacity(LINE_BYTES);
            }
            return;
        }
        pending.day = day;
        pending.bytes.extend_from_slice(&self.line);
        pending.lines += 1;
    }

    /// Writes `record`'s line, alone in one `writev()`, from its pieces ([`line_pieces`]):
    /// the small ones built in [`Self::line`], its JSON bodies where the record holds them,
    /// so a 50 MB answer is not copied once more for its line (that copy took the router's
    /// peak from 77 to 125 MiB). A line of more pieces than one `writev()` takes is joined
    /// and written as one slice.
    fn add_long(&mut self, record: &RequestRecord) {
        let Some(pieces) = line_pieces(&mut self.line, record, &self.redactor) else {
            return;
        };
        let day = utc_date(record.started_at);
        self.pending.write(&mut self.file);
        if let [whole, _] = pieces[..]
            && whole == REDACTED.as_bytes()
        {
            let mut line = unsearched_line(record, &self.redactor);
            line.push(b'\n');
            self.file.write_lines(day, &line, 1, Instant::now());
        } else if pieces.len() <= MAX_PIECES {
            let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
            self.file.write_pieces(day, &slices, 1, Instant::now());
        } else {
            self.file
                .write_lines(day, &pieces.concat(), 1, Instant::now());
        }
        drop(pieces);
        // One huge text body must not keep its buffer for good.
        if self.line.capacity() > 4 * WRITE_BYTES {
            self.line = Vec::with_capacity(LINE_BYTES);
        }
    }
}

/// The line of a record whose line the redaction gave up on searching and took whole for a
/// key (see `redact::ReadBudget`: a client's credential that repeats itself against a body
/// that repeats most of it): the line without its bodies, redacted, and when even that is
/// taken whole, only its time and request id. Either way a JSON line, with
/// `"redacted": "not searched"` saying what was left out.
fn unsearched_line(record: &RequestRecord, redactor: &Redactor) -> Vec<u8> {
    let mut line = Vec::new();
    let note = |line: &mut Vec<u8>| {
        // In place of the closing brace.
        line.pop();
        line.extend_from_slice(b",\"redacted\":\"not searched\"}");
    };
    if serialize_line(&mut line, record, false, redactor, None).is_ok() {
        redactor
            .for_record(&record.secrets)
            .redact_in_place(&mut line);
        if line.ends_with(b"}") {
            note(&mut line);
            return line;
        }
    }
    line.clear();
    line.extend_from_slice(b"{\"time\":\"");
    line.extend_from_slice(rfc3339_millis(record.started_at).as_bytes());
    line.push(b'"');
    // The router's own id: nothing a client or upstream wrote.
    let _ = field_str(&mut line, "request_id", &record.request_id);
    line.push(b'}');
    note(&mut line);
    line
}

/// Whether `record`'s bodies are longer than [`WRITE_BYTES`] together: its line is then
/// written from pieces ([`Writer::add_long`]).
fn long_bodies(record: &RequestRecord) -> bool {
    let response = record.response_body.as_ref().map_or(0, |b| b.len());
    !record.bodies_dropped && record.request_body.len() + response > WRITE_BYTES
}

/// `record`'s line with bodies, redacted and with its `\n`, as the slices that make it
/// joined: those [`serialize_line`] built in `line`, its JSON bodies borrowed where they are
/// (see [`Parts`]), and a [`REDACTED`] marker in place of each key. The line is searched for
/// keys across the seams as if it were whole ([`Pieces`]), so the slices joined are the very
/// bytes of the line built whole and redacted in place.
fn line_pieces<'a>(
    line: &'a mut Vec<u8>,
    record: &'a RequestRecord,
    redactor: &Redactor,
) -> Option<Vec<&'a [u8]>> {
    line.clear();
    let mut parts = Parts::default();
    serialize_line(line, record, true, redactor, Some(&mut parts)).ok()?;
    parts.cut(line.len());
    let line: &'a [u8] = line;
    let pieces: Vec<&'a [u8]> = parts
        .list
        .iter()
        .map(|part| match part {
            Part::Built(range) => &line[range.clone()],
            Part::Body(bytes) => *bytes,
            Part::Space => b" ",
        })
        .collect();
    let found = redactor
        .for_record(&record.secrets)
        .found_in_pieces(&Pieces::new(pieces.iter().copied()));
    let mut out = redacted(&pieces, &found);
    out.push(b"\n");
    Some(out)
}

/// `pieces` with the bytes of each of `found` (sorted, apart, as positions in the text the
/// pieces make joined) left out and [`REDACTED`] in their place.
fn redacted<'a>(pieces: &[&'a [u8]], found: &[Range<usize>]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(pieces.len() + 2 * found.len() + 1);
    let mut keys = found.iter().peekable();
    let mut start = 0;
    for &piece in pieces {
        let end = start + piece.len();
        let mut from = start;
        while let Some(key) = keys.peek().filter(|key| key.start < end) {
            if key.start >= from {
                // It begins in this piece (else it began in one before, marked there).
                out.push(&piece[from - start..key.start - start]);
                out.push(REDACTED.as_bytes());
            }
            if key.end > end {
                from = end;
                break;
            }
            from = key.end;
            keys.next();
        }
        out.push(&piece[from - start..]);
        start = end;
    }
    out.retain(|piece| !piece.is_empty());
    out
}

/// A line's parts, when its JSON bodies are not copied into it ([`line_pieces`]).
#[derive(Default)]
struct Parts<'r> {
    list: Vec<Part<'r>>,
    /// Where the line's bytes not yet listed start.
    built_from: usize,
}

enum Part<'r> {
    /// Bytes of the line built.
    Built(Range<usize>),
    /// Bytes of a body, as they are.
    Body(&'r [u8]),
    /// A space, in place of a body's raw line break.
    Space,
}

/// Raw line breaks a JSON body may hold and still be borrowed, each a piece of its own
/// (see [`put_body`]); one with more is copied into the line, as any body was before.
const MAX_BODY_BREAKS: usize = 256;

impl<'r> Parts<'r> {
    /// Lists the line's bytes up to `at`.
    fn cut(&mut self, at: usize) {
        if at > self.built_from {
            self.list.push(Part::Built(self.built_from..at));
            self.built_from = at;
        }
    }

    /// Lists `body` (a JSON body) after the line's `built` bytes, its raw line breaks as
    /// spaces; false, with nothing listed, for a body of more than [`MAX_BODY_BREAKS`].
    fn body(&mut self, built: usize, body: &'r [u8]) -> bool {
        if memchr::memchr2_iter(b'\n', b'\r', body)
            .nth(MAX_BODY_BREAKS)
            .is_some()
        {
            return false;
        }
        self.cut(built);
        let mut from = 0;
        for at in memchr::memchr2_iter(b'\n', b'\r', body) {
            self.list.push(Part::Body(&body[from..at]));
            self.list.push(Part::Space);
            from = at + 1;
        }
        self.list.push(Part::Body(&body[from..]));
        true
    }
}

/// What a line is first given room for; one with bodies gets room for them too
/// ([`line_bytes_expected`]).
const LINE_BYTES: usize = 8 * 1024;

/// Bytes `record`'s line with bodies is expected to take: its bodies as they are (escaping may
/// add some; a stream's answer texts stand for a body not kept, see [`serialize_line`]), and
/// room for the other fields.
fn line_bytes_expected(record: &RequestRecord) -> usize {
    let response = match &record.response_body {
        Some(body) => body.len(),
        None => {
            let texts = &record.response;
            texts.content.len() + texts.reasoning.len() + texts.refusal.len()
        }
    };
    record.request_body.len() + response + record.error.as_ref().map_or(0, String::len) + LINE_BYTES
}

/// Whole lines (each with its `\n`) of one day, for one `write()`.
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    day: Date,
}

impl Pending {
    fn write(&mut self, file: &mut LogFile) {
        if self.lines == 0 {
            return;
        }
        file.write_lines(self.day, &self.bytes, self.lines, Instant::now());
        self.bytes.clear();
        self.lines = 0;
        // One huge body must not keep its buffer for good.
        if self.bytes.capacity() > 4 * WRITE_BYTES {
            self.bytes.shrink_to(WRITE_BYTES);
        }
    }
}

/// Appends `value` as JSON (strings escaped).
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    serde_json::to_writer(out, value)
}

/// Appends `,"key":value`. Keys are this file's own plain names, written as they are: running
/// each through the JSON string escaper was a third of what a line cost.
fn field<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    key: &'static str,
    value: &T,
) -> serde_json::Result<()> {
    debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    put(out, value)
}

/// Appends `,"key":"text"`: text with nothing to escape is copied as it is (ids, names,
/// models: nearly every field); anything else goes through serde_json's escaper.
fn field_str(out: &mut Vec<u8>, key: &'static str, text: &str) -> serde_json::Result<()> {
    if needs_escaping(text.as_bytes()) {
        return field(out, key, text);
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether `bytes` hold anything JSON must escape (or DEL). Checked 32 bytes at a time
/// without an early exit inside a block, which the compiler turns into vector compares: the
/// byte-by-byte loop was a sixth of what a log line cost.
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.chunks(32).any(|block| {
        block.iter().fold(false, |found, &b| {
            found | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
        })
    })
}

/// [`field_str`], or `null`.
fn field_opt_str(
    out: &mut Vec<u8>,
    key: &'static str,
    text: Option<&str>,
) -> serde_json::Result<()> {
    match text {
        Some(text) => field_str(out, key, text),
        None => field(out, key, &()),
    }
}

/// Appends a body: known-valid JSON goes in as it is (raw line breaks, which JSON allows only
/// between tokens, become spaces so the line stays one line); anything else becomes a string,
/// binary data a note of its size (`<binary, 48213 bytes>`). Given `parts`, a JSON body is
/// listed there rather than copied (see [`Parts::body`]).
fn put_body<'r>(
    out: &mut Vec<u8>,
    bytes: &'r [u8],
    is_json: bool,
    parts: Option<&mut Parts<'r>>,
) -> serde_json::Result<()> {
    if is_json && parts.is_some_and(|parts| parts.body(out.len(), bytes)) {
        return Ok(());
    }
    if is_json {
        let start = out.len();
        out.extend_from_slice(bytes);
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        return Ok(());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => put(out, text),
        Err(_) => put(
            out,
            &crate::record::body_description("binary", bytes.len() as u64, None),
        ),
    }
}

/// What a stream said, assembled from its events.
#[derive(Serialize)]
struct StreamOutput<'a> {
    /// `null` in a tool-call answer without text, as in OpenAI's message and in Langfuse's
    /// output (see [`crate::usage::ResponseSummary::message_content`]).
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    reasoning: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    refusal: &'a str,
    #[serde(skip_serializing_if = "<[ToolCall]>::is_empty")]
    tool_calls: &'a [ToolCall],
    finish_reason: Option<&'a str>,
    /// The upstream's own error event's message, type and code, when it ended the stream
    /// with one that has a type or code (see
    /// [`crate::usage::ResponseSummary::error_detail`]): the line's `error` has its message.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a serde_json::Value>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A model name or endpoint as a line holds it: at most [`MAX_NAME_CHARS`], as in the ledger
/// (the request's body, when logged, still has what the client sent). Redacted whole before
/// the cut, so a key crossing it is not left half there for the line's redaction to miss.
fn bounded_name<'a>(text: &'a str, redactor: &Redactor, record: &RequestRecord) -> Cow<'a, str> {
    // Characters are at least a byte each: a name this short needs no count.
    if text.len() <= MAX_NAME_CHARS {
        return Cow::Borrowed(text);
    }
    let redactor = redactor.for_record(&record.secrets);
    clipped_chars(redactor.redact(text), MAX_NAME_CHARS)
}

/// Serialises one record as one JSON line (no newline) into `out`. Written field by field:
/// the bodies are JSON already (the request always; the response when the record says so)
/// and go in without being parsed again. Given `parts`, the JSON bodies are listed there
/// between the parts of `out` rather than copied into it ([`line_pieces`]).
fn serialize_line<'r>(
    out: &mut Vec<u8>,
    record: &'r RequestRecord,
    bodies: bool,
    redactor: &Redactor,
    mut parts: Option<&mut Parts<'r>>,
) -> serde_json::Result<()> {
    let summary = &record.response;
    let name = |text| bounded_name(text, redactor, record);
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(rfc3339_millis(record.started_at).as_bytes());
    out.push(b'"');
    field_str(out, "request_id", &record.request_id)?;
    field_opt_str(out, "user", record.user.as_deref())?;
    field_str(out, "provider", &record.provider)?;
    field_str(out, "mode", record.mode.as_str())?;
    // A key percent-encoded in the path is found only decoded, which the line's own
    // redaction does not do.
    let endpoint = redactor
        .for_record(&record.secrets)
        .redact_path(&record.endpoint);
    field_str(out, "endpoint", &name(&endpoint))?;
    field_str(out, "model", &name(&record.requested_model))?;
    field_str(out, "upstream_model", &name(&record.upstream_model))?;
    let response_model = summary.model.as_deref().map(name);
    field_opt_str(out, "response_model", response_model.as_deref())?;
    field(out, "stream", &record.stream)?;
    field(out, "status", &record.status)?;
    field_str(out, "outcome", record.outcome.as_str())?;
    if let Some(error) = record.error_note() {
        field(out, "error", &error)?;
    }
    field(out, "latency_ms", &millis(record.latency()))?;
    field(out, "ttft_ms", &record.time_to_first_token().map(millis))?;
    field(out, "usage", &summary.usage)?;
    field(out, "usage_partial", &record.usage_partial())?;
    if bodies && record.bodies_dropped {
        field(out, "bodies", "left out: telemetry was too far behind")?;
    } else if bodies {
        out.extend_from_slice(b",\"request\":");
        put_body(out, &record.request_body, true, parts.as_deref_mut())?;
        if let Some(bytes) = &record.response_body {
            out.extend_from_slice(b",\"response\":");
            put_body(out, bytes, record.response_is_json, parts)?;
        } else if (record.stream && record.response_started_at.is_some())
            || !summary.content.is_empty()
        {
            // A stream's answer as it was read (none for one that got no answer: an empty
            // content would read as an empty answer); or the note a body not kept left in
            // its place (`<binary, 48213 bytes>`, see `record::describe_binary`).
            field(
                out,
                "response",
                &StreamOutput {
                    content: summary.message_content(),
                    reasoning: &summary.reasoning,
                    refusal: &summary.refusal,
                    tool_calls: &summary.tool_calls,
                    finish_reason: summary.finish_reason.as_deref(),
                    error: summary.error_detail.as_ref(),
                },
            )?;
        }
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn needs_escaping_agrees_with_a_byte_by_byte_check(bytes in proptest::collection::vec(prop_oneof![9 => 0x20u8..0x7f, 1 => any::<u8>()], 0..100)) {
            let slow = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f);
            prop_assert_eq!(needs_escaping(&bytes), slow);
        }
    }

    /// A body of the pieces keys are made of, in every form the redaction reads, and of
    /// the line's own bytes either side of a body (`"request":`, `,"response":`, `}`).
    fn body() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("sk-configured-1234"),
                Just("\\u0073k-configured-1234"),
                Just("sk-configured\\u002d1234"),
                Just("sk-conf"),
                Just("igured-1234"),
                Just("sk-lr-0123456789abcdefghijABCDEFGHIJkl"),
                Just("sk-lr-"),
                Just("gh"),
                Just("ij-secret"),
                Just("\n"),
                Just("\r\n"),
                Just("\\"),
                Just("\""),
                Just("{\"a\":\""),
                Just("\"}"),
                Just("ab12"),
                Just("cd34"),
                Just("ef56789"),
                Just("é"),
                Just("x"),
                Just("client-key-99"),
                Just("client%2Dkey-99"),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// A line written from pieces ([`line_pieces`]) is, byte for byte, the line built
        /// whole and redacted in place: with keys anywhere in its bodies, across the seams
        /// between a body and the fields around it, across a raw line break made a space,
        /// and in a body with too many breaks to be borrowed.
        #[test]
        fn a_line_from_pieces_is_the_line_built_whole(
            request in body(),
            response in body(),
            json_answer in any::<bool>(),
            many_breaks in any::<bool>(),
        ) {
            let redactor = Redactor::new(&[
                crate::secret::Secret::new("sk-configured-1234"),
                crate::secret::Secret::new("gh ij-secret"),
            ]);
            let mut record = crate::record::tests::sample();
            record.secrets = vec![
                crate::secret::Secret::new("client-key-99"),
                crate::secret::Secret::new("\"request\":ab12"),
                crate::secret::Secret::new("cd34,\"response\":"),
                crate::secret::Secret::new("ef56789}"),
            ]
            .into();
            let breaks = if many_breaks { "\n".repeat(MAX_BODY_BREAKS) } else { String::new() };
            record.request_body = bytes::Bytes::from(format!("{request}{breaks}"));
            record.response_body = Some(bytes::Bytes::from(response));
            record.response_is_json = json_answer;
            let mut whole = Vec::new();
            serialize_line(&mut whole, &record, true, &redactor, None).expect("serialized");
            redactor.for_record(&record.secrets).redact_in_place(&mut whole);
            whole.push(b'\n');
            let mut line = Vec::new();
            let pieces = line_pieces(&mut line, &record, &redactor).expect("serialized");
            let joined = pieces.concat();
            prop_assert!(
                joined == whole,
                "{}\n{}",
                String::from_utf8_lossy(&joined),
                String::from_utf8_lossy(&whole)
            );
        }
    }

    /// A streamed refusal is the logged answer (it was the whole of it).
    #[test]
    fn a_streamed_refusal_is_logged() {
        let mut record = crate::record::tests::sample();
        record.stream = true;
        record.response_started_at = Some(record.started_at);
        record.response_body = None;
        record.response.refusal = "I cannot help with that.".into();
        let mut out = Vec::new();
        serialize_line(&mut out, &record, true, &Redactor::default(), None).expect("serialized");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            line["response"],
            serde_json::json!({"content": "", "refusal": "I cannot help with that.",
                "finish_reason": null})
        );
    }

    /// Lines of `path`, each of which must be JSON.
    fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line ({e})")))
            .collect()
    }

    fn record_of(id: &str, body_bytes: usize, at: SystemTime) -> Arc<RequestRecord> {
        let mut record = crate::record::tests::sample();
        record.request_id = id.into();
        record.started_at = at;
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(body_bytes));
        record.request_body = bytes::Bytes::from(body);
        Arc::new(record)
    }

    /// Two routers appending to one file (a blue/green overlap) never tear each other's
    /// lines: each `write()` holds whole lines, each line's newline included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_on_one_file_write_whole_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("api_proxy.log");
        let start = || {
            RequestLogSink::start(RequestLogOptions {
                path: path.clone(),
                bodies: true,
                redactor: Redactor::default(),
            })
            .expect("start")
        };
        let (a, b) = (Arc::new(start()), Arc::new(start()));
        let now = SystemTime::now();
        let feed = |sink: Arc<RequestLogSink>, name: &'static str| {
            std::thread::spawn(move || {
                for i in 0..150 {
                    // Lines of 1 KB to 100 KB: some share a write, some exceed one.
                    let record = record_of(&format!("{name}{i}"), 1_000 + (i % 7) * 16_000, now);
                    sink.accept(&record);
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let (ta, tb) = (feed(a.clone(), "a"), feed(b.clone(), "b"));
        ta.join().expect("a");
        tb.join().expect("b");
        a.close().await;
        b.close().await;
        let lines = json_lines(&dir.path().join(format!("api_proxy.{}.log", utc_date(now))));
        assert_eq!(lines.len() as u64, 300 - a.dropped() - b.dropped());
        assert_eq!(
            a.stats().written() + b.stats().written(),
            lines.len() as u64
        );
    }

    /// A named pipe whose reader stopped reading blocks the writer in `write()`; shutdown
    /// waits for it only so long, then goes on.
    #[cfg(unix)]
    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_pipe_nobody_reads() {
        let dir = tempfile::tempdir().expect("dir");
        // Opened, never read: the pipe fills (64 KiB) and the writer blocks.
        use crate::sinks::log_file::tests::{named_pipe, pipe_reader};
        let fifo = named_pipe(dir.path());
        let _reader = pipe_reader(&fifo);
        let sink = RequestLogSink::start(RequestLogOptions {
            path: fifo.clone(),
            bodies: true,
            redactor: Redactor::default(),
        })
        .expect("start")
        .closing_within(Duration::from_millis(200));
        let now = SystemTime::now();
        for i in 0..64 {
            sink.accept(&record_of(&i.to_string(), 16 * 1024, now));
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), sink.close()).await;
        assert!(closed.is_ok(), "close waited for the blocked writer");
    }

    /// A client credential that repeats itself, against a body that repeats most of it, is
    /// more than the redaction reads through (`redact::ReadBudget`): the line is taken whole
    /// for a key, and what is logged is still a JSON line, with the request's id, its
    /// fields but not its bodies, and `"redacted": "not searched"`; when its fields hold
    /// the same, only its time and id. Short lines and long ones (written from pieces) alike;
    /// the record after it is logged as usual.
    #[tokio::test]
    async fn a_line_too_costly_to_search_is_logged_without_what_was_not_searched() {
        let dir = tempfile::tempdir().expect("dir");
        let sink = RequestLogSink::start(RequestLogOptions {
            path: dir.path().join("api_proxy.log"),
            bodies: true,
            redactor: Redactor::default(),
        })
        .expect("start");
        let key = "a".repeat(4000);
        let near_misses = |n: usize| format!("{}b", "a".repeat(3999)).repeat(n);
        let now = SystemTime::now();
        for (id, runs) in [("short", 4), ("long", 40)] {
            let mut record = crate::record::tests::sample();
            record.request_id = id.into();
            record.started_at = now;
            record.secrets = vec![crate::secret::Secret::new(key.clone())].into();
            let body = format!("{{\"content\":\"{} x\\n\"}}", near_misses(runs));
            record.request_body = bytes::Bytes::from(body);
            sink.accept(&Arc::new(record));
        }
        let mut record = crate::record::tests::sample();
        record.request_id = "model too".into();
        record.started_at = now;
        record.secrets = vec![crate::secret::Secret::new(key.clone())].into();
        // Names are cut to `MAX_NAME_CHARS`, as the line holds them: two runs that long,
        // and a `\"` the line writes for the quote, are too many reads for the line alone.
        record.requested_model = "a".repeat(2 * MAX_NAME_CHARS);
        record.upstream_model = "a".repeat(2 * MAX_NAME_CHARS);
        record.endpoint = "/v1/\"chat".into();
        record.request_body = bytes::Bytes::from(format!("{{\"m\":\"{}\\n\"}}", near_misses(2)));
        sink.accept(&Arc::new(record));
        sink.accept(&record_of("after", 10, now));
        sink.close().await;
        let lines = json_lines(&dir.path().join(format!("api_proxy.{}.log", utc_date(now))));
        let ids: Vec<&str> = lines
            .iter()
            .map(|l| l["request_id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["short", "long", "model too", "after"]);
        for line in &lines[..2] {
            assert_eq!(line["redacted"], "not searched", "{line}");
            assert_eq!(line["provider"], "p", "{line}");
            assert!(line.get("request").is_none(), "{line}");
        }
        let only_id = lines[2].as_object().expect("object");
        let mut keys: Vec<&str> = only_id.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["redacted", "request_id", "time"], "{only_id:?}");
        assert!(lines[3].get("redacted").is_none());
        assert!(lines[3]["request"].is_object(), "{}", lines[3]);
    }

    /// Each line goes to the file of its own UTC day, also when days go back (a clock set
    /// right again) within one batch.
    #[tokio::test]
    async fn lines_go_to_the_file_of_their_day() {
        let dir = tempfile::tempdir().expect("dir");
        let sink = RequestLogSink::start(RequestLogOptions {
            path: dir.path().join("api_proxy.log"),
            bodies: false,
            redactor: Redactor::default(),
        })
        .expect("start");
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        for (id, at) in [
            ("0", now),
            ("1", now + day * 31),
            ("2", now),
            ("3", now + day),
        ] {
            sink.accept(&record_of(id, 10, at));
        }
        sink.close().await;
        let ids = |at: SystemTime| -> Vec<String> {
            json_lines(&dir.path().join(format!("api_proxy.{}.log", utc_date(at))))
                .iter()
                .map(|l| l["request_id"].as_str().expect("id").to_owned())
                .collect()
        };
        assert_eq!(ids(now), ["0", "2"]);
        assert_eq!(ids(now + day * 31), ["1"]);
        assert_eq!(ids(now + day), ["3"]);
        assert_eq!((sink.stats().written(), sink.stats().failed()), (4, 0));
    }

    #[test]
    fn string_fields_match_serde_json() {
        for text in [
            "gpt-4o",
            "",
            "a\"b",
            "back\\slash",
            "line\nbreak",
            "\u{1}",
            "ünï ✓",
        ] {
            let mut fast = Vec::new();
            field_str(&mut fast, "k", text).expect("write");
            let mut serde = b",\"k\":".to_vec();
            serde_json::to_writer(&mut serde, text).expect("write");
            assert_eq!(fast, serde, "{text:?}");
        }
        let mut out = Vec::new();
        field_opt_str(&mut out, "user", None).expect("write");
        assert_eq!(out, b",\"user\":null");
    }

    #[test]
    fn bodies_stay_on_one_line() {
        let mut out = Vec::new();
        let pretty = b"{\n  \"a\": [1,\r\n 2]\n}";
        put_body(&mut out, pretty, true, None).expect("json");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid");
        assert_eq!(v["a"][1], 2);
        let mut out = Vec::new();
        put_body(&mut out, b"plain\ntext", false, None).expect("json");
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"plain\\ntext\"");
        let mut out = Vec::new();
        put_body(&mut out, &[0xff, 0xfe, 0x00], false, None).expect("json");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"<binary, 3 bytes>\""
        );
    }
}
