//! The usage ledger: totals equal the usage the mock upstream sent (plain, streamed, vendor
//! shapes, errors), one row per request, and `llmsrouter usage` reports the same.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmsrouter::record::RecordSink;
use llmsrouter::sinks::ledger::{LedgerSink, LedgerWaits};
use llmsrouter::sinks::ledger_report::{GroupBy, query};
use llmsrouter::sinks::redact::Redactor;
use serde_json::json;

use super::request_id;
use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS};
use crate::support::{TestRouter, client, one_server_config, run_cli, wait_until};

/// A router whose only sink is a ledger in a fresh database, in front of a mock upstream.
struct LedgerSetup {
    /// Holds the database's folder for the test's length.
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    upstream: MockUpstream,
    ledger: Arc<LedgerSink>,
    router: TestRouter,
}

impl LedgerSetup {
    async fn start() -> Self {
        Self::start_waiting(LedgerWaits::default()).await
    }

    /// [`Self::start`] with a ledger that waits for a locked database as `waits` says.
    async fn start_waiting(waits: LedgerWaits) -> Self {
        Self::start_with(waits, "").await
    }

    /// [`Self::start_waiting`] with `extra` lines in the mock server's config.
    async fn start_with(waits: LedgerWaits, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("users.db");
        let upstream = MockUpstream::start(Behavior::default()).await;
        let ledger =
            Arc::new(LedgerSink::start_waiting(&db, Redactor::default(), waits).expect("ledger"));
        let router = TestRouter::start_with_sinks(
            &one_server_config(&upstream.url(), extra),
            vec![ledger.clone() as Arc<dyn RecordSink>],
            |_| {},
        )
        .await;
        Self {
            dir,
            db,
            upstream,
            ledger,
            router,
        }
    }
}

/// POSTs `body` to the router's chat completions, reads the answer whole; its status and
/// request id.
async fn chat(router: &TestRouter, body: serde_json::Value) -> (reqwest::StatusCode, String) {
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let id = request_id(&response);
    let status = response.status();
    let _ = response.bytes().await.expect("body");
    (status, id)
}

