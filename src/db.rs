//! The SQLite database (LLMSROUTER_DB): opening it safely for concurrent use, and its schema
//! versions.
//!
//! One file holds the users table (the Python version's, unchanged) and the router's own
//! tables. `PRAGMA user_version` numbers the schema; [`MIGRATIONS`] brings any older file up
//! to date (all steps in one transaction, each safe on a file that has what it adds), and a
//! file from a newer llmsrouter is refused rather than misread. Every open that may write
//! also puts back the triggers that count user changes, which other tools drop when they
//! rebuild the users table ([`ensure_change_tracking`]). WAL mode and a busy timeout let the
//! CLI write while the server runs without "database is locked".
//!
//! A path is always a file name: never SQLite's `:memory:`, never a `file:` URI.
//! Another program's database is refused before anything is written to it; a file the
//! process may not write (or whose folder it may not) is read as it is, and so is, by a
//! command that only reads, one that another connection keeps from the switch to WAL.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

/// How long a writer waits for another writer before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The three triggers that count changes to `users` in `users_changes` (schema step 3), as
/// one batch that drops any of their names first: a trigger of that name left on another
/// table (a users table renamed away by a rebuild) would otherwise keep `IF NOT EXISTS`
/// from making it on `users`.
macro_rules! change_triggers {
    () => {
        "DROP TRIGGER IF EXISTS users_changed_on_insert;
        DROP TRIGGER IF EXISTS users_changed_on_update;
        DROP TRIGGER IF EXISTS users_changed_on_delete;
        CREATE TRIGGER users_changed_on_insert AFTER INSERT ON users
            BEGIN UPDATE users_changes SET n = n + 1 WHERE id = 1; END;
        CREATE TRIGGER users_changed_on_update AFTER UPDATE ON users
            BEGIN UPDATE users_changes SET n = n + 1 WHERE id = 1; END;
        CREATE TRIGGER users_changed_on_delete AFTER DELETE ON users
            BEGIN UPDATE users_changes SET n = n + 1 WHERE id = 1; END;"
    };
}

/// The counter's table (schema step 3), made again by [`ensure_change_tracking`] if dropped.
macro_rules! change_counter_table {
    () => {
        "CREATE TABLE IF NOT EXISTS users_changes (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            n INTEGER NOT NULL
        );"
    };
}

/// The names of the triggers `change_triggers!` makes.
const CHANGE_TRIGGERS: [&str; 3] = [
    "users_changed_on_insert",
    "users_changed_on_update",
    "users_changed_on_delete",
];

/// One schema step. Every step can run on a file that already has what it adds (a
/// `sqlite3 .dump` restored into a new file has every table and column, and `user_version`
/// 0, as `.dump` does not carry it), so a step checks before it adds.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Statements that are safe to repeat (`CREATE ... IF NOT EXISTS`, `INSERT OR IGNORE`).
    Sql(&'static str),
    /// `ALTER TABLE table ADD COLUMN column definition`, unless the column exists (SQLite
    /// has no `ADD COLUMN IF NOT EXISTS`).
    AddColumn {
        table: &'static str,
        column: &'static str,
        definition: &'static str,
    },
}

impl Step {
    /// Applies the step to `conn` (the caller's transaction); doing nothing where it is
    /// done already.
    pub fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        match *self {
            Self::Sql(sql) => conn.execute_batch(sql),
            Self::AddColumn {
                table,
                column,
                definition,
            } => {
                if has_column(conn, table, column)? {
                    return Ok(());
                }
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))
            }
        }
    }
}

/// Whether `table` (of the main schema) has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1, 'main') WHERE lower(name) = lower(?2)",
        [table, column],
        |row| row.get(0),
    )
}

/// Schema steps; step `i` (0-based) brings a database from version `i` to `i + 1`. Every step
/// must be safe on a database the Python version made (version 0, users table present), and
/// on one that has what the step adds (see [`Step`]). [`migrate`] runs all the steps a file
/// needs in one transaction.
pub const MIGRATIONS: &[Step] = &[
    // 1: the Python version's users table, exactly.
    Step::Sql(
        "CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY,
        api_key TEXT UNIQUE NOT NULL,
        email TEXT,
        permissions TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );",
    ),
    // 2: the usage ledger, one row per routed request (src/sinks/ledger.rs writes it).
    Step::Sql(LEDGER_TABLE),
    // 3: a counter of changes to `users`, kept by triggers, so the server's key index reloads
    // when users change and not on every ledger write (which also bumps data_version).
    // Writers that know nothing of it (the Python version's CLI) bump it too. Another tool
    // that rebuilds the users table drops the triggers: every open puts them back
    // ([`ensure_change_tracking`]), and so does a running server that sees the schema change.
    Step::Sql(concat!(
        change_counter_table!(),
        "INSERT OR IGNORE INTO users_changes (id, n) VALUES (1, 0);",
        change_triggers!()
    )),
    // 4: seconds of audio of a transcription billed by duration (`whisper-1`'s
    // `{"type": "duration", "seconds": N}`), which counts no tokens; NULL for every other
    // request, and for the rows written before this step.
    AUDIO_SECONDS,
];

/// The usage ledger's table and its index (schema step 2), also made again by
/// [`ensure_ledger`] when they are gone.
const LEDGER_TABLE: &str = "CREATE TABLE IF NOT EXISTS usage_ledger (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        started_at TEXT NOT NULL,
        day TEXT NOT NULL,
        username TEXT,
        provider TEXT NOT NULL,
        mode TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        response_model TEXT,
        stream INTEGER NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        error TEXT,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cache_creation_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost REAL,
        usage_known INTEGER NOT NULL,
        usage_partial INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_ledger_day ON usage_ledger (day);";

/// The ledger's `audio_seconds` column (schema step 4).
const AUDIO_SECONDS: Step = Step::AddColumn {
    table: "usage_ledger",
    column: "audio_seconds",
    definition: "INTEGER",
};

