//! Non-stream forwarding: what reaches the upstream, what comes back, and the record.

use llmsrouter::record::Outcome;
use llmsrouter::routing::RouteMode;
use serde_json::json;

use crate::support::upstream::{
    Behavior, MockUpstream, PROMPT_TOKENS, brotli, chat_completion, gzip, zlib, zstd,
};
use crate::support::{TestRouter, client, one_server_config, post_json};

#[tokio::test]
async fn alias_request_reaches_upstream_with_only_the_model_changed() {
    let upstream = MockUpstream::start(Behavior {
        headers: vec![
            ("x-ratelimit-remaining-requests".into(), "42".into()),
            ("x-request-id".into(), "up-123".into()),
        ],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    headers: {X-Title: \"llmsrouter-test\"}\n",
    ))
    .await;
    let body = r#"{"model": "[mock]google/gemini-2.5",  "messages":[{"role":"user","content":"hi","cache_control":{"type":"ephemeral"}}],"reasoning_content":null,"vendor_x":{"a":[1,2]},"temperature":0.2}"#;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-key")
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "42");
    assert_eq!(response.headers()["x-request-id"], "up-123");
    assert!(response.headers().contains_key("x-llmsrouter-request-id"));
    let text = response.text().await.expect("body");
    assert_eq!(text, chat_completion("mock-model-2024"));

    let got = upstream.last();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        std::str::from_utf8(&got.body).expect("utf8"),
        body.replace("[mock]google/gemini-2.5", "google/gemini-2.5")
    );
    assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");
    assert_eq!(got.headers["x-custom"], "kept");
    assert_eq!(got.headers["x-title"], "llmsrouter-test");
    assert_eq!(got.headers["accept-encoding"], "identity");

    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.mode, RouteMode::Alias);
    assert_eq!(record.provider, "mock");
    assert_eq!(record.requested_model, "[mock]google/gemini-2.5");
    assert_eq!(record.upstream_model, "google/gemini-2.5");
    assert_eq!(record.response.model.as_deref(), Some("mock-model-2024"));
    assert_eq!(record.response.content, "Hello there");
    let usage = record.response.usage.clone().expect("usage");
    assert_eq!((usage.input, usage.output), (PROMPT_TOKENS, 2));
    assert_eq!(record.status, Some(200));
    router.stop().await;
}

#[tokio::test]
async fn the_python_versions_documented_url_examples_work() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("").await;
    // ?proxy=https://target-server.com — an origin with no path gets /v1.
    let response = client()
        .post(router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin())))
        .header("authorization", "Bearer sk-client-own-key")
        .body(r#"{"model":"gpt-3.5-turbo","messages":[]}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.query, None,
        "the router's own proxy= parameter stays with the router"
    );
    assert_eq!(got.json()["model"], "gpt-3.5-turbo");
    assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");

    // "model": "[https://target-server.com]gpt-3.5-turbo"
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-client-own-key")
        .json(&json!({"model": format!("[{}]gpt-3.5-turbo", upstream.origin()), "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.json()["model"], "gpt-3.5-turbo");
    assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
    let record = router.records.nth(2).await;
    assert_eq!(record.mode, RouteMode::UrlPrefix);
    assert_eq!(record.provider, upstream.addr.to_string());
    router.stop().await;
}

#[tokio::test]
async fn a_configured_url_is_used_as_is() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config(&format!("{}/api/v3/", upstream.origin()), "");
    let router = TestRouter::start(&config).await;
    let response = router
        .chat(&json!({"model": "[mock]doubao", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().path, "/api/v3/chat/completions");
    router.stop().await;
}

#[tokio::test]
async fn other_endpoints_and_path_spellings_are_routed() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":3,"total_tokens":3}}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (path, upstream_path) in [
        ("/v1/embeddings", "/v1/embeddings"),
        ("/embeddings", "/v1/embeddings"),
        ("/v1//completions/", "/v1/completions"),
        ("/v1/responses", "/v1/responses"),
        ("/chat/completions", "/v1/chat/completions"),
        ("/v1/audio/speech", "/v1/audio/speech"),
    ] {
        let response = client()
            .post(router.url(path))
            .json(&json!({"model": "[mock]m", "input": "x"}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(upstream.last().path, upstream_path, "{path}");
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.endpoint, "/embeddings");
    assert_eq!(record.response.usage.as_ref().map(|u| u.input), Some(3));
    router.stop().await;
}

#[tokio::test]
async fn client_query_parameters_other_than_proxy_are_forwarded() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("").await;
    let response = client()
        .post(router.url(&format!(
            "/v1/chat/completions?api-version=2024-10-01&proxy={}/openai/deployments/d",
            upstream.origin()
        )))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/openai/deployments/d/chat/completions");
    assert_eq!(got.query.as_deref(), Some("api-version=2024-10-01"));
    router.stop().await;
}

/// A parameter both the server's url (or a `?proxy=` URL) and the client's query name, as
/// Azure's `api-version` often is, goes upstream once, with the client's value; the other
/// parameters of both stay, the url's first. It went twice, and the upstream took either.
#[tokio::test]
async fn a_client_query_parameter_replaces_the_urls_own_of_that_name() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let url = format!("{}?keep=a&api-version=2024-06-01", upstream.url());
    let router = TestRouter::start(&one_server_config(&url, "")).await;
    let response = client()
        .post(router.url("/v1/chat/completions?api-version=2025-01-01&extra=b"))
        .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.query.as_deref(),
        Some("keep=a&api-version=2025-01-01&extra=b")
    );

    let target = format!("{}/openai/v1?api-version=2024-06-01", upstream.origin());
    let target: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    let response = client()
        .post(router.url(&format!(
            "/v1/chat/completions?api-version=2025-01-01&proxy={target}"
        )))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/openai/v1/chat/completions");
    assert_eq!(got.query.as_deref(), Some("api-version=2025-01-01"));
    router.stop().await;
}

