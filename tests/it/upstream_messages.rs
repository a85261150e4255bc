//! What the client is told when an upstream cannot be reached, is not connected to in time,
//! or takes the request and closes the connection unanswered: the same, with the same status
//! and code, whichever client sends the request (a plain `http://` upstream's own
//! connections, hyper's pool for a TLS upstream, or reqwest for a target an `HTTP_PROXY`
//! setting covers; a URL with `user:password@` goes as the same URL without them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::http_edges::{answer_with_a_head_of, answer_with_fields};
use crate::support::upstream::EarlyAnswer;
use crate::support::{RouterProcess, TestRouter, closed_origin, one_server_config, unconnectable};
use crate::upstream_tls::{router_trusting_the_test_ca, tls_listener};

/// An upstream that took the whole request and closed the connection without answering.
const CLOSED_AFTER_REQUEST: &str = "no answer from the upstream mock: the upstream closed the connection without answering (after it had the request)";
/// A connection not made within the server's `timeout_secs` of 0.5 s.
const NOT_CONNECTED_IN_TIME: &str =
    "could not connect to the upstream mock: no connection within 0.5 s (timeout_secs)";
/// Nothing listens where the upstream should be.
const REFUSED: &str =
    "could not reach the upstream mock: tcp connect error: Connection refused (os error 111)";

/// The status, error code and message of a router error.
async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    let text = |key: &str| body["error"][key].as_str().unwrap_or_default().to_owned();
    (status, text("code"), text("message"))
}

fn chat_request() -> Value {
    json!({"model": "[mock]m", "messages": [{"role": "user", "content": "hi"}]})
}

/// `origin` (`http://host:port`) with a user name and password, sent as Basic credentials.
fn with_credentials(origin: &str) -> String {
    origin.replacen("http://", "http://user:secret-password@", 1)
}

/// An upstream that reads each request whole (its head, then a body of its `content-length`)
/// and closes the connection without a byte of answer, as an upstream that crashed or whose
/// worker was killed mid-generation does. Over TLS with `tls`, closed without TLS's
/// `close_notify`, as a crash closes it.
struct ClosingAfterRequest {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ClosingAfterRequest {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener, tls)
    }

    async fn start_tls() -> Self {
        let (listener, acceptor) = tls_listener(&[b"http/1.1"]).await;
        Self::serve(listener, Some(acceptor))
    }

    fn serve(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, counter) = (tls.clone(), counter.clone());
                tokio::spawn(async move {
                    let whole = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(mut stream) => read_whole_request(&mut stream).await,
                            Err(_) => false,
                        },
                        None => read_whole_request(&mut { tcp }).await,
                    };
                    if whole {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it read whole.
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ClosingAfterRequest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request whole from `stream`: its head, then a body of its `content-length`.
async fn read_whole_request<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

/// A listener that accepts connections and never says a word: a TLS handshake with it never
/// completes.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// A TLS upstream at `addr` (its certificate names `localhost`), as the router's `mock`.
fn tls_config(addr: SocketAddr, extra: &str) -> String {
    one_server_config(&format!("https://localhost:{}/v1", addr.port()), extra)
}

/// A router (the real binary) whose `HTTP_PROXY` is `proxy`, in front of an upstream that is
/// only reached through it (its host never resolves).
/// `message` as it reads when the request went through the environment's proxy: the proxy
/// is named as the way, so a proxy that fails does not read as the upstream's fault.
fn via_proxy(message: &str) -> String {
    message.replacen(
        ": ",
        ": through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY): ",
        1,
    )
}

fn router_behind_proxy(proxy: &str, extra: &str) -> RouterProcess {
    let config = one_server_config("http://provider.invalid/v1", extra);
    RouterProcess::start(Some(&config), &[("HTTP_PROXY", proxy)])
}

#[tokio::test]
async fn a_tls_upstream_closing_after_it_had_the_request_is_not_called_unreachable() {
    let upstream = ClosingAfterRequest::start_tls().await;
    let router = router_trusting_the_test_ca(&tls_config(upstream.addr, ""));
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (502, "upstream_unreachable", CLOSED_AFTER_REQUEST)
    );
    assert_eq!(upstream.requests(), 1, "never sent twice");
}

