//! A client's connection, served by one task on its lane: read a request head, serve it,
//! write the answer, and again while the client keeps the connection.
//!
//! A proxied `POST` (any route but the router's own, PRODUCT.md "Routing a request") is read
//! and answered here: authentication, the body (its size limit, `Expect: 100-continue`, the
//! 413 after reading an oversized body to its end), then [`proxy::handle`], then its answer
//! written as bytes, a stream event by event; so is a `GET` or `DELETE` forwarded to the
//! target it names ([`crate::app::forwarded_path`]). Every other request goes to the axum
//! app, with its body read first (dropped unread where the app can only refuse it by its
//! method or path, [`crate::app::serves`]). Both watch the client while they wait: a client
//! that closes the connection before its answer is complete has its request dropped (and
//! recorded as a disconnect), its stream's upstream connection closed.
//!
//! Must never: guess where an ambiguous body ends (refused, see [`super::framing`]), read a
//! body without bounds, or keep a connection whose request body was not read to its end.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::fields::FieldSource;
use super::framing::{BodyLength, Decoded, Decoder, FramingError, LAST_CHUNK, encode_chunk};
use super::head::{
    HeadError, RequestHead, parse_request, write_date, write_field, write_status_line,
};
use super::io::{
    MIN_READ, Wrote, closed_by_peer, read_client, read_unwatched, write_all, write_all_unless,
};
use crate::app::Route;
use crate::auth::{authenticate, refuse_cross_site};
use crate::error::ProxyError;
use crate::hard_stop::{HardStop, Stopped};
use crate::proxy::failure_log::FailureLog;
use crate::proxy::headers::Shape;
use crate::proxy::intake::{DISCARD_AT_MOST, DISCARD_FOR_AT_MOST, Gathered, check_encoding};
use crate::proxy::{self, Answer, AnswerBody, ProxyRequest};
use crate::state::AppState;

/// What every connection of one server shares.
pub struct Service {
    pub state: Arc<AppState>,
    /// Every request but a proxied `POST` (and every HTTP/2 connection).
    pub app: axum::Router,
    /// Fired when shutdown begins: an idle connection closes at once (once a request already
    /// in its socket is served), a busy one after the answer it is writing.
    pub draining: HardStop,
}

/// Bytes of a pipelined next request kept while an answer is still being made.
const KEEP_PIPELINED: usize = 64 * 1024;

/// How long and how much a connection that is closing reads (and drops) of what the
/// client still sends, so the client reads the answer instead of a reset.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// Serves `io` until the client closes it, asks for it to close, or shutdown drains it.
pub async fn serve_connection(io: TcpStream, service: Arc<Service>) {
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        draining: service.draining.stopped(),
        hard_stop: service.state.hard_stop.stopped(),
        head_timeout: service.state.head_timeout,
        body_read_timeout: service.state.body_read_timeout,
        idle: IdleTimer::new(service.state.idle_timeout),
        send_timeout: service.state.send_timeout,
        failures: Arc::clone(&service.state.failures),
        served: 0,
        grown: false,
        answering: false,
        unread: false,
        pipelined: false,
    };
    loop {
        conn.pipelined = conn.served > 0 && (conn.unread || !conn.buf.is_empty());
        let head = match conn.next_head().await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(HeadError::Http2Preface) => return conn.into_http2(&service).await,
            Err(error) => {
                let error = match error {
                    HeadError::TooLarge | HeadError::TooManyFields => {
                        ProxyError::HeadTooLarge(error.to_string())
                    }
                    HeadError::VersionNotSupported(_) => {
                        ProxyError::HttpVersionNotSupported(error.to_string())
                    }
                    other => ProxyError::InvalidRequest(other.to_string()),
                };
                // The connection closes after it: nothing is misread if a HEAD gets a body.
                conn.answer_error(&error, false, Asked::UNREAD).await;
                return conn.linger().await;
            }
        };
        conn.served += 1;
        let asked = Asked::of(&head);
        conn.answering = false;
        let served = crate::caught::catching(conn.serve(head, &service)).await;
        let next = match served {
            Ok(next) => next,
            Err(panicked) => return conn.after_panic(&panicked, asked).await,
        };
        match next {
            // Once shutdown began, the next head decides: a request already sent is served.
            Next::KeepAlive => {}
            Next::Close => return conn.linger().await,
            Next::Gone | Next::Cut => return,
        }
    }
}

/// What happens to the connection after an answer.
enum Next {
    KeepAlive,
    /// Close it after what was written (read what the client still sends, briefly).
    Close,
    /// The client went away, or the connection failed: nothing more to do.
    Gone,
    /// Shutdown's hard stop came while the answer's write waited for the client to take more
    /// (it stopped reading): the answer is cut and the connection dropped, rather than held
    /// open until the send timeout.
    Cut,
}