/// `proxy` percent-encoded in its key names the target too, and is taken out of the query
/// like the plain spelling: left in, it named the target again upstream, and a router that
/// was its own target sent the request to itself without end.
#[tokio::test]
async fn an_encoded_proxy_key_is_stripped_like_the_plain_one() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("").await;
    let response = client()
        .post(router.url(&format!(
            "/v1/chat/completions?%70roxy={}&limit=1",
            upstream.origin()
        )))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.query.as_deref(), Some("limit=1"));
    router.stop().await;
}

/// `?proxy=` twice with different values is a 400 on every route that reads it (a `POST`,
/// a forwarded `GET` or `DELETE`, the model routes): whichever the router picked, the client
/// meant the other as much. Neither upstream is asked. The same value repeated is one target.
#[tokio::test]
async fn conflicting_proxy_values_are_refused() {
    let first = MockUpstream::start(Behavior::default()).await;
    let second = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("servers: {}\n").await;
    let both = format!("proxy={}&proxy={}", first.origin(), second.origin());
    let encoded = format!(
        "proxy={}&limit=1&%70roxy={}",
        second.origin(),
        first.origin()
    );
    let http2 = crate::support::h2c_client();
    for (name, http) in [("http1", client()), ("h2c", http2)] {
        for query in [&both, &encoded] {
            let requests = [
                http.post(router.url(&format!("/v1/chat/completions?{query}")))
                    .json(&json!({"model": "gpt-4o", "messages": []})),
                http.post(router.url(&format!("/v1/batches?{query}")))
                    .json(&json!({"input_file_id": "f"})),
                http.get(router.url(&format!("/v1/files?{query}"))),
                http.delete(router.url(&format!("/v1/files/file-1?{query}"))),
                http.get(router.url(&format!("/v1/models?{query}"))),
                http.get(router.url(&format!("/models/gpt-4o?{query}"))),
            ];
            for request in requests {
                let response = request.send().await.expect("send");
                let what = format!("{name} {:?}", response.url().path());
                assert_eq!(response.status(), 400, "{what}");
                assert!(response.headers().contains_key("x-llmsrouter-request-id"));
                let error: serde_json::Value = response.json().await.expect("json");
                assert_eq!(error["error"]["code"], "invalid_request", "{what}");
                let message = error["error"]["message"].as_str().expect("message");
                assert!(message.contains("more than one proxy="), "{message}");
            }
        }
    }
    assert_eq!((first.count(), second.count()), (0, 0), "no upstream asked");

    let same = format!("proxy={}&proxy={}", first.origin(), first.origin());
    let response = client()
        .post(router.url(&format!("/v1/chat/completions?{same}")))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(first.last().query, None, "no proxy= goes upstream");
    router.stop().await;
}

/// A tab or line break inside a `?proxy=` or `[URL]` target is a 400 naming it: the url
/// crate drops them silently, so `/v%0A1` went to `/v1`, a path the client never wrote.
#[tokio::test]
async fn a_line_break_inside_a_url_target_is_refused() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("servers: {}\n").await;
    let origin = upstream.origin();
    let cases = [
        (format!("?proxy={origin}/v%0A1"), "gpt-4o".to_owned()),
        (format!("?proxy={origin}/v%091"), "gpt-4o".to_owned()),
        (String::new(), format!("[{origin}/v\r1]gpt-4o")),
    ];
    for (query, model) in cases {
        let response = client()
            .post(router.url(&format!("/v1/chat/completions{query}")))
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "{query} {model:?}");
        let error: serde_json::Value = response.json().await.expect("json");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains("a tab or line break"), "{message}");
    }
    assert_eq!(upstream.count(), 0, "no upstream asked");
    let response = client()
        .post(router.url(&format!("/v1/chat/completions?proxy={origin}/v1")))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().path, "/v1/chat/completions");
    router.stop().await;
}

