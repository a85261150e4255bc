//! A client connection that opened with HTTP/2's preface (prior knowledge, h2c): hyper
//! serves it, through the axum app, with the limits the router's HTTP/1 keeps.
//!
//! hyper's HTTP/2 server has no idle timeout of its own, so the connection counts its open
//! requests (an answer still streaming included) and, once none has been open for the idle
//! timeout, says GOAWAY and closes. PINGs every minute find a peer that vanished without a
//! FIN. A request body that stalls is refused by the proxy ([`crate::proxy::forward`]).

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
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
/// the requests under way finish (shutdown's own deadline bounds those).
pub async fn serve<I>(io: I, app: axum::Router, idle_timeout: Duration, mut draining: Stopped)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (open, mut watch_open) = watch::channel(0usize);
    let service = CountedService {
        inner: TowerToHyperService::new(app),
        open: Arc::new(open),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(PING_INTERVAL))
        .keep_alive_timeout(PING_TIMEOUT);
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
        let open = OpenRequest::new(&self.open);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // The body owns the count: it ends when hyper has sent the last frame or the
            // client reset the stream.
            Ok(response.map(|body| {
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _open = &open;
                    frame
                }))
            }))
        })
    }
}