/// A TLS handshake that has not ended within a `timeout_secs` shorter than the connect
/// timeout: the 504 says the connection was not made, not that the upstream did not answer.
#[tokio::test]
async fn a_tls_handshake_outlasting_timeout_secs_is_said_to_be_the_connection() {
    let (addr, _silent) = silent_listener().await;
    let router = router_trusting_the_test_ca(&tls_config(addr, "    timeout_secs: 0.5\n"));
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (504, "upstream_timeout", NOT_CONNECTED_IN_TIME)
    );
}

#[tokio::test]
async fn a_tls_upstream_not_listening_could_not_be_reached() {
    let origin = closed_origin();
    let config = one_server_config(&format!("{}/v1", origin.replacen("http", "https", 1)), "");
    let router = router_trusting_the_test_ca(&config);
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (502, "upstream_unreachable", REFUSED)
    );
}

/// A plain upstream and the same one named with credentials (reqwest used to send that
/// request): both say the upstream had the request.
#[tokio::test]
async fn an_upstream_with_credentials_closing_after_it_had_the_request_is_not_called_unreachable() {
    let upstream = ClosingAfterRequest::start(None).await;
    for origin in [upstream.origin(), with_credentials(&upstream.origin())] {
        let router = TestRouter::start(&one_server_config(&format!("{origin}/v1"), "")).await;
        let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (502, "upstream_unreachable", CLOSED_AFTER_REQUEST),
            "{origin}"
        );
        router.stop().await;
    }
    assert_eq!(upstream.requests(), 2, "each sent once");
}

#[tokio::test]
async fn an_upstream_with_credentials_connecting_past_timeout_secs_is_said_to_be_the_connection() {
    let (addr, _held) = unconnectable();
    let origin = format!("http://{addr}");
    for origin in [origin.clone(), with_credentials(&origin)] {
        let config = one_server_config(&format!("{origin}/v1"), "    timeout_secs: 0.5\n");
        let router = TestRouter::start(&config).await;
        let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (504, "upstream_timeout", NOT_CONNECTED_IN_TIME),
            "{origin}"
        );
        router.stop().await;
    }
}

#[tokio::test]
async fn an_upstream_with_credentials_not_listening_could_not_be_reached() {
    let origin = closed_origin();
    for origin in [origin.clone(), with_credentials(&origin)] {
        let router = TestRouter::start(&one_server_config(&format!("{origin}/v1"), "")).await;
        let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (502, "upstream_unreachable", REFUSED),
            "{origin}"
        );
        router.stop().await;
    }
}

#[tokio::test]
async fn a_proxy_closing_after_it_had_the_request_is_not_called_unreachable() {
    let proxy = ClosingAfterRequest::start(None).await;
    let router = router_behind_proxy(&proxy.origin(), "");
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (
            502,
            "upstream_unreachable",
            via_proxy(CLOSED_AFTER_REQUEST).as_str()
        ),
        "{}",
        router.stderr()
    );
    assert_eq!(proxy.requests(), 1, "never sent twice");
}

/// An answer through the proxy that hyper (under reqwest) cannot read says the upstream
/// answered, not that it could not be reached, as the router's own client says it; one past
/// hyper's head limits (which reqwest does not let the router raise to its own) names them.
/// Under them, an answer is relayed.
#[tokio::test]
async fn an_answer_through_a_proxy_it_cannot_read_is_said_to_be_one() {
    let answered = via_proxy("the upstream mock answered, but not in a form the router can read: ");
    let limits = "the answer's head has more than 100 header fields or is larger than 417792 \
                  bytes (the limits of the client that sends requests through a proxy)";
    let bad_status = b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
    for (answer, said) in [
        (answer_with_fields(90), None),
        (answer_with_fields(101), Some(limits)),
        (answer_with_a_head_of(500), Some(limits)),
        (bad_status, Some("invalid HTTP status-code parsed")),
    ] {
        let proxy = EarlyAnswer::answering(answer, false).await;
        let router = router_behind_proxy(&format!("http://{}", proxy.addr), "");
        let response = router.chat(&chat_request()).await;
        match said {
            None => assert_eq!(response.status(), 200, "{}", router.stderr()),
            Some(said) => {
                let (status, code, message) = error_of(response).await;
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (
                        502,
                        "upstream_unreachable",
                        format!("{answered}{said}").as_str()
                    ),
                    "{}",
                    router.stderr()
                );
            }
        }
        assert_eq!(proxy.connections(), 1, "{said:?}");
    }
}

