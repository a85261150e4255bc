//! End to end with the official `openai` Python package as the client.
//!
//! The package lives in a venv that `.ci/run` makes (`.venv`, or `LLMSROUTER_TEST_PYTHON`).
//! Under CI (`CI=true`) a missing venv fails the test; on a developer machine that has not run
//! `.ci/run` yet the test says so and passes.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{TestRouter, one_server_config, test_python};

/// Runs `script` with `python`, the router's base URL its one argument.
async fn run_script(python: PathBuf, script: &'static str, base: String) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script, &base])
            .env("NO_PROXY", "*")
            .output()
    })
    .await
    .expect("join")
    .expect("run python")
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
    let output = run_script(python, SCRIPT, base).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json from python");
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
    let output = run_script(python, TRANSCRIBE, base).await;
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json from python");
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
