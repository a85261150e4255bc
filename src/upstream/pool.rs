//! Each lane's own keep-alive HTTP/1 connections to plain `http://` upstreams (a local model
//! server, a sidecar, the benchmark's mock).
//!
//! Why not hyper-util's pooled client for these too: per request it hashes the pool key with
//! SipHash twice, boxes and spawns a task that waits for the connection to be ready again,
//! and goes through an `Arc<Mutex>` shared with that task: about 8 K of the ~64 K instructions
//! a proxied request costs (callgrind). Here a connection goes back to its lane's idle list
//! when the answer's body has been read to its end, and is checked for readiness when it is
//! next taken. TLS upstreams keep hyper-util's client, which also speaks HTTP/2 to them.
//!
//! What a connection in the list may be: closed by the upstream since (found when taken: it
//! says so when polled for readiness, and the next one is tried), or older than the idle
//! timeout (dropped when taken, when another is returned, or by the lane's [`sweep`], which
//! also forgets hosts left without idle connections). A request that a connection refused
//! before writing a byte of it goes to the next one, or to a new connection, as hyper-util
//! retries it; one that failed after it was written is not sent again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;

/// The request side of one upstream connection.
type Sender = http1::SendRequest<Full<Bytes>>;

/// The idle connections of every lane. Each lane takes and returns only its own, so its
/// lock is never contended in the server (tests that drive the router from a
/// multi-threaded runtime all count as lane 0, hence a lock and not a `RefCell`).
pub(super) struct LanePools {
    lanes: Box<[Mutex<Lane>]>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Lane {
    hosts: Vec<Host>,
    /// A [`sweep`] task runs on this lane (while it holds idle connections).
    sweeping: bool,
}

/// The idle connections to one `host:port`, oldest first.
struct Host {
    authority: Arc<str>,
    idle: VecDeque<Idle>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection taken from (or new to) a lane's list; where it goes back to.
struct Lease {
    pools: Arc<LanePools>,
    lane: usize,
    authority: Arc<str>,
    sender: Sender,
}

impl LanePools {
    pub(super) fn new(lanes: usize, idle_timeout: Duration) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| Mutex::default()).collect(),
            idle_timeout,
        }
    }

    fn lane(&self, lane: usize) -> std::sync::MutexGuard<'_, Lane> {
        self.lanes[lane % self.lanes.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned idle connection to `authority` still within the idle
    /// timeout (the one most likely to be open still), and the authority as leases keep it.
    fn take(&self, lane: usize, authority: &str) -> (Arc<str>, Option<Sender>) {
        let mut guard = self.lane(lane);
        match guard.hosts.iter_mut().find(|h| &*h.authority == authority) {
            Some(host) => (Arc::clone(&host.authority), self.take_at(host)),
            // Allocated only when a new connection is made anyway.
            None => (Arc::from(authority), None),
        }
    }

    fn take_again(&self, lane: usize, authority: &str) -> Option<Sender> {
        let mut guard = self.lane(lane);
        let host = guard
            .hosts
            .iter_mut()
            .find(|h| &*h.authority == authority)?;
        self.take_at(host)
    }

    fn take_at(&self, host: &mut Host) -> Option<Sender> {
        let idle = host.idle.pop_back()?;
        if idle.since.elapsed() > self.idle_timeout {
            // Everything older went with it.
            host.idle.clear();
            return None;
        }
        Some(idle.sender)
    }

    fn put_back(self: &Arc<Self>, lane: usize, authority: Arc<str>, sender: Sender) {
        let now = Instant::now();
        let mut guard = self.lane(lane);
        let at = match guard.hosts.iter().position(|h| h.authority == authority) {
            Some(at) => at,
            None => {
                guard.hosts.push(Host {
                    authority,
                    idle: VecDeque::new(),
                });
                guard.hosts.len() - 1
            }
        };
        let entry = &mut guard.hosts[at];
        entry.drop_expired(now, self.idle_timeout);
        entry.idle.push_back(Idle { sender, since: now });
        if !guard.sweeping {
            // Outside a runtime (a body dropped as one shuts down) nothing is left to sweep for.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                guard.sweeping = true;
                runtime.spawn(sweep(Arc::downgrade(self), lane));
            }
        }
    }

    /// How many idle connections lane `lane` holds to `authority` (for tests).
    #[cfg(test)]
    fn idle_count(&self, lane: usize, authority: &str) -> usize {
        self.lane(lane)
            .hosts
            .iter()
            .find(|h| &*h.authority == authority)
            .map_or(0, |h| h.idle.len())
    }
}

