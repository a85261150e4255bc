//! A stream the router answers before its upstream does: when a streaming request's upstream
//! has sent no answer head within the keep-alive interval (a local server loading its model,
//! a queueing gateway), the client gets the router's own `200` with the stream's headers and a
//! `: keep-alive` comment, then one every interval, so a client with an idle timeout does not
//! cut the wait. The upstream's head decides what follows: a 2xx event stream goes on through
//! the tee as any stream does; a whole 2xx chat or text completion (an upstream that ignores
//! `"stream": true`) goes as the events a stream of it would have been ([`super::chunks`]);
//! anything else ends the stream with one error event carrying what the client would have
//! got (see [`StreamTee::awaiting_head`]).
//!
//! Only the slow path pays for this: a request answered within the interval is relayed as
//! before, with nothing made here (but a whole chat completion, which goes as its events
//! there too: `super::whole_as_stream`). The upstream's own headers (`Retry-After`,
//! `x-ratelimit-*`) cannot reach a client whose head already went out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type Moment = std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use tokio::time::Instant;

use super::chunks::Unread;
use super::headers::{AnswerFields, Shape};
use super::stream::{StreamFailures, StreamSettings, StreamTee, UpstreamBody};
use super::{Answer, AnswerBody, StreamCoding};
use crate::content_coding::DecodeBudget;
use crate::error::{
    ANTHROPIC_ERROR_TYPES, ProxyError, StreamErrorForm, anthropic_error_data, anthropic_error_type,
    clip, error_body, responses_error_data, sse_event,
};
use crate::http1::fields::Fields;
use crate::record::{Outcome, RecordGuard};
use crate::sinks::redact::Redactor;
use crate::state::AppState;
use crate::upstream::{UpstreamError, UpstreamResponse};

/// The exchange with the upstream, from sending the request to its answer's head. It owns
/// what it needs, so a stream answered early can take it along.
pub type Sending = Pin<Box<dyn Future<Output = Result<UpstreamResponse, UpstreamError>> + Send>>;

/// Whether a streaming request to `path` may be answered before its upstream: only where a
/// stream is an event stream by definition (OpenAI's chat, completions and Responses APIs,
/// Anthropic's messages). A stream elsewhere may be another format (Ollama's own `/api/chat`
/// streams NDJSON), which a head saying `text/event-stream` would misname; such a request
/// waits for its upstream's head, as every request did before.
pub fn opens_early(path: &str) -> bool {
    matches!(
        path,
        "/chat/completions" | "/completions" | "/responses" | "/messages"
    )
}

/// What the rest of the wait needs from the request.
pub struct Wait {
    pub sent: Sending,
    /// When `timeout_secs` from sending the request is over: the head's deadline, as for any
    /// request.
    pub deadline: Instant,
    pub timeout: Duration,
    /// For error messages.
    pub provider: String,
    /// Whether the request went through the proxy the environment names, for error messages.
    pub via: crate::upstream::Via,
    /// The router asked for `include_usage`: the usage-only chunk is not the client's.
    pub drop_usage_chunk: bool,
    /// The client asked for `stream_options.include_usage` itself: a whole answer made into
    /// events ([`super::chunks`]) ends with its usage chunk.
    pub client_usage: bool,
    /// The form of the error event that ends a stream the upstream failed.
    pub errors: StreamErrorForm,
    /// The events after which the endpoint's format ends, as at `[DONE]`.
    pub last_events: crate::usage::LastEvents,
    /// The request without the `stream_options` the router added, for an upstream that
    /// refuses them ([`super::stream_options`]).
    pub again: Option<super::stream_options::Again>,
}