/// A target that leads back to the router: each hop counts itself in `x-llmsrouter-hops`,
/// and past 8 the request is refused with 508 `loop_detected` instead of holding a
/// connection per hop. The upstream is never reached; a request that goes through the
/// router once reaches it with `x-llmsrouter-hops: 1`.
#[tokio::test]
async fn a_target_leading_back_to_the_router_is_refused_after_eight_hops() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let own = format!("[http://{}/v1]", router.addr);
    let model = format!("{}[mock]m", own.repeat(40));
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 508);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "loop_detected");
    assert_eq!(upstream.count(), 0, "the loop never reached the upstream");

    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("x-llmsrouter-hops", "2")
        .json(&json!({"model": format!("{own}[mock]m"), "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().headers["x-llmsrouter-hops"], "4");
    router.stop().await;
}

/// An `x-llmsrouter-hops` that is not a whole number is a 400 that says the field is
/// malformed: it was read as 8 and answered 508 "has come through 8 routers", which sent the
/// client looking for a loop. Nothing goes upstream (read as 0 a loop could hide by garbling
/// it).
#[tokio::test]
async fn a_malformed_hop_count_is_a_400_not_a_loop() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    for value in ["abc", "-1", "", "1.5"] {
        let requests = [
            client()
                .post(router.url("/v1/chat/completions"))
                .json(&json!({"model": "[mock]m", "messages": []})),
            client().get(router.url("/v1/files")),
        ];
        for request in requests {
            let response = request
                .header("x-llmsrouter-hops", value)
                .send()
                .await
                .expect("send");
            let what = format!("{value:?} {}", response.url().path());
            assert_eq!(response.status(), 400, "{what}");
            let error: serde_json::Value = response.json().await.expect("json");
            assert_eq!(error["error"]["code"], "invalid_request", "{what}");
            let message = error["error"]["message"].as_str().expect("message");
            assert!(
                message.contains("x-llmsrouter-hops") && message.contains("malformed"),
                "{message}"
            );
        }
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// A hop count too large for the router's counter is a 508 that does not quote a count the
/// client never sent: it said "has come through 4294967295 routers" for
/// `99999999999999999999999`.
#[tokio::test]
async fn a_hop_count_past_the_counter_is_quoted_as_at_least_its_most() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (sent, said) in [
        ("99999999999999999999999", "at least 4294967295 routers"),
        ("12", "come through 12 routers"),
    ] {
        let response = client()
            .post(router.url("/v1/chat/completions"))
            .header("x-llmsrouter-hops", sent)
            .json(&json!({"model": "[mock]m", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 508, "{sent}");
        let error: serde_json::Value = response.json().await.expect("json");
        assert_eq!(error["error"]["code"], "loop_detected", "{sent}");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains(said), "{sent}: {message}");
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

#[tokio::test]
async fn health_answers_ok() {
    let router = TestRouter::start("").await;
    for path in ["/health", "/health/", "/v1/health"] {
        let response = client().get(router.url(path)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("body"), r#"{"status":"ok"}"#);
    }
    router.stop().await;
}

/// A client that names no `Accept` type (curl-less scripts, raw sockets) still sends the
/// upstream `Accept: */*`, as the router always has; one that names a type keeps it.
#[tokio::test]
async fn a_missing_accept_header_reaches_the_upstream_as_any_type() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = r#"{"model":"[mock]m","messages":[]}"#;
    let addr = router.url("").trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last().headers["accept"], "*/*");

    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().headers["accept"], "application/json");
}

/// The router reads answers to record them, so it asks every upstream for them uncompressed
/// (`identity`) whatever the client accepts: sending no `Accept-Encoding`, as it did, means
/// any coding will do (RFC 9110 §12.5.3).
#[tokio::test]
async fn upstreams_are_asked_for_uncompressed_answers() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = json!({"model": "[mock]m", "messages": []});
    for client_accepts in [None, Some("gzip, br")] {
        let mut request = client().post(router.url("/v1/chat/completions"));
        if let Some(accepts) = client_accepts {
            request = request.header("accept-encoding", accepts);
        }
        let response = request.json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200);
        let sent = upstream.last().headers;
        let asked: Vec<_> = sent.get_all("accept-encoding").iter().collect();
        assert_eq!(asked, ["identity"], "client accepts {client_accepts:?}");
    }
    router.stop().await;
}

/// An upstream that compresses its answer anyway: a client that takes the coding gets it as
/// it came, with its `Content-Encoding`, and the recorder decodes it (off the request path),
/// so the record has the answer's usage, text and body, as for an uncompressed answer.
#[tokio::test]
async fn a_compressed_answer_is_relayed_as_it_came_and_recorded_decoded() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let answer = chat_completion("mock-model-2024");
    let encoded = [
        ("gzip", gzip(answer.as_bytes())),
        ("deflate", zlib(answer.as_bytes())),
    ];
    for (n, (coding, compressed)) in encoded.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(compressed.clone()),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let response = chat_accepting("gzip, deflate", &router).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], coding);
        assert_eq!(
            response.bytes().await.expect("body"),
            compressed,
            "{coding}"
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success);
        let usage = record.response.usage.clone().expect("usage read");
        assert_eq!(usage.total, PROMPT_TOKENS + 2, "{coding}");
        assert_eq!(record.response.content, "Hello there");
        assert_eq!(
            record.response_body.as_deref(),
            Some(answer.as_bytes()),
            "recorded decoded"
        );
        assert!(record.response_is_json);
    }
    router.stop().await;
}

