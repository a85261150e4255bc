//! What `--db` / LLMSROUTER_DB may name, and what the router does with a file that is not
//! quite its own: SQLite's special names, a file in a folder the router may not write, a
//! file of another program, a users table from before permissions.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{
    RouterProcess, binary, reader_command, run_cli, run_cli_as_reader, run_cli_writing_to,
    run_prepared,
};
use crate::users::{Auth, PYTHON_SCHEMA, chat, two_server_config, user};

/// A key as the Python version made them.
const ANN_KEY: &str = "Xq3vB9kLm2Np7Rt5Wz8Yc1Df4Gh6Jk0A";

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

/// Runs the binary as a user who may write the file `db` (when there is one) but not `dir`,
/// the folder holding it. As root (which writes any folder) that is `nobody`, given the
/// file, in the root-owned folder (mode 755); as anyone else, the test's own user, with the
/// folder made read-only (mode 555) until this is dropped.
struct FolderLocked {
    dir: std::path::PathBuf,
    program: Vec<OsString>,
}

impl FolderLocked {
    fn new(dir: &Path, db: &Path) -> Self {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let root = std::fs::metadata(dir).expect("dir").uid() == 0;
        let mut program = Vec::new();
        if root {
            if db.exists() {
                std::os::unix::fs::chown(db, Some(65534), Some(65534)).expect("chown");
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            program.extend(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                ]
                .map(OsString::from),
            );
        } else {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        }
        program.push(binary().into_os_string());
        Self {
            dir: dir.to_path_buf(),
            program,
        }
    }

    /// The command, killed after 20 s when `bounded`.
    fn command(&self, bounded: bool) -> Command {
        let mut program = self.program.iter();
        let mut command = if bounded {
            let mut command = Command::new("timeout");
            command.arg("20").args(&mut program);
            command
        } else {
            let mut command = Command::new(program.next().expect("a program"));
            command.args(program);
            command
        };
        command.env("LLMSROUTER_LOG_FILE", "");
        command
    }

    fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
        run_prepared(self.command(true), &self.dir, args, envs)
    }
}

impl Drop for FolderLocked {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
    }
}

/// Writes a users.db as the Python version left it (rollback journal, `user_version` 0)
/// holding `ann`, who may use every provider.
fn python_db(path: &Path) {
    let conn = rusqlite::Connection::open(path).expect("create");
    conn.execute_batch(PYTHON_SCHEMA).expect("schema");
    conn.execute(
        "INSERT INTO users VALUES ('ann', ?1, NULL, '{\"*\": true}', '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')",
        [ANN_KEY],
    )
    .expect("ann");
}

/// A users.db the router may write, in a folder it may not (a file given to the service's
/// user in a root-owned folder): SQLite cannot make its journal files there, so the reading
/// commands and `serve` with the ledger off read it as a read-only file is read, without
/// writing a byte; the commands that must write (and `serve` with the ledger on) fail with
/// one line that names the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_database_in_a_folder_that_is_not_is_read_as_it_is() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    python_db(&db);
    let before = std::fs::read(&db).expect("db");
    let locked = FolderLocked::new(dir.path(), &db);

    let (code, out, err) = locked.run(&["user", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|line| line.starts_with("ann ")), "{out}");
    let (code, out, err) = locked.run(&["user", "show", "ann", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ann\""), "{out}");
    let (code, out, err) = locked.run(&["usage", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"rows\":[]"), "{out}");

    let folder = std::path::absolute(dir.path()).expect("absolute");
    let expected = format!(
        "users.db: cannot write it: its folder {} is not writable",
        folder.display()
    );
    for args in [
        vec!["user", "add", "carl"],
        vec!["user", "rotate-key", "ann"],
    ] {
        let (code, out, err) = locked.run(&args, &[]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: no key printed: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(&expected),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = locked.run(
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("ENABLE_ACCOUNT_MANAGEMENT", "true")],
    );
    assert_eq!(code, 1, "the ledger cannot be written there: {err}");
    assert!(
        err.lines().last().unwrap_or_default().contains(&expected),
        "{err}"
    );
    // `check` says what `serve` does, in both cases: it refused the ledger's database, it
    // let the one read with the ledger off pass.
    let (code, _, err) = locked.run(&["check"], &[("ENABLE_ACCOUNT_MANAGEMENT", "true")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.trim().ends_with(&format!(
            "{expected} by this user, and SQLite makes its journal files (-wal, -shm, -journal) there; the usage ledger writes its rows there: LLMSROUTER_LEDGER=false serves without it, reading the file as it is"
        )),
        "{err}"
    );
    let (code, _, err) = locked.run(
        &["check"],
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LEDGER", "false"),
        ],
    );
    assert_eq!(code, 0, "{err}");

    let router = RouterProcess::start_with(
        tempfile::tempdir().expect("cwd"),
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LEDGER", "false"),
            ("LLMSROUTER_DB", db.to_str().expect("utf-8")),
            (
                "LLMSROUTER_CONFIG",
                dir.path().join("config.yaml").to_str().expect("utf-8"),
            ),
        ],
        locked.command(false),
    );
    let url = router.url("/v1/chat/completions");
    assert_eq!(
        chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await,
        (200, None)
    );
    assert_eq!(
        chat(&url, Auth::Bearer("sk-lr-nobody"), "[mock]m").await.0,
        401
    );
    drop(router);

    assert_eq!(std::fs::read(&db).expect("db"), before, "not written");
    assert_eq!(files_in(dir.path()), ["config.yaml", "users.db"]);
}

