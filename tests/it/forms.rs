//! `multipart/form-data` requests (audio transcriptions and translations, image edits, file
//! uploads): routed by their `model` field, sent upstream with only that field's value
//! changed, and recorded with an outline of each file instead of its bytes.

use std::sync::Arc;

use llmsrouter::auth::{Caller, KeyIndex, Permissions};
use llmsrouter::record::{Outcome, RecordSink};
use llmsrouter::routing::RouteMode;
use llmsrouter::sinks::generation;
use llmsrouter::sinks::redact::Redactor;
use serde_json::{Value, json};

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{RouterProcess, TestRouter, client, h2c_client, one_server_config};
use crate::telemetry::request_log::read_log_lines;

const BOUNDARY: &str = "llmsrouter-test-boundary-7d1f";

/// Audio as the test sends it: binary, with line breaks, dashes and a marker that must never
/// reach a record.
fn audio() -> Vec<u8> {
    let mut bytes = b"RIFF\x24\x08\x00\x00WAVEfmt AUDIO-BYTES-MARKER\r\n--".to_vec();
    bytes.extend((0..=255u8).cycle().take(3000));
    bytes.extend_from_slice(b"\r\n--not-the-boundary\r\n\xff\xfe");
    bytes
}

/// One part of a test form: name, filename and content type (for a file), value.
type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A form as the openai SDK (httpx) writes one.
fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, value) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let headers = match file {
            Some((filename, content_type)) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        out.extend_from_slice(headers.as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// POSTs `body` as a form to `path` with `http`.
async fn post_form(
    http: &reqwest::Client,
    router: &TestRouter,
    path: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http.post(router.url(path))
        .header("content-type", form_type())
        .header("authorization", "Bearer client-key")
        .body(body)
        .send()
        .await
        .expect("send")
}

/// Status and body of an error answer, which must be in OpenAI's shape.
async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    (status, body)
}

const TRANSCRIPTION: &str = r#"{"text":"hello world","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}}"#;

/// The whole round trip of a transcription, over HTTP/1 and HTTP/2: upstream gets the form
/// with `model=whisper-1` and every other byte as sent, under the provider's key and a
/// Content-Length that fits; the client gets the answer; the record (and the request log,
/// and the Langfuse generation) has the model, provider and usage, and the file's outline
/// without its bytes.
#[tokio::test]
async fn a_transcription_form_reaches_the_upstream_with_only_the_model_changed() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(TRANSCRIPTION.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let log = crate::telemetry::request_log::log_sink(dir.path().join("api_proxy.log"), true);
    let router = TestRouter::start_with_sinks(
        &one_server_config(&upstream.url(), ""),
        vec![log as Arc<dyn RecordSink>],
        |_| {},
    )
    .await;
    let audio = audio();
    let body = form(&[
        ("file", Some(("speech.wav", "audio/wav")), &audio),
        ("model", None, b"[mock]whisper-1"),
        ("language", None, b"en"),
        ("response_format", None, b"json"),
    ]);
    let expected_upstream = form(&[
        ("file", Some(("speech.wav", "audio/wav")), &audio),
        ("model", None, b"whisper-1"),
        ("language", None, b"en"),
        ("response_format", None, b"json"),
    ]);
    let description = json!({
        "file": {"filename": "speech.wav", "content_type": "audio/wav", "size_bytes": audio.len()},
        "model": "[mock]whisper-1",
        "language": "en",
        "response_format": "json",
    });
    for (n, http) in [client(), h2c_client()].iter().enumerate() {
        let response = post_form(http, &router, "/v1/audio/transcriptions", body.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), TRANSCRIPTION);

        let got = upstream.last();
        assert_eq!(got.path, "/v1/audio/transcriptions");
        assert_eq!(got.body.as_ref(), expected_upstream.as_slice());
        assert_eq!(got.headers["content-type"], form_type().as_str());
        assert_eq!(
            got.headers["content-length"],
            expected_upstream.len().to_string().as_str()
        );
        assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.mode, RouteMode::Alias);
        assert_eq!(record.provider, "mock");
        assert_eq!(record.endpoint, "/audio/transcriptions");
        assert_eq!(record.requested_model, "[mock]whisper-1");
        assert_eq!(record.upstream_model, "whisper-1");
        assert_eq!(record.status, Some(200));
        assert!(record.request_is_form);
        let usage = record.response.usage.clone().expect("usage");
        assert_eq!((usage.input, usage.output, usage.total), (14, 45, 59));
        let recorded: Value = serde_json::from_slice(&record.request_body).expect("JSON");
        assert_eq!(recorded, description);
        assert_eq!(
            record.response_body.as_deref(),
            Some(TRANSCRIPTION.as_bytes())
        );
        let traced = generation::build(&record, &Redactor::default(), 1 << 20);
        let input: Value = serde_json::from_str(&traced.input.expect("input")).expect("JSON");
        assert_eq!(input, description);
        assert_eq!(traced.model, "whisper-1");
    }
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["model"], "[mock]whisper-1");
        assert_eq!(line["provider"], "mock");
        assert_eq!(line["request"], description);
        assert_eq!(line["response"]["text"], "hello world");
    }
    let text = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect::<Vec<_>>()
        .concat();
    assert!(
        memchr::memmem::find(&text, b"AUDIO-BYTES-MARKER").is_none(),
        "a file's bytes reached the request log"
    );
}

