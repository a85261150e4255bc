//! The SSE tee: upstream events go to the client as they arrive, unchanged, while a copy of
//! what passed is read into the request record. A stream the upstream compressed reaches the
//! tee already decoded ([`super::decoded`]).
//!
//! Forwarded whole events only (an incomplete event waits for its blank line, as any SSE client
//! would), so the router can drop the usage-only chunk it asked for and can put a keep-alive
//! comment or a final error event between events without splitting one. The body ends right
//! after `data: [DONE]`, or after the last event of a format that has none (Anthropic's
//! `message_stop`, the Responses API's `response.completed`: see
//! [`crate::usage::is_last_event`]; one ending in a lone `\r` waits for the upstream's next
//! bytes, for the `\n` they may begin with: see `State::AwaitingLf`); what the upstream still
//! sends after it is read off the wire in the background and discarded ([`drain_after_end`]),
//! so its connection can be used again. Dropping this stream (client gone) drops the upstream
//! response, which closes the upstream connection (so the upstream stops generating), and the
//! record guard hands over a partial record: unless the stream had already said how it ends
//! (the upstream's error event, or a format's last event that does not end the body), which
//! stays the outcome (see the `Drop` impl).
//!
//! A stream the router answered before its upstream sent its head ([`super::early`]) starts
//! in that wait: keep-alive comments until the head comes, then the upstream's events as in
//! any stream, a whole completion's as events ([`super::chunks`]), or the one error event
//! that ends it.
//!
//! A body that is not an event stream (audio, NDJSON, a coding the router cannot decode)
//! passes through chunk by chunk, unread and unchanged ([`StreamTee::relay_unread`]): it
//! keeps the upstream's Content-Length, and its record notes its type and the bytes relayed
//! (`<audio/mpeg, 48213 bytes>`) instead of keeping them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{
    StreamErrorForm, anthropic_error_data, error_body, responses_error_data, sse_event,
};
use crate::hard_stop::{HardStop, Stopped};
use crate::proxy::early::{LateFailure, LateHead};
use crate::proxy::failure_log::FailureLog;
use crate::proxy::sse::{EventSplitter, event_data};
use crate::record::{Outcome, RecordGuard};
use crate::upstream::UpstreamError;
use crate::usage::{
    EventKind, LastEvents, StreamAccumulator, classify_event, is_last_event, may_be_cut_usage_chunk,
};

/// The upstream body as a stream of chunks.
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Knobs of one stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// A comment line goes to the client after this much upstream silence.
    pub keepalive: Duration,
    /// The stream fails after this much upstream silence (`timeout_secs`).
    pub idle_timeout: Duration,
    /// The router asked for `include_usage`; the usage-only chunk is not the client's.
    pub drop_usage_chunk: bool,
    /// The upstream answered `text/event-stream`. Otherwise (NDJSON, say) the body passes
    /// through chunk by chunk, unread: no event splitting, no keep-alive comments, and a
    /// failure aborts the body instead of adding an SSE error event it could not parse.
    pub sse: bool,
    /// The form of the router's own error event (see [`StreamErrorForm`]).
    pub errors: StreamErrorForm,
    /// The events after which the endpoint's format ends, as at `[DONE]` (none for chat).
    pub last_events: LastEvents,
    /// Whether the stream comes through the proxy the environment names: its failures say
    /// so, as a whole answer's do (the proxy may be the one holding or cutting it).
    pub via: crate::upstream::Via,
}

/// Longest SSE event held while waiting for its blank line. An upstream that never ends an
/// event must not make the router buffer without limit.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// The error of a stream cut by shutdown's hard stop, and its `code` (see
/// [`crate::error::ProxyError::ShuttingDown`]).
const SHUT_DOWN: &str = "the router is shutting down; the stream was cut";
const SHUT_DOWN_CODE: &str = "server_shutting_down";

/// The error event's `code` when a compressed stream turns out corrupt or cut.
const BAD_ENCODING: &str = "upstream_bad_encoding";

/// The rest of the wait for an upstream's head, in a stream answered before it came.
pub type HeadWait = Pin<Box<dyn Future<Output = LateHead> + Send>>;

pub struct StreamTee {
    upstream: Option<UpstreamBody>,
    /// Set while the stream waits for its upstream's head ([`Self::awaiting_head`]).
    head: Option<HeadWait>,
    settings: StreamSettings,
    splitter: EventSplitter,
    accumulator: StreamAccumulator,
    guard: RecordGuard,
    /// Last time bytes arrived from upstream, or a keep-alive went out.
    last_upstream: Instant,
    last_keepalive: Instant,
    timer: Pin<Box<Sleep>>,
    /// Resolves when shutdown's grace period is over.
    hard_stop: Stopped,
    state: State,
    failures: StreamFailures,
    /// No event has been read yet: the first may open with a byte-order mark.
    at_start: bool,
    /// An event with data came (a comment alone is none): a stream that ends without one was
    /// an empty answer (see [`Self::note_if_empty`]).
    saw_event: bool,
    /// The last event was dropped (the usage-only chunk) and ended in a `\r` that was the
    /// last byte come: a `\n` opening the next event is the rest of its `\r\n`, and goes
    /// with it (see `EventSplitter`). Also set when a keep-alive comment went out after such
    /// a `\r` of a forwarded event, with the `\n` before it
    /// ([`Self::keepalive_between_events`]): the client has that `\n` already.
    dropped_cr: bool,
    /// An event longer than [`MAX_EVENT_BYTES`] came whole within one read: the stream fails
    /// as one whose event grew past it unended does, once what came before it is out. Both
    /// are checked, so the same bytes fail however the reads fall.
    oversized: bool,
    /// A body that is not SSE, relayed unread: its length and what its record says of it
    /// (see [`Self::relay_unread`]). `None` for an event stream.
    unread: Option<Unread>,
    /// The Responses API: the largest `sequence_number` of the events so far, which the
    /// router's own error event follows (see [`StreamErrorForm::Responses`]).
    last_sequence: Option<u64>,
    /// The upstream, once the body's last event went out ending in a `\r` that was the last
    /// byte come ([`State::AwaitingLf`]): read once more, for the `\n` of that `\r\n`.
    after_end: Option<UpstreamBody>,
}

