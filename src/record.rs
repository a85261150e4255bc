//! The record of one routed request, and how it reaches the sinks without touching the
//! request path.
//!
//! The proxy fills a [`RecordGuard`] as the request goes; the guard hands one finished
//! [`RequestRecord`] to the [`Recorder`] exactly once — when the proxy finishes it, or, if the
//! client went away first, from `Drop` with what was seen so far. The recorder queues it
//! (bounded, never blocking) to one background task that completes the parsing of
//! non-stream bodies and gives an `Arc` of the record to every [`RecordSink`]. Sinks (Langfuse,
//! request log, usage ledger) plug in here; the proxy does not know them.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::content_coding::DecodeBudget;
use crate::routing::RouteMode;
use crate::sinks::loss::LossWarnings;
use crate::sinks::redact::{CutGuard, Redactor, RequestSecrets};
use crate::usage::{ResponseSummary, summarize_json_body};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx and the whole answer reached the client.
    Success,
    /// The upstream reported an error: an error status, a redirect (3xx, relayed, not
    /// followed: no completion happened), or an error event inside a stream it answered 2xx
    /// (relayed as it came; `error` holds the event's message). Relayed to the client.
    UpstreamError,
    /// The router answered with its own error (502 unreachable, 504 timeout, ...).
    RouterError,
    /// The stream broke after it started (upstream reset, idle timeout), or shutdown's hard
    /// stop cut an answer, streamed or whole, that was still being written.
    StreamFailed,
    /// The client went away before the answer was complete.
    ClientDisconnected,
}

impl Outcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::UpstreamError,
        Self::RouterError,
        Self::StreamFailed,
        Self::ClientDisconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::UpstreamError => "upstream_error",
            Self::RouterError => "router_error",
            Self::StreamFailed => "stream_failed",
            Self::ClientDisconnected => "client_disconnected",
        }
    }

    pub fn is_error(self) -> bool {
        !matches!(self, Self::Success)
    }
}

/// The top level of a request body: for each member in order, the byte range of its key
/// (inside the quotes) and of its raw value. The proxy finds it while it reads the body for
/// routing, so the span's generation view reads the members without parsing the body again.
pub type BodyLayout = Vec<(std::ops::Range<u32>, std::ops::Range<u32>)>;

/// Everything known about one routed request. Sinks get it read-only behind an `Arc`.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    /// The account name, when account management is on.
    pub user: Option<String>,
    /// Alias, or the URL target's host.
    pub provider: String,
    /// The configured alias; `None` for URL targets.
    pub alias: Option<String>,
    pub mode: RouteMode,
    /// Client path after `/v1`, e.g. `/chat/completions`.
    pub endpoint: String,
    /// The model as the client wrote it (`[openrouter]google/gemini-2.5`).
    pub requested_model: String,
    /// The model name sent upstream (`google/gemini-2.5`).
    pub upstream_model: String,
    pub stream: bool,
    /// The client's request body as received, before the model rewrite (a form's, as
    /// [`Self::request_is_form`] says). Always one valid JSON object: the proxy parsed (or
    /// wrote) it before routing, so a sink may embed it as is.
    pub request_body: Bytes,
    /// Where `request_body`'s top-level members are, when the proxy kept it.
    pub request_layout: Option<BodyLayout>,
    /// The client sent a `multipart/form-data` body (an audio file to transcribe, an image
    /// to edit): `request_body` is then the router's description of it, the text fields and
    /// each file's filename, content type and size (never its bytes), not the body itself.
    pub request_is_form: bool,
    pub started_at: SystemTime,
    /// The monotonic clock when `started_at` was read: later times are `started_at` plus the
    /// time elapsed on it ([`Self::at`]), so a wall-clock step during the request (NTP, a VM
    /// resumed) moves none of them: no hour-long latency, no end before the start.
    pub started_mono: Instant,
    /// First response bytes from the upstream (headers received).
    pub response_started_at: Option<SystemTime>,
    /// First generated token (first event carrying text, reasoning or a tool call); of a body
    /// relayed unread that is not one JSON document (speech audio), its first bytes.
    pub first_token_at: Option<SystemTime>,
    pub ended_at: SystemTime,
    /// The answer's status: the upstream's, or the router's own error status. For a stream
    /// the router opened before its upstream answered (`proxy::early`), the client got 200
    /// and this is what the upstream then answered (or the router's error status); 200 when
    /// the client left before the upstream's head came.
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// Error text for failed requests (upstream error message, router error, stream failure);
    /// an upstream's message at most [`MAX_ERROR_CHARS`] ([`bounded_error`]).
    pub error: Option<String>,
    /// The non-stream response body as relayed; or a streamed body relayed unread whose
    /// label did not rule out one JSON document, kept next to its note in `response.content`
    /// (see `proxy::stream`): the recorder reads it as JSON when it is, else drops it.
    pub response_body: Option<Bytes>,
    /// `response_body` is one valid JSON document (set by the proxy for error bodies, which
    /// it parsed or wrote, and by the recorder for answers it could read), so a sink may
    /// embed it as is; otherwise it is text or binary.
    pub response_is_json: bool,
    /// The `Content-Encoding` of `response_body` (`gzip`), when the upstream sent a 2xx
    /// answer encoded although asked for `identity` (the client gets it as it came): a whole
    /// answer, or the copy of one relayed unread (a `GET`'s). The recorder decodes gzip,
    /// deflate, br and zstd for the record, then clears this.
    pub response_encoding: Option<String>,
    /// What the proxy's one decode of `response_body` gave, when it decoded it (to search it
    /// for echoed keys, to make a stream's events of it): the recorder reads that rather than
    /// decoding it again (two decodes of a 731-byte `gzip, gzip` answer held 150 MB).
    pub response_decoded: Option<Decoded>,
    /// What the answer said: filled from the stream as it passed, or parsed from
    /// `response_body` off the request path. An answer whose bytes the record does not keep
    /// has a note of them as its `content` instead: a binary body (`<audio/mpeg, 48213
    /// bytes>`, see [`body_description`]), a speech event stream's audio (`<speech audio,
    /// 48213 bytes in 12 deltas>`), embeddings (`<3 embeddings, 1536 dimensions>`), base64
    /// images (`<2 images (b64_json, 1.2 MB)>`; see `usage::read_data`), an image stream's
    /// images (`<1 image (b64_json, 1.2 MB)>`).
    pub response: ResponseSummary,
    /// For streams: whether the stream's end marker was seen: `data: [DONE]`, or in the
    /// formats without one their own last event (Anthropic's `message_stop`, the Responses
    /// API's `response.completed`, OpenAI's `speech.audio.done`; see
    /// `StreamAccumulator::saw_end`), or the end of a body
    /// that is not an event stream. An event stream the upstream closed without it ended
    /// early.
    pub complete: bool,
    /// The answer was one whole body: read to its end by the proxy (any non-stream answer,
    /// and one JSON document labelled so to a stream request), or relayed unread to a stream
    /// request and then read by the recorder as one JSON document (a chat completion under
    /// `text/plain`). It has no first token of its own: its completion started when it
    /// arrived (see [`Self::completion_start`]).
    pub answered_whole: bool,
    /// The upstream answered 2xx with nothing, to a request that named a model (see
    /// [`Self::usage_uncounted`]): an event stream it closed before any event, a body relayed
    /// unread without a byte, or an empty whole body (not a `204 No Content`). The client got
    /// that answer as it came; the record keeps it as the upstream's failure to answer, a
    /// success with a warning: `error` says the answer was empty, and an event stream so
    /// ended is cut as one closed before its end marker is ([`Self::usage_partial`]).
    pub empty_answer: bool,
    /// The router gave up on an upstream that had the request (see
    /// [`crate::error::ProxyError::upstream_had_request`]): a router error whose tokens are
    /// unknown, not none ([`Self::usage_partial`]).
    pub upstream_had_request: bool,
    /// What this request itself carried that no record may show: every credential the client
    /// sent (`Authorization` whatever its scheme, `Basic`'s also decoded, `x-api-key`: a URL
    /// target's upstream key, a user's router key), a URL target's query and a URL prefix's
    /// user info (see `routing::url_target_secrets`), the values of the client's own query
    /// parameters named as credentials (`?key=`, see `routing::client_query_secrets`). Kept
    /// only so sinks can redact them wherever they might be echoed (an upstream error
    /// message, a body, the logged request's `model`), and so no cut of this record's texts
    /// leaves a part of one ([`Self::cut_guard`]); never written anywhere. Shared, so a
    /// stream's reader holds them without a copy.
    pub secrets: RequestSecrets,
    /// The configured keys, as the proxy takes them out of what an upstream echoes
    /// (`AppState::redactor`): a text this record keeps is cut short of any of them
    /// ([`Self::cut_guard`]), since a sink's redaction no longer recognises half a key. The
    /// sinks redact with their own, which has these too.
    pub keys: Redactor,
    /// The bodies were left out because records in flight held more than the recorder's body
    /// budget (see [`BODY_BUDGET`]); usage and every other field are still here. Set when the
    /// record is submitted; a whole answer's body stays until the recorder has read its usage
    /// off the request path (see [`READ_BUDGET`]), and no sink sees it.
    pub bodies_dropped: bool,
    /// The request named no model (a `GET`, a `DELETE`, a `POST` without `model`): it reads
    /// back or acts on something generated before (a batch, a stored response, a
    /// cancellation), whose tokens were billed and counted when it was made. The usage its
    /// answer repeats is left out of the record when it reaches the sinks ([`deliver`]), so
    /// polling a batch does not count its tokens again in the ledger or Langfuse.
    pub usage_uncounted: bool,
    /// Releases this record's share of the body budget when the last holder is done.
    pub body_ticket: BodyTicket,
}