/// A model part that declares its own `Content-Length` (RFC 7578 deprecates it; some
/// hand-written clients still send one) reaches the upstream with the length of the value it
/// now carries: a server that trusts it would otherwise read a cut or overlong model name.
#[tokio::test]
async fn a_model_parts_own_content_length_follows_the_rewrite() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(TRANSCRIPTION.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let with_length = |model: &str| {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Length: {}\r\n\r\n{model}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\nContent-Length: 3\r\n\r\nabc\r\n--{BOUNDARY}--\r\n",
            model.len()
        )
        .into_bytes()
    };
    let response = post_form(
        &client(),
        &router,
        "/v1/audio/transcriptions",
        with_length("[mock]whisper-1"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        String::from_utf8_lossy(&with_length("whisper-1"))
    );
    router.stop().await;
}

/// A transcription asked for as text (or srt, vtt) comes back as text, and is recorded so;
/// also under SubRip's own type, `application/x-subrip`, which some servers send (it used to
/// be relayed as a binary answer, recorded as `<application/x-subrip, N bytes>`).
#[tokio::test]
async fn a_text_answer_to_a_form_reaches_the_client_and_the_record() {
    let srt = "1\n00:00:00,000 --> 00:00:01,000\nhello world\n";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (n, content_type) in ["text/plain; charset=utf-8", "application/x-subrip"]
        .into_iter()
        .enumerate()
    {
        upstream.set(Behavior {
            body: Some(srt.into()),
            content_type: content_type.into(),
            ..Default::default()
        });
        let body = form(&[
            ("model", None, b"[mock]whisper-1"),
            ("file", Some(("a.mp3", "audio/mpeg")), b"ID3\x04\x00"),
            ("response_format", None, b"srt"),
        ]);
        let response = post_form(&client(), &router, "/v1/audio/translations", body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.text().await.expect("body"), srt);
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.endpoint, "/audio/translations");
        assert!(!record.stream, "{content_type}");
        assert_eq!(record.response_body.as_deref(), Some(srt.as_bytes()));
        assert!(!record.response_is_json);
    }
    router.stop().await;
}

