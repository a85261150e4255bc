//! The real binary: start-up with and without a config, `.env`, `check`, graceful shutdown.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::http1::{CHAT, Raw, post};
use crate::support::upstream::{Behavior, MockUpstream, expected_stream};
use crate::support::{
    RouterProcess, client, closed_url, one_server_config, reader_command, run_cli, run_cli_bytes,
    run_prepared, wait_until,
};

const PYTHON_TEMPLATE: &str = include_str!("../fixtures/python-config.yaml.template");

#[tokio::test]
async fn serve_starts_without_a_config_file_and_serves_url_targets() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = RouterProcess::start(None, &[]);
    assert!(
        router.stderr().contains("not found"),
        "a warning names the missing file"
    );
    let response = client()
        .post(router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin())))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.count(), 1);
}

/// The start-up line counts the servers in good English: "1 server", not "1 servers".
#[tokio::test]
async fn the_start_up_line_counts_servers_in_the_singular_too() {
    let one = one_server_config("http://127.0.0.1:9", "");
    let router = RouterProcess::start(Some(&one), &[]);
    logged(&router, "(1 server configured)").await;
    let two = "servers:\n  a:\n    url: http://127.0.0.1:9\n  b:\n    url: http://127.0.0.1:9\n";
    let router = RouterProcess::start(Some(two), &[]);
    logged(&router, "(2 servers configured)").await;
}

#[tokio::test]
async fn the_python_versions_template_loads_unchanged() {
    let router = RouterProcess::start(Some(PYTHON_TEMPLATE), &[]);
    let health = client()
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert!(router.stderr().contains("4 servers"), "{}", router.stderr());

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), PYTHON_TEMPLATE).expect("write");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("local_llm, huoshan, openrouter, deepseek"),
        "{stdout}"
    );
}

/// `check` reads users.db (WAL mode) and leaves nothing beside it: a read-only connection
/// made `users.db-wal` and `users.db-shm` and could not remove them.
#[test]
fn check_leaves_no_journal_files_beside_the_database() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("write");
    let (code, _, stderr) = run_cli(dir.path(), &["user", "add", "bob"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), ["config.yaml", "users.db"]);
    for accounts in ["true", "false"] {
        let env = [("ENABLE_ACCOUNT_MANAGEMENT", accounts)];
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &env);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("environment: ok"), "{stdout}");
        assert_eq!(names(), ["config.yaml", "users.db"], "accounts {accounts}");
    }
}

#[tokio::test]
async fn check_fails_with_file_key_path_and_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            "servers:\n  a:\n    url: http://x\n    filtre: gpt\n",
            "servers.a.filtre",
        ),
        (
            "servers:\n  a:\n    url: http://x\n    timeout_secs: soon\n",
            "servers.a.timeout_secs",
        ),
        (
            "servers:\n  \"bad[alias]\":\n    url: http://x\n",
            "servers.bad[alias]",
        ),
        (
            "servers:\n  a:\n    url: file:///etc/passwd\n",
            "servers.a.url",
        ),
        (
            "servers:\n  a:\n    url: http://x\n    api_key: ${NOT_SET_ANYWHERE_123}\n",
            "NOT_SET_ANYWHERE_123",
        ),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).expect("write");
        let (code, _, stderr) = run_cli(dir.path(), &["check", "--config", "bad.yaml"], &[]);
        assert_eq!(code, 1, "{yaml}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("bad.yaml") && stderr.contains(expected),
            "{stderr}"
        );
    }
    // serve refuses the same file, with the same message.
    std::fs::write(dir.path().join("config.yaml"), cases[0].0).expect("write");
    let (code, _, stderr) = run_cli(dir.path(), &["serve", "--port", "0"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("servers.a.filtre"), "{stderr}");
    // A missing file fails check (it says how to make one).
    let (code, _, stderr) = run_cli(dir.path(), &["check", "--config", "nope.yaml"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nope.yaml"), "{stderr}");
}

/// `api_key: "${UP_KEY}"` with UP_KEY read from a secret file that ends in a newline: `check`
/// and `serve` both refuse it naming the alias and the reason, never the key. Before, both
/// passed and every request went upstream with no Authorization header at all.
#[tokio::test]
async fn a_key_ending_in_a_newline_is_refused_at_start_up_without_printing_it() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  up:\n    url: http://127.0.0.1:9/v1\n    api_key: \"${UP_KEY}\"\n",
    )
    .expect("config");
    let envs = [("UP_KEY", "sk-real-key-123\n")];
    for args in [&["check"][..], &["serve", "--port", "0"]] {
        let (code, _, stderr) = run_cli(dir.path(), args, &envs);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("servers.up.api_key") && stderr.contains("ends with a newline"),
            "{stderr}"
        );
        assert!(!stderr.contains("sk-real"), "{stderr}");
    }
}

/// A number of seconds past the bound is refused with the bound, where it used to be told
/// it "must be ... above 0".
#[test]
fn a_timeout_too_large_is_told_the_bound() {
    let dir = tempfile::tempdir().expect("dir");
    for (value, accepted) in [("999999999", true), ("1000000000", false), ("1e12", false)] {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("servers:\n  up:\n    url: http://x/v1\n    timeout_secs: {value}\n"),
        )
        .expect("config");
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!(code == 0, accepted, "{value}: {stderr}");
        if !accepted {
            assert!(
                stderr.contains("servers.up.timeout_secs")
                    && stderr.contains("above 0 and below 1000000000"),
                "{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn dot_env_is_read_and_real_environment_wins() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join(".env"),
        "# from the Python version\nENABLE_BYPASS=true\nMOCK_KEY=sk-from-dotenv\nOTHER_KEY=dotenv\n",
    )
    .expect("env");
    let config = format!(
        "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"${{MOCK_KEY}}\"\n    headers: {{X-Other: \"${{OTHER_KEY}}\"}}\n",
        upstream.url()
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("config");
    let router = RouterProcess::start_in(dir, &[("OTHER_KEY", "real-env")]);
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(got.headers["authorization"], "Bearer sk-from-dotenv");
    assert_eq!(got.headers["x-other"], "real-env");
    assert!(
        !router.stderr().contains("sk-from-dotenv"),
        "keys never reach the log"
    );
}

/// A `.env` line whose name is no variable name (a pasted base64 secret, with `/` and `+`) is
/// named by its line number, never by its text, as every skipped line is.
#[test]
fn a_dot_env_name_that_is_no_variable_is_named_by_its_line_only() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        "OPENROUTER_API_KEY=sk-or-v1-abc\nc2VjcmV0/a2V5+dmFsdWUxMjM0NTY3ODkw=\n",
    )
    .expect("env");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(".env line 2"), "{stderr}");
    assert!(!stderr.contains("c2VjcmV0"), "{stderr}");
}

/// A `.env` name with `-` (`MY-OTHER-APP_TOKEN`, from a `.env` shared with other programs),
/// which python-dotenv sets and the router cannot, is skipped without a word: no variable of
/// the router has a `-`, and `check` failed on it. The lines after it still count.
#[test]
fn a_dot_env_name_with_a_dash_is_skipped_in_silence() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        "APP_TITLE=ok\nMY-OTHER-APP_TOKEN=abc\nexport other-tool.url = http://x\nLLMSROUTER_LEDGER=maybe\n",
    )
    .expect("env");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stderr.trim(),
        "error: LLMSROUTER_LEDGER: \"maybe\" is not a boolean (use true/false, 1/0 or yes/no)",
        "only the line after them speaks"
    );
    std::fs::write(
        dir.path().join(".env"),
        "APP_TITLE=ok\nMY-OTHER-APP_TOKEN=abc\nexport other-tool.url = http://x\n",
    )
    .expect("env");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "{stdout}");
}

/// A `.env` name with `-` that is one of the router's variables with `-` for `_`
/// (`ENABLE-ACCOUNT-MANAGEMENT=true`) is named with the variable it was meant to be: `check`
/// fails on it, `serve` warns. Before, it was skipped in silence and accounts stayed off.
#[test]
fn a_dot_env_name_with_a_dash_for_a_router_variable_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        "MY-OTHER-APP_TOKEN=abc\nenable-account-management=true\n",
    )
    .expect("env");
    let said = ".env line 2: enable-account-management is no variable the router reads (none has a '-'); ENABLE_ACCOUNT_MANAGEMENT was meant? the line is skipped";
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stderr.trim().lines().next(),
        Some(format!("error: {said}").as_str()),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");

    let router = RouterProcess::start_in(dir, &[]);
    assert_eq!(
        router.stderr().matches(said).count(),
        1,
        "{}",
        router.stderr()
    );
}

/// A `.env` line that is not UTF-8 (a file saved as Latin-1) is named by its line number:
/// `check` fails, the other commands warn. Before, it was read with U+FFFD in silence, and a
/// key on it went out as another key.
#[test]
fn a_dot_env_line_that_is_not_utf8_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        b"APP_TITLE=ok\nOPENROUTER_API_KEY=sk-caf\xe9-secret\n".as_slice(),
    )
    .expect("env");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(".env line 2: not UTF-8"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    let (code, _, stderr) = run_cli(dir.path(), &["models", "--json"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("warning: .env line 2: not UTF-8"),
        "{stderr}"
    );
}

/// A line python-dotenv reads but dotenvy refused (an unquoted value with spaces) and a line
/// nobody can read: the lines after them still count, so accounts stay on. `check` names the
/// unreadable line by number, never by its text (it may hold a key), and checks config.yaml
/// all the same (it stopped at the `.env`); other commands warn of it
/// in a `warning:` line (a log line with a time stamp before).
#[tokio::test]
async fn a_dot_env_line_that_cannot_be_read_loses_only_itself() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join(".env"),
        "APP_TITLE=My Team Router\nNOTES sk-secret-words here\nENABLE_ACCOUNT_MANAGEMENT=\"true\"\n",
    )
    .expect("env");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    // config.yaml is checked all the same: one run names the mistakes of both files.
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("error: .env line 2"), "{stderr}");
    assert!(
        lines[1].starts_with("error: ./config.yaml: not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-secret"), "{stderr}");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n",
    )
    .expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stdout, "./config.yaml: ok, 1 server (a)\n", "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    std::fs::remove_file(dir.path().join("config.yaml")).expect("remove");

    // Another command goes on without the line, and says so as it says any warning.
    let (code, _, stderr) = run_cli(dir.path(), &["models", "--json"], &[]);
    assert_eq!(code, 1, "no config.yaml: {stderr}");
    assert!(stderr.starts_with("warning: .env line 2"), "{stderr}");
    assert!(!stderr.contains("sk-secret"), "{stderr}");

    let router = RouterProcess::start_in(dir, &[]);
    let response = router.chat(&json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), 401, "account management is on");
    let log = router.stderr();
    assert!(log.contains(".env line 2"), "{log}");
    assert!(!log.contains("sk-secret"), "{log}");
}

/// A `.env` that is there but cannot be read (a folder, a file this user may not read) stops
/// `serve` as it fails `check`, with one line and exit status 1, as an unreadable
/// config.yaml does. `serve` used to warn and start without its settings: with
/// `ENABLE_ACCOUNT_MANAGEMENT=true` there, open to anyone.
#[test]
fn a_dot_env_that_cannot_be_read_stops_serve_as_check() {
    use std::os::unix::fs::PermissionsExt as _;
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::create_dir(dir.path().join(".env")).expect(".env folder");
    for args in [&["check"][..], &serve] {
        let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: .env: Is a directory (os error 21)",
            "{args:?}"
        );
    }
    // A file this user may not read (as root, `nobody` reads for the test: root reads any
    // file). Bounded: a `serve` that starts is killed, and the test fails rather than hangs.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let dot_env = dir.path().join(".env");
    std::fs::write(&dot_env, "ENABLE_ACCOUNT_MANAGEMENT=true\n").expect(".env");
    std::fs::set_permissions(&dot_env, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    for args in [&["check"][..], &serve] {
        let reader = reader_command(dir.path());
        let mut command = std::process::Command::new("timeout");
        command
            .arg("20")
            .arg(reader.get_program())
            .args(reader.get_args());
        let (code, _, stderr) = run_prepared(command, dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: .env: Permission denied (os error 13)",
            "{args:?}"
        );
    }
}

