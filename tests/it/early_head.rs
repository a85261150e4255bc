//! Streams the router answers before its upstream does: an upstream that sends no answer head
//! within the keep-alive interval (a server loading its model) leaves the client with the
//! router's own 200 and keep-alive comments, then the upstream's events or one error event.
//! An upstream that answers in time is relayed exactly as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llmsrouter::record::Outcome;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS, expected_stream, gzip};
use crate::support::{TestRouter, client, h2c_client, one_server_config, wait_until};

const KEEPALIVE: &str = ": keep-alive\n\n";

fn stream_request() -> Value {
    json!({"model": "[mock]m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// A router whose keep-alive interval is 100 ms, in front of `upstream`, with `extra` YAML
/// for its server.
async fn router_for(upstream: &MockUpstream, extra: &str) -> TestRouter {
    TestRouter::start_with(&one_server_config(&upstream.url(), extra), |state| {
        state.keepalive_interval = Duration::from_millis(100);
    })
    .await
}

type Body = futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>;

fn stream_to(router: &TestRouter) -> reqwest::RequestBuilder {
    client()
        .post(router.url("/v1/chat/completions"))
        .json(&stream_request())
}

/// Reads `body` until what arrived holds `n` keep-alive comments; returns what arrived.
async fn read_keepalives(body: &mut Body, n: usize) -> String {
    let mut seen = String::new();
    while seen.matches(KEEPALIVE).count() < n {
        let piece = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("keep-alive comments while the upstream is silent")
            .expect("the body goes on")
            .expect("body piece");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    seen
}

/// Reads the rest of `body` to its end.
async fn read_rest(body: &mut Body) -> String {
    let mut rest = String::new();
    while let Some(piece) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&piece.expect("body piece")));
    }
    rest
}

/// Sends `request`; its answer's head must come within 10 s, whatever the upstream does.
async fn head_of(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("the router answers while the upstream is silent")
        .expect("send")
}

fn assert_stream_head(response: &reqwest::Response) {
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-length").is_none());
    assert!(headers.get("x-llmsrouter-request-id").is_some());
}

/// A stream request's whole answer, a stream (its head checked), ended within 10 s.
async fn whole_stream(router: &TestRouter) -> String {
    let response = head_of(stream_to(router)).await;
    assert_stream_head(&response);
    let mut body: Body = response.bytes_stream().boxed();
    tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
        .await
        .expect("the stream ends")
}

/// Reads the rest of a stream the router opened early (`before`: what was read of it),
/// which must end with the router's one error event of `code` and `status`, and gives the
/// first request's record: the router's error, with that status.
async fn ends_with_the_routers_error(
    router: &TestRouter,
    body: &mut Body,
    before: String,
    (code, status): (&str, u16),
) -> Arc<llmsrouter::record::RequestRecord> {
    let rest = tokio::time::timeout(Duration::from_secs(10), read_rest(body))
        .await
        .expect("the stream ends");
    let event = only_event(&(before + &rest));
    assert_eq!(event["error"]["code"], code, "{event}");
    assert_eq!(event["error"]["status"], status);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(status));
    record
}

/// The one event after the keep-alive comments, parsed.
fn only_event(text: &str) -> Value {
    let events = text.replace(KEEPALIVE, "");
    assert_eq!(events.matches("data: ").count(), 1, "one event: {text:?}");
    assert!(
        events.starts_with("data: ") && events.ends_with("\n\n"),
        "{text:?}"
    );
    assert_eq!(
        events.trim_end().lines().count(),
        1,
        "on one line: {text:?}"
    );
    serde_json::from_str(events.trim_start_matches("data: ").trim_end()).expect("event json")
}

/// (1) The head comes after two intervals: the client already has its 200 and keep-alive
/// comments, then the events and `[DONE]` as in any stream (the usage chunk the router asked
/// for dropped), and the record is a success with its usage. HTTP/1 and HTTP/2 clients alike.
#[tokio::test]
async fn a_head_later_than_the_interval_gets_keep_alives_then_the_stream() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    for (n, (version, http)) in [("HTTP/1", client()), ("HTTP/2", h2c_client())]
        .into_iter()
        .enumerate()
    {
        let gate = Arc::new(Semaphore::new(0));
        upstream.set(Behavior {
            chunks: 3,
            hold_head: Some(gate.clone()),
            ..Default::default()
        });
        let request = http
            .post(router.url("/v1/chat/completions"))
            .json(&stream_request());
        let response = head_of(request).await;
        // The upstream has not answered: this head is the router's own.
        assert_stream_head(&response);
        let mut body: Body = response.bytes_stream().boxed();
        let before = read_keepalives(&mut body, 2).await;
        assert!(before.starts_with(KEEPALIVE), "{version}: {before:?}");
        gate.add_permits(1);
        let text = before + &read_rest(&mut body).await;
        assert_eq!(
            text.replace(KEEPALIVE, ""),
            expected_stream(&upstream.behavior(), false),
            "{version}"
        );
        let first_event = text.find("data: ").expect("events");
        assert!(
            text[..first_event].matches(KEEPALIVE).count() >= 2,
            "{version}: keep-alives before the events: {text:?}"
        );
        assert_eq!(
            upstream.last().json()["stream_options"],
            json!({"include_usage": true})
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{version}");
        assert_eq!(record.status, Some(200));
        assert!(record.complete);
        let usage = record.response.usage.clone().expect("usage");
        assert_eq!((usage.input, usage.output), (PROMPT_TOKENS, 3));
        assert_eq!(record.response.content, "tok0 tok1 tok2 ");
        let started = record.response_started_at.expect("the upstream's head");
        let first_token = record.first_token_at.expect("first token");
        assert!(
            started
                .duration_since(record.started_at)
                .unwrap_or_default()
                >= Duration::from_millis(100),
            "the head came after the interval"
        );
        assert!(first_token >= started);
    }
    router.stop().await;
}