/// A chat request to `router` whose client takes the codings `accepts` (its
/// `Accept-Encoding`).
async fn chat_accepting(accepts: &str, router: &TestRouter) -> reqwest::Response {
    client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", accepts)
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send")
}

/// A whole answer in a coding the client did not list in its `Accept-Encoding` (zstd to the
/// openai SDKs, which send `gzip, deflate, br` and failed on it; any coding to a client that
/// sends none) goes to it decoded, without the `Content-Encoding`, as an error body does;
/// one in a coding it takes (`*` takes any it does not refuse) goes as it came; `x-gzip`
/// only to a client that lists `x-gzip` itself. The record reads it either way.
#[tokio::test]
async fn a_compressed_answer_in_a_coding_the_client_does_not_take_goes_decoded() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let answer = chat_completion("mock-model-2024");
    let cases = [
        (
            "zstd",
            zstd(answer.as_bytes()),
            Some("gzip, deflate, br"),
            true,
        ),
        ("gzip", gzip(answer.as_bytes()), None, true),
        ("br", brotli(answer.as_bytes()), Some("gzip, BR;q=0"), true),
        (
            "gzip, br",
            brotli(&gzip(answer.as_bytes())),
            Some("gzip"),
            true,
        ),
        ("zstd", zstd(answer.as_bytes()), Some("*"), false),
        // httpx (the openai Python SDK) lists gzip and cannot read x-gzip.
        ("x-gzip", gzip(answer.as_bytes()), Some("GZIP"), true),
        ("x-gzip", gzip(answer.as_bytes()), Some("x-gzip"), false),
        (
            "gzip, br",
            brotli(&gzip(answer.as_bytes())),
            Some("br, gzip"),
            false,
        ),
    ];
    for (n, (coding, sent, accepts, decoded)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(sent.clone()),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let mut request = client().post(router.url("/v1/chat/completions"));
        if let Some(accepts) = accepts {
            request = request.header("accept-encoding", accepts);
        }
        let body = json!({"model": "[mock]m", "messages": []});
        let response = request.json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200);
        let case = format!("{coding} to {accepts:?}");
        let headers = response.headers().clone();
        let got = response.bytes().await.expect("body");
        // Its form depends on the client's Accept-Encoding: a cache in front must know.
        assert_eq!(headers["vary"], "Accept-Encoding", "{case}");
        if decoded {
            assert!(headers.get("content-encoding").is_none(), "{case}");
            assert_eq!(
                headers["content-length"],
                answer.len().to_string(),
                "{case}"
            );
            assert_eq!(got, answer.as_bytes(), "{case}");
        } else {
            assert_eq!(headers["content-encoding"], coding, "{case}");
            assert_eq!(got, sent, "{case}");
        }
        let record = router.records.nth(n + 1).await;
        assert_eq!(
            record.outcome,
            Outcome::Success,
            "{case}: {:?}",
            record.error
        );
        let usage = record.response.usage.clone().expect("usage read");
        assert_eq!(usage.total, PROMPT_TOKENS + 2, "{case}");
        assert_eq!(record.response_body.as_deref(), Some(answer.as_bytes()));
    }
    router.stop().await;
}

