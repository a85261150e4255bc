//! users.db as other tools leave it: a users table rebuilt by DB Browser for SQLite or
//! `sqlite-utils transform` (its triggers dropped), the change counter's row deleted, a file
//! restored from `sqlite3 .dump` (every table, `user_version` 0), a write lock another
//! program holds. A running server must still see each change at the next request, and the
//! commands must open such files or say plainly why not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{RouterProcess, wait_until};
use crate::users::{Auth, add, chat, cli, strings, two_server_config, user};

/// What DB Browser for SQLite and `sqlite-utils transform` do to change a table: a new table,
/// the rows copied, the old table dropped (its triggers with it), the new one renamed.
const REBUILD_USERS: &str = "
    BEGIN;
    CREATE TABLE users_new (username TEXT PRIMARY KEY, api_key TEXT UNIQUE NOT NULL,
        email TEXT, permissions TEXT NOT NULL, created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL);
    INSERT INTO users_new SELECT username, api_key, email, permissions, created_at, updated_at
        FROM users;
    DROP TABLE users;
    ALTER TABLE users_new RENAME TO users;
    COMMIT;";

/// The names of the triggers that count changes to `users`, as the file holds them now.
fn triggers(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).expect("open");
    let mut statement = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'users'
             ORDER BY name",
        )
        .expect("select");
    statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("names")
}

fn sql(db: &Path, batch: &str) {
    Connection::open(db)
        .expect("open")
        .execute_batch(batch)
        .expect("sql");
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: what the log holds moved into the database file.
fn checkpoint(db: &Path) {
    let busy: i64 = Connection::open(db)
        .expect("open")
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint was blocked");
}

/// A folder with config.yaml (providers `mock` and `other`) and the path of its users.db.
struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    _upstream: MockUpstream,
}

impl Setup {
    async fn new() -> Self {
        let upstream = MockUpstream::start(Behavior::default()).await;
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("config.yaml"), two_server_config(&upstream)).expect("cfg");
        let db = dir.path().join("users.db");
        Self {
            dir,
            db,
            _upstream: upstream,
        }
    }

    /// `llmsrouter serve` with accounts on, on this folder's files (from a folder of its own,
    /// so it can be stopped and started again).
    fn serve(&self) -> RouterProcess {
        let config = self.dir.path().join("config.yaml");
        RouterProcess::start(
            None,
            &[
                ("ENABLE_ACCOUNT_MANAGEMENT", "true"),
                ("LLMSROUTER_DB", self.db.to_str().expect("utf-8")),
                ("LLMSROUTER_CONFIG", config.to_str().expect("utf-8")),
            ],
        )
    }

    /// `llmsrouter user <args>` on this folder's users.db, off the runtime's threads.
    async fn user(&self, args: &[&str]) -> (i32, String, String) {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        cli(self.dir.path().to_owned(), strings(&full)).await
    }
}

async fn status(router: &RouterProcess, key: &str) -> u16 {
    chat(
        &router.url("/v1/chat/completions"),
        Auth::Bearer(key),
        "[mock]m",
    )
    .await
    .0
}

/// The status a request with `key` gets once it is `wanted`, or the last one got when 5 s
/// passed: the server looks at what its database path names at most every 200 ms.
async fn status_once(router: &RouterProcess, key: &str, wanted: u16) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = status(router, key).await;
        if got == wanted || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The users table rebuilt by another tool while the server runs: `user delete` is seen at