/// The schema version this build writes.
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    /// Its folder refuses what SQLite must do there: create the file (`exists` false: the
    /// folder is missing or this user may not write it), or make its journal files beside it.
    #[error("{path}: {reason}")]
    Folder {
        path: String,
        reason: String,
        exists: bool,
    },
    /// A file this user may not write (its mode, its owner, a read-only mount), opened to
    /// write: SQLite opens it read-only, and says only "attempt to write a readonly
    /// database" at the first write.
    #[error(
        "{path}: attempt to write a readonly database (this user may not write the file: its permissions, or a read-only mount)"
    )]
    ReadOnly { path: String },
    #[error(
        "{path}: schema version {found} is newer than this llmsrouter understands ({known}); upgrade llmsrouter"
    )]
    FutureVersion {
        path: String,
        found: i64,
        known: i64,
    },
    /// A step of the upgrade failed; the upgrade is one transaction, so none of it stayed.
    #[error(
        "{path}: cannot upgrade its schema from version {from} to {to} ({reason}); its tables were left as they were"
    )]
    Upgrade {
        path: String,
        from: i64,
        to: i64,
        reason: String,
    },
    /// The busy timeout ran out: another process kept the write lock all along.
    #[error(
        "{path}: another program held the database's lock for more than {} s (an open sqlite3 transaction, a long VACUUM); {kept}; try again",
        BUSY_TIMEOUT.as_secs()
    )]
    Locked {
        path: String,
        /// What did not change: [`NOTHING_CHANGED`] where the refused step was the first
        /// write; a `user` command says "no user was changed", since opening the file may
        /// already have made a dropped usage ledger again (said on its own warning line).
        kept: &'static str,
    },
    /// The switch to WAL (once per file: the Python version's is in rollback-journal mode)
    /// waited the busy timeout for a moment with the file to itself, and never had it:
    /// another connection kept a transaction open all along, be it only a reader. Said as
    /// that, since the file is not locked for anything but the switch: waiting for "the
    /// lock" to go, as [`Self::Locked`] says, would not help while that program is open.
    #[error(
        "{path}: another program has the database open in a transaction (a Python sqlite3 connection, a sqlite3 shell, DB Browser for SQLite), and the one-time switch to WAL journal mode needs it to itself: waited {} s; close that program (or run this once while nothing else uses the file) and try again",
        BUSY_TIMEOUT.as_secs()
    )]
    InUse { path: String },
    #[error(
        "--db / LLMSROUTER_DB is \":memory:\", a database SQLite keeps in memory only: users and usage written there are lost when the command exits; give a file name"
    )]
    InMemory,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// What [`DbError::Locked`] says stayed as it was when the write it refused was the first.
pub const NOTHING_CHANGED: &str = "nothing was changed";

/// Refuses the one name SQLite never takes as a file, whatever the open flags: `:memory:`
/// opens a database that lives as long as the connection, so `user add` would print a key
/// that no server ever accepts and `serve` would keep its ledger nowhere. Commands call this
/// before looking for the file, so the refusal does not read as "no such file".
pub fn check_path(path: &Path) -> Result<(), DbError> {
    if path.as_os_str() == ":memory:" {
        return Err(DbError::InMemory);
    }
    Ok(())
}

/// The name to hand SQLite for `path`, so that it opens the file of that name. The bundled
/// SQLite is built with URI names on (libsqlite3-sys compiles it with `SQLITE_USE_URI`), so
/// leaving `SQLITE_OPEN_URI` out of the flags is not enough: a name that begins `file:` would
/// still be read as a URI (`file:x.db?mode=memory`, a database in memory). Only a relative
/// name can begin so; `./` in front makes it the plain file name it is for every other tool.
fn plain_file_name(path: &Path) -> Cow<'_, Path> {
    if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        Cow::Owned(Path::new(".").join(path))
    } else {
        Cow::Borrowed(path)
    }
}

/// Opens (creating if needed) and migrates the database at `path`. What opening repaired
/// that its user should hear of (a usage ledger made again) is logged: for `serve`.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    open_as(path, Access::Write, &mut log_note)
}

/// [`open`] for a command: what opening repaired is handed to `note`, one line each, for the
/// command to say as it says its other warnings (a `warning:` line, not a log line).
pub fn open_noting(path: &Path, note: &mut dyn FnMut(String)) -> Result<Connection, DbError> {
    open_as(path, Access::Write, note)
}

/// Where [`open`] and the openers for `serve` say what opening repaired: the log.
fn log_note(note: String) {
    tracing::warn!("{note}");
}

/// Opens the database at `path` for reading: as [`open`] when it can be written; a file the
/// router may only read (a read-only mount of the Python version's users.db) is opened as
/// it is, without the switch to WAL or the schema steps, which its tables do not need to be
/// read. What reads it must cope with an older schema (see `users::index`). For `serve`'s
/// users index, which keeps its connection: a file it may write is switched to WAL, so that
/// commands can change users while it runs.
pub fn open_to_read(path: &Path) -> Result<Connection, DbError> {
    open_as(path, Access::Follow, &mut log_note)
}

/// [`open_to_read`] for a command that reads and exits (`user list`, `user show`, `usage`):
/// a file in rollback-journal mode (the Python version's) that another program has open in
/// a transaction, so that the one-time switch to WAL cannot have it to itself, is read as it
/// is too, as a file it may not write is, rather than waited for and refused: the command
/// needs neither the switch nor the schema steps. The switch is tried for [`SWITCH_GRACE`]
/// only; a file already in WAL mode needs no switch.
pub fn open_to_read_once(path: &Path) -> Result<Connection, DbError> {
    // It repairs nothing: nothing to say.
    open_as(path, Access::ReadOnce, &mut log_note)
}

/// How long a command that only reads tries the switch to WAL while another connection
/// keeps it from having the file to itself, before it reads the file as it is: long enough
/// for a moment's contention (another command reading), short of a wait anyone notices.
const SWITCH_GRACE: Duration = Duration::from_millis(200);

/// What `llmsrouter check` can tell of the database at `path` without changing what it holds
/// (opened read-write when it may be, so that closing it leaves no `-wal`/`-shm` behind: as
/// the last connection it checkpoints a leftover write-ahead log into the file): the
/// refusals `serve` would meet when opening it (a folder or a device, not a database,
/// another program's, a newer schema; with `writes`, for the ledger, a file or folder this
/// user may not write). A missing file is no problem when `serve` can create it, ledger or not: it
/// creates it for the users table too, so a folder this user may not write refuses it.
pub fn inspect(path: &Path, writes: bool) -> Result<(), DbError> {
    let shown = path.display().to_string();
    check_path(path)?;
    let path = plain_file_name(path);
    check_file_kind(&path, &shown)?;
    let missing = !path.exists() && !path.is_symlink();
    if (writes || missing) && only_folder_refuses(&path) {
        return Err(folder_refuses(&shown, &path));
    }
    if matches!(std::fs::metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        if no_room_to_create(&path) {
            return Err(DbError::Folder {
                path: shown,
                reason: format!(
                    "cannot create it: the disk of its folder {} is full",
                    folder_of(&path).display()
                ),
                exists: false,
            });
        }
        return check_creatable(&path, &shown);
    }
    let writable = file_writable(&path);
    // Read through a connection that may write when the file allows it: a read-only one
    // that reads a file in WAL mode makes its `-wal` and `-shm` files and cannot remove them
    // when it closes, so `check` left two files behind. One that may write removes them
    // when it is the file's last connection; the data is not changed either way (at most a
    // log a crashed server left is moved into the file, as the next server would).
    let flags = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    // A file in WAL mode that neither it nor its folder lets this user write fails at its
    // first read (its `-shm` cannot be made): said as any file this user may not write.
    let refused = |e: rusqlite::Error| {
        if !writable && e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) {
            DbError::ReadOnly {
                path: shown.clone(),
            }
        } else {
            not_a_database(&shown, e)
        }
    };
    let conn = open_file(&path, flags).map_err(refused)?;
    let found = user_version(&conn).map_err(refused)?;
    check_version(found, &shown)?;
    check_ours(&conn, &shown)?;
    drop(conn);
    if writes && !writable {
        return Err(DbError::ReadOnly { path: shown });
    }
    Ok(())
}

