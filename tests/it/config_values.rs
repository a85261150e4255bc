//! Values from config.yaml, `.env` and the environment, as the real router reads them: a
//! number-like scalar kept as written, a `.env` value with a NUL, variables that are empty
//! or not UTF-8. Each is either used exactly as given or refused naming where it came from,
//! never quietly changed or taken as unset, and no message shows a value.

use serde_json::json;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{RouterProcess, TestRouter, run_cli, run_cli_bytes};

/// Number-like scalars reach the upstream exactly as written in config.yaml: `0123456789`
/// was sent as `Bearer 123456789`, `1.10` as `1.1`, and a long number lost digits.
#[tokio::test]
async fn number_like_scalars_reach_the_upstream_as_written() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: 0123456789\n    headers: {{X-Version: 1.10, X-Big: 12345678901234567890123, X-Exp: 1234e12}}\n  listed:\n    url: \"{}\"\n    override: [1234e12, 0x1F, 1.10]\n",
        upstream.url(),
        upstream.url()
    );
    let router = TestRouter::start(&config).await;
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.headers["authorization"], "Bearer 0123456789");
    assert_eq!(got.headers["x-version"], "1.10");
    assert_eq!(got.headers["x-big"], "12345678901234567890123");
    assert_eq!(got.headers["x-exp"], "1234e12");

    let list: serde_json::Value = crate::support::client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .filter(|id| id.starts_with("[listed]"))
        .collect();
    assert_eq!(ids, ["[listed]1234e12", "[listed]0x1F", "[listed]1.10"]);
}

/// `api_key: 8e4512345678` is a key like any other: it failed with a message that printed
/// it ("non-finite float `8e4512345678` rejected ...").
#[test]
fn a_key_that_reads_as_a_huge_number_loads() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    api_key: 8e4512345678\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(!stderr.contains("8e4512345678"), "{stderr}");
}

/// A `.env` value with a NUL byte (no environment variable can hold one) is skipped and
/// named by its line number, as every unreadable line is: `check` fails on it, the other
/// commands warn and go on, the lines after it still count. Before, every command panicked
/// (exit 101) with a message that printed the value.
#[tokio::test]
async fn a_nul_in_a_dot_env_value_skips_that_line_alone() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        b"APP_TITLE=ok\nOPENROUTER_API_KEY=sk-or-secret-123456\x00\nENABLE_ACCOUNT_MANAGEMENT=true\n"
            .as_slice(),
    )
    .expect("env");
    let line = ".env line 2: the value holds a NUL byte";
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: {line}")), "{stderr}");
    for args in [&["models", "--json"][..], &["user", "list"], &["usage"]] {
        let (code, _, stderr) = run_cli(dir.path(), args, &[]);
        assert_ne!(code, 101, "{args:?} panicked: {stderr}");
        assert!(
            stderr.starts_with(&format!("warning: {line}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "{args:?}: {stderr}");
    }
    let router = RouterProcess::start_in(dir, &[]);
    let response = router.chat(&json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), 401, "the line after it still counts");
    let log = router.stderr();
    assert!(log.contains(line), "{log}");
    assert!(!log.contains("secret"), "{log}");
}

/// A variable whose value is not UTF-8 stops `check` (exit status 1, or 2 for a flag's
/// variable) and `serve` (2, as every bad variable) naming it, never shown and never taken
/// as unset: `ENABLE_ACCOUNT_MANAGEMENT` so read ran the router open, `LLMSROUTER_PORT` passed `check` and got clap's "invalid
/// UTF-8 ... in one or more arguments" from `serve`.
#[test]
fn a_variable_that_is_not_utf8_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "ENABLE_ACCOUNT_MANAGEMENT",
            b"tru\xc3e",
            "ENABLE_ACCOUNT_MANAGEMENT: is not UTF-8 text",
        ),
        (
            "LANGFUSE_HOST",
            b"https://lf.example\xff",
            "LANGFUSE_HOST: is not UTF-8 text",
        ),
        (
            "HTTPS_PROXY",
            b"http://p\xff",
            "HTTPS_PROXY: is not UTF-8 text",
        ),
        (
            "LLMSROUTER_PORT",
            b"80\xff",
            "LLMSROUTER_PORT is not UTF-8 text (saved in another encoding?): fix its value, or unset it (it stands for --port)",
        ),
        (
            "LLMSROUTER_HOST",
            b"127.0.0.\xff",
            "LLMSROUTER_HOST is not UTF-8 text",
        ),
    ];
    for (name, value, expected) in cases {
        for args in [&["check"][..], &["serve"]] {
            // On a free loopback port, but for the variable under test.
            let mut envs = vec![(*name, *value)];
            for (listen, given) in [
                ("LLMSROUTER_PORT", &b"0"[..]),
                ("LLMSROUTER_HOST", b"127.0.0.1"),
            ] {
                if *name != listen {
                    envs.push((listen, given));
                }
            }
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &envs);
            // `check` says an environment it finds invalid with 1, a flag's variable too
            // (its contract: 0 valid, 1 not); `serve` stops with 2.
            let status = if args[0] == "check" { 1 } else { 2 };
            assert_eq!(code, status, "{name} {args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with(&format!("error: {expected}")),
                "{name} {args:?}: {stderr}"
            );
        }
    }
}

