//! No configured api_key, no client credential and no URL target query is written anywhere:
//! every span, every log line and every ledger row is scanned, after requests that carry the
//! keys in bodies, in upstream error messages (raw and JSON-escaped) and in a stream.

use std::collections::HashMap;

use llmsrouter::config::Config;
use llmsrouter::env::EnvSettings;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use serde_json::json;

use super::mock_otlp::MockOtlp;
use super::{PUBLIC_KEY, SECRET_KEY, UPSTREAM_KEY};
use crate::support::upstream::{Behavior, DONE, MockUpstream};
use crate::support::{TestRouter, client, one_server_config};

const CLIENT_KEY: &str = "sk-client-url-target-0001";

/// The router in-process with the three sinks wired as in production (settings from the
/// environment, keys from config.yaml), each writing where the test reads it back.
struct AllSinks {
    router: TestRouter,
    otlp: MockOtlp,
    dir: tempfile::TempDir,
}

/// Everything the sinks wrote, as text: each exported span's strings, each log line, each
/// ledger row.
struct Written {
    spans: Vec<String>,
    log: Vec<String>,
    ledger: Vec<String>,
}

impl AllSinks {
    async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, |_| Vec::new()).await
    }

    /// [`Self::start`] with more environment variables, given the mock OTLP endpoint.
    async fn start_with(
        yaml: &str,
        more: impl FnOnce(&MockOtlp) -> Vec<(&'static str, String)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let otlp = MockOtlp::start().await;
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY.to_owned()),
            ("LANGFUSE_SECRET_KEY", SECRET_KEY.to_owned()),
            ("LANGFUSE_HOST", otlp.origin()),
            ("OTEL_BSP_SCHEDULE_DELAY", "20".to_owned()),
            (
                "LLMSROUTER_LOG_FILE",
                dir.path().join("api_proxy.log").display().to_string(),
            ),
        ]);
        vars.extend(more(&otlp));
        let env = EnvSettings::from_lookup(&|name| vars.get(name).cloned()).expect("env");
        let config = Config::parse(yaml, &|_| None).expect("config");
        let sinks =
            llmsrouter::sinks::start(&env, &config, &dir.path().join("users.db")).expect("sinks");
        let router = TestRouter::start_with_sinks(yaml, sinks, |_| {}).await;
        Self { router, otlp, dir }
    }

    /// Waits for `requests` spans, stops the router (which drains every sink) and reads back
    /// what was written.
    async fn finish(
        self,
        requests: usize,
    ) -> (
        Written,
        Vec<std::sync::Arc<llmsrouter::record::RequestRecord>>,
    ) {
        self.otlp.wait_spans(requests).await;
        let records = self.router.records.all();
        self.router.stop().await;
        let spans = self
            .otlp
            .spans()
            .iter()
            .map(|s| {
                let mut text = String::new();
                for kv in &s.span.attributes {
                    let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else {
                        continue;
                    };
                    match value {
                        AnyValueKind::StringValue(s) => text.push_str(s),
                        AnyValueKind::ArrayValue(array) => {
                            for v in &array.values {
                                if let Some(AnyValueKind::StringValue(s)) = &v.value {
                                    text.push_str(s);
                                }
                            }
                        }
                        _ => {}
                    }
                    text.push('\n');
                }
                if let Some(status) = &s.span.status {
                    text.push_str(&status.message);
                }
                text
            })
            .collect();
        let mut log = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("dir") {
            let path = entry.expect("entry").path();
            if path.to_string_lossy().contains("api_proxy.") {
                let text = std::fs::read_to_string(&path).expect("read log");
                log.extend(text.lines().map(str::to_owned));
            }
        }
        let conn = llmsrouter::db::open(&self.dir.path().join("users.db")).expect("db");
        let mut statement = conn.prepare("SELECT * FROM usage_ledger").expect("prepare");
        let columns = statement.column_count();
        let ledger = statement
            .query_map([], |row| {
                let mut text = String::new();
                for i in 0..columns {
                    match row.get::<_, rusqlite::types::Value>(i)? {
                        rusqlite::types::Value::Text(s) => text.push_str(&s),
                        other => text.push_str(&format!("{other:?}")),
                    }
                    text.push('|');
                }
                Ok(text)
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        (Written { spans, log, ledger }, records)
    }
}

impl Written {
    /// The request log line of request `id`.
    fn log_line(&self, id: &str) -> serde_json::Value {
        self.log
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .find(|l| l["request_id"] == id)
            .expect("the request's line")
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, &String)> {
        let spans = self.spans.iter().map(|t| ("an exported span", t));
        let log = self.log.iter().map(|t| ("the request log", t));
        let ledger = self.ledger.iter().map(|t| ("a ledger row", t));
        spans.chain(log).chain(ledger)
    }

    /// `secret` is nowhere, neither as it is nor written with JSON escapes (once, twice for
    /// a JSON text inside a JSON string, three times for that in a text body quoted).
    fn assert_absent(&self, secret: &str) {
        for (place, text) in self.all() {
            assert_no_secret(place, text, secret);
        }
    }
}

/// Fails when `text` holds `secret` as it is or in a form a JSON parser reads back as it,
/// parsing up to three times.
fn assert_no_secret(place: &str, text: &str, secret: &str) {
    let mut read = text.to_owned();
    for _ in 0..=3 {
        assert!(!read.contains(secret), "{secret} in {place}: {text}");
        read = json_unescaped(&read);
    }
}

/// `text` with every JSON string escape (`\/`, `\u002d`, `\"`, ...) decoded.
fn json_unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) => out.push(decoded),
                    None => out.push_str(&format!("\\u{hex}")),
                }
            }
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other @ ('/' | '"' | '\\')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[tokio::test]
async fn no_key_appears_in_any_span_log_line_or_ledger_row() {
    // An upstream echoes the key it was sent in its error.
    let refusing = |key: &str| Behavior {
        status: 401,
        body: Some(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}"}}}}"#
        )),
        ..Default::default()
    };
    let upstream = MockUpstream::start(refusing(UPSTREAM_KEY)).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let router = &sinks.router;
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
    let (written, records) = sinks.finish(3).await;

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

    assert_eq!(written.log.len(), 3);
    assert_eq!(written.ledger.len(), 3);
    for key in [UPSTREAM_KEY, CLIENT_KEY] {
        written.assert_absent(key);
    }
    assert!(written.spans.iter().any(|t| t.contains("[redacted]")));
    assert!(written.log.iter().any(|t| t.contains("[redacted]")));
    assert!(written.ledger.iter().any(|t| t.contains("[redacted]")));
}

/// The client's error body for a chat request the upstream refuses with 401 and `body` of
/// `content_type`.
async fn refused_with(
    upstream: &MockUpstream,
    sinks: &AllSinks,
    content_type: &str,
    body: &str,
) -> String {
    upstream.set(Behavior {
        status: 401,
        content_type: content_type.to_owned(),
        body: Some(body.to_owned()),
        ..Default::default()
    });
    let response = sinks
        .router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 401);
    response.text().await.expect("body")
}

