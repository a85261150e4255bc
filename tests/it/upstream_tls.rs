//! A TLS upstream, as every cloud provider is: the real binary reaches it over HTTPS,
//! trusting it through the system's store (here a test CA named by `SSL_CERT_FILE`, which
//! the router reads as the system's), speaking HTTP/2 when the upstream offers it and
//! HTTP/1.1 when not, for whole answers and streams.
//!
//! The certificate in `tests/fixtures/tls/` is for `localhost` and 127.0.0.1, signed by a
//! CA made for these tests alone (its key was thrown away); both are valid for 100 years.
//! `self-signed.pem` (and its key) is one made the usual way, `openssl req -x509 -newkey ec
//! -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 -subj /CN=localhost -addext
//! subjectAltName=DNS:localhost,IP:127.0.0.1`, which makes it a CA (`CA:TRUE`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::http1::{Raw, post};
use crate::support::RouterProcess;
use crate::support::upstream::{chat_completion, content_chunk};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    /// The request's path, query left out.
    path: String,
    /// Its `host` field (over HTTP/2, one besides `:authority`).
    host: Option<String>,
    authorization: Option<String>,
    body: serde_json::Value,
}

type Body = BoxBody<Bytes, Infallible>;

/// An HTTPS upstream on 127.0.0.1 offering `alpn` ("h2", "http/1.1"): a chat completion, or
/// three SSE events and `[DONE]` when the request streams.
async fn start_tls_upstream(alpn: &[&[u8]]) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    start_tls_upstream_of("upstream", alpn).await
}