/// (2) The head, when it comes, is an error: the client, already answered 200, gets one
/// error event holding what a whole answer would have (an OpenAI-shaped error unchanged, any
/// other wrapped; the configured key redacted) with the upstream's status, on one line, and
/// the stream ends. The upstream's `Retry-After` cannot follow a head that went out. The
/// record is the upstream's error with its status.
#[tokio::test]
async fn a_late_error_ends_the_stream_with_one_error_event() {
    let rate_limited = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let cases = [
        (429, "application/json", rate_limited.to_owned()),
        // Plain text over two lines, echoing the key the router sent.
        (
            503,
            "text/plain",
            "model is loading\nrejected key sk-mock-upstream-key".to_owned(),
        ),
        // An error under a 200, as a whole JSON answer: its own message, not "not an event
        // stream".
        (
            200,
            "application/json",
            r#"{"error":{"message":"provider overloaded: sk-mock-upstream-key","code":502}}"#
                .to_owned(),
        ),
    ];
    for (n, (status, content_type, body)) in cases.into_iter().enumerate() {
        let gate = Arc::new(Semaphore::new(0));
        upstream.set(Behavior {
            status,
            content_type: content_type.into(),
            body: Some(body),
            headers: vec![("retry-after".into(), "7".into())],
            hold_head: Some(gate.clone()),
            never_stream: true,
            ..Default::default()
        });
        let response = head_of(stream_to(&router)).await;
        assert_stream_head(&response);
        assert!(response.headers().get("retry-after").is_none());
        let mut body: Body = response.bytes_stream().boxed();
        let before = read_keepalives(&mut body, 1).await;
        gate.add_permits(1);
        let text = tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
            .await
            .expect("the stream ends after the error event");
        let text = before + &text;
        assert!(!text.contains("sk-mock-upstream-key"), "{text}");
        let event = only_event(&text);
        assert_eq!(event["error"]["status"], status, "{event}");

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        assert_eq!(record.status, Some(status));
        assert!(!record.usage_partial(), "nothing was generated");
        if status == 200 {
            assert_eq!(event["error"]["message"], "provider overloaded: [redacted]");
            assert_eq!(
                record.error.as_deref(),
                Some("provider overloaded: [redacted]")
            );
        } else if status == 429 {
            assert_eq!(event["error"]["message"], "Rate limit reached for requests");
            assert_eq!(event["error"]["code"], "rate_limit_exceeded");
            assert_eq!(event["error"]["type"], "requests");
            assert_eq!(
                record.error.as_deref(),
                Some("Rate limit reached for requests")
            );
        } else {
            assert_eq!(
                event["error"]["message"],
                "model is loading\nrejected key [redacted]"
            );
            assert_eq!(event["error"]["type"], "upstream_error");
        }
    }
    router.stop().await;
}

/// The error event of a stream opened early on `/v1/messages`, in Anthropic's form
/// (`event: error`, `{"type":"error","error":{"type","message"}}`) after the keep-alive
/// comments: its `error` object.
fn only_anthropic_error(text: &str) -> Value {
    let events = text.replace(KEEPALIVE, "");
    let Some(data) = events
        .strip_prefix("event: error\ndata: ")
        .and_then(|r| r.strip_suffix("\n\n"))
    else {
        panic!("one named error event: {text:?}");
    };
    assert!(!data.contains('\n'), "on one line: {text:?}");
    let payload: Value = serde_json::from_str(data).expect("event json");
    assert_eq!(payload["type"], "error", "{payload}");
    payload["error"].clone()
}

