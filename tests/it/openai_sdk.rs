//! End to end with the official `openai` Python package as the client.
//!
//! The package lives in a venv that `.ci/run` makes (`.venv`, or `LLMSROUTER_TEST_PYTHON`).
//! Under CI (`CI=true`) a missing venv fails the test; on a developer machine that has not run
//! `.ci/run` yet the test says so and passes.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{TestRouter, one_server_config, test_python};

/// Runs `script` with `python`, the router's base URL its one argument.
async fn run_script(python: PathBuf, script: &'static str, base: String) -> Output {
    run_script_with(python, script, vec![base]).await
}

/// Runs `script` with `python` and `args` (`sys.argv[1:]`).
async fn run_script_with(python: PathBuf, script: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(script)
            .args(&args)
            .env("NO_PROXY", "*")
            .output()
    })
    .await
    .expect("join")
    .expect("run python")
}

/// The JSON a script printed, once it ran to its end.
fn printed_json(output: Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).expect("json from python")
}

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-anything")
plain = client.chat.completions.create(model="[mock]gpt-4o", messages=[{"role": "user", "content": "hi"}])
chunks = client.chat.completions.create(model="[mock]gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
streamed = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
try:
    client.chat.completions.create(model="[nosuch]x", messages=[])
    error = None
except Exception as e:
    error = {"status": e.status_code, "code": e.code}
print(json.dumps({"plain": plain.choices[0].message.content, "usage": plain.usage.total_tokens, "streamed": streamed, "error": error}))
"#;

#[tokio::test]
async fn the_openai_python_sdk_works_through_the_router() {
    let Some(python) = test_python() else {
        return;
    };
    let upstream = MockUpstream::start(Behavior {
        chunks: 3,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let base = router.url("/v1");
    let result = printed_json(run_script(python, SCRIPT, base).await);
    assert_eq!(result["plain"], "Hello there");
    assert_eq!(result["usage"], 13);
    assert_eq!(result["streamed"], "tok0 tok1 tok2 ");
    assert_eq!(result["error"]["status"], 404);
    assert_eq!(result["error"]["code"], "model_not_found");
    let streamed = upstream
        .received()
        .into_iter()
        .find(|r| r.json()["stream"] == true)
        .expect("stream request");
    assert_eq!(streamed.json()["model"], "gpt-4o");
    router.stop().await;
}

const TRANSCRIBE: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-anything")
audio = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n"
whole = client.audio.transcriptions.create(model="[mock]whisper-1", file=("speech.wav", audio, "audio/wav"), language="en")
text = client.audio.transcriptions.create(model="[mock]whisper-1", file=("speech.wav", audio, "audio/wav"), response_format="text")
print(json.dumps({"whole": whole.text, "text": text}))
"#;

/// `client.audio.transcriptions.create` through the router: the SDK's multipart form is
/// routed by its `model` field and reaches the upstream with `model=whisper-1` and the file's
/// bytes as sent; JSON and text answers both come back to the SDK.
#[tokio::test]
async fn the_openai_python_sdk_transcribes_through_the_router() {
    let Some(python) = test_python() else {
        return;
    };
    let upstream = MockUpstream::start(Behavior {
        body: Some(r#"{"text":"hello world"}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let base = router.url("/v1");
    let result = printed_json(run_script(python, TRANSCRIBE, base).await);
    assert_eq!(result["whole"], "hello world");
    // Asked for text, the SDK returns the body as it came.
    assert_eq!(result["text"], r#"{"text":"hello world"}"#);

    let mut audio: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    audio.extend_from_slice(b"\r\n--not-a-boundary\r\n");
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    for got in &received {
        assert_eq!(got.path, "/v1/audio/transcriptions");
        assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");
        let content_type = got.headers["content-type"].to_str().expect("ascii");
        assert!(
            content_type.starts_with("multipart/form-data; boundary="),
            "{content_type}"
        );
        let body = &got.body;
        let has = |needle: &[u8]| memchr::memmem::find(body, needle).is_some();
        assert!(has(b"name=\"model\"\r\n\r\nwhisper-1\r\n"));
        assert!(!has(b"[mock]"));
        assert!(has(&audio), "the file's bytes arrive as sent");
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.upstream_model, "whisper-1");
    assert_eq!(record.provider, "mock");
    let recorded: serde_json::Value = serde_json::from_slice(&record.request_body).expect("JSON");
    assert_eq!(recorded["model"], "[mock]whisper-1");
    assert_eq!(recorded["file"]["filename"], "speech.wav");
    assert_eq!(recorded["file"]["size_bytes"], audio.len());
    router.stop().await;
}

const PROXIED: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-client-own-key", default_query={"proxy": sys.argv[2]})
models = [m.id for m in client.models.list()]
deleted = client.files.delete("file-abc")
print(json.dumps({"models": models, "deleted": deleted.deleted}))
"#;

/// `default_query={"proxy": url}`: `models.list()` and `files.delete()` reach that server
/// (a `GET` and a `DELETE`) with the client's own key, and its own model names come back.
#[tokio::test]
async fn the_openai_python_sdk_lists_models_and_deletes_files_through_proxy() {
    let Some(python) = test_python() else {
        return;
    };
    let upstream = MockUpstream::start(Behavior {
        models_body: Some(r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"them"}]}"#.into()),
        body: Some(r#"{"id":"file-abc","object":"file","deleted":true}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start("servers: {}\n").await;
    let args = vec![router.url("/v1"), upstream.origin()];
    let result = printed_json(run_script_with(python, PROXIED, args).await);
    assert_eq!(result["models"], serde_json::json!(["gpt-4o"]));
    assert_eq!(result["deleted"], true);
    let received = upstream.received();
    let seen: Vec<(&str, &str)> = received
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("GET", "/v1/models"), ("DELETE", "/v1/files/file-abc")]
    );
    for got in &received {
        assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
    }
    router.stop().await;
}

const LATE_WHOLE: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-anything")
tools = [{"type": "function", "function": {"name": "weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}]
out = {}
for name, extra in [("plain", {}), ("usage", {"stream_options": {"include_usage": True}})]:
    with client.chat.completions.stream(model="[mock]m", tools=tools,
            messages=[{"role": "user", "content": "hi"}], **extra) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    message = choice.message
    out[name] = {"id": final.id, "model": final.model, "role": message.role,
        "content": message.content, "reasoning": getattr(message, "reasoning_content", None),
        "tool_calls": [[c.id, c.type, c.function.name, c.function.arguments]
                       for c in (message.tool_calls or [])],
        "finish": choice.finish_reason,
        "usage": final.usage.total_tokens if final.usage else None}
print(json.dumps(out))
"#;

/// A stream request whose upstream ignores `"stream": true` and answers one whole chat
/// completion after the keep-alive interval (so after the router began the stream itself):
/// the SDK's stream helper assembles the events it gets into the same message (content,
/// reasoning, tool calls, finish reason, id, model), with the usage only when it asked for
/// `include_usage`.
#[tokio::test]
async fn the_openai_python_sdk_assembles_a_late_whole_answer() {
    sdk_assembles_a_whole_answer(true).await;
}

/// The same whole answer at once, long before the router's early head: the SDK assembles
/// it as well (relayed as the JSON it was, the SDK's stream yielded no chunk and no error).
#[tokio::test]
async fn the_openai_python_sdk_assembles_a_quick_whole_answer() {
    sdk_assembles_a_whole_answer(false).await;
}

/// Runs [`LATE_WHOLE`] against an upstream that answers one whole chat completion to its
/// stream requests, after the router's early head when `late`, else at once.
async fn sdk_assembles_a_whole_answer(late: bool) {
    let Some(python) = test_python() else {
        return;
    };
    let answer = serde_json::json!({"id": "c1", "object": "chat.completion",
        "created": 1700000000, "model": "m-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "let me look",
            "reasoning_content": "weather needs a tool",
            "tool_calls": [{"id": "call_a", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}});
    // Late, the upstream's head comes long after the router's keep-alive interval (20 ms):
    // the router has answered the client itself by then. Quick, it comes at once, and the
    // interval is the usual 15 s.
    let (delay, interval) = if late {
        (Duration::from_secs(1), Duration::from_millis(20))
    } else {
        (Duration::ZERO, Duration::from_secs(15))
    };
    let upstream = MockUpstream::start(Behavior {
        body: Some(answer.to_string()),
        never_stream: true,
        delay,
        ..Default::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.keepalive_interval = interval;
    })
    .await;
    let result = printed_json(run_script(python, LATE_WHOLE, router.url("/v1")).await);
    for (name, usage) in [("plain", serde_json::Value::Null), ("usage", 50.into())] {
        assert_eq!(
            result[name],
            serde_json::json!({"id": "c1", "model": "m-2024", "role": "assistant",
                "content": "let me look", "reasoning": "weather needs a tool",
                "tool_calls": [["call_a", "function", "weather", "{\"city\":\"Paris\"}"]],
                "finish": "tool_calls", "usage": usage}),
            "{name}"
        );
    }
    for n in 1..=2 {
        let record = router.records.nth(n).await;
        assert_eq!(record.outcome, llmsrouter::record::Outcome::Success);
        let started = record.response_started_at.expect("the upstream's head");
        let waited = started
            .duration_since(record.started_at)
            .unwrap_or_default();
        if late {
            assert!(waited >= interval, "the head came after the router's own");
        } else {
            assert!(waited < interval, "the head came before the router's own");
        }
        assert_eq!(record.response.usage.clone().expect("usage").total, 50);
    }
    router.stop().await;
}

const ONE_CALL: &str = r#"
import json, sys, openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-anything", max_retries=2)
try:
    client.chat.completions.create(model=sys.argv[2], messages=[{"role": "user", "content": "hi"}])
    out = None
except openai.APIStatusError as e:
    out = {"status": e.status_code, "code": e.code, "retry": e.response.headers.get("x-should-retry"),
           "request_id": e.request_id}
print(json.dumps(out))
"#;

/// A model whose `[URL]` prefixes lead back to the router itself: one SDK call is one trip
/// around the loop (a record per hop, the last of them the router's 508), not three. The
/// router's 508 says `x-should-retry: false`, relayed by every hop before it, so the SDK,
/// which retries any 5xx twice unless told not to, raises it at once, with the request id of
/// the router that made it (`x-request-id`; it was null).
#[tokio::test]
async fn the_openai_python_sdk_does_not_retry_a_loop() {
    let Some(python) = test_python() else {
        return;
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let own = format!("[http://{}/v1]", router.addr);
    let model = format!("{}[mock]m", own.repeat(10));
    let mut result =
        printed_json(run_script_with(python, ONE_CALL, vec![router.url("/v1"), model]).await);
    let request_id = result["request_id"].take();
    assert_eq!(
        result,
        serde_json::json!({"status": 508, "code": "loop_detected", "retry": "false",
            "request_id": null})
    );
    assert_eq!(upstream.count(), 0);
    let records = std::sync::Arc::clone(&router.records);
    router.stop().await;
    // Hops 0 to 7 each made a record; the eighth was refused before it had one.
    let records = records.all();
    assert_eq!(records.len(), 8, "one trip around the loop");
    assert!(records.iter().all(|r| r.status == Some(508)));
    // The id of the hop that refused (it made no record), relayed by the others.
    let id = request_id.as_str().expect("a request id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(records.iter().all(|r| r.request_id != id), "{id}");
}

const QUERY_IN_BASE_URL: &str = r#"
import json, sys, openai
from openai import OpenAI
out = []
for base in sys.argv[1:]:
    client = OpenAI(base_url=base, api_key="sk-anything", max_retries=0)
    for call in (lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]),
                 lambda: client.models.list()):
        try:
            call()
            out.append(None)
        except openai.APIStatusError as e:
            out.append({"status": e.status_code, "code": e.code, "message": e.body["message"]})
print(json.dumps(out))
"#;

/// A base URL carrying `?proxy=` (`http://router/v1?proxy=http://host/v1`): the SDK appends
/// the path after the query, so the router sees `/v1` and answers 404; the message now says
/// the path went into the proxy= value and what to do instead (`default_query`, or the URL
/// in the model), for a chat request and a model list alike, with a trailing `/` or not.
/// Nothing reaches the upstream.
#[tokio::test]
async fn the_openai_python_sdk_is_told_a_base_url_cannot_carry_proxy() {
    let Some(python) = test_python() else {
        return;
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start("servers: {}\n").await;
    let target = upstream.url();
    let bases = vec![
        format!("{}?proxy={target}", router.url("/v1")),
        format!("{}?proxy={target}", router.url("/v1/")),
    ];
    let result = printed_json(run_script_with(python, QUERY_IN_BASE_URL, bases).await);
    let answers = result.as_array().expect("a list");
    assert_eq!(answers.len(), 4);
    for answer in answers {
        assert_eq!(answer["status"], 404, "{answer}");
        assert_eq!(answer["code"], "not_found", "{answer}");
        let message = answer["message"].as_str().expect("message");
        assert!(
            message.contains("the request path is inside the proxy= value")
                && message.contains("default_query (Python) / defaultQuery (Node)")
                && message.contains("[http://host/v1]model"),
            "{message}"
        );
        assert!(
            !message.contains(&target),
            "the value is not quoted: {message}"
        );
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

const CUT_RESPONSES: &str = r#"
import json, sys, openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-anything", max_retries=0)
texts = []
try:
    for event in client.responses.create(model="[mock]gpt-x", input="hi", stream=True):
        if event.type == "response.output_text.delta":
            texts.append(event.delta)
    out = {"raised": None}
except openai.APIError as e:
    out = {"raised": type(e).__name__, "message": e.message, "code": e.code}
out["texts"] = texts
print(json.dumps(out))
"#;

/// A Responses stream the upstream cuts: the router's own `error` event (the Responses API's
/// form, see `streaming::a_cut_responses_stream_ends_with_a_responses_error_event`) makes the
/// official SDK raise `APIError` with the router's message and code after the text it had.
#[tokio::test]
async fn the_openai_python_sdk_raises_the_routers_error_in_a_responses_stream() {
    let Some(python) = test_python() else {
        return;
    };
    let event = |data: serde_json::Value| {
        let name = data["type"].as_str().expect("typed").to_owned();
        format!("event: {name}\ndata: {data}\n\n").into_bytes()
    };
    let upstream = MockUpstream::start(Behavior {
        raw_chunks: Some(vec![
            event(
                serde_json::json!({"type": "response.created", "sequence_number": 0,
                "response": {"id": "resp_1", "object": "response", "created_at": 1,
                    "model": "gpt-x", "status": "in_progress", "output": []}}),
            ),
            event(serde_json::json!({"type": "response.output_text.delta",
                "sequence_number": 1, "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": "Partial", "logprobs": []})),
            event(serde_json::json!({"type": "response.completed", "sequence_number": 2})),
        ]),
        abort_after: Some(2),
        chunk_delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let result = printed_json(run_script(python, CUT_RESPONSES, router.url("/v1")).await);
    assert_eq!(result["raised"], "APIError", "{result}");
    assert_eq!(result["code"], "upstream_unreachable", "{result}");
    assert_eq!(result["texts"], serde_json::json!(["Partial"]), "{result}");
    let record = router.records.nth(1).await;
    assert_eq!(result["message"].as_str(), record.error.as_deref());
    router.stop().await;
}