/// A body relayed unread (not SSE: audio, NDJSON, a coding the router cannot decode).
struct Unread {
    /// The upstream's declared length (its Content-Length), which the client gets too.
    length: Option<u64>,
    /// What the record calls it (`audio/mpeg`), when a sink reads the record: the record
    /// then says `<audio/mpeg, 48213 bytes>` instead of keeping the bytes.
    kind: Option<String>,
    /// Bytes relayed so far.
    relayed: u64,
    /// When the first bytes of the body came: the first token of a body that is not one JSON
    /// document (audio), as a speech event stream's first audio delta is (see
    /// [`Unread::first_token`]).
    first_bytes_at: Option<std::time::Instant>,
    /// A copy of a body that may be one JSON document under another label (a stream request
    /// answered whole as `text/plain`, say, or any `GET`'s answer): kept while recording,
    /// from a first chunk that opens with `{` (any, when compressed), up to
    /// [`MAX_UNREAD_COPY`]. At the body's end the record gets it, and the recorder reads it
    /// as a whole answer when it parses (see `record::complete_summary`); the client's bytes
    /// do not change.
    copy: Option<Vec<u8>>,
    /// The body's `Content-Encoding`: the copy is kept as it came, and the recorder decodes
    /// it as a whole answer's.
    coding: Option<String>,
}

/// Most bytes of a body relayed unread kept to be read as a whole JSON answer (see
/// [`Unread::copy`]); a longer one keeps only its note.
const MAX_UNREAD_COPY: usize = 4 * 1024 * 1024;

impl Unread {
    /// Notes what arrived: the time of the first bytes, and the copy (see [`Self::keep`]).
    fn arrived(&mut self, chunk: &[u8]) {
        if self.first_bytes_at.is_none() && !chunk.is_empty() {
            self.first_bytes_at = Some(std::time::Instant::now());
        }
        self.keep(chunk);
        self.relayed += chunk.len() as u64;
    }

    /// The body's first token: when its first bytes came, unless it may still be one JSON
    /// document (a copy is kept for the recorder, see [`Self::copy`]): a whole answer has no
    /// first token of its own, its completion started when it arrived.
    fn first_token(&self) -> Option<std::time::Instant> {
        self.first_bytes_at.filter(|_| self.copy.is_none())
    }

    /// Takes `chunk` into the copy, if one is kept: the first chunk decides whether the body
    /// may be JSON at all (so an NDJSON or text stream is copied only when it opens so).
    fn keep(&mut self, chunk: &[u8]) {
        let Some(copy) = &mut self.copy else { return };
        if chunk.is_empty() {
            return;
        }
        // A byte-order mark may come first, as before any JSON answer (see
        // `record::repaired_json`).
        let opening = chunk.strip_prefix(BOM).unwrap_or(chunk).trim_ascii_start();
        if self.relayed == 0 && self.coding.is_none() && opening.first() != Some(&b'{') {
            self.copy = None;
            return;
        }
        if copy.len() + chunk.len() > MAX_UNREAD_COPY {
            self.copy = None;
            return;
        }
        copy.extend_from_slice(chunk);
    }
}

/// UTF-8's byte-order mark, which may open an event stream (SSE clients skip it).
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where a stream that breaks off is logged (see [`FailureLog`]), and as which request.
pub struct StreamFailures {
    pub log: Arc<FailureLog>,
    pub request_id: String,
    /// The configured keys, taken out of the upstream's error events (see
    /// [`super::without_echoed_keys`]).
    pub redactor: crate::sinks::redact::Redactor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Answered before the upstream: the first poll sends a keep-alive comment (with the
    /// head, as far as the server writes them together).
    Opening,
    /// Waiting for the upstream's head: keep-alive comments meanwhile.
    AwaitingHead,
    Streaming,
    /// `[DONE]` or a format's last event forwarded ([`EventKind::End`]) ending in a `\r` that
    /// was the last byte come: the upstream's next bytes tell whether a `\n` completes it
    /// (its blank line's `\r\n` cut between two reads) or not (the upstream ended its stream
    /// with a lone `\r`). The `\n` goes to the client if it comes, nothing else does: the
    /// client's bytes are the upstream's either way. Then the body ends; the record is
    /// already finished.
    AwaitingLf,
    /// `[DONE]` or a format's last event forwarded ([`EventKind::End`]), or an error event
    /// sent: the next poll ends the body.
    Ending,
    Ended,
}

/// What every tee is made with, whichever way it starts.
struct Parts {
    settings: StreamSettings,
    guard: RecordGuard,
    hard_stop: HardStop,
    failures: StreamFailures,
}

impl StreamTee {
    pub fn new(
        upstream: UpstreamBody,
        settings: StreamSettings,
        guard: RecordGuard,
        hard_stop: HardStop,
        failures: StreamFailures,
    ) -> Self {
        let first_wake = settings.keepalive.min(settings.idle_timeout);
        let parts = Parts {
            settings,
            guard,
            hard_stop,
            failures,
        };
        Self::with(Some(upstream), None, State::Streaming, first_wake, parts)
    }

