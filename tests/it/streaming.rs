//! Streaming: bytes unchanged and unbuffered, usage injection and the dropped usage chunk,
//! keep-alive comments, failures mid-stream, client disconnects, the end after [DONE].

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llmsrouter::record::Outcome;
use serde_json::json;

use crate::early_head::chunk_events;
use crate::support::upstream::{
    Behavior, DONE, MockUpstream, PROMPT_TOKENS, compress_flushed, content_chunk, expected_stream,
    usage_chunk,
};
use crate::support::{TestRouter, client, one_server_config, post_json};

fn stream_request(model: &str) -> serde_json::Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads the whole body, noting when each piece arrived.
async fn read_timed(response: reqwest::Response) -> (Vec<(Instant, bytes::Bytes)>, String) {
    let mut pieces = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        pieces.push((Instant::now(), piece.expect("body piece")));
    }
    let text = pieces
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    (pieces, text)
}

#[tokio::test]
async fn stream_gets_usage_injected_and_the_usage_chunk_dropped() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 4,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]gpt-4o")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-length").is_none());
    assert!(headers.get("content-encoding").is_none());
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));

    let sent = upstream.last().json();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["model"], "gpt-4o");

    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.stream && record.complete);
    let usage = record
        .response
        .usage
        .clone()
        .expect("usage from the dropped chunk");
    assert_eq!(
        (usage.input, usage.output, usage.total),
        (PROMPT_TOKENS, 4, PROMPT_TOKENS + 4)
    );
    assert_eq!(record.response.content, "tok0 tok1 tok2 tok3 ");
    assert_eq!(record.response.finish_reason.as_deref(), Some("stop"));
    assert!(record.first_token_at.is_some());
    router.stop().await;
}

/// With every sink off the tee reads no event into a summary, only what forwarding needs:
/// the usage chunk the router asked for is still dropped, one the client asked for still
/// passes, and the body still ends at [DONE].
#[tokio::test]
async fn with_every_sink_off_streams_are_forwarded_the_same() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 4,
        // Junk after [DONE] on a connection that stays open: the body must end at [DONE].
        linger_after_done: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_unrecorded(&one_server_config(&upstream.url(), "")).await;
    for client_asked in [false, true] {
        let mut request = stream_request("[mock]gpt-4o");
        if client_asked {
            request["stream_options"] = json!({"include_usage": true});
        }
        let response = router.chat(&request).await;
        assert_eq!(response.status(), 200);
        let (_, text) = read_timed(response).await;
        assert_eq!(text, expected_stream(&upstream.behavior(), client_asked));
        assert_eq!(
            upstream.last().json()["stream_options"],
            json!({"include_usage": true})
        );
    }
    assert!(router.records.all().is_empty(), "no record was built");
    router.stop().await;
}

#[tokio::test]
async fn a_client_that_asked_for_usage_gets_the_usage_chunk() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut request = stream_request("[mock]m");
    request["stream_options"] = json!({"include_usage": true});
    let response = router.chat(&request).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), true));
    router.stop().await;
}

#[tokio::test]
async fn stream_usage_false_never_asks_and_an_unasked_usage_chunk_passes() {
    let upstream = MockUpstream::start(Behavior {
        usage_always: true,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    stream_usage: false\n",
    ))
    .await;
    let body = r#"{"model":"[mock]m","stream":true,"messages":[]}"#;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let (_, text) = read_timed(response).await;
    // The router did not ask, so the chunk is the upstream's own and reaches the client.
    assert_eq!(text, expected_stream(&upstream.behavior(), true));
    assert_eq!(
        upstream.last().body,
        r#"{"model":"m","stream":true,"messages":[]}"#
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(3));
    router.stop().await;
}

#[tokio::test]
async fn events_are_forwarded_as_they_arrive() {
    let gap = Duration::from_millis(300);
    let upstream = MockUpstream::start(Behavior {
        chunks: 3,
        gap: Some((2, gap)),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let (pieces, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    let second = content_chunk("mock-model-2024", 1, 3);
    let third = content_chunk("mock-model-2024", 2, 3);
    let arrival = |needle: &str| {
        let mut seen = String::new();
        for (at, piece) in &pieces {
            seen.push_str(&String::from_utf8_lossy(piece));
            if seen.contains(needle) {
                return *at;
            }
        }
        panic!("{needle} never arrived")
    };
    let waited = arrival(&third) - arrival(&second);
    // The upstream paused 300 ms between these events: the client must see that pause,
    // which it cannot if the router buffered the stream.
    assert!(
        waited >= Duration::from_millis(250),
        "gap at client {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "gap at client {waited:?}"
    );
    router.stop().await;
}

#[tokio::test]
async fn silence_gets_keep_alive_comments_between_events() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 2,
        gap: Some((1, Duration::from_millis(450))),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, text) = read_timed(response).await;
    let keepalives = text.matches(": keep-alive\n\n").count();
    assert!(keepalives >= 2, "expected keep-alive comments in {text:?}");
    assert_eq!(
        text.replace(": keep-alive\n\n", ""),
        expected_stream(&upstream.behavior(), false)
    );
    let first = content_chunk("mock-model-2024", 0, 2);
    assert!(
        text.starts_with(&first),
        "keep-alives come between events: {text:?}"
    );
    router.stop().await;
}

#[tokio::test]
async fn idle_timeout_mid_stream_ends_with_one_error_event() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 4,
        gap: Some((2, Duration::from_secs(5))),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.4\n",
    ))
    .await;
    let started = Instant::now();
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, text) = read_timed(response).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the client must not hang"
    );
    let expected_prefix: String = (0..2)
        .map(|i| content_chunk("mock-model-2024", i, 4))
        .collect();
    assert!(text.starts_with(&expected_prefix), "{text}");
    let rest = &text[expected_prefix.len()..];
    assert_eq!(rest.matches("data: ").count(), 1, "{rest}");
    let payload: serde_json::Value =
        serde_json::from_str(rest.trim().trim_start_matches("data: ")).expect("error event json");
    assert_eq!(payload["error"]["code"], "upstream_timeout");
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::StreamFailed);
    assert_eq!(record.response.content, "tok0 tok1 ");
    assert!(!record.complete);
    upstream
        .wait_streams_dropped(1, Duration::from_secs(5))
        .await;
    router.stop().await;
}

