//! The in-memory key index the request path authenticates against, kept in step with the
//! database.
//!
//! A lookup hashes the presented key (SHA-256) and looks the hash up in a map that is swapped
//! whole ([`ArcSwap`]), so a request never sees half a reload. Before each lookup the index
//! asks SQLite whether any other connection committed since it last looked (`PRAGMA
//! data_version`: a read of the WAL index in shared memory, about a microsecond, never a
//! write and never a wait of more than [`CHECK_BUSY_TIMEOUT`]), and reloads the users when a
//! commit changed them. So `user delete`, `modify` and `rotate-key` (or an edit of the table
//! by hand) apply to the next request once the command has returned, with no restart, as
//! PRODUCT.md says. A background task does the same every [`REFRESH_INTERVAL`], so reloads
//! mostly happen off the request path. The index never holds or prints a key: only hashes.
//!
//! A lookup also asks whether the database's path still names the file the index reads (a
//! `stat`, see [`DbFile`]): a file put in its place while the server runs (a backup restored
//! with `mv restored.db users.db`) is opened and its users loaded instead, and while the path
//! names no file every key is refused, since the users held may have been revoked since.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::UserError;
use super::key::{KeyHash, hash_key};
use super::names::{StoredName, quoted};
use super::permissions::from_json;
use super::store::{key_readable, text};
use crate::auth::{Caller, KeyIndex, Permissions};
use crate::db::{AtPath, DbFile, WalFile};
use crate::sinks::{MAX_NAME_CHARS, clipped_chars};
use sha2::{Digest, Sha256};

/// How often the refresh task asks whether the database changed.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// Longest a lookup waits for SQLite (a WAL reader waits only while another connection
/// restarts the log); past it the lookup uses the users it has, and the refresh task retries.
pub const CHECK_BUSY_TIMEOUT: Duration = Duration::from_millis(10);

/// Key hash → the caller it authenticates.
pub struct UserIndex {
    callers: ArcSwap<HashMap<KeyHash, Caller>>,
    /// The database the index follows, asked before each lookup; `None` for a fixed index.
    follower: Option<Mutex<IndexRefresher>>,
}

impl UserIndex {
    pub fn empty() -> Self {
        Self {
            callers: ArcSwap::from_pointee(HashMap::new()),
            follower: None,
        }
    }

    /// An index that follows the database at `path`, which `conn` has just opened: loaded
    /// now, and brought up to date before each lookup and by [`Self::catch_up`].
    pub fn following(conn: Connection, path: &Path) -> rusqlite::Result<Self> {
        Self::following_every(conn, path, REFRESH_INTERVAL)
    }

    /// [`Self::following`], looking at what the path names at most once per `every`.
    fn following_every(conn: Connection, path: &Path, every: Duration) -> rusqlite::Result<Self> {
        conn.busy_timeout(CHECK_BUSY_TIMEOUT)?;
        let mut refresher = IndexRefresher::new(conn, path);
        refresher.file = DbFile::new(path, every);
        refresher.every = every;
        refresher.wal = WalFile::of(&refresher.conn, every);
        let index = Self::empty();
        refresher.refresh(&index)?;
        Ok(Self {
            follower: Some(Mutex::new(refresher)),
            ..index
        })
    }

    /// Reloads the users if the database changed since the last look. A read that waited
    /// too long for a lock keeps the users the index has; any other failure refuses every
    /// key until a read works (see [`IndexRefresher::tick`]).
    pub fn catch_up(&self) {
        if let Some(follower) = &self.follower {
            follower
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .tick(self);
        }
    }

