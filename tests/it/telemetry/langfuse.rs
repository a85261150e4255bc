//! The Langfuse exporter: the attribute contract for a plain completion, a stream without
//! `include_usage`, vendor usage shapes, an upstream 500, a client disconnect and a user
//! request; a second generic OTLP destination; and resilience (retries, a hanging or absent
//! endpoint, recovery, flush on shutdown).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::StreamExt;
use llmsrouter::auth::{Caller, KeyIndex, Permissions};
use llmsrouter::secret::Secret;
use llmsrouter::sinks::generation::{
    MAX_ATTRIBUTE_BYTES, OMITTED_PARAMETERS_KEY, TRUNCATION_MARKER,
};
use llmsrouter::sinks::langfuse::{Destination, LangfuseOptions, LangfuseSink};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatusCode;
use serde_json::json;

use super::mock_otlp::{
    MockOtlp, all_text, float_attr, int_attr, json_attr, str_attr, strings_attr, trace_id,
};
use super::{
    PUBLIC_KEY, SECRET_KEY, langfuse_options, parse_rfc3339_millis, request_id,
    router_with_langfuse,
};
use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS};
use crate::support::{Logged, client, one_server_config, wait_until};

fn span_millis(nanos: u64) -> i64 {
    (nanos / 1_000_000) as i64
}

/// A router in front of `upstream` (as the alias `mock`) exporting its spans to a fresh mock
/// OTLP endpoint, its state adjusted by `adjust`.
async fn router_to_mock_otlp(
    upstream: &MockUpstream,
    adjust: impl FnOnce(&mut llmsrouter::state::AppState),
) -> (MockOtlp, crate::support::TestRouter, Arc<LangfuseSink>) {
    let otlp = MockOtlp::start().await;
    let (router, sink) = router_with_langfuse(
        &one_server_config(&upstream.url(), ""),
        langfuse_options(&otlp),
        adjust,
    )
    .await;
    (otlp, router, sink)
}