/// A `.env` saved as UTF-16 (Windows PowerShell 5's `echo ... > .env` writes UTF-16LE with a
/// byte-order mark) stops `serve` and fails `check` as an unreadable `.env` does; the other
/// commands warn. Read as UTF-8, its `ENABLE_ACCOUNT_MANAGEMENT=true` set nothing and the
/// router started open, where python-dotenv refused the file.
#[test]
fn a_dot_env_in_utf16_stops_serve_and_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let said = "error: .env is UTF-16 (as Windows PowerShell writes it); save it as UTF-8";
    let text = "ENABLE_ACCOUNT_MANAGEMENT=true\r\n";
    let little_endian_with_bom: Vec<u8> = "\u{feff}"
        .encode_utf16()
        .chain(text.encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let big_endian: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let utf32: Vec<u8> = "\u{feff}ENABLE_ACCOUNT_MANAGEMENT=true\r\n"
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    for (bytes, said) in [
        (little_endian_with_bom, said),
        (big_endian, said),
        // It was called UTF-16.
        (utf32, "error: .env is UTF-32; save it as UTF-8"),
    ] {
        std::fs::write(dir.path().join(".env"), &bytes).expect(".env");
        for args in [
            &["check"][..],
            &["serve", "--host", "127.0.0.1", "--port", "0"],
        ] {
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[]);
            assert_eq!(code, 1, "{args:?}: {stderr}");
            assert_eq!(stderr.trim(), said, "{args:?}");
        }
        let (code, _, stderr) = run_cli(dir.path(), &["models", "--json"], &[]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stderr.trim(), said.replace("error:", "warning:"));
    }
}

/// A `.env` whose `${NAME}`s expand one another many times over (each line eight of the one
/// before) stops `serve` and fails `check` at once, naming the line and key: the expansion
/// took all the memory there was (fuzzing, bb45). The other commands warn.
#[test]
fn a_dot_env_expanding_past_a_mebibyte_stops_serve_and_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let mut text = String::from("V0=0123456789012345678901234567890123456789\n");
    for n in 1..=12 {
        let before = format!("${{V{}}}", n - 1);
        text.push_str(&format!("V{n}={}\n", before.repeat(8)));
    }
    std::fs::write(dir.path().join(".env"), &text).expect(".env");
    // 40 bytes times 8^5 passes 1 MiB at V5, line 6.
    let said = "error: .env line 6: the value of V5 expands to over 1 MiB";
    check_and_serve_stop_with(dir.path(), said);
    let (code, _, stderr) = run_cli(dir.path(), &["models", "--json"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr
            .trim()
            .starts_with(&said.replace("error:", "warning:")),
        "{stderr}"
    );
}

/// `check` and `serve`, run in `dir`, each exit 1 with the one line `said` begins.
fn check_and_serve_stop_with(dir: &std::path::Path, said: &str) {
    for args in [
        &["check"][..],
        &["serve", "--host", "127.0.0.1", "--port", "0"],
    ] {
        let (code, _, stderr) = run_cli(dir, args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.trim().starts_with(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// Values each under the 1 MiB bound whose expansions add up past 8 MiB for the whole file
/// stop `serve` and fail `check` as one value past its bound does: 150 lines of 768 KiB held
/// 550 MB and passed.
#[test]
fn a_dot_env_expanding_past_eight_mebibytes_in_all_stops_serve_and_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let mut text = format!("BIG={}\n", "x".repeat(96 * 1024));
    for n in 1..=150 {
        text.push_str(&format!("V{n}={}\n", "${BIG}".repeat(8)));
    }
    std::fs::write(dir.path().join(".env"), &text).expect(".env");
    // 768 KiB more each: 11 of them pass 8 MiB, V11 on line 12.
    let said = "error: .env line 12: with the value of V11, the file's ${NAME}s expand to over 8 MiB in all";
    check_and_serve_stop_with(dir.path(), said);
    // Ten of them are within it.
    let within: String = text
        .lines()
        .take(11)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(dir.path().join(".env"), within).expect(".env");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
}

/// A `.env` that is a link to nothing (a secret mount not there yet) stops `serve` and fails
/// `check`, naming where the link leads: it was taken for a missing `.env`, and the router
/// started in silence without the settings meant for it, open to anyone.
#[test]
fn a_dot_env_link_to_nothing_stops_serve_and_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let target = dir.path().join("secrets").join("llmsrouter.env");
    std::os::unix::fs::symlink(&target, dir.path().join(".env")).expect("link");
    for args in [
        &["check"][..],
        &["serve", "--host", "127.0.0.1", "--port", "0"],
    ] {
        let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "error: .env is a link to {}, which does not exist",
                target.display()
            ),
            "{args:?}"
        );
    }
}

/// A skipped `.env` statement that spans lines (a quote opened on line 1 closes on line 3,
/// text after it) and sets none of the router's variables is named with all the lines it
/// takes: `check` fails, the other commands warn.
#[test]
fn a_skipped_dot_env_statement_over_several_lines_is_named_with_its_lines() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join(".env"),
        "APP_TITLE=\"My Team\nNOTES=sk-secret words\nOTHER=\"x\" y\nMOCK_KEY=k\n",
    )
    .expect("env");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let said = ".env lines 1-3: not KEY=value: a quote opened on line 1 closes only on line 3 (an unclosed quote?), so these 3 lines are skipped as one statement";
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim(), format!("error: {said}"));
    let (_, _, stderr) = run_cli(dir.path(), &["models", "--json"], &[]);
    assert!(
        stderr.starts_with(&format!("warning: {said}\n")),
        "{stderr}"
    );
}

/// A `.env` line that cannot be read and names a variable the router reads stops `serve` and
/// `check` (exit status 1), naming the line and the variable, never the value: skipped with a
/// warning, as python-dotenv skips it, `ENABLE_ACCOUNT_MANAGEMENT="true` (a quote left open)
/// started the router open to anyone. A skipped line for another program's variable stays a
/// warning (see above).
#[test]
fn a_skipped_dot_env_line_for_a_router_variable_stops_serve_and_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let without = "skipping it would start the router without this setting: fix the line";
    let not_key_value =
        "is not KEY=value (an unclosed quote, text after a closing quote, or ':' for '='?)";
    let inside = |line: usize, key: &str, first: usize, last: usize| {
        format!(
            ".env line {line}: the line for {key} is inside the statement that begins at line {first}, which is skipped as a whole, lines {first}-{last} (an unclosed quote on line {first}?); {without}"
        )
    };
    let cases: &[(&[u8], String)] = &[
        (
            b"APP_TITLE=My Team\nENABLE_ACCOUNT_MANAGEMENT=\"true\n",
            format!(
                ".env line 2: the line for ENABLE_ACCOUNT_MANAGEMENT {not_key_value}; {without}"
            ),
        ),
        (
            b"export LLMSROUTER_HOST = '127.0.0.1'x\nAPP_TITLE=ok\n",
            format!(".env line 1: the line for LLMSROUTER_HOST {not_key_value}; {without}"),
        ),
        (
            b"LANGFUSE_SECRET_KEY=\"sk-lf-hunter2\" extra\n",
            format!(".env line 1: the line for LANGFUSE_SECRET_KEY {not_key_value}; {without}"),
        ),
        (
            b"A=1\n\nHTTPS_PROXY=http://me:hunter2@proxy:3128\x00\n",
            format!(
                ".env line 3: the value of HTTPS_PROXY holds a NUL byte, which no environment variable can hold; {without}"
            ),
        ),
        // A quote left open on line 1 closes on line 3, with text after it: python-dotenv
        // skips lines 1-3 as one statement, and the lines for the router's variables in it.
        (
            b"APP_TITLE=\"My Team Router\nENABLE_ACCOUNT_MANAGEMENT=true\nLANGFUSE_HOST=\"http://langfuse.internal\"\n",
            format!(
                "{}\nerror: {}",
                inside(2, "ENABLE_ACCOUNT_MANAGEMENT", 1, 3),
                inside(3, "LANGFUSE_HOST", 1, 3)
            ),
        ),
        (
            b"LANGFUSE_PUBLIC_KEY=pk-lf-1\nAPP_TITLE=\"Team Router\n  export LANGFUSE_HOST=http://127.0.0.1:1\nNOTE=\"x\"\n",
            inside(3, "LANGFUSE_HOST", 2, 4),
        ),
        // docker-compose's `KEY: value`, which python-dotenv skips.
        (
            b"ENABLE_ACCOUNT_MANAGEMENT: true\n",
            format!(".env line 1: the line for ENABLE_ACCOUNT_MANAGEMENT {not_key_value}; {without}"),
        ),
        // With no space after ':' python-dotenv reads a key with no value (it sets nothing),
        // and a bare name the same: no warning came, and the router started open.
        (
            b"ENABLE_ACCOUNT_MANAGEMENT:true\n",
            format!(
                ".env line 1: the line for ENABLE_ACCOUNT_MANAGEMENT sets nothing (no '=' after the name; ':' for '='?); {without}"
            ),
        ),
        (
            b"A=1\nLANGFUSE_HOST\n",
            format!(
                ".env line 2: the line for LANGFUSE_HOST sets nothing (no '=' after the name; ':' for '='?); {without}"
            ),
        ),
        // A quote left open on line 1 that a later value's quote closes at the end of its
        // line: one valid value over three lines, which python-dotenv reads without a word.
        (
            b"APP_TITLE=\"My Team\nENABLE_ACCOUNT_MANAGEMENT=true\nNOTE=\"\nA=1\n",
            format!(
                ".env line 2: the line for ENABLE_ACCOUNT_MANAGEMENT is inside the quoted value of APP_TITLE that begins at line 1 (a quote left open on line 1?); {without}"
            ),
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(dir.path().join(".env"), text).expect(".env");
        // No `--host`: it would give LLMSROUTER_HOST's setting (see below).
        for args in [&["check"][..], &["serve", "--port", "0"]] {
            let (code, _, stderr) = run_cli_bytes(dir.path(), args, &[]);
            assert_eq!(code, 1, "{args:?}: {stderr}");
            assert_eq!(stderr.trim(), format!("error: {expected}"), "{args:?}");
            assert!(!stderr.contains("hunter2"), "{stderr}");
        }
    }
}

/// A skipped `.env` line for a router variable that the command line or the real environment
/// sets anyway loses no setting: `serve` warns of it, saying what gives the setting, and
/// starts (it refused to, though python-dotenv's users had the setting); `check` still fails.
#[tokio::test]
async fn a_skipped_dot_env_line_for_a_setting_given_anyway_is_a_warning() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(
        dir.path().join(".env"),
        "ENABLE_ACCOUNT_MANAGEMENT=\"true\nexport LLMSROUTER_HOST = '0.0.0.0'x\n",
    )
    .expect(".env");
    let not_key_value = "is not KEY=value (an unclosed quote, text after a closing quote, or ':' for '='?); the line is skipped";
    let accounts = format!(
        ".env line 1: the line for ENABLE_ACCOUNT_MANAGEMENT {not_key_value}, and ENABLE_ACCOUNT_MANAGEMENT is set in the environment, which wins over .env"
    );
    let host = format!(
        ".env line 2: the line for LLMSROUTER_HOST {not_key_value}, and --host on the command line gives this setting"
    );
    let env = [("ENABLE_ACCOUNT_MANAGEMENT", "true")];
    let (code, _, stderr) = run_cli(dir.path(), &["check", "--host", "127.0.0.1"], &env);
    assert_eq!(code, 2, "check takes no --host: {stderr}");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("error: {accounts}\n")), "{stderr}");

    let router = RouterProcess::start_in(dir, &env);
    let response = router.chat(&json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), 401, "accounts on, from the environment");
    let log = router.stderr();
    assert!(log.contains(&accounts), "{log}");
    assert!(log.contains(&host), "{log}");
}

#[tokio::test]
async fn a_bad_boolean_variable_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["serve", "--port", "0"],
        &[("LLMSROUTER_LOG_BODIES", "perhaps")],
    );
    assert_eq!(
        code, 2,
        "a bad variable is a command-line mistake: {stderr}"
    );
    assert!(stderr.contains("LLMSROUTER_LOG_BODIES"), "{stderr}");
}

/// An empty account switch in the real environment (a missing value under `docker
/// --env-file`) hides `.env`'s `true`: start-up stops naming it, where it used to start the
/// router open to anyone.
#[test]
fn an_empty_account_switch_stops_start_up_instead_of_opening_the_router() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join(".env"), "ENABLE_ACCOUNT_MANAGEMENT=true\n").expect(".env");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let empty = [("ENABLE_ACCOUNT_MANAGEMENT", "")];
    for (command, expected) in [(&["check"][..], 1), (&["serve", "--port", "0"][..], 2)] {
        let (code, _, stderr) = run_cli(dir.path(), command, &empty);
        assert_eq!(code, expected, "{command:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("ENABLE_ACCOUNT_MANAGEMENT: is set but empty"),
            "{stderr}"
        );
    }
}