/// A configured key that the upstream echoes JSON-escaped (PHP writes `/` as `\/`, other
/// encoders `-` as `\u002d`, any character may be `\uXXXX`) is still the key to whoever parses
/// the JSON: neither the client's error body nor any record shows it.
#[tokio::test]
async fn a_configured_key_echoed_with_json_escapes_is_redacted() {
    const KEY: &str = "sk-SLASH/SECRET+key/0123456789";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let yaml = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"{KEY}\"\n",
        upstream.url()
    );
    let sinks = AllSinks::start(&yaml).await;
    let php = KEY.replace('/', "\\/");
    let unicode = KEY.replace('-', "\\u002d");
    // Escapes in the first characters, and in upper case.
    let leading = format!("\\u0073\\u006B{}", &KEY[2..].replace('/', "\\/"));
    let errors = [
        // OpenAI-shaped: relayed as it is.
        (
            "application/json",
            format!(r#"{{"error":{{"message":"Invalid key Bearer {php}","type":"auth"}}}}"#),
        ),
        // Not OpenAI-shaped: wrapped.
        (
            "application/json",
            format!(r#"{{"detail":"Invalid key Bearer {unicode}"}}"#),
        ),
        (
            "application/json",
            format!(r#"{{"error":{{"message":"key {leading} refused"}}}}"#),
        ),
        // Text quoting a JSON document: escaped once more in the log's JSON string.
        ("text/plain", format!(r#"upstream said {{"key":"{php}"}}"#)),
    ];
    for (content_type, body) in &errors {
        let text = refused_with(&upstream, &sinks, content_type, body).await;
        assert_no_secret("the error relayed to the client", &text, KEY);
        assert!(text.contains("[redacted]"), "{text}");
    }
    // A whole answer whose content holds the key escaped: relayed untouched, recorded redacted.
    upstream.set(Behavior {
        body: Some(format!(
            r#"{{"id":"x","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"your key: {unicode}"}},"finish_reason":"stop"}}]}}"#
        )),
        ..Default::default()
    });
    let response = sinks
        .router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("body").contains(&unicode));
    let (written, _) = sinks.finish(errors.len() + 1).await;
    assert_eq!(written.log.len(), errors.len() + 1);
    written.assert_absent(KEY);
}

/// A configured key with `/`, `+` and `=` that the upstream echoes URL-encoded (an error
/// quoting the URL or form it was sent: `%2F`, `%2B`, `%3D`, with or without `/` kept) is
/// redacted as the key itself is, for the client's error body and every record (bb49: the
/// encoded key reached every sink). So are Go's `PathEscape` form (`/` encoded, `+` and `=`
/// kept) and the forms with lower-case hex digits (bb50: not looked for).
#[tokio::test]
async fn a_configured_key_echoed_percent_encoded_is_redacted() {
    const KEY: &str = "Zk9/ab+CD=efGH/ij+KL=mn0123";
    let component = "Zk9%2Fab%2BCD%3DefGH%2Fij%2BKL%3Dmn0123";
    let path = "Zk9/ab%2BCD%3DefGH/ij%2BKL%3Dmn0123";
    let go_path = "Zk9%2Fab+CD=efGH%2Fij+KL=mn0123";
    let lower = "Zk9%2fab%2bCD%3defGH%2fij%2bKL%3dmn0123";
    let forms = [component, path, go_path, lower];
    let upstream = MockUpstream::start(Behavior::default()).await;
    let yaml = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"{KEY}\"\n",
        upstream.url()
    );
    let sinks = AllSinks::start(&yaml).await;
    for encoded in forms {
        let body = format!(
            r#"{{"error":{{"message":"no such key: https://x.test/v1?key={encoded}","type":"auth"}}}}"#
        );
        let text = refused_with(&upstream, &sinks, "application/json", &body).await;
        assert!(!text.contains(encoded), "{text}");
        assert!(text.contains("key=[redacted]"), "{text}");
    }
    let (written, _) = sinks.finish(forms.len()).await;
    assert_eq!(written.log.len(), forms.len());
    for form in std::iter::once(KEY).chain(forms) {
        written.assert_absent(form);
    }
}

/// A configured key holding a backslash, echoed JSON-escaped (`\\`) in a JSON error and in
/// a text error (escaped once more in the log's JSON string), is redacted for the client
/// and every record: at two levels of escaping, the backslash of an escape read one level
/// down was taken for the start of a second escape, and the key went unfound (fuzzing,
/// bb45).
/// So is one whose backslash and the letter after it read as an escape (`\n`, a Windows
/// `CORP\nathan` in a configured header), written as it is or escaped once (bb50): each
/// backslash of the text is read at every depth, not only as the deepest escape it makes.
#[tokio::test]
async fn a_configured_key_with_a_backslash_echoed_escaped_is_redacted() {
    const KEY: &str = r"sk-abc\def-123456";
    const HEADER: &str = r"CORP\nathan-secret-0003";
    let escaped = KEY.replace('\\', r"\\");
    let header_escaped = HEADER.replace('\\', r"\\");
    let upstream = MockUpstream::start(Behavior::default()).await;
    let yaml = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: '{KEY}'\n    headers:\n      X-User: '{HEADER}'\n",
        upstream.url()
    );
    let sinks = AllSinks::start(&yaml).await;
    let errors = [
        (
            "application/json",
            format!(r#"{{"error":{{"message":"bad key {escaped}","type":"auth"}}}}"#),
        ),
        (
            "text/plain",
            format!(r#"upstream said {{"key":"{escaped}"}}"#),
        ),
        (
            "application/json",
            format!(r#"{{"error":{{"message":"user {header_escaped}","type":"auth"}}}}"#),
        ),
        ("text/plain", format!("user {HEADER} unknown")),
    ];
    for (content_type, body) in &errors {
        let text = refused_with(&upstream, &sinks, content_type, body).await;
        assert!(
            !text.contains("def-123456") && !text.contains("athan-secret"),
            "{text}"
        );
    }
    let (written, _) = sinks.finish(errors.len()).await;
    assert_eq!(written.log.len(), errors.len());
    for form in [KEY, escaped.as_str(), "def-123456", "athan-secret-0003"] {
        written.assert_absent(form);
    }
}

/// A configured key that the upstream echoes in another case (`bearer sk-abcdef...` for
/// `sk-AbCdEf...`, or upper-cased) still gives away all but a bit per letter of it: in a 4xx
/// error body and in a 200 answer's content, neither the client's error body nor any span,
/// log line or ledger row shows it in any case (it was recorded in clear: the search was
/// case-sensitive).
#[tokio::test]
async fn a_configured_key_echoed_in_another_case_is_redacted() {
    const KEY: &str = "sk-AbCdEf0123GhIjKlMnOpQr";
    let (lower, upper) = (KEY.to_ascii_lowercase(), KEY.to_ascii_uppercase());
    let upstream = MockUpstream::start(Behavior::default()).await;
    let yaml = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"{KEY}\"\n",
        upstream.url()
    );
    let sinks = AllSinks::start(&yaml).await;
    let errors = [
        // OpenAI-shaped: relayed as it is.
        format!(r#"{{"error":{{"message":"Invalid header: bearer {lower}","type":"auth"}}}}"#),
        // Not OpenAI-shaped: wrapped.
        format!(r#"{{"detail":"INVALID KEY BEARER {upper}"}}"#),
    ];
    for body in &errors {
        let text = refused_with(&upstream, &sinks, "application/json", body).await;
        assert_no_key_in_any_case("the error relayed to the client", &text, KEY);
        assert!(text.contains("[redacted]"), "{text}");
    }
    // Whole answers whose content holds the key: relayed untouched, recorded redacted.
    for echoed in [&lower, &upper] {
        upstream.set(Behavior {
            body: Some(format!(
                r#"{{"id":"x","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"you sent Bearer {echoed}"}},"finish_reason":"stop"}}]}}"#
            )),
            ..Default::default()
        });
        let response = sinks
            .router
            .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
            .await;
        assert_eq!(response.status(), 200);
        assert!(
            response
                .text()
                .await
                .expect("body")
                .contains(echoed.as_str())
        );
    }
    let (written, records) = sinks.finish(errors.len() + 2).await;
    // The records held the answers' key in both cases, so the scan below can fail (an
    // error's record is the error the client got, redacted already).
    for echoed in [&lower, &upper] {
        assert!(
            records
                .iter()
                .any(|r| r.response.content.contains(echoed.as_str()))
        );
    }
    assert_eq!(written.log.len(), errors.len() + 2);
    assert_eq!(written.ledger.len(), errors.len() + 2);
    for (place, text) in written.all() {
        assert_no_key_in_any_case(place, text, KEY);
    }
    assert!(written.spans.iter().any(|t| t.contains("[redacted]")));
    assert!(written.log.iter().any(|t| t.contains("[redacted]")));
    assert!(written.ledger.iter().any(|t| t.contains("[redacted]")));
}

/// [`assert_no_secret`] for `secret` in any ASCII case.
fn assert_no_key_in_any_case(place: &str, text: &str, secret: &str) {
    assert_no_secret(
        place,
        &text.to_ascii_lowercase(),
        &secret.to_ascii_lowercase(),
    );
}

/// Whatever credential a client sends to a URL target (any `Authorization` scheme, a bare
/// token, `x-api-key` beside a Bearer key) goes upstream as it is and may be echoed back:
/// no record shows it.
#[tokio::test]
async fn every_credential_a_client_sent_is_redacted_from_the_records() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let cases: [&[(&str, &str)]; 4] = [
        &[("authorization", "Basic BASICSECRET-gggggggggg==")],
        &[("authorization", "BARETOKEN-hhhhhhhhhh")],
        &[("authorization", "Token  TOKENSECRET-iiiiiiiiii ")],
        &[
            ("authorization", "Bearer BEARERSECRET-jjjjjjjjjj"),
            ("x-api-key", "XKEYSECRET-kkkkkkkkkk"),
        ],
    ];
    let secrets = [
        "BASICSECRET-gggggggggg==",
        "BARETOKEN-hhhhhhhhhh",
        "TOKENSECRET-iiiiiiiiii",
        "BEARERSECRET-jjjjjjjjjj",
        "XKEYSECRET-kkkkkkkkkk",
    ];
    for headers in cases {
        // The upstream echoes what it got, in its error message and its body.
        let echoed: Vec<&str> = headers.iter().map(|(_, value)| value.trim()).collect();
        upstream.set(Behavior {
            status: 401,
            body: Some(
                json!({"error": {"message": format!("Incorrect API key provided: {}", echoed.join(" and "))}})
                    .to_string(),
            ),
            ..Default::default()
        });
        let mut request = client()
            .post(
                sinks
                    .router
                    .url(&format!("/v1/chat/completions?proxy={}", upstream.origin())),
            )
            .json(&json!({"model": "gpt-4o", "messages": []}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401);
        // The credentials went upstream as they were sent (but for the surrounding space).
        let got = upstream.last();
        for (name, value) in headers {
            assert_eq!(got.headers[*name], value.trim());
        }
    }
    let (written, records) = sinks.finish(cases.len()).await;
    // The records held every credential, so the scan below can fail.
    for secret in secrets {
        assert!(
            records
                .iter()
                .any(|r| r.error.as_deref().is_some_and(|e| e.contains(secret))),
            "{secret}"
        );
        written.assert_absent(secret);
    }
    assert_eq!(written.ledger.len(), cases.len());
    assert!(written.log.iter().all(|line| line.contains("[redacted]")));
}

/// A client's credential that the upstream echoes JSON-escaped twice in a body that is not
/// JSON (a text quoting a JSON text quoting the key), as an error and as a text answer: the
/// sinks quote such a body once more, three levels in all, which is in no record (bb73: the
/// request log's `response` and `error` and the span's output held it).
#[tokio::test]
async fn a_credential_escaped_twice_in_a_text_body_is_in_no_record() {
    const SECRET: &str = "TWICESECRET-llllllllll";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let twice = SECRET.replace('-', r"\\u002d");
    let echoed = format!(r#"upstream said: {{"detail":"{{\"key\":\"{twice}\"}}"}}"#);
    for status in [401, 200] {
        upstream.set(Behavior {
            status,
            content_type: "text/plain".to_owned(),
            body: Some(echoed.clone()),
            ..Default::default()
        });
        let response = client()
            .post(
                sinks
                    .router
                    .url(&format!("/v1/chat/completions?proxy={}", upstream.origin())),
            )
            .bearer_auth(SECRET)
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status);
    }
    let (written, records) = sinks.finish(2).await;
    // The records held it, escaped twice (three times in the error's wrapping), so the scan
    // below can fail.
    for record in &records {
        let body = record.response_body.as_deref().unwrap_or_default();
        let body = String::from_utf8_lossy(body);
        let read = json_unescaped(&json_unescaped(&json_unescaped(&body)));
        assert!(read.contains(SECRET), "{body}");
    }
    written.assert_absent(SECRET);
    assert_eq!(written.log.len(), 2);
    for line in &written.log {
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let response = line["response"].to_string();
        assert!(response.contains("[redacted]"), "{line}");
    }
}

/// POSTs a chat request with the client's key to each of `paths` (a `?proxy=` one names an
/// unprefixed model, any other the `mock` server's); each must be answered 200.
async fn post_to_paths(sinks: &AllSinks, paths: &[String]) {
    for path in paths {
        let model = if path.contains("proxy=") {
            "gpt-4o"
        } else {
            "[mock]gpt-4o"
        };
        let response = client()
            .post(sinks.router.url(path))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// A key in the request's path (`/threads/<key>/runs`, a configured key or the client's
/// own pasted into it) goes upstream as sent, and no record shows it: the ledger's
/// `endpoint` and the span's `gen_ai.operation.name` held it in clear (bb61).
#[tokio::test]
async fn a_key_in_the_path_is_redacted_from_every_record() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let paths = [
        format!("/v1/threads/{CLIENT_KEY}/runs?proxy={}", upstream.origin()),
        "/v1/chat/completions/sk-mock-upstream-key".to_owned(),
    ];
    post_to_paths(&sinks, &paths).await;
    let went: Vec<String> = upstream.received().iter().map(|r| r.path.clone()).collect();
    assert!(went.iter().any(|p| p.contains(CLIENT_KEY)), "{went:?}");
    assert!(
        went.iter().any(|p| p.contains("sk-mock-upstream-key")),
        "{went:?}"
    );
    let (written, records) = sinks.finish(paths.len()).await;
    assert!(records.iter().any(|r| r.endpoint.contains(CLIENT_KEY)));
    for secret in [CLIENT_KEY, "sk-mock-upstream-key"] {
        written.assert_absent(secret);
    }
    assert_eq!(written.ledger.len(), paths.len());
    assert!(
        written.ledger.iter().all(|row| row.contains("[redacted]")),
        "{:?}",
        written.ledger
    );
}

/// The same key percent-encoded in the path (`sk%2Dclient...`: any character may be written
/// `%XX`, not only those that must be, in either case, or encoded twice, `%252D`) is found in
/// the decoded path, which the records then show with the key replaced: the ledger, the
/// request log and the span held it encoded.
#[tokio::test]
async fn a_percent_encoded_key_in_the_path_is_redacted_from_every_record() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let encoded_client = CLIENT_KEY.replacen('-', "%2D", 1);
    let encoded_configured = "sk%2dmock-upstream%2Dkey";
    // Encoded twice, in mixed case: `%25` is the `%`.
    let twice_encoded = "sk%252dmock-upstream%252Dkey";
    let paths = [
        format!(
            "/v1/threads/{encoded_client}/runs?proxy={}",
            upstream.origin()
        ),
        format!("/v1/threads/{encoded_configured}/runs"),
        format!("/v1/threads/{twice_encoded}/runs"),
    ];
    post_to_paths(&sinks, &paths).await;
    let (written, records) = sinks.finish(paths.len()).await;
    assert!(
        records.iter().any(|r| r.endpoint.contains(&encoded_client)),
        "{:?}",
        records.iter().map(|r| &r.endpoint).collect::<Vec<_>>()
    );
    for secret in [
        CLIENT_KEY,
        &encoded_client,
        "sk-mock-upstream-key",
        encoded_configured,
        "mock-upstream%2Dkey",
        twice_encoded,
        "mock-upstream%252Dkey",
    ] {
        written.assert_absent(secret);
    }
    assert_eq!(written.ledger.len(), paths.len());
    for rows in [&written.ledger, &written.log] {
        assert!(
            rows.iter()
                .all(|row| row.contains("/threads/[redacted]/runs")),
            "{rows:?}"
        );
    }
}

/// A client's `Authorization: Basic <base64>` reaches a URL target as sent, and the upstream
/// may quote it decoded (`user alice:... refused`, or the password alone): no record shows
/// the decoded `user:password` or the password, as none shows the base64 text.
#[tokio::test]
async fn a_clients_basic_credentials_are_redacted_decoded_too() {
    use base64::Engine as _;
    const USER_PASSWORD: &str = "alice:BASICPASSWORD123";
    const PASSWORD: &str = "BASICPASSWORD123";
    let basic = base64::engine::general_purpose::STANDARD.encode(USER_PASSWORD);
    let upstream = MockUpstream::start(Behavior {
        status: 401,
        body: Some(
            json!({"error": {"message": format!("user {USER_PASSWORD} refused (Basic {basic})")}})
                .to_string(),
        ),
        ..Default::default()
    })
    .await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let url = sinks
        .router
        .url(&format!("/v1/chat/completions?proxy={}", upstream.origin()));
    let send = || {
        client()
            .post(&url)
            .header("authorization", format!("Basic {basic}"))
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
    };
    assert_eq!(send().await.expect("send").status(), 401);
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    // An answer quoting the password alone.
    upstream.set(Behavior {
        body: Some(
            json!({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": format!("your password: {PASSWORD}")},
                "finish_reason": "stop"}]})
            .to_string(),
        ),
        ..Default::default()
    });
    let response = send().await.expect("send");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");

    let (written, records) = sinks.finish(2).await;
    for secret in [USER_PASSWORD, PASSWORD, basic.as_str()] {
        assert!(records.iter().any(|r| record_holds(r, secret)), "{secret}");
        written.assert_absent(secret);
    }
    // Each form replaced where it stood, the message around them kept.
    assert!(
        written
            .log
            .iter()
            .any(|l| l.contains("user [redacted] refused (Basic [redacted])"))
    );
}

/// A URL target's query may carry a key (`[http://host/v1?key=...]model`, or `?proxy=` with a
/// query): the upstream gets it, the records show `?[redacted]` in the model, the logged
/// request body included, and an upstream that quotes the key's value has it redacted.
#[tokio::test]
async fn a_url_targets_query_is_redacted_from_every_record() {
    const PREFIX_KEY: &str = "QSECRET-aaaaaaaaaaaa";
    const PROXY_KEY: &str = "QSECRET-bbbbbbbbbbbb";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let origin = upstream.origin();

    let model = format!("[{origin}/v1?key={PREFIX_KEY}]gpt-4o");
    let response = sinks
        .router
        .chat(&json!({"model": model, "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let prefixed = super::request_id(&response);
    assert_eq!(
        upstream.last().query.as_deref(),
        Some(format!("key={PREFIX_KEY}").as_str())
    );

    upstream.set(Behavior {
        status: 403,
        body: Some(format!(
            r#"{{"error":{{"message":"key {PROXY_KEY} may not use this model"}}}}"#
        )),
        ..Default::default()
    });
    let proxy = format!("{origin}/v1?key={PROXY_KEY}")
        .replace(':', "%3A")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('=', "%3D");
    let response = client()
        .post(
            sinks
                .router
                .url(&format!("/v1/chat/completions?proxy={proxy}")),
        )
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 403);
    assert_eq!(
        upstream.last().query.as_deref(),
        Some(format!("key={PROXY_KEY}").as_str())
    );

    let (written, records) = sinks.finish(2).await;
    // The records held both keys, so the scan below can fail.
    assert!(memchr::memmem::find(&records[0].request_body, PREFIX_KEY.as_bytes()).is_some());
    assert!(
        records[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains(PROXY_KEY))
    );
    let line: serde_json::Value = written
        .log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|l| l["request_id"] == prefixed.as_str())
        .expect("the prefixed request's line");
    let shown = format!("[{origin}/v1?[redacted]]gpt-4o");
    assert_eq!(line["model"], shown.as_str());
    assert_eq!(line["request"]["model"], shown.as_str());
    assert_eq!(line["request"]["temperature"], 0.2);
    written.assert_absent(PREFIX_KEY);
    written.assert_absent(PROXY_KEY);
}

/// Whether `record` holds `secret` in its error, its answer's text or body, or its request
/// body: what the sinks write of it, so a scan for `secret` in what they wrote can fail.
fn record_holds(record: &llmsrouter::record::RequestRecord, secret: &str) -> bool {
    let in_bytes = |bytes: &[u8]| memchr::memmem::find(bytes, secret.as_bytes()).is_some();
    record.error.as_deref().is_some_and(|e| e.contains(secret))
        || record.response.content.contains(secret)
        || record.response_body.as_deref().is_some_and(in_bytes)
        || in_bytes(&record.request_body)
}

/// The client's own query may carry a key (`?key=AIza...`, as Gemini's clients send it,
/// `access_token`, `sig`): it goes upstream with the request, to an alias or a URL target,
/// by `POST`, `GET` or `DELETE`, beside a `?proxy=` URL's own query. An upstream that echoes
/// its request line (in an error, in an answer) gets none of those values into a record,
/// as written or decoded; `api-version` and the other parameters stay as they are.
#[tokio::test]
async fn a_clients_credential_query_values_are_in_no_record() {
    const ALIAS_KEY: &str = "CLIENTQUERYSECRET1";
    const TOKEN_SENT: &str = "TOKQUERY%2Dsecret+22";
    const TOKEN: &str = "TOKQUERY-secret 22";
    const PROXY_QUERY_KEY: &str = "PROXYQUERYSECRET33";
    const BESIDE_PROXY_KEY: &str = "CLIENTQUERYSECRET2";
    const GET_TOKEN: &str = "GETQUERYSECRET44";
    const DELETE_SIG: &str = "DELQUERYSECRET55";
    let upstream = MockUpstream::start(Behavior {
        status: 400,
        echo: true,
        ..Default::default()
    })
    .await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let origin = upstream.origin();
    let http = client();
    let chat = |query: String, prompt: &str| {
        http.post(sinks.router.url(&format!("/v1/chat/completions?{query}")))
            .json(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": prompt}]}))
            .send()
    };

    // An alias, the key echoed in a 400, then in a 200's answer; the decoded token quoted
    // in the prompt.
    let response = chat(format!("key={ALIAS_KEY}&api-version=2024-10-21"), "hi")
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let refused = super::request_id(&response);
    upstream.set(Behavior {
        echo: true,
        ..Default::default()
    });
    let response = chat(
        format!("key={ALIAS_KEY}&token={TOKEN_SENT}"),
        &format!("mine: {TOKEN}"),
    )
    .await
    .expect("send");
    assert_eq!(response.status(), 200);
    // A whole answer is relayed as it came: the client sees its own key.
    assert!(response.text().await.expect("body").contains(ALIAS_KEY));
    assert_eq!(
        upstream.last().query.as_deref(),
        Some(format!("key={ALIAS_KEY}&token={TOKEN_SENT}").as_str())
    );

    // `?proxy=` with a query of its own and the client's key beside it.
    upstream.set(Behavior {
        status: 400,
        echo: true,
        ..Default::default()
    });
    let proxy = format!("{origin}/v1%3Fk%3D{PROXY_QUERY_KEY}");
    let response = http
        .post(sinks.router.url(&format!(
            "/v1/chat/completions?proxy={proxy}&key={BESIDE_PROXY_KEY}"
        )))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    assert_eq!(
        upstream.last().query.as_deref(),
        Some(format!("k={PROXY_QUERY_KEY}&key={BESIDE_PROXY_KEY}").as_str())
    );

    // A forwarded `GET` and `DELETE`.
    let url = |path: &str, query: String| {
        sinks
            .router
            .url(&format!("/v1/{path}?proxy={origin}/v1&{query}"))
    };
    let response = http
        .get(url("files", format!("access_token={GET_TOKEN}&limit=2")))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let response = http
        .delete(url("files/file-1", format!("sig={DELETE_SIG}")))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    assert_eq!(upstream.last().method, "DELETE");

    let (written, records) = sinks.finish(5).await;
    let secrets = [
        ALIAS_KEY,
        TOKEN_SENT,
        TOKEN,
        PROXY_QUERY_KEY,
        BESIDE_PROXY_KEY,
        GET_TOKEN,
        DELETE_SIG,
    ];
    for secret in secrets {
        assert!(records.iter().any(|r| record_holds(r, secret)), "{secret}");
        written.assert_absent(secret);
    }
    // Only the values: the request line's other parameters are as they went.
    let line = written.log_line(&refused);
    let error = line["error"].as_str().expect("the upstream's error");
    assert!(
        error.contains("?key=[redacted]&api-version=2024-10-21"),
        "{error}"
    );
    assert!(written.log.iter().any(|l| l.contains("&limit=2")));
}

/// A URL prefix's user info (`[http://user:password@host/v1]model`) is refused as a target,
/// but under `?proxy=` the prefix names none and the request goes through: no record shows
/// the user info, as written or percent-decoded; the model reads `[http://[redacted]@...]`.
#[tokio::test]
async fn a_url_prefixs_user_info_under_proxy_is_redacted_from_every_record() {
    const PASSWORD: &str = "PSECRET-cccccccccc";
    const TOKEN: &str = "tok_UISECRET-dddddddddd";
    const ENCODED: &str = "ESECRET%2Deeeeeeeeee";
    const DECODED: &str = "ESECRET-eeeeeeeeee";
    const QUERY_KEY: &str = "QSECRET-ffffffffff";
    // Passwords pasted with a `#` or `/` unescaped: the URL is malformed, the user info is
    // still everything up to the last `@`.
    const HASH: &str = "HA#SECRET-gggggggggg";
    const SLASH: &str = "SL/SECRET-hhhhhhhhhh";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let origin = upstream.origin();
    let host = origin.replace("http://", "");
    let url = sinks
        .router
        .url(&format!("/v1/chat/completions?proxy={origin}/v1"));
    let models = [
        format!("[http://u:{PASSWORD}@{host}/v1]m1"),
        format!("[http://{TOKEN}@{host}/v1]m1"),
        format!("[http://user:{ENCODED}@{host}/v1?key={QUERY_KEY}]m1"),
        format!("[http://u:{HASH}@{host}/v1]m1"),
        format!("[http://u:{SLASH}@{host}/v1]m1"),
    ];
    let mut ids = Vec::new();
    for model in &models {
        let body = json!({"model": model, "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]});
        let response = client().post(&url).json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200, "{model}");
        ids.push(super::request_id(&response));
        assert_eq!(upstream.last().json()["model"], "m1", "?proxy= wins");
    }

    let (written, records) = sinks.finish(models.len()).await;
    // The records held each secret, so the scan below can fail.
    for secret in [PASSWORD, TOKEN, ENCODED, HASH, SLASH] {
        assert!(
            records
                .iter()
                .any(|r| memchr::memmem::find(&r.request_body, secret.as_bytes()).is_some()),
            "{secret}"
        );
    }
    let shown = [
        format!("[http://[redacted]@{host}/v1]m1"),
        format!("[http://[redacted]@{host}/v1]m1"),
        format!("[http://[redacted]@{host}/v1?[redacted]]m1"),
        format!("[http://[redacted]@{host}/v1]m1"),
        format!("[http://[redacted]@{host}/v1]m1"),
    ];
    for (id, shown) in ids.iter().zip(&shown) {
        let line = written.log_line(id);
        assert_eq!(line["model"], shown.as_str());
        assert_eq!(line["request"]["model"], shown.as_str());
        assert_eq!(line["request"]["temperature"], 0.2);
    }
    let records: Vec<&str> = records.iter().map(|r| r.requested_model.as_str()).collect();
    assert_eq!(
        records,
        shown.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(written.spans.len(), models.len());
    for secret in [
        PASSWORD,
        TOKEN,
        ENCODED,
        DECODED,
        QUERY_KEY,
        "SECRET-gggg",
        "SECRET-hhhh",
    ] {
        written.assert_absent(secret);
    }
}

/// Under `?proxy=`, the user info of a URL in a model the router does not read as a URL
/// target (`[ftp://...]`, `[http//...]`, `[[http://...]]`), and in the id of a forwarded
/// `GET`/`DELETE /v1/models/<id>` (as sent or percent-encoded), is in no record: the model,
/// the logged body's model and the endpoint read `[redacted]` in its place.
#[tokio::test]
async fn user_info_in_any_model_text_or_model_id_is_redacted_from_every_record() {
    const PASSWORD: &str = "pw-secret-77";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let origin = upstream.origin();
    let host = origin.replace("http://", "");
    let proxy = format!("?proxy={origin}/v1");
    let url = sinks.router.url(&format!("/v1/chat/completions{proxy}"));
    let models = [
        (
            format!("[ftp://bob:{PASSWORD}@{host}]m1"),
            format!("[ftp://[redacted]@{host}]m1"),
        ),
        (
            format!("[http//bob:{PASSWORD}@{host}]m1"),
            format!("[http//[redacted]@{host}]m1"),
        ),
        (
            format!("[[http://bob:{PASSWORD}@{host}/v1]]m1"),
            format!("[[http://[redacted]@{host}/v1]]m1"),
        ),
    ];
    let mut ids = Vec::new();
    for (model, _) in &models {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let response = client().post(&url).json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200, "{model}");
        ids.push(super::request_id(&response));
    }
    let id = format!("[http://bob:{PASSWORD}@{host}/v1]m1");
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    for (method, id) in [
        (reqwest::Method::GET, &id),
        (reqwest::Method::DELETE, &encoded),
    ] {
        let path = sinks.router.url(&format!("/v1/models/{id}{proxy}"));
        let response = client().request(method, path).send().await.expect("send");
        assert_eq!(response.status(), 200, "{id}");
    }

    let (written, records) = sinks.finish(models.len() + 2).await;
    // The records held the password, so the scan below can fail.
    assert!(
        records
            .iter()
            .any(|r| memchr::memmem::find(&r.request_body, PASSWORD.as_bytes()).is_some())
    );
    for (id, (_, shown)) in ids.iter().zip(&models) {
        let line = written.log_line(id);
        assert_eq!(line["model"], shown.as_str());
        assert_eq!(line["request"]["model"], shown.as_str());
    }
    // The path as sent has its doubled slashes merged; the encoded one is shown decoded.
    let endpoints: Vec<&str> = records.iter().map(|r| r.endpoint.as_str()).collect();
    for shown in [
        format!("GET /models/[http:/[redacted]@{host}/v1]m1"),
        format!("DELETE /models/[http://[redacted]@{host}/v1]m1"),
    ] {
        assert!(endpoints.contains(&shown.as_str()), "{endpoints:?}");
    }
    assert_eq!(written.spans.len(), models.len() + 2);
    written.assert_absent(PASSWORD);
}

/// Under `?proxy=`, a password pasted with a `#`, `/` or `?` unescaped into a URL in model
/// text the router does not read as a URL target (`[[http://...]]`, `[ftp://...]`) is in no
/// record: such a URL is malformed, and its user info reaches to its last `@`, as a URL
/// target's does. An `@` in a well-formed URL's path is still none.
#[tokio::test]
async fn a_password_with_a_slash_or_hash_in_any_model_text_is_in_no_record() {
    const HASH: &str = "HA#SECRET-iiiiiiiiii";
    const SLASH: &str = "SL/SECRET-jjjjjjjjjj";
    const QUESTION: &str = "QU?SECRET-kkkkkkkkkk";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    let origin = upstream.origin();
    let host = origin.replace("http://", "");
    let url = sinks
        .router
        .url(&format!("/v1/chat/completions?proxy={origin}/v1"));
    let models = [
        (
            format!("[[http://bob:{HASH}@{host}/v1]]m1"),
            format!("[[http://[redacted]@{host}/v1]]m1"),
        ),
        (
            format!("[[http://bob:{SLASH}@{host}/v1]]m1"),
            format!("[[http://[redacted]@{host}/v1]]m1"),
        ),
        (
            format!("[ftp://bob:{QUESTION}@{host}]m1"),
            format!("[ftp://[redacted]@{host}]m1"),
        ),
        (
            format!("[[http://{host}/v1/@org]]m1"),
            format!("[[http://{host}/v1/@org]]m1"),
        ),
    ];
    let mut ids = Vec::new();
    for (model, _) in &models {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let response = client().post(&url).json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200, "{model}");
        ids.push(super::request_id(&response));
    }

    let (written, records) = sinks.finish(models.len()).await;
    // The records held each password, so the scan below can fail.
    for secret in [HASH, SLASH, QUESTION] {
        assert!(
            records
                .iter()
                .any(|r| memchr::memmem::find(&r.request_body, secret.as_bytes()).is_some()),
            "{secret}"
        );
    }
    for (id, (_, shown)) in ids.iter().zip(&models) {
        let line = written.log_line(id);
        assert_eq!(line["model"], shown.as_str());
        assert_eq!(line["request"]["model"], shown.as_str());
    }
    assert_eq!(written.spans.len(), models.len());
    // The part after the `#`, `/` or `?` is what a reading that stops there left.
    for secret in ["SECRET-iiii", "SECRET-jjjj", "SECRET-kkkk"] {
        written.assert_absent(secret);
    }
}

/// The credentials written into a configured server's `url` (user info, which goes upstream
/// as `Authorization: Basic ...`, and a `?key=` query) are secrets like an `api_key`: an
/// upstream echoing them gets them neither to the client nor into any record.
#[tokio::test]
async fn the_credentials_in_a_configured_url_are_redacted_like_an_api_key() {
    use base64::Engine as _;
    const PASSWORD: &str = "url-PASSWORD-1234";
    const QUERY_KEY: &str = "AIzaURLQUERYKEY-5678";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let host = upstream.origin().replace("http://", "");
    let yaml = format!(
        "servers:\n  ui:\n    url: \"http://user:{PASSWORD}@{host}/v1\"\n  q:\n    url: \"http://{host}/v1?key={QUERY_KEY}\"\n"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{PASSWORD}"));
    let sinks = AllSinks::start(&yaml).await;
    upstream.set(Behavior {
        status: 401,
        body: Some(
            json!({"error": {"message": format!(
                "bad auth: Basic {basic} path /v1/chat/completions?key={QUERY_KEY} ({PASSWORD})"
            )}})
            .to_string(),
        ),
        ..Default::default()
    });
    let secrets = [PASSWORD, QUERY_KEY, basic.as_str()];
    for model in ["[ui]gpt-4o", "[q]gpt-4o"] {
        let prompt = format!("mine: {PASSWORD} {QUERY_KEY}");
        let response = sinks
            .router
            .chat(&json!({"model": model, "messages": [{"role": "user", "content": prompt}]}))
            .await;
        assert_eq!(response.status(), 401);
        let text = response.text().await.expect("body");
        for secret in secrets {
            assert_no_secret("the error relayed to the client", &text, secret);
        }
        assert!(text.contains("Basic [redacted]"), "{text}");
    }
    // They went upstream as configured.
    let posts: Vec<_> = upstream
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        posts[0].headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(
        posts[1].query.as_deref(),
        Some(format!("key={QUERY_KEY}").as_str())
    );
    let (written, records) = sinks.finish(2).await;
    // The records held them (in the prompt), so the scan below can fail.
    assert!(records.iter().all(|r| {
        let holds = |s: &str| memchr::memmem::find(&r.request_body, s.as_bytes()).is_some();
        holds(PASSWORD) && holds(QUERY_KEY)
    }));
    for secret in secrets {
        written.assert_absent(secret);
    }
}

/// Every configured header value is a secret, whatever its name (`X-Org-Sig`, `X-Passwd`,
/// `OpenAI-Organization`, a Bearer token under a name of the provider's choosing), but for
/// the public protocol fields (`anthropic-version`, `X-Title`): an upstream that echoes its
/// request headers in an error hands none of them to the client, and none reaches a record
/// from that error or from an answer quoting them.
#[tokio::test]
async fn every_configured_header_value_is_redacted_but_protocol_ones() {
    const SIG: &str = "SECRETHEADERVAL222";
    const PASSWD: &str = "PASSWDHEADERVAL333";
    const ORG: &str = "org-HEADERVAL444";
    const BEARER: &str = "CUSTOMBEARER555";
    let upstream = MockUpstream::start(Behavior {
        status: 400,
        echo: true,
        ..Default::default()
    })
    .await;
    let headers = format!(
        "    headers:\n      X-Org-Sig: {SIG}\n      X-Passwd: {PASSWD}\n      OpenAI-Organization: {ORG}\n      X-Gateway: \"Bearer {BEARER}\"\n      anthropic-version: \"2023-06-01\"\n      X-Title: \"llmsrouter test app\"\n"
    );
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), &headers)).await;
    let secrets = [SIG, PASSWD, ORG, BEARER];
    let body = json!({"model": "[mock]gpt-4o", "messages": []});
    let response = sinks.router.chat(&body).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    for secret in secrets {
        assert_no_secret("the error relayed to the client", &text, secret);
    }
    // The protocol values are the upstream's words as they were.
    assert!(text.contains("anthropic-version: 2023-06-01"), "{text}");
    assert!(text.contains("x-title: llmsrouter test app"), "{text}");
    assert!(text.contains("x-org-sig: [redacted]"), "{text}");
    // They went upstream as configured.
    let got = upstream.last();
    assert_eq!(got.headers["x-org-sig"], SIG);
    assert_eq!(
        got.headers["x-gateway"],
        format!("Bearer {BEARER}").as_str()
    );
    // An answer quoting them: relayed as it came (only errors are searched), recorded
    // redacted; the Bearer token also on its own, in the prompt.
    upstream.set(Behavior {
        echo: true,
        ..Default::default()
    });
    let prompt = format!("is {BEARER} the gateway's token?");
    let body = json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": prompt}]});
    let response = sinks.router.chat(&body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");

    let (written, records) = sinks.finish(2).await;
    // The answer's record held them (the error's holds what the client got), so the scan
    // below can fail.
    for secret in secrets {
        assert!(records.iter().any(|r| record_holds(r, secret)), "{secret}");
        written.assert_absent(secret);
    }
    assert!(
        written
            .log
            .iter()
            .all(|l| l.contains("anthropic-version: 2023-06-01"))
    );
}

/// The trace destinations' own credentials (the Langfuse secret key and public key, an
/// `OTEL_EXPORTER_OTLP_HEADERS` token) in a prompt reach neither destination nor the request
/// log, as a provider's key does not.
#[tokio::test]
async fn the_trace_destinations_credentials_are_redacted_too() {
    const OTLP_TOKEN: &str = "otlp-TOKEN-abcdef123";
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start_with(&one_server_config(&upstream.url(), ""), |otlp| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.origin()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer%20{OTLP_TOKEN},x-team=ml"),
            ),
        ]
    })
    .await;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{PUBLIC_KEY}:{SECRET_KEY}"),
    );
    let prompt = format!(
        "lf {SECRET_KEY} public {PUBLIC_KEY} otlp {OTLP_TOKEN} basic {basic} provider {UPSTREAM_KEY}"
    );
    let response = sinks
        .router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": [{"role": "user", "content": prompt}]}))
        .await;
    assert_eq!(response.status(), 200);
    // One span for each destination.
    let (written, records) = sinks.finish(2).await;
    assert!(memchr::memmem::find(&records[0].request_body, SECRET_KEY.as_bytes()).is_some());
    assert_eq!(written.spans.len(), 2);
    assert_eq!(written.log.len(), 1);
    assert!(memchr::memmem::find(&records[0].request_body, PUBLIC_KEY.as_bytes()).is_some());
    for secret in [
        SECRET_KEY,
        PUBLIC_KEY,
        OTLP_TOKEN,
        basic.as_str(),
        UPSTREAM_KEY,
    ] {
        written.assert_absent(secret);
    }
    assert!(written.spans.iter().all(|t| t.contains("[redacted]")));
}

