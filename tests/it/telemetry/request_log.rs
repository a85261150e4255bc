//! The request log: one JSON line per request in a daily file, with the bodies (or without,
//! with `LLMSROUTER_LOG_BODIES=false`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use llmsrouter::record::RecordSink;
use llmsrouter::secret::Secret;
use llmsrouter::sinks::redact::{REDACTED, Redactor};
use llmsrouter::sinks::request_log::{RequestLogOptions, RequestLogSink};
use serde_json::{Value, json};

use super::{UPSTREAM_KEY, request_id};
use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS};
use crate::support::{RouterProcess, TestRouter, one_server_config, run_cli};

/// A request log at `path` (dated files beside it), with or without bodies, redacting nothing.
pub(crate) fn log_sink(path: std::path::PathBuf, bodies: bool) -> Arc<RequestLogSink> {
    log_sink_redacting(path, bodies, Redactor::default())
}

/// [`log_sink`] with the redactor the router gives it (the configured keys).
fn log_sink_redacting(
    path: std::path::PathBuf,
    bodies: bool,
    redactor: Redactor,
) -> Arc<RequestLogSink> {
    Arc::new(
        RequestLogSink::start(RequestLogOptions {
            path,
            bodies,
            redactor,
        })
        .expect("log"),
    )
}

/// The router in front of `upstream`, its records going to `sink` alone.
async fn router_logging_to(upstream: &MockUpstream, sink: &Arc<RequestLogSink>) -> TestRouter {
    TestRouter::start_with_sinks(
        &one_server_config(&upstream.url(), ""),
        vec![sink.clone() as Arc<dyn RecordSink>],
        |_| {},
    )
    .await
}

/// The one dated file `name.YYYY-MM-DD.log` in `dir`, as lines of JSON.
pub fn read_log_lines(dir: &Path, stem: &str) -> Vec<Value> {
    let file = dated_log_file(dir, stem);
    let name = file.file_name().and_then(|n| n.to_str()).expect("name");
    let date = &name[stem.len() + 1..name.len() - 4];
    assert!(
        llmsrouter::sinks::clock::parse_day(date).is_some(),
        "{name}"
    );
    std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn run(bodies: bool) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sink = log_sink(dir.path().join("logs/api_proxy.log"), bodies);
    let router = router_logging_to(&upstream, &sink).await;
    let mut ids = Vec::new();
    for body in [
        json!({"model": "[mock]gpt-4o", "temperature": 0.5, "messages": [{"role": "user", "content": "a"}]}),
        json!({"model": "[mock]gpt-4o", "stream": true, "messages": [{"role": "user", "content": "b"}]}),
    ] {
        let response = router.chat(&body).await;
        ids.push(request_id(&response));
        let _ = response.bytes().await.expect("body");
    }
    router.stop().await;
    assert_eq!(sink.dropped(), 0);
    (dir, ids)
}

#[tokio::test]
async fn one_json_line_per_request_with_bodies() {
    let (dir, ids) = run(true).await;
    let lines = read_log_lines(&dir.path().join("logs"), "api_proxy");
    assert_eq!(lines.len(), 2);
    let (whole, stream) = (&lines[0], &lines[1]);
    assert_eq!(whole["request_id"], ids[0].as_str());
    assert_eq!(stream["request_id"], ids[1].as_str());
    for line in &lines {
        assert!(super::parse_rfc3339_millis(line["time"].as_str().expect("time")) > 0);
        assert_eq!(line["user"], Value::Null);
        assert_eq!(line["provider"], "mock");
        assert_eq!(line["mode"], "alias");
        assert_eq!(line["model"], "[mock]gpt-4o");
        assert_eq!(line["upstream_model"], "gpt-4o");
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "success");
        assert!(line["latency_ms"].is_u64());
        assert_eq!(line["usage"]["input"], PROMPT_TOKENS);
    }
    assert_eq!(whole["stream"], false);
    assert_eq!(whole["usage"]["output"], 2);
    assert_eq!(whole["request"]["temperature"], 0.5);
    assert_eq!(whole["request"]["messages"][0]["content"], "a");
    assert_eq!(
        whole["response"]["choices"][0]["message"]["content"],
        "Hello there"
    );
    assert_eq!(stream["stream"], true);
    assert!(stream["ttft_ms"].is_u64());
    assert_eq!(stream["usage"]["output"], 3);
    assert_eq!(stream["request"]["messages"][0]["content"], "b");
    assert_eq!(
        stream["response"],
        json!({"content": "tok0 tok1 tok2 ", "finish_reason": "stop"})
    );
}