    /// A stream the router answered before its upstream sent its head: it waits for `head`
    /// (which bounds the wait by `timeout_secs`), sending a keep-alive comment at once and
    /// then every interval, and ends with one error event at shutdown's hard stop.
    /// `settings.sse` must hold: the client was told the answer is an event stream.
    pub fn awaiting_head(
        head: HeadWait,
        settings: StreamSettings,
        guard: RecordGuard,
        hard_stop: HardStop,
        failures: StreamFailures,
    ) -> Self {
        let first_wake = settings.keepalive;
        let parts = Parts {
            settings,
            guard,
            hard_stop,
            failures,
        };
        Self::with(None, Some(head), State::Opening, first_wake, parts)
    }

    fn with(
        upstream: Option<UpstreamBody>,
        head: Option<HeadWait>,
        state: State,
        first_wake: Duration,
        parts: Parts,
    ) -> Self {
        let now = Instant::now();
        let mut guard = parts.guard;
        let mut accumulator = StreamAccumulator::default();
        if let Some(record) = guard.record_mut() {
            accumulator.guard_cuts(record.cut_guard());
        }
        Self {
            upstream,
            head,
            settings: parts.settings,
            splitter: EventSplitter::default(),
            accumulator,
            guard,
            last_upstream: now,
            last_keepalive: now,
            timer: Box::pin(tokio::time::sleep_until(now + first_wake)),
            hard_stop: parts.hard_stop.stopped(),
            state,
            failures: parts.failures,
            at_start: true,
            saw_event: false,
            dropped_cr: false,
            oversized: false,
            unread: None,
            last_sequence: None,
            after_end: None,
        }
    }

    /// Marks a stream that is not SSE (`settings.sse` false), relayed unread: `length` is the
    /// upstream's declared length (its Content-Length, when it sent one: the bytes pass
    /// unchanged, so the client gets it too, see [`Self::length`]); `kind` what its record
    /// calls the body (the content type), which the record then describes with the bytes
    /// relayed (`<audio/mpeg, 48213 bytes>`) rather than keeping them.
    ///
    /// `may_be_json`: the body's label does not rule out one JSON document (`text/plain`, no
    /// Content-Type, `+json`): a copy is kept for the record then (see [`Unread::copy`]), as
    /// it came, in `coding` (its Content-Encoding) if it has one.
    pub fn relay_unread(
        &mut self,
        length: Option<u64>,
        kind: impl FnOnce() -> String,
        may_be_json: bool,
        coding: Option<String>,
    ) {
        let recording = self.guard.is_recording();
        let kind = recording.then(kind);
        self.unread = Some(Unread {
            length,
            kind,
            relayed: 0,
            first_bytes_at: None,
            copy: (recording && may_be_json).then(Vec::new),
            coding,
        });
    }

    /// The length the body will have, when known ahead: the upstream's declared one, for a
    /// body relayed unread ([`Self::relay_unread`]). Such a body goes to the client with
    /// that Content-Length rather than chunked.
    pub fn length(&self) -> Option<u64> {
        self.unread.as_ref().and_then(|unread| unread.length)
    }

    /// The record's note of a body relayed unread, in place of its bytes.
    fn unread_description(&self) -> Option<String> {
        let unread = self.unread.as_ref()?;
        let kind = unread.kind.as_deref()?;
        Some(crate::record::body_description(
            kind,
            unread.relayed,
            unread.length,
        ))
    }

