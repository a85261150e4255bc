//! Compressed answers the router decodes for its own reading: each decoded once, all of them
//! together within the decode budget; and a body the upstream cut off, said to be cut off.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::upstream::{Behavior, EarlyAnswer, MockUpstream, PROMPT_TOKENS, gzip};
use crate::support::{
    RouterProcess, TestRouter, client, one_server_config, peak_rss_kib, wait_until,
};

/// A whole chat completion whose content is `size` bytes of text, with its usage.
fn big_chat_completion(size: usize) -> Vec<u8> {
    json!({"id": "chatcmpl-big", "object": "chat.completion", "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a".repeat(size)},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
            "total_tokens": PROMPT_TOKENS + 2}})
    .to_string()
    .into_bytes()
}

/// An upstream that answers every request with `answer` in gzip.
async fn gzip_upstream(answer: &[u8]) -> MockUpstream {
    MockUpstream::start(Behavior {
        raw_body: Some(gzip(answer)),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await
}

/// A config with one alias `mock` for `url`, without a key: the router has none to search
/// answers for, so nothing on the request path decodes one a client takes as it came.
fn keyless_config(url: &str) -> String {
    format!("servers:\n  mock:\n    url: \"{url}\"\n")
}

/// `size` zeros in gzip, and that in gzip again: a few hundred bytes that decode to `size`.
fn gzip_gzip_bomb(size: usize) -> Vec<u8> {
    let fast = flate2::Compression::best();
    let mut inner = flate2::write::GzEncoder::new(Vec::new(), fast);
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..size / zeros.len() {
        inner.write_all(&zeros).expect("gzip");
    }
    let inner = inner.finish().expect("gzip");
    let mut outer = flate2::write::GzEncoder::new(Vec::new(), fast);
    outer.write_all(&inner).expect("gzip");
    outer.finish().expect("gzip")
}

/// The request log's lines so far (`api_proxy.*.log` in the router's folder), once there are
/// `n`.
async fn logged(router: &RouterProcess, n: usize) -> Vec<Value> {
    let lines = || crate::telemetry::request_log::read_log_lines(router.path(), "api_proxy");
    let written = || {
        std::fs::read_dir(router.path()).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("api_proxy."))
        }) && lines().len() >= n
    };
    wait_until(Duration::from_secs(60), written).await;
    lines()
}

/// A 2xx in `gzip, gzip` of a few hundred bytes that decodes to 72 MiB (with keys
/// configured, so the router searches it for an echoed key) is decoded once, to the 64 MiB
/// limit, with a buffer of the size it declares: the search's verdict is its record's. Two
/// decodes (the search's, then the recorder's), each grown by doubling, took the router's
/// peak up by 150 MB for one such answer. Eight at once stay within the decode budget (256
/// MiB): they took 800 MB. Each reaches its client as it came, and its record says what it
/// was: over the limit, or not decoded, the budget spent by the others.
#[tokio::test]
async fn a_compressed_bomb_is_decoded_once_and_many_within_the_budget() {
    const MIB: u64 = 1024;
    let bomb = gzip_gzip_bomb(72 << 20);
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip, gzip\r\n\
         content-length: {}\r\n\r\n",
        bomb.len()
    );
    let upstream = EarlyAnswer::answering([head.as_bytes(), &bomb].concat(), false).await;
    let router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[("LLMSROUTER_LEDGER", "false")],
    );
    let send = |stream: bool| {
        client()
            .post(router.url("/v1/chat/completions"))
            .header("accept-encoding", "gzip")
            .json(&json!({"model": "[mock]m", "messages": [], "stream": stream}))
            .send()
    };
    let pid = router.child.id();
    let before = peak_rss_kib(pid);
    let response = send(false).await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip, gzip");
    assert!(
        response.bytes().await.expect("body") == bomb,
        "not as it came"
    );
    let note = format!(
        "<gzip, gzip, {} bytes, over 64 MiB decoded: not read>",
        bomb.len()
    );
    let lines = logged(&router, 1).await;
    assert_eq!(
        lines[0]["response"]["content"],
        note.as_str(),
        "{}",
        lines[0]
    );
    let one = peak_rss_kib(pid).saturating_sub(before);
    assert!(one < 96 * MIB, "one answer took the peak up {one} KiB");

    let answers = (0..8).map(|i| send(i % 2 == 1));
    for response in futures_util::future::join_all(answers).await {
        let response = response.expect("send");
        assert_eq!(response.status(), 200);
        let headers = format!("{:?}", response.headers());
        let body = response.bytes().await.expect("body");
        assert!(
            body == bomb,
            "not as it came: {headers} {:?}",
            &body[..body.len().min(300)]
        );
    }
    let eight = peak_rss_kib(pid).saturating_sub(before);
    let spent = format!(
        "<gzip, gzip, {} bytes, not decoded: the answers the router was decoding already held \
         the 256 MiB it decodes at once>",
        bomb.len()
    );
    for line in &logged(&router, 9).await[1..] {
        let content = &line["response"]["content"];
        assert!(
            *content == note.as_str() || *content == spent.as_str(),
            "{line}"
        );
        assert_eq!(line["outcome"], "success", "{line}");
    }
    assert!(
        eight < 256 * MIB + 64 * MIB,
        "eight answers took the peak up {eight} KiB"
    );
}