#[tokio::test]
async fn ledger_totals_equal_the_usage_the_upstream_sent() {
    let LedgerSetup {
        dir,
        db,
        upstream,
        ledger,
        router,
    } = LedgerSetup::start().await;
    let mut ids = BTreeSet::new();
    let mut send = async |body: serde_json::Value| {
        let (status, id) = chat(&router, body).await;
        ids.insert(id);
        status
    };
    // Three whole answers: 11 in, 2 out each.
    for _ in 0..3 {
        assert_eq!(
            send(json!({"model": "[mock]gpt-4o", "messages": []})).await,
            200
        );
    }
    // Two streams without include_usage: 11 in, 4 out each.
    upstream.set(Behavior {
        chunks: 4,
        ..Default::default()
    });
    for _ in 0..2 {
        let status = send(json!({"model": "[mock]gpt-4o", "stream": true, "messages": []})).await;
        assert_eq!(status, 200);
    }
    // DeepSeek-style cache hits, reasoning and OpenRouter's cost.
    upstream.set(Behavior {
        body: Some(
            json!({"model": "deepseek-reasoner", "choices": [{"message": {"content": "ok"}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                "prompt_cache_hit_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 25},
                "cost": 0.0042}})
            .to_string(),
        ),
        ..Default::default()
    });
    assert_eq!(
        send(json!({"model": "[mock]deepseek-reasoner", "messages": []})).await,
        200
    );
    // An upstream error: a request, an error, no tokens.
    upstream.set(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"down"}}"#.into()),
        ..Default::default()
    });
    assert_eq!(
        send(json!({"model": "[mock]gpt-4o", "messages": []})).await,
        500
    );
    router.stop().await;
    assert_eq!(ledger.stats().written(), 7);

    let conn = llmsrouter::db::open(&db).expect("open");
    let stored: BTreeSet<String> = conn
        .prepare("SELECT request_id FROM usage_ledger")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(stored, ids, "one row per request, under its request id");

    let report = query(&conn, GroupBy::Provider, None).expect("report");
    let t = &report.total;
    assert_eq!(t.requests, 7);
    assert_eq!(t.input_tokens, 5 * PROMPT_TOKENS + 100);
    assert_eq!(t.output_tokens, 3 * 2 + 2 * 4 + 40);
    assert_eq!(t.total_tokens, 5 * PROMPT_TOKENS + 3 * 2 + 2 * 4 + 140);
    assert_eq!((t.cached_tokens, t.reasoning_tokens), (30, 25));
    assert_eq!(t.cost, Some(0.0042));
    assert_eq!((t.errors, t.partial), (1, 0));

    // The CLI reads the same numbers.
    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) = run_cli(dir.path(), &["usage", "--json", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["by"], "provider");
    assert_eq!(json["rows"][0]["provider"], "mock");
    assert_eq!(json["total"]["requests"], 7);
    assert_eq!(json["total"]["input_tokens"], 5 * PROMPT_TOKENS + 100);
    assert_eq!(json["total"]["output_tokens"], 54);
    assert_eq!(json["total"]["cached_tokens"], 30);
    assert_eq!(json["total"]["reasoning_tokens"], 25);
    assert_eq!(json["total"]["cost"], 0.0042);
    assert_eq!(json["total"]["errors"], 1);

    let (code, stdout, _) = run_cli(dir.path(), &["usage", "--by", "model", "--db", db_arg], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("MODEL") && lines[0].ends_with("ERRORS"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("gpt-4o ") && lines[1].contains(" 6 "),
        "{stdout}"
    );
    assert!(lines[2].starts_with("deepseek-reasoner"), "{stdout}");
    assert!(
        lines[3].starts_with("TOTAL") && lines[3].contains("0.004200"),
        "{stdout}"
    );

    let (code, stdout, _) = run_cli(
        dir.path(),
        &[
            "usage",
            "--by",
            "day",
            "--since",
            "2999-01-01",
            "--json",
            "--db",
            db_arg,
        ],
        &[],
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["total"]["requests"], 0);
    assert_eq!(json["rows"], json!([]));
}

/// A stream from a server that is not asked for usage (`stream_usage: false`) ends well
/// with no token counts: `usage` counts it under NO_USAGE (`no_usage`), not as a request
/// that used none. It showed 0 tokens with nothing said. Errors, requests that name no
/// model, answers with usage and a queued background create are not counted there.
#[tokio::test]
async fn usage_counts_requests_the_upstream_reported_no_usage_for() {
    let LedgerSetup {
        dir,
        db,
        upstream,
        ledger,
        router,
    } = LedgerSetup::start_with(LedgerWaits::default(), "    stream_usage: false\n").await;
    upstream.set(Behavior {
        chunks: 3,
        ..Default::default()
    });
    let send = async |body: serde_json::Value| chat(&router, body).await.0;
    let stream = json!({"model": "[mock]gpt-4o", "stream": true, "messages": []});
    for _ in 0..2 {
        assert_eq!(send(stream.clone()).await, 200);
    }
    assert_eq!(
        send(json!({"model": "[mock]gpt-4o", "messages": []})).await,
        200
    );
    // A background Responses API create answers queued: its read-back done counts its
    // tokens, so it is no usage lost.
    upstream.set(Behavior {
        body: Some(r#"{"id":"resp_1","object":"response","status":"queued","model":"m"}"#.into()),
        ..Default::default()
    });
    let response = client()
        .post(router.url("/v1/responses"))
        .json(&json!({"model": "[mock]m", "input": "hi", "background": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    upstream.set(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"down"}}"#.into()),
        ..Default::default()
    });
    assert_eq!(send(stream).await, 500);
    router.stop().await;
    assert_eq!(ledger.stats().written(), 5);

    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) = run_cli(dir.path(), &["usage", "--json", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["total"]["requests"], 5);
    assert_eq!(json["total"]["no_usage"], 2, "{json}");
    assert_eq!(json["total"]["partial"], 0);
    assert_eq!(
        json["total"]["input_tokens"], PROMPT_TOKENS,
        "the whole answer's"
    );
    let (code, table, _) = run_cli(dir.path(), &["usage", "--db", db_arg], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].ends_with("ERRORS  NO_USAGE"), "{table}");
    assert!(
        lines[2].starts_with("TOTAL") && lines[2].ends_with(" 2"),
        "{table}"
    );
}

#[tokio::test]
async fn usage_reports_per_user_and_day() {
    let LedgerSetup {
        dir,
        db,
        upstream: _upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    router.stop().await;
    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &["usage", "--by", "user", "--json", "--db", db_arg],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        json["rows"][0]["user"],
        serde_json::Value::Null,
        "accounts off"
    );
    // Every flag has a variable; a flag on the line wins over its variable.
    let (code, from_vars, stderr) = run_cli(
        dir.path(),
        &["usage", "--db", db_arg],
        &[("LLMSROUTER_USAGE_BY", "user"), ("LLMSROUTER_JSON", "yes")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&from_vars).expect("json"),
        json
    );
    let (code, later, stderr) = run_cli(
        dir.path(),
        &["usage", "--by", "user", "--db", db_arg],
        &[
            ("LLMSROUTER_USAGE_BY", "model"),
            ("LLMSROUTER_USAGE_SINCE", "2999-01-01"),
            ("LLMSROUTER_JSON", "1"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let later: serde_json::Value = serde_json::from_str(&later).expect("json");
    assert_eq!(later["rows"], json!([]), "nothing since 2999: {later}");
    assert_eq!(
        later["by"], "user",
        "--by beats LLMSROUTER_USAGE_BY: {later}"
    );

    let (code, stdout, _) = run_cli(dir.path(), &["usage", "--by", "day", "--db", db_arg], &[]);
    assert_eq!(code, 0);
    let day = stdout.lines().nth(1).expect("a day row");
    let date = day.split_whitespace().next().expect("date");
    assert!(
        llmsrouter::sinks::clock::parse_day(date).is_some(),
        "{stdout}"
    );
}

#[test]
fn usage_refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, stdout, stderr) = run_cli(dir.path(), &["usage"], &[]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("users.db") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("users.db").exists(),
        "a report never creates a database"
    );

    llmsrouter::db::open(&dir.path().join("users.db")).expect("create");
    for bad in ["2025-02-30", "yesterday", "2025-1-1"] {
        let (code, _, stderr) = run_cli(dir.path(), &["usage", "--since", bad], &[]);
        assert_ne!(code, 0, "{bad}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--since") && stderr.contains(bad),
            "{stderr}"
        );
    }
    let (code, _, stderr) = run_cli(dir.path(), &["usage", "--by", "colour"], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("colour"), "{stderr}");
    let (code, stdout, _) = run_cli(dir.path(), &["usage"], &[]);
    assert_eq!(code, 0, "an empty ledger is an empty report");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("TOTAL")),
        "{stdout}"
    );
}