/// [`start_tls_upstream`] with the fixtures' certificate and key named `name` (see
/// [`tls_listener_of`]).
async fn start_tls_upstream_of(name: &str, alpn: &[&[u8]]) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let (listener, acceptor) = tls_listener_of(name, alpn).await;
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| answer(request, log.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A loopback listener and the TLS acceptor of the test certificate, offering `alpn`.
pub(crate) async fn tls_listener(
    alpn: &[&[u8]],
) -> (tokio::net::TcpListener, tokio_rustls::TlsAcceptor) {
    tls_listener_of("upstream", alpn).await
}

/// [`tls_listener`] with the fixtures' certificate and key `{name}.pem` and `{name}.key`.
async fn tls_listener_of(
    name: &str,
    alpn: &[&[u8]],
) -> (tokio::net::TcpListener, tokio_rustls::TlsAcceptor) {
    let certs = CertificateDer::pem_file_iter(fixture(&format!("{name}.pem")))
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(fixture(&format!("{name}.key"))).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    (listener, acceptor)
}

async fn answer(
    request: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let version = request.version();
    let path = request.uri().path().to_owned();
    let host = request
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let streams = body["stream"] == json!(true);
    log.lock().expect("lock").push(Seen {
        version,
        path,
        host,
        authorization,
        body,
    });
    let response = if streams {
        let events: Vec<Result<Frame<Bytes>, Infallible>> = (0..3)
            .map(|i| content_chunk("tls-model", i, 3))
            .chain(["data: [DONE]\n\n".to_owned()])
            .map(|event| Ok(Frame::data(Bytes::from(event))))
            .collect();
        let mut response =
            Response::new(StreamBody::new(futures_util::stream::iter(events)).boxed());
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        response
    } else {
        let mut response =
            Response::new(Full::new(Bytes::from(chat_completion("tls-model"))).boxed());
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    Ok(response)
}

/// The real binary with `config`, trusting the fixtures' CA (the upstreams' certificates),
/// with no ledger and no request log.
pub(crate) fn router_trusting_the_test_ca(config: &str) -> RouterProcess {
    let ca = fixture("ca.pem");
    RouterProcess::start(
        Some(config),
        &[
            ("SSL_CERT_FILE", ca.to_str().expect("utf-8 path")),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    )
}

async fn through_the_router(alpn: &[&[u8]], expect: http::Version) {
    let (addr, seen) = start_tls_upstream(alpn).await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n    api_key: \"sk-tls-upstream-key\"\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let whole = router
        .chat(&json!({"model": "[secure]gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.text().await.expect("body"),
        chat_completion("tls-model")
    );
    let streamed = router
        .chat(&json!({"model": "[secure]gpt-x", "stream": true, "messages": []}))
        .await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.expect("stream");
    let expected: String = (0..3)
        .map(|i| content_chunk("tls-model", i, 3))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    assert_eq!(text, expected);
    // A large body goes as pieces around the client's bytes (one frame each).
    let content = "0123456789abcdef".repeat(16 * 1024);
    let large = router
        .chat(
            &json!({"model": "[secure]gpt-x", "messages": [{"role": "user", "content": content}]}),
        )
        .await;
    assert_eq!(large.status(), 200);

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2].body["messages"][0]["content"], content.as_str());
    for request in &seen {
        assert_eq!(request.version, expect, "{request:?}");
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer sk-tls-upstream-key")
        );
        assert_eq!(request.body["model"], "gpt-x");
    }
    assert_eq!(seen[1].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_tls_upstream_offering_http2_is_reached_over_http2() {
    through_the_router(&[b"h2", b"http/1.1"], http::Version::HTTP_2).await;
}

#[tokio::test]
async fn a_tls_upstream_offering_only_http1_is_reached_over_http1() {
    through_the_router(&[b"http/1.1"], http::Version::HTTP_11).await;
}

/// A server's configured `Host` is sent as written, over HTTP/1.1, to a TLS upstream that
/// offers HTTP/2 too: over HTTP/2 a `host` field besides an `:authority` naming another host
/// is malformed (RFC 9113 §8.3.1), and strict servers reset the stream, or the connection it
/// shares with the other servers on that origin. Chat requests (hyper's pool) and the
/// model-list fetch (reqwest) alike; a server without one still speaks HTTP/2, and no HTTP/2
/// request carries a `host` field.
#[tokio::test]
async fn a_configured_host_goes_over_http1_to_an_upstream_offering_http2() {
    configured_host_over_http1(false).await;
}

/// As [`a_configured_host_goes_over_http1_to_an_upstream_offering_http2`], with the requests
/// sent through the proxy the environment names (`HTTPS_PROXY`), which reqwest sends.
#[tokio::test]
async fn a_configured_host_goes_over_http1_through_the_environments_proxy() {
    configured_host_over_http1(true).await;
}

async fn configured_host_over_http1(behind_a_proxy: bool) {
    let (addr, seen) = start_tls_upstream(&[b"h2", b"http/1.1"]).await;
    let port = addr.port();
    let config = format!(
        "servers:\n  hosted:\n    url: \"https://localhost:{port}/hosted/v1\"\n    headers:\n      Host: gw.example\n  other:\n    url: \"https://localhost:{port}/other/v1\"\n"
    );
    let (router, tunnels) = if behind_a_proxy {
        let (proxy, tunnels) = start_tunnelling_proxy().await;
        let ca = fixture("ca.pem");
        let router = RouterProcess::start(
            Some(&config),
            &[
                ("SSL_CERT_FILE", ca.to_str().expect("utf-8 path")),
                ("HTTPS_PROXY", &format!("http://{proxy}")),
                ("LLMSROUTER_LEDGER", "false"),
                ("LLMSROUTER_LOG_FILE", ""),
            ],
        );
        (router, Some(tunnels))
    } else {
        (router_trusting_the_test_ca(&config), None)
    };
    for alias in ["hosted", "other", "hosted"] {
        for stream in [false, true] {
            let response = router
                .chat(&json!({"model": format!("[{alias}]m"), "stream": stream, "messages": []}))
                .await;
            assert_eq!(response.status(), 200, "{alias}: {}", router.stderr());
        }
    }
    let listed = crate::support::client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("list");
    assert_eq!(listed.status(), 200);
    let models = |seen: &[Seen]| seen.iter().filter(|s| s.path.ends_with("/models")).count();
    crate::support::wait_until(std::time::Duration::from_secs(10), || {
        models(&seen.lock().expect("lock")) == 2
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 8, "{seen:?}");
    for request in &seen {
        if request.path.starts_with("/hosted/") {
            assert_eq!(request.version, http::Version::HTTP_11, "{request:?}");
            assert_eq!(request.host.as_deref(), Some("gw.example"), "{request:?}");
        } else {
            assert_eq!(request.version, http::Version::HTTP_2, "{request:?}");
            assert_eq!(request.host, None, "{request:?}");
        }
    }
    if let Some(tunnels) = tunnels {
        let tunnels = tunnels.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            tunnels >= 2,
            "the requests went through the proxy: {tunnels}"
        );
    }
}

/// An HTTP proxy on 127.0.0.1 that tunnels `CONNECT host:port` to that address, and counts
/// the tunnels it made.
async fn start_tunnelling_proxy() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let mut line = String::new();
                if client.read_line(&mut line).await.is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                    return;
                };
                let target = target.to_owned();
                loop {
                    let mut field = String::new();
                    match client.read_line(&mut field).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if field == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut client = client.into_inner();
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}

/// The 413 a TLS upstream's front-end sends before it reads a request body it will not take.
const TOO_LARGE: &str = r#"{"error":{"message":"payload too large (upstream)","type":"invalid_request_error","code":"too_large"}}"#;

/// An HTTPS upstream that answers 413 as soon as it has read a request's head and closes the
/// connection with the body unread (a front-end's body-size limit), over HTTP/1.1 (without
/// answering, for a request with `silent=1` in its query); over HTTP/2 (hyper's server) it
/// answers 413 without reading the body, and hyper ends the stream with `RST_STREAM`.
async fn start_early_answering_tls_upstream(alpn: &[&[u8]]) -> SocketAddr {
    let answer = format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TOO_LARGE}",
        TOO_LARGE.len()
    );
    start_raw_tls_upstream(alpn, answer.into_bytes(), false).await
}

/// As [`start_early_answering_tls_upstream`], answering `answer` (exact HTTP/1.1 bytes) over
/// HTTP/1.1, and keeping the connection open after it, its request's body unread, when
/// `keep_open`.
async fn start_raw_tls_upstream(alpn: &[&[u8]], answer: Vec<u8>, keep_open: bool) -> SocketAddr {
    let answer: Arc<[u8]> = answer.into();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (listener, acceptor) = tls_listener(alpn).await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // The answer goes out at once, not held back by Nagle's algorithm until the close
            // (a reset) throws it away.
            let _ = tcp.set_nodelay(true);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let service = service_fn(|_request: Request<Incoming>| async {
                        let mut response = Response::new(Full::new(Bytes::from(TOO_LARGE)));
                        *response.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    return;
                }
                let mut seen = Vec::new();
                let mut buffer = [0u8; 16 * 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                if seen.windows(8).any(|w| w == b"silent=1") {
                    return;
                }
                let _ = tls.write_all(&answer).await;
                let _ = tls.flush().await;
                if keep_open {
                    // Held, unread, until the test's runtime ends.
                    std::future::pending::<()>().await;
                    drop(tls);
                }
            });
        }
    });
    addr
}