/// (2b) The same on `/v1/messages`: the Anthropic SDKs skip events without a name (a bare
/// `data: {"error": ...}` left them a stream with no events, and a bare assertion failure),
/// so the event is Anthropic's `error`: an Anthropic upstream's late 529 keeps its
/// `overloaded_error` and message, another error gets the type of its status, and the
/// router's own timeout is a `timeout_error` with its code in the message.
#[tokio::test]
async fn a_late_error_on_messages_ends_the_stream_with_an_anthropic_error_event() {
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "    timeout_secs: 2\n").await;
    let cases = [
        (529, overloaded, "overloaded_error", "Overloaded"),
        (
            429,
            "slow down, sk-mock-upstream-key",
            "rate_limit_error",
            "slow down, [redacted]",
        ),
        (
            200,
            "held",
            "timeout_error",
            "the upstream mock did not answer within 2 s (timeout_secs) (llmsrouter: upstream_timeout)",
        ),
    ];
    for (n, (status, body, kind, message)) in cases.into_iter().enumerate() {
        let gate = Arc::new(Semaphore::new(0));
        upstream.set(Behavior {
            status,
            body: Some(body.into()),
            hold_head: Some(gate.clone()),
            never_stream: true,
            ..Default::default()
        });
        let request = client().post(router.url("/v1/messages")).json(
            &json!({"model": "[mock]claude-x", "stream": true, "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}),
        );
        let response = head_of(request).await;
        assert_stream_head(&response);
        let mut body: Body = response.bytes_stream().boxed();
        let before = read_keepalives(&mut body, 1).await;
        if status != 200 {
            gate.add_permits(1);
        }
        let rest = tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
            .await
            .expect("the stream ends after the error event");
        let error = only_anthropic_error(&(before + &rest));
        assert_eq!(error["type"], kind, "{error}");
        assert_eq!(error["message"], message, "{error}");

        let record = router.records.nth(n + 1).await;
        if status == 200 {
            assert_eq!(record.outcome, Outcome::RouterError);
            assert_eq!(record.status, Some(504));
        } else {
            assert_eq!(record.outcome, Outcome::UpstreamError);
            assert_eq!(record.status, Some(status));
            assert_eq!(record.error.as_deref(), Some(message));
        }
        gate.add_permits(1);
    }
    router.stop().await;
}

/// (2c) The same on `/v1/responses`: the Responses API's `error` event (`event: error`,
/// `type`, `code`, `message`, `param`, `sequence_number` 0, the error object beside them),
/// which its schema-checking clients read (the chat form was a validation failure there):
/// the upstream's message and code (a number said as text, a float too), or its type when it
/// has no code (a text answer), the error object with that same code and the status, and the
/// router's own timeout. The record keeps that event as the answer: its error says what the
/// event said (before, a text answer's code was `null` there, a float code was dropped, and
/// the status was missing).
#[tokio::test]
async fn a_late_error_on_responses_ends_the_stream_with_a_responses_error_event() {
    let limited = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let numbered = r#"{"error":{"message":"busy","code":503}}"#;
    let float = r#"{"error":{"message":"busy","code":503.5}}"#;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "    timeout_secs: 2\n").await;
    let cases = [
        (
            429,
            limited,
            "rate_limit_exceeded",
            "requests",
            "Rate limit reached",
        ),
        (503, numbered, "503", "upstream_error", "busy"),
        (503, float, "503.5", "upstream_error", "busy"),
        (
            429,
            "slow down",
            "upstream_error",
            "upstream_error",
            "slow down",
        ),
        (
            200,
            "held",
            "upstream_timeout",
            "upstream_error",
            "the upstream mock did not answer within 2 s (timeout_secs)",
        ),
    ];
    for (n, (status, body, code, kind, message)) in cases.into_iter().enumerate() {
        let gate = Arc::new(Semaphore::new(0));
        upstream.set(Behavior {
            status,
            body: Some(body.into()),
            hold_head: Some(gate.clone()),
            never_stream: true,
            ..Default::default()
        });
        let request = client()
            .post(router.url("/v1/responses"))
            .json(&json!({"model": "[mock]gpt-x", "stream": true, "input": "hi"}));
        let response = head_of(request).await;
        assert_stream_head(&response);
        let mut body: Body = response.bytes_stream().boxed();
        let before = read_keepalives(&mut body, 1).await;
        if status != 200 {
            gate.add_permits(1);
        }
        let rest = tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
            .await
            .expect("the stream ends after the error event");
        let events = (before + &rest).replace(KEEPALIVE, "");
        let Some(data) = events
            .strip_prefix("event: error\ndata: ")
            .and_then(|r| r.strip_suffix("\n\n"))
        else {
            panic!("one named error event: {events:?}");
        };
        let event: Value = serde_json::from_str(data).expect("event json");
        assert_eq!(event["type"], "error", "{event}");
        assert_eq!(event["sequence_number"], 0, "{event}");
        assert_eq!(event["code"], code, "{event}");
        assert_eq!(event["message"], message, "{event}");
        assert_eq!(event["error"]["type"], kind, "{event}");
        assert_eq!(event["error"]["message"], message, "{event}");
        assert_eq!(event["error"]["code"], code, "{event}");
        let said_status = if status == 200 { 504 } else { status };
        assert_eq!(event["error"]["status"], said_status, "{event}");

        let record = router.records.nth(n + 1).await;
        if status == 200 {
            assert_eq!(record.outcome, Outcome::RouterError);
            assert_eq!(record.status, Some(504));
        } else {
            assert_eq!(record.outcome, Outcome::UpstreamError);
            assert_eq!(record.status, Some(status));
            assert_eq!(record.error.as_deref(), Some(message));
            let kept: Value = serde_json::from_slice(
                record
                    .response_body
                    .as_deref()
                    .expect("the event is the record's answer"),
            )
            .expect("json");
            assert_eq!(kept, event, "the record keeps what the event said");
        }
        gate.add_permits(1);
    }
    router.stop().await;
}

/// (3) No head within `timeout_secs`: the error event is the router's timeout (as a whole
/// answer's 504 would be), at `timeout_secs`, not when the upstream would have answered; the
/// record is the router's timeout.
#[tokio::test]
async fn no_head_within_timeout_secs_ends_the_stream_with_the_timeout() {
    let upstream = MockUpstream::start(Behavior {
        delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let router = router_for(&upstream, "    timeout_secs: 0.5\n").await;
    let started = Instant::now();
    let text = whole_stream(&router).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text.starts_with(KEEPALIVE), "{text:?}");
    let event = only_event(&text);
    assert_eq!(event["error"]["code"], "upstream_timeout", "{event}");
    assert_eq!(event["error"]["status"], 504);
    let message = event["error"]["message"].as_str().expect("message");
    assert!(message.contains("did not answer within 0.5 s"), "{message}");

    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(504));
    assert_eq!(record.error.as_deref(), Some(message));
    router.stop().await;
}

/// (3b) A head that came after the stream opened, then half a whole answer and silence (a 200
/// and an error status alike): the router's timeout still, but saying the upstream did not
/// finish its answer, not that it did not answer.
#[tokio::test]
async fn a_late_whole_answer_stuck_after_its_head_did_not_finish() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "    timeout_secs: 1\n").await;
    for (n, status) in [200, 500].into_iter().enumerate() {
        upstream.set(Behavior {
            status,
            delay: Duration::from_millis(300),
            never_stream: true,
            stall_whole: true,
            ..Default::default()
        });
        let response = head_of(stream_to(&router)).await;
        assert_stream_head(&response);
        let mut body: Body = response.bytes_stream().boxed();
        let text = tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
            .await
            .expect("the stream ends at timeout_secs");
        let event = only_event(&text);
        assert_eq!(event["error"]["code"], "upstream_timeout", "{event}");
        let message = event["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("the upstream mock did not finish its answer within 1 s"),
            "{message}"
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::RouterError);
        assert_eq!(record.status, Some(504));
        assert_eq!(record.error.as_deref(), Some(message));
    }
    router.stop().await;
}