/// The one dated file `stem.YYYY-MM-DD.log` in `dir`.
fn dated_log_file(dir: &Path, stem: &str) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}.")) && n.ends_with(".log"))
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Its lines hold every user's prompts and answers: a new file is its owner's alone (as the
/// users database), one an admin made readable keeps that mode.
#[cfg(unix)]
#[tokio::test]
async fn a_new_log_file_is_private_and_an_existing_one_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = run(true).await;
    let file = dated_log_file(&dir.path().join("logs"), "api_proxy");
    let mode = |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sink = log_sink(dir.path().join("logs/api_proxy.log"), true);
    let router = router_logging_to(&upstream, &sink).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "c"}]}))
        .await;
    let id = request_id(&response);
    let _ = response.bytes().await.expect("body");
    router.stop().await;
    let lines = read_log_lines(&dir.path().join("logs"), "api_proxy");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["request_id"], id.as_str());
    assert_eq!(mode(&file), 0o640);
}

#[tokio::test]
async fn bodies_can_be_left_out() {
    let (dir, _) = run(false).await;
    let lines = read_log_lines(&dir.path().join("logs"), "api_proxy");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(line.get("request").is_none(), "{line}");
        assert!(line.get("response").is_none(), "{line}");
        assert_eq!(line["usage"]["input"], PROMPT_TOKENS);
    }
}

