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

/// Starts every sink the environment turns on: the ledger in `db_path` always, the request
/// log when `LLMSROUTER_LOG_FILE` is not empty, the exporter when Langfuse or an OTLP
/// endpoint is configured. Must run inside the tokio runtime that will serve requests.
pub fn start(
    env: &EnvSettings,
    config: &Config,
    db_path: &Path,
) -> Result<Vec<Arc<dyn RecordSink>>, SinkError> {
    // Keys of the config as loaded at start-up.
    let redactor = Redactor::new(config.api_keys());
    let mut sinks: Vec<Arc<dyn RecordSink>> = Vec::new();
    sinks.push(Arc::new(LedgerSink::start(db_path, redactor.clone())?));
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