/// (4) An upstream that answers within the interval is relayed byte for byte, with no
/// keep-alive comment; a whole request, and a stream on an endpoint whose streams need not be
/// SSE (Ollama's `/api/chat`), wait for their upstream however long it takes, as before.
#[tokio::test]
async fn an_upstream_answering_in_time_is_relayed_as_before() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 4,
        ..Default::default()
    })
    .await;
    let router = router_for(&upstream, "").await;
    let response = head_of(stream_to(&router)).await;
    assert_stream_head(&response);
    let text = response.text().await.expect("body");
    assert_eq!(text, expected_stream(&upstream.behavior(), false));

    upstream.set(Behavior {
        delay: Duration::from_millis(350),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().get("content-length").is_some());
    let text = response.text().await.expect("body");
    assert_eq!(
        text,
        crate::support::upstream::chat_completion("mock-model-2024")
    );

    let ndjson = b"{\"message\":{\"content\":\"hi\"},\"done\":true}\n".to_vec();
    upstream.set(Behavior {
        delay: Duration::from_millis(350),
        raw_chunks: Some(vec![ndjson.clone()]),
        stream_content_type: Some("application/x-ndjson".into()),
        ..Default::default()
    });
    let response = client()
        .post(router.url("/v1/api/chat"))
        .json(&stream_request())
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("body");
    assert_eq!(text.as_bytes(), ndjson, "the upstream's, no comment");
    router.stop().await;
}

/// A router whose upstream never sends its head, and the body of a stream it opened early.
async fn held_forever() -> (MockUpstream, TestRouter, Body) {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        hold_head: Some(gate),
        ..Default::default()
    })
    .await;
    let router = router_for(&upstream, "").await;
    let response = head_of(stream_to(&router)).await;
    assert_stream_head(&response);
    let body: Body = response.bytes_stream().boxed();
    (upstream, router, body)
}

/// A client that leaves while the upstream is still silent: recorded as a disconnect with
/// the status it got (the router's 200), and the wait (with its upstream connection) is
/// dropped.
#[tokio::test]
async fn a_client_leaving_before_the_head_is_recorded_as_a_disconnect() {
    let (_upstream, router, mut body) = held_forever().await;
    read_keepalives(&mut body, 1).await;
    drop(body);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert_eq!(
        record.status,
        Some(200),
        "the router's 200, which the client got"
    );
    router.stop().await;
}