/// A compressed answer's `Vary` names `Accept-Encoding` (its form depends on it): added to
/// the upstream's when it lacks it (`Origin` → `Origin, Accept-Encoding`), whether it goes as
/// it came or decoded. An uncompressed answer keeps the upstream's `Vary` as it came.
#[tokio::test]
async fn a_compressed_answers_vary_names_accept_encoding() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let answer = chat_completion("mock-model-2024");
    let vary = ("vary".to_owned(), "Origin".to_owned());
    for accepts in ["gzip", "br"] {
        upstream.set(Behavior {
            raw_body: Some(gzip(answer.as_bytes())),
            headers: vec![vary.clone(), ("content-encoding".into(), "gzip".into())],
            ..Default::default()
        });
        let response = chat_accepting(accepts, &router).await;
        assert_eq!(response.status(), 200);
        let values: Vec<_> = response.headers().get_all("vary").iter().collect();
        assert_eq!(values, ["Origin, Accept-Encoding"], "to {accepts}");
    }
    upstream.set(Behavior {
        headers: vec![vary],
        ..Default::default()
    });
    let response = chat_accepting("gzip", &router).await;
    let values: Vec<_> = response.headers().get_all("vary").iter().collect();
    assert_eq!(values, ["Origin"], "uncompressed: as it came");
    router.stop().await;
}

/// A small gzip answer that decodes to more than the router reads for a record (64 MiB; the
/// one that took the router from 15 MB to 815 MB held 300 MiB in 300 KB): the client gets the
/// bytes as they came (even one that does not take gzip, as this one: the router decodes no
/// more than that for it either), and the record says the answer was too large to read, in place of its
/// text, its usage unknown, where it used to say `<binary, gzip, N bytes>` as if nothing were
/// amiss.
#[tokio::test]
async fn a_compressed_answer_too_large_once_decoded_is_noted_in_its_record() {
    // Members of 1 MiB each: one made, sent 65 times.
    let mebibyte = gzip(&vec![b'a'; 1 << 20]);
    let mut sent = gzip(br#"{"id":"x","choices":[{"message":{"content":""#);
    for _ in 0..65 {
        sent.extend_from_slice(&mebibyte);
    }
    sent.extend(gzip(
        br#""}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
    ));
    let upstream = MockUpstream::start(Behavior {
        raw_body: Some(sent.clone()),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.expect("body"), sent);

    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(
        record.response.content,
        format!(
            "<gzip, {} bytes, over 64 MiB decoded: not read>",
            sent.len()
        )
    );
    assert!(record.response.usage.is_none());
    assert!(record.response_body.is_none());
    router.stop().await;
}

/// A gzip answer with bytes after its member that do not open another one (a stray line
/// end, a proxy's padding): curl and the openai SDKs read the member and ignore the rest, and
/// so does its record, which used to be the upstream's error ("invalid gzip header") with no
/// usage. The client still gets the bytes as they came.
#[tokio::test]
async fn bytes_after_a_gzip_answers_last_member_are_ignored_in_its_record() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let answer = chat_completion("mock-model-2024");
    let member = gzip(answer.as_bytes());
    let sent = [
        [member.clone(), b"\r\n".to_vec()].concat(),
        [member.clone(), b"\r\ntrailing garbage\x00\x00".to_vec()].concat(),
    ];
    for (n, sent) in sent.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(sent.clone()),
            headers: vec![("content-encoding".into(), "gzip".into())],
            ..Default::default()
        });
        let response = chat_accepting("gzip", &router).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body"), sent);

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
        let usage = record.response.usage.clone().expect("usage read");
        assert_eq!(usage.total, PROMPT_TOKENS + 2);
        assert_eq!(record.response.content, "Hello there");
        assert_eq!(record.response_body.as_deref(), Some(answer.as_bytes()));
    }
    router.stop().await;
}

