//! Forwarding one `POST /v1/<path>` request: pick the target, rewrite the model, send it
//! upstream, and relay the answer (whole or streamed) while recording it.
//!
//! [`handle`] is the same for every client: the router's own HTTP/1 ([`crate::http1`]) calls
//! it with the fields and body it read; hyper's side (HTTP/2 clients) goes through
//! [`forward`], which reads the body and turns the [`Answer`] into an axum response.
//!
//! The request path does no parsing beyond the body's top level (or, for a
//! `multipart/form-data` body, its part headers: [`form`]) and, for streams, one small parse
//! per event; everything else the record needs is done by the recorder task.

pub mod body;
pub mod chunks;
pub mod coded_whole;
pub mod decoded;
pub mod early;
pub mod failure_log;
pub mod form;
pub mod headers;
pub mod intake;
pub mod members;
pub mod sse;
pub mod stream;
pub mod stream_options;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::config::DEFAULT_TIMEOUT;
use crate::content_coding::DecodeBudget;
use crate::error::{ProxyError, StreamErrorForm, error_body};
use crate::hard_stop::Stopped;
use crate::http1::fields::{Fields, header_map_of};
use crate::record::{Decoded, Outcome, RecordGuard, RequestRecord, Started};
use crate::routing::{self, Lookup, ModelRef, Target};
use crate::secret::Secret;
use crate::sinks::redact::{MIN_SECRET_LEN, Redactor};
use crate::state::AppState;
use crate::upstream::{ProxyEnv, RequestBody, UpstreamError, UpstreamResponse, Via};
use crate::usage::ResponseSummary;
use body::RequestView;
use failure_log::FailureLog;
use form::FormView;
use headers::{AnswerFields, Shape, UpstreamFields};
use intake::{Gathered, Unread, read_body};
use stream::StreamFailures;
use stream::{StreamSettings, StreamTee};

/// Largest non-stream upstream answer the router will hold; beyond it the request fails
/// with 502 rather than exhausting memory.
pub const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;

/// One request to proxy, its body already read.
pub struct ProxyRequest<'a> {
    pub caller: &'a Caller,
    /// The path after `/v1`, normalised: `/chat/completions`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fields: &'a Fields,
    pub body: Bytes,
    /// The client is known to have left already: the router's HTTP/1 found its connection
    /// closed behind this request, which it had pipelined behind an earlier one
    /// ([`crate::http1::server`]). Routed and recorded as a disconnect, never sent upstream:
    /// sent, it would be cancelled at once, a generation started (and perhaps billed) for
    /// nobody.
    pub client_gone: bool,
}

/// The router's answer to a proxied request.
pub struct Answer {
    pub status: StatusCode,
    pub fields: AnswerFields,
    pub body: AnswerBody,
}

pub enum AnswerBody {
    Whole(Bytes),
    /// A whole answer whose record waits for the answer to be written: [`Delivery`].
    Recorded(Bytes, Delivery),
    /// [`Self::Recorded`] for an answer decoded as it is written ([`coded_whole`]).
    Decoding(Box<coded_whole::DecodedAnswer>, Delivery),
    /// Relayed as it arrives; dropping it before its end records a client disconnect.
    Stream(Box<StreamTee>),
}

/// A whole answer's record, handed over once the answer has been written to the client
/// ([`Self::delivered`]), or dropped with it unwritten: then recorded as a disconnect, as a
/// stream cut short is. The record's usage and body are kept either way.
pub struct Delivery {
    guard: RecordGuard,
    outcome: Outcome,
    /// What the answer, relayed compressed, decoded to, when the router decoded it
    /// ([`success_body`]): its events are made from that ([`whole_as_stream`]).
    decoded: Option<Decoded>,
}

impl Delivery {
    /// The whole answer reached the client (as far as the socket says).
    pub fn delivered(mut self) {
        self.guard.finish(self.outcome);
    }

    /// Shutdown's hard stop came while the client took nothing more of the answer (the
    /// write waited for room): recorded as a stream the hard stop cuts is (`StreamFailed`,
    /// "shutting down"), since the cut is the router's doing, not the client's leaving.
    pub fn cut_at_shutdown(mut self) {
        if let Some(record) = self.guard.record_mut() {
            record.error = Some(ANSWER_CUT_AT_SHUTDOWN.to_owned());
        }
        self.guard.finish(Outcome::StreamFailed);
    }
}

/// The record's error for a whole answer cut at shutdown ([`Delivery::cut_at_shutdown`]).
const ANSWER_CUT_AT_SHUTDOWN: &str =
    "the router is shutting down; the answer was cut (the client took nothing more of it)";

/// A whole answer for hyper's side of the server: its record is handed over after hyper
/// took the last byte, or as a disconnect when the body is dropped first. The body goes in
/// pieces of [`DELIVERY_PIECE`]: HTTP/2 asks for the next only once the client's flow-control
/// window has room, so the last is taken about when the client has read the rest, and one
/// that leaves halfway through a large answer is recorded as gone (handed over whole, the
/// answer counted as delivered the moment hyper buffered it).
struct DeliveredBody {
    data: Data,
    delivery: Option<Delivery>,
}

/// What of a [`DeliveredBody`] is still to go.
enum Data {
    Whole(Option<Bytes>),
    Decoding(Box<coded_whole::DecodedAnswer>),
}

/// See [`DeliveredBody`]; HTTP/2's default window is 64 KiB.
const DELIVERY_PIECE: usize = 64 * 1024;

impl DeliveredBody {
    fn whole(data: Bytes, delivery: Delivery) -> Self {
        Self {
            data: Data::Whole(Some(data)),
            delivery: Some(delivery),
        }
    }

    fn decoding(answer: Box<coded_whole::DecodedAnswer>, delivery: Delivery) -> Self {
        Self {
            data: Data::Decoding(answer),
            delivery: Some(delivery),
        }
    }

    /// The next piece, at most [`DELIVERY_PIECE`]; `None` once all of it went.
    fn next_piece(&mut self) -> Option<Bytes> {
        match &mut self.data {
            Data::Whole(data) => {
                let mut rest = data.take()?;
                if rest.len() > DELIVERY_PIECE {
                    let piece = rest.split_to(DELIVERY_PIECE);
                    *data = Some(rest);
                    return Some(piece);
                }
                Some(rest)
            }
            Data::Decoding(answer) => answer.next_piece(DELIVERY_PIECE),
        }
    }

    fn left(&self) -> usize {
        match &self.data {
            Data::Whole(data) => data.as_ref().map_or(0, Bytes::len),
            Data::Decoding(answer) => answer.left(),
        }
    }
}

impl http_body::Body for DeliveredBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(piece) = self.next_piece() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        if self.left() > 0 {
            // An answer decoded as it goes ended short of the length it announced (its data
            // decoded whole when it was scanned, so this cannot happen): the stream is reset
            // rather than passed for whole, and the record says the answer did not arrive.
            self.delivery = None;
            let error = std::io::Error::other("the answer ended short of its length");
            return std::task::Poll::Ready(Some(Err(error)));
        }
        if let Some(delivery) = self.delivery.take() {
            delivery.delivered();
        }
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        // Not at its end until polled past the data, so the record is handed over then.
        self.left() == 0 && self.delivery.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left() as u64)
    }
}

/// A stream relayed unread with its upstream's length ([`StreamTee::length`]), for hyper's
/// side of the server: its exact size hint is what hyper sends as the Content-Length.
struct SizedStream {
    tee: std::pin::Pin<Box<StreamTee>>,
    /// Bytes still to come.
    left: u64,
}

impl http_body::Body for SizedStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use futures_util::Stream as _;
        let polled = std::task::ready!(self.tee.as_mut().poll_next(cx));
        std::task::Poll::Ready(polled.map(|item| {
            item.map(|data| {
                self.left = self.left.saturating_sub(data.len() as u64);
                http_body::Frame::data(data)
            })
        }))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

impl Answer {
    /// The router's own error, in OpenAI's shape.
    pub fn error(error: &ProxyError, request_id: Option<String>) -> Self {
        Self {
            status: error.status(),
            fields: AnswerFields {
                upstream: None,
                shape: Shape::RouterError {
                    is_final: error.is_final(),
                },
                request_id,
            },
            body: AnswerBody::Whole(error.body()),
        }
    }

    /// The router's own error to a proxied request it refused before it had a record (a
    /// body that is not JSON or too large, a model it cannot route, a key it does not know):
    /// it still carries a request id, as every answer on a proxied route does, so a user can
    /// quote it. Nothing records such a request but a line of the server log (see
    /// [`FailureLog::refusal`]); the id is made here, on the error path, so a request that is
    /// routed pays for one id only.
    pub fn refused(error: &ProxyError, failures: &FailureLog) -> Self {
        let request_id = new_request_id();
        failures.refusal(&request_id, error.status().as_u16(), error.code());
        Self::error(error, Some(request_id))
    }

    /// As an axum response (hyper's side of the server).
    pub fn into_axum(self) -> Response {
        let body = match self.body {
            AnswerBody::Whole(bytes) => Body::from(bytes),
            // A whole answer sent as an event stream ([`whole_as_stream`]) has no
            // Content-Length, as no stream has.
            AnswerBody::Recorded(bytes, delivery)
                if matches!(self.fields.shape, Shape::Stream { sse: true }) =>
            {
                Body::new(Unsized(Body::new(DeliveredBody::whole(bytes, delivery))))
            }
            AnswerBody::Recorded(bytes, delivery) => {
                Body::new(DeliveredBody::whole(bytes, delivery))
            }
            AnswerBody::Decoding(answer, delivery) => {
                Body::new(DeliveredBody::decoding(answer, delivery))
            }
            AnswerBody::Stream(tee) => match tee.length() {
                // hyper sends the exact size it is told as the Content-Length.
                Some(length) => Body::new(SizedStream {
                    tee: Box::into_pin(tee),
                    left: length,
                }),
                None => Body::from_stream(*tee),
            },
        };
        // hyper's HTTP/2 server sends a body's exact size as its Content-Length, so an
        // answer whose status has no body (204, 304) went out with `content-length: 0`
        // (RFC 9110 §8.6 forbids it on a 204, and on a 304 it must be the 200's); over
        // HTTP/1 it has none, and now neither here.
        let body = if bodiless(self.status) {
            Body::new(Unsized(body))
        } else {
            body
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = header_map_of(&self.fields);
        response
    }
}

/// Statuses whose answers have no body, and so no `Content-Length` of their own.
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A body that tells hyper no size (so hyper writes no `Content-Length` for it), polled as
/// usual (a record handed over at its end still is).
struct Unsized(Body);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// A request from hyper's side of the server (an HTTP/2 client): the body is read here.
pub struct Incoming<'a> {
    pub caller: &'a Caller,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fields: &'a Fields,
    pub body: Body,
}

pub async fn forward(state: &Arc<AppState>, incoming: Incoming<'_>) -> Response {
    let mut hard_stop = state.hard_stop.stopped();
    let request = match read_incoming(state, incoming, &mut hard_stop).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    handle(state, request, &mut hard_stop).await.into_axum()
}

