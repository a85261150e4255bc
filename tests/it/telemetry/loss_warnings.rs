//! Warnings about lost records in the real binary's log: losses within the warning interval
//! are reported once it ends, even when no further loss comes, so the last warning's total
//! is the counter's; and spans an OTLP endpoint rejects in a successful answer
//! (`partial_success`) are counted as failed, with its message, redacted and bounded.

use std::time::Duration;

use serde_json::json;

use super::mock_otlp::MockOtlp;
use super::request_log::{counter, wait_for_counter};
use super::{PUBLIC_KEY, SECRET_KEY};
use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{RouterProcess, one_server_config};

/// The warning interval the router runs with here: long enough that the losses a test makes
/// fall within one interval, short enough that its end comes quickly.
const INTERVAL_MS: &str = "3000";

/// The total (`field=N`) in the last WARN line of `stderr` that contains `phrase`.
fn last_total(stderr: &str, phrase: &str, field: &str) -> Option<u64> {
    let key = format!("{field}=");
    stderr
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(phrase))
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next_back()
}

/// Sends one request, then waits until counter `name` reaches `n` (each loss its own batch).
async fn lose_one(router: &RouterProcess, name: &str, n: u64) {
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 200);
    wait_for_counter(router, name, n, Duration::from_secs(10)).await;
}

/// Polls the router's log until the last warning containing `phrase` gives `field=total`.
async fn wait_for_warning(router: &RouterProcess, phrase: &str, field: &str, total: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while last_total(&router.stderr(), phrase, field) != Some(total) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning with {field}={total}: {}",
            router.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spans lost to an endpoint refusing them, four times within one warning interval: the
/// first loss is warned of at once, the other three once the interval ends, with no new
/// loss after them. Before, the log said `failed=1` and nothing more while the counter said 4.
#[tokio::test]
async fn span_export_failures_within_the_interval_are_reported_when_it_ends() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    // Not retried: each export fails at once.
    otlp.fail_with(400);
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY),
            ("LANGFUSE_SECRET_KEY", SECRET_KEY),
            ("LANGFUSE_HOST", &otlp.origin()),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
            ("LLMSROUTER_TEST_WARNING_INTERVAL_MS", INTERVAL_MS),
        ],
    );
    let name = "llmsrouter_spans_failed_total{destination=\"langfuse\"}";
    for n in 1..=4 {
        lose_one(&router, name, n).await;
    }
    wait_for_warning(&router, "trace export failed", "failed", 4).await;
    assert_eq!(counter(&router, name).await, 4);
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(30)).await.success());
}

/// Request log lines lost to a full disk (`/dev/full`), four within one warning interval:
/// the last warning counts all four.
#[tokio::test]
async fn request_log_lines_lost_within_the_interval_are_reported_when_it_ends() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", "/dev/full"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_TEST_WARNING_INTERVAL_MS", INTERVAL_MS),
        ],
    );
    let name = "llmsrouter_request_log_lines_failed_total";
    for n in 1..=4 {
        lose_one(&router, name, n).await;
    }
    wait_for_warning(&router, "request log: cannot write", "failed", 4).await;
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(30)).await.success());
}

/// An endpoint answering 200 with a `partial_success` that rejects every span: they are
/// failed, not exported, and the warning carries the endpoint's message with the Langfuse
/// secret key redacted, on one line, cut short. Before, all were counted as exported and
/// nothing was said.
#[tokio::test]
async fn spans_an_endpoint_rejects_in_a_partial_success_are_counted_failed() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let message = format!(
        "span refused: {SECRET_KEY}\nsecond line {}",
        "x".repeat(5000)
    );
    otlp.reject_spans(&message);
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY),
            ("LANGFUSE_SECRET_KEY", SECRET_KEY),
            ("LANGFUSE_HOST", &otlp.origin()),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let failed = "llmsrouter_spans_failed_total{destination=\"langfuse\"}";
    for n in 1..=3 {
        lose_one(&router, failed, n).await;
    }
    let exported = "llmsrouter_spans_exported_total{destination=\"langfuse\"}";
    assert_eq!(counter(&router, exported).await, 0);
    assert_eq!(otlp.spans().len(), 3, "they did reach the endpoint");
    let stderr = router.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("the endpoint rejected"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(warning.contains("span refused: [redacted]"), "{warning}");
    assert!(warning.len() < 1000, "bounded: {} bytes", warning.len());
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
    assert!(!stderr.contains("check LANGFUSE_PUBLIC_KEY"), "{stderr}");
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(30)).await.success());
}