    /// Number of users (with a key) in the index.
    pub fn len(&self) -> usize {
        self.callers.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every user: each key is refused until the users are loaded again.
    fn refuse_all(&self) {
        self.callers.store(Arc::new(HashMap::new()));
    }

    /// Replaces the whole index with the users in `conn`; returns how many were loaded.
    ///
    /// A key that several rows hold (possible once a tool rebuilt the table without its
    /// `UNIQUE`) signs in as the first of them, by rowid, as the Python version's lookup
    /// (`fetchone`) did; a warning names the users who share it (never the key), once per
    /// reload, that is once per change of the users.
    pub fn reload(&self, conn: &Connection) -> rusqlite::Result<usize> {
        let mut statement =
            conn.prepare("SELECT username, api_key, permissions FROM users ORDER BY rowid")?;
        let mut rows = statement.query([])?;
        let mut callers = HashMap::new();
        // The keys held by more than one row, with the names of those rows, first first.
        let mut shared: Vec<(KeyHash, Vec<String>)> = Vec::new();
        while let Some(row) = rows.next()? {
            // As `user list` prints it, so the request log, traces and the ledger name the
            // user as the CLI does (`<null>` rather than an empty name).
            // Cut to [`MAX_NAME_CHARS`] (see [`recorded_name`]): this is the name every record
            // of the user's requests carries (request log, ledger, traces), and a Python-era
            // 100 KB name would be written whole into each. Commands match the full name.
            let username = recorded_name(StoredName::from_sql(row.get_ref(0)?).shown());
            let key = match key_readable(row, 1)? {
                Ok(key) => key,
                Err(unusable) => {
                    // Quoted as every message names a user: escaped, so a name with a line
                    // break or a direction override cannot forge or garble the log line.
                    tracing::warn!(user = %quoted(&username), "{}", unusable.warning());
                    continue;
                }
            };
            let hash = hash_key(&key);
            if let Some(first) = callers.get(&hash) {
                note_shared(&mut shared, hash, first, username);
                continue;
            }
            let permissions = from_json(&text(row, 2)?).unwrap_or_else(|reason| {
                tracing::warn!(
                    user = %quoted(&username),
                    "permissions column cannot be read ({reason}); the user may use no provider until `llmsrouter user modify` fixes it"
                );
                Permissions::Only(Default::default())
            });
            let caller = Caller {
                user: Some(username),
                permissions,
            };
            callers.insert(hash, caller);
        }
        for (_, names) in &shared {
            warn_shared(names);
        }
        let count = callers.len();
        self.callers.store(Arc::new(callers));
        Ok(count)
    }
}

/// Adds `username` to the names that share the key `hash` with `first`, who signs in with it.
fn note_shared(
    shared: &mut Vec<(KeyHash, Vec<String>)>,
    hash: KeyHash,
    first: &Caller,
    username: String,
) {
    match shared.iter_mut().find(|(h, _)| *h == hash) {
        Some((_, names)) => names.push(username),
        None => {
            let first = first.user.clone().unwrap_or_default();
            shared.push((hash, vec![first, username]));
        }
    }
}

/// Says that the users `names` (the first one signs in) share one key.
fn warn_shared(names: &[String]) {
    let Some(first) = names.first() else {
        return;
    };
    let all: Vec<String> = names.iter().map(|name| quoted(name)).collect();
    tracing::warn!(
        "users {} have the same key: it signs in as {} (the first of them in the table, by rowid), never as the others; give each its own key (llmsrouter user rotate-key <username>)",
        all.join(", "),
        quoted(first),
    );
}

impl KeyIndex for UserIndex {
    fn find(&self, presented_key: &str) -> Option<Caller> {
        self.catch_up();
        let hash = hash_key(presented_key);
        self.callers.load().get(&hash).cloned()
    }
}

impl fmt::Debug for UserIndex {
    /// Only the size: the index holds key hashes, which are not for printing either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIndex")
            .field("users", &self.len())
            .finish()
    }
}

/// Reloads an index when its database changed. Owns its own connection: `data_version`
/// only reports commits made by *other* connections, and this one writes only to put the
/// change counting back ([`crate::db::ensure_change_tracking`]).
pub struct IndexRefresher {
    conn: Connection,
    /// The file `conn` reads, and whether its path still names it (asked before each look).
    file: DbFile,
    /// Why no file is read (every key refused), while none can be.
    detached: Option<Detached>,
    /// The log (`-wal`) `conn` has open, and whether its path still names it.
    wal: Option<WalFile>,
    /// The log's path named another file or none at the last look: every key is refused.
    log_lost: bool,
    /// How often the paths of the file and of its log are looked at.
    every: Duration,
    seen_version: Option<i64>,
    /// What the database looked like at the last reload; `None` before the first.
    seen: Option<Seen>,
    /// A refresh failed and that was said; the next success says it is over.
    failing: Option<Failing>,
}

/// What a failed refresh left the index with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failing {
    /// The users it had: the read waited too long for a lock (another connection's).
    Kept,
    /// None: every key is refused until a read works.
    Refused,
}

/// Whether `e` is a read that only waited too long for another connection (a lock, or
/// SQLite's retries of the log index under contention): worth keeping the users for, as
/// the next look tries again. Anything else (an I/O error, a malformed file, a missing
/// table) says the file cannot be read as it is.
fn is_contention(e: &rusqlite::Error) -> bool {
    crate::db::is_locked(e)
        || e.sqlite_error_code() == Some(rusqlite::ErrorCode::FileLockingProtocolFailed)
}

/// The schema version and the change counter (`users_changes.n`, `None` when it is gone),
/// and whether the counter could be trusted then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    schema: i64,
    changes: Option<i64>,
    /// The triggers that keep the counter were in place (see [`IndexRefresher::track`]).
    tracked: bool,
}

/// Why the refresher reads no file: see [`IndexRefresher::follow_the_path`].
enum Detached {
    /// The path names no file.
    Gone,
    /// The file at the path (`file`) cannot be opened: tried again once the path names
    /// another, or at `retry_at`.
    Unopenable { file: DbFile, retry_at: Instant },
}

