//! Errors: the router's own (OpenAI shape, status and code of PRODUCT.md's table) and the
//! upstream's (kept, wrapped only when not OpenAI-shaped).

use std::time::Duration;

use futures_util::StreamExt;
use llmsrouter::record::Outcome;
use serde_json::{Value, json};

use crate::support::upstream::{
    Behavior, EarlyAnswer, MockUpstream, brotli, compress_flushed, gzip, zlib, zstd,
};
use crate::support::{Logged, TestRouter, client, h2c_client, one_server_config};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
    (status, body)
}

/// A mock upstream and a router in front of it that takes bodies of `limit` bytes at most.
async fn with_body_limit(limit: usize) -> (MockUpstream, TestRouter) {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  max_body_bytes: {limit}\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    (upstream, router)
}

#[tokio::test]
async fn bad_input_gets_a_4xx_in_openai_shape_and_the_server_keeps_serving() {
    let (upstream, router) = with_body_limit(2_000_000).await;
    let huge_model = format!(r#"{{"model":"{}"}}"#, "m".repeat(1_500_000));
    let too_big = format!(r#"{{"model":"[mock]m","pad":"{}"}}"#, "x".repeat(2_100_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/chat/completions",
            b"not json".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            b"{\"model\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"messages":[]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"[1,2]"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":42}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"["}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"[]x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"[unclosed"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"[nosuch]x"}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"gpt-4o"}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            huge_model.into_bytes(),
            404,
            "model_not_found",
        ),
        (
            "/v1/chat/completions?proxy=file:///etc/passwd",
            br#"{"model":"m"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions?proxy=ftp://x",
            br#"{"model":"m"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            too_big.into_bytes(),
            413,
            "body_too_large",
        ),
        ("/v1/chat/completions", b"".to_vec(), 400, "invalid_request"),
    ];
    for (path, body, status, code) in cases {
        let response = client()
            .post(router.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let (got_status, error) = error_of(response).await;
        assert_eq!(got_status, status, "{path}: {error}");
        assert_eq!(error["error"]["code"], code, "{path}: {error}");
        assert!(error.to_string().len() < 4000, "messages are clipped");
    }
    // The unprefixed "gpt-4o" makes the router look at the model lists (GET /models).
    let forwarded = upstream
        .received()
        .iter()
        .filter(|r| !r.path.ends_with("/models"))
        .count();
    assert_eq!(forwarded, 0, "nothing bad reached the upstream");
    let health = client()
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    router.stop().await;
}

/// `?proxy=` as a query value: every character that is not a letter or digit encoded.
fn proxy_query(target: &str) -> String {
    let value: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    format!("/v1/chat/completions?proxy={value}")
}

/// Posts a chat request with `model` to `path`, which must be refused with 400
/// `invalid_request`; returns the message.
async fn refused_400(router: &TestRouter, path: &str, model: &str) -> String {
    let body = json!({"model": model, "messages": []});
    let response = client()
        .post(router.url(path))
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400, "{path} {model}: {error}");
    assert_eq!(error["error"]["code"], "invalid_request", "{error}");
    error["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// None of the requests so far was recorded: the first record is the next one's.
async fn assert_none_recorded(router: &TestRouter) {
    let response = router
        .chat(&json!({"model": "[mock]m1", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let record = router.records.nth(1).await;
    assert_eq!(record.requested_model, "[mock]m1");
    assert_eq!(router.records.all().len(), 1);
}

/// A body with more top-level members than any API request has (4,096) is refused with 400
/// before a list of them is built: 60 MB of `"k1":0,` took 600 MB of memory and stalled the
/// connections on its thread. One at the limit, with `model` last, is routed; escaped keys
/// (serde_json's path) are held to the same limit. Nothing is sent or recorded.
#[tokio::test]
async fn a_body_with_thousands_of_top_level_members_is_refused() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = |members: usize, key: &str, valid: bool| {
        let mut text = String::from("{");
        for i in 0..members - 1 {
            text.push_str(&format!("\"{key}{i}\":0,"));
        }
        text.push_str(r#""model":"[mock]m""#);
        if valid {
            text.push('}');
        }
        text
    };
    for (members, key, valid) in [
        (4097, "k", true),
        (5000, "k\\u0031", true),
        (9000, "k", false),
    ] {
        let response = client()
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body(members, key, valid))
            .send()
            .await
            .expect("send");
        let (status, error) = error_of(response).await;
        assert_eq!(status, 400, "{members} {key}");
        assert_eq!(
            error["error"]["message"],
            "the request body has more than 4096 top-level members: an API request has a few dozen"
        );
    }
    assert_eq!(upstream.count(), 0);
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body(4096, "k", true))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.count(), 1);
    router.stop().await;
}

/// A URL target must be written `http(s)://host`: the url crate reads URLs as browsers do,
/// `http:///v1` as the host `v1` (a DNS error recorded with provider `v1`) and `http:/host`
/// or `http:///host` as `http://host` (which went upstream). Refused with 400 in the query
/// and in a `[URL]` prefix; nothing is sent or recorded.
#[tokio::test]
async fn a_url_target_without_a_written_host_is_400() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let host = upstream.origin().replace("http://", "");
    let targets = [
        "http:///v1".to_owned(),
        format!("http:///{host}/v1"),
        format!("http:/{host}/v1"),
        format!("http:{host}/v1"),
        format!("HTTP:\\\\{host}\\v1"),
        format!("http://{host}\\v1"),
    ];
    for target in &targets {
        let message = refused_400(&router, &proxy_query(target), "m1").await;
        assert!(message.starts_with("bad proxy URL"), "{message}");
        let prefixed = format!("[{target}]m1");
        let message = refused_400(&router, "/v1/chat/completions", &prefixed).await;
        assert!(message.starts_with("bad URL in model prefix"), "{message}");
    }
    let message = refused_400(&router, &proxy_query("http:///v1"), "m1").await;
    assert!(message.contains("the URL has no host"), "{message}");
    assert_eq!(upstream.count(), 0, "nothing went upstream");
    assert_none_recorded(&router).await;
    router.stop().await;
}

/// A URL target with user info is refused, and the 400 quotes the URL without it (the
/// `?proxy=` value percent-decoded, as the router read it).
#[tokio::test]
async fn a_refused_url_target_is_quoted_without_its_credentials() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let host = upstream.origin().replace("http://", "");
    let shown = format!("http://[redacted]@{host}/v1");
    // Also a password pasted with a `#` or `/` unescaped, which makes the URL malformed: it
    // is still said to be credentials, not "invalid port number".
    for with_credentials in [
        format!("http://user@x:p@ss-word@{host}/v1"),
        format!("http://user:p#ss-word@{host}/v1"),
        format!("http://user:p/ss-word@{host}/v1"),
    ] {
        let prefixed = format!("[{with_credentials}]m1");
        for (path, model) in [
            (proxy_query(&with_credentials), "m1"),
            ("/v1/chat/completions".to_owned(), prefixed.as_str()),
        ] {
            let message = refused_400(&router, &path, model).await;
            assert!(message.contains(&shown), "{message}");
            assert!(
                message.contains("credentials in the URL are not accepted"),
                "{message}"
            );
            assert!(
                !message.contains("ss-word") && !message.contains("user"),
                "{message}"
            );
        }
    }
    assert_eq!(upstream.count(), 0, "nothing went upstream");
    assert_none_recorded(&router).await;
    router.stop().await;
}