/// What decoding a compressed whole answer gave ([`RequestRecord::response_decoded`]).
#[derive(Debug, Clone)]
pub enum Decoded {
    /// What it decoded to: all of it, or one whole JSON document before a fault in the
    /// compressed data after it (read as curl reads it).
    Read(Bytes),
    /// Why it was not read: too large once decoded, the decode budget spent, corrupt or cut
    /// short, a coding the router does not decode.
    Unread(Arc<crate::content_coding::DecodeError>),
}

/// Most bytes of bodies that records may hold between `submit` and the last sink done with
/// them, what the recorder reads into them included (a decoded answer, the texts read from
/// it: see `BodyBudget::hold_what_was_read`). Sink queues are bounded in records; this bounds
/// them in bytes too, since one record may carry a 64 MB body. Over it, records still go to
/// every sink, without bodies.
pub const BODY_BUDGET: usize = 256 * 1024 * 1024;

/// Most bytes of whole answers that records over the body budget may hold until the recorder
/// has read their usage from them and left them out (see `Recorder::take_body_budget`). Past
/// it, an answer's usage is read on the request path, as all were before: its memory stays
/// bounded, its usage recorded, at the cost of that request's lane.
pub const READ_BUDGET: usize = 256 * 1024 * 1024;

/// The budgets a [`Recorder`] keeps to.
#[derive(Clone, Debug)]
pub struct Budgets {
    /// [`BODY_BUDGET`].
    pub bodies: usize,
    /// [`READ_BUDGET`].
    pub reads: usize,
    /// What decodes of whole answers hold together, the recorder's and the proxy's.
    pub decode: DecodeBudget,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            bodies: BODY_BUDGET,
            reads: READ_BUDGET,
            decode: DecodeBudget::default(),
        }
    }
}

/// A record's share of the body budget; shared by clones, released by the last one.
#[derive(Clone, Default)]
pub struct BodyTicket(Option<Arc<TicketInner>>);

struct TicketInner {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl BodyTicket {
    /// A share of `bytes` of the budget whose holdings `held` counts, `None` (taking nothing)
    /// when that would take it past `limit`.
    fn take(held: &Arc<AtomicUsize>, bytes: usize, limit: usize) -> Option<Self> {
        let before = held.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > limit {
            held.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        let held = held.clone();
        Some(Self(Some(Arc::new(TicketInner { bytes, held }))))
    }

    /// Bytes of the budget this ticket holds.
    fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |inner| inner.bytes)
    }

    /// The record's bodies grew by `bytes` after it was submitted (the recorder decoded its
    /// answer and read its texts): its share grows with them when the budget whose holdings
    /// `held` counts has room for that, up to `limit`; `false`, taking nothing, when not. A
    /// record that held no share (nothing to hold when submitted) takes one.
    ///
    /// The grown ticket takes the whole new share; the old ticket gives its share back as it
    /// drops (at once, unless a clone still holds it and with it the old bodies), so the
    /// budget ends where it started once both are gone.
    fn grow_within(&mut self, bytes: usize, held: &Arc<AtomicUsize>, limit: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Some(inner) = &self.0 else {
            let Some(ticket) = Self::take(held, bytes, limit) else {
                return false;
            };
            *self = ticket;
            return true;
        };
        let share = inner.bytes.saturating_add(bytes);
        let held = Arc::clone(&inner.held);
        let before = held.fetch_add(share, Ordering::AcqRel);
        // `before` still counts the old share, given back as it drops.
        if before.saturating_sub(inner.bytes).saturating_add(share) > limit {
            held.fetch_sub(share, Ordering::AcqRel);
            return false;
        }
        self.0 = Some(Arc::new(TicketInner { bytes: share, held }));
        true
    }
}

impl std::fmt::Debug for BodyTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(inner) => write!(f, "BodyTicket({} bytes)", inner.bytes),
            None => f.write_str("BodyTicket(none)"),
        }
    }
}

/// When a request began, on both clocks (see [`RequestRecord::started_mono`]).
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

impl RequestRecord {
    /// The wall-clock time of `instant`, counted from the request's start.
    pub fn at(&self, instant: Instant) -> SystemTime {
        self.started_at + instant.saturating_duration_since(self.started_mono)
    }

    /// Now, counted from the request's start (see [`Self::started_mono`]).
    pub fn now(&self) -> SystemTime {
        self.at(Instant::now())
    }

    /// Bytes of bodies this record holds: the request and response bodies, and the text a
    /// stream's answer was assembled into.
    pub fn body_bytes(&self) -> usize {
        let r = &self.response;
        let tool_calls: usize = r
            .tool_calls
            .iter()
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum();
        self.request_body.len()
            + self.response_body.as_ref().map_or(0, Bytes::len)
            + r.content.len()
            + r.reasoning.len()
            + r.refusal.len()
            + tool_calls
    }

    /// Cuts a model name, answer id or finish reason past [`MAX_RECORDED_NAME`] bytes (the
    /// client's or the upstream's, any length): not bodies, the body budget did not count
    /// them, and 8 MB model names held in a stuck sink's queue took a gigabyte (bb49).
    fn bound_names(&mut self) {
        let response = &self.response;
        let long = [&self.requested_model, &self.upstream_model]
            .into_iter()
            .chain(
                [&response.model, &response.id, &response.finish_reason]
                    .into_iter()
                    .flatten(),
            )
            .any(|name| name.len() > MAX_RECORDED_NAME);
        if !long {
            return;
        }
        let guard = self.cut_guard();
        let response = &mut self.response;
        for name in [&mut self.requested_model, &mut self.upstream_model]
            .into_iter()
            .chain(
                [
                    &mut response.model,
                    &mut response.id,
                    &mut response.finish_reason,
                ]
                .into_iter()
                .flatten(),
            )
        {
            bound_name(name, &guard);
        }
    }

    /// Leaves the bodies and answer texts out (usage read first, so the ledger loses nothing).
    fn drop_bodies(&mut self, decode: Decode<'_>) {
        complete_summary(self, decode);
        self.leave_bodies_out();
    }

    /// Leaves the request body out, keeping the answer's for the recorder to read its usage
    /// from ([`Self::leave_bodies_out`] then): marked as a record without bodies already.
    fn leave_request_body_out(&mut self) {
        self.request_body = Bytes::new();
        self.request_layout = None;
        self.bodies_dropped = true;
    }

    /// Leaves the bodies and answer texts out, with their share of a budget.
    fn leave_bodies_out(&mut self) {
        self.body_ticket = BodyTicket::default();
        self.response_decoded = None;
        self.request_body = Bytes::new();
        self.request_layout = None;
        self.response_body = None;
        self.response_is_json = false;
        self.response.content = String::new();
        self.response.reasoning = String::new();
        self.response.refusal = String::new();
        self.response.tool_calls = Vec::new();
        self.bodies_dropped = true;
    }

    /// What this record's texts are cut around: its secrets and the configured keys.
    pub fn cut_guard(&self) -> CutGuard {
        CutGuard::new(self.keys.clone(), self.secrets.clone())
    }

    /// Latency from receiving the request to the end of the answer.
    pub fn latency(&self) -> std::time::Duration {
        self.ended_at
            .duration_since(self.started_at)
            .unwrap_or_default()
    }

    /// Time to first token, from the start of the request.
    pub fn time_to_first_token(&self) -> Option<std::time::Duration> {
        self.first_token_at
            .and_then(|t| t.duration_since(self.started_at).ok())
    }

    /// When the completion started: the first token of a stream; for a whole answer
    /// ([`Self::answered_whole`]) that succeeded, when it arrived (its head), as it came in
    /// one piece. Langfuse's `completion_start_time`; the request log's and the ledger's
    /// `ttft_ms` are the first token alone.
    pub fn completion_start(&self) -> Option<SystemTime> {
        if self.first_token_at.is_some() {
            return self.first_token_at;
        }
        let whole = !self.stream || self.answered_whole;
        (self.outcome == Outcome::Success && whole)
            .then_some(self.response_started_at)
            .flatten()
    }

    /// The answer was cut (client gone, stream broken, or a stream the upstream ended with
    /// an error: an error event, corrupt compressed data) before the upstream reported token
    /// usage: the token counts of this request are unknown, not zero. So is an event stream
    /// the upstream closed after generating but before its `[DONE]` and usage (a cut the
    /// client cannot tell from an end). A stream that announced its answer with an event of
    /// its own (Anthropic's `message_start`, the Responses API's `response.created`: see
    /// `ResponseSummary::begun`) had begun it, token or not. An upstream error before that
    /// (a 429, an error under a 200 instead of a stream) is not partial; the router's own
    /// error is when the upstream had the request (a 504 waiting for its answer, a 502 for
    /// one it closed without, cut or sent unreadable). An event stream the
    /// upstream closed before any event is ([`Self::empty_answer`]): it took the request and
    /// said nothing, not even that it failed.
    pub fn usage_partial(&self) -> bool {
        let generating_stream = self.stream
            && (self.first_token_at.is_some() || self.response.begun || self.empty_answer);
        let cut = match self.outcome {
            Outcome::ClientDisconnected | Outcome::StreamFailed => true,
            // A stream that had begun generating when the upstream ended it with an error.
            Outcome::UpstreamError => generating_stream,
            Outcome::Success => generating_stream && !self.complete,
            // A timeout waiting for the answer, an answer cut or unreadable: the upstream
            // may have generated and billed it. Not a refused connection, nor the router's
            // own refusal (401, 404, ...): nothing was generated.
            Outcome::RouterError => self.upstream_had_request,
        };
        cut && self.response.usage.is_none() && !self.usage_uncounted
    }

    /// The record's error text, or, for a success whose usage is unknown because the
    /// upstream closed the stream early and cleanly, what [`unterminated`] says of it: the
    /// ledger and the request log carry the same note as the span, so such a row does not
    /// read as a free success with nothing said.
    pub fn error_note(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.error {
            Some(error) => Some(std::borrow::Cow::Borrowed(error)),
            None if self.outcome == Outcome::Success && self.usage_partial() => {
                Some(std::borrow::Cow::Owned(unterminated(&self.endpoint)))
            }
            None => None,
        }
    }
}