/// A plain-HTTP upstream gets one keep-alive connection for requests one after another
/// (from one client connection, hence one lane):
/// answers and errors read to their end hand it back at once; a stream hands it back once
/// the router has read the last bytes after `[DONE]`, in the background (so the next request
/// may come first and open a second connection, but not one per stream). A stream the client
/// abandons takes its connection with it (the rest of the answer is still on the wire).
#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    use futures_util::StreamExt as _;
    use std::collections::HashSet;
    let upstream = MockUpstream::start(Behavior {
        chunks: 3,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    // One client connection, so one lane (each lane keeps its own upstream connections).
    let client = client();
    let url = router.url("/v1/chat/completions");
    let chat = |body: &serde_json::Value| client.post(&url).json(body).send();
    let plain = json!({"model": "[mock]m", "messages": []});
    let stream = json!({"model": "[mock]m", "messages": [], "stream": true});
    for _ in 0..4 {
        let response = chat(&plain).await.expect("send");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("whole body");
    }
    upstream.set(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"boom"}}"#.into()),
        ..Default::default()
    });
    assert_eq!(chat(&plain).await.expect("send").status(), 500);
    let received = upstream.received();
    assert_eq!(received.len(), 5);
    let first = received[0].peer;
    assert!(received.iter().all(|r| r.peer == first), "{received:?}");
    assert_eq!(received[0].headers["host"], upstream.addr.to_string());

    upstream.set(Behavior {
        chunks: 3,
        ..Default::default()
    });
    for _ in 0..10 {
        let response = chat(&stream).await.expect("send");
        assert_eq!(response.status(), 200);
        assert!(
            response
                .text()
                .await
                .expect("whole body")
                .ends_with("[DONE]\n\n")
        );
    }
    let peers: HashSet<_> = upstream.received()[5..].iter().map(|r| r.peer).collect();
    assert!(
        peers.len() <= 2,
        "10 streams took {} connections",
        peers.len()
    );

    // Abandoned after its first chunk.
    upstream.set(Behavior {
        chunks: 50,
        chunk_delay: std::time::Duration::from_millis(20),
        ..Default::default()
    });
    let response = chat(&stream).await.expect("send");
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    chunks.next().await.expect("a first chunk").expect("chunk");
    drop(chunks);
    upstream.set(Behavior::default());
    let response = chat(&plain).await.expect("send");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("whole body");
    let received = upstream.received();
    let [.., abandoned, next] = &received[..] else {
        panic!("two more requests");
    };
    assert!(peers.contains(&abandoned.peer) || abandoned.peer == first);
    assert_ne!(
        next.peer, abandoned.peer,
        "a half-read connection was reused"
    );
    router.stop().await;
}

/// A JSON body that names no model (`batches.create`), or no body at all
/// (`responses.cancel`), goes to `settings.default_server` with its key, or to `?proxy=`,
/// as it came; with neither it is refused with 400, and the message says what would route
/// it (as a form's and a `GET`'s do: an empty body was told only that it was not JSON). A
/// form without a model went there already; such requests used to get 400 even when a
/// target was named.
#[tokio::test]
async fn a_request_without_a_model_goes_to_the_default_server_or_proxy() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(r#"{"id":"batch_1","object":"batch"}"#.into()),
        ..Default::default()
    })
    .await;
    let batch =
        r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#;
    let post = |router: &TestRouter, path: &str, body: &'static str| {
        client()
            .post(router.url(path))
            .bearer_auth("sk-client-own-key")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let plain = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (path, body, what) in [
        ("/v1/batches", batch, r#"no "model""#),
        ("/v1/responses/resp_1/cancel", "", "no body"),
    ] {
        let refused = post(&plain, path, body).await.expect("send");
        assert_eq!(refused.status(), 400, "{path}");
        let error: serde_json::Value = refused.json().await.expect("json");
        assert_eq!(error["error"]["code"], "invalid_request");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains(what), "{message}");
        assert!(
            message.contains("?proxy=") && message.contains("settings.default_server"),
            "{path}: says what would route it: {message}"
        );
    }
    assert_eq!(upstream.count(), 0);
    let proxied = post(
        &plain,
        &format!("/v1/batches?proxy={}", upstream.url()),
        batch,
    )
    .await
    .expect("send");
    assert_eq!(proxied.status(), 200);
    let got = upstream.last();
    assert_eq!(
        (got.path.as_str(), &got.body[..]),
        ("/v1/batches", batch.as_bytes())
    );
    assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
    plain.stop().await;

    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    for (path, body) in [("/v1/batches", batch), ("/v1/responses/resp_1/cancel", "")] {
        let response = post(&router, path, body).await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.text().await.expect("body"),
            r#"{"id":"batch_1","object":"batch"}"#
        );
        let got = upstream.last();
        assert_eq!((got.path.as_str(), &got.body[..]), (path, body.as_bytes()));
        assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");
    }
    for n in [1, 2] {
        let record = router.records.nth(n).await;
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.alias.as_deref(), Some("mock"));
        assert_eq!(record.requested_model, "");
        let body: serde_json::Value =
            serde_json::from_slice(&record.request_body).expect("the record's body is JSON");
        assert!(body.is_object());
    }
    router.stop().await;
}