/// A body the upstream's close cut short is said to be cut off, not "malformed": what came
/// was well-formed as far as it went. Whole (short of its `Content-Length`, or inside a
/// chunk) and streamed.
#[tokio::test]
async fn a_body_the_upstream_cut_off_is_said_to_be_cut_off() {
    let cut = "the connection closed before the body's end";
    let whole = [
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":",
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
         40\r\n{\"id\":",
    ];
    for answer in whole {
        let upstream = EarlyAnswer::answering(answer.as_bytes().to_vec(), false).await;
        let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status(), 502);
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body["error"]["message"],
            format!("the upstream mock broke off its answer: {cut}").as_str(),
            "{body}"
        );
        router.stop().await;
    }
    let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n";
    let stream = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{event}\r\n100\r\ndata: {{\"id\"",
        event.len()
    );
    let upstream = EarlyAnswer::answering(stream.into_bytes(), false).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": [], "stream": true}))
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("events");
    assert!(
        text.contains(&format!("the upstream connection failed mid-stream: {cut}")),
        "{text}"
    );
    assert!(!text.contains("malformed"), "{text}");
    router.stop().await;
}

/// The recorder's own decode (of an answer nothing on the request path decoded: its client
/// takes gzip, and there is no key to search it for) takes its bytes from the decode budget
/// the proxy's decodes share, and the decoded body its record keeps holds them until the last
/// sink lets the record go. It took them from no budget: records queued in a slow sink
/// held up to 64 MiB each, counted nowhere.
#[tokio::test]
async fn the_recorders_own_decode_is_within_the_shared_decode_budget() {
    let answer = big_chat_completion(4 << 20);
    let upstream = gzip_upstream(&answer).await;
    let router = TestRouter::start(&keyless_config(&upstream.url())).await;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.expect("body"), gzip(&answer));
    let record = router.records.nth(1).await;
    let usage = record.response.usage.clone().expect("usage read");
    assert_eq!(usage.total, PROMPT_TOKENS + 2);
    assert_eq!(record.response_body.as_deref(), Some(&answer[..]));
    // The collector holds the record, and with it its share.
    let held = router.state.decode_budget.held();
    assert!(
        held >= answer.len(),
        "the decode budget holds {held} bytes for a {} byte body",
        answer.len()
    );
    drop(record);
    router.stop().await;
}

/// An answer whose record is over the body budget (telemetry far behind) is read for its usage
/// by the recorder, off the request path, not as its record is handed over: decoding and
/// parsing a 60 MB gzip answer there stalled every other connection of the lane (`/health`
/// too) 0.6 s an answer. `/health`, asked on the answer's own connection (so on its lane)
/// until the record comes, never waits as long as half the read takes (measured first).
/// The usage is recorded; the bodies are not.
#[tokio::test]
async fn an_answer_over_the_body_budget_is_read_off_the_request_path() {
    let answer = big_chat_completion(32 << 20);
    let compressed = gzip(&answer);
    let read = Instant::now();
    let decoded = llmsrouter::content_coding::decode("gzip", &compressed, 64 << 20);
    let summary = llmsrouter::usage::summarize_json_body(&decoded.expect("gzip"));
    assert!(summary.expect("json").usage.is_some());
    let read = read.elapsed();
    let upstream = gzip_upstream(&answer).await;
    let router = TestRouter::start_with_body_budget(&keyless_config(&upstream.url()), 1).await;
    // One connection: its requests are served on one lane.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .http1_only()
        .build()
        .expect("client");
    let response = client
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body"), compressed);
    let mut longest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    while router.records.all().is_empty() {
        assert!(Instant::now() < deadline, "no record");
        let asked = Instant::now();
        let health = client
            .get(router.url("/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 200);
        health.bytes().await.expect("health body");
        longest = longest.max(asked.elapsed());
    }
    assert!(
        longest < read / 2,
        "/health waited {longest:?} on the answer's lane (reading the answer takes {read:?})"
    );
    let record = router.records.nth(1).await;
    assert!(record.bodies_dropped);
    assert!(record.response_body.is_none() && record.request_body.is_empty());
    let usage = record.response.usage.clone().expect("usage read");
    assert_eq!(usage.total, PROMPT_TOKENS + 2);
    router.stop().await;
}