/// Whether `serve` could create the missing database at `path`, found by making one, as
/// `serve` would (the switch to WAL, every schema step, the ledger), in a file of another name
/// beside it (where a dangling link points, when `path` is one) and removing it and its
/// `-wal`/`-shm` again: the folder's permission bits, which root passes, do not tell, a pseudo
/// file system (`/proc`, `/sys`) refuses every new file, and a nearly full disk has room for
/// an empty file but not for the database's tables, so `check` said ok to a database `serve`
/// then could not make. A refusal is said in `serve`'s words, of `path`. The database's own
/// path is never made: a `serve` starting that instant would make its database in a file
/// `check` then deleted. When no file can be made there, SQLite is asked to open the path
/// without creating it, for the refusal in `serve`'s words.
fn check_creatable(path: &Path, shown: &str) -> Result<(), DbError> {
    let target = dangling_link_target(path);
    let target = target.as_deref().unwrap_or(path);
    let mut probe = target.as_os_str().to_owned();
    probe.push(format!(".llmsrouter-check-{}", std::process::id()));
    let probe = PathBuf::from(probe);
    if let Some(made) = create_private(&probe) {
        // Closed (`drop`) before it is removed: as the last connection it removes its own
        // `-wal` and `-shm`; what a failed open leaves goes with the file.
        let made_there =
            open_made(&probe, shown.to_owned(), Access::Write, true, &mut |_| {}).map(drop);
        made.undo();
        return made_there;
    }
    match open_file(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        // Made meanwhile, by another process.
        Ok(_) => Ok(()),
        Err(e) => Err(cannot_write(shown, path, e)),
    }
}

/// Whether SQLite opens the existing file at `path` for writing, as [`open`] would: it opens
/// a file this user may not write (its mode, a read-only mount) read-only instead. Nothing
/// is read through the connection, so nothing is written either.
fn file_writable(path: &Path) -> bool {
    open_file(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .and_then(|conn| conn.is_readonly(rusqlite::MAIN_DB))
        .is_ok_and(|read_only| !read_only)
}

/// Refuses what `path` names (through any symlink) when it is there and is not a regular
/// file, said as what it is rather than as SQLite says it: a folder ("unable to open database
/// file"), a device such as `/dev/null` ("disk I/O error", after SQLite has made a
/// `/dev/null-journal` beside it when the folder lets it), a named pipe or a socket. A
/// missing path is no refusal (it is created), nor one that cannot be looked at (SQLite then
/// says why).
fn check_file_kind(path: &Path, shown: &str) -> Result<(), DbError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_file() {
        return Ok(());
    }
    let reason = if meta.is_dir() {
        "is a folder, not a database file"
    } else {
        not_a_regular_file(&meta.file_type())
    };
    Err(DbError::Open {
        path: shown.to_owned(),
        reason: reason.to_owned(),
    })
}

/// What a path that is neither a file nor a folder names, for [`check_file_kind`].
#[cfg(unix)]
fn not_a_regular_file(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() || kind.is_block_device() {
        "not a regular file (a device): a database must be a file"
    } else if kind.is_fifo() {
        "not a regular file (a named pipe): a database must be a file"
    } else if kind.is_socket() {
        "not a regular file (a socket): a database must be a file"
    } else {
        "not a regular file: a database must be a file"
    }
}

#[cfg(not(unix))]
fn not_a_regular_file(_kind: &std::fs::FileType) -> &'static str {
    "not a regular file: a database must be a file"
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// [`open`].
    Write,
    /// [`open_to_read`].
    Follow,
    /// [`open_to_read_once`].
    ReadOnce,
}

fn open_as(
    path: &Path,
    access: Access,
    note: &mut dyn FnMut(String),
) -> Result<Connection, DbError> {
    let shown = path.display().to_string();
    check_path(path)?;
    let path = plain_file_name(path);
    check_file_kind(&path, &shown)?;
    let missing = !path.exists() && !path.is_symlink();
    // For a reader too: `serve` with accounts on opens the file to read the users table
    // before (or, with the ledger off, instead of) the ledger's writer, and SQLite creates a
    // missing one with the umask's mode (0644: every user key readable by anyone).
    let made = create_private(&path);
    let opened = open_made(&path, shown, access, missing, note);
    // Another process that has the file open (it waited for, or kept, the lock) may be
    // making the very database in it: the file is left to it.
    if let (Err(e), Some(made)) = (&opened, made) {
        if !matches!(e, DbError::Locked { .. } | DbError::InUse { .. }) {
            made.undo();
        }
    }
    opened
}

