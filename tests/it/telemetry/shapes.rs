//! What is read from each upstream answer shape, through every sink: the record, the span a
//! mock OTLP endpoint received and the usage ledger's row, for Anthropic-style `/v1/messages`
//! streams and bodies, refusals, Responses API streams, OpenAI's audio streams, and the
//! whole answers with no chat message: embeddings, images, transcriptions (JSON and text),
//! moderations and answers of no known shape; and 200s with nothing in them.

use std::sync::Arc;

use llmsrouter::record::{Outcome, RecordSink};
use llmsrouter::sinks::langfuse::{LangfuseOptions, LangfuseSink};
use llmsrouter::sinks::ledger::LedgerSink;
use llmsrouter::sinks::redact::Redactor;
use llmsrouter::sinks::request_log::RequestLogSink;
use serde_json::{Value, json};

use super::mock_otlp::{MockOtlp, json_attr, str_attr, strings_attr};
use super::request_log::read_log_lines;
use super::{langfuse_options, request_id};
use crate::streaming::read_past_a_held_chunk;
use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{TestRouter, client, one_server_config};

/// A router feeding Langfuse (a mock OTLP endpoint), a ledger in a fresh database and a
/// request log, in front of a mock upstream.
struct Setup {
    /// Holds the database and the log for the test's length.
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    upstream: MockUpstream,
    otlp: MockOtlp,
    router: TestRouter,
    _sinks: (Arc<LangfuseSink>, Arc<LedgerSink>, Arc<RequestLogSink>),
}