    /// Waits for the upstream's head: `Ready(Some(..))` is for the client (a keep-alive
    /// comment, or the error event that ends the stream), `Ready(None)` says the upstream's
    /// event stream began (or there is nothing left to wait for): poll on in the new state.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(head) = self.head.as_mut() else {
            self.state = State::Ended;
            return Poll::Ready(None);
        };
        match head.as_mut().poll(cx) {
            Poll::Ready(LateHead::Stream {
                body,
                status,
                answered_at,
                resent,
            }) => {
                self.head = None;
                // Sent again without `stream_options`: the router asked for no usage chunk.
                self.settings.drop_usage_chunk &= !resent;
                self.upstream = Some(body);
                self.last_upstream = Instant::now();
                self.state = State::Streaming;
                if let Some(record) = self.guard.record_mut() {
                    record.response_started_at = Some(record.at(answered_at));
                    record.status = Some(status.as_u16());
                }
                Poll::Ready(None)
            }
            Poll::Ready(LateHead::Whole(answer)) => {
                self.head = None;
                self.state = State::Ending;
                Poll::Ready(Some(answer.end(&mut self.guard)))
            }
            Poll::Ready(LateHead::Failed(failure)) => {
                Poll::Ready(Some(self.end_before_head(failure)))
            }
            Poll::Pending => {
                if Pin::new(&mut self.hard_stop).poll(cx).is_ready() {
                    let failure = LateFailure::router(&super::shutting_down(), None);
                    return Poll::Ready(Some(self.end_before_head(failure)));
                }
                self.poll_keepalive(cx).map(Some)
            }
        }
    }

    /// Shutdown's hard stop came while the client took nothing of the stream (the server's
    /// write waits for room): the stream ends as any the hard stop cuts, recorded as broken
    /// by the shutdown, not as the client's leaving. The error event is dropped: that client
    /// reads nothing more. Nothing changes for a stream already ended (its record is out).
    pub fn cut_at_shutdown(&mut self) {
        match self.state {
            State::AwaitingLf | State::Ending | State::Ended => {}
            State::Opening | State::AwaitingHead => {
                let failure = LateFailure::router(&super::shutting_down(), None);
                let _ = self.end_before_head(failure);
            }
            State::Streaming => {
                let _ = self.fail(SHUT_DOWN.to_owned(), SHUT_DOWN_CODE);
            }
        }
        self.state = State::Ended;
    }

    /// Ends a stream that is still waiting for its upstream's head (dropping that wait, and
    /// with it the upstream connection).
    fn end_before_head(&mut self, failure: LateFailure) -> Bytes {
        self.head = None;
        self.state = State::Ending;
        failure.end(&mut self.guard, &self.failures, self.settings.errors)
    }

    /// A keep-alive comment after the events forwarded so far. The last of them may end in
    /// the `\r` of a `\r\n` cut between two reads, the client having that `\r` (the event
    /// went at once): the comment then begins with the `\n`, so it does not land inside the
    /// line break (`\r: keep-alive` read by a client that splits on `\r\n\r\n`), and the
    /// upstream's `\n` when it comes is dropped as already sent ([`Self::dropped_cr`]).
    fn keepalive_between_events(&mut self) -> Bytes {
        if self.splitter.ends_in_cr() && !self.dropped_cr {
            self.dropped_cr = true;
            return Bytes::from_static(b"\n: keep-alive\n\n");
        }
        Bytes::from_static(KEEPALIVE_COMMENT)
    }

    /// The next keep-alive comment, when it is due.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        loop {
            let now = Instant::now();
            let due = self.last_keepalive + self.settings.keepalive;
            if now >= due {
                self.last_keepalive = now;
                return Poll::Ready(Bytes::from_static(KEEPALIVE_COMMENT));
            }
            if due < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer.as_mut().reset(due);
            }
            ready!(self.timer.as_mut().poll(cx));
        }
    }

    /// Splits what arrived into events, reads each, and returns the bytes for the client.
    fn forward_chunk(&mut self, chunk: Bytes) -> Option<Bytes> {
        self.splitter.push(chunk);
        let mut single: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        while let Some(mut event) = self.splitter.next_event() {
            if event.len() > MAX_EVENT_BYTES {
                self.oversized = true;
                break;
            }
            if std::mem::take(&mut self.dropped_cr) && event.first() == Some(&b'\n') {
                event = event.slice(1..);
            }
            // Read as the client gets it: an error event without the keys it echoes, so its
            // message is kept for the record as a whole answer's error is (see
            // `upstream_error_body`), redacted before it is cut.
            let event = super::without_echoed_keys(&self.failures.redactor, event);
            let kind = self.observe(&event);
            let event = if kind == EventKind::UsageOnly && self.settings.drop_usage_chunk {
                self.dropped_cr = event.last() == Some(&b'\r');
                // A '\n' in front of it ends the previous event's "\r\n", cut between two
                // chunks (see `EventSplitter`): that byte is the client's.
                if event.first() != Some(&b'\n') {
                    continue;
                }
                event.slice(..1)
            } else {
                event
            };
            match (&mut single, &mut joined) {
                (None, None) => single = Some(event),
                (Some(first), None) => {
                    let mut buf = BytesMut::with_capacity(first.len() + event.len());
                    buf.extend_from_slice(first);
                    buf.extend_from_slice(&event);
                    single = None;
                    joined = Some(buf);
                }
                (_, Some(buf)) => buf.extend_from_slice(&event),
            }
            if ends_body(kind) {
                // Anything after [DONE] (or a format's last event) is not part of the answer;
                // the body ends here. A `response.failed` is recorded as the upstream's error.
                let rest = self.upstream.take();
                self.finish(Outcome::Success, None);
                self.state = State::Ending;
                match rest {
                    // Its last byte a '\r' with nothing after it yet: the '\n' of its "\r\n"
                    // may be next (see `State::AwaitingLf`).
                    Some(rest) if self.splitter.ends_in_cr() => {
                        self.after_end = Some(rest);
                        self.state = State::AwaitingLf;
                        let wait = LF_WAIT.min(self.settings.idle_timeout);
                        self.timer.as_mut().reset(Instant::now() + wait);
                    }
                    Some(rest) => drain_after_end(rest),
                    None => {}
                }
                break;
            }
        }
        joined.map(BytesMut::freeze).or(single)
    }

    /// The `\n` that completes the body's last event's `\r\n`, when the upstream's next bytes
    /// begin with it ([`State::AwaitingLf`]); `None` when they do not, when the upstream ends,
    /// or when [`LF_WAIT`] passes first. The body ends after it either way; what the upstream
    /// sends after it is drained, as after any body's end ([`drain_after_end`]).
    fn poll_lf(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(rest) = self.after_end.as_mut() else {
            return Poll::Ready(None);
        };
        let next = loop {
            match rest.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Poll::Ready(Some(Ok(chunk))) => break Some(chunk),
                // Ended, or broken: nothing is left to read.
                Poll::Ready(_) => {
                    self.after_end = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    break None;
                }
            }
        };
        if let Some(rest) = self.after_end.take() {
            drain_after_end(rest);
        }
        Poll::Ready(
            next.filter(|chunk| chunk.first() == Some(&b'\n'))
                .map(|chunk| chunk.slice(..1)),
        )
    }

    /// The upstream sent over [`MAX_EVENT_BYTES`] without ending an event.
    fn fail_event_too_long(&mut self) -> Result<Bytes, std::io::Error> {
        let message = format!(
            "the upstream sent over {} MiB without ending an SSE event; the stream was cut",
            MAX_EVENT_BYTES / (1024 * 1024)
        );
        self.fail(message, "upstream_unreachable")
    }

    /// What goes to the client of an event the upstream's body ended inside (no blank line
    /// after it): read as any event, for the record (its usage counts), then passed on as it
    /// came, but for what every event gets: the usage-only chunk the router asked for is
    /// dropped, and keys echoed in an error are taken out. A usage chunk cut short by the
    /// body's end cannot be read, so when the router asked for it, a piece of JSON that names
    /// a `usage` object is taken for it and dropped too. An SSE client discards an event the
    /// body ends inside (the WHATWG rule; the openai SDKs do), so the rest reaches no SDK,
    /// but a client that reads `data:` lines one by one gets a whole last chunk the upstream
    /// did not end, and one read by hand (curl) shows what the upstream sent. At the body's
    /// end only: nothing of this runs per chunk.
    fn unfinished_tail(&mut self, mut rest: Bytes) -> Bytes {
        // The rest of a dropped usage chunk's "\r\n" (see `dropped_cr`).
        if std::mem::take(&mut self.dropped_cr) && rest.first() == Some(&b'\n') {
            rest = rest.slice(1..);
        }
        if rest.is_empty() {
            return rest;
        }
        // Read as the client gets it (see `forward_chunk`).
        let rest = super::without_echoed_keys(&self.failures.redactor, rest);
        let kind = self.observe(&rest);
        let router_asked = self.settings.drop_usage_chunk;
        let usage_chunk = kind == EventKind::UsageOnly
            || event_data(&rest).is_some_and(|data| may_be_cut_usage_chunk(&data));
        if router_asked && usage_chunk {
            // A '\n' in front of it ends the previous event's "\r\n": that byte is the
            // client's (as in `forward_chunk`).
            return if rest.first() == Some(&b'\n') {
                rest.slice(..1)
            } else {
                Bytes::new()
            };
        }
        rest
    }

    fn observe(&mut self, event: &[u8]) -> EventKind {
        // Read without the mark (its line would not start with `data`); forwarded with it.
        let event = if std::mem::take(&mut self.at_start) {
            event.strip_prefix(BOM).unwrap_or(event)
        } else {
            event
        };
        let Some(data) = event_data(event) else {
            return EventKind::Other;
        };
        self.saw_event = true;
        if self.settings.errors == StreamErrorForm::Responses {
            self.last_sequence = self.last_sequence.max(sequence_number(&data));
        }
        let kind = if self.guard.is_recording() {
            self.read_into_summary(&data)
        } else {
            // No sink reads this stream: only the forwarding decision is needed, and reading
            // every event into a summary was a third of a stream's instructions.
            classify_event(&data, self.settings.drop_usage_chunk)
        };
        // Told from the name alone, the same whether a sink records or not: the body ends
        // there either way.
        if kind == EventKind::Other && is_last_event(event, &data, self.settings.last_events) {
            return EventKind::End;
        }
        kind
    }

    /// Reads one event's data into the record's summary; the first output is the first token.
    fn read_into_summary(&mut self, data: &[u8]) -> EventKind {
        let had_output = self.accumulator.saw_output();
        let kind = self.accumulator.push_data(data);
        if !had_output && self.accumulator.saw_output() {
            if let Some(record) = self.guard.record_mut() {
                record.first_token_at = Some(record.now());
            }
        }
        kind
    }

    /// Ends the stream after a failure: with one SSE error event, after whatever whole events
    /// were forwarded; a body that is not SSE is aborted instead (the client sees an
    /// incomplete body rather than bytes it cannot parse). Recorded as a broken stream.
    fn fail(&mut self, message: String, code: &'static str) -> Result<Bytes, std::io::Error> {
        self.fail_as(message, code, Outcome::StreamFailed)
    }

    /// [`Self::fail`], recorded with `outcome`.
    fn fail_as(
        &mut self,
        message: String,
        code: &'static str,
        outcome: Outcome,
    ) -> Result<Bytes, std::io::Error> {
        if self.accumulator.saw_end() {
            // The stream had ended by its own last event (Anthropic's `message_stop`, the
            // Responses API's `response.completed`): what broke after it (a reset instead of
            // the body's end, silence) takes nothing from the answer, as nothing after
            // `[DONE]` does. It ends here, complete.
            self.state = State::Ending;
            self.finish_as(Outcome::Success, None, true);
            return Ok(Bytes::new());
        }
        if let Some(reported) = self.accumulator.summary().error.clone() {
            // The upstream had already sent its own error event, relayed to the client: what
            // broke after it (a reset, silence) is that failed stream ending. Recorded as the
            // upstream's error, with its message (the provider's reason, not the router's
            // "reset"), and the client, which has that event, gets no second one.
            self.state = State::Ending;
            self.finish_as(Outcome::UpstreamError, Some(reported), false);
            return Ok(Bytes::new());
        }
        let failures = &self.failures;
        failures.log.warn(&failures.request_id, code, &message);
        if !self.settings.sse {
            self.state = State::Ending;
            self.finish(outcome, Some(message.clone()));
            return Err(std::io::Error::other(message));
        }
        Ok(self.fail_with_event(message, code, outcome))
    }

    fn fail_with_event(&mut self, message: String, code: &'static str, outcome: Outcome) -> Bytes {
        self.upstream = None;
        self.state = State::Ending;
        let event = match self.settings.errors {
            StreamErrorForm::OpenAi => sse_event(
                None,
                &error_body(&message, openai_type_of(code), Some(code)),
            ),
            StreamErrorForm::Responses => sse_event(
                Some("error"),
                &responses_error_data(
                    &message,
                    openai_type_of(code),
                    Some(code),
                    None,
                    self.last_sequence.map_or(0, |last| last.saturating_add(1)),
                ),
            ),
            // Anthropic's error has no `code`: the router's goes at the end of the message.
            StreamErrorForm::Anthropic => {
                let text = format!("{message} (llmsrouter: {code})");
                sse_event(
                    Some("error"),
                    &anthropic_error_data(anthropic_type_of(code), &text),
                )
            }
        };
        self.finish(outcome, Some(message));
        event
    }

    fn finish(&mut self, outcome: Outcome, error: Option<String>) {
        self.finish_as(outcome, error, outcome == Outcome::Success);
    }

    /// [`Self::finish`], saying whether the answer ran to its end marker (see
    /// [`crate::record::RequestRecord::complete`]).
    fn finish_as(&mut self, outcome: Outcome, error: Option<String>, complete: bool) {
        self.upstream = None;
        let mut summary = std::mem::take(&mut self.accumulator).into_summary();
        if let Some(description) = self.unread_description() {
            summary.content = description;
        }
        // A stream that ran to its end but carried the upstream's own error event (OpenRouter
        // reports a provider failing mid-stream so, under a 200): relayed as it came, recorded
        // as the upstream's error, with its message.
        let (outcome, error) = match (outcome, &summary.error) {
            (Outcome::Success, Some(reported)) => (Outcome::UpstreamError, Some(reported.clone())),
            _ => (outcome, error),
        };
        // A whole body that may be one JSON document: the recorder reads it as one.
        let first_token = self.unread.as_ref().and_then(Unread::first_token);
        let copy = self
            .unread
            .as_mut()
            .and_then(|unread| Some((unread.copy.take()?, unread.coding.take())))
            .filter(|(copy, _)| complete && !copy.is_empty());
        if let Some(record) = self.guard.record_mut() {
            record.complete = complete;
            record.response = summary;
            if let Some(first_token) = first_token {
                record.first_token_at = Some(record.at(first_token));
            }
            if error.is_some() {
                record.error = error;
            }
            if let Some((copy, coding)) = copy {
                record.response_body = Some(Bytes::from(copy));
                record.response_encoding = coding;
            }
        }
        self.guard.finish(outcome);
    }

    /// At the upstream body's end: a stream that carried nothing (an event stream without an
    /// event, a body relayed unread without a byte) is noted in its record as the upstream's
    /// failure to answer, if the request named a model (see
    /// [`crate::record::RequestRecord::empty_answer`]). The client gets what came: nothing.
    fn note_if_empty(&mut self) {
        let empty = match &self.unread {
            Some(unread) => unread.relayed == 0,
            None => !self.saw_event,
        };
        if !empty {
            return;
        }
        let sse = self.settings.sse;
        let Some(record) = self.guard.record_mut() else {
            return;
        };
        if record.usage_uncounted {
            return;
        }
        let status = record.status.unwrap_or_default();
        record.empty_answer = true;
        record.error = Some(if sse {
            format!(
                "the upstream answered {status} with an empty event stream: it closed it \
                 before any event; token counts unknown"
            )
        } else {
            format!("the upstream answered {status} with an empty body")
        });
    }

    /// Upstream is quiet: a keep-alive comment when due, the idle failure when over, else
    /// re-arm the timer for whichever comes first.
    fn poll_silence(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        loop {
            let now = Instant::now();
            let idle_deadline = self.last_upstream + self.settings.idle_timeout;
            if now >= idle_deadline {
                let secs = self.settings.idle_timeout.as_secs_f64();
                return Poll::Ready(Some(self.fail(
                    format!(
                        "the upstream{} sent nothing for {secs} s (timeout_secs); the stream was \
                         cut",
                        self.settings.via.aside()
                    ),
                    "upstream_timeout",
                )));
            }
            let keepalive_deadline =
                self.last_upstream.max(self.last_keepalive) + self.settings.keepalive;
            // A comment between events only: never in the middle of a half-received event,
            // since everything forwarded so far ends on an event boundary. Never in a body
            // that is not SSE.
            if self.settings.sse && now >= keepalive_deadline {
                self.last_keepalive = now;
                return Poll::Ready(Some(Ok(self.keepalive_between_events())));
            }
            let next = if self.settings.sse {
                idle_deadline.min(keepalive_deadline)
            } else {
                idle_deadline
            };
            // Only ever moved earlier (or re-armed once it fired): moving it later on every
            // event cost a timer-wheel removal and insertion per event. A timer left early
            // just fires, and this loop finds nothing due and re-arms it.
            if next < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer.as_mut().reset(next);
            }
            ready!(self.timer.as_mut().poll(cx));
        }
    }
}