/// A form the router cannot route or read is refused with a 400 in OpenAI's shape, and never
/// reaches an upstream.
#[tokio::test]
async fn forms_without_a_model_or_malformed_get_a_400_in_openai_shape() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let no_model = form(&[("file", Some(("a.wav", "audio/wav")), b"RIFF")]);
    let unterminated = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n[mock]whisper-1\r\n"
    );
    // Once `[mock]` is stripped, what follows starts a line upstream: a boundary there would
    // frame a `model` field of its own, which the upstream would read and the record not.
    let smuggled = format!(
        "[mock]--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nexpensive"
    );
    let cut = format!("[mock]--{BOUNDARY}--");
    let cases: [(&str, String, Vec<u8>, &str); 6] = [
        (
            "a line break in the model",
            form_type(),
            form(&[("model", None, smuggled.as_bytes())]),
            "line break",
        ),
        (
            "the boundary in the model",
            form_type(),
            form(&[("model", None, cut.as_bytes())]),
            "holds the form's boundary",
        ),
        ("no model", form_type(), no_model, "no \"model\" field"),
        (
            "no boundary",
            "multipart/form-data".into(),
            form(&[("model", None, b"[mock]whisper-1")]),
            "names no boundary",
        ),
        (
            "unterminated",
            form_type(),
            unterminated.into_bytes(),
            "closing boundary",
        ),
        (
            "another boundary",
            "multipart/form-data; boundary=other".into(),
            form(&[("model", None, b"[mock]whisper-1")]),
            "does not start with the boundary",
        ),
    ];
    for (case, content_type, body, message) in cases {
        let response = client()
            .post(router.url("/v1/audio/transcriptions"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        assert!(response.headers().contains_key("x-llmsrouter-request-id"));
        let (status, error) = error_of(response).await;
        assert_eq!(status, 400, "{case}");
        assert_eq!(error["error"]["code"], "invalid_request", "{case}");
        let text = error["error"]["message"].as_str().expect("message");
        assert!(text.contains(message), "{case}: {text}");
    }
    assert_eq!(upstream.count(), 0);
    // The server keeps serving.
    let body = form(&[("model", None, b"[mock]whisper-1")]);
    let response = post_form(&client(), &router, "/v1/audio/transcriptions", body).await;
    assert_eq!(response.status(), 200);
    router.stop().await;
}

/// A form with no model (a file upload) goes to `?proxy=` with the client's own key, or to
/// `settings.default_server` with the server's, its body as it came.
#[tokio::test]
async fn a_file_upload_without_a_model_goes_to_proxy_or_the_default_server() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(r#"{"id":"file-abc","object":"file","purpose":"batch"}"#.into()),
        ..Default::default()
    })
    .await;
    let upload = form(&[
        ("purpose", None, b"batch"),
        (
            "file",
            Some(("batch.jsonl", "application/jsonl")),
            b"{\"custom_id\":\"1\"}\n",
        ),
    ]);
    let router = TestRouter::start("").await;
    let path = format!("/v1/files?proxy={}", upstream.origin());
    let response = post_form(&client(), &router, &path, upload.clone()).await;
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/files");
    assert_eq!(got.body.as_ref(), upload.as_slice());
    assert_eq!(got.headers["authorization"], "Bearer client-key");
    let record = router.records.nth(1).await;
    assert_eq!(record.mode, RouteMode::ProxyParam);
    assert_eq!(record.requested_model, "");
    let recorded: Value = serde_json::from_slice(&record.request_body).expect("JSON");
    assert_eq!(
        recorded,
        json!({"purpose": "batch", "file": {"filename": "batch.jsonl",
            "content_type": "application/jsonl", "size_bytes": 18}})
    );
    router.stop().await;

    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    let response = post_form(&client(), &router, "/v1/files", upload.clone()).await;
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.body.as_ref(), upload.as_slice());
    assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");
    let record = router.records.nth(1).await;
    assert_eq!(record.mode, RouteMode::DefaultServer);
    assert_eq!(record.provider, "mock");
    router.stop().await;
}