/// The router's own answer to a stream whose upstream is still silent: `200`, the headers of
/// an event stream and the request id; the body is the tee, which first sends a keep-alive
/// comment and then waits for the upstream's head.
pub(super) fn answer(
    state: &Arc<AppState>,
    wait: Wait,
    guard: RecordGuard,
    request_id: String,
) -> Answer {
    let settings = StreamSettings {
        keepalive: state.keepalive_interval,
        idle_timeout: wait.timeout,
        drop_usage_chunk: wait.drop_usage_chunk,
        sse: true,
        errors: wait.errors,
        last_events: wait.last_events,
        via: wait.via,
    };
    let reading = (state.redactor.clone(), state.decode_budget.clone());
    let head = Box::pin(await_head(wait, reading));
    let failures = StreamFailures {
        log: Arc::clone(&state.failures),
        request_id: request_id.clone(),
        redactor: state.redactor.clone(),
    };
    let tee = StreamTee::awaiting_head(head, settings, guard, state.hard_stop.clone(), failures);
    Answer {
        status: StatusCode::OK,
        fields: AnswerFields {
            upstream: None,
            shape: Shape::Stream { sse: true },
            request_id: Some(request_id),
        },
        body: AnswerBody::Stream(Box::new(tee)),
    }
}

/// The upstream's answer to a stream the router already opened.
pub enum LateHead {
    /// A 2xx event stream (decoded when compressed): relayed from here on as any stream is.
    Stream {
        body: UpstreamBody,
        status: StatusCode,
        answered_at: Moment,
        /// Sent again without the `stream_options` the router added: a usage chunk in it
        /// is the upstream's own, and the client's.
        resent: bool,
    },
    /// A whole chat or text completion (the upstream ignored `"stream": true`): sent as the
    /// events a stream of it would have been.
    Whole(WholeAnswer),
    /// Anything else: the stream ends with this failure's error event.
    Failed(LateFailure),
}

/// A whole 2xx completion, made into the events of the stream already begun
/// ([`super::chunks`]).
pub struct WholeAnswer {
    /// For the client: one chunk per choice, the usage chunk if asked for, `[DONE]`.
    events: Bytes,
    /// The answer (decoded, keys redacted): the record reads its usage, model and output
    /// from it as from any whole answer's body.
    body: Bytes,
    status: StatusCode,
    answered_at: Moment,
}

impl WholeAnswer {
    /// The events that end the stream; the record is finished as the same answer to a
    /// request that waited for it would have been: a success, its body kept.
    pub fn end(self, guard: &mut RecordGuard) -> Bytes {
        if let Some(record) = guard.record_mut() {
            record.response_started_at = Some(record.at(self.answered_at));
            record.status = Some(self.status.as_u16());
            record.response_body = Some(super::own_copy(&self.body));
            record.complete = true;
        }
        guard.finish(Outcome::Success);
        self.events
    }
}

/// Why a stream opened early ends before any event: the upstream's error answer, an answer
/// that is not an event stream, or the router's own failure (timeout, unreachable, shutdown).
pub struct LateFailure {
    /// The error event's data: one line of JSON in OpenAI's shape.
    payload: Bytes,
    /// What a client that waited for the head would have been answered, for the record.
    status: StatusCode,
    message: String,
    outcome: Outcome,
    /// The router's own failure, logged at WARN with this code as [`super::fail`] does.
    logged: Option<&'static str>,
    /// When the upstream's head arrived, if it did.
    answered_at: Option<Moment>,
    /// The router's failure came after the upstream had the request
    /// ([`ProxyError::upstream_had_request`]).
    upstream_had_request: bool,
    /// A whole 2xx answer that could not be sent in the stream, and its status: the record
    /// keeps it (with that status), so its usage is counted: the provider billed it.
    answer: Option<(StatusCode, Bytes)>,
}

impl LateFailure {
    /// The router's own error: its body, as a whole answer would carry it.
    pub fn router(error: &ProxyError, answered_at: Option<Moment>) -> Self {
        let message = error.to_string();
        Self {
            payload: event_payload(&error.body(), error.status(), &message),
            status: error.status(),
            message,
            outcome: Outcome::RouterError,
            logged: Some(error.code()),
            answered_at,
            upstream_had_request: error.upstream_had_request(),
            answer: None,
        }
    }