/// Request log lines lost while a named pipe had no reader, then written once one came: the
/// warning due at the interval's end counts them and says the loss is over. It said "lines
/// are lost until it works again" seconds after lines were written again.
#[tokio::test]
async fn a_warning_due_after_the_log_works_again_says_the_loss_is_over() {
    use std::io::BufRead;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let data = tempfile::tempdir().expect("dir");
    let pipe = data.path().join("requests.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let pipe_value = pipe.display().to_string();
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LLMSROUTER_LOG_FILE", pipe_value.as_str()),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_TEST_WARNING_INTERVAL_MS", INTERVAL_MS),
        ],
    );
    let failed = "llmsrouter_request_log_lines_failed_total";
    lose_one(&router, failed, 1).await;
    lose_one(&router, failed, 2).await;
    // A reader comes: the next lines are written.
    std::thread::spawn(move || {
        if let Ok(file) = std::fs::File::open(&pipe) {
            for _ in std::io::BufReader::new(file).lines().map_while(Result::ok) {}
        }
    });
    lose_one(&router, "llmsrouter_request_log_lines_written_total", 1).await;
    wait_for_warning(&router, "request log: cannot open", "failed", 2).await;
    let stderr = router.stderr();
    let last = stderr
        .lines()
        .rfind(|l| l.contains(" WARN ") && l.contains("request log: cannot open"))
        .expect("a warning");
    assert!(
        last.contains("lines were lost until it worked again; they are written again now"),
        "{stderr}"
    );
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(30)).await.success());
}

/// Losses within the last warning interval before the router stops are in a warning before
/// it exits, not only in the shutdown summary (an INFO line, gone at `RUST_LOG=warn`): two
/// request log lines lost to a full disk, the second within the interval of the first; and a
/// span export that fails without an answer says why (the OTLP crate says only "network
/// error"; a refused connection and a TLS problem read the same).
#[tokio::test]
async fn losses_of_the_last_interval_are_warned_of_before_exit_and_network_errors_say_why() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY),
            ("LANGFUSE_SECRET_KEY", SECRET_KEY),
            ("LANGFUSE_HOST", &format!("http://127.0.0.1:{closed}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("LLMSROUTER_LOG_FILE", "/dev/full"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_TEST_WARNING_INTERVAL_MS", "600000"),
        ],
    );
    let lines = "llmsrouter_request_log_lines_failed_total";
    for n in 1..=2 {
        lose_one(&router, lines, n).await;
    }
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(40)).await.success());
    let log = router.stderr();
    assert_eq!(
        last_total(&log, "request log: cannot write", "failed"),
        Some(2),
        "{log}"
    );
    assert_eq!(
        last_total(&log, "trace export failed", "failed"),
        Some(2),
        "{log}"
    );
    let export_failure = log
        .lines()
        .rfind(|l| l.contains("trace export failed"))
        .unwrap_or_default();
    assert!(
        export_failure.contains("Connection refused"),
        "{export_failure}"
    );
    let stopped = log
        .lines()
        .find(|l| l.contains("trace exporter stopped"))
        .unwrap_or_default();
    assert!(
        stopped.contains("failed=2") && stopped.contains("retries="),
        "{stopped}"
    );
}

/// Rows lost at shutdown to a lock held past the close deadline are one event, warned of
/// once with every row: the batch under way, then the rest, were two warnings in the same
/// millisecond (`failed=1`, then `failed=3`).
#[tokio::test]
async fn rows_lost_to_a_lock_at_shutdown_are_warned_of_once() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[("LLMSROUTER_LOG_FILE", "")],
    );
    let admin = rusqlite::Connection::open(router.path().join("users.db")).expect("open");
    admin.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    for _ in 0..3 {
        let response = router
            .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let retries = "llmsrouter_ledger_write_retries_total";
    wait_for_counter(&router, retries, 1, Duration::from_secs(20)).await;
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(40)).await.success());
    admin.execute_batch("COMMIT").expect("release the lock");
    let log = router.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("usage ledger: cannot write rows"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("failed=3"), "{log}");
    // The shutdown summary has every figure /metrics has, the retries too.
    let summary = log
        .lines()
        .find(|l| l.contains("usage ledger flushed"))
        .unwrap_or_else(|| panic!("no summary in {log}"));
    assert!(summary.contains("failed=3"), "{summary}");
    assert!(!summary.contains("retries=0"), "{summary}");
    assert!(summary.contains("retries="), "{summary}");
}
