//! Users of the Python version's users.db whose name is NULL, a BLOB or text that is not
//! UTF-8 (SQLite does not enforce the column's type): `user list` prints them, every command
//! that takes a name accepts what it prints and acts on exactly that row, `--key` finds a
//! user by key, and a running server stops taking the key of such a user once deleted.

use std::path::Path;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{RouterProcess, TestRouter, run_cli, run_cli_reading};
use crate::users::{Auth, PYTHON_SCHEMA, chat, cli, strings, two_server_config, user};

pub(crate) const ANN_KEY: &str = "Xq3vB9kLm2Np7Rt5Wz8Yc1Df4Gh6Jk0A";
const NULL_KEY: &str = "nU1lKeyAAAAAAAAAAAAAAAAAAAAAAAAA";
const NULL2_KEY: &str = "nU1lKeyBBBBBBBBBBBBBBBBBBBBBBBBB";
const BLOB_KEY: &str = "bL0bKeyCCCCCCCCCCCCCCCCCCCCCCCCC";
const BAD_TEXT_KEY: &str = "bAdTextKeyDDDDDDDDDDDDDDDDDDDDDD";
const SAME_BYTES_BLOB_KEY: &str = "sAmeBytesEEEEEEEEEEEEEEEEEEEEEEE";
const ESCAPED_KEY: &str = "eScApedFFFFFFFFFFFFFFFFFFFFFFFFF";
pub(crate) const ALL_KEYS: [&str; 7] = [
    ANN_KEY,
    NULL_KEY,
    NULL2_KEY,
    BLOB_KEY,
    BAD_TEXT_KEY,
    SAME_BYTES_BLOB_KEY,
    ESCAPED_KEY,
];

/// The Python version's users.db with a name of every odd kind, each with its own key:
/// two NULLs, the BLOB x'ff00', the text bytes `bob` 0xff, a BLOB of the same bytes, and text
/// with an escape character and a byte that is not UTF-8.
pub(crate) fn odd_users_db(path: &Path) {
    let conn = Connection::open(path).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    let rows: [(&str, &str); 7] = [
        ("'ann'", ANN_KEY),
        ("NULL", NULL_KEY),
        ("NULL", NULL2_KEY),
        ("x'ff00'", BLOB_KEY),
        ("CAST(x'626f62ff' AS TEXT)", BAD_TEXT_KEY),
        ("x'626f62ff'", SAME_BYTES_BLOB_KEY),
        ("CAST(x'6576651bff' AS TEXT)", ESCAPED_KEY),
    ];
    for (name, key) in rows {
        conn.execute(
            &format!(
                "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at)
                 VALUES ({name}, ?1, NULL, '{{\"mock\": true}}', '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')"
            ),
            [key],
        )
        .expect("row");
    }
    assert_eq!(
        stored(path)
            .iter()
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>(),
        ["text", "null", "null", "blob", "text", "blob", "text"],
        "the rows hold the odd kinds meant"
    );
}

/// Every row as stored: (rowid, typeof(username), hex(username), api_key, permissions).
pub(crate) fn stored(db: &Path) -> Vec<(i64, String, String, String, String)> {
    let conn = Connection::open(db).expect("open");
    let mut statement = conn
        .prepare(
            "SELECT rowid, typeof(username), hex(username), api_key, permissions FROM users ORDER BY rowid",
        )
        .expect("select");
    statement
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// One ledger row (one request, 1 + 1 tokens) for each of `names`, as the recorder writes it.
fn ledger_rows_of(db: &Path, names: &[&str]) {
    let rows: Vec<(&str, &str)> = names.iter().map(|name| (*name, "m")).collect();
    ledger_rows_with(db, &rows);
}

/// A ledger row for each (username, model).
fn ledger_rows_with(db: &Path, rows: &[(&str, &str)]) {
    let conn = Connection::open(db).expect("open");
    for (name, model) in rows {
        conn.execute(
            "INSERT INTO usage_ledger (request_id, started_at, day, username, provider, mode,
                 endpoint, model, stream, outcome, latency_ms, input_tokens, output_tokens,
                 total_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens,
                 usage_known, usage_partial)
             VALUES ('r', '2024-05-01T12:00:00.000Z', '2024-05-01', ?1, 'mock', 'alias',
                 '/v1/chat/completions', ?2, 0, 'ok', 1, 1, 1, 2, 0, 0, 0, 1, 0)",
            [*name, *model],
        )
        .expect("ledger row");
    }
}