/// [`forward`] for a `GET` or `DELETE` (see [`handle_other`]).
pub async fn forward_other(
    state: &Arc<AppState>,
    incoming: Incoming<'_>,
    method: &Method,
) -> Response {
    let mut hard_stop = state.hard_stop.stopped();
    let request = match read_incoming(state, incoming, &mut hard_stop).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    handle_other(state, request, method, &mut hard_stop)
        .await
        .into_axum()
}

/// Reads an HTTP/2 request's body within `max_body_bytes`; the refusal when it cannot. A
/// body still coming when the grace period ends gets the router's 503, as over HTTP/1 (the
/// stream was given up without an answer when the connection was torn down; bb62).
async fn read_incoming<'a>(
    state: &AppState,
    incoming: Incoming<'a>,
    hard_stop: &mut Stopped,
) -> Result<ProxyRequest<'a>, Response> {
    let limit = state.config.load().settings.max_body_bytes;
    let stall = state.body_read_timeout;
    let read = read_body(incoming.body, incoming.fields, limit, stall);
    let body = tokio::select! {
        biased;
        body = read => body,
        () = hard_stop => Err(ProxyError::ShuttingDown(BODY_CUT_AT_SHUTDOWN.into()).into()),
    };
    let body = match body {
        Ok(body) => body,
        Err(Unread::Refused(error)) => {
            return Err(Answer::refused(&error, &state.failures).into_axum());
        }
        // Nobody to answer, and nothing refused: not logged as a refusal (it was, "refused
        // 400 invalid_request", where HTTP/1 sees a client gone). No answer goes out: the
        // stream is reset ([`crate::http1::http2::NoAnswer`]), as HTTP/1 closes the
        // connection; the answer here is for a server that cannot reset one.
        Err(Unread::Gone) => {
            let gone = ProxyError::InvalidRequest("the client went away sending its body".into());
            let mut answer = Answer::error(&gone, None).into_axum();
            answer
                .extensions_mut()
                .insert(crate::http1::http2::NoAnswer);
            return Err(answer);
        }
    };
    Ok(ProxyRequest {
        caller: incoming.caller,
        path: incoming.path,
        query: incoming.query,
        fields: incoming.fields,
        body,
        client_gone: false,
    })
}

/// Proxies one request whose body was read: routing, the upstream exchange, the record.
/// `hard_stop` is the connection's wait on shutdown's hard stop (made once per connection:
/// a new one per request cost a cancellation token's clone, registration and drop).
pub async fn handle(
    state: &Arc<AppState>,
    request: ProxyRequest<'_>,
    hard_stop: &mut Stopped,
) -> Answer {
    match forward_inner(state, request, hard_stop).await {
        Ok(answer) => answer,
        Err(error) => Answer::refused(&error, &state.failures),
    }
}

/// Forwards a `GET` or `DELETE` (`files.content`, `batches.retrieve`, `models.list` with
/// `?proxy=`) to the target the request names: `?proxy=`, else `settings.default_server`
/// ([`routing::resolve_unnamed`]). Its body, if any, goes as it came; a 2xx answer is relayed
/// as it arrives (a file's content may be large, whatever its type), but for one that may be
/// a small JSON document (an error under a 200 that echoes the key: see [`held_answer`]), an
/// error answer is read whole as a `POST`'s is, and a 3xx is an ordinary outcome. It is
/// recorded as a `POST` naming no model is (its answer's usage not counted), its endpoint
/// `GET /files/<id>`. A path of its own, so a `POST` pays nothing.
pub async fn handle_other(
    state: &Arc<AppState>,
    request: ProxyRequest<'_>,
    method: &Method,
    hard_stop: &mut Stopped,
) -> Answer {
    let aliased = (*method == Method::DELETE && !routing::names_proxy(request.query))
        .then(|| routing::aliased_model_path(request.path, &state.config.load()))
        .flatten();
    let (model, path) = match aliased {
        Some((model, path)) => (Some(model), path),
        None => (None, request.path.to_owned()),
    };
    let request = ProxyRequest {
        path: &path,
        ..request
    };
    let view = Verbatim {
        method: method.clone(),
        model,
    };
    match forward_read(state, request, view, Started::now(), hard_stop).await {
        Ok(answer) => answer,
        Err(error) => Answer::refused(&error, &state.failures),
    }
}

async fn forward_inner(
    state: &Arc<AppState>,
    request: ProxyRequest<'_>,
    hard_stop: &mut Stopped,
) -> Result<Answer, ProxyError> {
    let started_at = Started::now();
    // A JSON body is an object, so it begins with `{` and never pays for a look at the
    // Content-Type: only a body that does not is checked for being a form.
    if !request.body.starts_with(b"{") {
        if let Some(boundary) = form::boundary_of(request.fields)? {
            let form = FormView::parse(&request.body, &boundary)?;
            // Boxed: the JSON path's future does not grow by the form path's.
            return Box::pin(forward_read(state, request, form, started_at, hard_stop)).await;
        }
    }
    let view = match RequestView::parse_keeping_layout(&request.body, state.recorder.is_enabled()) {
        Ok(view) => view,
        Err(error) => {
            // A body that names no model goes where the request's target is named otherwise.
            let elsewhere = routing::names_proxy(request.query)
                || state.config.load().settings.default_server.is_some();
            return match RequestView::unnamed(&request.body) {
                Some(stream) if elsewhere => {
                    let view = Unnamed { stream };
                    Box::pin(forward_read(state, request, view, started_at, hard_stop)).await
                }
                Some(_) => Err(no_target(&request.body)),
                None => Err(error),
            };
        }
    };
    forward_read(state, request, view, started_at, hard_stop).await
}

/// Records a request whose client is known to have left before it was sent upstream
/// ([`ProxyRequest::client_gone`]) as a disconnect, as one that leaves while its upstream is
/// reached is, with an error that says it was not sent. The answer is for nobody: the
/// connection is closed without writing it.
fn gone_before_sending(mut guard: RecordGuard) -> Answer {
    if let Some(record) = guard.record_mut() {
        record.error = Some("client disconnected before the request was sent upstream".into());
    }
    guard.finish(Outcome::ClientDisconnected);
    Answer::error(
        &ProxyError::InvalidRequest("the client went away".into()),
        None,
    )
}

/// The refusal of a `POST` that names no model (an empty body, or JSON without `model`)
/// where nothing else names its target: it says what would route it, as a form's and a
/// `GET`'s refusals do, rather than only that the body is not JSON or has no model.
fn no_target(body: &[u8]) -> ProxyError {
    let what = if body.trim_ascii().is_empty() {
        "the request has no body, so it names no model"
    } else {
        "the request body has no \"model\""
    };
    ProxyError::InvalidRequest(format!(
        "{what}: add one (\"model\": \"[alias]name\"), or name the target with \
         ?proxy=<url> or settings.default_server in config.yaml (a POST without a model, \
         such as responses.cancel or batches.create, goes to one of them)"
    ))
}

/// A JSON body without a `model`, or none at all (`/batches`, `/responses/{id}/cancel`),
/// sent where `?proxy=` or `settings.default_server` says (see [`RequestView::unnamed`]): it
/// goes upstream as it came, and is recorded as it came (`{}` when empty).
struct Unnamed {
    stream: bool,
}

impl ReadBody for Unnamed {
    const FORM: bool = false;
    const COUNTS_USAGE: bool = false;

    fn model(&self) -> Option<&str> {
        None
    }

    fn stream(&self) -> bool {
        self.stream
    }

    fn record_body(&self, body: &Bytes) -> Bytes {
        if body.trim_ascii().is_empty() {
            Bytes::from_static(b"{}")
        } else {
            own_copy(body)
        }
    }

    fn take_layout(&mut self) -> Option<crate::record::BodyLayout> {
        None
    }
}

/// A `GET` or `DELETE` ([`handle_other`]): no stream asked for, its body (if any) sent as it
/// came and recorded as `{}`, since neither method has a body in OpenAI's API. No model, but
/// for a `models.delete` of an `[alias]name` id ([`routing::aliased_model_path`]).
struct Verbatim {
    method: Method,
    model: Option<String>,
}

impl ReadBody for Verbatim {
    const FORM: bool = false;
    const COUNTS_USAGE: bool = false;
    const OTHER_METHOD: bool = true;

    fn method(&self) -> &Method {
        &self.method
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn stream(&self) -> bool {
        false
    }

    fn record_body(&self, _body: &Bytes) -> Bytes {
        Bytes::from_static(b"{}")
    }

    fn take_layout(&mut self) -> Option<crate::record::BodyLayout> {
        None
    }
}

/// What the router read of a request body to route, rewrite and record it. Each kind of
/// body has its own, and [`forward_read`] is compiled once for each: the JSON path
/// ([`RequestView`]) does the very work it did before forms were read, no branch added.
trait ReadBody {
    /// A `multipart/form-data` body, recorded by its description ([`FormView::describe`]).
    const FORM: bool;
    /// The answer's usage counts: the request named a model, so it generated something.
    /// One that named none reads back or acts on what was generated (and counted) before:
    /// see [`crate::record::RequestRecord::usage_uncounted`].
    const COUNTS_USAGE: bool = true;
    /// A `GET` or `DELETE` ([`Verbatim`]): a 2xx answer is relayed as it arrives whatever its
    /// type (a file's content may be any size, JSON or text included), once it is longer than
    /// a small document (see [`held_answer`]), and a 3xx (a `304 Not Modified`) is an ordinary
    /// outcome, not the upstream's error.
    const OTHER_METHOD: bool = false;
    /// The method it goes upstream with: `POST` but for [`Verbatim`].
    #[inline]
    fn method(&self) -> &Method {
        &Method::POST
    }
    /// The `model` the client sent; `None` only for a form without one.
    fn model(&self) -> Option<&str>;
    fn stream(&self) -> bool;
    /// The body to send upstream, and whether `stream_options.include_usage` was added. By
    /// default as it came: no model to change, and no `stream_options` added to a body the
    /// router did not parse for them.
    fn rewrite(
        &self,
        body: &Bytes,
        _upstream_model: &str,
        _inject_usage: bool,
    ) -> (RequestBody, bool) {
        (body.clone().into(), false)
    }
    /// What the record holds of the request: one JSON object.
    fn record_body(&self, body: &Bytes) -> Bytes;
    /// Where the record body's top-level members are, when known.
    fn take_layout(&mut self) -> Option<crate::record::BodyLayout>;
    /// Whether the client asked for `stream_options.include_usage` itself. Read only for a
    /// stream the router answers before its upstream ([`early`]), or whose upstream answers
    /// one whole chat completion ([`whole_as_stream`]).
    fn client_asked_for_usage(&self) -> bool {
        false
    }
    /// Whether the client sent no `stream_options`, so any the upstream got was the router's
    /// ([`stream_options`]). Read only after a 400 to a stream the router asked for usage.
    fn sends_no_stream_options(&self) -> bool {
        false
    }
}

impl ReadBody for RequestView {
    const FORM: bool = false;

