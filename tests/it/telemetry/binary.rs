//! The real binary: `serve` writes the ledger, the request log and Langfuse spans from the
//! environment, flushes them on SIGTERM, and the ledger survives a restart.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use serde_json::json;

use super::mock_otlp::{MockOtlp, str_attr, trace_id};
use super::request_log::read_log_lines;
use super::{PUBLIC_KEY, SECRET_KEY, request_id};
use crate::support::upstream::{Behavior, MockUpstream, PROMPT_TOKENS};
use crate::support::{RouterProcess, one_server_config, run_cli};

/// The variables that turn every sink on: Langfuse at `host` (a batch every `delay_ms`), the
/// ledger in `db`, the request log at `log`.
fn every_sink(host: &str, db: &str, log: &str, delay_ms: &str) -> [(&'static str, String); 6] {
    [
        ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY.to_owned()),
        ("LANGFUSE_SECRET_KEY", SECRET_KEY.to_owned()),
        ("LANGFUSE_HOST", host.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_owned()),
        ("LLMSROUTER_DB", db.to_owned()),
        ("LLMSROUTER_LOG_FILE", log.to_owned()),
    ]
}

#[tokio::test]
async fn serve_records_everything_flushes_on_sigterm_and_the_ledger_survives_restarts() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("ledger.db").display().to_string();
    let log = data.path().join("logs/api_proxy.log").display().to_string();
    // An hour between batches: spans can only arrive through the flush on shutdown.
    let vars = every_sink(&otlp.origin(), &db, &log, "3600000");
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = one_server_config(&upstream.url(), "");
    let mut ids = Vec::new();
    for (round, requests) in [(1, 2), (2, 1)] {
        let mut router = RouterProcess::start(Some(&config), &envs);
        for _ in 0..requests {
            let response = router.chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "hi"}]})).await;
            assert_eq!(response.status(), 200);
            ids.push(request_id(&response));
        }
        router.terminate();
        let status = router.wait_exit(Duration::from_secs(40)).await;
        assert!(status.success(), "{status:?}: {}", router.stderr());

        let spans = otlp.spans();
        assert_eq!(spans.len(), ids.len(), "round {round}: {}", router.stderr());
        for (span, id) in spans.iter().zip(&ids) {
            assert_eq!(&trace_id(&span.span), id);
            assert_eq!(
                str_attr(&span.span, "langfuse.observation.type"),
                Some("generation")
            );
        }
        let (code, stdout, stderr) =
            run_cli(data.path(), &["usage", "--json", "--db", db.as_str()], &[]);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        assert_eq!(report["total"]["requests"], ids.len(), "round {round}");
        assert_eq!(
            report["total"]["input_tokens"],
            ids.len() as u64 * PROMPT_TOKENS
        );
        let lines = read_log_lines(&data.path().join("logs"), "api_proxy");
        assert_eq!(lines.len(), ids.len());
        assert_eq!(
            lines.last().expect("line")["request_id"],
            ids.last().expect("id").as_str()
        );
    }
}

#[test]
fn check_names_a_bad_telemetry_variable_and_shows_destinations() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["check"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &["check"],
        &[
            ("LANGFUSE_PUBLIC_KEY", "pk"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-do-not-print"),
            ("LANGFUSE_HOST", "http://langfuse.local:3000"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "tracing langfuse http://langfuse.local:3000/api/public/otel/v1/traces + otlp http://collector:4318/v1/traces"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-lf-do-not-print"));
}

#[tokio::test]
async fn ledger_false_writes_no_ledger_and_no_log_when_both_are_off() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")],
    );
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    // Nothing recorded, nothing counted: no zeros a dashboard would read as no traffic.
    let metrics = router.metrics(None).await;
    assert!(!metrics.contains("llmsrouter_requests_total"), "{metrics}");
    router.terminate();
    assert!(router.wait_exit(Duration::from_secs(40)).await.success());
    let files: Vec<String> = std::fs::read_dir(router.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["config.yaml"], "no users.db, no request log");
}

/// Langfuse refusing the credentials (401): the spans are lost at once, not retried, and
/// the warning says so and names the variables to check. It used to say "failed after
/// retries", which sent a user looking for an outage.
#[tokio::test]
async fn a_401_from_langfuse_is_a_warning_about_the_credentials() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    otlp.fail_with(401);
    let data = tempfile::tempdir().expect("data dir");
    let vars = [
        ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY.to_owned()),
        ("LANGFUSE_SECRET_KEY", SECRET_KEY.to_owned()),
        ("LANGFUSE_HOST", otlp.origin()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("LLMSROUTER_LEDGER", "false".to_owned()),
        (
            "LLMSROUTER_LOG_FILE",
            data.path().join("a.log").display().to_string(),
        ),
    ];
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &envs);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let name = "llmsrouter_spans_failed_total{destination=\"langfuse\"}";
    super::request_log::wait_for_counter(&router, name, 1, Duration::from_secs(10)).await;
    router.terminate();
    router.wait_exit(Duration::from_secs(30)).await;
    let stderr = router.stderr();
    assert!(stderr.contains("check LANGFUSE_PUBLIC_KEY"), "{stderr}");
    assert!(!stderr.contains("after retries"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
}

/// The router's log after one request whose span the mock OTLP endpoint answers with a
/// `status` redirect to `location`, once the span is counted failed and the router stopped.
async fn log_after_a_redirect(status: u16, location: &str) -> String {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    otlp.redirect(status, location);
    let vars = [
        ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY.to_owned()),
        ("LANGFUSE_SECRET_KEY", SECRET_KEY.to_owned()),
        ("LANGFUSE_HOST", otlp.origin()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("LLMSROUTER_LEDGER", "false".to_owned()),
        ("LLMSROUTER_LOG_FILE", String::new()),
    ];
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &envs);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let name = "llmsrouter_spans_failed_total{destination=\"langfuse\"}";
    super::request_log::wait_for_counter(&router, name, 1, Duration::from_secs(10)).await;
    router.terminate();
    router.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(otlp.hits(), 1, "a redirect is neither followed nor retried");
    router.stderr()
}