impl Setup {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Self::start`] with the exporter's options adjusted.
    async fn start_with(adjust: impl FnOnce(&mut LangfuseOptions)) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("users.db");
        let upstream = MockUpstream::start(Behavior::default()).await;
        let otlp = MockOtlp::start().await;
        let mut options = langfuse_options(&otlp);
        adjust(&mut options);
        let langfuse = Arc::new(LangfuseSink::start(options).expect("exporter"));
        let ledger = Arc::new(LedgerSink::start(&db, Redactor::default()).expect("ledger"));
        let log = super::request_log::log_sink(dir.path().join("api_proxy.log"), true);
        let router = TestRouter::start_with_sinks(
            &one_server_config(&upstream.url(), ""),
            vec![
                langfuse.clone() as Arc<dyn RecordSink>,
                ledger.clone() as Arc<dyn RecordSink>,
                log.clone() as Arc<dyn RecordSink>,
            ],
            |_| {},
        )
        .await;
        Self {
            dir,
            db,
            upstream,
            otlp,
            router,
            _sinks: (langfuse, ledger, log),
        }
    }

    /// POSTs `body` to `path`; the answer's request id and body text.
    async fn post(&self, path: &str, body: &Value) -> (String, String) {
        let response = client()
            .post(self.router.url(path))
            .json(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        (id, response.text().await.expect("body"))
    }

    /// Checks the records of a stream cut before its usage (the span's level is WARNING,
    /// the ledger's usage unknown and partial), stopping the router to read the ledger.
    async fn stop_and_check_partial(self, request_id: &str) {
        let span = self.otlp.span_of(request_id).await.span;
        assert_eq!(
            str_attr(&span, "langfuse.observation.level"),
            Some("WARNING")
        );
        let row = self.stop_and_read_ledger(request_id).await;
        assert!(!row.usage_known && row.usage_partial, "{row:?}");
    }

    /// Stops the router (the sinks are flushed) and reads the ledger's row of `request_id`.
    async fn stop_and_read_ledger(self, request_id: &str) -> LedgerRow {
        self.stop_and_read(request_id).await.0
    }

    /// Stops the router (the sinks are flushed) and reads the ledger's row and the request
    /// log's line of `request_id`.
    async fn stop_and_read(self, request_id: &str) -> (LedgerRow, Value) {
        let mut all = self.stop_and_read_all(&[request_id]).await;
        all.pop().expect("one")
    }

    /// [`Self::stop_and_read`] for each of `request_ids`, in that order.
    async fn stop_and_read_all(self, request_ids: &[&str]) -> Vec<(LedgerRow, Value)> {
        self.router.stop().await;
        let lines = read_log_lines(self.dir.path(), "api_proxy");
        let conn = llmsrouter::db::open(&self.db).expect("open");
        let mut out = Vec::new();
        for request_id in request_ids {
            let line = lines
                .iter()
                .find(|line| line["request_id"] == *request_id)
                .expect("the request's log line")
                .clone();
            let row = conn
                .query_row(
                    "SELECT input_tokens, output_tokens, cached_tokens, cache_creation_tokens, \
                 usage_known, usage_partial, response_model, ttft_ms, total_tokens, outcome, \
                 error FROM usage_ledger WHERE request_id = ?1",
                    [request_id],
                    |r| {
                        Ok(LedgerRow {
                            tokens: (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?),
                            usage_known: r.get(4)?,
                            usage_partial: r.get(5)?,
                            response_model: r.get(6)?,
                            ttft_ms: r.get(7)?,
                            total_tokens: r.get(8)?,
                            outcome: r.get(9)?,
                            error: r.get(10)?,
                        })
                    },
                )
                .expect("the request's row");
            out.push((row, line));
        }
        out
    }

    /// The upstream answers the next requests with `body` as `content_type`.
    fn answer_with(&self, body: &[u8], content_type: &str) {
        self.upstream.set(Behavior {
            raw_body: Some(body.to_vec()),
            content_type: content_type.into(),
            ..Default::default()
        });
    }

    /// POSTs `request` to `path` and checks the client got `answer` (the upstream's, as it
    /// came, but for a chat completion to a stream request, which goes as its chunks); the
    /// request id, its record (the `nth` of this router) and its span's output
    /// (parsed, or as a string when it is not JSON).
    async fn whole_answer(
        &self,
        nth: usize,
        path: &str,
        request: &Value,
        answer: &[u8],
    ) -> (
        String,
        Arc<llmsrouter::record::RequestRecord>,
        Option<Value>,
    ) {
        let response = client()
            .post(self.router.url(path))
            .json(request)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let got = response.bytes().await.expect("body");
        assert!(got == answer, "relayed as it came");
        let record = self.router.records.nth(nth).await;
        assert_eq!(record.outcome, Outcome::Success, "{path}");
        let span = self.otlp.span_of(&id).await.span;
        // A cut output is no longer JSON: then as a string.
        let output = str_attr(&span, "langfuse.observation.output")
            .map(|text| serde_json::from_str(text).unwrap_or_else(|_| json!(text)));
        (id, record, output)
    }

    /// Streams `chunks` to a chat `request` (made a stream), the upstream holding chunk
    /// `held` until the client has every byte before it; checks the client got the chunks as
    /// they came. The request id, and when the held chunk was let go: a first token read from
    /// the chunks before it is no later.
    async fn held_stream(
        &self,
        request: &Value,
        chunks: &[Vec<u8>],
        held: usize,
    ) -> (String, std::time::SystemTime) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.upstream.set(Behavior {
            raw_chunks: Some(chunks.to_vec()),
            hold_chunk: Some((held, gate.clone())),
            ..Default::default()
        });
        let mut request = request.clone();
        request["stream"] = json!(true);
        let response = client()
            .post(self.router.url("/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .expect("send");
        let id = request_id(&response);
        let before = String::from_utf8(chunks[..held].concat()).expect("text");
        let (_, seen) = read_past_a_held_chunk(response, &before, &gate).await;
        let released = std::time::SystemTime::now();
        assert_eq!(seen.as_bytes(), chunks.concat(), "relayed as it came");
        (id, released)
    }

    /// Asserts that the span of each of `ids` has `expected` as its output.
    async fn assert_outputs(&self, ids: &[&str], expected: &Value) {
        for id in ids {
            let span = self.otlp.span_of(id).await.span;
            assert_eq!(
                json_attr(&span, "langfuse.observation.output").as_ref(),
                Some(expected),
                "{id}"
            );
        }
    }

    /// The span of `request_id`'s `langfuse.observation.usage_details`.
    async fn usage_details(&self, request_id: &str) -> Option<Value> {
        let span = self.otlp.span_of(request_id).await.span;
        json_attr(&span, "langfuse.observation.usage_details")
    }
}

#[derive(Debug)]
struct LedgerRow {
    /// Input, output, cached and cache-creation tokens.
    tokens: (i64, i64, i64, i64),
    usage_known: bool,
    usage_partial: bool,
    response_model: Option<String>,
    ttft_ms: Option<i64>,
    total_tokens: i64,
    outcome: String,
    error: Option<String>,
}

/// A part larger than its whole (xAI's reasoning tokens, left out of `completion_tokens`;
/// cached tokens above `prompt_tokens`) is added to the whole in every sink. Langfuse's
/// `output` key (output less reasoning) was 0, its parts summing past the total.
#[tokio::test]
async fn a_part_larger_than_its_whole_is_added_to_it_in_every_sink() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"model": "grok-3-mini", "choices": [{"message": {"content": "ok"}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 340,
                "prompt_tokens_details": {"cached_tokens": 30},
                "completion_tokens_details": {"reasoning_tokens": 310}}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]grok-3-mini", "messages": []}),
        )
        .await;
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.usage_details"),
        Some(
            json!({"input": 20, "output": 10, "total": 340, "input_cached_tokens": 30,
            "output_reasoning_tokens": 310})
        )
    );
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!((row.tokens, row.total_tokens), ((50, 320, 30, 0), 340));
    assert_eq!(line["usage"]["output"], 320, "{line}");
}

/// One SSE event with an `event:` line, as Anthropic sends them.
/// The output both Anthropic tests expect: text, thinking, and the weather tool call with
/// `arguments` as the upstream wrote them.
fn weather_answer(arguments: &str) -> Value {
    json!({"role": "assistant", "content": "Bonjour", "reasoning_content": "hmm",
        "tool_calls": [{"id": "toolu_1", "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}]})
}

fn named_event(data: &Value) -> Vec<u8> {
    let name = data["type"].as_str().expect("typed event");
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// An Anthropic-style `/v1/messages` stream: usage from `message_start` (input, cache reads
/// and writes) and `message_delta` (output), the text, thinking and tool call from content
/// blocks, the responded model and id, the first token, `stop_reason`; it ends with
/// `message_stop` and no `[DONE]`, and is complete, not cut.
#[tokio::test]
async fn an_anthropic_stream_is_read_from_its_own_events() {
    let setup = Setup::start().await;
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-r", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 50}}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Bon"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "jour"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use",
            "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 42}}),
        json!({"type": "message_stop"}),
    ];
    let chunks: Vec<Vec<u8>> = events.iter().map(named_event).collect();
    setup.upstream.set(Behavior {
        raw_chunks: Some(chunks.clone()),
        ..Default::default()
    });
    let (id, text) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude-st", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..], "relayed as it came");

    let record = setup.router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete, "message_stop is the end of the stream");
    assert!(!record.usage_partial());
    assert!(record.first_token_at.is_some());
    let usage = record.response.usage.as_ref().expect("usage");
    assert_eq!(
        (
            usage.input,
            usage.output,
            usage.total,
            usage.cached_input,
            usage.cache_creation_input
        ),
        (162, 42, 204, 100, 50)
    );

    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(weather_answer(r#"{"city": "Paris"}"#))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.usage_details"),
        Some(
            json!({"input": 12, "output": 42, "total": 204, "input_cached_tokens": 100,
            "input_cache_creation": 50, "output_reasoning_tokens": 0})
        )
    );
    assert_eq!(
        str_attr(&span, "langfuse.observation.model.name"),
        Some("claude-r")
    );
    assert_eq!(str_attr(&span, "gen_ai.response.id"), Some("msg_1"));
    // OpenTelemetry's GenAI value for a conversation turn, not the path (`messages`).
    assert_eq!(str_attr(&span, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(
        strings_attr(&span, "gen_ai.response.finish_reasons"),
        Some(vec!["tool_use".to_owned()])
    );
    assert!(str_attr(&span, "langfuse.observation.completion_start_time").is_some());
    assert_eq!(str_attr(&span, "langfuse.observation.level"), None);

    let row = setup.stop_and_read_ledger(&id).await;
    assert_eq!(row.tokens, (162, 42, 100, 50));
    assert!(row.usage_known && !row.usage_partial, "{row:?}");
    assert_eq!(row.response_model.as_deref(), Some("claude-r"));
    assert!(row.ttft_ms.is_some());
}

/// The same stream cut after `message_start` (the upstream closed early): its usage is
/// unknown (`message_start`'s output count is provisional), not the input alone as if it
/// were the whole.
#[tokio::test]
async fn an_anthropic_stream_closed_before_its_end_is_partial() {
    let setup = Setup::start().await;
    let chunks = vec![
        named_event(
            &json!({"type": "message_start", "message": {"id": "msg_2", "model": "claude-r",
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        named_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Bon"}})),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(chunks),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude-st", "stream": true, "messages": []}),
        )
        .await;
    let record = setup.router.records.nth(1).await;
    assert!(!record.complete);
    assert!(record.usage_partial());
    assert_eq!(record.response.content, "Bon");
    setup.stop_and_check_partial(&id).await;
}

/// The same stream closed right after `message_start`, before any token: the upstream had
/// taken the input on, so its usage is unknown too, not absent.
#[tokio::test]
async fn an_anthropic_stream_closed_after_message_start_alone_is_partial() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![named_event(
            &json!({"type": "message_start", "message": {"id": "msg_3", "model": "claude-r",
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        )]),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude-st", "stream": true, "messages": []}),
        )
        .await;
    let record = setup.router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(!record.complete && record.first_token_at.is_none());
    assert!(record.usage_partial());
    setup.stop_and_check_partial(&id).await;
}

/// A stream the upstream ends with an error event after announcing its answer (Anthropic's
/// `message_start`, the Responses API's `response.created`), before any token: the input was
/// taken on, so its tokens are unknown, and every sink says `usage_partial` (as for an error
/// event after a first token), with no usage.
#[tokio::test]
async fn a_stream_ended_by_an_error_event_after_its_start_event_is_partial() {
    let setup = Setup::start().await;
    let anthropic = vec![
        named_event(
            &json!({"type": "message_start", "message": {"id": "msg_4", "model": "claude-r",
            "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        named_event(&json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded mid-stream"}})),
    ];
    let responses = vec![
        named_event(
            &json!({"type": "response.created", "response": {"id": "resp_4",
            "model": "o4-r", "status": "in_progress", "output": [], "usage": null}}),
        ),
        named_event(&json!({"type": "error", "code": "server_error",
            "message": "The model failed", "param": null})),
    ];
    let mut ids = Vec::new();
    for (nth, (path, chunks, says)) in [
        ("/v1/messages", anthropic, "Overloaded mid-stream"),
        ("/v1/responses", responses, "The model failed"),
    ]
    .into_iter()
    .enumerate()
    {
        setup.upstream.set(Behavior {
            raw_chunks: Some(chunks.clone()),
            ..Default::default()
        });
        let (id, text) = setup
            .post(
                path,
                &json!({"model": "[mock]m", "stream": true, "max_tokens": 5, "messages": []}),
            )
            .await;
        assert_eq!(text.as_bytes(), &chunks.concat()[..], "relayed as it came");
        let record = setup.router.records.nth(nth + 1).await;
        assert_eq!(record.outcome, Outcome::UpstreamError, "{path}");
        assert_eq!(record.error.as_deref(), Some(says));
        assert!(record.first_token_at.is_none(), "{path}: no token came");
        assert!(record.usage_partial(), "{path}");
        let span = setup.otlp.span_of(&id).await.span;
        let metadata = json_attr(&span, "langfuse.trace.metadata").expect("metadata");
        assert_eq!(metadata["usage_partial"], true, "{path}");
        assert_eq!(
            str_attr(&span, "langfuse.observation.usage_details"),
            None,
            "{path}"
        );
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (row, line) in setup.stop_and_read_all(&ids).await {
        assert!(!row.usage_known && row.usage_partial, "{row:?}");
        assert_eq!(line["usage_partial"], true, "{line}");
        assert_eq!(line["usage"], Value::Null, "{line}");
        assert_eq!(line["outcome"], "upstream_error", "{line}");
    }
}

/// A stream that reached its own last event (`message_stop`, `response.completed`) and then
/// broke (the upstream reset instead of ending the body): the client gets the events as
/// they came and nothing after them (no error event), and the record is a complete success,
/// as a stream broken after `[DONE]` is.
#[tokio::test]
async fn a_stream_broken_after_its_own_last_event_is_complete() {
    let setup = Setup::start().await;
    let anthropic = vec![
        named_event(
            &json!({"type": "message_start", "message": {"id": "msg_3", "model": "claude-r",
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        named_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Bon"}})),
        named_event(
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3}}),
        ),
        named_event(&json!({"type": "message_stop"})),
    ];
    let responses = vec![
        named_event(&json!({"type": "response.output_text.delta", "delta": "Hi"})),
        named_event(
            &json!({"type": "response.completed", "response": {"id": "resp_1",
            "status": "completed", "usage": {"input_tokens": 5, "output_tokens": 1,
            "total_tokens": 6}}}),
        ),
    ];
    for (n, (path, chunks)) in [("/v1/messages", anthropic), ("/v1/responses", responses)]
        .into_iter()
        .enumerate()
    {
        // The connection is cut where a last chunk would go: after every event was sent.
        let mut sent = chunks.clone();
        sent.push(b": never sent\n\n".to_vec());
        setup.upstream.set(Behavior {
            abort_after: Some(chunks.len()),
            chunk_delay: std::time::Duration::from_millis(10),
            raw_chunks: Some(sent),
            ..Default::default()
        });
        let (_, text) = setup
            .post(
                path,
                &json!({"model": "[mock]m", "stream": true, "messages": []}),
            )
            .await;
        assert_eq!(
            text.as_bytes(),
            chunks.concat(),
            "{path}: as they came, no more"
        );
        let record = setup.router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{path}");
        assert!(record.complete && !record.usage_partial(), "{path}");
        assert!(record.response.usage.is_some(), "{path}");
    }
}

/// A `/v1/messages` or `/v1/responses` stream the upstream closes cleanly after generating,
/// before its last event and usage: Langfuse's warning names that event (`message_stop`,
/// `response.completed`), not `[DONE]`, which these formats do not have. The ledger row and
/// the request log line say the same (a success with unknown usage and nothing said read as
/// a free answer), and a chat stream's names `data: [DONE]`.
#[tokio::test]
async fn a_stream_closed_before_its_last_event_names_it_in_the_warning() {
    let setup = Setup::start().await;
    let anthropic = vec![
        named_event(&json!({"type": "message_start", "message": {"id": "msg_4",
            "model": "claude-r", "usage": {"input_tokens": 12, "output_tokens": 1}}})),
        named_event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Bon"}})),
    ];
    let responses = vec![
        named_event(
            &json!({"type": "response.created", "response": {"id": "resp_4",
            "model": "m", "status": "in_progress", "output": []}}),
        ),
        named_event(&json!({"type": "response.output_text.delta", "delta": "Hi"})),
    ];
    let legacy = vec![named_event(
        &json!({"type": "completion", "completion": " Hi", "stop_reason": null, "model": "claude-2.1"}),
    )];
    let chat =
        vec![b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n".to_vec()];
    let mut said = Vec::new();
    for (path, chunks, marker) in [
        ("/v1/messages", anthropic, "message_stop"),
        ("/v1/responses", responses, "response.completed"),
        ("/v1/complete", legacy, "a stop_reason"),
        ("/v1/chat/completions", chat, "data: [DONE]"),
    ] {
        setup.upstream.set(Behavior {
            raw_chunks: Some(chunks),
            ..Default::default()
        });
        let (id, _) = setup
            .post(
                path,
                &json!({"model": "[mock]m", "stream": true, "messages": []}),
            )
            .await;
        let span = setup.otlp.span_of(&id).await.span;
        assert_eq!(
            str_attr(&span, "langfuse.observation.level"),
            Some("WARNING")
        );
        assert_eq!(
            str_attr(&span, "langfuse.observation.status_message"),
            Some(
                format!(
                    "the upstream closed the stream before {marker} and its usage; \
                     token counts unknown"
                )
                .as_str()
            ),
            "{path}"
        );
        said.push((id, marker));
    }
    let ids: Vec<&str> = said.iter().map(|(id, _)| id.as_str()).collect();
    let rows = setup.stop_and_read_all(&ids).await;
    for ((row, line), (_, marker)) in rows.iter().zip(&said) {
        let note = format!(
            "the upstream closed the stream before {marker} and its usage; token counts unknown"
        );
        assert_eq!(row.outcome, "success");
        assert!(row.usage_partial, "{row:?}");
        assert_eq!(row.error.as_deref(), Some(note.as_str()));
        assert_eq!(line["error"], note.as_str(), "{line}");
    }
}

/// A client that leaves right after the upstream's error event (the Anthropic SDK raises on
/// `event: error` and closes the connection) while the upstream holds its connection open:
/// every sink has the upstream's error with its message (Langfuse at ERROR, the request
/// log, the ledger, so `llmsrouter usage` counts it), not a client that left.
#[tokio::test]
async fn a_client_leaving_after_an_upstream_error_event_leaves_the_error_in_every_sink() {
    use futures_util::StreamExt as _;
    let setup = Setup::start().await;
    let error = named_event(&json!({"type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            named_event(&json!({"type": "message_start", "message": {"id": "msg_5",
                "model": "claude-r", "usage": {"input_tokens": 12, "output_tokens": 1}}})),
            error.clone(),
        ]),
        linger_after_done: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    });
    let response = client()
        .post(setup.router.url("/v1/messages"))
        .json(
            &json!({"model": "[mock]claude-r", "stream": true, "max_tokens": 5,
            "messages": []}),
        )
        .send()
        .await
        .expect("send");
    let id = request_id(&response);
    let mut body = response.bytes_stream();
    let error = String::from_utf8(error).expect("utf8");
    let mut seen = String::new();
    let read = async {
        while !seen.contains(&error) {
            let piece = body.next().await.expect("more").expect("a piece");
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the error event came");
    drop(body);
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(str_attr(&span, "langfuse.observation.level"), Some("ERROR"));
    assert_eq!(
        str_attr(&span, "langfuse.observation.status_message"),
        Some("Overloaded")
    );
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!(
        (row.outcome.as_str(), row.error.as_deref()),
        ("upstream_error", Some("Overloaded"))
    );
    assert_eq!(
        (&line["outcome"], &line["error"]),
        (&json!("upstream_error"), &json!("Overloaded"))
    );
}

/// A whole Anthropic message: its content blocks are the output (text, thinking, tool
/// calls), next to the usage that was already read.
#[tokio::test]
async fn an_anthropic_body_has_its_content_blocks_as_output() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "msg_3", "type": "message", "role": "assistant", "model": "claude-r",
                "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Bonjour"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 12, "output_tokens": 42, "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 50}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude-ns", "max_tokens": 100, "messages": []}),
        )
        .await;
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(weather_answer(r#"{"city":"Paris"}"#))
    );
    assert_eq!(
        strings_attr(&span, "gen_ai.response.finish_reasons"),
        Some(vec!["tool_use".to_owned()])
    );
    let row = setup.stop_and_read_ledger(&id).await;
    assert_eq!(row.tokens, (162, 42, 100, 50));
}

/// Anthropic's legacy Text Completions API (`/v1/complete`) is read as a legacy completion
/// is: its `completion` is the output (a stream's pieces joined, the first with text its first
/// token), its `stop_reason` the finish reason, with its id and model. A stream (no `[DONE]`,
/// no usage) is complete at the `completion` event with a `stop_reason`, not cut. Before, the
/// output was a note of the answer's keys, and a stream's was empty.
#[tokio::test]
async fn an_anthropic_legacy_completion_is_its_text_whole_and_streamed() {
    let setup = Setup::start().await;
    let request = json!({"model": "[mock]claude-2.1", "max_tokens_to_sample": 100,
        "prompt": "\n\nHuman: hi\n\nAssistant:"});
    let whole = json!({"type": "completion", "id": "compl_1", "completion": " Hello there!",
        "stop_reason": "stop_sequence", "model": "claude-2.1", "stop": "\n\nHuman:",
        "log_id": "compl_1"})
    .to_string();
    setup.answer_with(whole.as_bytes(), "application/json");
    let (whole_id, record, output) = setup
        .whole_answer(1, "/v1/complete", &request, whole.as_bytes())
        .await;
    assert_eq!(output, assistant(" Hello there!"));
    assert_eq!(
        record.response.finish_reason.as_deref(),
        Some("stop_sequence")
    );

    let piece = |text: &str, stop: Value| {
        named_event(
            &json!({"type": "completion", "id": "compl_2", "completion": text,
            "stop_reason": stop, "model": "claude-2.1", "log_id": "compl_2"}),
        )
    };
    let chunks = vec![
        piece(" Hello", Value::Null),
        named_event(&json!({"type": "ping"})),
        piece(" there!", Value::Null),
        piece("", json!("stop_sequence")),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(chunks.clone()),
        ..Default::default()
    });
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (stream_id, text) = setup.post("/v1/complete", &streamed).await;
    assert_eq!(text.as_bytes(), &chunks.concat()[..], "relayed as it came");
    let record = setup.router.records.nth(2).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete, "the stop_reason is the end of the stream");
    assert!(!record.usage_partial());
    assert!(record.first_token_at.is_some());
    assert_eq!(record.response.content, " Hello there!");

    for id in [&whole_id, &stream_id] {
        let span = setup.otlp.span_of(id).await.span;
        assert_eq!(
            json_attr(&span, "langfuse.observation.output"),
            assistant(" Hello there!"),
            "{id}"
        );
        assert_eq!(
            strings_attr(&span, "gen_ai.response.finish_reasons"),
            Some(vec!["stop_sequence".to_owned()]),
            "{id}"
        );
        assert_eq!(
            str_attr(&span, "langfuse.observation.model.name"),
            Some("claude-2.1")
        );
        assert!(str_attr(&span, "gen_ai.response.id").is_some_and(|r| r.starts_with("compl_")));
        assert!(str_attr(&span, "langfuse.observation.completion_start_time").is_some());
        assert_eq!(str_attr(&span, "langfuse.observation.level"), None, "{id}");
    }
    let (row, line) = setup.stop_and_read(&stream_id).await;
    assert!(row.ttft_ms.is_some());
    assert!(!row.usage_partial, "{row:?}");
    assert_eq!(
        line["response"],
        json!({"content": " Hello there!", "finish_reason": "stop_sequence"})
    );
}

/// A refusal (OpenAI's `refusal`, with `content` null) is the answer: the span's output has
/// it next to the empty content, the log's streamed response has it, and a streamed one's
/// first piece is the first token.
#[tokio::test]
async fn a_refusal_is_recorded_as_the_answer() {
    let setup = Setup::start().await;
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "s", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
        .into_bytes()
    };
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            chunk(
                json!({"role": "assistant", "content": null, "refusal": ""}),
                Value::Null,
            ),
            chunk(json!({"refusal": "I cannot "}), Value::Null),
            chunk(json!({"refusal": "help with that."}), Value::Null),
            chunk(json!({}), json!("stop")),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let (streamed, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "stream": true, "messages": []}),
        )
        .await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": null, "refusal": "I cannot help with that."}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (whole, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "messages": []}),
        )
        .await;
    let expected =
        json!({"role": "assistant", "content": "", "refusal": "I cannot help with that."});
    for id in [&streamed, &whole] {
        let span = setup.otlp.span_of(id).await.span;
        assert_eq!(
            json_attr(&span, "langfuse.observation.output"),
            Some(expected.clone())
        );
        assert!(str_attr(&span, "langfuse.observation.completion_start_time").is_some());
    }
    let record = setup.router.records.nth(1).await;
    assert!(record.first_token_at.is_some(), "the refusal's first piece");
    let (row, line) = setup.stop_and_read(&streamed).await;
    assert!(row.ttft_ms.is_some());
    assert_eq!(line["response"]["refusal"], "I cannot help with that.");
    assert!(line["ttft_ms"].is_u64());
}

/// Every part of the prompt reaches the span's input: a Responses API request's `tools`
/// (beside its `instructions`), and an Anthropic-style request's top-level `system` prompt,
/// which is no model parameter (those are cut at 2 KiB) however long it is.
#[tokio::test]
async fn system_prompts_and_responses_tools_are_in_the_input() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "x", "model": "m", "output": [], "usage": {"input_tokens": 1, "output_tokens": 1}})
                .to_string(),
        ),
        ..Default::default()
    });
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let (id, _) = setup
        .post(
            "/v1/responses",
            &json!({"model": "[mock]o", "input": "weather?", "instructions": "be brief",
                "tools": tools, "temperature": 0.5}),
        )
        .await;
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.input"),
        Some(json!({"instructions": "be brief", "tools": tools, "input": "weather?"}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.model.parameters"),
        Some(json!({"temperature": 0.5}))
    );

    let system = format!("You are Claude Code. {}", "Follow the rules. ".repeat(200));
    let messages = json!([{"role": "user", "content": "hi"}]);
    let (id, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]c", "max_tokens": 10, "system": system, "messages": messages}),
        )
        .await;
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.input"),
        Some(json!({"system": system, "messages": messages}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.model.parameters"),
        Some(json!({"max_tokens": 10}))
    );
    setup.router.stop().await;
}

/// A Responses API stream whose answer is only in its last event (`response.completed`, no
/// delta events, no `[DONE]`): text and reasoning are read from the final `output` (the first
/// token), its id from `response.created`; it ran to its end.
#[tokio::test]
async fn a_responses_stream_answered_only_in_response_completed() {
    let setup = Setup::start().await;
    let events = [
        json!({"type": "response.created", "response": {"id": "resp_1", "model": "resp-m",
            "status": "in_progress", "output": []}}),
        json!({"type": "response.completed", "response": {"id": "resp_1", "model": "resp-m",
            "status": "completed", "output": [
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
                {"type": "message", "content": [{"type": "output_text", "text": "Final text"}]}],
            "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}}}),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.iter().map(named_event).collect()),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/responses",
            &json!({"model": "[mock]r", "input": "x", "stream": true}),
        )
        .await;
    let record = setup.router.records.nth(1).await;
    assert!(
        record.complete,
        "response.completed is the end of the stream"
    );
    assert!(record.first_token_at.is_some());
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": "Final text", "reasoning_content": "why"}))
    );
    assert_eq!(str_attr(&span, "gen_ai.response.id"), Some("resp_1"));
    assert!(str_attr(&span, "langfuse.observation.completion_start_time").is_some());
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!(row.tokens, (5, 3, 0, 0));
    assert!(row.ttft_ms.is_some() && !row.usage_partial, "{row:?}");
    assert_eq!(line["response"]["content"], "Final text");
    assert_eq!(line["response"]["reasoning"], "why");
}

/// A speech event.
fn speech_event(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// OpenAI's speech stream (`/audio/speech` with `stream_format: "sse"`, a request with no
/// `"stream"`): `speech.audio.delta` events with base64 audio, then `speech.audio.done` with
/// the usage, and no `[DONE]`. Relayed as it came; the record is complete at the done event,
/// with its usage, and its output is a note of the audio (decoded size, delta count), not the
/// base64, in the record, the span and the log line.
#[tokio::test]
async fn a_speech_event_stream_is_complete_at_its_done_event_with_its_usage() {
    let setup = Setup::start().await;
    // 4000 base64 characters are 3000 bytes of audio; "AAE=" 2 more.
    let big = "A".repeat(4000);
    let chunks = vec![
        speech_event(&json!({"type": "speech.audio.delta", "audio": big})),
        speech_event(&json!({"type": "speech.audio.delta", "audio": "AAE="})),
        speech_event(&json!({"type": "speech.audio.done",
            "usage": {"input_tokens": 7, "output_tokens": 120, "total_tokens": 127}})),
    ];
    setup.upstream.set(Behavior {
        stream_unasked: true,
        raw_chunks: Some(chunks.clone()),
        ..Default::default()
    });
    let (id, text) = setup
        .post(
            "/v1/audio/speech",
            &json!({"model": "[mock]gpt-4o-mini-tts", "voice": "alloy", "input": "hello",
                "stream_format": "sse"}),
        )
        .await;
    assert_eq!(text.as_bytes(), chunks.concat(), "relayed as it came");

    let note = "<speech audio, 3002 bytes in 2 deltas>";
    let record = setup.router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(
        record.stream && record.complete,
        "speech.audio.done ends it"
    );
    assert!(!record.usage_partial());
    assert!(record.first_token_at.is_some(), "the first audio");
    assert_eq!(record.response.content, note);
    let usage = record.response.usage.as_ref().expect("usage");
    assert_eq!((usage.input, usage.output, usage.total), (7, 120, 127));

    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        Some(json!({"role": "assistant", "content": note}))
    );
    assert_eq!(
        json_attr(&span, "langfuse.observation.usage_details"),
        Some(
            json!({"input": 7, "output": 120, "total": 127, "input_cached_tokens": 0,
            "output_reasoning_tokens": 0})
        )
    );
    assert_eq!(str_attr(&span, "langfuse.observation.level"), None);
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!(row.tokens, (7, 120, 0, 0));
    assert!(row.usage_known && !row.usage_partial, "{row:?}");
    assert_eq!(line["response"]["content"], note);
    assert!(!line.to_string().contains(&big), "no base64 in the log");
}

/// The same speech stream closed by the upstream before its done event: every byte reached
/// the client, but its usage never came: partial (tokens unknown), as any stream cut so.
#[tokio::test]
async fn a_speech_event_stream_closed_before_its_done_event_is_partial() {
    let setup = Setup::start().await;
    let chunks = vec![speech_event(
        &json!({"type": "speech.audio.delta", "audio": "AAAA"}),
    )];
    setup.upstream.set(Behavior {
        stream_unasked: true,
        raw_chunks: Some(chunks.clone()),
        ..Default::default()
    });
    let (id, text) = setup
        .post(
            "/v1/audio/speech",
            &json!({"model": "[mock]tts", "input": "hi", "stream_format": "sse"}),
        )
        .await;
    assert_eq!(text.as_bytes(), chunks.concat());
    let record = setup.router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(!record.complete);
    assert!(record.response.usage.is_none());
    assert!(record.usage_partial(), "cut before its usage");
    assert_eq!(
        record.response.content,
        "<speech audio, 3 bytes in 1 delta>"
    );
    setup.stop_and_check_partial(&id).await;
}

/// OpenAI's transcription stream (`/audio/transcriptions` with `stream: true`): the text
/// deltas are the output, and `transcript.text.done` (no `[DONE]`) ends it with the usage.
#[tokio::test]
async fn a_transcription_stream_is_read_from_its_own_events() {
    let setup = Setup::start().await;
    let chunks = vec![
        speech_event(&json!({"type": "transcript.text.delta", "delta": "Hello", "logprobs": []})),
        speech_event(&json!({"type": "transcript.text.delta", "delta": " world"})),
        speech_event(
            &json!({"type": "transcript.text.done", "text": "Hello world",
            "usage": {"type": "tokens", "input_tokens": 14,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                "output_tokens": 4, "total_tokens": 18}}),
        ),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(chunks),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/audio/transcriptions",
            &json!({"model": "[mock]gpt-4o-transcribe", "stream": true}),
        )
        .await;
    let record = setup.router.records.nth(1).await;
    assert!(record.complete && !record.usage_partial());
    assert!(record.first_token_at.is_some());
    assert_eq!(record.response.content, "Hello world");
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!(row.tokens, (14, 4, 0, 0));
    assert_eq!(line["response"]["content"], "Hello world");
}

/// OpenAI's image streams (`/images/generations` and `/images/edits` with `stream: true`
/// and `partial_images`): partial images, then the completed image with the usage, each as
/// base64. Relayed as they came; the output is the note a whole base64 answer gets, of the
/// completed image and its decoded size, in the record, the span and the log line, which
/// hold no base64; the usage reaches the ledger.
#[tokio::test]
async fn an_image_stream_is_a_note_of_its_completed_image_never_its_base64() {
    let setup = Setup::start().await;
    // 1,600,000 base64 characters are 1,200,000 bytes of image; a partial one 3,000.
    let image = "iVBORw0K".repeat(200_000);
    let partial = "AAAA".repeat(1000);
    let usage = json!({"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
        "input_tokens_details": {"text_tokens": 40, "image_tokens": 10}});
    let mut ids = Vec::new();
    for (nth, (path, prefix)) in [
        ("/v1/images/generations", "image_generation"),
        ("/v1/images/edits", "image_edit"),
    ]
    .into_iter()
    .enumerate()
    {
        let chunks = vec![
            speech_event(&json!({"type": format!("{prefix}.partial_image"),
                "b64_json": partial, "partial_image_index": 0, "size": "1024x1024"})),
            speech_event(&json!({"type": format!("{prefix}.partial_image"),
                "b64_json": partial, "partial_image_index": 1, "size": "1024x1024"})),
            speech_event(&json!({"type": format!("{prefix}.completed"),
                "b64_json": image, "size": "1024x1024", "output_format": "png",
                "usage": usage})),
        ];
        setup.upstream.set(Behavior {
            raw_chunks: Some(chunks.clone()),
            ..Default::default()
        });
        let (id, text) = setup
            .post(
                path,
                &json!({"model": "[mock]gpt-image-1", "prompt": "a cat", "stream": true,
                    "partial_images": 2}),
            )
            .await;
        assert!(text.as_bytes() == chunks.concat(), "relayed as it came");
        let note = "<1 image (b64_json, 1.2 MB)>";
        let record = setup.router.records.nth(nth + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{path}");
        assert_eq!(record.response.content, note, "{path}");
        // No `[DONE]` in these streams: the completed image ends them.
        assert!(record.complete, "{path}");
        assert!(record.first_token_at.is_some(), "{path}");
        let usage = record.response.usage.as_ref().expect("usage");
        assert_eq!((usage.input, usage.output, usage.total), (50, 4160, 4210));
        let span = setup.otlp.span_of(&id).await.span;
        assert_eq!(
            json_attr(&span, "langfuse.observation.output"),
            assistant(note),
            "{path}"
        );
        ids.push(id);
    }
    let rows = setup
        .stop_and_read_all(&[ids[0].as_str(), ids[1].as_str()])
        .await;
    for (row, line) in rows {
        assert_eq!((row.tokens, row.total_tokens), ((50, 4160, 0, 0), 4210));
        assert_eq!(line["response"]["content"], "<1 image (b64_json, 1.2 MB)>");
        assert!(line.to_string().len() < 10_000, "no base64 in the log");
    }
}

/// A binary answer is recorded as a note of what it was, not its bytes: relayed as it
/// arrives (speech audio to a request that did not ask to stream), `<audio/mpeg, N bytes>`;
/// read whole (a body with no Content-Type that is not text), `<binary, N bytes>`. The note
/// is the output in the record, the span and the log line alike; the usage is unknown (a
/// binary answer carries none), which is not partial. Each has a completion start in the span
/// as every successful answer has: the audio relayed as it arrives has its first bytes as its
/// first token (its `ttft_ms` in the log and the ledger, as a speech event stream's first
/// audio delta is); the body read whole, when it arrived (no `ttft_ms`, as any whole answer).
#[tokio::test]
async fn a_binary_answer_is_recorded_as_a_note_of_its_type_and_size() {
    let setup = Setup::start().await;
    let audio: Vec<u8> = (0u8..=255).cycle().take(5000).collect();
    let cases = [
        ("audio/mpeg", "<audio/mpeg, 5000 bytes>", true),
        ("", "<binary, 5000 bytes>", false),
    ];
    let mut ids = Vec::new();
    for (n, (content_type, note, stream)) in cases.into_iter().enumerate() {
        setup.upstream.set(Behavior {
            raw_body: Some(audio.clone()),
            content_type: content_type.into(),
            ..Default::default()
        });
        let response = client()
            .post(setup.router.url("/v1/audio/speech"))
            .json(&json!({"model": "[mock]tts-1", "voice": "alloy", "input": "hello"}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
        assert_eq!(response.bytes().await.expect("body"), audio);
        let record = setup.router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{note}");
        assert_eq!(record.stream, stream, "{note}");
        assert!(record.complete, "{note}");
        assert_eq!(record.response.content, note);
        assert!(
            record.response_body.is_none(),
            "{note}: the bytes are not kept"
        );
        assert!(record.response.usage.is_none() && !record.usage_partial());
        let span = setup.otlp.span_of(&ids[n]).await.span;
        assert_eq!(
            json_attr(&span, "langfuse.observation.output"),
            Some(json!({"role": "assistant", "content": note}))
        );
        assert_eq!(record.first_token_at.is_some(), stream, "{note}");
        let started = record.completion_start().expect("a completion start");
        assert!(
            record
                .response_started_at
                .is_some_and(|head| head <= started),
            "{note}"
        );
        assert_eq!(
            str_attr(&span, "langfuse.observation.completion_start_time"),
            Some(llmsrouter::sinks::clock::rfc3339_micros(started).as_str()),
            "{note}"
        );
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = setup.stop_and_read_all(&ids).await;
    for ((row, line), (_, note, stream)) in rows.iter().zip(cases) {
        assert_eq!(line["response"]["content"], note, "{line}");
        assert_eq!(line["usage"], Value::Null);
        assert_eq!(line["ttft_ms"].is_u64(), stream, "{line}");
        assert_eq!(row.ttft_ms.is_some(), stream, "{row:?}");
    }
}

/// Anthropic counts cache writes outside `input_tokens`, also when the answer reads nothing
/// from the cache (a first request that writes it) or says so with `null`: input is all of
/// them, and Langfuse's `input` is the uncached part. Before, without a cache read count the
/// writes were left out of input, and Langfuse's input was 0.
#[tokio::test]
async fn anthropic_cache_writes_count_as_input_without_cache_reads() {
    let setup = Setup::start().await;
    let mut ids = Vec::new();
    for reads in [None, Some(Value::Null)] {
        let mut usage =
            json!({"input_tokens": 10, "cache_creation_input_tokens": 500, "output_tokens": 5});
        if let Some(reads) = reads {
            usage["cache_read_input_tokens"] = reads;
        }
        let body = json!({"id": "msg_c", "type": "message", "role": "assistant",
            "model": "claude-r", "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn", "usage": usage});
        setup.upstream.set(Behavior {
            body: Some(body.to_string()),
            ..Default::default()
        });
        let (id, _) = setup
            .post(
                "/v1/messages",
                &json!({"model": "[mock]claude-c", "max_tokens": 10, "messages": []}),
            )
            .await;
        ids.push(id);
    }
    for (n, id) in ids.iter().enumerate() {
        let record = setup.router.records.nth(n + 1).await;
        let usage = record.response.usage.as_ref().expect("usage");
        assert_eq!(
            (
                usage.input,
                usage.output,
                usage.total,
                usage.cache_creation_input
            ),
            (510, 5, 515, 500),
            "{id}"
        );
        let span = setup.otlp.span_of(id).await.span;
        let details = json_attr(&span, "langfuse.observation.usage_details").expect("usage");
        assert_eq!(
            (&details["input"], &details["input_cache_creation"]),
            (&json!(10), &json!(500)),
            "{details}"
        );
    }
    let row = setup.stop_and_read_ledger(&ids[1]).await;
    assert_eq!(row.tokens, (510, 5, 0, 500));
}

/// An answer or stream event with the escape of a lone UTF-16 surrogate (`\ud800`: an
/// upstream cut an emoji's pair apart) keeps its text (U+FFFD in that place), tool calls and
/// usage in every sink, and the usage chunk the router asked for is still taken out of the
/// stream of a client that did not ask for it. Before, serde_json's refusal of the escape
/// lost the whole answer or event: its text, its usage, and the usage chunk reached the
/// client.
#[tokio::test]
async fn a_lone_surrogate_does_not_cost_an_answer_its_record() {
    let usage = r#""usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}"#;
    let whole = Setup::start().await;
    let answer = format!(
        r#"{{"id":"c1","model":"gpt-r","choices":[{{"index":0,"message":{{"role":"assistant","content":"bad \ud800 char","tool_calls":[{{"id":"t1","type":"function","function":{{"name":"look","arguments":"{{}}"}}}}]}},"finish_reason":"tool_calls"}}],{usage}}}"#
    );
    whole.upstream.set(Behavior {
        body: Some(answer.clone()),
        ..Default::default()
    });
    let (whole_id, text) = whole
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]gpt-4o", "messages": []}),
        )
        .await;
    assert_eq!(text, answer, "the client gets the answer as it came");
    let record = whole.router.records.nth(1).await;
    assert_eq!(record.response.content, "bad \u{FFFD} char");
    let usage_read = record.response.usage.as_ref().expect("usage");
    assert_eq!((usage_read.input, usage_read.output), (7, 3));
    let span = whole.otlp.span_of(&whole_id).await.span;
    let output = json_attr(&span, "langfuse.observation.output").expect("output");
    assert_eq!(output["content"], "bad \u{FFFD} char", "{output}");
    assert_eq!(
        output["tool_calls"][0]["function"]["name"], "look",
        "{output}"
    );
    let (_, line) = whole.stop_and_read(&whole_id).await;
    assert_eq!(
        line["response"]["choices"][0]["message"]["content"], "bad \u{FFFD} char",
        "the log's copy is repaired too: {line}"
    );

    let streamed = Setup::start().await;
    let content = r#"data: {"id":"c2","model":"gpt-r","choices":[{"index":0,"delta":{"content":"bad \udfff char"},"finish_reason":"stop"}]}"#;
    let usage_only = format!(r#"data: {{"id":"c2\ud800","model":"gpt-r","choices":[],{usage}}}"#);
    streamed.upstream.set(Behavior {
        raw_chunks: Some(vec![
            format!("{content}\n\n").into_bytes(),
            format!("{usage_only}\n\n").into_bytes(),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let (stream_id, text) = streamed
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]gpt-4o", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(text, format!("{content}\n\ndata: [DONE]\n\n"));
    let record = streamed.router.records.nth(1).await;
    assert_eq!(record.response.content, "bad \u{FFFD} char");
    let (row, line) = streamed.stop_and_read(&stream_id).await;
    assert!(row.usage_known, "{row:?}");
    assert_eq!(row.tokens.0, 7, "{row:?}");
    assert_eq!(line["usage"]["total"], 10, "{line}");
}

/// A JSON answer that a byte-order mark precedes, or with one byte that is not UTF-8 (an
/// upstream's Latin-1 `é`), reaches the client as it came and keeps its usage, model and
/// text in the records (U+FFFD in the bad byte's place); so does a stream event with such a
/// byte. Before, the whole answer was recorded as bytes that are not text, without usage,
/// and the event's text was dropped.
#[tokio::test]
async fn a_stray_byte_or_mark_does_not_cost_an_answer_its_record() {
    let setup = Setup::start().await;
    let answer = |content: &[u8]| {
        let mut body = br#"{"id":"c1","model":"gpt-r","choices":[{"index":0,"message":{"role":"assistant","content":""#.to_vec();
        body.extend_from_slice(content);
        body.extend_from_slice(br#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#);
        body
    };
    let mut marked = b"\xEF\xBB\xBF".to_vec();
    marked.extend(answer(b"caf\xC3\xA9"));
    let mut ids = Vec::new();
    for body in [answer(b"caf\xE9"), marked] {
        setup.upstream.set(Behavior {
            raw_body: Some(body.clone()),
            ..Default::default()
        });
        let response = client()
            .post(setup.router.url("/v1/chat/completions"))
            .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
        assert_eq!(&response.bytes().await.expect("body")[..], &body[..]);
    }
    let event = |data: &[u8]| [b"data: ".as_slice(), data, b"\n\n"].concat();
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            event(
                &[
                    br#"{"id":"c2","model":"gpt-r","choices":[{"index":0,"delta":{"content":"caf"#
                        .as_slice(),
                    b"\xE9\"}}]}",
                ]
                .concat(),
            ),
            event(br#"{"id":"c2","model":"gpt-r","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#),
            event(b"[DONE]"),
        ]),
        ..Default::default()
    });
    let (stream_id, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]gpt-4o", "stream": true, "messages": []}),
        )
        .await;
    for (n, content) in [(1, "caf\u{FFFD}"), (2, "café"), (3, "caf\u{FFFD}")] {
        let record = setup.router.records.nth(n).await;
        assert_eq!(record.response.content, content, "record {n}");
        assert_eq!(
            record.response.model.as_deref(),
            Some("gpt-r"),
            "record {n}"
        );
        let usage = record.response.usage.as_ref().expect("usage");
        assert_eq!((usage.input, usage.output), (7, 3), "record {n}");
    }
    let span = setup.otlp.span_of(&ids[0]).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output").expect("output")["content"],
        "caf\u{FFFD}"
    );
    let (row, line) = setup.stop_and_read(&ids[0]).await;
    assert!(row.usage_known, "{row:?}");
    assert_eq!(line["response"]["usage"]["total_tokens"], 10, "{line}");
    assert_eq!(
        line["response"]["choices"][0]["message"]["content"],
        "caf\u{FFFD}"
    );
    assert!(!stream_id.is_empty());
}

/// A raw control character in a string (a tab or `\x01` sent unescaped, which strict JSON
/// forbids) costs neither a whole answer nor a stream event its record: the text keeps the
/// character, the usage and first token are read, the log line is JSON; the client gets the
/// bytes as they came. Before, the event was left out (no text, no first token) and the
/// answer recorded without usage.
#[tokio::test]
async fn a_raw_control_character_does_not_cost_an_answer_its_record() {
    let setup = Setup::start().await;
    let body = b"{\"id\":\"c1\",\"model\":\"gpt-r\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"a \x01 b\ttab\"},\"finish_reason\":\"stop\"}],\n\t\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}".to_vec();
    setup.upstream.set(Behavior {
        raw_body: Some(body.clone()),
        ..Default::default()
    });
    let request = json!({"model": "[mock]gpt-4o", "messages": []});
    let (whole_id, _, _) = setup
        .whole_answer(1, "/v1/chat/completions", &request, &body)
        .await;
    let events = vec![
        b"data: {\"id\":\"c2\",\"model\":\"gpt-r\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a \x01 b\ttab\"}}]}\n\n".to_vec(),
        br#"data: {"id":"c2","model":"gpt-r","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#.to_vec(),
        b"\n\ndata: [DONE]\n\n".to_vec(),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.clone()),
        ..Default::default()
    });
    let request = json!({"model": "[mock]gpt-4o", "stream": true, "messages": [],
        "stream_options": {"include_usage": true}});
    let (stream_id, streamed) = setup.post("/v1/chat/completions", &request).await;
    assert_eq!(streamed.as_bytes(), events.concat(), "relayed as it came");
    for n in [1, 2] {
        let record = setup.router.records.nth(n).await;
        assert_eq!(record.response.content, "a \u{1} b\ttab", "record {n}");
        let usage = record.response.usage.as_ref().expect("usage");
        assert_eq!((usage.input, usage.output), (7, 3), "record {n}");
        if n == 2 {
            assert!(
                record.first_token_at.is_some(),
                "the event's text is its first token"
            );
        }
    }
    let (row, line) = setup.stop_and_read(&whole_id).await;
    assert!(row.usage_known, "{row:?}");
    assert_eq!(
        line["response"]["choices"][0]["message"]["content"], "a \u{1} b\ttab",
        "{line}"
    );
    assert!(!stream_id.is_empty());
}

/// The output Langfuse shows for an answer whose record content is `content`.
fn assistant(content: &str) -> Option<Value> {
    Some(json!({"role": "assistant", "content": content}))
}

/// Embeddings: the output is a note of how many vectors and how long, in the record, the
/// span and the log line, which hold none of the vectors (the client gets them all); the
/// usage is `prompt_tokens` / `total_tokens`.
#[tokio::test]
async fn embeddings_are_a_note_in_every_sink_never_their_vectors() {
    let setup = Setup::start().await;
    let vector: Vec<f64> = (0..1536).map(|i| f64::from(i) * 0.000_123_457).collect();
    let data: Vec<Value> = (0..3)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": vector}))
        .collect();
    let answer = json!({"object": "list", "model": "text-embedding-3-small", "data": data,
        "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let request = json!({"model": "[mock]text-embedding-3-small", "input": ["a", "b", "c"]});
    let (id, record, output) = setup
        .whole_answer(1, "/v1/embeddings", &request, answer.as_bytes())
        .await;
    let note = "<3 embeddings, 1536 dimensions>";
    assert_eq!(record.response.content, note);
    assert!(record.response_body.is_none(), "the vectors are not kept");
    assert_eq!(output, assistant(note));
    assert_eq!(
        setup.usage_details(&id).await,
        Some(
            json!({"input": 8, "output": 0, "total": 8, "input_cached_tokens": 0,
            "output_reasoning_tokens": 0})
        )
    );
    let (row, line) = setup.stop_and_read(&id).await;
    assert_eq!((row.tokens, row.total_tokens), ((8, 0, 0, 0), 8));
    assert!(row.usage_known, "{row:?}");
    assert_eq!(
        row.response_model.as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(line["response"]["content"], note);
    assert!(
        !line.to_string().contains("0.000123457"),
        "no vector in the log"
    );
}

/// Images: base64 ones are a note of their count and decoded size, never the base64 (in
/// the record, the span, the log line), with each revised prompt; URL ones keep their URLs
/// in the output and their (small) body in the log. gpt-image-1's usage reaches the ledger.
#[tokio::test]
async fn images_are_a_note_with_urls_and_revised_prompts_never_their_base64() {
    let setup = Setup::start().await;
    // 1,600,000 base64 characters are 1,200,000 bytes of image.
    let b64 = "iVBORw0K".repeat(200_000);
    let answer = json!({"created": 1_713_833_628, "data": [
            {"b64_json": b64, "revised_prompt": "a red cat on a mat"}],
        "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
            "input_tokens_details": {"text_tokens": 40, "image_tokens": 10}}})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let request = json!({"model": "[mock]gpt-image-1", "prompt": "a cat"});
    let (b64_id, record, output) = setup
        .whole_answer(1, "/v1/images/generations", &request, answer.as_bytes())
        .await;
    let b64_note = "<1 image (b64_json, 1.2 MB)>\nimage 1 revised prompt: a red cat on a mat";
    assert_eq!(record.response.content, b64_note);
    assert!(record.response_body.is_none(), "the base64 is not kept");
    assert_eq!(output, assistant(b64_note));

    let urls = json!({"created": 1, "data": [
        {"url": "https://img.example/1.png?sig=abc", "revised_prompt": "a cat"},
        {"url": "https://img.example/2.png?sig=def"}]})
    .to_string();
    setup.answer_with(urls.as_bytes(), "application/json");
    let request = json!({"model": "[mock]dall-e-3", "prompt": "a cat", "n": 2});
    let (url_id, record, output) = setup
        .whole_answer(2, "/v1/images/generations", &request, urls.as_bytes())
        .await;
    let note = "<2 images (url)>\nimage 1: https://img.example/1.png?sig=abc\n\
        image 1 revised prompt: a cat\nimage 2: https://img.example/2.png?sig=def";
    assert_eq!(record.response.content, note);
    assert_eq!(output, assistant(note));
    assert!(record.response.usage.is_none(), "dall-e-3 reports none");

    let rows = setup.stop_and_read_all(&[&b64_id, &url_id]).await;
    let (row, line) = &rows[0];
    assert_eq!((row.tokens, row.total_tokens), ((50, 4160, 0, 0), 4210));
    assert_eq!(line["response"]["content"], b64_note);
    assert!(line.to_string().len() < 10_000, "no base64 in the log");
    let (row, line) = &rows[1];
    assert!(!row.usage_known, "{row:?}");
    assert_eq!(
        line["response"],
        serde_json::from_str::<Value>(&urls).expect("JSON"),
        "a URL answer's body is logged as it came"
    );
}

/// A transcription (or translation) answered as JSON: its text is the output; usage in
/// tokens (`gpt-4o-transcribe`) or in seconds (`whisper-1`, `verbose_json`) is read: the
/// seconds reach the span's usage and the log line, and the ledger counts no tokens but
/// knows the usage.
#[tokio::test]
async fn a_transcription_answer_is_its_text_with_its_usage() {
    let setup = Setup::start().await;
    let tokens = json!({"text": "Hello world", "usage": {"type": "tokens", "input_tokens": 14,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
        "output_tokens": 4, "total_tokens": 18}})
    .to_string();
    setup.answer_with(tokens.as_bytes(), "application/json");
    let request = json!({"model": "[mock]gpt-4o-transcribe"});
    let (tokens_id, record, output) = setup
        .whole_answer(1, "/v1/audio/transcriptions", &request, tokens.as_bytes())
        .await;
    assert_eq!(record.response.content, "Hello world");
    assert_eq!(output, assistant("Hello world"));
    assert_eq!(
        setup.usage_details(&tokens_id).await,
        Some(
            json!({"input": 14, "output": 4, "total": 18, "input_cached_tokens": 0,
            "output_reasoning_tokens": 0})
        )
    );

    let verbose = json!({"task": "translate", "language": "english", "duration": 8.47,
        "text": "The beach was a popular spot.",
        "segments": [{"id": 0, "start": 0.0, "end": 3.3, "text": "The beach was a popular spot."}],
        "usage": {"type": "duration", "seconds": 9}})
    .to_string();
    setup.answer_with(verbose.as_bytes(), "application/json");
    let request = json!({"model": "[mock]whisper-1", "response_format": "verbose_json"});
    let (seconds_id, record, output) = setup
        .whole_answer(2, "/v1/audio/translations", &request, verbose.as_bytes())
        .await;
    assert_eq!(output, assistant("The beach was a popular spot."));
    assert_eq!(
        record.response.usage.as_ref().and_then(|u| u.audio_seconds),
        Some(9.0)
    );
    assert_eq!(
        setup.usage_details(&seconds_id).await,
        Some(
            json!({"input": 0, "output": 0, "total": 0, "input_cached_tokens": 0,
            "output_reasoning_tokens": 0, "audio_seconds": 9, "audio_milliseconds": 9000})
        )
    );

    // Seconds with a fraction keep it: in Langfuse, whose usage counts must be whole, as
    // whole seconds rounded up and as milliseconds.
    let fraction = json!({"text": "f", "usage": {"type": "duration", "seconds": 9.7}}).to_string();
    setup.answer_with(fraction.as_bytes(), "application/json");
    let request = json!({"model": "[mock]whisper-1"});
    let (fraction_id, record, _) = setup
        .whole_answer(3, "/v1/audio/transcriptions", &request, fraction.as_bytes())
        .await;
    assert_eq!(
        record.response.usage.as_ref().and_then(|u| u.audio_seconds),
        Some(9.7)
    );
    assert_eq!(
        setup.usage_details(&fraction_id).await,
        Some(
            json!({"input": 0, "output": 0, "total": 0, "input_cached_tokens": 0,
            "output_reasoning_tokens": 0, "audio_seconds": 10, "audio_milliseconds": 9700})
        )
    );

    let rows = setup
        .stop_and_read_all(&[&tokens_id, &seconds_id, &fraction_id])
        .await;
    assert_eq!(rows[2].1["usage"]["audio_seconds"], 9.7, "{}", rows[2].1);
    assert_eq!(
        (rows[0].0.tokens, rows[0].0.total_tokens),
        ((14, 4, 0, 0), 18)
    );
    assert_eq!(
        rows[0].1["response"]["text"], "Hello world",
        "the body as it came"
    );
    assert!(rows[1].0.usage_known, "{:?}", rows[1].0);
    assert_eq!(
        (rows[1].0.tokens, rows[1].0.total_tokens),
        ((0, 0, 0, 0), 0)
    );
    assert_eq!(rows[1].1["usage"]["audio_seconds"], 9);
    assert_eq!(rows[1].1["response"]["duration"], 8.47);
}

/// A usage with a count that is not one (beyond 10^12: `2^63 - 1`, `1e30`; negative) is
/// unknown in every sink, as a usage with no count is: the log's `usage` is null, the span has
/// no usage details, the ledger's `usage_known` is false with its token columns 0 (so a sum
/// over the ledger neither overflows nor is rounded). Not kept in part: `prompt_tokens: -5`
/// next to `total_tokens: 5` does not become an input of 0. A count at the bound is kept.
#[tokio::test]
async fn a_usage_with_a_count_that_is_not_one_is_unknown_in_every_sink() {
    let setup = Setup::start().await;
    let body = |usage: &str| {
        format!(
            r#"{{"id":"x","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
        )
    };
    let absurd = [
        r#"{"prompt_tokens":9223372036854775807,"completion_tokens":1,"total_tokens":9223372036854775808}"#,
        r#"{"prompt_tokens":-5,"completion_tokens":10,"total_tokens":5}"#,
        r#"{"prompt_tokens":99999999999999999999999,"completion_tokens":1,"total_tokens":1e30}"#,
        r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":18446744073709551615}}"#,
        r#"{"input_tokens":1000000000001,"output_tokens":1}"#,
    ];
    let mut ids = Vec::new();
    for (n, usage) in absurd.iter().enumerate() {
        let answer = body(usage);
        setup.answer_with(answer.as_bytes(), "application/json");
        let (id, record, _) = setup
            .whole_answer(
                n + 1,
                "/v1/chat/completions",
                &json!({"model": "[mock]m"}),
                answer.as_bytes(),
            )
            .await;
        assert_eq!(record.response.usage, None, "{usage}");
        assert_eq!(setup.usage_details(&id).await, None, "{usage}");
        ids.push(id);
    }
    // The same in a stream's usage chunk.
    let chunk = json!({"id": "c", "choices": [],
        "usage": {"prompt_tokens": 9_223_372_036_854_775_807_u64, "completion_tokens": 1}});
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            format!("data: {chunk}\n\n").into_bytes(),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let (stream_id, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(setup.usage_details(&stream_id).await, None);
    ids.push(stream_id);
    // A count at the bound is one.
    let answer = body(r#"{"prompt_tokens":1000000000000,"completion_tokens":0}"#);
    setup.answer_with(answer.as_bytes(), "application/json");
    let (at_bound, record, _) = setup
        .whole_answer(
            absurd.len() + 2,
            "/v1/chat/completions",
            &json!({"model": "[mock]m"}),
            answer.as_bytes(),
        )
        .await;
    let usage = record.response.usage.as_ref().expect("usage");
    assert_eq!(
        (usage.input, usage.total),
        (1_000_000_000_000, 1_000_000_000_000)
    );
    ids.push(at_bound);

    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = setup.stop_and_read_all(&ids).await;
    let (last, unknown) = rows.split_last().expect("rows");
    for (row, line) in unknown {
        assert!(!row.usage_known && !row.usage_partial, "{row:?}");
        assert_eq!((row.tokens, row.total_tokens), ((0, 0, 0, 0), 0), "{row:?}");
        assert_eq!(line["usage"], Value::Null, "{line}");
        assert_eq!(line["usage_partial"], false, "{line}");
    }
    assert!(last.0.usage_known);
    assert_eq!(last.0.tokens.0, 1_000_000_000_000);
    assert_eq!(last.1["usage"]["input"], 1_000_000_000_000_u64);
}

/// An empty transcription (silence: `{"text": ""}`, or a stream whose
/// `transcript.text.done` has an empty text) has an empty output in Langfuse, not none, as
/// the log line shows it: the text is the answer, empty or not.
#[tokio::test]
async fn an_empty_transcription_is_an_empty_output_not_none() {
    let setup = Setup::start().await;
    let empty = json!({"text": "", "usage": {"type": "duration", "seconds": 2}}).to_string();
    setup.answer_with(empty.as_bytes(), "application/json");
    let request = json!({"model": "[mock]whisper-1"});
    let (whole, record, output) = setup
        .whole_answer(1, "/v1/audio/transcriptions", &request, empty.as_bytes())
        .await;
    assert_eq!(record.response.content, "");
    assert_eq!(output, assistant(""), "the empty text is the output");

    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![speech_event(&json!({"type": "transcript.text.done",
            "text": "", "usage": {"type": "tokens", "input_tokens": 3, "output_tokens": 0,
                "total_tokens": 3}}))]),
        ..Default::default()
    });
    let (streamed, _) = setup
        .post(
            "/v1/audio/transcriptions",
            &json!({"model": "[mock]gpt-4o-transcribe", "stream": true}),
        )
        .await;
    let span = setup.otlp.span_of(&streamed).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        assistant("")
    );

    let rows = setup
        .stop_and_read_all(&[whole.as_str(), streamed.as_str()])
        .await;
    assert_eq!(rows[0].1["response"]["text"], "", "the body as it came");
    assert_eq!(rows[1].1["response"]["content"], "");
}

/// A transcription answered as text (`response_format` `text`, `srt`, `vtt`): the log line
/// keeps it as it came, and the span's output is it as the assistant's content, cut to the
/// trace's cap like any output.
#[tokio::test]
async fn a_text_transcription_is_the_output_cut_to_the_trace_cap() {
    let cap = 4096;
    let setup = Setup::start_with(|options| options.max_io_bytes = cap).await;
    let srt = "1\n00:00:00,000 --> 00:00:01,000\nhello wörld\n";
    setup.answer_with(srt.as_bytes(), "text/plain; charset=utf-8");
    let request = json!({"model": "[mock]whisper-1", "response_format": "srt"});
    let (srt_id, record, output) = setup
        .whole_answer(1, "/v1/audio/transcriptions", &request, srt.as_bytes())
        .await;
    assert_eq!(record.response_body.as_deref(), Some(srt.as_bytes()));
    assert_eq!(output, assistant(srt));

    // Longer than the cap, with a two-byte character across it: cut, marked, never split.
    let long = "ö".repeat(cap);
    setup.answer_with(long.as_bytes(), "text/plain");
    let (long_id, _, _) = setup
        .whole_answer(2, "/v1/audio/transcriptions", &request, long.as_bytes())
        .await;
    let span = setup.otlp.span_of(&long_id).await.span;
    let output = str_attr(&span, "langfuse.observation.output").expect("output");
    let input = str_attr(&span, "langfuse.observation.input").map_or(0, str::len);
    assert!(output.len() + input <= cap, "{} + {input}", output.len());
    assert!(
        output.starts_with(r#"{"role":"assistant","content":"ööö"#),
        "{output}"
    );
    assert!(
        output.ends_with(llmsrouter::sinks::generation::TRUNCATION_MARKER),
        "{output}"
    );

    let rows = setup.stop_and_read_all(&[&srt_id, &long_id]).await;
    assert_eq!(rows[0].1["response"], srt);
    assert!(!rows[0].0.usage_known && !rows[0].0.usage_partial);
    assert_eq!(rows[1].1["response"], long.as_str());
}

/// Moderations: the output says whether each input was flagged and for which categories,
/// never the scores.
#[tokio::test]
async fn a_moderation_is_a_note_of_what_was_flagged() {
    let setup = Setup::start().await;
    let answer = json!({"id": "modr-1", "model": "omni-moderation-latest", "results": [
        {"flagged": true, "categories": {"violence": true, "harassment": false,
            "harassment/threatening": true},
         "category_scores": {"violence": 0.91, "harassment": 0.2,
            "harassment/threatening": 0.7},
         "category_applied_input_types": {"violence": ["text"]}}]})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let request = json!({"model": "[mock]omni-moderation-latest", "input": "..."});
    let (id, record, output) = setup
        .whole_answer(1, "/v1/moderations", &request, answer.as_bytes())
        .await;
    let note = "<moderation: flagged (harassment/threatening, violence)>";
    assert_eq!(record.response.content, note);
    assert_eq!(output, assistant(note));
    let (row, line) = setup.stop_and_read(&id).await;
    assert!(!row.usage_known, "a moderation reports no usage");
    assert_eq!(line["response"]["results"][0]["flagged"], true, "the body");
}

/// A 2xx JSON answer of no known shape: the output is a note of its top-level keys, never
/// their values (an answer may hold a secret of its own: a realtime session's client
/// secret); the log line keeps the body, as for any JSON answer.
#[tokio::test]
async fn an_unknown_json_answer_is_a_note_of_its_keys() {
    let setup = Setup::start().await;
    let answer = br#"{"id":"sess_1","object":"realtime.session","model":"gpt-realtime","client_secret":{"value":"ek_68af296e8e408191a1120ab6383263c2","expires_at":1756310470}}"#;
    setup.answer_with(answer, "application/json");
    let request = json!({"model": "[mock]gpt-realtime"});
    let (id, record, output) = setup
        .whole_answer(1, "/v1/realtime/sessions", &request, answer)
        .await;
    let note = "<JSON answer with keys: id, object, model, client_secret>";
    assert_eq!(record.response.content, note);
    assert_eq!(output, assistant(note));
    let span = setup.otlp.span_of(&id).await;
    assert!(!super::mock_otlp::all_text(&span).contains("ek_68af"));
    let (_, line) = setup.stop_and_read(&id).await;
    assert_eq!(line["response"]["object"], "realtime.session");
}

/// A text answer the upstream compressed (gzip) is recorded decoded, as a compressed JSON
/// answer is: the request log and Langfuse show its text. Before, the record kept the
/// compressed bytes, shown as `<binary, N bytes>` with no output.
#[tokio::test]
async fn a_compressed_text_answer_is_recorded_as_its_text() {
    let setup = Setup::start().await;
    let srt = "1\n00:00:00,000 --> 00:00:01,000\nhello\n";
    setup.upstream.set(Behavior {
        raw_body: Some(crate::support::upstream::gzip(srt.as_bytes())),
        content_type: "text/plain; charset=utf-8".into(),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/audio/transcriptions",
            &json!({"model": "[mock]whisper-1", "response_format": "srt"}),
        )
        .await;
    let record = setup.router.records.nth(1).await;
    assert_eq!(record.response_body.as_deref(), Some(srt.as_bytes()));
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        json_attr(&span, "langfuse.observation.output"),
        assistant(srt)
    );
    let (_, line) = setup.stop_and_read(&id).await;
    assert_eq!(line["response"], srt);
}

/// A key of this router's form in a prompt (one user pasting another's) is in no sink,
/// though the redactor was never told of it; the upstream gets the prompt as it was sent.
#[tokio::test]
async fn any_router_key_in_a_prompt_is_redacted_in_every_sink() {
    let setup = Setup::start().await;
    let key = "sk-lr-Zy9876543210abcdefghijKLMNOPQRst";
    let (id, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]gpt-4o",
                "messages": [{"role": "user", "content": format!("bob's key is {key}")}]}),
        )
        .await;
    let sent = setup.upstream.last().json();
    assert_eq!(
        sent["messages"][0]["content"],
        format!("bob's key is {key}")
    );
    let span = setup.otlp.span_of(&id).await.span;
    let input = str_attr(&span, "langfuse.observation.input").expect("input");
    assert!(
        !input.contains(key) && input.contains("[redacted]"),
        "{input}"
    );
    let (_, line) = setup.stop_and_read(&id).await;
    let line = line.to_string();
    assert!(!line.contains(key) && line.contains("[redacted]"), "{line}");
}

/// A Responses API stream that never reaches `response.completed` (closed after a delta, or
/// ended by an `error` event) still names the model that answered, from
/// `response.created`'s `response`, as a chat stream does from its first chunk: in the
/// record, the span's model and the ledger.
#[tokio::test]
async fn a_responses_stream_cut_before_its_end_names_its_model() {
    let setup = Setup::start().await;
    let created = json!({"type": "response.created", "response": {"id": "resp_c",
        "model": "resp-cut-2025", "status": "in_progress", "output": []}});
    let delta = json!({"type": "response.output_text.delta", "delta": "Hal"});
    let error = json!({"type": "error", "code": "server_error", "message": "boom"});
    let mut ids = Vec::new();
    for last in [None, Some(&error)] {
        let events: Vec<&Value> = [&created, &delta].into_iter().chain(last).collect();
        setup.upstream.set(Behavior {
            raw_chunks: Some(events.into_iter().map(named_event).collect()),
            ..Default::default()
        });
        let (id, _) = setup
            .post(
                "/v1/responses",
                &json!({"model": "[mock]resp-cut", "input": "x", "stream": true}),
            )
            .await;
        let span = setup.otlp.span_of(&id).await.span;
        assert_eq!(
            str_attr(&span, "langfuse.observation.model.name"),
            Some("resp-cut-2025"),
            "not the requested name"
        );
        assert_eq!(
            str_attr(&span, "gen_ai.response.model"),
            Some("resp-cut-2025")
        );
        assert_eq!(str_attr(&span, "gen_ai.response.id"), Some("resp_c"));
        ids.push(id);
    }
    let cut = setup.router.records.nth(1).await;
    assert!(!cut.complete && cut.usage_partial());
    let errored = setup.router.records.nth(2).await;
    assert_eq!(errored.outcome, Outcome::UpstreamError);
    let rows = setup
        .stop_and_read_all(&[ids[0].as_str(), ids[1].as_str()])
        .await;
    for (row, line) in rows {
        assert_eq!(row.response_model.as_deref(), Some("resp-cut-2025"));
        assert_eq!(line["response_model"], "resp-cut-2025");
    }
}

/// A tool-call answer without text (`content: null`, as OpenAI sends it) has a null content
/// in the span's output, whole and streamed, not an empty string; so has the request log's
/// line of the stream (the whole answer's is its body, with the upstream's `null`). An answer
/// with text and a refusal keep theirs. A stream whose pieces repeat the call's name records
/// the name once.
#[tokio::test]
async fn a_tool_call_answer_has_a_null_content() {
    let setup = Setup::start().await;
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}});
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [call]}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (whole, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "messages": []}),
        )
        .await;
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "s", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
        .into_bytes()
    };
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            // Fireworks (and others) repeat the id, type and name in every piece: one name.
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "\"Oslo\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let (streamed, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "stream": true, "messages": []}),
        )
        .await;
    let expected = json!({"role": "assistant", "content": null, "tool_calls": [call]});
    setup
        .assert_outputs(&[whole.as_str(), streamed.as_str()], &expected)
        .await;
    let rows = setup
        .stop_and_read_all(&[whole.as_str(), streamed.as_str()])
        .await;
    assert_eq!(
        rows[0].1["response"]["choices"][0]["message"]["content"],
        Value::Null
    );
    let logged = &rows[1].1["response"];
    assert_eq!(logged["content"], Value::Null, "{logged}");
    assert!(
        logged.get("content").is_some(),
        "null, not left out: {logged}"
    );
    assert_eq!(
        logged["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
}

/// One chat stream chunk with choice 0's `delta` and `finish_reason`.
fn chat_chunk(delta: Value, finish: Value) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        json!({"id": "s", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
    .into_bytes()
}

/// Mistral's thinking models send `content` as a list of parts: `thinking` parts (whose
/// `thinking` is a list of text parts) are the reasoning, `text` parts the content, in a
/// stream (beside string deltas) as in a whole answer; a stream's first token is its first
/// part with text, here a `thinking` one.
#[tokio::test]
async fn content_parts_are_read_as_text_and_thinking() {
    let setup = Setup::start().await;
    let thinking = chat_chunk(
        json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Let me reason."}]}]}),
        Value::Null,
    );
    let chunks = vec![
        chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        thinking,
        chat_chunk(json!({"content": "The answer"}), Value::Null),
        chat_chunk(
            json!({"content": [{"type": "text", "text": " is 4."}]}),
            Value::Null,
        ),
        chat_chunk(json!({}), json!("stop")),
        b"data: [DONE]\n\n".to_vec(),
    ];
    // The string delta after the thinking part waits until the client has the part.
    let (streamed, released) = setup
        .held_stream(&json!({"model": "[mock]m", "messages": []}), &chunks, 2)
        .await;
    let record = setup.router.records.nth(1).await;
    let first = record.first_token_at.expect("a first token");
    assert!(first <= released, "the thinking part is the first token");

    let answer =
        json!({"id": "w", "model": "magistral", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "tool_calls": null, "content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "Let me reason."}]},
            {"type": "text", "text": "The answer is 4."}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}})
        .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let (whole, _, _) = setup
        .whole_answer(
            2,
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "messages": []}),
            answer.as_bytes(),
        )
        .await;
    let expected = json!({"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Let me reason."});
    setup
        .assert_outputs(&[streamed.as_str(), whole.as_str()], &expected)
        .await;
    let (row, line) = setup.stop_and_read(&streamed).await;
    assert!(row.ttft_ms.is_some(), "{row:?}");
    assert_eq!(line["response"]["content"], "The answer is 4.");
    assert_eq!(line["response"]["reasoning"], "Let me reason.");
}

/// The legacy functions API's call (`message.function_call`, a stream's
/// `delta.function_call` pieces) is recorded as a tool call, as `tool_calls` are: one call of
/// that name and those arguments, with no id; a stream's first piece is its first token.
#[tokio::test]
async fn a_legacy_function_call_is_recorded_as_a_tool_call() {
    let setup = Setup::start().await;
    let answer = json!({"id": "f", "model": "gpt-3.5-turbo-0613", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null,
            "function_call": {"name": "get_w", "arguments": "{\"c\":1}"}},
        "finish_reason": "function_call"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let request = json!({"model": "[mock]m", "messages": [],
        "functions": [{"name": "get_w", "parameters": {}}]});
    let (whole, _, _) = setup
        .whole_answer(1, "/v1/chat/completions", &request, answer.as_bytes())
        .await;
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            chat_chunk(
                json!({"role": "assistant", "content": null,
                    "function_call": {"name": "get_w", "arguments": ""}}),
                Value::Null,
            ),
            chat_chunk(
                json!({"function_call": {"arguments": "{\"c\":"}}),
                Value::Null,
            ),
            chat_chunk(json!({"function_call": {"arguments": "1}"}}), Value::Null),
            chat_chunk(json!({}), json!("function_call")),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let mut request = request;
    request["stream"] = json!(true);
    let (streamed, _) = setup.post("/v1/chat/completions", &request).await;
    let record = setup.router.records.nth(2).await;
    assert!(record.first_token_at.is_some(), "the call's first piece");
    let expected = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "",
        "type": "function", "function": {"name": "get_w", "arguments": "{\"c\":1}"}}]});
    setup
        .assert_outputs(&[whole.as_str(), streamed.as_str()], &expected)
        .await;
    let (row, line) = setup.stop_and_read(&streamed).await;
    assert!(row.ttft_ms.is_some(), "{row:?}");
    let logged = &line["response"];
    assert_eq!(
        logged["tool_calls"][0]["function"]["name"], "get_w",
        "{logged}"
    );
    assert_eq!(
        logged["tool_calls"][0]["function"]["arguments"], "{\"c\":1}",
        "{logged}"
    );
    assert_eq!(logged["finish_reason"], "function_call");
}

/// Ollama streams each parallel tool call whole, all at index 0 with their own ids: the
/// record (the span's output and the request log) holds two calls, as the client's SDK
/// reads them, not one call `f1f2` with arguments `{"a":1}{"b":2}`.
#[tokio::test]
async fn parallel_tool_calls_at_one_index_are_recorded_apart() {
    let setup = Setup::start().await;
    let call = |id: &str, name: &str, arguments: &str| {
        json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
            "function": {"name": name, "arguments": arguments}}]})
    };
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            chat_chunk(call("call_1", "f1", "{\"a\":1}"), Value::Null),
            chat_chunk(call("call_2", "f2", "{\"b\":2}"), Value::Null),
            chat_chunk(json!({}), json!("tool_calls")),
            b"data: [DONE]\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let request = json!({"model": "[mock]m", "messages": [], "stream": true});
    let (streamed, _) = setup.post("/v1/chat/completions", &request).await;
    let expected = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f1", "arguments": "{\"a\":1}"}},
        {"id": "call_2", "type": "function", "function": {"name": "f2", "arguments": "{\"b\":2}"}}]});
    setup.assert_outputs(&[streamed.as_str()], &expected).await;
    let (_, line) = setup.stop_and_read(&streamed).await;
    let logged = &line["response"]["tool_calls"];
    assert_eq!(logged[1]["function"]["name"], "f2", "{logged}");
    assert_eq!(logged.as_array().map(Vec::len), Some(2), "{logged}");
}

/// Chat Completions' custom tool calls (OpenAI's GPT-5 custom tools: `{"type": "custom",
/// "custom": {"name", "input"}}`, a stream's input in `custom.input` pieces) are tool calls
/// of type `custom` with that name and the input as the arguments, whole and streamed, as
/// the Responses API's `custom_tool_call`; a stream's first piece is its first token.
#[tokio::test]
async fn chat_custom_tool_calls_are_recorded_with_their_name_and_input() {
    let setup = Setup::start().await;
    let answer = json!({"id": "c", "model": "gpt-5", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "type": "custom", "custom": {"name": "code_exec", "input": "print(1)"}}]},
        "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let request = json!({"model": "[mock]m", "messages": [],
        "tools": [{"type": "custom", "custom": {"name": "code_exec"}}]});
    let (whole, record, _) = setup
        .whole_answer(1, "/v1/chat/completions", &request, answer.as_bytes())
        .await;
    let call = llmsrouter::usage::ToolCall {
        id: "call_1".into(),
        kind: "custom".into(),
        name: "code_exec".into(),
        arguments: "print(1)".into(),
    };
    assert_eq!(record.response.tool_calls, std::slice::from_ref(&call));

    let first = chat_chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
            "id": "call_1", "type": "custom", "custom": {"name": "code_exec", "input": "pri"}}]}),
        Value::Null,
    );
    let chunks = vec![
        first,
        chat_chunk(
            json!({"tool_calls": [{"index": 0, "custom": {"input": "nt(1)"}}]}),
            Value::Null,
        ),
        chat_chunk(json!({}), json!("tool_calls")),
        b"data: [DONE]\n\n".to_vec(),
    ];
    // The second piece waits until the client has the first.
    let (streamed, released) = setup.held_stream(&request, &chunks, 1).await;
    let record = setup.router.records.nth(2).await;
    let first_token = record.first_token_at.expect("a first token");
    assert!(
        first_token <= released,
        "the call's first piece is the first token"
    );
    assert_eq!(record.response.tool_calls, [call]);

    let expected = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
        "type": "custom", "function": {"name": "code_exec", "arguments": "print(1)"}}]});
    setup
        .assert_outputs(&[whole.as_str(), streamed.as_str()], &expected)
        .await;
    let rows = setup
        .stop_and_read_all(&[whole.as_str(), streamed.as_str()])
        .await;
    // The whole answer's line has its body as it came; the stream's, the call as it was read.
    assert_eq!(
        rows[0].1["response"]["choices"][0]["message"]["tool_calls"][0]["custom"]["input"],
        "print(1)"
    );
    let (row, line) = &rows[1];
    assert!(row.ttft_ms.is_some(), "{row:?}");
    let logged = &line["response"];
    assert_eq!(
        logged["tool_calls"],
        json!([{"id": "call_1", "type": "custom",
            "function": {"name": "code_exec", "arguments": "print(1)"}}]),
        "{logged}"
    );
    assert_eq!(logged["finish_reason"], "tool_calls");
}