/// `${K}` in config.yaml with K not UTF-8 is named as such (it was "K is not set"); with K
/// set but empty (`docker --env-file` leaves a missing value so, and the real variable hides
/// `.env`'s) it is refused as the router's own empty variables are: the server used to get
/// no key at all, in silence. Neither message shows a value.
#[test]
fn a_config_variable_empty_or_not_utf8_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    api_key: \"${K}\"\n",
    )
    .expect("config");
    std::fs::write(dir.path().join(".env"), "K=sk-from-dotenv\n").expect("env");
    let cases: &[(&[u8], &str)] = &[
        (
            b"",
            "error: ./config.yaml: servers.a.api_key: environment variable K is set but empty",
        ),
        (
            b"sk-\xff-secret",
            "error: ./config.yaml: servers.a.api_key: environment variable K is not UTF-8 text",
        ),
    ];
    for (value, expected) in cases {
        for args in [
            &["check"][..],
            &["serve", "--host", "127.0.0.1", "--port", "0"],
        ] {
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[("K", value)]);
            assert_eq!(code, 1, "{args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
            assert!(
                !stderr.contains("sk-from-dotenv") && !stderr.contains("secret"),
                "{stderr}"
            );
        }
    }
}

/// A variable the router would use that is set but empty is refused by `check` and `serve`
/// alike (exit status 2), as `LLMSROUTER_PORT=` is: `LANGFUSE_HOST=` (a value missing from
/// a `docker --env-file`) silently meant Langfuse Cloud, sending a self-hosted user's
/// prompts to a third party.
#[test]
fn an_empty_variable_in_use_is_refused_not_defaulted() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let keys = [
        ("LANGFUSE_PUBLIC_KEY", "pk-lf-selfhosted"),
        ("LANGFUSE_SECRET_KEY", "sk-lf-selfhosted"),
    ];
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("LANGFUSE_HOST", &[keys[0], keys[1], ("LANGFUSE_HOST", "")]),
        (
            "LANGFUSE_BASE_URL",
            &[keys[0], keys[1], ("LANGFUSE_BASE_URL", "")],
        ),
        (
            "LLMSROUTER_TRACE_MAX_IO_BYTES",
            &[("LLMSROUTER_TRACE_MAX_IO_BYTES", "")],
        ),
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            &[("OTEL_BSP_SCHEDULE_DELAY", "")],
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
        ),
    ];
    for (name, envs) in cases {
        for args in [
            &["check"][..],
            &["serve", "--host", "127.0.0.1", "--port", "0"],
        ] {
            let envs: Vec<(&str, &[u8])> = envs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &envs);
            // `check` says an environment it finds invalid with 1, a flag's variable too
            // (its contract: 0 valid, 1 not); `serve` stops with 2.
            let status = if args[0] == "check" { 1 } else { 2 };
            assert_eq!(code, status, "{name} {args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert_eq!(
                stderr.trim(),
                format!("error: {name}: is set but empty: unset it, or give it a value"),
                "{args:?}"
            );
        }
    }
}

