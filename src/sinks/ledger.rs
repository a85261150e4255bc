//! The usage ledger: one row per routed request in the `usage_ledger` table of the SQLite db
//! (LLMSROUTER_DB, schema step 2 in `db::MIGRATIONS`), and the queries `llmsrouter usage`
//! reports from.
//!
//! `accept` turns the record into a small row and queues it; one writer thread with its own
//! connection inserts rows in batches (one transaction per batch), so SQLite never runs on
//! the request path. Closing drains the queue and commits before returning. Texts that could
//! echo a key (error messages, model names) are redacted before they are stored.
//!
//! A batch refused because another process holds the write lock (an admin's `sqlite3`
//! transaction, a VACUUM) is kept and retried until it is written: one row per request is
//! the contract, and a lock ends. Only what overflows the queue meanwhile is dropped, and
//! at shutdown what the lock still blocks after [`CLOSE_DEADLINE`] is counted as failed.

use std::borrow::Cow;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ToSql, params_from_iter};

use crate::db::{self, AtPath, DbError, DbFile, WalFile};
use crate::record::{Outcome, RecordSink, RequestRecord};
use crate::sinks::clock::{rfc3339_millis, utc_day};
use crate::sinks::loss::LossWarnings;
use crate::sinks::redact::Redactor;
use crate::sinks::{BATCH_WINDOW, Batch, MAX_NAME_CHARS, QueueRx, WriterQueue, clipped_chars};

/// Rows waiting for the writer before new ones are dropped (and counted). Rows are small.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Most rows in one transaction.
const MAX_BATCH: usize = 2048;
/// Longest error text stored.
const MAX_ERROR_CHARS: usize = 1000;
/// How long the ledger waits for a locked database once shutdown began, beyond which the
/// rows it still holds are counted as failed: shutdown must end, even under a lock that
/// does not.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(20);
/// First and longest pause between two attempts at a batch the database refused: each
/// attempt itself already waits up to the busy timeout for the lock.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long the writer waits for a locked database: in an attempt (SQLite's busy timeout),
/// and in all once shutdown began. Tests shorten them; `serve` uses [`Self::default`].
#[derive(Debug, Clone, Copy)]
pub struct LedgerWaits {
    pub busy_timeout: Duration,
    pub close_deadline: Duration,
    /// Loss warnings come at most this often.
    pub warning_interval: Duration,
}