/// `max_body_bytes` holds for forms as for JSON: 413 in OpenAI's shape, nothing forwarded.
#[tokio::test]
async fn a_form_over_the_body_limit_gets_413() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  max_body_bytes: 4096\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    let big = vec![7u8; 8192];
    let body = form(&[
        ("model", None, b"[mock]whisper-1"),
        ("file", Some(("a.wav", "audio/wav")), &big),
    ]);
    for http in [client(), h2c_client()] {
        let response = post_form(&http, &router, "/v1/audio/transcriptions", body.clone()).await;
        let (status, error) = error_of(response).await;
        assert_eq!(status, 413);
        assert_eq!(error["error"]["code"], "body_too_large");
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

const USER_KEY: &str = "sk-lr-forms0123456789abcdefghijABCD";

/// A user who may use the `mock` provider only.
struct MockOnly;

impl KeyIndex for MockOnly {
    fn find(&self, presented_key: &str) -> Option<Caller> {
        (presented_key == USER_KEY).then(|| Caller {
            user: Some("ann".into()),
            permissions: Permissions::Only(["mock".to_owned()].into()),
        })
    }
}

/// With accounts on, a form is held to the user's providers as a JSON body is, and URL
/// targets stay refused.
#[tokio::test]
async fn a_users_form_is_held_to_the_providers_they_may_use() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(TRANSCRIPTION.into()),
        ..Default::default()
    })
    .await;
    let config = format!(
        "{}  other:\n    url: \"{}\"\n    api_key: \"sk-other-upstream-key\"\n",
        one_server_config(&upstream.url(), ""),
        upstream.url()
    );
    let router = TestRouter::start_with(&config, |state| {
        state.keys = Some(Arc::new(MockOnly));
    })
    .await;
    let send = |model: &'static [u8], path: String| {
        let body = form(&[
            ("model", None, model),
            ("file", Some(("a.wav", "audio/wav")), b"RIFF"),
        ]);
        client()
            .post(router.url(&path))
            .header("content-type", form_type())
            .bearer_auth(USER_KEY)
            .body(body)
            .send()
    };
    let path = "/v1/audio/transcriptions".to_owned();
    let (status, error) =
        error_of(send(b"[other]whisper-1", path.clone()).await.expect("send")).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (403, &json!("provider_forbidden"))
    );
    let proxied = format!("{path}?proxy={}", upstream.origin());
    let (status, error) = error_of(send(b"whisper-1", proxied).await.expect("send")).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (403, &json!("url_target_forbidden"))
    );
    assert_eq!(upstream.count(), 0);
    let response = send(b"[mock]whisper-1", path).await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.last().headers["authorization"],
        "Bearer sk-mock-upstream-key"
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.user.as_deref(), Some("ann"));
    router.stop().await;
}

/// A browser page of another site posting a form (`Origin`) is still refused (CSRF); the
/// same form from a script (no `Origin`) is forwarded.
#[tokio::test]
async fn a_cross_site_form_is_refused_and_a_scripts_is_not() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = form(&[("model", None, b"[mock]whisper-1")]);
    let response = client()
        .post(router.url("/v1/audio/transcriptions"))
        .header("content-type", form_type())
        .header("origin", "https://elsewhere.example")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (403, &json!("cross_site_request"))
    );
    assert_eq!(upstream.count(), 0);
    let response = post_form(&client(), &router, "/v1/audio/transcriptions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.count(), 1);
    router.stop().await;
}