/// A proxy variable the upstream client cannot use stops `check` (exit status 1) and `serve`
/// (2) with one line naming the variable, never the proxy's credentials. The client's proxy
/// matcher skipped an unreadable proxy in silence, so requests went straight to the
/// provider; a `socks5://` one failed every request with 502.
#[test]
fn a_proxy_the_upstream_client_cannot_use_stops_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let not_a_proxy = "is not a proxy URL such as http://host:port or http://user:password@host:port (its value is not shown: it may hold a password)";
    let cases: &[(&str, &str, String)] = &[
        (
            "HTTP_PROXY",
            "http://[bad",
            format!("HTTP_PROXY: {not_a_proxy}"),
        ),
        ("ALL_PROXY", "http://[bad", format!("ALL_PROXY: {not_a_proxy}")),
        (
            "https_proxy",
            "http://me:hunter2@proxy host:3128",
            format!("https_proxy: {not_a_proxy}"),
        ),
        (
            "HTTPS_PROXY",
            "http://me:hunter2@proxy:99999",
            format!("HTTPS_PROXY: {not_a_proxy}"),
        ),
        (
            "HTTP_PROXY",
            "http://me:hunter2@x@proxy:3128",
            "HTTP_PROXY: holds more than one @ before its host: percent-encode an @ in the user name or password as %40 (its value is not shown: it may hold a password)".to_owned(),
        ),
        (
            "ALL_PROXY",
            "socks5://me:hunter2@proxy:1080",
            "ALL_PROXY: socks5:// proxies are not supported: give an http:// or https:// proxy (http://host:port), or unset it".to_owned(),
        ),
    ];
    for (name, value, expected) in cases {
        for (args, status) in [
            (&["check"][..], 1),
            (&["serve", "--host", "127.0.0.1", "--port", "0"], 2),
        ] {
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[(name, value.as_bytes())]);
            assert_eq!(code, status, "{name}={value} {args:?}: {stderr}");
            assert_eq!(stderr.trim(), format!("error: {expected}"), "{args:?}");
            assert!(!stderr.contains("hunter2"), "{stderr}");
        }
    }
    // What the client does use passes: a proxy with credentials, one without a scheme
    // (http:// is meant), an empty one (unset, as in curl).
    for (name, value) in [
        ("HTTPS_PROXY", "http://me:hunter2@proxy.example:3128"),
        ("HTTP_PROXY", "http://me:hunter2%40x@proxy.example:3128"),
        ("HTTP_PROXY", "proxy.example:3128"),
        ("ALL_PROXY", ""),
    ] {
        let (code, stdout, stderr) =
            run_cli_bytes(dir.path(), &["check"], &[(name, value.as_bytes())]);
        assert_eq!(code, 0, "{name}={value}: {stdout}{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// A trace compression other than gzip or none stops `check` (exit status 1) and `serve` (2)
/// naming the variable: `zstd` (which Langfuse does not take) was a warning, `check` said
/// ok, and the exports went uncompressed.
#[test]
fn a_compression_other_than_gzip_or_none_stops_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for name in [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    ] {
        for (args, status) in [
            (&["check"][..], 1),
            (&["serve", "--host", "127.0.0.1", "--port", "0"], 2),
        ] {
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[(name, b"zstd")]);
            assert_eq!(code, status, "{name} {args:?}: {stderr}");
            assert_eq!(
                stderr.trim(),
                format!("error: {name}: \"zstd\" is not supported: give gzip or none, or unset it"),
                "{args:?}"
            );
        }
    }
    for (name, value) in [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
    ] {
        let (code, stdout, stderr) =
            run_cli_bytes(dir.path(), &["check"], &[(name, value.as_bytes())]);
        assert_eq!(code, 0, "{name}={value}: {stdout}{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
    }
}

/// config.yaml mistakes are said in the editor's terms, with the file, key path and line:
/// `null` in a list was "invalid type: unit value, expected a string", `1e20` bytes "invalid
/// u64"; a key written twice names both its lines (PyYAML took the last one; the router
/// refuses it, since the first is most often a server meant under another name), also when
/// written once as a number and once as text, or once as `!!binary` base64 of it, and at the
/// top level (said as `?`).
#[test]
fn config_mistakes_are_said_in_the_editors_terms() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            "servers:\n  a:\n    url: http://x\n    override: [m1, null]\n",
            "error: ./config.yaml: servers.a.override[1]: empty (null) where a value is needed at line 4, column 20",
        ),
        (
            "settings:\n  max_body_bytes: 1e20\n",
            "error: ./config.yaml: settings.max_body_bytes: expected a whole number (no fraction or exponent such as 1e6) at line 2, column 19",
        ),
        (
            "servers:\n  a:\n    url: http://x\n    api_key: k1\n  a:\n    url: http://y\n    api_key: k2\n",
            "error: ./config.yaml: servers: the key a appears twice, at line 2 and again at line 5, column 3; keep one",
        ),
        // A number and a text to YAML, one alias: `check` said "ok, 1 server (123)".
        (
            "servers:\n  123:\n    url: http://x\n    api_key: k1\n  '123':\n    url: http://y\n    api_key: k2\n",
            "error: ./config.yaml: servers: the key 123 appears twice (as 123 and '123'), at line 2 and again at line 5, column 3; keep one",
        ),
        (
            "servers:\n  a:\n    url: http://x\nservers:\n  b:\n    url: http://y\n",
            "error: ./config.yaml: (top level): the key servers appears twice, at line 1 and again at line 4, column 1; keep one",
        ),
        // `!!binary YQ==` is the name `a` to the YAML library (and was to the Python
        // version's pydantic): `check` said "ok, 1 server (a)", the second one dropped.
        (
            "servers:\n  !!binary YQ==:\n    url: http://x\n  a:\n    url: http://y\n",
            "error: ./config.yaml: servers: the key a appears twice (as !!binary YQ== and a), at line 2 and again at line 4, column 3; keep one",
        ),
        (
            "servers:\n  !!binary \"/w==\":\n    url: http://x\n",
            "error: ./config.yaml: servers: a `!!binary` value that is not UTF-8 text once decoded, where text is expected: write the text itself at line 2, column 12",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{yaml}: {stderr}");
        assert_eq!(stderr.trim(), expected, "{yaml}");
    }
    // `.inf` where text is expected is the text, as every scalar there is.
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://x\n    override: [m1, .inf]\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    // A `!!binary` name alone is its text, as the Python version read it.
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  !!binary YQ==:\n    url: http://x/v1\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("ok, 1 server (a)"), "{stdout}");
}