/// A command line that fails: arguments, variables, the start of the error line.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// A bad value from a variable is reported under the variable's name (the user never typed
/// the flag), an empty one as empty; on the command line, under the flag's.
#[test]
fn a_bad_value_is_named_by_where_it_came_from() {
    let dir = tempfile::tempdir().expect("dir");
    let cases: &[Case] = &[
        (
            &["serve"],
            &[("LLMSROUTER_PORT", "abc")],
            "LLMSROUTER_PORT: invalid value 'abc' for --port",
        ),
        (
            &["check"],
            &[("LLMSROUTER_CONFIG", "")],
            "LLMSROUTER_CONFIG is set but empty",
        ),
        (
            &["usage"],
            &[("LLMSROUTER_USAGE_BY", "week")],
            "LLMSROUTER_USAGE_BY: invalid value 'week' for --by [possible values: provider, user, model, day]",
        ),
        (
            &["usage"],
            &[("LLMSROUTER_USAGE_SINCE", "2025-02-30")],
            "LLMSROUTER_USAGE_SINCE: invalid value '2025-02-30' for --since: not a date",
        ),
        (
            &["serve", "--port", "abc"],
            &[("LLMSROUTER_PORT", "abc")],
            "invalid value 'abc' for '--port <N>'",
        ),
    ];
    for (args, envs, expected) in cases {
        let (code, _, stderr) = run_cli(dir.path(), args, envs);
        // `check` judges the environment: a bad variable is its exit status 1.
        let exit = if args == &["check"] { 1 } else { 2 };
        assert_eq!(code, exit, "{args:?} {envs:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{stderr}"
        );
    }
}

/// The listen address is checked as every other value is: a host set but empty, or one that
/// is no address, is one line and exit status 2 (it was exit 1, and `""` was called "not an
/// IP address"), from `--host` or `LLMSROUTER_HOST`, and `check` names an empty listen
/// variable as `serve` does, with its own exit status 1 (0 valid, 1 not).
#[test]
fn an_empty_or_bad_listen_address_is_a_command_line_mistake() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let empty_host =
        "LLMSROUTER_HOST is set but empty: unset it, or give it a value (it stands for --host)";
    let empty_port =
        "LLMSROUTER_PORT is set but empty: unset it, or give it a value (it stands for --port)";
    let cases: &[Case] = &[
        (&["serve"], &[("LLMSROUTER_HOST", "")], empty_host),
        (&["healthcheck"], &[("LLMSROUTER_HOST", "")], empty_host),
        (&["check"], &[("LLMSROUTER_HOST", "")], empty_host),
        (&["check"], &[("LLMSROUTER_PORT", "")], empty_port),
        (&["serve"], &[("LLMSROUTER_PORT", "")], empty_port),
        (
            &["serve", "--host", "nohost"],
            &[],
            "invalid value 'nohost' for '--host <ADDR>': not an IP address",
        ),
        (
            &["serve"],
            &[("LLMSROUTER_HOST", "nohost")],
            "LLMSROUTER_HOST: invalid value 'nohost' for --host: not an IP address",
        ),
    ];
    for (args, envs, expected) in cases {
        let (code, _, stderr) = run_cli(dir.path(), args, envs);
        let exit = if args[0] == "check" { 1 } else { 2 };
        assert_eq!(code, exit, "{args:?} {envs:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{args:?} {envs:?}: {stderr}"
        );
    }
}

/// A tracing endpoint `serve` cannot use (a tab or line break inside, no host written as
/// `http://host`) is refused by `check` (exit status 1) and by `serve` at start (2), in the
/// same line, which never shows the value broken over lines. `check` passed them, and `serve`
/// stopped later, with exit status 1, building its exporter.
#[test]
fn a_tracing_endpoint_serve_cannot_use_is_refused_by_check_too() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let keys = [
        ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
        ("LANGFUSE_SECRET_KEY", "sk-lf-1"),
    ];
    let cases = [
        (
            "LANGFUSE_HOST",
            "http://127.0.0.1:9/x\ty",
            "control character",
        ),
        (
            "LANGFUSE_HOST",
            "http://127.0.0.1:9\n9",
            "control character",
        ),
        ("LANGFUSE_HOST", "http:///x", "no host"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http:/127.0.0.1:9",
            "no host",
        ),
    ];
    for (name, value, reason) in cases {
        let mut envs = keys.to_vec();
        envs.push((name, value));
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 1, "{name}={value:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("error: {name}: ")), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        envs.push(("LLMSROUTER_PORT", "0"));
        let (serve_code, _, serve_stderr) = run_cli(dir.path(), &["serve"], &envs);
        assert_eq!(serve_code, 2, "{name}={value:?}: {serve_stderr}");
        assert!(serve_stderr.contains(stderr.trim()), "{serve_stderr}");
    }
}

/// `NO_PROXY` entries the upstream client's matcher reads as matching no host (one with a
/// port, which Python honours; a network that is none) and a proxy variable set in both
/// cases to different values are warned of by `check` (which still passes) and `serve`:
/// traffic meant to bypass the proxy went through it without a word.
#[test]
fn no_proxy_entries_that_bypass_nothing_are_warned_of() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let warned = [
        ("vm:45950", "has a port"),
        ("127.0.0.1:8000", "has a port"),
        (
            "[::1]:80",
            "has a port, which is not read (write the address alone, without",
        ),
        ("[::1]", "is an IPv6 address in brackets"),
        ("10.0.0.0/33", "is not a network"),
        ("127.0.0.1/+32", "is not a network"),
        ("*.example.com", "starts with a wildcard"),
        ("fe80::1%eth0", "has a zone"),
        ("http://example.com", "is a URL"),
    ];
    let read = [
        ".example.com",
        "::1",
        "10.0.0.0/8",
        "127.000.0.1/32",
        "fe80::/10",
        "vm",
    ];
    // A proxy URL pasted into the list: warned of without its password.
    let with_password = ["http://me:hunter2@proxy:3128", "me:hunter2@proxy:3128"];
    let entries: Vec<&str> = warned
        .iter()
        .map(|(e, _)| *e)
        .chain(read)
        .chain(with_password)
        .collect();
    let no_proxy = entries.join(", ");
    let envs = [
        ("NO_PROXY", no_proxy.as_str()),
        ("no_proxy", "localhost"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("http_proxy", "http://127.0.0.1:9"),
    ];
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("environment: ok"), "{stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: NO_PROXY"))
        .collect();
    for (entry, why) in warned {
        let start = format!("warning: NO_PROXY: the entry \"{entry}\" {why}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&start)
                    && l.ends_with("so it bypasses the proxy for no host")),
            "{entry}: {stderr}"
        );
    }
    for entry in read {
        let quoted = format!("\"{entry}\"");
        assert!(
            !lines.iter().any(|l| l.contains(&quoted)),
            "{entry}: {stderr}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with(
            "warning: NO_PROXY and no_proxy are both set, to different values: NO_PROXY is read"
        )),
        "{stderr}"
    );
    for shown in [
        "warning: NO_PROXY: the entry \"http://[redacted]@proxy:3128\" is a URL",
        "warning: NO_PROXY: the entry \"[redacted]@proxy:3128\" has a port",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(shown)), "{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(
        lines.len(),
        warned.len() + 3,
        "the same HTTP_PROXY pair not: {stderr}"
    );
}

/// `localhost` is a host name: any case is it (`LOCALHOST` was "not an IP address").
#[test]
fn localhost_is_taken_in_any_case() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for host in ["localhost", "LOCALHOST", "LocalHost"] {
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[("LLMSROUTER_HOST", host)]);
        assert_eq!(code, 0, "{host}: {stderr}");
        assert!(stdout.contains("environment: ok"), "{stdout}");
    }
    for bad in ["localhos", "[localhost", "::1]"] {
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[("LLMSROUTER_HOST", bad)]);
        assert_eq!(code, 1, "{bad}: {stderr}");
    }
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[("LLMSROUTER_HOST", "[::1]")]);
    assert_eq!(code, 0, "{stderr}");
}

/// A flag on the line wins over its variable, even one set but empty: `LLMSROUTER_CONFIG=`
/// or `LLMSROUTER_DB=` with `--config` / `--db` given (after the command, as they may be) used
/// to fail with clap's "a value is required for '--config <PATH>'", naming neither. Without
/// the flag the empty variable is named (`check`: exit status 1, as for any bad variable);
/// an empty flag is named as a flag.
#[test]
fn an_empty_path_variable_yields_to_its_flag() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("given.yaml"), "servers: {}\n").expect("config");
    let given = ["check", "--config", "given.yaml", "--db", "given.db"];
    for variable in ["LLMSROUTER_CONFIG", "LLMSROUTER_DB"] {
        let (code, stdout, stderr) = run_cli(dir.path(), &given, &[(variable, "")]);
        assert_eq!(code, 0, "{variable}=: {stdout} {stderr}");
        assert!(stdout.contains("given.yaml: ok"), "{stdout}");
    }
    let cases: &[Case] = &[
        (
            &["user", "list"],
            &[("LLMSROUTER_DB", "")],
            "LLMSROUTER_DB is set but empty: unset it, or give it a value (it stands for --db)",
        ),
        (
            &["check", "--config="],
            &[],
            "a value is required for --config but none was supplied",
        ),
        (
            &["check"],
            &[("LLMSROUTER_CONFIG", "")],
            "LLMSROUTER_CONFIG is set but empty: unset it, or give it a value (it stands for --config)",
        ),
    ];
    for (args, envs, expected) in cases {
        let (code, _, stderr) = run_cli(dir.path(), args, envs);
        // `check` judges the environment: a bad variable is its exit status 1.
        let exit = if args == &["check"] { 1 } else { 2 };
        assert_eq!(code, exit, "{args:?} {envs:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{stderr}"
        );
    }
}

/// `check` with a bad variable still says the warnings of the other variables, on stderr
/// beside its errors, as it says them when every variable is good: they were dropped, and
/// came to light only in the run after the bad one was fixed. A value that is not UTF-8 (the
/// errors found before the others are read), a bad value, and both.
#[test]
fn check_says_the_warnings_beside_a_bad_variable() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let warning = "warning: ENABLE_BYPASS is ignored: llmsrouter has no bypass";
    let bypass: (&str, &[u8]) = ("ENABLE_BYPASS", b"yes");
    let (code, _, stderr) = run_cli_bytes(dir.path(), &["check"], &[bypass]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(warning), "{stderr}");
    let bad_value: (&str, &[u8]) = ("LLMSROUTER_LOG_BODIES", b"maybe");
    let not_utf8: (&str, &[u8]) = ("LLMSROUTER_LEDGER", b"tru\xffe");
    let cases: [&[(&str, &[u8])]; 3] = [
        &[bypass, bad_value],
        &[bypass, not_utf8],
        &[bypass, bad_value, not_utf8],
    ];
    for envs in cases {
        let (code, stdout, stderr) = run_cli_bytes(dir.path(), &["check"], envs);
        assert_eq!(code, 1, "{envs:?}: {stderr}");
        let warnings = stderr.lines().filter(|l| l.starts_with(warning)).count();
        assert_eq!(warnings, 1, "{envs:?}: {stderr}");
        let errors = stderr.lines().filter(|l| l.starts_with("error: ")).count();
        assert_eq!(errors, envs.len() - 1, "{envs:?}: {stderr}");
        assert!(
            !stdout.contains("warning"),
            "the warnings go to stderr: {stdout}"
        );
    }
    // Nor does a problem of another kind: the listen address, config.yaml, the log (bb63).
    let port: (&str, &[u8]) = ("LLMSROUTER_PORT", b"abc");
    let log: (&str, &[u8]) = ("LLMSROUTER_LOG_FILE", b"config.yaml/api_proxy.log");
    for (envs, config) in [
        (&[bypass, port][..], "servers: {}\n"),
        (&[bypass, log][..], "servers: {}\n"),
        (&[bypass][..], "servers: [\n"),
    ] {
        std::fs::write(dir.path().join("config.yaml"), config).expect("config");
        let (code, _, stderr) = run_cli_bytes(dir.path(), &["check"], envs);
        assert_eq!(code, 1, "{envs:?}: {stderr}");
        let warnings = stderr.lines().filter(|l| l.starts_with(warning)).count();
        assert_eq!(warnings, 1, "{envs:?} {config:?}: {stderr}");
    }
}