impl Default for LedgerWaits {
    fn default() -> Self {
        Self {
            busy_timeout: db::BUSY_TIMEOUT,
            close_deadline: CLOSE_DEADLINE,
            warning_interval: crate::sinks::loss::DEFAULT_WARNING_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database cannot take the ledger. Said without naming `--db` or `LLMSROUTER_DB`:
    /// only the command line knows which of them gave the path.
    #[error("{0}{way_out}", way_out = read_only_way_out(.0))]
    Db(#[from] DbError),
    #[error("usage ledger: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the usage ledger writer thread: {0}")]
    Thread(std::io::Error),
}

/// A database this user may only read can still serve the users table, without the ledger;
/// one that cannot be created is only needed for the ledger when accounts are off.
fn read_only_way_out(error: &DbError) -> &'static str {
    match error {
        DbError::ReadOnly { .. } | DbError::Folder { exists: true, .. } => {
            "; the usage ledger writes its rows there: LLMSROUTER_LEDGER=false serves without it, reading the file as it is"
        }
        DbError::Folder { exists: false, .. } => {
            "; the usage ledger keeps its rows there: give --db (LLMSROUTER_DB) a path this user may write, or LLMSROUTER_LEDGER=false to serve without it"
        }
        _ => "",
    }
}

/// One ledger row, as stored. Its texts borrow from the record it was read from, so writing a
/// row copies each text once, into SQLite.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow<'a> {
    pub request_id: Cow<'a, str>,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    /// UTC day of `started_at`, `YYYY-MM-DD`.
    pub day: String,
    pub username: Option<Cow<'a, str>>,
    pub provider: Cow<'a, str>,
    pub mode: &'static str,
    pub endpoint: Cow<'a, str>,
    /// The model name sent upstream.
    pub model: Cow<'a, str>,
    pub response_model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub status: Option<u16>,
    pub outcome: &'static str,
    pub error: Option<Cow<'a, str>>,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: i64,
    pub cache_creation_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Option<f64>,
    /// The upstream reported usage (else the token columns are 0 because unknown).
    pub usage_known: bool,
    /// Cut before the usage arrived: see [`RequestRecord::usage_partial`].
    pub usage_partial: bool,
    /// Seconds of audio of a transcription billed by duration (no tokens), fraction and all;
    /// `None` for any other request. The column's INTEGER affinity stores a whole number as
    /// an integer and keeps any other as a REAL (SQLite converts only when nothing is lost).
    pub audio_seconds: Option<f64>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<'a> LedgerRow<'a> {
    /// The row holding its own text, for the writer's queue.
    pub fn into_owned(self) -> LedgerRow<'static> {
        let own = |text: Cow<'a, str>| Cow::Owned(text.into_owned());
        LedgerRow {
            request_id: own(self.request_id),
            username: self.username.map(own),
            provider: own(self.provider),
            endpoint: own(self.endpoint),
            model: own(self.model),
            response_model: self.response_model.map(own),
            error: self.error.map(own),
            started_at: self.started_at,
            day: self.day,
            mode: self.mode,
            stream: self.stream,
            status: self.status,
            outcome: self.outcome,
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.cached_tokens,
            cache_creation_tokens: self.cache_creation_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cost: self.cost,
            usage_known: self.usage_known,
            usage_partial: self.usage_partial,
            audio_seconds: self.audio_seconds,
        }
    }

    pub fn from_record(record: &'a RequestRecord, redactor: &Redactor) -> Self {
        let redactor = redactor.for_record(&record.secrets);
        let usage = record.response.usage.as_ref();
        let count = |f: fn(&crate::usage::Usage) -> u64| usage.map_or(0, |u| to_i64(f(u)));
        Self {
            request_id: Cow::Borrowed(&record.request_id),
            started_at: rfc3339_millis(record.started_at),
            day: utc_day(record.started_at),
            username: record.user.as_deref().map(Cow::Borrowed),
            provider: Cow::Borrowed(&record.provider),
            mode: record.mode.as_str(),
            // The path may hold a key (`/threads/<key>/runs`, percent-encoded or not), as the
            // log's may.
            endpoint: clipped_chars(redactor.redact_path(&record.endpoint), MAX_NAME_CHARS),
            model: clipped_chars(redactor.redact(&record.upstream_model), MAX_NAME_CHARS),
            // The upstream's echo of the model name may hold what the client put in it.
            response_model: record
                .response
                .model
                .as_deref()
                .map(|m| clipped_chars(redactor.redact(m), MAX_NAME_CHARS)),
            stream: record.stream,
            status: record.status,
            outcome: record.outcome.as_str(),
            // Redacted whole, then cut: a key that crosses the cut is still found.
            error: record.error_note().map(|e| match e {
                Cow::Borrowed(e) => clipped_chars(redactor.redact(e), MAX_ERROR_CHARS),
                // The note is the router's own words: nothing in it to redact.
                Cow::Owned(note) => clipped_chars(Cow::Owned(note), MAX_ERROR_CHARS),
            }),
            latency_ms: millis(record.latency()),
            ttft_ms: record.time_to_first_token().map(millis),
            input_tokens: count(|u| u.input),
            output_tokens: count(|u| u.output),
            total_tokens: count(|u| u.total),
            cached_tokens: count(|u| u.cached_input),
            cache_creation_tokens: count(|u| u.cache_creation_input),
            reasoning_tokens: count(|u| u.reasoning),
            cost: usage.and_then(|u| u.cost),
            usage_known: usage.is_some(),
            usage_partial: record.usage_partial(),
            audio_seconds: usage.and_then(|u| u.audio_seconds),
        }
    }
}

/// Whether an outcome counts as an error in reports. A client that left is not one.
pub fn is_error_outcome(outcome: &str) -> bool {
    outcome != Outcome::Success.as_str() && outcome != Outcome::ClientDisconnected.as_str()
}

const COLUMNS: &str = "request_id, started_at, day, username, provider, mode, endpoint, \
    model, response_model, stream, status, outcome, error, latency_ms, ttft_ms, input_tokens, \
    output_tokens, total_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens, cost, \
    usage_known, usage_partial, audio_seconds";
/// Values per row, in the order of [`COLUMNS`] and [`LedgerRow::values`].
const VALUES_PER_ROW: usize = 25;
/// Rows per INSERT statement, largest first: a batch is cut into chunks of these sizes. One
/// statement for many rows pays SQLite's per-statement work (reset, unbind, halt: about a
/// fifth of a row's cost) once per chunk. Each size's statement is prepared once and cached
/// (six of them, within rusqlite's cache of 16). 32 rows are 800 parameters, far under
/// SQLite's limit of 32,766.
const CHUNK_SIZES: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// The INSERT statement of each of [`CHUNK_SIZES`], in that order: written once.
static INSERT_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| CHUNK_SIZES.iter().map(|n| insert_sql(*n)).collect());

/// `INSERT OR FAIL INTO usage_ledger (...) VALUES (?, ...), ...` for `rows` rows.
///
/// `OR FAIL`, not the default `ABORT`: a statement that may abort halfway through several rows
/// makes SQLite copy every page it touches into a statement journal first, to undo just that
/// statement (about 7% of a row's cost, measured with 32-row statements). Undoing one statement
/// is never needed here: a failed statement fails its whole batch's transaction, which is
/// rolled back and retried as a whole, so no part of a batch is ever kept on its own.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; VALUES_PER_ROW].join(","));
    format!(
        "INSERT OR FAIL INTO usage_ledger ({COLUMNS}) VALUES {}",
        vec![row; rows].join(",")
    )
}