/// A number key's value that is a number but out of its range is named with its line, as
/// one that is no number is: `models_cache_ttl_secs: 1e10` (or `-1`) was said with no line,
/// and so were the other range messages.
#[test]
fn a_number_out_of_its_range_is_named_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://x/v1\n    timeout_secs: 0\nsettings:\n  \
         models_cache_ttl_secs: 1e10\n  models_fetch_timeout_secs: -2\n  max_body_bytes: \"0\"\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "error: ./config.yaml: servers.a.timeout_secs: must be a number of seconds above 0 and below 1000000000 (1e9) at line 4, column 19",
            "error: ./config.yaml: settings.models_cache_ttl_secs: must be a number of seconds, 0 or more and below 1000000000 (1e9) at line 6, column 26",
            "error: ./config.yaml: settings.models_fetch_timeout_secs: must be a number of seconds above 0 and below 1000000000 (1e9) at line 7, column 30",
            "error: ./config.yaml: settings.max_body_bytes: must be above 0 at line 8, column 19",
        ],
        "{stderr}"
    );
    std::fs::write(
        dir.path().join("config.yaml"),
        "settings:\n  models_cache_ttl_secs: -1\n",
    )
    .expect("config");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: ./config.yaml: settings.models_cache_ttl_secs: must be a number of seconds, 0 or more and below 1000000000 (1e9) at line 2, column 26"
    );
}

/// A control character in a key (an alias, a header name, an unknown key) is shown escaped
/// in the message, as the value part already was: the key path went to the terminal raw, so
/// `"a\e[31mRED"` as an alias coloured the rest of the line.
#[test]
fn a_control_character_in_a_key_path_is_shown_escaped() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            "servers:\n  \"a\\e[31mRED\":\n    url: https://x/v1\n",
            "error: ./config.yaml: servers.a\\u{1b}[31mRED: an alias may contain only",
        ),
        (
            "servers:\n  a:\n    url: https://x/v1\n    \"bad\\e[31m\": 1\n",
            "error: ./config.yaml: servers.a.bad\\u{1b}[31m: unknown field",
        ),
        (
            "servers:\n  a:\n    url: https://x/v1\n    headers: {\"X-\\e[2J\": v}\n",
            "error: ./config.yaml: servers.a.headers.X-\\u{1b}[2J: not a valid HTTP header name",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{yaml}: {stderr}");
        assert!(stderr.starts_with(expected), "{yaml}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    }
}

/// A server's `headers` naming one field twice in different case stop `check` and `serve` with
/// the key path (`X-A` and `x-a` both loaded and one was dropped in silence); a framing or
/// hop-by-hop field is left out, named in a warning by both (`Connection: close` went upstream
/// on every request, a configured `Content-Length` was left out without a word).
#[test]
fn headers_the_router_cannot_send_as_written_are_named_by_key_path() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |headers: &str| {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("servers:\n  e:\n    url: http://127.0.0.1:9/v1\n    headers:\n{headers}"),
        )
        .expect("config");
    };
    write("      X-A: one\n      x-a: two\n");
    for args in [
        &["check"][..],
        &["serve", "--host", "127.0.0.1", "--port", "0"],
    ] {
        let (code, _, stderr) = run_cli(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: ./config.yaml: servers.e.headers.x-a: the header X-A is written twice (\"X-A\" and \"x-a\"; header names ignore case): keep one",
            "{args:?}"
        );
    }
    write("      X-Title: me\n      Connection: close\n      Content-Length: \"5\"\n");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("./config.yaml: ok, 1 server (e)"),
        "{stdout}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("config.yaml"))
            .collect::<Vec<_>>(),
        [
            "warning: ./config.yaml: servers.e.headers.Connection: a hop-by-hop header (it describes one connection, not the request), which the router sets for its own connections; not sent (remove it)",
            "warning: ./config.yaml: servers.e.headers.Content-Length: the router frames each request's body itself (its length, or chunked); not sent (remove it)",
        ],
        "{stderr}"
    );
}