/// The client's credentials, in any header the router reads as one (`Authorization`,
/// `x-api-key`, Azure's `api-key`, Gemini's `x-goog-api-key`), never reach a configured
/// server, which gets the router's key: neither an alias's `POST` nor a `GET` forwarded to
/// `settings.default_server`. A `?proxy=` URL target still gets them as sent.
#[tokio::test]
async fn client_credentials_never_reach_a_configured_server() {
    const CREDENTIALS: [(&str, &str); 4] = [
        ("authorization", "Bearer client-own-key"),
        ("x-api-key", "client-anthropic-key"),
        ("api-key", "client-azure-key-123"),
        ("x-goog-api-key", "client-gemini-key-456"),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    let with_credentials = |mut request: reqwest::RequestBuilder| {
        for (name, value) in CREDENTIALS {
            request = request.header(name, value);
        }
        request
    };
    let alias = with_credentials(client().post(router.url("/v1/chat/completions")))
        .json(&json!({"model": "[mock]gpt-4o", "messages": []}));
    let forwarded = with_credentials(client().get(router.url("/v1/files")));
    for (what, request) in [("alias POST", alias), ("forwarded GET", forwarded)] {
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 200, "{what}");
        let got = upstream.last();
        assert_eq!(
            got.headers["authorization"], "Bearer sk-mock-upstream-key",
            "{what}"
        );
        assert_eq!(got.headers.get_all("authorization").iter().count(), 1);
        for (name, _) in &CREDENTIALS[1..] {
            assert!(!got.headers.contains_key(*name), "{what}: {name} was sent");
        }
    }

    let url_target = with_credentials(
        client().post(router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin()))),
    )
    .json(&json!({"model": "gpt-4o", "messages": []}));
    assert_eq!(url_target.send().await.expect("send").status(), 200);
    let got = upstream.last();
    for (name, value) in CREDENTIALS {
        assert_eq!(got.headers[name], value, "a URL target gets {name} as sent");
    }
    router.stop().await;
}

/// A server whose `url` has `user:password@` gets them as Basic credentials (what reqwest,
/// which used to send these requests, made of them: both percent-decoded), and its `Host`
/// and request line without them; a server with an `api_key` too gets only its key, as
/// reqwest's own `Authorization` replaced the URL's.
#[tokio::test]
async fn credentials_in_a_servers_url_go_as_basic_credentials() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let with_credentials = upstream.url().replacen("http://", "http://user:p%40ss@", 1);
    let config = format!(
        "servers:\n  basic:\n    url: \"{with_credentials}\"\n  keyed:\n    url: \"{with_credentials}\"\n    api_key: \"sk-keyed-upstream\"\n"
    );
    let router = TestRouter::start(&config).await;
    for (alias, authorization) in [
        // base64("user:p@ss")
        ("basic", "Basic dXNlcjpwQHNz"),
        ("keyed", "Bearer sk-keyed-upstream"),
    ] {
        let response = post_json(
            &router.url("/v1/chat/completions"),
            &json!({"model": format!("[{alias}]m"), "messages": []}),
        )
        .await;
        assert_eq!(response.status(), 200, "{alias}");
        let got = upstream.last();
        let sent: Vec<_> = got.headers.get_all("authorization").iter().collect();
        assert_eq!(sent, [authorization], "{alias}");
        assert_eq!(got.headers["host"], upstream.addr.to_string(), "{alias}");
        assert_eq!(got.path, "/v1/chat/completions", "{alias}");
    }
    router.stop().await;
}

