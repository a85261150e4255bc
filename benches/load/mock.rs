//! The benchmark's upstream: a minimal hyper server, run as its own process, answering chat
//! completions (whole or as 20-chunk SSE streams), `/models`, and OTLP trace exports (so the
//! router's Langfuse exporter has a local endpoint). Kept as cheap as possible: the figures
//! are about the router, and the mock shares the machine's cores with it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const CHUNKS: usize = 20;
pub const CHUNK_GAP: Duration = Duration::from_millis(2);

const WHOLE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;

fn chunk(i: usize) -> Bytes {
    let finish = if i + 1 == CHUNKS { "\"stop\"" } else { "null" };
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

const USAGE: &[u8] = b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":20,\"total_tokens\":29}}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

type Body = BoxBody<Bytes, Infallible>;

/// Serves until the process is killed; prints `port N` on stdout once listening.
pub fn run() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mock: cannot bind: {e}");
                std::process::exit(1);
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        println!("port {port}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}

async fn handle(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let gap = request
        .headers()
        .get("x-bench-gap-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(CHUNK_GAP, Duration::from_millis);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path.ends_with("/traces") {
        return Ok(respond("application/x-protobuf", Bytes::new()));
    }
    if path.ends_with("/models") {
        return Ok(respond("application/json", Bytes::from_static(br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"bench"}]}"#)));
    }
    let stream = memchr::memmem::find(&body, b"\"stream\":true").is_some();
    if !stream {
        return Ok(respond(
            "application/json",
            Bytes::from_static(WHOLE.as_bytes()),
        ));
    }
    let usage = memchr::memmem::find(&body, b"\"include_usage\":true").is_some();
    let frames = futures_util::stream::unfold(0usize, move |i| async move {
        let last = CHUNKS + usize::from(usage);
        if i > last {
            return None;
        }
        let bytes = if i < CHUNKS {
            tokio::time::sleep(gap).await;
            chunk(i)
        } else if i == CHUNKS && usage {
            Bytes::from_static(USAGE)
        } else {
            Bytes::from_static(DONE)
        };
        Some((Ok::<_, Infallible>(Frame::data(bytes)), i + 1))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

fn respond(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