/// `<<` merge keys load as PyYAML loads them, so a Python version's config sends each request
/// where it did there: of two separate `<<` in one server the last wins (the first used to,
/// and `[b]` went to `a`'s upstream with `a`'s key), within one `<<: [...]` list the first
/// listed, and a header written in the server's `headers` overrides a merged one in any case
/// (`x-title: t2` over a merged `X-Title: t1` was refused as written twice). The upstream
/// gets the one value.
#[tokio::test]
async fn merge_keys_send_each_request_where_pyyaml_read_them() {
    let a = MockUpstream::start(Behavior::default()).await;
    let o = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "servers:\n  a: &a\n    url: \"{}\"\n    api_key: key-for-a\n    headers: &h\n      X-Title: t1\n  o: &o\n    url: \"{}\"\n    api_key: key-for-o\n  b:\n    <<: *a\n    <<: *o\n  l:\n    <<: [*a, *o]\n  t:\n    <<: *a\n    headers:\n      <<: *h\n      x-title: t2\n",
        a.url(),
        o.url()
    );
    let router = TestRouter::start(&config).await;
    for (model, upstream, key, title) in [
        ("[b]m", &o, "Bearer key-for-o", vec!["t1"]),
        ("[l]m", &a, "Bearer key-for-a", vec!["t1"]),
        ("[t]m", &a, "Bearer key-for-a", vec!["t2"]),
    ] {
        let (before, all_before) = (upstream.count(), a.count() + o.count());
        let response = router.chat(&json!({"model": model, "messages": []})).await;
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(upstream.count(), before + 1, "{model}");
        assert_eq!(a.count() + o.count(), all_before + 1, "{model}");
        let got = upstream.last();
        assert_eq!(got.headers["authorization"], key, "{model}");
        let titles: Vec<&str> = got
            .headers
            .get_all("x-title")
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(titles, title, "{model}");
    }
}

/// `${NAME}` in a number or boolean key is replaced, as config.yaml.template says of every
/// value: `timeout_secs: "${T}"` with T=5 was "expected a number" while `"5"` loaded. A
/// value that is not a number names the variable, not the value.
#[test]
fn a_variable_in_a_number_key_is_replaced_then_read() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: https://x/v1\n    timeout_secs: \"${T}\"\nsettings:\n  max_body_bytes: \"${T}\"\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[("T", "5")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("./config.yaml: ok, 1 server (a)"),
        "{stdout}"
    );
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[("T", "five-secret")]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: ./config.yaml: servers.a.timeout_secs: expected a number at line 4, column 19: environment variable T does not hold one (its value is not shown)\n\
         error: ./config.yaml: settings.max_body_bytes: expected a whole number (no fraction or exponent such as 1e6) at line 6, column 19: environment variable T does not hold one (its value is not shown)"
    );
}

/// A config.yaml that is not UTF-8 is named by line, as a `.env` line is: it was "cannot
/// read: stream did not contain valid UTF-8", with no line. A UTF-16 file (a byte-order
/// mark, or none and a NUL after every letter) is said to be UTF-16, a UTF-32 one UTF-32.
/// No byte is quoted.
#[test]
fn a_config_that_is_not_utf8_is_named_by_line() {
    let dir = tempfile::tempdir().expect("dir");
    let utf16 = |bom: &[u8]| {
        let mut bytes = bom.to_vec();
        for unit in "servers:\n  a:\n    url: https://x/v1\n".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        bytes
    };
    let utf32_with_bom: Vec<u8> = "\u{feff}servers: {}\n"
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"servers:\n  a:\n    url: https://x/v1\n    api_key: caf\xe9-secret\n".to_vec(),
            "error: c.yaml: cannot read: line 4, column 17 is not UTF-8 text (saved as Latin-1 or another encoding?): save the file as UTF-8",
        ),
        (
            utf16(&[0xFF, 0xFE]),
            "error: c.yaml: cannot read: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8",
        ),
        (
            utf16(&[]),
            "error: c.yaml: cannot read: line 1 holds a NUL byte (saved as UTF-16 or UTF-32?): save the file as UTF-8",
        ),
        // Its byte-order mark begins with UTF-16's: it was called UTF-16.
        (
            utf32_with_bom,
            "error: c.yaml: cannot read: the file is UTF-32 text (it starts with a UTF-32 byte-order mark); save it as UTF-8",
        ),
    ];
    for (bytes, expected) in cases {
        std::fs::write(dir.path().join("c.yaml"), &bytes).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check", "--config", "c.yaml"], &[]);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.trim(), expected);
    }
}

