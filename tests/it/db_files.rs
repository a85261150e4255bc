//! What `--db` / LLMSROUTER_DB may name, and what the router does with a file that is not
//! quite its own: SQLite's special names, a file in a folder the router may not write, a
//! file of another program, a users table from before permissions.

use std::path::Path;
use std::process::Command;

use crate::support::{binary, run_cli, run_prepared};
use crate::users::user;

/// Runs the binary with `args` in `dir`, killed after 20 s (exit code 124), for commands
/// that would otherwise keep running (`serve`) when the router accepts what it must refuse.
fn run_bounded(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new("timeout");
    command.arg("20").arg(binary());
    run_prepared(command, dir, args, envs)
}

/// The names of the files in `dir`.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `:memory:` keeps nothing: every command refuses it before printing a key or serving, and
/// leaves no file of that name. A `file:` name is a file name, not an SQLite URI: its
/// `?mode=memory` does not make an in-memory database.
#[test]
fn memory_names_are_refused_and_file_uris_are_plain_file_names() {
    let dir = tempfile::tempdir().expect("dir");
    for args in [
        vec!["add", "mem", "--db", ":memory:"],
        vec!["list", "--db", ":memory:"],
        vec!["show", "mem", "--db", ":memory:"],
    ] {
        let (code, out, err) = user(dir.path(), &args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "no key printed: {out:?}");
        assert!(
            err.contains(":memory:") && err.contains("file name"),
            "{err}"
        );
    }
    let (code, _, err) = run_cli(dir.path(), &["usage", "--db", ":memory:"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in memory only"), "{err}");
    let (code, _, err) = run_bounded(
        dir.path(),
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("LLMSROUTER_DB", ":memory:"), ("LLMSROUTER_LOG_FILE", "")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in memory only"), "{err}");
    assert_eq!(files_in(dir.path()), Vec::<String>::new());

    let uri = "file:x.db?mode=memory";
    let (code, key, err) = user(dir.path(), &["add", "u", "--db", uri]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = user(dir.path(), &["list", "--db", uri]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|line| line.starts_with("u ")), "{out}");
    let conn = rusqlite::Connection::open_with_flags(
        dir.path().join(uri),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the file of that name");
    let stored: String = conn
        .query_row("SELECT api_key FROM users WHERE username = 'u'", [], |r| {
            r.get(0)
        })
        .expect("u is in the file");
    assert_eq!(stored, key.trim_end());
    assert!(!dir.path().join("x.db").exists());
}

/// A database of another program (tables, none of them `users`) is refused by every command
/// with one line naming the file, and left exactly as it was: no llmsrouter tables, no
/// switch to WAL, no `user_version`, whatever `user_version` it had. A database without
/// tables is still made ours.
#[test]
fn another_programs_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("in.csv"), "username,email\nann,\n").expect("csv");
    for (name, version) in [("other.db", 0), ("other2.db", 2)] {
        let path = dir.path().join(name);
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE foo (x); INSERT INTO foo VALUES (1);")
            .expect("foo");
        conn.pragma_update(None, "user_version", version)
            .expect("version");
        drop(conn);
        let before = std::fs::read(&path).expect("read");
        let expected = format!("{name}: holds other tables and no users table");
        for args in [
            vec!["user", "list", "--db", name],
            vec!["user", "show", "ann", "--db", name],
            vec!["user", "add", "ann", "--db", name],
            vec!["user", "import", "in.csv", "--db", name],
            vec!["user", "delete", "ann", "--db", name],
            vec!["usage", "--db", name],
        ] {
            let (code, out, err) = run_cli(dir.path(), &args, &[]);
            assert_eq!(code, 1, "{args:?}: {out}{err}");
            assert!(out.is_empty(), "{args:?}: {out}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(&expected), "{args:?}: {err}");
        }
        for envs in [
            vec![("LLMSROUTER_DB", name), ("LLMSROUTER_LOG_FILE", "")],
            vec![
                ("LLMSROUTER_DB", name),
                ("LLMSROUTER_LOG_FILE", ""),
                ("LLMSROUTER_LEDGER", "false"),
                ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ],
        ] {
            let (code, _, err) = run_bounded(
                dir.path(),
                &["serve", "--host", "127.0.0.1", "--port", "0"],
                &envs,
            );
            assert_eq!(code, 1, "{envs:?}: {err}");
            assert!(err.contains(&expected), "{envs:?}: {err}");
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "{name} untouched"
        );
    }
    assert_eq!(files_in(dir.path()), ["in.csv", "other.db", "other2.db"]);

    // No tables: ours to use, as a new file is.
    let empty = dir.path().join("empty.db");
    let conn = rusqlite::Connection::open(&empty).expect("create");
    conn.pragma_update(None, "user_version", 0)
        .expect("version");
    drop(conn);
    let (code, out, err) = run_cli(dir.path(), &["user", "list", "--db", "empty.db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("no users"), "{out}");
}