impl IndexRefresher {
    /// A refresher of the database at `path`, which `conn` has just opened.
    pub fn new(conn: Connection, path: &Path) -> Self {
        Self {
            wal: WalFile::of(&conn, REFRESH_INTERVAL),
            log_lost: false,
            every: REFRESH_INTERVAL,
            conn,
            // Asked at most every REFRESH_INTERVAL (a look in between costs a clock read, not
            // a `stat` on every request): a file put in place is followed within that, as the
            // background refresh would anyway; a change made in the file read is seen at the
            // next request, as ever (`data_version`).
            file: DbFile::new(path, REFRESH_INTERVAL),
            detached: None,
            seen_version: None,
            seen: None,
            failing: None,
        }
    }

    /// Reloads `index` if the database changed since the last call (always on the first);
    /// returns whether it did. The version is read before the rows, so a commit landing in
    /// between is seen again on the next call rather than missed.
    ///
    /// Something committed; the ledger writes often. Only a change to `users` (counted by
    /// triggers, schema step 3) is worth a reload, read with the schema's version in the same
    /// statement. A changed schema may mean the triggers are gone (another tool rebuilt the
    /// users table: `DROP TABLE` takes its triggers along), and a counter whose row is gone
    /// counts nothing: either way the counting is put back and the users reloaded. A file
    /// read as it is (read-only, older than step 3) has no counter: every commit reloads
    /// (none comes from this router, which cannot write there).
    pub fn refresh(&mut self, index: &UserIndex) -> rusqlite::Result<bool> {
        // Cached: on the request path, preparing the statement would cost more than running it.
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        if self.seen_version == Some(version) {
            return Ok(false);
        }
        // The version is taken as seen only once it was read through: a failure (the users
        // table gone for a moment) is tried again at the next look, not passed over as
        // "no change" (and then said to be over) while the file stays as it was.
        let (schema, changes) = self.counter()?;
        if let Some(seen) = self.seen
            && seen.tracked
            && seen.schema == schema
            && changes.is_some()
            && seen.changes == changes
        {
            self.seen_version = Some(version);
            return Ok(false);
        }
        let now = match self.seen {
            Some(seen) if seen.tracked && seen.schema == schema && changes.is_some() => Seen {
                schema,
                changes,
                tracked: true,
            },
            _ => self.track()?,
        };
        let count = index.reload(&self.conn)?;
        if self.seen.is_some() {
            tracing::info!("users changed in the database; {count} users now");
        }
        self.seen = Some(now);
        self.seen_version = Some(version);
        Ok(true)
    }

    /// The schema version and the counter, in one statement (one read of the file). A
    /// counter whose table is gone reads as `None`, as one whose row is.
    fn counter(&self) -> rusqlite::Result<(i64, Option<i64>)> {
        let read = self
            .conn
            .prepare_cached(
                "SELECT (SELECT schema_version FROM pragma_schema_version),
                        (SELECT n FROM users_changes WHERE id = 1)",
            )
            .and_then(|mut statement| {
                statement.query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            });
        match read {
            Err(e) if !crate::db::is_locked(&e) => {
                let schema = self
                    .conn
                    .query_row("PRAGMA schema_version", [], |row| row.get(0))?;
                Ok((schema, None))
            }
            read => read,
        }
    }

    /// Puts the change counting back where it is gone and this connection may write (an
    /// attempt that fails, the lock held by another writer, is made again at the next
    /// commit); returns what the database looks like afterwards.
    fn track(&mut self) -> rusqlite::Result<Seen> {
        let writable = !self.conn.is_readonly(rusqlite::MAIN_DB)?;
        if writable && let Err(e) = crate::db::ensure_change_tracking(&self.conn) {
            tracing::debug!("cannot put back the counting of user changes yet: {e}");
        }
        let tracked = crate::db::change_tracking_in_place(&self.conn)?;
        let (schema, changes) = self.counter()?;
        Ok(Seen {
            schema,
            changes,
            tracked,
        })
    }

    /// After a failed refresh of a database the router may only read: its owner changed it
    /// in a way this connection cannot follow (an llmsrouter command brought the Python
    /// version's file to WAL mode, which a reader that cannot write its folder cannot
    /// open). The users it held may include a key since revoked, so they are not kept: the
    /// connection is opened anew, and if the users still cannot be read, every key is
    /// refused until they can (the failure is logged once, as a failing refresh is, and
    /// retried every tick). The failure is said as that refusal only: never also as a
    /// failure that keeps the previous users.
    fn refresh_read_only(
        &mut self,
        index: &UserIndex,
        failure: rusqlite::Error,
    ) -> rusqlite::Result<bool> {
        let reopened = self
            .conn
            .path()
            .map(|path| crate::db::open_to_read(std::path::Path::new(path)));
        if let Some(Ok(conn)) = reopened {
            conn.busy_timeout(CHECK_BUSY_TIMEOUT)?;
            self.read_from(conn, false);
            if let Ok(refreshed) = self.refresh(index) {
                return Ok(refreshed);
            }
        }
        // Said when keys are refused now, or when nothing was said of the failure yet.
        if !index.is_empty() || self.failing.is_none() {
            index.refuse_all();
            tracing::error!(
                "the users database changed and cannot be read ({failure}); every key is refused until it can be"
            );
        }
        self.failing = Some(Failing::Refused);
        Err(failure)
    }

