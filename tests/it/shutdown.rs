//! Shutdown: what each client and each record gets when the router stops (the grace period,
//! its end, and connections that are not running a request).

use std::time::Duration;

use futures_util::StreamExt;
use llmsrouter::record::Outcome;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::client;
use crate::support::one_server_config;
use crate::support::upstream::{Behavior, MockUpstream};

/// The router's state, with `upstream` as its one server `mock`, recording into `recorder`.
fn state_for(
    upstream: &MockUpstream,
    recorder: llmsrouter::record::Recorder,
) -> std::sync::Arc<llmsrouter::state::AppState> {
    use llmsrouter::state::{AppState, build_http_client};

    let config =
        llmsrouter::config::Config::parse(&one_server_config(&upstream.url(), ""), &|_| None)
            .expect("config");
    let client = build_http_client().expect("client");
    std::sync::Arc::new(AppState::new(config, client, recorder).expect("state"))
}

/// A `POST /v1/chat/completions` with `body`, as raw bytes.
fn chat_request(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A connection to `addr` whose client takes little at a time (a 4 KiB receive buffer), so
/// the router's writes soon wait for room once the client stops reading.
async fn connect_small_window(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    socket.connect(addr).await.expect("connect")
}

/// The status and JSON error body of an answer.
async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    (status, body)
}

/// Everything the router sends on `tcp` until it closes it (at most 10 s).
async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the router closed the connection within 10 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A router served by `server::run` itself (the binary's shutdown path) with a short grace
/// period, recording into a collector: for what happens when shutdown begins and when its
/// grace period ends.
/// The record of an answer the shutdown cut: a failed stream, said to be the shutdown's doing
/// (not the client's leaving).
fn assert_cut_by_shutdown(record: &llmsrouter::record::RequestRecord) {
    assert_eq!(record.outcome, Outcome::StreamFailed, "{:?}", record.error);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("shutting down")),
        "{:?}",
        record.error
    );
}

struct GracefulRouter {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    records: std::sync::Arc<crate::support::Collector>,
    recorder: llmsrouter::record::Recorder,
    recorder_task: llmsrouter::record::RecorderTask,
}

impl GracefulRouter {
    /// With a 300 ms grace period.
    async fn start(upstream: &MockUpstream) -> Self {
        Self::with_grace(upstream, Duration::from_millis(300)).await
    }

    async fn with_grace(upstream: &MockUpstream, grace: Duration) -> Self {
        use std::sync::Arc;

        use llmsrouter::record::{RecordSink, Recorder};

        let records = Arc::new(crate::support::Collector::default());
        let (recorder, recorder_task) =
            Recorder::start(vec![records.clone() as Arc<dyn RecordSink>]);
        let state = state_for(upstream, recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(llmsrouter::server::run(
            listener,
            state,
            async move {
                let _ = stopped.await;
            },
            std::future::pending(),
            grace,
        ));
        Self {
            addr,
            stop: Some(stop),
            server,
            records,
            recorder,
            recorder_task,
        }
    }

    fn chat(&self, body: Value) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        self.post("/v1/chat/completions", body)
    }

    fn post(
        &self,
        path: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let url = format!("http://{}{path}", self.addr);
        tokio::spawn(async move { client().post(url).json(&body).send().await })
    }