    /// The router's `error` for a whole 2xx `answer` it could not send in the stream: the
    /// client gets the error event, and the record the answer, as a whole answer's has it.
    fn unsent_answer(
        error: &ProxyError,
        status: StatusCode,
        answer: Bytes,
        answered_at: Moment,
    ) -> Self {
        Self {
            answer: Some((status, answer)),
            ..Self::router(error, Some(answered_at))
        }
    }

    /// The upstream's error answer: `body` as a whole answer would carry it.
    fn upstream(status: StatusCode, body: &[u8], message: String, answered_at: Moment) -> Self {
        let payload = event_payload(body, status, &message);
        Self::upstream_payload(status, payload, message, answered_at)
    }

    /// [`Self::upstream`] with its event's data already made ([`value_payload`]).
    fn upstream_payload(
        status: StatusCode,
        payload: Bytes,
        message: String,
        answered_at: Moment,
    ) -> Self {
        Self {
            payload,
            status,
            message,
            outcome: Outcome::UpstreamError,
            logged: None,
            answered_at: Some(answered_at),
            upstream_had_request: true,
            answer: None,
        }
    }

    /// The event that ends the stream, in `form`; the record is finished as the same failure
    /// of a request that waited for its head would have been (the upstream's or the router's
    /// status, the message, an upstream error's body as the client got it).
    pub fn end(
        mut self,
        guard: &mut RecordGuard,
        failures: &StreamFailures,
        form: StreamErrorForm,
    ) -> Bytes {
        if let Some(code) = self.logged {
            failures.log.warn(&failures.request_id, code, &self.message);
        }
        let event = match form {
            StreamErrorForm::OpenAi => sse_event(None, &self.payload),
            StreamErrorForm::Anthropic => {
                self.payload = self.anthropic_payload();
                sse_event(Some("error"), &self.payload)
            }
            StreamErrorForm::Responses => {
                self.payload = self.responses_payload();
                sse_event(Some("error"), &self.payload)
            }
        };
        if let Some(record) = guard.record_mut() {
            if let Some(answered_at) = self.answered_at {
                record.response_started_at = Some(record.at(answered_at));
            }
            record.status = Some(self.status.as_u16());
            if self.outcome == Outcome::UpstreamError {
                record.response_body = Some(self.payload);
                record.response_is_json = true;
                record.complete = true;
            }
            if let Some((status, answer)) = self.answer {
                record.status = Some(status.as_u16());
                record.response_body = Some(super::own_copy(&answer));
                record.complete = true;
            }
            record.error = Some(self.message);
            record.upstream_had_request = self.upstream_had_request;
        }
        guard.finish(self.outcome);
        event
    }

    /// The failure as the Responses API's `error` event, the first of the stream: the
    /// error object's message, type, code and status, else the failure's message. A code
    /// that is not a string (`429`, `503.5`, `true`) is said as its JSON text, never dropped;
    /// the error object beside the event's fields has the event's code (the type, when the
    /// upstream gave none: a text answer's wrapped error) and the status (the upstream's
    /// own, or the HTTP status, see [`value_payload`]), as the chat form's event has it. The
    /// record keeps this event as the answer, so it says what the client was told.
    fn responses_payload(&self) -> Bytes {
        let value = serde_json::from_slice::<serde_json::Value>(&self.payload).ok();
        let error = value
            .as_ref()
            .and_then(|v| v.get("error"))
            .filter(|e| e.is_object());
        let field = |key: &str| error.and_then(|e| e.get(key)).filter(|v| !v.is_null());
        let text = |key: &str| field(key).and_then(serde_json::Value::as_str);
        let code_text = field("code")
            .filter(|code| !code.is_string())
            .map(serde_json::Value::to_string);
        responses_error_data(
            text("message").unwrap_or(&self.message),
            text("type").unwrap_or("upstream_error"),
            text("code").or(code_text.as_deref()),
            field("status"),
            0,
        )
    }