/// A 3xx from the trace endpoint (an `http://` LANGFUSE_HOST in front of an https-only
/// one): the warning says the endpoint redirected and what to set, and names where it
/// points when that is a plain URL; one with user info or a query (a signature) is not
/// named. It used to say only `status code: 301`.
#[tokio::test]
async fn a_redirect_from_the_trace_endpoint_is_a_warning_about_the_host() {
    let to = "https://traces.example.com/api/public/otel/v1/traces";
    let stderr = log_after_a_redirect(301, to).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("trace export failed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("status code: 301"), "{line}");
    assert!(line.contains(&format!("it redirects to {to}")), "{line}");
    assert!(
        line.contains(
            "the endpoint redirected: set LANGFUSE_HOST (or OTEL_EXPORTER_OTLP_ENDPOINT) to \
             where it redirects, e.g. https://"
        ),
        "{line}"
    );
    assert!(!line.contains("check LANGFUSE_PUBLIC_KEY"), "{line}");

    let signed = "https://user:pw-SECRET-1@traces.example.com/v1/traces?sig=SIG-SECRET-2";
    let stderr = log_after_a_redirect(307, signed).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("trace export failed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("status code: 307"), "{line}");
    assert!(
        line.contains("the endpoint redirected: set LANGFUSE_HOST"),
        "{line}"
    );
    assert!(!line.contains("redirects to"), "{line}");
    for secret in ["pw-SECRET-1", "SIG-SECRET-2", SECRET_KEY] {
        assert!(!stderr.contains(secret), "{stderr}");
    }
}

/// `GET /metrics` counts what each sink wrote and dropped, in Prometheus text.
#[tokio::test]
async fn metrics_count_what_every_sink_wrote_and_dropped() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("ledger.db").display().to_string();
    let log = data.path().join("api_proxy.log").display().to_string();
    let collector = MockOtlp::start().await;
    let mut vars = every_sink(&otlp.origin(), &db, &log, "50").to_vec();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.origin()));
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &envs);
    for _ in 0..3 {
        let response = router
            .chat(
                &json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let url = router.url("/metrics");
    let fetch = || async {
        let response = crate::support::client()
            .get(&url)
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        response.text().await.expect("text")
    };
    let complete = [
        "llmsrouter_requests_total{outcome=\"success\"} 3",
        "llmsrouter_ledger_rows_written_total 3",
        "llmsrouter_spans_exported_total{destination=\"langfuse\"} 3",
        "llmsrouter_spans_exported_total{destination=\"otlp\"} 3",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = fetch().await;
        if complete.iter().all(|line| text.lines().any(|l| l == *line))
            || tokio::time::Instant::now() >= deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in complete {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    for zero in [
        "llmsrouter_requests_total{outcome=\"upstream_error\"} 0",
        "llmsrouter_requests_total{outcome=\"router_error\"} 0",
        "llmsrouter_requests_total{outcome=\"stream_failed\"} 0",
        "llmsrouter_requests_total{outcome=\"client_disconnected\"} 0",
        "llmsrouter_records_dropped_total 0",
        "llmsrouter_ledger_rows_dropped_total 0",
        "llmsrouter_ledger_rows_failed_total 0",
        "llmsrouter_request_log_lines_dropped_total 0",
        "llmsrouter_spans_dropped_total{destination=\"langfuse\"} 0",
        "llmsrouter_spans_failed_total{destination=\"langfuse\"} 0",
        "# TYPE llmsrouter_spans_exported_total counter",
    ] {
        assert!(text.lines().any(|l| l == zero), "{zero} in:\n{text}");
    }
    assert_eq!(otlp.spans().len(), 3);
    // Each counter is one group under its own HELP and TYPE, as format 0.0.4 wants: the two
    // destinations' span counters were two groups, the second read as untyped by Prometheus.
    let mut groups: Vec<&str> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if groups.last() != Some(&name) {
            assert!(!groups.contains(&name), "{name} in two groups:\n{text}");
            groups.push(name);
            let typed = format!("# TYPE {name} counter");
            assert_eq!(
                text.lines().filter(|l| *l == typed).count(),
                1,
                "{name}:\n{text}"
            );
        }
    }
    // An upstream error is counted under its outcome.
    upstream.set(Behavior {
        status: 500,
        body: Some(r#"{"error":{"message":"down"}}"#.into()),
        ..Default::default()
    });
    let failed = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(failed.status(), 500);
    // An error under a 200 is one too, once its record is read (not a success counted at
    // once).
    upstream.set(Behavior {
        body: Some(r#"{"error":{"message":"quota"}}"#.into()),
        ..Default::default()
    });
    let failed = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(failed.status(), 200);
    let counted = "llmsrouter_requests_total{outcome=\"upstream_error\"} 2";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fetch().await.lines().any(|l| l == counted) {
        assert!(tokio::time::Instant::now() < deadline, "{counted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fetch()
            .await
            .lines()
            .any(|l| l == "llmsrouter_requests_total{outcome=\"success\"} 3"),
        "the error under a 200 is no success"
    );
    upstream.set(Behavior::default());
    // `POST /v1/metrics` is still a path a provider may serve: it is forwarded, not answered.
    let before = upstream.count();
    let forwarded = crate::support::client()
        .post(router.url("/v1/metrics"))
        .json(&json!({"model": "[mock]m"}))
        .send()
        .await
        .expect("forwarded");
    assert_eq!(forwarded.status(), 200);
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(upstream.last().path, "/v1/metrics");
    // Refusals before routing have no record: counted by code all the same.
    let refused = fetch().await;
    assert!(
        !refused.contains("llmsrouter_requests_refused_total"),
        "{refused}"
    );
    for model in ["[nowhere]m", "[nowhere]m", "[mock"] {
        let response = router.chat(&json!({"model": model})).await;
        assert!(response.status().is_client_error());
    }
    let text = fetch().await;
    for line in [
        "llmsrouter_requests_refused_total{code=\"model_not_found\"} 2",
        "llmsrouter_requests_refused_total{code=\"invalid_request\"} 1",
        "# TYPE llmsrouter_requests_refused_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    router.terminate();
    let status = router.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}: {}", router.stderr());
}

/// `OTEL_EXPORTER_OTLP_HEADERS` is read by the OTLP crate for every exporter it builds,
/// Langfuse's included; only the generic destination may send them. Compression, which holds
/// no secret, applies to both.
#[tokio::test]
async fn otlp_headers_from_the_environment_reach_the_collector_and_never_langfuse() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let langfuse = MockOtlp::start().await;
    let collector = MockOtlp::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("ledger.db").display().to_string();
    let log = data.path().join("api_proxy.log").display().to_string();
    let mut vars: Vec<(&str, String)> = every_sink(&langfuse.origin(), &db, &log, "50").into();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.origin()));
    vars.push((
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-team=blue,authorization=Bearer%20collector-token".to_owned(),
    ));
    vars.push(("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_owned()));
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &envs);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);

    let to_collector = collector.span_of(&id).await;
    assert_eq!(to_collector.headers["x-team"], "blue");
    assert_eq!(
        to_collector.headers["authorization"],
        "Bearer collector-token"
    );
    let to_langfuse = langfuse.span_of(&id).await;
    assert!(to_langfuse.headers.get("x-team").is_none());
    assert!(
        to_langfuse.headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    for span in [&to_collector, &to_langfuse] {
        assert_eq!(span.headers["content-encoding"], "gzip");
    }
}

/// A header value with a broken percent escape was sent half-decoded (`%2` kept as it was),
/// so the collector refused every span later with a 401. `check` and `serve` refuse it at
/// once, naming the variable and the entry, never its value (it holds a token).
#[test]
fn a_broken_percent_escape_in_otlp_headers_stops_check_and_serve() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for headers in ["Authorization=Basic%2", "x-team=blue,x=%zz-secret-tok"] {
        let envs = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", headers),
            ("LLMSROUTER_PORT", "0"),
        ];
        // `check` first: were the value accepted, `serve` would start and serve.
        for command in ["check", "serve"] {
            let (code, stdout, stderr) = run_cli(dir.path(), &[command], &envs);
            // `check` finds the environment invalid (1); `serve` was started wrong (2).
            let expected = if command == "check" { 1 } else { 2 };
            assert_eq!(code, expected, "{command} {headers}: {stdout} {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("error: OTEL_EXPORTER_OTLP_HEADERS: entry "),
                "{stderr}"
            );
            assert!(stderr.contains("two hex digits"), "{stderr}");
            for secret in ["Basic", "%zz", "secret-tok"] {
                assert!(!stderr.contains(secret), "{secret} in {stderr}");
            }
        }
    }
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` were ignored: every span's resource said
/// `service.name=llmsrouter`, and Langfuse's environment (`deployment.environment.name`)
/// could not be set. They are honoured as the OpenTelemetry spec says: the service name wins
/// over a `service.name` attribute, values are percent-decoded.
#[tokio::test]
async fn the_span_resource_comes_from_otel_service_name_and_resource_attributes() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let otlp = MockOtlp::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("ledger.db").display().to_string();
    let log = data.path().join("api_proxy.log").display().to_string();
    let mut vars: Vec<(&str, String)> = every_sink(&otlp.origin(), &db, &log, "50").into();
    vars.push(("OTEL_SERVICE_NAME", "gateway-eu".to_owned()));
    vars.push((
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.name=ignored, deployment.environment.name=staging,team=ml%20ops%2Cgpu".to_owned(),
    ));
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &envs);
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let received = otlp.span_of(&request_id(&response)).await;
    let resource: Vec<(String, String)> = received
        .resource
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValueKind::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect();
    let get = |key: &str| {
        resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("service.name"), Some("gateway-eu"), "{resource:?}");
    assert_eq!(get("deployment.environment.name"), Some("staging"));
    assert_eq!(get("team"), Some("ml ops,gpu"));
    assert_eq!(get("service.version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        resource.iter().filter(|(k, _)| k == "service.name").count(),
        1
    );
}

/// A resource attribute list that cannot be read stops `check` and `serve` with one line
/// naming the variable and the entry, never a value.
#[test]
fn a_bad_otel_resource_attributes_stops_check_and_serve() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for (attributes, why) in [
        ("env=prod,secret-tok-123", "has no '='"),
        ("=secret-tok-123", "has an empty key"),
        ("k=secret-tok-123%zz", "two hex digits"),
    ] {
        let envs = [
            ("OTEL_RESOURCE_ATTRIBUTES", attributes),
            ("LLMSROUTER_PORT", "0"),
        ];
        for command in ["check", "serve"] {
            let (code, stdout, stderr) = run_cli(dir.path(), &[command], &envs);
            // `check` finds the environment invalid (1); `serve` was started wrong (2).
            let expected = if command == "check" { 1 } else { 2 };
            assert_eq!(code, expected, "{command} {attributes}: {stdout} {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("error: OTEL_RESOURCE_ATTRIBUTES: entry "),
                "{stderr}"
            );
            assert!(stderr.contains(why), "{stderr}");
            assert!(!stderr.contains("secret-tok"), "{stderr}");
        }
    }
}

/// The trace destinations' credentials are secrets like a configured key to the client too:
/// an upstream error body that echoes the Langfuse secret key or the OTLP endpoint's token
/// reaches the client redacted, as the records have it.
#[tokio::test]
async fn trace_credentials_echoed_by_an_upstream_reach_the_client_redacted() {
    let otlp_token = "otlp-T0ken-abcdefgh1234";
    let echo = json!({"error": {"message": format!("bad: {SECRET_KEY} and Bearer {otlp_token}")}});
    let upstream = MockUpstream::start(Behavior {
        status: 401,
        body: Some(echo.to_string()),
        ..Behavior::default()
    })
    .await;
    let otlp = MockOtlp::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("ledger.db").display().to_string();
    let mut vars = every_sink(&otlp.origin(), &db, "", "100").to_vec();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.origin()));
    vars.push((
        "OTEL_EXPORTER_OTLP_HEADERS",
        format!("Authorization=Bearer {otlp_token}"),
    ));
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = one_server_config(&upstream.url(), "");
    let router = RouterProcess::start(Some(&config), &envs);
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 401, "{}", router.stderr());
    let body = response.text().await.expect("body");
    // The whole header value is a secret, as well as its token.
    assert!(body.contains("bad: [redacted] and [redacted]"), "{body}");
    assert!(
        !body.contains("otlp-T0ken") && !body.contains("sk-lf"),
        "{body}"
    );
}
