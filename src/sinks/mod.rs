//! The record sinks: the usage ledger (always on), the request log and the Langfuse / OTLP
//! exporter, and what they share (redaction, timestamps, the generation view).
//!
//! Sinks get finished records from the recorder's task (`record::RecordSink`) and do their
//! work on their own threads; nothing here runs on the request path or blocks a request.

pub mod clock;
pub mod generation;
pub mod langfuse;
pub mod ledger;
pub mod ledger_report;
pub mod log_file;
pub mod loss;
pub mod otlp_http;
pub mod redact;
pub mod request_log;

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::env::EnvSettings;
use crate::record::RecordSink;
use langfuse::{LangfuseError, LangfuseOptions, LangfuseSink};
use ledger::{LedgerError, LedgerSink};
use loss::LossWarnings;
use redact::Redactor;
use request_log::{RequestLogError, RequestLogOptions, RequestLogSink};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    RequestLog(#[from] RequestLogError),
    #[error(transparent)]
    Langfuse(#[from] LangfuseError),
}

/// Starts every sink the environment turns on: the ledger in `db_path` (unless
/// `LLMSROUTER_LEDGER=false`), the request log when `LLMSROUTER_LOG_FILE` is not empty, the
/// exporter when Langfuse or an OTLP endpoint is configured. Must run inside the tokio runtime
/// that will serve requests.
pub fn start(
    env: &EnvSettings,
    config: &Config,
    db_path: &Path,
) -> Result<Vec<Arc<dyn RecordSink>>, SinkError> {
    // Keys of the config as loaded at start-up, and the trace destinations' own.
    let env_secrets = env.secrets();
    let redactor = Redactor::new(config.secrets().chain(&env_secrets));
    let mut sinks: Vec<Arc<dyn RecordSink>> = Vec::new();
    let warning_interval = env.warning_interval();
    if env.ledger {
        let waits = ledger::LedgerWaits {
            warning_interval,
            ..Default::default()
        };
        sinks.push(Arc::new(LedgerSink::start_waiting(
            db_path,
            redactor.clone(),
            waits,
        )?));
    }
    if let Some(path) = &env.log_file {
        let options = RequestLogOptions {
            path: path.clone(),
            bodies: env.log_bodies,
            redactor: redactor.clone(),
        };
        sinks.push(Arc::new(RequestLogSink::start_warning_every(
            options,
            warning_interval,
        )?));
    }
    if let Some(options) = LangfuseOptions::from_env(env, redactor) {
        sinks.push(Arc::new(LangfuseSink::start(options)?));
    }
    Ok(sinks)
}

/// Most characters of a model name or endpoint kept in a ledger row or a request log line.
/// They come from the client (and the upstream's echo): a request naming a 2 MB model would
/// otherwise store 2 MB per row and per line, the ledger and the log growing by what any key
/// holder sends; real names are a few dozen characters.
pub const MAX_NAME_CHARS: usize = 1024;

/// `text` cut to `max` characters.
pub(crate) fn clipped_chars(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((cut, _)) => Cow::Owned(text[..cut].to_owned()),
        None => text,
    }
}

/// A sink's writer thread and the bounded queue feeding it. `offer` never waits: when the
/// writer is behind and the queue full, the record is dropped for this sink and counted (an
/// atomic add, nothing more); the writer warns about drops through its [`QueueRx`], at most
/// every 10 s and at the latest once those 10 s have passed. `finish` closes the queue, lets
/// the writer drain what waits, and waits for it to end. Its items are what the writer
/// needs of each record: the records themselves (bodies and all) for the request log, only
/// a row for the ledger, whose queue may wait long on a lock and must not hold the bodies
/// the other sinks' budget counts.
pub(crate) struct WriterQueue<T> {
    tx: Mutex<Option<SyncSender<T>>>,
    /// Resolves when the writer thread ended (its sender is dropped then, panic or not). The
    /// thread itself is never joined: a thread blocked for good (see [`Self::finish`]) would
    /// hold up whoever joined it, and a runtime waits for its blocking tasks when it drops.
    ended: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    dropped: Arc<AtomicU64>,
    /// Records queued for the writer (all it was given, as `dropped` is all it was not).
    accepted: AtomicU64,
}