/// A consumer of finished records. `accept` runs on the recorder's task, never on a request:
/// it must not block (queue and return). `close` flushes on shutdown.
pub trait RecordSink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn accept(&self, record: &Arc<RequestRecord>);
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
    /// Adds this sink's counters (written, dropped, failed, ...) for `GET /metrics`.
    fn metrics(&self, _out: &mut crate::sinks::Metrics) {}
}

/// Queue depth between requests and the recorder task. A full queue drops (and counts)
/// records rather than slowing a request.
const QUEUE_DEPTH: usize = 16 * 1024;

/// Hands finished records to the sinks, off the request path. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    tx: Option<mpsc::Sender<Box<RequestRecord>>>,
    /// Record guards alive (requests under way); shutdown waits for them before the sinks
    /// are flushed, so no record is handed over after its sinks closed.
    live: AtomicUsize,
    /// Bytes of bodies held by submitted records not yet released by every sink.
    body_bytes: Arc<AtomicUsize>,
    body_budget: usize,
    /// Bytes of answers held by records over the body budget until the recorder has read
    /// their usage ([`READ_BUDGET`]).
    read_bytes: Arc<AtomicUsize>,
    read_budget: usize,
    /// What decodes of whole answers hold together, shared with the proxy's
    /// (`AppState::decode_budget`): the recorder's decodes take from it too.
    decode_budget: DecodeBudget,
    /// Counted here (an atomic add on the request path); the task warns about them.
    losses: Arc<Losses>,
    /// Records by outcome, dropped ones too: an error rate a dashboard can alert on, which
    /// the sinks' counters do not give.
    outcomes: Arc<OutcomeCounts>,
    /// The sinks the task feeds, for their counters.
    sinks: Vec<Arc<dyn RecordSink>>,
}

/// Owns the recorder's background task; `shutdown` drains the queue and closes every sink.
pub struct RecorderTask {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Recorder {
    /// A recorder with no sinks: records are dropped at once, nothing runs in the background.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(RecorderInner {
                tx: None,
                live: AtomicUsize::new(0),
                body_bytes: Arc::default(),
                body_budget: BODY_BUDGET,
                read_bytes: Arc::default(),
                read_budget: READ_BUDGET,
                decode_budget: DecodeBudget::default(),
                losses: Arc::default(),
                outcomes: Arc::default(),
                sinks: Vec::new(),
            }),
        }
    }

    /// Starts the background task that feeds `sinks`. Must run inside a tokio runtime.
    pub fn start(sinks: Vec<Arc<dyn RecordSink>>) -> (Self, RecorderTask) {
        Self::start_with_budgets(sinks, Budgets::default())
    }

    /// [`Self::start`] with its loss warnings given at most every `warning_interval`.
    pub fn start_warning_every(
        sinks: Vec<Arc<dyn RecordSink>>,
        warning_interval: std::time::Duration,
    ) -> (Self, RecorderTask) {
        Self::start_with(sinks, Budgets::default(), warning_interval)
    }

    /// [`Self::start`] with another body budget (tests).
    pub fn start_with_budget(
        sinks: Vec<Arc<dyn RecordSink>>,
        body_budget: usize,
    ) -> (Self, RecorderTask) {
        let budgets = Budgets {
            bodies: body_budget,
            ..Budgets::default()
        };
        Self::start_with_budgets(sinks, budgets)
    }

    /// [`Self::start`] with other budgets (tests).
    pub fn start_with_budgets(
        sinks: Vec<Arc<dyn RecordSink>>,
        budgets: Budgets,
    ) -> (Self, RecorderTask) {
        Self::start_with(sinks, budgets, crate::sinks::loss::DEFAULT_WARNING_INTERVAL)
    }

    fn start_with(
        sinks: Vec<Arc<dyn RecordSink>>,
        budgets: Budgets,
        warning_interval: std::time::Duration,
    ) -> (Self, RecorderTask) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let losses = Arc::<Losses>::default();
        let log = LossLog::new(losses.clone(), warning_interval);
        let outcomes = Arc::<OutcomeCounts>::default();
        let body_bytes = Arc::<AtomicUsize>::default();
        let bodies = BodyBudget {
            held: body_bytes.clone(),
            limit: budgets.bodies,
            losses: losses.clone(),
        };
        tracker.spawn(run_recorder(
            rx,
            (sinks.clone(), budgets.decode.clone(), bodies),
            stop.clone(),
            log,
            outcomes.clone(),
        ));
        tracker.close();
        let recorder = Self {
            inner: Arc::new(RecorderInner {
                tx: Some(tx),
                live: AtomicUsize::new(0),
                body_bytes,
                body_budget: budgets.bodies,
                read_bytes: Arc::default(),
                read_budget: budgets.reads,
                decode_budget: budgets.decode,
                losses,
                outcomes,
                sinks,
            }),
        };
        (recorder, RecorderTask { stop, tracker })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.tx.is_some()
    }

    /// The decode budget this recorder's decodes take from, for the proxy's to share
    /// (`AppState::decode_budget`).
    pub fn decode_budget(&self) -> DecodeBudget {
        self.inner.decode_budget.clone()
    }

    /// Queues a record; never waits.
    pub fn submit(&self, record: RequestRecord) {
        self.submit_boxed(Box::new(record));
    }

    /// [`Self::submit`] for a record already on the heap (the guard's): queued without a copy.
    fn submit_boxed(&self, mut record: Box<RequestRecord>) {
        let Some(tx) = &self.inner.tx else { return };
        record.bound_names();
        self.take_body_budget(&mut record);
        if let Err(lost) = tx.try_send(record) {
            self.inner.losses.records.fetch_add(1, Ordering::Relaxed);
            // Counted by the outcome it has here: no sink reads it further.
            let record = match &lost {
                mpsc::error::TrySendError::Full(record)
                | mpsc::error::TrySendError::Closed(record) => record,
            };
            self.inner.outcomes.count(record.outcome);
        }
    }

    /// Gives the record a share of the body budget, or, when the budget is spent (sinks far
    /// behind), leaves its bodies out. A whole answer's usage is still to be read from its
    /// body then: that is left to the recorder, off the request path (decoding and parsing a
    /// 60 MB gzip answer here stalled every other connection of the lane, `/health` too,
    /// 0.6 s an answer), while [`READ_BUDGET`] has room for the body; past it, it is read here,
    /// within the decode budget only.
    fn take_body_budget(&self, record: &mut RequestRecord) {
        let bytes = record.body_bytes();
        if bytes == 0 {
            return;
        }
        let inner = &self.inner;
        if let Some(ticket) = BodyTicket::take(&inner.body_bytes, bytes, inner.body_budget) {
            record.body_ticket = ticket;
            return;
        }
        inner.losses.bodies.fetch_add(1, Ordering::Relaxed);
        let answer = record.response_body.as_ref().map_or(0, Bytes::len);
        if answer > 0 {
            if let Some(ticket) = BodyTicket::take(&inner.read_bytes, answer, inner.read_budget) {
                record.leave_request_body_out();
                record.body_ticket = ticket;
                return;
            }
        }
        record.drop_bodies(Decode::Within(&inner.decode_budget));
    }

    /// Waits until no request is under way (every record handed over), at most `within`.
    /// Returns whether that happened.
    pub async fn wait_idle(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.inner.live.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Records whose bodies were left out because the body budget was spent.
    pub fn bodies_dropped(&self) -> u64 {
        self.inner.losses.bodies.load(Ordering::Relaxed)
    }

    /// Bytes of bodies held right now by records on their way through the sinks.
    pub fn body_bytes_held(&self) -> usize {
        self.inner.body_bytes.load(Ordering::Relaxed)
    }

    /// Records lost because the queue was full (or the recorder had shut down).
    pub fn dropped(&self) -> u64 {
        self.inner.losses.records.load(Ordering::Relaxed)
    }

    /// The recorder's and every sink's counters, as `GET /metrics` shows them.
    pub fn metrics(&self) -> crate::sinks::Metrics {
        let mut out = crate::sinks::Metrics::default();
        // With every sink off nothing is recorded, so nothing is counted: no samples, rather
        // than zeros a dashboard would read as no traffic and no errors.
        let outcomes = if self.inner.tx.is_some() {
            &self.inner.outcomes.0[..]
        } else {
            &[]
        };
        for (outcome, count) in Outcome::ALL.iter().zip(outcomes) {
            out.counter(
                "requests",
                "Requests routed (each with a record), by outcome: success, upstream_error, \
                 router_error, stream_failed, client_disconnected.",
                &[("outcome", outcome.as_str())],
                count.load(Ordering::Relaxed),
            );
        }
        out.counter(
            "records_dropped",
            "Request records lost because the recorder's queue was full.",
            &[],
            self.dropped(),
        );
        out.counter(
            "record_bodies_dropped",
            "Request records whose bodies were left out because sinks held too many bytes.",
            &[],
            self.bodies_dropped(),
        );
        for sink in &self.inner.sinks {
            sink.metrics(&mut out);
        }
        out
    }
}

/// Records by their final outcome, in [`Outcome::ALL`]'s order: counted on the recorder's
/// task once a record is read whole (a `{"error": ...}` under a 200 is an upstream error only
/// then), or on the request path for one the full queue dropped.
#[derive(Debug, Default)]
struct OutcomeCounts([AtomicU64; 5]);