/// A key of the router's own form (another user's, say): no sink knows its value, each
/// finds it by its form.
const ROUTER_FORM_KEY: &str = "sk-lr-0123456789abcdefghijABCDEFGHIJkl";

/// Whether `text` ends with a part of `key` (its first 1 to all but one characters).
fn ends_with_part_of(text: &str, key: &str) -> bool {
    (1..key.len()).any(|n| text.ends_with(&key[..n]))
}

impl Written {
    /// No text any sink wrote holds the first six characters of `key` or more (a part the
    /// redaction no longer recognises as the key).
    fn assert_no_part_of(&self, key: &str) {
        for (place, text) in self.all() {
            assert_no_secret(place, text, &key[..6]);
        }
    }
}

/// How a client of a stream reaches the upstream: an alias whose configured key the upstream
/// echoes, or `?proxy=` with the client's own key.
async fn stream_through(sinks: &AllSinks, via_proxy: bool, upstream: &MockUpstream) -> String {
    let body = json!({"model": "[mock]gpt-4o", "stream": true, "messages": []});
    let response = if via_proxy {
        let url = format!("/v1/chat/completions?proxy={}", upstream.origin());
        let body = json!({"model": "gpt-4o", "stream": true, "messages": []});
        client()
            .post(sinks.router.url(&url))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .expect("send")
    } else {
        sinks.router.chat(&body).await
    };
    assert_eq!(response.status(), 200);
    let id = super::request_id(&response);
    response.bytes().await.expect("body");
    id
}