    /// A connection on which the router answered `GET /health`, sent in one write with
    /// `then` after it (the start of a next request): the router has read `then` too by the
    /// time the answer is here, so a test can begin the shutdown knowing where it stands.
    async fn answered_health_then(&self, then: &[u8]) -> tokio::net::TcpStream {
        let mut tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let mut request = b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n".to_vec();
        request.extend_from_slice(then);
        tcp.write_all(&request).await.expect("write");
        let mut answer = Vec::new();
        while !answer.ends_with(b"}") {
            let mut piece = [0u8; 1024];
            let n = tcp.read(&mut piece).await.expect("read");
            assert!(n > 0, "closed before answering /health");
            answer.extend_from_slice(&piece[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        tcp
    }

    /// Starts the shutdown (as SIGTERM does); its grace period ends after the grace given.
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (at most `within`) for the server to end.
    async fn wait_ended(&mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.server)
            .await
            .expect("the server ended in time")
            .expect("server task")
            .expect("server");
    }

    /// Waits for the server to end and every record to be handed over; the `n`th record.
    async fn finish(self, n: usize) -> std::sync::Arc<llmsrouter::record::RequestRecord> {
        let _ = self.server.await;
        assert!(self.recorder.wait_idle(Duration::from_secs(5)).await);
        self.recorder_task.shutdown().await;
        self.records.nth(n).await
    }
}

#[tokio::test]
async fn a_request_still_waiting_when_the_grace_period_ends_is_answered_and_recorded() {
    let upstream = MockUpstream::start(Behavior {
        delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut router = GracefulRouter::start(&upstream).await;
    let request = router.chat(json!({"model": "[mock]m"}));
    crate::support::wait_until(Duration::from_secs(5), || upstream.count() == 1).await;
    router.begin_shutdown();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the grace period ended, not after the upstream's 30 s")
        .expect("task")
        .expect("an answer, not a reset");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "server_shutting_down");
    let record = router.finish(1).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(503));
    // The upstream had it and may still generate (and bill) it: tokens unknown.
    assert!(record.usage_partial(), "{record:?}");
}

/// What a running stream's client gets after its first event, once shutdown began: the rest
/// of the body, which must end with the grace period (the upstreams here would go on for
/// 20 s more).
async fn rest_after_shutdown(router: &mut GracefulRouter, response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("a first event")
        .expect("bytes")
        .expect("no error");
    assert!(first.starts_with(b"data: "), "{first:?}");
    router.begin_shutdown();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            rest.extend_from_slice(&chunk);
        }
        rest
    })
    .await
    .expect("the stream ended when the grace period did, not after the upstream's 20 s");
    String::from_utf8_lossy(&rest).into_owned()
}

/// A stream still running when the grace period ends gets an error event and ends, at once,
/// though its upstream would go on for 20 s more; its record says it was cut.
#[tokio::test]
async fn a_stream_still_running_when_the_grace_period_ends_gets_an_error_event() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 200,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let mut router = GracefulRouter::start(&upstream).await;
    let response = router
        .chat(json!({"model": "[mock]m", "stream": true}))
        .await
        .expect("task")
        .expect("stream started");
    let rest = rest_after_shutdown(&mut router, response).await;
    let last = rest.trim_end().rsplit("\n\n").next().expect("a last event");
    let error: Value = serde_json::from_str(last.trim_start_matches("data: ")).expect("json");
    assert_eq!(error["error"]["code"], "server_shutting_down", "{rest}");
    // The cut is the router's doing, as its 503 to a request still waiting says: not the
    // upstream's.
    assert_eq!(error["error"]["type"], "server_error", "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");
    let record = router.finish(1).await;
    assert_eq!(record.outcome, Outcome::StreamFailed);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("shutting down")),
        "{:?}",
        record.error
    );
}

/// The same cut on `/v1/messages`: Anthropic's error event, typed as Anthropic's 503 is
/// (`overloaded_error`, try again later), with the router's code at the end of the message.
#[tokio::test]
async fn a_messages_stream_cut_at_shutdown_gets_anthropics_overloaded_error() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 200,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let mut router = GracefulRouter::start(&upstream).await;
    let body = json!({"model": "[mock]m", "stream": true, "max_tokens": 10, "messages": []});
    let response = router
        .post("/v1/messages", body)
        .await
        .expect("task")
        .expect("stream started");
    let rest = rest_after_shutdown(&mut router, response).await;
    let last = rest.trim_end().rsplit("\n\n").next().expect("a last event");
    let data = last
        .strip_prefix("event: error\n")
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("Anthropic's error event: {rest}"));
    let error: Value = serde_json::from_str(data).expect("json");
    assert_eq!(error["error"]["type"], "overloaded_error", "{rest}");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(message.contains("server_shutting_down"), "{message}");
    let record = router.finish(1).await;
    assert_eq!(record.outcome, Outcome::StreamFailed);
}

/// A connection on which a client sent part of a request head is running no request: at
/// shutdown it closes at once, as an idle one does, rather than holding the exit open for
/// the head timeout (30 s) or the grace period.
#[tokio::test]
async fn a_connection_with_half_a_head_closes_at_once_at_shutdown() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = GracefulRouter::with_grace(&upstream, Duration::from_secs(20)).await;
    let half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n";
    let mut tcp = router.answered_health_then(half).await;
    router.begin_shutdown();
    let answer = read_to_close(&mut tcp).await;
    assert_eq!(answer, "", "closed without an answer: no request was made");
    router.wait_ended(Duration::from_secs(10)).await;
    assert_eq!(upstream.count(), 0);
}