/// Shutdown's hard stop while the upstream is still silent: the stream ends with the
/// router's `server_shutting_down` error event, recorded as the router's 503.
#[tokio::test]
async fn the_hard_stop_before_the_head_ends_the_stream_with_an_error_event() {
    let (upstream, router, mut body) = held_forever().await;
    let before = read_keepalives(&mut body, 1).await;
    router.state.hard_stop.fire();
    let error = ("server_shutting_down", 503);
    let record = ends_with_the_routers_error(&router, &mut body, before, error).await;
    assert!(record.usage_partial(), "the upstream had it");
    wait_until(Duration::from_secs(5), || upstream.count() == 1).await;
    router.stop().await;
}

/// Sends `request` to a router in front of `upstream`, which holds its head until the client
/// has had a keep-alive comment, then answers `answer` whole (`application/json`, ignoring
/// `"stream": true`); returns what the client got after the keep-alive comments.
async fn late_whole_answer(
    upstream: &MockUpstream,
    request: reqwest::RequestBuilder,
    answer: &Value,
) -> String {
    let behavior = Behavior {
        body: Some(answer.to_string()),
        ..Default::default()
    };
    late_answer(upstream, request, behavior).await
}

/// [`late_whole_answer`] with the upstream answering as `behavior` says.
async fn late_answer(
    upstream: &MockUpstream,
    request: reqwest::RequestBuilder,
    behavior: Behavior,
) -> String {
    let gate = Arc::new(Semaphore::new(0));
    upstream.set(Behavior {
        hold_head: Some(gate.clone()),
        never_stream: true,
        ..behavior
    });
    let response = head_of(request).await;
    assert_stream_head(&response);
    let mut body: Body = response.bytes_stream().boxed();
    let before = read_keepalives(&mut body, 1).await;
    assert_eq!(
        before, KEEPALIVE,
        "the router's own head, before the upstream's"
    );
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(10), read_rest(&mut body))
        .await
        .expect("the stream ends");
    rest.replace(KEEPALIVE, "")
}

/// The events of an event stream's `text` (each one `data:` line, `[DONE]` last), parsed.
pub(crate) fn chunk_events(text: &str) -> Vec<Value> {
    let body = text
        .strip_suffix("data: [DONE]\n\n")
        .unwrap_or_else(|| panic!("[DONE] last: {text:?}"));
    body.split_terminator("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("one data line: {event:?}"));
            assert!(!data.contains('\n'), "{event:?}");
            serde_json::from_str(data).expect("event json")
        })
        .collect()
}

fn whole_chat_completion() -> Value {
    json!({"id": "c1", "object": "chat.completion", "created": 1700000000, "model": "m-2024",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "the real answer",
            "reasoning_content": "thought"}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}})
}