/// An upstream's error event in a stream, whose message is longer than a record keeps
/// (`record::MAX_ERROR_CHARS`) and echoes a key right where it is cut: the record keeps
/// no part of the key, whichever key it is (the configured one, the client's, one of the
/// router's form) and wherever in it the cut falls. A cut made before the sinks redact
/// left the key's first part in the request log's `error`, which no redaction recognised.
#[tokio::test]
async fn a_key_across_a_streamed_errors_cut_is_in_no_record() {
    let limit = llmsrouter::record::MAX_ERROR_CHARS;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start(&one_server_config(&upstream.url(), "")).await;
    // The key, through which door, how far into it the cut falls, and the event's shape.
    let cases = [
        (UPSTREAM_KEY, false, 1, true),
        (UPSTREAM_KEY, false, UPSTREAM_KEY.len() / 2, false),
        (UPSTREAM_KEY, false, UPSTREAM_KEY.len() - 1, true),
        (CLIENT_KEY, true, 1, false),
        (CLIENT_KEY, true, CLIENT_KEY.len() / 2, true),
        (ROUTER_FORM_KEY, false, ROUTER_FORM_KEY.len() - 3, true),
    ];
    let mut ids = Vec::new();
    for (key, via_proxy, inside, openrouter) in cases {
        let message = format!(
            // Long enough after the key to be cut with the key redacted too.
            "{} Bearer {key} was refused: the upstream says so at some length",
            "y".repeat(limit - inside - " Bearer ".len())
        );
        assert_eq!(message.find(key), Some(limit - inside));
        let event = if openrouter {
            format!(
                "data: {}\n\n",
                json!({"error": {"message": message, "code": 401}})
            )
        } else {
            format!(
                "event: error\ndata: {}\n\n",
                json!({"type": "error", "message": message})
            )
        };
        upstream.set(Behavior {
            raw_chunks: Some(vec![event.into_bytes()]),
            ..Default::default()
        });
        ids.push((stream_through(&sinks, via_proxy, &upstream).await, key));
    }
    // A whole error answer from a URL target, echoing the client's key there: the same.
    let inside = CLIENT_KEY.len() / 2;
    let message = format!(
        "{} Bearer {CLIENT_KEY} was refused",
        "y".repeat(limit - inside - " Bearer ".len())
    );
    upstream.set(Behavior {
        status: 401,
        body: Some(json!({"error": {"message": message}}).to_string()),
        ..Default::default()
    });
    let url = format!("/v1/chat/completions?proxy={}", upstream.origin());
    let response = client()
        .post(sinks.router.url(&url))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    ids.push((super::request_id(&response), CLIENT_KEY));
    let (written, records) = sinks.finish(ids.len()).await;
    assert_eq!(records.len(), ids.len());
    for (id, key) in &ids {
        let line = written.log_line(id);
        let error = line["error"].as_str().expect("the upstream's error");
        let (kept, rest) = error.split_once('…').expect("cut");
        assert!(
            rest.starts_with(" (") && rest.ends_with(" bytes)"),
            "{rest}"
        );
        assert!(kept.starts_with("yyy"), "{kept}");
        assert!(
            !ends_with_part_of(kept, key),
            "{key}: {}",
            &kept[kept.len() - 30..]
        );
        // The keys the proxy takes out of an error event it relays are out of the message
        // before it is cut, as out of a whole answer's error: `[redacted]`, not a cut short
        // of the key.
        if *key != CLIENT_KEY {
            assert!(kept.contains(" Bearer ["), "{}", &kept[kept.len() - 30..]);
        }
    }
    for key in [UPSTREAM_KEY, CLIENT_KEY, ROUTER_FORM_KEY] {
        written.assert_no_part_of(key);
    }
}