/// A server `url` with no path (a Python version's config: it added `/v1` to every url) is
/// warned of by `check` (which passes), by `serve` once at start and by `models`, quoting the
/// origin only, never the url's credentials; requests go where the warning says. Before,
/// nothing said that `/chat/completions` went where `/v1/chat/completions` used to.
#[tokio::test]
async fn a_server_url_with_no_path_is_warned_of_by_check_serve_and_models() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let origin = upstream.origin();
    let with_credentials = origin.replacen("http://", "http://user:pw-secret-1@", 1);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "servers:\n  local_llm:\n    url: \"{with_credentials}/?key=q-secret-2\"\n  pathed:\n    url: \"{}\"\n",
            upstream.url()
        ),
    )
    .expect("config");
    let warning = format!(
        "./config.yaml: servers.local_llm.url: no path, so requests go to {origin}/chat/completions; the Python version added /v1 to every url: if this server needs it, end the url with /v1"
    );
    let secrets = ["pw-secret-1", "q-secret-2"];

    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("./config.yaml: ok, 2 servers (local_llm, pathed)"),
        "{stdout}"
    );
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [format!("warning: {warning}")],
        "{stderr}"
    );

    // Off the test's runtime, which serves the mock upstream `models` asks.
    let at = dir.path().to_owned();
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || run_cli(&at, &["models", "--json"], &[]))
            .await
            .expect("models");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.matches(&format!("warning: {warning}\n")).count(),
        1,
        "{stderr}"
    );
    assert!(secrets.iter().all(|s| !stderr.contains(s)), "{stderr}");

    let router = RouterProcess::start_in(dir, &[]);
    let response = router
        .chat(&json!({"model": "[local_llm]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().path, "/chat/completions");
    let log = router.stderr();
    assert_eq!(log.matches(warning.as_str()).count(), 1, "{log}");
    assert!(!log.contains("servers.pathed"), "{log}");
    assert!(secrets.iter().all(|s| !log.contains(s)), "{log}");
}

/// A config.yaml of the Python version with a number tagged as a number (`timeout_secs:
/// !!float 5`) loads, as PyYAML and pydantic loaded it; `check` refused it with "a tagged
/// value (`!!int`, `!!float`, ...) where text is expected".
#[test]
fn a_number_tagged_as_a_number_loads() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: !!float 5\n\
         settings:\n  models_cache_ttl_secs: !!float 5\n  max_body_bytes: !!int 1000\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("ok, 1 server (a)"), "{stdout}");
}

/// A number too large for any float (`1e400`), or infinity spelled as a word (`inf`), is out
/// of its key's range, said with its line as `.inf` is: PyYAML read `1e400` as text and
/// pydantic made it the float infinity, as it made `.inf`, so both are one value to the Python
/// version, and one decision here. `models_cache_ttl_secs: 1e400` was "expected a number", as
/// if it were no number at all. `max_body_bytes: 1e400` stays no whole number, as pydantic
/// refused it.
#[test]
fn a_number_past_every_float_is_out_of_range_as_inf_is() {
    let dir = tempfile::tempdir().expect("dir");
    let ttl =
        "must be a number of seconds, 0 or more and below 1000000000 (1e9) at line 2, column 26";
    let seconds =
        "must be a number of seconds above 0 and below 1000000000 (1e9) at line 4, column 19";
    let cases = [
        (
            "settings:\n  models_cache_ttl_secs: .inf\n".to_owned(),
            format!("settings.models_cache_ttl_secs: {ttl}"),
        ),
        (
            "settings:\n  models_cache_ttl_secs: 1e400\n".to_owned(),
            format!("settings.models_cache_ttl_secs: {ttl}"),
        ),
        (
            "settings:\n  models_cache_ttl_secs: -1E400\n".to_owned(),
            format!("settings.models_cache_ttl_secs: {ttl}"),
        ),
        (
            "settings:\n  models_cache_ttl_secs: inf\n".to_owned(),
            format!("settings.models_cache_ttl_secs: {ttl}"),
        ),
        (
            "servers:\n  a:\n    url: http://x/v1\n    timeout_secs: 1.5e400\n".to_owned(),
            format!("servers.a.timeout_secs: {seconds}"),
        ),
        (
            "settings:\n  max_body_bytes: 1e400\n".to_owned(),
            "settings.max_body_bytes: expected a whole number (no fraction or exponent such as 1e6) at line 2, column 19".to_owned(),
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(dir.path().join("config.yaml"), &yaml).expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{yaml}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("error: ./config.yaml: {expected}"),
            "{yaml}"
        );
    }
}

/// A number key's tag is taken off before or after its anchor (`!!float &a 5`, `&a !!float
/// 5`), or on the line above the value, as YAML allows and as PyYAML read them: a tag with an
/// anchor between it and the value stayed, and the file was refused as "a tagged value where
/// a number is expected".
#[test]
fn a_tag_and_an_anchor_load_in_either_order() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: !!float &t 5\n    \
                stream_usage: !!bool &u false\n  \
                b:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: &v !!int 7\n    stream_usage: &w !!bool true\n  \
                c:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: !!float\n      2.5\n\
                settings:\n  models_cache_ttl_secs: !<tag:yaml.org,2002:float> &x 5\n  \
                max_body_bytes: &y\n    !!int 1000\n";
    std::fs::write(dir.path().join("config.yaml"), yaml).expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("ok, 3 servers (a, b, c)"), "{stdout}");
    // A tag of what is no number stays refused, anchor or not.
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://x/v1\n    timeout_secs: &t !!timestamp 2001-12-14\n",
    )
    .expect("config");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("servers.a.timeout_secs: a tagged value where a number is expected"),
        "{stderr}"
    );
}