#[tokio::test]
async fn a_proxy_connecting_past_timeout_secs_is_said_to_be_the_connection() {
    let (addr, _held) = unconnectable();
    let router = router_behind_proxy(&format!("http://{addr}"), "    timeout_secs: 0.5\n");
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (
            504,
            "upstream_timeout",
            via_proxy(NOT_CONNECTED_IN_TIME).as_str()
        )
    );
}

/// A proxy that takes the connection and never answers: the 504 names the proxy, as a
/// proxy's connect timeout does, not only the upstream it never reached.
#[tokio::test]
async fn a_proxy_that_never_answers_is_named_in_the_timeout() {
    let (addr, _silent) = silent_listener().await;
    let router = router_behind_proxy(&format!("http://{addr}"), "    timeout_secs: 0.5\n");
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    let unanswered = "the upstream mock did not answer: no answer within 0.5 s (timeout_secs)";
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (504, "upstream_timeout", via_proxy(unanswered).as_str()),
        "{}",
        router.stderr()
    );
}

/// The model-list fetch through a proxy that takes the connection and never answers: its
/// timeout names the proxy, as the chat request's 504 does, in the refresh's warning and in
/// `llmsrouter models` alike; never the proxy's credentials.
#[tokio::test]
async fn a_proxy_that_never_answers_the_model_list_fetch_is_named_in_its_timeout() {
    let (addr, _silent) = silent_listener().await;
    let proxy = with_credentials(&format!("http://{addr}"));
    let settings = "settings:\n  models_fetch_timeout_secs: 0.5\n";
    let router = router_behind_proxy(&proxy, settings);
    let unanswered = "GET /models failed: through the proxy the environment names (HTTP_PROXY, \
                      HTTPS_PROXY or ALL_PROXY): no answer within 0.5 s \
                      (settings.models_fetch_timeout_secs)";
    router
        .list_models_and_wait_for_warnings(&[("mock", unanswered)])
        .await;
    let log = router.stderr();
    assert!(!log.contains("secret-password"), "{log}");

    let dir = tempfile::tempdir().expect("dir");
    let config = one_server_config("http://provider.invalid/v1", settings);
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let cli_dir = dir.path().to_owned();
    let (_, _, stderr) = tokio::task::spawn_blocking(move || {
        crate::support::run_cli(&cli_dir, &["models"], &[("HTTP_PROXY", &proxy)])
    })
    .await
    .expect("cli task");
    let warned = "warning: server \"mock\": through the proxy the environment names \
                  (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY): no answer within 0.5 s \
                  (settings.models_fetch_timeout_secs); its models are left out";
    assert!(stderr.contains(warned), "{stderr}");
    assert!(!stderr.contains("secret-password"), "{stderr}");
}

/// On a chat request and in the model-list refresh's warning alike.
#[tokio::test]
async fn a_proxy_not_listening_could_not_be_reached() {
    let router = router_behind_proxy(&closed_origin(), "");
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (502, "upstream_unreachable", via_proxy(REFUSED).as_str())
    );
    let unreachable = via_proxy("unreachable: tcp connect error: Connection refused");
    router
        .list_models_and_wait_for_warnings(&[("mock", &unreachable)])
        .await;
}

/// A proxy that refuses every request: 407 with an empty body.
async fn proxy_refusing_credentials() -> crate::support::upstream::MockUpstream {
    crate::support::upstream::MockUpstream::start(crate::support::upstream::Behavior {
        status: 407,
        body: Some(String::new()),
        ..Default::default()
    })
    .await
}