/// [`open_as`] once the file is there (or SQLite is to create it): `missing` says there was
/// none. The connection is closed again when this fails.
fn open_made(
    path: &Path,
    shown: String,
    access: Access,
    missing: bool,
    note: &mut dyn FnMut(String),
) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let conn = open_file(path, flags).map_err(|e| match access {
        // A reader creating a missing file writes it: a folder that refuses that is named,
        // as for a writer (SQLite says only "unable to open database file").
        Access::Follow | Access::ReadOnce if !missing => not_a_database(&shown, e),
        _ => cannot_write(&shown, path, e),
    })?;
    // A file from a newer llmsrouter (or not a database at all, or another program's) is
    // refused before anything, even the switch to WAL, is written to it.
    let found = user_version(&conn).map_err(|e| {
        // A file in WAL mode that neither it nor its folder lets this user write fails at
        // its first read (its `-shm` cannot be made): said as the read-only file below is.
        let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        let refused = e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly);
        if access == Access::Write && read_only && refused {
            DbError::ReadOnly {
                path: shown.clone(),
            }
        } else {
            not_a_database(&shown, e)
        }
    })?;
    check_version(found, &shown)?;
    check_ours(&conn, &shown)?;
    // A file that holds no database yet (made just now, or empty): a write that fails from
    // here on fails to create the database, and is said so (see [`not_created`]).
    let fresh = found == 0 && holds_nothing(&conn).map_err(|e| not_a_database(&shown, e))?;
    let write_failed = |e: rusqlite::Error| {
        if fresh {
            not_created(&shown, path, e)
        } else {
            cannot_write(&shown, path, e)
        }
    };
    // SQLite opens a file the process may not write read-only, and says so.
    let read_only = conn.is_readonly(rusqlite::MAIN_DB)?;
    if access == Access::Write && read_only {
        return Err(DbError::ReadOnly { path: shown });
    }
    if access != Access::Write {
        if read_only {
            return read_as_is(conn, &shown);
        }
        // A file the process may write, in a folder it may not: every write (the switch to
        // WAL, a schema step) needs a journal file made next to it, and fails. It is read
        // as a read-only file is.
        if !folder_writable(path) {
            drop(conn);
            let conn = open_file(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| not_a_database(&shown, e))?;
            return read_as_is(conn, &shown);
        }
    }
    let wait = match access {
        Access::ReadOnce => SWITCH_GRACE,
        Access::Write | Access::Follow => BUSY_TIMEOUT,
    };
    match configure(&conn, wait) {
        Ok(()) => {}
        Err(e) if is_locked(&e) && access == Access::ReadOnce => {
            return read_as_is(conn, &shown);
        }
        Err(e) if is_locked(&e) => return Err(DbError::InUse { path: shown }),
        Err(e) => return Err(write_failed(e)),
    }
    // Not for a command that only reads (`usage`, `user list`): `usage` says the ledger is
    // missing rather than reading a table made empty a moment before as "no usage".
    let ledger = |conn: &Connection| match access {
        Access::Write | Access::Follow => ensure_ledger(conn),
        Access::ReadOnce => Ok(false),
    };
    let ledger_made = migrate(&conn, &shown, fresh)
        .and_then(|()| add_permissions_column(&conn))
        .and_then(|()| Ok(ensure_change_tracking(&conn)?))
        .and_then(|()| Ok(ledger(&conn)?))
        .map_err(|e| match e {
            DbError::Sqlite(e) => write_failed(e),
            e => e,
        })?;
    if ledger_made {
        note(ledger_made_again(&shown));
    }
    Ok(conn)
}

/// A connection to a database this process may not write, as it is. A users table from
/// before the Python version had permissions (see [`add_permissions_column`]) is read
/// through a view of this connection alone, in its temporary schema, that shadows it with
/// `permissions` NULL, so every reader of `users` works unchanged and the file is not
/// written.
fn read_as_is(conn: Connection, path: &str) -> Result<Connection, DbError> {
    let shadow = lacks_permissions(&conn).and_then(|lacks| {
        if lacks {
            conn.execute_batch(
                "CREATE TEMP VIEW users AS
                 SELECT rowid AS rowid, username, api_key, email, NULL AS permissions,
                        created_at, updated_at
                 FROM main.users",
            )?;
        }
        Ok(())
    });
    shadow.map_err(|e| not_a_database(path, e))?;
    Ok(conn)
}

/// The earliest Python version's users table had no `permissions` column. It is added here,
/// on every open that may write, rather than by a schema step: such a file may already be
/// at the current version (an llmsrouter that did not add it brought it there). A user
/// without permissions (NULL) may use no provider, as with any unreadable value, until
/// `user modify` gives it some. The check and the change run in one IMMEDIATE transaction,
/// so two processes opening the file at once add the column once.
fn add_permissions_column(conn: &Connection) -> Result<(), DbError> {
    if !lacks_permissions(conn)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    if lacks_permissions(&tx)? {
        tx.execute_batch("ALTER TABLE users ADD COLUMN permissions TEXT")?;
    }
    tx.commit()?;
    Ok(())
}

/// Whether the database has a users table without a `permissions` column.
fn lacks_permissions(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 AND count(*) FILTER (WHERE lower(name) = 'permissions') = 0
         FROM pragma_table_info('users', 'main')",
        [],
        |row| row.get(0),
    )
}

/// Opens `path` as a plain file name (`flags` never hold `SQLITE_OPEN_URI`), with the busy
/// timeout.
fn open_file(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The folder holding the database file, where SQLite makes its `-wal`, `-shm` and
/// `-journal` files.
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|folder| !folder.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether this process may make files in the database's folder. (The real ids are asked:
/// llmsrouter is never set-uid, so they are the effective ones.)
#[cfg(unix)]
fn folder_writable(path: &Path) -> bool {
    rustix::fs::access(folder_of(path), rustix::fs::Access::WRITE_OK).is_ok()
}

#[cfg(not(unix))]
fn folder_writable(_path: &Path) -> bool {
    true
}

/// Whether the folder, and not the file, is what keeps this process from writing the
/// database: the file is writable (or yet to be made) and its folder is not.
#[cfg(unix)]
fn only_folder_refuses(path: &Path) -> bool {
    let file_writable = match rustix::fs::access(path, rustix::fs::Access::WRITE_OK) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::NOENT,
    };
    file_writable && !folder_writable(path)
}

#[cfg(not(unix))]
fn only_folder_refuses(_path: &Path) -> bool {
    false
}

/// The error of a write to the database (or of making it). When the folder is what cannot
/// be written, SQLite only says "attempt to write a readonly database" (or "unable to open
/// database file") about a file that may well be writable itself, so the message names the
/// folder instead.
fn cannot_write(shown: &str, path: &Path, e: rusqlite::Error) -> DbError {
    let folder_refused = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    ) && only_folder_refuses(path);
    if !folder_refused {
        return not_a_database(shown, e);
    }
    folder_refuses(shown, path)
}

/// A write that failed in a file that held no database yet (one this open made, or an
/// empty one): the database could not be created, said as that with SQLite's reason, and,
/// when the folder's disk has no room left, that it is full, in `check`'s words. Its first
/// write is the schema's first step, and a nearly full disk (room for the file, not for its
/// tables) was said as "cannot upgrade its schema from version 0 to 4". A refusal that names
/// its own cause (the folder, the lock) is left as it is.
fn not_created(shown: &str, path: &Path, e: rusqlite::Error) -> DbError {
    let full = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
    ) && no_room_to_create(path);
    if full {
        // SQLite's own words: the disk being full already says why its `-shm` could not be
        // made ("disk I/O error"), which [`not_a_database`] would ask about.
        return DbError::Open {
            path: shown.to_owned(),
            reason: format!(
                "cannot create the database: the disk of its folder {} is full ({e})",
                folder_of(path).display()
            ),
        };
    }
    match cannot_write(shown, path, e) {
        DbError::Open {
            path: shown,
            reason,
        } => DbError::Open {
            path: shown,
            reason: format!("cannot create the database: {reason}"),
        },
        other => other,
    }
}

/// Whether the database holds no table, index, view or trigger: a file that is empty, or
/// that SQLite has only begun.
fn holds_nothing(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_schema)",
        [],
        |row| row.get(0),
    )
}