/// The names of the rows of `usage --by <by> --json`, which must succeed and say nothing.
fn names_in_json(dir: &Path, by: &str) -> Vec<String> {
    let (code, out, err) = run_cli(dir, &["usage", "--by", by, "--json"], &[]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let report: Value = serde_json::from_str(&out).expect("json");
    let rows = report["rows"].as_array().expect("rows");
    rows.iter()
        .filter_map(|row| row[by].as_str().map(str::to_owned))
        .collect()
}

/// The first cell of each line of a `usage` table.
fn first_cells(table: &str) -> Vec<&str> {
    table
        .lines()
        .filter_map(|line| line.split("  ").next())
        .map(str::trim)
        .collect()
}

/// The first 8 hex digits of the SHA-256 of `name`, as the `usage` table tells names apart.
fn hash8(name: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(name.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn key_of(db: &Path, rowid: i64) -> Option<String> {
    stored(db).into_iter().find(|r| r.0 == rowid).map(|r| r.3)
}

pub(crate) fn assert_no_key(outputs: &[&str]) {
    for output in outputs {
        for key in ALL_KEYS {
            assert!(!output.contains(key), "a key was printed: {output}");
        }
    }
}

#[test]
fn every_listed_name_addresses_exactly_its_row() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);

    let (code, table, err) = user(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split("  ").next())
        .collect();
    assert_eq!(
        names,
        [
            "<null>",
            "<null>",
            "ann",
            "bob\\xff",
            "eve\\u{1b}\\xff",
            "<blob:626f62ff>",
            "<blob:ff00>"
        ],
        "{table}"
    );
    let (code, json, _) = user(dir.path(), &["list", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&json).expect("json");
    let listed = listed.as_array().expect("array");
    let json_names: Vec<&str> = listed
        .iter()
        .map(|u| u["username"].as_str().expect("a string"))
        .collect();
    assert_eq!(
        json_names,
        [
            "<null>",
            "<null>",
            "ann",
            "bob\\xff",
            "eve\u{1b}\\xff",
            "<blob:626f62ff>",
            "<blob:ff00>"
        ]
    );
    assert_no_key(&[&table, &json]);

    // Each name printed once (in the table or JSON form) shows that user and no other: its
    // object is the one `list --json` printed.
    for (name, position) in [
        ("ann", 2),
        ("bob\\xff", 3),
        ("eve\\u{1b}\\xff", 4),
        ("eve\u{1b}\\xff", 4),
        ("<blob:626f62ff>", 5),
        ("<blob:ff00>", 6),
    ] {
        let (code, shown, err) = user(dir.path(), &["show", name, "--json"]);
        assert_eq!(code, 0, "{name}: {err}");
        let shown: Value = serde_json::from_str(&shown).expect("json");
        assert_eq!(shown, listed[position], "{name}");
    }

    // The two NULLs print alike: refused, one line listing both with their rowids, nothing
    // changed, no key shown.
    let before = stored(&db);
    for args in [
        vec!["show", "<null>"],
        vec!["delete", "<null>"],
        vec!["rotate-key", "<null>"],
        vec!["modify", "<null>", "--permissions", "*"],
    ] {
        let (code, out, err) = user(dir.path(), &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        for part in ["names 2 users", "rowid 2", "rowid 3", "--rowid", "--key"] {
            assert!(err.contains(part), "{args:?}: {err}");
        }
        assert_no_key(&[&err]);
        assert_eq!(stored(&db), before, "{args:?} changed the database");
    }
    let (code, _, err) = user(dir.path(), &["delete", "<null>", "--rowid", "1"]);
    assert_eq!(code, 1, "rowid 1 is ann, not a <null>: {err}");
    assert!(err.contains("has rowid 1"), "{err}");
    assert_eq!(stored(&db), before);

    // --rowid picks one; every command acts on that row alone and keeps its stored name.
    let (code, out, err) = user(dir.path(), &["delete", "<null>", "--rowid", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"<null>\"\n");
    assert_eq!(key_of(&db, 3), None);
    assert_eq!(key_of(&db, 2).as_deref(), Some(NULL_KEY));
    let (code, _, err) = user(dir.path(), &["modify", "<null>", "--permissions", "other"]);
    assert_eq!(code, 0, "the one left: {err}");

    let (code, out, err) = user(dir.path(), &["rotate-key", "bob\\xff"]);
    assert_eq!(code, 0, "{err}");
    let new_key = out.trim_end();
    assert!(new_key.starts_with("sk-lr-"), "{out}");
    assert!(err.contains("\"bob\\xff\""), "{err}");
    assert_eq!(key_of(&db, 5).as_deref(), Some(new_key));
    assert_eq!(
        key_of(&db, 6).as_deref(),
        Some(SAME_BYTES_BLOB_KEY),
        "the blob of the same bytes is another user"
    );

    let (code, _, err) = user(dir.path(), &["modify", "<blob:ff00>", "--permissions", "*"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = user(dir.path(), &["delete", "<blob:626f62ff>"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"<blob:626f62ff>\"\n");
    let (code, _, err) = user(dir.path(), &["delete", "eve\\u{1b}\\xff"]);
    assert_eq!(code, 0, "the table's form of a name: {err}");

    let after: Vec<(i64, String, String, String)> = stored(&db)
        .into_iter()
        .map(|(rowid, kind, hex, _, permissions)| (rowid, kind, hex, permissions))
        .collect();
    let expected: Vec<(i64, String, String, String)> = [
        (1, "text", "616E6E", r#"{"mock": true}"#),
        (2, "null", "", r#"{"other": true}"#),
        (4, "blob", "FF00", r#"{"*": true}"#),
        (5, "text", "626F62FF", r#"{"mock": true}"#),
    ]
    .into_iter()
    .map(|(r, k, h, p)| (r, k.to_owned(), h.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(after, expected);
    let (code, _, _) = user(dir.path(), &["show", "<blob:626f62ff>"]);
    assert_eq!(code, 1, "deleted");
}

#[test]
fn a_user_is_found_by_its_key_which_is_never_printed() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let mut outputs = Vec::new();

    let (code, out, err) = user(dir.path(), &["show", "--key", NULL2_KEY, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["username"], "<null>");
    assert_eq!(shown["key_prefix"], &NULL2_KEY[..10]);
    outputs.push(out);

    let (code, out, err) = user(dir.path(), &["delete", "--key", BAD_TEXT_KEY]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"bob\\xff\"\n");
    assert_eq!(key_of(&db, 5), None);
    assert_eq!(stored(&db).len(), 6);
    outputs.extend([out, err]);

    // A wrong key (or the one just deleted): one line, exit 1, nothing changed.
    let before = stored(&db);
    for args in [
        vec!["delete", "--key", BAD_TEXT_KEY],
        vec!["show", "--key", "sk-lr-wrong"],
        vec!["rotate-key", "--key", &ANN_KEY[..31]],
    ] {
        let (code, out, err) = user(dir.path(), &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err, "error: no user has the given key\n");
        assert!(out.is_empty());
        assert_eq!(stored(&db), before);
    }

    // `--key -` reads it from stdin (out of the shell's history and the process list);
    // white space around it, pasted along, is not part of it (as the server reads it).
    let key_file = dir.path().join("leaked.txt");
    std::fs::write(&key_file, format!("  {BLOB_KEY} \t\r\n")).expect("key file");
    let stdin = std::fs::File::open(&key_file).expect("open");
    let (code, out, err) = run_cli_reading(dir.path(), &["user", "show", "--key", "-"], stdin);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<blob:ff00>"), "{out}");
    let padded = format!(" {BLOB_KEY} ");
    let (code, out, err) = user(dir.path(), &["show", "--key", &padded]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<blob:ff00>"), "{out}");
    let stdin = std::fs::File::open(&key_file).expect("open");
    let (code, out, err) =
        run_cli_reading(dir.path(), &["user", "rotate-key", "--key", "-"], stdin);
    assert_eq!(code, 0, "{err}");
    assert_eq!(key_of(&db, 4).as_deref(), Some(out.trim_end()));
    assert!(err.contains("\"<blob:ff00>\""), "{err}");

    // LLMSROUTER_USER_KEY stands for --key; with a name too, the command is refused.
    let key_var = [("LLMSROUTER_USER_KEY", NULL_KEY)];
    let (code, out, err) = run_cli(dir.path(), &["user", "show"], &key_var);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<null>"), "{out}");
    outputs.push(out);
    let (code, out, err) = run_cli(
        dir.path(),
        &["user", "show", "<null>", "--json"],
        &[("LLMSROUTER_USER_ROWID", "3")],
    );
    assert_eq!(code, 0, "LLMSROUTER_USER_ROWID stands for --rowid: {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["key_prefix"],
        &NULL2_KEY[..10]
    );
    let (code, _, err) = run_cli(dir.path(), &["user", "delete", "ann"], &key_var);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("LLMSROUTER_USER_KEY is set"), "{err}");
    outputs.push(err);
    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "delete", "ann", "--key", ANN_KEY],
        &[],
    );
    assert_eq!(code, 2, "a name or a key, not both: {err}");
    outputs.push(err);
    let (code, _, err) = run_cli(dir.path(), &["user", "delete"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--key"), "{err}");
    assert_eq!(key_of(&db, 1).as_deref(), Some(ANN_KEY));
    let (code, help, _) = run_cli(dir.path(), &["user", "delete", "--help"], &key_var);
    assert_eq!(code, 0);
    outputs.push(help);

    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_no_key(&outputs);
}

/// The running server's key index follows deletions and rotations of odd-named users, made
/// by name or by key, from the next request on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_refuses_an_odd_users_key_once_deleted() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    odd_users_db(&dir.path().join("users.db"));
    let router = RouterProcess::start_in(dir, &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    let here = router.path().to_owned();
    let url = router.url("/v1/chat/completions");
    let run = |args: &[&str]| {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        cli(here.clone(), strings(&full))
    };
    let status = |key: String| {
        let url = url.clone();
        async move { chat(&url, Auth::Bearer(&key), "[mock]m").await.0 }
    };
    for key in [NULL_KEY, NULL2_KEY, BLOB_KEY, BAD_TEXT_KEY] {
        assert_eq!(status(key.to_owned()).await, 200, "{key} works before");
    }

    let (code, _, err) = run(&["delete", "<null>", "--rowid", "2"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(NULL_KEY.to_owned()).await, 401, "deleted by name");
    assert_eq!(status(NULL2_KEY.to_owned()).await, 200, "the other <null>");

    let (code, out, err) = run(&["rotate-key", "<blob:ff00>"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(BLOB_KEY.to_owned()).await, 401, "rotated");
    assert_eq!(status(out.trim_end().to_owned()).await, 200);

    let (code, _, err) = run(&["delete", "--key", BAD_TEXT_KEY]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(BAD_TEXT_KEY.to_owned()).await, 401, "deleted by key");

    let (code, _, err) = run(&["delete", "<null>"]).await;
    assert_eq!(code, 0, "the one <null> left: {err}");
    assert_eq!(status(NULL2_KEY.to_owned()).await, 401);
    assert_eq!(status(ANN_KEY.to_owned()).await, 200, "ann untouched");

    assert_no_key(&[&router.stderr()]);
}

/// The server's warnings about a user row name the user as every message does, escaped: a
/// name with a line break or a direction override (a row another tool wrote) went into the
/// console log raw, where it could forge a line of its own.
#[test]
fn a_users_row_warned_of_names_the_user_escaped() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let conn = Connection::open(&db).expect("open");
    for (name, key, permissions) in [
        ("\u{202e}eve\nFAKE", "", "{}"),
        (
            "mal\rlory\u{0}",
            "mAlloryGGGGGGGGGGGGGGGGGGGGGGGGG",
            "not json",
        ),
    ] {
        conn.execute(
            "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at)
             VALUES (?1, ?2, NULL, ?3, '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')",
            [name, key, permissions],
        )
        .expect("row");
    }
    drop(conn);
    let router = RouterProcess::start_in(dir, &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    let stderr = router.stderr();
    let line_with = |text: &str| {
        stderr
            .lines()
            .find(|line| line.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in {stderr}"))
            .to_owned()
    };
    let empty = line_with("user has an empty key");
    assert!(empty.contains(r#"user="\u{202e}eve\nFAKE""#), "{empty}");
    let unreadable = line_with("permissions column cannot be read");
    assert!(
        unreadable.contains(r#"user="mal\rlory\u{0}""#),
        "{unreadable}"
    );
    assert!(
        !stderr.contains('\u{202e}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert!(!stderr.lines().any(|l| l.starts_with("FAKE")), "{stderr}");
}

/// Requests of a user whose name is NULL are recorded under the name `user list` prints.
#[tokio::test]
async fn an_odd_users_requests_are_recorded_under_its_printed_name() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let (index, refresh) = llmsrouter::users::index::start(&db).expect("users");
    let router = TestRouter::start_with(&two_server_config(&upstream), |state| {
        state.keys = Some(index);
    })
    .await;
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer(NULL_KEY), "[mock]m").await.0, 200);
    assert_eq!(router.records.nth(1).await.user.as_deref(), Some("<null>"));
    assert_eq!(
        chat(&url, Auth::Bearer(BAD_TEXT_KEY), "[mock]m").await.0,
        200
    );
    assert_eq!(
        router.records.nth(2).await.user.as_deref(),
        Some("bob\\xff")
    );
    router.stop().await;
    refresh.shutdown().await;
}

/// A Python version's user whose name begins with `-` (`user list` prints `-bob`) is named
/// after `--`, and the error for the name written as a flag says so, naming each command's
/// own way: `user delete -bob` said only "unexpected argument '-b' found". The command the
/// hint shows works as shown. A flag mistyped after the name, or `add` (which refuses such a
/// name), gets no such hint.
#[test]
fn a_name_beginning_with_a_dash_is_named_after_double_dash_as_the_error_says() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let conn = Connection::open(&db).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    conn.execute(
        "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at)
         VALUES ('-bob', ?1, NULL, '{\"*\": true}', '2024-05-01T12:34:56', '2024-05-01T12:34:56')",
        [ANN_KEY],
    )
    .expect("row");
    drop(conn);
    let (code, table, err) = user(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("-bob  ")),
        "{table}"
    );

    let mut shown = String::new();
    for (args, command) in [
        (&["show", "-bob", "--json"][..], "show"),
        (
            &["--db", "users.db", "modify", "-bob", "--permissions", "*"],
            "modify",
        ),
        (&["rotate-key", "--db", "users.db", "-bob"], "rotate-key"),
        (&["delete", "-bob"], "delete"),
    ] {
        let (code, out, err) = user(dir.path(), args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert_eq!(
            err,
            format!(
                "error: unexpected argument '-b' found (a user name that begins with \"-\" goes last, after --: llmsrouter user {command} -- -bob)\n"
            ),
            "{args:?}"
        );
        shown = err;
    }
    for args in [
        &["delete", "bob", "-x"][..],
        &["add", "-bob"],
        &["delete", "--keyy"],
    ] {
        let (code, _, err) = user(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.ends_with("see --help)\n"), "{args:?}: {err}");
        assert!(!err.contains("after --"), "{args:?}: {err}");
    }
    assert_eq!(stored(&db).len(), 1, "nothing was done");

    // The command the hint shows (the last, delete's), run as shown.
    let shown = shown
        .split_once(": llmsrouter ")
        .and_then(|(_, command)| command.strip_suffix(")\n"))
        .expect("a command");
    let args: Vec<&str> = shown.split(' ').collect();
    let (code, _, err) = run_cli(dir.path(), &args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(stored(&db).is_empty());
}

/// An alias may begin with `-`: `--permissions -lead` is taken for flags by the command-line
/// parser, and its error says how to write the value (`--permissions=-lead`), which works.
/// The value itself is not repeated (another flag's may be a key).
#[test]
fn a_permissions_value_beginning_with_a_dash_is_written_with_equals_as_the_error_says() {
    let dir = tempfile::tempdir().expect("dir");
    for value in ["-lead", "-,-lead"] {
        let (code, out, err) = user(dir.path(), &["add", "ann", "--permissions", value]);
        assert_eq!((code, out.as_str()), (2, ""), "{value}: {err}");
        assert!(
            err.trim_end()
                .ends_with("(a value that begins with \"-\" is written --permissions=<value>)"),
            "{value}: {err}"
        );
    }
    let (code, out, err) = user(dir.path(), &["add", "ann", "--permissions=-lead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sk-lr-"), "{out}");
    let (_, shown, err) = user(dir.path(), &["show", "ann", "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap_or_else(|_| panic!("{shown} {err}"));
    assert_eq!(
        shown["permissions"],
        serde_json::json!(["-lead"]),
        "{shown}"
    );
}

/// Python-era names that look alike on a screen: `carol ` (a trailing space), `José` in NFC
/// and decomposed (`e` and U+0301), and `Jane` NO-BREAK SPACE `Doe`, beside plain ones. Each
/// prints apart from its look-alike in `user list`, `user show` and `usage --by user`, and
/// what is printed, pasted back, names that row (`carol` printed as `carol` named nobody; the
/// two `José` printed alike). A name that names nobody but looks like some names lists them,
/// with their rowids, and `--rowid` picks a look-alike (it said "no user "José" has rowid 3
/// (the only user "José" has rowid 2)" of the other José's rowid). No key is printed.
#[test]
fn look_alike_names_print_apart_and_are_named_by_what_is_printed() {
    const KEYS: [&str; 5] = [
        "AnnKeyAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "CarolKeyBBBBBBBBBBBBBBBBBBBBBBBB",
        "JoseNfcKeyCCCCCCCCCCCCCCCCCCCCCC",
        "JoseNfdKeyDDDDDDDDDDDDDDDDDDDDDD",
        "JaneKeyEEEEEEEEEEEEEEEEEEEEEEEEE",
    ];
    const NAMES: [&str; 5] = ["ann", "carol ", "Jos\u{e9}", "Jose\u{301}", "Jane\u{a0}Doe"];
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    {
        let conn = Connection::open(&db).expect("create");
        conn.execute_batch(PYTHON_SCHEMA).expect("schema");
        for (name, key) in NAMES.iter().zip(KEYS) {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, NULL, '{\"*\": true}', '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')",
                [name, &key],
            )
            .expect("row");
        }
    }
    let mut outputs = Vec::new();
    let (code, table, err) = user(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    let printed: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split("  ").next())
        .collect();
    // By the stored bytes: the decomposed `e` sorts before the NFC `é`.
    assert_eq!(
        printed,
        [
            "Jane\\u{a0}Doe",
            "Jose\\u{301}",
            "Jos\u{e9}",
            "ann",
            "\"carol \""
        ],
        "{table}"
    );
    outputs.push(table.clone());

    // What is printed names its row, as do the stored name and the form in quotes.
    let rows = [(5, 0), (4, 1), (3, 2), (1, 3), (2, 4)];
    for (rowid, at) in rows {
        let name = NAMES[rowid - 1];
        for given in [printed[at], name] {
            let (code, out, err) = user(dir.path(), &["show", given, "--json"]);
            assert_eq!(code, 0, "{given:?}: {err}");
            let shown: Value = serde_json::from_str(&out).expect("json");
            assert_eq!(shown["username"], name, "{given:?}");
            assert_eq!(shown["key_prefix"], &KEYS[rowid - 1][..10], "{given:?}");
            outputs.push(out);
        }
        let (code, out, err) = user(dir.path(), &["show", printed[at]]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.lines().next(),
            Some(format!("username:     {}", printed[at]).as_str()),
            "{out}"
        );
        outputs.push(out);
    }

    // The name as it looks names nobody: the look-alike is named, and how to name it.
    let (code, out, err) = user(dir.path(), &["show", "carol"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        "error: user \"carol\" does not exist; 1 user's name looks like it (rowid 2: \"carol \", key CarolKeyBB…, created 2024-05-01 12:34:56); no user was changed: add --rowid <N> to pick one, or give the name exactly as shown here (in single quotes for the shell), or give --key <KEY> instead of the name\n"
    );
    outputs.push(err);
    let (code, out, err) = user(dir.path(), &["show", "carol", "--rowid", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"carol \""), "{out}");
    // A look-alike's rowid picks it; one that is neither's lists both.
    let (code, out, err) = user(dir.path(), &["show", "Jos\u{e9}", "--rowid", "4", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("JoseNfdKey"), "{out}");
    let (code, _, err) = user(dir.path(), &["show", "Jos\u{e9}", "--rowid", "1"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no user \"Jos\u{e9}\" has rowid 1, nor a user whose name looks like it (rowid 3: \"Jos\u{e9}\"; rowid 4: \"Jose\\u{301}\")\n"
    );
    outputs.push(err);

    // A change acts on the row printed, and on it alone.
    let (code, out, err) = user(dir.path(), &["delete", "Jose\\u{301}"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"Jose\\u{301}\"\n");
    let left: Vec<i64> = stored(&db).iter().map(|r| r.0).collect();
    assert_eq!(left, [1, 2, 3, 5]);

    // `usage --by user` prints the names of the ledger's rows as `user list` does.
    ledger_rows_of(&db, &NAMES);
    let (code, report, err) = run_cli(dir.path(), &["usage", "--by", "user"], &[]);
    assert_eq!(code, 0, "{err}");
    let mut users: Vec<&str> = report
        .lines()
        .skip(1)
        .filter_map(|l| l.split("  ").next())
        .filter(|cell| *cell != "TOTAL")
        .collect();
    users.sort_unstable();
    assert_eq!(
        users,
        [
            "\"carol \"",
            "Jane\\u{a0}Doe",
            "Jose\\u{301}",
            "Jos\u{e9}",
            "ann"
        ],
        "{report}"
    );
    outputs.push(report);

    for output in &outputs {
        for key in KEYS {
            assert!(!output.contains(key), "a key was printed: {output}");
        }
    }
}

/// `user add` and `user import` of a name that looks like a Python-era user's on a screen
/// (`carol` beside `carol ` and ` carol`, an NFC `José` beside a decomposed one) still make
/// the user, as the names differ, but note on stderr which users look alike, by rowid and name
/// as `user list` prints them, and never by key. (Nothing was said: a second user that looked
/// the same was made in silence.) A name like nobody's gets no note.
#[test]
fn a_new_name_that_looks_like_an_existing_one_is_noted() {
    const KEYS: [&str; 5] = [
        "AnnKeyAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "CarolKeyBBBBBBBBBBBBBBBBBBBBBBBB",
        "JoseNfdKeyDDDDDDDDDDDDDDDDDDDDDD",
        "CarolTooKeyCCCCCCCCCCCCCCCCCCCCC",
        "DoraKeyEEEEEEEEEEEEEEEEEEEEEEEEE",
    ];
    const NAMES: [&str; 5] = ["ann", "carol ", "Jose\u{301}", " carol", "dora\u{200b}"];
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    {
        let conn = Connection::open(&db).expect("create");
        conn.execute_batch(PYTHON_SCHEMA).expect("schema");
        for (name, key) in NAMES.iter().zip(KEYS) {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, NULL, '{\"*\": true}', '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')",
                [name, &key],
            )
            .expect("row");
        }
    }
    let hint = "kept apart: name them as \"user list\" prints them, or by --rowid";
    let mut outputs = Vec::new();

    let (code, out, err) = user(dir.path(), &["add", "Jos\u{e9}"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "the key alone: {out}");
    assert_eq!(
        err.lines().last(),
        Some(
            format!(
                "note: \"Jos\u{e9}\" looks like an existing user's name (rowid 3: \"Jose\\u{{301}}\"); both are {hint}"
            )
            .as_str()
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    outputs.push(err);

    let (code, _, err) = user(dir.path(), &["add", "carol"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.lines().last(),
        Some(
            format!(
                "note: \"carol\" looks like 2 existing users' names (rowid 2: \"carol \"; rowid 4: \" carol\"); all are {hint}"
            )
            .as_str()
        ),
        "{err}"
    );
    outputs.push(err);

    let (code, _, err) = user(dir.path(), &["add", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("note:"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Per row of an import (the header is row 1), for the rows made only: `ann` exists.
    std::fs::write(
        dir.path().join("team.csv"),
        "username,email\nann,\ndora,\neve,\n",
    )
    .expect("csv");
    let (code, out, err) = user(dir.path(), &["import", "team.csv"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "dora's and eve's keys: {out}");
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(
        notes,
        [format!(
            "note: row 3: \"dora\" looks like an existing user's name (rowid 5: \"dora\\u{{200b}}\"); both are {hint}"
        )],
        "{err}"
    );
    outputs.push(err);

    // Every user was made, the look-alikes as well, and the Python-era rows are unchanged.
    let rows = stored(&db);
    assert_eq!(rows.len(), 10, "{rows:?}");
    for (row, key) in rows.iter().zip(KEYS) {
        assert_eq!(row.3, key);
    }
    for output in &outputs {
        for key in KEYS {
            assert!(!output.contains(key), "a key was printed: {output}");
            assert!(
                !output.contains(&key[..10]),
                "a key's prefix was printed: {output}"
            );
        }
    }
}

/// A key stored as a number (a hand-edited table whose `api_key` has no type, where SQLite
/// keeps `12345` an INTEGER and `1.5` a REAL) signs in nobody, as a BLOB key does: the Python
/// version compared the key typed (a `str`) with what `sqlite3` gave back (an `int`), which
/// never matched; read as its text, it signed in with `Bearer 12345`. The server warns of
/// each as it warns of a BLOB key; `--key` finds no user by it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_key_signs_in_nobody() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let conn = Connection::open(dir.path().join("users.db")).expect("create");
    conn.execute_batch(&PYTHON_SCHEMA.replace("api_key TEXT UNIQUE", "api_key UNIQUE"))
        .expect("schema");
    let insert = "INSERT INTO users VALUES (?1, ?2, NULL, '{\"*\": true}', 't', 't')";
    conn.execute(insert, rusqlite::params!["intkey", 12345_i64])
        .expect("integer row");
    conn.execute(insert, rusqlite::params!["realkey", 1.5_f64])
        .expect("real row");
    conn.execute(insert, rusqlite::params!["ann", ANN_KEY])
        .expect("ann");
    let kinds: Vec<String> = conn
        .prepare("SELECT typeof(api_key) FROM users ORDER BY rowid")
        .expect("select")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("kinds");
    assert_eq!(
        kinds,
        ["integer", "real", "text"],
        "the keys are stored as meant"
    );
    drop(conn);
    let router = RouterProcess::start_in(
        dir,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer("12345"), "[mock]m").await.0, 401);
    assert_eq!(chat(&url, Auth::Bearer("1.5"), "[mock]m").await.0, 401);
    assert_eq!(chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await.0, 200);
    let stderr = router.stderr();
    for name in ["intkey", "realkey"] {
        assert!(
            stderr.lines().any(|line| line
                .contains("user's key is stored as a number, not as text; it cannot sign in")
                && line.contains(&format!("user=\"{name}\""))),
            "{name}: {stderr}"
        );
    }
    let (code, _, err) = run_cli(router.path(), &["user", "show", "--key", "12345"], &[]);
    assert_eq!(
        (code, err.as_str()),
        (1, "error: no user has the given key\n")
    );
}

/// Two rows of a Python-era table: a key stored as a BLOB, which signs in nobody (the Python
/// version's `WHERE api_key = ?` never matched one; read as text it signed in) and is warned
/// of as an empty key is; and a 100 KB username, recorded cut to 1,024 characters as a long
/// model name is (it was written whole into each request log line and ledger row), while
/// `user show` still finds the user by the whole name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_key_signs_in_nobody_and_a_huge_name_is_recorded_cut() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    let huge = format!("h{}", "x".repeat(100_000));
    let conn = Connection::open(&db).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    let insert = "INSERT INTO users VALUES (?1, ?2, NULL, '{\"*\": true}', 't', 't')";
    conn.execute(
        insert,
        rusqlite::params!["blobkey", BLOB_KEY.as_bytes().to_vec()],
    )
    .expect("blob row");
    conn.execute(insert, rusqlite::params![huge, ANN_KEY])
        .expect("huge row");
    drop(conn);
    let router = RouterProcess::start_in(
        dir,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LOG_FILE", "requests.log"),
        ],
    );
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer(BLOB_KEY), "[mock]m").await.0, 401);
    assert_eq!(chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await.0, 200);
    let stderr = router.stderr();
    assert!(
        stderr.lines().any(|line| line
            .contains("user's key is stored as a BLOB, not as text; it cannot sign in")
            && line.contains("user=\"blobkey\"")),
        "{stderr}"
    );
    assert!(!stderr.contains(BLOB_KEY), "{stderr}");

    let folder = router.path().to_owned();
    let db = folder.join("users.db");
    let ledger_name = || {
        Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT username FROM usage_ledger WHERE status = 200",
                    [],
                    |r| r.get::<_, String>(0),
                )
            })
            .ok()
    };
    crate::support::wait_until(std::time::Duration::from_secs(10), || {
        ledger_name().is_some()
    })
    .await;
    // Its first characters, then `…#` and 16 hex digits of the whole name's SHA-256.
    let kept: String = huge.chars().take(1024 - 18).collect();
    let cut = ledger_name().expect("a ledger row");
    assert_eq!(cut.chars().count(), 1024, "{cut}");
    let (head, hash) = cut.split_once('…').expect("marked cut");
    assert_eq!(head, kept);
    assert!(
        hash.len() == 17
            && hash.starts_with('#')
            && hash[1..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    let log_user = || {
        std::fs::read_dir(&folder)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("requests."))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .find_map(|v| v["user"].as_str().map(str::to_owned))
    };
    crate::support::wait_until(std::time::Duration::from_secs(10), || log_user().is_some()).await;
    assert_eq!(log_user().as_deref(), Some(cut.as_str()));

    let (code, out, err) = run_cli(&folder, &["user", "show", &huge, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["username"].as_str(), Some(huge.as_str()));
}

/// A 100 KB Python-era username (or email) is cut in the `user list` table as a message cuts
/// a name: its first 80 characters, `…` and its length in bytes, with a note on stderr that
/// says how to see it whole (the table printed it whole, 100 KB wide, and every row padded
/// to it). `--json` keeps it whole; the cut form, pasted back, names the user, and two names
/// cut alike are told apart by `--rowid`, as names that print alike are.
#[test]
fn a_huge_name_is_cut_in_the_user_list_table() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    let huge = format!("h{}", "x".repeat(100_000));
    let twin = format!("h{}y", "x".repeat(99_999));
    let email = format!("{}@example.com", "e".repeat(1_000));
    let conn = Connection::open(&db).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    let insert = "INSERT INTO users VALUES (?1, ?2, ?3, '{\"*\": true}', 't', 't')";
    for (name, key, email) in [
        ("ann", ANN_KEY, None),
        (huge.as_str(), NULL_KEY, Some(email.as_str())),
        (twin.as_str(), NULL2_KEY, None),
    ] {
        conn.execute(insert, rusqlite::params![name, key, email])
            .expect("row");
    }
    drop(conn);
    let user = |args: &[&str]| run_cli(dir.path(), &[&["user"], args].concat(), &[]);
    let cut = format!("h{}… (100001 bytes)", "x".repeat(79));
    let cut_email = format!("{}… (1012 bytes)", "e".repeat(80));

    let (code, out, err) = user(&["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() < 1_000, "{} bytes: {out}", out.len());
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(rows[2][..2], [cut.as_str(), cut_email.as_str()], "{out}");
    assert_eq!(rows[3][..2], [cut.as_str(), "-"], "{out}");
    assert!(
        err.starts_with("note: 2 users' names or emails are cut in the table: ")
            && err.contains("llmsrouter user list --json prints every name and email whole"),
        "{err}"
    );
    // One cut name: the note says so in the singular.
    let (code, _, err) = user(&["delete", &twin]);
    assert_eq!(code, 0, "{err}");
    let (_, _, err) = user(&["list"]);
    assert!(
        err.starts_with("note: 1 user's name or email is cut"),
        "{err}"
    );
    let (code, out, err) = user(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed[1]["username"].as_str(), Some(huge.as_str()));
    assert_eq!(listed[1]["email"].as_str(), Some(email.as_str()));
    assert!(err.is_empty(), "{err}");

    // The cut form names the user, bare or as a message quotes it.
    for given in [cut.clone(), format!("\"{cut}\"")] {
        let (code, out, err) = user(&["show", &given, "--json"]);
        assert_eq!(code, 0, "{err}");
        let shown: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(shown["username"].as_str(), Some(huge.as_str()));
    }
    // Two names cut alike: listed by rowid, and `--rowid` picks one.
    let conn = Connection::open(&db).expect("open");
    let alike = format!("h{}z", "x".repeat(99_999));
    conn.execute(insert, rusqlite::params![alike, NULL2_KEY, None::<String>])
        .expect("row");
    drop(conn);
    let (code, _, err) = user(&["show", &cut]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: \"{cut}\" names 2 users (rowid 2: \"{cut}\""
        )) && err.contains(&format!("rowid 3: \"{cut}\"")),
        "{err}"
    );
    let (code, out, err) = user(&["show", &cut, "--rowid", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["username"].as_str(), Some(alike.as_str()));
}

/// Two recorded names cut alike in the `usage --by user` table (the same first 80 characters
/// and length) print apart: each is followed by ` #` and the first 8 hex digits of the
/// SHA-256 of its whole recorded name, with a note after the table. They printed as two
/// identical rows, as if one user's usage were split in two. A name cut alike no other's is
/// shown as before, and `--json` keeps every name whole.
#[test]
fn names_cut_alike_print_apart_in_the_usage_table() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    // As the recorder cuts two longer names that begin alike: `…#` and 16 hex digits apart.
    let one = format!("h{}…#0123456789abcdef", "x".repeat(1005));
    let two = format!("h{}…#fedcba9876543210", "x".repeat(1005));
    let other = format!("j{}", "y".repeat(100));
    ledger_rows_of(&dir.path().join("users.db"), &[&one, &two, &other]);
    let (code, out, err) = run_cli(dir.path(), &["usage", "--by", "user"], &[]);
    assert_eq!(code, 0, "{err}");
    let firsts = first_cells(&out);
    let cut = format!("h{}… (1026 bytes)", "x".repeat(79));
    let expected = [
        "USER".to_owned(),
        format!("{cut} #{}", hash8(&one)),
        format!("{cut} #{}", hash8(&two)),
        format!("j{}… (101 bytes)", "y".repeat(79)),
        "TOTAL".to_owned(),
    ];
    assert_eq!(firsts, expected, "{out}");
    assert_eq!(
        err,
        "note: 3 users' names are cut in the table: their first 80 characters, then … and their length in bytes as recorded; llmsrouter usage --by user --json prints every name whole\n\
         note: 2 users' names print alike in the table, so each is followed by # and the first hex digits of the SHA-256 of the whole name as recorded; llmsrouter usage --by user --json prints every name whole\n"
    );

    let names = names_in_json(dir.path(), "user");
    assert_eq!(names, [one.as_str(), two.as_str(), other.as_str()], "{out}");
}

/// `usage --by user` cuts a long recorded name (up to 1,024 characters) in its table as the
/// `user list` table does: its first 80 characters, `…` and its length in bytes, with a note
/// on stderr after the table (it printed the name whole, and padded every row to it).
/// `--json` keeps every name whole and says nothing; a report by model cuts no user.
#[test]
fn a_long_name_is_cut_in_the_usage_table_as_in_user_list() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    // As the recorder cuts a longer name: its first 1,006 characters, `…#`, 16 hex digits.
    let recorded = format!("h{}…#0123456789abcdef", "x".repeat(1005));
    let just_over = format!("j{}", "é".repeat(80));
    let whole = "k".repeat(80);
    ledger_rows_of(
        &dir.path().join("users.db"),
        &[&recorded, &just_over, &whole, "ann"],
    );
    let (code, out, err) = run_cli(dir.path(), &["usage", "--by", "user"], &[]);
    assert_eq!(code, 0, "{err}");
    // Each row as wide as the widest name: 6 rows of about 1 KB when it was printed whole.
    assert!(out.len() < 1_200, "{} bytes: {out}", out.len());
    let firsts = first_cells(&out);
    let cut = format!("h{}… (1026 bytes)", "x".repeat(79));
    let cut_over = format!("j{}… (161 bytes)", "é".repeat(79));
    assert_eq!(
        firsts,
        ["USER", "ann", &cut, &cut_over, &whole, "TOTAL"],
        "{out}"
    );
    assert_eq!(
        err,
        "note: 2 users' names are cut in the table: their first 80 characters, then … and their length in bytes as recorded; llmsrouter usage --by user --json prints every name whole\n"
    );

    let names = names_in_json(dir.path(), "user");
    assert_eq!(names, ["ann", &recorded, &just_over, &whole], "{out}");

    let (code, _, err) = run_cli(dir.path(), &["usage", "--by", "model"], &[]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// `usage --by model` cuts a long model name (recorded up to 1,024 characters: a client may
/// send any) as `--by user` cuts a name, and tells apart two cut alike, with the notes
/// after the table worded for models; it printed the name whole, and padded every row to it.
/// `--json` keeps every name whole and says nothing.
#[test]
fn a_long_model_name_is_cut_in_the_usage_table() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    let one = format!("m{}…#0123456789abcdef", "x".repeat(1005));
    let two = format!("m{}…#fedcba9876543210", "x".repeat(1005));
    ledger_rows_with(
        &dir.path().join("users.db"),
        &[("ann", &one), ("ann", &two), ("ann", "gpt-4o")],
    );
    let (code, out, err) = run_cli(dir.path(), &["usage", "--by", "model"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() < 1_000, "{} bytes: {out}", out.len());
    let firsts = first_cells(&out);
    let cut = format!("m{}… (1026 bytes)", "x".repeat(79));
    let expected = [
        "MODEL".to_owned(),
        "gpt-4o".to_owned(),
        format!("{cut} #{}", hash8(&one)),
        format!("{cut} #{}", hash8(&two)),
        "TOTAL".to_owned(),
    ];
    assert_eq!(firsts, expected, "{out}");
    assert_eq!(
        err,
        "note: 2 model names are cut in the table: their first 80 characters, then … and their length in bytes as recorded; llmsrouter usage --by model --json prints every name whole\n\
         note: 2 model names print alike in the table, so each is followed by # and the first hex digits of the SHA-256 of the whole name as recorded; llmsrouter usage --by model --json prints every name whole\n"
    );
    let names = names_in_json(dir.path(), "model");
    assert_eq!(names.len(), 3, "{out}");
    assert!(names.contains(&one) && names.contains(&two), "{out}");
}