    /// The failure as Anthropic's error: the upstream's own type when it is one of
    /// Anthropic's (an Anthropic upstream's 529 stays `overloaded_error`), else the type of
    /// the status; the router's own error keeps its code at the end of the message.
    fn anthropic_payload(&self) -> Bytes {
        let upstream_type = serde_json::from_slice::<serde_json::Value>(&self.payload)
            .ok()
            .and_then(|v| v["error"]["type"].as_str().map(str::to_owned))
            .filter(|t| ANTHROPIC_ERROR_TYPES.contains(&t.as_str()));
        let kind = upstream_type
            .as_deref()
            .unwrap_or_else(|| anthropic_error_type(self.status));
        match self.logged {
            Some(code) => {
                let message = format!("{} (llmsrouter: {code})", self.message);
                anthropic_error_data(kind, &message)
            }
            None => anthropic_error_data(kind, &self.message),
        }
    }
}

/// `body` (a JSON object whose `error` is an object: the router's error body, or an
/// upstream's error as a whole answer carries it) as one event's data: on one line (an
/// upstream may pretty-print its error, and a line break would end the `data:` line), with
/// the status a whole answer would have had as the error's `status`, unless it names one.
fn event_payload(body: &[u8], status: StatusCode, message: &str) -> Bytes {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error_body(message, "upstream_error", None);
    };
    value_payload(value, status, message)
}

/// [`event_payload`] of a body already read.
fn value_payload(mut value: serde_json::Value, status: StatusCode, message: &str) -> Bytes {
    if let Some(error) = value.get_mut("error").and_then(|e| e.as_object_mut()) {
        error
            .entry("status")
            .or_insert_with(|| status.as_u16().into());
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .unwrap_or_else(|_| error_body(message, "upstream_error", None))
}

/// Waits for the upstream's head (within `timeout_secs` of sending, as any request does),
/// and for an error answer its body too.
async fn await_head(wait: Wait, (redactor, budget): (Redactor, DecodeBudget)) -> LateHead {
    let Wait {
        mut sent,
        deadline,
        timeout,
        provider,
        via,
        client_usage,
        mut again,
        ..
    } = wait;
    let named = super::Named {
        provider: &provider,
        via,
    };
    let router =
        |error: ProxyError, answered_at| LateHead::Failed(LateFailure::router(&error, answered_at));
    let mut resent = false;
    loop {
        let upstream = match tokio::time::timeout_at(deadline, &mut sent).await {
            Err(_) => return router(super::timeout_error(named, timeout), None),
            Ok(Err(error)) => {
                return router(super::send_error(&provider, &error, &redactor), None);
            }
            Ok(Ok(upstream)) => upstream,
        };
        let answered_at = Moment::now();
        let UpstreamResponse {
            status,
            fields,
            body,
        } = upstream;
        if status.is_success() {
            // A body labelled JSON, or one whose label does not rule JSON out (`text/plain`, none:
            // a whole answer so labelled is relayed and recorded as JSON on the usual path), is
            // read whole: if it is JSON it is a whole answer.
            let labelled_json = super::is_json(&fields);
            if labelled_json || super::may_be_json(&fields) {
                let declared = http_body::Body::size_hint(&body).exact();
                let read = super::read_upstream_body(body, declared);
                let body = match tokio::time::timeout_at(deadline, read).await {
                    Err(_) => {
                        return router(super::unfinished_error(named, timeout), Some(answered_at));
                    }
                    Ok(Err(error)) => {
                        return router(error.into_proxy_error(named), Some(answered_at));
                    }
                    Ok(Ok(body)) => body,
                };
                let answer = LateAnswer {
                    status,
                    answered_at,
                    provider: &provider,
                    redactor: &redactor,
                    budget: &budget,
                    labelled_json,
                };
                return answer.whole_json(body, &fields, client_usage).await;
            }
            if !super::is_event_stream(&fields) {
                let error = not_relayable(&provider, status, &content_type_of(&fields));
                return router(error, Some(answered_at));
            }
            let decoder = match StreamCoding::of(&fields) {
                StreamCoding::Plain => None,
                StreamCoding::Decoded(decoder) => Some(decoder),
                StreamCoding::Opaque => {
                    let coding =
                        crate::content_coding::content_encoding(&fields).unwrap_or_default();
                    let what = format!(
                        "an event stream in a coding the router cannot decode ({})",
                        clip(&coding, 100)
                    );
                    let error = not_relayable(&provider, status, &what);
                    return router(error, Some(answered_at));
                }
            };
            return LateHead::Stream {
                body: super::relayed_body(body, decoder),
                status,
                answered_at,
                resent,
            };
        }
        if status.is_redirection() {
            // Not followed, and not relayable in a stream: the upstream's error, as a whole
            // answer's record has it.
            let message = super::redirect_message(status);
            let body = error_body(&message, "upstream_error", None);
            let failure = LateFailure::upstream(status, &body, message, answered_at);
            return LateHead::Failed(failure);
        }
        let declared = http_body::Body::size_hint(&body).exact();
        let read = super::read_upstream_body(body, declared);
        let body = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                return router(super::unfinished_error(named, timeout), Some(answered_at));
            }
            Ok(Err(error)) => return router(error.into_proxy_error(named), Some(answered_at)),
            Ok(Ok(body)) => body,
        };
        // A strict upstream refused the `stream_options` the router added: once more without.
        if let Some(instead) = again
            .take()
            .and_then(|a| a.instead_of(status, &body, &fields))
        {
            sent = instead;
            resent = true;
            continue;
        }
        let error = super::upstream_error_body(status, body, &fields, &redactor);
        return LateHead::Failed(LateFailure::upstream(
            status,
            &error.body,
            error.message,
            answered_at,
        ));
    }
}