impl OutcomeCounts {
    fn count(&self, outcome: Outcome) {
        let at = Outcome::ALL.iter().position(|o| *o == outcome);
        if let Some(count) = at.and_then(|i| self.0.get(i)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Records lost on their way to the sinks: counted on the request path, where nothing more
/// may be done; the recorder's task warns about them ([`LossLog`]).
#[derive(Debug, Default)]
struct Losses {
    /// Records dropped because the queue was full.
    records: AtomicU64,
    /// Records whose bodies were left out because the body budget was spent.
    bodies: AtomicU64,
}

/// The recorder task's warnings about [`Losses`]: at most one line per kind per interval,
/// and every loss in one (see [`crate::sinks::loss`]).
struct LossLog {
    losses: Arc<Losses>,
    records: LossWarnings,
    bodies: LossWarnings,
}

impl LossLog {
    fn new(losses: Arc<Losses>, interval: std::time::Duration) -> Self {
        Self {
            losses,
            records: LossWarnings::every(interval),
            bodies: LossWarnings::every(interval),
        }
    }

    fn warn(&mut self, now: Instant) {
        let records = self.losses.records.load(Ordering::Relaxed);
        if let Some(lost) = self.records.due(records, now) {
            tracing::warn!(
                dropped = lost.total,
                since_last_warning = lost.new,
                "record queue full: request records dropped"
            );
        }
        let bodies = self.losses.bodies.load(Ordering::Relaxed);
        if let Some(lost) = self.bodies.due(bodies, now) {
            tracing::warn!(
                records = lost.total,
                since_last_warning = lost.new,
                "telemetry is behind: bodies left out of request records (usage kept)"
            );
        }
    }

    /// When [`Self::warn`] should run next.
    fn next_check(&self, now: Instant) -> Instant {
        let records = self.losses.records.load(Ordering::Relaxed);
        let bodies = self.losses.bodies.load(Ordering::Relaxed);
        self.records
            .next_check(records, now)
            .min(self.bodies.next_check(bodies, now))
    }
}

impl RecorderTask {
    /// Drains queued records into the sinks, then closes each sink (flush).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.wait().await;
    }
}

/// Most records the recorder hands over before it lets the runtime run something else.
const MAX_BATCH: usize = 1024;

async fn run_recorder(
    mut rx: mpsc::Receiver<Box<RequestRecord>>,
    (sinks, budget, bodies): (Vec<Arc<dyn RecordSink>>, DecodeBudget, BodyBudget),
    stop: CancellationToken,
    mut losses: LossLog,
    outcomes: Arc<OutcomeCounts>,
) {
    let sinks = Delivering {
        sinks,
        budget,
        bodies,
        outcomes,
    };
    let mut background = BackgroundResults::default();
    let mut idle = true;
    loop {
        losses.warn(Instant::now());
        if idle {
            let check = losses.next_check(Instant::now());
            tokio::select! {
                biased;
                record = rx.recv() => match record {
                    Some(record) => deliver_completed(record, &sinks, &mut background).await,
                    None => break,
                },
                () = stop.cancelled() => break,
                // A loss warning may be due: no record needs to come for it.
                () = tokio::time::sleep_until(check.into()) => continue,
            }
            // Let records gather before taking them all: an idle router wakes this task (and
            // its thread) at most 200 times a second, not once per request. Each wake-up of
            // another thread cost a request about as much as building its record.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep(crate::sinks::BATCH_WINDOW) => {}
            }
        } else {
            // Busy: records came faster than one batch takes. Take the next batch at once
            // (a nap here would let the queue fill and drop records), after letting the
            // runtime's other tasks (exports, accepts) run.
            tokio::task::yield_now().await;
            if stop.is_cancelled() {
                break;
            }
        }
        let mut taken = 0;
        while taken < MAX_BATCH {
            match rx.try_recv() {
                Ok(record) => deliver_completed(record, &sinks, &mut background).await,
                Err(_) => break,
            }
            taken += 1;
        }
        idle = taken < MAX_BATCH;
    }
    rx.close();
    while let Some(record) = rx.recv().await {
        deliver_completed(record, &sinks, &mut background).await;
    }
    // Together: each waits for its own bound (the ledger for a lock, the request log for a
    // pipe's reader, Langfuse for its endpoint), and one after another they added up.
    futures_util::future::join_all(sinks.sinks.iter().map(|sink| sink.close())).await;
}

/// Where the recorder's task hands records, and what it reads them with.
struct Delivering {
    sinks: Vec<Arc<dyn RecordSink>>,
    /// The decode budget its decodes take from ([`Decode::AtLeastUsage`]).
    budget: DecodeBudget,
    /// What a record holds once its answer is read takes from this ([`BODY_BUDGET`]).
    bodies: BodyBudget,
    outcomes: Arc<OutcomeCounts>,
}

/// The body budget ([`BODY_BUDGET`]) as the recorder's task takes from it.
#[derive(Clone)]
struct BodyBudget {
    held: Arc<AtomicUsize>,
    limit: usize,
    losses: Arc<Losses>,
}

impl BodyBudget {
    /// What `record` came to hold as the recorder read its answer (the body decoded, the
    /// texts read from it: up to 64 MiB and 8 MiB) takes its share of the budget beside what
    /// it held when submitted; with no room for it, the bodies and texts are left out (usage
    /// kept), as for a record submitted over the budget. Uncounted, 24 compressed 40 MiB
    /// answers queued for the request log held 8 MiB of text each beside the budget's 256 MiB
    /// of bodies, and the router peaked at 575 MiB.
    fn hold_what_was_read(&self, record: &mut RequestRecord) {
        let grown = record
            .body_bytes()
            .saturating_sub(record.body_ticket.bytes());
        if record
            .body_ticket
            .grow_within(grown, &self.held, self.limit)
        {
            return;
        }
        self.losses.bodies.fetch_add(1, Ordering::Relaxed);
        record.leave_bodies_out();
    }
}

/// An answer body from this size up (or one to decode: a gzip of a few hundred kilobytes may
/// hold 256 MiB) is read for the record on a blocking thread, not on the recorder's: that
/// runtime also accepts every new connection, and seconds spent inflating and parsing one
/// answer kept every new client (and a container's health check) waiting.
const READ_ON_THE_SIDE: usize = 1024 * 1024;

/// Reads `record`'s answer ([`complete_summary`]) and hands it to the sinks ([`deliver`]):
/// the usual small answer here, a big or compressed one on a blocking thread (see
/// [`READ_ON_THE_SIDE`]).
async fn deliver_completed(
    mut record: Box<RequestRecord>,
    to: &Delivering,
    background: &mut BackgroundResults,
) {
    let (sinks, outcomes) = (&to.sinks[..], &*to.outcomes);
    let heavy = record
        .response_body
        .as_ref()
        .is_some_and(|body| body.len() >= READ_ON_THE_SIDE || record.response_encoding.is_some());
    let budget = to.budget.clone();
    let bodies = to.bodies.clone();
    let read = move |record: &mut RequestRecord| {
        complete_summary(record, Decode::AtLeastUsage(&budget));
        // Over the body budget when submitted: its answer was kept only to be read.
        if record.bodies_dropped {
            record.leave_bodies_out();
        } else {
            bodies.hold_what_was_read(record);
        }
    };
    if !heavy {
        read(&mut record);
        deliver(record, sinks, background, outcomes);
        return;
    }
    let request_id = record.request_id.clone();
    let read = tokio::task::spawn_blocking(move || {
        read(&mut record);
        record
    })
    .await;
    match read {
        Ok(record) => deliver(record, sinks, background, outcomes),
        // Reading never panics on any input (its parsers are total); were it to, the panic
        // took this record along, and this says so rather than ending the recorder.
        Err(error) => {
            tracing::error!(
                request_id,
                "reading an answer for its record failed: {error}"
            );
        }
    }
}

fn deliver(
    mut record: Box<RequestRecord>,
    sinks: &[Arc<dyn RecordSink>],
    background: &mut BackgroundResults,
    outcomes: &OutcomeCounts,
) {
    // Again, for what reading a whole answer gave (its `model`, `id`).
    record.bound_names();
    outcomes.count(record.outcome);
    if record.usage_uncounted {
        if !background.counts(&record) {
            record.response.usage = None;
        }
    } else if let Some(id) = background_generation_counted_at_once(&record) {
        background.remember(&id);
    }
    let record = Arc::new(*record);
    for sink in sinks {
        sink.accept(&record);
    }
}

/// Responses API `background: true` generations whose usage was counted, by response id.
/// Such a generation's own request usually answers at once (`"status": "queued"`, no usage);
/// its tokens are known only to the read-back that finds it done (`GET /v1/responses/<id>`,
/// or the answer to `responses/<id>/cancel`). The first such read-back counts them, later
/// ones do not, as any read-back does not (see [`RequestRecord::usage_uncounted`]). One
/// whose own request carried its usage (streamed to its `response.completed`, or answered
/// already completed) was counted there, and is remembered then: no read-back counts it.
/// Held in memory, up to [`Self::MAX`] ids: a generation read back again after a restart, or
/// after that many others, counts again. Each id is kept as a 64-bit fingerprint (keyed
/// SipHash, its key drawn at start), not as its text: the upstream picks the ids, and a
/// megabyte-long one would otherwise be held (twice) until 16,384 others pushed it out. Two
/// ids sharing a fingerprint among 16,384 is a chance of about 1 in 10^11.
#[derive(Default)]
struct BackgroundResults {
    counted: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    fingerprints: std::hash::RandomState,
}

impl BackgroundResults {
    const MAX: usize = 16 * 1024;

    /// Whether `record`, a read-back, is the first to find a background generation done:
    /// then its usage counts, and the generation's id is remembered.
    fn counts(&mut self, record: &RequestRecord) -> bool {
        let Some(id) = finished_background_generation(record) else {
            return false;
        };
        self.remember(&id)
    }

    /// Remembers that generation `id`'s usage was counted (forgetting the oldest past
    /// [`Self::MAX`]); false when it was remembered already.
    fn remember(&mut self, id: &str) -> bool {
        let fingerprint = std::hash::BuildHasher::hash_one(&self.fingerprints, id);
        if !self.counted.insert(fingerprint) {
            return false;
        }
        if self.order.len() == Self::MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.counted.remove(&oldest);
            }
        }
        self.order.push_back(fingerprint);
        true
    }
}