    #[inline]
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }

    #[inline]
    fn stream(&self) -> bool {
        self.stream
    }

    #[inline]
    fn rewrite(
        &self,
        body: &Bytes,
        upstream_model: &str,
        inject_usage: bool,
    ) -> (RequestBody, bool) {
        RequestView::rewrite(self, body, upstream_model, inject_usage)
    }

    /// An exact copy: the layout's offsets point into it.
    #[inline]
    fn record_body(&self, body: &Bytes) -> Bytes {
        own_copy(body)
    }

    #[inline]
    fn take_layout(&mut self) -> Option<crate::record::BodyLayout> {
        self.layout.take()
    }

    fn client_asked_for_usage(&self) -> bool {
        RequestView::client_asked_for_usage(self)
    }

    fn sends_no_stream_options(&self) -> bool {
        RequestView::sends_no_stream_options(self)
    }
}

impl ReadBody for FormView {
    const FORM: bool = true;

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn stream(&self) -> bool {
        self.stream
    }

    /// Only the model: `stream_options` is JSON's, a form has none to add to.
    fn rewrite(
        &self,
        body: &Bytes,
        upstream_model: &str,
        _inject_usage: bool,
    ) -> (RequestBody, bool) {
        (FormView::rewrite(self, body, upstream_model), false)
    }

    /// The text fields and an outline of each file: never a file's bytes.
    fn record_body(&self, body: &Bytes) -> Bytes {
        self.describe(body)
    }

    fn take_layout(&mut self) -> Option<crate::record::BodyLayout> {
        None
    }
}

/// Routes and forwards a request whose body was read as `view`.
async fn forward_read<V: ReadBody>(
    state: &Arc<AppState>,
    request: ProxyRequest<'_>,
    mut view: V,
    started_at: Started,
    hard_stop: &mut Stopped,
) -> Result<Answer, ProxyError> {
    let config = state.config.load_full();
    let body = request.body;
    let request_layout = view.take_layout();
    let caller = request.caller;
    let hops = headers::hops_of(request.fields)?;
    if hops >= headers::MAX_HOPS {
        // A count too large for a `u32` was read as the most: not a count to quote as sent.
        let at_least = if hops == u32::MAX { "at least " } else { "" };
        return Err(ProxyError::LoopDetected(format!(
            "the request has come through {at_least}{hops} routers ({} header); its target \
             leads back to a router (a ?proxy= or [http://...] URL naming the router itself, \
             or a server url that does)",
            headers::HOPS
        )));
    }

    let proxy = routing::proxy_param(request.query)?;
    let target = match view.model() {
        Some(model) => {
            let owner = match (&proxy, routing::parse_model(model)?) {
                (None, ModelRef::Plain(name)) if config.settings.default_server.is_none() => {
                    state.models.find_owner(state, name, caller).await
                }
                _ => None,
            };
            let model_owner = |_: &str| owner.clone();
            let alias_visible = |alias: &str| caller.may_use(alias);
            let lookup = Lookup {
                model_owner: &model_owner,
                alias_visible: &alias_visible,
                url_targets: !caller.is_account(),
            };
            routing::resolve(proxy.as_deref(), model, &config, &lookup)?
        }
        None => routing::resolve_unnamed(proxy.as_deref(), &config)?,
    };
    check_permission(caller, &target)?;

    let stream = view.stream();
    let (timeout, stream_usage) = target
        .server
        .map_or((DEFAULT_TIMEOUT, true), |s| (s.timeout, s.stream_usage));
    let inject_usage = stream
        && stream_usage
        && takes_stream_options(request.path)
        && !state.stream_options_refused.refused(&target);
    let (upstream_body, injected_usage) = view.rewrite(&body, &target.upstream_model, inject_usage);
    let url = routing::request_url_text(&target.base, request.path, request.query);

    let request_id = new_request_id();
    let mut guard = RecordGuard::start(state.recorder.clone(), || {
        let model = view.model().unwrap_or_default();
        let mut record = new_record(
            &request_id,
            caller,
            &target,
            request.path,
            (model, stream),
            view.record_body(&body),
            started_at,
        );
        // Only for redaction in the sinks (an upstream may echo them in an error).
        let credentials = crate::auth::presented_credentials(request.fields).map(Cow::Borrowed);
        let query = routing::url_target_secrets(&target, model);
        let client_query = routing::client_query_secrets(request.query);
        let basic = crate::auth::presented_basic(request.fields).map(Cow::Owned);
        record.secrets = credentials
            .chain(basic)
            .chain(query)
            .chain(client_query)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .map(Secret::new)
            .collect();
        // The configured keys: the record's texts are cut short of them as of the request's
        // own secrets above (see `RequestRecord::keys`).
        record.keys = state.redactor.clone();
        // Offsets into `body`, of which the record holds an exact copy.
        record.request_layout = request_layout;
        record.request_is_form = V::FORM;
        record.usage_uncounted = !V::COUNTS_USAGE;
        if *view.method() != Method::POST {
            let path = routing::path_for_records(request.path);
            record.endpoint = format!("{} {path}", view.method());
        }
        record
    });
    if request.client_gone {
        return Ok(gone_before_sending(guard));
    }
    tracing::debug!(request_id, provider = %target.provider, mode = %target.mode, "forwarding");

    let post = *view.method() == Method::POST;
    let upstream_fields = UpstreamFields {
        client: request.fields,
        target: &target,
        post,
        hops,
    };
    let prepared = state
        .upstream
        .prepare(view.method(), url, &upstream_fields, upstream_body);
    // Boxed: the exchange's future is large, and a future held inline is moved (copied)
    // with every future that contains it. It owns what it needs, so a stream the router
    // answers before its upstream does can take it along ([`early`]).
    let exchange = Arc::clone(state);
    let now = Instant::now();
    let deadline = now + timeout;
    let within = crate::upstream::Within { deadline, timeout };
    let mut sent: early::Sending =
        Box::pin(async move { exchange.upstream.send_prepared(prepared, within).await });
    // One timer: for a stream that may open early it first fires at the keep-alive interval
    // (then the router answers the client itself and the stream goes on waiting, see
    // [`early`]); otherwise at `timeout_secs`.
    let wake_at = if stream && early::opens_early(request.path) {
        deadline.min(now + state.keepalive_interval)
    } else {
        deadline
    };
    let timer = std::pin::pin!(tokio::time::sleep_until(wake_at));
    // Shutdown's grace period over: a request still waiting is answered (and recorded) now,
    // not dropped with the runtime.
    let answered = tokio::select! {
        biased;
        answered = &mut sent => Some(answered),
        () = timer => None,
        () = &mut *hard_stop => return Ok(fail(guard, shutting_down(), request_id, &state.failures)),
    };
    // The request once more without the `stream_options` the router added, should the
    // upstream refuse them (see [`stream_options`]): described here, built only then.
    let resend = || stream_options::Resend {
        state,
        view: &view,
        body: &body,
        target: &target,
        request: (request.path, request.query, request.fields),
        hops,
        within,
        opens_early: wake_at < deadline,
    };
    // The rest of a stream's wait, answered by the router meanwhile (see [`early`]).
    let wait = |sent, again, drop_usage_chunk| early::Wait {
        again,
        sent,
        deadline,
        timeout,
        provider: target.provider.clone(),
        via: Named::of(&target).via,
        drop_usage_chunk,
        client_usage: view.client_asked_for_usage(),
        errors: StreamErrorForm::of(request.path),
        last_events: crate::usage::LastEvents::of(request.path),
    };
    let upstream = match answered {
        None if wake_at < deadline => {
            // Made now (the slow path), sent only if the upstream refuses `stream_options`.
            let again = (injected_usage && view.sends_no_stream_options())
                .then(|| stream_options::Again::of(&resend()));
            let wait = wait(sent, again, injected_usage);
            return Ok(early::answer(state, wait, guard, request_id));
        }
        None => {
            let error = timeout_error(Named::of(&target), timeout);
            return Ok(fail(guard, error, request_id, &state.failures));
        }
        Some(Err(e)) => {
            let error = send_error(&target.provider, &e, &state.redactor);
            return Ok(fail(guard, error, request_id, &state.failures));
        }
        Some(Ok(mut response)) => {
            response.fields = headers::fields_without_echoed_keys(&state.redactor, response.fields);
            response
        }
    };
    // An upstream that refuses the `stream_options` the router added (a strict local server)
    // gets the request once more as the client sent it. Boxed: only this answer pays for it.
    let (upstream, injected_usage) = if injected_usage
        && upstream.status == StatusCode::BAD_REQUEST
        && view.sends_no_stream_options()
    {
        match Box::pin(stream_options::without_them(&resend(), upstream, hard_stop)).await {
            stream_options::Retried::Again(response) => (response, false),
            stream_options::Retried::Waiting(sending) => {
                let wait = wait(sending, None, false);
                return Ok(early::answer(state, wait, guard, request_id));
            }
            stream_options::Retried::Kept(status, fields, read) => {
                if let Some(record) = guard.record_mut() {
                    record.response_started_at = Some(record.now());
                    record.status = Some(status.as_u16());
                }
                let read = Read {
                    status,
                    fields,
                    body: read,
                };
                let answered = (guard, V::OTHER_METHOD);
                let reading = Reading::of(state, request.fields, false);
                return Ok(read_answer(read, answered, request_id, reading).await);
            }
            stream_options::Retried::Failed(error) => {
                return Ok(fail(guard, error, request_id, &state.failures));
            }
        }
    } else {
        (upstream, injected_usage)
    };
    let status = upstream.status;
    if let Some(record) = guard.record_mut() {
        record.response_started_at = Some(record.now());
        record.status = Some(status.as_u16());
    }

    // A stream request answered 2xx with anything but one JSON document is relayed as it
    // arrives: through the SSE tee when it is SSE, passed through unread otherwise. So is a
    // 2xx event stream or binary body to a request that did not say `"stream": true` (a
    // speech request streams audio, or `speech.audio.delta` events): what streams is the
    // upstream's to say, and holding it to the end would hold the client's first byte too.
    // A `GET`'s or `DELETE`'s 2xx answer always is (see [`ReadBody::OTHER_METHOD`]), but a
    // `204 No Content`, which has no body to relay: it goes the whole answer's way, which
    // writes no framing for it, and a small document (see [`held_answer`] below).
    //
    // An event stream whose label does not say so (none, `text/plain`, `application/json`)
    // is told by its first bytes, where a stream is an event stream by definition (see
    // [`sniffed_event_stream`]): read as SSE, it goes out as one.
    let (upstream, sniffed_sse) = if stream
        && status.is_success()
        && early::opens_early(request.path)
        && may_be_unlabelled_sse(&upstream.fields)
    {
        // Boxed: only such an answer pays for the wait.
        Box::pin(sniffed_event_stream(upstream, timeout, hard_stop)).await
    } else {
        (upstream, false)
    };
    // A `GET`'s or `DELETE`'s 2xx answer that may be one document (JSON, text, no label) is
    // first read ahead: one that ends within [`MAX_HELD_ANSWER`] is answered whole, as a
    // `POST`'s is, so an error under a 200 that echoes the key is redacted (see
    // [`held_answer`]); a longer one (a file's content) is relayed as it arrives.
    let upstream = if V::OTHER_METHOD
        && status.is_success()
        && status != StatusCode::NO_CONTENT
        && may_be_document(&upstream.fields)
    {
        // Boxed: only such an answer pays for the wait.
        match Box::pin(held_answer(upstream, deadline, hard_stop)).await {
            Held::Whole(read) => {
                let reading = Reading::of(state, request.fields, false);
                return Ok(read_answer(read, (guard, true), request_id, reading).await);
            }
            Held::Longer(upstream) => upstream,
            Held::Failed(error) => {
                let error = match error {
                    None => unfinished_error(Named::of(&target), timeout),
                    Some(error) => error.into_proxy_error(Named::of(&target)),
                };
                return Ok(fail(guard, error, request_id, &state.failures));
            }
            Held::Stopped => {
                return Ok(fail(guard, shutting_down(), request_id, &state.failures));
            }
        }
    } else {
        upstream
    };
    let streamed = status.is_success()
        && ((V::OTHER_METHOD && status != StatusCode::NO_CONTENT)
            || if stream {
                sniffed_sse || !is_json(&upstream.fields)
            } else {
                streams_unasked(&upstream.fields)
            });
    if streamed {
        // Relayed and read as a stream: its record is one (events, first token). A `GET`'s
        // answer that is no event stream is one document relayed as it arrives, not a stream.
        if !stream && (!V::OTHER_METHOD || is_event_stream(&upstream.fields)) {
            if let Some(record) = guard.record_mut() {
                record.stream = true;
            }
        }
        let coding = StreamCoding::of(&upstream.fields);
        let settings = StreamSettings {
            keepalive: state.keepalive_interval,
            idle_timeout: timeout,
            drop_usage_chunk: injected_usage,
            sse: (sniffed_sse || is_event_stream(&upstream.fields))
                && !matches!(coding, StreamCoding::Opaque),
            errors: StreamErrorForm::of(request.path),
            last_events: crate::usage::LastEvents::of(request.path),
            via: Named::of(&target).via,
        };
        // A compressed body that is not SSE passes through as it came, coding and all, to a
        // client that takes its coding (no CPU spent on it); to one that does not (zstd audio
        // to the openai SDKs, gzip to curl without `--compressed`) it goes decoded as it
        // arrives, as a whole answer goes decoded (see [`success_body`]).
        let decoder = match coding {
            StreamCoding::Decoded(decoder) if settings.sse => Some(decoder),
            StreamCoding::Decoded(decoder) if !client_takes(request.fields, &upstream.fields) => {
                Some(decoder)
            }
            _ => None,
        };
        return Ok(stream_answer(
            state, upstream, settings, decoder, guard, request_id,
        ));
    }
    let limits = Limits {
        deadline,
        timeout,
        hard_stop,
        failures: &state.failures,
    };
    let as_events = stream && takes_stream_options(request.path);
    let whole = whole_answer(
        upstream,
        limits,
        &target,
        (guard, V::OTHER_METHOD),
        request_id,
        Reading::of(state, request.fields, as_events),
    );
    let answer = Box::pin(whole).await;
    if as_events {
        let client_usage = view.client_asked_for_usage();
        return Ok(whole_as_stream(answer, client_usage).await);
    }
    Ok(answer)
}