/// Every message that quotes a model or a model id shows the user info of a `scheme://` URL
/// in it as `[redacted]`, whether or not the router reads the text as a URL target.
#[tokio::test]
async fn a_message_quoting_a_model_shows_no_user_info() {
    const PASSWORD: &str = "secretpw55";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let host = upstream.origin().replace("http://", "");
    let url = format!("http://alice:{PASSWORD}@{host}/v1");
    for (model, status, says) in [
        (format!("[{url}]"), 400, "has no model name after"),
        (format!("[{url}]   "), 400, "has no model name after"),
        (format!("[{url}"), 400, "has no closing ']'"),
        (
            format!("[ftp://alice:{PASSWORD}@{host}]m1"),
            404,
            "unknown provider",
        ),
        (
            format!("[http//alice:{PASSWORD}@{host}]m1"),
            404,
            "unknown provider",
        ),
        (format!("{url}/m1"), 404, "has no [provider] prefix"),
    ] {
        let response = router.chat(&json!({"model": model, "messages": []})).await;
        let (got, error) = error_of(response).await;
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{model}: {message}");
        assert!(message.contains(says), "{model}: {message}");
        assert!(message.contains("/[redacted]@"), "{model}: {message}");
        assert!(!message.contains(PASSWORD), "{model}: {message}");
    }
    let response = client()
        .get(router.url(&format!("/v1/models/[{url}]m1")))
        .send()
        .await
        .expect("send");
    let (got, error) = error_of(response).await;
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(got, 404, "{message}");
    assert!(message.contains("/[redacted]@"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
    assert_none_recorded(&router).await;
    router.stop().await;
}

/// A client writes its whole body before it reads the answer, so the router reads an
/// oversized body to its end before it answers 413; answering and closing mid-body left the
/// client with a broken pipe instead of the 413 (a race the 413 case above lost on CI).
#[tokio::test]
async fn an_oversized_body_gets_its_413_read_whether_declared_or_chunked() {
    let (upstream, router) = with_body_limit(100_000).await;
    let big = format!(r#"{{"model":"[mock]m","pad":"{}"}}"#, "x".repeat(1_000_000));
    let http = client();
    for round in 0..8 {
        let declared = reqwest::Body::from(big.clone());
        let chunked = in_pieces(big.as_bytes(), 64 * 1024);
        for (how, body) in [("declared length", declared), ("chunked", chunked)] {
            let response = http
                .post(router.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}, {how}: {e}"));
            let (status, error) = error_of(response).await;
            assert_eq!(
                (status, &error["error"]["code"]),
                (413, &json!("body_too_large")),
                "round {round}, {how}"
            );
        }
    }
    assert_eq!(
        upstream.count(),
        0,
        "nothing oversized reached the upstream"
    );

    // A body within the limit that arrives in many pieces is forwarded whole.
    let fits = format!(r#"{{"model":"[mock]m","pad":"{}"}}"#, "y".repeat(90_000));
    let response = http
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(in_pieces(fits.as_bytes(), 1000))
        .send()
        .await
        .expect("send in pieces");
    assert_eq!(response.status(), 200);
    let forwarded = upstream.last().json();
    assert_eq!(forwarded["model"], "m");
    assert_eq!(forwarded["pad"].as_str().map(str::len), Some(90_000));
    router.stop().await;
}

/// A request body without a Content-Length, sent as chunks of `size` bytes.
fn in_pieces(bytes: &[u8], size: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(size).map(|piece| Ok(piece.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn not_found_message_lists_the_aliases() {
    let closed = crate::support::closed_url();
    let router = TestRouter::start(&format!(
        "servers:\n  openrouter:\n    url: {closed}\n  deepseek:\n    url: {closed}\n"
    ))
    .await;
    let response = router.chat(&json!({"model": "deepseek-chat"})).await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("openrouter") && message.contains("deepseek"),
        "{message}"
    );
    router.stop().await;
}

/// `GET /v1` and `/v1/` are named as the client wrote them in the 404, not as `/`.
#[tokio::test]
async fn a_bare_v1_is_named_as_sent_in_the_404() {
    let router = TestRouter::start("servers: {}\n").await;
    for path in ["/v1", "/v1/"] {
        let response = crate::support::client()
            .get(router.url(path))
            .send()
            .await
            .expect("send");
        let (status, body) = error_of(response).await;
        assert_eq!(status, 404);
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!("no route {path}:")),
            "{message}"
        );
    }
    router.stop().await;
}

/// An SDK whose base URL carried `?proxy=` sends its path inside the proxy value (the Python
/// SDK as it is, Node's percent-encoded): the 404 for `/v1` says so, and what works instead,
/// over HTTP/1.1 and HTTP/2, for a `POST` and a `GET`; a `proxy=` that ends in no API path
/// (a client that posted to `/v1` itself) gets the plain 404. Nothing goes upstream.
#[tokio::test]
async fn a_path_inside_proxy_gets_a_404_that_says_so() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("servers: {}\n").await;
    let target = upstream.url();
    let encoded = format!("{target}/chat/completions")
        .replace(':', "%3A")
        .replace('/', "%2F");
    let chat = json!({"model": "m", "messages": []});
    for http in [client(), h2c_client()] {
        let requests = [
            http.post(format!(
                "{}?proxy={target}/chat/completions",
                router.url("/v1")
            ))
            .json(&chat),
            http.post(format!("{}?proxy={encoded}", router.url("/v1")))
                .json(&chat),
            http.get(format!("{}?proxy={target}models", router.url("/v1/"))),
        ];
        for request in requests {
            let (status, body) = error_of(request.send().await.expect("send")).await;
            assert_eq!(status, 404, "{body}");
            let message = body["error"]["message"].as_str().expect("message");
            assert!(message.starts_with("no route /v1"), "{message}");
            assert!(
                message.contains(
                    "the request path is inside the proxy= value: an SDK's base URL cannot \
                     carry a query"
                ) && message.contains("default_query (Python) / defaultQuery (Node)"),
                "{message}"
            );
            assert!(!message.contains(&target), "not quoted: {message}");
        }
        let plain = http
            .post(format!("{}?proxy={target}", router.url("/v1")))
            .json(&chat);
        let (status, body) = error_of(plain.send().await.expect("send")).await;
        assert_eq!(status, 404);
        let message = body["error"]["message"].as_str().expect("message");
        assert!(!message.contains("inside the proxy= value"), "{message}");
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// An upstream error whose `error` is a flag or a number (`true`, `429`, `null`) with the
/// reason beside it in `message` or `detail`: the client and the record get that reason, not
/// "true". With no reason beside it, the whole body is the message.
#[tokio::test]
async fn a_scalar_error_member_gives_way_to_the_message_beside_it() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let cases = [
        (
            429,
            r#"{"error": true, "message": "rate limited, slow down"}"#,
            "rate limited, slow down",
        ),
        (
            429,
            r#"{"error": 429, "detail": "rate limited, slow down"}"#,
            "rate limited, slow down",
        ),
        (
            400,
            r#"{"error": null, "message": "quota exceeded for model"}"#,
            "quota exceeded for model",
        ),
        (400, r#"{"error": true}"#, r#"{"error": true}"#),
    ];
    for (n, (status, body, message)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            status,
            body: Some(body.into()),
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status().as_u16(), status);
        let (_, error) = error_of(response).await;
        assert_eq!(error["error"]["message"], message, "{body}");
        assert_eq!(error["error"]["type"], "upstream_error");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        assert_eq!(record.error.as_deref(), Some(message), "{body}");
    }
    router.stop().await;
}

#[tokio::test]
async fn upstream_errors_keep_status_headers_and_text() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let openai_shaped = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let cases = [
        (400, openai_shaped, "application/json", None),
        (
            422,
            r#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#,
            "application/json",
            Some(r#"[{"loc":["body","model"],"msg":"field required"}]"#),
        ),
        (
            401,
            r#"{"message":"Invalid token"}"#,
            "application/json",
            Some("Invalid token"),
        ),
        (
            500,
            r#"[{"error":{"code":500,"message":"Internal error"}}]"#,
            "application/json",
            Some(r#"[{"error":{"code":500,"message":"Internal error"}}]"#),
        ),
        (
            503,
            "upstream overloaded, try later",
            "text/plain",
            Some("upstream overloaded, try later"),
        ),
    ];
    for (status, body, content_type, wrapped_message) in cases {
        upstream.set(Behavior {
            status,
            body: Some(body.into()),
            content_type: content_type.into(),
            headers: vec![
                ("retry-after".into(), "3".into()),
                ("x-ratelimit-reset".into(), "1s".into()),
            ],
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["x-ratelimit-reset"], "1s");
        match wrapped_message {
            None => assert_eq!(response.text().await.expect("body"), body),
            Some(message) => {
                let (_, error) = error_of(response).await;
                assert_eq!(error["error"]["message"], message, "{status}");
                assert_eq!(error["error"]["type"], "upstream_error");
            }
        }
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.status, Some(400));
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or("")
            .contains("maximum context length")
    );
    router.stop().await;
}

/// A redirect is passed back as it came (the client decides whether to follow it), but no
/// completion happened: its record is the upstream's error, with its status, so the ledger
/// counts it among errors and the trace is marked failed. It was recorded as a success.
#[tokio::test]
async fn a_redirect_is_relayed_unchanged_and_recorded_as_an_upstream_error() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let moved = "<html>moved to https://elsewhere.example/v1</html>";
    for (round, status) in [(1, 307), (2, 301)] {
        upstream.set(Behavior {
            status,
            body: Some(moved.into()),
            content_type: "text/html".into(),
            headers: vec![(
                "location".into(),
                "https://elsewhere.example/v1/chat/completions".into(),
            )],
            ..Default::default()
        });
        let response = no_redirects
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": "[mock]m", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["location"],
            "https://elsewhere.example/v1/chat/completions"
        );
        assert_eq!(response.headers()["content-type"], "text/html");
        assert!(response.headers().contains_key("x-llmsrouter-request-id"));
        assert_eq!(response.text().await.expect("body"), moved, "unchanged");
        assert_eq!(upstream.count(), round, "sent once, not followed");
        let record = router.records.nth(round).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "HTTP {status}");
        assert_eq!(record.status, Some(status));
        let error = record.error.as_deref().unwrap_or("");
        assert!(error.contains(&format!("HTTP {status}")), "{error}");
        assert!(
            !error.contains("elsewhere"),
            "no Location in the record: {error}"
        );
        assert!(!record.response_is_json);
    }
    router.stop().await;
}

/// An upstream that answers 413 as soon as it has read the head of a request whose body it
/// will not take, then closes (a front-end's `client_max_body_size`): the router's write of
/// the body fails once the socket buffers are full, and the answer the upstream had already
/// sent is relayed (status, headers, body) instead of a 502 "Broken pipe". Only bodies larger
/// than the socket buffers ever failed; large agent prompts are such bodies.
#[tokio::test]
async fn an_upstream_that_answers_before_reading_a_large_body_is_relayed() {
    let message = "payload too large (upstream)";
    let answer = json!({"error": {"message": message, "type": "invalid_request_error", "code": "too_large"}})
        .to_string();
    let upstream = EarlyAnswer::start(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nx-body-limit: 1m\r\n",
        &answer,
    )
    .await;
    let router = TestRouter::start(&format!(
        "servers:\n  early:\n    url: \"{}\"\n",
        upstream.url()
    ))
    .await;
    let prompt = "x".repeat(20 << 20);
    let body = json!({"model": "[early]m", "messages": [{"role": "user", "content": prompt}]});
    for round in 1..=2 {
        let response = router.chat(&body).await;
        assert_eq!(response.status(), 413, "round {round}");
        assert_eq!(response.headers()["x-body-limit"], "1m");
        assert_eq!(response.text().await.expect("body"), answer);
        let record = router.records.nth(round).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        assert_eq!(record.status, Some(413));
        assert_eq!(record.error.as_deref(), Some(message));
    }
    assert_eq!(
        upstream.connections(),
        2,
        "a closed connection is not reused"
    );
    router.stop().await;
}

/// How long a test waits for an answer an upstream sent before it read the request: far
/// below the `timeout_secs` of [`early_config`], so a router that waits for the upstream to
/// read (or close) fails the test here, not at the upstream timeout.
const EARLY_DEADLINE: Duration = Duration::from_secs(20);

/// One server `early` at `url`, with a `timeout_secs` no test here should reach.
fn early_config(url: &str) -> String {
    format!("servers:\n  early:\n    url: \"{url}\"\n    timeout_secs: 60\n")
}

/// A chat request to `early` whose body (16 MiB) is far larger than the socket buffers.
fn large_chat() -> Value {
    let prompt = "x".repeat(16 << 20);
    json!({"model": "[early]m", "messages": [{"role": "user", "content": prompt}]})
}

/// An upstream that answers 413 as soon as it has read the head of a large request, then
/// neither reads the body nor closes the connection: the router's write of the body waits
/// for room that never comes. It reads while it waits, and relays the 413 once it came whole
/// (and does not use that connection again), instead of waiting for `timeout_secs` and
/// answering 504.
#[tokio::test]
async fn an_early_answer_on_a_connection_the_upstream_keeps_open_is_relayed() {
    let message = "payload too large (upstream)";
    let answer = json!({"error": {"message": message, "type": "invalid_request_error", "code": "too_large"}})
        .to_string();
    let upstream = EarlyAnswer::keeping_open(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nx-body-limit: 1m\r\n",
        &answer,
    )
    .await;
    let router = TestRouter::start(&early_config(&upstream.url())).await;
    let body = large_chat();
    for round in 1..=2 {
        let response = tokio::time::timeout(EARLY_DEADLINE, router.chat(&body))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the upstream's 413 was not relayed"));
        assert_eq!(response.status(), 413, "round {round}");
        assert_eq!(response.headers()["x-body-limit"], "1m");
        assert_eq!(response.text().await.expect("body"), answer);
        let record = router.records.nth(round).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        assert_eq!(record.status, Some(413));
        assert_eq!(record.error.as_deref(), Some(message));
    }
    assert_eq!(
        upstream.connections(),
        2,
        "a connection whose request was not written whole is not reused"
    );
    router.stop().await;
}

/// An upstream may also answer a whole 200 before it read the request (and keep the
/// connection open): that completion reaches the client and its record, usage and all,
/// instead of a 504 that replaced it.
#[tokio::test]
async fn a_whole_completion_sent_before_the_request_was_read_is_relayed() {
    let completion = crate::support::upstream::chat_completion("early-model");
    let upstream = EarlyAnswer::keeping_open(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
        &completion,
    )
    .await;
    let router = TestRouter::start(&early_config(&upstream.url())).await;
    let response = tokio::time::timeout(EARLY_DEADLINE, router.chat(&large_chat()))
        .await
        .expect("the upstream's completion was not relayed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), completion);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.status, Some(200));
    let usage = record.response.usage.clone().expect("usage");
    assert_eq!((usage.input, usage.output), (11, 2));
    router.stop().await;
}

/// `Transfer-Encoding: gzip, chunked`, a transfer coding the router never asked for (it sends
/// no `TE`) and does not undo: relayed without its hop-by-hop `Transfer-Encoding`, the gzip
/// bytes reached the client as a 200 JSON answer with no coding named. It is an upstream
/// failure instead, as is any transfer coding but a lone `chunked` (or the obsolete
/// `identity`).
#[tokio::test]
async fn an_answer_in_a_transfer_coding_the_router_cannot_undo_is_a_502() {
    let compressed = gzip(crate::support::upstream::chat_completion("m").as_bytes());
    for coding in ["gzip, chunked", "chunked, gzip", "gzip"] {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: {coding}\r\n\r\n{:x}\r\n",
            compressed.len()
        )
        .into_bytes();
        answer.extend_from_slice(&compressed);
        answer.extend_from_slice(b"\r\n0\r\n\r\n");
        let upstream = EarlyAnswer::answering(answer, true).await;
        let router = TestRouter::start(&early_config(&upstream.url())).await;
        let response = tokio::time::timeout(
            EARLY_DEADLINE,
            router.chat(&json!({"model": "[early]m", "messages": []})),
        )
        .await
        .unwrap_or_else(|_| panic!("{coding}: no answer"));
        let (status, body) = error_of(response).await;
        assert_eq!(status, 502, "{coding}: {body}");
        assert_eq!(body["error"]["code"], "upstream_unreachable", "{coding}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(coding), "{coding}: {message}");
        // It did answer: the message must not send the user looking at the network.
        assert!(message.contains("answered, but not in a form"), "{message}");
        assert!(!message.contains("could not reach"), "{message}");
        let record = router.records.nth(1).await;
        assert_eq!(record.outcome, Outcome::RouterError, "{coding}");
        assert_eq!(record.status, Some(502), "{coding}");
        assert_eq!(record.error.as_deref(), Some(message), "{coding}");
        router.stop().await;
    }
}

/// An upstream that echoes the key it was sent in a field the router quotes when it refuses
/// the answer (`Transfer-Encoding: <key>, chunked`) does not hand the key to the client: the
/// 502's message has it `[redacted]`, as the record does, whole and in a stream.
#[tokio::test]
async fn a_key_echoed_in_a_refused_answers_framing_is_not_quoted() {
    let key = "sk-echo-SECRET-0123456789abcdef";
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: {key}, chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    for stream in [false, true] {
        let upstream = EarlyAnswer::answering(answer.clone().into_bytes(), true).await;
        let config = format!("{}    api_key: \"{key}\"\n", early_config(&upstream.url()));
        let router = TestRouter::start(&config).await;
        let response = tokio::time::timeout(
            EARLY_DEADLINE,
            router.chat(&json!({"model": "[early]m", "messages": [], "stream": stream})),
        )
        .await
        .expect("an answer");
        let text = response.text().await.expect("body");
        assert!(text.contains("upstream_unreachable"), "{stream}: {text}");
        assert!(text.contains("[redacted], chunked"), "{stream}: {text}");
        assert!(!text.contains(key), "{stream}: {text}");
        router.stop().await;
    }
}

/// An answer the router refuses for its form says what was wrong with it, and that the
/// upstream answered: a folded header line was "invalid header name", `chunked, chunked` "a
/// transfer coding the router did not ask for", and an over-long trailer section or chunk
/// extension "broke off its answer" though the upstream had sent it all.
#[tokio::test]
async fn an_answer_the_router_cannot_read_is_named_for_what_is_wrong_with_it() {
    let json = crate::support::upstream::chat_completion("m");
    let chunked = |extension: &str, trailers: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}{extension}\r\n{json}\r\n0\r\n{trailers}\r\n",
            json.len()
        )
    };
    let trailers: String = (0..20)
        .map(|i| format!("x-t{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let cases = [
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-f: a\r\n b\r\n\
                 content-length: {}\r\n\r\n{json}",
                json.len()
            ),
            "a folded header line, obs-fold",
        ),
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked, chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
                json.len()
            ),
            "chunked applied more than once",
        ),
        (
            chunked(&format!(";e={}", "c".repeat(5000)), ""),
            "went past a limit: a chunk extension over 4096 bytes",
        ),
        (
            chunked("", &trailers),
            "went past a limit: a trailer section over 16 KiB",
        ),
    ];
    for (answer, said) in cases {
        let upstream = EarlyAnswer::answering(answer.into_bytes(), true).await;
        let router = TestRouter::start(&early_config(&upstream.url())).await;
        let response = tokio::time::timeout(
            EARLY_DEADLINE,
            router.chat(&json!({"model": "[early]m", "messages": []})),
        )
        .await
        .unwrap_or_else(|_| panic!("{said}: no answer"));
        let (status, body) = error_of(response).await;
        assert_eq!(status, 502, "{said}: {body}");
        assert_eq!(body["error"]["code"], "upstream_unreachable", "{said}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with(
                "the upstream early answered, but not in a form the router can read: "
            ),
            "{message}"
        );
        assert!(message.contains(said), "{said}: {message}");
        for misleading in ["broke off", "invalid header name", "did not ask for"] {
            assert!(!message.contains(misleading), "{message}");
        }
        let record = router.records.nth(1).await;
        assert_eq!(record.error.as_deref(), Some(message), "{said}");
        router.stop().await;
    }

    // In a stream, after events went out: the error event says the same, not that the
    // connection failed.
    let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{event}\r\n{:x};e={}\r\n{event}\r\n0\r\n\r\n",
        event.len(),
        event.len(),
        "c".repeat(5000)
    );
    let upstream = EarlyAnswer::answering(answer.into_bytes(), true).await;
    let router = TestRouter::start(&early_config(&upstream.url())).await;
    let response = tokio::time::timeout(
        EARLY_DEADLINE,
        router.chat(&json!({"model": "[early]m", "messages": [], "stream": true})),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(EARLY_DEADLINE, response.text())
        .await
        .expect("the stream ended")
        .expect("text");
    assert!(
        text.contains("answered mid-stream in a form the router cannot read")
            && text.contains("went past a limit: a chunk extension over 4096 bytes"),
        "{text}"
    );
    assert!(!text.contains("connection failed"), "{text}");
    router.stop().await;
}