/// The id of the Responses API generation `record` made, when its request asked for
/// `background: true` and its answer already carried the usage: streamed (to its
/// `response.completed`), or answered done rather than queued. Its tokens count in this
/// record, so no read-back of it may count them again. `None` for any other request (one
/// answered queued, without usage, is owed its usage by its first read-back done).
fn background_generation_counted_at_once(record: &RequestRecord) -> Option<String> {
    if record.endpoint != "/responses" || record.response.usage.is_none() {
        return None;
    }
    let id = record.response.id.as_deref()?;
    asked_for_background(record).then(|| id.to_owned())
}

/// Whether `record`'s request body has `"background": true` at its top level: read where the
/// proxy found the member ([`RequestRecord::request_layout`]), or, without a layout (a key
/// with an escape), parsed. A body left out ([`RequestRecord::bodies_dropped`]) says no.
fn asked_for_background(record: &RequestRecord) -> bool {
    let body = &record.request_body;
    if let Some(layout) = &record.request_layout {
        let at = |range: &std::ops::Range<u32>| {
            let start = usize::try_from(range.start).ok()?;
            let end = usize::try_from(range.end).ok()?;
            body.get(start..end)
        };
        // The last one, as JSON parsers read a duplicate key.
        return layout
            .iter()
            .rev()
            .find(|(key, _)| at(key) == Some(b"background".as_slice()))
            .is_some_and(|(_, value)| at(value).map(<[u8]>::trim_ascii) == Some(b"true"));
    }
    #[derive(Deserialize)]
    struct Request {
        #[serde(default)]
        background: Option<bool>,
    }
    // A list is no request (see `crate::json_object`): `[true]` asked for nothing.
    crate::json_object::from_object_slice::<Request>(body)
        .is_some_and(|request| request.background == Some(true))
}

/// The id of the Responses API generation `record`'s answer holds, when that is a
/// `background: true` one that is over (completed, incomplete, failed or cancelled) and
/// reports usage; `None` for any other answer.
fn finished_background_generation(record: &RequestRecord) -> Option<String> {
    #[derive(Deserialize)]
    struct Generation<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        object: Option<Cow<'a, str>>,
        #[serde(default)]
        background: Option<bool>,
        status: Option<Cow<'a, str>>,
    }
    if record.response.usage.is_none() || !record.response_is_json {
        return None;
    }
    let path = record
        .endpoint
        .strip_prefix("GET ")
        .unwrap_or(&record.endpoint);
    if !path.starts_with("/responses/") {
        return None;
    }
    let generation: Generation<'_> =
        crate::json_object::from_object_slice(record.response_body.as_deref()?)?;
    let over = matches!(
        generation.status.as_deref(),
        Some("completed" | "incomplete" | "failed" | "cancelled")
    );
    (generation.background == Some(true)
        && over
        && generation.object.as_deref() == Some("response"))
    .then(|| generation.id.into_owned())
}

/// What a record says of an answer body it does not keep (audio, or any body that is not
/// text): `<audio/mpeg, 48213 bytes>`. `kind` is its content type (or `binary`), `bytes` what
/// was relayed; `declared` the length the upstream announced, shown when fewer came.
pub fn body_description(kind: &str, bytes: u64, declared: Option<u64>) -> String {
    match declared {
        Some(declared) if declared != bytes => format!("<{kind}, {bytes} of {declared} bytes>"),
        _ => format!("<{kind}, {bytes} bytes>"),
    }
}

/// How [`complete_summary`] may decode a compressed answer for its record.
#[derive(Clone, Copy)]
enum Decode<'a> {
    /// Within the shared decode budget only, as every decode on the request path is (many
    /// run there at once): an answer it has no room for is not read, and its record says why.
    Within(&'a DecodeBudget),
    /// On the recorder's task, one record at a time: within the budget, the decoded body
    /// the record keeps holding its share until the last sink lets the record go (records
    /// queued in a slow sink holding 64 MiB each were bounded by nothing). When the budget is
    /// spent, the answer is decoded once more outside it for its usage and text, and the
    /// decoded body is not kept: the ledger's usage must not be lost to other requests'
    /// decodes, and waiting for room could wait on the records queued behind this one, which
    /// hold some of it. So the recorder holds at most one answer's decode
    /// ([`crate::content_coding::MAX_DECODED_BODY`]) beyond the budget, while it reads it.
    AtLeastUsage(&'a DecodeBudget),
}

/// `body` in `coding` decoded for its record as `decode` allows, and whether the record may
/// keep what it decoded to (see [`Decode::AtLeastUsage`]). Data cut short or corrupt only
/// after one whole JSON document (a gzip answer without its trailer) is read as the client
/// read it, not as a failure.
fn decode_for_record(
    coding: &str,
    body: &[u8],
    decode: Decode<'_>,
) -> Result<(Bytes, bool), crate::content_coding::DecodeError> {
    use crate::content_coding::{Broken, charged_bytes, decode_partly, decode_within};
    let readable = |decoded: Result<Vec<u8>, Broken>| match decoded {
        Ok(decoded) => Ok(decoded),
        Err(broken) if broken.holds_one_json_document() => Ok(broken.decoded),
        Err(broken) => Err(broken),
    };
    let limit = crate::content_coding::MAX_DECODED_BODY;
    let (Decode::Within(budget) | Decode::AtLeastUsage(budget)) = decode;
    let (decoded, charge) = decode_within(coding, body, limit, budget);
    match readable(decoded) {
        Ok(decoded) => Ok((charged_bytes(decoded, charge), true)),
        Err(broken) if broken.is_over_budget() && matches!(decode, Decode::AtLeastUsage(_)) => {
            drop(charge);
            match readable(decode_partly(coding, body, limit)) {
                Ok(decoded) => Ok((Bytes::from(decoded), false)),
                Err(broken) => Err(broken.error),
            }
        }
        Err(broken) => Err(broken.error),
    }
}

/// Whole (non-streamed) answers are parsed here, on the recorder task, not while the client
/// waits. One the upstream compressed (gzip, deflate, br, zstd) is decoded here first, as
/// `decode` allows, and the record keeps it decoded: its usage and text reach the sinks as an
/// uncompressed answer's would (its decoded body, when the decode budget had room for it).
/// One that is neither JSON nor text is described instead of kept (see [`describe_binary`]).
fn complete_summary(record: &mut RequestRecord, decode: Decode<'_>) {
    // A whole body is read whatever the request asked for: an upstream may answer a stream
    // request with one JSON document. A streamed answer has no body; the tee read it.
    let Some(body) = &record.response_body else {
        return;
    };
    if !record.status.is_some_and(|s| (200..300).contains(&s)) {
        return;
    }
    let mut kept = true;
    let decoded = match (&record.response_encoding, record.response_decoded.take()) {
        (None, _) => None,
        (Some(_), Some(Decoded::Read(decoded))) => Some(decoded),
        (Some(_), Some(Decoded::Unread(error))) => {
            undecodable(record, &error);
            return;
        }
        (Some(coding), None) => match decode_for_record(coding, body, decode) {
            Ok((decoded, may_keep)) => {
                kept = may_keep;
                Some(decoded)
            }
            Err(error) => {
                undecodable(record, &error);
                return;
            }
        },
    };
    let readable = decoded.as_deref().unwrap_or(body);
    if readable.trim_ascii().is_empty() {
        empty_whole_answer(record);
        if let Some(decoded) = decoded {
            keep_decoded(record, decoded, (kept, false));
        }
        return;
    }
    // The escape of a lone UTF-16 surrogate (see `usage::lone_surrogates_replaced`) is
    // repaired in the kept body too, as a stray byte is (see [`repaired_json`]): the request
    // log's line stays readable by strict JSON readers, which refuse the escape.
    let repaired = std::str::from_utf8(readable)
        .ok()
        .and_then(crate::usage::lone_surrogates_replaced)
        .map(Bytes::from);
    let unrepaired = decoded.clone();
    let decoded = repaired.or(decoded);
    let readable = decoded.as_deref().unwrap_or(body);
    // The texts are bounded as they are read, cut short of the record's secrets: the record
    // keeps the body itself, so they need not be whole too.
    let guard = record.cut_guard();
    let (summary, decoded) = match summarize_json_body(readable, &guard) {
        Some(summary) => (summary, decoded),
        None => match repaired_json(readable, &guard) {
            Some((summary, repaired)) => (summary, Some(repaired)),
            // A streamed body kept beside its note (see `proxy::stream`'s `Unread::copy`):
            // not JSON after all, so the note stands for it.
            None if !record.response.content.is_empty() => {
                record.response_body = None;
                record.response_encoding = None;
                return;
            }
            None => {
                let text = std::str::from_utf8(readable).is_ok();
                // Text that is not JSON has no escapes: kept as it came.
                if let (true, Some(decoded)) = (text, unrepaired) {
                    // A compressed text answer (srt, plain text) is kept decoded, as a
                    // compressed JSON one is: sinks show text, not its gzip.
                    keep_decoded(record, decoded, (kept, true));
                    return;
                }
                describe_binary(record, text);
                return;
            }
        },
    };
    // `{"error": {...}}` under a 200: relayed as it came, recorded as the upstream's error.
    // Not in a file's content (`GET /files/<id>/content`): that is the user's data, and a
    // batch's output file of one request whose line reports an error is one such document.
    // Nor in a resource a `GET` reads back (it has an `id`: a failed fine-tuning job, a failed
    // background response): it reports its own state, and the read succeeded; polled, each
    // read counted as one more error.
    let read_back = record.endpoint.starts_with("GET ");
    let users_data = read_back && record.endpoint.ends_with("/content");
    let resource = read_back && summary.id.is_some();
    if let Some(reported) = summary.error.as_ref().filter(|_| !users_data && !resource) {
        if record.outcome == Outcome::Success {
            record.outcome = Outcome::UpstreamError;
            record.error = Some(bounded_error(reported, &record.cut_guard()));
        }
    }
    // One JSON document, whatever way it came (a streamed body relayed unread included).
    record.answered_whole = true;
    // Embedding vectors or base64 images: the note in the content stands for them, and no
    // sink shows megabytes of them.
    if summary.body_noted {
        record.response = summary;
        record.response_body = None;
        record.response_encoding = None;
        return;
    }
    record.response = summary;
    record.response_is_json = true;
    if let Some(decoded) = decoded {
        keep_decoded(record, decoded, (kept, false));
    }
}

/// A whole 2xx answer with an empty body (decoded, white space aside): the upstream's
/// failure to answer a request that named a model, which the client got as it came (see
/// [`RequestRecord::empty_answer`]). A `204 No Content` says it has nothing to say, and a
/// read-back's answer counts nothing: those stay plain successes.
fn empty_whole_answer(record: &mut RequestRecord) {
    let status = record.status.unwrap_or_default();
    if record.usage_uncounted || status == 204 || record.outcome != Outcome::Success {
        return;
    }
    record.empty_answer = true;
    record.error = Some(format!("the upstream answered {status} with an empty body"));
}

/// Most bytes of a model name, answer id or finish reason a record keeps (a real one is
/// under a hundred): past it the name is cut, saying how long it was, as an error is. The
/// request log and the ledger keep 1,024 characters of it ([`crate::sinks::MAX_NAME_CHARS`]),
/// which 4 KiB always holds, so what they write is as before.
pub const MAX_RECORDED_NAME: usize = 4096;

/// `name` cut to [`MAX_RECORDED_NAME`] bytes with its length said, short of any of `guard`'s
/// secrets (so a name cut once is not cut again).
fn bound_name(name: &mut String, guard: &CutGuard) {
    if name.len() <= MAX_RECORDED_NAME {
        return;
    }
    let said = format!("… ({} bytes)", name.len());
    let mut cut = MAX_RECORDED_NAME - said.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut = guard.safe_cut(name, "", cut);
    name.truncate(cut);
    name.push_str(&said);
}

/// Most characters of an upstream's error message a record keeps: the body it came in is
/// kept whole beside it (the request log writes both), so a 50 MB error message was written
/// twice. The ledger keeps 1,000 and a span's status message 4 KiB of it anyway.
pub const MAX_ERROR_CHARS: usize = 8192;

/// An upstream's error message as a record keeps it: cut past [`MAX_ERROR_CHARS`], saying
/// how long it was. The cut never ends inside one of `guard`'s secrets (an upstream may echo
/// the key it was sent anywhere in a long message): it moves back to the secret's start.
pub fn bounded_error(message: &str, guard: &CutGuard) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        None => message.to_owned(),
        Some((cut, _)) => {
            let cut = guard.safe_cut(message, "", cut);
            format!("{}… ({} bytes)", &message[..cut], message.len())
        }
    }
}