/// OpenAI's error `type` for the router's own failure `code` mid-stream: the upstream's
/// failures are `upstream_error`; a cut at shutdown is the router's doing, `server_error`
/// as its 503 to a request still waiting says ([`crate::error::ProxyError::kind`]).
fn openai_type_of(code: &str) -> &'static str {
    match code {
        SHUT_DOWN_CODE => "server_error",
        _ => "upstream_error",
    }
}

/// A Responses API event's `sequence_number`, read without parsing the event, which may not
/// be read at all (see [`StreamTee::observe`]): the largest number any member of that name
/// holds, so one nested in echoed metadata (`"sequence_number": "77"`, or a number before
/// the event's own) never makes the router's event go back.
fn sequence_number(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\"";
    memchr::memmem::find_iter(data, KEY)
        .filter_map(|at| {
            let rest = data[at + KEY.len()..]
                .trim_ascii_start()
                .strip_prefix(b":")?
                .trim_ascii_start();
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
        })
        .max()
}

/// Anthropic's error type for the router's own failure `code` mid-stream.
fn anthropic_type_of(code: &str) -> &'static str {
    match code {
        "upstream_timeout" => "timeout_error",
        SHUT_DOWN_CODE => "overloaded_error",
        _ => "api_error",
    }
}

/// The events after which the body ends: `[DONE]`, and a format's last event.
fn ends_body(kind: EventKind) -> bool {
    matches!(kind, EventKind::Done | EventKind::End)
}