    /// Whether the connection reads the file the path names now, as every command (which
    /// opens the path) does. A file put in its place (a backup restored with `mv`) is opened,
    /// and its users loaded instead of the old file's. While the path names no file, or one
    /// that cannot be opened, every key is refused: the users held are the old file's, and
    /// may have been revoked since (in the file now at the path, or in the one restored
    /// next). The path is asked again at each look; a file that could not be opened is
    /// tried again every [`REFRESH_INTERVAL`], and at once when another takes its place.
    fn follow_the_path(&mut self, index: &UserIndex) -> bool {
        let mut at = self.file.check();
        let log_intact = self.wal.as_mut().is_none_or(WalFile::intact);
        if at == AtPath::Same && !log_intact {
            // A file moved over the database takes its log along when the last connection
            // to the old file closes: the file is what changed, and is followed.
            at = self.file.check_now();
        }
        match at {
            AtPath::Same => self.detached.is_none() && self.log_state(index, log_intact),
            AtPath::Gone => {
                if self.detach(index, Detached::Gone) {
                    tracing::error!(
                        "{}: the users database was deleted or moved away while the router ran; every key is refused until one is there again",
                        self.file.path().display()
                    );
                }
                false
            }
            AtPath::Replaced if self.waits_to_retry() => false,
            AtPath::Replaced => self.reopen(index),
        }
    }

    /// Whether the log's path (`users.db-wal`) still names the log the connection has open
    /// (see [`WalFile`]), looked at as often as the file's path. While it names another file
    /// or none, every key is refused: the connection's log is one no other process sees, so
    /// a key revoked by a command since would still be found. That lasts until the router
    /// is restarted, or the very log is put back (then the users are read again).
    fn log_state(&mut self, index: &UserIndex, intact: bool) -> bool {
        let Some(wal) = &self.wal else {
            return true;
        };
        if intact != self.log_lost {
            return intact;
        }
        self.log_lost = !intact;
        if intact {
            self.seen_version = None;
            self.seen = None;
            tracing::info!(
                "{}: the database's log is back; users are read from the database again",
                wal.path().display()
            );
            return true;
        }
        index.refuse_all();
        tracing::error!(
            "{} was deleted (or replaced) while the router ran: the router's connection keeps the old log, which no other process sees, so every key is refused until the router is restarted; at shutdown the router closes the database without copying that log into it, so the file stays readable but loses what only that log held (usage ledger rows since the last checkpoint)",
            wal.path().display()
        );
        false
    }

    /// Reads from `conn` (just opened) from now on, all its users to be loaded. The
    /// connection it replaces is closed, without a checkpoint when its log was lost or
    /// (`replaced`) its file is not the one at the path any more: SQLite names the log
    /// after the path, so the old file's last connection would otherwise copy the log
    /// into the old file and then delete it, and with it the changes the commands made
    /// since in the new file, which share that log.
    fn read_from(&mut self, conn: Connection, replaced: bool) {
        if replaced || self.wal.as_mut().is_some_and(|wal| !wal.intact_now()) {
            crate::db::close_without_checkpoint(&self.conn);
        }
        self.wal = WalFile::of(&conn, self.every);
        self.log_lost = false;
        self.conn = conn;
        self.seen_version = None;
        self.seen = None;
    }

    /// Whether the file at the path is the one that could not be opened, tried less than
    /// [`REFRESH_INTERVAL`] ago.
    fn waits_to_retry(&mut self) -> bool {
        match &mut self.detached {
            Some(Detached::Unopenable { file, retry_at }) => {
                Instant::now() < *retry_at && file.check() == AtPath::Same
            }
            _ => false,
        }
    }