/// A whole answer whose coding could not be undone for its record. One in gzip, deflate, br or
/// zstd whose data is corrupt or cut short (before the end of one whole JSON document, else
/// it is read as that): relayed as it came (the client got those bytes),
/// but the upstream's error, as the same fault in a compressed stream is (`proxy::stream`'s
/// `upstream_bad_encoding`), not a success with no usage. One that decodes past
/// [`crate::content_coding::MAX_DECODED_BODY`] is not read: its record says so in place of
/// its text (`<gzip, 306006 bytes, over 64 MiB decoded: not read>`), its usage unknown. A
/// coding the router does not decode (`compress`) says nothing of the upstream's answer:
/// the record describes its bytes.
fn undecodable(record: &mut RequestRecord, error: &crate::content_coding::DecodeError) {
    use crate::content_coding::DecodeError;
    match error {
        DecodeError::Corrupt { .. } | DecodeError::Truncated(_) => {
            if record.outcome == Outcome::Success {
                record.outcome = Outcome::UpstreamError;
                record.error = Some(format!(
                    "the upstream's compressed answer could not be decoded: {error}"
                ));
            }
        }
        DecodeError::TooLarge(_) | DecodeError::OverBudget(_) => {
            let coding = record.response_encoding.take().unwrap_or_default();
            let coding = crate::content_coding::named(&coding);
            let bytes = record.response_body.take().map_or(0, |body| body.len());
            let over = match error {
                DecodeError::TooLarge(limit) => {
                    format!("over {} MiB decoded: not read", limit / (1024 * 1024))
                }
                _ => format!("not decoded: {error}"),
            };
            record.response.content = match record.response.content.strip_suffix('>') {
                // The note of a body relayed unread (`<application/json, gzip, 205 bytes>`).
                Some(note) => format!("{note}, {over}>"),
                None => format!("<{coding}, {bytes} bytes, {over}>"),
            };
            return;
        }
        DecodeError::Unsupported(_) | DecodeError::TooManyCodings(_) => {}
    }
    if !record.response.content.is_empty() {
        // A body relayed unread: its note stands for it.
        record.response_body = None;
        record.response_encoding = None;
        return;
    }
    // Read as it came: bytes that are not text are described.
    describe_binary(record, false);
}

/// Keeps `decoded` as the record's body in place of the compressed one it came as; or, when
/// it may not be `kept` (decoded outside the decode budget, see [`Decode::AtLeastUsage`]),
/// neither: what was read from it (usage, bounded texts) stands for it, and an answer that is
/// `text` (not JSON: nothing was read from it) is noted (`<text, 48213 bytes decoded from gzip: not
/// kept, the decode budget was spent>`).
fn keep_decoded(record: &mut RequestRecord, decoded: Bytes, (kept, text): (bool, bool)) {
    if !kept {
        let coding = record.response_encoding.take().unwrap_or_default();
        record.response_body = None;
        record.response_is_json = false;
        if text {
            let coding = crate::content_coding::named(&coding);
            record.response.content = format!(
                "<text, {} bytes decoded from {coding}: not kept, the decode budget was spent>",
                decoded.len()
            );
        }
        return;
    }
    // Its share of the body budget is taken once the whole answer is read (see
    // `BodyBudget::hold_what_was_read`).
    record.response_body = Some(decoded);
    record.response_encoding = None;
}

/// A JSON answer that only a stray byte keeps from parsing: a byte-order mark before it, a
/// byte that is not UTF-8 (an upstream's Latin-1 `é`), or a raw control character in a
/// string (see [`crate::usage::raw_controls_escaped`]). Its usage and text must not be lost
/// for one character, so it is read, and kept for the record, without the mark, with U+FFFD
/// in place of each bad byte and each control escaped (the client got the bytes as they
/// came). `None` when none of these was the trouble.
fn repaired_json(body: &[u8], guard: &CutGuard) -> Option<(ResponseSummary, Bytes)> {
    let unmarked = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = String::from_utf8_lossy(unmarked);
    let text = match crate::usage::raw_controls_escaped(&text) {
        Some(escaped) => std::borrow::Cow::Owned(escaped),
        None => text,
    };
    if unmarked.len() == body.len() && matches!(text, std::borrow::Cow::Borrowed(_)) {
        return None;
    }
    let summary = summarize_json_body(text.as_bytes(), guard)?;
    Some((summary, Bytes::from(text.into_owned())))
}

/// A 2xx whole answer that is not JSON: kept when it is `text` (sinks show it); otherwise
/// (audio without a Content-Type, say) its record says what it was, as a binary answer
/// relayed as it arrives says (see `proxy::stream`): the content is
/// `<binary, 48213 bytes>` (with the Content-Encoding it came in, if any), and the bytes,
/// which no sink shows, are not kept.
fn describe_binary(record: &mut RequestRecord, text: bool) {
    let Some(body) = record.response_body.as_ref().filter(|_| !text) else {
        return;
    };
    let kind = match &record.response_encoding {
        Some(coding) => format!("binary, {}", crate::content_coding::named(coding)),
        None => "binary".to_owned(),
    };
    record.response.content = body_description(&kind, body.len() as u64, None);
    record.response_body = None;
    record.response_encoding = None;
}

/// What is said of a stream the upstream closed early, cleanly (see
/// [`RequestRecord::usage_partial`]): it names the end marker of the endpoint's format, the
/// event that would have brought the usage.
pub fn unterminated(endpoint: &str) -> String {
    let marker = match endpoint {
        "/messages" => "message_stop",
        // Anthropic's legacy Text Completions: its last `completion` event has one.
        "/complete" => "a stop_reason",
        "/responses" => "response.completed",
        "/audio/speech" => "speech.audio.done",
        "/audio/transcriptions" => "transcript.text.done",
        "/images/generations" => "image_generation.completed",
        "/images/edits" => "image_edit.completed",
        _ => "data: [DONE]",
    };
    format!("the upstream closed the stream before {marker} and its usage; token counts unknown")
}

/// Builds a record while a request runs and guarantees it is handed over exactly once.
pub struct RecordGuard {
    record: Option<Box<RequestRecord>>,
    recorder: Recorder,
}

impl RecordGuard {
    pub fn new(record: RequestRecord, recorder: Recorder) -> Self {
        recorder.inner.live.fetch_add(1, Ordering::AcqRel);
        Self {
            record: Some(Box::new(record)),
            recorder,
        }
    }

    /// [`Self::new`] with the record built only when some sink will read it: with every sink
    /// off, a request allocates no record at all.
    pub fn start(recorder: Recorder, build: impl FnOnce() -> RequestRecord) -> Self {
        if !recorder.is_enabled() {
            return Self {
                record: None,
                recorder,
            };
        }
        Self::new(build(), recorder)
    }

    /// Whether the record will reach any sink; when not, it need not carry bodies.
    pub fn is_recording(&self) -> bool {
        self.recorder.is_enabled()
    }