/// The head of a 2xx answer that may be JSON (labelled so, or with a label that does not
/// rule it out) that came after the stream began, and what reading its body needs.
struct LateAnswer<'a> {
    status: StatusCode,
    answered_at: Moment,
    provider: &'a str,
    redactor: &'a Redactor,
    /// What decodes of whole answers may hold together.
    budget: &'a DecodeBudget,
    /// Labelled JSON: read as JSON whatever it holds. Otherwise (`text/plain`, no label) it
    /// is a whole answer only if it is one JSON object, as on the usual path.
    labelled_json: bool,
}

impl LateAnswer<'_> {
    /// A whole `body` answering the stream already begun: an error under a 2xx
    /// (`{"error": {...}}`) ends the stream with the upstream's own message, as a whole
    /// answer's record has it; a chat or text completion goes on as the events a stream of
    /// it would have been ([`super::chunks`], the usage chunk only if `client_usage`); any
    /// other JSON cannot be sent in the stream and ends it with the router's error, its
    /// record keeping the answer (and so its usage). So does one over
    /// [`super::chunks::MAX_EVENTS_FROM_WHOLE`], which is not read into events (the head
    /// already said "event stream", so it cannot go as it came, as it does before the
    /// head). A compressed answer is decoded, and one over 256 KiB read, on a blocking
    /// thread, not on the one serving this and other connections.
    async fn whole_json(self, body: Bytes, fields: &Fields, client_usage: bool) -> LateHead {
        let Self {
            status,
            answered_at,
            provider,
            redactor,
            budget,
            labelled_json,
        } = self;
        let not_relayable_here = || {
            let error = not_relayable(provider, status, &content_type_of(fields));
            LateHead::Failed(LateFailure::router(&error, Some(answered_at)))
        };
        // Asked for `identity`, an upstream may still compress it: read decoded. (Only one
        // labelled JSON comes here compressed: see `super::may_be_json`.)
        let body = match crate::content_coding::content_encoding(fields) {
            None => body,
            Some(coding) => match decoded_aside(coding, body, budget).await {
                Ok(decoded) => decoded,
                Err(error) => {
                    let what = format!("a JSON body the router cannot decode ({error})");
                    let error = not_relayable(provider, status, &what);
                    return LateHead::Failed(LateFailure::router(&error, Some(answered_at)));
                }
            },
        };
        let body = super::without_echoed_keys(redactor, body);
        let read = super::chunks::read_whole(body.clone(), move |value| {
            Made::of(value, status, client_usage)
        });
        let unsent = |error: ProxyError| {
            LateHead::Failed(LateFailure::unsent_answer(
                &error,
                status,
                body.clone(),
                answered_at,
            ))
        };
        let made = match read.await {
            Ok(made) => made,
            Err(Unread::TooLarge) => {
                if !labelled_json && !body.trim_ascii_start().starts_with(b"{") {
                    return not_relayable_here();
                }
                return unsent(ProxyError::UpstreamUnreachable(format!(
                    "the upstream {provider} answered HTTP {} with one whole JSON body of {} \
                     bytes to a stream request, after the router had begun the stream (the \
                     upstream sent no answer within the keep-alive interval); it cannot be \
                     sent as that stream, as the router makes no events of a whole answer \
                     over {} MiB (its usage is recorded)",
                    status.as_u16(),
                    body.len(),
                    super::chunks::MAX_EVENTS_FROM_WHOLE / (1024 * 1024)
                )));
            }
            Err(Unread::Lost) => return unsent(ProxyError::Internal),
        };
        match made {
            Made::Events(events) => LateHead::Whole(WholeAnswer {
                events,
                body,
                status,
                answered_at,
            }),
            Made::UpstreamError { payload, message } => LateHead::Failed(
                LateFailure::upstream_payload(status, payload, message, answered_at),
            ),
            Made::NotJson | Made::Other { object: false, .. } if !labelled_json => {
                not_relayable_here()
            }
            // Labelled JSON but not JSON: most likely an event stream under the wrong label,
            // which the router tells by its first bytes only when the head comes first.
            Made::NotJson => unsent(ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} answered HTTP {} with a body labelled JSON that is \
                 not JSON (an event stream under the wrong label?); the router had already \
                 begun the stream (the upstream sent no answer within the keep-alive \
                 interval), so that answer cannot be relayed",
                status.as_u16()
            ))),
            Made::Other { what, .. } => unsent(ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} answered HTTP {} with one whole JSON body {what} to a \
                 stream request, after the router had begun the stream (the upstream sent no \
                 answer within the keep-alive interval); it cannot be sent as that stream (its \
                 usage is recorded)",
                status.as_u16()
            ))),
        }
    }
}