/// `serve` stopped by a bad variable logs the other variables' warnings first, as it logs them
/// when it starts (and as it logged a quoted value's in that same run): they were dropped,
/// and came to light only in the run after the bad one was fixed. The cases of
/// [`check_says_the_warnings_beside_a_bad_variable`].
#[test]
fn serve_logs_the_warnings_before_a_bad_variable() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let bypass: (&str, &[u8]) = ("ENABLE_BYPASS", b"yes");
    let quoted: (&str, &[u8]) = ("LLMSROUTER_CONFIG", b"\"config.yaml\"");
    let bad_value: (&str, &[u8]) = ("LLMSROUTER_LOG_BODIES", b"maybe");
    let not_utf8: (&str, &[u8]) = ("LLMSROUTER_LEDGER", b"tru\xffe");
    let cases: [&[(&str, &[u8])]; 3] = [
        &[bypass, quoted, bad_value],
        &[bypass, quoted, not_utf8],
        &[bypass, quoted, bad_value, not_utf8],
    ];
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    for envs in cases {
        let (code, _, stderr) = run_cli_bytes(dir.path(), &serve, envs);
        assert_eq!(code, 2, "{envs:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        let logged = |text: &str| {
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(&format!(" WARN {text}")))
                .collect();
            assert_eq!(at.len(), 1, "{text}: {envs:?}: {stderr}");
            at[0]
        };
        let warnings = [
            logged("ENABLE_BYPASS is ignored: llmsrouter has no bypass"),
            logged("LLMSROUTER_CONFIG: its value is in quotes"),
        ];
        let errors: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), envs.len() - 2, "{envs:?}: {stderr}");
        assert!(
            warnings.iter().all(|w| errors.iter().all(|e| w < e)),
            "the warnings come before the errors: {envs:?}: {stderr}"
        );
    }
}

/// A `RUST_LOG` that cannot be read is a command's warning line, as its other warnings are
/// (it was a timestamped log line); the command still runs at its default level.
#[test]
fn commands_warn_of_an_unreadable_rust_log_in_a_warning_line() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for (value, reason) in [("", "it is set but empty"), ("=x=", "")] {
        for (args, level) in [(&["check"][..], "info"), (&["models"][..], "error")] {
            let (code, _, stderr) = run_cli(dir.path(), args, &[("RUST_LOG", value)]);
            assert_eq!(code, 0, "{args:?} RUST_LOG={value:?}: {stderr}");
            let first = stderr.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("warning: RUST_LOG is not a log filter (")
                    && first.contains(reason)
                    && first.ends_with(&format!("); logging at {level}")),
                "{args:?} RUST_LOG={value:?}: {stderr}"
            );
        }
    }
}

/// `check` refuses what `serve` would refuse at start: a listen address from the variables
/// (in `serve`'s words: a port with a space around it passed `check`, and stopped `serve`),
/// and a request log or database in a folder that does not exist.
#[test]
fn check_sees_the_variables_serve_would_refuse() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    // `check` says each with exit status 1 (its contract: 0 valid, 1 not); `serve` says a bad
    // listen address (`true`: clap reads it there) as the command-line mistake it is, exit
    // status 2, in the same words.
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "LLMSROUTER_PORT",
            "abc",
            "LLMSROUTER_PORT: invalid value 'abc' for --port: invalid digit found in string",
            true,
        ),
        (
            "LLMSROUTER_PORT",
            " 42125",
            "LLMSROUTER_PORT: invalid value ' 42125' for --port",
            true,
        ),
        (
            "LLMSROUTER_PORT",
            "42125 ",
            "LLMSROUTER_PORT: invalid value '42125 ' for --port",
            true,
        ),
        (
            "LLMSROUTER_HOST",
            "bad",
            "LLMSROUTER_HOST: invalid value 'bad' for --host: not an IP address",
            true,
        ),
        (
            "LLMSROUTER_LOG_FILE",
            "/proc/self/no-such-folder/api.log",
            "LLMSROUTER_LOG_FILE: /proc/self/no-such-folder/api.log: /proc/self is a folder this user may not write",
            false,
        ),
        (
            "LLMSROUTER_DB",
            "no-such-folder/users.db",
            "LLMSROUTER_DB/--db: no-such-folder/users.db: the folder no-such-folder does not exist",
            false,
        ),
    ];
    for (name, value, expected, listen) in cases {
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &[(name, value)]);
        assert_eq!(code, 1, "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        // serve refuses each at start (on a free port when the port is not the case).
        let mut envs = vec![(*name, *value)];
        if *name != "LLMSROUTER_PORT" {
            envs.push(("LLMSROUTER_PORT", "0"));
        }
        let (serve_code, _, serve_stderr) = run_cli(dir.path(), &["serve"], &envs);
        assert_ne!(
            serve_code, 0,
            "serve refuses {name}={value} too: {serve_stderr}"
        );
        if *listen {
            assert_eq!(
                (serve_code, &serve_stderr),
                (2, &stderr),
                "{name}={value:?}: serve says what check says"
            );
        }
    }
    // A log folder that does not exist yet is made by serve: fine.
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &["check"],
        &[("LLMSROUTER_LOG_FILE", "logs/new/api.log")],
    );
    assert_eq!(code, 0, "{stdout} {stderr}");
}

/// `check` refuses a request log `serve` cannot open, in `serve`'s words: a folder `/proc` or
/// `/sys` cannot make, a file `/sys` cannot make. Root passes the nearest folder's permission
/// bits, which were all `check` asked, so it said ok and `serve` stopped. (Not root, the bits
/// refuse it first, in `check`'s words that name them.) What `check` makes to find out, it
/// removes: folders yet to be made, a file yet to be made.
#[test]
fn check_refuses_a_log_serve_cannot_open_in_its_words() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let root = std::fs::metadata(dir.path()).expect("dir").uid() == 0;
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    for log in [
        "/proc/nope/api_proxy.log",
        "/proc/api_proxy.log",
        "/sys/nope/api_proxy.log",
        "/sys/api_proxy.log",
    ] {
        let envs = [("LLMSROUTER_LOG_FILE", log), ("LLMSROUTER_LEDGER", "false")];
        let (code, _, stderr) = run_cli(dir.path(), &serve, &envs);
        assert_eq!(code, 1, "{log}: {stderr}");
        let serve_says = format!("error: LLMSROUTER_LOG_FILE: {log}: ");
        let serve_says = stderr
            .lines()
            .find(|line| line.starts_with(&serve_says))
            .unwrap_or_else(|| panic!("{log}: {stderr}"));
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 1, "{log}: {stdout} {stderr}");
        if root {
            assert_eq!(stderr.trim_end(), serve_says, "{log}");
        } else {
            assert!(
                stderr.contains("is a folder this user may not write"),
                "{stderr}"
            );
        }
    }
    // Made to find out, and removed: the folders, and today's file in a folder that exists.
    let made = std::fs::read_dir(dir.path()).expect("list").count();
    for log in ["logs/new/api.log", "api.log"] {
        let envs = [("LLMSROUTER_LOG_FILE", log), ("LLMSROUTER_LEDGER", "false")];
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 0, "{log}: {stdout} {stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(left.len(), made, "{log}: left behind: {left:?}");
    }
}

/// `check` refuses a database `serve` cannot create, as `serve` does: `/proc` and `/sys`
/// refuse every new file, and root passes the folder's permission bits, which were all
/// `check` asked, so it said ok and `serve` stopped ("unable to open database file"). What
/// `check` makes to find out, it removes: a database file yet to be made.
#[test]
fn check_refuses_a_database_serve_cannot_create() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let root = std::fs::metadata(dir.path()).expect("dir").uid() == 0;
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    for db in ["/proc/users.db", "/sys/users.db"] {
        let envs = [("LLMSROUTER_DB", db), ("LLMSROUTER_LEDGER", "true")];
        let (code, _, stderr) = run_cli(dir.path(), &serve, &envs);
        assert_eq!(code, 1, "{db}: {stderr}");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 1, "{db}: {stdout} {stderr}");
        assert!(stderr.contains(db), "{db}: {stderr}");
        if root {
            assert!(
                stderr.contains("unable to open database file"),
                "{db}: {stderr}"
            );
        }
        assert!(!std::path::Path::new(db).exists(), "{db}");
    }
    // Made to find out, and removed.
    for db in ["users.db", "more/../users.db"] {
        if db.starts_with("more") {
            std::fs::create_dir(dir.path().join("more")).expect("folder");
        }
        let envs = [("LLMSROUTER_DB", db), ("LLMSROUTER_LEDGER", "true")];
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 0, "{db}: {stdout} {stderr}");
        assert!(!dir.path().join("users.db").exists(), "{db}: left behind");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .filter(|name| name.to_string_lossy().starts_with("users.db"))
            .collect();
        assert!(left.is_empty(), "{db}: left behind: {left:?}");
    }
}

/// Every problem `check` finds is said in the one run, config.yaml's too: a listen port, a log
/// folder and a database folder that are all wrong (a bind mount not chowned gives two at
/// once) took three runs, one fix each, and a bad config.yaml a fourth.
#[test]
fn check_names_every_problem_in_one_run() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: [\n").expect("config");
    let envs = [
        ("LLMSROUTER_PORT", "abc"),
        ("LLMSROUTER_LOG_FILE", "/proc/self/no-such-folder/api.log"),
        ("LLMSROUTER_DB", "no-such-folder/users.db"),
    ];
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_error_lines(
        &stderr,
        &[
            "LLMSROUTER_PORT: invalid value 'abc' for --port",
            "LLMSROUTER_LOG_FILE: /proc/self/no-such-folder/api.log: /proc/self is a folder",
            "LLMSROUTER_DB/--db: no-such-folder/users.db: the folder no-such-folder does not exist",
            "config.yaml",
        ],
    );
    // A config.yaml that loads is said ok beside the environment's problems.
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(
        (code, stdout.as_str()),
        (1, "./config.yaml: ok, 0 servers (none)\n"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}

/// Every bad router variable is named in one run, by `check` beside the listen address and
/// config.yaml, and by `serve` before it stops; both bad listen variables too (clap names
/// only the first it meets). Each stopped at the first.
#[test]
fn every_bad_variable_is_named_in_one_run() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: [\n").expect("config");
    let envs = [
        ("ENABLE_ACCOUNT_MANAGEMENT", "maybe"),
        ("LLMSROUTER_LEDGER", "x"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ("LLMSROUTER_HOST", "nope"),
        ("LLMSROUTER_PORT", "99999"),
    ];
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    let expected = [
        "ENABLE_ACCOUNT_MANAGEMENT: \"maybe\" is not a boolean",
        "LLMSROUTER_LEDGER: \"x\" is not a boolean",
        "OTEL_BSP_SCHEDULE_DELAY: ",
        "LLMSROUTER_HOST: invalid value 'nope' for --host",
        "LLMSROUTER_PORT: invalid value '99999' for --port",
        "config.yaml",
    ];
    assert_error_lines(&stderr, &expected);
    // The listen address alone: both variables named.
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &envs[3..]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("LLMSROUTER_HOST") && stderr.contains("LLMSROUTER_PORT"),
        "{stderr}"
    );
    // `serve` (its listen flags read first, by clap) says the others and stops with 2.
    let (code, stdout, stderr) = run_cli(dir.path(), &["serve"], &envs[..3]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_error_lines(&stderr, &expected[..3]);
}

/// Variables read together are judged apart: both of a pair that are wrong are named (bb57:
/// the endpoint and its headers, two proxy variables, the two CA variables each named only
/// the first).
#[test]
fn both_bad_variables_of_a_pair_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    for (pair, expected) in [
        (
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "bad"),
            ],
            [
                "OTEL_EXPORTER_OTLP_ENDPOINT: ",
                "OTEL_EXPORTER_OTLP_HEADERS: ",
            ],
        ),
        (
            [
                ("HTTPS_PROXY", "socks5://h:1"),
                ("HTTP_PROXY", "socks5://h:2"),
            ],
            ["HTTPS_PROXY: ", "HTTP_PROXY: "],
        ),
        (
            [
                ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
                ("SSL_CERT_DIR", "/nonexistent/certs"),
            ],
            ["SSL_CERT_FILE: ", "SSL_CERT_DIR: "],
        ),
    ] {
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &pair);
        assert_eq!(code, 1, "{stderr}");
        assert_error_lines(&stderr, &expected);
    }
}