/// The database at `path` cannot be written because of its folder: one that does not exist,
/// or one this user may not write (SQLite makes its journal files there).
fn folder_refuses(shown: &str, path: &Path) -> DbError {
    let folder = folder_of(path);
    let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    let exists = path.exists() || path.is_symlink();
    let reason = if !folder.is_dir() {
        format!(
            "cannot create it: the folder {} does not exist",
            folder.display()
        )
    } else if on_read_only_mount(path) {
        format!(
            "cannot {} it: its folder {} is on a read-only mount",
            if exists { "write" } else { "create" },
            folder.display()
        )
    } else if !exists {
        format!(
            "cannot create it: its folder {} is not writable by this user",
            folder.display()
        )
    } else {
        format!(
            "cannot write it: its folder {} is not writable by this user, and SQLite makes its journal files (-wal, -shm, -journal) there",
            folder.display()
        )
    };
    DbError::Folder {
        path: shown.to_owned(),
        reason,
        exists,
    }
}

/// The database holds every user's key (in the clear, as the Python version's table does), so
/// a new file is created empty and readable by its owner only, before SQLite opens it; SQLite
/// gives its `-wal` and `-shm` files the mode of the database file. Whoever creates it — the
/// server (for the ledger) or `user add` — the mode is the same. An existing file's mode is
/// left as the administrator set it. A symlink to a missing file is followed: SQLite creates
/// the file it points to (`create_new` alone would see the link and leave that to SQLite,
/// with the umask's mode). Failing here is not an error: SQLite then creates the file and
/// reports any real problem. Returns the file made here, when it was (see [`Made`]).
fn create_private(path: &Path) -> Option<Made> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let target = dangling_link_target(path);
    let path = target.as_deref().unwrap_or(path);
    // Looked at before the file is made: a side file there now is not this process's.
    let absent_side_files: Vec<PathBuf> = SIDE_FILES
        .iter()
        .map(|suffix| side_file(path, suffix))
        .filter(|side| !side.exists() && !side.is_symlink())
        .collect();
    match options.open(path) {
        Ok(_) => Some(Made {
            file: path.to_path_buf(),
            id: file_id(path),
            absent_side_files,
        }),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                tracing::debug!(
                    "{path}: not created ahead of SQLite: {e}",
                    path = path.display()
                );
            }
            None
        }
    }
}

/// The files SQLite makes beside a database, by the suffix of their names.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

fn side_file(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A database file this process has just made ([`create_private`]), and which of SQLite's
/// files beside it ([`SIDE_FILES`]) were not there a moment before.
struct Made {
    file: PathBuf,
    /// Its identity when made (see [`file_id`]).
    id: Option<(u64, u64)>,
    absent_side_files: Vec<PathBuf>,
}

impl Made {
    /// Removes the file, and those side files that were not there before, when no database
    /// could be made in it (a full disk: "database or disk is full"). Left behind, the
    /// empty file was taken for a database that is there: `check` passed it, where it
    /// refuses one yet to be made on a full disk. Only what this process made goes: a file
    /// that was there before is never removed, nor one put at the path since.
    fn undo(self) {
        if file_id(&self.file) != self.id {
            return;
        }
        for side in &self.absent_side_files {
            let _ = std::fs::remove_file(side);
        }
        if let Err(e) = std::fs::remove_file(&self.file) {
            tracing::debug!(
                "{file}: cannot remove the file made for a database that could not be made: {e}",
                file = self.file.display()
            );
        }
    }
}

/// The file that opening `path` for the first time creates: the missing file a symlink (or
/// chain of links) at `path` leads to, else `path` itself. A command that undoes its own
/// creation removes this file, not the link the administrator made.
pub fn file_to_create(path: &Path) -> std::path::PathBuf {
    dangling_link_target(path).unwrap_or_else(|| path.to_path_buf())
}

/// Where the symlink at `path` leads when it leads nowhere yet (to a missing file, through any
/// chain of links): the file SQLite would create. `None` for anything else: no link, a link
/// to something that is there, or a chain too long or that cannot be read (SQLite then says
/// why, as the kernel would: 40 links, as Linux's own limit).
fn dangling_link_target(path: &Path) -> Option<std::path::PathBuf> {
    const MAX_LINKS: usize = 40;
    if !path.is_symlink() || path.exists() {
        return None;
    }
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let link = std::fs::read_link(&current).ok()?;
        // A relative target is read from the link's folder; an absolute one replaces it.
        current = folder_of(&current).join(link);
        if !current.is_symlink() {
            return Some(current);
        }
    }
    None
}

/// Refuses, before anything is written, a database of another program: one that holds
/// tables but no `users` table. Every file llmsrouter or the Python version made has that
/// table (schema step 1 makes it first), so such a file is not ours whatever its
/// `user_version` says, and the schema steps, the triggers and the switch to WAL must not
/// be added to it. An empty database (a new file, or one with no tables) is made ours.
fn check_ours(conn: &Connection, path: &str) -> Result<(), DbError> {
    let (tables, users): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE lower(name) = 'users')
             FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|e| not_a_database(path, e))?;
    if tables > 0 && users == 0 {
        return Err(DbError::Open {
            path: path.to_owned(),
            reason: "holds other tables and no users table: not a llmsrouter database".to_owned(),
        });
    }
    // Another program's own `users` table (an app's, with `id` and `name`) is not ours
    // either: the schema steps would add columns and tables to that program's file, and
    // every read fail after. Ours, and the Python version's, have `username` and `api_key`.
    if users > 0 {
        let ours: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('users')
                 WHERE lower(name) IN ('username', 'api_key')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| not_a_database(path, e))?;
        if ours < 2 {
            return Err(DbError::Open {
                path: path.to_owned(),
                reason: "holds a users table without the username and api_key columns: \
                         another program's, not a llmsrouter database"
                    .to_owned(),
            });
        }
    }
    Ok(())
}

/// Switches the file to WAL, waiting up to `wait` for it (see [`set_wal`]), and sets what
/// every connection of ours uses.
fn configure(conn: &Connection, wait: Duration) -> rusqlite::Result<()> {
    set_wal(conn, wait)?;
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
    Ok(())
}