/// A whole Responses API answer (`resp_1`, completed) of `model` with `output` and `usage`,
/// as the first request of `setup`'s router: the request id of its record.
async fn whole_responses_answer(
    setup: &Setup,
    model: &str,
    output: &Value,
    usage: &Value,
) -> String {
    let answer = json!({"id": "resp_1", "object": "response", "status": "completed",
        "model": model, "output": output, "usage": usage})
    .to_string();
    setup.answer_with(answer.as_bytes(), "application/json");
    let (whole, _, _) = setup
        .whole_answer(
            1,
            "/v1/responses",
            &json!({"model": "[mock]r", "input": "x"}),
            answer.as_bytes(),
        )
        .await;
    whole
}

/// The Responses API's image tool answers with each image in base64 (`image_generation_call`'s
/// `result`, megabytes): the record holds a note in its place after the text, as for the
/// images endpoints, and the request log line none of the base64; the client gets it all.
#[tokio::test]
async fn a_responses_image_generation_call_is_a_note_not_its_base64() {
    let setup = Setup::start().await;
    let image = "iVBORw0KGgoAAAANSUhEUg".repeat(20_000);
    let output = json!([
        {"id": "ig", "type": "image_generation_call", "status": "completed", "result": image},
        {"id": "m", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Here it is.", "annotations": []}]},
    ]);
    let usage = json!({"input_tokens": 4, "output_tokens": 6, "total_tokens": 10});
    let id = whole_responses_answer(&setup, "gpt-5", &output, &usage).await;
    let record = setup.router.records.nth(1).await;
    assert_eq!(
        record.response.content,
        "Here it is.\n\n<1 image (image_generation_call, 330.0 kB)>"
    );
    // Streamed: the text from its deltas, then the note from `response.completed`.
    let events = [
        json!({"type": "response.created", "response": {"id": "resp_s", "model": "gpt-5",
            "status": "in_progress", "output": []}}),
        json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 1,
            "content_index": 0, "delta": "Here it is."}),
        json!({"type": "response.completed", "response": {"id": "resp_s", "model": "gpt-5",
            "status": "completed", "output": output, "usage": usage}}),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.iter().map(named_event).collect()),
        ..Default::default()
    });
    setup
        .post(
            "/v1/responses",
            &json!({"model": "[mock]r", "input": "x", "stream": true}),
        )
        .await;
    let streamed = setup.router.records.nth(2).await;
    assert_eq!(streamed.response.content, record.response.content);
    let (row, line) = setup.stop_and_read(&id).await;
    assert!(row.usage_known, "{row:?}");
    let text = line.to_string();
    assert!(!text.contains("iVBORw0KGgo"), "no base64 in the log line");
    assert!(text.len() < 8192, "{} bytes", text.len());
    assert_eq!(line["usage"]["total"], 10, "{line}");
}