/// Each server of config.yaml is judged apart: the first problem of each is named, by
/// `check` and by `serve` (two servers' unset `${NAME}`s, the template's two keys, took two
/// runs to learn of; bb58).
#[test]
fn each_servers_problem_is_named_in_one_run() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    api_key: ${LR_TEST_UNSET_ONE}\n  \
         ok:\n    url: http://127.0.0.1:9/v1\n  b:\n    url: ftp://h/v1\n    api_key: ${LR_TEST_UNSET_TWO}\n",
    )
    .expect("config");
    let expected = [
        "servers.a.api_key: environment variable LR_TEST_UNSET_ONE is not set",
        "servers.b.url: ",
    ];
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_error_lines(&stderr, &expected);
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("LLMSROUTER_LOG_FILE", "")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_error_lines(&stderr, &expected);
    let (code, _, stderr) = run_cli(dir.path(), &["models"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_error_lines(&stderr, &expected);
}

/// The settings' problems are named in the same run as the servers', each setting judged
/// apart, by `check` and by `serve`: `max_body_bytes: abc` was said only once every server
/// was good, and a setting the YAML reader refuses (`default_server: [a]`, an unknown key)
/// hid the servers' problems, then the other settings' problems. The settings' problems are
/// said in the order written, as the servers' are (they came in a fixed order). A
/// `default_server` naming a server that has a problem is that server's problem.
#[test]
fn settings_problems_are_named_with_the_servers_in_one_run() {
    let dir = tempfile::tempdir().expect("dir");
    let servers = "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    api_key: ${LR_TEST_UNSET_ONE}\n  \
         ok:\n    url: http://127.0.0.1:9/v1\n  b:\n    url: ftp://h/v1\n";
    let cases: [(&str, &[&str]); 6] = [
        (
            "settings:\n  models_fetch_timeout_secs: soon\n  max_body_bytes: abc\n  default_server: a\n",
            &[
                "servers.a.api_key: environment variable LR_TEST_UNSET_ONE is not set",
                "servers.b.url: ",
                "settings.models_fetch_timeout_secs: expected a number at line 10",
                "settings.max_body_bytes: expected a whole number",
            ],
        ),
        (
            "settings:\n  default_server: nowhere\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.default_server: \"nowhere\" is not a server alias (known: a, ok, b)",
            ],
        ),
        (
            "settings:\n  max_body_bytes: abc\n  default_server: [a]\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.max_body_bytes: expected a whole number",
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 11, column 19",
            ],
        ),
        (
            "settings:\n  models_fetch_timeout_secs: soon\n  colour: blue\n  default_server: [a]\n  \
             models_cache_ttl_secs: [1]\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.models_fetch_timeout_secs: expected a number at line 10",
                "settings.colour: unknown field `colour`, expected one of models_cache_ttl_secs, \
                 models_fetch_timeout_secs, max_body_bytes, default_server at line 11, column 3",
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 12",
                "settings.models_cache_ttl_secs: expected one value (text or a number), not a list or a mapping at line 13",
            ],
        ),
        (
            "settings:\n  default_server: nowhere\n  max_body_bytes: abc\n  models_fetch_timeout_secs: 0\n  \
             models_cache_ttl_secs: soon\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.default_server: \"nowhere\" is not a server alias",
                "settings.max_body_bytes: expected a whole number",
                "settings.models_fetch_timeout_secs: must be a number of seconds above 0",
                "settings.models_cache_ttl_secs: expected a number at line 13",
            ],
        ),
        (
            "settings:\n  default_server: [a]\n  max_body_bytes: abc\n  colour: blue\n  \
             models_fetch_timeout_secs: soon\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 10",
                "settings.max_body_bytes: expected a whole number",
                "settings.colour: unknown field `colour`",
                "settings.models_fetch_timeout_secs: expected a number at line 13",
            ],
        ),
    ];
    for (settings, expected) in cases {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{servers}{settings}"),
        )
        .expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        assert_error_lines(&stderr, expected);
        let (code, _, stderr) = run_cli(
            dir.path(),
            &["serve", "--host", "127.0.0.1", "--port", "0"],
            &[("LLMSROUTER_LOG_FILE", "")],
        );
        assert_eq!(code, 1, "{stderr}");
        assert_error_lines(&stderr, expected);
    }
    // A mistake in the YAML itself is still said alone.
    std::fs::write(
        dir.path().join("config.yaml"),
        format!("{servers}settings:\n  default_server: [a\n"),
    )
    .expect("config");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("servers."), "{stderr}");
}

/// config.yaml's `${NAME}`s are bounded for the whole file, as `.env`'s are: ten headers of
/// one 900 KiB variable are refused (300 of a 1 MB one held 950 MB in a router that started;
/// bb59), nine load. Each expansion counts once: a header's were counted twice (read once to
/// note them for redaction, once to expand), so five such headers were refused.
#[test]
fn config_expansions_past_eight_mebibytes_in_all_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join(".env"),
        format!("BIG={}\n", "x".repeat(900 * 1024)),
    )
    .expect(".env");
    let headers: String = (0..10)
        .map(|i| format!("      X-H{i}: \"${{BIG}}\"\n"))
        .collect();
    let config = |headers: &str| {
        format!("servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    headers:\n{headers}")
    };
    std::fs::write(dir.path().join("config.yaml"), config(&headers)).expect("config");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_error_lines(
        &stderr,
        &["(top level): the file's ${NAME}s expand to over 8 MiB in all"],
    );
    let within: String = headers.lines().take(9).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("config.yaml"), config(&within)).expect("config");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
}

/// `stderr` is one `error:` line for each of `expected`, in order, each holding its text.
/// A setting that is `.inf`, `.nan` or too large for a number (`1e400`) beside one the YAML
/// reader refuses (`default_server: [a]`, an unknown key) hides no mistake: the settings are
/// read one by one and a value passed over was refused for being infinite, so only the
/// refused setting was said, not the servers' mistakes nor the infinite value's own.
#[test]
fn a_non_finite_setting_beside_a_refused_one_hides_no_mistake() {
    let dir = tempfile::tempdir().expect("dir");
    let servers = "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    api_key: ${LR_TEST_UNSET_ONE}\n  \
         b:\n    url: ftp://h/v1\n";
    let ttl = "settings.models_cache_ttl_secs: must be a number of seconds, 0 or more";
    let fetch = "settings.models_fetch_timeout_secs: must be a number of seconds above 0";
    let cases: [(&str, &[&str]); 4] = [
        (
            "settings:\n  default_server: [a]\n  models_cache_ttl_secs: .inf\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 8",
                &format!("{ttl} and below 1000000000 (1e9) at line 9, column 26"),
            ],
        ),
        (
            "settings:\n  models_cache_ttl_secs: 1e400\n  default_server: [a]\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                // Out of range, as `.inf` is (it was "expected a number").
                &format!("{ttl} and below 1000000000 (1e9) at line 8, column 26"),
                "settings.default_server: expected one value",
            ],
        ),
        (
            "settings:\n  colour: 1\n  models_fetch_timeout_secs: .nan\n  max_body_bytes: abc\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                "settings.colour: unknown field `colour`",
                &format!("{fetch} and below 1000000000 (1e9) at line 9, column 30"),
                "settings.max_body_bytes: expected a whole number",
            ],
        ),
        (
            "settings:\n  models_fetch_timeout_secs: .inf\n  colour: 1\n",
            &[
                "servers.a.api_key: ",
                "servers.b.url: ",
                &format!("{fetch} and below 1000000000 (1e9) at line 8"),
                "settings.colour: unknown field `colour`",
            ],
        ),
    ];
    for (settings, expected) in cases {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{servers}{settings}"),
        )
        .expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        assert_error_lines(&stderr, expected);
    }
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("LLMSROUTER_LOG_FILE", "")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_error_lines(&stderr, cases[3].1);
}

/// A setting merged in by `<<` has its mistake said where the `<<` is, the line its message
/// names, among the others in the order written: it was said after every other setting's.
#[test]
fn a_merged_settings_mistake_is_said_where_the_merge_is() {
    let dir = tempfile::tempdir().expect("dir");
    let servers =
        "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n    headers: &b {max_body_bytes: \"0\"}\n";
    let cases: [(&str, &[&str]); 3] = [
        (
            "settings:\n  <<: {max_body_bytes: -3}\n  default_server: [a]\n  models_cache_ttl_secs: -2\n",
            &[
                "settings.max_body_bytes: must be above 0 at line 6, column 7",
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 7",
                "settings.models_cache_ttl_secs: must be a number of seconds, 0 or more and below 1000000000 (1e9) at line 8",
            ],
        ),
        (
            "settings:\n  default_server: [a]\n  <<: *b\n  models_cache_ttl_secs: -2\n",
            &[
                "settings.default_server: expected one value",
                "settings.max_body_bytes: must be above 0 at line 7, column 7",
                "settings.models_cache_ttl_secs: must be a number of seconds, 0 or more and below 1000000000 (1e9) at line 8",
            ],
        ),
        (
            "settings:\n  default_server: nowhere\n  <<: *b\n  models_fetch_timeout_secs: soon\n",
            &[
                "settings.default_server: \"nowhere\" is not a server alias",
                "settings.max_body_bytes: must be above 0 at line 7, column 7",
                "settings.models_fetch_timeout_secs: expected a number at line 8",
            ],
        ),
    ];
    for (settings, expected) in cases {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{servers}{settings}"),
        )
        .expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        assert_error_lines(&stderr, expected);
    }
}

/// An odd key under `settings` (`null:`, `[k]:`, a number) is named as a key that is no
/// setting, with its line, and hides none of the other settings' mistakes nor the servers':
/// `null:` was said as "empty (null) where a value is needed" alone, and a `1:` beside it
/// hid it and every other setting's mistake.
#[test]
fn an_odd_settings_key_is_named_beside_the_other_mistakes() {
    let dir = tempfile::tempdir().expect("dir");
    let servers = "servers:\n  a:\n    url: http://127.0.0.1:9/v1\n  b:\n    url: ftp://h/v1\n";
    let expected_one = "expected one of models_cache_ttl_secs, models_fetch_timeout_secs, \
         max_body_bytes, default_server at line";
    let null_key = format!(
        "settings: a null key (`null:`, `~:` or no key before the `:`), {expected_one} 7, column 3"
    );
    let cases: [(&str, Vec<String>); 3] = [
        (
            "settings:\n  null: y\n  default_server: [a]\n  max_body_bytes: abc\n",
            vec![
                "servers.b.url: ".into(),
                null_key.clone(),
                "settings.default_server: expected one value (text or a number), not a list or a mapping at line 8".into(),
                "settings.max_body_bytes: expected a whole number".into(),
            ],
        ),
        (
            "settings:\n  [k]: z\n  max_body_bytes: abc\n  {m: 1}: z\n",
            vec![
                "servers.b.url: ".into(),
                format!("settings: a list as a key (`[k]:`), {expected_one} 7, column 3"),
                "settings.max_body_bytes: expected a whole number (no fraction or exponent such as 1e6) at line 8".into(),
                format!("settings: a mapping as a key (`{{k: v}}:`), {expected_one} 9, column 3"),
            ],
        ),
        (
            "settings:\n  0x1F: x\n  null: y\n  max_body_bytes: abc\n",
            vec![
                "servers.b.url: ".into(),
                format!("settings.0x1F: unknown field `0x1F`, {expected_one} 7, column 3"),
                null_key.replace("line 7", "line 8"),
                "settings.max_body_bytes: expected a whole number".into(),
            ],
        ),
    ];
    for (settings, expected) in &cases {
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{servers}{settings}"),
        )
        .expect("config");
        let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_error_lines(&stderr, &expected);
    }
}

fn assert_error_lines(stderr: &str, expected: &[&str]) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(
            line.starts_with("error: ") && line.contains(expected),
            "{expected}: {stderr}"
        );
    }
}

type Pieces = futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>;

/// A router process streaming `chunks` events 100 ms apart to a client that has read the
/// first piece (returned as the text so far).
async fn stream_under_way(chunks: usize) -> (MockUpstream, RouterProcess, Pieces, String) {
    let upstream = MockUpstream::start(Behavior {
        chunks,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &[]);
    let response = router
        .chat(&json!({"model": "[mock]m", "stream": true, "messages": []}))
        .await;
    let mut stream: Pieces = Box::pin(response.bytes_stream());
    let first = stream.next().await.expect("first piece").expect("ok");
    let text = String::from_utf8_lossy(&first).into_owned();
    (upstream, router, stream, text)
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    let (upstream, mut router, mut stream, mut text) = stream_under_way(10).await;
    router.terminate();
    while let Some(piece) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&piece.expect("piece")));
    }
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    let status = router.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", router.stderr());
    let refused = client().get(router.url("/health")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

/// A SIGTERM sent the moment the start-up line appears (a supervisor that waits for it, or a
/// test harness) is a graceful stop, exit 0. The handlers used to be installed only after
/// that line, and such a signal killed the process by its default action (exit status 143,
/// nothing flushed) most times.
#[tokio::test]
async fn a_sigterm_right_after_the_start_up_line_is_a_graceful_stop() {
    for _ in 0..5 {
        let mut router = RouterProcess::start(None, &[]);
        router.terminate();
        let status = router.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "{status}: {}", router.stderr());
        assert!(router.stderr().contains("stopped"), "{}", router.stderr());
    }
}