/// What the router relays when a TLS upstream answers before it read a large body: hyper's
/// client reads the answer while it still writes the body.
async fn early_answer_through_the_router(alpn: &[&[u8]]) -> RouterProcess {
    let addr = start_early_answering_tls_upstream(alpn).await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let prompt = "x".repeat(20 << 20);
    let request = json!({"model": "[secure]m", "messages": [{"role": "user", "content": prompt}]});
    // The second goes on a new connection: the first one's, closed, is not used again.
    for round in 1..=2 {
        let response = router.chat(&request).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (413, TOO_LARGE),
            "round {round}"
        );
    }
    router
}

/// Over HTTP/1.1 hyper's client gave up on the request when writing its body failed; the
/// router holds the failed write (see `upstream::keep_reading`) so hyper reads the answer.
/// An upstream that closes without answering still gets a prompt 502, not a wait, which says
/// it could not be reached: it never had the whole request.
#[tokio::test]
async fn a_tls_upstream_answering_before_it_read_the_body_is_relayed_over_http1() {
    let router = early_answer_through_the_router(&[b"http/1.1"]).await;
    let prompt = "x".repeat(20 << 20);
    let started = std::time::Instant::now();
    let response = crate::support::client()
        .post(router.url("/v1/chat/completions?silent=1"))
        .json(&json!({"model": "[secure]m", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    // Prompt: well under the upstream timeout it would otherwise wait (a bound loose enough
    // for a loaded machine, which took 5.9 s for the 20 MiB here).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // It closed with most of the body unread: not said to have had the request.
    let body: serde_json::Value = response.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("could not reach the upstream secure: "),
        "{message}"
    );
}

/// hyper's HTTP/2 client already read such an answer.
#[tokio::test]
async fn a_tls_upstream_answering_before_it_read_the_body_is_relayed_over_http2() {
    early_answer_through_the_router(&[b"h2"]).await;
}

/// A TLS upstream over HTTP/1.1 that answers 413 as soon as it has read a request's head, then
/// neither reads the body nor closes: hyper's client reads while it writes, so the answer is
/// relayed at once, not after `timeout_secs`.
#[tokio::test]
async fn a_tls_upstream_answering_early_and_keeping_the_connection_open_is_relayed() {
    let answer = format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TOO_LARGE}",
        TOO_LARGE.len()
    );
    let addr = start_raw_tls_upstream(&[b"http/1.1"], answer.into_bytes(), true).await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n    timeout_secs: 60\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let prompt = "x".repeat(16 << 20);
    let request = json!({"model": "[secure]m", "messages": [{"role": "user", "content": prompt}]});
    for round in 1..=2 {
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(20), router.chat(&request))
                .await
                .unwrap_or_else(|_| panic!("round {round}: the 413 was not relayed"));
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (413, TOO_LARGE),
            "round {round}"
        );
    }
}