#[tokio::test]
async fn a_plain_completion_becomes_one_generation_with_every_attribute() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let response = router
        .chat(
            &json!({"model": "[mock]gpt-4o", "temperature": 0.3, "max_tokens": 64,
            "messages": messages, "tools": tools}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let received = otlp.span_of(&id).await;
    let span = &received.span;

    // Transport: Langfuse's OTLP path, protobuf, Basic auth, ingestion version 4.
    assert_eq!(received.path, "/api/public/otel/v1/traces");
    assert_eq!(received.headers["content-type"], "application/x-protobuf");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{PUBLIC_KEY}:{SECRET_KEY}"));
    assert_eq!(
        received.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(received.headers["x-langfuse-ingestion-version"], "4");
    assert_eq!(received.scope_name, "llmsrouter");
    assert!(
        received
            .resource
            .iter()
            .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("llmsrouter"))
    );

    // One root span per request; its trace id is the request id.
    assert_eq!(otlp.spans().len(), 1);
    assert_eq!(trace_id(span), id);
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(span.name, "OpenAI-generation");
    assert_eq!(
        str_attr(span, "langfuse.trace.name"),
        Some("OpenAI-generation")
    );
    assert_eq!(
        str_attr(span, "langfuse.observation.type"),
        Some("generation")
    );
    assert_eq!(
        strings_attr(span, "langfuse.trace.tags"),
        Some(vec!["mock".to_owned()])
    );
    assert_eq!(str_attr(span, "user.id"), None, "no accounts, no user");

    // Model (the upstream's, no [alias]), parameters, input, output, usage.
    assert_eq!(
        str_attr(span, "langfuse.observation.model.name"),
        Some("mock-model-2024")
    );
    assert_eq!(
        json_attr(span, "langfuse.observation.model.parameters"),
        Some(json!({"temperature": 0.3, "max_tokens": 64}))
    );
    assert_eq!(
        json_attr(span, "langfuse.observation.input"),
        Some(json!({"tools": tools, "messages": messages}))
    );
    assert_eq!(
        json_attr(span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": "Hello there"}))
    );
    assert_eq!(
        json_attr(span, "langfuse.observation.usage_details"),
        Some(
            json!({"input": PROMPT_TOKENS, "output": 2, "total": PROMPT_TOKENS + 2,
            "input_cached_tokens": 0, "output_reasoning_tokens": 0})
        )
    );
    assert_eq!(
        str_attr(span, "langfuse.observation.cost_details"),
        None,
        "no cost sent"
    );
    assert_eq!(
        str_attr(span, "langfuse.observation.level"),
        None,
        "DEFAULT is implied"
    );
    assert_eq!(str_attr(span, "langfuse.observation.status_message"), None);

    // Times: start <= completion start <= end, ISO-8601 with Z.
    let start = span_millis(span.start_time_unix_nano);
    let end = span_millis(span.end_time_unix_nano);
    let first = parse_rfc3339_millis(
        str_attr(span, "langfuse.observation.completion_start_time").expect("completion start"),
    );
    assert!(
        start <= first && first <= end,
        "{start} <= {first} <= {end}"
    );
    // To the microsecond, as the span's own times are finer still: cut to the millisecond, a
    // first token 0.4 ms after the start read as before it.
    let first_micros = super::parse_rfc3339_micros(
        str_attr(span, "langfuse.observation.completion_start_time").expect("completion start"),
    );
    let start_micros = (span.start_time_unix_nano / 1000) as i64;
    assert!(
        start_micros <= first_micros,
        "{start_micros} <= {first_micros}"
    );
    let now = UNIX_EPOCH.elapsed().expect("clock").as_millis() as i64;
    assert!(start > now - 60_000 && end <= now);

    // The OpenTelemetry GenAI attributes.
    assert_eq!(str_attr(span, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(span, "gen_ai.request.model"), Some("gpt-4o"));
    assert_eq!(
        str_attr(span, "gen_ai.response.model"),
        Some("mock-model-2024")
    );
    assert_eq!(str_attr(span, "gen_ai.provider.name"), Some("mock"));
    assert_eq!(float_attr(span, "gen_ai.request.temperature"), Some(0.3));
    assert_eq!(int_attr(span, "gen_ai.request.max_tokens"), Some(64));
    assert_eq!(
        int_attr(span, "gen_ai.usage.input_tokens"),
        Some(PROMPT_TOKENS as i64)
    );
    assert_eq!(int_attr(span, "gen_ai.usage.output_tokens"), Some(2));
    assert_eq!(
        strings_attr(span, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_owned()])
    );
    assert_eq!(int_attr(span, "http.response.status_code"), Some(200));
    assert_eq!(
        json_attr(span, "langfuse.trace.metadata"),
        Some(
            json!({"route_mode": "alias", "endpoint": "/chat/completions",
            "requested_model": "[mock]gpt-4o", "outcome": "success", "stream": false,
            "usage_partial": false})
        )
    );
    router.stop().await;
}

#[tokio::test]
async fn a_stream_without_include_usage_still_has_usage_and_the_assembled_output() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 3,
        ..Default::default()
    })
    .await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "count"}]}))
        .await;
    let id = request_id(&response);
    let text = response.text().await.expect("body");
    assert!(
        !text.contains("\"usage\":{"),
        "the client did not ask for usage"
    );
    let span = otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": "tok0 tok1 tok2 "}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.usage_details"),
        Some(
            json!({"input": PROMPT_TOKENS, "output": 3, "total": PROMPT_TOKENS + 3,
            "input_cached_tokens": 0, "output_reasoning_tokens": 0})
        )
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.input"),
        Some(json!([{"role": "user", "content": "count"}]))
    );
    let first = parse_rfc3339_millis(
        str_attr(&span, "langfuse.observation.completion_start_time").expect("first token"),
    );
    assert!(span_millis(span.start_time_unix_nano) <= first);
    assert!(first <= span_millis(span.end_time_unix_nano));
    let metadata = json_attr(&span, "langfuse.trace.metadata").expect("metadata");
    assert_eq!(metadata["stream"], true);
    assert_eq!(metadata["usage_partial"], false, "present when false too");
    assert_eq!(str_attr(&span, "langfuse.observation.level"), None);
    router.stop().await;
}

#[tokio::test]
async fn vendor_usage_shapes_become_langfuse_usage_and_cost_details() {
    let body = json!({"id": "x", "model": "deepseek-reasoner", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "ok", "reasoning_content": "mull"},
        "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
            "prompt_cache_hit_tokens": 30, "prompt_cache_miss_tokens": 70,
            "completion_tokens_details": {"reasoning_tokens": 25}, "cost": 0.0042}});
    let upstream = MockUpstream::start(Behavior {
        body: Some(body.to_string()),
        ..Default::default()
    })
    .await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]deepseek-reasoner", "messages": []}))
        .await;
    let span = otlp.span_of(&request_id(&response)).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.usage_details"),
        Some(json!({"input": 70, "output": 15, "total": 140,
            "input_cached_tokens": 30, "output_reasoning_tokens": 25}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.cost_details"),
        Some(json!({"total": 0.0042}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": "ok", "reasoning_content": "mull"}))
    );
    router.stop().await;
}

#[tokio::test]
async fn an_upstream_500_is_an_error_generation_with_its_message() {
    let upstream = MockUpstream::start(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"upstream exploded","type":"server_error"}}"#.into()),
        ..Default::default()
    })
    .await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(response.status(), 500);
    let span = otlp.span_of(&request_id(&response)).await.span;
    assert_eq!(str_attr(&span, "langfuse.observation.level"), Some("ERROR"));
    assert_eq!(
        str_attr(&span, "langfuse.observation.status_message"),
        Some("upstream exploded")
    );
    let status = span.status.as_ref().expect("span status");
    assert_eq!(status.code, SpanStatusCode::Error as i32);
    assert_eq!(status.message, "upstream exploded");
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"error": {"message": "upstream exploded", "type": "server_error"}}))
    );
    assert_eq!(int_attr(&span, "http.response.status_code"), Some(500));
    assert_eq!(str_attr(&span, "error.type"), Some("upstream_error"));
    assert_eq!(str_attr(&span, "langfuse.observation.usage_details"), None);
    router.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_leaves_a_partial_warning() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 5,
        gap: Some((2, Duration::from_secs(30))),
        ..Default::default()
    })
    .await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "stream": true, "messages": []}))
        .await;
    let id = request_id(&response);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("tok1") {
        let piece = body.next().await.expect("more").expect("piece");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    drop(body);
    let span = otlp.span_of(&id).await.span;
    assert_eq!(
        str_attr(&span, "langfuse.observation.level"),
        Some("WARNING")
    );
    assert!(
        str_attr(&span, "langfuse.observation.status_message")
            .expect("message")
            .contains("client disconnected")
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": "tok0 tok1 "}))
    );
    let metadata = json_attr(&span, "langfuse.trace.metadata").expect("metadata");
    assert_eq!(metadata["usage_partial"], true);
    assert_eq!(metadata["outcome"], "client_disconnected");
    assert_eq!(str_attr(&span, "langfuse.observation.usage_details"), None);
    assert!(str_attr(&span, "langfuse.observation.completion_start_time").is_some());
    router.stop().await;
}

