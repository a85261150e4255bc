//! The usage ledger: one row per routed request in the `usage_ledger` table of the SQLite db
//! (LLMSROUTER_DB, schema step 2 in `db::MIGRATIONS`), and the queries `llmsrouter usage`
//! reports from.
//!
//! `accept` turns the record into a small row and queues it; one writer thread with its own
//! connection inserts rows in batches (one transaction per batch), so SQLite never runs on
//! the request path. Closing drains the queue and commits before returning. Texts that could
//! echo a key (error messages, model names) are redacted before they are stored.

use std::borrow::Cow;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::db::{self, DbError};
use crate::record::{Outcome, RecordSink, RequestRecord};
use crate::sinks::clock::{rfc3339_millis, utc_day};
use crate::sinks::redact::Redactor;
use crate::sinks::{BATCH_WINDOW, WriterQueue, next_batch};

/// Rows waiting for the writer before new ones are dropped (and counted). Rows are small.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Most rows in one transaction.
const MAX_BATCH: usize = 2048;
/// Longest error text stored.
const MAX_ERROR_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("LLMSROUTER_DB: {0}")]
    Db(#[from] DbError),
    #[error("usage ledger: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the usage ledger writer thread: {0}")]
    Thread(std::io::Error),
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
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<'a> LedgerRow<'a> {
    pub fn from_record(record: &'a RequestRecord, redactor: &Redactor) -> Self {
        let redactor = redactor.for_request(record.client_key.as_ref());
        let usage = record.response.usage.as_ref();
        let count = |f: fn(&crate::usage::Usage) -> u64| usage.map_or(0, |u| to_i64(f(u)));
        Self {
            request_id: Cow::Borrowed(&record.request_id),
            started_at: rfc3339_millis(record.started_at),
            day: utc_day(record.started_at),
            username: record.user.as_deref().map(Cow::Borrowed),
            provider: Cow::Borrowed(&record.provider),
            mode: record.mode.as_str(),
            endpoint: Cow::Borrowed(&record.endpoint),
            model: redactor.redact(&record.upstream_model),
            response_model: record.response.model.as_deref().map(Cow::Borrowed),
            stream: record.stream,
            status: record.status,
            outcome: record.outcome.as_str(),
            error: record.error.as_deref().map(|e| {
                let e = match e.char_indices().nth(MAX_ERROR_CHARS) {
                    Some((cut, _)) => &e[..cut],
                    None => e,
                };
                redactor.redact(e)
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
        }
    }
}

/// Whether an outcome counts as an error in reports. A client that left is not one.
pub fn is_error_outcome(outcome: &str) -> bool {
    outcome != Outcome::Success.as_str() && outcome != Outcome::ClientDisconnected.as_str()
}

const INSERT: &str = "INSERT INTO usage_ledger (
    request_id, started_at, day, username, provider, mode, endpoint, model, response_model,
    stream, status, outcome, error, latency_ms, ttft_ms, input_tokens, output_tokens,
    total_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens, cost, usage_known,
    usage_partial
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24)";

/// Inserts `rows` in one transaction.
pub fn insert_rows<'a, R: std::borrow::Borrow<LedgerRow<'a>>>(
    conn: &mut Connection,
    rows: &[R],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for r in rows {
            let r = r.borrow();
            insert.execute(params![
                r.request_id,
                r.started_at,
                r.day,
                r.username,
                r.provider,
                r.mode,
                r.endpoint,
                r.model,
                r.response_model,
                r.stream,
                r.status,
                r.outcome,
                r.error,
                r.latency_ms,
                r.ttft_ms,
                r.input_tokens,
                r.output_tokens,
                r.total_tokens,
                r.cached_tokens,
                r.cache_creation_tokens,
                r.reasoning_tokens,
                r.cost,
                r.usage_known,
                r.usage_partial,
            ])?;
        }
    }
    tx.commit()
}

/// Counters of the ledger writer.
#[derive(Debug, Default)]
pub struct LedgerStats {
    written: AtomicU64,
    failed: AtomicU64,
}

impl LedgerStats {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Rows lost to a database error (after one retry).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

pub struct LedgerSink {
    /// Records go to the writer, which reads rows from them: nothing is copied on the way.
    queue: WriterQueue,
    stats: Arc<LedgerStats>,
}

impl LedgerSink {
    /// Opens (creating and migrating) the database at `path` and starts the writer.
    pub fn start(path: &Path, redactor: Redactor) -> Result<Self, LedgerError> {
        let conn = db::open(path)?;
        let stats = Arc::new(LedgerStats::default());
        let writer_stats = stats.clone();
        let queue = WriterQueue::start(
            "llmsrouter-ledger",
            QUEUE_DEPTH,
            "usage ledger writer behind: rows dropped",
            move |rx| write_loop(conn, &rx, &redactor, &writer_stats),
        )
        .map_err(LedgerError::Thread)?;
        Ok(Self { queue, stats })
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
        self.queue.offer(record);
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.queue.finish().await;
            let (written, dropped, failed) =
                (self.stats.written(), self.dropped(), self.stats.failed());
            tracing::info!(written, dropped, failed, "usage ledger flushed");
        })
    }
}

/// Until the sink closes its end: take what is waiting (up to a batch, see
/// [`next_batch`]), insert it in one transaction. A failed batch is retried once (the
/// database may be busy for a moment).
fn write_loop(
    mut conn: Connection,
    rx: &Receiver<Arc<RequestRecord>>,
    redactor: &Redactor,
    stats: &LedgerStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_warning: Option<Instant> = None;
    while next_batch(rx, &mut batch, MAX_BATCH, BATCH_WINDOW) {
        let rows: Vec<LedgerRow<'_>> = batch
            .iter()
            .map(|record| LedgerRow::from_record(record, redactor))
            .collect();
        let mut result = insert_rows(&mut conn, &rows);
        if result.is_err() {
            std::thread::sleep(Duration::from_millis(500));
            result = insert_rows(&mut conn, &rows);
        }
        drop(rows);
        match result {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                stats
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(rows = batch.len(), "usage ledger: cannot write: {error}");
                }
            }
        }
        batch.clear();
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
            started_at: start,
            response_started_at: None,
            first_token_at: Some(start + Duration::from_millis(40)),
            ended_at: start + Duration::from_millis(250),
            status: Some(502),
            outcome: Outcome::RouterError,
            error: Some("upstream said: bad key sk-upstream-secret-1".into()),
            response_body: None,
            response_is_json: false,
            response: ResponseSummary {
                usage: Some(Usage {
                    input: 10,
                    output: 5,
                    total: 15,
                    cached_input: 4,
                    cache_creation_input: 1,
                    reasoning: 2,
                    cost: Some(0.25),
                }),
                ..Default::default()
            },
            complete: false,
            client_key: None,
            bodies_dropped: false,
            body_ticket: Default::default(),
        }
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

    #[test]
    fn errors_exclude_disconnects() {
        assert!(is_error_outcome("upstream_error"));
        assert!(is_error_outcome("router_error"));
        assert!(is_error_outcome("stream_failed"));
        assert!(!is_error_outcome("success"));
        assert!(!is_error_outcome("client_disconnected"));
    }
}