/// Switches the file to WAL (it persists in the file once set). Switching needs the file to
/// itself: while another connection has a transaction open on a file in rollback-journal
/// mode (a Python sqlite3 connection only reading holds a shared lock for as long), SQLite
/// waits through the busy handler and then answers "busy". It also answers "busy" at once,
/// without its busy handler, when another process is switching the same new file at that
/// moment; so this retries, within `wait`, which is also the busy timeout meanwhile (the
/// connection gets [`BUSY_TIMEOUT`] back after). A file already in WAL mode switches at once.
fn set_wal(conn: &Connection, wait: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(wait)?;
    let deadline = std::time::Instant::now() + wait;
    let switched = loop {
        // journal_mode answers with a row.
        match conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get::<_, String>(0)) {
            Ok(_) => break Ok(()),
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => break Err(e),
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    switched
}

/// Whether `e` says another connection kept the lock past the busy timeout.
pub fn is_locked(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn not_a_database(path: &str, e: rusqlite::Error) -> DbError {
    if is_locked(&e) {
        return DbError::Locked {
            path: path.to_owned(),
            kept: NOTHING_CHANGED,
        };
    }
    let reason = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not an SQLite database".to_owned(),
        Some(rusqlite::ErrorCode::CannotOpen) if on_read_only_mount(Path::new(path)) => format!(
            "{e} (it is on a read-only mount, where SQLite cannot make the -wal and -shm files \
             a database in WAL journal mode needs even to be read: mount it read-write, or \
             give a copy on a writable one)"
        ),
        _ if shared_memory_failed(&e) => format!(
            "{e} (SQLite could not make its shared-memory file, the -shm beside it: is the \
             disk full?)"
        ),
        _ => e.to_string(),
    };
    DbError::Open {
        path: path.to_owned(),
        reason,
    }
}

/// SQLite could not make or size a database's `-shm` file: on a full disk it says only
/// "disk I/O error", which reads as a damaged file (bb55).
fn shared_memory_failed(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(failure, _) if matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_IOERR_SHMSIZE
                | rusqlite::ffi::SQLITE_IOERR_SHMOPEN
                | rusqlite::ffi::SQLITE_IOERR_SHMMAP
        )
    )
}

/// Least free space SQLite needs to make a database and its first pages (and the `-wal` and
/// `-shm` beside it).
const ROOM_TO_CREATE: u64 = 64 * 1024;

/// Whether the file system of the database's folder has less than [`ROOM_TO_CREATE`] free for
/// this user: `check` passed a new database there that `serve` then could not make ("database
/// or disk is full"; bb55). Root may use the blocks kept back for it, as SQLite would.
#[cfg(unix)]
fn no_room_to_create(path: &Path) -> bool {
    let Ok(stats) = rustix::fs::statvfs(folder_of(path)) else {
        return false;
    };
    if stats.f_blocks == 0 || stats.f_frsize == 0 {
        // A file system that counts no blocks (some FUSE ones) says nothing of its room.
        return false;
    }
    let blocks = if rustix::process::geteuid().is_root() {
        stats.f_bfree
    } else {
        stats.f_bavail
    };
    blocks.saturating_mul(stats.f_frsize) < ROOM_TO_CREATE
}

#[cfg(not(unix))]
fn no_room_to_create(_path: &Path) -> bool {
    false
}

/// Whether the database's folder is on a file system mounted read-only: SQLite says only
/// "unable to open database file" of a file in WAL mode there (bb55).
#[cfg(unix)]
fn on_read_only_mount(path: &Path) -> bool {
    rustix::fs::access(folder_of(path), rustix::fs::Access::WRITE_OK)
        == Err(rustix::io::Errno::ROFS)
}

#[cfg(not(unix))]
fn on_read_only_mount(_path: &Path) -> bool {
    false
}

/// Brings the file up to [`current_version`]: every step it needs, and the new version, in
/// one IMMEDIATE transaction, so a failure leaves the file as it was (never half upgraded)
/// and says so in one line. The transaction reads the version again: a second process
/// opening the same file at the same moment waits (busy timeout) and then finds nothing to
/// do, instead of failing with "database is locked" or applying a step twice. A negative
/// version (set by hand) is read as 0: every step is safe to repeat. In a `fresh` file (no
/// database in it yet) a failed step is SQLite's error as it came, for the caller to say as
/// the database not created ([`not_created`]), not as an upgrade from version 0.
fn migrate(conn: &Connection, path: &str, fresh: bool) -> Result<(), DbError> {
    // In a fresh file this is the first read in WAL mode, which makes the `-shm`: on a
    // nearly full disk it fails, and the database is not created (not a damaged file).
    let found = user_version(conn).map_err(|e| {
        if fresh && !is_locked(&e) {
            DbError::Sqlite(e)
        } else {
            not_a_database(path, e)
        }
    })?;
    check_version(found, path)?;
    if found == current_version() {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    check_version(version, path)?;
    let done = usize::try_from(version).unwrap_or(0);
    let Some(steps) = MIGRATIONS.get(done..).filter(|steps| !steps.is_empty()) else {
        return Ok(());
    };
    let upgraded = steps
        .iter()
        .try_for_each(|step| step.apply(&tx))
        .and_then(|()| tx.pragma_update(None, "user_version", current_version()))
        .and_then(|()| tx.commit());
    upgraded.map_err(|e| {
        // Not an upgrade of a database that was there: its creation (see [`not_created`]).
        if fresh && !is_locked(&e) {
            return DbError::Sqlite(e);
        }
        if is_locked(&e) {
            return DbError::Locked {
                path: path.to_owned(),
                kept: NOTHING_CHANGED,
            };
        }
        DbError::Upgrade {
            path: path.to_owned(),
            from: version,
            to: current_version(),
            reason: e.to_string(),
        }
    })
}

/// Puts back the triggers that count changes to `users` and the counter's row, when they
/// are gone: another tool that rebuilds the users table (DB Browser for SQLite, `sqlite-utils
/// transform`, a script that drops and recreates it) drops its triggers with it, and an
/// admin may delete the row of a table they do not know. Without them a running server
/// would miss every later change (a deleted key would keep working). Called on every open
/// that may write, and by the server's index when the schema changed under it; a check
/// (two reads) when all is in place, one IMMEDIATE transaction when not.
pub fn ensure_change_tracking(conn: &Connection) -> rusqlite::Result<()> {
    if change_tracking_in_place(conn)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let triggers = triggers_in_place(&tx)?;
    if !has_table(&tx, "users")? || (triggers && counter_row_in_place(&tx)?) {
        return tx.commit();
    }
    tx.execute_batch(change_counter_table!())?;
    tx.execute(
        "INSERT OR IGNORE INTO users_changes (id, n) VALUES (1, ?1)",
        [fresh_count()],
    )?;
    if !triggers {
        tx.execute_batch(change_triggers!())?;
    }
    tx.commit()
}

/// Makes the usage ledger's table (every column, and its index) again when it is gone from
/// a file whose schema version says it was made: an admin purging usage with `DROP TABLE
/// usage_ledger`, a tool that copied only the users table. The schema steps never run again
/// on such a file, so without this every row the server writes would fail ("no such table")
/// while requests are answered, and `usage` would read nothing. Made again, the table is
/// empty: a warning says so (the rows it held are gone; this cannot bring them back). A
/// missing index alone is made again without a word. Called on every open that may write
/// (but `usage`'s and `user list`'s, see [`open_to_read_once`]) and by the ledger's writer
/// when a write finds the table gone; a read when all is in place, one IMMEDIATE transaction
/// when not. Returns whether the table was made, for the caller to say so
/// ([`ledger_made_again`]): `serve` in its log, a command on a `warning:` line.
pub fn ensure_ledger(conn: &Connection) -> rusqlite::Result<bool> {
    if ledger_in_place(conn)? {
        return Ok(false);
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let made = !has_table(&tx, "usage_ledger")?;
    tx.execute_batch(LEDGER_TABLE)?;
    AUDIO_SECONDS.apply(&tx)?;
    tx.commit()?;
    Ok(made)
}

/// The warning that [`ensure_ledger`] made the ledger of the database at `path` again.
pub fn ledger_made_again(path: &str) -> String {
    format!(
        "{path}: the usage_ledger table was missing (dropped?) although the schema version \
         says it was made; made it again, empty: the usage rows it held are gone, and \
         `llmsrouter usage` counts from now on"
    )
}

/// Whether the ledger's table and its index are there.
fn ledger_in_place(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) = 2 FROM sqlite_schema
         WHERE (type = 'table' AND lower(name) = 'usage_ledger')
            OR (type = 'index' AND lower(name) = 'usage_ledger_day')",
        [],
        |row| row.get(0),
    )
}

