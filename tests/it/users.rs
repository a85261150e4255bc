//! Accounts: `llmsrouter user ...` against a temp database (output, exit codes, the rows),
//! and the server with ENABLE_ACCOUNT_MANAGEMENT=true: a users.db written with the Python
//! version's schema, 401/403, CLI changes reaching a running server, concurrency, and no key
//! in any output.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{
    RouterProcess, TestRouter, client, closed_pipe, run_cli, run_cli_as_reader,
    run_cli_into_closed_pipe, run_cli_with_stderr, run_cli_with_stdout_closed, run_cli_writing_to,
};

/// The Python version's `CREATE TABLE`, exactly as it ran it.
pub(crate) const PYTHON_SCHEMA: &str = "
                CREATE TABLE IF NOT EXISTS users (
                    username TEXT PRIMARY KEY,
                    api_key TEXT UNIQUE NOT NULL,
                    email TEXT,
                    permissions TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL
                )
            ";

/// Keys as the Python version made them: 32 letters and digits, no prefix.
const ANN_KEY: &str = "Xq3vB9kLm2Np7Rt5Wz8Yc1Df4Gh6Jk0A";
const BOB_KEY: &str = "pL0oK9iJ8uH7yG6tF5rD4eS3wA2qZ1xC";

fn is_new_key(text: &str) -> bool {
    text.strip_prefix("sk-lr-")
        .is_some_and(|r| r.len() == 32 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Runs `llmsrouter user <args>` in `dir`; asserts a failure is one `error:` line.
pub(crate) fn user(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let (code, out, err) = run_cli(dir, &full, &[]);
    if code == 1 {
        assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
        assert!(err.starts_with("error: "), "{err:?}");
    }
    (code, out, err)
}

/// `llmsrouter user add`, which must succeed; returns the key.
pub(crate) fn add(dir: &Path, args: &[&str]) -> String {
    let mut full = vec!["add"];
    full.extend_from_slice(args);
    let (code, out, err) = user(dir, &full);
    assert_eq!(code, 0, "{err}");
    let key = out.trim_end_matches('\n');
    assert!(is_new_key(key), "stdout is the key alone: {out:?}");
    key.to_owned()
}

/// Every row of the users table, as text, by username.
fn rows(db: &Path) -> Vec<[String; 6]> {
    let conn = Connection::open(db).expect("open db");
    let mut statement = conn
        .prepare("SELECT username, api_key, COALESCE(email, ''), permissions, created_at, updated_at FROM users ORDER BY username")
        .expect("select");
    statement
        .query_map([], |r| {
            Ok([
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ])
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn row_of(db: &Path, username: &str) -> [String; 6] {
    rows(db)
        .into_iter()
        .find(|r| r[0] == username)
        .unwrap_or_else(|| panic!("no row for {username}"))
}

/// `2024-05-01T12:34:56.789012`, as Python's `datetime.isoformat()` writes it.
fn is_python_iso(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 26
        && (b[4], b[7], b[10], b[13], b[16], b[19]) == (b'-', b'-', b'T', b':', b':', b'.')
        && text
            .chars()
            .filter(|c| !"-T:.".contains(*c))
            .all(|c| c.is_ascii_digit())
}

#[test]
fn add_prints_the_key_once_and_list_and_show_never_do() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let key = add(
        dir.path(),
        &["ann", "--email", "ann@example.com", "--permissions", "b, a"],
    );
    let bob_key = add(dir.path(), &["bob"]);
    assert_ne!(key, bob_key);

    let [name, stored_key, email, permissions, created, updated] = row_of(&db, "ann");
    assert_eq!(
        (name.as_str(), stored_key.as_str(), email.as_str()),
        ("ann", key.as_str(), "ann@example.com")
    );
    assert_eq!(permissions, r#"{"a": true, "b": true}"#);
    assert!(is_python_iso(&created), "{created}");
    assert_eq!(created, updated);
    assert_eq!(row_of(&db, "bob")[3], r#"{"*": true}"#);

    let (code, table, _) = user(dir.path(), &["list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("USERNAME"), "{table}");
    assert!(
        lines[1].starts_with("ann ") && lines[1].contains("ann@example.com"),
        "{table}"
    );
    assert!(
        lines[1].contains("a, b") && lines[2].contains('*'),
        "{table}"
    );

    // --db is global: after the subcommand's own flag, relative to the working directory.
    let (code, listed, _) = user(dir.path(), &["list", "--json", "--db", "users.db"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&listed).expect("list --json is JSON");
    let ann = &listed[0];
    assert_eq!(ann["username"], "ann");
    assert_eq!(ann["email"], "ann@example.com");
    assert_eq!(ann["permissions"], json!(["a", "b"]));
    assert_eq!(ann["created_at"], created.as_str());
    let prefix = ann["key_prefix"].as_str().expect("prefix");
    assert!(key.starts_with(prefix) && prefix.len() <= 10, "{prefix}");
    assert_eq!(listed[1]["permissions"], json!(["*"]));
    assert_eq!(listed[1]["email"], Value::Null);

    let (code, shown, _) = user(dir.path(), &["show", "ann", "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).expect("show --json is JSON");
    assert_eq!(&shown, ann);
    let (code, text, _) = user(dir.path(), &["show", "ann"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("ann@example.com") && text.contains("a, b"),
        "{text}"
    );

    // LLMSROUTER_DB names the file too.
    let elsewhere = tempfile::tempdir().expect("dir");
    let (code, out, _) = run_cli(
        elsewhere.path(),
        &["user", "list", "--json"],
        &[("LLMSROUTER_DB", db.to_str().expect("utf-8 path"))],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        listed,
        "same database through the variable"
    );

    for output in [table, text, out, shown.to_string()] {
        assert!(!output.contains(&key) && !output.contains(&bob_key));
    }
}

#[test]
fn modify_rotate_key_and_delete_change_the_row() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let old_key = add(dir.path(), &["ann"]);
    let before = row_of(&db, "ann");

    let (code, out, _) = user(dir.path(), &["modify", "ann", "--permissions", "x,y"]);
    assert_eq!(code, 0);
    assert!(out.contains("x, y"), "{out}");
    let modified = row_of(&db, "ann");
    assert_eq!(modified[3], r#"{"x": true, "y": true}"#);
    assert_eq!(modified[1], old_key, "modify keeps the key");
    assert_eq!(modified[4], before[4], "created_at kept");
    assert!(is_python_iso(&modified[5]) && modified[5] >= before[5]);

    let (code, out, err) = user(dir.path(), &["rotate-key", "ann"]);
    assert_eq!(code, 0, "{err}");
    let new_key = out.trim_end();
    assert!(is_new_key(new_key) && new_key != old_key, "{out:?}");
    assert_eq!(row_of(&db, "ann")[1], new_key);
    assert!(!err.contains(new_key), "the key goes to stdout only");

    let (code, out, _) = user(dir.path(), &["modify", "ann", "--permissions", "*"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(row_of(&db, "ann")[3], r#"{"*": true}"#);

    let (code, _, _) = user(dir.path(), &["delete", "ann"]);
    assert_eq!(code, 0);
    assert!(rows(&db).is_empty());
}

/// PRODUCT.md: every flag has an environment variable, and a flag on the line wins.
#[test]
fn every_user_flag_has_a_variable() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let vars = [
        ("LLMSROUTER_USER_EMAIL", "ann@example.com"),
        ("LLMSROUTER_USER_PERMISSIONS", "a,b"),
    ];
    let (code, out, err) = run_cli(dir.path(), &["user", "add", "ann"], &vars);
    assert_eq!(code, 0, "{err}");
    assert!(is_new_key(out.trim_end()), "{out:?}");
    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "add", "bob", "--permissions", "c"],
        &vars,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        row_of(&db, "ann")[2..4],
        [
            "ann@example.com".to_owned(),
            r#"{"a": true, "b": true}"#.to_owned()
        ]
    );
    assert_eq!(row_of(&db, "bob")[3], r#"{"c": true}"#, "the flag wins");

    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "modify", "bob"],
        &[("LLMSROUTER_USER_PERMISSIONS", "*")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(row_of(&db, "bob")[3], r#"{"*": true}"#);

    let (code, listed, err) = run_cli(
        dir.path(),
        &["user", "list"],
        &[("LLMSROUTER_JSON", "TRUE")],
    );
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&listed).expect("LLMSROUTER_JSON=TRUE prints JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let (code, shown, _) = run_cli(
        dir.path(),
        &["user", "show", "ann"],
        &[("LLMSROUTER_JSON", "1")],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&shown).expect("json"),
        listed[0]
    );
    let (code, table, _) = run_cli(dir.path(), &["user", "list"], &[("LLMSROUTER_JSON", "no")]);
    assert_eq!(code, 0);
    assert!(table.starts_with("USERNAME"), "{table}");

    let (code, out, err) = run_cli(
        dir.path(),
        &["user", "list"],
        &[("LLMSROUTER_JSON", "maybe")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("LLMSROUTER_JSON") && err.contains("maybe"),
        "{err}"
    );
}

#[test]
fn refused_commands_exit_1_with_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let ann_key = add(dir.path(), &["ann", "--permissions", "a"]);
    let snapshot = rows(&db);

    let huge = "u".repeat(10_000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["add", "ann"], "already exists"),
        (vec!["add", ""], "bad username"),
        (vec!["add", &huge], "at most 64"),
        (vec!["add", "ann\u{7}bell"], "bad username"),
        (vec!["add", "ann\nbob"], "bad username"),
        (vec!["add", "two words"], "bad username"),
        (vec!["add", "sk-lr-bob"], "keys do"),
        (vec!["add", "SK-LR-bob"], "in any case (keys do)"),
        (vec!["add", "carl", "--email", "carl"], "bad email"),
        (
            vec!["add", "carl", "--email", "carl@localhost"],
            "bad email",
        ),
        (vec!["add", "carl", "--permissions", ",,"], "empty entry"),
        (vec!["add", "carl", "--permissions", ""], "empty"),
        (
            vec!["add", "carl", "--permissions", "*,a"],
            "cannot be combined",
        ),
        (
            vec!["add", "carl", "--permissions", "[a]"],
            "not a provider alias",
        ),
        (
            vec!["modify", "nobody", "--permissions", "*"],
            "does not exist",
        ),
        (vec!["modify", "ann", "--permissions", ",,"], "empty entry"),
        (vec!["delete", "nobody"], "does not exist"),
        (vec!["show", "nobody"], "does not exist"),
        (vec!["show", &huge], "does not exist"),
        (vec!["rotate-key", "nobody"], "does not exist"),
    ];
    for (args, expected) in &cases {
        let (code, out, err) = user(dir.path(), args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
        assert!(err.len() < 400, "{args:?}: a long name is clipped: {err}");
        assert!(!err.contains(&ann_key));
        assert_eq!(rows(&db), snapshot, "{args:?} changed the database");
    }

    // A command line clap refuses is exit 2 (a usage error), also with nothing written.
    let (code, _, _) = run_cli(dir.path(), &["user", "modify", "ann"], &[]);
    assert_eq!(code, 2);
    assert_eq!(rows(&db), snapshot);

    // Bad input does not even create a database file; reading commands do not either.
    let empty = tempfile::tempdir().expect("dir");
    let (code, _, _) = user(empty.path(), &["add", "", "--permissions", "*"]);
    assert_eq!(code, 1);
    let (code, _, err) = user(empty.path(), &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such database"), "{err}");
    assert_eq!(
        std::fs::read_dir(empty.path()).expect("ls").count(),
        0,
        "no file was created"
    );
}

#[test]
fn aliases_missing_from_config_yaml_are_accepted_with_a_warning() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  mock:\n    url: \"http://127.0.0.1:9/v1\"\n",
    )
    .expect("config");
    let (code, out, err) = user(dir.path(), &["add", "ann", "--permissions", "mock,later"]);
    assert_eq!(code, 0, "{err}");
    assert!(is_new_key(out.trim()));
    assert!(
        err.contains("warning: provider \"later\" is not in config.yaml"),
        "{err}"
    );
    assert!(!err.contains("\"mock\" is not"), "{err}");
    assert_eq!(
        row_of(&dir.path().join("users.db"), "ann")[3],
        r#"{"later": true, "mock": true}"#
    );
    let (code, _, err) = user(dir.path(), &["modify", "ann", "--permissions", "gone"]);
    assert_eq!(code, 0);
    assert!(err.contains("\"gone\" is not in config.yaml"), "{err}");
    // Without a config.yaml there is nothing to check against: that is said when providers
    // are named (a typo would go unnoticed), and "*" names none.
    let bare = tempfile::tempdir().expect("dir");
    let (code, _, err) = user(bare.path(), &["add", "ann", "--permissions", "later"]);
    assert_eq!(code, 0);
    assert!(
        err.ends_with("\nwarning: provider names not checked: ./config.yaml: file not found\n"),
        "{err}"
    );
    let (code, _, err) = user(bare.path(), &["add", "bob"]);
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "{err}");
}

/// The aliases are checked whatever the providers' key variables hold where the command
/// runs (a `${VAR}` that is not set there); a config.yaml that cannot be read is a warning
/// after a command that succeeded, and a failing command still says only its one line.
#[test]
fn aliases_are_checked_without_the_key_variables_and_failures_stay_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "servers:\n  mock:\n    url: \"http://127.0.0.1:9/v1\"\n    api_key: \"${LLMSROUTER_TEST_UNSET_KEY}\"\n",
    )
    .expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann", "--permissions", "mock,typo"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: provider \"typo\" is not in config.yaml"),
        "{err}"
    );
    assert!(!err.contains("\"mock\" is not"), "{err}");
    assert!(!err.contains("not checked"), "{err}");
    let (code, _, err) = user(dir.path(), &["add", "ann", "--permissions", "mock"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");

    std::fs::write(dir.path().join("config.yaml"), "servers: [broken\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "bob", "--permissions", "mock"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("\nwarning: provider names not checked:"),
        "{err}"
    );
    let (code, _, err) = user(dir.path(), &["add", "bob", "--permissions", "mock"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("already exists"),
        "{err}"
    );
}

/// A new key that cannot be written out (stdout a full disk, a closed pipe, `/dev/null`,
/// closed itself) is never stored: `add`, `rotate-key` and `import` fail in one line and
/// change nothing, so no account is left with a key nobody saw, and the old key of a rotation
/// keeps working.
/// (`/dev/null`, which Rust's runtime puts in place of a closed standard output, took every
/// write before: the key went nowhere and was saved.)
#[test]
fn a_key_that_cannot_be_shown_is_not_stored() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let old_key = add(dir.path(), &["ann"]);
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    std::fs::write(dir.path().join("team.csv"), "username,email\ncid,\ndee,\n").expect("csv");
    for args in [
        &["user", "add", "bob"][..],
        &["user", "rotate-key", "ann"][..],
        &["user", "import", "team.csv"][..],
    ] {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        for (code, err) in [
            run_cli_writing_to(dir.path(), args, full()),
            run_cli_writing_to(dir.path(), args, null),
            run_cli_with_stdout_closed(dir.path(), args),
        ] {
            assert_eq!(code, 1, "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(
                err.starts_with("error: cannot write the new key:")
                    && err.trim_end().ends_with("no user was changed"),
                "{err}"
            );
        }
    }
    let stored: Vec<[String; 6]> = rows(&db);
    assert_eq!(stored.len(), 1, "only ann: {stored:?}");
    assert_eq!(row_of(&db, "ann")[1], old_key, "ann's key is unchanged");
    // A database the failed command would have made is not left behind either.
    let (code, _) = run_cli_writing_to(
        dir.path(),
        &["user", "add", "bob", "--db", "new.db"],
        full(),
    );
    assert_eq!(code, 1);
    assert!(!dir.path().join("new.db").exists());
}

/// A reader that went away (`llmsrouter user list | head -1`) ends a command's ordinary
/// output quietly with exit status 0, as other Unix tools do; it used to print `error: cannot
/// write the output: Broken pipe` (exit 1), or make `println!` panic. A new key that cannot
/// be delivered still fails, and nothing is changed.
#[test]
fn a_closed_pipe_ends_ordinary_output_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    add(dir.path(), &["ann"]);
    for args in [
        &["user", "list"][..],
        &["user", "list", "--json"],
        &["user", "show", "ann"],
        &["user", "show", "ann", "--json"],
        &["usage"],
        &["usage", "--json"],
        &["models"],
        &["models", "--json"],
        &["check"],
    ] {
        let (code, stderr) = run_cli_into_closed_pipe(dir.path(), args, &[]);
        assert_eq!((code, stderr.as_str()), (0, ""), "{args:?}");
    }
    for args in [&["user", "add", "bob"][..], &["user", "rotate-key", "ann"]] {
        let (code, stderr) = run_cli_into_closed_pipe(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot write the new key:")
                && stderr.trim_end().ends_with("no user was changed"),
            "{stderr}"
        );
    }
    let (code, stdout, _) = run_cli(dir.path(), &["user", "list", "--json"], &[]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("bob"), "{stdout}");
}

/// Standard error that cannot be written (a full disk; a pipe whose reader left, as
/// `user add carol 2>&1 | head -1` leaves it) changes no exit status: a command that made its
/// change exits 0 with its key on stdout, a refusal 1, a bad command line 2. They exited 101
/// before (`eprintln!` panicked), even after the change was committed, so a script's
/// `KEY=$(llmsrouter user rotate-key ann) || keep_old` kept a key that no longer worked.
#[test]
fn stderr_that_cannot_be_written_changes_no_exit_status() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    // No server in config.yaml: `--permissions mock` adds a warning to `add`'s note.
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(dir.path().join("bad.yaml"), "servers: [\n").expect("bad config");
    add(dir.path(), &["ann"]);
    let unwritable = |full: bool| -> Stdio {
        if full {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full")
                .into()
        } else {
            closed_pipe().into()
        }
    };
    for (full, kind) in [(true, "full"), (false, "closed")] {
        let run = |args: &[&str]| run_cli_with_stderr(dir.path(), args, &[], unwritable(full));
        let bob = format!("bob-{kind}");
        let (code, out) = run(&["user", "add", &bob, "--permissions", "mock"]);
        assert_eq!(code, 0, "{kind}: add");
        assert!(is_new_key(out.trim_end()), "{kind}: {out:?}");
        assert_eq!(row_of(&db, &bob)[1], out.trim_end(), "{kind}");
        let (code, out) = run(&["user", "rotate-key", "ann"]);
        assert_eq!(code, 0, "{kind}: rotate-key");
        assert_eq!(
            row_of(&db, "ann")[1],
            out.trim_end(),
            "{kind}: the key printed works"
        );
        let csv = format!("team-{kind}.csv");
        std::fs::write(
            dir.path().join(&csv),
            format!("username,email\ncid-{kind},\nann,\n"),
        )
        .expect("csv");
        let (code, out) = run(&["user", "import", &csv]);
        assert_eq!(code, 0, "{kind}: import (ann skipped with a warning)");
        assert!(out.starts_with(&format!("cid-{kind}\t")), "{kind}: {out:?}");
        assert_eq!(run(&["user", "show", "nobody"]).0, 1, "{kind}: show nobody");
        assert_eq!(run(&["user", "list", "--bogus"]).0, 2, "{kind}: a bad flag");
        let (code, _) = run(&["serve", "--port", "0", "--config", "bad.yaml"]);
        assert_eq!(code, 1, "{kind}: serve refusing a config");
    }
    // A `.env` line that is skipped: every command warns of it first.
    std::fs::write(dir.path().join(".env"), "1BAD=x\n").expect(".env");
    let (_, _, err) = run_cli(dir.path(), &["models"], &[]);
    assert!(err.starts_with("warning: .env line 1"), "{err}");
    for stderr in [unwritable(true), unwritable(false)] {
        let (code, out) = run_cli_with_stderr(dir.path(), &["models", "--json"], &[], stderr);
        assert_eq!(code, 0);
        assert!(out.contains("\"data\""), "{out}");
    }
}

/// The commit fails after the new key was printed (a full disk; here a deferred foreign key
/// that only the commit checks): the one-line error says the printed key was not saved and
/// does not work, so a script that captured it (`KEY=$(llmsrouter user add bob)`) knows.
#[test]
fn a_key_printed_but_not_saved_is_said_void() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let old_key = add(dir.path(), &["ann"]);
    Connection::open(&db)
        .expect("open")
        .execute_batch(
            "CREATE TABLE guard (name TEXT REFERENCES users(username) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER guard_insert AFTER INSERT ON users
                 BEGIN INSERT INTO guard VALUES ('gone-' || NEW.username); END;
             CREATE TRIGGER guard_update AFTER UPDATE OF api_key ON users
                 BEGIN INSERT INTO guard VALUES ('gone-' || NEW.username); END;",
        )
        .expect("guard");
    std::fs::write(dir.path().join("team.csv"), "username,email\ncid,\n").expect("csv");
    for (args, said) in [
        (
            &["add", "bob"][..],
            "the key printed above was not saved and does not work; no user was changed",
        ),
        (
            &["rotate-key", "ann"][..],
            "the new key printed above was not saved and does not work; the old key still works",
        ),
        (
            &["import", "team.csv"][..],
            "each key printed above was not saved and does not work; no user was imported",
        ),
    ] {
        let (code, out, err) = user(dir.path(), args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.contains("sk-lr-"), "the key was printed: {out:?}");
        assert!(
            err.contains("FOREIGN KEY") && err.trim_end().ends_with(said),
            "{err}"
        );
    }
    let stored: Vec<[String; 6]> = rows(&db);
    assert_eq!(stored.len(), 1, "only ann: {stored:?}");
    assert_eq!(row_of(&db, "ann")[1], old_key, "ann's key is unchanged");
}

#[test]
fn bad_database_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "this is a text file, not a database\n".repeat(200)).expect("write");
    let future = dir.path().join("future.db");
    {
        let conn = Connection::open(&future).expect("create");
        conn.execute_batch(PYTHON_SCHEMA).expect("schema");
        conn.pragma_update(None, "user_version", 99)
            .expect("version");
    }
    // Another program's database with a users table of its own.
    let app = dir.path().join("app.db");
    Connection::open(&app)
        .expect("create")
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        .expect("app");
    for (file, expected) in [
        (&junk, "not an SQLite database"),
        (&future, "newer than this llmsrouter"),
        (
            &app,
            "holds a users table without the username and api_key columns",
        ),
    ] {
        let before = std::fs::read(file).expect("read");
        let name = file.to_str().expect("utf-8");
        for args in [
            vec!["add", "ann", "--db", name],
            vec!["list", "--db", name],
            vec!["import", "in.csv", "--db", name],
        ] {
            std::fs::write(dir.path().join("in.csv"), "username,email\nann,\n").expect("csv");
            let (code, _, err) = user(dir.path(), &args);
            assert_eq!(code, 1, "{args:?}");
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        assert_eq!(
            std::fs::read(file).expect("read"),
            before,
            "{name} untouched"
        );
    }
}

/// `check` meets the database refusals `serve` would (it used to say "ok" of each), without
/// writing the file; a missing one is fine (serve creates it) and is not created; with the
/// ledger and accounts off, serve never opens it, so neither does check.
#[test]
fn check_refuses_the_databases_serve_would() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::create_dir(dir.path().join("folder.db")).expect("folder");
    std::fs::write(dir.path().join("junk.db"), "not a database\n".repeat(300)).expect("junk");
    {
        let conn = Connection::open(dir.path().join("future.db")).expect("create");
        conn.execute_batch(PYTHON_SCHEMA).expect("schema");
        conn.pragma_update(None, "user_version", 99)
            .expect("version");
        let other = Connection::open(dir.path().join("other.db")).expect("create");
        other
            .execute_batch("CREATE TABLE notes (text TEXT)")
            .expect("other");
        let app = Connection::open(dir.path().join("app.db")).expect("create");
        app.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .expect("app");
    }
    for (file, expected) in [
        ("folder.db", "folder.db: is a folder, not a database file"),
        ("junk.db", "junk.db: not an SQLite database"),
        ("future.db", "newer than this llmsrouter"),
        ("other.db", "holds other tables and no users table"),
        (
            "app.db",
            "holds a users table without the username and api_key columns",
        ),
    ] {
        let before = std::fs::read(dir.path().join(file)).ok();
        let (code, _, err) = run_cli(dir.path(), &["check", "--db", file], &[]);
        assert_eq!(code, 1, "{file}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{file}: {err}");
        assert!(err.contains(expected), "{file}: {err}");
        assert_eq!(std::fs::read(dir.path().join(file)).ok(), before, "{file}");
        let off = [("LLMSROUTER_LEDGER", "false")];
        let (code, _, err) = run_cli(dir.path(), &["check", "--db", file], &off);
        assert_eq!(code, 0, "{file} unused: {err}");
    }
    let (code, _, err) = run_cli(dir.path(), &["check", "--db", "new.db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!dir.path().join("new.db").exists());
}

#[test]
fn serve_with_accounts_refuses_a_database_it_cannot_use() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("users.db"), "not a database\n".repeat(300)).expect("junk");
    let before = std::fs::read(dir.path().join("users.db")).expect("read");
    let (code, _, err) = run_cli(
        dir.path(),
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("ENABLE_ACCOUNT_MANAGEMENT", "true")],
    );
    assert_eq!(code, 1);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ENABLE_ACCOUNT_MANAGEMENT=true needs the users database")
            && last.contains("users.db: not an SQLite database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("users.db")).expect("read"),
        before
    );
}

#[test]
fn import_creates_new_users_skips_existing_and_round_trips_list_json() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let ann_key = add(dir.path(), &["ann"]);
    std::fs::write(
        dir.path().join("team.csv"),
        "username,email,permissions\nann,ann@example.com,\nbob,bob@example.com,\"a,b\"\ncarl,,\n",
    )
    .expect("csv");
    let (code, out, err) = user(dir.path(), &["import", "team.csv"]);
    assert_eq!(code, 0, "{err}");
    let created: Vec<(&str, &str)> = out
        .lines()
        .map(|l| l.split_once('\t').expect("username<TAB>key"))
        .collect();
    assert_eq!(
        created.iter().map(|c| c.0).collect::<Vec<_>>(),
        ["bob", "carl"]
    );
    for (name, key) in &created {
        assert!(is_new_key(key));
        assert_eq!(row_of(&db, name)[1], *key);
    }
    assert!(
        err.contains("row 2") && err.contains("\"ann\" exists"),
        "{err}"
    );
    assert!(err.contains("imported 2 users, skipped 1"), "{err}");
    assert_eq!(row_of(&db, "ann")[1], ann_key, "an existing key is kept");
    assert_eq!(row_of(&db, "bob")[3], r#"{"a": true, "b": true}"#);
    assert_eq!(row_of(&db, "carl")[2], "");
    assert_eq!(row_of(&db, "carl")[3], r#"{"*": true}"#);

    // `list --json` of one database imports into another as is.
    let (code, listed, _) = user(dir.path(), &["list", "--json"]);
    assert_eq!(code, 0);
    std::fs::write(dir.path().join("all.json"), &listed).expect("json");
    let (code, out, err) = user(dir.path(), &["import", "all.json", "--db", "copy.db"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3);
    let copy = dir.path().join("copy.db");
    for (a, b) in rows(&db).iter().zip(rows(&copy).iter()) {
        assert_eq!((&a[0], &a[2], &a[3]), (&b[0], &b[2], &b[3]));
        assert_ne!(a[1], b[1], "imported users get keys of their own");
    }
}

#[test]
fn import_refuses_bad_files_and_bad_rows_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    add(dir.path(), &["ann"]);
    let snapshot = rows(&db);
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "no-email.csv",
            "username\nbob\n",
            vec!["no \"email\" column"],
        ),
        (
            "extra.csv",
            "username,email,api_key\nbob,,x\n",
            vec!["unknown column \"api_key\""],
        ),
        (
            "object.json",
            r#"{"username": "bob"}"#,
            vec!["expected a JSON array", "found an object"],
        ),
        (
            "broken.json",
            r#"[{"username": "bob""#,
            vec!["not valid JSON"],
        ),
        (
            "rows.csv",
            "username,email,permissions\nbob,bob@example.com,*\ncarl,not-an-email,*\n,x@example.com,*\ndan,,\",,\"\nbob,,\n",
            vec![
                "row 3: bad email",
                "row 4: bad username",
                "row 5: permissions \",,\" have an empty entry",
                "row 6: username \"bob\" already appears on row 2",
            ],
        ),
        (
            "empty-row.csv",
            "username,email,permissions\nbob,bob@example.com,*\n,,\n\ncarl,,\n",
            vec!["row 3: every field is empty"],
        ),
        (
            "rows.json",
            r#"[{"username": "bob"}, {"username": "carl", "email": 7}, {"name": "dan"}]"#,
            vec![
                "row 2: \"email\" must be a string",
                "row 3: unknown field \"name\"",
            ],
        ),
    ];
    for (file, content, expected) in &cases {
        std::fs::write(dir.path().join(file), content).expect("write");
        let (code, out, err) = user(dir.path(), &["import", file]);
        assert_eq!(code, 1, "{file}: {err}");
        assert!(
            err.contains(file) && err.contains("nothing imported"),
            "{err}"
        );
        for part in expected {
            assert!(err.contains(part), "{file}: {part:?} not in {err}");
        }
        assert!(out.is_empty(), "{file}: no key printed: {out}");
        assert_eq!(rows(&db), snapshot, "{file} wrote something");
    }
    let (code, _, err) = user(dir.path(), &["import", "missing.csv"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.csv: cannot read"), "{err}");
    assert_eq!(rows(&db), snapshot);
}

/// Writes a users.db exactly as the Python version left it: its schema, its key style,
/// permissions JSON and ISO timestamps, `user_version` 0.
fn python_users_db(path: &Path) {
    let conn = Connection::open(path).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    conn.execute(
        "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        rusqlite::params!["ann", ANN_KEY, "ann@example.com", r#"{"*": true}"#, "2024-05-01T12:34:56.789012"],
    )
    .expect("ann");
    conn.execute(
        "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at) VALUES (?1, ?2, NULL, ?3, ?4, ?4)",
        rusqlite::params!["bob", BOB_KEY, r#"{"mock": true, "other": false}"#, "2024-05-02T08:00:00.000001"],
    )
    .expect("bob");
}

/// Two providers on the same mock: `mock` and `other`.
pub(crate) fn two_server_config(upstream: &MockUpstream) -> String {
    format!(
        "servers:\n  mock:\n    url: \"{0}\"\n    api_key: \"sk-mock-upstream-key\"\n  other:\n    url: \"{0}\"\n    api_key: \"sk-other-upstream-key\"\n",
        upstream.url()
    )
}

pub(crate) enum Auth<'a> {
    None,
    Bearer(&'a str),
    XApiKey(&'a str),
}

/// POSTs a chat completion; returns the status and the error code, if any.
pub(crate) async fn chat(url: &str, auth: Auth<'_>, model: &str) -> (u16, Option<String>) {
    let mut request = client()
        .post(url)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    request = match auth {
        Auth::None => request,
        Auth::Bearer(key) => request.bearer_auth(key),
        Auth::XApiKey(key) => request.header("x-api-key", key),
    };
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().map(str::to_owned);
    (status, code)
}

pub(crate) async fn cli(dir: PathBuf, args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&dir, &args, &[])
    })
    .await
    .expect("cli thread")
}

pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The Python version's users.db on a read-only mount (mode 444 here, read by a user who
/// cannot write it): `user list` and `show` read it, and `serve` with the ledger off
/// authenticates from it, all without writing it (no WAL switch, no schema step), and sees
/// a change made to it by its owner. A command that must write says why it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_python_users_db_is_read_as_it_is() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    python_users_db(&db);
    let read_only =
        |mode| std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).expect("chmod");
    read_only(0o444);
    let before = std::fs::read(&db).expect("db");

    let (code, out, err) = run_cli_as_reader(dir.path(), &["user", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ann") && out.contains("bob"), "{out}");
    let (code, out, err) = run_cli_as_reader(dir.path(), &["user", "show", "bob", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"mock\""), "{out}");
    let (code, _, err) = run_cli_as_reader(dir.path(), &["user", "rotate-key", "ann"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("readonly"), "{err}");
    let (code, out, err) = run_cli_as_reader(dir.path(), &["usage", "--json"], &[]);
    assert_eq!(code, 0, "no ledger there: an empty report: {err}");
    assert!(out.contains("\"rows\":[]"), "{out}");

    let mut router = RouterProcess::start_as_reader(
        dir,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let url = router.url("/v1/chat/completions");
    assert_eq!(
        chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await,
        (200, None)
    );
    assert_eq!(
        chat(&url, Auth::Bearer(BOB_KEY), "[other]m").await,
        (403, Some("provider_forbidden".to_owned()))
    );
    assert_eq!(std::fs::read(&db).expect("db"), before, "not written");
    let files: Vec<_> = std::fs::read_dir(router.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        !files.iter().any(|f| f.to_string_lossy().contains("-wal")),
        "{files:?}"
    );

    // The owner removes bob: the router follows without a restart.
    read_only(0o644);
    Connection::open(&db)
        .expect("owner")
        .execute("DELETE FROM users WHERE username = 'bob'", [])
        .expect("delete");
    read_only(0o444);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = chat(&url, Auth::Bearer(BOB_KEY), "[mock]m").await;
        if got == (401, Some("invalid_api_key".to_owned())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob still in: {got:?}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await,
        (200, None)
    );

    // The owner rotates ann's key with llmsrouter itself, which brings the file to WAL mode:
    // a reader that cannot write the folder cannot follow that. Her old key must not go on
    // working: the router refuses every key rather than keep users it cannot re-read.
    let (code, _, err) = run_cli(router.path(), &["user", "rotate-key", "ann"], &[]);
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await;
        if got.0 == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old key still in: {got:?}"
        );
        tokio::task::yield_now().await;
    }
    // Logged as what it is, at most once, and not followed by a warning that the previous
    // users stay in force (they do not). A passing lock while the CLI converts the file may
    // be warned of before it, truly: the previous users did stay then. Whether the refusal
    // comes at all depends on when the router looks: while the CLI holds the file open (its
    // -wal and -shm there), and at times after, SQLite lets the reader read the rotated users,
    // which refuse the old key as well.
    router.terminate();
    router.wait_exit(std::time::Duration::from_secs(20)).await;
    let said = router.stderr();
    let refusal = "the users database changed and cannot be read (attempt to write a readonly database); every key is refused until it can be";
    assert!(said.matches(refusal).count() <= 1, "{said}");
    let after = said.split(refusal).nth(1).unwrap_or_default();
    assert!(
        !after.contains("the previous users stay in force"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_made_users_db_authenticates_through_the_binary() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    python_users_db(&db);
    let python_rows = rows(&db);
    // The default LLMSROUTER_DB, ./users.db, is the Python version's default too.
    let router = RouterProcess::start_in(
        dir,
        &[("ENABLE_ACCOUNT_MANAGEMENT", "true"), ("RUST_LOG", "debug")],
    );
    let chat_url = router.url("/v1/chat/completions");
    let url = chat_url.as_str();

    assert_eq!(
        chat(url, Auth::Bearer(ANN_KEY), "[mock]m").await,
        (200, None)
    );
    assert_eq!(
        upstream.last().headers["authorization"],
        "Bearer sk-mock-upstream-key",
        "the provider's key goes upstream, never the user's"
    );
    assert_eq!(
        chat(url, Auth::XApiKey(ANN_KEY), "[other]m").await,
        (200, None)
    );
    assert!(upstream.last().headers.get("x-api-key").is_none());
    assert_eq!(
        chat(url, Auth::Bearer(BOB_KEY), "[mock]m").await,
        (200, None)
    );
    let reached = upstream.count();
    assert_eq!(reached, 3);

    let forbidden = Some("provider_forbidden".to_owned());
    let invalid = Some("invalid_api_key".to_owned());
    let url_forbidden = Some("url_target_forbidden".to_owned());
    assert_eq!(
        chat(url, Auth::Bearer(BOB_KEY), "[other]m").await,
        (403, forbidden),
        "\"other\": false grants nothing"
    );
    assert_eq!(
        chat(url, Auth::None, "[mock]m").await,
        (401, invalid.clone())
    );
    assert_eq!(
        chat(url, Auth::Bearer("sk-lr-notakey"), "[mock]m").await,
        (401, invalid.clone())
    );
    assert_eq!(
        chat(url, Auth::Bearer(&ANN_KEY[..31]), "[mock]m").await,
        (401, invalid.clone()),
        "a prefix of a key is not a key"
    );
    let proxied = format!("{url}?proxy={}", upstream.origin());
    assert_eq!(
        chat(&proxied, Auth::Bearer(ANN_KEY), "m").await,
        (403, url_forbidden.clone())
    );
    let in_model = format!("[{}]m", upstream.origin());
    assert_eq!(
        chat(url, Auth::Bearer(ANN_KEY), &in_model).await,
        (403, url_forbidden)
    );
    assert_eq!(
        upstream.count(),
        reached,
        "refused requests never reach a provider"
    );

    let health = client()
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "/health needs no key");
    let refused_keys = || async {
        let text = router.metrics(Some(ANN_KEY)).await;
        let sample = "llmsrouter_requests_refused_total{code=\"invalid_api_key\"}";
        crate::support::metric_sample(&text, sample).unwrap_or(0)
    };
    let refused_before = refused_keys().await;
    for path in ["/v1/models", "/metrics"] {
        let without = client()
            .get(router.url(path))
            .send()
            .await
            .expect("without a key");
        assert_eq!(without.status(), 401, "every other route needs one: {path}");
        let with = client()
            .get(router.url(path))
            .bearer_auth(ANN_KEY)
            .send()
            .await
            .expect("with a key");
        assert_eq!(with.status(), 200, "{path}");
    }
    // Keys refused on the routes the router answers itself are counted too.
    assert_eq!(refused_keys().await, refused_before + 2);

    // The file is still the Python version's: same table, same rows.
    assert_eq!(rows(&router.path().join("users.db")), python_rows);
    let stderr = router.stderr();
    for key in [ANN_KEY, BOB_KEY] {
        assert!(!stderr.contains(key), "a key reached the log");
    }
    assert!(stderr.contains("2 users"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_apply_to_the_next_request_without_a_restart() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("accounts.db");
    let db_arg = db.to_str().expect("utf-8").to_owned();
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let router = RouterProcess::start_in(
        dir,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_DB", &db_arg),
            ("RUST_LOG", "debug"),
        ],
    );
    let here = router.path().to_owned();
    let url = router.url("/v1/chat/completions");
    let mut seen_keys = Vec::new();
    let run = |args: &[&str]| {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--db", &db_arg]);
        cli(here.clone(), strings(&full))
    };

    // No users yet: 401, and the log says how to add one.
    assert_eq!(chat(&url, Auth::Bearer("sk-lr-x"), "[mock]m").await.0, 401);
    assert!(
        router.stderr().contains("has no users"),
        "{}",
        router.stderr()
    );

    let (code, out, err) = run(&["add", "ann", "--permissions", "mock"]).await;
    assert_eq!(code, 0, "{err}");
    let key = out.trim().to_owned();
    seen_keys.push(key.clone());
    // Each change applies to the very next request, with no wait.
    assert_eq!(chat(&url, Auth::Bearer(&key), "[mock]m").await.0, 200);
    assert_eq!(chat(&url, Auth::Bearer(&key), "[other]m").await.0, 403);

    let (code, _, err) = run(&["modify", "ann", "--permissions", "other"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(chat(&url, Auth::Bearer(&key), "[mock]m").await.0, 403);
    assert_eq!(chat(&url, Auth::Bearer(&key), "[other]m").await.0, 200);

    let (code, out, err) = run(&["rotate-key", "ann"]).await;
    assert_eq!(code, 0, "{err}");
    let new_key = out.trim().to_owned();
    seen_keys.push(new_key.clone());
    assert_eq!(chat(&url, Auth::Bearer(&key), "[other]m").await.0, 401);
    assert_eq!(chat(&url, Auth::Bearer(&new_key), "[other]m").await.0, 200);

    let (code, _, err) = run(&["delete", "ann"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(chat(&url, Auth::Bearer(&new_key), "[other]m").await.0, 401);

    let stderr = router.stderr();
    for key in &seen_keys {
        assert!(!stderr.contains(key.as_str()), "a key reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_while_the_cli_adds_twenty_users() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    python_users_db(&db);
    let router = RouterProcess::start_in(dir, &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    let here = router.path().to_owned();
    let url = Arc::new(router.url("/v1/chat/completions"));

    let adding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            let adding = adding.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                loop {
                    statuses.push(chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await.0);
                    if !adding.load(std::sync::atomic::Ordering::SeqCst) {
                        return statuses;
                    }
                }
            })
        })
        .collect();
    let adds: Vec<_> = (0..20)
        .map(|i| {
            let name = format!("user{i:02}");
            cli(
                here.clone(),
                strings(&["user", "add", &name, "--permissions", "mock"]),
            )
        })
        .collect();
    let mut new_keys = Vec::new();
    for (code, out, err) in futures_util::future::join_all(adds).await {
        assert_eq!(code, 0, "{err}");
        assert!(!err.to_lowercase().contains("locked"), "{err}");
        new_keys.push(out.trim().to_owned());
    }
    adding.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for task in requests {
        let statuses = task.await.expect("request task");
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(total >= 50);
    assert_eq!(rows(&router.path().join("users.db")).len(), 22);
    for key in &new_keys {
        assert!(is_new_key(key));
        assert_eq!(chat(&url, Auth::Bearer(key), "[mock]m").await.0, 200);
    }
    let stderr = router.stderr();
    assert!(!stderr.to_lowercase().contains("locked"), "{stderr}");
    for key in new_keys
        .iter()
        .map(String::as_str)
        .chain([ANN_KEY, BOB_KEY])
    {
        assert!(!stderr.contains(key), "a key reached the log");
    }
}

/// The router in-process with accounts on, over the Python-made users.db (ann, bob) in the
/// returned folder, with the task that follows that file.
async fn python_accounts_router(
    upstream: &MockUpstream,
) -> (
    TestRouter,
    llmsrouter::users::index::RefreshTask,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    python_users_db(&db);
    let (index, refresh) = llmsrouter::users::index::start(&db).expect("users");
    let router = TestRouter::start_with(&two_server_config(upstream), |state| {
        state.keys = Some(index);
    })
    .await;
    (router, refresh, dir)
}

#[tokio::test]
async fn the_users_name_reaches_the_request_record() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (router, refresh, _dir) = python_accounts_router(&upstream).await;
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer(BOB_KEY), "[mock]m").await.0, 200);
    let record = router.records.nth(1).await;
    assert_eq!(record.user.as_deref(), Some("bob"));
    assert_eq!(record.provider, "mock");
    assert!(
        !format!("{record:?}").contains(BOB_KEY),
        "the record holds no key"
    );
    router.stop().await;
    refresh.shutdown().await;
}

/// A key sent in a field the router cannot read it from (a byte that is not text after it,
/// a tab after `Bearer`) is 401 `invalid_api_key` saying the key is unreadable, not that none
/// was sent; with no field at all it is "missing". No message quotes what was sent.
#[tokio::test]
async fn an_unreadable_key_is_not_called_missing() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (router, refresh, _dir) = python_accounts_router(&upstream).await;
    let url = router.url("/v1/chat/completions");
    let refused = |field: &'static str, value: Vec<u8>| {
        let request = client()
            .post(&url)
            .json(&json!({"model": "[mock]m", "messages": []}));
        let request = if value.is_empty() {
            request
        } else {
            let value = reqwest::header::HeaderValue::from_bytes(&value).expect("value");
            request.header(field, value)
        };
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    for (field, value) in [
        (
            "authorization",
            [b"Bearer ", BOB_KEY.as_bytes(), b"\xff"].concat(),
        ),
        ("authorization", [b"Bearer\t", BOB_KEY.as_bytes()].concat()),
        ("x-api-key", [BOB_KEY.as_bytes(), b"\xff"].concat()),
    ] {
        let (status, code, message) = refused(field, value).await;
        assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
        assert!(message.starts_with("unreadable API key: "), "{message}");
        assert!(!message.contains(BOB_KEY), "{message}");
    }
    let (status, code, message) = refused("authorization", Vec::new()).await;
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
    assert!(message.starts_with("missing API key: "), "{message}");
    // Both ways a key is read are named (an Anthropic SDK user sends x-api-key).
    assert!(
        message.contains("Authorization: Bearer") && message.contains("x-api-key"),
        "{message}"
    );
    // A key sent where Azure's or Gemini's SDKs put it was sent: the message names the field
    // it should be in, not "missing".
    for field in ["api-key", "x-goog-api-key"] {
        let (status, code, message) = refused(field, BOB_KEY.as_bytes().to_vec()).await;
        assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
        assert!(
            message.starts_with("API key in a header the router does not read: "),
            "{field}: {message}"
        );
        assert!(!message.contains(BOB_KEY), "{message}");
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
    refresh.shutdown().await;
}

/// A client that sends both `Authorization: Bearer` and `x-api-key` (Claude Code with
/// `ANTHROPIC_AUTH_TOKEN` beside `ANTHROPIC_API_KEY`) is served by whichever is a user's key,
/// the bearer token first; when neither is, the 401 says both were read.
#[tokio::test]
async fn a_key_in_x_api_key_counts_beside_a_bearer_token_that_is_none() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let (router, refresh, _dir) = python_accounts_router(&upstream).await;
    let url = router.url("/v1/chat/completions");
    let send = |bearer: &str, api_key: &str| {
        client()
            .post(&url)
            .bearer_auth(bearer)
            .header("x-api-key", api_key)
            .json(&json!({"model": "[other]m", "messages": []}))
            .send()
    };
    let response = send("an-oauth-token-of-another-service", ANN_KEY)
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let record = router.records.nth(1).await;
    assert_eq!(record.user.as_deref(), Some("ann"));
    // Both are keys: the bearer token's user (bob, who may not use `other`) is served.
    let response = send(BOB_KEY, ANN_KEY).await.expect("send");
    assert_eq!(response.status(), 403);
    let response = send("an-oauth-token-of-another-service", "sk-lr-unknown")
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "invalid API key: neither the Authorization bearer token nor x-api-key is a user's key"
    );
    assert_eq!(upstream.count(), 1);
    router.stop().await;
    refresh.shutdown().await;
}

/// An email the Python version's tools refuse (pydantic's `EmailStr`) is refused by `user
/// add` and `import` too, which write nothing: one such address breaks those tools for
/// every user of the shared users.db.
#[test]
fn emails_the_python_tools_refuse_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    add(dir.path(), &["ann", "--email", "ann@example.com"]);
    for bad in [
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@ex-.com",
        // IDNA's domain, which the Python tools' validator checks by rules not kept here.
        "a@ab--cd.com",
        "a@xn--ls8h.la",
        "a@שלוםa.com",
        "a\u{ad}@example.com",
    ] {
        let (code, out, err) = user(dir.path(), &["add", "bob", "--email", bad]);
        assert_eq!((code, out.as_str()), (1, ""), "{bad}: {err}");
        // Quoted as every name: an invisible character (the soft hyphen) shown escaped.
        let shown = bad.replace('\u{ad}', "\\u{ad}");
        assert!(
            err.starts_with(&format!("error: bad email \"{shown}\": ")),
            "{err}"
        );
        let (code, _, err) = run_cli(
            dir.path(),
            &["user", "add", "bob"],
            &[("LLMSROUTER_USER_EMAIL", bad)],
        );
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with("error: LLMSROUTER_USER_EMAIL: not an email address: "),
            "{err}"
        );
    }
    std::fs::write(
        dir.path().join("team.csv"),
        "username,email\ncarl,c..d@example.com\n",
    )
    .expect("csv");
    let (code, _, err) = user(dir.path(), &["import", "team.csv"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("row 2: bad email \"c..d@example.com\""),
        "{err}"
    );
    assert_eq!(rows(&db).len(), 1);
}

/// An import whose every user exists prints no key, so a standard output where a key would
/// be lost (`/dev/null`, closed) is no reason to fail: it succeeds there as on a terminal,
/// with its warnings. It used to fail with "cannot write the new key" (exit 1) though there
/// was none.
#[test]
fn an_import_that_makes_no_user_needs_no_stdout() {
    let dir = tempfile::tempdir().expect("dir");
    let key = add(dir.path(), &["ann"]);
    std::fs::write(dir.path().join("team.csv"), "username,email\nann,\n").expect("csv");
    let args = ["user", "import", "team.csv"];
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let expected = "warning: row 2: user \"ann\" exists; skipped (its key is unchanged)\nimported 0 users, skipped 1 that existed\n";
    for (code, err) in [
        run_cli_writing_to(dir.path(), &args, null),
        run_cli_with_stdout_closed(dir.path(), &args),
    ] {
        assert_eq!((code, err.as_str()), (0, expected));
    }
    assert_eq!(row_of(&dir.path().join("users.db"), "ann")[1], key);
}