/// A stream request's whole 2xx chat or text completion that came before the router's early head (an
/// upstream that ignores `"stream": true` and answers at once): sent as the events a stream
/// of it would have been ([`chunks`], the usage chunk only if `client_usage`), as one that
/// comes after that head is ([`early`]). Relayed as it came, it left the openai SDKs, which
/// read a stream request's answer as events whatever its label, with no chunk and no error.
/// The record is the whole answer's, untouched: only what the client gets changes. Any other
/// answer (an error, a 2xx of another shape, one too large to decode or, past
/// [`chunks::MAX_EVENTS_FROM_WHOLE`], to read into events) is left as it was.
async fn whole_as_stream(answer: Answer, client_usage: bool) -> Answer {
    let AnswerBody::Recorded(body, delivery) = &answer.body else {
        return answer;
    };
    if !answer.status.is_success() {
        return answer;
    }
    // Relayed as it came, it may still be compressed (a client that takes the coding): the
    // events are made from it decoded, as the early head's are, by the one decode that read
    // it ([`success_body`]).
    let json = match answer.fields.shape {
        Shape::Decoded => body.clone(),
        Shape::Relayed => {
            let coded =
                answer.fields.upstream.as_ref().is_some_and(|fields| {
                    crate::content_coding::content_encoding(fields).is_some()
                });
            match &delivery.decoded {
                _ if !coded => body.clone(),
                Some(Decoded::Read(decoded)) => decoded.clone(),
                _ => return answer,
            }
        }
        _ => return answer,
    };
    // Too large to read into events (or not a completion): as the upstream sent it.
    let events = chunks::read_whole(json, move |value| {
        value.and_then(|value| chunks::as_events(&value, client_usage))
    });
    let Ok(Some(events)) = events.await else {
        return answer;
    };
    match answer.body {
        AnswerBody::Recorded(_, delivery) => Answer {
            status: answer.status,
            fields: AnswerFields {
                shape: Shape::Stream { sse: true },
                ..answer.fields
            },
            body: AnswerBody::Recorded(events, delivery),
        },
        body => Answer { body, ..answer },
    }
}

/// How a streamed answer's `Content-Encoding` is dealt with, decided once from its headers.
pub(crate) enum StreamCoding {
    /// None: the bytes are the events.
    Plain,
    /// gzip, deflate, br or zstd (or several stacked: `gzip, br`): decoded as it arrives
    /// ([`decoded`]) and relayed decoded, without the coding, so events can be split, read
    /// and dropped as in a plain stream.
    Decoded(Box<crate::content_coding::StreamDecoder>),
    /// A coding the router cannot decode (`compress`, alone or among others): the stream
    /// cannot be split into events (nor a comment put into it), so it passes through unread with its
    /// `Content-Encoding`, as a stream that is not SSE does. Its record is honest about it:
    /// no usage, no text (and a usage chunk the router asked for reaches the client).
    Opaque,
}

impl StreamCoding {
    pub(crate) fn of(fields: &Fields) -> Self {
        let Some(coding) = crate::content_coding::content_encoding(fields) else {
            return Self::Plain;
        };
        match crate::content_coding::StreamDecoder::new(&coding) {
            Some(decoder) => Self::Decoded(Box::new(decoder)),
            None => Self::Opaque,
        }
    }
}

/// Whether the client whose request carried `client` takes the coding of an answer with
/// the header fields `answer` (see [`crate::content_coding::accepted`]).
fn client_takes(client: &Fields, answer: &Fields) -> bool {
    crate::content_coding::content_encoding(answer)
        .is_none_or(|coding| crate::content_coding::accepted(client, &coding))
}

/// Whether an endpoint takes OpenAI's `stream_options.include_usage`. Only chat and legacy
/// completions define it; the Responses API reports usage in its own events and its
/// `stream_options` has no such field, and strict upstreams (Anthropic's `/v1/messages`,
/// pydantic servers) reject unknown fields, so nothing is added anywhere else.
fn takes_stream_options(path: &str) -> bool {
    matches!(path, "/chat/completions" | "/completions")
}

/// A UUIDv7 (time-ordered, so ids sort by arrival in logs and the ledger). Its random part
/// comes from a per-thread generator seeded once, not from the OS on every request: a
/// `getrandom` syscall per request showed in the benchmark. Request ids need uniqueness, not
/// secrecy.
pub fn new_request_id() -> String {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .simple()
        .to_string()
}

fn check_permission(caller: &Caller, target: &Target<'_>) -> Result<(), ProxyError> {
    if !caller.is_account() {
        return Ok(());
    }
    if target.mode.is_url_target() {
        return Err(ProxyError::UrlTargetForbidden(
            "URL targets (?proxy= and [https://...] models) are disabled while account management is on; use a configured provider alias".into(),
        ));
    }
    match target.alias() {
        Some(alias) if caller.may_use(alias) => Ok(()),
        Some(alias) => Err(ProxyError::ProviderForbidden(format!(
            "your key may not use provider \"{alias}\""
        ))),
        None => Ok(()),
    }
}