/// Whether the three triggers are on `users` and the counter has its row.
pub fn change_tracking_in_place(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(triggers_in_place(conn)? && counter_row_in_place(conn)?)
}

fn triggers_in_place(conn: &Connection) -> rusqlite::Result<bool> {
    let [insert, update, delete] = CHANGE_TRIGGERS;
    conn.query_row(
        "SELECT count(*) = 3 FROM sqlite_schema
         WHERE type = 'trigger' AND lower(tbl_name) = 'users' AND name IN (?1, ?2, ?3)",
        [insert, update, delete],
        |row| row.get(0),
    )
}

fn counter_row_in_place(conn: &Connection) -> rusqlite::Result<bool> {
    if !has_table(conn, "users_changes")? {
        return Ok(false);
    }
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM users_changes WHERE id = 1)",
        [],
        |row| row.get(0),
    )
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND lower(name) = lower(?1))",
        [name],
        |row| row.get(0),
    )
}

/// The value a counter row made anew starts from: the microseconds since 1970. A reader
/// tells a change by the counter differing from what it saw last; a row deleted and made
/// again from 0 could come back to that very value after as many changes, and the change
/// would be missed. Counting from the clock, it never comes back to a value seen before.
fn fresh_count() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX / 2)
        })
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

fn check_version(found: i64, path: &str) -> Result<(), DbError> {
    let known = current_version();
    if found > known {
        return Err(DbError::FutureVersion {
            path: path.to_owned(),
            found,
            known,
        });
    }
    Ok(())
}

/// The database file a long-lived connection reads or writes, and whether its path still
/// names it. A file deleted or replaced while the router runs (a backup restored with
/// `mv restored.db users.db`: a new file at the same path) stays open under its connections,
/// which would go on with it unseen by every command, which opens the path: the usage ledger
/// would write its rows where `llmsrouter usage` never looks, and the users index would
/// authenticate with keys revoked since. Each owner asks [`Self::check`] and opens the path
/// again ([`Self::reopen`]) when it names another file or none.
pub struct DbFile {
    path: PathBuf,
    /// The identity of the file followed (device and inode); `None` when there is none (or
    /// nothing to compare it with: see [`file_id`]).
    id: Option<(u64, u64)>,
    /// The path is looked at no more often than this.
    every: Duration,
    checked_at: Instant,
}

/// What the path of a [`DbFile`] names, as [`DbFile::check`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtPath {
    /// The file followed (or it was not looked at: checked less than `every` ago).
    Same,
    /// Another file than the one followed.
    Replaced,
    /// No file: deleted or moved away.
    Gone,
}