/// Answers and prompts of megabytes (longer than what one `write()` gathers, and than what a
/// record copies rather than shares) are logged whole, each in its own line between the
/// lines before and after it, with every key in them redacted: the configured key the answer
/// echoes, and the client's own key in the prompt. The client gets the answer as it came.
#[tokio::test]
async fn large_bodies_are_logged_whole_with_their_keys_redacted() {
    let client_key = "sk-client-own-key-0123456789";
    let content = format!(
        "{} {UPSTREAM_KEY}\n{}",
        "x".repeat(3 << 20),
        "y".repeat(1 << 20)
    );
    let answer = json!({"id": "chatcmpl-big", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
    .to_string();
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let sink = log_sink_redacting(
        dir.path().join("api_proxy.log"),
        true,
        Redactor::new([&Secret::new(UPSTREAM_KEY)]),
    );
    let router = router_logging_to(&upstream, &sink).await;
    let prompt = format!("{} {client_key} {}", "p".repeat(2 << 20), "q".repeat(10));
    let small = json!({"model": "[mock]m", "messages": [{"role": "user", "content": "small"}]});
    let big = json!({"model": "[mock]m", "messages": [{"role": "user", "content": prompt}]});
    for (body, answer) in [(&small, None), (&big, Some(&answer)), (&small, None)] {
        upstream.set(Behavior {
            body: answer.cloned(),
            ..Default::default()
        });
        let response = crate::support::client()
            .post(router.url("/v1/chat/completions"))
            .bearer_auth(client_key)
            .json(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        let got = response.text().await.expect("body");
        if let Some(answer) = answer {
            assert_eq!(&got, answer, "relayed as it came");
        }
    }
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    let contents: Vec<&str> = lines
        .iter()
        .map(|l| {
            l["request"]["messages"][0]["content"]
                .as_str()
                .expect("prompt")
        })
        .collect();
    let redacted_prompt = prompt.replace(client_key, REDACTED);
    assert_eq!(contents, ["small", redacted_prompt.as_str(), "small"]);
    let logged = &lines[1]["response"]["choices"][0]["message"]["content"];
    assert_eq!(logged, content.replace(UPSTREAM_KEY, REDACTED).as_str());
    assert_eq!(lines[1]["usage"]["output"], 2);
    assert_eq!(sink.stats().written(), 3);
}

/// What the recorder reads from an answer counts in the bodies records may hold (the body
/// budget): a gzip answer that fits it as it came but not once decoded, with the text read
/// from it, is logged without its bodies, saying so, its usage kept. Uncounted, 24 such
/// answers of 40 MiB queued for the log held 8 MiB of text each past the budget and took the
/// router to 575 MiB. The next answer, which fits, is logged whole: the first gave its share
/// back.
#[tokio::test]
async fn an_answer_past_the_body_budget_once_decoded_is_logged_without_bodies() {
    const BUDGET: usize = 256 << 10;
    let answer = |content: String| {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
                "total_tokens": PROMPT_TOKENS + 2}})
        .to_string()
    };
    let big = crate::support::upstream::gzip(answer("a".repeat(BUDGET)).as_bytes());
    assert!(big.len() < BUDGET / 16, "fits as it came");
    let upstream = MockUpstream::start(Behavior {
        raw_body: Some(big.clone()),
        headers: vec![("content-encoding".into(), "gzip".into())],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let sink = log_sink(dir.path().join("api_proxy.log"), true);
    // Without a key: nothing on the request path decodes what the client takes as it came.
    let config = format!("servers:\n  mock:\n    url: \"{}\"\n", upstream.url());
    let router = TestRouter::start_with_sinks_and_body_budget(
        &config,
        vec![sink.clone() as Arc<dyn RecordSink>],
        BUDGET,
    )
    .await;
    let small = crate::support::upstream::gzip(answer("hi".into()).as_bytes());
    for (n, body) in [&big, &small].into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(body.clone()),
            headers: vec![("content-encoding".into(), "gzip".into())],
            ..Default::default()
        });
        let response = crate::support::client()
            .post(router.url("/v1/chat/completions"))
            .header("accept-encoding", "gzip")
            .json(&json!({"model": "[mock]m", "messages": [{"role": "user", "content": "q"}]}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.expect("body")[..], &body[..]);
        // Recorded before the next is sent: the first holds no share of the budget by then.
        router.records.nth(n + 1).await;
    }
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    assert_eq!(lines.len(), 2);
    let (past, within) = (&lines[0], &lines[1]);
    assert_eq!(
        past["bodies"], "left out: telemetry was too far behind",
        "{past}"
    );
    assert!(past.get("request").is_none() && past.get("response").is_none());
    assert_eq!(past["outcome"], "success");
    assert_eq!(past["usage"]["input"], PROMPT_TOKENS);
    assert_eq!(past["usage"]["output"], 2);
    assert!(within.get("bodies").is_none(), "{within}");
    assert_eq!(within["response"]["choices"][0]["message"]["content"], "hi");
    assert_eq!(within["request"]["messages"][0]["content"], "q");
}