/// A request whose body is still coming when the grace period ends is running, so it is cut
/// then; the client, which may read while it sends, gets the router's 503 rather than a
/// connection closed without a word, and the connection closes after it. (The client asks
/// for `100 Continue` here only so the test knows the router has its head.)
#[tokio::test]
async fn a_body_still_coming_when_the_grace_period_ends_is_answered_503() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = GracefulRouter::start(&upstream).await;
    let mut tcp = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; go_ahead.len()];
    tcp.read_exact(&mut got).await.expect("a go-ahead");
    assert_eq!(&got[..], go_ahead);
    tcp.write_all(b"{\"model\":").await.expect("write");
    router.begin_shutdown();
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let error: Value = serde_json::from_str(body).expect("json");
    assert_eq!(error["error"]["code"], "server_shutting_down", "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    router.wait_ended(Duration::from_secs(10)).await;
    assert_eq!(upstream.count(), 0);
}

/// Over HTTP/2 too: a request whose body is still coming when the grace period ends gets
/// the router's 503 (the stream was given up without an answer when its connection was torn
/// down, bb62), and nothing goes upstream.
#[tokio::test]
async fn an_http2_body_still_coming_when_the_grace_period_ends_is_answered_503() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = GracefulRouter::start(&upstream).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<&'static [u8]>(1);
    tx.send(b"{\"model\":").await.expect("first piece");
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(piece), rx))
    });
    let client = crate::support::h2c_client();
    let request = client
        .post(format!("http://{}/v1/chat/completions", router.addr))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(pieces))
        .send();
    let answered = tokio::spawn(request);
    // On the same connection, after the request's head: answered, the router has that head.
    let health = client
        .get(format!("http://{}/health", router.addr))
        .send()
        .await
        .expect("health over HTTP/2");
    assert_eq!(health.status(), 200);
    router.begin_shutdown();
    let response = tokio::time::timeout(Duration::from_secs(10), answered)
        .await
        .expect("answered within the grace period and a moment")
        .expect("task")
        .expect("an answer over HTTP/2");
    let (status, error) = error_of(response).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "server_shutting_down", "{error}");
    router.wait_ended(Duration::from_secs(10)).await;
    assert_eq!(upstream.count(), 0);
    drop(tx);
}

/// A stream whose client stopped reading is cut at the end of the grace period like any
/// other, though its error event cannot reach that client: its record says the shutdown cut
/// it, not that the client left.
#[tokio::test]
async fn a_stream_whose_client_reads_nothing_is_recorded_as_cut_by_shutdown() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 100_000,
        ..Default::default()
    })
    .await;
    let mut router = GracefulRouter::with_grace(&upstream, Duration::from_secs(1)).await;
    let mut tcp = connect_small_window(router.addr).await;
    let request = chat_request(&json!({"model": "[mock]m", "stream": true, "messages": []}));
    tcp.write_all(&request).await.expect("write");
    crate::support::wait_until(Duration::from_secs(10), || upstream.count() == 1).await;
    router.begin_shutdown();
    let record = router.finish(1).await;
    assert_cut_by_shutdown(&record);
    drop(tcp);
}

/// Over HTTP/2 too: a stream whose client stopped reading (its window shut, hyper waits to
/// send) is given up when the grace period ends and recorded as cut by the shutdown. Its
/// body is not polled while it waits, so it used to stay until the connection was torn
/// down, recorded as the client's leaving.
#[tokio::test]
async fn an_unread_http2_stream_is_recorded_as_cut_by_shutdown() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 100_000,
        ..Default::default()
    })
    .await;
    // Long enough for the ~17 MB stream to fill the client's 2 MiB window first.
    let mut router = GracefulRouter::with_grace(&upstream, Duration::from_secs(2)).await;
    let client = crate::support::h2c_client();
    let response = client
        .post(format!("http://{}/v1/chat/completions", router.addr))
        .header("content-type", "application/json")
        .body(r#"{"model":"[mock]m","stream":true,"messages":[]}"#)
        .send()
        .await
        .expect("an answer over HTTP/2");
    assert_eq!(response.status(), 200);
    router.begin_shutdown();
    let record = tokio::time::timeout(Duration::from_secs(20), router.finish(1))
        .await
        .expect("the shutdown ended");
    assert_cut_by_shutdown(&record);
    drop(response);
}