    /// Opens the file the path names now in place of the one read, and loads its users;
    /// returns whether it could be opened.
    fn reopen(&mut self, index: &UserIndex) -> bool {
        let opened = self.file.reopen(|path| -> Result<Connection, UserError> {
            let conn = crate::db::open_to_read(path)?;
            conn.busy_timeout(CHECK_BUSY_TIMEOUT)?;
            Ok(conn)
        });
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                let why = Detached::Unopenable {
                    file: DbFile::new(self.file.path(), Duration::ZERO),
                    retry_at: Instant::now() + REFRESH_INTERVAL,
                };
                if self.detach(index, why) {
                    tracing::error!(
                        "{}: the users database was replaced while the router ran, and the new file cannot be opened ({e}); every key is refused until it can be",
                        self.file.path().display()
                    );
                }
                return false;
            }
        };
        // The old file's users are not the new one's, even when the new one cannot be read.
        index.refuse_all();
        self.read_from(conn, true);
        self.detached = None;
        let refreshed = self.refresh(index);
        let path = self.file.path().display();
        match refreshed {
            Ok(_) => {
                self.failing = None;
                tracing::warn!(
                    "{path}: the users database was replaced while the router ran; the users are read from the file at that path now ({} users)",
                    index.len()
                );
            }
            Err(e) => {
                self.failing = Some(Failing::Refused);
                tracing::error!(
                    "{path}: the users database was replaced while the router ran, and its users cannot be read ({e}); every key is refused until they can be"
                );
            }
        }
        true
    }

    /// Refuses every key while no file can be read at the path; returns whether `why` is
    /// new (to be said: once, not at every look). The file read is not followed any more:
    /// whatever file is at the path next (the very one put back too) is opened anew.
    fn detach(&mut self, index: &UserIndex, why: Detached) -> bool {
        index.refuse_all();
        self.file.forget();
        let new = std::mem::discriminant(&why);
        self.detached
            .replace(why)
            .is_none_or(|was| std::mem::discriminant(&was) != new)
    }

    /// One look (before a lookup, and every tick of the task); a failure is said once, not
    /// at every look, and tried again at the next. A read that waited too long for another
    /// connection's lock ([`CHECK_BUSY_TIMEOUT`]) keeps the users the index has. Any other
    /// failure (an I/O error, a malformed file: the file cannot be read as it is) refuses
    /// every key until a read works, as while the path names no file: the users held may
    /// have been revoked since, and a revoked key must not sign in for as long as the file
    /// stays unreadable. A database the router may only read is handled by
    /// [`Self::refresh_read_only`].
    fn tick(&mut self, index: &UserIndex) {
        if !self.follow_the_path(index) {
            return;
        }
        let refreshed = match self.refresh(index) {
            Err(e) if self.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) => {
                match self.refresh_read_only(index, e) {
                    // Said, with every key refused.
                    Err(_) => return,
                    refreshed => refreshed,
                }
            }
            refreshed => refreshed,
        };
        match refreshed {
            Ok(_) => {
                if self.failing.take().is_some() {
                    tracing::info!("users are read from the database again");
                }
            }
            Err(e) if is_contention(&e) => {
                if self.failing.is_none() {
                    self.failing = Some(Failing::Kept);
                    tracing::warn!(
                        "cannot re-read the users ({e}); the previous users stay in force until it works again"
                    );
                }
            }
            Err(e) => {
                index.refuse_all();
                // Every user is loaded again once a read works, changed or not.
                self.seen_version = None;
                self.seen = None;
                if self.failing.replace(Failing::Refused) != Some(Failing::Refused) {
                    tracing::error!(
                        "cannot re-read the users ({e}); every key is refused until they can be read, since the users the server holds may have been revoked since"
                    );
                }
            }
        }
    }
}

impl Drop for IndexRefresher {
    /// A connection whose log was deleted or replaced while the router ran is closed
    /// without copying that log into the database (see [`WalFile`]).
    fn drop(&mut self) {
        if let Some(wal) = &mut self.wal
            && !wal.intact_now()
        {
            crate::db::close_without_checkpoint(&self.conn);
        }
    }
}

/// The refresh task; [`RefreshTask::shutdown`] stops it and waits for it.
pub struct RefreshTask {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl RefreshTask {
    /// Starts bringing `index` up to date every `every`. Needs a Tokio runtime; the SQLite
    /// work runs on the blocking pool.
    pub fn start(index: Arc<UserIndex>, every: Duration) -> Self {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        tracker.spawn(refresh_loop(index, every, stop.clone()));
        tracker.close();
        Self { tracker, stop }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.wait().await;
    }
}

async fn refresh_loop(index: Arc<UserIndex>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let index = index.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || index.catch_up()).await {
            tracing::error!(
                "the user refresh task failed ({e}); users are still re-read before each request"
            );
            return;
        }
    }
}

/// What `serve` runs with account management on: opens the database, loads every user and
/// starts the refresh task. Needs a Tokio runtime.
pub fn start(path: &Path) -> Result<(Arc<UserIndex>, RefreshTask), UserError> {
    let conn = crate::db::open_to_read(path)?;
    warn_when_others_may_read(path);
    let index = Arc::new(UserIndex::following(conn, path)?);
    let task = RefreshTask::start(index.clone(), REFRESH_INTERVAL);
    Ok((index, task))
}

/// The database holds every user's key in the clear (as the Python version's did). A file
/// others may read, made so by hand or by an earlier build that created it with the umask's
/// mode, is kept as it is (its mode is the administrator's), but said once at start-up.
fn warn_when_others_may_read(path: &Path) {
    if let Some(warning) = others_may_read(path) {
        tracing::warn!("{warning}");
    }
}