/// `stream_usage` takes the number 1 or 0 for true or false (`1`, `0`, `!!int 1`, `1.0`,
/// `0x1`), as pydantic's lax bool took PyYAML's numbers, and refuses any other number (`2`,
/// `!!int 2`, `-1`) as it did, and `!!bool 1` (no boolean to PyYAML): `stream_usage: 0` and
/// `!!int 0` were refused as "expected true or false". The value is the one meant: the router
/// asks a `stream_usage: !!int 0` server for no usage, and a `stream_usage: 1` one for it.
#[tokio::test]
async fn stream_usage_takes_1_or_0_as_pydantic_did() {
    let dir = tempfile::tempdir().expect("dir");
    let config = |value: &str| {
        format!("servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    stream_usage: {value}\n")
    };
    for value in [
        "1",
        "0",
        "!!int 1",
        "!!int 0",
        "1.0",
        "!!float 0",
        "0x1",
        "&z !!int 0",
    ] {
        std::fs::write(dir.path().join("config.yaml"), config(value)).expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 0, "{value}: {stdout} {stderr}");
    }
    let refused = [
        (
            "2",
            "expected true or false (or the number 1 or 0) at line 4, column 19",
        ),
        (
            "-1",
            "expected true or false (or the number 1 or 0) at line 4, column 19",
        ),
        (
            "!!int 2",
            "expected true or false (or the number 1 or 0) at line 4, column 25",
        ),
        (
            "!!bool 1",
            "a tagged value where true or false is expected: write the value without its tag at line 4, column 26",
        ),
    ];
    for (value, expected) in refused {
        std::fs::write(dir.path().join("config.yaml"), config(value)).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{value}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("error: ./config.yaml: servers.a.stream_usage: {expected}"),
            "{value}"
        );
    }

    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "servers:\n  off:\n    url: \"{url}\"\n    stream_usage: !!int 0\n  \
             on:\n    url: \"{url}\"\n    stream_usage: 1\n",
            url = upstream.url()
        ),
    )
    .expect("config");
    let router = RouterProcess::start_in(dir, &[]);
    for (server, asked) in [("off", false), ("on", true)] {
        let response = router
            .chat(&json!({"model": format!("[{server}]m"), "stream": true, "messages": []}))
            .await;
        assert_eq!(response.status(), 200, "{server}");
        response.bytes().await.expect("stream");
        let sent = upstream.last().json();
        assert_eq!(
            sent.get("stream_options").is_some(),
            asked,
            "{server}: {sent}"
        );
    }
}

/// Number keys read YAML 1.1's numbers as the Python version did (PyYAML, then pydantic): a
/// plain `0x10` is 16, `010` the octal 8, `0b1010` 10, `1_000` 1000 and `1:30` (base 60)
/// 90, while a quoted `'010'` is the text 10 and `0o10` or a quoted `'0x10'` no number.
/// `timeout_secs: 0x10` and `max_body_bytes: 0b1010` were refused, and `timeout_secs: 010`
/// was 10 seconds. `!!int 5.5` (PyYAML refused it) was 5.5 seconds.
#[tokio::test]
async fn number_keys_read_yaml_1_1_numbers_as_the_python_version_did() {
    let seconds = |value: &str| {
        format!(
            "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: {value}\n\
             settings:\n  max_body_bytes: {value}\n"
        )
    };
    for (value, expected) in [
        ("0x10", 16),
        ("010", 8),
        ("'010'", 10),
        ("0b1010", 10),
        ("1_000", 1000),
        ("1:30", 90),
        ("!!int 0o10", 8),
        ("+12", 12),
    ] {
        let router = TestRouter::start(&seconds(value)).await;
        let config = router.state.config.load();
        assert_eq!(
            config.servers["a"].timeout,
            std::time::Duration::from_secs(expected),
            "{value}"
        );
        assert_eq!(
            config.settings.max_body_bytes,
            usize::try_from(expected).expect("small"),
            "{value}"
        );
    }

    let dir = tempfile::tempdir().expect("dir");
    let refused = [
        ("0o10", "expected a number at line 4, column 19"),
        ("'0x10'", "expected a number at line 4, column 19"),
        ("0x", "expected a number at line 4, column 19"),
        (
            "!!int 5.5",
            "a tagged value where a number is expected: write the value without its tag at line 4, column 25",
        ),
        (
            "!!float 0x10",
            "a tagged value where a number is expected: write the value without its tag at line 4, column 27",
        ),
    ];
    for (value, expected) in refused {
        let yaml =
            format!("servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    timeout_secs: {value}\n");
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{value}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("error: ./config.yaml: servers.a.timeout_secs: {expected}"),
            "{value}"
        );
    }
}

