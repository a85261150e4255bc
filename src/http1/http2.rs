//! A client connection that opened with HTTP/2's preface (prior knowledge, h2c): hyper
//! serves it, through the axum app, with the limits the router's HTTP/1 keeps.
//!
//! hyper's HTTP/2 server has no idle timeout of its own, so the connection counts its open
//! requests (an answer still streaming included) and, once none has been open for the idle
//! timeout, says GOAWAY and closes. PINGs every minute find a peer that vanished without a
//! FIN. A request body that stalls is refused by the proxy ([`crate::proxy::forward`]).
//!
//! A client that answers PINGs but stops reading an answer (its flow-control window stays
//! shut) would hold that answer, and the upstream connection behind it, for ever: each answer
//! notes when it last handed hyper a frame that hyper has not come back for, and a connection
//! with an answer left waiting that way for the send timeout is closed, as HTTP/1 closes one
//! whose writes stall (nginx's `send_timeout`).

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::hard_stop::Stopped;

/// How often an otherwise quiet connection is PINGed, and how long its answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// After GOAWAY, how long a connection with no request open waits for the client to end it.
const GOAWAY_LINGER: Duration = Duration::from_secs(2);

/// Serves one HTTP/2 connection until the client closes it, it has been idle for
/// `idle_timeout`, or shutdown begins (`draining`): in the last two cases with GOAWAY, letting
/// the requests under way finish (shutdown's own deadline bounds those). A client that leaves
/// an answer unread for `send_timeout` loses the connection at once.
pub async fn serve<I>(io: I, app: axum::Router, limits: Limits, mut draining: Stopped)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Limits {
        idle_timeout,
        send_timeout,
    } = limits;
    let (open, mut watch_open) = watch::channel(0usize);
    let unsent = Arc::new(Unsent::default());
    let service = CountedService {
        inner: TowerToHyperService::new(app),
        open: Arc::new(open),
        unsent: unsent.clone(),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(PING_INTERVAL))
        .keep_alive_timeout(PING_TIMEOUT)
        // Above the HTTP/1 head limit (h2 counts 32 bytes more per field), so that a request
        // over that limit gets the app's JSON 431 like an HTTP/1 one; hyper's default, 16 KiB,
        // refused with a bare 431 (or a reset) what HTTP/1 accepts.
        .max_header_list_size(u32::try_from(2 * super::MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = &mut connection => return,
        () = &mut draining => {}
        () = idle_for(&mut watch_open, idle_timeout) => {}
        () = unsent.stalled_for(send_timeout) => return,
    }
    connection.as_mut().graceful_shutdown();
    // hyper ends the connection once the requests under way are answered and the client has
    // acknowledged the GOAWAY's PING. A client that acknowledges nothing must not hold it
    // (nor hold up shutdown, which waits for every connection): with no request open for a
    // moment, it is dropped.
    tokio::select! {
        _ = &mut connection => {}
        () = idle_for(&mut watch_open, GOAWAY_LINGER) => {}
        () = unsent.stalled_for(send_timeout) => {}
    }
}

/// The timeouts of one HTTP/2 connection (the router's HTTP/1 ones).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

/// For each answer under way on a connection: since when (milliseconds after `epoch`, plus
/// one; 0 for not waiting) it has had a frame out that hyper has not asked past. hyper asks
/// an answer for its next frame as soon as the last one fits in the client's flow-control
/// window, so an answer left waiting is one the client is not reading.
struct Unsent {
    epoch: Instant,
    answers: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Default for Unsent {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            answers: Mutex::default(),
        }
    }
}

impl Unsent {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn add(&self) -> Arc<AtomicU64> {
        let since = Arc::new(AtomicU64::new(0));
        self.lock().push(since.clone());
        since
    }

    fn remove(&self, since: &Arc<AtomicU64>) {
        self.lock().retain(|other| !Arc::ptr_eq(other, since));
    }

    /// The longest any answer has been left waiting.
    fn longest_wait(&self) -> Duration {
        let now = self.now();
        let oldest = self
            .lock()
            .iter()
            .map(|since| since.load(Ordering::Relaxed))
            .filter(|since| *since != 0)
            .min();
        oldest.map_or(Duration::ZERO, |since| {
            Duration::from_millis(now.saturating_sub(since))
        })
    }

    /// Returns once an answer has been left waiting for `timeout` (checked four times per
    /// timeout, so it is found within 1.25 timeouts).
    async fn stalled_for(&self, timeout: Duration) {
        let period = (timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            if self.longest_wait() >= timeout {
                tracing::debug!("HTTP/2 client left an answer unread; connection closed");
                return;
            }
        }
    }

    /// A poisoned lock only means a panic elsewhere; the list itself is always whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU64>>> {
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    unsent: Arc<Unsent>,
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
        if let Some(refused) = refused_target(&request) {
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let open = OpenRequest::new(&self.open);
        let unsent = self.unsent.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // The body owns the count: it ends when hyper has sent the last frame or the
            // client reset the stream.
            Ok(response.map(|inner| {
                axum::body::Body::new(WatchedBody {
                    since: unsent.add(),
                    unsent,
                    inner,
                    _open: open,
                })
            }))
        })
    }
}

/// HTTP/1's 400 for a request whose target is not a path ([`super::head::target_form_error`]):
/// over HTTP/2 a `CONNECT` (which has no `:path`), `*` for a method other than `OPTIONS`, or a
/// `:path` that does not start with `/`; the app would have looked each up as a route.
fn refused_target(request: &http::Request<Incoming>) -> Option<http::Response<axum::body::Body>> {
    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
    let why = super::head::target_form_error(target, request.method())?;
    let error =
        crate::error::ProxyError::InvalidRequest(format!("malformed HTTP/2 request ({why})"));
    Some(axum::response::IntoResponse::into_response(error))
}

/// An answer's body, counted as open while it lives, noting in [`Unsent`] when it waits on
/// hyper.
struct WatchedBody {
    inner: axum::body::Body,
    unsent: Arc<Unsent>,
    since: Arc<AtomicU64>,
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
        this.since.store(0, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.since.store(this.unsent.now(), Ordering::Relaxed);
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

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.unsent.remove(&self.since);
    }
}