/// Without accounts the client says who its end user is and which session a request is
/// in: OpenAI's `user`, else Anthropic's `metadata.user_id` (Claude Code's), and
/// `metadata.session_id`, as Langfuse's `user.id` and `session.id` (without control
/// characters, trimmed, redacted). Nothing the client sent could set either before. A
/// blank or non-string value sets nothing.
#[tokio::test]
async fn the_clients_user_and_session_go_to_the_span_without_accounts() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "[mock]m", "user": "enduser-42",
                "metadata": {"session_id": "chat-7", "user_id": "not-this"}, "messages": messages}),
            Some("enduser-42"),
            Some("chat-7"),
        ),
        (
            "/v1/messages",
            json!({"model": "[mock]m", "max_tokens": 9,
                "metadata": {"user_id": "user_abc_session_1"}, "messages": messages}),
            Some("user_abc_session_1"),
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "[mock]m", "user": " ", "metadata": {"session_id": 7},
                "messages": messages}),
            None,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "[mock]m", "user": "sk-mock-upstream-key", "messages": messages}),
            Some("[redacted]"),
            None,
        ),
        // Control characters out and white space trimmed, before redaction: a key split
        // by a line break is still found; one of only control characters falls back.
        (
            "/v1/chat/completions",
            json!({"model": "[mock]m", "user": "\0\r\n", "messages": messages,
                "metadata": {"user_id": " ann\0\r\nX-Injected: 1 ",
                "session_id": "sk-mock-up\nstream-key"}}),
            Some("annX-Injected: 1"),
            Some("[redacted]"),
        ),
        // Invisible characters too: a key split by them showed whole, unredacted.
        (
            "/v1/chat/completions",
            json!({"model": "[mock]m", "user": "sk-mock\u{200b}-upstream\u{202e}-key\u{ad}",
                "metadata": {"session_id": "s\u{2028}1\u{feff}"}, "messages": messages}),
            Some("[redacted]"),
            Some("s1"),
        ),
    ];
    for (path, body, user, session) in cases {
        let response = client()
            .post(router.url(path))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let span = otlp.span_of(&request_id(&response)).await.span;
        assert_eq!(str_attr(&span, "user.id"), user, "{body}");
        assert_eq!(str_attr(&span, "langfuse.user.id"), user, "{body}");
        assert_eq!(str_attr(&span, "session.id"), session, "{body}");
        assert_eq!(str_attr(&span, "langfuse.session.id"), session, "{body}");
    }
    router.stop().await;
}

const USER_KEY: &str = "sk-lr-0123456789abcdefghijABCDEFGHIJ";

struct OneUser;

impl KeyIndex for OneUser {
    fn find(&self, presented_key: &str) -> Option<Caller> {
        (presented_key == USER_KEY).then(|| Caller {
            user: Some("ann".into()),
            permissions: Permissions::All,
        })
    }
}