impl LedgerRow<'_> {
    /// The row's values in the order of [`COLUMNS`].
    fn values(&self) -> [&dyn ToSql; VALUES_PER_ROW] {
        [
            &self.request_id,
            &self.started_at,
            &self.day,
            &self.username,
            &self.provider,
            &self.mode,
            &self.endpoint,
            &self.model,
            &self.response_model,
            &self.stream,
            &self.status,
            &self.outcome,
            &self.error,
            &self.latency_ms,
            &self.ttft_ms,
            &self.input_tokens,
            &self.output_tokens,
            &self.total_tokens,
            &self.cached_tokens,
            &self.cache_creation_tokens,
            &self.reasoning_tokens,
            &self.cost,
            &self.usage_known,
            &self.usage_partial,
            &self.audio_seconds,
        ]
    }
}

/// Inserts `rows` in one transaction, in chunks of [`CHUNK_SIZES`] rows per statement.
pub fn insert_rows<'a, R: std::borrow::Borrow<LedgerRow<'a>>>(
    conn: &mut Connection,
    rows: &[R],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut rest = rows;
    for (size, sql) in CHUNK_SIZES.iter().copied().zip(INSERT_SQL.iter()) {
        if rest.len() < size {
            continue;
        }
        let mut insert = tx.prepare_cached(sql)?;
        while rest.len() >= size {
            let (chunk, after) = rest.split_at(size);
            insert.execute(params_from_iter(
                chunk.iter().flat_map(|r| r.borrow().values()),
            ))?;
            rest = after;
        }
    }
    tx.commit()
}

/// Counters of the ledger writer.
#[derive(Debug, Default)]
pub struct LedgerStats {
    written: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

impl LedgerStats {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Rows lost to a database error: one that is not a lock, after one retry; or a lock
    /// still held at the end of [`CLOSE_DEADLINE`] at shutdown.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Attempts at a batch that the database refused because another connection held the
    /// lock; the batch was kept for the next attempt.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

pub struct LedgerSink {
    /// Each record's row, read from it here: the writer may wait long on a lock with its
    /// queue full, and a queue of records would hold their bodies meanwhile, which count
    /// against the budget every sink's records share (a held lock cost the request log and
    /// Langfuse their prompts and answers; bb61).
    queue: WriterQueue<LedgerRow<'static>>,
    redactor: Redactor,
    stats: Arc<LedgerStats>,
    /// When shutdown began: from then on the writer waits for a lock for at most
    /// [`LedgerWaits::close_deadline`].
    closing: Arc<OnceLock<Instant>>,
    /// How long shutdown waits for the writer: its own deadline for a lock, one attempt's
    /// busy timeout past it, and a margin for the batch under way.
    close_limit: Duration,
}

impl LedgerSink {
    /// Opens (creating and migrating) the database at `path` and starts the writer.
    pub fn start(path: &Path, redactor: Redactor) -> Result<Self, LedgerError> {
        Self::start_waiting(path, redactor, LedgerWaits::default())
    }

    /// [`Self::start`] with other waits for a locked database.
    pub fn start_waiting(
        path: &Path,
        redactor: Redactor,
        waits: LedgerWaits,
    ) -> Result<Self, LedgerError> {
        let conn = db::open(path)?;
        conn.busy_timeout(waits.busy_timeout)?;
        let stats = Arc::new(LedgerStats::default());
        let closing = Arc::new(OnceLock::new());
        let writer = Writer {
            file: DbFile::new(path, REPLACED_CHECK),
            wal: WalFile::of(&conn, REPLACED_CHECK),
            log_lost: false,
            stats: stats.clone(),
            closing: closing.clone(),
            close_deadline: waits.close_deadline,
            busy_timeout: waits.busy_timeout,
            lock_warned: None,
            reopen_warned: None,
            orphaned: false,
            loss_warnings: LossWarnings::every(waits.warning_interval),
            failure_reason: String::new(),
            flushed: false,
            failing_since: None,
        };
        let queue = WriterQueue::start(
            "llmsrouter-ledger",
            QUEUE_DEPTH,
            "usage ledger writer behind: rows dropped",
            waits.warning_interval,
            move |mut rx| writer.run(conn, &mut rx),
        )
        .map_err(LedgerError::Thread)?;
        Ok(Self {
            queue,
            redactor,
            stats,
            closing,
            close_limit: waits.close_deadline + waits.busy_timeout + Duration::from_secs(5),
        })
    }

    pub fn stats(&self) -> &Arc<LedgerStats> {
        &self.stats
    }

    /// Rows not written because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

impl RecordSink for LedgerSink {
    fn name(&self) -> &'static str {
        "usage-ledger"
    }

    fn accept(&self, record: &Arc<RequestRecord>) {
        self.queue
            .offer(LedgerRow::from_record(record, &self.redactor).into_owned());
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.closing.set(Instant::now());
            // The writer gives up on a lock by itself after `close_deadline`; the margin is
            // for the batch it is writing when the deadline passes.
            if !self.queue.finish(self.close_limit).await {
                tracing::warn!(
                    "usage ledger writer still busy {} s into shutdown: its last rows are lost",
                    self.close_limit.as_secs()
                );
                return;
            }
            let (written, dropped, failed, retries) = (
                self.stats.written(),
                self.dropped(),
                self.stats.failed(),
                self.stats.retries(),
            );
            tracing::info!(written, dropped, failed, retries, "usage ledger flushed");
        })
    }

