//! A client connection that opened with HTTP/2's preface (prior knowledge, h2c): hyper
//! serves it, through the axum app, with the limits the router's HTTP/1 keeps.
//!
//! hyper's HTTP/2 server has no idle timeout of its own, so the connection counts its open
//! requests (an answer still streaming included) and, once none has been open for the idle
//! timeout, says GOAWAY and closes. PINGs every minute find a peer that vanished without a
//! FIN. A request whose client went away, or fell silent, while sending its body gets no
//! answer: the proxy marks its answer [`NoAnswer`], and the stream is reset, as HTTP/1
//! closes such a connection.
//!
//! A client that answers PINGs but stops reading an answer (its flow-control window stays
//! shut) would hold that answer, and the upstream connection behind it, for ever: each answer
//! notes when it last handed hyper a frame that hyper has not come back for, and an answer
//! left waiting that way for the send timeout is given up, as HTTP/1 closes a connection
//! whose writes stall (nginx's `send_timeout`). Only that stream ends (RST_STREAM, CANCEL):
//! the connection's other streams go on. hyper drives each stream (its service future, then
//! its answer's body, polled only once the last frame fits in the client's window) as a task
//! of the executor it is given; [`StreamExecutor`] runs each one under a watch that drops it
//! once its answer has waited for the send timeout, and h2 resets a stream dropped still
//! open. A client that shuts the whole connection's window stalls every answer so, and ends
//! with no stream open: the idle timeout then closes it.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::hard_stop::{HardStop, Stopped};

/// How often an otherwise quiet connection is PINGed, and how long its answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// After GOAWAY, how long a connection with no request open waits for the client to end it.
const GOAWAY_LINGER: Duration = Duration::from_secs(2);

/// Serves one HTTP/2 connection until the client closes it, it has been idle for
/// `idle_timeout`, or shutdown begins (`draining`): in the last two cases with GOAWAY, letting
/// the requests under way finish (shutdown's own deadline bounds those). An answer the client
/// leaves unread for `send_timeout` has its stream reset.
pub async fn serve<I>(io: I, app: axum::Router, limits: Limits, mut draining: Stopped)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Limits {
        idle_timeout,
        send_timeout,
        hard_stop,
    } = limits;
    let (open, mut watch_open) = watch::channel(0usize);
    let service = CountedService {
        inner: TowerToHyperService::new(app),
        open: Arc::new(open),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(StreamExecutor {
        send_timeout,
        hard_stop,
    });
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(PING_INTERVAL))
        .keep_alive_timeout(PING_TIMEOUT)
        // hyper's formatter panics with a clock before 1970 or past 9999, killing the
        // connection; the service writes the field itself, as the HTTP/1 side does.
        .auto_date_header(false)
        // Above the HTTP/1 head limit (h2 counts 32 bytes more per field), so that a request
        // over that limit gets the app's JSON 431 like an HTTP/1 one; hyper's default, 16 KiB,
        // refused with a bare 431 (or a reset) what HTTP/1 accepts.
        .max_header_list_size(u32::try_from(2 * super::MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = &mut connection => return,
        () = &mut draining => {}
        () = idle_for(&mut watch_open, idle_timeout) => {}
    }
    connection.as_mut().graceful_shutdown();
    // hyper ends the connection once the requests under way are answered and the client has
    // acknowledged the GOAWAY's PING. A client that acknowledges nothing must not hold it
    // (nor hold up shutdown, which waits for every connection): with no request open for a
    // moment, it is dropped.
    tokio::select! {
        _ = &mut connection => {}
        () = idle_for(&mut watch_open, GOAWAY_LINGER) => {}
    }
}

/// The timeouts of one HTTP/2 connection (the router's HTTP/1 ones).
#[derive(Debug, Clone)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// Shutdown's end of grace: an answer left waiting on its client is given up then, at
    /// once, as HTTP/1 cuts one whose write waits for room.
    pub hard_stop: HardStop,
}

tokio::task_local! {
    /// The note of the stream task being polled, for its answer's body to take
    /// ([`CountedService`] takes it when the answer's head is ready).
    static WAITING: Arc<Waiting>;
}

/// Marks an answer that must not be sent: its client went away, or fell silent, while
/// sending the request's body (see `proxy::intake::Unread::Gone`). Over HTTP/1 the router
/// closes such a connection without an answer, neither logged nor counted as a refusal; here
/// the stream is reset (RST_STREAM, CANCEL) and the connection's other streams go on.
#[derive(Debug, Clone, Copy)]
pub struct NoAnswer;

/// Since when (milliseconds after `epoch`, plus one; 0 for not waiting) an answer has had a
/// frame out that hyper has not asked past. hyper asks an answer for its next frame as soon
/// as the last one fits in the client's flow-control window, so an answer left waiting is
/// one the client is not reading. `unanswered`: the app marked the answer [`NoAnswer`],
/// and the stream's task is to end now, unanswered.
struct Waiting {
    epoch: Instant,
    since: AtomicU64,
    unanswered: AtomicBool,
}

impl Waiting {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            unanswered: AtomicBool::new(false),
        }
    }

    /// The answer has handed hyper a frame.
    fn start(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.since.store(now, Ordering::Relaxed);
    }

    /// hyper came back for the next frame.
    fn stop(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// When the answer, waiting now, will have waited `timeout`.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.epoch + Duration::from_millis(since - 1) + timeout),
        }
    }
}