#[tokio::test]
async fn a_user_request_carries_the_user_id_and_never_the_users_key() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (otlp, router, _sink) =
        router_to_mock_otlp(&upstream, |state| state.keys = Some(Arc::new(OneUser))).await;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .bearer_auth(USER_KEY)
        .json(
            &json!({"model": "[mock]gpt-4o", "user": "bob", "messages": [
            {"role": "user", "content": format!("my key is {USER_KEY}")}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let received = otlp.span_of(&request_id(&response)).await;
    let span = &received.span;
    // The account, not the body's word for who it is.
    assert_eq!(str_attr(span, "user.id"), Some("ann"));
    assert_eq!(str_attr(span, "langfuse.user.id"), Some("ann"));
    let text = all_text(&received);
    assert!(!text.contains(USER_KEY), "{text}");
    assert!(
        str_attr(span, "langfuse.observation.input")
            .expect("input")
            .contains("my key is [redacted]")
    );
    router.stop().await;
}

/// A mock Langfuse and a mock generic OTLP collector (with `headers`), and the options that
/// send spans to both.
async fn langfuse_and_collector(
    headers: Vec<(String, Secret)>,
) -> (
    MockOtlp,
    MockOtlp,
    llmsrouter::sinks::langfuse::LangfuseOptions,
) {
    let langfuse = MockOtlp::start().await;
    let collector = MockOtlp::start().await;
    let mut options = langfuse_options(&langfuse);
    options.destinations.push(Destination {
        name: "otlp",
        endpoint: llmsrouter::env::traces_endpoint(&collector.origin()),
        headers,
    });
    (langfuse, collector, options)
}

#[tokio::test]
async fn a_generic_otlp_destination_gets_the_same_span_with_only_its_own_headers() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (langfuse, collector, options) = langfuse_and_collector(vec![
        ("x-team".into(), Secret::new("blue")),
        (
            "authorization".into(),
            Secret::new("Bearer collector-token"),
        ),
    ])
    .await;
    let (router, _sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    let id = request_id(&response);
    let to_langfuse = langfuse.span_of(&id).await;
    let to_collector = collector.span_of(&id).await;
    assert_eq!(to_collector.path, "/v1/traces");
    assert_eq!(to_collector.span.attributes, to_langfuse.span.attributes);
    assert_eq!(
        to_collector.headers["authorization"],
        "Bearer collector-token"
    );
    assert_eq!(to_collector.headers["x-team"], "blue");
    assert!(
        to_collector
            .headers
            .get("x-langfuse-ingestion-version")
            .is_none()
    );
    assert!(to_langfuse.headers.get("x-team").is_none());
    assert!(
        to_langfuse.headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    router.stop().await;
}

#[tokio::test]
async fn inputs_and_outputs_over_the_cap_are_truncated_with_a_marker() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let mut options = langfuse_options(&otlp);
    options.max_io_bytes = 4096;
    let (router, _sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let big = "word ".repeat(10_000);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(response.status(), 200, "the request itself is untouched");
    assert_eq!(
        upstream.last().json()["messages"][0]["content"],
        big.as_str()
    );
    let span = otlp.span_of(&request_id(&response)).await.span;
    let input = str_attr(&span, "langfuse.observation.input").expect("input");
    let output = str_attr(&span, "langfuse.observation.output").expect("output");
    assert!(input.ends_with(TRUNCATION_MARKER), "{input}");
    assert!(input.starts_with("[{\"content\":\"word word"), "{input}");
    assert!(input.len() + output.len() <= 4096);
    assert_eq!(output, r#"{"role":"assistant","content":"Hello there"}"#);
    router.stop().await;
}

/// A coding agent's screenshots (base64 images of hundreds of KiB) put the prompt over the
/// cap: the span's input leaves their base64 out and keeps every message, the newest
/// question among them, where the cut kept the first image and lost the rest. The upstream
/// gets every byte.
#[tokio::test]
async fn an_input_over_the_cap_leaves_out_base64_images_and_keeps_its_messages() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let mut options = langfuse_options(&otlp);
    options.max_io_bytes = 64 * 1024;
    let (router, _sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let screenshot = |n: usize| {
        json!({"role": "user", "content": [
            {"type": "text", "text": format!("screenshot {n}")},
            {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{}", "/9j/4AAQSkZJRg".repeat(5000))}}]})
    };
    let mut messages: Vec<_> = (1..=3).map(screenshot).collect();
    messages.push(json!({"role": "user", "content": "why is the button red?"}));
    let request = json!({"model": "[mock]gpt-4o", "messages": messages});
    let response = router.chat(&request).await;
    assert_eq!(response.status(), 200);
    assert!(
        upstream.last().json()["messages"] == request["messages"],
        "the request itself is untouched"
    );
    let span = otlp.span_of(&request_id(&response)).await.span;
    let input = str_attr(&span, "langfuse.observation.input").expect("input");
    let input: serde_json::Value = serde_json::from_str(input).expect("still JSON");
    assert_eq!(input[3]["content"], "why is the button red?");
    assert_eq!(input[2]["content"][0]["text"], "screenshot 3");
    assert_eq!(
        input[2]["content"][1]["image_url"]["url"],
        "data:image/jpeg;base64,[70000 bytes of base64 left out by llmsrouter]"
    );
    router.stop().await;
}

/// What a client or an upstream puts outside the prompt and the answer is bounded too: 6 MB
/// of stop sequences, a 1 MB model name (sent up, and answered as a 2 MB one), thousands of
/// parameters. Before, they went out whole, in up to four copies, and one such request
/// made its export batch too big for the endpoint, losing every span in it.
#[tokio::test]
async fn every_attribute_beside_input_and_output_is_bounded_so_a_span_is() {
    let upstream = MockUpstream::start(Behavior {
        model: "R".repeat(2 << 20),
        ..Default::default()
    })
    .await;
    let otlp = MockOtlp::start().await;
    let mut options = langfuse_options(&otlp);
    options.max_io_bytes = 4096;
    let (router, _sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let mut body = json!({"model": format!("[mock]{}", "m".repeat(1 << 20)),
        "stop": vec!["S".repeat(3000); 2000],
        "messages": [{"role": "user", "content": "hi"}]});
    for i in 0..3000 {
        // After `stop` in the body (serde_json sorts the keys).
        body[format!("x{i}")] = json!("v".repeat(1000));
    }
    let response = router.chat(&body).await;
    assert_eq!(response.status(), 200);
    let received = otlp.span_of(&request_id(&response)).await;
    let span = &received.span;

    // Cut where they are longer, each with a marker.
    let model = str_attr(span, "langfuse.observation.model.name").expect("model");
    assert!(model.starts_with("RRRR") && model.ends_with(TRUNCATION_MARKER));
    for key in ["gen_ai.request.model", "gen_ai.response.model"] {
        let text = str_attr(span, key).expect(key);
        assert!(text.ends_with(TRUNCATION_MARKER), "{key}");
    }
    let metadata = json_attr(span, "langfuse.trace.metadata").expect("metadata");
    let requested = metadata["requested_model"]
        .as_str()
        .expect("requested_model");
    assert!(requested.starts_with("[mock]mmm") && requested.ends_with(TRUNCATION_MARKER));
    assert_eq!(
        strings_attr(span, "gen_ai.request.stop_sequences"),
        Some(vec![format!("[omitted: {} bytes]", 2000 * 3003 + 1)])
    );
    let parameters = json_attr(span, "langfuse.observation.model.parameters").expect("params");
    assert_eq!(
        parameters["stop"],
        format!("[omitted: {} bytes]", 2000 * 3003 + 1)
    );
    assert_eq!(parameters["x0"], "v".repeat(1000));
    let kept = parameters.as_object().expect("an object").len() - 2;
    let omitted = parameters[OMITTED_PARAMETERS_KEY]
        .as_str()
        .expect("counted");
    assert!(
        omitted.starts_with(&format!("{} more parameters, 30", 3000 - kept)),
        "{omitted}"
    );

    // Every attribute but input and output within the cap (the parameters within theirs),
    // and so the whole span and its export request.
    let mut total = 0;
    for kv in &span.attributes {
        let text = format!("{:?}", kv.value);
        total += text.len();
        let cap = match kv.key.as_str() {
            "langfuse.observation.input" | "langfuse.observation.output" => 4096,
            "langfuse.observation.model.parameters" => 8192,
            _ => MAX_ATTRIBUTE_BYTES,
        };
        assert!(text.len() <= cap + 200, "{}: {} bytes", kv.key, text.len());
    }
    assert!(total < 64 * 1024, "{total} bytes of attributes");
    let export = otlp.exports().len();
    assert_eq!(export, 1);
    assert!(otlp.exports()[0].body.len() < 64 * 1024);
    router.stop().await;
}

/// With `n` = 2 a stream's choices end each with its own reason: the span has one per
/// choice, choice 0's first (before, only choice 0's), whole answers too.
#[tokio::test]
async fn every_choices_finish_reason_is_in_the_span() {
    let chunk = |index: usize, content: &str, finish: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "m", "choices": [{"index": index,
                "delta": {"content": content}, "finish_reason": (!finish.is_empty()).then_some(finish)}]})
        )
        .into_bytes()
    };
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![
            chunk(0, "A", ""),
            chunk(1, "B", ""),
            chunk(1, "", "length"),
            chunk(0, "", "stop"),
            crate::support::upstream::DONE.as_bytes().to_vec(),
        ]),
        ..Default::default()
    })
    .await;
    let (otlp, router, _sink) = router_to_mock_otlp(&upstream, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "n": 2, "stream": true, "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert!(response.text().await.expect("body").contains("length"));
    let span = otlp.span_of(&id).await.span;
    assert_eq!(
        strings_attr(&span, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_owned(), "length".to_owned()])
    );

    upstream.set(Behavior {
        body: Some(
            json!({"id": "c2", "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length"}]})
            .to_string(),
        ),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "n": 2, "messages": []}))
        .await;
    let span = otlp.span_of(&request_id(&response)).await.span;
    assert_eq!(
        strings_attr(&span, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_owned(), "length".to_owned()])
    );
    router.stop().await;
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_backoff_then_delivered() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    otlp.script(&[(429, Some("0")), (500, None), (503, None)]);
    let (router, sink) = router_with_langfuse(
        &one_server_config(&upstream.url(), ""),
        langfuse_options(&otlp),
        |_| {},
    )
    .await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    let id = request_id(&response);
    otlp.span_of(&id).await;
    let stats = &sink.stats()[0];
    wait_until(Duration::from_secs(10), || stats.exported() == 1).await;
    assert_eq!(otlp.hits(), 4, "three refusals, then the delivery");
    assert_eq!(stats.retries(), 3);
    assert_eq!((stats.failed(), stats.dropped()), (0, 0));
    assert_eq!(otlp.spans().len(), 1, "delivered once");
    router.stop().await;
}