/// The writer's end of a [`WriterQueue`]: its records, and the warning about those dropped.
pub(crate) struct QueueRx<T> {
    rx: Receiver<T>,
    dropped: Arc<AtomicU64>,
    warnings: LossWarnings,
    /// The warning, e.g. "request log writer behind: lines dropped".
    behind: &'static str,
}

impl<T> QueueRx<T> {
    /// The next records (see [`next_batch_until`]), waiting for the first one no later
    /// than `check` (the writer's own next loss check) or than a warning about dropped
    /// records may be due ([`Batch::TimedOut`], nothing taken); gives that warning when due.
    pub(crate) fn next(
        &mut self,
        batch: &mut Vec<T>,
        max: usize,
        window: Duration,
        check: Instant,
    ) -> Batch {
        let now = Instant::now();
        let deadline = check.min(self.warnings.next_check(self.dropped(), now));
        let got = next_batch_until(
            &self.rx,
            batch,
            max,
            window,
            Some(deadline),
            &mut std::thread::sleep,
        );
        self.warn_dropped(Instant::now());
        got
    }

    /// Warns about the records dropped since the last warning, if one is due. Also for a
    /// writer waiting long on its own (the ledger on a locked database): the queue is full
    /// then, and dropping.
    pub(crate) fn warn_dropped(&mut self, now: Instant) {
        if let Some(lost) = self.warnings.due(self.dropped(), now) {
            tracing::warn!(
                dropped = lost.total,
                since_last_warning = lost.new,
                "{}",
                self.behind
            );
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A queue of `depth` records with no thread behind it (for tests of writers).
    #[cfg(test)]
    pub(crate) fn for_tests(depth: usize) -> (SyncSender<T>, Self) {
        let (tx, rx) = sync_channel(depth);
        let rx = Self {
            rx,
            dropped: Arc::default(),
            warnings: LossWarnings::default(),
            behind: "test writer behind",
        };
        (tx, rx)
    }
}

impl<T: Send + 'static> WriterQueue<T> {
    /// Starts thread `name` running `writer` over a queue of `depth` records (pointers: a
    /// bounded std channel allocates every slot at once); the warning about dropped records
    /// (`behind`) is given at most every `warning_interval`.
    pub(crate) fn start(
        name: &str,
        depth: usize,
        behind: &'static str,
        warning_interval: Duration,
        writer: impl FnOnce(QueueRx<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(depth);
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let rx = QueueRx {
            rx,
            dropped: dropped.clone(),
            warnings: LossWarnings::every(warning_interval),
            behind,
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ended = ended_tx;
                writer(rx);
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            ended: Mutex::new(Some(ended)),
            dropped,
            accepted: AtomicU64::new(0),
        })
    }

    pub(crate) fn offer(&self, item: T) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(item) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
            // The writer, busy with the full queue, warns.
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records not queued because the writer was behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records queued for the writer.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// No more records: the writer drains the queue and ends; this waits for it, at most
    /// `limit`, and says whether it ended. A writer that does not end is blocked where the
    /// router cannot help it (a pipe whose reader stopped reading): shutdown must not wait on
    /// it for good, so it is left behind, its records lost with the process.
    pub(crate) async fn finish(&self, limit: Duration) -> bool {
        drop(self.tx.lock().ok().and_then(|mut tx| tx.take()));
        let ended = self.ended.lock().ok().and_then(|mut e| e.take());
        let Some(ended) = ended else { return true };
        // `Err` from the channel is an end too: the thread dropped its sender in a panic.
        tokio::time::timeout(limit, ended).await.is_ok()
    }
}

/// Prometheus text exposition (format 0.0.4) of counters, for `GET /metrics`. Samples are
/// kept per counter and written together under its `# HELP` / `# TYPE` lines, in the order
/// the counters were first added: the format wants one group per metric, and a counter whose
/// samples come from two places (the span counters of Langfuse and of the OTLP destination)
/// was split in two, its second group read as untyped metrics by Prometheus's parser.
#[derive(Default)]
pub struct Metrics {
    /// Each counter's name, help and sample lines.
    families: Vec<(&'static str, String, String)>,
}

impl Metrics {
    /// Adds one sample of counter `name` (`_total` is appended), described once.
    pub fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: u64) {
        use std::fmt::Write as _;
        let index = match self.families.iter().position(|(n, _, _)| *n == name) {
            Some(index) => index,
            None => {
                self.families.push((name, help.to_owned(), String::new()));
                self.families.len() - 1
            }
        };
        let samples = &mut self.families[index].2;
        let _ = write!(samples, "llmsrouter_{name}_total");
        for (i, (key, value)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            // Label values are the router's own names (sinks, destinations): no escaping needed.
            let _ = write!(samples, "{open}{key}=\"{value}\"");
        }
        if !labels.is_empty() {
            samples.push('}');
        }
        let _ = writeln!(samples, " {value}");
    }