/// A Responses API reasoning item's raw `reasoning_text` parts are reasoning and a
/// `custom_tool_call` item is a tool call (type `custom`, its `input` the arguments), in a
/// whole answer as in a stream: read from `response.completed`'s `output`, and, in a stream
/// closed before it, from the item's events (`response.output_item.added`, then
/// `response.custom_tool_call_input.delta` pieces).
#[tokio::test]
async fn responses_reasoning_text_and_custom_tool_calls_read_alike_whole_and_streamed() {
    let setup = Setup::start().await;
    let call = json!({"id": "ct", "type": "custom_tool_call", "status": "completed",
        "call_id": "call_C", "name": "code_exec", "input": "print(1)"});
    let output = json!([
        {"id": "rs", "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": "raw chain"}]},
        call,
        {"id": "m", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "fin", "annotations": []}]},
    ]);
    let usage = json!({"input_tokens": 4, "output_tokens": 6, "total_tokens": 10});
    let whole = whole_responses_answer(&setup, "gpt-oss", &output, &usage).await;
    let mut opening = call.clone();
    opening["input"] = json!("");
    opening["status"] = json!("in_progress");
    let events = [
        json!({"type": "response.created", "response": {"id": "resp_2", "model": "gpt-oss",
            "status": "in_progress", "output": []}}),
        json!({"type": "response.reasoning_text.delta", "item_id": "rs", "output_index": 0,
            "content_index": 0, "delta": "raw chain"}),
        json!({"type": "response.output_item.added", "output_index": 1, "item": opening}),
        json!({"type": "response.custom_tool_call_input.delta", "item_id": "ct",
            "output_index": 1, "delta": "print("}),
        json!({"type": "response.custom_tool_call_input.delta", "item_id": "ct",
            "output_index": 1, "delta": "1)"}),
        json!({"type": "response.custom_tool_call_input.done", "item_id": "ct",
            "output_index": 1, "input": "print(1)"}),
        json!({"type": "response.output_item.done", "output_index": 1, "item": call}),
        json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 2,
            "content_index": 0, "delta": "fin"}),
        json!({"type": "response.completed", "response": {"id": "resp_2", "model": "gpt-oss",
            "status": "completed", "output": output, "usage": usage}}),
    ];
    let chunks: Vec<Vec<u8>> = events.iter().map(named_event).collect();
    let mut streamed = Vec::new();
    // Whole, then closed before `response.completed`.
    for chunks in [&chunks[..], &chunks[..chunks.len() - 1]] {
        setup.upstream.set(Behavior {
            raw_chunks: Some(chunks.to_vec()),
            ..Default::default()
        });
        let (id, _) = setup
            .post(
                "/v1/responses",
                &json!({"model": "[mock]r", "input": "x", "stream": true}),
            )
            .await;
        let record = setup.router.records.nth(streamed.len() + 2).await;
        assert!(record.first_token_at.is_some());
        streamed.push(id);
    }
    let expected = json!({"role": "assistant", "content": "fin", "reasoning_content": "raw chain",
        "tool_calls": [{"id": "call_C", "type": "custom",
            "function": {"name": "code_exec", "arguments": "print(1)"}}]});
    for id in [&whole, &streamed[0], &streamed[1]] {
        let span = setup.otlp.span_of(id).await.span;
        assert_eq!(
            json_attr(&span, "langfuse.observation.output"),
            Some(expected.clone()),
            "{id}"
        );
    }
    let rows = setup
        .stop_and_read_all(&[streamed[0].as_str(), streamed[1].as_str()])
        .await;
    for (_, line) in rows {
        let logged = &line["response"];
        assert_eq!(logged["reasoning"], "raw chain", "{logged}");
        assert_eq!(
            logged["tool_calls"][0]["function"]["arguments"], "print(1)",
            "{logged}"
        );
        assert_eq!(logged["tool_calls"][0]["type"], "custom", "{logged}");
    }
}