/// An upstream's error message of megabytes is kept to its first 8,192 characters in the
/// record's `error` (it was written whole, beside the whole body that holds it: twice), for a
/// whole error answer and a stream's error event alike; the body itself is logged whole.
#[tokio::test]
async fn a_huge_upstream_error_message_is_cut_in_the_error_field() {
    let message = format!("{}{}", "e".repeat(8192), "f".repeat(100_000));
    let error_body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let sink = log_sink(dir.path().join("api_proxy.log"), true);
    let router = router_logging_to(&upstream, &sink).await;
    upstream.set(Behavior {
        status: 400,
        body: Some(error_body.to_string()),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 400);
    let _ = response.bytes().await.expect("body");
    upstream.set(Behavior {
        raw_chunks: Some(vec![format!("data: {error_body}\n\n").into_bytes()]),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": "[mock]m", "stream": true, "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await.expect("stream");
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    assert_eq!(lines.len(), 2);
    let cut = format!("{}… ({} bytes)", "e".repeat(8192), message.len());
    for line in &lines {
        assert_eq!(line["outcome"], "upstream_error", "{line}");
        assert_eq!(line["error"], cut.as_str());
    }
    assert_eq!(lines[0]["response"]["error"]["message"], message.as_str());
}

/// A stream the router could not send (its upstream refused the connection) has no
/// `response` in its line, as a whole request has none: there was no answer, and
/// `{"content": ""}` read as an empty one.
#[tokio::test]
async fn a_stream_that_got_no_answer_logs_no_response() {
    let dir = tempfile::tempdir().expect("dir");
    let sink = log_sink(dir.path().join("api_proxy.log"), true);
    let router = TestRouter::start_with_sinks(
        &one_server_config(&format!("{}/v1", crate::support::closed_origin()), ""),
        vec![sink.clone() as Arc<dyn RecordSink>],
        |_| {},
    )
    .await;
    for stream in [true, false] {
        let response = router
            .chat(&json!({"model": "[mock]m", "stream": stream, "messages": []}))
            .await;
        assert_eq!(response.status(), 502);
        let _ = response.bytes().await.expect("body");
    }
    router.stop().await;
    let lines = read_log_lines(dir.path(), "api_proxy");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["outcome"], "router_error", "{line}");
        assert!(line.get("response").is_none(), "{line}");
        assert_eq!(line["request"]["model"], "[mock]m");
    }
}

/// Model names of megabytes (the client's, and the upstream's echo) are kept to their first
/// 1,024 characters in a line, as in the ledger; a key crossing the cut is redacted before it,
/// not left half there.
#[tokio::test]
async fn long_model_names_are_cut_in_the_line_after_redaction() {
    let dir = tempfile::tempdir().expect("dir");
    let echoed = format!("e-{}", "é".repeat(300_000));
    let upstream = MockUpstream::start(Behavior {
        model: echoed.clone(),
        ..Default::default()
    })
    .await;
    let sink = log_sink_redacting(
        dir.path().join("logs/api_proxy.log"),
        false,
        Redactor::new([&Secret::new(UPSTREAM_KEY)]),
    );
    let router = router_logging_to(&upstream, &sink).await;
    // The key begins 10 characters before the cut (4 with the prefix) and goes on past it.
    let sent = format!("{}{UPSTREAM_KEY}{}", "m".repeat(1014), "x".repeat(2 << 20));
    let response = router
        .chat(&json!({"model": format!("[mock]{sent}"), "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await.expect("body");
    router.stop().await;
    assert_eq!(sink.dropped(), 0);
    let lines = read_log_lines(&dir.path().join("logs"), "api_proxy");
    assert_eq!(lines.len(), 1);
    let redacted = format!("{}{REDACTED}", "m".repeat(1014));
    let kept = |name: String| name.chars().take(1024).collect::<String>();
    assert_eq!(lines[0]["model"], kept(format!("[mock]{redacted}")));
    assert_eq!(lines[0]["upstream_model"], kept(redacted));
    assert_eq!(lines[0]["response_model"], kept(echoed));
    assert!(!lines[0].to_string().contains(&UPSTREAM_KEY[..6]));
}

#[tokio::test]
async fn start_deletes_only_the_routers_own_old_files_and_keeps_seven() {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path();
    // The Python version's log, and a file the user compressed: not the router's.
    let python_log = "2024-05-01 12:00:00 INFO old Python-version request log\n";
    std::fs::write(logs.join("api_proxy.log"), python_log).expect("write");
    std::fs::write(logs.join("api_proxy.2020-01-01.log.gz"), "gz").expect("write");
    let now = std::time::SystemTime::now();
    let dated = |days_back: u32| {
        let t = now - Duration::from_secs(86_400) * days_back;
        format!("api_proxy.{}.log", llmsrouter::sinks::clock::utc_day(t))
    };
    for back in 1..=9 {
        std::fs::write(logs.join(dated(back)), "{}\n").expect("write");
    }
    let expected = {
        let mut names: Vec<String> = (0..7).map(dated).collect();
        names.extend(["api_proxy.2020-01-01.log.gz".into(), "api_proxy.log".into()]);
        names.sort();
        names
    };
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(logs)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // Started twice on the same day: today's file and the 6 before it, every time.
    for _ in 0..2 {
        let sink = RequestLogSink::start(RequestLogOptions {
            path: logs.join("api_proxy.log"),
            bodies: true,
            redactor: Redactor::default(),
        })
        .expect("log");
        assert_eq!(names(), expected);
        sink.close().await;
    }
    assert_eq!(
        std::fs::read_to_string(logs.join("api_proxy.log")).expect("kept"),
        python_log
    );
}

/// The value of counter `name` (`llmsrouter_..._total`) at the router's `/metrics`.
pub(crate) async fn counter(router: &RouterProcess, name: &str) -> u64 {
    let text = router.metrics(None).await;
    crate::support::metric_sample(&text, name).unwrap_or_else(|| panic!("{name} in:\n{text}"))
}

/// Polls counter `name` at the router's `/metrics` until it reaches `at_least`; panics,
/// with the router's log, after `within`.
pub(crate) async fn wait_for_counter(
    router: &RouterProcess,
    name: &str,
    at_least: u64,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    while counter(router, name).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} < {at_least}: {}",
            router.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends requests until `done` holds; panics after 10 s.
async fn request_until(router: &RouterProcess, mut done: impl AsyncFnMut() -> bool) {
    // Generous: on two cores busy with the rest of the suite, the sink's writer thread
    // and its once-a-second look at the path may lag well behind the requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = router
            .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
        if done().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not done within 30 s: {}",
            router.stderr()
        );
    }
}

/// Lines in today's file of `logs/api_proxy.log` (0 when there is none).
fn todays_lines(logs: &Path) -> usize {
    let today = llmsrouter::sinks::clock::utc_day(std::time::SystemTime::now());
    std::fs::read_to_string(logs.join(format!("api_proxy.{today}.log")))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// The log folder deleted and a file put in its place while `serve` runs: the router notices,
/// counts the lines it cannot write (in `/metrics` and the shutdown summary) with a warning,
/// and once the folder can be made again writes today's file there, not the deleted one.
#[tokio::test]
async fn a_deleted_log_folder_is_made_again_and_lost_lines_are_counted() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let data = tempfile::tempdir().expect("dir");
    let logs = data.path().join("logs");
    let log = logs.join("api_proxy.log").display().to_string();
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", log.as_str()),
            ("LLMSROUTER_LEDGER", "false"),
        ],
    );
    // `> 0`: under load a second request may be sent before the first line is written.
    request_until(&router, async || todays_lines(&logs) > 0).await;

    std::fs::remove_dir_all(&logs).expect("rm -rf logs");
    std::fs::write(&logs, "not a folder").expect("a file instead");
    request_until(&router, async || {
        counter(&router, "llmsrouter_request_log_lines_failed_total").await > 0
    })
    .await;
    assert!(
        router
            .stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("request log: cannot open")),
        "{}",
        router.stderr()
    );

    std::fs::remove_file(&logs).expect("rm logs");
    request_until(&router, async || todays_lines(&logs) > 0).await;
    let failed = counter(&router, "llmsrouter_request_log_lines_failed_total").await;
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(40)).await.success());
    let stderr = router.stderr();
    let summary = stderr
        .lines()
        .find(|l| l.contains("request log flushed"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    assert!(summary.contains(&format!("failed={failed}")), "{summary}");
    // Every word about the log went through the console log's format, none raw.
    for line in stderr.lines().filter(|l| l.contains("request log")) {
        assert!(line.contains(" WARN ") || line.contains(" INFO "), "{line}");
    }
}

/// A folder is no request log: `check` and `serve` both refuse it in one line, rather than
/// writing a dated sibling file next to it.
#[test]
fn a_folder_as_the_request_log_is_refused_by_check_and_serve() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::create_dir(dir.path().join("logs")).expect("mkdir");
    for value in ["logs", "logs/", "new/"] {
        for args in [
            &["check"][..],
            &["serve", "--host", "127.0.0.1", "--port", "0"][..],
        ] {
            let (code, _, stderr) = run_cli(dir.path(), args, &[("LLMSROUTER_LOG_FILE", value)]);
            assert_ne!(code, 0, "{args:?} {value}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("LLMSROUTER_LOG_FILE") && stderr.contains("is a folder"),
                "{stderr}"
            );
        }
    }
    // No `logs.2025-01-31` and no `new.2025-01-31` beside them (the ledger is made first).
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("logs.") || n.starts_with("new")),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("logs"))
            .expect("logs")
            .count(),
        0
    );
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &["check"],
        &[("LLMSROUTER_LOG_FILE", "/dev/null")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("request log /dev/null"), "{stdout}");
}