/// An upstream that reads the whole request and then closes the connection without a byte of
/// answer (a crash, a worker killed mid-generation) was reached: the 502 says it had the
/// request, not that it could not be reached.
#[tokio::test]
async fn an_upstream_closing_after_it_had_the_request_is_not_called_unreachable() {
    let upstream = EarlyAnswer::start_closing_unanswered().await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("no answer from the upstream mock: the upstream "),
        "{message}"
    );
    assert!(
        message.contains("without answering (after it had the request)"),
        "{message}"
    );
    assert!(!message.contains("could not reach"), "{message}");
    assert_eq!(upstream.connections(), 1, "never sent twice");
    router.stop().await;
}

/// An upstream that reads the whole request, sends part of an answer's head (cut inside a
/// field, after whole fields without the blank line, or after the status line alone) and
/// closes: it answered, in a form the router cannot read, and the 502 says so, not "could
/// not reach" nor "without answering"; the record says the same.
#[tokio::test]
async fn an_answer_head_cut_by_the_close_is_said_to_be_unreadable() {
    let cut_heads: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Type: appl",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n",
        b"HTTP/1.1 200",
    ];
    for (n, cut) in cut_heads.into_iter().enumerate() {
        let upstream = EarlyAnswer::answering(cut.to_vec(), false).await;
        let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
        let response = router.chat(&json!({"model": "[mock]m"})).await;
        let (status, body) = error_of(response).await;
        assert_eq!(status, 502, "head {n}");
        assert_eq!(body["error"]["code"], "upstream_unreachable", "head {n}");
        assert_eq!(
            body["error"]["message"],
            "the upstream mock answered, but not in a form the router can read: \
             the upstream closed the connection in the middle of its answer head",
            "head {n}"
        );
        let record = router.records.nth(1).await;
        assert_eq!(record.outcome, Outcome::RouterError, "head {n}");
        assert_eq!(record.status, Some(502), "head {n}");
        assert_eq!(
            record.error.as_deref(),
            body["error"]["message"].as_str(),
            "head {n}"
        );
        assert_eq!(upstream.connections(), 1, "head {n}: never sent twice");
        assert!(record.usage_partial(), "head {n}: it had the request");
        router.stop().await;
    }
}