struct Conn {
    io: TcpStream,
    /// Bytes read from the client and not used yet (the start of the next request).
    buf: BytesMut,
    draining: Stopped,
    /// Shutdown's hard stop, for every request this connection carries.
    hard_stop: Stopped,
    /// See `AppState::head_timeout` and `AppState::body_read_timeout`.
    head_timeout: Duration,
    body_read_timeout: Duration,
    idle: IdleTimer,
    /// See `AppState::send_timeout`.
    send_timeout: Duration,
    /// Where refusals are noted (see [`Answer::refused`]).
    failures: Arc<FailureLog>,
    served: u64,
    /// `buf` was grown past the usual read for a large request body; released once idle.
    grown: bool,
    /// Part of the current request's answer has been handed to the socket (a `100 Continue`
    /// does not count): after a panic, too late for a 500 ([`Conn::after_panic`]).
    answering: bool,
    /// Bytes the client sent may wait in the kernel unseen by tokio (see
    /// [`closed_by_peer`]): every read of this connection goes through [`read_client`].
    unread: bool,
    /// The current request was pipelined: bytes of it had come while an earlier request was
    /// served. Its client may have left behind it unseen ([`Conn::client_left`]).
    pipelined: bool,
}

/// Closes a connection that waits too long for its next request (`AppState::idle_timeout`).
///
/// Its timer is set once and left running: each wait only notes when it began, and a timer
/// that fires early is moved to the newest wait's end. A timer set and cancelled on every
/// request instead would cost each request two trips into tokio's timer wheel.
struct IdleTimer {
    limit: Duration,
    since: Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            limit,
            since: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// The connection is idle from now on.
    fn start(&mut self) {
        self.since = Instant::now();
    }