/// A TLS upstream over HTTP/1.1 answering in `Transfer-Encoding: gzip, chunked`: hyper undoes
/// the chunked coding only, and the gzip bytes reached the client as a 200 JSON answer; the
/// router answers 502 instead, as it does for a plain-HTTP upstream.
#[tokio::test]
async fn a_tls_upstream_answering_in_a_transfer_coding_the_router_cannot_undo_is_a_502() {
    let compressed = crate::support::upstream::gzip(chat_completion("tls-model").as_bytes());
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        compressed.len()
    )
    .into_bytes();
    answer.extend_from_slice(&compressed);
    answer.extend_from_slice(b"\r\n0\r\n\r\n");
    let addr = start_raw_tls_upstream(&[b"http/1.1"], answer, true).await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let response = router
        .chat(&json!({"model": "[secure]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("gzip, chunked"), "{message}");
    assert!(message.contains("answered, but not in a form"), "{message}");
}

/// A TLS upstream over HTTP/1.1 that sends part of an answer's head and closes: the 502 says
/// it answered in a form the router cannot read, as for a plain-HTTP upstream, not that it
/// closed the connection without answering.
#[tokio::test]
async fn a_tls_upstream_cutting_its_answer_head_is_said_to_have_answered_unreadably() {
    let addr = start_raw_tls_upstream(
        &[b"http/1.1"],
        b"HTTP/1.1 200 OK\r\ncontent-type: appl".to_vec(),
        false,
    )
    .await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let response = router
        .chat(&json!({"model": "[secure]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert_eq!(
        body["error"]["message"],
        "the upstream secure answered, but not in a form the router can read: \
         the upstream closed the connection in the middle of its answer head"
    );
}

/// An HTTP/1.1 answer from `count` header fields of `value_len` bytes each, then a chat
/// completion.
fn answer_with_fields(count: usize, value_len: usize) -> Vec<u8> {
    let body = chat_completion("tls-model");
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
    for i in 0..count {
        head.push_str(&format!("x-field-{i}: {}\r\n", "v".repeat(value_len)));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// A TLS upstream's HTTP/1.1 answer meets the limits a plain-HTTP one does (256 header
/// fields, a 256 KiB head), not hyper's defaults (100 fields): an answer with 150 fields is
/// relayed, one past either limit is a 502 that names them.
#[tokio::test]
async fn a_tls_upstreams_answer_head_meets_the_routers_limits() {
    let cases = [
        (answer_with_fields(150, 10), 200),
        (answer_with_fields(300, 10), 502),
        (answer_with_fields(3, 100 * 1024), 502),
    ];
    for (answer, status) in cases {
        let addr = start_raw_tls_upstream(&[b"http/1.1"], answer, false).await;
        let config = format!(
            "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
            addr.port()
        );
        let router = router_trusting_the_test_ca(&config);
        // A raw client: reqwest's own reader stops at 100 fields.
        let mut raw = Raw::connect(router.addr).await;
        let chat = r#"{"model":"[secure]m","messages":[]}"#;
        raw.send(post("/v1/chat/completions", chat, "").as_bytes())
            .await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, status);
        if status == 200 {
            assert_eq!(answer.header("x-field-149"), Some("vvvvvvvvvv"));
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(body["error"]["code"], "upstream_unreachable");
        assert_eq!(
            body["error"]["message"],
            "the upstream secure answered, but not in a form the router can read: \
             the answer's head has more than 256 header fields or is larger than 262144 bytes"
        );
    }
}

/// Over HTTP/2 a TLS upstream's answer may carry a header list as large as an HTTP/1 head
/// (hyper's default refused one past 16 KiB).
#[tokio::test]
async fn a_tls_upstreams_http2_answer_may_carry_a_large_header_list() {
    let (listener, acceptor) = tls_listener(&[b"h2"]).await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_request: Request<Incoming>| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from(chat_completion("tls-model"))));
                    let big = http::HeaderValue::from_str(&"v".repeat(64 * 1024)).expect("value");
                    response.headers_mut().insert("x-big", big);
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(1024 * 1024)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let router = router_trusting_the_test_ca(&config);
    let response = router
        .chat(&json!({"model": "[secure]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let big = response.headers().get("x-big").expect("x-big relayed");
    assert_eq!(big.len(), 64 * 1024);
}

/// A TLS failure says what it most likely means where rustls's words do not: a plain-HTTP
/// server behind an `https://` url (whose `HTTP/1.1 400` reads as a corrupt TLS message),
/// and a certificate of a CA the router does not trust (how to trust a private one), on a
/// chat request and on the model-list fetch (reqwest) alike.
#[tokio::test]
async fn tls_failures_name_their_likely_cause() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plain_port = plain.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = plain.accept().await {
            tokio::spawn(async move {
                let mut hello = [0u8; 1024];
                let _ = tcp.read(&mut hello).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let (tls_addr, _) = start_tls_upstream(&[b"http/1.1"]).await;
    let config = format!(
        "servers:\n  plain:\n    url: \"https://localhost:{plain_port}/v1\"\n  private:\n    url: \"https://localhost:{}/v1\"\n",
        tls_addr.port()
    );
    // No SSL_CERT_FILE: the test CA is not trusted.
    let router = RouterProcess::start(
        Some(&config),
        &[("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")],
    );
    let message = |alias: &'static str| {
        let router = &router;
        async move {
            let response = router
                .chat(&json!({"model": format!("[{alias}]m"), "messages": []}))
                .await;
            assert_eq!(response.status(), 502);
            let body: serde_json::Value = response.json().await.expect("json");
            body["error"]["message"].as_str().unwrap_or("").to_owned()
        }
    };
    let plain_hint = "(the upstream did not answer in TLS: is it a plain http:// server behind an https:// url?)";
    let ca_hint = "(its certificate is not signed by a CA the router trusts; a private CA is trusted with SSL_CERT_FILE or SSL_CERT_DIR)";
    let said = message("plain").await;
    assert!(said.ends_with(plain_hint), "{said}");
    let said = message("private").await;
    assert!(said.ends_with(ca_hint), "{said}");
    router
        .list_models_and_wait_for_warnings(&[("plain", plain_hint), ("private", ca_hint)])
        .await;
}

/// A self-signed certificate made the usual way (`openssl req -x509`, which makes it a CA)
/// and trusted through `SSL_CERT_FILE` is still refused, as TLS refuses a CA's certificate as
/// a server's own; the message says so in words and how to make one that works, on a chat
/// request and in the model-list fetch's warning alike, without rustls's debug text.
#[tokio::test]
async fn a_self_signed_ca_certificate_as_the_servers_own_is_said_in_words() {
    let (addr, seen) = start_tls_upstream_of("self-signed", &[b"http/1.1"]).await;
    let config = format!(
        "servers:\n  selfsigned:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let certificate = fixture("self-signed.pem");
    let router = RouterProcess::start(
        Some(&config),
        &[
            ("SSL_CERT_FILE", certificate.to_str().expect("utf-8 path")),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let response = router
        .chat(&json!({"model": "[selfsigned]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.expect("json");
    let said = body["error"]["message"].as_str().unwrap_or_default();
    let words = "the server's certificate is a CA certificate (basicConstraints CA:TRUE), which \
                 TLS does not accept as a server's own: sign a server certificate with that CA, \
                 or make it with `-addext basicConstraints=critical,CA:FALSE`";
    assert_eq!(
        said,
        format!("could not reach the upstream selfsigned: {words}")
    );
    assert!(seen.lock().expect("lock").is_empty(), "no request was sent");
    router
        .list_models_and_wait_for_warnings(&[("selfsigned", words)])
        .await;
    let log = router.stderr();
    assert!(!log.contains("OtherError"), "{log}");
}

/// `SSL_CERT_FILE` in quotes, as `docker run --env-file` keeps a `.env`'s, is read without
/// them with one warning, as the router's other variables are; one naming a file that cannot
/// be read, or that holds no certificate, stops `check` and `serve` naming it. Before, both
/// were dropped in silence: `check` said ok, and every request failed with UnknownIssuer.
#[tokio::test]
async fn ssl_cert_file_in_quotes_is_read_and_one_that_cannot_be_read_stops_start_up() {
    let (addr, _) = start_tls_upstream(&[b"http/1.1"]).await;
    let config = format!(
        "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
        addr.port()
    );
    let quoted = format!("\"{}\"", fixture("ca.pem").to_str().expect("utf-8 path"));
    let quiet = [("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")];
    let router = RouterProcess::start(
        Some(&config),
        &[quiet[0], quiet[1], ("SSL_CERT_FILE", quoted.as_str())],
    );
    let response = router
        .chat(&json!({"model": "[secure]gpt-x", "messages": []}))
        .await;
    assert_eq!(response.status(), 200, "{}", router.stderr());
    let warning = "SSL_CERT_FILE: its value is in quotes, as `docker run --env-file` keeps them: read without them";
    assert_eq!(
        router.stderr().matches(warning).count(),
        1,
        "{}",
        router.stderr()
    );

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), &config).expect("config");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("file");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            "SSL_CERT_FILE",
            missing.clone(),
            "cannot be read (No such file or directory",
        ),
        ("SSL_CERT_FILE", not_pem.clone(), "holds no PEM certificate"),
        (
            "SSL_CERT_DIR",
            missing.clone(),
            "cannot be read as a folder",
        ),
        (
            "SSL_CERT_DIR",
            dir.path().to_owned(),
            "holds no file with a PEM certificate",
        ),
    ];
    for (name, path, reason) in cases {
        let path = path.to_str().expect("utf-8 path");
        let envs = [quiet[0], quiet[1], (name, path)];
        for (command, status) in [("check", 1), ("serve", 2)] {
            let args = [command, "--port", "0"];
            let args = if command == "check" {
                &args[..1]
            } else {
                &args[..]
            };
            let (code, _, stderr) = crate::support::run_cli(dir.path(), args, &envs);
            assert_eq!(code, status, "{command} {name}={path}: {stderr}");
            let said = format!("error: {name}: {path}: {reason}");
            assert!(stderr.starts_with(&said), "{command}: {said}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        }
    }
}

/// A TLS upstream's chunked answer past a limit of its framing is a 502 that says it went
/// past a limit, as a plain-HTTP upstream's is, not that the upstream broke off its answer
/// (it sent it all): a trailer section over 16 KiB in the very words of the plain-HTTP path;
/// hyper's own limits (16 KiB of chunk extensions in all, 256 trailer fields) named as the
/// client's. What hyper reads and the plain-HTTP path does not (a 5000-byte chunk extension,
/// relayed) and a folded head line (hyper's "invalid HTTP header parsed") are the differences
/// the README lists.
#[tokio::test]
async fn a_tls_upstreams_framing_past_a_limit_is_said_as_a_plain_upstreams() {
    let json = chat_completion("tls-model");
    let chunked = |extension: &str, trailers: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}{extension}\r\n{json}\r\n0\r\n{trailers}\r\n",
            json.len()
        )
    };
    let big_trailers: String = (0..20)
        .map(|i| format!("x-t{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let many_trailers: String = (0..300).map(|i| format!("x-t{i}: b\r\n")).collect();
    let unreadable = "the upstream secure answered, but not in a form the router can read: \
                      the upstream's answer went past a limit: ";
    let cases = [
        (
            chunked("", &big_trailers),
            502,
            format!("{unreadable}a trailer section over 16 KiB (the router's limit)"),
        ),
        (
            chunked(&format!(";e={}", "c".repeat(20_000)), ""),
            502,
            format!(
                "{unreadable}chunk extensions over 16 KiB in all (the limit of the client \
                 that reads TLS answers)"
            ),
        ),
        (
            chunked("", &many_trailers),
            502,
            format!(
                "{unreadable}a trailer section of more than 256 fields (the limit of the \
                 client that reads TLS answers)"
            ),
        ),
        (
            chunked(&format!(";e={}", "c".repeat(5000)), ""),
            200,
            json.clone(),
        ),
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-f: a\r\n b\r\n\
                 content-length: {}\r\n\r\n{json}",
                json.len()
            ),
            502,
            "the upstream secure answered, but not in a form the router can read: invalid \
             HTTP header parsed"
                .to_owned(),
        ),
    ];
    for (answer, status, said) in cases {
        let addr = start_raw_tls_upstream(&[b"http/1.1"], answer.into_bytes(), true).await;
        let config = format!(
            "servers:\n  secure:\n    url: \"https://localhost:{}/v1\"\n",
            addr.port()
        );
        let router = router_trusting_the_test_ca(&config);
        let response = router
            .chat(&json!({"model": "[secure]m", "messages": []}))
            .await;
        assert_eq!(response.status(), status, "{said}");
        let body = response.text().await.expect("body");
        if status == 200 {
            assert_eq!(body, said);
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"]["code"], "upstream_unreachable");
        assert_eq!(body["error"]["message"], said.as_str());
    }
}