fn new_record(
    request_id: &str,
    caller: &Caller,
    target: &Target<'_>,
    path: &str,
    (model, stream): (&str, bool),
    body: Bytes,
    started: Started,
) -> RequestRecord {
    RequestRecord {
        request_id: request_id.to_owned(),
        user: caller.user.clone(),
        provider: target.provider.clone(),
        alias: target.alias().map(str::to_owned),
        mode: target.mode,
        endpoint: routing::path_for_records(path).into_owned(),
        requested_model: routing::model_for_records(model).into_owned(),
        upstream_model: routing::redact_userinfo(&target.upstream_model).into_owned(),
        stream,
        request_body: body,
        request_layout: None,
        request_is_form: false,
        started_at: started.wall,
        started_mono: started.mono,
        response_started_at: None,
        first_token_at: None,
        ended_at: started.wall,
        status: None,
        outcome: Outcome::ClientDisconnected,
        error: None,
        response_body: None,
        response_is_json: false,
        response_encoding: None,
        response_decoded: None,
        response: ResponseSummary::default(),
        complete: false,
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

/// The record's own copy of a body. A body is usually a slice of a connection's read buffer;
/// a record waiting in a sink's queue must not keep that whole buffer (up to hundreds of KB)
/// alive, so it gets an allocation of exactly the body's size. A body of [`SHARED_BODY`] or
/// more fills a buffer gathered for it (see `intake::Gathered`: sized to its declared
/// length, or grown for it), which the record shares instead: copied, a 50 MB answer was
/// held twice while it was relayed.
fn own_copy(body: &Bytes) -> Bytes {
    if body.len() >= SHARED_BODY {
        return body.clone();
    }
    Bytes::copy_from_slice(body)
}

/// From this size on a record shares a body's buffer rather than copying it (see
/// [`own_copy`]).
const SHARED_BODY: usize = 1024 * 1024;

/// Whether the Content-Type's media type (without parameters) is `wanted`: exactly, so
/// `application/jsonl` or `application/json-seq` (many documents) is not `application/json`.
fn content_type_is(fields: &Fields, wanted: &str) -> bool {
    fields.get_str("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case(wanted)
    })
}

pub(crate) fn is_json(fields: &Fields) -> bool {
    content_type_is(fields, "application/json")
}

fn is_event_stream(fields: &Fields) -> bool {
    content_type_is(fields, "text/event-stream")
}

/// Whether a stream request's 2xx answer may be an event stream its label does not name:
/// labelled nothing, `text/plain` or `application/json` (some servers and gateways label
/// every answer so), and not compressed. Its first bytes tell ([`sniffed_event_stream`]).
fn may_be_unlabelled_sse(fields: &Fields) -> bool {
    crate::content_coding::content_encoding(fields).is_none()
        && (fields.get_str("content-type").is_none()
            || content_type_is(fields, "")
            || content_type_is(fields, "text/plain")
            || is_json(fields))
}

/// Longest wait for the first bytes of an answer whose label does not say it is an event
/// stream: its head is held meanwhile (no keep-alive either), so a stream whose first token
/// is slow to come goes on as before, relayed unread, rather than leave the client without a
/// head for as long as the upstream thinks.
const SNIFF_WAIT: Duration = Duration::from_secs(2);

/// `upstream`'s answer, and whether it is an event stream: its first bytes read (within
/// [`SNIFF_WAIT`] and `timeout`, or until the hard stop) until they tell
/// ([`sse::sse_opening`]: a byte-order mark or blank lines written alone do not). Whatever was
/// read (frames, an error, the end) is put back in front of the rest of the body, so the path
/// the answer takes gets the upstream's bytes as they came. Without this, such a stream was
/// relayed unread (the usage chunk the router asked for reached a client that had not, and
/// the record had no usage), or held to its end when labelled JSON.
async fn sniffed_event_stream(
    mut upstream: UpstreamResponse,
    timeout: Duration,
    hard_stop: &mut Stopped,
) -> (UpstreamResponse, bool) {
    let wait = tokio::time::sleep(timeout.min(SNIFF_WAIT));
    tokio::pin!(wait);
    let mut read = Vec::new();
    let mut opening = Vec::new();
    let mut ended = false;
    let mut sse = false;
    loop {
        let next = tokio::select! {
            biased;
            () = &mut *hard_stop => break,
            () = &mut wait => break,
            next = upstream.body.frame() => next,
        };
        let Some(next) = next else {
            ended = true;
            break;
        };
        let data = next.as_ref().ok().and_then(http_body::Frame::data_ref);
        let decided = match data {
            Some(data) => {
                opening.extend_from_slice(&data[..data.len().min(64)]);
                sse::sse_opening(&opening)
            }
            // An error, or trailers: nothing more to tell by.
            None => Some(false),
        };
        read.push(next);
        match decided {
            Some(is_sse) => {
                sse = is_sse;
                break;
            }
            None if opening.len() >= 64 => break,
            None => {}
        }
    }
    if !read.is_empty() || ended {
        upstream.body = crate::upstream::UpstreamBody::read_ahead(read, ended, upstream.body);
    }
    (upstream, sse)
}

/// Whether a 2xx answer to a request that did not ask to stream is relayed as it arrives:
/// an event stream, or a body the router has no reason to hold (audio, octet-stream,
/// NDJSON). A whole answer is read in full only to search an error it may report for echoed
/// keys (`{"error": ...}`, see [`without_echoed_keys`]) and to record its body; JSON (also
/// `+json`), text (also the `application/` types of text a transcription may come as:
/// SubRip, XML) and an answer with no Content-Type are still read so.
fn streams_unasked(fields: &Fields) -> bool {
    let Some(content_type) = fields.get_str("content-type") else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let starts = |prefix: &str| {
        essence
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    if starts("text/event-stream") {
        return true;
    }
    let suffix = |wanted: &str| {
        essence
            .len()
            .checked_sub(wanted.len())
            .and_then(|at| essence.get(at..))
            .is_some_and(|end| end.eq_ignore_ascii_case(wanted))
    };
    // `application/json` exactly: `application/jsonl`, `application/json-seq` are many
    // documents, streamed as NDJSON is.
    let text = starts("text/")
        || essence.eq_ignore_ascii_case("application/json")
        || suffix("+json")
        || essence.eq_ignore_ascii_case("application/x-subrip")
        || essence.eq_ignore_ascii_case("application/xml")
        || suffix("+xml");
    !(essence.is_empty() || text)
}

/// Whether a 2xx body relayed unread may still be one JSON document: its label is JSON
/// (a `GET`'s answer is relayed unread whatever it is), text (not an event stream), `+json`
/// or missing, and it is not compressed. An upstream may answer a stream request so (a whole
/// JSON answer as `text/plain`); the record then reads it as JSON, as it would the same body
/// labelled `application/json`.
pub(super) fn may_be_json(fields: &Fields) -> bool {
    crate::content_coding::content_encoding(fields).is_none() && may_be_document(fields)
}

/// Most bytes of a `GET`'s or `DELETE`'s 2xx answer the router holds to answer it whole (see
/// [`held_answer`]). An error under a 200 is far smaller; a file's content may be far larger,
/// and is relayed as it arrives.
const MAX_HELD_ANSWER: usize = 64 * 1024;

/// Whether a 2xx body's label leaves it possibly one JSON document, whatever its coding: JSON
/// (also `+json`), text other than an event stream, or none. [`may_be_json`] without the
/// coding (a compressed one is read decoded, see [`success_body`]).
fn may_be_document(fields: &Fields) -> bool {
    let Some(content_type) = fields.get_str("content-type") else {
        return true;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence.is_empty()
        || essence == "application/json"
        || (essence.starts_with("text/") && essence != "text/event-stream")
        || essence.ends_with("+json")
}

/// What [`held_answer`] made of an answer.
enum Held {
    /// It ended within [`MAX_HELD_ANSWER`]: read whole.
    Whole(Read),
    /// It is longer (or announced so): what was read goes in front of the rest, relayed as it
    /// arrives.
    Longer(UpstreamResponse),
    /// It broke off (`Some`), or had not ended when `timeout_secs` ran out (`None`): failed as
    /// a whole answer that does.
    Failed(Option<BodyError>),
    /// Shutdown's hard stop came first.
    Stopped,
}

/// A `GET`'s or `DELETE`'s 2xx answer, read ahead up to [`MAX_HELD_ANSWER`]. A forwarded
/// `GET` is relayed as it arrives, since a file's content may be any size; but the answer
/// may be an error under a 200 (`{"error": ...}`) echoing the key the router sent, which a
/// body relayed unread would hand to the client. One that ends within the bound is read
/// whole, so it is answered (searched for keys, decoded when it must be) and recorded as a
/// `POST`'s whole answer is; one that goes past it, or announces a longer `Content-Length`,
/// keeps being relayed as it arrives, from its first byte.
async fn held_answer(
    mut upstream: UpstreamResponse,
    deadline: Instant,
    hard_stop: &mut Stopped,
) -> Held {
    let hint = http_body::Body::size_hint(&upstream.body);
    if hint.lower() > MAX_HELD_ANSWER as u64 {
        return Held::Longer(upstream);
    }
    let wait = tokio::time::sleep_until(deadline);
    tokio::pin!(wait);
    let mut read = Vec::new();
    let mut size = 0usize;
    loop {
        let next = tokio::select! {
            biased;
            () = &mut *hard_stop => return Held::Stopped,
            () = &mut wait => return Held::Failed(None),
            next = upstream.body.frame() => next,
        };
        let Some(next) = next else { break };
        let frame = match next {
            Ok(frame) => frame,
            Err(e) => return Held::Failed(Some(BodyError::of(&e))),
        };
        size = size.saturating_add(frame.data_ref().map_or(0, Bytes::len));
        read.push(Ok(frame));
        if size > MAX_HELD_ANSWER {
            upstream.body = crate::upstream::UpstreamBody::read_ahead(read, false, upstream.body);
            return Held::Longer(upstream);
        }
    }
    let mut body = bytes::BytesMut::with_capacity(size);
    // Trailers carry nothing a client of a whole answer reads (as in `read_upstream_body`).
    for frame in read.into_iter().flatten() {
        if let Some(data) = frame.data_ref() {
            body.extend_from_slice(data);
        }
    }
    Held::Whole(Read {
        status: upstream.status,
        fields: upstream.fields,
        body: body.freeze(),
    })
}

/// A router error after the target was known: logged (see [`FailureLog`]), recorded, then
/// answered.
fn fail(
    mut guard: RecordGuard,
    error: ProxyError,
    request_id: String,
    failures: &FailureLog,
) -> Answer {
    failures.warn(&request_id, error.code(), &error);
    if let Some(record) = guard.record_mut() {
        record.status = Some(error.status().as_u16());
        record.error = Some(error.to_string());
        record.upstream_had_request = error.upstream_had_request();
    }
    guard.finish(Outcome::RouterError);
    Answer::error(&error, Some(request_id))
}

/// A request whose body had not all arrived when the grace period ended.
pub(crate) const BODY_CUT_AT_SHUTDOWN: &str = "the router is shutting down and did not take this request (its body had not all arrived); try again";

pub(crate) fn shutting_down() -> ProxyError {
    ProxyError::ShuttingDown(
        "the router is shutting down and could not wait longer for the upstream; try again".into(),
    )
}

/// An upstream as a failure of its answer names it: its provider, and the proxy the
/// environment names when the request went through one (a proxy that holds or cuts an
/// answer reads as the upstream's fault otherwise). A failure to send says the proxy in its
/// own words ([`UpstreamError`]), so [`send_error`] takes the provider alone.
#[derive(Clone, Copy)]
struct Named<'a> {
    provider: &'a str,
    via: Via,
}

impl<'a> Named<'a> {
    fn of(target: &'a Target<'_>) -> Self {
        Self {
            provider: &target.provider,
            via: ProxyEnv::get().via(&target.base_url),
        }
    }
}

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.provider, self.via.aside())
    }
}

fn timeout_error(provider: Named<'_>, timeout: Duration) -> ProxyError {
    ProxyError::UpstreamTimeout(format!(
        "the upstream {provider} did not answer within {} s (timeout_secs)",
        timeout.as_secs_f64()
    ))
}

/// [`timeout_error`] for an upstream whose answer's head had come, and whose body had not
/// all come when `timeout_secs` ran out: it answered, so "did not answer" would send the
/// reader looking for a server that never replied.
fn unfinished_error(provider: Named<'_>, timeout: Duration) -> ProxyError {
    ProxyError::UpstreamTimeout(format!(
        "the upstream {provider} did not finish its answer within {} s (timeout_secs)",
        timeout.as_secs_f64()
    ))
}

fn send_error(provider: &str, error: &UpstreamError, redactor: &Redactor) -> ProxyError {
    // Configured keys taken out: a malformed answer's message may quote what the upstream
    // sent, and it may echo the key (`Transfer-Encoding: <key>, chunked`).
    let description = error.to_string();
    let description = redactor.redact(&description, &[]);
    if error.is_unanswered() {
        // Through the proxy: the message names it (see `UpstreamError::is_unanswered`).
        ProxyError::UpstreamTimeout(format!(
            "the upstream {provider} did not answer: {description}"
        ))
    } else if error.is_timeout() {
        // Says which limit it was: the connect timeout, or `timeout_secs` (see `Within`).
        ProxyError::ConnectTimeout(format!(
            "could not connect to the upstream {provider}: {description}"
        ))
    } else if error.is_unreadable() {
        // Reached, but what it sent is not HTTP the router can relay: same code (the answer
        // is as lost to the client), a message that does not send them looking at the network.
        ProxyError::UpstreamUnreachable(format!(
            "the upstream {provider} answered, but not in a form the router can read: {description}"
        ))
    } else if error.had_request() {
        // Reached: the request went out whole, and the connection ended unanswered. Same
        // code (the answer is as lost), but not "could not reach".
        ProxyError::UpstreamUnreachable(format!(
            "no answer from the upstream {provider}: {description}"
        ))
    } else {
        ProxyError::UpstreamNotConnected(format!(
            "could not reach the upstream {provider}: {description}"
        ))
    }
}