/// (5) The upstream ignores `"stream": true` and, after the router began the stream, answers
/// one whole chat completion: the client gets it as the chunk a stream of it would have been
/// (the whole message as the delta, the answer's id, created, model and fingerprint), the
/// usage chunk only when it asked for `include_usage` itself (the one the router asks for
/// is not the client's), then `[DONE]`; the record is the whole answer's: a success with its
/// usage, model and output. A gzipped answer likewise, and a text completion on
/// `/v1/completions`.
#[tokio::test]
async fn a_late_whole_chat_completion_goes_as_its_chunks() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let answer = whole_chat_completion();
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "m-2024", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "the real answer",
            "reasoning_content": "thought"}, "logprobs": null, "finish_reason": "stop"}]});
    let usage_chunk = json!({"id": "c1", "object": "chat.completion.chunk",
        "created": 1700000000, "model": "m-2024", "system_fingerprint": "fp_1", "choices": [],
        "usage": answer["usage"]});
    for (n, client_usage) in [false, true].into_iter().enumerate() {
        let mut request = stream_request();
        if client_usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let post = client()
            .post(router.url("/v1/chat/completions"))
            .json(&request);
        let text = late_whole_answer(&upstream, post, &answer).await;
        let expected = if client_usage {
            vec![chunk.clone(), usage_chunk.clone()]
        } else {
            vec![chunk.clone()]
        };
        assert_eq!(
            chunk_events(&text),
            expected,
            "include_usage {client_usage}"
        );
        assert_eq!(
            upstream.last().json()["stream_options"],
            json!({"include_usage": true})
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
        assert_eq!(record.status, Some(200));
        assert!(record.complete);
        assert_eq!(record.error, None);
        let usage = record.response.usage.clone().expect("usage");
        assert_eq!((usage.input, usage.output, usage.total), (30, 20, 50));
        assert_eq!(record.response.content, "the real answer");
        assert_eq!(record.response.model.as_deref(), Some("m-2024"));
        assert!(!record.usage_partial());
    }

    // Compressed although asked for `identity`: read decoded, the same chunk.
    let gzipped = Behavior {
        raw_body: Some(gzip(answer.to_string().as_bytes())),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    };
    let post = client()
        .post(router.url("/v1/chat/completions"))
        .json(&stream_request());
    let text = late_answer(&upstream, post, gzipped).await;
    assert_eq!(chunk_events(&text), vec![chunk.clone()]);
    let record = router.records.nth(3).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response.usage.clone().expect("usage").total, 50);

    let text_answer = json!({"id": "t1", "object": "text_completion", "created": 1700000000,
        "model": "m-2024", "choices": [{"text": "once upon", "index": 0, "logprobs": null,
            "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    let post = client()
        .post(router.url("/v1/completions"))
        .json(&json!({"model": "[mock]m", "stream": true, "prompt": "tell"}));
    let text = late_whole_answer(&upstream, post, &text_answer).await;
    assert_eq!(
        chunk_events(&text),
        [
            json!({"id": "t1", "object": "text_completion", "created": 1700000000,
            "model": "m-2024", "choices": [text_answer["choices"][0].clone()]})
        ]
    );
    let record = router.records.nth(4).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response.usage.clone().expect("usage").total, 5);
    assert_eq!(record.response.content, "once upon");

    // Labelled as text: a whole answer all the same, as on the usual path.
    let as_text = Behavior {
        body: Some(answer.to_string()),
        content_type: "text/plain; charset=utf-8".into(),
        ..Default::default()
    };
    let post = client()
        .post(router.url("/v1/chat/completions"))
        .json(&stream_request());
    let text = late_answer(&upstream, post, as_text).await;
    assert_eq!(chunk_events(&text), vec![chunk.clone()]);
    let record = router.records.nth(5).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response.usage.clone().expect("usage").total, 50);
    router.stop().await;
}

/// (5b) A late whole answer that calls tools: each tool call goes in the delta with the
/// `index` a stream's tool call delta carries, the choice's `finish_reason` with it; the
/// record keeps the tool calls.
#[tokio::test]
async fn a_late_whole_answer_with_tool_calls_goes_as_tool_call_deltas() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let call = |id: &str, city: &str| {
        json!({"id": id, "type": "function",
            "function": {"name": "weather", "arguments": format!("{{\"city\":\"{city}\"}}")}})
    };
    let answer = json!({"id": "c2", "object": "chat.completion", "created": 1700000001,
        "model": "m-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [call("call_a", "Paris"), call("call_b", "Oslo")]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}});
    let post = client()
        .post(router.url("/v1/chat/completions"))
        .json(&stream_request());
    let text = late_whole_answer(&upstream, post, &answer).await;
    let mut first = call("call_a", "Paris");
    first["index"] = json!(0);
    let mut second = call("call_b", "Oslo");
    second["index"] = json!(1);
    assert_eq!(
        chunk_events(&text),
        [
            json!({"id": "c2", "object": "chat.completion.chunk", "created": 1700000001,
            "model": "m-2024",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": null,
                "tool_calls": [first, second]}, "finish_reason": "tool_calls"}]})
        ]
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response.usage.clone().expect("usage").total, 52);
    let calls: Vec<_> = record
        .response
        .tool_calls
        .iter()
        .map(|call| {
            (
                call.id.as_str(),
                call.name.as_str(),
                call.arguments.as_str(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("call_a", "weather", "{\"city\":\"Paris\"}"),
            ("call_b", "weather", "{\"city\":\"Oslo\"}")
        ]
    );
    router.stop().await;
}

/// (5c) A late whole answer of any other shape (a Responses API response, an Anthropic
/// message) cannot be sent in the stream: it ends with the router's `upstream_unreachable`
/// error event (Anthropic's form on `/v1/messages`, the Responses API's on `/v1/responses`), whose message says what came, not the
/// answer's text; the record keeps the answer with its status and usage, since the provider
/// billed it, as the router's failure.
#[tokio::test]
async fn a_late_whole_answer_of_another_shape_ends_with_upstream_unreachable() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let response = json!({"id": "resp_1", "object": "response", "model": "m-2024",
        "output": [{"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "a secret-ish long answer"}]}],
        "usage": {"input_tokens": 30, "output_tokens": 20, "total_tokens": 50}});
    let post = client()
        .post(router.url("/v1/responses"))
        .json(&json!({"model": "[mock]m", "stream": true, "input": "hi"}));
    let text = late_whole_answer(&upstream, post, &response).await;
    // The Responses API's own `error` event there (see
    // `a_late_error_on_responses_ends_the_stream_with_a_responses_error_event`).
    let named = text.replace(KEEPALIVE, "");
    let event = only_event(
        named
            .strip_prefix("event: error\n")
            .expect("named error event"),
    );
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["code"], "upstream_unreachable", "{event}");
    assert_eq!(event["error"]["code"], "upstream_unreachable", "{event}");
    let message = event["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("one whole JSON body of type \"response\""),
        "{message}"
    );
    assert!(!message.contains("long answer"), "{message}");
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(200));
    assert_eq!(record.error.as_deref(), Some(message));
    let usage = record.response.usage.clone().expect("the billed usage");
    assert_eq!((usage.input, usage.output), (30, 20));
    assert_eq!(record.response.model.as_deref(), Some("m-2024"));

    let message_answer = json!({"id": "msg_1", "type": "message", "role": "assistant",
        "model": "claude-x", "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 9, "output_tokens": 4}});
    let post = client().post(router.url("/v1/messages")).json(
        &json!({"model": "[mock]claude-x", "stream": true, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}),
    );
    let text = late_whole_answer(&upstream, post, &message_answer).await;
    let error = only_anthropic_error(&(KEEPALIVE.to_owned() + &text));
    assert_eq!(error["type"], "api_error", "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("one whole JSON body of type \"message\"")
            && message.ends_with("(llmsrouter: upstream_unreachable)"),
        "{message}"
    );
    let record = router.records.nth(2).await;
    assert_eq!(record.outcome, Outcome::RouterError);
    assert_eq!(record.status, Some(200));
    let usage = record.response.usage.clone().expect("the billed usage");
    assert_eq!((usage.input, usage.output), (9, 4));
    router.stop().await;
}