/// A whole answer (not a stream: a 20 MB JSON body, a large embeddings answer) whose client
/// read its head and then stopped reading is cut at the end of the grace period as such a
/// stream is, rather than holding its connection open until the send timeout (60 s), and
/// the shutdown with it; its record says the shutdown cut it, not that the client left.
#[tokio::test]
async fn a_whole_answer_whose_client_reads_nothing_is_recorded_as_cut_by_shutdown() {
    let content = "a".repeat(20 << 20);
    let answer = json!({
        "id": "chatcmpl-large",
        "object": "chat.completion",
        "model": "m",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    let upstream = MockUpstream::start(Behavior {
        body: Some(answer.to_string()),
        ..Default::default()
    })
    .await;
    let mut router = GracefulRouter::with_grace(&upstream, Duration::from_secs(1)).await;
    let mut tcp = connect_small_window(router.addr).await;
    let request = chat_request(&json!({"model": "[mock]m", "messages": []}));
    tcp.write_all(&request).await.expect("write");
    // The head, written with the start of the body: the router is writing the answer, and
    // the client reads nothing more of it.
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut piece = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut piece))
            .await
            .expect("the answer's head within 10 s")
            .expect("read");
        assert!(n > 0, "closed before the answer's head");
        head.extend_from_slice(&piece[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    router.begin_shutdown();
    let record = tokio::time::timeout(Duration::from_secs(30), router.finish(1))
        .await
        .expect("the shutdown ended with the grace period, not at the send timeout");
    assert_cut_by_shutdown(&record);
    assert_eq!(record.status, Some(200));
    drop(tcp);
}

/// A request whose bytes reached the router's socket before shutdown began is running (its
/// head is whole) and is served, though the connection's task may learn of those bytes only
/// after shutdown began: tokio sees a socket readable when its reactor next runs, and the
/// wake-up by shutdown can come first. That moment is made here on one connection served as
/// a lane serves it (`serve_connection`): the request is in the socket, shutdown has
/// begun, and the connection is polled before this runtime's reactor has run.
#[tokio::test]
async fn a_request_already_in_the_socket_when_shutdown_begins_is_served() {
    use std::io::Write as _;
    use std::sync::Arc;

    use llmsrouter::hard_stop::HardStop;
    use llmsrouter::http1::server::{Service, serve_connection};

    let upstream = MockUpstream::start(Behavior::default()).await;
    let (recorder, _recorder_task) = llmsrouter::record::Recorder::start(Vec::new());
    let state = state_for(&upstream, recorder);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("non-blocking");
    let request = chat_request(&json!({"model": "[mock]m", "messages": []}));
    client.write_all(&request).expect("write");
    // The whole request waits in the router's socket (a peek leaves it there).
    let mut peeked = vec![0u8; request.len() + 1];
    crate::support::wait_until(Duration::from_secs(10), || {
        server.peek(&mut peeked).is_ok_and(|n| n == request.len())
    })
    .await;
    let service = Arc::new(Service {
        app: llmsrouter::app::build_app(state.clone()),
        state,
        draining: HardStop::new(),
    });
    service.draining.fire();
    let server = tokio::net::TcpStream::from_std(server).expect("register");
    let mut serving = Box::pin(serve_connection(server, service));
    // Its first poll, before the reactor ran: as far as tokio knows, nothing has arrived.
    let first = futures_util::poll!(serving.as_mut());
    // Done at once: the connection closed without serving the request (what the client
    // then reads says so).
    let serving = tokio::spawn(async move {
        if first.is_pending() {
            serving.await;
        }
    });
    client.set_nonblocking(true).expect("non-blocking");
    let mut client = tokio::net::TcpStream::from_std(client).expect("register");
    let mut answer = Vec::new();
    // A reset ends the read too: what came before it is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("the router closed the connection within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request was not served: {answer:?}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("Hello there"), "{answer}");
    assert_eq!(upstream.count(), 1);
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the connection ended")
        .expect("task");
}