impl Host {
    fn drop_expired(&mut self, now: Instant, idle_timeout: Duration) {
        while self
            .idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > idle_timeout)
        {
            self.idle.pop_front();
        }
    }
}

/// Closes lane `lane`'s connections that idled past the timeout, every timeout, as
/// hyper-util's pool does: otherwise the connections to an upstream that gets no more
/// requests would stay open for as long as the upstream keeps them. Ends when the lane holds
/// no idle connection (the next one returned starts it again) or the client is gone.
async fn sweep(pools: Weak<LanePools>, lane: usize) {
    loop {
        let Some(every) = pools.upgrade().map(|p| p.idle_timeout) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut guard = pools.lane(lane);
        for host in &mut guard.hosts {
            host.drop_expired(now, pools.idle_timeout);
        }
        // A lane that served many hosts (`?proxy=` URLs, say) does not keep them all.
        guard.hosts.retain(|h| !h.idle.is_empty());
        if guard.hosts.is_empty() {
            guard.sweeping = false;
            return;
        }
    }
}

/// Why a request could not be sent.
pub(super) enum SendError {
    /// Connecting (TCP) failed or timed out.
    Connect(super::BoxError),
    /// hyper failed the handshake or the exchange.
    Exchange(hyper::Error),
}

/// Sends `request` (origin-form URI, `Host` set) to `authority` over one of lane `lane`'s idle
/// connections, or a new one from `connect`.
pub(super) async fn send<C, F>(
    pools: &Arc<LanePools>,
    lane: usize,
    authority: &str,
    mut request: Request<Full<Bytes>>,
    connect: C,
) -> Result<Response<PooledBody>, SendError>
where
    C: FnOnce() -> F,
    F: std::future::Future<Output = Result<super::Connection, super::BoxError>>,
{
    let (authority, mut idle) = pools.take(lane, authority);
    while let Some(mut sender) = idle {
        // Closed since it was returned: try the next.
        if sender.ready().await.is_ok() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(lease(pools, lane, &authority, sender, response)),
                Err(mut refused) => match refused.take_message() {
                    // Not a byte of it was written: it may go on another connection.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Exchange(refused.into_error())),
                },
            }
        }
        idle = pools.take_again(lane, &authority);
    }
    let io = connect().await.map_err(SendError::Connect)?;
    let (mut sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(SendError::Exchange)?;
    // On the lane's own runtime, with the requests it carries.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(SendError::Exchange)?;
    Ok(lease(pools, lane, &authority, sender, response))
}

fn lease(
    pools: &Arc<LanePools>,
    lane: usize,
    authority: &Arc<str>,
    sender: Sender,
    response: Response<Incoming>,
) -> Response<PooledBody> {
    response.map(|incoming| PooledBody {
        incoming,
        ended: false,
        lease: Some(Lease {
            pools: Arc::clone(pools),
            lane,
            authority: Arc::clone(authority),
            sender,
        }),
    })
}

/// An answer's body; once it has been read to its end, its connection goes back to the
/// lane's idle list. A body dropped before its end takes the connection with it: the rest of
/// the answer would still be on the wire.
pub struct PooledBody {
    incoming: Incoming,
    ended: bool,
    lease: Option<Lease>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            // A failed read leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.ended || self.incoming.is_end_stream() {
            lease
                .pools
                .put_back(lease.lane, lease.authority, lease.sender);
        }
    }
}

/// The `Host` header hyper-util's client would send for `uri`: the host, and the port unless
/// it is the scheme's default.
pub(super) fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    match authority.port_u16() {
        Some(80) | None => HeaderValue::from_str(authority.host()).ok(),
        Some(_) => HeaderValue::from_str(authority.as_str()).ok(),
    }
}