/// A `max_body_bytes` past every size is no limit, as it was to the Python version, whose int
/// had no bound: `99999999999999999999999` was refused as "expected a whole number", which it
/// is. A body far over the default 64 MiB's share is taken; `0` and `-5` stay refused.
#[tokio::test]
async fn a_max_body_bytes_past_every_size_is_no_limit() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    for value in [
        "99999999999999999999999",
        "'99999999999999999999999'",
        &"9".repeat(60),
    ] {
        let config = format!(
            "servers:\n  mock:\n    url: \"{}\"\nsettings:\n  max_body_bytes: {value}\n",
            upstream.url()
        );
        let router = TestRouter::start(&config).await;
        assert_eq!(
            router.state.config.load().settings.max_body_bytes,
            usize::MAX
        );
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": [], "pad": "x".repeat(4096)}))
            .await;
        assert_eq!(response.status(), 200, "{value}");
    }
    let dir = tempfile::tempdir().expect("dir");
    for value in ["0", "-5", "-99999999999999999999999"] {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("settings:\n  max_body_bytes: {value}\n"),
        )
        .expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{value}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: ./config.yaml: settings.max_body_bytes: must be above 0 at line 2, column 19",
            "{value}"
        );
    }
}

/// `stream_usage` refuses what pydantic refused for a boolean: `1e0` and `0o1` (text to
/// PyYAML, and no boolean's text), a quoted `'1.0'` (text, where only `'1'` and `'0'` are
/// numbers pydantic takes) and `'01'`. They loaded as true. The quoted words pydantic took
/// (`'yes'`, `'on'`, `'t'`, `'1'`) load.
#[test]
fn stream_usage_refuses_what_pydantic_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let config = |value: &str| {
        format!("servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    stream_usage: {value}\n")
    };
    for value in ["1e0", "0o1", "'1.0'", "'01'", "\"1.0\""] {
        std::fs::write(dir.path().join("config.yaml"), config(value)).expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 1, "{value}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: ./config.yaml: servers.a.stream_usage: expected true or false (or the number 1 or 0) at line 4, column 19",
            "{value}"
        );
    }
    for value in ["'yes'", "'on'", "'t'", "'1'", "y", "!!str true"] {
        std::fs::write(dir.path().join("config.yaml"), config(value)).expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code, 0, "{value}: {stdout} {stderr}");
    }
}

/// A number or boolean key's tag in a mapping merged in by `<<` is taken off as one written
/// in the server is (`<<: {timeout_secs: !!float 5}`), under `servers`, a server and
/// `settings` alike: it stayed and the file was refused as "a tagged value".
#[tokio::test]
async fn a_tag_on_a_merged_value_is_read_as_one_written_in_place() {
    let config = "servers:\n  \
                  a:\n    url: http://127.0.0.1:9/v1\n    <<: {timeout_secs: !!float 5, stream_usage: !!bool false}\n  \
                  b:\n    url: http://127.0.0.1:9/v1\n    <<: [{timeout_secs: !!int 0x10}]\n  \
                  <<: {c: {url: \"http://127.0.0.1:9/v1\", timeout_secs: !!int 7, api_key: !!str 123}}\n  \
                  e: &e {url: \"http://127.0.0.1:9/v1\", timeout_secs: 010}\n  \
                  d:\n    url: http://127.0.0.1:9/v1\n    <<: *e\n    <<: {timeout_secs: '010'}\n\
                  settings:\n  <<: {max_body_bytes: !!int 1000, models_cache_ttl_secs: !!float 3}\n";
    let router = TestRouter::start(config).await;
    let config = router.state.config.load();
    let secs = std::time::Duration::from_secs;
    assert_eq!(config.servers["a"].timeout, secs(5));
    assert!(!config.servers["a"].stream_usage);
    assert_eq!(config.servers["b"].timeout, secs(16));
    assert_eq!(config.servers["c"].timeout, secs(7));
    // Separate `<<` keys trade places before the file is read; the quoted one is still text
    // (10), the plain one octal (8).
    assert_eq!(config.servers["d"].timeout, secs(10));
    assert_eq!(config.servers["e"].timeout, secs(8));
    assert_eq!(
        config.servers["c"].api_key.as_ref().map(|k| k.expose()),
        Some("123")
    );
    assert_eq!(config.settings.max_body_bytes, 1000);
    assert_eq!(config.settings.models_cache_ttl, secs(3));
}

/// The `user` commands check permissions against config.yaml's aliases whatever its
/// `settings` hold: an unknown key there (`colour:`) left every alias unchecked ("provider
/// names not checked"), where `serve` and `check` refuse it as before.
#[test]
fn user_commands_check_aliases_past_an_unknown_setting() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  mock:\n    url: http://127.0.0.1:9/v1\nsettings:\n  colour: red\n  max_body_bytes: abc\n",
    )
    .expect("config");
    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "add", "ann", "--permissions", "mock,typo"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: provider \"typo\" is not in config.yaml"),
        "{err}"
    );
    assert!(!err.contains("\"mock\" is not"), "{err}");
    assert!(!err.contains("not checked"), "{err}");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("error: ./config.yaml: settings.colour: unknown field `colour`"),
        "{stderr}"
    );
}