#[tokio::test]
async fn a_hanging_endpoint_never_slows_requests_memory_stays_bounded_and_export_recovers() {
    let (upstream, otlp, router, sink) = with_langfuse(true, |options| {
        options.max_queued_spans = 4;
    })
    .await;
    let stats = sink.stats()[0].clone();
    let http = client();
    // Langfuse hangs: every request still completes, while at most 4 spans are held.
    for _ in 0..30 {
        let response = http
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert!(stats.pending() <= 4, "pending {}", stats.pending());
    }
    assert_eq!(upstream.count(), 30);
    wait_until(Duration::from_secs(10), || {
        stats.dropped() as usize + stats.pending() == 30
    })
    .await;
    assert!(stats.dropped() >= 26, "dropped {}", stats.dropped());
    wait_until(Duration::from_secs(10), || otlp.hits() >= 1).await;
    assert_eq!(otlp.spans().len(), 0);

    // It comes back: what was held is delivered, and new requests are traced again.
    otlp.release();
    wait_until(Duration::from_secs(10), || stats.pending() == 0).await;
    let response = http
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    otlp.span_of(&request_id(&response)).await;
    wait_until(Duration::from_secs(10), || {
        stats.exported() as usize + stats.dropped() as usize == 31
    })
    .await;
    assert_eq!(stats.failed(), 0);
    router.stop().await;
}