/// the very next request, and so is a new user; the server puts the triggers back itself
/// (it sees the schema change), so a plain SQL delete after that is seen too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_table_rebuilt_by_another_tool_keeps_changes_reaching_a_running_server() {
    let setup = Setup::new().await;
    let victim = add(setup.dir.path(), &["victim"]);
    let keeper = add(setup.dir.path(), &["keeper"]);
    let router = setup.serve();
    assert_eq!(status(&router, &victim).await, 200);

    sql(&setup.db, REBUILD_USERS);
    let (code, _, err) = setup.user(&["delete", "victim"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        status(&router, &victim).await,
        401,
        "deleted after a rebuild"
    );
    assert_eq!(status(&router, &keeper).await, 200);
    let (code, newcomer, err) = setup.user(&["add", "newcomer"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        status(&router, newcomer.trim()).await,
        200,
        "added after a rebuild"
    );

    // Rebuilt again, and no llmsrouter command runs: the server puts the triggers back.
    sql(&setup.db, REBUILD_USERS);
    let db = setup.db.clone();
    wait_until(Duration::from_secs(10), || triggers(&db).len() == 3).await;
    sql(&setup.db, "DELETE FROM users WHERE username = 'keeper'");
    assert_eq!(status(&router, &keeper).await, 401, "deleted by plain SQL");
    assert_eq!(status(&router, newcomer.trim()).await, 200);
    let stderr = router.stderr();
    for key in [victim.as_str(), keeper.as_str(), newcomer.trim()] {
        assert!(!stderr.contains(key), "a key reached the log");
    }
}

/// A rebuild and a plain SQL delete in one go, before the server looks: the changed schema
/// alone makes it reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_and_a_delete_together_are_seen_at_the_next_request() {
    let setup = Setup::new().await;
    let victim = add(setup.dir.path(), &["victim"]);
    let router = setup.serve();
    assert_eq!(status(&router, &victim).await, 200);
    let rebuild_and_delete = REBUILD_USERS.replace(
        "COMMIT;",
        "DELETE FROM users WHERE username = 'victim'; COMMIT;",
    );
    sql(&setup.db, &rebuild_and_delete);
    assert_eq!(status(&router, &victim).await, 401);
}

/// A restart after the triggers were lost puts them back (the schema is at the current
/// version already, so no upgrade step would), and later changes reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_triggers_were_lost_puts_them_back() {
    let setup = Setup::new().await;
    let victim = add(setup.dir.path(), &["victim"]);
    sql(&setup.db, REBUILD_USERS);
    assert!(triggers(&setup.db).is_empty());
    let router = setup.serve();
    assert_eq!(triggers(&setup.db).len(), 3, "{}", router.stderr());
    assert_eq!(status(&router, &victim).await, 200);
    sql(&setup.db, "DELETE FROM users WHERE username = 'victim'");
    assert_eq!(status(&router, &victim).await, 401);
}