/// What a late whole answer is, made from its tree where [`super::chunks::read_whole`] read
/// it (a blocking thread for a large one), so that no more than this comes back.
enum Made {
    /// A chat or text completion: its events.
    Events(Bytes),
    /// An error under a 2xx (`{"error": {...}}`): its error event's data and message.
    UpstreamError { payload: Bytes, message: String },
    /// JSON of another shape: what it is ([`whole_answer_kind`]), and whether it is an
    /// object.
    Other { what: String, object: bool },
    /// Not JSON.
    NotJson,
}

impl Made {
    fn of(value: Option<serde_json::Value>, status: StatusCode, client_usage: bool) -> Self {
        let Some(value) = value else {
            return Self::NotJson;
        };
        if let Some(error) = value.get("error").filter(|e| e.is_object()) {
            let message = super::error_member_message(error);
            let payload = value_payload(value, status, &message);
            return Self::UpstreamError { payload, message };
        }
        if let Some(events) = super::chunks::as_events(&value, client_usage) {
            return Self::Events(events);
        }
        Self::Other {
            what: whole_answer_kind(&value),
            object: value.is_object(),
        }
    }
}

/// A compressed `body` decoded (up to the
/// [`crate::content_coding::MAX_DECODED_BODY`] its record reads) on a blocking thread,
/// within the decode `budget` (held by the decoded bytes while they live): a small body may
/// decode to 64 MiB. `Err` says why it could not be.
async fn decoded_aside(
    coding: String,
    body: Bytes,
    budget: &DecodeBudget,
) -> Result<Bytes, String> {
    let budget = budget.clone();
    let decode = move || {
        let limit = crate::content_coding::MAX_DECODED_BODY;
        let (decoded, charge) =
            crate::content_coding::decode_within(&coding, &body, limit, &budget);
        decoded
            .map(|decoded| crate::content_coding::charged_bytes(decoded, charge))
            .map_err(|broken| broken.error.to_string())
    };
    tokio::task::spawn_blocking(decode)
        .await
        .unwrap_or_else(|_| Err("its decoding did not finish".to_owned()))
}