/// `uri` reduced to what an HTTP/1 request line to the upstream itself carries.
pub(super) fn origin_form(uri: &http::Uri) -> http::Uri {
    match uri.path_and_query() {
        Some(path) => http::Uri::from(path.clone()),
        None => http::Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_omits_the_default_port() {
        let cases = [
            ("http://example.com/v1", "example.com"),
            ("http://example.com:80/v1", "example.com"),
            ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
            ("http://[::1]:9000/v1", "[::1]:9000"),
        ];
        for (url, host) in cases {
            let uri: http::Uri = url.parse().expect("uri");
            assert_eq!(host_header(&uri).expect("host"), host, "{url}");
        }
    }

    #[test]
    fn the_request_line_keeps_path_and_query_only() {
        let uri: http::Uri = "http://h:1/v1/chat/completions?a=1&b=2"
            .parse()
            .expect("uri");
        assert_eq!(origin_form(&uri), "/v1/chat/completions?a=1&b=2");
        let bare: http::Uri = "http://h:1".parse().expect("uri");
        assert_eq!(origin_form(&bare), "/");
    }

    /// A hyper server on a loopback port answering every request with one body. It counts
    /// the connections it accepted and reports each one that ended.
    struct Server {
        addr: std::net::SocketAddr,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        ended: tokio::sync::mpsc::UnboundedReceiver<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(body: Bytes) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = Arc::clone(&accepted);
            let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (body, ended_tx) = (body.clone(), ended_tx.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_request| {
                            let body = Full::new(body.clone());
                            async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
                        });
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                        let _ = ended_tx.send(());
                    });
                }
            });
            Self {
                addr,
                accepted,
                ended,
                task,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// One lane's pool and a way to reach the test server at `addr`.
    struct Client {
        pools: Arc<LanePools>,
        authority: String,
        connector: super::super::Connector,
        url: http::Uri,
    }

    impl Client {
        fn new(addr: std::net::SocketAddr) -> Self {
            Self::idling(addr, Duration::from_secs(90))
        }

        fn idling(addr: std::net::SocketAddr, idle_timeout: Duration) -> Self {
            Self {
                pools: Arc::new(LanePools::new(1, idle_timeout)),
                authority: addr.to_string(),
                connector: super::super::Connector::new(Duration::from_secs(5)).expect("connector"),
                url: format!("http://{addr}/v1").parse().expect("uri"),
            }
        }

        async fn post(&self) -> Response<PooledBody> {
            let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = origin_form(&self.url);
            request
                .headers_mut()
                .insert(http::header::HOST, host_header(&self.url).expect("host"));
            let connect = || self.connector.connect(self.url.clone());
            let sent = send(&self.pools, 0, &self.authority, request, connect).await;
            sent.ok().expect("sent")
        }

        fn idle(&self) -> usize {
            self.pools.idle_count(0, &self.authority)
        }
    }

    /// A connection goes back only after its answer was read to the end; one whose answer
    /// was abandoned halfway is closed instead.
    #[tokio::test]
    async fn connections_are_reused_only_after_a_whole_answer() {
        use http_body_util::BodyExt as _;
        // More than one read of hyper's buffer can hold.
        const BIG: usize = 4 << 20;
        let server = Server::start(Bytes::from(vec![b'x'; BIG])).await;
        let client = Client::new(server.addr);
        for _ in 0..3 {
            let body = client.post().await.into_body().collect().await;
            assert_eq!(body.expect("body").to_bytes().len(), BIG);
            assert_eq!(client.idle(), 1);
        }
        assert_eq!(server.accepted(), 1);

        // Read one frame and drop the rest: that connection is not returned.
        let mut body = client.post().await.into_body();
        assert_eq!(client.idle(), 0);
        let _first = body.frame().await;
        drop(body);
        assert_eq!(client.idle(), 0);
        let body = client.post().await.into_body().collect().await;
        assert_eq!(body.expect("body").to_bytes().len(), BIG);
        assert_eq!(server.accepted(), 2);
    }

    /// An upstream that closes a keep-alive connection while it idles in the list (its own
    /// idle timeout): the next request finds it closed and goes on a new connection.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            // One answer per connection, then a silent close (no `Connection: close`).
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while !seen.ends_with(b"\r\n\r\n{}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = socket.write_all(answer).await;
                drop(socket);
                let _ = closed_tx.send(());
            }
        });
        let client = Client::new(addr);
        for _ in 0..3 {
            let body = client.post().await.into_body().collect().await;
            assert_eq!(body.expect("body").to_bytes(), "ok");
            // Back in the list, where the next request will find it closed.
            assert_eq!(client.idle(), 1);
            closed.recv().await.expect("the server closed it");
        }
        server.abort();
    }

    /// Connections past the idle timeout are closed even when no request comes to return or
    /// take one.
    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        use http_body_util::BodyExt as _;
        let mut server = Server::start(Bytes::from_static(b"ok")).await;
        let client = Client::idling(server.addr, Duration::from_millis(50));
        let body = client.post().await.into_body().collect().await;
        assert_eq!(body.expect("body").to_bytes(), "ok");
        assert_eq!(client.idle(), 1);
        let closed = tokio::time::timeout(Duration::from_secs(10), server.ended.recv()).await;
        assert!(
            matches!(closed, Ok(Some(()))),
            "the idle connection was not closed"
        );
        assert_eq!(client.idle(), 0);
        let lane = client.pools.lane(0);
        assert!(!lane.sweeping, "the sweep ends with nothing to sweep");
        assert!(
            lane.hosts.is_empty(),
            "a host without connections is forgotten"
        );
    }
}