/// Runs hyper's tasks for one connection (each stream's, one per request) on tokio, each
/// under [`reset_if_unread`].
#[derive(Clone)]
struct StreamExecutor {
    send_timeout: Duration,
    hard_stop: HardStop,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
{
    fn execute(&self, task: F) {
        let task = reset_if_unread(task, self.send_timeout, self.hard_stop.clone());
        tokio::spawn(async move {
            // A panic in making the answer is answered 500 ([`CountedService`]); one in
            // sending its body ends only this stream, reset (as dropped) and said.
            if let Err(panicked) = crate::caught::catching(task).await {
                tracing::error!(
                    "internal error: handling a request panicked {panicked}; its answer was \
                     under way and is cut (HTTP/2: its stream is reset)"
                );
            }
        });
    }
}

/// Runs a stream's task until it ends, or until its answer has waited on the client for
/// `send_timeout`, or waits when shutdown's grace ends (`hard_stop`), or its answer was
/// marked [`NoAnswer`]: the task is then dropped, which drops the answer (its request recorded as a disconnect, or at the hard
/// stop as cut by the shutdown; its upstream connection closed) and has h2 reset the stream.
/// Until the answer's body has taken the task's note, each poll offers it ([`WAITING`]); a
/// timer and a wait for the hard stop are set only while the answer waits.
async fn reset_if_unread<F: Future>(task: F, send_timeout: Duration, hard_stop: HardStop) {
    let mut task = pin!(task);
    let waiting = Arc::new(Waiting::new());
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut stopped: Option<Stopped> = None;
    std::future::poll_fn(|cx| {
        let polled = if Arc::strong_count(&waiting) == 1 {
            WAITING.sync_scope(waiting.clone(), || task.as_mut().poll(cx))
        } else {
            task.as_mut().poll(cx)
        };
        if polled.is_ready() || waiting.unanswered.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        let Some(deadline) = waiting.deadline(send_timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("HTTP/2 client left an answer unread; its stream reset");
            return Poll::Ready(());
        }
        let stopped = stopped.get_or_insert_with(|| hard_stop.stopped());
        if Pin::new(stopped).poll(cx).is_ready() {
            tracing::debug!("shutdown's grace is over; an HTTP/2 answer left unread is cut");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// Returns once no request has been open for `timeout` in a row.
async fn idle_for(open: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        if *open.borrow_and_update() > 0 {
            if open.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        match tokio::time::timeout(timeout, open.changed()).await {
            Err(_) => return,
            Ok(Ok(())) => {}
            Ok(Err(_)) => return std::future::pending().await,
        }
    }
}

/// The app, counting each request as open from its arrival until its answer's body is done
/// (or dropped).
#[derive(Clone)]
struct CountedService {
    inner: TowerToHyperService<axum::Router>,
    open: Arc<watch::Sender<usize>>,
}

/// One open request; counted down when dropped.
struct OpenRequest(Arc<watch::Sender<usize>>);

impl OpenRequest {
    fn new(open: &Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        Self(open.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl hyper::service::Service<http::Request<Incoming>> for CountedService {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        if let Some(mut refused) = refused_target(&request) {
            add_date(&mut refused);
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let open = OpenRequest::new(&self.open);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = match crate::caught::catching(answer).await {
                Ok(response) => response?,
                // No head has gone out yet: the client gets the router's 500; the
                // connection's other streams go on.
                Err(panicked) => {
                    tracing::error!(
                        "internal error: handling a request panicked {panicked}; answered 500 \
                         internal_error (HTTP/2: the connection's other streams go on)"
                    );
                    axum::response::IntoResponse::into_response(crate::error::ProxyError::Internal)
                }
            };
            let mut response = response;
            add_date(&mut response);
            // Polled inside the stream's task, so its note is there to take.
            let waiting = WAITING.try_with(Arc::clone).ok();
            let unanswered = response.extensions().get::<NoAnswer>().is_some();
            if let Some(waiting) = waiting.as_ref().filter(|_| unanswered) {
                // The stream's task ends at once ([`reset_if_unread`]) and drops this
                // future: no head goes out, and h2 resets the stream.
                waiting.unanswered.store(true, Ordering::Relaxed);
                return std::future::pending().await;
            }
            // The body owns the count: it ends when hyper has sent the last frame or the
            // client reset the stream.
            Ok(response.map(|inner| {
                axum::body::Body::new(WatchedBody {
                    inner,
                    waiting,
                    _open: open,
                })
            }))
        })
    }
}

/// HTTP/1's 400 for a request whose target is not a path ([`super::head::target_form_error`]):
/// over HTTP/2 a `CONNECT` (which has no `:path`), `*` for a method other than `OPTIONS`, or a
/// `:path` that does not start with `/`; the app would have looked each up as a route.
/// The `date` field hyper would have added (one the answer already has is kept), when the
/// clock gives one: see [`super::head::date_now`].
fn add_date<B>(response: &mut http::Response<B>) {
    if let Some(date) = super::head::date_now() {
        if let Ok(value) = http::HeaderValue::from_bytes(&date) {
            response
                .headers_mut()
                .entry(http::header::DATE)
                .or_insert(value);
        }
    }
}

fn refused_target(request: &http::Request<Incoming>) -> Option<http::Response<axum::body::Body>> {
    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
    let why = super::head::target_form_error(target, request.method())?;
    let error =
        crate::error::ProxyError::InvalidRequest(format!("malformed HTTP/2 request ({why})"));
    Some(axum::response::IntoResponse::into_response(error))
}

/// An answer's body, counted as open while it lives, noting in its stream's [`Waiting`]
/// when it waits on hyper.
struct WatchedBody {
    inner: axum::body::Body,
    waiting: Option<Arc<Waiting>>,
    _open: OpenRequest,
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(waiting) = &this.waiting else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        waiting.stop();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            waiting.start();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
