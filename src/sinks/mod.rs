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
pub mod otlp_http;
pub mod redact;
pub mod request_log;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use crate::config::Config;
use crate::env::EnvSettings;
use crate::record::RecordSink;
use langfuse::{LangfuseError, LangfuseOptions, LangfuseSink};
use ledger::{LedgerError, LedgerSink};
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
    // Keys of the config as loaded at start-up.
    let redactor = Redactor::new(config.secrets());
    let mut sinks: Vec<Arc<dyn RecordSink>> = Vec::new();
    if env.ledger {
        sinks.push(Arc::new(LedgerSink::start(db_path, redactor.clone())?));
    }
    if let Some(path) = &env.log_file {
        sinks.push(Arc::new(RequestLogSink::start(RequestLogOptions {
            path: path.clone(),
            bodies: env.log_bodies,
            redactor: redactor.clone(),
        })?));
    }
    if let Some(options) = LangfuseOptions::from_env(env, redactor) {
        sinks.push(Arc::new(LangfuseSink::start(options)?));
    }
    Ok(sinks)
}

/// How long a sink's thread lets records gather after it was idle, before taking them all:
/// a busy router wakes each thread a few dozen times a second instead of once per request.
pub const BATCH_WINDOW: Duration = Duration::from_millis(25);

/// Moves the next items of `rx` into `batch` (at most `max` in it): what is waiting at once,
/// else the next one to arrive plus whatever follows within `window`. `false` once the
/// sending side is gone and nothing is left.
pub(crate) fn next_batch<T>(
    rx: &Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    window: Duration,
) -> bool {
    match rx.try_recv() {
        Ok(item) => batch.push(item),
        Err(TryRecvError::Disconnected) => return false,
        Err(TryRecvError::Empty) => {
            let Ok(item) = rx.recv() else { return false };
            batch.push(item);
            std::thread::sleep(window);
        }
    }
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

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
}