impl DbFile {
    /// Follows the file `path` names now (the caller has just opened it), looking at the path
    /// again at most once per `every`.
    pub fn new(path: &Path, every: Duration) -> Self {
        Self {
            path: path.to_path_buf(),
            id: file_id(path),
            every,
            checked_at: Instant::now(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the path names now compared with the file followed; [`AtPath::Same`] when it
    /// was looked at less than `every` ago (a `stat` otherwise).
    pub fn check(&mut self) -> AtPath {
        self.check_due().unwrap_or(AtPath::Same)
    }

    /// What the path names now, or `None` when it was looked at less than `every` ago.
    fn check_due(&mut self) -> Option<AtPath> {
        if self.checked_at.elapsed() < self.every {
            return None;
        }
        Some(self.check_now())
    }

    /// What the path names now (a `stat`), whenever it was last looked at.
    pub fn check_now(&mut self) -> AtPath {
        self.checked_at = Instant::now();
        match file_id(&self.path) {
            now if now == self.id => AtPath::Same,
            None => AtPath::Gone,
            Some(_) => AtPath::Replaced,
        }
    }

    /// Opens what the path names now with `open`, and follows that file from then on. The
    /// file is identified before it is opened: one replaced in between is found replaced at
    /// the next check, and opened again, rather than taken for the one opened.
    pub fn reopen<T, E>(&mut self, open: impl FnOnce(&Path) -> Result<T, E>) -> Result<T, E> {
        let before = file_id(&self.path);
        let opened = open(&self.path)?;
        // A file `open` made (there was none) is identified now.
        self.id = before.or_else(|| file_id(&self.path));
        Ok(opened)
    }

    /// Follows no file any more (the path names none, and the owner does not make one): the
    /// next file found at the path is [`AtPath::Replaced`].
    pub fn forget(&mut self) {
        self.id = None;
    }
}

/// The write-ahead log (`<database>-wal`) a connection in WAL mode has open, and whether its
/// path still names it. SQLite finds a database's log by name, beside the file, and keeps it
/// open: a log deleted (or replaced) while the router runs stays open under the router's
/// connections, which go on with it, while every other process (each command) makes and
/// uses a new one at that name through the same shared-memory index (`-shm`). The two logs
/// never meet again: the router no longer sees what commands change, they see the
/// router's writes wrongly, and a connection closed normally copies its orphaned log into
/// the database file over what the others wrote there (a malformed file). Owners of a
/// long-lived connection ask [`Self::intact`], stop using the connection while it says no,
/// and close it with [`close_without_checkpoint`] then.
pub struct WalFile {
    file: DbFile,
    /// The last look found another file, or none, at the log's path.
    lost: bool,
}

impl WalFile {
    /// The log `conn` has open (it has read the database since it opened it, as every
    /// [`open`] does), looked at again at most once per `every`; `None` for a connection
    /// with no log (a file read in rollback mode).
    pub fn of(conn: &Connection, every: Duration) -> Option<Self> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        // SQLite names the log after the full path it opened (`sqlite3_db_filename`).
        let path = PathBuf::from(format!("{}-wal", conn.path()?));
        let file = DbFile::new(&path, every);
        file.id.is_some().then_some(Self { file, lost: false })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Whether the log's path names the log the connection has open: looked at when the
    /// last look is `every` old, the last answer in between. A log put back (the very file)
    /// is intact again.
    pub fn intact(&mut self) -> bool {
        if let Some(at) = self.file.check_due() {
            self.lost = at != AtPath::Same;
        }
        !self.lost
    }

    /// [`Self::intact`], looking now: before the connection is closed.
    pub fn intact_now(&mut self) -> bool {
        self.lost = self.file.check_now() != AtPath::Same;
        !self.lost
    }
}

/// Makes `conn`, when it is closed, leave the database file and its log as they are: no
/// checkpoint (copying the log into the file) and no deletion of the log and of the
/// shared-memory index, which the last connection to a database otherwise does. For a
/// connection whose log is not the one at the log's path any more (see [`WalFile`]): its
/// changes not yet in the file (usage rows) are lost, and the file stays readable.
pub fn close_without_checkpoint(conn: &Connection) {
    if let Err(e) = conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    ) {
        tracing::debug!("cannot keep the connection from checkpointing as it closes: {e}");
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// No inode to compare: the file is taken to be the one opened.
#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_every_step() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = open(&dir.path().join("u.db")).expect("open");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, current_version());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn processes_opening_a_new_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("race.db");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || open(&path).map(|_| ()).map_err(|e| e.to_string()))
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("thread"), Ok(()));
        }
        let conn = open(&path).expect("open");
        assert_eq!(user_version(&conn).expect("version"), current_version());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_is_private_and_an_existing_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        for (name, opener) in [
            ("new", open as fn(&Path) -> Result<Connection, DbError>),
            ("read", open_to_read),
        ] {
            let path = dir.path().join(format!("{name}.db"));
            drop(opener(&path).expect("open"));
            assert!(path.exists(), "{name}");
            for suffix in ["", "-wal", "-shm"] {
                let Ok(meta) = std::fs::metadata(dir.path().join(format!("{name}.db{suffix}")))
                else {
                    continue;
                };
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}{suffix}");
            }
        }
        let shared = dir.path().join("shared.db");
        std::fs::write(&shared, b"").expect("create");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        drop(open(&shared).expect("open"));
        let mode = std::fs::metadata(&shared)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn a_python_made_file_is_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("users.db");
        {
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(
                "CREATE TABLE users (username TEXT PRIMARY KEY, api_key TEXT UNIQUE NOT NULL, email TEXT, permissions TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
                 INSERT INTO users VALUES ('ann', 'sk-old', NULL, '{\"*\": true}', '2024-01-01T00:00:00', '2024-01-01T00:00:00');",
            )
            .expect("python schema");
        }
        let conn = open(&path).expect("open");
        let key: String = conn
            .query_row("SELECT api_key FROM users WHERE username='ann'", [], |r| {
                r.get(0)
            })
            .expect("row");
        assert_eq!(key, "sk-old");
    }

    /// The earliest Python table, already at the current version (as an llmsrouter that did
    /// not add the column left it), opened by several processes at once: each succeeds, and
    /// the column is added once.
    #[test]
    fn a_users_table_without_permissions_gets_the_column_at_any_version() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("early.db");
        {
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(
                "CREATE TABLE users (username TEXT PRIMARY KEY, api_key TEXT UNIQUE NOT NULL, email TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
                 INSERT INTO users VALUES ('ann', 'sk-old', NULL, '2023-01-01T00:00:00', '2023-01-01T00:00:00');",
            )
            .expect("early schema");
            conn.pragma_update(None, "user_version", current_version())
                .expect("version");
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || open(&path).map(|_| ()).map_err(|e| e.to_string()))
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("thread"), Ok(()));
        }
        let conn = open(&path).expect("open");
        assert!(!lacks_permissions(&conn).expect("columns"));
        let permissions: Option<String> = conn
            .query_row(
                "SELECT permissions FROM users WHERE username = 'ann'",
                [],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(permissions, None);
    }

    /// Opening a file whose counting is in place writes nothing (the schema stays as it
    /// was, so a running server has no reason to reload); one whose triggers or row are gone
    /// gets them back, the row from a value never counted before.
    #[test]
    fn every_open_puts_the_change_counting_back_and_only_then_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let conn = open(&path).expect("open");
        let schema = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
                .expect("schema")
        };
        let before = schema(&conn);
        drop(open(&path).expect("again"));
        assert_eq!(schema(&conn), before);
        conn.execute_batch("DROP TRIGGER users_changed_on_delete; DELETE FROM users_changes;")
            .expect("lose them");
        assert!(!change_tracking_in_place(&conn).expect("gone"));
        drop(open(&path).expect("again"));
        assert!(change_tracking_in_place(&conn).expect("back"));
        let n: i64 = conn
            .query_row("SELECT n FROM users_changes", [], |r| r.get(0))
            .expect("n");
        assert!(n > 1_000_000_000_000_000, "{n}");
    }

    /// A ledger dropped from a file at the current version (whose steps never run again) is
    /// made again, with every column and its index, by an open that may write, and only when
    /// missing; an index dropped alone comes back too. A read-once open (`usage`) leaves the
    /// file as it is.
    #[test]
    fn a_dropped_ledger_is_made_again_by_an_open_that_may_write() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let conn = open(&path).expect("open");
        let columns = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM pragma_table_info('usage_ledger')",
                [],
                |r| r.get(0),
            )
            .expect("columns")
        };
        let full = columns(&conn);
        assert!(ledger_in_place(&conn).expect("made"));
        conn.execute_batch("DROP TABLE usage_ledger").expect("drop");
        drop(open_to_read_once(&path).expect("read"));
        assert!(!has_table(&conn, "usage_ledger").expect("still gone"));
        drop(open(&path).expect("again"));
        assert!(ledger_in_place(&conn).expect("made again"));
        assert_eq!(columns(&conn), full, "audio_seconds too");
        assert!(!ensure_ledger(&conn).expect("in place"));
        conn.execute_batch("DROP INDEX usage_ledger_day")
            .expect("drop index");
        assert!(!ensure_ledger(&conn).expect("only the index"));
        assert!(ledger_in_place(&conn).expect("index back"));
    }

    #[test]
    fn a_future_version_and_a_non_database_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).expect("create");
            conn.pragma_update(None, "user_version", 999).expect("set");
        }
        let err = open(&path).expect_err("future");
        assert!(err.to_string().contains("newer"), "{err}");
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096]).expect("write");
        let err = open(&junk).expect_err("junk");
        assert!(err.to_string().contains("not an SQLite database"), "{err}");
    }
}