/// An endpoint that is down (connections refused, then 503 and 502 from its proxy, then
/// 429) has its spans held past the policy's attempts, and they arrive once it answers; one
/// that answers 500 loses the batch after them, counted; either way the exporter recovers.
#[tokio::test]
async fn an_endpoint_down_holds_its_spans_until_it_answers_and_one_answering_500_loses_them() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    // An address bound but not listened on: refused until the endpoint comes up on it, and
    // never free for another test's listener in between.
    let parked = tokio::net::TcpSocket::new_v4().expect("socket");
    parked
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = parked.local_addr().expect("addr");
    let mut options = langfuse_options(&MockOtlp::start().await);
    options.destinations[0].endpoint = format!("http://{addr}/api/public/otel/v1/traces");
    let attempts = u64::from(options.retry.max_attempts);
    let (router, sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let stats = sink.stats()[0].clone();
    let http = client();
    let send = || async {
        let response = http
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        request_id(&response)
    };
    let refused = send().await;
    // Connection refused: retried past the attempts a failing batch gets, and kept.
    wait_until(Duration::from_secs(10), || stats.retries() >= 2 * attempts).await;
    assert_eq!(stats.failed(), 0);

    // The endpoint comes up on that address, behind a proxy that answers 503 and 502, then
    // throttled: still held.
    let listener = parked.listen(1024).expect("listen");
    let otlp = MockOtlp::start_on(listener).await;
    for status in [503, 502, 429] {
        otlp.fail_with(status);
        let hits = otlp.hits();
        wait_until(Duration::from_secs(10), || {
            otlp.hits() >= hits + 2 * attempts as usize
        })
        .await;
        assert_eq!(stats.failed(), 0, "{status}");
    }
    otlp.heal();
    otlp.span_of(&refused).await;
    wait_until(Duration::from_secs(10), || stats.exported() == 1).await;

    // A 500: retried as often as the policy says, then given up and counted.
    otlp.fail_with(500);
    let hits = otlp.hits();
    send().await;
    wait_until(Duration::from_secs(10), || stats.failed() == 1).await;
    assert_eq!(
        otlp.hits() - hits,
        attempts as usize,
        "500 is retried, then given up"
    );
    otlp.heal();
    let id = send().await;
    otlp.span_of(&id).await;
    wait_until(Duration::from_secs(10), || stats.exported() == 2).await;
    assert_eq!(stats.pending(), 0);
    router.stop().await;
}