/// A proxy that answers 407 (its credentials refused, `user:p` of a password with an `@`
/// the matcher split, say): the router's 502 naming the proxy's variable, in the answer
/// and the request log alike, never the provider's 407 with an empty body; never the
/// credentials.
#[tokio::test]
async fn a_proxy_refusing_its_credentials_is_the_routers_error_naming_it() {
    let proxy = proxy_refusing_credentials().await;
    let with_credentials = with_credentials(&proxy.origin());
    let router = router_behind_proxy(&with_credentials, "");
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    let refused = "could not reach the upstream mock: the proxy (HTTP_PROXY) refused the \
                   request: 407 Proxy Authentication Required; check the credentials in the \
                   variable";
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (502, "upstream_unreachable", refused),
        "{}",
        router.stderr()
    );
    assert!(
        proxy.last().headers.contains_key("proxy-authorization"),
        "it was the proxy that was asked"
    );
    let dir = router.dir.path().to_owned();
    let logged = || {
        std::fs::read_dir(&dir).expect("dir").any(|entry| {
            let path = entry.expect("entry").path();
            path.to_string_lossy().contains("api_proxy.")
                && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0)
        })
    };
    crate::support::wait_until(std::time::Duration::from_secs(10), logged).await;
    let lines = crate::telemetry::request_log::read_log_lines(&dir, "api_proxy");
    assert_eq!(
        (&lines[0]["status"], &lines[0]["error"]),
        (&json!(502), &json!(refused)),
        "{lines:?}"
    );
    let text = format!("{lines:?}{}", router.stderr());
    assert!(!text.contains("secret-password"), "{text}");
}

/// An upper-case proxy variable set but empty is unset, as curl reads it: its lower-case twin
/// names the proxy. The client's matcher took the empty `HTTP_PROXY` as set, and the
/// request went straight to the provider.
#[tokio::test]
async fn an_empty_upper_case_proxy_variable_yields_to_its_lower_case_twin() {
    let proxy = crate::support::upstream::MockUpstream::start(Default::default()).await;
    let config = one_server_config("http://provider.invalid/v1", "");
    let router = RouterProcess::start(
        Some(&config),
        &[("HTTP_PROXY", ""), ("http_proxy", proxy.origin().as_str())],
    );
    let response = router.chat(&chat_request()).await;
    assert_eq!(response.status(), 200, "{}", router.stderr());
    assert_eq!(proxy.count(), 1, "the proxy was asked");
}

/// A proxy refusing the tunnel to an `https://` upstream (its answer to `CONNECT` not 200)
/// is said to be the proxy's refusal, as for an `http://` upstream: it read "tunnel error:
/// unsuccessful", which named neither the proxy nor what it refused.
#[tokio::test]
async fn a_proxy_refusing_a_tunnel_is_said_to_be_the_proxys_refusal() {
    let cases = [
        (
            407,
            "407 Proxy Authentication Required; check the credentials in HTTPS_PROXY (or ALL_PROXY)",
        ),
        (
            502,
            "its answer to CONNECT was not 200 (a 403 or 502 of the proxy's, say)",
        ),
    ];
    for (status, why) in cases {
        let proxy =
            crate::support::upstream::MockUpstream::start(crate::support::upstream::Behavior {
                status,
                body: Some(String::new()),
                ..Default::default()
            })
            .await;
        let config = one_server_config("https://provider.invalid/v1", "");
        let router = RouterProcess::start(
            Some(&config),
            &[("HTTPS_PROXY", with_credentials(&proxy.origin()).as_str())],
        );
        let (code, error, message) = error_of(router.chat(&chat_request()).await).await;
        let expected = via_proxy(&format!(
            "could not reach the upstream mock: it refused to open a tunnel to the upstream: {why}"
        ));
        assert_eq!(
            (code, error.as_str(), message.as_str()),
            (502, "upstream_unreachable", expected.as_str()),
            "{status}"
        );
        assert!(!router.stderr().contains("secret-password"));
    }
    // One that closes the connection without answering the CONNECT at all.
    let closing = ClosingAfterRequest::start(None).await;
    let config = one_server_config("https://provider.invalid/v1", "");
    let router = RouterProcess::start(Some(&config), &[("HTTPS_PROXY", closing.origin().as_str())]);
    let (code, error, message) = error_of(router.chat(&chat_request()).await).await;
    let expected = via_proxy(
        "could not reach the upstream mock: it closed the connection without answering CONNECT \
         (the tunnel to the upstream)",
    );
    assert_eq!(
        (code, error.as_str(), message.as_str()),
        (502, "upstream_unreachable", expected.as_str())
    );
}