/// The counter's row deleted (or its table dropped) by an admin cleaning up: a deletion
/// through the CLI or plain SQL is still seen at the next request, and `serve` still starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_change_counter_is_made_again_and_changes_are_seen() {
    let setup = Setup::new().await;
    let victim = add(setup.dir.path(), &["victim"]);
    let other = add(setup.dir.path(), &["other"]);
    let third = add(setup.dir.path(), &["third"]);
    let router = setup.serve();
    assert_eq!(status(&router, &victim).await, 200);

    sql(&setup.db, "DELETE FROM users_changes");
    let (code, _, err) = setup.user(&["delete", "victim"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(&router, &victim).await, 401, "deleted by the CLI");

    sql(
        &setup.db,
        "DELETE FROM users_changes; DELETE FROM users WHERE username = 'other';",
    );
    assert_eq!(status(&router, &other).await, 401, "deleted by plain SQL");

    sql(&setup.db, "DROP TABLE users_changes");
    assert_eq!(status(&router, &third).await, 200);
    sql(&setup.db, "DELETE FROM users WHERE username = 'third'");
    assert_eq!(status(&router, &third).await, 401, "counter table dropped");
    drop(router);

    sql(&setup.db, "DELETE FROM users_changes");
    let kept = add(setup.dir.path(), &["kept"]);
    sql(&setup.db, "DELETE FROM users_changes");
    let router = setup.serve();
    assert_eq!(status(&router, &kept).await, 200, "{}", router.stderr());
    let (code, _, err) = setup.user(&["delete", "kept"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(&router, &kept).await, 401);
}

/// A users.db restored from `sqlite3 users.db .dump | sqlite3 restored.db`: every table,
/// index and trigger the current schema makes, and its rows, at `user_version` 0 (`.dump`
/// does not carry it). Every command opens it, and brings it to the current version.
#[test]
fn a_database_restored_from_a_dump_opens() {
    let dir = tempfile::tempdir().expect("dir");
    let key = add(dir.path(), &["ann", "--email", "ann@example.com"]);
    let original = Connection::open(dir.path().join("users.db")).expect("open");
    let restored_path = dir.path().join("restored.db");
    let restored = Connection::open(&restored_path).expect("create");
    // As `.dump` writes it: the tables, their rows, then the indexes and triggers.
    let objects = |tables: bool| -> Vec<String> {
        let mut statement = original
            .prepare(
                "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND (type = 'table') = ?1
                 ORDER BY rowid",
            )
            .expect("schema");
        statement
            .query_map([tables], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("sql")
    };
    for statement in objects(true) {
        restored.execute_batch(&statement).expect("table");
    }
    restored
        .execute_batch(&format!(
            "ATTACH '{}' AS original;
             INSERT INTO users SELECT * FROM original.users;
             INSERT INTO users_changes SELECT * FROM original.users_changes;
             DETACH original;",
            dir.path().join("users.db").display()
        ))
        .expect("rows");
    let rest = objects(false);
    assert_eq!(rest.len(), 4, "an index and three triggers: {rest:?}");
    for statement in rest {
        restored
            .execute_batch(&statement)
            .expect("index or trigger");
    }
    let version = |conn: &Connection| -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version")
    };
    assert_eq!(version(&restored), 0);
    drop(restored);

    let (code, out, err) = user(dir.path(), &["list", "--db", "restored.db"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ann@example.com"), "{out}");
    let (code, _, err) = user(dir.path(), &["show", "--db", "restored.db", "--key", &key]);
    assert_eq!(code, 0, "{err}");
    let restored = Connection::open(&restored_path).expect("open");
    assert_eq!(version(&restored), llmsrouter::db::current_version());
    assert_eq!(triggers(&restored_path).len(), 3);
}

/// An upgrade that fails part way leaves the file as it was (all steps are one
/// transaction), and says so in one line.
#[test]
fn an_upgrade_that_fails_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("odd.db");
    sql(
        &db,
        &format!(
            "{} CREATE TABLE users_changes (x TEXT); PRAGMA user_version = 1;",
            crate::users::PYTHON_SCHEMA.trim().to_owned() + ";"
        ),
    );
    let (code, _, err) = user(dir.path(), &["list", "--db", "odd.db"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: odd.db: cannot upgrade its schema from version 1 to ")
            && err
                .trim_end()
                .ends_with("its tables were left as they were"),
        "{err}"
    );
    let conn = Connection::open(&db).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 1);
    let ledger: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'usage_ledger'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(ledger, 0, "step 2 was undone with the failing step 3");
}

/// Another program holding the write lock for longer than the 10 s wait: the command says
/// so, and that no user was changed (as its other refusals say; "nothing" would be untrue
/// when opening the file made a dropped usage ledger again), instead of SQLite's bare
/// "database is locked".
#[test]
fn a_lock_held_past_the_wait_is_said_plainly() {
    let dir = tempfile::tempdir().expect("dir");
    add(dir.path(), &["ann"]);
    let holder = Connection::open(dir.path().join("users.db")).expect("open");
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE users SET email = email;")
        .expect("lock");
    let (code, out, err) = user(dir.path(), &["add", "bob"]);
    holder.execute_batch("ROLLBACK").expect("unlock");
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        "error: ./users.db: another program held the database's lock for more than 10 s (an open sqlite3 transaction, a long VACUUM); no user was changed; try again\n"
    );
    let (code, out, _) = user(dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert!(!out.contains("bob"), "{out}");
}

/// users.db replaced while the server runs, as restoring a backup does (`sqlite3 users.db
/// ".backup restored.db"; mv restored.db users.db`: a new file at the same path; the README
/// says it is not safe under traffic, the old and new file sharing one log). The server
/// follows the path (within 200 ms): a user deleted from the new file afterwards is refused,
/// one added there is let in, and the log says the file was opened again. While the
/// path names no file, every key is refused (the users it had may have been revoked since);
/// the file put back is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_replaced_while_the_server_runs_is_followed() {
    let setup = Setup::new().await;
    let victim = add(setup.dir.path(), &["victim"]);
    let keeper = add(setup.dir.path(), &["keeper"]);
    let router = setup.serve();
    assert_eq!(status(&router, &victim).await, 200);

    let restored = setup.dir.path().join("restored.db");
    Connection::open(&setup.db)
        .expect("open")
        .backup(rusqlite::MAIN_DB, &restored, None)
        .expect(".backup restored.db");
    std::fs::rename(&restored, &setup.db).expect("mv restored.db users.db");
    let (code, _, err) = setup.user(&["delete", "victim"]).await;
    assert_eq!(code, 0, "{err}");
    // SQLite moves its log (-wal, which the old file's connections share while they last)
    // into the database file from time to time; here at once. From then on only the new file
    // has the change: the old one, read by a server that did not follow the path, lacks it.
    checkpoint(&setup.db);
    assert_eq!(
        status_once(&router, &victim, 401).await,
        401,
        "deleted from the new file: {}",
        router.stderr()
    );
    assert_eq!(status(&router, &keeper).await, 200);
    let (code, newcomer, err) = setup.user(&["add", "newcomer"]).await;
    assert_eq!(code, 0, "{err}");
    checkpoint(&setup.db);
    assert_eq!(
        status_once(&router, newcomer.trim(), 200).await,
        200,
        "added to it"
    );
    let stderr = router.stderr();
    assert!(
        stderr.contains("users.db: the users database was replaced while the router ran; the users are read from the file at that path now"),
        "{stderr}"
    );

    // Moved away: no file at the path (or, once the ledger writes, a new empty one).
    let moved = setup.dir.path().join("moved.db");
    std::fs::rename(&setup.db, &moved).expect("mv users.db moved.db");
    assert_eq!(
        status_once(&router, &keeper, 401).await,
        401,
        "no file at the path"
    );
    wait_until(Duration::from_secs(10), || {
        router
            .stderr()
            .contains("users.db: the users database was deleted or moved away while the router ran; every key is refused")
    })
    .await;
    std::fs::rename(&moved, &setup.db).expect("mv moved.db users.db");
    assert_eq!(
        status_once(&router, &keeper, 200).await,
        200,
        "the file is back"
    );
    assert_eq!(status(&router, newcomer.trim()).await, 200);
    let stderr = router.stderr();
    for key in [victim.as_str(), keeper.as_str(), newcomer.trim()] {
        assert!(!stderr.contains(key), "a key reached the log");
    }
}

/// users.db-wal deleted while the server runs: the server's connections keep the old log,
/// which the commands no longer see, so a key revoked since would still sign in; every key
/// is refused instead, with one line saying why. At shutdown the server does not copy its
/// orphaned log into the file (which left it malformed: every user lost at the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_deleted_while_the_server_runs_refuses_every_key_and_spares_the_file() {
    let setup = Setup::new().await;
    let ann = add(setup.dir.path(), &["ann"]);
    let bob = add(setup.dir.path(), &["bob"]);
    let mut router = setup.serve();
    assert_eq!(status(&router, &ann).await, 200);
    assert_eq!(status(&router, &bob).await, 200);
    let wal = setup.dir.path().join("users.db-wal");
    // The ledger's rows are in the log (not yet in the file) before it goes.
    wait_until(Duration::from_secs(10), || {
        Connection::open(&setup.db)
            .and_then(|c| c.query_row("SELECT count(*) FROM usage_ledger", [], |r| r.get(0)))
            .is_ok_and(|n: i64| n == 2)
    })
    .await;
    std::fs::remove_file(&wal).expect("rm users.db-wal");
    assert_eq!(
        status_once(&router, &ann, 401).await,
        401,
        "{}",
        router.stderr()
    );
    let (code, _, err) = setup.user(&["delete", "bob"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(&router, &bob).await, 401, "deleted");
    let stderr = router.stop_for_log().await;
    assert!(
        stderr.contains("users.db-wal was deleted (or replaced) while the router ran"),
        "{stderr}"
    );
    let conn = Connection::open(&setup.db).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let (code, out, err) = setup.user(&["list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ann"), "{out}");
}

/// Two rows with one key (a tool rebuilt the users table without its `UNIQUE`, then a key was
/// copied by hand): the key signs in as the first row by rowid, as the Python version's
/// `fetchone` did, not the later one (nor the first by name). A warning names both users,
/// never the key, once per change of the users, not at every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_two_rows_hold_signs_in_as_the_first_row() {
    let setup = Setup::new().await;
    let zed = add(setup.dir.path(), &["zed", "--permissions", "mock"]);
    let amy = add(setup.dir.path(), &["amy", "--permissions", "other"]);
    let router = setup.serve();
    let as_user = |key: &str| {
        let url = router.url("/v1/chat/completions");
        let key = key.to_owned();
        async move {
            (
                chat(&url, Auth::Bearer(&key), "[mock]m").await.0,
                chat(&url, Auth::Bearer(&key), "[other]m").await.0,
            )
        }
    };
    assert_eq!(as_user(&amy).await, (403, 200));

    share_key(&setup.db, "zed", "'amy'");
    assert_eq!(as_user(&zed).await, (200, 403), "zed's row is the first");
    assert_eq!(as_user(&zed).await, (200, 403));
    assert_eq!(as_user(&amy).await, (401, 401), "amy's own key is gone");
    let warning = "users \"zed\", \"amy\" have the same key: it signs in as \"zed\"";
    let warnings = || router.stderr().matches(warning).count();
    wait_until(Duration::from_secs(10), || warnings() >= 1).await;
    assert_eq!(warnings(), 1, "once, not per request: {}", router.stderr());

    // Another change of the users: said again, once.
    add(setup.dir.path(), &["carl"]);
    wait_until(Duration::from_secs(10), || warnings() >= 2).await;
    assert_eq!(as_user(&zed).await, (200, 403));
    assert_eq!(warnings(), 2, "{}", router.stderr());

    // Amy given a key of her own: both sign in, and nothing more is said.
    let (code, amy_new, err) = setup.user(&["rotate-key", "amy"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(as_user(amy_new.trim()).await, (403, 200));
    assert_eq!(as_user(&zed).await, (200, 403));
    assert_eq!(warnings(), 2, "{}", router.stderr());
    let stderr = router.stderr();
    for key in [zed.as_str(), amy.as_str(), amy_new.trim()] {
        assert!(!stderr.contains(key), "a key reached the log");
    }
}

/// Rebuilds the users table without the `UNIQUE` on `api_key` and gives the users named in
/// `others` (an SQL list of quoted names) the key of `owner`.
fn share_key(db: &Path, owner: &str, others: &str) {
    sql(
        db,
        &REBUILD_USERS.replace("api_key TEXT UNIQUE NOT NULL", "api_key TEXT NOT NULL"),
    );
    sql(
        db,
        &format!(
            "UPDATE users SET api_key = (SELECT api_key FROM users WHERE username = '{owner}')
             WHERE username IN ({others})"
        ),
    );
}

/// The commands the warning of a key still held gives run as pasted into a POSIX shell,
/// whatever the holders' names: quoted for the shell only when needed, in single quotes
/// (`'` written `'\''`), and after `--` for a name that begins with `-`. In the double quotes
/// used before, `$HOME` was expanded and `\\` read as one backslash (another user, or none),
/// and `-dash` was read as a flag.
#[test]
fn the_commands_a_shared_key_warning_gives_run_in_a_shell() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), "servers: {}\n").expect("config");
    let db = dir.path().join("users.db");
    add(dir.path(), &["zed"]);
    let odd = ["it's $HOME", "-dash", "a\"b\\\\c`x`", "plain.name@x"];
    {
        let conn = Connection::open(&db).expect("open");
        for (i, name) in odd.iter().enumerate() {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, NULL, '{\"*\": true}', 't', 't')",
                rusqlite::params![name, format!("k{i}")],
            )
            .expect("row");
        }
    }
    share_key(
        &db,
        "zed",
        "'it''s $HOME', '-dash', 'a\"b\\\\c`x`', 'plain.name@x'",
    );
    let (code, _, err) = user(dir.path(), &["rotate-key", "zed"]);
    assert_eq!(code, 0, "{err}");
    let commands = err
        .lines()
        .find_map(|line| line.split_once("give each of them a new key too: "))
        .map(|(_, commands)| commands.to_owned())
        .unwrap_or_default();
    assert_eq!(
        commands,
        "llmsrouter user rotate-key --rowid 2 'it'\\''s $HOME'; \
         llmsrouter user rotate-key --rowid 3 -- -dash; \
         llmsrouter user rotate-key --rowid 4 'a\"b\\\\c`x`'; \
         llmsrouter user rotate-key --rowid 5 plain.name@x"
    );
    let bin = crate::support::binary();
    let path = format!(
        "{}:{}",
        bin.parent().expect("folder").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut said = String::new();
    for command in commands.split("; ") {
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", command]);
        let (code, key, err) =
            crate::support::run_prepared(sh, dir.path(), &[], &[("PATH", &path)]);
        assert_eq!(code, 0, "{command}: {err}");
        assert!(key.trim().starts_with("sk-lr-"), "{command}: {key}");
        said = err;
    }
    assert!(said.ends_with("the old key no longer works\n"), "{said}");
    let keys: i64 = Connection::open(&db)
        .expect("open")
        .query_row("SELECT count(DISTINCT api_key) FROM users", [], |r| {
            r.get(0)
        })
        .expect("keys");
    assert_eq!(keys, 5, "each user has a key of its own");
}