    /// Access to the record being built; `None` only after `finish`.
    pub fn record_mut(&mut self) -> Option<&mut RequestRecord> {
        self.record.as_deref_mut()
    }

    /// Hands the record over with its final outcome.
    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(mut record) = self.record.take() {
            record.outcome = outcome;
            record.ended_at = record.now();
            self.recorder.submit_boxed(record);
            self.recorder.inner.live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for RecordGuard {
    /// The client went away (the handler future or the response body was dropped): hand over
    /// what was seen, marked as a disconnect.
    fn drop(&mut self) {
        if let Some(record) = self.record.as_deref_mut() {
            if record.error.is_none() {
                record.error = Some("client disconnected before the answer was complete".into());
            }
        }
        self.finish(Outcome::ClientDisconnected);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::routing::RouteMode;

    pub(crate) fn sample() -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            user: None,
            provider: "p".into(),
            alias: Some("p".into()),
            mode: RouteMode::Alias,
            endpoint: "/chat/completions".into(),
            requested_model: "[p]m".into(),
            upstream_model: "m".into(),
            stream: false,
            request_body: Bytes::from_static(b"{}"),
            request_layout: None,
            request_is_form: false,
            started_at: SystemTime::now(),
            started_mono: Instant::now(),
            response_started_at: None,
            first_token_at: None,
            ended_at: SystemTime::now(),
            status: Some(200),
            outcome: Outcome::Success,
            error: None,
            response_body: Some(Bytes::from_static(
                br#"{"model":"m-1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            )),
            response_is_json: false,
            response_encoding: None,
            response_decoded: None,
            response: ResponseSummary::default(),
            complete: true,
            secrets: Default::default(),
            keys: Default::default(),
            answered_whole: false,
            empty_answer: false,
            upstream_had_request: false,
            bodies_dropped: false,
            usage_uncounted: false,
            body_ticket: Default::default(),
        }
    }

    struct Collect(std::sync::Mutex<Vec<Arc<RequestRecord>>>);
    impl RecordSink for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }
        fn accept(&self, record: &Arc<RequestRecord>) {
            self.0.lock().expect("lock").push(record.clone());
        }
    }

    #[test]
    fn a_grown_ticket_gives_back_exactly_what_was_taken() {
        let held = Arc::new(AtomicUsize::new(0));
        for clone_held in [false, true] {
            held.fetch_add(100, Ordering::AcqRel);
            let mut ticket = BodyTicket(Some(Arc::new(TicketInner {
                bytes: 100,
                held: held.clone(),
            })));
            let clone = clone_held.then(|| ticket.clone());
            assert!(!ticket.grow_within(401, &held, 500), "no room");
            assert_eq!(held.load(Ordering::Acquire), 100, "nothing taken");
            assert!(ticket.grow_within(400, &held, 500));
            let expected = if clone_held { 600 } else { 500 };
            assert_eq!(
                held.load(Ordering::Acquire),
                expected,
                "clone held: {clone_held}"
            );
            drop(clone);
            assert_eq!(held.load(Ordering::Acquire), 500);
            drop(ticket);
            assert_eq!(held.load(Ordering::Acquire), 0, "all given back");
        }
        let mut none = BodyTicket::default();
        assert!(!none.grow_within(501, &held, 500));
        assert!(none.grow_within(500, &held, 500), "a first share taken");
        assert_eq!(held.load(Ordering::Acquire), 500);
        drop(none);
        assert_eq!(held.load(Ordering::Acquire), 0);
    }

    /// A big answer is read for its record off the recorder's thread, which also accepts
    /// connections: while it is read, that runtime's other tasks run (a ticker here), where
    /// reading it in place held them all until it was done. A small one is read in place.
    #[tokio::test]
    async fn a_big_answer_is_read_off_the_recorders_thread() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut big = sample();
        let mut body = br#"{"model":"m-1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}"#.to_vec();
        body.resize(body.len() + READ_ON_THE_SIDE, b' ');
        body.push(b'}');
        big.response_body = Some(Bytes::from(body));
        for (record, read_aside) in [(sample(), false), (big, true)] {
            let sink = Arc::new(Collect(Default::default()));
            let sinks: Vec<Arc<dyn RecordSink>> = vec![sink.clone()];
            let before = ticks.load(Ordering::Relaxed);
            let to = Delivering {
                sinks,
                budget: DecodeBudget::default(),
                bodies: BodyBudget {
                    held: Arc::default(),
                    limit: BODY_BUDGET,
                    losses: Arc::default(),
                },
                outcomes: Arc::default(),
            };
            deliver_completed(Box::new(record), &to, &mut BackgroundResults::default()).await;
            let ticked = ticks.load(Ordering::Relaxed) > before;
            assert_eq!(ticked, read_aside, "the runtime ran other tasks meanwhile");
            let got = sink.0.lock().expect("lock").clone();
            assert_eq!(got[0].response.usage.as_ref().map(|u| u.total), Some(3));
        }
        ticker.abort();
    }

    /// A wall-clock step during a request (NTP, a VM resumed) moves none of its times: the
    /// end is the start plus the time elapsed on the monotonic clock. Read off the wall
    /// clock, a step of an hour forward made a 0 s request an hour long.
    #[tokio::test]
    async fn a_wall_clock_step_during_a_request_moves_none_of_its_times() {
        let sink = Arc::new(Collect(Default::default()));
        let (recorder, task) = Recorder::start(vec![sink.clone() as Arc<dyn RecordSink>]);
        let hour = std::time::Duration::from_secs(3600);
        // The wall clock read an hour behind at the start, then stepped forward.
        let started_at = SystemTime::now() - hour;
        let mut guard = RecordGuard::start(recorder.clone(), || {
            let mut record = sample();
            record.started_at = started_at;
            record.started_mono = Instant::now();
            record
        });
        guard.finish(Outcome::Success);
        assert!(recorder.wait_idle(std::time::Duration::from_secs(10)).await);
        drop(recorder);
        task.shutdown().await;
        let got = sink.0.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        assert!(
            got[0].ended_at >= started_at,
            "the end is not before the start"
        );
        assert!(
            got[0].latency() < std::time::Duration::from_secs(60),
            "{:?}",
            got[0].latency()
        );
    }