/// An upstream error's cause chain, without its URL (which may carry a key in its query).
pub fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = crate::upstream::cause_text(cause);
        if !crate::upstream::is_client_wrapper(cause) && !parts.contains(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        return "connection failed".to_owned();
    }
    parts.join(": ")
}

fn stream_answer(
    state: &Arc<AppState>,
    upstream: UpstreamResponse,
    settings: StreamSettings,
    decoder: Option<Box<crate::content_coding::StreamDecoder>>,
    guard: RecordGuard,
    request_id: String,
) -> Answer {
    // Decoded, the stream goes on without the upstream's Content-Encoding (`Shape::Stream`
    // with `sse` drops it, as `Shape::Decoded` does for a body that is not SSE; every
    // answer's Content-Length is the router's to write).
    let sse = settings.sse;
    let decoded = decoder.is_some();
    // A body that is not SSE and not decoded passes unchanged (nothing put in): it keeps its
    // upstream's Content-Length, known from its head as for a whole answer. Decoded, its
    // length is unknown ahead: it goes chunked (or close-delimited to an HTTP/1.0 client).
    let length = (!sse && !decoded)
        .then(|| http_body::Body::size_hint(&upstream.body).exact())
        .flatten();
    let body = relayed_body(upstream.body, decoder);
    let failures = StreamFailures {
        log: Arc::clone(&state.failures),
        request_id: request_id.clone(),
        redactor: state.redactor.clone(),
    };
    let mut tee = StreamTee::new(body, settings, guard, state.hard_stop.clone(), failures);
    if !sse {
        // A compressed one is copied as it came, for the recorder to decode, as a whole
        // answer's is (a `GET /responses/<id>` read-back in gzip lost its usage); one decoded
        // here is copied decoded.
        let may_be_json = may_be_document(&upstream.fields);
        let coding = crate::content_coding::content_encoding(&upstream.fields);
        let kind = || unread_kind(&upstream.fields, !decoded);
        tee.relay_unread(length, kind, may_be_json, coding.filter(|_| !decoded));
    }
    let shape = match (sse, decoded) {
        (false, true) => Shape::Decoded,
        (sse, _) => Shape::Stream { sse },
    };
    Answer {
        status: upstream.status,
        fields: AnswerFields {
            upstream: Some(upstream.fields),
            shape,
            request_id: Some(request_id),
        },
        body: AnswerBody::Stream(Box::new(tee)),
    }
}

/// What the record of a body relayed unread calls it: its content type (without
/// parameters), with the Content-Encoding it came in (`text/event-stream, br`) when it has
/// one and `with_coding`: one relayed decoded is counted in decoded bytes, under its type.
fn unread_kind(fields: &Fields, with_coding: bool) -> String {
    let content_type = fields
        .get_str("content-type")
        .map(|value| value.split(';').next().unwrap_or_default().trim())
        .filter(|essence| !essence.is_empty())
        .unwrap_or("no Content-Type");
    match crate::content_coding::content_encoding(fields).filter(|_| with_coding) {
        Some(coding) => format!("{content_type}, {}", crate::content_coding::named(&coding)),
        None => content_type.to_owned(),
    }
}

/// A streamed answer's body as the tee reads it: decoded when `decoder` is given.
fn relayed_body(
    body: crate::upstream::UpstreamBody,
    decoder: Option<Box<crate::content_coding::StreamDecoder>>,
) -> stream::UpstreamBody {
    let body: stream::UpstreamBody = Box::pin(http_body_util::BodyDataStream::new(body));
    match decoder {
        None => body,
        Some(decoder) => Box::pin(decoded::Decoded::new(body, *decoder)),
    }
}

/// What bounds the wait for a whole answer: `timeout_secs` (ending at `deadline`), and
/// shutdown's hard stop.
struct Limits<'a> {
    deadline: Instant,
    timeout: Duration,
    hard_stop: &'a mut Stopped,
    failures: &'a FailureLog,
}

/// `bytes` (an answer, or one event of a stream) without the configured keys, when it
/// reports an error: an upstream may echo the key the router sent it ("Incorrect API key
/// provided: sk-..."), under a 200 too (`{"error": ...}`, or such an event in a stream), and
/// with accounts on that would hand the provider's key to a router user. Only bytes that
/// hold `"error"` are searched for keys (one `memmem` over the rest), so a normal answer
/// or event costs next to nothing.
pub(crate) fn without_echoed_keys(redactor: &Redactor, bytes: Bytes) -> Bytes {
    echoed_keys_removed(redactor, &bytes).unwrap_or(bytes)
}

/// `bytes` without the configured keys when it reports an error and holds one; `None` when
/// it needs no change (see [`without_echoed_keys`]).
fn echoed_keys_removed(redactor: &Redactor, bytes: &[u8]) -> Option<Bytes> {
    // Built once: making a searcher costs more than the search of a typical answer.
    static ERROR_MEMBER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));
    if redactor.is_empty() || ERROR_MEMBER.find(bytes).is_none() {
        return None;
    }
    match redactor.redact_bytes(bytes, &[]) {
        Cow::Borrowed(_) => None,
        Cow::Owned(clean) => Some(Bytes::from(clean)),
    }
}

/// How a 2xx answer's body goes to the client ([`success_body`]).
enum SuccessForm {
    /// As the upstream sent it.
    AsItCame,
    /// Decoded from its Content-Encoding.
    Decoded,
    /// Decoded from its Content-Encoding as it is written to the client, never held decoded
    /// whole ([`coded_whole`]); the body beside it is the answer as it came, for its record.
    DecodedAsWritten(Box<coded_whole::DecodedAnswer>),
    /// Replaced by the router's error (this message), as an error body that cannot be read
    /// within its limit is: one over [`crate::content_coding::MAX_DECODED_BODY`] decoded
    /// that reports an error echoing a configured key, which cannot go decoded (too large)
    /// nor compressed (the key would pass).
    Replaced(String),
}

/// A 2xx answer's body as the client gets it, and how ([`SuccessForm`]); with, when it
/// goes as it came but compressed and the router decoded it, what that gave ([`Decoded`]):
/// its record and its events ([`whole_as_stream`]) are made from that, not decoded again.
/// One the upstream compressed although asked for `identity` goes as it came when the client
/// takes its coding (its `Accept-Encoding`, which was not passed on, lists it: see
/// [`crate::content_coding::accepted`]); in one it does not take (zstd to the openai SDKs,
/// which take gzip, deflate and br; any to a client that lists none), the client could not
/// read it, so it goes decoded, as an error body does. With keys configured one is searched
/// decoded, up to the 64 MiB its record reads: when it reports an error that echoes a key,
/// the client gets it decoded and without the key, since the compressed bytes would carry the
/// key past [`without_echoed_keys`]; one that decodes to more is searched in its first 64 MiB,
/// and found to echo a key there it is replaced by the router's error
/// ([`SuccessForm::Replaced`]).
///
/// The search, and the decoding for a client that does not take the coding, go piece by
/// piece ([`scanned`]): nothing decoded is held while the client reads, and the record
/// decodes the answer later, off the request path. Only an answer that may echo a key, or
/// whose data is corrupt or cut short, or whose events are to be made of it, is decoded
/// whole ([`decoded_aside`]), within the router's decode budget
/// ([`crate::content_coding::DecodeBudget`]): one the budget has no room for goes as it came,
/// unsearched, as one in a coding the router does not decode does.
async fn success_body(
    body: Bytes,
    fields: &Fields,
    reading: Reading<'_>,
) -> (Bytes, SuccessForm, Option<Decoded>) {
    let Some(coding) = crate::content_coding::content_encoding(fields) else {
        let body = without_echoed_keys(reading.redactor, body);
        return (body, SuccessForm::AsItCame, None);
    };
    let taken = crate::content_coding::accepted(reading.client, &coding);
    if taken && reading.redactor.is_empty() && !reading.as_events {
        // Its record decodes it, after the client has it.
        return (body, SuccessForm::AsItCame, None);
    }
    // Read piece by piece first, and decoded whole only when that does not settle it.
    if let Some(settled) = scanned(&coding, &body, taken, reading).await {
        return settled;
    }
    let aside = decoded_aside(coding.clone(), body.clone(), reading).await;
    let Some(read) = aside.read else {
        return (body, SuccessForm::AsItCame, aside.record);
    };
    match read {
        // Too large to go decoded, and compressed the key would pass: the router's error.
        Searched {
            redacted: true,
            over_limit: true,
            ..
        } => {
            let message = format!(
                "the upstream's {}-encoded answer decodes to more than {} MiB and \
                 reports an error that echoes a configured key: not relayed, as the router \
                 can send it neither decoded (too large) nor as it came (the key would pass)",
                crate::content_coding::named(&coding),
                crate::content_coding::MAX_DECODED_BODY / (1024 * 1024)
            );
            let replaced = error_body(&message, "upstream_error", None);
            (replaced, SuccessForm::Replaced(message), None)
        }
        // The key must not pass, whatever the client takes.
        Searched {
            body: decoded,
            redacted: true,
            ..
        } => (decoded, SuccessForm::Decoded, None),
        Searched {
            body: decoded,
            whole: true,
            ..
        } if !taken => (decoded, SuccessForm::Decoded, None),
        // Taken as it came; or too large once decoded, or corrupt: as it came (the record
        // says what it was).
        _ => (body, SuccessForm::AsItCame, aside.record),
    }
}