    fn metrics(&self, out: &mut crate::sinks::Metrics) {
        out.counter(
            "ledger_rows_written",
            "Usage ledger rows written.",
            &[],
            self.stats.written(),
        );
        out.counter(
            "ledger_rows_dropped",
            "Usage ledger rows dropped because the writer was behind.",
            &[],
            self.dropped(),
        );
        out.counter(
            "ledger_rows_failed",
            "Usage ledger rows lost to a database error.",
            &[],
            self.stats.failed(),
        );
        out.counter(
            "ledger_write_retries",
            "Usage ledger batches retried because another process held the database's lock.",
            &[],
            self.stats.retries(),
        );
    }
}

/// How often the writer looks whether the database's path still names the file it writes
/// (see [`DbFile`]): a file deleted or replaced takes at most the rows of this long with it.
const REPLACED_CHECK: Duration = Duration::from_secs(1);

/// The writer thread's side of the sink.
struct Writer {
    /// The file written: when its path names another file or none, the writer opens the path
    /// again (making the file anew if deleted), as the request log does its file.
    file: DbFile,
    /// The log (`-wal`) the connection has open: when its path names another file or none,
    /// no row is written (see [`WalFile`]) and the connection closes without a checkpoint.
    wal: Option<WalFile>,
    /// The log was found lost, and that was said.
    log_lost: bool,
    stats: Arc<LedgerStats>,
    closing: Arc<OnceLock<Instant>>,
    close_deadline: Duration,
    /// SQLite's wait for the lock in one attempt; cut to what is left of the close deadline
    /// once shutdown began, so an attempt started just before it cannot run past it.
    busy_timeout: Duration,
    /// When each kind of warning was last logged: a lock that lasts does not hide the
    /// warning that rows were lost after all.
    lock_warned: Option<Instant>,
    reopen_warned: Option<Instant>,
    /// The file followed was deleted or replaced and what the path names now cannot be
    /// opened: rows written to the old file would be lost with it, so none are, until the
    /// path can be opened again.
    orphaned: bool,
    /// Rows lost: every loss reported, at most one line per interval.
    loss_warnings: LossWarnings,
    /// The latest error rows were lost to, for the warning.
    failure_reason: String,
    /// The queue is closed and drained: the shutdown flush is over.
    flushed: bool,
    /// When the last write failed for a reason other than a lock (a full disk, a read-only
    /// file): while such failures keep coming, a batch is tried once, with no pause and second
    /// try: the rows behind wait no longer than they must, and a full queue drops rows.
    failing_since: Option<Instant>,
}

/// How long after a failure of another kind than a lock the next batch is tried only once.
const STILL_FAILING: Duration = Duration::from_secs(5);

