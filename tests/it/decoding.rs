//! Compressed answers the router decodes for its own reading: each decoded once, all of them
//! together within the decode budget; and a body the upstream cut off, said to be cut off.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use llmsrouter::content_coding::DecodeBudget;

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
/// configured, so the router searches it for an echoed key) is read once, piece by piece,
/// to the 64 MiB limit, holding none of it: the search's verdict is its record's. Two decodes
/// (the search's, then the recorder's), each grown by doubling, took the router's peak up by
/// 150 MB for one such answer; one decode to a buffer of the size it declared, by 64 MiB
/// (66 MB measured). Eight at once, half of them to stream requests, took 800 MB, then the
/// 256 MiB of the decode budget (260 MB measured), the last ones not read at all; read in
/// pieces, a few MB (7 MB measured). Each reaches its client as it came, and its record says
/// it was over the limit.
#[tokio::test]
async fn a_compressed_bomb_is_read_once_in_pieces_and_many_hold_little() {
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
    assert!(one < 16 * MIB, "one answer took the peak up {one} KiB");

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
    for line in &logged(&router, 9).await[1..] {
        assert_eq!(line["response"]["content"], note.as_str(), "{line}");
        assert_eq!(line["outcome"], "success", "{line}");
    }
    assert!(
        eight < 32 * MIB,
        "eight answers took the peak up {eight} KiB"
    );
}

/// A 40 MB whole answer whose text has escapes (as some upstreams write every character
/// past ASCII) is read for its record within what the record keeps of its text (8 MiB), not
/// copied whole first: serde_json unescaped the whole text into a buffer grown by doubling,
/// then copied it once more, to keep 8 MiB of it, and one such answer took the router's peak
/// up by about three times its size (a 62 MB one: 20 → 200 MiB, bodies logged or not). Now
/// the peak grows by the answer relayed and the 8 MiB kept; its usage is read as before.
#[tokio::test]
async fn a_big_escaped_answers_text_is_not_copied_whole_to_be_cut() {
    const MIB: u64 = 1024;
    let content = "line \"two\" \u{e9}\n".repeat(32 << 20 >> 4);
    let body = json!({"id": "c", "object": "chat.completion", "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
            "total_tokens": PROMPT_TOKENS + 2}})
    .to_string()
    .replace('\u{e9}', "\\u00e9");
    drop(content);
    let size = body.len() as u64;
    let grown = peak_growth_for_one_answer("/v1/chat/completions", body).await;
    // The answer relayed (held once, and what is in flight to the client) and the 8 MiB
    // kept: well under the answer and its text copied whole beside it.
    let limit = size / 1024 * 7 / 4;
    assert!(
        grown < limit,
        "one {} MiB answer took the peak up {} MiB (limit {} MiB)",
        size >> 20,
        grown / MIB,
        limit / MIB
    );
}