/// A key two users hold (a table rebuilt without its `UNIQUE`) taken from one of them by
/// name, as an admin revokes a leaked key: `rotate-key` and `delete` do it, but never say the
/// key stopped working, which it has not: a warning names the users that still hold it, as
/// whom it now signs in, and the command that revokes it for each; run as shown, that
/// command does, and says so. It used to say "the old key no longer works" while the key
/// went on signing in, as the other user, with that user's permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_a_shared_key_from_one_holder_says_who_still_holds_it() {
    let setup = Setup::new().await;
    let leaked = add(setup.dir.path(), &["zed", "--permissions", "mock"]);
    add(setup.dir.path(), &["amy", "--permissions", "other"]);
    add(setup.dir.path(), &["carl", "--permissions", "*"]);
    share_key(&setup.db, "zed", "'amy', 'carl'");
    let router = setup.serve();
    let as_user = || {
        let url = router.url("/v1/chat/completions");
        let key = leaked.clone();
        async move {
            (
                chat(&url, Auth::Bearer(&key), "[mock]m").await.0,
                chat(&url, Auth::Bearer(&key), "[other]m").await.0,
            )
        }
    };
    assert_eq!(as_user().await, (200, 403), "zed's row is the first");

    let (code, new_key, err) = setup.user(&["rotate-key", "zed"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("no longer works"), "{err}");
    assert!(
        err.starts_with("new key for \"zed\" (above, shown only now)\n"),
        "{err}"
    );
    let warning = err.lines().nth(1).unwrap_or_default();
    assert!(
        warning.starts_with(
            "warning: the old key still works: users \"amy\", \"carl\" hold the same key, and it now signs in as \"amy\"; to revoke it, give each of them a new key too: "
        ),
        "{err}"
    );
    assert!(
        warning.ends_with(
            "llmsrouter user rotate-key --rowid 2 amy; llmsrouter user rotate-key --rowid 3 carl"
        ),
        "{err}"
    );
    assert_eq!(as_user().await, (403, 200), "now amy's");
    let zed = new_key.trim().to_owned();
    let url = router.url("/v1/chat/completions");
    assert_eq!(chat(&url, Auth::Bearer(&zed), "[mock]m").await.0, 200);

    let (code, out, err) = setup.user(&["delete", "amy"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"amy\"\n");
    assert_eq!(
        err,
        "warning: its key still works: user \"carl\" holds the same key, and it now signs in as \"carl\"; to revoke it, give that user a new key too: llmsrouter user rotate-key --rowid 3 carl\n"
    );
    assert_eq!(as_user().await, (200, 200), "now carl's");

    // The command as the warning gives it.
    let (code, _, err) = setup.user(&["rotate-key", "--rowid", "3", "carl"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "new key for \"carl\" (above, shown only now); the old key no longer works\n"
    );
    assert_eq!(as_user().await, (401, 401), "revoked at last");
    let stderr = router.stderr();
    assert!(!stderr.contains(&leaked), "a key reached the log");
}
