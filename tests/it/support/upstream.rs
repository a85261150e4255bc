//! A mock OpenAI-compatible upstream on a random loopback port.
//!
//! Behaviour is set per test (status, body, chunk count and delay, a gap, abort after K
//! chunks, usage always on, raw chunks) and can be changed while it runs. Every request it
//! receives is recorded with its headers and exact body, and it counts streams whose
//! connection was dropped before they finished.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::wait_until;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target as it came: an absolute URL when the mock is asked as a proxy.
    pub target: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The connection it came on (the router's end of it).
    pub peer: SocketAddr,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream got JSON")
    }
}

#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    /// Non-stream body; `None`: a chat completion naming `model`.
    pub body: Option<String>,
    /// Non-stream body as exact bytes (a compressed one, say); wins over `body`.
    pub raw_body: Option<Vec<u8>>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    /// Delay before the response headers.
    pub delay: Duration,
    /// The response head of a `POST` waits for a permit of this semaphore (a closed gate the
    /// test opens with `add_permits(1)`), so a test can see what a client gets before the
    /// upstream answers at all.
    pub hold_head: Option<Arc<tokio::sync::Semaphore>>,
    /// Stream: number of content chunks.
    pub chunks: usize,
    /// Stream: delay before each chunk.
    pub chunk_delay: Duration,
    /// Stream: an extra pause before chunk `.0` (0-based).
    pub gap: Option<(usize, Duration)>,
    /// Stream: the connection is cut after this many chunks.
    pub abort_after: Option<usize>,
    /// Stream: send the usage-only chunk even when not asked.
    pub usage_always: bool,
    /// Stream: after `[DONE]`, keep the connection open this long (and send junk).
    pub linger_after_done: Option<Duration>,
    /// Stream: send these exact chunks instead of generated ones.
    pub raw_chunks: Option<Vec<Vec<u8>>>,
    /// The responded model name.
    pub model: String,
    /// Answer for `GET .../models`.
    pub models_body: Option<String>,
    /// Answer with one whole body even when the request asks to stream.
    pub never_stream: bool,
    /// Stream even when the request does not ask to, as OpenAI's speech endpoint streams
    /// audio to a body with no `stream`.
    pub stream_unasked: bool,
    /// Content type of a streamed answer (default `text/event-stream`; empty: none at all).
    pub stream_content_type: Option<String>,
    /// Stream: compress it (`"gzip"`, `"deflate"` (the zlib format), `"br"`, `"zstd"`, or
    /// several in turn: `"gzip, br"`) as an upstream that ignores `Accept-Encoding:
    /// identity` does, flushing the compressor after each chunk (so each chunk's events can
    /// be decoded when it arrives), and say so in `Content-Encoding`.
    pub stream_coding: Option<&'static str>,
    /// Stream: chunk `.0` (0-based) waits for a permit of this semaphore (a closed gate the
    /// test opens with `add_permits(1)`), so a test can see what arrived before it.
    pub hold_chunk: Option<(usize, Arc<tokio::sync::Semaphore>)>,
    /// Status for `GET .../models`; `None`: `status`.
    pub models_status: Option<u16>,
    /// `GET .../models`: compress the answer (`"gzip"` or `"deflate"`) whatever the request
    /// accepts, and say so in `Content-Encoding`.
    pub models_coding: Option<&'static str>,
    /// Extra delay before answering `GET .../models`.
    pub models_delay: Duration,
    /// `GET .../models` waits for a permit of this semaphore (a closed gate the test opens
    /// with `add_permits(1)`), so a test can hold a model-list fetch in flight.
    pub models_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// A strict upstream (a pydantic-validated local server): a request with
    /// `stream_options` is answered 400 with this body.
    pub refuse_stream_options: Option<String>,
    /// That 400 is not held by `hold_head`: only the request sent again waits.
    pub refuse_at_once: bool,
    /// Non-stream: the head (with the body's `Content-Length`) and the first half of the
    /// body, then nothing more, the connection left open: an upstream stuck mid-answer.
    pub stall_whole: bool,
    /// Non-stream: the body quotes the request line and every header it got, as a debugging
    /// upstream does: the message of an OpenAI-shaped error for a 4xx or 5xx `status`, the
    /// content of a chat completion otherwise. Wins over `body`.
    pub echo: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            status: 200,
            body: None,
            raw_body: None,
            content_type: "application/json".into(),
            headers: vec![],
            delay: Duration::ZERO,
            hold_head: None,
            chunks: 3,
            chunk_delay: Duration::ZERO,
            gap: None,
            abort_after: None,
            usage_always: false,
            linger_after_done: None,
            raw_chunks: None,
            model: "mock-model-2024".into(),
            models_body: None,
            never_stream: false,
            stream_unasked: false,
            stream_content_type: None,
            stream_coding: None,
            hold_chunk: None,
            models_status: None,
            models_coding: None,
            models_delay: Duration::ZERO,
            models_gate: None,
            refuse_stream_options: None,
            refuse_at_once: false,
            stall_whole: false,
            echo: false,
        }
    }
}