/// A late answer labelled JSON that is not JSON (an event stream under the wrong label) says
/// so; it read "one whole JSON body not valid JSON ... (its usage is recorded)".
#[tokio::test]
async fn a_late_answer_labelled_json_that_is_not_json_says_so() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let behavior = Behavior {
        body: Some("data: {\"choices\":[]}\n\ndata: [DONE]\n\n".into()),
        ..Default::default()
    };
    let text = late_answer(&upstream, stream_to(&router), behavior).await;
    let event = only_event(&text);
    assert_eq!(event["error"]["code"], "upstream_unreachable", "{event}");
    let message = event["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(
            "with a body labelled JSON that is not JSON (an event stream under the wrong label?); the router had already begun the stream"
        ),
        "{message}"
    );
    router.stop().await;
}

/// A stream answered early whose upstream then refuses the `stream_options` the router added
/// (a strict local server, slow to answer) is sent once more without them, and goes on in
/// the stream already begun; a usage chunk the upstream sends unasked is the client's.
#[tokio::test]
async fn a_late_refusal_of_stream_options_is_retried_in_the_open_stream() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        refuse_stream_options: Some(
            r#"{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}"#
                .to_owned(),
        ),
        hold_head: Some(gate.clone()),
        usage_always: true,
        ..Default::default()
    })
    .await;
    let router = router_for(&upstream, "").await;
    let response = head_of(stream_to(&router)).await;
    assert_stream_head(&response);
    let mut body: Body = response.bytes_stream().boxed();
    let before = read_keepalives(&mut body, 1).await;
    gate.add_permits(1000);
    let rest = read_rest(&mut body).await;
    let text = format!("{before}{rest}");
    let events = text.replace(KEEPALIVE, "");
    assert_eq!(events, expected_stream(&upstream.behavior(), true));
    let received = upstream.received();
    assert_eq!(received.len(), 2, "one retry");
    assert!(received[0].json().get("stream_options").is_some());
    assert!(received[1].json().get("stream_options").is_none());
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.status, Some(200));
    assert_eq!(
        record.response.usage.as_ref().map(|u| u.input),
        Some(PROMPT_TOKENS)
    );
    // Remembered: the next stream is not given them.
    let response = head_of(stream_to(&router)).await;
    read_rest(&mut response.bytes_stream().boxed()).await;
    assert_eq!(upstream.count(), 3);
    assert!(upstream.last().json().get("stream_options").is_none());
    router.stop().await;
}

/// An upstream that refuses the `stream_options` the router added at once, then is slow to
/// answer the request sent again without them (a strict local server loading its model): the
/// client gets the router's head and keep-alive comments meanwhile, as for any stream, not
/// silence until the upstream answers.
#[tokio::test]
async fn a_resend_without_stream_options_is_answered_early_while_the_upstream_is_silent() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        refuse_stream_options: Some(
            r#"{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}"#
                .to_owned(),
        ),
        refuse_at_once: true,
        hold_head: Some(gate.clone()),
        usage_always: true,
        ..Default::default()
    })
    .await;
    let router = router_for(&upstream, "").await;
    let response = head_of(stream_to(&router)).await;
    assert_stream_head(&response);
    let mut body: Body = response.bytes_stream().boxed();
    let before = read_keepalives(&mut body, 2).await;
    assert_eq!(upstream.count(), 2, "refused, then sent again");
    gate.add_permits(1000);
    let rest = read_rest(&mut body).await;
    let events = format!("{before}{rest}").replace(KEEPALIVE, "");
    assert_eq!(events, expected_stream(&upstream.behavior(), true));
    let received = upstream.received();
    assert!(received[0].json().get("stream_options").is_some());
    assert!(received[1].json().get("stream_options").is_none());
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(
        record.response.usage.as_ref().map(|u| u.input),
        Some(PROMPT_TOKENS)
    );
    router.stop().await;
}