/// How a compressed 2xx answer goes, when reading it piece by piece ([`coded_whole::scan`],
/// on a blocking thread, as a whole decode is) settles it: it echoes no key, and it decodes
/// within [`crate::content_coding::MAX_DECODED_BODY`] (as it came to a client that takes its
/// coding, else decoded as it is written) or past it (as it came, its record saying it was too
/// large). Its record decodes it off the request path, after the client has it: nothing
/// decoded is held while the client reads. `None` when [`decoded_aside`] must decide; and for
/// one to be made into a stream's events that is small enough to be
/// ([`chunks::MAX_EVENTS_FROM_WHOLE`]): those are made of it decoded whole.
async fn scanned(
    coding: &str,
    body: &Bytes,
    taken: bool,
    reading: Reading<'_>,
) -> Option<(Bytes, SuccessForm, Option<Decoded>)> {
    use coded_whole::{DecodedAnswer, Scan};
    let limit = crate::content_coding::MAX_DECODED_BODY;
    let as_events = reading.as_events;
    let (coding, compressed) = (coding.to_owned(), body.clone());
    let redactor = reading.redactor.clone();
    let read = move || match coded_whole::scan(&coding, compressed.clone(), limit, &redactor)? {
        Scan::Clean { len } if as_events && len <= chunks::MAX_EVENTS_FROM_WHOLE => None,
        Scan::Clean { .. } if taken => Some((SuccessForm::AsItCame, None)),
        Scan::Clean { len } => {
            let decoding = DecodedAnswer::new(&coding, compressed, len)?;
            Some((SuccessForm::DecodedAsWritten(Box::new(decoding)), None))
        }
        // Not decoded for the client either (as a whole decode would not be): as it came,
        // and its record is told why, rather than decoding it once more to find out.
        Scan::OverLimit => {
            let error = crate::content_coding::DecodeError::TooLarge(limit);
            Some((
                SuccessForm::AsItCame,
                Some(Decoded::Unread(Arc::new(error))),
            ))
        }
    };
    let (form, record) = tokio::task::spawn_blocking(read).await.ok()??;
    Some((body.clone(), form, record))
}

/// What reading a whole answer needs besides the answer itself.
#[derive(Clone, Copy)]
struct Reading<'a> {
    /// The configured keys, taken out of what the upstream echoes.
    redactor: &'a Redactor,
    /// The client's request fields (its `Accept-Encoding`).
    client: &'a Fields,
    /// What decodes of whole answers may hold together.
    budget: &'a DecodeBudget,
    /// The answer is to become a stream's events ([`whole_as_stream`]): a compressed one is
    /// decoded for them, once, here.
    as_events: bool,
}

impl<'a> Reading<'a> {
    fn of(state: &'a AppState, client: &'a Fields, as_events: bool) -> Self {
        Self {
            redactor: &state.redactor,
            client,
            budget: &state.decode_budget,
            as_events,
        }
    }
}

/// What [`decoded_aside`] made of a compressed answer.
struct Aside {
    /// What of it the router read; `None` in a coding the router does not decode, or when
    /// the decode budget had no room for it.
    read: Option<Searched>,
    /// What its record makes of it, if it goes as it came: what it decoded to, or why it
    /// was not read; `None` when the decode budget had no room for it: the recorder decodes
    /// it then, off the request path, so its usage is not lost to other answers' decodes.
    record: Option<Decoded>,
}

/// What of a compressed answer the router read ([`readable_part`]) and searched for keys.
struct Searched {
    /// What it decoded to, without echoed keys.
    body: Bytes,
    /// A key was taken out of it.
    redacted: bool,
    /// It stands for the whole answer (see [`readable_part`]).
    whole: bool,
    /// The answer decodes to more than the limit: `body` is its beginning.
    over_limit: bool,
}

/// A whole answer's `body` decoded from `coding` (up to the
/// [`crate::content_coding::MAX_DECODED_BODY`] its record reads) and searched for echoed
/// keys, on a blocking thread: a few hundred KB of gzip may take a second to inflate, and the
/// lane's thread serves every other connection on it meanwhile. One whose data is corrupt or
/// cut short is what decoded before that, one that decodes past the limit its beginning
/// ([`readable_part`]). Not decoded again: the record is handed what this gave. Its buffers
/// come out of the decode budget (`reading.budget`), which the decoded bytes hold for as long as
/// they live; one that finds it spent is not read.
async fn decoded_aside(coding: String, body: Bytes, reading: Reading<'_>) -> Aside {
    let redactor = reading.redactor.clone();
    let budget = reading.budget.clone();
    let decode = move || {
        let limit = crate::content_coding::MAX_DECODED_BODY;
        let (decoded, charge) =
            crate::content_coding::decode_within(&coding, &body, limit, &budget);
        let over_limit = decoded.as_ref().is_err_and(|broken| broken.is_over_limit());
        let unread = |error: crate::content_coding::DecodeError| Decoded::Unread(Arc::new(error));
        let (decoded, whole, error) = match readable_part(decoded) {
            Ok(read) => read,
            Err(error) => {
                let over_budget =
                    matches!(error, crate::content_coding::DecodeError::OverBudget(_));
                return Aside {
                    read: None,
                    record: (!over_budget).then(|| unread(error)),
                };
            }
        };
        let decoded = crate::content_coding::charged_bytes(decoded, charge);
        let record = match error {
            Some(error) if !whole => unread(error),
            _ => Decoded::Read(decoded.clone()),
        };
        let read = match echoed_keys_removed(&redactor, &decoded) {
            Some(clean) => Searched {
                body: clean,
                redacted: true,
                whole,
                over_limit,
            },
            None => Searched {
                body: decoded,
                redacted: false,
                whole,
                over_limit,
            },
        };
        Aside {
            read: Some(read),
            record: Some(record),
        }
    };
    tokio::task::spawn_blocking(decode)
        .await
        .unwrap_or_else(|_| Aside {
            read: None,
            record: Some(Decoded::Unread(Arc::new(
                crate::content_coding::DecodeError::Unsupported(
                    "(its decoding did not finish)".to_owned(),
                ),
            ))),
        })
}

/// What of a compressed answer the router reads (and searches for keys): all of it, or,
/// when its data turns out corrupt or cut short, what decoded before that (a client reading
/// on to the fault gets as much); with whether it stands for the answer: all of it, or one
/// whole JSON document (a gzip answer without its trailer, which curl and the openai SDKs
/// read without complaint), and the fault, if any. One too large once decoded is its
/// beginning, up to the limit (searched for keys as far as that, never whole). `Err` (why)
/// in a coding the router does not decode, or when the decode budget was spent.
#[allow(clippy::type_complexity)]
fn readable_part(
    decoded: Result<Vec<u8>, crate::content_coding::Broken>,
) -> Result<
    (Vec<u8>, bool, Option<crate::content_coding::DecodeError>),
    crate::content_coding::DecodeError,
> {
    match decoded {
        Ok(decoded) => Ok((decoded, true, None)),
        Err(broken) if broken.is_broken_data() => {
            let whole = broken.holds_one_json_document();
            Ok((broken.decoded, whole, Some(broken.error)))
        }
        Err(broken) if broken.is_over_limit() => Ok((broken.decoded, false, Some(broken.error))),
        Err(broken) => Err(broken.error),
    }
}

/// Relays a whole (non-stream) answer, wrapping an upstream error body into OpenAI's shape
/// when it is not in it already.
async fn whole_answer(
    upstream: UpstreamResponse,
    limits: Limits<'_>,
    target: &Target<'_>,
    (guard, redirect_ordinary): (RecordGuard, bool),
    request_id: String,
    reading: Reading<'_>,
) -> Answer {
    let Limits {
        deadline,
        timeout,
        hard_stop,
        failures,
    } = limits;
    let UpstreamResponse {
        status,
        fields,
        body,
    } = upstream;
    // The body knows its declared length (`Content-Length`), read once with its head.
    let declared = http_body::Body::size_hint(&body).exact();
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, read_upstream_body(body, declared)) => read,
        () = hard_stop => return fail(guard, shutting_down(), request_id, failures),
    };
    let provider = Named::of(target);
    let body = match read {
        Err(_) => {
            return fail(
                guard,
                unfinished_error(provider, timeout),
                request_id,
                failures,
            );
        }
        Ok(Err(error)) => {
            return fail(
                guard,
                error.into_proxy_error(provider),
                request_id,
                failures,
            );
        }
        Ok(Ok(body)) => body,
    };
    let read = Read {
        status,
        fields,
        body,
    };
    read_answer(read, (guard, redirect_ordinary), request_id, reading).await
}

/// An upstream's answer, read whole.
struct Read {
    status: StatusCode,
    fields: Fields,
    body: Bytes,
}

/// Relays an answer read whole ([`whole_answer`]) and hands its record over on delivery.
async fn read_answer(
    read: Read,
    (mut guard, redirect_ordinary): (RecordGuard, bool),
    request_id: String,
    reading: Reading<'_>,
) -> Answer {
    let Read {
        status,
        fields,
        body,
    } = read;
    let redactor = reading.redactor;
    let mut decoded = None;
    let mut decoding = None;
    let (body, shape, outcome, error) = if status.is_success() || status.is_informational() {
        // A 200 may report an error too (`{"error": ...}`), echoing the key it was sent.
        match success_body(body, &fields, reading).await {
            (body, SuccessForm::AsItCame, read) => {
                decoded = read;
                (body, Shape::Relayed, Outcome::Success, None)
            }
            (body, SuccessForm::Decoded, _) => (body, Shape::Decoded, Outcome::Success, None),
            // `body` is the answer as it came: its record's, decoded by the recorder.
            (body, SuccessForm::DecodedAsWritten(answer), _) => {
                decoding = Some(answer);
                (body, Shape::Decoded, Outcome::Success, None)
            }
            // The status stays, as for an error body replaced by a message.
            (body, SuccessForm::Replaced(message), _) => (
                body,
                Shape::WrappedError,
                Outcome::UpstreamError,
                Some(message),
            ),
        }
    } else if status.is_redirection() && redirect_ordinary {
        // To a `GET` or `DELETE` a redirect (a `304 Not Modified` above all) is an answer
        // like any other, relayed as it came.
        (body, Shape::Relayed, Outcome::Success, None)
    } else if status.is_redirection() {
        // Relayed as it came (the router does not follow redirects: the client decides),
        // but no completion happened: recorded as the upstream's error, so the ledger
        // counts it and the trace shows it failed.
        (
            body,
            Shape::Relayed,
            Outcome::UpstreamError,
            Some(redirect_message(status)),
        )
    } else {
        let error = upstream_error_body(status, body, &fields, redactor);
        // Rewritten, it goes without the upstream's Content-Encoding and Content-Type.
        let shape = if error.rewritten {
            Shape::WrappedError
        } else {
            Shape::Relayed
        };
        (
            error.body,
            shape,
            Outcome::UpstreamError,
            Some(error.message),
        )
    };
    // A record exists only when some sink will read it.
    if let Some(record) = guard.record_mut() {
        record.response_body = Some(own_copy(&body));
        // An error body passed on was parsed as OpenAI-shaped JSON; any other was wrapped (a
        // 2xx replaced by the router's error too). A redirect's body was not read.
        record.response_is_json = outcome == Outcome::UpstreamError && !status.is_redirection();
        if outcome == Outcome::Success && (shape == Shape::Relayed || decoding.is_some()) {
            // Read off the request path, by the recorder: decoded there, unless it was
            // decoded here already (what that gave is the record's).
            record.response_encoding = crate::content_coding::content_encoding(&fields);
            record.response_decoded = decoded.clone();
        }
        record.error = error
            .as_deref()
            .map(|error| crate::record::bounded_error(error, &record.cut_guard()));
        record.complete = true;
        record.answered_whole = true;
    }
    let delivery = Delivery {
        guard,
        outcome,
        decoded,
    };
    let body = match decoding {
        Some(answer) => AnswerBody::Decoding(answer, delivery),
        None => AnswerBody::Recorded(body, delivery),
    };
    Answer {
        status,
        fields: AnswerFields {
            upstream: Some(fields),
            shape,
            request_id: Some(request_id),
        },
        body,
    }
}