/// Longest wait, after a body's last event ending in a lone `\r` ([`State::AwaitingLf`]), for
/// the upstream's next bytes: the `\n` of a `\r\n` cut between two reads comes with the next
/// read, and an upstream that ends its stream so closes it at once. Only one that neither
/// sends more nor closes is waited for this long (or `timeout_secs`, if shorter), and its
/// client then gets the end of the body without a `\n` it never sent.
const LF_WAIT: Duration = Duration::from_secs(1);

/// How long, and how much, [`drain_after_end`] reads before it gives the connection up.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 64 * 1024;

/// Reads what an upstream sends after `[DONE]` or a format's last event (usually only the
/// chunked encoding's last few bytes, a moment later) and discards it. A body read to its end
/// hands its keep-alive connection back for the next request; one dropped early closes it,
/// which would cost every stream a new upstream connection and leave a socket in TIME_WAIT on
/// the router's side. An upstream that sends more than a little, or keeps the body open,
/// loses the connection.
fn drain_after_end(mut rest: UpstreamBody) {
    use futures_util::StreamExt as _;
    tokio::spawn(async move {
        let drained = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(chunk)) = rest.next().await {
                match left.checked_sub(chunk.len()) {
                    Some(less) => left = less,
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
    });
}

impl Drop for StreamTee {
    /// The client went away mid-stream: the record keeps what the stream carried so far;
    /// the guard then hands it over as a disconnect. Unless the stream had already said how
    /// it ends: an error event of the upstream's (an SDK raises on it and closes the
    /// connection, usually before the upstream's body ends) makes it the upstream's error,
    /// with its message, as when the body ends after it; a format's own last event that did
    /// not end the body (an image stream's `image_generation.completed`) makes it complete,
    /// as a reset after it does (see [`Self::fail_as`]).
    fn drop(&mut self) {
        if self.guard.record_mut().is_none() {
            return;
        }
        if self.accumulator.saw_end() {
            self.finish_as(Outcome::Success, None, true);
            return;
        }
        if let Some(reported) = self.accumulator.summary().error.clone() {
            self.finish_as(Outcome::UpstreamError, Some(reported), false);
            return;
        }
        let under_way = matches!(
            self.state,
            State::Opening | State::AwaitingHead | State::Streaming
        );
        if under_way && self.hard_stop.is_fired() {
            // Dropped once shutdown's grace was over: the router gave it up, not the client
            // (an HTTP/2 answer its client stopped reading is dropped so, by its stream's
            // task, as HTTP/1 cuts one whose write waits).
            self.cut_at_shutdown();
            return;
        }
        let mut summary = std::mem::take(&mut self.accumulator).into_summary();
        if let Some(description) = self.unread_description() {
            summary.content = description;
        }
        // Left while the router's own `200` waited for the upstream's head (see
        // [`Self::awaiting_head`]): the status is the one the client got.
        let early = matches!(self.state, State::Opening | State::AwaitingHead);
        let first_token = self.unread.as_ref().and_then(Unread::first_token);
        if let Some(record) = self.guard.record_mut() {
            record.response = summary;
            if let Some(first_token) = first_token {
                record.first_token_at = Some(record.at(first_token));
            }
            if early && record.status.is_none() {
                record.status = Some(http::StatusCode::OK.as_u16());
            }
        }
    }
}

impl Stream for StreamTee {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Ended => return Poll::Ready(None),
                State::Ending => {
                    this.state = State::Ended;
                    return Poll::Ready(None);
                }
                State::Opening => {
                    this.state = State::AwaitingHead;
                    this.last_keepalive = Instant::now();
                    return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE_COMMENT))));
                }
                State::AwaitingHead => {
                    if let Some(bytes) = ready!(this.poll_head(cx)) {
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    continue;
                }
                State::AwaitingLf => {
                    let lf = ready!(this.poll_lf(cx));
                    this.state = State::Ending;
                    if let Some(lf) = lf {
                        return Poll::Ready(Some(Ok(lf)));
                    }
                    continue;
                }
                State::Streaming => {}
            }
            if this.oversized {
                return Poll::Ready(Some(this.fail_event_too_long()));
            }
            let Some(upstream) = this.upstream.as_mut() else {
                this.state = State::Ended;
                return Poll::Ready(None);
            };
            match upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.last_upstream = Instant::now();
                    if !this.settings.sse {
                        if let Some(unread) = &mut this.unread {
                            unread.arrived(&chunk);
                        }
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    if let Some(bytes) = this.forward_chunk(chunk) {
                        // An unended event past the limit behind the events sent now.
                        this.oversized |= this.splitter.pending_len() > MAX_EVENT_BYTES;
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    if this.oversized || this.splitter.pending_len() > MAX_EVENT_BYTES {
                        return Poll::Ready(Some(this.fail_event_too_long()));
                    }
                }
                // A compressed stream whose data is corrupt or cut ([`super::decoded`]): the
                // upstream's fault, not the connection's.
                Poll::Ready(Some(Err(e))) if e.is_undecodable() => {
                    let what = if this.settings.sse {
                        "event stream"
                    } else {
                        "answer"
                    };
                    let message =
                        format!("the upstream's compressed {what} could not be decoded: {e}");
                    let outcome = Outcome::UpstreamError;
                    return Poll::Ready(Some(this.fail_as(message, BAD_ENCODING, outcome)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let aside = this.settings.via.aside();
                    // Malformed, or past a limit of the router's: the connection did not fail.
                    let message = if e.is_unreadable() {
                        format!(
                            "the upstream{aside} answered mid-stream in a form the router \
                             cannot read: {e}"
                        )
                    } else {
                        format!("the upstream connection{aside} failed mid-stream: {e}")
                    };
                    return Poll::Ready(Some(this.fail(message, "upstream_unreachable")));
                }
                Poll::Ready(None) => {
                    // The upstream ended without [DONE], perhaps inside an event.
                    let rest = this.splitter.take_rest();
                    let rest = this.unfinished_tail(rest);
                    this.state = State::Ending;
                    // An event stream is complete only with its end marker: `[DONE]`, or in
                    // the formats that have none, their own last event (Anthropic's
                    // `message_stop`, the Responses API's `response.completed`), after which
                    // the upstream closes. A body that is not an event stream is complete at
                    // its end.
                    let complete = !this.settings.sse || this.accumulator.saw_end();
                    this.note_if_empty();
                    this.finish_as(Outcome::Success, None, complete);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
                Poll::Pending => {
                    if Pin::new(&mut this.hard_stop).poll(cx).is_ready() {
                        let message = SHUT_DOWN.to_owned();
                        return Poll::Ready(Some(this.fail(message, SHUT_DOWN_CODE)));
                    }
                    return this.poll_silence(cx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Recorder, RequestRecord};
    use futures_util::StreamExt as _;

    /// The largest `sequence_number` an event holds, a nested echoed one before the event's
    /// own or as text not taken for it (bb50: the first one found, here none, made the
    /// router's event say 0).
    #[test]
    fn a_sequence_number_is_the_largest_the_event_holds() {
        let event = br#"{"response":{"metadata":{"sequence_number":"77"}},"sequence_number":3}"#;
        assert_eq!(super::sequence_number(event), Some(3));
        let nested = br#"{"sequence_number":2,"item":{"sequence_number":9}}"#;
        assert_eq!(super::sequence_number(nested), Some(9));
        assert_eq!(super::sequence_number(br#"{"type":"x"}"#), None);
    }

    fn guard() -> RecordGuard {
        let record = RequestRecord {
            request_id: "r".into(),
            user: None,
            provider: "p".into(),
            alias: None,
            mode: crate::routing::RouteMode::Alias,
            endpoint: "/chat/completions".into(),
            requested_model: "m".into(),
            upstream_model: "m".into(),
            stream: true,
            request_body: Bytes::new(),
            request_layout: None,
            request_is_form: false,
            started_at: std::time::SystemTime::now(),
            started_mono: std::time::Instant::now(),
            response_started_at: None,
            first_token_at: None,
            ended_at: std::time::SystemTime::now(),
            status: Some(200),
            outcome: Outcome::ClientDisconnected,
            error: None,
            response_body: None,
            response_is_json: false,
            response_encoding: None,
            response_decoded: None,
            response: Default::default(),
            complete: false,
            secrets: Default::default(),
            keys: Default::default(),
            answered_whole: false,
            empty_answer: false,
            upstream_had_request: false,
            bodies_dropped: false,
            usage_uncounted: false,
            body_ticket: Default::default(),
        };
        RecordGuard::new(record, Recorder::disabled())
    }

    /// What a client gets of an SSE stream of `chunks`.
    async fn relayed(chunks: Vec<Bytes>) -> Vec<Bytes> {
        let upstream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, UpstreamError>));
        let settings = StreamSettings {
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            drop_usage_chunk: false,
            sse: true,
            errors: StreamErrorForm::OpenAi,
            last_events: LastEvents::NONE,
            via: crate::upstream::Via::Direct,
        };
        let failures = StreamFailures {
            log: Arc::default(),
            request_id: "r1".into(),
            redactor: Default::default(),
        };
        let tee = StreamTee::new(
            Box::pin(upstream),
            settings,
            guard(),
            HardStop::new(),
            failures,
        );
        tee.map(|item| item.expect("sse failures are events"))
            .collect()
            .await
    }

    fn assert_cut_after_first(out: &[Bytes], first: &Bytes) {
        assert_eq!(&out[0], first, "whole events before the long one pass");
        assert_eq!(
            out.len(),
            2,
            "{:?}",
            out.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        let error = std::str::from_utf8(&out[1]).expect("utf8");
        assert!(
            error.starts_with("data: {\"error\"") && error.contains("MiB"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_event_that_never_ends_is_cut_at_the_limit() {
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let first = Bytes::from_static(b"data: {\"a\":1}\n\n");
        let endless = std::iter::once(first.clone())
            .chain(std::iter::repeat_n(
                chunk,
                MAX_EVENT_BYTES / (1024 * 1024) + 2,
            ))
            .collect();
        assert_cut_after_first(&relayed(endless).await, &first);
    }

    /// An event over the limit fails the stream however the reads fall: whole in one read
    /// with the events around it, ended by the read that took it past the limit, or
    /// unended behind an event sent in the same read. Before, the first two passed whole
    /// and only the unended one was cut.
    #[tokio::test]
    async fn an_event_over_the_limit_is_cut_however_it_arrives() {
        let first = Bytes::from_static(b"data: {\"a\":1}\n\n");
        let mut long = b"data: ".to_vec();
        long.resize(MAX_EVENT_BYTES + 100_000, b'x');
        let after = b"\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n".to_vec();
        let whole = Bytes::from([first.to_vec(), long.clone(), after.clone()].concat());
        let (head, tail) = long.split_at(MAX_EVENT_BYTES - 10);
        let ended_late = vec![
            first.clone(),
            Bytes::from(head.to_vec()),
            Bytes::from([tail.to_vec(), after.clone()].concat()),
        ];
        let behind_first = vec![
            Bytes::from([first.to_vec(), long].concat()),
            Bytes::from(after),
        ];
        for chunks in [vec![whole], ended_late] {
            let out = relayed(chunks).await;
            let error = std::str::from_utf8(out.last().expect("out")).expect("utf8");
            assert!(
                error.starts_with("data: {\"error\"") && error.contains("MiB"),
                "{error}"
            );
            let relayed: usize = out.iter().map(Bytes::len).sum();
            assert!(
                relayed < 1024 * 1024,
                "the long event is not relayed: {relayed}"
            );
        }
        assert_cut_after_first(&relayed(behind_first).await, &first);
    }
}
