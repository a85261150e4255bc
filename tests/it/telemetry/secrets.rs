//! No configured api_key and no client key is written anywhere: every span, every log line
//! and every ledger row is scanned, after requests that carry the keys in bodies, in
//! upstream error messages and in a stream.

use std::collections::HashMap;

use llmsrouter::config::Config;
use llmsrouter::env::EnvSettings;
use serde_json::json;

use super::mock_otlp::MockOtlp;
use super::{PUBLIC_KEY, SECRET_KEY, UPSTREAM_KEY};
use crate::support::upstream::{Behavior, DONE, MockUpstream};
use crate::support::{TestRouter, client, one_server_config};

const CLIENT_KEY: &str = "sk-client-url-target-0001";

#[tokio::test]
async fn no_key_appears_in_any_span_log_line_or_ledger_row() {
    let dir = tempfile::tempdir().expect("dir");
    // An upstream echoes the key it was sent in its error.
    let refusing = |key: &str| Behavior {
        status: 401,
        body: Some(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}"}}}}"#
        )),
        ..Default::default()
    };
    let upstream = MockUpstream::start(refusing(UPSTREAM_KEY)).await;
    let otlp = MockOtlp::start().await;
    let yaml = one_server_config(&upstream.url(), "");
    // The production wiring: settings from the environment, keys from config.yaml.
    let vars: HashMap<&str, String> = HashMap::from([
        ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY.to_owned()),
        ("LANGFUSE_SECRET_KEY", SECRET_KEY.to_owned()),
        ("LANGFUSE_HOST", otlp.origin()),
        ("OTEL_BSP_SCHEDULE_DELAY", "20".to_owned()),
        (
            "LLMSROUTER_LOG_FILE",
            dir.path().join("api_proxy.log").display().to_string(),
        ),
    ]);
    let env = EnvSettings::from_lookup(&|name| vars.get(name).cloned()).expect("env");
    let config = Config::parse(&yaml, &|_| None).expect("config");
    let db = dir.path().join("users.db");
    let sinks = llmsrouter::sinks::start(&env, &config, &db).expect("sinks");
    let router = TestRouter::start_with_sinks(&yaml, sinks, |_| {}).await;
    let http = client();

    // An alias request with the key in its prompt, answered by an error echoing it.
    let response = http
        .post(router.url("/v1/chat/completions"))
        .json(
            &json!({"model": "[mock]gpt-4o", "temperature": 0.1, "stop": UPSTREAM_KEY,
            "messages": [{"role": "user", "content": format!("is {UPSTREAM_KEY} valid?")}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    // The provider's key echoed by the upstream does not reach the client either.
    let text = response.text().await.expect("body");
    assert!(
        !text.contains(UPSTREAM_KEY) && text.contains("[redacted]"),
        "{text}"
    );
    // A URL target: the client's own key goes upstream and comes back in the error.
    upstream.set(refusing(CLIENT_KEY));
    let response = http
        .post(router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin())))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": CLIENT_KEY}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    // A stream whose answer contains the key.
    upstream.set(Behavior {
        raw_chunks: Some(vec![
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"the key is {UPSTREAM_KEY}\"}}}}]}}\n\n"
            )
            .into_bytes(),
            DONE.as_bytes().to_vec(),
        ]),
        ..Default::default()
    });
    let response = http
        .post(router.url("/v1/chat/completions"))
        .header("x-api-key", CLIENT_KEY)
        .json(&json!({"model": "[mock]gpt-4o", "stream": true, "messages": []}))
        .send()
        .await
        .expect("send");
    // The stream's text is the upstream's answer, relayed unchanged; only sinks redact it.
    assert!(response.text().await.expect("body").contains(UPSTREAM_KEY));
    otlp.wait_spans(3).await;
    let records = router.records.all();
    router.stop().await;

    // The records held the keys (the prompt, the stop parameter, the stream's answer), so the
    // scan below can fail.
    let holds = |r: &llmsrouter::record::RequestRecord, key: &str| {
        memchr::memmem::find(&r.request_body, key.as_bytes()).is_some()
            || r.response.content.contains(key)
    };
    assert!(records.iter().filter(|r| holds(r, UPSTREAM_KEY)).count() >= 2);
    assert!(
        records
            .iter()
            .any(|r| r.error.as_deref().is_some_and(|e| e.contains(CLIENT_KEY)))
    );

    let keys = [UPSTREAM_KEY, CLIENT_KEY];
    let exports = otlp.exports();
    assert!(!exports.is_empty());
    let mut redacted_in_spans = false;
    for export in &exports {
        let bytes = &export.body[..];
        for key in keys {
            assert!(
                memchr::memmem::find(bytes, key.as_bytes()).is_none(),
                "{key} in an exported span"
            );
        }
        redacted_in_spans |= memchr::memmem::find(bytes, b"[redacted]").is_some();
    }
    assert!(redacted_in_spans);

    let mut log = String::new();
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("api_proxy.") {
            log.push_str(&std::fs::read_to_string(&path).expect("read log"));
        }
    }
    assert_eq!(log.lines().count(), 3);
    for key in keys {
        assert!(!log.contains(key), "{key} in the request log");
    }
    assert!(log.contains("[redacted]"));

    let conn = llmsrouter::db::open(&db).expect("db");
    let mut statement = conn.prepare("SELECT * FROM usage_ledger").expect("prepare");
    let columns = statement.column_count();
    let rows: Vec<String> = statement
        .query_map([], |row| {
            let mut text = String::new();
            for i in 0..columns {
                let value: rusqlite::types::Value = row.get(i)?;
                text.push_str(&format!("{value:?}|"));
            }
            Ok(text)
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        for key in keys {
            assert!(!row.contains(key), "{key} in a ledger row: {row}");
        }
    }
    assert!(rows.iter().any(|r| r.contains("[redacted]")));
}