/// SIGHUP (the terminal or ssh session closed) is a graceful shutdown, as SIGTERM is: the
/// running stream finishes and the router exits 0. Before, it killed the process at once
/// (exit 129) and the records of the requests under way were lost. A second SIGHUP (a
/// closing session may send two) does not cut the stream short as a second SIGTERM would.
#[tokio::test]
async fn sighup_shuts_down_gracefully_and_a_second_one_cuts_nothing() {
    let (upstream, mut router, mut stream, mut text) = stream_under_way(10).await;
    router.signal("HUP");
    logged(&router, "shutting down").await;
    router.signal("HUP");
    logged(&router, "SIGHUP ignored").await;
    while let Some(piece) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&piece.expect("piece")));
    }
    assert_eq!(text, expected_stream(&upstream.behavior(), false));
    let status = router.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", router.stderr());
    let stderr = router.stderr();
    assert!(stderr.contains("stopped"), "{stderr}");
    // The recorder's figures with the sinks': nothing lost here.
    let recorder = stderr
        .lines()
        .find(|l| l.contains("recorder finished"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        recorder.contains("records_dropped=0") && recorder.contains("record_bodies_dropped=0"),
        "{recorder}"
    );
}

/// Started with SIGHUP ignored (`nohup llmsrouter serve &`), the router keeps it ignored: it
/// answers after one, and stops on SIGTERM alone.
#[tokio::test]
async fn a_router_started_with_nohup_ignores_sighup() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let mut router =
        RouterProcess::start_ignoring_hangup(&one_server_config(&upstream.url(), ""), &[]);
    // An ignored signal is discarded when sent: once `kill` returned, it is gone.
    router.signal("HUP");
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    router.terminate();
    let status = router.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", router.stderr());
    assert!(!router.stderr().contains("SIGHUP"), "{}", router.stderr());
}

/// Polls the router's log for `line` (a signal is counted before the next is sent: two sent
/// at once may arrive as one).
async fn logged(router: &RouterProcess, line: &str) {
    let router_log = || router.stderr().contains(line);
    wait_until(Duration::from_secs(10), router_log).await;
}

/// A second SIGTERM during the grace period cuts the running stream now, with its error
/// event, instead of letting it run its 20 s; the router exits 0 as after any shutdown.
#[tokio::test]
async fn a_second_sigterm_cuts_the_running_requests_at_once() {
    let (_upstream, mut router, mut stream, mut text) = stream_under_way(200).await;
    router.terminate();
    logged(&router, "shutting down").await;
    router.terminate();
    let rest = async {
        while let Some(piece) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&piece.expect("piece")));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rest)
        .await
        .expect("the stream was cut, not left to run");
    assert!(text.contains("server_shutting_down"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let status = router.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", router.stderr());
    assert!(router.stderr().contains("asked again to stop"));
}

/// A third SIGTERM ends the process at once (130), even while it waits to flush traces to a
/// Langfuse that never answers (which could take 15 s).
#[tokio::test]
async fn a_third_sigterm_exits_at_once() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    // Takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let langfuse = format!("http://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    let mut router = RouterProcess::start(
        Some(&one_server_config(&upstream.url(), "")),
        &[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-test"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-test"),
            ("LANGFUSE_HOST", &langfuse),
        ],
    );
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    router.terminate();
    logged(&router, "shutting down").await;
    router.terminate();
    logged(&router, "asked again to stop").await;
    let third = std::time::Instant::now();
    router.terminate();
    let status = router.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(130), "{}", router.stderr());
    assert!(
        third.elapsed() < Duration::from_secs(5),
        "not the flush's 15 s: {:?}",
        third.elapsed()
    );
    assert!(router.stderr().contains("asked a third time to stop"));
    held.abort();
}

/// `llmsrouter healthcheck` of a port on 127.0.0.1: exit status, stdout, stderr.
async fn healthcheck_of(port: u16) -> (i32, String, String) {
    let port = port.to_string();
    tokio::task::spawn_blocking(move || {
        run_cli(
            std::path::Path::new("."),
            &["healthcheck", "--host", "127.0.0.1", "--port", &port],
            &[],
        )
    })
    .await
    .expect("healthcheck")
}

#[tokio::test]
async fn healthcheck_probes_a_running_router() {
    let router = RouterProcess::start(None, &[]);
    let port = router.addr.port().to_string();
    let (code, stdout, stderr) = run_cli(
        router.path(),
        &["healthcheck", "--host", "0.0.0.0", "--port", &port],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "ok");
    // Its `ok` into a pipe nobody reads: still the answer (exit 0), not a panic.
    let (code, stderr) = crate::support::run_cli_into_closed_pipe(
        router.path(),
        &["healthcheck", "--port", &port],
        &[],
    );
    assert_eq!((code, stderr.as_str()), (0, ""));
    drop(router);
    let (code, _, stderr) = run_cli(
        std::path::Path::new("."),
        &["healthcheck", "--port", &port],
        &[("LLMSROUTER_HOST", "127.0.0.1")],
    );
    assert_eq!(code, 1);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/health"), "{stderr}");
}

/// `healthcheck` against something answering 200 with another body (another program on the
/// router's port) says the body was not the router's and how it begins, escaped: it said
/// only "answered HTTP 200", which read as a contradiction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_says_a_body_that_is_not_the_routers() {
    let other = MockUpstream::start(Behavior {
        body: Some(format!(
            "<h1>\u{1b}[2JWelcome to nginx!</h1>\n{}",
            "x".repeat(100)
        )),
        content_type: "text/html".into(),
        ..Behavior::default()
    })
    .await;
    let (code, stdout, stderr) = healthcheck_of(other.addr.port()).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: http://127.0.0.1:{}/health: answered HTTP 200, but not with {{\"status\":\"ok\"}} (is another program listening there?); the body begins: <h1>\\u{{1b}}[2JWelcome to nginx!</h1>\\n{}…",
            other.addr.port(),
            "x".repeat(29)
        )
    );
}

/// A redirect on `/health` is another program's answer (the router answers it itself), said as
/// such: healthcheck followed it, printing `ok` for one to a router elsewhere, and "no answer"
/// from this port for one to a dead port.
#[tokio::test]
async fn healthcheck_does_not_follow_a_redirect() {
    let router_elsewhere = crate::support::TestRouter::start("").await;
    let other = MockUpstream::start(Behavior {
        status: 301,
        headers: vec![("location".into(), router_elsewhere.url("/health"))],
        body: Some(String::new()),
        ..Behavior::default()
    })
    .await;
    let (code, stdout, stderr) = healthcheck_of(other.addr.port()).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: http://127.0.0.1:{}/health: answered HTTP 301",
            other.addr.port()
        )
    );
    router_elsewhere.stop().await;
}

/// The Python version's `.env`, byte for byte: quoted values and emoji in comments.
const PYTHON_DOT_ENV: &str = "LANGFUSE_SECRET_KEY=\"sk-lf-...\"\nLANGFUSE_PUBLIC_KEY=\"pk-lf-...\"\n# 🇪🇺 EU region\nLANGFUSE_HOST=\"https://cloud.langfuse.com\"\n# 🇺🇸 US region\n# LANGFUSE_HOST=\"https://us.cloud.langfuse.com\"\n# self-host\n# LANGFUSE_HOST=\"http://<YOUR_LANGFUSE_SERVER>:3000\"\n\nENABLE_ACCOUNT_MANAGEMENT=\"false\"";

#[tokio::test]
async fn the_python_versions_dot_env_loads_unchanged() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join(".env"), PYTHON_DOT_ENV).expect("env");
    std::fs::write(dir.path().join("config.yaml"), PYTHON_TEMPLATE).expect("config");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("account management off"), "{stdout}");
    assert!(
        stdout.contains("cloud.langfuse.com"),
        "quoted values are unquoted: {stdout}"
    );
    assert!(
        !stdout.contains("sk-lf-") && !stderr.contains("sk-lf-"),
        "keys never printed"
    );

    // Serving with it: quoted "false" turns accounts off. The real environment wins over
    // .env, so tracing goes to a closed local port instead of Langfuse Cloud.
    let closed_url = crate::support::closed_origin();
    let router = RouterProcess::start_in(dir, &[("LANGFUSE_HOST", &closed_url)]);
    let response = client()
        .post(router.url(&format!("/v1/chat/completions?proxy={}", upstream.origin())))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "no key needed: accounts are off");
    assert!(router.stderr().contains(&closed_url), "{}", router.stderr());
}

/// `docker run --env-file .env` keeps the quotes of the Python version's `.env` in the values
/// (moby#46773): `ENABLE_ACCOUNT_MANAGEMENT="false"` stopped the router ("\"\"false\"\" is not
/// a boolean"), and `api_key: "${A_KEY}"` went upstream as `Bearer "sk-..."`. A value in one
/// pair of quotes is read without them, for every variable the router reads (flags' too) and
/// every `${NAME}` of config.yaml, with one warning naming each, never the value; `check`
/// says the same warnings and passes.
#[tokio::test]
async fn values_in_quotes_as_docker_env_file_keeps_them_are_read_without() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let closed = crate::support::closed_origin();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"${{A_KEY}}\"\n    headers: {{X-Again: \"${{A_KEY}}\"}}\n",
            upstream.url()
        ),
    )
    .expect("config");
    let quoted_host = format!("\"{closed}\"");
    let envs = [
        ("LANGFUSE_SECRET_KEY", "\"sk-lf-secret1\""),
        ("LANGFUSE_PUBLIC_KEY", "\"pk-lf-public1\""),
        ("LANGFUSE_HOST", quoted_host.as_str()),
        ("ENABLE_ACCOUNT_MANAGEMENT", "\"false\""),
        ("LLMSROUTER_LOG_FILE", "'requests.log'"),
        ("LLMSROUTER_CONFIG", "\"config.yaml\""),
        ("A_KEY", "\"sk-x-secret\""),
    ];
    let warnings: Vec<String> = [
        "ENABLE_ACCOUNT_MANAGEMENT",
        "LLMSROUTER_LOG_FILE",
        "LANGFUSE_PUBLIC_KEY",
        "LANGFUSE_SECRET_KEY",
        "LANGFUSE_HOST",
        "LLMSROUTER_CONFIG",
        "config.yaml: ${A_KEY}",
    ]
    .iter()
    .map(|name| {
        format!("{name}: its value is in quotes, as `docker run --env-file` keeps them: read without them")
    })
    .collect();
    let secrets = ["sk-lf-secret1", "pk-lf-public1", "sk-x-secret"];

    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let said: Vec<String> = warnings.iter().map(|w| format!("warning: {w}")).collect();
    assert_eq!(stderr.trim().lines().collect::<Vec<_>>(), said);
    assert_eq!(
        stdout,
        format!(
            "config.yaml: ok, 1 server (mock)\nenvironment: ok (account management off, request log requests.log, tracing langfuse {closed}/api/public/otel/v1/traces)\n"
        )
    );
    assert!(secrets.iter().all(|s| !stderr.contains(s)), "{stderr}");

    let router = RouterProcess::start_in(dir, &envs);
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    assert_eq!(response.status(), 200, "no key needed: accounts are off");
    let got = upstream.last();
    assert_eq!(got.headers["authorization"], "Bearer sk-x-secret");
    assert_eq!(got.headers["x-again"], "sk-x-secret");
    let log = router.stderr();
    for warning in &warnings {
        assert_eq!(log.matches(warning.as_str()).count(), 1, "{warning}: {log}");
    }
    assert!(secrets.iter().all(|s| !log.contains(s)), "{log}");
}

/// `models` says that it read a `${NAME}` of config.yaml without its quotes as `check` does,
/// on a `warning:` line. Before, it took them off in silence.
#[test]
fn models_names_a_config_value_read_without_quotes() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "servers:\n  s:\n    url: \"{}/v1\"\n    api_key: \"${{M_KEY}}\"\n",
            crate::support::closed_origin()
        ),
    )
    .expect("config");
    let (_, _, stderr) = run_cli(
        dir.path(),
        &["models", "--json"],
        &[("M_KEY", "\"sk-m-secret\"")],
    );
    let warning = "warning: ./config.yaml: ${M_KEY}: its value is in quotes, as `docker run --env-file` keeps them: read without them";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(!stderr.contains("sk-m-secret"), "{stderr}");
}