/// How far (KiB) the peak memory of a router (ledger off, bodies not logged) rose while it
/// relayed `body`, its upstream's whole answer to a `POST` to `path`, and recorded it (its
/// log line read: the usage the body gives, `PROMPT_TOKENS` in and 2 out).
async fn peak_growth_for_one_answer(path: &str, body: String) -> u64 {
    let size = body.len() as u64;
    let upstream = MockUpstream::start(Behavior {
        body: Some(body),
        ..Default::default()
    })
    .await;
    let router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_BODIES", "false"),
        ],
    );
    let pid = router.child.id();
    let before = peak_rss_kib(pid);
    let response = client()
        .post(router.url(path))
        .json(&json!({"model": "[mock]m", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(response.bytes().await.expect("body").len() as u64, size);
    let lines = logged(&router, 1).await;
    let usage = &lines[0]["usage"];
    assert_eq!(
        (&usage["input"], &usage["output"]),
        (&json!(PROMPT_TOKENS), &json!(2)),
        "{path}: {}",
        lines[0]
    );
    peak_rss_kib(pid).saturating_sub(before)
}

/// A 40 MB whole answer that is one tool call (an Anthropic message's `tool_use` block whose
/// `input` is nearly all of it; a chat answer's call whose `arguments` is an object, not a
/// string) is read for its record within what the record keeps of its text (8 MiB), not
/// copied whole first: the `input` was copied whole, and the object read into a `Value` and
/// written out again, to keep 8 MiB of it, and one such 50 MB answer took the router's peak
/// up by 104 and 192 MiB (bodies not logged). Now the peak grows by the answer relayed and
/// the 8 MiB kept; the call and the usage are read as before.
#[tokio::test]
async fn a_big_tool_calls_arguments_are_not_copied_whole_to_be_cut() {
    const MIB: u64 = 1024;
    let filler = "x".repeat(40 << 20);
    let anthropic = json!({"id": "msg_1", "type": "message", "role": "assistant",
        "model": "claude-x", "content": [{"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "write_file",
                "input": {"path": "a.txt", "content": filler}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 2}})
    .to_string();
    let chat = json!({"id": "c", "object": "chat.completion", "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "write_file",
                "arguments": {"path": "a.txt", "content": filler}}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
            "total_tokens": PROMPT_TOKENS + 2}})
    .to_string();
    drop(filler);
    for (path, body) in [("/v1/messages", anthropic), ("/v1/chat/completions", chat)] {
        let size = body.len() as u64;
        let grown = peak_growth_for_one_answer(path, body).await;
        // The answer relayed (held once, and what is in flight to the client) and the 8 MiB
        // kept: well under the answer and its arguments copied whole beside it.
        let limit = size / 1024 * 7 / 4;
        assert!(
            grown < limit,
            "{path}: one {} MiB answer took the peak up {} MiB (limit {} MiB)",
            size >> 20,
            grown / MIB,
            limit / MIB
        );
    }
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
    let summary = llmsrouter::usage::summarize_json_body(
        &decoded.expect("gzip"),
        &llmsrouter::sinks::redact::CutGuard::default(),
    );
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

/// Clients that read little of the compressed answers the router decodes for them (they do
/// not take gzip) hold none of the decode budget while they read: each answer is decoded as
/// it is written. Decoded whole, each held its share until its client finished (or the send
/// timeout), and the next compressed answer found the budget spent and went unread: no
/// usage. Each slow client still gets its whole answer, decoded, with its length.
#[tokio::test]
async fn slow_readers_of_decoded_answers_hold_no_decode_budget() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SLOW: usize = 3;
    // Larger than the socket buffers hold (4 MiB to send, 128 KiB to receive), so a client
    // that reads nothing leaves the router writing it.
    let answer = big_chat_completion(8 << 20);
    let upstream = gzip_upstream(&answer).await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        // Room for the three slow answers decoded whole, not for a fourth.
        state.decode_budget = DecodeBudget::new(SLOW * answer.len() + (4 << 20));
    })
    .await;
    let request = json!({"model": "[mock]m", "messages": []}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{request}",
        request.len()
    );
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut socket = tokio::net::TcpStream::connect(router.addr)
            .await
            .expect("connect");
        socket.write_all(request.as_bytes()).await.expect("send");
        // The head, and whatever came with it: the router is writing the body.
        let mut got = Vec::new();
        let mut buffer = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buffer).await.expect("read");
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buffer[..n]);
        }
        slow.push((socket, got));
    }
    let held = router.state.decode_budget.held();
    assert!(
        held < answer.len(),
        "slow readers hold {held} bytes of the budget"
    );

    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body"), gzip(&answer));
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, llmsrouter::record::Outcome::Success);
    let usage = record.response.usage.clone();
    assert_eq!(
        usage.map(|u| u.total),
        Some(PROMPT_TOKENS + 2),
        "{:?}",
        record.response.content
    );
    assert_eq!(record.response_body.as_deref(), Some(&answer[..]));

    for (mut socket, mut got) in slow {
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("content-encoding"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", answer.len())),
            "{head}"
        );
        while got.len() < end + answer.len() {
            let mut buffer = vec![0u8; 1 << 20];
            let n = socket.read(&mut buffer).await.expect("read");
            assert!(n > 0, "closed after {} bytes", got.len() - end);
            got.extend_from_slice(&buffer[..n]);
        }
        assert!(got[end..] == answer[..], "the decoded answer");
    }
    for n in 2..=SLOW + 1 {
        let record = router.records.nth(n).await;
        assert_eq!(record.outcome, llmsrouter::record::Outcome::Success);
        assert_eq!(record.response_body.as_deref(), Some(&answer[..]));
    }
    router.stop().await;
}

/// An answer decoded as it is written reaches a client over HTTP/2 whole too, with its
/// length, in pieces the client's flow-control window asks for; its record reads it.
#[tokio::test]
async fn an_answer_decoded_as_written_reaches_an_http2_client_whole() {
    let answer = big_chat_completion(3 << 20);
    let upstream = gzip_upstream(&answer).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = crate::support::h2c_client()
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(
        response.headers()["content-length"],
        answer.len().to_string().as_str()
    );
    assert!(response.bytes().await.expect("body") == answer[..]);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, llmsrouter::record::Outcome::Success);
    assert_eq!(
        record.response.usage.as_ref().map(|u| u.total),
        Some(PROMPT_TOKENS + 2)
    );
    assert_eq!(record.response_body.as_deref(), Some(&answer[..]));
    router.stop().await;
}

/// An answer the request path must decode whole (here a gzip answer without its 8-byte
/// trailer, read as the one JSON document before the cut, as curl reads it) but finds the
/// decode budget spent for goes to its client as it came, unsearched, as before; its record
/// is decoded by the recorder instead, off the request path, so its usage is recorded. It
/// used to say only that it was not decoded, its usage unknown.
#[tokio::test]
async fn an_answer_the_budget_had_no_room_for_still_has_its_usage_recorded() {
    let answer = chat_completion_bytes();
    let mut sent = gzip(&answer);
    sent.truncate(sent.len() - 8);
    let upstream = MockUpstream::start(Behavior {
        raw_body: Some(sent.clone()),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.decode_budget = DecodeBudget::new(1);
    })
    .await;
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body"), sent);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, llmsrouter::record::Outcome::Success);
    assert_eq!(
        record.response.usage.as_ref().map(|u| u.total),
        Some(PROMPT_TOKENS + 2),
        "{}",
        record.response.content
    );
    assert_eq!(record.response_body.as_deref(), Some(&answer[..]));
    router.stop().await;
}

fn chat_completion_bytes() -> Vec<u8> {
    crate::support::upstream::chat_completion("m-1").into_bytes()
}