/// Whether SQLite refused because another connection holds the lock: worth waiting for,
/// unlike a full disk or a read-only file.
fn is_locked(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Writer {
    /// Until the sink closes its end: take what is waiting (up to a batch, see
    /// [`QueueRx::next`]), insert it in one transaction, retried as [`Self::write`] says;
    /// between batches, the warnings about rows lost (dropped or failed) that fell due.
    fn run(mut self, mut conn: Connection, rx: &mut QueueRx<LedgerRow<'static>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let check = self
                .loss_warnings
                .next_check(self.stats.failed(), Instant::now());
            match rx.next(&mut batch, MAX_BATCH, BATCH_WINDOW, check) {
                Batch::Closed => break,
                Batch::TimedOut => {}
                Batch::Taken => self.write_batch(&mut conn, rx, &batch),
            }
            batch.clear();
            self.warn_failed(Instant::now());
        }
        self.loss_warnings.closing();
        self.flushed = true;
        self.warn_failed(Instant::now());
        if let Some(wal) = &mut self.wal
            && !wal.intact_now()
        {
            db::close_without_checkpoint(&conn);
        }
    }

    /// Whether the connection's log is the one at the log's path (see [`WalFile`]); said
    /// once when it is not. Rows written to a log no other process sees would be lost at
    /// shutdown anyway, and meanwhile would make the commands misread the database.
    fn log_intact(&mut self) -> bool {
        let Some(wal) = &mut self.wal else {
            return true;
        };
        let intact = wal.intact();
        if intact == self.log_lost {
            self.log_lost = !intact;
            if intact {
                tracing::info!(
                    "usage ledger: {} is back; writing rows again",
                    wal.path().display()
                );
            } else {
                tracing::error!(
                    "usage ledger: {} was deleted (or replaced) while the router ran: no rows are written until the router is restarted (they would go to a log no other process sees), and the rows only that log holds are lost at shutdown, when the router closes the database without copying it in",
                    wal.path().display()
                );
            }
        }
        if !intact {
            self.failure_reason = format!(
                "{} was deleted (or replaced) while the router ran; restart the router",
                wal.path().display()
            );
        }
        intact
    }

    /// Writes one batch of rows, counted as written or failed.
    fn write_batch(
        &mut self,
        conn: &mut Connection,
        rx: &mut QueueRx<LedgerRow<'static>>,
        rows: &[LedgerRow<'_>],
    ) {
        let mut at = self.file.check();
        if at == AtPath::Same && self.wal.as_mut().is_some_and(|wal| !wal.intact()) {
            // A file moved over the database takes its log along when the last connection
            // to the old file closes: the file is what changed, and is followed.
            at = self.file.check_now();
        }
        if at != AtPath::Same {
            let busy_timeout = self.busy_timeout;
            let reopened = self.file.reopen(|path| -> Result<Connection, DbError> {
                let conn = db::open(path)?;
                conn.busy_timeout(busy_timeout)?;
                Ok(conn)
            });
            match reopened {
                Ok(fresh) => {
                    // The old file's log is the new one's (SQLite names it after the path):
                    // closed normally, the old file's last connection would copy it into the
                    // old file and delete it, and with it what the commands wrote since.
                    db::close_without_checkpoint(conn);
                    self.wal = WalFile::of(&fresh, REPLACED_CHECK);
                    self.log_lost = false;
                    tracing::warn!(
                        "usage ledger: {} was deleted or replaced while the router ran; \
                         writing to the file at that path now (rows written since the \
                         last second went to the old one)",
                        self.file.path().display()
                    );
                    *conn = fresh;
                    self.orphaned = false;
                }
                Err(error) => {
                    self.orphaned = true;
                    warn_now_and_then(
                        &mut self.reopen_warned,
                        format_args!(
                            "usage ledger: {} was deleted or replaced, and cannot be opened again: {error}",
                            self.file.path().display()
                        ),
                    );
                    self.failure_reason = format!(
                        "{} was deleted or replaced, and cannot be opened again: {error}",
                        self.file.path().display()
                    );
                }
            }
        }
        if self.orphaned || !self.log_intact() {
            // Written to the old file (or log) they would be lost with it, yet counted as
            // written: they are lost here, counted and warned of as every loss is.
            self.stats
                .failed
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.warn_failed(Instant::now());
            return;
        }
        let result = self.write(conn, rx, rows);
        let rows = rows.len() as u64;
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(rows, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.failed.fetch_add(rows, Ordering::Relaxed);
                self.failure_reason = error.to_string();
                self.warn_failed(Instant::now());
            }
        }
    }

    /// Warns about rows lost since the last warning, at most once per interval (see
    /// [`crate::sinks::loss`]) and at the latest when it has passed, with the latest error.
    /// Once shutdown began, only at the end of the flush: the rows lost to a lock held past
    /// the close deadline are one event, and said twice in the same millisecond (the batch
    /// under way, then the rest) it read as two.
    fn warn_failed(&mut self, now: Instant) {
        if self.closing.get().is_some() && !self.flushed {
            return;
        }
        let Some(lost) = self.loss_warnings.due(self.stats.failed(), now) else {
            return;
        };
        tracing::warn!(
            failed = lost.total,
            since_last_warning = lost.new,
            "usage ledger: cannot write rows: {}",
            self.failure_reason
        );
    }

    /// Inserts `rows`. A database locked by another process is waited for, with growing
    /// pauses, for as long as it takes (the queue behind fills meanwhile, and drops only
    /// what overflows it) until shutdown began [`LedgerWaits::close_deadline`] ago. Any
    /// other error gets one more attempt 50 ms later (it may pass), then the batch is given
    /// up; while such errors keep coming ([`STILL_FAILING`]), a batch gets one attempt.
    fn write(
        &mut self,
        conn: &mut Connection,
        rx: &mut QueueRx<LedgerRow<'static>>,
        rows: &[LedgerRow<'_>],
    ) -> rusqlite::Result<()> {
        let mut backoff = FIRST_BACKOFF;
        let mut other_errors = 0;
        let mut remade = false;
        loop {
            if let Some(since) = self.closing.get() {
                let left = self.close_deadline.saturating_sub(since.elapsed());
                let _ = conn.busy_timeout(self.busy_timeout.min(left));
            }
            let Err(error) = insert_rows(conn, rows) else {
                self.failing_since = None;
                return Ok(());
            };
            let locked = is_locked(&error);
            // The table dropped while the router runs (an admin purging usage): made again
            // (with a warning) and the batch written there, once per batch.
            if !locked && !remade {
                remade = true;
                if db::ensure_ledger(conn).unwrap_or(false) {
                    let path = self.file.path().display().to_string();
                    tracing::warn!("{}", db::ledger_made_again(&path));
                    continue;
                }
            }
            if !locked {
                other_errors += 1;
                let still_failing = self
                    .failing_since
                    .is_some_and(|at| at.elapsed() < STILL_FAILING);
                self.failing_since = Some(Instant::now());
                if other_errors > 1 || still_failing {
                    return Err(error);
                }
            }
            let mut pause = if locked {
                backoff
            } else {
                // Short: one more chance for an error that passes, before the queue fills.
                Duration::from_millis(50)
            };
            if let Some(since) = self.closing.get() {
                let left = self.close_deadline.saturating_sub(since.elapsed());
                if left.is_zero() {
                    // The rest of the queue is not worth a busy timeout per batch either: it
                    // fails at once if the lock is still held.
                    let _ = conn.busy_timeout(Duration::ZERO);
                    return Err(error);
                }
                pause = pause.min(left);
            }
            if locked {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                warn_now_and_then(
                    &mut self.lock_warned,
                    format_args!("{}", lock_warning(rows.len())),
                );
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // The queue behind fills while this waits: its drops are reported meanwhile.
            rx.warn_dropped(Instant::now());
            std::thread::sleep(pause);
        }
    }
}

/// The warning of a batch of `rows` kept while another connection holds the lock. The rows
/// queued behind the batch wait too, and are said to ("keeping 1 row" read as all there was
/// while 25 waited behind it); how many the queue holds is not known here.
fn lock_warning(rows: usize) -> String {
    format!(
        "usage ledger: the database is locked by another connection; keeping {} (and the rows \
         queued behind them) and retrying",
        crate::plural(rows, "row", "rows")
    )
}

/// Logs `message` unless a warning of its kind (`last`) was logged less than 10 s ago.
fn warn_now_and_then(last: &mut Option<Instant>, message: std::fmt::Arguments<'_>) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(Instant::now());
        tracing::warn!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteMode;
    use crate::secret::Secret;
    use crate::usage::{ResponseSummary, Usage};
    use bytes::Bytes;
    use std::time::UNIX_EPOCH;

    fn record() -> RequestRecord {
        let start = UNIX_EPOCH + Duration::from_millis(1_738_314_303_123);
        RequestRecord {
            request_id: "r1".into(),
            user: Some("ann".into()),
            provider: "mock".into(),
            alias: Some("mock".into()),
            mode: RouteMode::Alias,
            endpoint: "/chat/completions".into(),
            requested_model: "[mock]m".into(),
            upstream_model: "m".into(),
            stream: true,
            request_body: Bytes::new(),
            request_layout: None,
            request_is_form: false,
            started_at: start,
            started_mono: std::time::Instant::now(),
            response_started_at: None,
            first_token_at: Some(start + Duration::from_millis(40)),
            ended_at: start + Duration::from_millis(250),
            status: Some(502),
            outcome: Outcome::RouterError,
            error: Some("upstream said: bad key sk-upstream-secret-1".into()),
            response_body: None,
            response_is_json: false,
            response_encoding: None,
            response_decoded: None,
            response: ResponseSummary {
                usage: Some(Usage {
                    input: 10,
                    output: 5,
                    total: 15,
                    cached_input: 4,
                    cache_creation_input: 1,
                    reasoning: 2,
                    cost: Some(0.25),
                    audio_seconds: None,
                }),
                ..Default::default()
            },
            complete: false,
            secrets: Default::default(),
            keys: Default::default(),
            answered_whole: false,
            empty_answer: false,
            upstream_had_request: false,
            bodies_dropped: false,
            usage_uncounted: false,
            body_ticket: Default::default(),
        }
    }

    /// A batch of one row is "1 row" ("keeping 1 rows" before), and the rows queued behind
    /// it are said to wait too.
    #[test]
    fn the_lock_warning_counts_rows_in_words() {
        let queued = " (and the rows queued behind them) and retrying";
        assert!(lock_warning(1).ends_with(&format!("; keeping 1 row{queued}")));
        assert!(lock_warning(2).ends_with(&format!("; keeping 2 rows{queued}")));
    }

    #[test]
    fn rows_round_trip_and_are_redacted() {
        let dir = tempfile::tempdir().expect("dir");
        let key = Secret::new("sk-upstream-secret-1");
        let record = record();
        let row = LedgerRow::from_record(&record, &Redactor::new([&key]));
        assert_eq!(row.day, "2025-01-31");
        assert_eq!(row.started_at, "2025-01-31T09:05:03.123Z");
        assert_eq!((row.latency_ms, row.ttft_ms), (250, Some(40)));
        assert_eq!(
            row.error.as_deref(),
            Some("upstream said: bad key [redacted]")
        );
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        insert_rows(&mut conn, &[row.clone(), row]).expect("insert");
        let (n, input, cached, cost, error): (i64, i64, i64, f64, String) = conn
            .query_row(
                "SELECT COUNT(*), SUM(input_tokens), SUM(cached_tokens), SUM(cost), MAX(error) FROM usage_ledger",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("query");
        assert_eq!((n, input, cached, cost), (2, 20, 8, 0.5));
        assert!(!error.contains("sk-upstream"));
    }

    /// A key that crosses the error's 1000-character cut, and one the upstream echoed in the
    /// model name it answered with, are redacted all the same.
    #[test]
    fn a_key_at_the_error_cut_and_in_the_response_model_is_redacted() {
        let key = Secret::new("sk-upstream-secret-1");
        let mut record = record();
        record.error = Some(format!("{} key={} tail", "x".repeat(983), key.expose()));
        record.response.model = Some(format!("m-{}-2024", key.expose()));
        let row = LedgerRow::from_record(&record, &Redactor::new([&key]));
        let error = row.error.as_deref().expect("error");
        assert!(!error.contains("sk-upstream"), "{}", &error[980..]);
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
        assert!(error.ends_with(" key=[redacted] t"), "{}", &error[980..]);
        assert_eq!(row.response_model.as_deref(), Some("m-[redacted]-2024"));
    }

    /// Once shutdown began, an attempt at a locked database waits for the lock no longer than
    /// what is left of the close deadline: an attempt started just before the deadline used
    /// to wait a whole busy timeout past it (30 s to exit, where 20 s was promised).
    #[test]
    fn an_attempt_after_shutdown_began_ends_by_the_close_deadline() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut conn = db::open(&path).expect("open");
        let admin = db::open(&path).expect("open");
        admin
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("hold the lock");
        let busy_timeout = Duration::from_secs(5);
        conn.busy_timeout(busy_timeout).expect("busy timeout");
        let close_deadline = Duration::from_secs(20);
        let closing = Arc::new(OnceLock::new());
        // Shutdown began 19.7 s ago: 0.3 s of the deadline are left.
        let began = Instant::now()
            .checked_sub(Duration::from_millis(19_700))
            .expect("an instant 20 s back");
        let _ = closing.set(began);
        let mut writer = Writer {
            file: DbFile::new(&path, REPLACED_CHECK),
            wal: None,
            log_lost: false,
            stats: Arc::new(LedgerStats::default()),
            closing,
            close_deadline,
            busy_timeout,
            lock_warned: None,
            reopen_warned: None,
            orphaned: false,
            loss_warnings: LossWarnings::default(),
            failure_reason: String::new(),
            flushed: false,
            failing_since: None,
        };
        let record = record();
        let rows = numbered_rows(&record, 1);
        let start = Instant::now();
        let (_tx, mut rx) = QueueRx::for_tests(1);
        assert!(
            writer.write(&mut conn, &mut rx, &rows).is_err(),
            "the lock is held"
        );
        // Far below the 5 s a whole busy timeout would take.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    /// `n` rows of `record`, with request ids `r0`, `r1`, ...
    fn row(record: &RequestRecord) -> LedgerRow<'static> {
        LedgerRow::from_record(record, &Redactor::default()).into_owned()
    }

    fn numbered_rows(record: &RequestRecord, n: usize) -> Vec<LedgerRow<'_>> {
        (0..n)
            .map(|i| {
                let mut row = LedgerRow::from_record(record, &Redactor::default());
                row.request_id = Cow::Owned(format!("r{i}"));
                row
            })
            .collect()
    }

    /// 71 rows go in as chunks of 32, 32, 4, 2 and 1: each row lands once, with its own
    /// values in their own columns.
    #[test]
    fn a_batch_cut_into_chunks_keeps_every_row_and_column() {
        let dir = tempfile::tempdir().expect("dir");
        let record = record();
        let mut rows = numbered_rows(&record, 71);
        for (i, row) in (0..).zip(rows.iter_mut()) {
            row.input_tokens = i;
            row.cost = (i % 2 == 0).then_some(i as f64);
        }
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        insert_rows(&mut conn, &rows).expect("insert");
        let mut query = conn
            .prepare("SELECT request_id, input_tokens, cost, usage_partial, provider FROM usage_ledger ORDER BY id")
            .expect("prepare");
        let stored: Vec<(String, i64, Option<f64>, bool, String)> = query
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(stored.len(), 71);
        for (i, (id, input, cost, partial, provider)) in stored.into_iter().enumerate() {
            let i = i as i64;
            assert_eq!(id, format!("r{i}"));
            assert_eq!(input, i);
            assert_eq!(cost, (i % 2 == 0).then_some(i as f64));
            assert!(!partial);
            assert_eq!(provider, "mock");
        }
    }

    /// `OR FAIL` keeps the rows a failing statement wrote before its failure; the batch's
    /// transaction must still undo them, so a batch is stored whole or not at all. A trigger
    /// refuses the 40th row, in the middle of a 32-row statement.
    #[test]
    fn a_failing_row_leaves_none_of_its_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let record = record();
        let rows = numbered_rows(&record, 71);
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON usage_ledger WHEN NEW.request_id = 'r39'
             BEGIN SELECT RAISE(FAIL, 'refused'); END;",
        )
        .expect("trigger");
        let error = insert_rows(&mut conn, &rows).expect_err("the 40th row is refused");
        assert!(error.to_string().contains("refused"), "{error}");
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM usage_ledger", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored, 0);

        conn.execute_batch("DROP TRIGGER refuse").expect("drop");
        insert_rows(&mut conn, &rows).expect("the same batch again");
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM usage_ledger", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored, 71);
    }

    /// A ledger waiting on a lock holds rows, not records: the records' bodies, which count
    /// against the budget every sink's records share, are let go once the other sinks are
    /// done with them (bb61: a lock held by an admin's `sqlite3` cost the request log and
    /// Langfuse the prompts and answers of the requests that came meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_waiting_on_a_lock_holds_no_bodies() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let waits = LedgerWaits {
            busy_timeout: Duration::from_millis(20),
            ..Default::default()
        };
        let sink =
            Arc::new(LedgerSink::start_waiting(&path, Redactor::default(), waits).expect("start"));
        let admin = db::open(&path).expect("open");
        admin
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("hold the lock");
        let sample = crate::record::tests::sample;
        // Its bodies, and the text the recorder reads from its answer ("hi"), which counts too.
        let bytes = sample().body_bytes() + "hi".len();
        assert!(bytes > 2, "the sample has bodies");
        // Room for the three at once: they may all be submitted before the first is handed over.
        let (recorder, task) =
            crate::record::Recorder::start_with_budget(vec![sink.clone()], 3 * bytes);
        for _ in 0..3 {
            recorder.submit(sample());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while (sink.queue.accepted() < 3 || recorder.body_bytes_held() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sink.queue.accepted(), 3, "the ledger took every record");
        assert_eq!(
            recorder.body_bytes_held(),
            0,
            "no bodies held while the lock is"
        );
        assert_eq!(recorder.bodies_dropped(), 0, "each record had its bodies");
        assert_eq!(sink.stats().written(), 0, "the lock is held yet");
        admin.execute_batch("COMMIT").expect("let the lock go");
        task.shutdown().await;
        sink.close().await;
        assert_eq!(sink.stats().written(), 3);
    }

    #[tokio::test]
    async fn the_sink_flushes_on_close_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        for round in 1..=2 {
            let sink = LedgerSink::start(&path, Redactor::default()).expect("start");
            let record = Arc::new(record());
            for _ in 0..10 {
                sink.accept(&record);
            }
            sink.close().await;
            assert_eq!(sink.stats().written(), 10);
            let conn = db::open(&path).expect("reopen");
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM usage_ledger", [], |r| r.get(0))
                .expect("count");
            assert_eq!(n, 10 * round);
        }
    }

    /// A writer that looks at its file and its log before every batch.
    fn watching_writer(path: &Path, conn: &Connection, stats: &Arc<LedgerStats>) -> Writer {
        Writer {
            file: DbFile::new(path, Duration::ZERO),
            wal: WalFile::of(conn, Duration::ZERO),
            log_lost: false,
            stats: stats.clone(),
            closing: Arc::new(OnceLock::new()),
            close_deadline: Duration::from_secs(1),
            busy_timeout: Duration::from_secs(1),
            lock_warned: None,
            reopen_warned: None,
            orphaned: false,
            loss_warnings: LossWarnings::default(),
            failure_reason: String::new(),
            flushed: false,
            failing_since: None,
        }
    }

    /// A ledger file deleted and replaced by what cannot be opened (a folder): the rows
    /// that would have gone to the deleted file are counted lost, not written; once the path
    /// can be opened again, they go to the new file.
    #[test]
    fn rows_for_a_file_that_cannot_be_opened_again_are_counted_lost() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut conn = db::open(&path).expect("open");
        let stats = Arc::new(LedgerStats::default());
        let mut writer = watching_writer(&path, &conn, &stats);
        let (_tx, mut rx) = QueueRx::for_tests(1);
        let batch = |n: usize| -> Vec<LedgerRow<'static>> { vec![row(&record()); n] };
        writer.write_batch(&mut conn, &mut rx, &batch(1));
        assert_eq!((stats.written(), stats.failed()), (1, 0));

        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        std::fs::create_dir(&path).expect("a folder where the file was");
        writer.write_batch(&mut conn, &mut rx, &batch(3));
        writer.write_batch(&mut conn, &mut rx, &batch(2));
        assert_eq!((stats.written(), stats.failed()), (1, 5));
        assert!(writer.failure_reason.contains("cannot be opened again"));

        std::fs::remove_dir(&path).expect("the folder gone");
        writer.write_batch(&mut conn, &mut rx, &batch(4));
        assert_eq!((stats.written(), stats.failed()), (5, 5));
        let stored: i64 = db::open(&path)
            .expect("the new file")
            .query_row("SELECT COUNT(*) FROM usage_ledger", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored, 4);
    }

    /// The database's log (`-wal`) deleted under the writer: rows are not written to the
    /// old log, which no other process sees any more (they are counted lost, and why said).
    #[test]
    fn rows_after_the_log_was_deleted_are_counted_lost() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.db");
        let mut conn = db::open(&path).expect("open");
        let stats = Arc::new(LedgerStats::default());
        let mut writer = watching_writer(&path, &conn, &stats);
        let (_tx, mut rx) = QueueRx::for_tests(1);
        let batch = |n: usize| -> Vec<LedgerRow<'static>> { vec![row(&record()); n] };
        writer.write_batch(&mut conn, &mut rx, &batch(1));
        assert_eq!((stats.written(), stats.failed()), (1, 0));
        std::fs::remove_file(format!("{}-wal", path.display())).expect("rm u.db-wal");
        writer.write_batch(&mut conn, &mut rx, &batch(2));
        assert_eq!((stats.written(), stats.failed()), (1, 2));
        assert!(
            writer
                .failure_reason
                .contains("u.db-wal was deleted (or replaced)"),
            "{}",
            writer.failure_reason
        );
    }

    #[test]
    fn errors_exclude_disconnects() {
        assert!(is_error_outcome("upstream_error"));
        assert!(is_error_outcome("router_error"));
        assert!(is_error_outcome("stream_failed"));
        assert!(!is_error_outcome("success"));
        assert!(!is_error_outcome("client_disconnected"));
    }
}