/// A named pipe `requests.pipe` in `dir`.
fn named_pipe(dir: &Path) -> std::path::PathBuf {
    let pipe = dir.join("requests.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    pipe
}

/// Today's dated file made a named pipe nobody reads does not hold start-up (the router
/// waited in `open` for a reader, listening but answering nothing): it starts, answers, and
/// counts the lines it cannot write, saying why in words.
#[tokio::test]
async fn a_dated_file_that_is_a_pipe_nobody_reads_does_not_hold_start_up() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let data = tempfile::tempdir().expect("dir");
    let today = llmsrouter::sinks::clock::utc_date(std::time::SystemTime::now());
    let made = std::process::Command::new("mkfifo")
        .arg(data.path().join(format!("requests.{today}.log")))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let log = data.path().join("requests.log").display().to_string();
    let router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", log.as_str()),
            ("LLMSROUTER_LEDGER", "false"),
        ],
    );
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    request_until(&router, async || {
        counter(&router, "llmsrouter_request_log_lines_failed_total").await > 0
    })
    .await;
    // Said as what it is, not as ENXIO's "No such device or address".
    let said =
        "no process has the named pipe open for reading yet; lines are lost until it works again";
    crate::support::wait_until(Duration::from_secs(10), || router.stderr().contains(said)).await;
    assert!(
        !router.stderr().contains("No such device"),
        "{}",
        router.stderr()
    );
}