/// An upstream's error answer as the client gets it, and its message.
struct UpstreamErrorBody {
    /// Decoded from its Content-Encoding, without the configured keys, and in OpenAI's shape
    /// (wrapped into it when the upstream's was another).
    body: Bytes,
    /// Not the upstream's bytes as they came (decoded or wrapped).
    rewritten: bool,
    message: String,
}

/// The one way an upstream's error body (a non-2xx, non-3xx answer) is made fit for a
/// client: a whole answer carries it as its body, a stream the router opened before the
/// upstream answered as its error event ([`early`]).
fn upstream_error_body(
    status: StatusCode,
    body: Bytes,
    fields: &Fields,
    redactor: &Redactor,
) -> UpstreamErrorBody {
    let (body, decoded) = decode_error_body(status, body, fields);
    // An upstream may echo the key it was sent ("Incorrect API key provided: sk-..."):
    // with accounts on, that would hand the provider's key to a router user.
    let body = match redactor.redact_bytes(&body, &[]) {
        Cow::Borrowed(_) => body,
        Cow::Owned(clean) => Bytes::from(clean),
    };
    let (wrapped, message) = wrap_upstream_error(status, &body);
    match wrapped {
        Some(wrapped) => UpstreamErrorBody {
            body: wrapped,
            rewritten: true,
            message,
        },
        None => UpstreamErrorBody {
            body,
            rewritten: decoded,
            message,
        },
    }
}

/// The record's error for a redirect. Its `Location` is left out: a redirect may point at a
/// signed URL, and the record's error goes to the ledger and the trace.
fn redirect_message(status: StatusCode) -> String {
    format!(
        "the upstream answered HTTP {} (a redirect): relayed to the client, not followed",
        status.as_u16()
    )
}

enum BodyError {
    /// It broke off: the connection failed or closed before its end.
    Read(String),
    /// It came, in a form the router cannot read: malformed framing, or past one of the
    /// router's limits (a trailer section or chunk extension too long). Not "broke off":
    /// the upstream may well have sent it all.
    Unreadable(String),
    TooLarge,
    /// Its `Content-Length` (this many bytes) is over the limit: refused before a byte of
    /// the body is read, so the message says what was announced, not what was sent.
    AnnouncedTooLarge(u64),
}

impl BodyError {
    fn of(error: &crate::upstream::UpstreamError) -> Self {
        if error.is_unreadable() {
            Self::Unreadable(error.to_string())
        } else {
            Self::Read(error.to_string())
        }
    }

    fn into_proxy_error(self, provider: Named<'_>) -> ProxyError {
        match self {
            Self::Read(description) => ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} broke off its answer: {description}"
            )),
            Self::Unreadable(description) => ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} answered, but not in a form the router can read: \
                 {description}"
            )),
            Self::TooLarge => ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} sent an answer over {} MiB",
                MAX_UPSTREAM_BODY / (1024 * 1024)
            )),
            Self::AnnouncedTooLarge(declared) => ProxyError::UpstreamUnreachable(format!(
                "the upstream {provider} announced an answer of {declared} bytes \
                 (Content-Length), over the router's limit of {} MiB",
                MAX_UPSTREAM_BODY / (1024 * 1024)
            )),
        }
    }
}

async fn read_upstream_body(
    mut body: crate::upstream::UpstreamBody,
    declared: Option<u64>,
) -> Result<Bytes, BodyError> {
    let announced = declared.unwrap_or(0);
    let declared = usize::try_from(announced).unwrap_or(usize::MAX);
    if declared > MAX_UPSTREAM_BODY {
        return Err(BodyError::AnnouncedTooLarge(announced));
    }
    let mut gathered = Gathered::expecting(declared);
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                // Trailers carry nothing a client of a JSON answer reads.
                Err(_) => continue,
            },
            Err(e) => return Err(BodyError::of(&e)),
        };
        if gathered.size().saturating_add(chunk.len()) > MAX_UPSTREAM_BODY {
            return Err(BodyError::TooLarge);
        }
        gathered.push(chunk);
    }
    Ok(gathered.into_bytes())
}

/// Most bytes an upstream's compressed error body may decode to.
const MAX_DECODED_ERROR: usize = 4 * 1024 * 1024;

/// An error body as the router can read it, and whether it was decoded. The router asks for
/// `identity`, but an upstream (or a proxy in front of it) may still compress its error. Such
/// a body is decoded (gzip, deflate, br, zstd) rather than passed on as it came: the router must read
/// it to redact an echoed key and to wrap it into OpenAI's shape, and the client, whose own
/// `Accept-Encoding` was not passed on, may not have asked for that coding. One the router
/// cannot decode (`compress`, corrupt, a bomb) is replaced by a message saying so: passing
/// bytes on unread would skip the redaction.
fn decode_error_body(status: StatusCode, body: Bytes, fields: &Fields) -> (Bytes, bool) {
    let Some(coding) = crate::content_coding::content_encoding(fields) else {
        return (body, false);
    };
    match crate::content_coding::decode(&coding, &body, MAX_DECODED_ERROR) {
        Ok(decoded) => (Bytes::from(decoded), true),
        Err(error) => {
            let message = format!(
                "the upstream answered HTTP {} with a {}-encoded body the router cannot read: {error}",
                status.as_u16(),
                crate::content_coding::named(&coding)
            );
            (Bytes::from(message), true)
        }
    }
}

/// The message of an OpenAI-shaped error's `error` object: its `message`, or, without one,
/// the object itself as JSON.
pub(crate) fn error_member_message(error: &serde_json::Value) -> String {
    error
        .get("message")
        .and_then(|m| m.as_str())
        .map_or_else(|| error.to_string(), str::to_owned)
}

/// Returns `(wrapped body if the upstream's was not OpenAI-shaped, the error message)`.
/// The upstream's text is kept verbatim inside the message, so clients that match on it
/// ("context length") still do.
pub fn wrap_upstream_error(status: StatusCode, body: &[u8]) -> (Option<Bytes>, String) {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    if let Some(error) = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object())
    {
        return (None, error_member_message(error));
    }
    let text = String::from_utf8_lossy(body);
    // The members as the upstream wrote them: a `detail` that is a list (FastAPI's) is quoted
    // byte for byte, not re-serialised.
    let members = parsed.as_ref().filter(|v| v.is_object()).and_then(|_| {
        serde_json::from_slice::<std::collections::HashMap<String, &serde_json::value::RawValue>>(
            body,
        )
        .ok()
    });
    let message = match &members {
        Some(obj) => {
            // A string `error` is the reason; any other (`true`, `429`, `null`, a list) only
            // says that there is one: the text is then beside it, in `message` or `detail`.
            // With none of those, the whole body says more than the bare value would.
            let error = obj
                .get("error")
                .filter(|raw| raw.get().starts_with('"'))
                .into_iter();
            let beside = ["message", "detail", "msg"]
                .iter()
                .filter_map(|k| obj.get(*k));
            error
                .chain(beside)
                .next()
                .map(|raw| {
                    serde_json::from_str::<String>(raw.get())
                        .unwrap_or_else(|_| raw.get().to_owned())
                })
                .unwrap_or_else(|| text.clone().into_owned())
        }
        _ if text.trim().is_empty() => format!(
            "the upstream answered HTTP {} with an empty body",
            status.as_u16()
        ),
        _ => text.into_owned(),
    };
    (Some(error_body(&message, "upstream_error", None)), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_uuid_v7() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(5) {
            let uuid = uuid::Uuid::parse_str(id).expect("uuid");
            assert_eq!(uuid.get_version_num(), 7);
        }
    }

    #[test]
    fn only_event_streams_and_bodies_not_json_or_text_stream_unasked() {
        let with = |content_type: &str| {
            streams_unasked(&Fields::from_pairs(&[("content-type", content_type)]))
        };
        for streams in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "audio/mpeg",
            "application/octet-stream",
            "application/x-ndjson",
            "application/jsonl",
            "Application/JSONLines",
            "application/json-seq",
        ] {
            assert!(with(streams), "{streams}");
        }
        for whole in [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "text/plain",
            "TEXT/HTML",
            "application/x-subrip",
            "application/xml",
            "application/atom+xml",
            "",
        ] {
            assert!(!with(whole), "{whole}");
        }
        assert!(!streams_unasked(&Fields::default()), "no Content-Type");
    }

    #[test]
    fn only_the_json_media_type_itself_is_json() {
        let with =
            |content_type: &str| is_json(&Fields::from_pairs(&[("content-type", content_type)]));
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ",
        ] {
            assert!(with(json), "{json}");
        }
        for other in [
            "application/jsonl",
            "application/jsonlines",
            "application/json-seq",
            "application/x-ndjson",
            "text/plain",
        ] {
            assert!(!with(other), "{other}");
        }
    }

    #[test]
    fn openai_shaped_errors_pass_unchanged() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        let (wrapped, message) = wrap_upstream_error(StatusCode::BAD_REQUEST, body);
        assert!(wrapped.is_none());
        assert!(message.contains("maximum context length"));
    }

    #[test]
    fn other_shapes_are_wrapped_with_the_text_kept() {
        for (body, expect) in [
            (
                &br#"{"detail":"Not authenticated"}"#[..],
                "Not authenticated",
            ),
            (br#"{"message":"rate limited"}"#, "rate limited"),
            (br#"{"error":"bad key"}"#, "bad key"),
            // An `error` that is no object nor string: the text beside it is the reason.
            (
                br#"{"error": true, "message": "rate limited, slow down"}"#,
                "rate limited, slow down",
            ),
            (br#"{"error": 429, "detail": "slow down"}"#, "slow down"),
            (
                br#"{"error": null, "message": "quota exceeded"}"#,
                "quota exceeded",
            ),
            (br#"{"error":false}"#, r#"{"error":false}"#),
            (
                br#"[{"error":{"message":"gemini style"}}]"#,
                r#"[{"error":{"message":"gemini style"}}]"#,
            ),
            (b"upstream exploded", "upstream exploded"),
            (b"", "empty body"),
            // FastAPI's validation error: the list byte for byte, spacing included.
            (
                br#"{"detail": [{"loc": ["body", "model"], "msg": "field required"}]}"#,
                r#"[{"loc": ["body", "model"], "msg": "field required"}]"#,
            ),
        ] {
            let (wrapped, message) = wrap_upstream_error(StatusCode::BAD_GATEWAY, body);
            let wrapped = wrapped.expect("wrapped");
            let v: serde_json::Value = serde_json::from_slice(&wrapped).expect("json");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .expect("message")
                    .contains(expect),
                "{v}"
            );
            assert!(message.contains(expect));
            assert_eq!(v["error"]["type"], "upstream_error");
        }
    }
}