/// A whole answer whose texts run past what a record keeps (`usage::MAX_STREAM_TEXT`), written
/// with escapes (as some upstreams write every character past ASCII), is recorded as before
/// its text was cut as it is read: the content whole, the reasoning cut at the bound at a
/// character's end, the tool call after it left out, the usage read; the same from the
/// lenient path (a vendor's usage) and with the configured key right across the bound.
#[tokio::test]
async fn a_whole_answers_escaped_texts_are_cut_at_the_bound_as_read() {
    use llmsrouter::sinks::generation::TRUNCATION_MARKER;
    use llmsrouter::usage::MAX_STREAM_TEXT;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start_with(&one_server_config(&upstream.url(), ""), |_| {
        vec![(
            "LLMSROUTER_TRACE_MAX_IO_BYTES",
            (3 * MAX_STREAM_TEXT).to_string(),
        )]
    })
    .await;
    let content = "é\n\"x".repeat(MAX_STREAM_TEXT / 10);
    // The bound falls inside a `😀` (four bytes): the reasoning keeps what is before it.
    let room = MAX_STREAM_TEXT - content.len();
    let reasoning = format!("{}😀{}", "r".repeat(room - 2), "é".repeat(1 << 20));
    let usages = [
        json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
        json!({"input_tokens": 5, "output_tokens": 7}),
    ];
    let escaped = |body: serde_json::Value| {
        body.to_string()
            .replace('é', "\\u00e9")
            .replace('😀', "\\ud83d\\ude00")
    };
    let mut ids = Vec::new();
    for usage in &usages {
        upstream.set(Behavior {
            body: Some(escaped(
                json!({"id": "c", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": content, "reasoning_content": reasoning,
                "tool_calls": [{"id": "t", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]}}],
                "usage": usage}),
            )),
            ..Default::default()
        });
        ids.push(whole_answer(&sinks).await);
    }
    // The configured key across the bound, in a legacy completion's text.
    let before = MAX_STREAM_TEXT - 3 - "Bearer ".len();
    let text = format!("{}Bearer {UPSTREAM_KEY} and on", "é\n".repeat(before / 3));
    let kept_of_text = format!("{}Bearer ", "é\n".repeat(before / 3));
    upstream.set(Behavior {
        body: Some(escaped(
            json!({"id": "c", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
            "usage": usages[0]}),
        )),
        ..Default::default()
    });
    let legacy = whole_answer(&sinks).await;
    let kept_reasoning = format!("{}{TRUNCATION_MARKER}", "r".repeat(room - 2));
    for id in &ids {
        let span = sinks.otlp.span_of(id).await.span;
        let output =
            super::mock_otlp::str_attr(&span, "langfuse.observation.output").expect("output");
        let output: serde_json::Value = serde_json::from_str(output).expect("JSON");
        assert!(output["content"] == content.as_str(), "the content whole");
        assert!(
            output["reasoning_content"] == kept_reasoning.as_str(),
            "{:?}",
            output["reasoning_content"]
                .as_str()
                .map(|r| &r[r.len() - 40..])
        );
        assert!(
            output.get("tool_calls").is_none(),
            "{}",
            &output["tool_calls"]
        );
    }
    let span = sinks.otlp.span_of(&legacy).await.span;
    let output = super::mock_otlp::str_attr(&span, "langfuse.observation.output").expect("output");
    let output: serde_json::Value = serde_json::from_str(output).expect("JSON");
    let wanted = format!("{kept_of_text}{TRUNCATION_MARKER}");
    let got = output["content"].as_str().expect("content");
    assert!(got == wanted, "{}", &got[got.len().saturating_sub(60)..]);
    let (written, _) = sinks.finish(3).await;
    for id in ids.iter().chain([&legacy]) {
        let line = written.log_line(id);
        assert_eq!(line["usage"]["input"], 5, "{line}");
        assert_eq!(line["usage"]["output"], 7, "{line}");
    }
    written.assert_no_part_of(UPSTREAM_KEY);
}