/// A user name that is not UTF-8 once percent-decoded (`%FF`) in a server's `url` goes as
/// Basic credentials of its bytes, to chat requests and the model-list fetch alike, and is in
/// no URL sent: reqwest made no credentials of it and kept it, password and all, in the URL
/// (a proxy's request line, hyper's debug log), and the chat path sent no credentials.
#[tokio::test]
async fn credentials_in_a_servers_url_that_are_not_utf8_go_as_their_bytes() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let with_credentials = upstream
        .url()
        .replacen("http://", "http://%FFkay:secretpw@", 1);
    let config = format!("servers:\n  odd:\n    url: \"{with_credentials}\"\n");
    let router = TestRouter::start(&config).await;
    let response = post_json(
        &router.url("/v1/chat/completions"),
        &json!({"model": "[odd]m", "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let received = upstream.received();
    let paths: Vec<_> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/models"]);
    for got in received {
        let sent: Vec<_> = got.headers.get_all("authorization").iter().collect();
        // base64(b"\xffkay:secretpw")
        assert_eq!(sent, ["Basic /2theTpzZWNyZXRwdw=="], "{}", got.path);
        assert!(!got.target.contains("secretpw"), "{}", got.target);
        assert_eq!(got.headers["host"], upstream.addr.to_string());
    }
    router.stop().await;
}

/// An empty or blank `?proxy=` names no target: the request is routed by its model (the
/// Python version did so; it was refused with 400 `bad proxy URL ""`), also beside another
/// `proxy` that is not blank, and `GET /v1/models` answers the router's own list. No
/// `proxy=` goes upstream.
#[tokio::test]
async fn an_empty_proxy_parameter_counts_as_absent() {
    let upstream = MockUpstream::start(Behavior {
        models_body: Some(r#"{"object":"list","data":[{"id":"gpt-4o"}]}"#.to_owned()),
        ..Default::default()
    })
    .await;
    let other = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for query in ["proxy=", "proxy=%20", "proxy=&proxy="] {
        let url = router.url(&format!("/v1/chat/completions?{query}"));
        let response = post_json(&url, &json!({"model": "[mock]gpt-4o", "messages": []})).await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(upstream.last().json()["model"], "gpt-4o");
        assert_eq!(upstream.last().query, None, "{query}");

        let response = client()
            .get(router.url(&format!("/v1/models?{query}")))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{query}");
        let list: serde_json::Value = response.json().await.expect("json");
        assert_eq!(
            list["data"][0]["id"], "[mock]gpt-4o",
            "the router's own list"
        );
    }
    // Only values that name something count as two different ones.
    let query = format!("proxy=&proxy={}", other.origin());
    let url = router.url(&format!("/v1/chat/completions?{query}"));
    let response = post_json(&url, &json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(other.count(), 1);
    assert_eq!(other.last().query, None);
    router.stop().await;
}

/// With `?proxy=`, a model's `[prefix]` names a target the query overrides: the upstream
/// sees the name alone, as with the Python version, so a saved `[alias]name` model works on
/// a `?proxy=` base URL (the alias need not be configured). The record keeps what the
/// client asked for.
#[tokio::test]
async fn a_proxy_target_gets_the_model_without_its_prefix() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let configured = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&configured.url(), "")).await;
    let url = router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin()));
    for (model, sent) in [
        ("[mock]gpt-4o", "gpt-4o"),
        ("[elsewhere]org/model:free", "org/model:free"),
        ("gpt-4o", "gpt-4o"),
    ] {
        let response = post_json(&url, &json!({"model": model, "messages": []})).await;
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(upstream.last().json()["model"], sent, "{model}");
    }
    assert_eq!(configured.count(), 0, "?proxy= wins over the alias");
    let record = router.records.nth(1).await;
    assert_eq!(record.mode, RouteMode::ProxyParam);
    assert_eq!(record.requested_model, "[mock]gpt-4o");
    assert_eq!(record.upstream_model, "gpt-4o");
    router.stop().await;
}

/// Fields whose names, `_` read as `-`, are ones the router frames with or reads
/// (`Transfer_Encoding`, `Content_Length`, `X_Api_Key`, `Host`'s) are not passed upstream:
/// an upstream behind a CGI-style layer (WSGI, PHP) reads both spellings as one, and could
/// frame the body otherwise than the router did. Other names with `_` go on as they came.
#[tokio::test]
async fn underscore_spellings_of_framing_and_key_fields_stay_behind() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("Transfer_Encoding", "chunked")
        .header("Content_Length", "0")
        .header("X_Api_Key", "sk-client-key-0123456789")
        .header("proxy_connection", "keep-alive")
        .header("X_Trace_Id", "t-1")
        .body(r#"{"model":"[mock]m","messages":[]}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let headers = upstream.last().headers;
    for dropped in [
        "transfer_encoding",
        "content_length",
        "x_api_key",
        "proxy_connection",
    ] {
        assert!(headers.get(dropped).is_none(), "{dropped}: {headers:?}");
    }
    assert_eq!(headers["x_trace_id"], "t-1");
    assert!(headers.get("transfer-encoding").is_none(), "{headers:?}");
    router.stop().await;
}

/// A model name past 4 KiB (the client's, and the upstream's answer naming it back) goes
/// upstream whole but is cut to 4 KiB in the record, saying its length: names are not bodies, the
/// body budget did not count them, and 8 MB names queued for a stuck sink took a gigabyte
/// (bb49).
#[tokio::test]
async fn a_huge_model_name_is_cut_in_the_record_only() {
    let name = "m".repeat(10_000);
    let upstream = MockUpstream::start(Behavior {
        model: name.clone(),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router
        .chat(&json!({"model": format!("[mock]{name}"), "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().json()["model"], name.as_str());
    let record = router.records.nth(1).await;
    // 4,096 bytes in all, what was said included.
    let cut = format!("{}… (10000 bytes)", "m".repeat(4096 - 17));
    assert_eq!(record.upstream_model, cut);
    assert_eq!(record.response.model.as_deref(), Some(cut.as_str()));
    assert_eq!(record.requested_model.len(), 4096);
    assert!(record.requested_model.ends_with("… (10006 bytes)"));
    router.stop().await;
}