/// A token count sent as `null` is one the upstream did not give: read as if left out. A
/// usage object with none at all is no usage (`usage_known` false, tokens unknown rather than
/// zero); one with some keeps those, in a stream as in a whole answer. A Responses-style
/// `"input_tokens": null, "output_tokens": 3` lost its output count on the whole-body path.
#[tokio::test]
async fn null_token_counts_are_unknown_like_missing_ones() {
    let LedgerSetup {
        dir: _dir,
        db,
        upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let all_null = json!({"prompt_tokens": null, "completion_tokens": null, "total_tokens": null});
    let output_only = json!({"input_tokens": null, "output_tokens": 3});
    let mut expected = Vec::new();
    for (usage, known, output) in [(&all_null, false, 0), (&output_only, true, 3)] {
        let answer =
            json!({"model": "m", "choices": [{"message": {"content": "hi"}}], "usage": usage});
        upstream.set(Behavior {
            body: Some(answer.to_string()),
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        assert_eq!(response.text().await.expect("body"), answer.to_string());
        expected.push((id.clone(), known, output));
        // The same usage as a stream's usage-only chunk.
        let chunk = json!({"id": "c", "choices": [], "usage": usage});
        upstream.set(Behavior {
            raw_chunks: Some(vec![
                format!("data: {chunk}\n\n").into_bytes(),
                b"data: [DONE]\n\n".to_vec(),
            ]),
            ..Default::default()
        });
        let response = router
            .chat(&json!({"model": "[mock]m", "stream": true, "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let _ = response.bytes().await.expect("stream");
        expected.push((id, known, output));
    }
    router.stop().await;
    let conn = llmsrouter::db::open(&db).expect("open");
    for (id, known, output) in expected {
        let row: (bool, i64, i64, bool) = conn
            .query_row(
                "SELECT usage_known, input_tokens, output_tokens, usage_partial \
                 FROM usage_ledger WHERE request_id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("row");
        assert_eq!(row, (known, 0, output, false), "{id}");
    }
}

/// A model name (and the upstream's echo of it) of megabytes is kept to its first 1,024
/// characters in the row: the ledger does not grow by whatever a client puts there.
#[tokio::test]
async fn long_model_names_are_cut_in_the_row() {
    let LedgerSetup {
        dir: _dir,
        db,
        upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let name = format!("m-{}", "é".repeat(300_000));
    upstream.set(Behavior {
        model: name.clone(),
        ..Default::default()
    });
    let response = router
        .chat(&json!({"model": format!("[mock]{name}"), "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let _ = response.bytes().await.expect("body");
    router.stop().await;
    let conn = llmsrouter::db::open(&db).expect("open");
    let (model, response_model): (String, String) = conn
        .query_row(
            "SELECT model, response_model FROM usage_ledger WHERE request_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    let kept: String = name.chars().take(1024).collect();
    assert_eq!(model, kept);
    assert_eq!(response_model, kept);
}

/// A ledger router with `waits`, another connection holding the database's write lock, and
/// `requests` chat requests answered meanwhile (their rows wait for the lock).
async fn requests_under_a_lock(
    waits: LedgerWaits,
    requests: usize,
) -> (LedgerSetup, rusqlite::Connection) {
    let setup = LedgerSetup::start_waiting(waits).await;
    let admin = llmsrouter::db::open(&setup.db).expect("open");
    admin
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the lock");
    for _ in 0..requests {
        let response = setup
            .router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
    }
    (setup, admin)
}

/// Another connection holds the write lock (an admin's `sqlite3` transaction, a VACUUM) for
/// longer than the ledger's busy timeout: the rows of the requests answered meanwhile are
/// kept and written once it is released, none counted as failed. Before, the batch being
/// tried when the wait ran out (twice) was dropped.
#[tokio::test]
async fn rows_wait_for_a_lock_held_longer_than_the_busy_timeout() {
    let waits = LedgerWaits {
        busy_timeout: Duration::from_millis(50),
        close_deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let (setup, admin) = requests_under_a_lock(waits, 5).await;
    let (ledger, router) = (&setup.ledger, setup.router);
    // Far more attempts than the one retry after which a batch used to be given up.
    wait_until(Duration::from_secs(20), || ledger.stats().retries() >= 3).await;
    assert_eq!((ledger.stats().written(), ledger.stats().failed()), (0, 0));
    admin.execute_batch("COMMIT").expect("release the lock");
    wait_until(Duration::from_secs(20), || ledger.stats().written() == 5).await;
    router.stop().await;
    assert_eq!((ledger.stats().failed(), ledger.dropped()), (0, 0));
    let stored: i64 = admin
        .query_row("SELECT count(*) FROM usage_ledger", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored, 5);
}

/// Shutdown while the lock is still held: the ledger waits for it no longer than its close
/// deadline, then counts what it could not write as failed, and shutdown ends.
#[tokio::test]
async fn shutdown_under_a_lock_that_lasts_counts_the_rows_as_failed() {
    let waits = LedgerWaits {
        busy_timeout: Duration::from_millis(50),
        close_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let (setup, admin) = requests_under_a_lock(waits, 3).await;
    let (ledger, router) = (&setup.ledger, setup.router);
    wait_until(Duration::from_secs(20), || ledger.stats().retries() >= 1).await;
    let stopping = Instant::now();
    router.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!((ledger.stats().written(), ledger.stats().failed()), (0, 3));
    admin.execute_batch("COMMIT").expect("release the lock");
}

/// A Python-era username with a newline (stored in the ledger as the request's user) is
/// printed escaped by `usage --by user`, as `user list` prints it: it cannot forge a second
/// TOTAL row. JSON keeps it as it is.
#[tokio::test]
async fn usage_by_user_escapes_names_as_user_list_does() {
    let LedgerSetup {
        dir,
        db,
        upstream: _upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    router.stop().await;
    let forged = "eve\nTOTAL              9    999";
    llmsrouter::db::open(&db)
        .expect("open")
        .execute("UPDATE usage_ledger SET username = ?1", [forged])
        .expect("rename");
    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) =
        run_cli(dir.path(), &["usage", "--by", "user", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header, eve, TOTAL: {stdout}");
    assert!(lines[1].starts_with("eve\\nTOTAL"), "{stdout}");
    assert!(lines[2].starts_with("TOTAL "), "{stdout}");
    let (_, json, _) = run_cli(
        dir.path(),
        &["usage", "--by", "user", "--json", "--db", db_arg],
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["rows"][0]["user"], forged);
}

/// A database of the previous schema (version 3, made by its DDL, with a row in its ledger)
/// gains the `audio_seconds` column when the router opens it, keeps its row (no audio
/// seconds), and the router writes a `whisper-1` transcription's seconds there;
/// `llmsrouter usage` shows them, in `--json` and as the table's last column.
#[tokio::test]
async fn a_previous_ledger_gains_audio_seconds_and_usage_shows_them() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("create");
        for step in &llmsrouter::db::MIGRATIONS[..3] {
            step.apply(&conn).expect("previous DDL");
        }
        conn.pragma_update(None, "user_version", 3)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO usage_ledger (request_id, started_at, day, username, provider, mode,
                endpoint, model, response_model, stream, status, outcome, error, latency_ms,
                ttft_ms, input_tokens, output_tokens, total_tokens, cached_tokens,
                cache_creation_tokens, reasoning_tokens, cost, usage_known, usage_partial)
             VALUES ('old', '2025-01-31T09:05:03.123Z', '2025-01-31', NULL, 'mock', 'alias',
                '/chat/completions', 'gpt-4o', NULL, 0, 200, 'success', NULL, 10, NULL,
                5, 2, 7, 0, 0, 0, NULL, 1, 0);",
        )
        .expect("an old row");
    }
    let upstream = MockUpstream::start(Behavior::default()).await;
    let ledger = Arc::new(LedgerSink::start(&db, Redactor::default()).expect("ledger"));
    let router = TestRouter::start_with_sinks(
        &one_server_config(&upstream.url(), ""),
        vec![ledger.clone() as Arc<dyn RecordSink>],
        |_| {},
    )
    .await;
    let answer = json!({"text": "hello", "usage": {"type": "duration", "seconds": 7}});
    upstream.set(Behavior {
        raw_body: Some(answer.to_string().into_bytes()),
        content_type: "application/json".into(),
        ..Default::default()
    });
    let response = client()
        .post(router.url("/v1/audio/transcriptions"))
        .json(&json!({"model": "[mock]whisper-1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    router.stop().await;

    let conn = llmsrouter::db::open(&db).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, llmsrouter::db::current_version());
    let seconds = |request_id: &str| -> Option<i64> {
        conn.query_row(
            "SELECT audio_seconds FROM usage_ledger WHERE request_id = ?1",
            [request_id],
            |r| r.get(0),
        )
        .expect("the row")
    };
    assert_eq!(seconds("old"), None, "the old row is kept, with no seconds");
    assert_eq!(seconds(&id), Some(7));

    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) = run_cli(dir.path(), &["usage", "--json", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["total"]["requests"], 2, "{report}");
    assert_eq!(report["total"]["audio_seconds"], 7, "{report}");
    let (code, table, stderr) = run_cli(dir.path(), &["usage", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let header = table.lines().next().expect("header");
    assert!(
        header.starts_with("PROVIDER") && header.ends_with("ERRORS  AUDIO_SECONDS"),
        "{table}"
    );
    let total = table.lines().last().expect("total");
    assert!(
        total.starts_with("TOTAL") && total.ends_with(" 7"),
        "{table}"
    );
}

/// Seconds of audio with a fraction (`9.7`, as some upstreams bill) are kept: the ledger's
/// column holds them as a REAL (a whole number stays an INTEGER), and `llmsrouter usage` sums
/// them to the millisecond, in `--json` and in the table, a whole sum without a fraction.
#[tokio::test]
async fn fractional_audio_seconds_are_kept_in_the_ledger_and_usage() {
    let LedgerSetup {
        dir,
        db,
        upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let mut ids = Vec::new();
    for seconds in [json!(9.7), json!(0.6), json!(7)] {
        let answer = json!({"text": "hello", "usage": {"type": "duration", "seconds": seconds}});
        upstream.set(Behavior {
            raw_body: Some(answer.to_string().into_bytes()),
            content_type: "application/json".into(),
            ..Default::default()
        });
        let response = client()
            .post(router.url("/v1/audio/transcriptions"))
            .json(&json!({"model": "[mock]whisper-1"}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
    }
    router.stop().await;

    let conn = llmsrouter::db::open(&db).expect("open");
    let stored = |request_id: &str| -> (String, f64) {
        conn.query_row(
            "SELECT typeof(audio_seconds), audio_seconds FROM usage_ledger WHERE request_id = ?1",
            [request_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the row")
    };
    assert_eq!(stored(&ids[0]), ("real".to_owned(), 9.7));
    assert_eq!(stored(&ids[1]), ("real".to_owned(), 0.6));
    assert_eq!(stored(&ids[2]), ("integer".to_owned(), 7.0));

    let db_arg = db.to_str().expect("utf8");
    let (code, stdout, stderr) = run_cli(dir.path(), &["usage", "--json", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["total"]["audio_seconds"], 17.3, "{report}");
    let (code, table, stderr) = run_cli(dir.path(), &["usage", "--db", db_arg], &[]);
    assert_eq!(code, 0, "{stderr}");
    let total = table.lines().last().expect("total");
    assert!(
        total.starts_with("TOTAL") && total.ends_with(" 17.3"),
        "{table}"
    );
}

/// The database deleted while the router runs (a cleanup script, a mistaken `rm`): the rows
/// of the requests after it went into the unlinked file, counted as written, and `usage`
/// found no database. The writer now opens the path again (within a second) and its rows
/// land there.
#[tokio::test]
async fn a_database_deleted_while_serving_is_made_again_and_written() {
    let LedgerSetup {
        dir: _dir,
        db,
        upstream: _upstream,
        ledger: _ledger,
        router,
    } = LedgerSetup::start().await;
    let chat = json!({"model": "[mock]m", "messages": []});
    assert_eq!(router.chat(&chat).await.status(), 200);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(&name);
    }
    let rows_in_the_new_file = || {
        std::fs::metadata(&db).ok()?;
        llmsrouter::db::open_to_read(&db)
            .ok()?
            .query_row("SELECT count(*) FROM usage_ledger", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(router.chat(&chat).await.status(), 200);
        if rows_in_the_new_file().is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rows in a new file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router.stop().await;
}