/// Sends one chat request through `sinks`' router and reads its answer whole; its record's id.
async fn whole_answer(sinks: &AllSinks) -> String {
    let response = sinks
        .router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let id = super::request_id(&response);
    response.bytes().await.expect("body");
    id
}

/// A stream whose text runs past what a record keeps (`usage::MAX_STREAM_TEXT`) with a key
/// right across that bound, in the piece that crosses it or split between two pieces there:
/// the request log's content and the span's output (allowed more than the bound) end with
/// the text before the key and the truncation marker, no part of the key; the ledger holds
/// none either. A cut made before the sinks redact left the key's first part.
#[tokio::test]
async fn a_key_across_a_streams_text_bound_is_in_no_record() {
    use llmsrouter::sinks::generation::TRUNCATION_MARKER;
    use llmsrouter::usage::MAX_STREAM_TEXT;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let sinks = AllSinks::start_with(&one_server_config(&upstream.url(), ""), |_| {
        vec![(
            "LLMSROUTER_TRACE_MAX_IO_BYTES",
            (2 * MAX_STREAM_TEXT).to_string(),
        )]
    })
    .await;
    let delta = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        )
        .into_bytes()
    };
    // The key, through which door, how far into it the cut falls, split there or not.
    let cases = [
        (UPSTREAM_KEY, false, 1, false),
        (UPSTREAM_KEY, false, UPSTREAM_KEY.len() - 1, true),
        (CLIENT_KEY, true, CLIENT_KEY.len() / 2, false),
        (ROUTER_FORM_KEY, false, 7, true),
    ];
    let mut ids = Vec::new();
    for (key, via_proxy, inside, split) in cases {
        let before = MAX_STREAM_TEXT - inside - "Bearer ".len();
        let piece = "x".repeat(1024 * 1024);
        let mut events: Vec<Vec<u8>> = (0..before / piece.len()).map(|_| delta(&piece)).collect();
        events.push(delta(&"x".repeat(before % piece.len())));
        if split {
            events.push(delta(&format!("Bearer {}", &key[..inside])));
            events.push(delta(&format!("{} and on", &key[inside..])));
        } else {
            events.push(delta(&format!("Bearer {key} and on")));
        }
        events.push(DONE.as_bytes().to_vec());
        upstream.set(Behavior {
            raw_chunks: Some(events),
            ..Default::default()
        });
        let id = stream_through(&sinks, via_proxy, &upstream).await;
        let span = sinks.otlp.span_of(&id).await.span;
        let output = super::mock_otlp::str_attr(&span, "langfuse.observation.output")
            .expect("output")
            .to_owned();
        ids.push((id, key, before, output));
    }
    // A whole answer as long, with the configured key across the bound: its span's output
    // is the same (the request log keeps the body itself, redacted whole).
    let before = MAX_STREAM_TEXT - 3 - "Bearer ".len();
    let content = format!("{}Bearer {UPSTREAM_KEY} and on", "x".repeat(before));
    upstream.set(Behavior {
        body: Some(
            json!({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
            .to_string(),
        ),
        ..Default::default()
    });
    let response = sinks
        .router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let whole = super::request_id(&response);
    response.bytes().await.expect("body");
    let span = sinks.otlp.span_of(&whole).await.span;
    let output = super::mock_otlp::str_attr(&span, "langfuse.observation.output").expect("output");
    let output: serde_json::Value = serde_json::from_str(output).expect("JSON");
    let wanted = format!("xBearer {TRUNCATION_MARKER}");
    let text = output["content"].as_str().expect("content");
    assert!(text.ends_with(&wanted), "{}", &text[text.len() - 60..]);
    assert_eq!(text.len(), before + wanted.len() - 1);
    let (written, _) = sinks.finish(cases.len() + 1).await;
    for (id, key, before, output) in &ids {
        let line = written.log_line(id);
        let content = line["response"]["content"].as_str().expect("content");
        assert!(
            content.ends_with(&wanted),
            "{key}: {}",
            &content[content.len() - 60..]
        );
        assert_eq!(content.len(), before + wanted.len() - 1, "{key}");
        let output: serde_json::Value = serde_json::from_str(output).expect("JSON");
        assert_eq!(output["content"], content, "{key}");
    }
    for key in [UPSTREAM_KEY, CLIENT_KEY, ROUTER_FORM_KEY] {
        written.assert_no_part_of(key);
    }
}