/// A form with `stream=true` (a streamed transcription) is relayed as the upstream's event
/// stream, byte for byte, and recorded as a stream.
#[tokio::test]
async fn a_streamed_transcription_is_relayed_as_it_came() {
    let events = vec![
        b"data: {\"type\":\"transcript.text.delta\",\"delta\":\"hello\"}\n\n".to_vec(),
        b"data: {\"type\":\"transcript.text.delta\",\"delta\":\" world\"}\n\n".to_vec(),
        b"data: {\"type\":\"transcript.text.done\",\"text\":\"hello world\",\"usage\":{\"type\":\"tokens\",\"input_tokens\":14,\"output_tokens\":45,\"total_tokens\":59}}\n\n".to_vec(),
    ];
    let upstream = MockUpstream::start(Behavior {
        stream_unasked: true,
        raw_chunks: Some(events.clone()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let body = form(&[
        ("model", None, b"[mock]gpt-4o-transcribe"),
        ("file", Some(("a.wav", "audio/wav")), b"RIFF"),
        ("stream", None, b"true"),
    ]);
    let response = post_form(&client(), &router, "/v1/audio/transcriptions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let got = response.bytes().await.expect("body");
    assert_eq!(got.as_ref(), events.concat().as_slice());
    let sent = upstream.last().body;
    assert!(memchr::memmem::find(&sent, b"\r\n\r\ngpt-4o-transcribe\r\n").is_some());
    let record = router.records.nth(1).await;
    assert!(record.stream);
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.upstream_model, "gpt-4o-transcribe");
    let usage = record
        .response
        .usage
        .clone()
        .expect("usage of the done event");
    assert_eq!((usage.input, usage.output), (14, 45));
    router.stop().await;
}

/// A 32 MiB upload whose model the router rewrites reaches the upstream byte for byte, every
/// `model` field rewritten to the last one's model, and the router holds it once, whether it
/// came with a `Content-Length` or chunked: its upstream body shares the client's bytes (it
/// used to be a second, edited copy), and a chunked body's buffer is not grown by doubling
/// (each step a copy the allocator still held: three times the upload at worst).
#[tokio::test]
async fn a_large_rewritten_upload_is_sent_exact_and_held_once() {
    const SIZE: usize = 32 * 1024 * 1024;
    let audio: Vec<u8> = (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let parts = |first: &'static [u8], last: &'static [u8]| {
        form(&[
            ("model", None, first),
            ("file", Some(("speech.wav", "audio/wav")), &audio),
            ("language", None, b"en"),
            ("model", None, last),
        ])
    };
    // Two `model` fields: routed by the last, both rewritten to its model.
    let body = bytes::Bytes::from(parts(b"[mock]whisper-0", b"[mock]whisper-1"));
    let expected = parts(b"whisper-1", b"whisper-1");
    for chunked in [false, true] {
        let upstream = MockUpstream::start(Behavior {
            body: Some(TRANSCRIPTION.into()),
            ..Default::default()
        })
        .await;
        // No sinks, and a new process each time: only this request's memory is measured.
        let router = RouterProcess::start(
            Some(&one_server_config(&upstream.url(), "")),
            &[("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")],
        );
        let send = |body: reqwest::Body| {
            client()
                .post(router.url("/v1/audio/transcriptions"))
                .header("content-type", form_type())
                .body(body)
                .send()
        };
        // A small one first: what the router allocates once is not counted.
        let small = form(&[("model", None, b"[mock]whisper-1"), ("file", None, b"RIFF")]);
        assert_eq!(send(small.into()).await.expect("send").status(), 200);
        let pid = router.child.id();
        let before = crate::support::peak_rss_kib(pid);
        let sent = if chunked {
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..body.len())
                .step_by(16 * 1024)
                .map(|at| Ok(body.slice(at..body.len().min(at + 16 * 1024))))
                .collect();
            reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
        } else {
            reqwest::Body::from(body.clone())
        };
        let response = send(sent).await.expect("send");
        assert_eq!(response.status(), 200, "chunked: {chunked}");
        assert_eq!(response.text().await.expect("answer"), TRANSCRIPTION);
        let grown = crate::support::peak_rss_kib(pid).saturating_sub(before);

        let received = upstream.last();
        assert_eq!(
            received.headers["content-length"],
            expected.len().to_string().as_str()
        );
        assert!(received.body == expected, "the upstream's body differs");
        let limit = (SIZE + SIZE / 2) as u64 / 1024;
        assert!(
            grown < limit,
            "the router's peak grew {grown} KiB for a {} KiB upload (chunked: {chunked})",
            SIZE / 1024
        );
    }
}

/// In a form whose delimiters end in CRLF, a file holding `\n--boundary` and what looks like
/// a `model` part after it is file content, as the upstream's reader (Go's, python-multipart)
/// has it: the router read a part there, routed on its "model" and rewrote it inside the
/// file's bytes (bb54).
#[tokio::test]
async fn a_bare_lf_delimiter_inside_a_crlf_form_is_file_content() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(TRANSCRIPTION.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let file = format!(
        "abc\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n[mock]FILEBYTES"
    );
    let body = form(&[
        ("model", None, b"[mock]whisper-1"),
        (
            "file",
            Some(("a.bin", "application/octet-stream")),
            file.as_bytes(),
        ),
    ]);
    let expected_upstream = form(&[
        ("model", None, b"whisper-1"),
        (
            "file",
            Some(("a.bin", "application/octet-stream")),
            file.as_bytes(),
        ),
    ]);
    let response = post_form(&client(), &router, "/v1/audio/transcriptions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        String::from_utf8_lossy(&upstream.last().body),
        String::from_utf8_lossy(&expected_upstream)
    );
    let record = router.records.nth(1).await;
    assert_eq!(record.requested_model, "[mock]whisper-1");
    assert_eq!(record.upstream_model, "whisper-1");
    router.stop().await;
}