/// A connection that cannot be made (the upstream's listen queue is full, so its SYNs go
/// unanswered) within a server's `timeout_secs`, shorter than the 10 s connect timeout: the
/// 504 says the connection could not be made within `timeout_secs`, not that the upstream
/// did not answer.
#[tokio::test]
async fn a_connect_outlasting_timeout_secs_is_said_to_be_the_connection() {
    let (addr, _held) = crate::support::unconnectable();
    let url = format!("http://{addr}/v1");
    let router = TestRouter::start(&one_server_config(&url, "    timeout_secs: 0.5\n")).await;
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(
        body["error"]["message"],
        "could not connect to the upstream mock: no connection within 0.5 s (timeout_secs)"
    );
    let record = router.records.nth(1).await;
    assert!(!record.usage_partial(), "never sent: nothing generated");
    router.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let router = TestRouter::start(&one_server_config(&crate::support::closed_url(), "")).await;
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(!message.contains("sk-mock-upstream-key"));
    assert!(
        message.starts_with("could not reach the upstream mock"),
        "{message}"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(502));
    assert!(!record.usage_partial(), "never sent: nothing generated");
    router.stop().await;
}

/// A router-made error carries its request id as `x-request-id` too, which the openai SDKs
/// show as the error's request id.
fn assert_router_request_id(response: &reqwest::Response) {
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    let id = header("x-llmsrouter-request-id").expect("the router's request id");
    assert_eq!(header("x-request-id"), Some(id));
}