/// The model-list refresh through a proxy that answers 407 warns of the proxy's refusal in
/// the chat request's words, not of an `HTTP 407` as if the provider had answered it; never
/// with the credentials.
#[tokio::test]
async fn a_proxy_refusing_the_model_list_fetch_is_named_in_the_warning() {
    let proxy = proxy_refusing_credentials().await;
    let router = router_behind_proxy(&with_credentials(&proxy.origin()), "");
    let refused = "GET /models failed: the proxy (HTTP_PROXY) refused the request: 407 Proxy \
                   Authentication Required; check the credentials in the variable; its models \
                   are left out of /v1/models";
    router
        .list_models_and_wait_for_warnings(&[("mock", refused)])
        .await;
    assert!(
        router
            .stderr()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(refused)),
        "a warning"
    );
    assert!(
        proxy.last().headers.contains_key("proxy-authorization"),
        "it was the proxy that was asked"
    );
    let log = router.stderr();
    assert!(!log.contains("secret-password"), "{log}");
}

/// An HTTP/2 TLS upstream that reads each request's body whole and then drops the connection
/// (no GOAWAY, no `close_notify`), as a crash does.
async fn start_h2_closing_after_request() -> SocketAddr {
    use http_body_util::BodyExt as _;
    let (listener, acceptor) = tls_listener(&[b"h2"]).await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read_whole, crash) = tokio::sync::mpsc::channel::<()>(1);
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let read_whole = read_whole.clone();
                        async move {
                            let _ = request.into_body().collect().await;
                            let _ = read_whole.send(()).await;
                            std::future::pending::<()>().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))
                        }
                    },
                );
                let serving =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                let mut crash = crash;
                tokio::select! {
                    _ = serving => {}
                    _ = crash.recv() => {}
                }
            });
        }
    });
    addr
}

/// Over HTTP/2 whether the request went out whole cannot be told (a body may wait for the
/// upstream's window however the writes went): an upstream that ended the connection
/// unanswered is not said to have had it, even when, as here, it had.
#[tokio::test]
async fn an_http2_upstream_closing_unanswered_is_not_said_to_have_had_the_request() {
    let addr = start_h2_closing_after_request().await;
    let router = router_trusting_the_test_ca(&tls_config(addr, ""));
    let (status, code, message) = error_of(router.chat(&chat_request()).await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));
    assert!(
        message.starts_with("could not reach the upstream mock: "),
        "{message}"
    );
}

/// A proxy that passes an answer's head and half its body on, then nothing more: the 504 at
/// `timeout_secs` says the answer came through the proxy, which may be the one holding it,
/// for a whole answer and for a stream's error answer (read whole as well) alike.
#[tokio::test]
async fn an_answer_stuck_behind_a_proxy_names_the_proxy() {
    use crate::support::upstream::{Behavior, MockUpstream};
    let proxy = MockUpstream::start(Behavior {
        status: 500,
        stall_whole: true,
        ..Default::default()
    })
    .await;
    let router = router_behind_proxy(&proxy.origin(), "    timeout_secs: 0.5\n");
    let stuck = "the upstream mock, through the proxy the environment names (HTTP_PROXY, \
                 HTTPS_PROXY or ALL_PROXY), did not finish its answer within 0.5 s (timeout_secs)";
    for stream in [false, true] {
        let mut request = chat_request();
        request["stream"] = json!(stream);
        let (status, code, message) = error_of(router.chat(&request).await).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (504, "upstream_timeout", stuck),
            "stream: {stream}; {}",
            router.stderr()
        );
    }
    assert_eq!(proxy.count(), 2, "it was the proxy that was asked");
}

/// A stream through the environment's proxy that falls silent or breaks off: its error event
/// names the proxy, as a whole answer's 504 does (the proxy may be the one holding it).
#[tokio::test]
async fn a_stream_stuck_or_cut_behind_a_proxy_names_the_proxy() {
    use crate::support::upstream::{Behavior, MockUpstream};
    let silent = Behavior {
        chunks: 3,
        chunk_delay: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let cut = Behavior {
        chunks: 5,
        abort_after: Some(2),
        chunk_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let proxy = MockUpstream::start(silent.clone()).await;
    let router = router_behind_proxy(&proxy.origin(), "    timeout_secs: 0.5\n");
    let through = "through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY)";
    let cases = [
        (
            silent,
            format!("the upstream, {through}, sent nothing for 0.5 s"),
        ),
        (
            cut,
            format!("the upstream connection, {through}, failed mid-stream"),
        ),
    ];
    for (behavior, message) in cases {
        proxy.set(behavior);
        let mut request = chat_request();
        request["stream"] = json!(true);
        let response = router.chat(&request).await;
        let status = response.status();
        let text = response.text().await.expect("the stream, cut");
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(&message), "{message}: {text}");
    }
}