/// Accounts on, ledger off, and no users.db yet in a folder this user may not write: `serve`
/// must create the file for the users table, and cannot. `check` said ok; now both refuse it
/// with the folder named (`serve` said only SQLite's "unable to open database file"). With
/// the ledger on and accounts off, the refusal says the way out (it did not).
#[test]
fn a_database_to_create_in_a_folder_that_is_not_writable_fails_check_as_serve() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    let db = dir.path().join("users.db");
    let locked = FolderLocked::new(dir.path(), &db);
    let folder = std::path::absolute(dir.path()).expect("absolute");
    let expected = format!(
        "users.db: cannot create it: its folder {} is not writable by this user",
        folder.display()
    );
    let envs = [
        ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
        ("LLMSROUTER_LEDGER", "false"),
    ];
    let (code, out, err) = locked.run(&["check"], &envs);
    // config.yaml is judged all the same, so one run names every problem.
    let config_ok = "./config.yaml: ok, 0 servers (none)\n";
    assert_eq!((code, out.as_str()), (1, config_ok), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // In `serve`'s words (it said `--db: ...` with the ledger on too).
    assert!(
        err.starts_with("error: ENABLE_ACCOUNT_MANAGEMENT=true needs the users database: ")
            && err.trim_end().ends_with(&expected),
        "{err}"
    );
    let ledger_on = [
        ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
        ("LLMSROUTER_LOG_FILE", ""),
    ];
    let (code, _, err) = locked.run(&["check"], &ledger_on);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: ENABLE_ACCOUNT_MANAGEMENT=true needs the users database: "),
        "{err}"
    );
    let (code, _, err) = locked.run(&["serve", "--host", "127.0.0.1", "--port", "0"], &envs);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ENABLE_ACCOUNT_MANAGEMENT=true needs the users database: ")
            && last.ends_with(&expected),
        "{err}"
    );
    // With the ledger on (accounts off) the file is only the ledger's: the way out is said.
    let ledger = format!(
        "{expected}; the usage ledger keeps its rows there: give --db (LLMSROUTER_DB) a path this user may write, or LLMSROUTER_LEDGER=false to serve without it"
    );
    let envs = [("LLMSROUTER_LEDGER", "true"), ("LLMSROUTER_LOG_FILE", "")];
    for args in [
        &["check"][..],
        &["serve", "--host", "127.0.0.1", "--port", "0"],
    ] {
        let (code, _, err) = locked.run(args, &envs);
        assert_eq!(code, 1, "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: --db: ") && last.ends_with(&ledger),
            "{err}"
        );
    }
    assert_eq!(files_in(dir.path()), ["config.yaml"]);
}

/// Runs the binary as a user who may not write files of the test's user ([`reader_command`]),
/// killed after 20 s (exit code 124), for a `serve` that should refuse to start.
fn run_as_reader_bounded(
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    let reader = reader_command(dir);
    let mut command = Command::new("timeout");
    command
        .arg("20")
        .arg(reader.get_program())
        .args(reader.get_args());
    run_prepared(command, dir, args, envs)
}

/// A users.db this user may only read (its mode here; a read-only mount alike): `serve`
/// with the ledger on cannot write its rows there and stops at start. `check` said ok; now
/// it refuses the file with `serve`'s own line, which names `--db` or `LLMSROUTER_DB` as
/// whichever gave the path (it said `LLMSROUTER_DB` for `--db` too) and the way out,
/// `LLMSROUTER_LEDGER=false`, with which both pass. Nothing is written to the file.
#[test]
fn a_database_this_user_may_not_write_fails_check_as_serve() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    let db = dir.path().join("users.db");
    python_db(&db);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let before = std::fs::read(&db).expect("db");
    let refusal = "users.db: attempt to write a readonly database (this user may not write the file: its permissions, or a read-only mount); the usage ledger writes its rows there: LLMSROUTER_LEDGER=false serves without it, reading the file as it is";
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    for accounts in ["false", "true"] {
        for (flag, variable, named) in [
            (&["--db", "users.db"][..], None, "--db"),
            (&[][..], Some("users.db"), "LLMSROUTER_DB"),
        ] {
            let mut envs = vec![
                ("LLMSROUTER_LOG_FILE", ""),
                ("ENABLE_ACCOUNT_MANAGEMENT", accounts),
            ];
            envs.extend(variable.map(|db| ("LLMSROUTER_DB", db)));
            let expected = format!("error: {named}: {refusal}");
            let args = [&["check"], flag].concat();
            let (code, out, err) = run_as_reader_bounded(dir.path(), &args, &envs);
            let config_ok = "./config.yaml: ok, 0 servers (none)\n";
            assert_eq!(
                (code, out.as_str()),
                (1, config_ok),
                "{args:?} {envs:?}: {err}"
            );
            assert_eq!(
                err.lines().last().unwrap_or_default(),
                expected,
                "{args:?} {envs:?}"
            );
            let args = [&serve[..], flag].concat();
            let (code, _, err) = run_as_reader_bounded(dir.path(), &args, &envs);
            assert_eq!(code, 1, "{args:?} {envs:?}: {err}");
            assert_eq!(
                err.lines().last().unwrap_or_default(),
                expected,
                "{args:?} {envs:?}"
            );
            // The way out the line gives.
            envs.push(("LLMSROUTER_LEDGER", "false"));
            let args = [&["check"], flag].concat();
            let (code, _, err) = run_as_reader_bounded(dir.path(), &args, &envs);
            assert_eq!(code, 0, "{args:?} {envs:?}: {err}");
        }
    }
    assert_eq!(std::fs::read(&db).expect("db"), before, "not written");
    assert_eq!(files_in(dir.path()), ["config.yaml", "users.db"]);
}