#[tokio::test]
async fn a_long_stream_is_not_cut_by_timeout_secs_while_events_flow() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 8,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    // 8 chunks 100 ms apart take ~800 ms, more than timeout_secs; no gap reaches it.
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.5\n",
    ))
    .await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    router.stop().await;
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_with_one_error_event() {
    let (_upstream, router, response) = stream_from(Behavior {
        chunks: 5,
        abort_after: Some(2),
        chunk_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let (_, text) = read_timed(response).await;
    let expected_prefix: String = (0..2)
        .map(|i| content_chunk("mock-model-2024", i, 5))
        .collect();
    assert!(text.starts_with(&expected_prefix), "{text}");
    let rest = &text[expected_prefix.len()..];
    let payload: serde_json::Value =
        serde_json::from_str(rest.trim().trim_start_matches("data: ")).expect("one error event");
    assert_eq!(payload["error"]["code"], "upstream_unreachable");
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::StreamFailed);
    assert!(record.error.as_deref().unwrap_or("").contains("mid-stream"));
    router.stop().await;
}

/// An Anthropic-style event (`event: <type>` before its data), as `/v1/messages` streams (and
/// the Responses API).
fn anthropic_event(data: &serde_json::Value) -> Vec<u8> {
    let name = data["type"].as_str().expect("typed event");
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The one named error event (`event: error`, then `{"type":"error",...}` on one line) that
/// follows `prefix` in `text`, as Anthropic's API and the Responses API write theirs: its
/// data.
fn named_error_after(text: &str, prefix: &str) -> serde_json::Value {
    assert!(text.starts_with(prefix), "{text}");
    let rest = &text[prefix.len()..];
    let Some(data) = rest
        .strip_prefix("event: error\ndata: ")
        .and_then(|r| r.strip_suffix("\n\n"))
    else {
        panic!("one named error event: {rest:?}");
    };
    assert!(!data.contains('\n'), "on one line: {rest:?}");
    let payload: serde_json::Value = serde_json::from_str(data).expect("error event json");
    assert_eq!(payload["type"], "error", "{payload}");
    payload
}

/// The one error event that follows `prefix` in `text`, in Anthropic's form (`event: error`,
/// then `{"type":"error","error":{"type","message"}}` on one line): its `error` object.
fn anthropic_error_after(text: &str, prefix: &str) -> serde_json::Value {
    let payload = named_error_after(text, prefix);
    let error = payload["error"].clone();
    let keys: Vec<&String> = error.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["message", "type"],
        "Anthropic's members only: {payload}"
    );
    error
}

/// On `/v1/messages` the router's own error event is Anthropic's (`event: error`), since the
/// Anthropic SDKs skip events without a name and would take a cut answer as complete: an
/// upstream reset is an `api_error`, `timeout_secs` of silence a `timeout_error`, each with
/// the router's code in its message. The record is the broken stream, as on other paths.
#[tokio::test]
async fn a_cut_anthropic_stream_ends_with_an_anthropic_error_event() {
    let events = vec![
        anthropic_event(&json!({"type": "message_start", "message": {"id": "msg_1",
            "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}})),
        anthropic_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Partial"}})),
        anthropic_event(&json!({"type": "message_stop"})),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.4\n",
    ))
    .await;
    let cases = [
        (
            Behavior {
                abort_after: Some(2),
                chunk_delay: Duration::from_millis(20),
                ..Default::default()
            },
            "api_error",
            "upstream_unreachable",
        ),
        (
            Behavior {
                gap: Some((2, Duration::from_secs(5))),
                ..Default::default()
            },
            "timeout_error",
            "upstream_timeout",
        ),
    ];
    for (n, (behavior, kind, code)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(events.clone()),
            ..behavior
        });
        let response = client()
            .post(router.url("/v1/messages"))
            .json(
                &json!({"model": "[mock]claude-x", "stream": true, "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let (_, text) = read_timed(response).await;
        let error = anthropic_error_after(&text, &String::from_utf8_lossy(&events[..2].concat()));
        assert_eq!(error["type"], kind, "{error}");
        let message = error["message"].as_str().expect("message");
        assert!(
            message.ends_with(&format!(" (llmsrouter: {code})")),
            "{message}"
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::StreamFailed, "{code}");
        assert_eq!(
            record.error.as_deref(),
            message.strip_suffix(&format!(" (llmsrouter: {code})"))
        );
        assert_eq!(record.response.content, "Partial");
        assert!(!record.complete);
    }
    router.stop().await;
}

/// The one error event that follows `prefix` in `text`, in the Responses API's form
/// (`event: error`, then `{"type":"error","code","message","param","sequence_number",
/// "error":{...}}` on one line).
fn responses_error_after(text: &str, prefix: &str) -> serde_json::Value {
    let payload = named_error_after(text, prefix);
    assert_eq!(payload["param"], serde_json::Value::Null, "{payload}");
    assert_eq!(payload["message"], payload["error"]["message"], "{payload}");
    assert_eq!(payload["code"], payload["error"]["code"], "{payload}");
    payload
}

/// On `/v1/responses` the router's own error event is that API's `error` event: clients that
/// check each event against the API's schema (the Vercel AI SDK) refused the chat form
/// (`data: {"error": ...}`, no `type`, no name) and showed a validation dump. Its
/// `sequence_number` follows the last event's; the error object is there too, where OpenAI's
/// SDKs look for it.
#[tokio::test]
async fn a_cut_responses_stream_ends_with_a_responses_error_event() {
    let events = vec![
        anthropic_event(&json!({"type": "response.created", "sequence_number": 0,
            "response": {"id": "resp_1", "model": "gpt-x", "status": "in_progress"}})),
        anthropic_event(
            &json!({"type": "response.output_text.delta", "sequence_number": 41,
            "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Partial"}),
        ),
        anthropic_event(&json!({"type": "response.completed", "sequence_number": 42,
            "response": {"id": "resp_1", "model": "gpt-x", "status": "completed"}})),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "    timeout_secs: 0.4\n",
    ))
    .await;
    let cases = [
        (
            Behavior {
                abort_after: Some(2),
                chunk_delay: Duration::from_millis(20),
                ..Default::default()
            },
            "upstream_unreachable",
        ),
        (
            Behavior {
                gap: Some((2, Duration::from_secs(5))),
                ..Default::default()
            },
            "upstream_timeout",
        ),
    ];
    for (n, (behavior, code)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(events.clone()),
            ..behavior
        });
        let response = client()
            .post(router.url("/v1/responses"))
            .json(&json!({"model": "[mock]gpt-x", "stream": true, "input": "hi"}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let (_, text) = read_timed(response).await;
        let event = responses_error_after(&text, &String::from_utf8_lossy(&events[..2].concat()));
        assert_eq!(event["code"], code, "{event}");
        assert_eq!(event["sequence_number"], 42, "{event}");
        assert_eq!(event["error"]["type"], "upstream_error", "{event}");

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::StreamFailed, "{code}");
        assert_eq!(record.error.as_deref(), event["message"].as_str());
        assert_eq!(record.response.content, "Partial");
    }
    router.stop().await;
}

#[tokio::test]
async fn client_disconnect_drops_the_upstream_and_keeps_a_partial_record() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 50,
        chunk_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("tok1 ") {
        let piece = stream.next().await.expect("piece").expect("ok");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    drop(stream);
    upstream
        .wait_streams_dropped(1, Duration::from_secs(5))
        .await;
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(
        record.response.content.starts_with("tok0 tok1 "),
        "{:?}",
        record.response.content
    );
    assert!(!record.complete);
    router.stop().await;
}

#[tokio::test]
async fn the_body_ends_right_after_done() {
    let upstream = MockUpstream::start(Behavior {
        linger_after_done: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let started = Instant::now();
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, text) = read_timed(response).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text.ends_with(DONE));
    assert!(!text.contains("after"));
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    router.stop().await;
}

/// Reads `response` until `marker` has arrived (panics if it does not within 10 s), then
/// drops it, as an SDK that stops at an event and closes the connection does: what came.
async fn read_until_and_leave(response: reqwest::Response, marker: &str) -> String {
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let read = async {
        while !seen.contains(marker) {
            let piece = body.next().await.expect("more").expect("a piece");
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{marker:?} arrived"));
    drop(body);
    seen
}

/// A stream request to `path` in the shape its format wants.
async fn post_stream(router: &TestRouter, path: &str) -> reqwest::Response {
    let response = client()
        .post(router.url(path))
        .json(
            &json!({"model": "[mock]m", "stream": true, "max_tokens": 5, "input": "hi",
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    response
}

/// A stream in a format without `[DONE]`, ending with its own last event: the path, the
/// events, and the record's outcome and error.
struct EndedStream {
    path: &'static str,
    events: Vec<Vec<u8>>,
    outcome: Outcome,
    error: Option<&'static str>,
}

fn streams_ended_by_their_last_event() -> Vec<EndedStream> {
    let anthropic = vec![
        anthropic_event(&json!({"type": "message_start", "message": {"id": "msg_1",
            "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}})),
        anthropic_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hi"}})),
        anthropic_event(
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2}}),
        ),
        anthropic_event(&json!({"type": "message_stop"})),
    ];
    let responses = |last: &str, status: &str, error: serde_json::Value| {
        vec![
            anthropic_event(
                &json!({"type": "response.created", "response": {"id": "resp_1",
                "model": "m", "status": "in_progress", "output": []}}),
            ),
            anthropic_event(&json!({"type": "response.output_text.delta", "delta": "Hi"})),
            anthropic_event(
                &json!({"type": last, "response": {"id": "resp_1", "model": "m",
                "status": status, "error": error, "usage": {"input_tokens": 5,
                "output_tokens": 1, "total_tokens": 6}}}),
            ),
        ]
    };
    let failed = json!({"code": "server_error", "message": "The model failed"});
    let stream = |path, events, outcome, error| EndedStream {
        path,
        events,
        outcome,
        error,
    };
    vec![
        stream("/v1/messages", anthropic, Outcome::Success, None),
        stream(
            "/v1/responses",
            responses("response.completed", "completed", serde_json::Value::Null),
            Outcome::Success,
            None,
        ),
        stream(
            "/v1/responses",
            responses("response.incomplete", "incomplete", serde_json::Value::Null),
            Outcome::Success,
            None,
        ),
        stream(
            "/v1/responses",
            responses("response.failed", "failed", failed),
            Outcome::UpstreamError,
            Some("The model failed"),
        ),
    ]
}

/// Anthropic's `message_stop` and the Responses API's `response.completed`, `incomplete`
/// and `failed` end their answer as `[DONE]` does: the body ends right after them, though
/// the upstream holds its connection open, and a client that leaves as soon as the event
/// came (an SDK stopping at it) leaves the record the stream ended with (complete, its
/// usage; `response.failed` the upstream's error), not a disconnect. With every sink off
/// the body ends there too.
#[tokio::test]
async fn the_body_ends_right_after_a_formats_last_event() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let unrecorded = TestRouter::start_unrecorded(&one_server_config(&upstream.url(), "")).await;
    let mut n = 0;
    for stream in streams_ended_by_their_last_event() {
        let path = stream.path;
        upstream.set(Behavior {
            raw_chunks: Some(stream.events.clone()),
            // Junk after the last event on a connection that stays open.
            linger_after_done: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let last = String::from_utf8_lossy(stream.events.last().expect("events")).into_owned();
        let check_record = |record: &llmsrouter::record::RequestRecord| {
            assert_eq!(record.outcome, stream.outcome, "{path}: {:?}", record.error);
            assert_eq!(record.error.as_deref(), stream.error, "{path}");
            assert!(record.complete && !record.usage_partial(), "{path}");
            assert_eq!(record.response.content, "Hi", "{path}");
        };
        read_until_and_leave(post_stream(&router, path).await, &last).await;
        n += 1;
        check_record(&*router.records.nth(n).await);
        for router in [&router, &unrecorded] {
            let response = post_stream(router, path).await;
            let (_, text) = tokio::time::timeout(Duration::from_secs(10), read_timed(response))
                .await
                .unwrap_or_else(|_| panic!("{path}: the body ended at {last:?}"));
            assert_eq!(text.as_bytes(), stream.events.concat(), "{path}");
        }
        n += 1;
        check_record(&*router.records.nth(n).await);
    }
    assert!(unrecorded.records.all().is_empty());
    unrecorded.stop().await;
    router.stop().await;
}

/// An upstream's error event mid-stream (Anthropic's `event: error`, a chat chunk
/// `{"error": {...}}`, the Responses API's `error`), the upstream holding its connection
/// open after it: a client that leaves as soon as it came (the SDKs raise on it and close)
/// leaves the upstream's error as the outcome, with its message, not a disconnect.
#[tokio::test]
async fn a_client_leaving_after_an_upstream_error_event_leaves_the_upstreams_error() {
    let anthropic = vec![
        anthropic_event(&json!({"type": "message_start", "message": {"id": "msg_1",
            "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}})),
        anthropic_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Par"}})),
        anthropic_event(&json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}})),
    ];
    let chat = vec![
        content_chunk("m", 0, 2).into_bytes(),
        b"data: {\"error\":{\"message\":\"Provider returned error\",\"code\":502}}\n\n".to_vec(),
    ];
    let responses = vec![
        anthropic_event(
            &json!({"type": "response.created", "response": {"id": "resp_1",
            "model": "m", "status": "in_progress", "output": []}}),
        ),
        anthropic_event(&json!({"type": "response.output_text.delta", "delta": "Par"})),
        anthropic_event(&json!({"type": "error", "code": "server_error",
            "message": "mid-stream boom", "param": null})),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let cases = [
        ("/v1/messages", anthropic, "Overloaded"),
        ("/v1/chat/completions", chat, "Provider returned error"),
        ("/v1/responses", responses, "mid-stream boom"),
    ];
    for (n, (path, events, message)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(events.clone()),
            linger_after_done: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let last = String::from_utf8_lossy(events.last().expect("events")).into_owned();
        let seen = read_until_and_leave(post_stream(&router, path).await, &last).await;
        assert_eq!(
            seen.as_bytes(),
            events.concat(),
            "{path}: relayed as it came"
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{path}");
        assert_eq!(record.error.as_deref(), Some(message), "{path}");
        assert_eq!(record.status, Some(200), "{path}");
        assert!(!record.complete && record.usage_partial(), "{path}");
    }
    router.stop().await;
}

/// A chat stream ends at `[DONE]` only: an upstream that names one of its chunks
/// `message_stop` or `response.completed` (a proxy translating formats, say) does not cut it
/// short; those names end only their own endpoints' streams.
#[tokio::test]
async fn a_chat_stream_is_not_ended_by_another_formats_last_event_name() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for name in ["message_stop", "response.completed"] {
        let chunks = vec![
            content_chunk("m", 0, 3).into_bytes(),
            format!("event: {name}\n{}", content_chunk("m", 1, 3)).into_bytes(),
            content_chunk("m", 2, 3).into_bytes(),
            b"data: [DONE]\n\n".to_vec(),
        ];
        upstream.set(Behavior {
            raw_chunks: Some(chunks.clone()),
            ..Default::default()
        });
        let text = post_stream(&router, "/v1/chat/completions")
            .await
            .text()
            .await
            .expect("body");
        let sent = String::from_utf8(chunks.concat()).expect("UTF-8");
        assert_eq!(text, sent, "{name}: relayed whole");
    }
    router.stop().await;
}

/// An upstream that resets its connection after its own error event: the record keeps the
/// provider's message as the upstream's error (not the router's "reset"), and the client,
/// which got that event, gets no second error event from the router.
#[tokio::test]
async fn a_reset_after_an_upstream_error_event_keeps_the_upstreams_error() {
    let anthropic = vec![
        anthropic_event(&json!({"type": "message_start", "message": {"id": "msg_1",
            "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}})),
        anthropic_event(&json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}})),
    ];
    let chat = vec![
        content_chunk("m", 0, 2).into_bytes(),
        b"data: {\"error\":{\"message\":\"Provider returned error\",\"code\":502}}\n\n".to_vec(),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let cases = [
        ("/v1/messages", anthropic, "Overloaded"),
        ("/v1/chat/completions", chat, "Provider returned error"),
    ];
    for (n, (path, events, message)) in cases.into_iter().enumerate() {
        let sent = events.len();
        let mut chunks = events.clone();
        // Never sent: the connection is cut where it would go.
        chunks.push(b"data: {}\n\n".to_vec());
        upstream.set(Behavior {
            raw_chunks: Some(chunks),
            abort_after: Some(sent),
            // Each event goes out on its own, the cut after them.
            chunk_delay: Duration::from_millis(20),
            ..Default::default()
        });
        let text = post_stream(&router, path).await.text().await.expect("body");
        let sent = String::from_utf8(events.concat()).expect("UTF-8");
        assert_eq!(text, sent, "{path}: nothing added");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{path}");
        assert_eq!(record.error.as_deref(), Some(message), "{path}");
    }
    router.stop().await;
}

/// A speech event stream's `speech.audio.done` does not end the body (only the chat, Anthropic
/// and Responses formats' last events do), but it ends the answer: a client that leaves right
/// after it, the upstream holding its connection open, leaves a complete record with its
/// usage, as a reset after it does, not a disconnect.
#[tokio::test]
async fn a_client_leaving_after_a_speech_streams_done_event_leaves_a_complete_record() {
    let done = "data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_tokens\":3,\"output_tokens\":9,\"total_tokens\":12}}\n\n";
    let upstream = MockUpstream::start(Behavior {
        stream_unasked: true,
        raw_chunks: Some(vec![
            b"data: {\"type\":\"speech.audio.delta\",\"audio\":\"AAA\"}\n\n".to_vec(),
            done.as_bytes().to_vec(),
        ]),
        linger_after_done: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = client()
        .post(router.url("/v1/audio/speech"))
        .json(
            &json!({"model": "[mock]tts", "voice": "alloy", "input": "hello",
            "stream_format": "sse"}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    read_until_and_leave(response, done).await;
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert!(record.complete && !record.usage_partial());
    assert_eq!(record.response.usage.as_ref().map(|u| u.total), Some(12));
    router.stop().await;
}

/// A stream request answered by an upstream that sends exactly `chunks`: the mock, the
/// router and the answer's head.
async fn stream_of_raw_chunks(chunks: &[Vec<u8>]) -> (MockUpstream, TestRouter, reqwest::Response) {
    stream_from(Behavior {
        raw_chunks: Some(chunks.to_vec()),
        ..Default::default()
    })
    .await
}

/// A stream request through a router to an upstream that behaves so.
async fn stream_from(behavior: Behavior) -> (MockUpstream, TestRouter, reqwest::Response) {
    let upstream = MockUpstream::start(behavior).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    (upstream, router, response)
}

#[tokio::test]
async fn raw_events_in_any_line_ending_pass_byte_for_byte() {
    let chunks: Vec<Vec<u8>> = vec![
        b": OPENROUTER PROCESSING\r\n\r\n".to_vec(),
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: {\"choi".to_vec(),
        b"ces\":[{\"delta\":{\"reasoning_content\":\"r\"}}]}\n\n".to_vec(),
        usage_chunk("m", 1).into_bytes(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    let mut expected: Vec<u8> = chunks[..3].concat();
    expected.extend_from_slice(b"data: [DONE]\n\n");
    assert_eq!(text.as_bytes(), &expected[..]);
    let record = router.records.nth(1).await;
    assert_eq!(record.response.content, "a");
    assert_eq!(record.response.reasoning, "r");
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(1));
    router.stop().await;
}

/// An upstream that closes its event stream cleanly after some tokens, before its usage and
/// `[DONE]`: the client gets what was sent, and the record keeps the answer but says its
/// token counts are unknown (partial), not a whole answer that used none.
#[tokio::test]
async fn a_stream_closed_before_done_and_usage_is_recorded_as_partial() {
    let chunks: Vec<Vec<u8>> = vec![
        content_chunk("m", 0, 2).into_bytes(),
        content_chunk("m", 1, 2).into_bytes(),
    ];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    assert_eq!(response.status(), 200);
    let (_, text) = read_timed(response).await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..]);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.response.content, "tok0 tok1 ");
    assert!(record.response.usage.is_none());
    assert!(!record.complete);
    assert!(record.usage_partial(), "closed before its usage");
    router.stop().await;
}

/// The upstream's body ends inside its last event (no blank line after it), and that event is
/// the usage-only chunk the router asked for: it is not the client's, whole or not, so it is
/// dropped; its usage still counts. The record is a stream that ended without its `[DONE]`.
#[tokio::test]
async fn an_unfinished_usage_chunk_the_router_asked_for_is_dropped_and_counted() {
    let content = content_chunk("m", 0, 1);
    let usage = usage_chunk("m", 1);
    let chunks: Vec<Vec<u8>> = vec![content.clone().into(), usage.trim_end().into()];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(
        text, content,
        "nothing of the usage chunk reached the client"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(1));
    assert!(!record.complete, "no [DONE] came");
    router.stop().await;
}

/// The same usage chunk cut short by the end of the body (a Content-Length shorter than what
/// the upstream meant to send): it cannot be read, but a piece of JSON naming a `usage`
/// object, when the router asked for it, is taken for that chunk and dropped too.
#[tokio::test]
async fn a_usage_chunk_cut_short_the_router_asked_for_is_dropped() {
    let content = content_chunk("m", 0, 1);
    let usage = usage_chunk("m", 1);
    let cut = &usage[..usage.find("\"completion_tokens\"").expect("field")];
    let chunks: Vec<Vec<u8>> = vec![content.clone().into(), cut.into()];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, content);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.response.usage.is_none());
    assert!(record.usage_partial());
    router.stop().await;
}

/// Any other event the body ends inside reaches the client as it came, at the body's end:
/// a content chunk cut short, and the usage chunk the client asked for itself. SSE clients
/// discard such an event; the bytes are the upstream's all the same.
#[tokio::test]
async fn other_unfinished_last_events_are_passed_on_as_they_came() {
    let content = content_chunk("m", 0, 2);
    let half = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"HALF";
    let chunks: Vec<Vec<u8>> = vec![content.clone().into(), half.into()];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, format!("{content}{half}"));
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(!record.complete);
    router.stop().await;

    let usage = usage_chunk("m", 1);
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![content.clone().into(), usage.trim_end().into()]),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut asked = stream_request("[mock]m");
    asked["stream_options"] = json!({"include_usage": true});
    let (_, text) = read_timed(router.chat(&asked).await).await;
    assert_eq!(
        text,
        format!("{content}{}", usage.trim_end()),
        "the client's own usage chunk"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(1));
    router.stop().await;
}

/// The same stream with its `[DONE]` but no usage (an upstream that ignores
/// `include_usage`) ran to its end: usage unknown, but nothing was cut.
#[tokio::test]
async fn a_stream_with_done_but_no_usage_is_not_partial() {
    let chunks: Vec<Vec<u8>> = vec![
        content_chunk("m", 0, 2).into_bytes(),
        DONE.as_bytes().to_vec(),
    ];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..]);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete);
    assert!(record.response.usage.is_none());
    assert!(!record.usage_partial());
    router.stop().await;
}

/// Events whose lines end in a lone `\r` (the SSE format allows it) are forwarded as soon as
/// their blank line is in, like any other: the router does not wait for the next byte to see
/// whether a `\n` follows.
/// Reads `response` until `first` has arrived while the upstream holds a later chunk behind
/// `gate` (panics if it does not within 10 s), then lets the upstream go on and reads the
/// rest: (what came before the release, everything).
pub(crate) async fn read_past_a_held_chunk(
    response: reqwest::Response,
    first: &str,
    gate: &tokio::sync::Semaphore,
) -> (String, String) {
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    let read_first = async {
        while !seen.contains(first) {
            let piece = stream.next().await.expect("a piece").expect("ok");
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_first)
        .await
        .expect("the first event arrived while the upstream held a later chunk");
    let before = seen.clone();
    gate.add_permits(1);
    while let Some(piece) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&piece.expect("ok")));
    }
    (before, seen)
}

#[tokio::test]
async fn an_event_ending_in_lone_crs_is_forwarded_without_waiting_for_the_next() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\r";
    let chunks: Vec<Vec<u8>> = vec![first.into(), b"data: [DONE]\r\r".to_vec()];
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(chunks.clone()),
        hold_chunk: Some((1, gate.clone())),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, seen) = read_past_a_held_chunk(response, first, &gate).await;
    assert_eq!(seen.as_bytes(), chunks.concat());
    let record = router.records.nth(1).await;
    assert_eq!(record.response.content, "a");
    assert!(record.complete);
    router.stop().await;
}

/// The usage chunk the router asked for is dropped, but not the '\n' in front of it when an
/// upstream chunk ended between the '\r' and the '\n' of the event before: the client's
/// bytes are the upstream's less that chunk exactly.
#[tokio::test]
async fn a_dropped_usage_chunk_keeps_the_lf_of_a_split_crlf_before_it() {
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r";
    let usage = usage_chunk("m", 1).replace("\n\n", "\r\n\r\n");
    let chunks: Vec<Vec<u8>> = vec![
        first.into(),
        format!("\n{usage}").into_bytes(),
        b"data: [DONE]\r\n\r\n".to_vec(),
    ];
    // Apart in time, so they reach the router as the separate reads they are.
    let (_upstream, router, response) = stream_from(Behavior {
        raw_chunks: Some(chunks),
        chunk_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, format!("{first}\ndata: [DONE]\r\n\r\n"));
    let record = router.records.nth(1).await;
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(1));
    router.stop().await;
}

/// The other side of the same cut: the usage chunk ends between its blank line's '\r' and
/// '\n'. That '\n' comes at the front of the next read and is the dropped chunk's, not the
/// client's: before, the client got it as a stray blank line before `[DONE]`.
#[tokio::test]
async fn a_dropped_usage_chunk_takes_the_lf_of_its_own_split_crlf() {
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n";
    let usage = usage_chunk("m", 1).replace("\n\n", "\r\n\r");
    let chunks: Vec<Vec<u8>> = vec![
        first.into(),
        usage.into_bytes(),
        b"\ndata: [DONE]\r\n\r\n".to_vec(),
    ];
    let (_upstream, router, response) = stream_from(Behavior {
        raw_chunks: Some(chunks),
        chunk_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text, format!("{first}data: [DONE]\r\n\r\n"));
    let record = router.records.nth(1).await;
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(1));
    router.stop().await;
}

/// `[DONE]`'s blank line cut between its '\r' and '\n': the body ends at `[DONE]`, once the
/// upstream's next read has told whether a '\n' completes it; it does, and goes too, so the
/// client's bytes are the upstream's (before, they ended in a lone '\r').
#[tokio::test]
async fn a_done_cut_inside_its_last_crlf_reaches_the_client_whole() {
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n";
    let chunks: Vec<Vec<u8>> = vec![first.into(), b"data: [DONE]\r\n\r".to_vec(), b"\n".to_vec()];
    let (_upstream, router, response) = stream_from(Behavior {
        raw_chunks: Some(chunks.clone()),
        chunk_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text.as_bytes(), chunks.concat());
    assert!(router.records.nth(1).await.complete);
    router.stop().await;
}

/// `[DONE]` ending in a lone `\r` after its last CRLF, the upstream's last bytes: the client
/// gets them as they came, the body ending there; nothing is added (before, the router
/// completed a CRLF the upstream never sent). So too when other bytes follow that `\r` in
/// the same read: they are after the end, and no `\n` is made up for them.
#[tokio::test]
async fn a_done_ending_in_a_lone_cr_reaches_the_client_as_it_came() {
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n";
    for last in [&b"data: [DONE]\r\n\r"[..], b"data: [DONE]\r\n\r: after\n\n"] {
        let chunks: Vec<Vec<u8>> = vec![first.into(), last.to_vec()];
        let (_upstream, router, response) = stream_from(Behavior {
            raw_chunks: Some(chunks),
            chunk_delay: Duration::from_millis(30),
            ..Default::default()
        })
        .await;
        let (_, text) = read_timed(response).await;
        assert_eq!(text, format!("{first}data: [DONE]\r\n\r"));
        let record = router.records.nth(1).await;
        assert!(record.complete);
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.response.content, "a");
        router.stop().await;
    }
}

/// `[DONE]` ending in a lone `\r`, and then the upstream neither sends the `\n` nor closes:
/// the client's body still ends, soon and without a `\n` the upstream did not send, and the
/// record is complete at `[DONE]`.
#[tokio::test]
async fn a_done_ending_in_a_lone_cr_ends_the_body_when_nothing_follows() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n";
    let chunks: Vec<Vec<u8>> = vec![first.into(), b"data: [DONE]\r\n\r".to_vec(), b"\n".to_vec()];
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(chunks),
        hold_chunk: Some((2, gate.clone())),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    let (_, text) = tokio::time::timeout(Duration::from_secs(10), read_timed(response))
        .await
        .expect("the body ends while the upstream holds its last byte");
    assert_eq!(text, format!("{first}data: [DONE]\r\n\r"));
    let record = router.records.nth(1).await;
    assert!(record.complete);
    assert_eq!(record.response.content, "a");
    gate.add_permits(1);
    router.stop().await;
}

#[tokio::test]
async fn a_stream_request_answered_with_an_error_is_relayed_whole() {
    let upstream = MockUpstream::start(Behavior {
        status: 429,
        body: Some(r#"{"error":{"message":"Rate limit reached","type":"rate_limit","code":"rate_limit_exceeded"}}"#.into()),
        headers: vec![("retry-after".into(), "7".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        response.text().await.expect("body"),
        r#"{"error":{"message":"Rate limit reached","type":"rate_limit","code":"rate_limit_exceeded"}}"#
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.error.as_deref(), Some("Rate limit reached"));
    router.stop().await;
}

#[tokio::test]
async fn usage_is_asked_for_on_chat_and_completions_only() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (path, injected) in [
        ("/v1/chat/completions", true),
        ("/v1/completions", true),
        ("/v1/responses", false),
        ("/v1/messages", false),
    ] {
        let body = r#"{"model":"[mock]m","stream":true,"input":"hi"}"#;
        let response = client()
            .post(router.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let _ = response.bytes().await;
        let sent = upstream.last();
        assert_eq!(sent.path, format!("/v1{}", &path[3..]));
        if injected {
            assert_eq!(
                sent.json()["stream_options"],
                json!({"include_usage": true}),
                "{path}"
            );
        } else {
            assert_eq!(
                sent.body, r#"{"model":"m","stream":true,"input":"hi"}"#,
                "{path}: body unchanged but the model"
            );
        }
    }
    router.stop().await;
}

/// A whole chat completion to a stream request over 256 KiB is made into events all the same
/// (read on a blocking thread); one over 16 MiB goes as it came: read into a tree it took
/// several times its size, on the connection's thread.
#[tokio::test]
async fn a_large_whole_answer_to_a_stream_goes_as_events_and_a_huge_one_as_it_came() {
    let answer = |text: &str| {
        json!({"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}]})
        .to_string()
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (size, events) in [(300 * 1024, true), (17 * 1024 * 1024, false)] {
        let body = answer(&"x".repeat(size));
        upstream.set(Behavior {
            never_stream: true,
            body: Some(body.clone()),
            ..Default::default()
        });
        let response = router.chat(&stream_request("[mock]m")).await;
        assert_eq!(response.status(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let text = response.text().await.expect("body");
        if events {
            assert_eq!(kind, "text/event-stream", "{size}");
            assert!(text.starts_with("data: {") && text.ends_with("data: [DONE]\n\n"));
        } else {
            assert!(kind.starts_with("application/json"), "{size}: {kind}");
            assert_eq!(text, body, "as it came");
        }
    }
    router.stop().await;
}

/// An upstream that ignores `"stream": true` and answers one whole chat completion at once
/// (`application/json`, long before the router's early head): the client, over HTTP/1.1 and
/// HTTP/2, gets it as the stream it would have been (`text/event-stream`, no
/// `Content-Length`, one `chat.completion.chunk` carrying the whole message, the usage chunk
/// only when it asked for `include_usage` itself, then `[DONE]`), so an SDK's stream yields
/// the message instead of nothing; the upstream's own headers still come. The record, and
/// its request log line, are the whole answer's: a success with its usage and text.
#[tokio::test]
async fn a_quick_whole_chat_completion_to_a_stream_goes_as_its_chunks() {
    use crate::telemetry::request_log::{log_sink, read_log_lines};
    let upstream = MockUpstream::start(Behavior {
        never_stream: true,
        model: "m-1".into(),
        headers: vec![("x-ratelimit-remaining-requests".into(), "7".into())],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let log = log_sink(dir.path().join("api_proxy.log"), true);
    let router = TestRouter::start_with_sinks(
        &one_server_config(&upstream.url(), ""),
        vec![log as std::sync::Arc<dyn llmsrouter::record::RecordSink>],
        |_| {},
    )
    .await;
    let whole: serde_json::Value =
        serde_json::from_str(&crate::support::upstream::chat_completion("m-1")).expect("json");
    let chunk = json!({"id": "chatcmpl-whole", "object": "chat.completion.chunk",
        "created": 1700000000, "model": "m-1",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello there"},
            "finish_reason": "stop"}]});
    let usage = json!({"id": "chatcmpl-whole", "object": "chat.completion.chunk",
        "created": 1700000000, "model": "m-1", "choices": [], "usage": whole["usage"]});
    let cases = [
        (client(), false),
        (client(), true),
        (crate::support::h2c_client(), false),
    ];
    for (n, (http, client_usage)) in cases.iter().enumerate() {
        let mut request = stream_request("[mock]m");
        if *client_usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let response = http
            .post(router.url("/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "case {n}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/event-stream", "case {n}");
        assert_eq!(headers["cache-control"], "no-cache");
        assert!(headers.get("content-length").is_none(), "case {n}");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "7");
        let text = response.text().await.expect("body");
        let events = chunk_events(&text);
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello there", "case {n}");
        let expected = if *client_usage {
            vec![chunk.clone(), usage.clone()]
        } else {
            vec![chunk.clone()]
        };
        assert_eq!(events, expected, "case {n}");
        assert_eq!(
            upstream.last().json()["stream_options"],
            json!({"include_usage": true})
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
        assert!(record.stream && record.complete);
        assert_eq!(record.status, Some(200));
        assert_eq!(record.response.model.as_deref(), Some("m-1"));
        assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(2));
        assert_eq!(record.response.content, "Hello there");
        assert!(record.response_is_json);
    }
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    assert_eq!(lines.len(), cases.len());
    for line in &lines {
        assert_eq!(line["outcome"], "success", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["stream"], true, "{line}");
        assert_eq!(line["usage"]["output"], 2, "{line}");
        assert_eq!(line["usage"]["input"], PROMPT_TOKENS, "{line}");
        assert_eq!(
            line["response"]["choices"][0]["message"]["content"], "Hello there",
            "{line}"
        );
    }
}

/// A quick whole text completion (`/completions`) to a stream request goes as its events
/// too, as a late one does: one `text_completion` event per choice, the choice as it came,
/// then `[DONE]`; the record is the whole answer's.
#[tokio::test]
async fn a_quick_whole_text_completion_to_a_stream_goes_as_its_events() {
    let answer = json!({"id": "t1", "object": "text_completion", "created": 1700000000,
        "model": "m-1", "choices": [{"text": "once upon", "index": 0, "logprobs": null,
            "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    let upstream = MockUpstream::start(Behavior {
        never_stream: true,
        body: Some(answer.to_string()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = post_json(
        &router.url("/v1/completions"),
        &json!({"model": "[mock]m", "stream": true, "prompt": "tell"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().get("content-length").is_none());
    let text = response.text().await.expect("body");
    assert_eq!(
        chunk_events(&text),
        [
            json!({"id": "t1", "object": "text_completion", "created": 1700000000,
            "model": "m-1", "choices": [answer["choices"][0].clone()]})
        ]
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response.usage.clone().expect("usage").total, 5);
    assert_eq!(record.response.content, "once upon");
    router.stop().await;
}

/// Only a whole chat completion to a stream request goes as events: an error answer, and a
/// whole answer on another endpoint (a Responses API response), reach the client as the
/// upstream sent them.
#[tokio::test]
async fn a_quick_whole_answer_of_another_kind_to_a_stream_goes_as_it_came() {
    let upstream = MockUpstream::start(Behavior {
        never_stream: true,
        status: 429,
        body: Some(r#"{"error":{"message":"slow down","type":"rate_limit","code":null}}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["message"], "slow down");

    let answer = r#"{"id":"resp_1","object":"response","model":"m","output":[]}"#;
    upstream.set(Behavior {
        never_stream: true,
        body: Some(answer.into()),
        ..Default::default()
    });
    let response = post_json(
        &router.url("/v1/responses"),
        &json!({"model": "[mock]m", "stream": true, "input": "hi"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.expect("body"), answer);
    router.stop().await;
}

/// An event stream its upstream labels otherwise (no Content-Type, `text/plain`,
/// `application/json`: some servers and gateways label every answer so) is told by its first
/// bytes and read as one: the client gets it as `text/event-stream`, event by event (the
/// mock holds a later chunk until the first has arrived, so a stream labelled JSON is not
/// held to its end), without the usage chunk only the router asked for, and the record has
/// the usage. A whole JSON answer under `text/plain` still reaches the client as it came.
#[tokio::test]
async fn an_event_stream_labelled_otherwise_is_read_as_one() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let labels = ["", "text/plain", "application/json; charset=utf-8"];
    for (n, label) in labels.into_iter().enumerate() {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        upstream.set(Behavior {
            chunks: 3,
            stream_content_type: Some(label.into()),
            hold_chunk: Some((2, gate.clone())),
            ..Default::default()
        });
        let response = router.chat(&stream_request("[mock]gpt-4o")).await;
        assert_eq!(response.status(), 200, "{label}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{label}"
        );
        let (_, text) = read_past_a_held_chunk(response, "tok0", &gate).await;
        assert_eq!(
            text,
            expected_stream(&upstream.behavior(), false),
            "{label}: no usage chunk"
        );
        let sent = upstream.last().json();
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{label}");
        assert!(record.stream && record.complete, "{label}");
        let usage = record.response.usage.clone().expect("usage");
        assert_eq!((usage.input, usage.output), (PROMPT_TOKENS, 3), "{label}");
        assert_eq!(record.response.content, "tok0 tok1 tok2 ", "{label}");
    }

    let whole = crate::support::upstream::chat_completion("m-1");
    upstream.set(Behavior {
        raw_chunks: Some(vec![whole.clone().into_bytes()]),
        stream_content_type: Some("text/plain".into()),
        ..Default::default()
    });
    let response = router.chat(&stream_request("[mock]m")).await;
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.expect("body"), whole);
    let record = router.records.nth(labels.len() + 1).await;
    assert_eq!(record.response.usage.as_ref().map(|u| u.output), Some(2));
    assert!(record.response_is_json);
    router.stop().await;
}

/// A mislabelled event stream whose first writes are a byte-order mark and a blank line
/// alone, or that comes a byte at a time, is told once its bytes can tell (the first write
/// alone told nothing, and it was relayed unread). One whose first bytes are slow to come
/// gets its head within the sniffing wait, relayed unread as before (its head was held for
/// as long as the upstream was silent, up to `timeout_secs`).
#[tokio::test]
async fn a_mislabelled_event_stream_is_told_across_writes_and_never_holds_its_head() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let content = content_chunk("m", 0, 1);
    let bytewise: Vec<Vec<u8>> = content.bytes().take(8).map(|b| vec![b]).collect();
    let rest_of_content = content.as_bytes()[8..].to_vec();
    let openings: [Vec<Vec<u8>>; 2] = [
        vec![
            "\u{feff}".into(),
            b"\n".to_vec(),
            content.clone().into_bytes(),
        ],
        [bytewise, vec![rest_of_content]].concat(),
    ];
    for (n, opening) in openings.into_iter().enumerate() {
        let expected: Vec<u8> = [opening.concat(), DONE.as_bytes().to_vec()].concat();
        let chunks = [opening, vec![usage_chunk("m", 1).into_bytes(), DONE.into()]].concat();
        upstream.set(Behavior {
            raw_chunks: Some(chunks),
            stream_content_type: Some("text/plain".into()),
            chunk_delay: Duration::from_millis(5),
            ..Default::default()
        });
        let response = router.chat(&stream_request("[mock]m")).await;
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{n}"
        );
        let body = response.bytes().await.expect("body");
        assert_eq!(body.as_ref(), expected.as_slice(), "{n}: no usage chunk");
        let record = router.records.nth(n + 1).await;
        assert!(
            record.response.usage.is_some(),
            "{n}: {:?}",
            record.response
        );
    }

    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    upstream.set(Behavior {
        chunks: 2,
        stream_content_type: Some("text/plain".into()),
        hold_chunk: Some((0, gate.clone())),
        ..Default::default()
    });
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        router.chat(&stream_request("[mock]m")),
    )
    .await
    .expect("the head comes while the upstream is silent");
    assert_eq!(response.headers()["content-type"], "text/plain");
    gate.add_permits(1);
    let text = response.text().await.expect("body");
    assert!(
        text.starts_with("data: ") && text.contains("tok0") && text.contains("tok1"),
        "{text}"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_streamed_answer_that_is_not_sse_passes_through_as_it_arrives() {
    let lines: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            format!(
                "{{\"message\":{{\"content\":\"part{i}\"}},\"done\":{}}}\n",
                i == 2
            )
            .into_bytes()
        })
        .collect();
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(lines.clone()),
        chunk_delay: Duration::from_millis(300),
        stream_content_type: Some("application/x-ndjson".into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let response = client()
        .post(router.url("/v1/api/chat"))
        .json(&stream_request("[mock]llama3"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let (pieces, text) = read_timed(response).await;
    assert_eq!(
        text.as_bytes(),
        lines.concat(),
        "unchanged, no keep-alive comments"
    );
    assert!(
        pieces.len() >= 3,
        "each line is forwarded on its own: {}",
        pieces.len()
    );
    let gap = pieces[pieces.len() - 1].0 - pieces[0].0;
    assert!(
        gap >= Duration::from_millis(450),
        "not held until the end: {gap:?}"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    router.stop().await;
}

/// A request without `"stream": true` whose upstream streams anyway (OpenAI's speech
/// endpoint: chunked `audio/mpeg`, or with `stream_format: "sse"` an event stream): each
/// piece reaches the client when it arrives, not when the upstream finishes (the mock holds
/// its last chunk until the client has the first), the body goes upstream unchanged but the
/// model, and the record is a stream's. A 2xx text answer is still read whole.
#[tokio::test]
async fn a_streamed_answer_to_a_request_not_asking_to_stream_is_relayed_as_it_arrives() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let audio: Vec<Vec<u8>> = vec![b"ID3\x03frame0 ".to_vec(), b"\xff\xfbframe1".to_vec()];
    let events: Vec<Vec<u8>> = vec![
        b"data: {\"type\":\"speech.audio.delta\",\"audio\":\"AAA\"}\n\n".to_vec(),
        b"data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_tokens\":3,\"output_tokens\":9,\"total_tokens\":12}}\n\n".to_vec(),
    ];
    let cases = [
        ("audio/mpeg", audio, "ID3"),
        ("text/event-stream", events, "speech.audio.delta"),
    ];
    for (n, (content_type, chunks, first)) in cases.into_iter().enumerate() {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        upstream.set(Behavior {
            stream_unasked: true,
            raw_chunks: Some(chunks.clone()),
            stream_content_type: Some(content_type.into()),
            hold_chunk: Some((1, gate.clone())),
            ..Default::default()
        });
        let body = r#"{"model":"[mock]tts","voice":"alloy","input":"hello"}"#;
        let response = client()
            .post(router.url("/v1/audio/speech"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert!(response.headers().get("content-length").is_none());
        let (before, seen) = read_past_a_held_chunk(response, first, &gate).await;
        assert_eq!(
            before,
            String::from_utf8_lossy(&chunks[0]),
            "{content_type}"
        );
        assert_eq!(
            seen,
            String::from_utf8_lossy(&chunks.concat()),
            "{content_type}"
        );
        assert_eq!(
            upstream.last().body,
            r#"{"model":"tts","voice":"alloy","input":"hello"}"#
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{content_type}");
        assert!(record.stream, "{content_type}");
        // A speech event stream ends with its `speech.audio.done` (it has no `[DONE]`).
        assert!(record.complete, "{content_type}");
    }

    upstream.set(Behavior {
        stream_unasked: true,
        raw_chunks: Some(vec![b"plain ".to_vec(), b"text".to_vec()]),
        stream_content_type: Some("text/plain".into()),
        ..Default::default()
    });
    let response = client()
        .post(router.url("/v1/audio/transcriptions"))
        .json(&json!({"model": "[mock]whisper", "response_format": "text"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-length"], "10", "read whole");
    assert_eq!(response.text().await.expect("body"), "plain text");
    let record = router.records.nth(3).await;
    assert!(!record.stream);
    assert_eq!(record.response_body.as_deref(), Some(&b"plain text"[..]));
    router.stop().await;
}

/// A binary answer relayed as it arrives (speech audio to a request that did not ask to
/// stream) keeps the upstream's Content-Length, its bytes passing unchanged, so a client can
/// show progress: the head with the length comes while the upstream still holds the rest,
/// and the connection carries the next request. One the upstream sent chunked goes chunked.
/// Over HTTP/2 the length is kept too. Each record notes the audio's type and size.
#[tokio::test]
async fn a_binary_answer_keeps_the_upstreams_content_length_or_its_chunking() {
    use crate::http1::{Raw, post};
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let audio: Vec<Vec<u8>> = vec![
        b"ID3\x03\x00frame0 ".to_vec(),
        (0u8..=255).cycle().take(70_000).collect(),
    ];
    let whole = audio.concat();
    let length = whole.len().to_string();
    let body = r#"{"model":"[mock]tts-1","voice":"alloy","input":"hello"}"#;
    let speech = |declared: bool, gate: Option<std::sync::Arc<tokio::sync::Semaphore>>| Behavior {
        stream_unasked: true,
        raw_chunks: Some(audio.clone()),
        stream_content_type: Some("audio/mpeg".into()),
        headers: if declared {
            vec![("content-length".into(), length.clone())]
        } else {
            Vec::new()
        },
        hold_chunk: gate.map(|gate| (1, gate)),
        ..Default::default()
    };

    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    upstream.set(speech(true, Some(gate.clone())));
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/audio/speech", body, "").as_bytes())
        .await;
    let mut answer = raw.answer_head().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), Some(length.as_str()));
    assert_eq!(answer.header("transfer-encoding"), None);
    assert_eq!(answer.header("content-type"), Some("audio/mpeg"));
    gate.add_permits(1);
    raw.read_body(&mut answer).await;
    assert_eq!(answer.body, whole, "the upstream's bytes");

    upstream.set(speech(false, None));
    raw.send(post("/v1/audio/speech", body, "").as_bytes())
        .await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 200, "on the same connection");
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.header("content-length"), None);
    assert_eq!(answer.body, whole);

    upstream.set(speech(true, None));
    let response = crate::support::h2c_client()
        .post(router.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["content-length"], length.as_str());
    assert_eq!(response.bytes().await.expect("body"), whole);

    for n in 1..=3 {
        let record = router.records.nth(n).await;
        assert_eq!(record.outcome, Outcome::Success);
        assert!(record.stream && record.complete);
        assert_eq!(
            record.response.content,
            format!("<audio/mpeg, {length} bytes>")
        );
        assert!(record.response.usage.is_none() && !record.usage_partial());
    }
    router.stop().await;
}

/// A binary answer relayed as it arrives (speech audio) in a coding the client does not take
/// (zstd to the openai SDKs, which send `gzip, deflate, br` and saved the zstd bytes as the
/// mp3; gzip to curl without `--compressed`, which sends no `Accept-Encoding`) is decoded as
/// it arrives: it goes without the `Content-Encoding` and without a `Content-Length`
/// (chunked), its first part before the upstream sends the rest. One the client takes goes
/// as it came. Corrupt compressed data cuts the body (the client sees an incomplete answer),
/// and the record says why.
#[tokio::test]
async fn a_binary_answer_in_a_coding_the_client_does_not_take_goes_decoded_as_it_arrives() {
    use crate::http1::{Raw, post};
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let audio: Vec<Vec<u8>> = vec![
        b"ID3\x03\x00frame0 ".to_vec(),
        (0u8..=255).cycle().take(200_000).collect(),
    ];
    let whole = audio.concat();
    let body = r#"{"model":"[mock]tts-1","voice":"alloy","input":"hello"}"#;
    let speech = |coding: &'static str, chunks: Vec<Vec<u8>>, gate| Behavior {
        stream_unasked: true,
        raw_chunks: Some(chunks),
        stream_content_type: Some("audio/mpeg".into()),
        headers: vec![("content-encoding".into(), coding.into())],
        hold_chunk: gate,
        ..Default::default()
    };
    let mut n = 0;
    for (coding, accepts) in [
        ("zstd", "Accept-Encoding: gzip, deflate, br\r\n"),
        ("gzip", ""),
        ("gzip, br", "Accept-Encoding: gzip\r\n"),
    ] {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let chunks = if coding == "gzip, br" {
            let gzipped = compress_flushed("gzip", &audio);
            compress_flushed("br", &gzipped)
        } else {
            compress_flushed(coding, &audio)
        };
        upstream.set(speech(coding, chunks, Some((1, gate.clone()))));
        let mut raw = Raw::connect(router.addr).await;
        raw.send(post("/v1/audio/speech", body, accepts).as_bytes())
            .await;
        let mut answer = raw.answer_head().await;
        assert_eq!(answer.status, 200, "{coding}");
        assert_eq!(answer.header("content-encoding"), None, "{coding}");
        assert_eq!(answer.header("content-length"), None, "{coding}");
        assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
        assert_eq!(answer.header("content-type"), Some("audio/mpeg"));
        assert_eq!(answer.header("vary"), Some("Accept-Encoding"));
        // The first part is decoded and sent before the upstream sends the rest.
        let first = raw.peek_at_least(audio[0].len()).await;
        assert!(first.windows(3).any(|w| w == b"ID3"), "{coding}");
        gate.add_permits(1);
        raw.read_body(&mut answer).await;
        assert_eq!(answer.body, whole, "{coding}: decoded");
        n += 1;
        let record = router.records.nth(n).await;
        assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
        assert_eq!(
            record.response.content,
            format!("<audio/mpeg, {} bytes>", whole.len())
        );
    }

    // Taken: as it came, with its coding and length.
    let sent = crate::support::upstream::zstd(&whole);
    upstream.set(Behavior {
        headers: vec![
            ("content-encoding".into(), "zstd".into()),
            ("content-length".into(), sent.len().to_string()),
        ],
        ..speech("zstd", vec![sent.clone()], None)
    });
    let response = client()
        .post(router.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, zstd")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-encoding"], "zstd");
    assert_eq!(response.headers()["content-length"], sent.len().to_string());
    assert_eq!(response.bytes().await.expect("body"), sent);
    n += 1;
    router.records.nth(n).await;

    // Corrupt after its first part: that part, then the body is cut.
    let mut chunks = compress_flushed("gzip", &audio);
    chunks.truncate(1);
    chunks.push(b"\xFF\xFF\xFF\xFFjunk".to_vec());
    upstream.set(speech("gzip", chunks, None));
    let response = client()
        .post(router.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    let mut stream = response.bytes_stream();
    let mut got = Vec::new();
    let mut cut = false;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the client sees an incomplete answer");
    assert!(audio[0].starts_with(&got), "what decoded before the fault");
    n += 1;
    let record = router.records.nth(n).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    let error = record.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("compressed answer could not be decoded") && error.contains("corrupt"),
        "{error}"
    );
    router.stop().await;
}

/// A provider failing mid-stream under a 200 (OpenRouter sends `data: {"error": {...}}`):
/// the client gets the stream byte for byte, and the record is the upstream's error with the
/// provider's message, so Langfuse shows it at level ERROR and the ledger counts it, with
/// what the stream said before it.
#[tokio::test]
async fn an_error_event_inside_a_200_stream_is_recorded_as_the_upstreams_error() {
    let chunks: Vec<Vec<u8>> = vec![
        content_chunk("m", 0, 2).into_bytes(),
        br#"data: {"error":{"message":"mid-stream provider error","code":500}}"#.to_vec(),
        b"\n\n".to_vec(),
    ];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    assert_eq!(response.status(), 200);
    let (_, text) = read_timed(response).await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..], "relayed as it came");
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert!(record.outcome.is_error());
    assert_eq!(record.error.as_deref(), Some("mid-stream provider error"));
    assert_eq!(record.status, Some(200));
    assert_eq!(record.response.content, "tok0 ");
    assert_eq!(
        record.response.finish_reason, None,
        "the upstream gave none; the error is the outcome's"
    );
    assert!(
        record.usage_partial(),
        "cut before its usage: tokens unknown"
    );
    router.stop().await;
}

/// The same in a whole answer: a 200 whose body is `{"error": {...}}` reaches the client as it
/// came and is recorded as the upstream's error.
#[tokio::test]
async fn a_whole_200_answer_that_is_an_error_is_recorded_as_the_upstreams_error() {
    let body = r#"{"error":{"message":"provider overloaded","code":502}}"#;
    let upstream = MockUpstream::start(Behavior {
        body: Some(body.to_owned()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router
        .chat(&serde_json::json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), body);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.error.as_deref(), Some("provider overloaded"));
    assert_eq!(record.status, Some(200));

    // An answer with `"error": null` is no error.
    upstream.set(Behavior {
        body: Some(r#"{"id":"x","choices":[],"error":null}"#.to_owned()),
        ..Default::default()
    });
    let response = router
        .chat(&serde_json::json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(router.records.nth(2).await.outcome, Outcome::Success);
    router.stop().await;
}

/// A stream the upstream compresses anyway (the router asks for `identity`, gzip, deflate, br
/// or zstd comes, or several stacked: `gzip, br`, which passed through unread): decoded as it arrives and relayed decoded, without `Content-Encoding`, so the
/// client gets plain events, the usage chunk the router asked for is still dropped (and one
/// the client asked for still passes), and the record has the upstream's token counts.
#[tokio::test]
async fn a_compressed_stream_is_relayed_decoded_and_recorded_with_its_usage() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut n = 0;
    for coding in ["gzip", "deflate", "br", "zstd", "gzip, br", "deflate, zstd"] {
        for client_asked in [false, true] {
            upstream.set(Behavior {
                chunks: 4,
                stream_coding: Some(coding),
                ..Default::default()
            });
            let mut request = stream_request("[mock]gpt-4o");
            if client_asked {
                request["stream_options"] = json!({"include_usage": true});
            }
            let response = router.chat(&request).await;
            assert_eq!(response.status(), 200);
            let headers = response.headers().clone();
            assert!(headers.get("content-encoding").is_none(), "{coding}");
            assert!(headers.get("content-length").is_none(), "{coding}");
            assert_eq!(headers["content-type"], "text/event-stream");
            let (_, text) = read_timed(response).await;
            assert_eq!(
                text,
                expected_stream(&upstream.behavior(), client_asked),
                "{coding}, usage asked by the client: {client_asked}"
            );
            assert_eq!(
                upstream.last().json()["stream_options"],
                json!({"include_usage": true})
            );
            n += 1;
            let record = router.records.nth(n).await;
            assert_eq!(record.outcome, Outcome::Success, "{coding}");
            assert!(record.complete);
            let usage = record.response.usage.clone().expect("usage");
            assert_eq!(
                (usage.input, usage.output, usage.total),
                (PROMPT_TOKENS, 4, PROMPT_TOKENS + 4)
            );
            assert_eq!(record.response.content, "tok0 tok1 tok2 tok3 ");
            assert!(record.first_token_at.is_some());
        }
    }
    router.stop().await;
}

/// Each event of a compressed stream reaches the client when its chunk arrives, not when the
/// upstream finishes: the mock holds its last chunk until the client has seen the first
/// event.
#[tokio::test]
async fn a_compressed_streams_events_arrive_before_the_upstream_finishes() {
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let upstream = MockUpstream::start(Behavior {
            chunks: 3,
            stream_coding: Some(coding),
            // 3 content chunks and [DONE] (the usage chunk is asked for but dropped): the last.
            hold_chunk: Some((4, gate.clone())),
            ..Default::default()
        })
        .await;
        let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
        let response = router.chat(&stream_request("[mock]m")).await;
        let first = content_chunk("mock-model-2024", 0, 3);
        let (before, seen) = read_past_a_held_chunk(response, &first, &gate).await;
        assert!(!before.contains(DONE), "{coding}");
        assert_eq!(
            seen,
            expected_stream(&upstream.behavior(), false),
            "{coding}"
        );
        assert_eq!(router.records.nth(1).await.outcome, Outcome::Success);
        router.stop().await;
    }
}

/// A compressed stream whose data turns out corrupt, or is cut before its compressed data
/// ends: the events decoded so far pass, then one error event ends the stream (as a broken
/// upstream stream ends), and the record is the upstream's error, saying what was wrong.
#[tokio::test]
async fn a_corrupt_compressed_stream_ends_with_an_error_event() {
    let events = vec![
        content_chunk("m", 0, 3).into_bytes(),
        content_chunk("m", 1, 3).into_bytes(),
        DONE.as_bytes().to_vec(),
    ];
    let compressed = compress_flushed("gzip", &events);
    // 0xFF after a flushed block: a block of the reserved type 3.
    let corrupt = vec![compressed[0].clone(), b"\xFF\xFF\xFF\xFFjunk".to_vec()];
    let cut = vec![compressed[0].clone()];
    let cut_in = |coding| vec![compress_flushed(coding, &events)[0].clone()];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let cases = [
        ("gzip", corrupt, "corrupt"),
        ("gzip", cut, "ended before"),
        ("br", cut_in("br"), "ended before"),
        ("zstd", cut_in("zstd"), "ended before"),
    ];
    for (n, (coding, chunks, says)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(chunks),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let response = router.chat(&stream_request("[mock]m")).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-encoding").is_none());
        let (_, text) = read_timed(response).await;
        let first = content_chunk("m", 0, 3);
        assert!(text.starts_with(&first), "{text}");
        let rest = &text[first.len()..];
        assert!(
            rest.ends_with("\n\n") && rest.matches("data: ").count() == 1,
            "{rest}"
        );
        let payload: serde_json::Value =
            serde_json::from_str(rest.trim().trim_start_matches("data: "))
                .expect("one error event");
        assert_eq!(payload["error"]["code"], "upstream_bad_encoding");
        assert_eq!(payload["error"]["type"], "upstream_error");
        let message = payload["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(coding) && message.contains(says),
            "{message}"
        );

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{says}");
        assert_eq!(record.error.as_deref(), Some(message));
        assert_eq!(record.response.content, "tok0 ");
        assert!(!record.complete);
        assert!(
            record.usage_partial(),
            "cut before its usage: tokens unknown"
        );
    }
    router.stop().await;
}

/// A stream in a coding the router does not decode (`compress` here) cannot be split into
/// events: it passes through unread with its `Content-Encoding` (without it the client could
/// not read it), nothing (a keep-alive comment, an error event) is put into it, and its
/// record has no usage rather than a wrong one.
#[tokio::test]
async fn a_stream_in_a_coding_the_router_cannot_decode_passes_through_unread() {
    let opaque: Vec<u8> = (0u8..=255).cycle().take(700).collect();
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![opaque[..300].to_vec(), opaque[300..].to_vec()]),
        headers: vec![("content-encoding".into(), "compress".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router.chat(&stream_request("[mock]m")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "compress");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.bytes().await.expect("body"), opaque);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.response.usage.is_none());
    router.stop().await;
}

/// An answer listing more codings than the router decodes (curl's 5) passes as it came,
/// as one in a coding it does not decode does. Listing gzip 20,000 times used to build a
/// decoder each, whose recursion overflowed the stack and aborted the router, every other
/// request with it; as a whole answer each was a decoder too.
#[tokio::test]
async fn an_answer_stacking_thousands_of_codings_passes_as_it_came() {
    let codings = vec!["gzip"; 20_000].join(", ");
    let opaque = b"not gzip at all".to_vec();
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![opaque.clone()]),
        raw_body: Some(opaque.clone()),
        headers: vec![("content-encoding".into(), codings.clone())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for request in [
        stream_request("[mock]m"),
        json!({"model": "[mock]m", "messages": []}),
    ] {
        let response = router.chat(&request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], codings.as_str());
        assert_eq!(response.bytes().await.expect("body"), opaque);
    }
    // An error answer in them cannot be read (nor redacted): the router's message names
    // the codings by their first ones and their count, not all 20,000.
    upstream.set(Behavior {
        status: 500,
        raw_body: Some(opaque.clone()),
        headers: vec![("content-encoding".into(), codings.clone())],
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 500);
    let error: serde_json::Value = response.json().await.expect("json");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("gzip, gzip, gzip, gzip, gzip, ... (20000 codings)-encoded")
            && message.len() < 400,
        "{message}"
    );
    let health = client()
        .get(router.url("/health"))
        .send()
        .await
        .expect("the router is still up");
    assert_eq!(health.status(), 200);
    router.stop().await;
}

/// A UTF-8 byte-order mark before the first event (the SSE spec has clients skip it) is
/// forwarded as it came, and that first event is still read into the record.
#[tokio::test]
async fn a_byte_order_mark_before_the_first_event_is_forwarded_and_the_event_read() {
    let mut first = b"\xEF\xBB\xBF".to_vec();
    first.extend_from_slice(content_chunk("m", 0, 2).as_bytes());
    let chunks = vec![
        first,
        content_chunk("m", 1, 2).into_bytes(),
        DONE.as_bytes().to_vec(),
    ];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let body = response.bytes().await.expect("body");
    assert_eq!(body, chunks.concat());
    let record = router.records.nth(1).await;
    assert_eq!(record.response.content, "tok0 tok1 ");
    router.stop().await;
}

/// An upstream that streams more text than any answer holds: the client gets every byte,
/// the record keeps the first `MAX_STREAM_TEXT` bytes of it, ending in the truncation marker,
/// and still reads the usage that comes after. Before, the record grew with every byte
/// relayed (gigabytes within seconds from an endless stream, one client's doing).
#[tokio::test]
async fn a_streams_record_keeps_a_bounded_text() {
    use llmsrouter::sinks::generation::TRUNCATION_MARKER;
    use llmsrouter::usage::MAX_STREAM_TEXT;
    let piece = "é".repeat(256 * 1024); // 512 KiB
    let event = |delta: serde_json::Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]})
        )
        .into_bytes()
    };
    let mut events: Vec<Vec<u8>> = (0..18).map(|_| event(json!({"content": piece}))).collect();
    events.push(event(json!({"reasoning_content": "kept no more"})));
    events.push(
        format!(
            "data: {}\n\n",
            json!({"id": "c", "model": "m", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}})
        )
        .into_bytes(),
    );
    events.push(b"data: [DONE]\n\n".to_vec());
    let sent: usize = events.iter().map(Vec::len).sum();
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(events),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router
        .chat(
            &json!({"model": "[mock]m", "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    assert_eq!(body.len(), sent, "the client gets every byte");
    let record = router.records.nth(1).await;
    let content = &record.response.content;
    assert!(content.ends_with(TRUNCATION_MARKER), "{}", content.len());
    assert!(content.len() <= MAX_STREAM_TEXT + TRUNCATION_MARKER.len());
    assert!(content.len() > MAX_STREAM_TEXT - 4, "kept up to the bound");
    assert!(
        record.response.reasoning.is_empty(),
        "nothing after the cut"
    );
    let usage = record.response.usage.as_ref().expect("usage still read");
    assert_eq!((usage.input, usage.output), (3, 9));
    router.stop().await;
}

/// What a pydantic-validated local server answers a field it does not know.
const EXTRA_FORBIDDEN: &str = r#"{"object":"error","message":"[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are not permitted'}]","type":"BadRequestError","code":400}"#;

fn strict_upstream() -> Behavior {
    Behavior {
        refuse_stream_options: Some(EXTRA_FORBIDDEN.to_owned()),
        ..Default::default()
    }
}

/// The Python version never added `stream_options`: a strict upstream that refuses the one
/// the router adds gets the stream once more as the client sent it, and is not asked again.
#[tokio::test]
async fn a_strict_upstream_refusing_stream_options_gets_the_stream_again_without_them() {
    let upstream = MockUpstream::start(strict_upstream()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = r#"{"model":"[mock]m","stream":true,"messages":[]}"#;
    let send = || {
        client()
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = send().await.expect("send");
    assert_eq!(response.status(), 200);
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    let received = upstream.received();
    assert_eq!(received.len(), 2, "one retry");
    assert_eq!(
        received[0].json()["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(
        received[1].body,
        r#"{"model":"m","stream":true,"messages":[]}"#
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.status, Some(200));
    assert!(record.response.usage.is_none(), "the upstream sent none");
    assert_eq!(record.response.content, "tok0 tok1 tok2 ");

    // Remembered: the next stream goes without them at once.
    let (_, text) = read_timed(send().await.expect("send")).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    assert_eq!(upstream.count(), 3);
    assert_eq!(upstream.last().body, received[1].body);
    router.stop().await;
}

/// A 400 that names `stream_options` only because it quotes the client's own text (OpenAI's
/// answer to a message whose role is "stream_options") refuses the request without them as
/// well: the client gets that 400, and the target is still asked for usage afterwards. One
/// such request stopped the router asking the alias for usage, for every client, until it
/// restarted (bb54).
#[tokio::test]
async fn a_400_quoting_the_clients_text_does_not_stop_usage_being_asked_for() {
    let quoted = r#"{"error":{"message":"Invalid value: 'stream_options'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.","type":"invalid_request_error","param":"messages[0].role","code":"invalid_value"}}"#;
    let upstream = MockUpstream::start(Behavior {
        status: 400,
        body: Some(quoted.to_owned()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let bad = r#"{"model":"[mock]m","stream":true,"messages":[{"role":"stream_options","content":"hi"}]}"#;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(bad)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    assert!(text.contains("Invalid value: 'stream_options'"), "{text}");
    assert_eq!(upstream.count(), 2, "sent once more without them");
    router.records.nth(1).await;

    upstream.set(Behavior::default());
    let response = post_json(
        &router.url("/v1/chat/completions"),
        &json!({"model": "[mock]m", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    assert_eq!(
        upstream.last().json()["stream_options"],
        json!({"include_usage": true}),
        "still asked for usage"
    );
    let record = router.records.nth(2).await;
    assert!(record.response.usage.is_some(), "usage recorded");
    router.stop().await;
}

/// A large body (an image inlined as base64) goes upstream exact, both times: with the model
/// rewritten and `stream_options` added, then, refused, with only the model rewritten (the
/// router sends its pieces around the client's bytes, not an edited copy); the record keeps
/// the body the client sent.
#[tokio::test]
async fn a_large_body_goes_upstream_exact_with_and_without_stream_options() {
    let upstream = MockUpstream::start(strict_upstream()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let image = "QUJD".repeat(512 * 1024);
    let messages = format!(
        r#"[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]"#
    );
    let body = format!(r#"{{"model":"[mock]m","messages":{messages}, "stream":true}}"#);
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let (_, text) = read_timed(response).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    let received = upstream.received();
    assert_eq!(received.len(), 2, "one retry");
    let with = format!(
        r#"{{"model":"m","messages":{messages}, "stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let without = format!(r#"{{"model":"m","messages":{messages}, "stream":true}}"#);
    assert!(
        received[0].body == with.as_bytes(),
        "the first body differs"
    );
    assert_eq!(
        received[0].headers["content-length"],
        with.len().to_string().as_str()
    );
    assert!(
        received[1].body == without.as_bytes(),
        "the second body differs"
    );
    let record = router.records.nth(1).await;
    assert!(
        record.request_body == body.as_bytes(),
        "the record's body differs"
    );
    router.stop().await;
}

/// A URL target is remembered by its origin.
#[tokio::test]
async fn a_strict_proxy_target_is_remembered_by_its_origin() {
    let upstream = MockUpstream::start(strict_upstream()).await;
    let router = TestRouter::start("servers: {}\n").await;
    let url = router.url(&format!("/v1/chat/completions?proxy={}", upstream.url()));
    for _ in 0..2 {
        let response = post_json(&url, &stream_request("m")).await;
        assert_eq!(response.status(), 200);
        let (_, text) = read_timed(response).await;
        assert_eq!(text, expected_stream(&upstream.behavior(), false));
    }
    let received = upstream.received();
    assert_eq!(received.len(), 3, "one retry, then none");
    assert!(received[1].json().get("stream_options").is_none());
    assert!(received[2].json().get("stream_options").is_none());
    router.stop().await;
}

/// Not retried: a client that sent `stream_options` itself, and a 400 about something else.
#[tokio::test]
async fn a_400_is_relayed_unretried_when_the_client_sent_stream_options_or_it_names_others() {
    let upstream = MockUpstream::start(strict_upstream()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut request = stream_request("[mock]m");
    request["stream_options"] = json!({"include_usage": true});
    let response = router.chat(&request).await;
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert!(
        answer["error"]["message"]
            .as_str()
            .expect("message")
            .contains("stream_options")
    );
    assert_eq!(upstream.count(), 1);

    let other =
        r#"{"error":{"message":"messages must not be empty","type":"invalid_request_error"}}"#;
    upstream.set(Behavior {
        status: 400,
        body: Some(other.to_owned()),
        ..Default::default()
    });
    let response = router.chat(&stream_request("[mock]m")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.expect("text"), other);
    assert_eq!(upstream.count(), 2);
    // Not remembered either: the next stream still asks for usage.
    upstream.set(Behavior::default());
    let (_, text) = read_timed(router.chat(&stream_request("[mock]m")).await).await;
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    assert_eq!(
        upstream.last().json()["stream_options"],
        json!({"include_usage": true})
    );
    router.stop().await;
}

/// A keep-alive comment that falls due while the last event forwarded ended in the `\r` of a
/// `\r\n` cut between two reads (the client has that `\r`): the comment begins with the `\n`,
/// and the upstream's `\n` when it comes is not sent twice, so the client's bytes are the
/// upstream's with whole comments between events. It went inside the line break
/// (`\r\n\r: keep-alive\n\n\n`), which a client splitting on `\r\n\r\n` misreads (bb48).
#[tokio::test]
async fn a_keepalive_never_lands_inside_a_cut_crlf() {
    let first =
        b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r"
            .to_vec();
    let rest = b"\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n".to_vec();
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![first.clone(), rest.clone()]),
        gap: Some((1, Duration::from_millis(700))),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.keepalive_interval = Duration::from_millis(200);
    })
    .await;
    let (_, text) = read_timed(router.chat(&stream_request("[mock]m")).await).await;
    assert!(text.contains("\r\n\r\n: keep-alive\n\n"), "{text:?}");
    assert!(!text.contains("\r: keep-alive"), "{text:?}");
    let upstream_bytes = String::from_utf8([first, rest].concat()).expect("utf-8");
    assert_eq!(text.replace(": keep-alive\n\n", ""), upstream_bytes);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.response.content, "Hi!");
    router.stop().await;
}

/// A format's last event whose blank line before it was cut between `\r` and `\n` (the `\n`
/// opening its read) still ends the body, with a sink and without, `"type"` not first in its
/// data: told by its `event:` name after that `\n`. It waited for `timeout_secs` instead, and
/// with every sink off the client got an `upstream_timeout` error after a complete answer
/// (bb48).
#[tokio::test]
async fn a_last_event_after_a_cut_crlf_still_ends_the_body() {
    let event = |name: &str, data: &str| format!("event: {name}\r\ndata: {data}\r\n\r");
    let chunks = vec![
        event(
            "response.created",
            r#"{"sequence_number":0,"type":"response.created","response":{"id":"resp_1","model":"m","status":"in_progress","output":[]}}"#,
        )
        .into_bytes(),
        format!(
            "\n{}",
            event(
                "response.output_text.delta",
                r#"{"sequence_number":1,"type":"response.output_text.delta","delta":"Hi"}"#
            )
        )
        .into_bytes(),
        format!(
            "\n{}\n",
            event(
                "response.completed",
                r#"{"sequence_number":2,"type":"response.completed","response":{"id":"resp_1","model":"m","status":"completed","usage":{"input_tokens":5,"output_tokens":1,"total_tokens":6}}}"#
            )
        )
        .into_bytes(),
    ];
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(chunks.clone()),
        chunk_delay: Duration::from_millis(30),
        linger_after_done: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let config = one_server_config(&upstream.url(), "    timeout_secs: 20\n");
    let router = TestRouter::start(&config).await;
    let unrecorded = TestRouter::start_unrecorded(&config).await;
    for router in [&router, &unrecorded] {
        let response = post_stream(router, "/v1/responses").await;
        let (_, text) = tokio::time::timeout(Duration::from_secs(10), read_timed(response))
            .await
            .expect("the body ended at response.completed");
        assert_eq!(text.as_bytes(), chunks.concat());
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete && !record.usage_partial());
    unrecorded.stop().await;
    router.stop().await;
}

/// The usage-only chunk the router asked for, with a raw control character in a string (a
/// tab in its `id`), is not the client's with every sink off either: the check that runs
/// then reads past the tab as the record's reader does. It reached the client (bb48).
#[tokio::test]
async fn a_usage_chunk_with_a_raw_tab_is_dropped_with_every_sink_off() {
    let delta =
        b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let usage = b"data: {\"id\":\"c\tx\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";
    let done = b"data: [DONE]\n\n";
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![delta.to_vec(), usage.to_vec(), done.to_vec()]),
        ..Default::default()
    })
    .await;
    let config = one_server_config(&upstream.url(), "");
    let router = TestRouter::start(&config).await;
    let unrecorded = TestRouter::start_unrecorded(&config).await;
    let expected = String::from_utf8([&delta[..], &done[..]].concat()).expect("utf-8");
    for router in [&router, &unrecorded] {
        let (_, text) = read_timed(router.chat(&stream_request("[mock]m")).await).await;
        assert_eq!(text, expected);
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.response.usage.clone().expect("usage").total, 4);
    unrecorded.stop().await;
    router.stop().await;
}

/// A chat stream whose chunks name their type (`chat.completion.chunk`, as some gateways
/// add), whose last content chunk has a member of an unexpected type (a tool call's
/// `arguments` as an object) and whose usage-only chunk has a numeric `id`: each odd member
/// is skipped, not the chunk (bb51). The record has the text, first token, finish reason,
/// tool call and usage; the usage chunk the router asked for reaches no client, with sinks
/// on or off.
#[tokio::test]
async fn odd_members_and_a_type_in_chat_chunks_lose_nothing_else() {
    let first = b"data: {\"type\":\"chat.completion.chunk\",\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let last = b"data: {\"type\":\"chat.completion.chunk\",\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]},\"finish_reason\":\"tool_calls\"}]}\n\n";
    let usage = b"data: {\"type\":\"chat.completion.chunk\",\"id\":12345,\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n";
    let done = b"data: [DONE]\n\n";
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![
            first.to_vec(),
            last.to_vec(),
            usage.to_vec(),
            done.to_vec(),
        ]),
        ..Default::default()
    })
    .await;
    let config = one_server_config(&upstream.url(), "");
    let router = TestRouter::start(&config).await;
    let unrecorded = TestRouter::start_unrecorded(&config).await;
    let expected = String::from_utf8([&first[..], &last[..], &done[..]].concat()).expect("utf-8");
    for router in [&router, &unrecorded] {
        let (_, text) = read_timed(router.chat(&stream_request("[mock]m")).await).await;
        assert_eq!(text, expected, "the usage chunk is the router's");
    }
    let record = router.records.nth(1).await;
    let usage = record.response.usage.clone().expect("usage");
    assert_eq!((usage.input, usage.output, usage.total), (10, 5, 15));
    assert_eq!(record.response.content, "Hi");
    assert!(record.first_token_at.is_some());
    assert_eq!(record.response.finish_reason.as_deref(), Some("tool_calls"));
    let calls = &record.response.tool_calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (
            calls[0].id.as_str(),
            calls[0].name.as_str(),
            calls[0].arguments.as_str()
        ),
        ("call_1", "f", r#"{"a":1}"#)
    );
    unrecorded.stop().await;
    router.stop().await;
}

/// Groq reports a stream's usage under `x_groq.usage` in its last chunk, with none at the
/// top level: it is the record's usage (bb51).
#[tokio::test]
async fn groqs_usage_under_x_groq_is_recorded() {
    let first = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"x_groq\":{\"id\":\"req_1\"}}\n\n";
    let last = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_1\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,\"queue_time\":0.01}}}\n\n";
    let done = b"data: [DONE]\n\n";
    let chunks = vec![first.to_vec(), last.to_vec(), done.to_vec()];
    let (_upstream, router, response) = stream_of_raw_chunks(&chunks).await;
    let (_, text) = read_timed(response).await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..]);
    let record = router.records.nth(1).await;
    let usage = record.response.usage.clone().expect("Groq's usage");
    assert_eq!((usage.input, usage.output, usage.total), (10, 5, 15));
    assert!(!record.usage_partial());
    router.stop().await;
}

/// The Responses API's own error ending a stream (an `error` event, its code beside its
/// message or in an `error` object with its type; a `response.failed` whose `response.error`
/// has a code) keeps its code and type in the records where they have a place, as the
/// router's own late error event does: the request log's `response` and the trace's
/// output have `{"message", "type", "code"}` beside the answer so far (the output is that
/// object when no answer came); the line's `error`, the ledger's and the span's status
/// message keep the message. They kept only the message.
#[tokio::test]
async fn an_upstream_error_event_keeps_its_code_and_type_in_the_records() {
    let created = anthropic_event(&json!({"type": "response.created", "response": {
        "id": "resp_1", "model": "m", "status": "in_progress", "output": []}}));
    let delta = anthropic_event(&json!({"type": "response.output_text.delta", "delta": "Par"}));
    let cases = [
        (
            vec![
                created.clone(),
                delta.clone(),
                anthropic_event(&json!({"type": "error", "code": "rate_limit_exceeded",
                    "message": "Slow down", "param": null, "sequence_number": 2})),
            ],
            json!({"message": "Slow down", "code": "rate_limit_exceeded"}),
        ),
        (
            vec![
                created.clone(),
                delta.clone(),
                anthropic_event(&json!({"type": "response.failed", "response": {
                    "id": "resp_1", "model": "m", "status": "failed",
                    "error": {"code": "server_error", "message": "The model failed"}}})),
            ],
            json!({"message": "The model failed", "code": "server_error"}),
        ),
        (
            vec![
                created.clone(),
                anthropic_event(&json!({"type": "error", "sequence_number": 1, "error": {
                    "type": "invalid_request_error", "code": "context_length_exceeded",
                    "message": "Too long", "param": null}})),
            ],
            json!({"message": "Too long", "type": "invalid_request_error",
                "code": "context_length_exceeded"}),
        ),
    ];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config(&upstream.url(), "");
    let router = TestRouter::start(&config).await;
    let process = crate::support::RouterProcess::start(
        Some(&config),
        &[("LLMSROUTER_LOG_FILE", "requests.log")],
    );
    let folder = process.path().to_owned();
    let log_lines = || -> Vec<serde_json::Value> {
        std::fs::read_dir(&folder)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("requests."))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let ledger_errors = || -> Vec<String> {
        rusqlite::Connection::open(folder.join("users.db"))
            .and_then(|c| {
                c.prepare("SELECT error FROM usage_ledger ORDER BY id")?
                    .query_map([], |row| row.get::<_, Option<String>>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map(|errors| errors.into_iter().flatten().collect())
            .unwrap_or_default()
    };
    for (n, (events, detail)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_chunks: Some(events.clone()),
            ..Default::default()
        });
        let message = detail["message"].as_str().expect("message").to_owned();
        let text = post_stream(&router, "/v1/responses")
            .await
            .text()
            .await
            .expect("the stream");
        assert_eq!(text.as_bytes(), events.concat(), "relayed as it came");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{detail}");
        assert_eq!(record.error.as_deref(), Some(message.as_str()));
        let trace = llmsrouter::sinks::generation::build(
            &record,
            &llmsrouter::sinks::redact::Redactor::default(),
            1 << 20,
        );
        assert_eq!(trace.status_message.as_deref(), Some(message.as_str()));
        let output: serde_json::Value =
            serde_json::from_str(trace.output.as_deref().expect("an output")).expect("JSON");
        if record.response.content.is_empty() {
            assert_eq!(output, detail, "no answer came: the error is the output");
        } else {
            assert_eq!(output["content"], "Par", "{output}");
            assert_eq!(output["error"], detail, "{output}");
        }

        let response = client()
            .post(process.url("/v1/responses"))
            .json(&json!({"model": "[mock]m", "stream": true, "input": "hi"}))
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.text().await.expect("the stream").as_bytes(),
            events.concat()
        );
        crate::support::wait_until(Duration::from_secs(10), || {
            log_lines().len() > n && ledger_errors().len() > n
        })
        .await;
        let line = &log_lines()[n];
        assert_eq!(line["error"], message.as_str(), "{line}");
        assert_eq!(line["response"]["error"], detail, "{line}");
        assert_eq!(ledger_errors()[n], message);
    }
    router.stop().await;
}