/// The router's own 504 or 502 after its early head, when the upstream had the request (no
/// head within `timeout_secs`; a head, then half a whole answer and silence; the connection
/// closed unanswered a while after the request): the upstream may have generated, and billed,
/// an answer the client never got, so the record's usage is partial, not a free request.
#[tokio::test]
async fn a_late_router_failure_after_the_upstream_had_the_request_is_usage_partial() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "    timeout_secs: 1\n").await;
    let cases = [
        (
            "no head",
            Behavior {
                delay: Duration::from_secs(30),
                ..Default::default()
            },
        ),
        (
            "stuck answer",
            Behavior {
                delay: Duration::from_millis(300),
                never_stream: true,
                stall_whole: true,
                ..Default::default()
            },
        ),
    ];
    for (n, (case, behavior)) in cases.into_iter().enumerate() {
        upstream.set(behavior);
        let text = whole_stream(&router).await;
        assert!(
            text.starts_with(KEEPALIVE),
            "{case}: the router's head first"
        );
        let event = only_event(&text);
        assert_eq!(
            event["error"]["code"], "upstream_timeout",
            "{case}: {event}"
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::RouterError, "{case}");
        assert_eq!(record.status, Some(504), "{case}");
        assert!(record.response.usage.is_none(), "{case}");
        assert!(record.usage_partial(), "{case}: it had the request");
    }
    router.stop().await;

    let gate = Arc::new(Semaphore::new(0));
    let closing =
        crate::support::upstream::EarlyAnswer::closing_unanswered_when(gate.clone()).await;
    let router = TestRouter::start_with(&one_server_config(&closing.url(), ""), |state| {
        state.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let response = head_of(stream_to(&router)).await;
    assert_stream_head(&response);
    let mut body: Body = response.bytes_stream().boxed();
    let before = read_keepalives(&mut body, 1).await;
    gate.add_permits(1);
    let error = ("upstream_unreachable", 502);
    let record = ends_with_the_routers_error(&router, &mut body, before, error).await;
    assert!(record.usage_partial(), "closed after it had the request");
    assert_eq!(closing.connections(), 1, "never sent twice");
    router.stop().await;
}

/// A late whole chat completion (after the router's early head) over 256 KiB goes as its
/// events all the same (read on a blocking thread, as before the head). One over 16 MiB,
/// plain or gzipped, is not read into events: read into a tree such an answer took several
/// times its size on the connection's thread (a 60 MB one of tiny members, 570 MB). The head
/// already said "event stream", so it cannot go as it came, as it does before the head: the
/// stream ends with the router's `upstream_unreachable` error event saying why, and the
/// record keeps the answer with the upstream's status, so its usage is counted: the provider
/// billed it.
#[tokio::test]
async fn a_late_whole_answer_over_16_mib_ends_with_an_error_and_keeps_its_usage() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = router_for(&upstream, "").await;
    let answer = |size: usize| {
        json!({"id": "c", "object": "chat.completion", "model": "m-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x".repeat(size)},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}})
        .to_string()
    };
    let large = answer(300 * 1024);
    let behavior = Behavior {
        body: Some(large.clone()),
        ..Default::default()
    };
    let text = late_answer(&upstream, stream_to(&router), behavior).await;
    let events = chunk_events(&text);
    assert_eq!(events.len(), 1, "one chunk");
    assert_eq!(
        events[0]["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::len),
        Some(300 * 1024)
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);

    let huge = answer(17 * 1024 * 1024);

    let plain = Behavior {
        body: Some(huge.clone()),
        ..Default::default()
    };
    let gzipped = Behavior {
        raw_body: Some(gzip(huge.as_bytes())),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    };
    for (n, (case, behavior)) in [("plain", plain), ("gzip", gzipped)]
        .into_iter()
        .enumerate()
    {
        let text = late_answer(&upstream, stream_to(&router), behavior).await;
        let event = only_event(&text);
        assert_eq!(
            event["error"]["code"], "upstream_unreachable",
            "{case}: {event}"
        );
        assert_eq!(event["error"]["status"], 502, "{case}");
        let message = event["error"]["message"].as_str().expect("message");
        assert_eq!(
            message,
            format!(
                "the upstream mock answered HTTP 200 with one whole JSON body of {} bytes to \
                 a stream request, after the router had begun the stream (the upstream sent \
                 no answer within the keep-alive interval); it cannot be sent as that \
                 stream, as the router makes no events of a whole answer over 16 MiB (its \
                 usage is recorded)",
                huge.len()
            ),
            "{case}"
        );
        let record = router.records.nth(n + 2).await;
        assert_eq!(record.outcome, Outcome::RouterError, "{case}");
        assert_eq!(record.status, Some(200), "{case}: the upstream's");
        assert_eq!(record.error.as_deref(), Some(message), "{case}");
        let usage = record.response.usage.clone().expect("the billed usage");
        assert_eq!((usage.input, usage.output), (30, 20), "{case}");
        assert!(!record.usage_partial(), "{case}");
    }
    router.stop().await;
}