/// The same refusal for a users.db in WAL mode (one this router made), where neither the
/// file nor its folder may be written (a bind mount not chowned for the image's user):
/// SQLite fails at its first read, and `serve` printed only "attempt to write a readonly
/// database", without the cause or the way out.
#[test]
fn a_wal_database_this_user_may_not_write_is_refused_with_the_way_out() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    let (code, _, err) = run_cli(dir.path(), &["user", "add", "ann", "--db", "users.db"], &[]);
    assert_eq!(code, 0, "{err}");
    let db = dir.path().join("users.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let refusal = "error: --db: users.db: attempt to write a readonly database (this user may not write the file: its permissions, or a read-only mount); the usage ledger writes its rows there: LLMSROUTER_LEDGER=false serves without it, reading the file as it is";
    let envs = [("LLMSROUTER_LOG_FILE", "")];
    for command in ["check", "serve"] {
        let args = [command, "--db", "users.db", "--port", "0"];
        let args = if command == "check" {
            &args[..3]
        } else {
            &args[..]
        };
        let (code, _, err) = run_as_reader_bounded(dir.path(), args, &envs);
        assert_eq!(code, 1, "{command}: {err}");
        assert_eq!(err.lines().last().unwrap_or_default(), refusal, "{command}");
    }
}

/// The earliest Python version's users table, before permissions.
const EARLY_SCHEMA: &str = "CREATE TABLE users (username TEXT PRIMARY KEY, api_key TEXT UNIQUE NOT NULL, email TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)";

/// Writes a users.db with the earliest Python version's table, holding `ann`.
fn early_python_db(path: &Path) {
    let conn = rusqlite::Connection::open(path).expect("create");
    conn.execute_batch(EARLY_SCHEMA).expect("schema");
    conn.execute(
        "INSERT INTO users VALUES ('ann', ?1, NULL, '2023-01-01T00:00:00.000001', '2023-01-01T00:00:00.000001')",
        [ANN_KEY],
    )
    .expect("ann");
}

/// A users table without the `permissions` column (the earliest Python version's): read as
/// it is where the router may not write (a user without permissions, who may use no
/// provider), and given the column, NULL, where it may; then `user modify` grants some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_table_without_permissions_is_read_and_given_the_column() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = MockUpstream::start(Behavior::default()).await;

    // Read-only: nothing is written, ann's key is known and grants nothing.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    early_python_db(&db);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let before = std::fs::read(&db).expect("db");
    let (code, out, err) = run_cli_as_reader(dir.path(), &["user", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    let ann = out
        .lines()
        .find(|line| line.starts_with("ann "))
        .unwrap_or_default();
    assert!(ann.contains("none granted"), "{out}");
    assert!(
        ann.contains("empty: none was ever set") && !ann.contains("EOF"),
        "said as empty, not as a damaged file: {out}"
    );
    let router = RouterProcess::start_as_reader(
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
        (403, Some("provider_forbidden".to_owned()))
    );
    assert_eq!(std::fs::read(&db).expect("db"), before, "not written");
    drop(router);

    // Writable: the column is added by any command, reading ones too.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    early_python_db(&db);
    let (code, out, err) = user(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    let ann = out
        .lines()
        .find(|line| line.starts_with("ann "))
        .unwrap_or_default();
    assert!(ann.contains("none granted"), "{out}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let column: Option<String> = conn
        .query_row(
            "SELECT permissions FROM users WHERE username = 'ann'",
            [],
            |r| r.get(0),
        )
        .expect("the column is there");
    assert_eq!(column, None);
    drop(conn);
    let (code, _, err) = user(dir.path(), &["modify", "ann", "--permissions", "mock"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = user(dir.path(), &["add", "bob"]);
    assert_eq!(code, 0, "{err}");
    let router = RouterProcess::start_in(
        dir,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    let url = router.url("/v1/chat/completions");
    assert_eq!(
        chat(&url, Auth::Bearer(ANN_KEY), "[mock]m").await,
        (200, None)
    );
    assert_eq!(
        chat(&url, Auth::Bearer(ANN_KEY), "[other]m").await,
        (403, Some("provider_forbidden".to_owned()))
    );
}

/// With accounts on, `serve` opens the database to read its users before the ledger's
/// writer does (and instead of it, with the ledger off): a file it has to create is made
/// mode 600 all the same, though the umask would let SQLite make it 644. A file others may
/// read is kept as it is, and said at start-up.
#[tokio::test]
async fn serve_with_accounts_makes_a_private_database_and_names_one_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let envs = [
        ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
        ("LLMSROUTER_LEDGER", "false"),
        ("LLMSROUTER_LOG_FILE", ""),
    ];
    let with_umask_022 = || {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(binary());
        shell
    };
    let mode = |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let router = RouterProcess::start_with(dir, &envs, with_umask_022());
    let db = router.path().join("users.db");
    assert_eq!(mode(&db), 0o600);
    assert!(
        !router.stderr().contains("may read it"),
        "{}",
        router.stderr()
    );
    let (code, _, err) = user(router.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(meta) = std::fs::metadata(router.path().join(format!("users.db{suffix}"))) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "users.db{suffix}");
        }
    }
    drop(router);

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    python_db(&dir.path().join("users.db"));
    std::fs::set_permissions(
        dir.path().join("users.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    // `check` says it too, as a warning (it passes).
    let (code, _, err) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: ./users.db: other users of this machine may read it (mode 0644)"),
        "{err}"
    );
    let router = RouterProcess::start_with(dir, &envs, with_umask_022());
    let said = router.stderr();
    assert!(
        said.contains("users.db: other users of this machine may read it (mode 0644)"),
        "{said}"
    );
    assert!(!said.contains(ANN_KEY), "{said}");
    assert_eq!(
        mode(&router.path().join("users.db")),
        0o644,
        "kept as it was"
    );
}

/// `--db` (or LLMSROUTER_DB) naming a symlink to a file not made yet: whoever creates that
/// file through the link (`user add`, `serve` for its users or its ledger) makes it mode 600
/// as for a direct path, though the umask would let SQLite make it 644; its -wal and -shm
/// files beside it likewise.
#[tokio::test]
async fn a_database_made_through_a_symlink_is_private_too() {
    use std::os::unix::fs::PermissionsExt as _;
    let with_umask_022 = || {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(binary());
        shell
    };
    let assert_private = |folder: &Path| {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = folder.join(format!("users.db{suffix}"));
            if let Ok(meta) = std::fs::metadata(&file) {
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    file.display()
                );
            }
        }
    };

    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("real")).expect("folder");
    std::os::unix::fs::symlink("real/users.db", dir.path().join("link.db")).expect("link");
    let (code, key, err) = run_prepared(
        with_umask_022(),
        dir.path(),
        &["user", "add", "ann", "--db", "link.db"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(key.starts_with("sk-lr-"), "{key}");
    assert!(dir.path().join("real/users.db").is_file());
    assert_private(&dir.path().join("real"));

    // `serve` with accounts and the ledger on, the link absolute, through a second link.
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    std::fs::create_dir(dir.path().join("real")).expect("folder");
    std::os::unix::fs::symlink(
        dir.path().join("real/users.db"),
        dir.path().join("inner.db"),
    )
    .expect("link");
    std::os::unix::fs::symlink("inner.db", dir.path().join("link.db")).expect("link");
    let envs = [
        ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
        ("LLMSROUTER_DB", "link.db"),
        ("LLMSROUTER_LOG_FILE", ""),
    ];
    let router = RouterProcess::start_with(dir, &envs, with_umask_022());
    assert!(router.path().join("real/users.db").is_file());
    assert!(
        !router.stderr().contains("may read it"),
        "{}",
        router.stderr()
    );
    assert_private(&router.path().join("real"));
}

/// A command that fails before its keys are shown removes the database it made, through a
/// symlink (or a chain of them) too: the file made at the end of the links goes, the links
/// stay. (The link itself was removed and the new file left behind, with the users' table.)
#[cfg(unix)]
#[test]
fn a_database_made_through_a_symlink_is_removed_not_the_link() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("team.csv"),
        "username,email
bob,
",
    )
    .expect("csv");
    std::os::unix::fs::symlink("target.db", dir.path().join("link.db")).expect("link");
    std::os::unix::fs::symlink("c2.db", dir.path().join("c1.db")).expect("link");
    std::os::unix::fs::symlink("ctarget.db", dir.path().join("c2.db")).expect("link");
    let links = ["link.db", "c1.db", "c2.db"];
    for args in [
        &["user", "add", "ann", "--db", "link.db"][..],
        &["user", "import", "team.csv", "--db", "link.db"],
        &["user", "add", "ann", "--db", "c1.db"],
    ] {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let (code, err) = run_cli_writing_to(dir.path(), args, null);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.trim_end().ends_with("no user was changed"), "{err}");
        for link in links {
            assert!(
                dir.path().join(link).is_symlink(),
                "{args:?}: {link} removed"
            );
        }
        let mut left = files_in(dir.path());
        left.retain(|name| !links.contains(&name.as_str()));
        assert_eq!(left, ["team.csv"], "{args:?}");
    }
}