pub const PROMPT_TOKENS: u64 = 11;

/// The chunk the mock sends at position `i` of `n`.
pub fn content_chunk(model: &str, i: usize, n: usize) -> String {
    let finish = if i + 1 == n { r#""stop""# } else { "null" };
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

pub fn usage_chunk(model: &str, n: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
        PROMPT_TOKENS + n as u64
    )
}

pub const DONE: &str = "data: [DONE]\n\n";

/// The exact bytes a client should see for a generated stream.
pub fn expected_stream(b: &Behavior, with_usage_chunk: bool) -> String {
    let mut out: String = (0..b.chunks)
        .map(|i| content_chunk(&b.model, i, b.chunks))
        .collect();
    if with_usage_chunk {
        out.push_str(&usage_chunk(&b.model, b.chunks));
    }
    out.push_str(DONE);
    out
}

pub fn chat_completion(model: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-whole","object":"chat.completion","created":1700000000,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello there"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":2,"total_tokens":{}}}}}"#,
        PROMPT_TOKENS + 2
    )
}

#[derive(Default)]
struct Shared {
    behavior: Mutex<Behavior>,
    received: Mutex<Vec<Received>>,
    /// Streams that started / ended normally / were dropped early.
    streams_started: AtomicUsize,
    streams_dropped: AtomicUsize,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl MockUpstream {
    pub async fn start(behavior: Behavior) -> Self {
        let shared = Arc::new(Shared {
            behavior: Mutex::new(behavior),
            ..Default::default()
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            _shutdown: tx,
        }
    }

    /// Base URL with `/v1`, as a config.yaml `url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Origin only (`http://127.0.0.1:port`), for URL targets that get `/v1` added.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.shared.behavior.lock().expect("lock") = behavior;
    }

    pub fn behavior(&self) -> Behavior {
        self.shared.behavior.lock().expect("lock").clone()
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("lock").len()
    }

    pub fn streams_dropped(&self) -> usize {
        self.shared.streams_dropped.load(Ordering::SeqCst)
    }

    pub async fn wait_streams_dropped(&self, n: usize, within: Duration) {
        wait_until(within, || self.streams_dropped() >= n).await;
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
        peer: parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0),
    };
    shared.received.lock().expect("lock").push(received);
    let behavior = shared.behavior.lock().expect("lock").clone();
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let status = StatusCode::from_u16(behavior.status).unwrap_or(StatusCode::OK);
    if parts.uri.path().ends_with("/models") && parts.method == http::Method::GET {
        if !behavior.models_delay.is_zero() {
            tokio::time::sleep(behavior.models_delay).await;
        }
        if let Some(gate) = &behavior.models_gate {
            // Held only while passing: one permit lets every waiting request through.
            let _permit = gate.acquire().await;
        }
        let status = behavior
            .models_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(status);
        let body = behavior
            .models_body
            .clone()
            .unwrap_or_else(|| r#"{"object":"list","data":[]}"#.to_owned());
        let Some(coding) = behavior.models_coding else {
            return respond(
                status,
                "application/json",
                &behavior.headers,
                Body::from(body),
            );
        };
        let encoded = match coding {
            "gzip" => gzip(body.as_bytes()),
            _ => zlib(body.as_bytes()),
        };
        let mut headers = behavior.headers.clone();
        headers.push(("content-encoding".to_owned(), coding.to_owned()));
        return respond(status, "application/json", &headers, Body::from(encoded));
    }
    let request_json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let refusal = behavior
        .refuse_stream_options
        .as_ref()
        .filter(|_| request_json.get("stream_options").is_some());
    let refuse = |refusal: &String| {
        let body = Body::from(refusal.clone());
        respond(StatusCode::BAD_REQUEST, "application/json", &[], body)
    };
    if let Some(refusal) = refusal.filter(|_| behavior.refuse_at_once) {
        return refuse(refusal);
    }
    if let Some(gate) = &behavior.hold_head {
        // Held only while passing: one permit lets every waiting request through.
        let _permit = gate.acquire().await;
    }
    if let Some(refusal) = refusal {
        return refuse(refusal);
    }
    let wants_stream =
        request_json["stream"] == serde_json::Value::Bool(true) || behavior.stream_unasked;
    if !wants_stream || behavior.never_stream || !(200..300).contains(&behavior.status) {
        let body = match (&behavior.raw_body, &behavior.body) {
            _ if behavior.echo => echoed(&parts, status).into_bytes(),
            (Some(raw), _) => raw.clone(),
            (None, Some(text)) => text.clone().into_bytes(),
            (None, None) => chat_completion(&behavior.model).into_bytes(),
        };
        if behavior.stall_whole {
            let mut headers = behavior.headers.clone();
            headers.push(("content-length".into(), body.len().to_string()));
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            let stalled = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) })
                .chain(futures_util::stream::pending());
            let body = Body::from_stream(stalled);
            return respond(status, &behavior.content_type, &headers, body);
        }
        return respond(
            status,
            &behavior.content_type,
            &behavior.headers,
            Body::from(body),
        );
    }
    let include_usage =
        request_json["stream_options"]["include_usage"] == serde_json::Value::Bool(true);
    shared.streams_started.fetch_add(1, Ordering::SeqCst);
    let stream = sse_stream(
        behavior.clone(),
        include_usage || behavior.usage_always,
        shared.clone(),
    );
    let content_type = behavior
        .stream_content_type
        .as_deref()
        .unwrap_or("text/event-stream");
    let mut headers = behavior.headers.clone();
    if let Some(coding) = behavior.stream_coding {
        headers.push(("content-encoding".into(), coding.into()));
    }
    respond(status, content_type, &headers, Body::from_stream(stream))
}