    /// A whole answer's texts are bounded as a stream's are: its record keeps the body whole
    /// (what the request log writes), and at most [`crate::usage::MAX_STREAM_TEXT`] of the
    /// content beside it, ending in the marker, rather than a second copy of megabytes.
    #[test]
    fn a_whole_answers_texts_are_bounded_and_its_body_kept_whole() {
        let max = crate::usage::MAX_STREAM_TEXT;
        let marker = crate::sinks::generation::TRUNCATION_MARKER;
        let content = "é".repeat(max / 2 + 10);
        let body = serde_json::json!({"model": "m-1", "choices": [{"message":
            {"content": content, "refusal": "no"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
        .to_string();
        let mut record = sample();
        record.response_body = Some(Bytes::from(body.clone()));
        complete_summary(&mut record, Decode::AtLeastUsage(&DecodeBudget::default()));
        assert_eq!(record.response_body.as_deref(), Some(body.as_bytes()));
        assert!(record.response_is_json);
        let kept = &record.response.content;
        assert!(kept.ends_with(marker), "cut, and marked");
        assert!(kept.len() <= max + marker.len());
        assert!(content.starts_with(kept.trim_end_matches(marker)));
        assert_eq!(record.response.refusal, "", "nothing after the cut");
        assert_eq!(record.response.usage.as_ref().map(|u| u.total), Some(3));
        assert_eq!(record.response.finish_reason.as_deref(), Some("stop"));
    }

    /// A chat answer whose content is `size` bytes, with usage, in gzip.
    fn gzip_answer(size: usize) -> (Vec<u8>, Vec<u8>) {
        use std::io::Write as _;
        let answer = serde_json::json!({"model": "m-1", "choices": [{"message":
            {"content": "a".repeat(size)}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
        .to_string()
        .into_bytes();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&answer).expect("gzip");
        (answer, encoder.finish().expect("gzip"))
    }

    fn gzip_record(compressed: &[u8]) -> RequestRecord {
        let mut record = sample();
        record.response_body = Some(Bytes::copy_from_slice(compressed));
        record.response_encoding = Some("gzip".into());
        record
    }

    async fn delivered(sink: &Collect, n: usize) -> Vec<Arc<RequestRecord>> {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while sink.0.lock().expect("lock").len() < n {
            assert!(Instant::now() < deadline, "not delivered");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        sink.0.lock().expect("lock").clone()
    }

    /// The recorder's decode takes from the shared budget, and the decoded body its record
    /// keeps holds its share until the sink lets the record go. With the budget spent (by
    /// the first record, still held), the next answer is still read for its usage and text,
    /// decoded outside the budget, and its decoded body is not kept: the budget stands where
    /// it stood.
    #[tokio::test]
    async fn the_recorder_decodes_within_the_budget_and_reads_usage_past_it() {
        let budget = DecodeBudget::new(8 << 20);
        let sink = Arc::new(Collect(Default::default()));
        let budgets = Budgets {
            decode: budget.clone(),
            ..Budgets::default()
        };
        let (recorder, task) = Recorder::start_with_budgets(vec![sink.clone()], budgets);
        let (answer, compressed) = gzip_answer(3 << 20);
        recorder.submit(gzip_record(&compressed));
        let first = delivered(&sink, 1).await;
        assert_eq!(first[0].response_body.as_deref(), Some(&answer[..]));
        drop(first);
        let held = budget.held();
        assert!(held >= answer.len(), "{held}");

        let (_, compressed) = gzip_answer(6 << 20);
        recorder.submit(gzip_record(&compressed));
        let got = delivered(&sink, 2).await;
        let second = &got[1];
        assert_eq!(second.response.usage.as_ref().map(|u| u.total), Some(3));
        assert!(second.response.content.starts_with("aaaa"));
        assert!(second.response_body.is_none() && second.response_encoding.is_none());
        assert!(!second.response_is_json);
        assert_eq!(budget.held(), held, "nothing more held");

        drop(got);
        sink.0.lock().expect("lock").clear();
        assert_eq!(budget.held(), 0, "given back with the record");
        task.shutdown().await;
    }

    /// Over the body budget, the answer stays with its record for the recorder to read (the
    /// read budget holds it meanwhile), not read as the record is submitted; past the read
    /// budget too, it is read at once, within the decode budget only.
    #[tokio::test]
    async fn over_the_body_budget_an_answer_is_read_by_the_recorder() {
        let (_, compressed) = gzip_answer(1 << 20);
        let sink = Arc::new(Collect(Default::default()));
        let budgets = Budgets {
            bodies: 1,
            reads: compressed.len(),
            decode: DecodeBudget::new(64 << 20),
        };
        let (recorder, task) = Recorder::start_with_budgets(vec![sink.clone()], budgets);
        let mut record = gzip_record(&compressed);
        recorder.take_body_budget(&mut record);
        assert!(record.bodies_dropped && record.request_body.is_empty());
        assert!(record.response.usage.is_none(), "not read on submitting");
        assert!(record.response_body.is_some(), "kept for the recorder");
        assert_eq!(
            recorder.inner.read_bytes.load(Ordering::Acquire),
            compressed.len()
        );
        // The read budget is spent: this one is read at once.
        let mut inline = gzip_record(&compressed);
        recorder.take_body_budget(&mut inline);
        assert!(inline.bodies_dropped && inline.response_body.is_none());
        assert_eq!(inline.response.usage.as_ref().map(|u| u.total), Some(3));

        recorder.submit_boxed(Box::new(record));
        let got = delivered(&sink, 1).await;
        assert!(got[0].bodies_dropped && got[0].response_body.is_none());
        assert_eq!(got[0].response.usage.as_ref().map(|u| u.total), Some(3));
        assert!(got[0].response.content.is_empty(), "texts left out");
        assert_eq!(recorder.inner.read_bytes.load(Ordering::Acquire), 0);
        task.shutdown().await;
    }

    /// What the recorder reads from an answer takes from the body budget too: the texts a
    /// whole answer's record keeps beside its body (up to 8 MiB), and a compressed answer's
    /// decoded body. With no room for them, the record goes on without its bodies and texts,
    /// its usage kept; uncounted, records queued for a slow request log held 8 MiB of text
    /// each past the budget (24 compressed 40 MiB answers: 575 MiB).
    #[tokio::test]
    async fn what_the_recorder_reads_from_an_answer_counts_in_the_body_budget() {
        let answer = |size: usize| {
            let mut record = sample();
            let body = serde_json::json!({"model": "m-1", "choices": [{"message":
                {"content": "a".repeat(size)}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
            record.response_body = Some(Bytes::from(body.to_string()));
            record
        };
        // The body fits when submitted; the body and its text together do not.
        let budget = answer(3000).body_bytes() + 1000;
        let (_, compressed) = gzip_answer(3000);
        let gzipped = gzip_record(&compressed);
        assert!(gzipped.body_bytes() < budget, "fits compressed");
        for (record, what) in [(answer(3000), "texts"), (gzipped, "decoded body")] {
            let sink = Arc::new(Collect(Default::default()));
            let (recorder, task) = Recorder::start_with_budget(vec![sink.clone()], budget);
            recorder.submit(record);
            let got = delivered(&sink, 1).await;
            let record = &got[0];
            assert!(record.bodies_dropped, "{what}: kept past the budget");
            assert!(record.response_body.is_none() && record.response.content.is_empty());
            assert_eq!(record.response.usage.as_ref().map(|u| u.total), Some(3));
            assert_eq!(recorder.bodies_dropped(), 1);
            assert_eq!(recorder.body_bytes_held(), 0, "{what}: nothing held");
            drop(got);
            task.shutdown().await;
        }
        // With room for them, they are kept, and held until the sink lets the record go.
        let sink = Arc::new(Collect(Default::default()));
        let (recorder, task) = Recorder::start_with_budget(vec![sink.clone()], 2 * budget);
        recorder.submit(answer(3000));
        let got = delivered(&sink, 1).await;
        assert!(!got[0].bodies_dropped && got[0].response.content.len() == 3000);
        assert_eq!(recorder.body_bytes_held(), got[0].body_bytes());
        drop(got);
        sink.0.lock().expect("lock").clear();
        assert_eq!(recorder.body_bytes_held(), 0);
        task.shutdown().await;
    }

    #[tokio::test]
    async fn over_the_body_budget_records_keep_usage_but_not_bodies() {
        let sink = Arc::new(Collect(Default::default()));
        let body_bytes = sample().body_bytes();
        let (recorder, task) = Recorder::start_with_budget(vec![sink.clone()], body_bytes + 10);
        recorder.submit(sample());
        recorder.submit(sample());
        task.shutdown().await;
        let got = sink.0.lock().expect("lock").clone();
        assert_eq!(got.len(), 2);
        assert!(!got[0].bodies_dropped && got[0].response_body.is_some());
        // The first record is still held by the sink, so the second found the budget spent.
        assert!(got[1].bodies_dropped);
        assert!(got[1].request_body.is_empty() && got[1].response_body.is_none());
        assert_eq!(
            got[1].response.usage.as_ref().map(|u| u.total),
            Some(3),
            "usage kept"
        );
        assert_eq!(recorder.bodies_dropped(), 1);
        // Its bodies, and the text the recorder read from its answer.
        assert_eq!(recorder.body_bytes_held(), body_bytes + "hi".len());
        assert_eq!(recorder.body_bytes_held(), got[0].body_bytes());
        sink.0.lock().expect("lock").clear();
        drop(got);
        assert_eq!(recorder.body_bytes_held(), 0, "released by the last holder");
    }

    /// Records arriving faster than one batch a window are taken batch after batch, without
    /// a nap between: napping after each batch capped the recorder at `MAX_BATCH` records
    /// per `BATCH_WINDOW`, under what a busy router makes, and its queue overflowed.
    #[tokio::test(start_paused = true)]
    async fn a_busy_recorder_does_not_nap_between_batches() {
        let sink = Arc::new(Collect(Default::default()));
        let (recorder, task) = Recorder::start(vec![sink.clone()]);
        let n = 5 * MAX_BATCH;
        for _ in 0..n {
            recorder.submit(sample());
        }
        let started = tokio::time::Instant::now();
        let delivered = || sink.0.lock().expect("lock").len();
        while delivered() < n && started.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(delivered(), n);
        // One nap for the first batch; the rest follow at once (the clock is paused, so this
        // is the recorder's own waiting, not the machine's speed).
        assert!(
            started.elapsed() <= crate::sinks::BATCH_WINDOW + std::time::Duration::from_millis(2),
            "took {:?} of naps",
            started.elapsed()
        );
        assert_eq!(recorder.dropped(), 0);
        task.shutdown().await;
    }

    #[tokio::test]
    async fn dropped_guard_hands_over_a_disconnect_and_shutdown_drains() {
        let sink = Arc::new(Collect(Default::default()));
        let (recorder, task) = Recorder::start(vec![sink.clone()]);
        drop(RecordGuard::new(sample(), recorder.clone()));
        let mut finished = RecordGuard::new(sample(), recorder.clone());
        finished.finish(Outcome::Success);
        drop(finished);
        task.shutdown().await;
        let got = sink.0.lock().expect("lock");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].outcome, Outcome::ClientDisconnected);
        assert!(got[0].error.is_some());
        assert_eq!(got[1].outcome, Outcome::Success);
        assert_eq!(got[1].response.content, "hi");
        assert_eq!(got[1].response.usage.as_ref().map(|u| u.total), Some(3));
    }

    /// `"background": true` is read where the proxy found it, or parsed when it kept no
    /// layout (a key with an escape): the last of duplicate keys, as JSON parsers read it.
    #[test]
    fn a_request_asks_for_background_with_its_top_level_member() {
        let asks = |body: &'static str, layout: bool| {
            let mut record = sample();
            record.request_body = Bytes::from_static(body.as_bytes());
            record.request_layout = layout.then(|| {
                crate::proxy::body::RequestView::parse_keeping_layout(body.as_bytes(), true)
                    .expect("view")
                    .layout
                    .expect("layout")
            });
            asked_for_background(&record)
        };
        for layout in [true, false] {
            assert!(asks(r#"{"model":"m","background": true }"#, layout));
            assert!(!asks(r#"{"model":"m","background":false}"#, layout));
            assert!(!asks(r#"{"model":"m","x":{"background":true}}"#, layout));
            assert!(!asks(r#"{"model":"m"}"#, layout));
        }
        assert!(asks(
            r#"{"model":"m","background":false,"background":true}"#,
            true
        ));
        assert!(asks(r#"{"model":"m","\u0062ackground":true}"#, false));
    }

    /// A body that is a list is not read by position as the object it is not (see
    /// `crate::json_object`): `[true]` asks for no background generation, and a read-back
    /// answered `["resp_1", "response", true, "completed"]` found none done.
    #[test]
    fn a_list_is_no_request_and_no_generation() {
        let mut record = sample();
        record.request_body = Bytes::from_static(b"[true]");
        assert!(!asked_for_background(&record));
        let generation = |body: &'static [u8]| {
            let mut record = sample();
            record.endpoint = "GET /responses/resp_1".into();
            record.response_is_json = true;
            record.response.usage = Some(crate::usage::Usage::default());
            record.response_body = Some(Bytes::from_static(body));
            finished_background_generation(&record)
        };
        assert_eq!(
            generation(
                br#"{"id":"resp_1","object":"response","background":true,"status":"completed"}"#
            )
            .as_deref(),
            Some("resp_1")
        );
        assert_eq!(
            generation(br#"["resp_1", "response", true, "completed"]"#),
            None
        );
    }
}