/// A named pipe (a log collector reading it) gets the lines as they are: no dated file is
/// made beside it, and the router starts before the collector does.
#[tokio::test]
async fn a_named_pipe_gets_the_lines_as_they_are() {
    use std::io::BufRead;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let data = tempfile::tempdir().expect("dir");
    let pipe = named_pipe(data.path());
    let pipe_value = pipe.display().to_string();
    let router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", pipe_value.as_str()),
            ("LLMSROUTER_LEDGER", "false"),
        ],
    );
    // The collector comes after the router started; opening waits for the router's side.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_pipe = pipe.clone();
    std::thread::spawn(move || {
        let Ok(file) = std::fs::File::open(&reader_pipe) else {
            return;
        };
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines.len() < 2 {
        let response = router
            .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .await;
        ids.push(request_id(&response));
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        assert!(std::time::Instant::now() < deadline, "{}", router.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for line in &lines {
        let line: Value = serde_json::from_str(line).expect("a whole JSON line");
        let id = line["request_id"].as_str().expect("id");
        assert!(ids.iter().any(|i| i == id), "{id}");
    }
    let names: Vec<String> = std::fs::read_dir(data.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["requests.pipe"]);
}

/// A log collector that opened the named pipe and then stopped reading: the pipe fills and
/// the log writer blocks in `write()`. SIGTERM still ends the router with 0, about 10 s
/// later, with a warning that the writer was left behind. Before, the writer was joined
/// on the runtime's blocking pool, which a runtime waits for as it drops: the process never
/// ended, and further signals did nothing.
#[tokio::test]
async fn shutdown_ends_while_a_stalled_pipe_blocks_the_log_writer() {
    use std::os::unix::fs::OpenOptionsExt;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let data = tempfile::tempdir().expect("dir");
    let pipe = named_pipe(data.path());
    // Opened, never read.
    let _collector = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&pipe)
        .expect("reader");
    let pipe_value = pipe.display().to_string();
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", pipe_value.as_str()),
            ("LLMSROUTER_LEDGER", "false"),
        ],
    );
    // Lines of about 20 KiB: a pipe holds 64 KiB, so the writer blocks within a few.
    let prompt = "x".repeat(20 * 1024);
    let body = json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": prompt}]});
    request_until(&router, async || {
        counter(&router, "llmsrouter_request_log_lines_written_total").await >= 3
    })
    .await;
    for _ in 0..5 {
        assert_eq!(router.chat(&body).await.status(), 200);
    }
    router.terminate();
    let status = router.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(status.code(), Some(0), "{}", router.stderr());
    let stderr = router.stderr();
    assert!(
        stderr.contains("request log writer still blocked"),
        "{stderr}"
    );
    // The lines held up are counted in the warning, not lost without a number: at least the
    // five sent after the writer blocked, less any that still fitted in the pipe.
    let lost: u64 = stderr
        .split("lost=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost= count: {stderr}"));
    assert!(lost >= 1, "{stderr}");
}