/// The warning for a users database others may read (see [`warn_when_others_may_read`]), for
/// `serve`'s log and `check`'s stderr alike; `None` when only its owner's group or its owner
/// may, or it cannot be looked at.
pub fn others_may_read(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then(|| {
            format!(
                "{}: other users of this machine may read it (mode {mode:04o}), and it holds \
                 every user key; `chmod 600` it unless that is meant",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Hex digits of a long name's hash kept in its recorded form.
const NAME_HASH_HEX: usize = 16;

/// The name a user's records carry: the name as `user list` shows it, or, past
/// [`MAX_NAME_CHARS`], its first characters, `…#` and 16 hex digits of its SHA-256, within
/// that length: two names that begin alike for 1,024 characters were recorded as one, and
/// `usage --by user` added them up (bb57).
fn recorded_name(name: String) -> String {
    if name.chars().nth(MAX_NAME_CHARS).is_none() {
        return name;
    }
    let hash: String = Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let kept = clipped_chars(Cow::Borrowed(&name), MAX_NAME_CHARS - NAME_HASH_HEX - 2);
    format!("{kept}…#{}", &hash[..NAME_HASH_HEX])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::store::{NewUser, OpenMode, UserStore};

    #[test]
    fn a_long_name_is_recorded_cut_and_told_apart() {
        assert_eq!(recorded_name("ann".into()), "ann");
        let exact = "n".repeat(MAX_NAME_CHARS);
        assert_eq!(recorded_name(exact.clone()), exact);
        let alice = format!("{}-alice", "a".repeat(MAX_NAME_CHARS));
        let bob = format!("{}-bob", "a".repeat(MAX_NAME_CHARS));
        let (alice, bob) = (recorded_name(alice), recorded_name(bob));
        assert_ne!(alice, bob);
        for name in [&alice, &bob] {
            assert_eq!(name.chars().count(), MAX_NAME_CHARS, "{name}");
            assert!(name.starts_with(&"a".repeat(1000)), "{name}");
            assert!(name.contains("…#"), "{name}");
        }
    }

    #[test]
    fn finds_by_key_and_follows_changes_made_elsewhere() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut store = UserStore::open(&path, OpenMode::Create).expect("store");
        let ann_key = store
            .add(&NewUser {
                username: "ann".into(),
                email: None,
                permissions: Permissions::Only(["a".to_owned()].into()),
            })
            .expect("add");

        let index = UserIndex::empty();
        let mut refresher = IndexRefresher::new(crate::db::open(&path).expect("open"), &path);
        assert!(refresher.refresh(&index).expect("first load"));
        let ann = index.find(ann_key.expose()).expect("ann");
        assert_eq!(ann.user.as_deref(), Some("ann"));
        assert!(ann.may_use("a") && !ann.may_use("b"));
        assert!(index.find("sk-lr-wrong").is_none());
        assert!(!refresher.refresh(&index).expect("unchanged"));

        let new_key = store.rotate_key("ann").expect("rotate");
        assert!(refresher.refresh(&index).expect("changed"));
        assert!(index.find(ann_key.expose()).is_none());
        assert!(index.find(new_key.expose()).is_some());

        // A write elsewhere in the database (the usage ledger's) is not a users change. (A
        // change of the schema is, whatever it changed: the users table may have been
        // rebuilt.)
        let other = crate::db::open(&path).expect("open");
        other
            .execute_batch("CREATE TABLE IF NOT EXISTS scratch (x);")
            .expect("create");
        assert!(refresher.refresh(&index).expect("schema changed"));
        other
            .execute_batch("INSERT INTO scratch VALUES (1);")
            .expect("write");
        assert!(
            !refresher
                .refresh(&index)
                .expect("no reload for other tables")
        );

        // A writer that knows nothing of the counter (the Python version's) still counts.
        other
            .execute(
                "UPDATE users SET permissions = '{\"*\": true}' WHERE username = 'ann'",
                [],
            )
            .expect("plain update");
        assert!(refresher.refresh(&index).expect("changed"));
        assert!(index.find(new_key.expose()).is_some_and(|c| c.may_use("b")));

        store.delete("ann").expect("delete");
        assert!(refresher.refresh(&index).expect("changed"));
        assert!(index.is_empty());
    }

    /// Another tool rebuilds the users table (dropping its triggers) or empties the counter:
    /// the refresher reloads (a changed schema, a missing counter are changes) and puts the
    /// counting back, so a later plain delete is counted again.
    #[test]
    fn a_rebuilt_table_and_an_emptied_counter_are_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut store = UserStore::open(&path, OpenMode::Create).expect("store");
        let user = |name: &str| NewUser {
            username: name.into(),
            email: None,
            permissions: Permissions::All,
        };
        let ann = store.add(&user("ann")).expect("ann");
        let bob = store.add(&user("bob")).expect("bob");
        let index = UserIndex::empty();
        let mut refresher = IndexRefresher::new(crate::db::open(&path).expect("open"), &path);
        assert!(refresher.refresh(&index).expect("first load"));
        let other = Connection::open(&path).expect("other");
        other
            .execute_batch(
                "BEGIN;
                 CREATE TABLE users_new AS SELECT * FROM users;
                 DROP TABLE users;
                 ALTER TABLE users_new RENAME TO users;
                 COMMIT;",
            )
            .expect("rebuild");
        assert!(!crate::db::change_tracking_in_place(&other).expect("gone"));
        assert!(refresher.refresh(&index).expect("schema changed"));
        assert!(crate::db::change_tracking_in_place(&other).expect("put back"));
        other
            .execute("DELETE FROM users WHERE username = 'ann'", [])
            .expect("delete");
        assert!(refresher.refresh(&index).expect("counted"));
        assert!(index.find(ann.expose()).is_none());

        other
            .execute_batch("DELETE FROM users_changes; DELETE FROM users WHERE username = 'bob';")
            .expect("empty the counter");
        assert!(refresher.refresh(&index).expect("counter gone"));
        assert!(index.find(bob.expose()).is_none());
        assert!(crate::db::change_tracking_in_place(&other).expect("row made again"));
        assert!(!refresher.refresh(&index).expect("nothing new"));
    }

    /// A users table gone for a while (renamed away by another tool) fails every look until
    /// it is back, not only the first: the second used to pass as "no change", and the
    /// task logged that the users were read again while the table was still missing.
    #[test]
    fn a_missing_users_table_fails_every_look_until_it_is_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut store = UserStore::open(&path, OpenMode::Create).expect("store");
        let ann = store
            .add(&NewUser {
                username: "ann".into(),
                email: None,
                permissions: Permissions::All,
            })
            .expect("ann");
        let index = UserIndex::empty();
        let mut refresher = IndexRefresher::new(crate::db::open(&path).expect("open"), &path);
        assert!(refresher.refresh(&index).expect("first load"));
        let other = Connection::open(&path).expect("other");
        other
            .execute_batch("ALTER TABLE users RENAME TO users_bak")
            .expect("away");
        assert!(refresher.refresh(&index).is_err(), "gone");
        assert!(refresher.refresh(&index).is_err(), "still gone");
        assert!(
            index.find(ann.expose()).is_some(),
            "the previous users stay"
        );
        other
            .execute_batch("ALTER TABLE users_bak RENAME TO users")
            .expect("back");
        assert!(refresher.refresh(&index).expect("read again"));
        assert!(index.find(ann.expose()).is_some());
    }

    /// Another file moved to the database's path is read from the next lookup on; while
    /// the path names no file, or one that is not a database, every key is refused (the
    /// previous users are not kept); a database put back there is read again at once.
    #[test]
    fn the_file_at_the_path_is_the_one_read() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let user = |name: &str| NewUser {
            username: name.into(),
            email: None,
            permissions: Permissions::All,
        };
        let ann = UserStore::open(&path, OpenMode::Create)
            .expect("store")
            .add(&user("ann"))
            .expect("ann");
        // Looking at the path at every lookup, for the test; the server looks every 200 ms.
        let index = UserIndex::following_every(
            crate::db::open(&path).expect("open"),
            &path,
            Duration::ZERO,
        )
        .expect("index");
        assert!(index.find(ann.expose()).is_some());

        let copy = dir.path().join("copy.db");
        let bob = UserStore::open(&copy, OpenMode::Create)
            .expect("store")
            .add(&user("bob"))
            .expect("bob");
        std::fs::rename(&copy, &path).expect("mv copy.db u.db");
        assert!(index.find(ann.expose()).is_none(), "the old file's user");
        assert!(index.find(bob.expose()).is_some(), "the new file's user");

        let away = dir.path().join("away.db");
        std::fs::rename(&path, &away).expect("mv u.db away.db");
        assert!(index.find(bob.expose()).is_none(), "no file at the path");
        assert!(!path.exists(), "the index does not make one");
        std::fs::write(&path, "not a database").expect("write");
        assert!(index.find(bob.expose()).is_none(), "not a database");
        assert!(index.find(bob.expose()).is_none(), "still not one");
        std::fs::rename(&away, &path).expect("mv away.db u.db");
        assert!(index.find(bob.expose()).is_some(), "back");

        // The very file read, put back over one that could not be opened, is read again.
        let read = dir.path().join("read.db");
        std::fs::hard_link(&path, &read).expect("ln u.db read.db");
        std::fs::write(dir.path().join("junk"), "not a database").expect("write");
        std::fs::rename(dir.path().join("junk"), &path).expect("mv junk u.db");
        assert!(index.find(bob.expose()).is_none(), "not a database");
        std::fs::rename(&read, &path).expect("mv read.db u.db");
        assert!(index.find(bob.expose()).is_some(), "the file read, back");
    }

    /// A look that fails with anything but a lock (here the users table renamed away: the
    /// file cannot be read as it is) refuses every key until a read works, since the users
    /// held may have been revoked since.
    #[test]
    fn a_failed_read_refuses_every_key_until_one_works() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let ann = UserStore::open(&path, OpenMode::Create)
            .expect("store")
            .add(&NewUser {
                username: "ann".into(),
                email: None,
                permissions: Permissions::All,
            })
            .expect("ann");
        let index =
            UserIndex::following(crate::db::open(&path).expect("open"), &path).expect("index");
        assert!(index.find(ann.expose()).is_some());
        let other = Connection::open(&path).expect("other");
        other
            .execute_batch("ALTER TABLE users RENAME TO users_bak")
            .expect("away");
        assert!(index.find(ann.expose()).is_none(), "unreadable: refused");
        assert!(index.find(ann.expose()).is_none(), "still");
        other
            .execute_batch("ALTER TABLE users_bak RENAME TO users")
            .expect("back");
        assert!(index.find(ann.expose()).is_some(), "read again");
    }

    /// The database's log (`-wal`) deleted while the index reads the file: its connection
    /// keeps the old log, which the commands no longer see, so every key is refused (a key
    /// revoked since would be found); the very log put back is read again.
    #[cfg(unix)]
    #[test]
    fn a_deleted_log_refuses_every_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let ann = UserStore::open(&path, OpenMode::Create)
            .expect("store")
            .add(&NewUser {
                username: "ann".into(),
                email: None,
                permissions: Permissions::All,
            })
            .expect("ann");
        let index = UserIndex::following_every(
            crate::db::open(&path).expect("open"),
            &path,
            Duration::ZERO,
        )
        .expect("index");
        assert!(index.find(ann.expose()).is_some());
        let wal = dir.path().join("u.db-wal");
        let kept = dir.path().join("kept-wal");
        std::fs::hard_link(&wal, &kept).expect("ln u.db-wal kept-wal");
        std::fs::remove_file(&wal).expect("rm u.db-wal");
        assert!(index.find(ann.expose()).is_none(), "log deleted");
        std::fs::write(&wal, b"").expect("a new log");
        assert!(index.find(ann.expose()).is_none(), "another log");
        std::fs::rename(&kept, &wal).expect("mv kept-wal u.db-wal");
        assert!(index.find(ann.expose()).is_some(), "the log put back");
    }

    #[test]
    fn unreadable_permissions_grant_nothing_and_debug_shows_no_key() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = crate::db::open(&dir.path().join("u.db")).expect("open");
        conn.execute_batch(
            "INSERT INTO users VALUES ('ann', 'legacy-key-1', NULL, 'oops', '2024-01-01T00:00:00', '2024-01-01T00:00:00');
             INSERT INTO users VALUES ('bob', 'legacy-key-2', NULL, '{\"a\": true, \"b\": false}', '2024-01-01T00:00:00', '2024-01-01T00:00:00');",
        )
        .expect("rows");
        let index = UserIndex::empty();
        assert_eq!(index.reload(&conn).expect("load"), 2);
        let ann = index.find("legacy-key-1").expect("ann");
        assert!(!ann.may_use("a"));
        let bob = index.find("legacy-key-2").expect("bob");
        assert!(bob.may_use("a") && !bob.may_use("b"));
        let debug = format!("{index:?} {ann:?} {bob:?}");
        assert!(!debug.contains("legacy-key"), "{debug}");
    }

    #[tokio::test]
    async fn the_task_picks_up_a_change_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut store = UserStore::open(&path, OpenMode::Create).expect("store");
        let (index, task) = start(&path).expect("start");
        assert!(index.is_empty());
        let key = store
            .add(&NewUser {
                username: "ann".into(),
                email: None,
                permissions: Permissions::All,
            })
            .expect("add");
        // `len` does not catch up itself: the task must have.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while index.is_empty() {
            assert!(std::time::Instant::now() < deadline, "not picked up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(index.find(key.expose()).is_some());
        task.shutdown().await;
    }

    #[test]
    fn a_following_index_sees_each_change_at_the_next_lookup() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut store = UserStore::open(&path, OpenMode::Create).expect("store");
        let index =
            UserIndex::following(crate::db::open(&path).expect("open"), &path).expect("index");
        for round in 0..20 {
            let key = store
                .add(&NewUser {
                    username: format!("u{round}"),
                    email: None,
                    permissions: Permissions::Only(["a".to_owned()].into()),
                })
                .expect("add");
            assert!(index.find(key.expose()).is_some_and(|c| !c.may_use("b")));
            store
                .set_permissions(&format!("u{round}"), &Permissions::All)
                .expect("modify");
            assert!(index.find(key.expose()).is_some_and(|c| c.may_use("b")));
            let rotated = store.rotate_key(&format!("u{round}")).expect("rotate");
            assert!(index.find(key.expose()).is_none());
            store.delete(&format!("u{round}")).expect("delete");
            assert!(index.find(rotated.expose()).is_none());
        }
    }
}