/// What a whole JSON answer is, for the error that says it could not be sent: its `object`
/// or `type` (`"response"`, `"message"`), never its content, which may be long.
fn whole_answer_kind(value: &serde_json::Value) -> String {
    let named = ["object", "type"]
        .iter()
        .find_map(|key| value.get(*key).and_then(serde_json::Value::as_str));
    match named {
        Some(name) => format!("of type \"{}\"", clip(name, 40)),
        None => "of no known shape".to_owned(),
    }
}

fn content_type_of(fields: &Fields) -> String {
    match fields.get_str("content-type") {
        Some(content_type) => format!("Content-Type {}", clip(content_type, 100)),
        None => "no Content-Type".to_owned(),
    }
}

/// A 2xx answer the router cannot relay in the event stream it already began: `what` it
/// was (not SSE, an event stream in a coding it cannot decode).
fn not_relayable(provider: &str, status: StatusCode, what: &str) -> ProxyError {
    ProxyError::UpstreamUnreachable(format!(
        "the upstream {provider} answered HTTP {} with {what}, not an event stream; the \
         router had already begun the stream (the upstream sent no answer within the \
         keep-alive interval), so that answer cannot be relayed",
        status.as_u16()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(payload: &Bytes) -> serde_json::Value {
        assert!(
            !payload.contains(&b'\n') && !payload.contains(&b'\r'),
            "one line: {payload:?}"
        );
        serde_json::from_slice(payload).expect("json")
    }

    #[test]
    fn an_event_payload_is_one_line_with_the_status() {
        let pretty = b"{\n  \"error\": {\n    \"message\": \"quota\\nexceeded\",\n    \"code\": \"rate_limit_exceeded\"\n  },\n  \"extra\": 1\n}\n";
        let payload = event_payload(pretty, StatusCode::TOO_MANY_REQUESTS, "quota");
        let value = parsed(&payload);
        assert_eq!(value["error"]["message"], "quota\nexceeded");
        assert_eq!(value["error"]["code"], "rate_limit_exceeded");
        assert_eq!(value["error"]["status"], 429);
        assert_eq!(value["extra"], 1, "the upstream's other members are kept");
    }

    #[test]
    fn an_error_naming_its_own_status_keeps_it() {
        let body = br#"{"error":{"message":"m","status":"RESOURCE_EXHAUSTED"}}"#;
        let value = parsed(&event_payload(body, StatusCode::TOO_MANY_REQUESTS, "m"));
        assert_eq!(value["error"]["status"], "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn a_body_that_is_not_json_becomes_the_message() {
        let value = parsed(&event_payload(
            b"oops",
            StatusCode::BAD_GATEWAY,
            "oops\nhere",
        ));
        assert_eq!(value["error"]["message"], "oops\nhere");
        assert_eq!(value["error"]["type"], "upstream_error");
    }

    #[test]
    fn the_router_errors_event_has_its_code_and_status() {
        let error = ProxyError::UpstreamTimeout("slow".into());
        let failure = LateFailure::router(&error, None);
        let value = parsed(&failure.payload);
        assert_eq!(value["error"]["code"], "upstream_timeout");
        assert_eq!(value["error"]["status"], 504);
        assert_eq!(failure.outcome, Outcome::RouterError);
        assert_eq!(failure.logged, Some("upstream_timeout"));
    }

    #[test]
    fn the_anthropic_form_keeps_an_anthropic_type_and_else_follows_the_status() {
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let openai = br#"{"error":{"message":"slow down","type":"requests"}}"#;
        for (body, status, kind) in [
            (
                &anthropic[..],
                StatusCode::from_u16(529).expect("status"),
                "overloaded_error",
            ),
            (openai, StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            (openai, StatusCode::BAD_GATEWAY, "api_error"),
        ] {
            let failure = LateFailure::upstream(status, body, "m".into(), Moment::now());
            let value = parsed(&failure.anthropic_payload());
            assert_eq!(
                value,
                serde_json::json!({"type": "error", "error": {"type": kind, "message": "m"}})
            );
        }
        let timeout = LateFailure::router(&ProxyError::UpstreamTimeout("slow".into()), None);
        let value = parsed(&timeout.anthropic_payload());
        assert_eq!(value["error"]["type"], "timeout_error");
        assert_eq!(
            value["error"]["message"],
            "slow (llmsrouter: upstream_timeout)"
        );
    }

    /// The Responses API's late error event says the upstream's code whatever its JSON type
    /// (a float, a number beyond 64-bit, `true`: before, all but an integer were dropped for
    /// the type), its error object has that code too (a text answer's was `null` there) and
    /// the status (before, left out), and the record keeps that event as the answer.
    #[test]
    fn the_responses_form_says_the_code_and_status_the_failure_had() {
        let cases: [(u16, &[u8], &str, &str, serde_json::Value); 6] = [
            (
                429,
                b"slow down",
                "upstream_error",
                "upstream_error",
                429.into(),
            ),
            (
                503,
                br#"{"error":{"message":"busy","code":503.5}}"#,
                "503.5",
                "upstream_error",
                503.into(),
            ),
            (
                503,
                br#"{"error":{"message":"busy","code":18446744073709551615}}"#,
                "18446744073709551615",
                "upstream_error",
                503.into(),
            ),
            (
                400,
                br#"{"error":{"message":"no","type":"invalid","code":true}}"#,
                "true",
                "invalid",
                400.into(),
            ),
            (
                429,
                br#"{"error":{"message":"m","code":"q","status":"RESOURCE_EXHAUSTED"}}"#,
                "q",
                "upstream_error",
                "RESOURCE_EXHAUSTED".into(),
            ),
            (
                500,
                br#"{"error":{"message":"m","type":"server","code":null}}"#,
                "server",
                "server",
                500.into(),
            ),
        ];
        for (status, body, code, kind, said_status) in cases {
            let status = StatusCode::from_u16(status).expect("status");
            let error = super::super::upstream_error_body(
                status,
                Bytes::from_static(body),
                &Fields::default(),
                &Redactor::default(),
            );
            let failure = LateFailure::upstream(status, &error.body, error.message, Moment::now());
            let event = parsed(&failure.responses_payload());
            let what = String::from_utf8_lossy(body);
            assert_eq!(event["code"], code, "{what}: {event}");
            assert_eq!(event["error"]["code"], code, "{what}: {event}");
            assert_eq!(event["error"]["type"], kind, "{what}: {event}");
            assert_eq!(event["error"]["status"], said_status, "{what}: {event}");
        }
        // The router's own failure: its code and status.
        let timeout = LateFailure::router(&ProxyError::UpstreamTimeout("slow".into()), None);
        let event = parsed(&timeout.responses_payload());
        assert_eq!(event["code"], "upstream_timeout");
        assert_eq!(event["error"]["code"], "upstream_timeout");
        assert_eq!(event["error"]["status"], 504);
    }

    #[test]
    fn only_event_stream_endpoints_open_early() {
        for path in [
            "/chat/completions",
            "/completions",
            "/responses",
            "/messages",
        ] {
            assert!(opens_early(path), "{path}");
        }
        for path in [
            "/api/chat",
            "/api/generate",
            "/embeddings",
            "/chat/completions/x",
        ] {
            assert!(!opens_early(path), "{path}");
        }
    }
}