    pub fn into_text(self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        for (name, help, samples) in self.families {
            let _ = writeln!(text, "# HELP llmsrouter_{name}_total {help}");
            let _ = writeln!(text, "# TYPE llmsrouter_{name}_total counter");
            text.push_str(&samples);
        }
        text
    }
}

/// How long a sink's thread lets records gather after it was idle, before taking them all:
/// a busy router wakes each thread at most 200 times a second instead of once per request.
/// Not longer: a batch is then worked through in one go, on the cores the lanes need, and
/// with 25 ms the bursts (about 5 ms of work each) doubled the telemetry-on p99 (wrk, c=32:
/// 7.1 ms at 25 ms, 3.5 ms at 5 ms, the same throughput).
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// What [`next_batch_until`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    Taken,
    /// The deadline came before any item.
    TimedOut,
    /// The sending side is gone and nothing is left.
    Closed,
}

/// Moves the next items of `rx` into `batch` (at most `max` in it): what is waiting at once,
/// else the next one to arrive (waited for no later than `deadline`) plus whatever follows
/// within `window`, napping with `nap`.
///
/// The nap comes only after a wait: an idle writer wakes at most 200 times a second, not
/// once per item, while a busy one (items already waiting) takes them at once, as fast as
/// they come. Napping after every take instead caps a writer at `max` items per `window`,
/// and a busy router then overflows its queue and drops records.
pub(crate) fn next_batch_until<T>(
    rx: &Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    window: Duration,
    deadline: Option<Instant>,
    nap: &mut impl FnMut(Duration),
) -> Batch {
    match rx.try_recv() {
        Ok(item) => batch.push(item),
        Err(TryRecvError::Disconnected) => return Batch::Closed,
        Err(TryRecvError::Empty) => {
            let first = match deadline {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => return Batch::TimedOut,
                Err(RecvTimeoutError::Disconnected) => return Batch::Closed,
            }
            nap(window);
        }
    }
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Batch::Taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn next_batch<T>(rx: &Receiver<T>, batch: &mut Vec<T>, max: usize, window: Duration) -> bool {
        let nap = &mut std::thread::sleep;
        next_batch_until(rx, batch, max, window, None, nap) != Batch::Closed
    }

    /// Records dropped while the writer is behind, after a first warning: the writer,
    /// with nothing more to take, wakes when the interval ends and warns with the total.
    /// The drops themselves only add to an atomic.
    #[test]
    fn a_writer_warns_of_drops_within_the_interval_once_it_ends() {
        let (tx, mut rx) = QueueRx::for_tests(1);
        let interval = Duration::from_millis(200);
        rx.warnings = LossWarnings::every(interval);
        let queue = WriterQueue {
            tx: Mutex::new(Some(tx)),
            ended: Mutex::new(None),
            dropped: rx.dropped.clone(),
            accepted: AtomicU64::new(0),
        };
        let record = Arc::new(crate::record::tests::sample());
        let mut batch = Vec::new();
        let far = Instant::now() + Duration::from_secs(60);
        // One queued, two dropped: the first warning, at once.
        for _ in 0..3 {
            queue.offer(record.clone());
        }
        assert_eq!(rx.next(&mut batch, 8, Duration::ZERO, far), Batch::Taken);
        assert_eq!(rx.warnings.said(), 2);
        // Two more within the interval: not yet.
        batch.clear();
        for _ in 0..3 {
            queue.offer(record.clone());
        }
        assert_eq!(rx.next(&mut batch, 8, Duration::ZERO, far), Batch::Taken);
        assert_eq!((queue.dropped(), rx.warnings.said()), (4, 2));
        // Nothing more comes: the writer wakes at the interval's end and reports them.
        let started = Instant::now();
        assert_eq!(rx.next(&mut batch, 8, Duration::ZERO, far), Batch::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(rx.warnings.said(), 4);
    }

    #[test]
    fn batches_take_what_waits_and_end_when_closed() {
        let (tx, rx) = sync_channel(16);
        for i in 0..5 {
            tx.send(i).expect("send");
        }
        let mut batch = Vec::new();
        assert!(next_batch(&rx, &mut batch, 3, Duration::ZERO));
        assert_eq!(batch, [0, 1, 2]);
        batch.clear();
        drop(tx);
        assert!(next_batch(&rx, &mut batch, 3, Duration::ZERO));
        assert_eq!(batch, [3, 4]);
        batch.clear();
        assert!(!next_batch(&rx, &mut batch, 3, Duration::ZERO));
        assert!(batch.is_empty());
    }

    #[test]
    fn a_busy_queue_is_taken_without_napping_and_an_idle_one_naps_once() {
        let (tx, rx) = sync_channel(4096);
        for i in 0..3000 {
            tx.send(i).expect("send");
        }
        let naps = std::cell::RefCell::new(Vec::new());
        let mut nap = |d: Duration| naps.borrow_mut().push(d);
        let window = Duration::from_millis(25);
        let mut taken = 0;
        let mut batch = Vec::new();
        while taken < 3000 {
            let got = next_batch_until(&rx, &mut batch, 1024, window, None, &mut nap);
            assert_eq!(got, Batch::Taken);
            taken += batch.len();
            batch.clear();
        }
        assert!(naps.borrow().is_empty(), "items were waiting: no nap");

        // Idle: the deadline passes with nothing; then one item is waited for, and napped on.
        let soon = Instant::now() + Duration::from_millis(1);
        let got = next_batch_until(&rx, &mut batch, 1024, window, Some(soon), &mut nap);
        assert_eq!(got, Batch::TimedOut);
        // The item is sent from another thread while this one waits. It may also come before
        // the wait begins (the threads race), and is then taken without a nap: tried until the
        // wait came first, which it nearly always does at once.
        let mut tx = tx;
        let mut napped = false;
        for _ in 0..100 {
            naps.borrow_mut().clear();
            let sender = std::thread::spawn(move || {
                tx.send(7).expect("send");
                tx
            });
            let got = next_batch_until(&rx, &mut batch, 1024, window, None, &mut nap);
            assert_eq!((got, batch.as_slice()), (Batch::Taken, &[7][..]));
            batch.clear();
            tx = sender.join().expect("sender");
            let naps = naps.borrow();
            assert!(naps.is_empty() || *naps == [window], "{naps:?}");
            if !naps.is_empty() {
                napped = true;
                break;
            }
        }
        assert!(napped, "an item waited for is napped on once");
        drop(tx);
        let got = next_batch_until(&rx, &mut batch, 1024, window, None, &mut nap);
        assert_eq!(got, Batch::Closed);
    }
}