/// The router's own 5xx that the same request would get again (a loop's 508) says
/// `x-should-retry: false`, over HTTP/1.1 and HTTP/2, so the openai SDKs do not try it twice
/// more; a 502 or 504 of an upstream that cannot be reached or is slow does not (the next
/// attempt may pass), and neither does an upstream's own 5xx, relayed as it came.
#[tokio::test]
async fn only_the_routers_final_5xx_says_not_to_retry() {
    let upstream = MockUpstream::start(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"boom","type":"server_error","code":null}}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let chat = json!({"model": "[mock]m", "messages": []});
    for http in [client(), h2c_client()] {
        let response = http
            .post(router.url("/v1/chat/completions"))
            .header("x-llmsrouter-hops", "12")
            .json(&chat)
            .send()
            .await
            .expect("send");
        let retry = response.headers().get("x-should-retry").cloned();
        assert_router_request_id(&response);
        let (status, body) = error_of(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (508, Some("loop_detected"))
        );
        assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"false"[..]));

        let response = http
            .post(router.url("/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 500, "the upstream's own");
        assert!(response.headers().get("x-should-retry").is_none());
        assert!(
            response.headers().get("x-request-id").is_none(),
            "the upstream sent none, and the router adds none to its answer"
        );
    }
    assert_eq!(upstream.count(), 2);
    router.stop().await;

    let closed = TestRouter::start(&one_server_config(&crate::support::closed_url(), "")).await;
    let slow = MockUpstream::start(Behavior {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let timing_out =
        TestRouter::start(&one_server_config(&slow.url(), "    timeout_secs: 0.2\n")).await;
    for (router, expected) in [(&closed, 502), (&timing_out, 504)] {
        for http in [client(), h2c_client()] {
            let response = http
                .post(router.url("/v1/chat/completions"))
                .json(&chat)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), expected);
            assert!(
                response.headers().get("x-should-retry").is_none(),
                "{expected}: the next attempt may pass"
            );
            assert_router_request_id(&response);
        }
    }
    closed.stop().await;
    timing_out.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_504_after_timeout_secs() {
    let upstream = MockUpstream::start(Behavior {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.3\n",
    ))
    .await;
    let started = std::time::Instant::now();
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    let (status, body) = error_of(response).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    let message = "the upstream mock did not answer within 0.3 s (timeout_secs)";
    assert_eq!(body["error"]["message"], message);
    let record = router.records.nth(1).await;
    assert_eq!(record.error.as_deref(), Some(message));
    // The upstream had the request and may be generating (and billing) it: tokens unknown.
    assert!(record.usage_partial(), "{record:?}");
    router.stop().await;
}

/// An upstream that sent its answer's head and half its body, then nothing more, is still a
/// 504 at `timeout_secs`, but it did answer: the message says it did not finish, for a 200 and
/// for an error status alike, and so does the record.
#[tokio::test]
async fn an_answer_stuck_after_its_head_did_not_finish_within_timeout_secs() {
    let upstream = MockUpstream::start(Behavior {
        stall_whole: true,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.3\n",
    ))
    .await;
    let message = "the upstream mock did not finish its answer within 0.3 s (timeout_secs)";
    for (n, status) in [200, 500].into_iter().enumerate() {
        upstream.set(Behavior {
            status,
            stall_whole: true,
            ..Default::default()
        });
        let response = router.chat(&json!({"model": "[mock]m"})).await;
        let (got, body) = error_of(response).await;
        assert_eq!(
            (got, &body["error"]["code"]),
            (504, &json!("upstream_timeout"))
        );
        assert_eq!(body["error"]["message"], message, "{status}");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::RouterError);
        assert_eq!(record.status, Some(504));
        assert_eq!(record.error.as_deref(), Some(message));
    }
    router.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_shaped_errors() {
    let router = TestRouter::start("").await;
    let response = client()
        .get(router.url("/v1/chat/completions"))
        .send()
        .await
        .expect("send");
    let (status, _) = error_of(response).await;
    assert_eq!(status, 405);
    let response = client()
        .post(router.url("/"))
        .body("{}")
        .send()
        .await
        .expect("send");
    let (status, _) = error_of(response).await;
    assert_eq!(status, 404);
    router.stop().await;
}

/// A request no route takes by its method or path gets its 405 (with `Allow`) or 404 whatever
/// its body: an oversized body got a 413 instead, which told the client to send less rather
/// than that the method or path was wrong. Its body is not read; a route that serves the
/// request keeps its 413.
#[tokio::test]
async fn a_refused_method_or_path_is_answered_so_whatever_the_body_size() {
    let (upstream, router) = with_body_limit(2000).await;
    let big = format!(r#"{{"model":"[mock]m","pad":"{}"}}"#, "x".repeat(3000));
    let http = client();
    let refused = [
        ("PUT", "/v1/chat/completions", 405, Some("POST")),
        ("HEAD", "/v1/chat/completions", 405, Some("POST")),
        ("PUT", "/health", 405, Some("GET, HEAD")),
        ("POST", "/v1/health", 405, Some("GET, HEAD")),
        ("PUT", "/v1/models", 405, Some("GET, HEAD")),
        ("PUT", "/", 404, None),
        ("POST", "/v1", 404, None),
    ];
    for (method, path, status, allow) in refused {
        for body in [r#"{"model":"[mock]m"}"#.to_owned(), big.clone()] {
            let what = format!("{method} {path} with {} bytes", body.len());
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = http
                .request(method, router.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect(&what);
            assert_eq!(response.status(), status, "{what}");
            assert_eq!(
                response
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().expect("allow")),
                allow,
                "{what}"
            );
        }
    }
    for (method, path) in [("POST", "/v1/chat/completions"), ("GET", "/health")] {
        let response = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                router.url(path),
            )
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 413, "{method} {path}");
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// A route the router answers itself (`/health`, `/v1/models`, `/metrics`) with a body
/// declared larger than `max_body_bytes` gets the same 413 `body_too_large` over HTTP/2 (h2c)
/// as over HTTP/1: over HTTP/2 the body went unread and the answer was 200. A body within the
/// limit is still answered, and one sent without a declared length is left unread over
/// HTTP/2 (the answer does not depend on it).
#[tokio::test]
async fn a_self_answered_route_refuses_a_declared_oversized_body_over_http2_too() {
    let (_upstream, router) = with_body_limit(2000).await;
    let big = "x".repeat(3000);
    for path in ["/health", "/v1/models", "/metrics"] {
        let mut refusals = Vec::new();
        for (protocol, http) in [("HTTP/1", client()), ("HTTP/2", h2c_client())] {
            let what = format!("GET {path} over {protocol}");
            let response = http
                .get(router.url(path))
                .header("content-length", big.len())
                .body(big.clone())
                .send()
                .await
                .expect(&what);
            let expected = if protocol == "HTTP/2" {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            };
            assert_eq!(response.version(), expected, "{what}");
            assert_eq!(response.status(), 413, "{what}");
            let (_, error) = error_of(response).await;
            assert_eq!(error["error"]["code"], "body_too_large", "{what}");
            refusals.push(error);

            let response = http
                .get(router.url(path))
                .body("x".repeat(100))
                .send()
                .await
                .expect(&what);
            assert_eq!(response.status(), 200, "{what} within the limit");
        }
        assert_eq!(refusals[0], refusals[1], "{path}: the same error both ways");
        assert_eq!(refusals[1]["error"]["type"], "invalid_request_error");
    }
    // No declared length: left unread over HTTP/2, answered as without a body.
    let chunks = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from("x".repeat(1000)))),
    );
    let response = h2c_client()
        .get(router.url("/health"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("unsized body");
    assert_eq!(response.status(), 200);
    router.stop().await;
}

/// Sends raw HTTP/1.1, so the path reaches the router exactly as written (clients built on the
/// WHATWG URL rules would resolve dot segments themselves).
async fn raw_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn dot_segments_cannot_escape_the_configured_base_path() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(
        &format!("{}/api/v3", upstream.origin()),
        "",
    ))
    .await;
    for path in [
        "/v1/chat/../../../admin/secret",
        "/v1/%2e%2e/%2E%2e/tenant-b/v1/chat/completions",
        "/v1/./chat/completions",
        // URL parsers read a backslash as '/': these climbed out of the base path.
        "/v1/a\\..\\..\\admin/keys",
        "/v1\\..\\..\\secret",
        // Behind an encoded slash or backslash: a server that decodes `%2F` before it
        // resolves dot segments climbs out there.
        "/v1/..%2f..%2fadmin",
        "/v1/%2e%2e%2F%2E%2e%2fadmin",
        "/v1/a%5c..%5c..%5cadmin",
        "/v1/chat%2F.%2Fcompletions",
        // Path parameters after a dot segment: Tomcat and Spring read `..;` as `..`.
        "/v1/..;/admin",
        "/v1/..;x/..;/admin",
        "/v1/%2e%2e;/admin",
        "/v1/..%3B%2Fadmin",
        // Segments a server may read as `..`: one that drops the spaces and dots that end a
        // name (Windows), trims white space, or stops at a NUL (C), or decodes overlong
        // UTF-8 (IIS did: `%c0%ae` is `.`, `%c0%af` is `/`).
        "/v1/..%20/..%20/admin",
        "/v1/.../.../admin",
        "/v1/..%09/admin",
        "/v1/..%00/admin",
        "/v1/..%00.json/admin",
        "/v1/%c0%ae%c0%ae/%C0%AE%C0%AE/admin",
        "/v1/%e0%80%ae%e0%80%ae/admin",
        "/v1/..%c0%af..%c0%afadmin",
    ] {
        let answer = raw_post(router.addr, path, r#"{"model":"[mock]m"}"#).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"code\":\"invalid_request\""), "{answer}");
    }
    assert_eq!(
        upstream.count(),
        0,
        "nothing reached the upstream, with or without its key"
    );
    let answer = raw_post(
        router.addr,
        "/v1/chat/completions",
        r#"{"model":"[mock]m"}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last().path, "/api/v3/chat/completions");
    // An encoded slash with no dot segment behind it is forwarded as it came.
    let answer = raw_post(router.addr, "/v1/a..b%2F.c", r#"{"model":"[mock]m"}"#).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last().path, "/api/v3/a..b%2F.c");
    // Dots inside a name are no dot segment.
    let answer = raw_post(
        router.addr,
        "/v1/x..%20/v1.5.../file..txt",
        r#"{"model":"[mock]m"}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last().path, "/api/v3/x..%20/v1.5.../file..txt");
    router.stop().await;
}

/// An upstream that compresses its error anyway (the router asks for `identity`): the body is
/// decoded, redacted and, unless in OpenAI's shape already, wrapped, and reaches the client
/// uncompressed, with the upstream's message (not gzip bytes read as text) and its other
/// headers. One in a coding the router cannot read gets a message that says so.
#[tokio::test]
async fn a_compressed_error_body_is_decoded_then_relayed() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let openai_shaped = r#"{"error":{"message":"Rate limit reached","type":"rate_limit","code":"rate_limit_exceeded"}}"#;
    let echoing = r#"{"error":{"message":"Incorrect API key provided: sk-mock-upstream-key"}}"#;
    let redacted = r#"{"error":{"message":"Incorrect API key provided: [redacted]"}}"#;
    // (status, coding, body, the body relayed as is when OpenAI-shaped, the message)
    let cases = [
        (
            400,
            "gzip",
            gzip(br#"{"detail":"gzipped error text"}"#),
            None,
            "gzipped error text",
        ),
        (
            429,
            "gzip",
            gzip(openai_shaped.as_bytes()),
            Some(openai_shaped),
            "Rate limit reached",
        ),
        (
            503,
            "deflate",
            zlib(b"overloaded, try later"),
            None,
            "overloaded, try later",
        ),
        (
            401,
            "gzip",
            gzip(echoing.as_bytes()),
            Some(redacted),
            "Incorrect API key provided: [redacted]",
        ),
        (
            403,
            "br",
            brotli(echoing.as_bytes()),
            Some(redacted),
            "Incorrect API key provided: [redacted]",
        ),
        (
            401,
            "zstd",
            zstd(echoing.as_bytes()),
            Some(redacted),
            "Incorrect API key provided: [redacted]",
        ),
        (
            502,
            "br",
            b"\xff\xff\xff\xffnot br".to_vec(),
            None,
            "the upstream answered HTTP 502 with a br-encoded body the router cannot read",
        ),
        (
            502,
            "compress",
            b"\x1f\x9d\x90".to_vec(),
            None,
            "the upstream answered HTTP 502 with a compress-encoded body the router cannot read",
        ),
    ];
    for (n, (status, coding, compressed, exact, message)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            status,
            raw_body: Some(compressed),
            headers: vec![
                ("content-encoding".into(), coding.into()),
                ("retry-after".into(), "3".into()),
            ],
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{coding}"
        );
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let text = response.text().await.expect("body");
        if let Some(exact) = exact {
            assert_eq!(text, exact);
        }
        let error: Value = serde_json::from_str(&text).expect("JSON");
        let relayed = error["error"]["message"].as_str().expect("message");
        assert!(relayed.starts_with(message), "{status}: {relayed}");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        let recorded = record.error.as_deref().expect("error text");
        assert!(recorded.starts_with(message), "{status}: {recorded}");
    }
    router.stop().await;
}

#[tokio::test]
async fn an_upstream_error_echoing_the_providers_key_reaches_the_client_redacted() {
    let upstream = MockUpstream::start(Behavior {
        status: 401,
        body: Some(r#"{"error":{"message":"Incorrect API key provided: sk-mock-upstream-key. Check it.","type":"invalid_request_error","code":"invalid_api_key"}}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    assert_eq!(response.status(), 401);
    let text = response.text().await.expect("body");
    assert!(!text.contains("sk-mock-upstream-key"), "{text}");
    assert!(
        text.contains("Incorrect API key provided: [redacted]. Check it."),
        "{text}"
    );
    router.stop().await;
}

/// The same key echoed under a 200: in a whole answer that is `{"error": ...}`, and in an
/// error event inside a stream. Both reach the client redacted; the events around the
/// error, and answers that report no error, pass byte for byte.
#[tokio::test]
async fn a_200_error_echoing_the_providers_key_reaches_the_client_redacted() {
    let echoed = r#"{"error":{"message":"provider rejected key Bearer sk-mock-upstream-key"}}"#;
    let upstream = MockUpstream::start(Behavior {
        body: Some(echoed.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        echoed.replace("sk-mock-upstream-key", "[redacted]")
    );

    let before = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    let error_event = format!("data: {echoed}\n\n");
    upstream.set(Behavior {
        raw_chunks: Some(vec![before.into(), error_event.clone().into_bytes()]),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]m", "stream": true}))
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert_eq!(
        text,
        format!(
            "{before}{}",
            error_event.replace("sk-mock-upstream-key", "[redacted]")
        )
    );
    router.stop().await;
}

/// The same 200 `{"error": ...}` compressed (the upstream ignored `identity`): the client
/// gets it decoded and without the key (and without `Content-Encoding`), where the key went
/// through inside the compressed bytes. A compressed answer with no key in it still goes
/// as it came to a client that takes its coding.
#[tokio::test]
async fn a_compressed_200_error_echoing_the_providers_key_reaches_the_client_decoded_and_redacted()
{
    let echoed = r#"{"error":{"message":"provider rejected key Bearer sk-mock-upstream-key"}}"#;
    let compressed_answer = |coding: &str, raw: Vec<u8>| Behavior {
        raw_body: Some(raw),
        headers: vec![
            ("content-encoding".into(), coding.into()),
            ("content-type".into(), "application/json".into()),
        ],
        ..Default::default()
    };
    let upstream = MockUpstream::start(compressed_answer("gzip", gzip(echoed.as_bytes()))).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (coding, raw) in [
        ("gzip", gzip(echoed.as_bytes())),
        ("deflate", zlib(echoed.as_bytes())),
        ("br", brotli(echoed.as_bytes())),
        ("zstd", zstd(echoed.as_bytes())),
    ] {
        upstream.set(compressed_answer(coding, raw));
        let response = router.chat(&json!({"model": "[mock]m"})).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{coding}"
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.text().await.expect("body"),
            echoed.replace("sk-mock-upstream-key", "[redacted]"),
            "{coding}"
        );
    }
    let fine = r#"{"choices":[{"message":{"content":"hi"}}]}"#;
    let compressed = gzip(fine.as_bytes());
    upstream.set(compressed_answer("gzip", compressed.clone()));
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.expect("body"), compressed);
    let record = router.records.nth(5).await;
    assert_eq!(record.response.content, "hi", "the record reads it decoded");
    router.stop().await;
}

/// A compressed 200 `{"error": ...}` echoing the key that decodes to more than 4 MiB (a long
/// error, padded): it is searched as far as its record reads (64 MiB), so the key does not
/// pass, even to a client that takes the coding; it went as it came, searched up to 4 MiB
/// only, while a 4xx so large was replaced by a message.
#[tokio::test]
async fn a_large_compressed_200_error_echoing_the_key_is_searched_whole() {
    let echoed = format!(
        r#"{{"error":{{"message":"provider rejected key Bearer sk-mock-upstream-key","detail":"{}"}}}}"#,
        " ".repeat(5 << 20)
    );
    let upstream = MockUpstream::start(Behavior {
        raw_body: Some(gzip(echoed.as_bytes())),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    let text = response.text().await.expect("body");
    assert_eq!(text, echoed.replace("sk-mock-upstream-key", "[redacted]"));
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    router.stop().await;
}

/// A compressed 200 `{"error": ...}` echoing the key in its first bytes that decodes to more
/// than the 64 MiB its record reads (a few hundred KB of gzip): it is searched in those 64
/// MiB, and since it can go neither decoded (too large) nor as it came (the key would pass),
/// the client gets the router's error in its place, under the same status, as a 4xx error
/// body over its limit gets a message. It went as it came, unsearched, key and all. One
/// without a key in its first 64 MiB still goes as it came.
#[tokio::test]
async fn a_compressed_200_error_echoing_the_key_over_64_mib_decoded_is_replaced() {
    // Members of 1 MiB each: one made, sent 65 times.
    let mebibyte = gzip(&vec![b' '; 1 << 20]);
    let opening = |message: &str| {
        let mut sent = gzip(format!(r#"{{"error":{{"message":"{message}","detail":""#).as_bytes());
        for _ in 0..65 {
            sent.extend_from_slice(&mebibyte);
        }
        sent.extend(gzip(br#""}}"#));
        sent
    };
    let echoed = opening("provider rejected key Bearer sk-mock-upstream-key");
    let upstream = MockUpstream::start(Behavior {
        raw_body: Some(echoed),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let ask = || {
        client()
            .post(router.url("/v1/chat/completions"))
            .header("accept-encoding", "gzip")
            .json(&json!({"model": "[mock]m"}))
            .send()
    };
    let response = ask().await.expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.expect("body");
    assert!(!text.contains("sk-mock-upstream-key"), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["type"], "upstream_error");
    let message = body["error"]["message"].as_str().expect("message");
    // Word for word: a line of the message that lost its `\` once carried two runs of 18
    // spaces.
    assert_eq!(
        message,
        "the upstream's gzip-encoded answer decodes to more than 64 MiB and reports an error \
         that echoes a configured key: not relayed, as the router can send it neither decoded \
         (too large) nor as it came (the key would pass)"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.error.as_deref(), Some(message));

    let clean = opening("provider failed");
    upstream.set(Behavior {
        raw_body: Some(clean.clone()),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    });
    let response = ask().await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.expect("body"), clean);
    router.stop().await;
}

/// An error event echoing the key in a compressed stream (gzip, deflate, br, zstd, or
/// stacked codings: `gzip, br`): the stream is decoded as it arrives, so the event reaches
/// the client redacted (br and zstd streams, then stacked ones, passed through unread, the
/// key with them), and the record is the upstream's error.
#[tokio::test]
async fn a_compressed_streams_error_event_echoing_the_providers_key_reaches_the_client_redacted() {
    let echoed = r#"{"error":{"message":"provider rejected key Bearer sk-mock-upstream-key"}}"#;
    let before = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    let error_event = format!("data: {echoed}\n\n");
    let events = [before.as_bytes().to_vec(), error_event.clone().into_bytes()];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let stacked = |inner: &str, outer: &str| {
        let chunks = compress_flushed(inner, &events);
        compress_flushed(outer, &chunks)
    };
    let cases = [
        ("gzip", compress_flushed("gzip", &events)),
        ("deflate", compress_flushed("deflate", &events)),
        ("br", compress_flushed("br", &events)),
        ("zstd", compress_flushed("zstd", &events)),
        ("gzip, br", stacked("gzip", "br")),
        ("deflate, zstd", stacked("deflate", "zstd")),
    ];
    for (n, (coding, chunks)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(chunks),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "stream": true}))
            .await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{coding}"
        );
        assert_eq!(
            response.text().await.expect("body"),
            format!(
                "{before}{}",
                error_event.replace("sk-mock-upstream-key", "[redacted]")
            ),
            "{coding}"
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{coding}");
    }
    router.stop().await;
}

/// A whole answer whose compressed data breaks off only after one whole JSON document (a
/// gzip answer without its 8-byte trailer, or part of it; deflate without its checksum):
/// curl and the openai SDKs read it without complaint, and so does its record (usage, text),
/// which was the upstream's error with the usage lost. A client that takes the coding gets
/// it as it came; one that does not, the document. A 200 `{"error": ...}` cut so, or cut
/// short anywhere after the key it echoes, is searched in what decoded: the key does not
/// pass, where it passed unsearched in the compressed bytes.
#[tokio::test]
async fn a_compressed_answer_cut_after_its_json_is_read_as_clients_read_it() {
    let answer = crate::support::upstream::chat_completion("m");
    let cut = |mut compressed: Vec<u8>, by: usize| {
        compressed.truncate(compressed.len() - by);
        compressed
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let send = |raw: Vec<u8>, coding: &str, accepts: Option<&str>| {
        upstream.set(Behavior {
            raw_body: Some(raw),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let mut request = client().post(router.url("/v1/chat/completions"));
        if let Some(accepts) = accepts {
            request = request.header("accept-encoding", accepts);
        }
        request.json(&json!({"model": "[mock]m"})).send()
    };
    let cases = [
        ("gzip", cut(gzip(answer.as_bytes()), 8)),
        ("gzip", cut(gzip(answer.as_bytes()), 4)),
        ("deflate", cut(zlib(answer.as_bytes()), 4)),
    ];
    let mut n = 0;
    for (coding, raw) in cases {
        for accepts in [Some(coding), None] {
            let response = send(raw.clone(), coding, accepts).await.expect("send");
            assert_eq!(response.status(), 200);
            let case = format!("{coding} cut, {} bytes, to {accepts:?}", raw.len());
            let encoding = response.headers().get("content-encoding").cloned();
            let got = response.bytes().await.expect("body");
            if accepts.is_some() {
                assert_eq!(encoding.expect("as it came"), coding, "{case}");
                assert_eq!(got, raw, "{case}");
            } else {
                assert!(encoding.is_none(), "{case}");
                assert_eq!(got, answer.as_bytes(), "{case}");
            }
            n += 1;
            let record = router.records.nth(n).await;
            assert_eq!(
                record.outcome,
                Outcome::Success,
                "{case}: {:?}",
                record.error
            );
            let usage = record.response.usage.clone().expect("usage read");
            assert_eq!(usage.total, crate::support::upstream::PROMPT_TOKENS + 2);
            assert_eq!(record.response_body.as_deref(), Some(answer.as_bytes()));
        }
    }
    // The key echoed in a 200 error whose gzip is cut: in its trailer, or past the key.
    let echoed = r#"{"error":{"message":"provider rejected key Bearer sk-mock-upstream-key"}}"#;
    // Digits that do not shrink much: half of the gzip is well past the key.
    let mut seed: u64 = 7;
    let noise: String = (0..4000)
        .map(|_| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(b'0' + (seed >> 59) as u8 % 10)
        })
        .collect();
    let padded = format!(
        r#"{{"error":{{"message":"provider rejected key Bearer sk-mock-upstream-key","detail":"{noise}"}}}}"#
    );
    let half = gzip(padded.as_bytes());
    let half = cut(half.clone(), half.len() / 2);
    for (raw, whole) in [(cut(gzip(echoed.as_bytes()), 8), true), (half, false)] {
        for accepts in [Some("gzip"), None] {
            let response = send(raw.clone(), "gzip", accepts).await.expect("send");
            assert_eq!(response.status(), 200);
            let case = format!("whole {whole}, {} bytes, to {accepts:?}", raw.len());
            let encoding = response.headers().get("content-encoding").cloned();
            assert!(encoding.is_none(), "{case}: {encoding:?}");
            let text = response.text().await.expect("body");
            assert!(!text.contains("sk-mock-upstream-key"), "{text}");
            assert!(
                text.starts_with(
                    r#"{"error":{"message":"provider rejected key Bearer [redacted]""#
                ),
                "{text}"
            );
            if whole {
                assert_eq!(text, echoed.replace("sk-mock-upstream-key", "[redacted]"));
            }
        }
    }
    router.stop().await;
}

/// A 200 whole answer in gzip, deflate, br or zstd whose compressed data is corrupt, or cut
/// short: the client gets it as it came (status, coding, bytes), and the record is the
/// upstream's error saying the coding could not be undone, as for such a stream, not a
/// success with no usage.
#[tokio::test]
async fn a_corrupt_compressed_whole_answer_is_recorded_as_the_upstreams_error() {
    let answer = crate::support::upstream::chat_completion("m");
    let corrupt = |mut compressed: Vec<u8>, header: usize| {
        // 0xFF after the header: a deflate block of the reserved type 3.
        compressed[header..].fill(0xFF);
        compressed
    };
    let cut = |mut compressed: Vec<u8>| {
        compressed.truncate(compressed.len() / 2);
        compressed
    };
    let cases = [
        ("gzip", corrupt(gzip(answer.as_bytes()), 10), "corrupt"),
        ("gzip", cut(gzip(answer.as_bytes())), "ended before"),
        ("deflate", corrupt(zlib(answer.as_bytes()), 2), "corrupt"),
        ("br", cut(brotli(answer.as_bytes())), "ended before"),
        ("zstd", corrupt(zstd(answer.as_bytes()), 6), "corrupt"),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (n, (coding, raw, says)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(raw.clone()),
            headers: vec![
                ("content-encoding".into(), coding.into()),
                ("content-type".into(), "application/json".into()),
            ],
            ..Default::default()
        });
        let response = router.chat(&json!({"model": "[mock]m"})).await;
        assert_eq!(response.status(), 200, "{coding} {says}");
        assert_eq!(response.headers()["content-encoding"], coding);
        assert_eq!(response.bytes().await.expect("body"), raw, "as it came");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{coding} {says}");
        assert_eq!(record.status, Some(200), "{coding} {says}");
        let error = record.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("the upstream's compressed answer could not be decoded: ")
                && error.contains(coding)
                && error.contains(says),
            "{coding} {says}: {error}"
        );
        assert_eq!(
            record.response.content,
            format!("<binary, {coding}, {} bytes>", raw.len())
        );
    }
    router.stop().await;
}

/// An upstream (or a gateway before it) that reflects request headers into its answer's:
/// the client gets the provider's key redacted in them, in a whole answer, an error and a
/// stream alike, and every other header as it came.
#[tokio::test]
async fn an_answer_header_echoing_the_providers_key_reaches_the_client_redacted() {
    let echoing = |status: u16| Behavior {
        status,
        headers: vec![
            ("x-echo-auth".into(), "Bearer sk-mock-upstream-key".into()),
            ("x-request-id".into(), "req-123".into()),
            // In a field's name: the field is left out.
            ("x-sk-mock-upstream-key".into(), "1".into()),
        ],
        ..Default::default()
    };
    let upstream = MockUpstream::start(echoing(200)).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (status, stream) in [(200, false), (429, false), (200, true)] {
        upstream.set(echoing(status));
        let response = router
            .chat(&json!({"model": "[mock]m", "stream": stream}))
            .await;
        assert_eq!(response.status(), status);
        let case = format!("{status} stream={stream}");
        assert_eq!(
            response.headers()["x-echo-auth"],
            "Bearer [redacted]",
            "{case}"
        );
        assert_eq!(response.headers()["x-request-id"], "req-123", "{case}");
        assert!(
            response
                .headers()
                .keys()
                .all(|name| !name.as_str().contains("sk-mock-upstream-key")),
            "{case}"
        );
        let text = response.text().await.expect("body");
        assert!(!text.contains("sk-mock-upstream-key"), "{case}");
    }
    router.stop().await;
}

/// Keys for the request-id test: `k-other` may use only a provider `other`; any other key is
/// unknown.
struct OnlyOther;

impl llmsrouter::auth::KeyIndex for OnlyOther {
    fn find(&self, key: &str) -> Option<llmsrouter::auth::Caller> {
        (key == "k-other").then(|| llmsrouter::auth::Caller {
            user: Some("olga".into()),
            permissions: llmsrouter::auth::Permissions::Only(["other".to_owned()].into()),
        })
    }
}

/// The router's own refusals on a proxied route (bad body, unroutable model, too large,
/// compressed, unknown key, forbidden provider) carry an `x-llmsrouter-request-id` as routed
/// answers do, over HTTP/1 and HTTP/2, so a user can quote one; they had none. A fresh id
/// each, and still no record: the only record is the routed request's.
#[tokio::test]
async fn router_made_errors_on_proxied_routes_carry_a_request_id() {
    let (upstream, open) = with_body_limit(10_000).await;
    let with_accounts = TestRouter::start_with(
        &format!(
            "{}settings:\n  max_body_bytes: 10000\n",
            one_server_config(&upstream.url(), "")
        ),
        |state| state.keys = Some(std::sync::Arc::new(OnlyOther)),
    )
    .await;
    let too_big = format!(r#"{{"model":"[mock]m","pad":"{}"}}"#, "x".repeat(20_000));
    let model = |name: &str| format!(r#"{{"model":"{name}"}}"#).into_bytes();
    // (router, path, key, body gzipped, body, status)
    type Case<'a> = (&'a TestRouter, &'a str, Option<&'a str>, bool, Vec<u8>, u16);
    let chat = "/v1/chat/completions";
    let cases: Vec<Case<'_>> = vec![
        (&open, chat, None, false, b"not json".to_vec(), 400),
        (
            &open,
            "/v1/completions",
            None,
            false,
            model("[nosuch]x"),
            404,
        ),
        (&open, chat, None, false, model("gpt-4o"), 404),
        (
            &open,
            "/v1/embeddings",
            None,
            false,
            too_big.clone().into(),
            413,
        ),
        (
            &open,
            "/chat/completions",
            None,
            true,
            model("[mock]m"),
            400,
        ),
        (&with_accounts, chat, None, false, model("[mock]m"), 401),
        (
            &with_accounts,
            chat,
            Some("k-nope"),
            false,
            model("[mock]m"),
            401,
        ),
        (
            &with_accounts,
            chat,
            Some("k-other"),
            false,
            model("[mock]m"),
            403,
        ),
        (
            &with_accounts,
            chat,
            Some("k-other"),
            false,
            too_big.into(),
            413,
        ),
    ];
    let http1 = client();
    let http2 = h2c_client();
    let mut ids = std::collections::HashSet::new();
    for (router, path, key, gzipped, body, status) in &cases {
        for (version, http) in [("HTTP/1", &http1), ("HTTP/2", &http2)] {
            let mut request = http
                .post(router.url(path))
                .header("content-type", "application/json");
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request = match gzipped {
                true => request.header("content-encoding", "gzip").body(gzip(body)),
                false => request.body(body.clone()),
            };
            let response = request.send().await.expect("send");
            let id = response
                .headers()
                .get("x-llmsrouter-request-id")
                .unwrap_or_else(|| panic!("{version} {path} {status}: no request id"))
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(ids.insert(id), "a fresh id each");
            let (got, _) = error_of(response).await;
            assert_eq!(got, *status, "{version} {path}");
        }
    }
    // A body whose end is ambiguous (HTTP/1 only) is refused on a proxied route with an id
    // too; on a route that is not proxied, without one.
    for (path, with_id) in [("/v1/chat/completions", true), ("/v1/models", false)] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(open.addr)
            .await
            .expect("connect");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let has_id = answer.contains("\r\nx-llmsrouter-request-id: ");
        assert_eq!(has_id, with_id, "{path}: {answer}");
    }
    let forwarded = upstream
        .received()
        .iter()
        .filter(|r| !r.path.ends_with("/models"))
        .count();
    assert_eq!(forwarded, 0, "nothing refused reached the upstream");
    // Routed requests keep their record; the refusals above made none.
    let response = open
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let routed = crate::telemetry::request_id(&response);
    assert_eq!(open.records.nth(1).await.request_id, routed);
    let (open_records, accounts_records) = (open.records.clone(), with_accounts.records.clone());
    // Stopping drains each recorder: a record of a refusal would be handed over by now.
    with_accounts.stop().await;
    open.stop().await;
    assert_eq!(open_records.all().len(), 1);
    assert_eq!(accounts_records.all().len(), 0);
}

/// A web page of another site can make a visitor's browser post a form or a text body to a
/// router on their machine without asking (no CORS preflight): refused with 403 before it
/// reaches a provider, over HTTP/1 and HTTP/2. A browser's JSON request (which a browser
/// would only send after a preflight) and a script's form-typed post without `Origin` pass.
#[tokio::test]
async fn a_cross_site_browser_post_is_refused_before_the_upstream() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = r#"{"model":"[mock]m","messages":[{"role":"user","content":"hi"}]}"#;
    let origin = Some("https://elsewhere.example");
    let cases: [(Option<&str>, Option<&str>, u16); 7] = [
        (origin, Some("text/plain;charset=UTF-8"), 403),
        (origin, Some("application/x-www-form-urlencoded"), 403),
        (origin, Some("Multipart/Form-Data; boundary=x"), 403),
        (origin, None, 403),
        (origin, Some("application/json"), 200),
        (None, Some("application/x-www-form-urlencoded"), 200),
        (None, None, 200),
    ];
    let mut forwarded = 0;
    for (version, http) in [("HTTP/1", client()), ("HTTP/2", h2c_client())] {
        for (origin, content_type, status) in cases {
            let mut request = http.post(router.url("/v1/chat/completions")).body(body);
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.expect("send");
            let case = format!("{version} {origin:?} {content_type:?}");
            assert!(
                response.headers().contains_key("x-llmsrouter-request-id"),
                "{case}"
            );
            if status == 403 {
                let (got, body) = error_of(response).await;
                assert_eq!(got, 403, "{case}");
                assert_eq!(body["error"]["code"], "cross_site_request", "{case}");
                assert_eq!(body["error"]["type"], "permission_error", "{case}");
            } else {
                assert_eq!(response.status(), 200, "{case}");
                forwarded += 1;
            }
            assert_eq!(
                upstream.count(),
                forwarded,
                "{case}: only the passing ones arrived"
            );
        }
    }
    router.stop().await;
}

/// No key is anyone's: every request is refused with 401.
pub(crate) struct NobodysKey;

impl llmsrouter::auth::KeyIndex for NobodysKey {
    fn find(&self, _presented_key: &str) -> Option<llmsrouter::auth::Caller> {
        None
    }
}

/// Over HTTP/2 a request refused before its body is read (here a key nobody has, with a
/// 3 MB prompt) gets its 401 after the router read the rest of the body, as over HTTP/1.
/// Before, the router answered and reset the stream while the client was still sending
/// (past the first flow-control window): httpx, and so the openai SDK over HTTP/2, reports
/// that as a connection error, never the 401, and retries the upload.
#[tokio::test]
async fn an_http2_refusal_reads_the_body_the_client_is_still_sending() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.keys = Some(std::sync::Arc::new(NobodysKey));
    })
    .await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 48;
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let body = futures_util::stream::iter(0..CHUNKS).map(move |i| {
        counted.fetch_add(CHUNK, Ordering::SeqCst);
        let piece = if i == 0 {
            let mut first =
                br#"{"model":"[mock]m","messages":[{"role":"user","content":""#.to_vec();
            first.resize(CHUNK, b'a');
            first
        } else if i == CHUNKS - 1 {
            let mut last = vec![b'a'; CHUNK - 4];
            last.extend_from_slice(br#""}]}"#);
            last
        } else {
            vec![b'a'; CHUNK]
        };
        Ok::<_, std::io::Error>(bytes::Bytes::from(piece))
    });
    let response = h2c_client()
        .post(router.url("/v1/chat/completions"))
        .bearer_auth("sk-lr-nobodys00000000000000000000000000")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("the refusal, not a reset stream");
    let (status, error) = error_of(response).await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        CHUNK * CHUNKS,
        "the whole body was read"
    );
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// The Python version's `/api/user/bypass` (a per-user model pin) does not exist here: it is
/// refused with a 404 that says so, for any method, and never proxied (it went to the
/// provider its body named, with that provider's key, and looked set). `ENABLE_BYPASS=true`
/// is warned of by `serve` and `check`.
#[tokio::test]
async fn the_python_bypass_endpoint_is_refused_and_its_switch_warned_of() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config(&upstream.url(), "");
    let router = crate::support::RouterProcess::start(
        Some(&config),
        &[
            ("ENABLE_BYPASS", "true"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let warning = "ENABLE_BYPASS is ignored: llmsrouter has no bypass";
    assert!(router.stderr().contains(warning), "{}", router.stderr());
    for path in ["/api/user/bypass", "/v1/api/user/bypass"] {
        let url = router.url(path);
        let post = client()
            .post(&url)
            .json(&json!({"model": "[mock]pinned"}))
            .send()
            .await
            .expect("post");
        let get = client().get(&url).send().await.expect("get");
        for response in [post, get] {
            let (status, body) = error_of(response).await;
            assert_eq!(status, 404, "{body}");
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("no bypass endpoint"), "{message}");
        }
    }
    assert!(upstream.received().is_empty(), "nothing was proxied");

    // Whatever the Python version took for on: any value but a false one, in quotes too
    // (`docker --env-file` keeps a `.env`'s quotes).
    for on in ["yes", "on", "\"true\"", "'1'"] {
        let (code, out, err) =
            crate::support::run_cli(router.path(), &["check"], &[("ENABLE_BYPASS", on)]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(warning), "{on}: warnings on stderr: {err}");
        assert!(!out.contains(warning), "the result alone on stdout: {out}");
    }
    for off in ["false", "\"false\"", "0", "No"] {
        let (code, out, err) =
            crate::support::run_cli(router.path(), &["check"], &[("ENABLE_BYPASS", off)]);
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.contains("ENABLE_BYPASS") && !err.contains("ENABLE_BYPASS"),
            "{off}: {out}{err}"
        );
    }
}

/// What the panics below say: it must reach neither the client nor the log.
const PANIC_SECRET: &str = "sk-a-key-the-panic-quoted";

async fn panics() -> &'static str {
    panic!("{PANIC_SECRET}")
}

/// An app with a handler that panics before its answer (`/panics`), one whose body panics
/// after its first piece went out (`/panics-midway`), and a plain one (`/fine`). No handler
/// of the router's own is known to panic, and none is made to: the router's connection
/// code serves this app in their place.
fn panicking_app() -> axum::Router {
    use axum::routing::get;
    let midway = || async {
        let pieces = futures_util::stream::iter(0..2).map(|i| {
            assert!(i == 0, "{PANIC_SECRET}");
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"first part"))
        });
        axum::body::Body::from_stream(pieces)
    };
    axum::Router::new()
        .route("/fine", get(|| async { "fine" }))
        .route("/panics", get(panics))
        .route("/panics-midway", get(midway))
}

/// Serves `app` on a loopback port as the router serves its client connections (its own
/// HTTP/1, HTTP/2 through hyper), with the router's state otherwise; returns the address and
/// the count of connections accepted.
async fn serve_app(
    app: axum::Router,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use llmsrouter::hard_stop::HardStop;
    use llmsrouter::http1::server::{Service, serve_connection};
    use llmsrouter::state::{AppState, build_http_client};

    let config = llmsrouter::config::Config::parse(
        &one_server_config(&crate::support::closed_url(), ""),
        &|_| None,
    )
    .expect("config");
    let recorder = llmsrouter::record::Recorder::disabled();
    let state = AppState::new(config, build_http_client().expect("client"), recorder);
    let service = Arc::new(Service {
        app,
        state: Arc::new(state.expect("state")),
        draining: HardStop::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(tcp, service.clone()));
        }
    });
    (addr, accepted)
}

/// Writes `request` on a new connection to `addr` and reads until the router closes it.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    // A reset ends the read too: what came before it is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the router closed the connection within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_panic_in_a_request_is_answered_500_and_logged_without_its_message() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (logged, _guard) = Logged::capture();
    let (addr, _) = serve_app(panicking_app()).await;
    // Open across the panic, and served after it.
    let mut other = tokio::net::TcpStream::connect(addr).await.expect("connect");

    let answer = exchange(
        addr,
        "GET /fine HTTP/1.1\r\nHost: r\r\n\r\nGET /panics HTTP/1.1\r\nHost: r\r\n\r\n",
    )
    .await;
    // The request before it on the connection is answered as ever; the one that panicked
    // gets the router's 500, and the connection closes after it.
    let (first, second) = answer.split_once("HTTP/1.1 500").expect(&answer);
    assert!(first.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(first.ends_with("fine"), "{answer}");
    assert!(second.contains("connection: close"), "{answer}");
    assert!(
        second.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(second.contains("x-should-retry: false"), "{answer}");
    let (_, body) = second.split_once("\r\n\r\n").expect(&answer);
    let body: Value = serde_json::from_str(body).expect(&answer);
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("internal error in the router"),
        "{body}"
    );
    assert!(!answer.contains(PANIC_SECRET), "{answer}");

    let request = "GET /fine HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n";
    other.write_all(request.as_bytes()).await.expect("write");
    let mut served = String::new();
    tokio::time::timeout(Duration::from_secs(10), other.read_to_string(&mut served))
        .await
        .expect("answered within 10 s")
        .expect("read");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(served.ends_with("fine"), "{served}");

    let log = logged.text();
    let line = log
        .lines()
        .find(|line| line.contains("panicked"))
        .expect(&log);
    assert!(line.contains("ERROR"), "{log}");
    assert!(line.contains(&format!("panicked at {}:", file!())), "{log}");
    assert!(line.contains("answered 500 internal_error"), "{log}");
    assert!(!log.contains(PANIC_SECRET), "{log}");
}

#[tokio::test]
async fn a_panic_after_the_answer_began_cuts_it() {
    let (logged, _guard) = Logged::capture();
    let (addr, _) = serve_app(panicking_app()).await;
    let answer = exchange(addr, "GET /panics-midway HTTP/1.1\r\nHost: r\r\n\r\n").await;
    // The head and the first piece went out; no last chunk, nor a 500, follows them.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("transfer-encoding: chunked"), "{answer}");
    assert!(answer.ends_with("first part\r\n"), "{answer}");
    assert!(!answer.contains(PANIC_SECRET), "{answer}");
    let log = logged.text();
    assert!(log.contains("its answer was under way and is cut"), "{log}");
    assert!(!log.contains(PANIC_SECRET), "{log}");
}

#[tokio::test]
async fn over_http2_a_panic_is_answered_500_and_the_connection_serves_on() {
    let (logged, _guard) = Logged::capture();
    let (addr, accepted) = serve_app(panicking_app()).await;
    let client = h2c_client();
    let url = |path: &str| format!("http://{addr}{path}");

    let response = client.get(url("/panics")).send().await.expect("send");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");

    // Begun, then cut: the stream is reset, the body read fails.
    let response = client
        .get(url("/panics-midway"))
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "a cut answer read as whole"
    );

    // The same connection goes on serving.
    let response = client.get(url("/fine")).send().await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "fine");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    let log = logged.text();
    assert!(log.contains("answered 500 internal_error"), "{log}");
    assert!(log.contains("its stream is reset"), "{log}");
    assert!(log.contains(&format!("panicked at {}:", file!())), "{log}");
    assert!(!log.contains(PANIC_SECRET), "{log}");
}