/// An Anthropic `tool_use` block of a tool without arguments: its `input` is `{}`, and a
/// stream sends no piece of JSON for it (or only an empty one). Its arguments are `{}` in the
/// stream's record as in the whole message's, not `""`.
#[tokio::test]
async fn an_anthropic_tool_call_without_arguments_is_an_empty_object() {
    let setup = Setup::start().await;
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_t", "type": "message",
            "role": "assistant", "model": "claude-r", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use",
            "id": "toolu_n", "name": "now", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.iter().map(named_event).collect()),
        ..Default::default()
    });
    let request = json!({"model": "[mock]c", "max_tokens": 5, "messages": []});
    let mut stream_request = request.clone();
    stream_request["stream"] = json!(true);
    let (streamed, _) = setup.post("/v1/messages", &stream_request).await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "msg_w", "type": "message", "role": "assistant", "model": "claude-r",
                "content": [{"type": "tool_use", "id": "toolu_n", "name": "now", "input": {}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (whole, _) = setup.post("/v1/messages", &request).await;
    let expected = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_n",
        "type": "function", "function": {"name": "now", "arguments": "{}"}}]});
    setup
        .assert_outputs(&[streamed.as_str(), whole.as_str()], &expected)
        .await;
    let (_, line) = setup.stop_and_read(&streamed).await;
    assert_eq!(
        line["response"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

/// An Anthropic `server_tool_use` block (a web search the provider runs, its result in the
/// `web_search_tool_result` block after it) is a tool call of type `server_tool_use`, with its
/// name and input, beside the `tool_use` call the client has to run (type `function`), whole
/// and streamed alike. Before, both were `function` calls.
#[tokio::test]
async fn an_anthropic_server_tool_use_is_not_a_client_function_call() {
    let setup = Setup::start().await;
    let result = json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
        "content": [{"type": "web_search_result", "url": "https://example.com", "title": "SF"}]});
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_s", "type": "message",
            "role": "assistant", "model": "claude-r", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "server_tool_use",
            "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{\"query\":\"weather SF\"}"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": result}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use",
            "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"SF\"}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.iter().map(named_event).collect()),
        ..Default::default()
    });
    let request = json!({"model": "[mock]c", "max_tokens": 5, "messages": [],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let mut stream_request = request.clone();
    stream_request["stream"] = json!(true);
    let (streamed, _) = setup.post("/v1/messages", &stream_request).await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "msg_w", "type": "message", "role": "assistant", "model": "claude-r",
                "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                        "input": {"query": "weather SF"}},
                    result,
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "SF"}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (whole, _) = setup.post("/v1/messages", &request).await;
    let expected = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "srvtoolu_1", "type": "server_tool_use",
            "function": {"name": "web_search", "arguments": "{\"query\":\"weather SF\"}"}},
        {"id": "toolu_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"SF\"}"}}]});
    setup
        .assert_outputs(&[streamed.as_str(), whole.as_str()], &expected)
        .await;
    let (_, line) = setup.stop_and_read(&streamed).await;
    assert_eq!(line["response"]["tool_calls"], expected["tool_calls"]);
}