/// Quotes inside a `.env` value's own quotes (`V='"x"'`) are part of the value, as
/// python-dotenv reads them (the Python version sent `Bearer "x"`): only a value from the real
/// environment, where `docker run --env-file` leaves a `.env`'s quotes, is read without them.
/// Before, the router took them off a second time and blamed docker.
#[tokio::test]
async fn quotes_kept_inside_a_dotenv_value_are_meant() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "servers:\n  mock:\n    url: \"{}\"\n    api_key: \"${{V1}}\"\n",
            upstream.url()
        ),
    )
    .expect("config");
    std::fs::write(
        dir.path().join(".env"),
        "V1='\"quoted-in-dotenv\"'\nLLMSROUTER_LOG_FILE='\"requests.log\"'\n",
    )
    .expect(".env");

    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "nothing was unquoted");
    assert!(stdout.contains("request log \"requests.log\""), "{stdout}");

    let router = RouterProcess::start_in(dir, &[]);
    let response = router.chat(&json!({"model": "[mock]m"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.last().headers["authorization"],
        "Bearer \"quoted-in-dotenv\""
    );
    assert!(!router.stderr().contains("docker"), "{}", router.stderr());
}

/// A password (or token) in `LANGFUSE_HOST` or `OTEL_EXPORTER_OTLP_ENDPOINT`, before `@` or
/// in the query, is never printed: `check` and the start-up log show `[redacted]` there.
/// Before, both printed the URL whole.
#[tokio::test]
async fn tracing_urls_are_printed_without_their_credentials() {
    let closed = crate::support::closed_origin();
    let with_credentials = closed.replace("http://", "http://admin:hunter2secret@");
    let otlp = format!("{with_credentials}/otel?token=otlptokensecret");
    let envs = [
        ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
        ("LANGFUSE_SECRET_KEY", "sk-lf-1"),
        ("LANGFUSE_HOST", with_credentials.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
    ];
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("write");
    let (code, stdout, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let host = closed.trim_start_matches("http://");
    assert!(
        stdout.contains(&format!(
            "http://[redacted]@{host}/otel/v1/traces?[redacted]"
        )),
        "{stdout}"
    );
    let router = RouterProcess::start_in(dir, &envs);
    crate::support::wait_until(Duration::from_secs(10), || {
        router.stderr().matches("tracing to").count() == 2
    })
    .await;
    for (name, text) in [("check", stdout), ("serve", router.stderr())] {
        assert!(
            !text.contains("hunter2secret") && !text.contains("otlptokensecret"),
            "{name}: {text}"
        );
    }
}

/// Through the proxy the environment names, a server `url`'s user info is never in the
/// request line (the absolute URL a proxy reads, and may log), nor in the router's debug
/// log: taken out and sent as Basic credentials, by chat requests and the model-list fetch
/// alike. reqwest, which sends these, kept a user name that is not UTF-8 once decoded
/// (`%FF`) in the URL, password and all.
#[tokio::test]
async fn a_servers_url_credentials_are_never_in_a_proxys_request_line() {
    let proxy = MockUpstream::start(Behavior::default()).await;
    let config = "servers:\n  odd:\n    url: \"http://%FFkay:secretpw@provider.invalid/v1\"\n  \
                  utf8:\n    url: \"http://user:secretpw@provider.invalid/v1\"\n";
    let envs = [("HTTP_PROXY", proxy.origin()), ("RUST_LOG", "debug".into())];
    let envs: Vec<_> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let router = RouterProcess::start(Some(config), &envs);
    // base64(b"\xffkay:secretpw"), base64("user:secretpw")
    let credentials = [
        ("odd", "Basic /2theTpzZWNyZXRwdw=="),
        ("utf8", "Basic dXNlcjpzZWNyZXRwdw=="),
    ];
    for (alias, basic) in credentials {
        let response = router
            .chat(&json!({"model": format!("[{alias}]m"), "messages": []}))
            .await;
        assert_eq!(response.status(), 200, "{alias}: {}", router.stderr());
        let got = proxy.last();
        assert_eq!(got.target, "http://provider.invalid/v1/chat/completions");
        let sent: Vec<_> = got.headers.get_all("authorization").iter().collect();
        assert_eq!(sent, [basic], "{alias}");
    }
    let response = client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let fetches: Vec<_> = proxy
        .received()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(fetches.len(), 2);
    for got in fetches {
        assert_eq!(got.target, "http://provider.invalid/v1/models");
        let sent: Vec<_> = got.headers.get_all("authorization").iter().collect();
        assert!(
            credentials.iter().any(|(_, basic)| sent == [*basic]),
            "{sent:?}"
        );
    }
    let log = router.stderr();
    assert!(!log.contains("secretpw"), "{log}");
}

/// With HTTP_PROXY set, requests to a provider go through that proxy (here the mock, which
/// answers the absolute-form request itself): the provider's host is never resolved.
#[tokio::test]
async fn providers_are_reached_through_the_proxy_the_environment_names() {
    let proxy = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config("http://provider.invalid/v1", "");
    let router = RouterProcess::start(Some(&config), &[("HTTP_PROXY", &proxy.origin())]);
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 200, "{}", router.stderr());
    let received = proxy.last();
    assert_eq!(received.path, "/v1/chat/completions");
    assert_eq!(
        received.headers.get("host").and_then(|v| v.to_str().ok()),
        Some("provider.invalid"),
        "the proxy was asked for the provider"
    );
    // A large body goes as pieces around the client's bytes, with its exact length.
    let content = "0123456789abcdef".repeat(16 * 1024);
    let body = json!({"model": "[mock]m", "messages": [{"role": "user", "content": content}]});
    let response = router.chat(&body).await;
    assert_eq!(response.status(), 200);
    let expected = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
    let received = proxy.last();
    assert!(
        received.body == expected.to_string().as_bytes(),
        "the body differs"
    );
    assert_eq!(
        received.headers["content-length"],
        expected.to_string().len().to_string().as_str()
    );
}

/// The proxy variable's credentials are secrets like a configured key: an upstream that
/// echoes the `Proxy-Authorization` a proxy passed on shows them neither to the client nor in
/// the request log (they were written as sent).
#[tokio::test]
async fn a_proxys_credentials_echoed_by_an_upstream_are_redacted() {
    let password = "ProxyPass_s3cret99";
    let basic = "cHJveHl1c2VyOlByb3h5UGFzc19zM2NyZXQ5OQ==";
    let echo = json!({"error": {"message": format!("bad auth: Proxy-Authorization: Basic {basic} ({password})")}});
    let proxy = MockUpstream::start(Behavior {
        status: 401,
        body: Some(echo.to_string()),
        ..Behavior::default()
    })
    .await;
    let config = one_server_config("http://provider.invalid/v1", "");
    let with_credentials =
        proxy
            .origin()
            .replacen("http://", &format!("http://proxyuser:{password}@"), 1);
    let router = RouterProcess::start(Some(&config), &[("HTTP_PROXY", &with_credentials)]);
    let response = router
        .chat(&json!({"model": "[mock]m", "messages": []}))
        .await;
    assert_eq!(response.status(), 401, "{}", router.stderr());
    let body = response.text().await.expect("body");
    assert!(
        body.contains("Proxy-Authorization: Basic [redacted] ([redacted])"),
        "{body}"
    );
    // The request log (on by default, `./api_proxy.YYYY-MM-DD.log`) has the line once written.
    let written = || {
        std::fs::read_dir(router.path()).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("api_proxy.")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
    };
    wait_until(Duration::from_secs(10), written).await;
    let lines = crate::telemetry::request_log::read_log_lines(router.path(), "api_proxy");
    let line = lines[0].to_string();
    assert!(!line.contains(password) && !line.contains(basic), "{line}");
    assert!(line.contains("[redacted]"), "{line}");
}

/// The model-list fetch's warning (the `serve` log's, `llmsrouter models`'s) quotes an error
/// body with the same secrets taken out as a chat request's: a proxy that echoes the
/// `Proxy-Authorization` it was sent shows its credentials, Basic or plain, in neither.
#[tokio::test]
async fn a_proxys_credentials_echoed_to_the_model_list_fetch_are_redacted() {
    let password = "ProxyPass_s3cret99";
    let basic = "cHJveHl1c2VyOlByb3h5UGFzc19zM2NyZXQ5OQ==";
    let proxy = MockUpstream::start(Behavior {
        models_status: Some(500),
        models_body: Some(format!("echo Basic {basic} (proxyuser:{password})")),
        ..Behavior::default()
    })
    .await;
    let config = one_server_config("http://provider.invalid/v1", "");
    let with_credentials =
        proxy
            .origin()
            .replacen("http://", &format!("http://proxyuser:{password}@"), 1);
    let envs = [("HTTP_PROXY", with_credentials.as_str())];
    let redacted = "HTTP 500: echo Basic [redacted] (proxyuser:[redacted])";
    let router = RouterProcess::start(Some(&config), &envs);
    router
        .list_models_and_wait_for_warnings(&[("mock", redacted)])
        .await;
    let log = router.stderr();
    assert!(!log.contains(password) && !log.contains(basic), "{log}");

    let dir = router.path().to_owned();
    let (_, _, stderr) = tokio::task::spawn_blocking(move || {
        run_cli(&dir, &["models"], &[("HTTP_PROXY", &with_credentials)])
    })
    .await
    .expect("cli task");
    assert!(
        stderr.contains(&format!("warning: server \"mock\": {redacted}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(password) && !stderr.contains(basic),
        "{stderr}"
    );
}

/// `NO_PROXY=*` (either case of the name, spaces around it) sends every request directly, to
/// an upstream named by its IP address too, as curl and httpx read it: the client's matcher
/// took `*` for every host name but no address, and `http://127.0.0.1:port` went through the
/// proxy. A URL with credentials too (reqwest used to send those).
#[tokio::test]
async fn no_proxy_star_sends_every_request_directly() {
    let proxy = MockUpstream::start(Behavior::default()).await;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let with_credentials = upstream.url().replacen("http://", "http://user:pw@", 1);
    for (name, value) in [("NO_PROXY", "*"), ("no_proxy", " * ")] {
        for url in [upstream.url(), with_credentials.clone()] {
            let config = one_server_config(&url, "");
            let router = RouterProcess::start(
                Some(&config),
                &[("HTTP_PROXY", &proxy.origin()), (name, value)],
            );
            let response = router
                .chat(&json!({"model": "[mock]m", "messages": []}))
                .await;
            assert_eq!(response.status(), 200, "{}", router.stderr());
            assert_eq!(
                proxy.count(),
                0,
                "{name}={value:?} {url}: through the proxy"
            );
        }
    }
    let chats = upstream.received().into_iter();
    assert_eq!(
        chats
            .filter(|r| r.path.ends_with("/chat/completions"))
            .count(),
        4
    );
}

/// The soft limit on open files, from `/proc/<pid>/limits`.
fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .expect("soft limit");
    soft.parse().unwrap_or(u64::MAX)
}

/// Out of file descriptors, `accept` fails every second until connections close: said at
/// most once per warning interval with the count so far (it was a line a second), and the
/// router serves again once connections close.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn failed_accepts_are_warned_of_at_most_once_per_interval_with_their_count() {
    let router = RouterProcess::start_with_hard_open_files(
        "servers: {}\n",
        &[
            ("LLMSROUTER_TEST_WARNING_INTERVAL_MS", "1500"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
        48,
    );
    // Connected, never asking: each holds one of the router's descriptors.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(
            tokio::net::TcpStream::connect(router.addr)
                .await
                .expect("connect"),
        );
    }
    // A line that counts failures it did not say one by one (one a second, a line at most
    // every 1.5 s).
    wait_until(Duration::from_secs(20), || {
        router.stderr().lines().any(|line| {
            line.contains("accept error")
                && line
                    .split("since_last_warning=")
                    .nth(1)
                    .and_then(|n| n.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 2)
        })
    })
    .await;
    let lines = router.stderr();
    let every_second = lines.lines().filter(|l| l.contains("accept error")).count();
    let failed: u64 = lines
        .lines()
        .filter_map(|l| l.split(" failed=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0);
    assert!((every_second as u64) < failed, "{lines}");
    drop(idle);
    let health = reqwest_retrying(&router.url("/health")).await;
    assert_eq!(health, 200);
}

/// GETs `url` until it answers (connections queued while the router was out of descriptors
/// are served as they close), within a deadline; the status.
async fn reqwest_retrying(url: &str) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            return response.status().as_u16();
        }
        assert!(std::time::Instant::now() < deadline, "no answer");
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_low_open_files_limit_is_raised_so_connections_past_it_are_served() {
    const SOFT: u64 = 64;
    const CONNECTIONS: usize = 150;
    let hard = {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("line")
            .to_owned();
        line.split_whitespace()
            .nth(4)
            .and_then(|h| h.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    assert!(
        hard >= 4 * CONNECTIONS as u64,
        "this test needs a hard limit on open files of at least {}",
        4 * CONNECTIONS
    );
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router =
        RouterProcess::start_with_open_files(&one_server_config(&upstream.url(), ""), &[], SOFT);
    assert!(
        soft_open_files(router.child.id()) > SOFT,
        "the soft limit stayed at {SOFT}; stderr: {}",
        router.stderr()
    );
    assert!(
        router
            .stderr()
            .contains(&format!("open files limit raised from {SOFT}")),
        "{}",
        router.stderr()
    );

    // Every connection stays open: far more of them than the old limit allows.
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut connection = Raw::connect(router.addr).await;
        connection
            .send(post("/v1/chat/completions", CHAT, "").as_bytes())
            .await;
        assert_eq!(connection.answer().await.status, 200, "connection {i}");
        connections.push(connection);
    }
    assert_eq!(upstream.count(), CONNECTIONS);
}

#[tokio::test]
async fn an_unreachable_upstream_is_one_warning_per_ten_seconds_not_one_per_request() {
    let config = one_server_config(&crate::support::closed_url(), "");
    let mut router = RouterProcess::start(Some(&config), &[]);
    let started = std::time::Instant::now();
    const REQUESTS: usize = 30;
    for _ in 0..REQUESTS {
        let response = router
            .chat(&json!({"model": "[mock]m", "messages": []}))
            .await;
        assert_eq!(response.status(), 502);
    }
    assert_warned_once_per_window(&mut router, "upstream_unreachable", started.elapsed()).await;
}

/// Stops the router, then checks its log has at least one WARN line for `code` and no more
/// than one per 10-s window of the `elapsed` the failures took.
async fn assert_warned_once_per_window(router: &mut RouterProcess, code: &str, elapsed: Duration) {
    let stderr = router.stop_for_log().await;
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(code))
        .count();
    // The tests take far less than 10 s unless the machine crawls.
    let allowed = 1 + (elapsed.as_secs() / 10) as usize;
    assert!(
        warnings >= 1 && warnings <= allowed,
        "{warnings} warnings in {elapsed:?}:\n{stderr}"
    );
}

#[tokio::test]
async fn streams_that_break_off_are_logged_once_per_ten_seconds_too() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 5,
        abort_after: Some(2),
        chunk_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .await;
    let mut router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &[]);
    let started = std::time::Instant::now();
    const STREAMS: usize = 10;
    for _ in 0..STREAMS {
        let response = router
            .chat(&json!({"model": "[mock]m", "stream": true, "messages": []}))
            .await;
        // Begun (200), then cut with an error event.
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("the stream, cut");
        assert!(text.contains("upstream_unreachable"), "{text}");
    }
    assert_warned_once_per_window(&mut router, "upstream_unreachable", started.elapsed()).await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// RSS growth since `before`, polled for up to 5 s until it is under `limit` (memory just
/// freed reaches the system a little later).
async fn settled_growth(pid: u32, before: u64, limit: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let grown = rss_kib(pid).saturating_sub(before);
        if grown < limit || std::time::Instant::now() > deadline {
            return grown;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_connection_does_not_keep_the_buffer_of_its_last_large_request() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config(&upstream.url(), "");
    // No sinks: a record's copy of the body must not be what the measure sees.
    let router = RouterProcess::start(
        Some(&config),
        &[("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")],
    );
    let content = "x".repeat(1_000_000);
    let body =
        json!({"model": "[mock]m", "messages": [{"role": "user", "content": content}]}).to_string();
    let request = post("/v1/chat/completions", &body, "");
    // One first, on a connection then closed: what the allocator keeps for itself is
    // counted before the measure.
    let mut warm = Raw::connect(router.addr).await;
    warm.send(request.as_bytes()).await;
    assert_eq!(warm.answer().await.status, 200);
    drop(warm);
    let pid = router.child.id();
    let before = rss_kib(pid);
    const CONNECTIONS: u64 = 40;
    let mut idle = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(request.as_bytes()).await;
        assert_eq!(raw.answer().await.status, 200);
        idle.push(raw);
    }
    // Kept, the buffer was about 300 KiB a connection.
    let grown = settled_growth(pid, before, CONNECTIONS * 150).await;
    assert!(
        grown < CONNECTIONS * 150,
        "{grown} KiB more for {CONNECTIONS} idle connections"
    );
    assert_eq!(upstream.count(), CONNECTIONS as usize + 1);
}

/// A request the router refuses before routing it is in no record; its id is in the
/// server log, with its status and code but not its message (which may quote what the
/// client sent: a `?proxy=` URL with credentials, a key), one line per code per window.
#[tokio::test]
async fn a_refused_requests_id_is_in_the_server_log_without_what_it_sent() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, stderr) = run_cli(dir.path(), &["user", "add", "alice"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let router = RouterProcess::start_in(dir, &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    let refuse = |url: String, key: &'static str| async move {
        let response = client()
            .post(url)
            .bearer_auth(key)
            .json(&json!({"model": "[https://u:sk-in-the-model-name@host]m", "messages": []}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401);
        crate::telemetry::request_id(&response)
    };
    let proxy_url = "?proxy=https://user:sk-in-the-proxy-url@example.com";
    let first = refuse(
        router.url(&format!("/v1/chat/completions{proxy_url}")),
        "sk-wrong-key-1",
    )
    .await;
    let second = refuse(router.url("/v1/chat/completions"), "sk-wrong-key-2").await;
    let line = |id: &str| {
        router
            .stderr()
            .lines()
            .find(|l| l.contains(id))
            .map(str::to_owned)
    };
    wait_until(Duration::from_secs(10), || line(&first).is_some()).await;
    let logged = line(&first).unwrap_or_default();
    assert!(
        logged.contains("refused") && logged.contains("invalid_api_key"),
        "{logged}"
    );
    assert!(logged.contains("401"), "{logged}");
    // The second of the same code within the window is counted, not logged.
    assert_eq!(line(&second), None);
    let log = router.stderr();
    for secret in [
        "sk-wrong-key",
        "sk-in-the-proxy-url",
        "sk-in-the-model-name",
    ] {
        assert!(!log.contains(secret), "{secret} in:\n{log}");
    }
}

/// A console log that cannot be written (stderr a pipe whose reader left, as `serve 2>&1 |
/// head -2` leaves it once `head` exits; a full disk) is dropped, and the server answers as
/// ever. Each request here is logged (a refusal, a model it cannot route, an upstream that
/// cannot be reached), and so is a user added while it runs. Writing the line panicked
/// before: the client got an empty reply instead of its JSON error, and SIGTERM ended the
/// server with exit status 101.
#[tokio::test]
async fn a_console_log_that_cannot_be_written_is_dropped_and_serving_goes_on() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        one_server_config(&closed_url(), ""),
    )
    .expect("config");
    let (code, alice, stderr) = run_cli(dir.path(), &["user", "add", "alice"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let alice = alice.trim_end().to_owned();
    let mut router =
        RouterProcess::start_then_close_stderr(dir, &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    let url = router.url("/v1/chat/completions");
    // The status of an OpenAI-shaped error answer.
    let ask = |key: String, model: &'static str| {
        let url = url.clone();
        async move {
            let response = client()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": model, "messages": []}))
                .send()
                .await
                .expect("an answer, not a closed connection");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            assert!(body["error"]["message"].is_string(), "{body}");
            status
        }
    };
    assert_eq!(ask("sk-wrong".to_owned(), "[mock]m").await, 401);
    assert_eq!(ask(alice.clone(), "nosuch").await, 404);
    assert_eq!(ask(alice.clone(), "[mock]m").await, 502);
    let (code, bob, stderr) = run_cli(router.path(), &["user", "add", "bob"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let bob = bob.trim_end().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ask(bob.clone(), "[mock]m").await == 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the running server never saw bob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ask(alice, "[mock]m").await, 502);
    // Exit status 0, asserted.
    router.stop_for_log().await;
}

/// Two streams refused at once for the `stream_options` the router added: both are sent
/// again without them, and the server log warns once, naming the alias and the config key
/// that skips the retry.
#[tokio::test]
async fn a_target_refusing_stream_options_is_warned_about_once() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        refuse_stream_options: Some(
            r#"{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}"#
                .to_owned(),
        ),
        hold_head: Some(gate.clone()),
        ..Default::default()
    })
    .await;
    let mut router = RouterProcess::start(Some(&one_server_config(&upstream.url(), "")), &[]);
    let request = json!({"model": "[mock]m", "stream": true, "messages": []});
    let send = || {
        client()
            .post(router.url("/v1/chat/completions"))
            .json(&request)
            .send()
    };
    let both = futures_util::future::join(send(), send());
    let opened = async {
        wait_until(Duration::from_secs(10), || upstream.count() == 2).await;
        gate.add_permits(1000);
    };
    let ((first, second), ()) = tokio::join!(both, opened);
    for response in [first, second] {
        let text = response.expect("send").text().await.expect("body");
        assert_eq!(text, expected_stream(&upstream.behavior(), false));
    }
    assert_eq!(upstream.count(), 4);
    // The whole log, once the router has exited.
    let stderr = router.stop_for_log().await;
    assert_eq!(
        stderr.matches("refused stream_options").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("upstream mock refused"), "{stderr}");
    assert!(stderr.contains("stream_usage: false"), "{stderr}");
}

/// URL targets are the clients' to pick (any number, with accounts off): those refusing
/// `stream_options` are warned about at most once per window, as the router's failures are,
/// not once each. Four refusing origins, one line; the configured alias still gets its own.
#[tokio::test]
async fn url_targets_refusing_stream_options_share_one_warning_per_window() {
    let refusing = || {
        Behavior {
        refuse_stream_options: Some(
            r#"{"detail":[{"loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}"#
                .to_owned(),
        ),
        ..Default::default()
    }
    };
    let mut upstreams = Vec::new();
    for _ in 0..5 {
        upstreams.push(MockUpstream::start(refusing()).await);
    }
    let mut router = RouterProcess::start(Some(&one_server_config(&upstreams[0].url(), "")), &[]);
    let mut models = vec!["[mock]m".to_owned()];
    models.extend(upstreams[1..].iter().map(|u| format!("[{}]m", u.url())));
    for model in &models {
        let response = client()
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": model, "stream": true, "messages": []}))
            .send()
            .await
            .expect("send");
        let text = response.text().await.expect("body");
        assert!(text.ends_with("data: [DONE]\n\n"), "{model}: {text}");
    }
    for upstream in &upstreams {
        assert_eq!(upstream.count(), 2, "refused, then sent again");
    }
    let stderr = router.stop_for_log().await;
    assert_eq!(
        stderr.matches("refused stream_options").count(),
        2,
        "the alias's line and one for the URL targets:\n{stderr}"
    );
    assert!(stderr.contains("upstream mock refused"), "{stderr}");
}

/// The ids of background generations the recorder remembers (so a read-back counts their
/// usage once) are the upstream's to pick, of any length: a megabyte-long one must not be
/// held until 16,384 others push it out. 40 read-backs of generations with 1 MB ids leave
/// the router about as large as it was (it held 2 MB per id).
#[tokio::test]
async fn long_background_generation_ids_are_not_held() {
    let generation = |n: usize| {
        let id = format!("resp_{n}_{}", "x".repeat(1_000_000));
        format!(
            r#"{{"id":"{id}","object":"response","background":true,"status":"completed","model":"m","output":[],"usage":{{"input_tokens":1,"output_tokens":1,"total_tokens":2}}}}"#
        )
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    // The ledger alone: a record's way through the sinks, without a log line's copy of it.
    let router = RouterProcess::start(Some(&config), &[("LLMSROUTER_LOG_FILE", "")]);
    let written = || async {
        let metrics = router.metrics(None).await;
        crate::support::metric_sample(&metrics, "llmsrouter_ledger_rows_written_total").unwrap_or(0)
    };
    let read_back = |n: usize| {
        upstream.set(Behavior {
            body: Some(generation(n)),
            ..Default::default()
        });
        let url = router.url(&format!("/v1/responses/resp_{n}"));
        async move {
            let response = client().get(url).send().await.expect("send");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
        }
    };
    // The first one warms the allocator up; then the measure.
    read_back(0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while written().await < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = router.child.id();
    let before = rss_kib(pid);
    const READS: usize = 40;
    for n in 1..=READS {
        read_back(n).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while written().await < READS as u64 + 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        written().await,
        READS as u64 + 1,
        "every read-back recorded"
    );
    let limit = 30 * 1024;
    let grown = settled_growth(pid, before, limit).await;
    assert!(grown < limit, "{grown} KiB more after {READS} read-backs");
}