/// A database in a folder that does not exist: the commands that would create it say so,
/// not that the folder is not writable.
#[test]
fn a_database_in_a_missing_folder_is_said_so() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("u.csv"), "username,email\nbob,\n").expect("csv");
    for args in [
        &["user", "add", "ann", "--db", "nodir/x.db"][..],
        &["user", "import", "u.csv", "--db", "nodir/x.db"][..],
    ] {
        let (code, out, err) = run_cli(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        let folder = dir.path().join("nodir");
        assert_eq!(
            err,
            format!(
                "error: nodir/x.db: cannot create it: the folder {} does not exist\n",
                folder.display()
            ),
            "{args:?}"
        );
    }
    assert!(!dir.path().join("nodir").exists());
}

/// A journal file SQLite may make beside a device (as root, `/dev/null-journal`), removed
/// when the test ends if it was not there before, so a failing run leaves nothing in `/dev`.
struct NoJournalMade {
    path: &'static Path,
    there_before: bool,
}

impl NoJournalMade {
    fn new(path: &'static Path) -> Self {
        Self {
            path,
            there_before: path.exists(),
        }
    }

    /// Whether the file is there now and was not before.
    fn made(&self) -> bool {
        !self.there_before && self.path.exists()
    }
}

impl Drop for NoJournalMade {
    fn drop(&mut self) {
        if self.made() {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// `--db` naming something that is not a regular file: a device (`/dev/null`, also through a
/// symlink), a named pipe. Every command refuses it with one line saying what it is, and
/// nothing is made beside it (SQLite said "disk I/O error", or that it could not upgrade
/// the schema, and as root left a `/dev/null-journal` behind). A symlink to a regular file
/// is that file.
#[cfg(unix)]
#[test]
fn a_device_or_a_named_pipe_is_refused_and_nothing_is_made_beside_it() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    std::fs::write(dir.path().join("u.csv"), "username,email\nbob,\n").expect("csv");
    let made = Command::new("mkfifo")
        .arg(dir.path().join("pipe.db"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/null", dir.path().join("null.db")).expect("link");
    let journal = NoJournalMade::new(Path::new("/dev/null-journal"));
    let cases = [
        ("/dev/null", "/dev/null: not a regular file (a device)"),
        ("/dev/zero", "/dev/zero: not a regular file (a device)"),
        ("null.db", "null.db: not a regular file (a device)"),
        ("pipe.db", "pipe.db: not a regular file (a named pipe)"),
    ];
    for (db, expected) in cases {
        for args in [
            &["user", "list"][..],
            &["user", "add", "ann"],
            &["user", "import", "u.csv"],
            &["user", "show", "ann"],
            &["usage"],
            &["check"],
        ] {
            let args = [args, &["--db", db]].concat();
            let (code, out, err) = run_bounded(dir.path(), &args, &[]);
            // `check` says config.yaml's part too, whatever else it found.
            let config_ok = if args[0] == "check" {
                "./config.yaml: ok, 0 servers (none)\n"
            } else {
                ""
            };
            assert_eq!((code, out.as_str()), (1, config_ok), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.contains(expected) && err.trim_end().ends_with("a database must be a file"),
                "{args:?}: {err}"
            );
        }
        for envs in [
            &[
                ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
                ("LLMSROUTER_LEDGER", "false"),
            ][..],
            &[("LLMSROUTER_LEDGER", "true")],
        ] {
            let envs = [envs, &[("LLMSROUTER_DB", db), ("LLMSROUTER_LOG_FILE", "")]].concat();
            let (code, _, err) = run_bounded(
                dir.path(),
                &["serve", "--host", "127.0.0.1", "--port", "0"],
                &envs,
            );
            assert_eq!(code, 1, "{envs:?}: {err}");
            let last = err.lines().last().unwrap_or_default();
            assert!(last.contains(expected), "{envs:?}: {err}");
        }
    }
    assert_eq!(
        files_in(dir.path()),
        ["config.yaml", "null.db", "pipe.db", "u.csv"]
    );
    assert!(!journal.made(), "/dev/null-journal was made");

    // A symlink to a regular file is that file; one to a missing file creates it, as a
    // missing --db is created.
    std::fs::create_dir(dir.path().join("real")).expect("folder");
    std::os::unix::fs::symlink("real/users.db", dir.path().join("link.db")).expect("link");
    let (code, key, err) = run_cli(dir.path(), &["user", "add", "ann", "--db", "link.db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("real/users.db").is_file());
    let (code, out, err) = run_cli(dir.path(), &["user", "list", "--db", "link.db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|line| line.starts_with("ann ")), "{out}");
    assert!(key.starts_with("sk-lr-"), "{key}");
}

/// The Python version's users.db (rollback-journal mode) while another program only reads
/// it (a Python sqlite3 connection with a read transaction open, here this test's own): the
/// one-time switch to WAL cannot have the file to itself. The commands that only read it do
/// not need the switch and read the file as it is, at once (they waited the 10 s busy
/// timeout and failed with "another program held the database's lock"); those that write,
/// and `serve`, wait the busy timeout as before and then say what is in the way and what to
/// do. Nothing is written to the file meanwhile; once the reader is done the switch is made.
#[test]
fn a_python_database_another_program_reads_is_read_as_it_is_and_switched_later() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("cfg");
    let db = dir.path().join("users.db");
    python_db(&db);
    let before = std::fs::read(&db).expect("db");
    let reader = rusqlite::Connection::open(&db).expect("reader");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM users;")
        .expect("read transaction");
    let mode: String = reader
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "delete", "the Python version's journal mode");

    for args in [
        &["user", "list"][..],
        &["user", "show", "ann", "--json"],
        &["usage", "--json"],
    ] {
        let started = std::time::Instant::now();
        let (code, out, err) = run_bounded(dir.path(), args, &[]);
        let took = started.elapsed();
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("ann") || out.contains("\"rows\":[]"), "{out}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{args:?} waited {took:?}: the busy timeout is 10 s"
        );
    }

    let expected = "users.db: another program has the database open in a transaction (a Python sqlite3 connection, a sqlite3 shell, DB Browser for SQLite), and the one-time switch to WAL journal mode needs it to itself: waited 10 s; close that program (or run this once while nothing else uses the file) and try again";
    // One after the other: two switching at once keep each other from reading the file
    // at all (the first holds SQLite's pending lock while it waits), past the bound.
    let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
    for (args, envs) in [
        (&["user", "add", "carl"][..], &[][..]),
        (
            &serve,
            &[
                ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
                ("LLMSROUTER_LOG_FILE", ""),
            ],
        ),
    ] {
        let (code, out, err) = run_bounded(dir.path(), args, envs);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: no key printed: {out}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.ends_with(expected),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&db).expect("db"), before, "not written");

    reader.execute_batch("COMMIT").expect("done reading");
    let (code, key, err) = run_cli(dir.path(), &["user", "add", "carl"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(key.starts_with("sk-lr-"), "{key}");
    drop(reader);
    let mode: String = rusqlite::Connection::open(&db)
        .and_then(|conn| conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("mode");
    assert_eq!(mode, "wal", "switched once the file was free");
}

/// The `usage_ledger` table dropped (an admin purging usage) from a file at the current
/// schema version, whose steps never run again: `usage` says the table is missing (it
/// printed zeros as if nothing was used) and leaves the file as it is; `serve` makes the
/// table again on opening, with a warning, and writes its rows there; dropped again while it
/// runs, the writer makes it again and writes the batch. Every row used to fail with "no such
/// table: usage_ledger" while requests were answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_usage_ledger_is_said_missing_and_made_again() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
    let db = dir.path().join("users.db");
    let (code, key, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_owned();
    let sql = |batch: &str| {
        rusqlite::Connection::open(&db)
            .expect("open")
            .execute_batch(batch)
            .expect("sql");
    };
    let has_ledger = || {
        rusqlite::Connection::open(&db)
            .expect("open")
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN ('usage_ledger', 'usage_ledger_day')",
                [],
                |row| row.get::<_, i64>(0),
            )
            .expect("schema")
    };
    let rows = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM usage_ledger", [], |r| r.get(0)))
            .unwrap_or(-1_i64)
    };
    sql("DROP TABLE usage_ledger");

    let (code, out, err) = run_cli(dir.path(), &["usage"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("PROVIDER"), "{out}");
    assert_eq!(
        err,
        "warning: ./users.db: no usage_ledger table (dropped, or never made in a file read as it is), so no usage is recorded there; serve makes it again, empty, when it opens the file\n"
    );
    assert_eq!(has_ledger(), 0, "usage only reads");

    let db_path = db.to_str().expect("utf-8").to_owned();
    let config = dir.path().join("config.yaml");
    let mut router = RouterProcess::start(
        None,
        &[
            ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
            ("LLMSROUTER_DB", &db_path),
            ("LLMSROUTER_CONFIG", config.to_str().expect("utf-8")),
            ("LLMSROUTER_LOG_FILE", ""),
        ],
    );
    assert_eq!(has_ledger(), 2, "the table and its index");
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer(&key), "[mock]m").await.0, 200);
    crate::support::wait_until(std::time::Duration::from_secs(10), || rows() == 1).await;

    sql("DROP TABLE usage_ledger");
    assert_eq!(chat(&url, Auth::Bearer(&key), "[mock]m").await.0, 200);
    crate::support::wait_until(std::time::Duration::from_secs(10), || rows() == 1).await;
    let stderr = router.stop_for_log().await;
    let made = "users.db: the usage_ledger table was missing (dropped?) although the schema version says it was made; made it again, empty";
    assert_eq!(stderr.matches(made).count(), 2, "{stderr}");
    assert!(!stderr.contains("cannot write rows"), "{stderr}");
    assert!(stderr.contains("written=2 dropped=0 failed=0"), "{stderr}");
    assert_eq!(has_ledger(), 2);

    let (code, out, err) = run_cli(dir.path(), &["usage"], &[]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let total: Vec<&str> = out
        .lines()
        .find(|line| line.starts_with("TOTAL"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(total.get(1), Some(&"1"), "{out}");
}

/// A `user` command that makes a dropped `usage_ledger` again says so as it says its other
/// warnings, one `warning:` line on stderr, not the server's timestamped log line; a command
/// that only reads (`user list`) makes nothing and says nothing.
#[test]
fn a_command_that_makes_the_ledger_again_says_it_on_a_warning_line() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    let db = dir.path().join("users.db");
    let drop_ledger = || {
        rusqlite::Connection::open(&db)
            .expect("open")
            .execute_batch("DROP TABLE usage_ledger")
            .expect("drop");
    };
    let made = "warning: ./users.db: the usage_ledger table was missing (dropped?) although the schema version says it was made; made it again, empty: the usage rows it held are gone, and `llmsrouter usage` counts from now on\n";
    drop_ledger();
    let (code, _, err) = user(dir.path(), &["list"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, _, err) = user(dir.path(), &["rotate-key", "ann"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("{made}new key for \"ann\" (above, shown only now); the old key no longer works\n")
    );
    drop_ledger();
    let (code, _, err) = user(dir.path(), &["add", "bo"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.starts_with(made), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("usage_ledger")).count(),
        1
    );
}

/// `user add` and `rotate-key` refused because the key cannot be written out (stdout on
/// `/dev/null`) after opening the file made a dropped `usage_ledger` again: the refusal says
/// no user was changed, which is true, where it said "nothing was changed" below the warning
/// that something was. The user is not added, the old key still works, the table is there.
#[test]
fn a_refusal_after_the_ledger_was_made_again_says_no_user_was_changed() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let (code, _, err) = user(dir.path(), &["add", "ann"]);
    assert_eq!(code, 0, "{err}");
    let db = dir.path().join("users.db");
    let query = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .expect("open")
            .query_row(sql, [], |row| row.get(0))
            .expect("query")
    };
    let users = "SELECT count(*) FROM users";
    let ledger = "SELECT count(*) FROM sqlite_schema WHERE name = 'usage_ledger'";
    let key_before: String = rusqlite::Connection::open(&db)
        .expect("open")
        .query_row("SELECT api_key FROM users", [], |row| row.get(0))
        .expect("key");
    for args in [&["user", "add", "bob"][..], &["user", "rotate-key", "ann"]] {
        rusqlite::Connection::open(&db)
            .expect("open")
            .execute_batch("DROP TABLE usage_ledger")
            .expect("drop");
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let (code, err) = run_cli_writing_to(dir.path(), args, null);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("usage_ledger table was missing"), "{err}");
        assert!(err.trim_end().ends_with("; no user was changed"), "{err}");
        assert!(!err.contains("nothing was changed"), "{err}");
        assert_eq!(query(ledger), 1, "{args:?}: made again, and kept");
        assert_eq!(query(users), 1, "{args:?}: no user added");
        let key: String = rusqlite::Connection::open(&db)
            .expect("open")
            .query_row("SELECT api_key FROM users", [], |row| row.get(0))
            .expect("key");
        assert_eq!(key, key_before, "{args:?}: the old key stays");
    }
}

/// A small tmpfs mounted at `at` for a test of a full disk or a read-only mount, unmounted
/// when dropped; `None` where this process may not mount (not root, or a container without
/// the capability), and the test says it did not run.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(at: &Path) -> Option<Self> {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Self(at.to_owned()))
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A database on a full disk, and one in WAL mode on a read-only mount, are said as that:
/// SQLite says only "disk I/O error" (which reads as a damaged file) and "unable to open
/// database file" (bb55); `check` refuses a database yet to be made on a full disk. A request log's folder on a read-only mount is said to be on one,
/// not blamed on its owner or mode.
#[test]
fn a_full_disk_and_a_read_only_mount_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(mount) = Mounted::tmpfs(&dir.path().join("fs")) else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let db = dir.path().join("fs/users.db");
    let db = db.to_str().expect("utf-8 path");
    let (code, _, stderr) = run_cli(dir.path(), &["user", "list"], &[("LLMSROUTER_DB", db)]);
    assert_eq!(code, 1, "no file yet: {stderr}");
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["user", "add", "ann"],
        &[("LLMSROUTER_DB", db)],
    );
    assert_eq!(code, 0, "{stderr}");
    std::fs::create_dir(dir.path().join("fs/log")).expect("log folder");
    let log = dir.path().join("fs/log/api.log");
    let log = log.to_str().expect("utf-8 path");

    mount.remount("ro");
    let envs = [("LLMSROUTER_DB", db), ("LLMSROUTER_LOG_FILE", log)];
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("/fs/log is on a read-only mount"),
        "{stderr}"
    );
    assert!(
        stderr.contains("users.db: unable to open database file (it is on a read-only mount"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(dir.path(), &["user", "list"], &envs);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("on a read-only mount"), "{stderr}");
    // One yet to be made there too, by `check` and by `user add` (bb57: "not writable by
    // this user").
    let new = dir.path().join("fs/new.db");
    let new = new.to_str().expect("utf-8 path");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[("LLMSROUTER_DB", new)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("new.db: cannot create it: its folder")
            && stderr.contains("/fs is on a read-only mount"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["user", "add", "bo"],
        &[("LLMSROUTER_DB", new)],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is on a read-only mount"), "{stderr}");

    mount.remount("rw");
    let mut filler = std::fs::File::create(dir.path().join("fs/filler")).expect("filler");
    let _ = std::io::Write::write_all(&mut filler, &vec![0u8; 1024 * 1024]);
    drop(filler);
    let (code, _, stderr) = run_cli(dir.path(), &["user", "list"], &envs);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is the disk full?"), "{stderr}");
    // A database yet to be made there: `check` refuses it as `serve` would (it passed it).
    let new = dir.path().join("fs/new.db");
    let new = new.to_str().expect("utf-8 path");
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &[("LLMSROUTER_DB", new)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("new.db: cannot create it: the disk of its folder"),
        "{stderr}"
    );
}

/// A database that cannot be made on a full disk leaves no file behind: `serve` (for the
/// ledger, and with accounts on for the users table) and `user add` left the empty file they
/// made for it, which `check` then passed (it refuses one yet to be made on a full disk).
/// See [`assert_nothing_left`].
#[test]
fn a_database_that_cannot_be_made_on_a_full_disk_leaves_no_file() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(_mount) = Mounted::tmpfs(&dir.path().join("fs")) else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    let fs = dir.path().join("fs");
    let launcher = [binary().into_os_string()];
    assert_nothing_left(
        dir.path(),
        &fs,
        &launcher,
        "disk is full",
        &ALL_KINDS,
        || {
            let mut filler = std::fs::File::create(fs.join("filler")).expect("filler");
            let _ = std::io::Write::write_all(&mut filler, &vec![0u8; 1024 * 1024]);
        },
    );
}

/// A disk nearly full, with room for the file but not for its tables: the database is said
/// not created, for want of room on its folder's disk, by `serve` and `user add` alike, and
/// leaves no file either. SQLite's first write is the schema's first step there, and it
/// was said as "cannot upgrade its schema from version 0 to 4", as if a database had been
/// there to upgrade. With less room (8 to 32 KiB) the first read in WAL mode cannot make
/// the `-shm`, which was said as "disk I/O error (SQLite could not make its shared-memory
/// file ...)" instead (bb66).
#[test]
fn a_database_that_cannot_be_made_on_a_nearly_full_disk_is_said_not_created() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(_mount) = Mounted::tmpfs(&dir.path().join("fs")) else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    let fs = dir.path().join("fs");
    let launcher = [binary().into_os_string()];
    // Then SQLite's reason: "database or disk is full", or "disk I/O error" for the -shm.
    let why = format!(
        "cannot create the database: the disk of its folder {} is full (",
        fs.display()
    );
    // Not `other.db`, whose `-wal` (another's) SQLite removes as the log of the database it
    // began there, when it closes it: that is the one file this open cannot keep. Of the
    // 512 KiB: 48 left, the file and its -shm fit, its tables do not; 16 left, the -shm
    // does not either, and an empty file that was there is left with the -wal and -shm
    // SQLite began beside it (it is not this open's to remove).
    for (left, kinds) in [(48, &["users.db", "empty.db"][..]), (16, &["users.db"])] {
        assert_nothing_left(dir.path(), &fs, &launcher, &why, kinds, || {
            let mut filler = std::fs::File::create(fs.join("filler")).expect("filler");
            std::io::Write::write_all(&mut filler, &vec![0u8; (512 - left) * 1024])
                .expect("filler");
        });
    }
}

/// `check` refuses a database yet to be made on a disk with room for a file but not for the
/// database, as `serve` does and in its words, and leaves nothing in the folder: it said ok
/// with 64 KiB left, where `serve` and `user add` then said "cannot create the database"
/// (bb66). It makes the database, as `serve` would, in a file of another name, and removes
/// it; with room on the disk it says ok and leaves nothing either.
#[test]
fn check_refuses_a_database_a_nearly_full_disk_cannot_hold() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(_mount) = Mounted::tmpfs(&dir.path().join("fs")) else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    let fs = dir.path().join("fs");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let db = fs.join("users.db");
    let db = db.to_str().expect("utf-8 path");
    let why = format!(
        "users.db: cannot create the database: the disk of its folder {} is full",
        fs.display()
    );
    // 64 KiB of the 512 left: more than check's own least room to create a database.
    let mut filler = std::fs::File::create(fs.join("filler")).expect("filler");
    std::io::Write::write_all(&mut filler, &vec![0u8; 448 * 1024]).expect("filler");
    drop(filler);
    let there = files_in(&fs);
    for accounts in ["false", "true"] {
        let envs = [
            ("LLMSROUTER_DB", db),
            ("LLMSROUTER_LOG_FILE", ""),
            ("ENABLE_ACCOUNT_MANAGEMENT", accounts),
        ];
        let (code, _, stderr) = run_cli(dir.path(), &["check"], &envs);
        assert_eq!(code, 1, "accounts {accounts}: {stderr}");
        assert!(stderr.contains(&why), "accounts {accounts}: {stderr}");
        assert_eq!(files_in(&fs), there, "accounts {accounts}");
        let envs = [envs.as_slice(), &[("LLMSROUTER_PORT", "0")]].concat();
        let (code, _, stderr) = run_bounded(dir.path(), &["serve"], &envs);
        assert_eq!(code, 1, "accounts {accounts}: {stderr}");
        assert!(
            stderr.contains(&why),
            "serve, accounts {accounts}: {stderr}"
        );
        assert_eq!(files_in(&fs), there, "serve, accounts {accounts}");
    }
    std::fs::remove_file(fs.join("filler")).expect("filler");
    let envs = [("LLMSROUTER_DB", db), ("LLMSROUTER_LOG_FILE", "")];
    let (code, _, stderr) = run_cli(dir.path(), &["check"], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(files_in(&fs).is_empty(), "{:?}", files_in(&fs));
}

/// [`a_database_that_cannot_be_made_on_a_full_disk_leaves_no_file`] where no file may grow
/// (`ulimit -f 0`, which any user may set, with SIGXFSZ ignored so a write fails instead):
/// the same, run by any user.
#[test]
fn a_database_that_cannot_be_written_leaves_no_file() {
    let dir = tempfile::tempdir().expect("dir");
    let fs = dir.path().join("fs");
    std::fs::create_dir(&fs).expect("fs");
    let limited = [
        "sh".into(),
        "-c".into(),
        "trap '' XFSZ; ulimit -f 0; exec \"$0\" \"$@\"".into(),
        binary().into_os_string(),
    ];
    assert_nothing_left(
        dir.path(),
        &fs,
        &limited,
        "disk I/O error",
        &ALL_KINDS,
        || {},
    );
}

/// The databases [`assert_nothing_left`] tries: a new file, a new file whose `-wal` is there
/// (another's), and an empty file that is there.
const ALL_KINDS: [&str; 3] = ["users.db", "other.db", "empty.db"];

/// Runs `serve` (accounts off and on) and `user add` through `launcher` (the binary, or
/// what starts it, and its arguments) on databases in `folder` where none can be made, once `fill` has run:
/// those of `kinds` ([`ALL_KINDS`] or some of them). Each fails saying `why`, and the folder holds what it held before: the files made
/// are removed, and no file that was there is.
fn assert_nothing_left(
    dir: &Path,
    folder: &Path,
    launcher: &[OsString],
    why: &str,
    kinds: &[&str],
    fill: impl FnOnce(),
) {
    std::fs::write(dir.join("config.yaml"), "servers: {}\n").expect("config");
    std::fs::write(folder.join("empty.db"), b"").expect("empty.db");
    std::fs::write(folder.join("other.db-wal"), b"").expect("other.db-wal");
    fill();
    let there = files_in(folder);
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        // Bounded: a `serve` that started would otherwise run on.
        let mut bounded = Command::new("timeout");
        bounded.arg("20").args(launcher);
        run_prepared(bounded, dir, args, envs)
    };
    for name in kinds {
        let db = folder.join(name);
        let db = db.to_str().expect("utf-8 path");
        for accounts in ["false", "true"] {
            let envs = [
                ("LLMSROUTER_DB", db),
                ("LLMSROUTER_LOG_FILE", ""),
                ("LLMSROUTER_PORT", "0"),
                ("ENABLE_ACCOUNT_MANAGEMENT", accounts),
            ];
            let (code, _, stderr) = run(&["serve"], &envs);
            assert_eq!(code, 1, "{name}, accounts {accounts}: {stderr}");
            assert!(stderr.contains(why), "{stderr}");
            assert_eq!(files_in(folder), there, "{name}, accounts {accounts}");
        }
        let (code, key, stderr) = run(&["user", "add", "ann"], &[("LLMSROUTER_DB", db)]);
        assert_eq!((code, key.as_str()), (1, ""), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert_eq!(files_in(folder), there, "{name}: user add");
    }
}

/// While the ledger's disk is full, each batch is tried once, not paused for and tried again:
/// the pause held the records queued behind it, bodies and all (1 MB requests took the
/// router from 21 MB to 115-138 MB, and past the recorder's body budget the other sinks lost
/// their bodies too; bb55). The rows are lost and counted either way.
#[tokio::test]
async fn a_full_ledger_disk_does_not_hold_the_records_queued_behind() {
    let fs = tempfile::tempdir().expect("dir");
    let Some(_mount) = Mounted::tmpfs(&fs.path().join("fs")) else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let db = fs.path().join("fs/users.db");
    let db = db.to_str().expect("utf-8 path");
    let config = crate::support::one_server_config(&upstream.url(), "");
    let router = RouterProcess::start(
        Some(&config),
        &[("LLMSROUTER_DB", db), ("LLMSROUTER_LOG_FILE", "")],
    );
    let url = router.url("/v1/chat/completions");
    let http = crate::support::client();
    let body = serde_json::json!({
        "model": "[mock]m",
        "messages": [{"role": "user", "content": "x".repeat(1024 * 1024)}],
    })
    .to_string();
    let send = || {
        http.post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    assert_eq!(send().await.expect("send").status(), 200);
    let mut filler = std::fs::File::create(fs.path().join("fs/filler")).expect("filler");
    let _ = std::io::Write::write_all(&mut filler, &vec![0u8; 1024 * 1024]);
    drop(filler);
    let before = crate::support::peak_rss_kib(router.child.id());
    for _ in 0..300 {
        assert_eq!(send().await.expect("send").status(), 200);
    }
    let grew = crate::support::peak_rss_kib(router.child.id()).saturating_sub(before);
    assert!(grew < 40 * 1024, "the peak grew by {grew} KiB");
}