/// A batch held for an endpoint that refuses connections, past the budget a failing
/// batch gets, is warned of (why, and for how long) while it is still retried, and
/// arrives once the endpoint listens.
#[tokio::test]
async fn a_batch_held_for_an_endpoint_that_is_down_is_warned_of_and_arrives() {
    let (logged, _guard) = Logged::capture();
    let parked = tokio::net::TcpSocket::new_v4().expect("socket");
    parked
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = parked.local_addr().expect("addr");
    let policy = llmsrouter::sinks::otlp_http::RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(5),
        budget: Duration::from_millis(300),
    };
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let transport = llmsrouter::sinks::otlp_http::OtlpTransport::new(
        "langfuse",
        &[("authorization".into(), Secret::new("Basic c2VjcmV0"))],
        policy,
        llmsrouter::sinks::otlp_http::ShutdownDeadline::new(),
        retries.clone(),
    )
    .expect("transport");
    let request = http::Request::post(format!("http://{addr}/v1/traces"))
        .body(bytes::Bytes::from_static(b"spans"))
        .expect("request");
    let sent = tokio::spawn(async move {
        use opentelemetry_http::HttpClient as _;
        transport.send_bytes(request).await
    });
    let text = || logged.text();
    wait_until(Duration::from_secs(10), || {
        text().contains("trace endpoint unavailable")
    })
    .await;
    assert!(
        retries.load(std::sync::atomic::Ordering::Relaxed) > 2,
        "held past its attempts"
    );
    let warning = text();
    assert!(warning.contains("destination=\"langfuse\""), "{warning}");
    assert!(warning.contains("Connection refused"), "{warning}");
    assert!(!warning.contains("c2VjcmV0"), "{warning}");
    // The endpoint listens: the held batch arrives.
    let listener = parked.listen(16).expect("listen");
    let served = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while !got.ends_with(b"spans") {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("write");
        got
    });
    let response = sent.await.expect("task").expect("delivered");
    assert_eq!(response.status(), http::StatusCode::OK);
    let got = served.await.expect("served");
    assert!(got.starts_with(b"POST /v1/traces "));
}