/// A 50 MB whole answer logged with its body is written from where the router holds it, not
/// copied into its line: the router's peak grows by about what it takes with bodies left out
/// of the log (the answer relayed), where the line's copy took it up by twice the answer
/// (20 → 125 MiB). A key in the answer is still redacted in the line, and the line is whole.
#[tokio::test]
async fn a_big_answer_is_logged_without_a_copy_of_its_body() {
    const MIB: u64 = 1 << 20;
    let content = format!(
        "{} {UPSTREAM_KEY} {}",
        "a".repeat(25 << 20),
        "b".repeat(25 << 20)
    );
    let body = json!({"id": "chatcmpl-big", "object": "chat.completion", "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
            "total_tokens": PROMPT_TOKENS + 2}})
    .to_string();
    drop(content);
    let size = body.len() as u64;
    let upstream = MockUpstream::start(Behavior {
        body: Some(body),
        ..Default::default()
    })
    .await;
    let router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[("LLMSROUTER_LEDGER", "false")],
    );
    let pid = router.child.id();
    let before = crate::support::peak_rss_kib(pid) * 1024;
    let response = crate::support::client()
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": "[mock]m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").len() as u64, size);
    // The line is written in one `writev()`: a file this long holds it whole.
    let logged = || {
        std::fs::read_dir(router.path()).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("api_proxy.")
                    && e.metadata().is_ok_and(|m| m.len() > size)
            })
        })
    };
    crate::support::wait_until(Duration::from_secs(60), logged).await;
    let grown = (crate::support::peak_rss_kib(pid) * 1024).saturating_sub(before);
    let lines = read_log_lines(router.path(), "api_proxy");
    let content = lines[0]["response"]["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(content.len(), (50 << 20) + 2 + REDACTED.len());
    assert_eq!(content[(25 << 20) + 1..].split(' ').next(), Some(REDACTED));
    eprintln!(
        "peak grew {} MiB for a {} MiB answer",
        grown / MIB,
        size / MIB
    );
    // The answer relayed (held once) and what is in flight to the client; the line's copy
    // took one more answer.
    let limit = size * 3 / 2;
    assert!(
        grown < limit,
        "one {} MiB answer took the peak up {} MiB (limit {} MiB)",
        size / MIB,
        grown / MIB,
        limit / MIB
    );
}