    /// Completes when the wait that began at the last [`Self::start`] has lasted the limit.
    async fn expired(&mut self) {
        loop {
            self.timer.as_mut().await;
            let due = self.since + self.limit;
            if Instant::now() >= due {
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// How reading a request's body failed.
enum BodyFailure {
    /// Over the limit; `read_all` when the rest was read and dropped (the connection can
    /// carry another request).
    TooLarge {
        read_all: bool,
    },
    Framing(FramingError),
    /// Shutdown: a go-ahead (`100 Continue`) was asked for after it began, or the body was
    /// still coming when its grace period ended. Answered 503, then the connection closes.
    ShuttingDown,
    Gone,
}

impl Conn {
    /// The next request head; `None` when the client closed the connection, it stayed idle
    /// past the idle timeout, or shutdown began while it was idle.
    async fn next_head(&mut self) -> Result<Option<RequestHead>, HeadError> {
        let mut scanned = 0;
        // Set once part of a head is here: the rest must follow within the head timeout.
        let mut deadline = None;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_request(&mut self.buf, &mut scanned, self.served == 0)? {
                    return Ok(Some(head));
                }
            }
            let read = if self.buf.is_empty() {
                self.idle.start();
                // A buffer grown for a large body (up to 256 KiB) is not kept while the
                // connection waits: agents send prompts of hundreds of KB, and each idle
                // keep-alive connection held its last one's buffer (309 KiB each after 1 MB
                // requests; 51 KiB now). A small one is kept: replacing it would cost every
                // request an allocation.
                if std::mem::take(&mut self.grown) {
                    self.buf = BytesMut::new();
                }
                tokio::select! {
                    biased;
                    read = read_client(&mut self.io, &mut self.buf, 0, &mut self.unread) => read,
                    () = &mut self.draining => return self.head_sent_before_shutdown(&mut scanned),
                    // Nothing asked for this long: the client has forgotten the connection.
                    () = self.idle.expired() => return Ok(None),
                }
            } else {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.head_timeout);
                let read = tokio::time::timeout_at(
                    deadline,
                    read_client(&mut self.io, &mut self.buf, 0, &mut self.unread),
                );
                tokio::select! {
                    biased;
                    read = read => match read {
                        Ok(read) => read,
                        // Half a head, and nothing more for this long: not a client worth
                        // waiting for.
                        Err(_) => return Ok(None),
                    },
                    // No request runs until its head is whole: at shutdown the connection
                    // closes as an idle one does, rather than hold the exit for the head
                    // timeout.
                    () = &mut self.draining => return self.head_sent_before_shutdown(&mut scanned),
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Shutdown began while the connection waited for a request head: the head, when the
    /// client's kernel buffer already holds the rest of it, else `None` (the connection
    /// closes). A request sent before shutdown began is running and must be served; but the
    /// lane may not have seen its bytes arrive yet (tokio learns a socket is readable only
    /// when its reactor next runs, and the wake-up by `draining` can come first), so the
    /// socket is read here at once, whatever tokio believes. Only at shutdown: no request
    /// pays for it.
    fn head_sent_before_shutdown(
        &mut self,
        scanned: &mut usize,
    ) -> Result<Option<RequestHead>, HeadError> {
        // A head is at most `MAX_HEAD_BYTES`: reading beyond it is not needed to judge it.
        while self.buf.len() <= super::MAX_HEAD_BYTES {
            // Nothing there is `WouldBlock`, an end as good as end of file here.
            match read_unwatched(&self.io, &mut self.buf, MIN_READ) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        parse_request(&mut self.buf, scanned, self.served == 0)
    }

    async fn serve(&mut self, head: RequestHead, service: &Service) -> Next {
        let length = match super::framing::request_length(&head.fields, head.http10) {
            Ok(length) => length,
            Err(error) => {
                let error = ProxyError::InvalidRequest(format!(
                    "the request's body cannot be read: {error}"
                ));
                let proxied =
                    head.method == Method::POST && Route::of(head.path_and_query().0).is_proxied();
                let answer = if proxied {
                    Answer::refused(&error, &self.failures)
                } else {
                    Answer::error(&error, None)
                };
                self.write_answer(answer, false, Asked::of(&head)).await;
                return Next::Close;
            }
        };
        if head.asks_for_websocket() {
            return self.refuse_websocket(&head).await;
        }
        let keep_alive = head.keep_alive();
        let (path, query) = head.path_and_query();
        if head.method == Method::POST {
            if let Route::Upstream(path) = Route::of(path) {
                if path != "/" {
                    return self
                        .proxy(&head, length, &path, query, keep_alive, service)
                        .await;
                }
            }
        } else if let Some(path) =
            crate::app::forwarded_path(&head.method, path, query, &service.state)
        {
            return self
                .proxy(&head, length, &path, query, keep_alive, service)
                .await;
        }
        self.serve_by_app(head, length, keep_alive, service).await
    }

    /// A WebSocket upgrade ([`RequestHead::asks_for_websocket`]): 501
    /// `websocket_not_supported`, before its route, key or target is looked at, since each
    /// would answer something that does not say why (a 405 for a `GET` to a `POST` route, or
    /// the request forwarded as a plain `GET` with its `Upgrade` stripped, to which the
    /// upstream answers 400 or 426). Never proxied, it is answered as a 404 or 405 is: no
    /// request id, no record. The connection closes after it: the client meant it for
    /// WebSocket frames, and a body, if any, is not read. HTTP/2 needs no such check: h2
    /// refuses an `Upgrade` field, and an extended `CONNECT` (RFC 8441) since the router
    /// does not announce it, each with a reset of the stream.
    async fn refuse_websocket(&mut self, head: &RequestHead) -> Next {
        let answer = unrouted(&ProxyError::WebSocketNotSupported);
        self.write_answer(answer, false, Asked::of(head)).await
    }

    /// A proxied `POST`: the same steps as the app's dispatcher, then [`proxy::handle`]. A
    /// `GET` or `DELETE` forwarded to the target it names ([`crate::app::forwarded_path`])
    /// takes them too, then [`proxy::handle_other`]: served here, not by the app, so a large
    /// answer (`files.content`) is written as it arrives. It has no cross-site check: that
    /// guards a body, and these have none.
    async fn proxy(
        &mut self,
        head: &RequestHead,
        length: BodyLength,
        path: &str,
        query: Option<&str>,
        keep_alive: bool,
        service: &Service,
    ) -> Next {
        let state = &service.state;
        let post = head.method == Method::POST;
        let cross_site = if post {
            refuse_cross_site(&head.fields)
        } else {
            Ok(())
        };
        let ready = cross_site
            .and_then(|()| authenticate(state.keys.as_ref(), &head.fields))
            .and_then(|caller| check_encoding(&head.fields).map(|()| caller));
        let caller = match ready {
            Ok(caller) => caller,
            Err(error) => return self.refuse_unread(&error, head, length, keep_alive).await,
        };
        let limit = state.config.load().settings.max_body_bytes;
        let body = match self.read_body(head, length, limit).await {
            Ok(body) => body,
            Err(failure) => {
                return self
                    .body_failed(failure, head, limit, keep_alive, true)
                    .await;
            }
        };
        let client_gone = self.pipelined && self.client_left();
        let request = ProxyRequest {
            caller: &caller,
            path,
            query,
            fields: &head.fields,
            body,
            client_gone,
        };
        if client_gone {
            // Routed and recorded as a disconnect, not sent upstream; there is nobody to
            // answer.
            let handled = if post {
                proxy::handle(state, request, &mut self.hard_stop).await
            } else {
                proxy::handle_other(state, request, &head.method, &mut self.hard_stop).await
            };
            drop(handled);
            return Next::Gone;
        }
        let answer = {
            let handled = async {
                if post {
                    proxy::handle(state, request, &mut self.hard_stop).await
                } else {
                    proxy::handle_other(state, request, &head.method, &mut self.hard_stop).await
                }
            };
            let handled = pin!(handled);
            tokio::select! {
                biased;
                answer = handled => answer,
                () = closed_by_peer(&self.io, &mut self.buf, KEEP_PIPELINED, &mut self.unread) => return Next::Gone,
            }
        };
        self.write_answer(answer, keep_alive, Asked::of(head)).await
    }

    /// Whether the client of a pipelined request is known to have left, looked for without
    /// waiting: a reset came, or its end of file is among the bytes waiting to be read (read
    /// and kept, up to [`KEEP_PIPELINED`] as [`closed_by_peer`] does). A client that pipelined
    /// more than the router reads ahead and then closed is not seen to leave while the answer
    /// before is made: its close waits behind bytes in its own send buffer. Its system resets
    /// the connection when that answer arrives, so the request read after it is found here,
    /// not sent upstream to be cancelled when the reset came. Over a network the reset comes
    /// a round trip after the answer: a request read sooner still goes (README, "What
    /// crosses the router").
    fn client_left(&mut self) -> bool {
        if !matches!(self.io.take_error(), Ok(None)) {
            return true;
        }
        while self.buf.len() < KEEP_PIPELINED {
            match read_unwatched(&self.io, &mut self.buf, 0) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        // Read past what tokio saw: what is left must be looked for by the next read.
        self.unread = true;
        false
    }

    /// Any other request: to the axum app, its body read first (or dropped, for a request
    /// the app only refuses).
    async fn serve_by_app(
        &mut self,
        head: RequestHead,
        length: BodyLength,
        mut keep_alive: bool,
        service: &Service,
    ) -> Next {
        let (path, query) = head.path_and_query();
        let body = if crate::app::serves(&head.method, path, query, &service.state) {
            let limit = service.state.config.load().settings.max_body_bytes;
            match self.read_body(&head, length, limit).await {
                Ok(body) => body,
                Err(failure) => {
                    return self
                        .body_failed(failure, &head, limit, keep_alive, false)
                        .await;
                }
            }
        } else {
            // Only a 404 or 405 (or a 400) can come of it, whatever its body: an oversized
            // one gets that, not a 413, and is dropped unread.
            keep_alive &= self.skip_body(&head, length).await;
            Bytes::new()
        };
        let asked = Asked::of(&head);
        let Asked { http10, is_head } = asked;
        if head.target().len() > super::MAX_URI_BYTES {
            let error = ProxyError::UriTooLong(format!(
                "the request target (path and query) is longer than {} bytes, the most the \
                 router takes on a route it answers itself; shorten the query",
                super::MAX_URI_BYTES
            ));
            return self.answer_error(&error, keep_alive, asked).await;
        }
        let Some(request) = app_request(head, body) else {
            let error = ProxyError::InvalidRequest("the request target is not a valid URI".into());
            return self.answer_error(&error, keep_alive, asked).await;
        };
        let response = {
            use tower_service::Service as _;
            let mut app = service.app.clone();
            let called = pin!(app.call(request));
            tokio::select! {
                biased;
                response = called => match response {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                () = closed_by_peer(&self.io, &mut self.buf, KEEP_PIPELINED, &mut self.unread) => return Next::Gone,
            }
        };
        self.write_app_response(response, keep_alive, http10, is_head)
            .await
    }

    /// Reads a request's body, within `limit` bytes.
    async fn read_body(
        &mut self,
        head: &RequestHead,
        length: BodyLength,
        limit: usize,
    ) -> Result<Bytes, BodyFailure> {
        let mut decoder = Decoder::new(length);
        if let BodyLength::Known(declared) = length {
            if declared > limit as u64 {
                // A client that asked `Expect: 100-continue` waits for this answer before it
                // sends anything; reading would tell it to go ahead.
                let read_all = !head.expects_continue()
                    && declared <= DISCARD_AT_MOST
                    && self.discard(&mut decoder).await;
                return Err(BodyFailure::TooLarge { read_all });
            }
        }
        if decoder.is_done() {
            return Ok(Bytes::new());
        }
        if head.expects_continue() && self.buf.is_empty() && !head.http10 {
            // Shutdown began: no go-ahead for a body the router would only start on now.
            if self.draining.is_fired() {
                return Err(BodyFailure::ShuttingDown);
            }
            let go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n";
            if write_all(&self.io, go_ahead, &[], self.send_timeout)
                .await
                .is_err()
            {
                return Err(BodyFailure::Gone);
            }
        }
        let expected = decoder
            .remaining()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let mut gathered = Gathered::expecting(expected).within(limit);
        loop {
            match decoder.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => {
                    if gathered.size().saturating_add(data.len()) > limit {
                        let read_all = self.discard(&mut decoder).await;
                        return Err(BodyFailure::TooLarge { read_all });
                    }
                    gathered.push(data);
                }
                Ok(Decoded::Done) => return Ok(gathered.into_bytes()),
                Ok(Decoded::NeedMore) => {
                    let expect = decoder
                        .remaining()
                        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
                    // `read_some` reserves room for the rest of a declared body.
                    self.grown |= expect > MIN_READ;
                    let read = read_client(&mut self.io, &mut self.buf, expect, &mut self.unread);
                    let read = tokio::select! {
                        biased;
                        read = tokio::time::timeout(self.body_read_timeout, read) => read,
                        // The grace period ended with the body still coming: answered (the
                        // client may read it while it sends), then the connection closes.
                        () = &mut self.hard_stop => return Err(BodyFailure::ShuttingDown),
                    };
                    match read {
                        Ok(Ok(n)) if n > 0 => {}
                        // Closed, failed, or silent for too long.
                        _ => return Err(BodyFailure::Gone),
                    }
                }
                Err(error) => return Err(BodyFailure::Framing(error)),
            }
        }
    }

    /// Reads the rest of a body and drops it, within [`DISCARD_AT_MOST`] bytes and
    /// [`DISCARD_FOR_AT_MOST`]; whether it reached the body's end.
    async fn discard(&mut self, decoder: &mut Decoder) -> bool {
        let read_rest = async {
            let mut read = 0u64;
            loop {
                match decoder.decode(&mut self.buf) {
                    Ok(Decoded::Data(data)) => {
                        read = read.saturating_add(data.len() as u64);
                        if read > DISCARD_AT_MOST {
                            return false;
                        }
                    }
                    Ok(Decoded::Done) => return true,
                    Err(_) => return false,
                    Ok(Decoded::NeedMore) => {
                        match read_client(&mut self.io, &mut self.buf, 0, &mut self.unread).await {
                            Ok(0) | Err(_) => return false,
                            Ok(_) => {}
                        }
                    }
                }
            }
        };
        tokio::time::timeout(DISCARD_FOR_AT_MOST, read_rest)
            .await
            .unwrap_or(false)
    }

    /// Answers a body that could not be read: on a `proxied` route with a request id (see
    /// [`Answer::refused`]).
    async fn body_failed(
        &mut self,
        failure: BodyFailure,
        head: &RequestHead,
        limit: usize,
        keep_alive: bool,
        proxied: bool,
    ) -> Next {
        let failures = Arc::clone(&self.failures);
        let answer = |error: &ProxyError| {
            if proxied {
                Answer::refused(error, &failures)
            } else {
                unrouted(error)
            }
        };
        match failure {
            BodyFailure::TooLarge { read_all } => {
                let error = ProxyError::BodyTooLarge { limit };
                self.write_answer(answer(&error), keep_alive && read_all, Asked::of(head))
                    .await
            }
            BodyFailure::Framing(error) => {
                let error = ProxyError::InvalidRequest(format!(
                    "the request's body cannot be read: {error}"
                ));
                self.write_answer(answer(&error), false, Asked::of(head))
                    .await;
                Next::Close
            }
            BodyFailure::ShuttingDown => {
                let error = ProxyError::ShuttingDown(proxy::BODY_CUT_AT_SHUTDOWN.into());
                self.write_answer(answer(&error), false, Asked::of(head))
                    .await;
                Next::Close
            }
            BodyFailure::Gone => Next::Gone,
        }
    }

    /// Answers `error` to a proxied request whose body was not read (with a request id, see
    /// [`Answer::refused`]): the body is read and dropped first (within bounds), or the
    /// connection closes after the answer.
    async fn refuse_unread(
        &mut self,
        error: &ProxyError,
        head: &RequestHead,
        length: BodyLength,
        keep_alive: bool,
    ) -> Next {
        let read_all = self.skip_body(head, length).await;
        let answer = Answer::refused(error, &self.failures);
        self.write_answer(answer, keep_alive && read_all, Asked::of(head))
            .await
    }

    /// Reads and drops the body of a request that is refused unread (within the bounds of
    /// [`Conn::discard`]); whether it reached the body's end, so the connection may carry
    /// another request after the answer.
    async fn skip_body(&mut self, head: &RequestHead, length: BodyLength) -> bool {
        let mut decoder = Decoder::new(length);
        if decoder.is_done() {
            return true;
        }
        // A client waiting for `100 Continue` has sent no body: it gets the answer and the
        // connection closes, rather than a go-ahead for a body nobody reads. Nor is a body
        // declared past what would be dropped read at all: its answer goes out at once, not
        // after `DISCARD_FOR_AT_MOST` spent on a body that cannot all be dropped.
        let too_long = matches!(length, BodyLength::Known(declared) if declared > DISCARD_AT_MOST);
        !head.expects_continue() && !too_long && self.discard(&mut decoder).await
    }

    async fn answer_error(&mut self, error: &ProxyError, keep_alive: bool, asked: Asked) -> Next {
        self.write_answer(Answer::error(error, None), keep_alive, asked)
            .await
    }

    /// Writes a proxied request's answer: head and body in one write, or a stream event by
    /// event as the upstream sends them.
    async fn write_answer(&mut self, answer: Answer, keep_alive: bool, asked: Asked) -> Next {
        let Asked { http10, is_head } = asked;
        // Once shutdown began, every answer says it is the connection's last.
        let keep_alive = keep_alive && !self.draining.is_fired();
        let mut out = BytesMut::with_capacity(1024);
        write_status_line(&mut out, answer.status);
        let mut dated = false;
        answer.fields.for_each(&mut |name, value| {
            dated |= name.eq_ignore_ascii_case(b"date");
            write_field(&mut out, name, value);
        });
        // The upstream's own `Date` is relayed; the router adds one only when it sent none.
        if !dated {
            write_date(&mut out);
        }
        // A whole answer sent as an event stream (a whole chat completion to a stream
        // request, made into its chunks) is framed as a stream, with no Content-Length.
        let as_stream = matches!(answer.fields.shape, Shape::Stream { sse: true })
            && has_body(answer.status)
            && !is_head;
        let (body, delivery) = match answer.body {
            AnswerBody::Whole(body) => (body, None),
            AnswerBody::Recorded(body, delivery) => (body, Some(delivery)),
            AnswerBody::Decoding(mut decoding, delivery) => {
                let sends_body = has_body(answer.status) && !is_head;
                let next = self
                    .write_decoding(out, &mut decoding, sends_body, keep_alive, http10)
                    .await;
                match next {
                    Next::Gone => drop(delivery),
                    Next::Cut => delivery.cut_at_shutdown(),
                    Next::KeepAlive | Next::Close => delivery.delivered(),
                }
                return next;
            }
            AnswerBody::Stream(tee) if !has_body(answer.status) || is_head => {
                // A relayed 204 or 304 has no body, nor any framing for one (a chunked one's
                // last chunk would be read as the start of the next answer).
                let length = tee.length().filter(|_| has_body(answer.status));
                return self
                    .write_bodiless_stream(out, tee, length, keep_alive, http10)
                    .await;
            }
            AnswerBody::Stream(tee) => {
                // A body relayed unchanged with its upstream's length keeps it.
                let length = tee.length();
                return self
                    .write_stream(out, tee, length, keep_alive, http10)
                    .await;
            }
        };
        let next = if as_stream {
            let (chunked, keep_alive) = end_head_of_streamed_body(&mut out, keep_alive, http10);
            push_body_data(&mut out, &body, chunked);
            self.end_streamed_body(out, chunked, keep_alive).await
        } else {
            let body = if has_body(answer.status) {
                write_length(&mut out, body.len());
                // A HEAD's answer has the length of the body a GET would get, not the body.
                if is_head { Bytes::new() } else { body }
            } else {
                Bytes::new()
            };
            self.write_whole(out, &body, keep_alive, http10).await
        };
        if let Some(delivery) = delivery {
            match next {
                // A write that failed drops the delivery: the record says the client left.
                Next::Gone => drop(delivery),
                Next::Cut => delivery.cut_at_shutdown(),
                Next::KeepAlive | Next::Close => delivery.delivered(),
            }
        }
        next
    }

    /// Writes a whole answer decoded as it goes ([`proxy::coded_whole`]): its length in the
    /// head, then its pieces one write at a time, each decoded when the one before has gone,
    /// so a client that reads slowly holds no more of it decoded than one piece. Without a
    /// body (a `HEAD`, a 204) only the length goes.
    async fn write_decoding(
        &mut self,
        mut out: BytesMut,
        answer: &mut proxy::coded_whole::DecodedAnswer,
        sends_body: bool,
        keep_alive: bool,
        http10: bool,
    ) -> Next {
        write_length(&mut out, answer.left());
        if !sends_body {
            return self.write_whole(out, &[], keep_alive, http10).await;
        }
        end_head(&mut out, keep_alive, http10);
        let mut next = self.send(&out, &[], keep_alive).await;
        while matches!(next, Next::KeepAlive | Next::Close) {
            let Some(piece) = answer.next_piece(DECODED_WRITE) else {
                break;
            };
            next = self.send(&piece, &[], keep_alive).await;
        }
        // Ended short of the length it announced (it cannot: its data decoded whole when it
        // was scanned): the connection is unusable, and the client did not get the answer.
        if answer.left() > 0 && matches!(next, Next::KeepAlive | Next::Close) {
            return Next::Gone;
        }
        next
    }

    async fn write_whole(
        &mut self,
        mut out: BytesMut,
        body: &[u8],
        keep_alive: bool,
        http10: bool,
    ) -> Next {
        end_head(&mut out, keep_alive, http10);
        self.send(&out, body, keep_alive).await
    }

    /// Writes `first` then `second`, and what comes of the connection then. A client that
    /// takes nothing more when shutdown's hard stop comes has its answer cut ([`Next::Cut`]):
    /// a whole answer of many MB to a client that stopped reading would otherwise hold the
    /// exit open. The hard stop is looked at only while the write waits for room, so a write
    /// the kernel takes at once costs nothing more.
    async fn send(&mut self, first: &[u8], second: &[u8], keep_alive: bool) -> Next {
        self.answering = true;
        let stop = Some(&mut self.hard_stop);
        match write_all_unless(&self.io, first, second, self.send_timeout, stop).await {
            Err(_) => Next::Gone,
            Ok(Wrote::Stopped) => Next::Cut,
            Ok(Wrote::All) if keep_alive => Next::KeepAlive,
            Ok(Wrote::All) => Next::Close,
        }
    }

    /// Relays a stream: chunked to an HTTP/1.1 client, ended by the connection's close for
    /// HTTP/1.0; or, when its `length` is known ahead (a body relayed unread with its
    /// upstream's Content-Length), with that Content-Length. The head goes out at once (with
    /// the first event when it is already there); then each event as the tee yields it.
    async fn write_stream(
        &mut self,
        mut out: BytesMut,
        mut tee: Box<proxy::stream::StreamTee>,
        length: Option<u64>,
        keep_alive: bool,
        http10: bool,
    ) -> Next {
        let (chunked, keep_alive) = match length {
            Some(length) => {
                write_length(&mut out, length);
                end_head(&mut out, keep_alive, http10);
                (false, keep_alive)
            }
            None => end_head_of_streamed_body(&mut out, keep_alive, http10),
        };
        // A length announced binds the body: one that came out longer or shorter (it cannot,
        // from a well-framed upstream) leaves the connection unusable, so it closes.
        let mut left = length;
        // The head goes out with the first event when that is already there. Events that
        // arrived in one read leave in one write (the tee yields them together; a plain-http
        // upstream's body joins chunks it read at once), but the tee is not polled once more
        // per event to look for later ones: in the benchmark (events 2 ms apart) there rarely
        // were any, and that poll cost more CPU per stream than the writes it saved.
        let mut item = futures_util::FutureExt::now_or_never(tee.next());
        loop {
            match item {
                Some(Some(Ok(data))) => {
                    if let Some(left) = &mut left {
                        let Some(less) = left.checked_sub(data.len() as u64) else {
                            let _ = self.send(&out, &[], false).await;
                            return Next::Gone;
                        };
                        *left = less;
                    }
                    push_body_data(&mut out, &data, chunked);
                }
                // A stream that is not SSE failed: the body is cut short, so the client sees
                // an incomplete answer rather than a complete wrong one.
                Some(Some(Err(_))) => {
                    let _ = self.send(&out, &[], false).await;
                    return Next::Gone;
                }
                Some(None) => {
                    let keep_alive = keep_alive && left.is_none_or(|left| left == 0);
                    return self.end_streamed_body(out, chunked, keep_alive).await;
                }
                None => {}
            }
            if !out.is_empty() {
                self.answering = true;
                let stop = Some(&mut self.hard_stop);
                match write_all_unless(&self.io, &out, &[], self.send_timeout, stop).await {
                    Ok(Wrote::All) => {}
                    // A client that takes nothing more at shutdown's hard stop: the stream
                    // is cut as any other then (its error event cannot reach that client).
                    Ok(Wrote::Stopped) => {
                        tee.cut_at_shutdown();
                        return Next::Gone;
                    }
                    Err(_) => return Next::Gone,
                }
                out.clear();
            }
            item = tokio::select! {
                biased;
                next = tee.next() => Some(next),
                () = closed_by_peer(&self.io, &mut self.buf, KEEP_PIPELINED, &mut self.unread) => return Next::Gone,
            };
        }
    }

    /// Relays the head of an answer that has no body (a 204 or 304, or any answer to a
    /// `HEAD`), with no framing but the `Content-Length` a body would have had, then takes
    /// the tee to its end, sending nothing, so the record is made as for any answer.
    async fn write_bodiless_stream(
        &mut self,
        mut out: BytesMut,
        mut tee: Box<proxy::stream::StreamTee>,
        length: Option<u64>,
        keep_alive: bool,
        http10: bool,
    ) -> Next {
        if let Some(length) = length {
            write_length(&mut out, length);
        }
        end_head(&mut out, keep_alive, http10);
        let next = self.send(&out, &[], keep_alive).await;
        if matches!(next, Next::Gone | Next::Cut) {
            return next;
        }
        loop {
            let item = tokio::select! {
                biased;
                item = tee.next() => item,
                () = closed_by_peer(&self.io, &mut self.buf, KEEP_PIPELINED, &mut self.unread) => return Next::Gone,
            };
            match item {
                Some(Ok(_)) => {}
                None => return next,
                Some(Err(_)) => return Next::Close,
            }
        }
    }

    /// Writes the app's response: `Content-Length` when its size is known, else chunked
    /// (HTTP/1.0: until the close).
    async fn write_app_response(
        &mut self,
        response: axum::response::Response,
        keep_alive: bool,
        http10: bool,
        is_head: bool,
    ) -> Next {
        let keep_alive = keep_alive && !self.draining.is_fired();
        let (parts, mut body) = response.into_parts();
        let mut out = BytesMut::with_capacity(512);
        write_status_line(&mut out, parts.status);
        for (name, value) in &parts.headers {
            let framing = [
                http::header::CONTENT_LENGTH,
                http::header::TRANSFER_ENCODING,
                http::header::CONNECTION,
            ];
            if !framing.contains(name) {
                write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if !parts.headers.contains_key(http::header::DATE) {
            write_date(&mut out);
        }
        let sends_body = has_body(parts.status) && !is_head;
        let exact = http_body::Body::size_hint(&body).exact();
        // A HEAD answer's body is gone (axum empties it), but its length is the GET's, which
        // axum keeps in the answer's Content-Length.
        let head_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .filter(|_| is_head && has_body(parts.status));
        if let Some(length) = head_length {
            write_field(&mut out, b"content-length", length.as_bytes());
        } else if let Some(size) = exact.filter(|_| has_body(parts.status)) {
            write_length(&mut out, usize::try_from(size).unwrap_or(usize::MAX));
        }
        if !sends_body {
            return self.write_whole(out, &[], keep_alive, http10).await;
        }
        if exact.is_some() {
            // A whole body: gathered and written with the head.
            let collected = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Next::Gone,
            };
            return self.write_whole(out, &collected, keep_alive, http10).await;
        }
        let (chunked, keep_alive) = end_head_of_streamed_body(&mut out, keep_alive, http10);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                let _ = self.send(&out, &[], false).await;
                return Next::Gone;
            };
            if let Ok(data) = frame.into_data() {
                push_body_data(&mut out, &data, chunked);
                match self.send(&out, &[], true).await {
                    Next::KeepAlive => {}
                    ended => return ended,
                }
                out.clear();
            }
        }
        self.end_streamed_body(out, chunked, keep_alive).await
    }

    /// Writes what `out` holds and the body's end (the last chunk, when chunked).
    async fn end_streamed_body(
        &mut self,
        mut out: BytesMut,
        chunked: bool,
        keep_alive: bool,
    ) -> Next {
        if chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        self.send(&out, &[], keep_alive).await
    }

    /// A panic ended the handling of a request ([`crate::caught`]): the client gets a 500
    /// `internal_error` when nothing of the answer had gone out, else the connection is cut
    /// (a client cannot tell a whole answer from part of one otherwise). Either way the
    /// connection closes: what the handling left unread of the request is unknown. The log
    /// says where the panic happened, never its message (it may quote the request).
    async fn after_panic(mut self, panicked: &crate::caught::Panicked, asked: Asked) {
        if self.answering {
            tracing::error!(
                "internal error: handling a request panicked {panicked}; its answer was under \
                 way and is cut (the connection closes)"
            );
            return;
        }
        tracing::error!(
            "internal error: handling a request panicked {panicked}; answered 500 \
             internal_error (the connection closes)"
        );
        if let Next::Close = self.answer_error(&ProxyError::Internal, false, asked).await {
            self.linger().await;
        }
    }

    /// Closing after an answer: stop sending, then read (and drop) what the client still
    /// sends for a moment, so a client still writing reads the answer rather than a reset.
    async fn linger(mut self) {
        use tokio::io::AsyncWriteExt as _;
        if self.io.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut read = 0;
            while read < LINGER_BYTES {
                self.buf.clear();
                match read_client(&mut self.io, &mut self.buf, 0, &mut self.unread).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
        };
        // Shutdown does not wait for a connection whose answer is out.
        tokio::select! {
            _ = tokio::time::timeout(LINGER_FOR, drain) => {}
            () = &mut self.draining => {}
        }
    }

    /// The connection opened with HTTP/2's preface: hyper serves it (with the bytes already
    /// read put back in front), through the app.
    async fn into_http2(self, service: &Service) {
        let io = Prefixed {
            prefix: self.buf.freeze(),
            io: self.io,
        };
        let limits = super::http2::Limits {
            idle_timeout: service.state.idle_timeout,
            send_timeout: service.state.send_timeout,
            hard_stop: service.state.hard_stop.clone(),
        };
        super::http2::serve(io, service.app.clone(), limits, self.draining).await;
    }
}

/// The router's error to a request that is not proxied: no request id.
fn unrouted(error: &ProxyError) -> Answer {
    Answer::error(error, None)
}

/// Ends the head of an answer whose length is in it: the connection's fate said (an
/// HTTP/1.0 client closes unless told it stays).
fn end_head(out: &mut BytesMut, keep_alive: bool, http10: bool) {
    if !keep_alive {
        write_field(out, b"connection", b"close");
    } else if http10 {
        write_field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Ends the head of an answer whose body goes out as it comes: chunked to an HTTP/1.1
/// client, delimited by the connection's close for HTTP/1.0. Returns (chunked, keep alive).
fn end_head_of_streamed_body(out: &mut BytesMut, keep_alive: bool, http10: bool) -> (bool, bool) {
    let chunked = !http10;
    let keep_alive = keep_alive && chunked;
    if chunked {
        write_field(out, b"transfer-encoding", b"chunked");
    }
    if !keep_alive {
        write_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    (chunked, keep_alive)
}

/// Appends body bytes to `out`, as one chunk when `chunked`.
fn push_body_data(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if chunked {
        encode_chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

/// What the answer's framing depends on of the request it answers.
#[derive(Clone, Copy)]
struct Asked {
    http10: bool,
    /// A `HEAD` gets the head a `GET` would get and no body.
    is_head: bool,
}

impl Asked {
    /// For a request whose head could not be read.
    const UNREAD: Self = Self {
        http10: false,
        is_head: false,
    };

    fn of(head: &RequestHead) -> Self {
        Self {
            http10: head.http10,
            is_head: head.method == Method::HEAD,
        }
    }
}

/// Statuses whose answers carry no body (and no `Content-Length`).
fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Most bytes of an answer decoded as it goes ([`Conn::write_decoding`]) decoded for
/// one write.
const DECODED_WRITE: usize = 256 * 1024;

fn write_length(out: &mut BytesMut, length: impl itoa::Integer) {
    write_field(
        out,
        b"content-length",
        itoa::Buffer::new().format(length).as_bytes(),
    );
}

/// The request as the axum app takes it.
fn app_request(head: RequestHead, body: Bytes) -> Option<http::Request<axum::body::Body>> {
    let uri: http::Uri = head.target().parse().ok()?;
    let mut request = http::Request::new(axum::body::Body::from(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = uri;
    *request.version_mut() = if head.http10 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    *request.headers_mut() = head.fields.to_header_map();
    Some(request)
}

/// A connection with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