/// [`Behavior::echo`]'s body for a request with `parts`.
fn echoed(parts: &http::request::Parts, status: StatusCode) -> String {
    let mut text = format!("{} {}", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!(
            "\n{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    if status.is_client_error() || status.is_server_error() {
        return serde_json::json!({"error": {"message": text, "type": "invalid_request_error"}})
            .to_string();
    }
    serde_json::json!({"id": "chatcmpl-echo", "object": "chat.completion", "model": "echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
        "finish_reason": "stop"}]})
    .to_string()
}

fn respond(
    status: StatusCode,
    content_type: &str,
    headers: &[(String, String)],
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    // Empty: no Content-Type at all, as some servers answer.
    if let Some(v) = HeaderValue::from_str(content_type)
        .ok()
        .filter(|_| !content_type.is_empty())
    {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    for (k, v) in headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    response
}

/// Counts a stream as dropped if it is dropped before it finished.
struct DropWatch {
    shared: Arc<Shared>,
    finished: bool,
}

impl DropWatch {
    fn done(&mut self) {
        self.finished = true;
    }
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.streams_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sse_stream(
    b: Behavior,
    send_usage: bool,
    shared: Arc<Shared>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let mut chunks: Vec<Vec<u8>> = match &b.raw_chunks {
        Some(raw) => raw.clone(),
        None => (0..b.chunks)
            .map(|i| content_chunk(&b.model, i, b.chunks).into_bytes())
            .collect(),
    };
    if b.raw_chunks.is_none() {
        if send_usage {
            chunks.push(usage_chunk(&b.model, b.chunks).into_bytes());
        }
        chunks.push(DONE.as_bytes().to_vec());
    }
    if let Some(codings) = b.stream_coding {
        // Stacked (`gzip, br`): in the order listed, each chunk still one of its own.
        for coding in codings.split(',').map(str::trim) {
            chunks = compress_flushed(coding, &chunks);
        }
    }
    let total = chunks.len();
    let watch = DropWatch {
        shared,
        finished: false,
    };
    futures_util::stream::unfold(
        (chunks.into_iter().enumerate(), b, watch),
        move |(mut iter, mut b, mut watch)| async move {
            let Some((i, chunk)) = iter.next() else {
                if let Some(linger) = b.linger_after_done.take() {
                    tokio::time::sleep(linger).await;
                    watch.done();
                    return Some((
                        Ok(Bytes::from_static(b"data: {\"after\":\"done\"}\n\n")),
                        (iter, b, watch),
                    ));
                }
                watch.done();
                return None;
            };
            if let Some((at, pause)) = b.gap {
                if at == i {
                    tokio::time::sleep(pause).await;
                }
            }
            if !b.chunk_delay.is_zero() {
                tokio::time::sleep(b.chunk_delay).await;
            }
            if let Some((at, gate)) = &b.hold_chunk {
                if *at == i {
                    let _permit = gate.acquire().await;
                }
            }
            // After the pause, so the chunks before it have been flushed to the wire.
            if b.abort_after == Some(i) {
                watch.done();
                return Some((Err(std::io::Error::other("mock abort")), (iter, b, watch)));
            }
            if i + 1 == total && b.linger_after_done.is_none() {
                watch.done();
            }
            Some((Ok(Bytes::from(chunk)), (iter, b, watch)))
        },
    )
    .boxed()
}

/// An upstream that answers every request with one HTTP/1 answer as soon as it has read the
/// request's head, and leaves the body unread: what a front-end with a body-size limit
/// (nginx's `client_max_body_size`) does. It then closes the connection ([`Self::start`]):
/// closing with the body unread makes the kernel reset the connection, so a sender still
/// writing the body sees its write fail. Or it keeps the connection open, reading nothing
/// more ([`Self::keeping_open`]): a sender that only writes then waits for room forever.
pub struct EarlyAnswer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EarlyAnswer {
    /// `head` is the status line and header fields, each ending in CRLF; the framing
    /// (`content-length`) is added for `body`. The connection closes after the answer.
    pub async fn start(head: &str, body: &str) -> Self {
        Self::answering(framed(head, body), false).await
    }

    /// As [`Self::start`], but the connection stays open after the answer, its request's body
    /// unread, until the test ends.
    pub async fn keeping_open(head: &str, body: &str) -> Self {
        Self::answering(framed(head, body), true).await
    }

    /// Reads each request's head (and what came with it: a small body) and closes the
    /// connection without a byte of answer.
    pub async fn start_closing_unanswered() -> Self {
        Self::answering(Vec::new(), false).await
    }

    /// As [`Self::start_closing_unanswered`], but each connection is closed only once `gate`
    /// gives a permit (a closed gate the test opens with `add_permits(1)`): an upstream that
    /// had the request a while and then closed, unanswered.
    pub async fn closing_unanswered_when(gate: Arc<tokio::sync::Semaphore>) -> Self {
        Self::serve(Vec::new(), false, Some(gate)).await
    }

    /// Answers with exactly `answer` (head and body, framing included), keeping the
    /// connection open after it when `keep_open`.
    pub async fn answering(answer: Vec<u8>, keep_open: bool) -> Self {
        Self::serve(answer, keep_open, None).await
    }

    /// [`Self::answering`], each answer waiting for a permit of `gate` when there is one.
    async fn serve(
        answer: Vec<u8>,
        keep_open: bool,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let answer: Arc<[u8]> = answer.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind early-answer upstream");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                // The answer goes out at once, not held back by Nagle's algorithm until the
                // close (a reset) throws it away.
                let _ = socket.set_nodelay(true);
                let answer = answer.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 16 * 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        }
                    }
                    if let Some(gate) = gate {
                        let _permit = gate.acquire().await;
                    }
                    let _ = socket.write_all(&answer).await;
                    if keep_open {
                        // Held, unread, until the test's runtime ends.
                        std::future::pending::<()>().await;
                        drop(socket);
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// Base URL with `/v1`, as a config.yaml `url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Connections it accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `head` (status line and fields, each ending in CRLF), a `content-length` for `body`, and
/// `body`.
fn framed(head: &str, body: &str) -> Vec<u8> {
    format!("{head}content-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

impl Drop for EarlyAnswer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `data` gzipped, as an upstream that compresses its answers sends it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `data` in HTTP's `deflate` coding (the zlib format).
pub fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("zlib");
    encoder.finish().expect("zlib")
}

/// `data` in zstd.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).expect("zstd")
}

/// `data` in br (see [`brotli_stored`]).
pub fn brotli(data: &[u8]) -> Vec<u8> {
    brotli_stored(&[data.to_vec()]).concat()
}

include!("../../fixtures/brotli_stored.rs");

/// `chunks` in br (see `brotli_stored_blocks`), one piece for each that is not empty, the
/// last with the meta-block that ends the stream. (The router's unit tests also decode real
/// compressor output.)
pub fn brotli_stored(chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = chunks
        .iter()
        .map(Vec::as_slice)
        .filter(|chunk| !chunk.is_empty())
        .collect();
    let (mut pieces, last) = brotli_stored_blocks(&chunks);
    match pieces.last_mut() {
        Some(piece) => piece.extend_from_slice(&last),
        None => pieces.push(last),
    }
    pieces
}

/// `chunks` compressed as one body in `coding` (`"gzip"`, `"deflate"`: the zlib format,
/// `"br"` or `"zstd"`), the compressor flushed after each chunk: one compressed chunk for
/// each, the last with the coding's trailer. What an upstream that compresses an event stream
/// properly sends.
pub fn compress_flushed(coding: &str, chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use std::io::Write as _;
    let level = flate2::Compression::fast();
    let mut out = Vec::new();
    if coding == "br" {
        return brotli_stored(chunks);
    }
    let trailer = if coding == "zstd" {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
        for chunk in chunks {
            encoder.write_all(chunk).expect("zstd");
            encoder.flush().expect("zstd");
            out.push(std::mem::take(encoder.get_mut()));
        }
        encoder.finish().expect("zstd")
    } else if coding == "gzip" {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
        for chunk in chunks {
            encoder.write_all(chunk).expect("gzip");
            encoder.flush().expect("gzip");
            out.push(std::mem::take(encoder.get_mut()));
        }
        encoder.finish().expect("gzip")
    } else {
        assert_eq!(coding, "deflate", "a coding the mock compresses with");
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
        for chunk in chunks {
            encoder.write_all(chunk).expect("zlib");
            encoder.flush().expect("zlib");
            out.push(std::mem::take(encoder.get_mut()));
        }
        encoder.finish().expect("zlib")
    };
    match out.last_mut() {
        Some(last) => last.extend_from_slice(&trailer),
        None => out.push(trailer),
    }
    out
}
