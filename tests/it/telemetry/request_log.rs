//! The request log: one JSON line per request in a daily file, with the bodies (or without,
//! with `LLMSROUTER_LOG_BODIES=false`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use llmsrouter::record::RecordSink;
use llmsrouter::sinks::redact::Redactor;
use llmsrouter::sinks::request_log::{RequestLogOptions, RequestLogSink};
use serde_json::{Value, json};

use super::request_id;
use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS};
use crate::support::{TestRouter, one_server_config};

/// The one dated file `name.YYYY-MM-DD.log` in `dir`, as lines of JSON.
pub fn read_log_lines(dir: &Path, stem: &str) -> Vec<Value> {
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
    let name = files[0].file_name().and_then(|n| n.to_str()).expect("name");
    let date = &name[stem.len() + 1..name.len() - 4];
    assert!(
        llmsrouter::sinks::clock::parse_day(date).is_some(),
        "{name}"
    );
    std::fs::read_to_string(&files[0])
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn run(bodies: bool) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sink = Arc::new(
        RequestLogSink::start(RequestLogOptions {
            path: dir.path().join("logs/api_proxy.log"),
            bodies,
            redactor: Redactor::default(),
        })
        .expect("log"),
    );
    let router = TestRouter::start_with_sinks(
        &one_server_config(&upstream.url(), ""),
        vec![sink.clone() as Arc<dyn RecordSink>],
        |_| {},
    )
    .await;
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