#[tokio::test]
async fn a_batch_holding_its_byte_limit_leaves_before_its_interval() {
    let (_upstream, otlp, router, sink) = with_langfuse(false, |options| {
        options.export_interval = Duration::from_secs(3600);
        // Every span holds more text than this: each leaves in a request of its own.
        options.max_batch_bytes = 64;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = router
            .chat(
                &json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        ids.push(request_id(&response));
    }
    // Well before the hour: the limit sent them.
    let spans = otlp.wait_spans(3).await;
    let mut got: Vec<String> = spans.iter().map(|s| trace_id(&s.span)).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert_eq!(otlp.exports().len(), 3, "one export request per span");
    router.stop().await;
    assert_eq!(sink.stats()[0].exported(), 3);
}

#[tokio::test]
async fn with_gzip_on_every_destination_gets_gzipped_exports() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (langfuse, collector, mut options) = langfuse_and_collector(vec![]).await;
    options.gzip = true;
    let (router, sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let prompt = "the same words again and again; ".repeat(2000);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": prompt}]}))
        .await;
    let id = request_id(&response);
    for mock in [&langfuse, &collector] {
        let span = mock.span_of(&id).await;
        assert_eq!(span.headers["content-encoding"], "gzip");
        assert_eq!(span.headers["content-type"], "application/x-protobuf");
        let input = json_attr(&span.span, "langfuse.observation.input").expect("input");
        assert_eq!(input[0]["content"], prompt.as_str());
        let exports = mock.exports();
        assert_eq!(exports.len(), 1);
        assert!(
            exports[0].wire_len * 10 < exports[0].body.len(),
            "{} bytes sent for {} of protobuf",
            exports[0].wire_len,
            exports[0].body.len()
        );
    }
    assert!(
        langfuse.exports()[0].headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    router.stop().await;
    assert_eq!(sink.stats()[0].exported(), 1);
}

#[tokio::test]
async fn shutdown_flushes_spans_still_waiting_for_their_batch() {
    let (_upstream, otlp, router, sink) = with_langfuse(false, |options| {
        options.export_interval = Duration::from_secs(3600);
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = router
            .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .await;
        ids.push(request_id(&response));
    }
    assert_eq!(otlp.spans().len(), 0, "nothing sent before the hour is up");
    router.stop().await;
    let spans = otlp.spans();
    let mut got: Vec<String> = spans.iter().map(|s| trace_id(&s.span)).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert_eq!(sink.stats()[0].exported(), 3);
}

/// Sends `n` chat requests one after another; their request ids, sorted.
async fn requests(router: &crate::support::TestRouter, n: usize) -> Vec<String> {
    let http = client();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let response = http
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
    }
    ids.sort();
    ids
}

/// The trace ids of every span `mock` received, sorted.
fn received_ids(mock: &MockOtlp) -> Vec<String> {
    let mut ids: Vec<String> = mock.spans().iter().map(|s| trace_id(&s.span)).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn on_shutdown_a_brief_429_is_waited_out_as_retry_after_asks_and_the_spans_arrive() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    otlp.script(&[(429, Some("1")), (429, Some("1"))]);
    let mut options = langfuse_options(&otlp);
    options.export_interval = Duration::from_secs(3600);
    options.shutdown_timeout = Duration::from_secs(10);
    let (router, sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    let ids = requests(&router, 3).await;
    assert_eq!(otlp.hits(), 0, "the spans wait for shutdown");
    let stopping = std::time::Instant::now();
    router.stop().await;
    let took = stopping.elapsed();
    assert_eq!(received_ids(&otlp), ids);
    let stats = &sink.stats()[0];
    assert_eq!(
        (stats.exported(), stats.failed(), stats.dropped()),
        (3, 0, 0)
    );
    let hits = otlp.hit_times();
    assert_eq!(hits.len(), 3, "two refusals, then the delivery");
    for pair in hits.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(1),
            "Retry-After: 1, waited {gap:?}"
        );
    }
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[tokio::test]
async fn on_shutdown_an_endpoint_that_never_recovers_is_retried_until_the_deadline_not_past_it() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    otlp.script(&[(429, Some("1")); 20]);
    let mut options = langfuse_options(&otlp);
    options.export_interval = Duration::from_secs(3600);
    options.shutdown_timeout = Duration::from_secs(3);
    options.retry.max_attempts = 20;
    let (router, sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    requests(&router, 3).await;
    let stopping = std::time::Instant::now();
    router.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(3500), "shutdown took {took:?}");
    let stats = &sink.stats()[0];
    assert_eq!(
        (stats.exported(), stats.failed()),
        (0, 3),
        "counted as lost"
    );
    let hits = otlp.hit_times();
    assert!(
        hits.len() >= 2,
        "retried during shutdown: {} tries",
        hits.len()
    );
    assert!(
        hits[1] - hits[0] >= Duration::from_secs(1),
        "Retry-After honoured while there was time"
    );
    assert!(
        hits.iter().all(|&t| t < stopping + Duration::from_secs(3)),
        "no attempt after the deadline"
    );
}

#[tokio::test]
async fn on_shutdown_an_endpoint_that_hangs_is_given_up_at_the_deadline() {
    let (_upstream, otlp, router, sink) = with_langfuse(true, |options| {
        options.export_interval = Duration::from_secs(3600);
        options.shutdown_timeout = Duration::from_secs(2);
    })
    .await;
    requests(&router, 2).await;
    let stopping = std::time::Instant::now();
    router.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");
    assert_eq!(otlp.hits(), 1);
    assert_eq!(sink.stats()[0].failed(), 2, "counted as lost");
}

#[tokio::test]
async fn a_slow_endpoint_makes_spans_wait_up_to_the_queue_limit_not_a_batch_count() {
    let (_upstream, otlp, router, sink) = with_langfuse(true, |options| {
        // Every span a batch of its own: far more batches than the export loop's queue holds.
        options.max_batch = 1;
    })
    .await;
    let stats = sink.stats()[0].clone();
    let ids = requests(&router, 100).await;
    wait_until(Duration::from_secs(10), || stats.pending() == 100).await;
    assert_eq!(
        stats.dropped(),
        0,
        "100 spans is far below the 8192 allowed"
    );
    otlp.release();
    wait_until(Duration::from_secs(20), || stats.exported() == 100).await;
    assert_eq!(received_ids(&otlp), ids);
    assert_eq!(
        (stats.dropped(), stats.failed(), stats.pending()),
        (0, 0, 0)
    );
    router.stop().await;
}

#[tokio::test]
async fn with_a_short_schedule_delay_a_backlog_for_a_slow_endpoint_leaves_in_big_batches() {
    let (_upstream, otlp, router, sink) = with_langfuse(true, |options| {
        options.export_interval = Duration::from_millis(1);
    })
    .await;
    let stats = sink.stats()[0].clone();
    let ids = requests(&router, 100).await;
    wait_until(Duration::from_secs(10), || stats.pending() == 100).await;
    assert_eq!(stats.dropped(), 0);
    otlp.release();
    wait_until(Duration::from_secs(20), || stats.exported() == 100).await;
    assert_eq!(received_ids(&otlp), ids);
    assert_eq!((stats.dropped(), stats.failed()), (0, 0));
    // While the endpoint held the first exports, the rest gathered in one batch, not 1 ms each.
    let exports = otlp.exports().len();
    assert!(exports < 20, "{exports} export requests for 100 spans");
    router.stop().await;
}

/// A router with a mock upstream and a Langfuse sink exporting to a mock OTLP endpoint (held:
/// it answers nothing until released), its options adjusted by `adjust`.
async fn with_langfuse(
    held: bool,
    adjust: impl FnOnce(&mut LangfuseOptions),
) -> (
    MockUpstream,
    MockOtlp,
    crate::support::TestRouter,
    Arc<LangfuseSink>,
) {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    if held {
        otlp.hold();
    }
    let mut options = langfuse_options(&otlp);
    adjust(&mut options);
    let (router, sink) =
        router_with_langfuse(&one_server_config(&upstream.url(), ""), options, |_| {}).await;
    (upstream, otlp, router, sink)
}