/// An upstream's error mid-stream (OpenAI's `data: {"error": ...}`, Anthropic's
/// `event: error`) gives no finish reason: the record has none (the error is its outcome,
/// level and message), not an invented `"error"`.
#[tokio::test]
async fn an_error_event_mid_stream_invents_no_finish_reason() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            br#"data: {"id":"s","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#
                .to_vec(),
            b"\n\n".to_vec(),
            br#"data: {"error":{"message":"provider failed","code":502}}"#.to_vec(),
            b"\n\n".to_vec(),
        ]),
        ..Default::default()
    });
    let (chat, _) = setup
        .post(
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "stream": true, "messages": []}),
        )
        .await;
    setup.upstream.set(Behavior {
        raw_chunks: Some(vec![
            named_event(&json!({"type": "message_start", "message": {"id": "msg_e",
                "model": "claude-e", "usage": {"input_tokens": 3, "output_tokens": 1}}})),
            named_event(&json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"}})),
            named_event(&json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ]),
        ..Default::default()
    });
    let (messages, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude", "stream": true, "max_tokens": 5, "messages": []}),
        )
        .await;
    for (nth, id, message) in [(1, &chat, "provider failed"), (2, &messages, "Overloaded")] {
        let record = setup.router.records.nth(nth).await;
        assert_eq!(record.outcome, Outcome::UpstreamError);
        assert_eq!(record.error.as_deref(), Some(message));
        assert_eq!(record.response.finish_reason, None);
        let span = setup.otlp.span_of(id).await.span;
        assert_eq!(strings_attr(&span, "gen_ai.response.finish_reasons"), None);
        assert_eq!(str_attr(&span, "langfuse.observation.level"), Some("ERROR"));
    }
    let rows = setup
        .stop_and_read_all(&[chat.as_str(), messages.as_str()])
        .await;
    for (_, line) in rows {
        assert_eq!(line["response"]["finish_reason"], Value::Null, "{line}");
        assert_eq!(line["response"]["content"], "Hi");
    }
}

/// A stream request answered with one whole JSON document labelled `text/plain` reaches the
/// client as it came (labelled `application/json`, a chat completion, it goes as its chunks),
/// and is recorded as the same body labelled `application/json` is: its usage, text and
/// model, in every sink; and, as any whole answer, its completion start in Langfuse is when
/// it arrived, with no `ttft_ms` of its own in the log and the ledger.
#[tokio::test]
async fn a_whole_json_answer_to_a_stream_request_is_read_whatever_its_label() {
    let setup = Setup::start().await;
    let answer = json!({"id": "x", "model": "plain-2025", "choices": [{"index": 0,
        "finish_reason": "stop", "message": {"role": "assistant", "content": "whole"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
    .to_string();
    let mut ids = Vec::new();
    let value = serde_json::from_str(&answer).expect("json");
    let events = llmsrouter::proxy::chunks::as_events(&value, false).expect("a chat completion");
    for (nth, content_type) in [(1, "text/plain; charset=utf-8"), (2, "application/json")] {
        setup.upstream.set(Behavior {
            raw_body: Some(answer.clone().into_bytes()),
            content_type: content_type.into(),
            never_stream: true,
            ..Default::default()
        });
        let got = if nth == 1 {
            answer.as_bytes()
        } else {
            &events[..]
        };
        let (id, record, output) = setup
            .whole_answer(
                nth,
                "/v1/chat/completions",
                &json!({"model": "[mock]m", "stream": true, "messages": []}),
                got,
            )
            .await;
        assert_eq!(
            record.response.usage.as_ref().map(|u| u.total),
            Some(9),
            "{content_type}"
        );
        assert_eq!(record.response.model.as_deref(), Some("plain-2025"));
        assert_eq!(
            output,
            Some(json!({"role": "assistant", "content": "whole"})),
            "{content_type}"
        );
        assert_eq!(
            setup.usage_details(&id).await.map(|u| u["total"].clone()),
            Some(json!(9))
        );
        let arrived = record.response_started_at.expect("answered");
        let span = setup.otlp.span_of(&id).await.span;
        let start = str_attr(&span, "langfuse.observation.completion_start_time")
            .unwrap_or_else(|| panic!("{content_type}: no completion start"));
        assert_eq!(
            super::parse_rfc3339_millis(start),
            arrived
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as i64,
            "{content_type}"
        );
        assert!(record.first_token_at.is_none(), "{content_type}");
        ids.push(id);
    }
    let rows = setup
        .stop_and_read_all(&[ids[0].as_str(), ids[1].as_str()])
        .await;
    for (row, line) in rows {
        assert_eq!(row.tokens, (7, 2, 0, 0), "{row:?}");
        assert!(row.usage_known && !row.usage_partial);
        assert_eq!((row.ttft_ms, &line["ttft_ms"]), (None, &Value::Null));
        assert_eq!(
            line["response"]["choices"][0]["message"]["content"],
            "whole"
        );
    }
}

/// A text answer that is not JSON, to a stream request, keeps the note of its type and size
/// (it is not kept whole for being text).
#[tokio::test]
async fn a_text_answer_to_a_stream_request_stays_a_note() {
    let setup = Setup::start().await;
    let text = b"{not json, only braces}";
    setup.upstream.set(Behavior {
        raw_body: Some(text.to_vec()),
        content_type: "text/plain".into(),
        never_stream: true,
        ..Default::default()
    });
    let (id, record, output) = setup
        .whole_answer(
            1,
            "/v1/chat/completions",
            &json!({"model": "[mock]m", "stream": true, "messages": []}),
            text,
        )
        .await;
    assert_eq!(record.response.content, "<text/plain, 23 bytes>");
    assert!(record.response_body.is_none());
    assert_eq!(
        output,
        Some(json!({"role": "assistant", "content": "<text/plain, 23 bytes>"}))
    );
    let (_, line) = setup.stop_and_read(&id).await;
    assert_eq!(line["response"]["content"], "<text/plain, 23 bytes>");
}

/// Anthropic's `stop_sequences` is the span's `gen_ai.request.stop_sequences`, as OpenAI's
/// `stop` is.
#[tokio::test]
async fn anthropic_stop_sequences_are_the_spans_stop_sequences() {
    let setup = Setup::start().await;
    setup.upstream.set(Behavior {
        body: Some(
            json!({"id": "msg_1", "type": "message", "model": "claude-s",
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 1}})
            .to_string(),
        ),
        ..Default::default()
    });
    let (id, _) = setup
        .post(
            "/v1/messages",
            &json!({"model": "[mock]claude", "max_tokens": 5, "stop_sequences": ["END", "\n\nHuman:"],
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let span = setup.otlp.span_of(&id).await.span;
    assert_eq!(
        strings_attr(&span, "gen_ai.request.stop_sequences"),
        Some(vec!["END".to_owned(), "\n\nHuman:".to_owned()])
    );
    setup.router.stop().await;
}

/// A 200 with nothing in it, to a request that named a model: the client gets it as it came
/// (no byte), but the record is the upstream's failure to answer, not a clean success. An
/// event stream without a single event (plain or gzipped) is cut as one closed before
/// `[DONE]` is (level WARNING, usage partial), its message saying it was empty; an empty
/// whole body (plain or gzipped, to a stream request as well) is a WARNING whose message
/// says so. A `204 No Content` stays a plain success: it says it has nothing.
#[tokio::test]
async fn an_empty_200_answer_is_recorded_as_the_upstreams_failure_to_answer() {
    let setup = Setup::start().await;
    let empty_stream = "the upstream answered 200 with an empty event stream: it closed it \
                        before any event; token counts unknown";
    let empty_body = "the upstream answered 200 with an empty body";
    let gzipped = || vec![("content-encoding".to_owned(), "gzip".to_owned())];
    // (what the upstream does, the request asks to stream, the record's error)
    let cases = [
        (
            Behavior {
                raw_chunks: Some(vec![]),
                ..Default::default()
            },
            true,
            Some(empty_stream),
        ),
        (
            Behavior {
                raw_chunks: Some(vec![]),
                stream_coding: Some("gzip"),
                ..Default::default()
            },
            true,
            Some(empty_stream),
        ),
        (
            Behavior {
                body: Some(String::new()),
                ..Default::default()
            },
            false,
            Some(empty_body),
        ),
        (
            Behavior {
                body: Some(String::new()),
                never_stream: true,
                ..Default::default()
            },
            true,
            Some(empty_body),
        ),
        (
            Behavior {
                raw_body: Some(crate::support::upstream::gzip(b"")),
                headers: gzipped(),
                ..Default::default()
            },
            false,
            Some(empty_body),
        ),
        (
            Behavior {
                status: 204,
                body: Some(String::new()),
                ..Default::default()
            },
            false,
            None,
        ),
    ];
    let mut ids = Vec::new();
    for (n, (behavior, stream, error)) in cases.iter().enumerate() {
        let status = behavior.status;
        setup.upstream.set(behavior.clone());
        // A client that takes gzip: a whole answer in it comes as it came.
        let response = client()
            .post(setup.router.url("/v1/chat/completions"))
            .header("accept-encoding", "gzip")
            .json(&json!({"model": "[mock]m", "stream": stream, "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), status, "case {n}");
        let id = request_id(&response);
        let got = response.bytes().await.expect("body");
        // Nothing, or a whole answer's empty gzip as it came.
        let sent = behavior.raw_body.clone().unwrap_or_default();
        assert!(got == sent, "case {n}: the client gets what came: {got:?}");
        let record = setup.router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "case {n}");
        assert_eq!(record.error.as_deref(), *error, "case {n}");
        let cut = *error == Some(empty_stream);
        assert_eq!(record.usage_partial(), cut, "case {n}");
        let span = setup.otlp.span_of(&id).await.span;
        // DEFAULT is Langfuse's own: not written.
        let level = error.map(|_| "WARNING");
        assert_eq!(
            str_attr(&span, "langfuse.observation.level"),
            level,
            "case {n}"
        );
        assert_eq!(
            str_attr(&span, "langfuse.observation.status_message"),
            *error,
            "case {n}"
        );
        ids.push(id);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = setup.stop_and_read_all(&id_refs).await;
    for (n, ((row, line), (_, _, error))) in rows.iter().zip(&cases).enumerate() {
        let cut = *error == Some(empty_stream);
        assert_eq!(row.outcome, "success", "case {n}");
        assert_eq!(row.error.as_deref(), *error, "case {n}");
        assert!(!row.usage_known, "case {n}");
        assert_eq!(row.usage_partial, cut, "case {n}");
        assert_eq!(line["outcome"], "success", "case {n}");
        assert_eq!(line["error"].as_str(), *error, "case {n}");
        assert_eq!(line["usage_partial"], cut, "case {n}");
    }
}

/// A Responses API reasoning summary of several parts is recorded with a paragraph break
/// between them, whole and streamed alike (each `response.reasoning_summary_part.added`
/// after some reasoning begins one): run together, a part's `**Checking**` heading stuck to
/// the last sentence of the part before it.
#[tokio::test]
async fn responses_reasoning_summary_parts_are_paragraphs_whole_and_streamed() {
    let setup = Setup::start().await;
    let parts = json!([{"type": "summary_text", "text": "Part one."},
        {"type": "summary_text", "text": "**Check**\n\nPart two."}]);
    let output = json!([
        {"id": "rs", "type": "reasoning", "summary": parts},
        {"id": "m", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "fin", "annotations": []}]},
    ]);
    let usage = json!({"input_tokens": 4, "output_tokens": 6, "total_tokens": 10});
    let whole = whole_responses_answer(&setup, "o4", &output, &usage).await;
    let part_added = |index: usize| {
        json!({"type": "response.reasoning_summary_part.added", "item_id": "rs",
            "output_index": 0, "summary_index": index,
            "part": {"type": "summary_text", "text": ""}})
    };
    let delta = |index: usize, text: &str| {
        json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs",
            "output_index": 0, "summary_index": index, "delta": text})
    };
    let events = [
        json!({"type": "response.created", "response": {"id": "resp_2", "model": "o4",
            "status": "in_progress", "output": []}}),
        part_added(0),
        delta(0, "Part "),
        delta(0, "one."),
        part_added(1),
        delta(1, "**Check**\n\nPart two."),
        json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 1,
            "content_index": 0, "delta": "fin"}),
        json!({"type": "response.completed", "response": {"id": "resp_2", "model": "o4",
            "status": "completed", "output": output, "usage": usage}}),
    ];
    setup.upstream.set(Behavior {
        raw_chunks: Some(events.iter().map(named_event).collect()),
        ..Default::default()
    });
    let (streamed, _) = setup
        .post(
            "/v1/responses",
            &json!({"model": "[mock]r", "input": "x", "stream": true}),
        )
        .await;
    let reasoning = "Part one.\n\n**Check**\n\nPart two.";
    let expected = json!({"role": "assistant", "content": "fin", "reasoning_content": reasoning});
    setup
        .assert_outputs(&[whole.as_str(), streamed.as_str()], &expected)
        .await;
    let (_, line) = setup.stop_and_read(&streamed).await;
    assert_eq!(line["response"]["reasoning"], reasoning, "{line}");
}
