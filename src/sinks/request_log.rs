//! The request log (`LLMSROUTER_LOG_FILE`): one JSON line per routed request, in files rotated
//! daily by tracing-appender. The router deletes old ones itself (7 kept, today's included), and
//! only files named exactly as it names them: tracing-appender's own pruning takes every file
//! that starts with the name and ends with the extension for its own (the Python version's
//! `api_proxy.log`, say), and keeps one file fewer than asked when today's exists already.
//!
//! `accept` only queues the record; one writer thread serialises and writes, so neither a
//! request nor the recorder waits for the disk. Every line passes through the [`Redactor`]
//! whole, so no configured key or client key is written, wherever it appeared (bodies, error
//! texts). Request headers are never logged.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use time::Date;
use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::record::{RecordSink, RequestRecord};
use crate::sinks::clock::{parse_day, rfc3339_millis, utc_date};
use crate::sinks::redact::Redactor;
use crate::sinks::{BATCH_WINDOW, WriterQueue, next_batch};
use crate::usage::ToolCall;

/// Daily files kept, today's included.
pub const KEPT_FILES: usize = 7;
/// Records waiting for the writer before new ones are dropped (and counted).
const QUEUE_DEPTH: usize = 4096;

#[derive(Debug, Clone)]
pub struct RequestLogOptions {
    /// As configured: `./api_proxy.log` writes `./api_proxy.YYYY-MM-DD.log`.
    pub path: PathBuf,
    /// `LLMSROUTER_LOG_BODIES`.
    pub bodies: bool,
    pub redactor: Redactor,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    #[error("LLMSROUTER_LOG_FILE: {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("cannot start the request log writer thread: {0}")]
    Thread(std::io::Error),
}

/// Splits `dir/name.ext` into the appender's directory, prefix and suffix, so files are
/// `name.YYYY-MM-DD.ext` next to where the user pointed.
pub fn file_parts(path: &Path) -> (PathBuf, String, Option<String>) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "api_proxy.log".to_owned());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
            (dir, stem.to_owned(), Some(ext.to_owned()))
        }
        _ => (dir, name, None),
    }
}

/// The request log's daily files, `prefix.YYYY-MM-DD.suffix` (`prefix.YYYY-MM-DD` when the
/// configured name has no extension) in `dir`: the names tracing-appender gives them.
#[derive(Debug, Clone)]
struct DailyFiles {
    dir: PathBuf,
    prefix: String,
    suffix: Option<String>,
}

impl DailyFiles {
    /// The day in `name` when `name` is exactly one of these files' names; `None` for anything
    /// else (`api_proxy.log` itself, `api_proxy.2025-01-31.log.gz`, `api_proxy.old.log`).
    fn day_of(&self, name: &str) -> Option<Date> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let day = match &self.suffix {
            Some(suffix) => rest.strip_suffix(suffix.as_str())?.strip_suffix('.')?,
            None => rest,
        };
        parse_day(day)
    }

    /// Deletes the oldest of these files until the [`KEPT_FILES`] newest (by the day in their
    /// names) remain, today's counted among them whether or not it exists yet. Only regular
    /// files with exactly such a name are looked at; anything else in the directory stays.
    /// Returns how many were deleted; failures are logged, never fatal.
    fn prune(&self, today: Date) -> usize {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("request log: cannot list {}: {e}", self.dir.display());
                return 0;
            }
        };
        let mut older: Vec<(Date, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let day = self.day_of(entry.file_name().to_str()?)?;
                // Today's is being written to; a symlink or a directory is not the router's.
                let is_file = entry.file_type().ok()?.is_file();
                (day != today && is_file).then(|| (day, entry.path()))
            })
            .collect();
        // Newest first.
        older.sort_unstable_by_key(|(day, _)| std::cmp::Reverse(*day));
        let mut deleted = 0;
        for (_, path) in older.iter().skip(KEPT_FILES - 1) {
            match std::fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(
                    "request log: cannot delete old file {}: {e}",
                    path.display()
                ),
            }
        }
        deleted
    }
}

pub struct RequestLogSink {
    queue: WriterQueue,
}

impl RequestLogSink {
    /// Opens today's file (creating the directory) and starts the writer thread.
    pub fn start(options: RequestLogOptions) -> Result<Self, RequestLogError> {
        let (dir, prefix, suffix) = file_parts(&options.path);
        let open_error = |reason: String| RequestLogError::Open {
            path: options.path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(|e| open_error(e.to_string()))?;
        // No `max_log_files`: its pruning is not limited to the appender's own files.
        let mut builder = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(prefix.clone());
        if let Some(suffix) = &suffix {
            builder = builder.filename_suffix(suffix.clone());
        }
        let appender = builder.build(&dir).map_err(|e| open_error(e.to_string()))?;
        let mut writer = Writer {
            out: BufWriter::with_capacity(64 * 1024, appender),
            line: Vec::with_capacity(8 * 1024),
            bodies: options.bodies,
            redactor: options.redactor,
            last_error: None,
            files: DailyFiles {
                dir,
                prefix,
                suffix,
            },
            pruned_for: None,
        };
        writer.prune_once_a_day(SystemTime::now());
        let queue = WriterQueue::start(
            "llmsrouter-request-log",
            QUEUE_DEPTH,
            "request log writer behind: lines dropped",
            move |rx| writer.run(rx),
        )
        .map_err(RequestLogError::Thread)?;
        Ok(Self { queue })
    }

    /// Lines not written because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

impl RecordSink for RequestLogSink {
    fn name(&self) -> &'static str {
        "request-log"
    }

    fn accept(&self, record: &Arc<RequestRecord>) {
        self.queue.offer(record);
    }

    fn close(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.queue.finish())
    }

    fn metrics(&self, out: &mut crate::sinks::Metrics) {
        out.counter(
            "request_log_lines_dropped",
            "Request log lines dropped because the writer was behind.",
            &[],
            self.dropped(),
        );
    }
}

struct Writer {
    out: BufWriter<RollingFileAppender>,
    /// Reused for every line.
    line: Vec<u8>,
    bodies: bool,
    redactor: Redactor,
    last_error: Option<Instant>,
    files: DailyFiles,
    /// The UTC day old files were last deleted for.
    pruned_for: Option<Date>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Arc<RequestRecord>>) {
        let mut batch = Vec::with_capacity(256);
        while next_batch(&rx, &mut batch, 256, BATCH_WINDOW) {
            for record in batch.drain(..) {
                self.write(&record);
            }
            if let Err(e) = self.out.flush() {
                self.report(&e);
            }
            self.prune_once_a_day(SystemTime::now());
        }
        if let Err(e) = self.out.flush() {
            self.report(&e);
        }
    }

    /// Deletes old files at start and then at the first batch of each UTC day, when the
    /// appender has moved to that day's file (it does so when written to after midnight).
    fn prune_once_a_day(&mut self, now: SystemTime) {
        let today = utc_date(now);
        if self.pruned_for == Some(today) {
            return;
        }
        self.pruned_for = Some(today);
        self.files.prune(today);
    }

    fn write(&mut self, record: &RequestRecord) {
        self.line.clear();
        if serialize_line(&mut self.line, record, self.bodies).is_err() {
            return;
        }
        let redacted = self.redactor.redact_bytes(&self.line, &record.secrets);
        let result = self
            .out
            .write_all(&redacted)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = result {
            self.report(&e);
        }
    }

    fn report(&mut self, error: &std::io::Error) {
        if self
            .last_error
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_error = Some(Instant::now());
            tracing::warn!("request log: cannot write: {error}");
        }
    }
}

/// Appends `value` as JSON (strings escaped).
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    serde_json::to_writer(out, value)
}

/// Appends `,"key":value`. Keys are this file's own plain names, written as they are: running
/// each through the JSON string escaper was a third of what a line cost.
fn field<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    key: &'static str,
    value: &T,
) -> serde_json::Result<()> {
    debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    put(out, value)
}

/// Appends `,"key":"text"`: text with nothing to escape is copied as it is (ids, names,
/// models: nearly every field); anything else goes through serde_json's escaper.
fn field_str(out: &mut Vec<u8>, key: &'static str, text: &str) -> serde_json::Result<()> {
    if needs_escaping(text.as_bytes()) {
        return field(out, key, text);
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether `bytes` hold anything JSON must escape (or DEL). Checked 32 bytes at a time
/// without an early exit inside a block, which the compiler turns into vector compares: the
/// byte-by-byte loop was a sixth of what a log line cost.
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.chunks(32).any(|block| {
        block.iter().fold(false, |found, &b| {
            found | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
        })
    })
}

/// [`field_str`], or `null`.
fn field_opt_str(
    out: &mut Vec<u8>,
    key: &'static str,
    text: Option<&str>,
) -> serde_json::Result<()> {
    match text {
        Some(text) => field_str(out, key, text),
        None => field(out, key, &()),
    }
}

/// Appends a body: known-valid JSON goes in as it is (raw line breaks, which JSON allows only
/// between tokens, become spaces so the line stays one line); anything else becomes a string,
/// binary data a note of its size.
fn put_body(out: &mut Vec<u8>, bytes: &[u8], is_json: bool) -> serde_json::Result<()> {
    if is_json {
        let start = out.len();
        out.extend_from_slice(bytes);
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        return Ok(());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => put(out, text),
        Err(_) => put(out, &format!("[{} bytes, not text]", bytes.len())),
    }
}

/// What a stream said, assembled from its events.
#[derive(Serialize)]
struct StreamOutput<'a> {
    content: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reasoning: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    refusal: &'a str,
    #[serde(skip_serializing_if = "<[ToolCall]>::is_empty")]
    tool_calls: &'a [ToolCall],
    finish_reason: Option<&'a str>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serialises one record as one JSON line (no newline) into `out`. Written field by field:
/// the bodies are JSON already (the request always; the response when the record says so)
/// and go in without being parsed again.
fn serialize_line(
    out: &mut Vec<u8>,
    record: &RequestRecord,
    bodies: bool,
) -> serde_json::Result<()> {
    let summary = &record.response;
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(rfc3339_millis(record.started_at).as_bytes());
    out.push(b'"');
    field_str(out, "request_id", &record.request_id)?;
    field_opt_str(out, "user", record.user.as_deref())?;
    field_str(out, "provider", &record.provider)?;
    field_str(out, "mode", record.mode.as_str())?;
    field_str(out, "endpoint", &record.endpoint)?;
    field_str(out, "model", &record.requested_model)?;
    field_str(out, "upstream_model", &record.upstream_model)?;
    field_opt_str(out, "response_model", summary.model.as_deref())?;
    field(out, "stream", &record.stream)?;
    field(out, "status", &record.status)?;
    field_str(out, "outcome", record.outcome.as_str())?;
    if let Some(error) = &record.error {
        field(out, "error", error)?;
    }
    field(out, "latency_ms", &millis(record.latency()))?;
    field(out, "ttft_ms", &record.time_to_first_token().map(millis))?;
    field(out, "usage", &summary.usage)?;
    field(out, "usage_partial", &record.usage_partial())?;
    if bodies && record.bodies_dropped {
        field(out, "bodies", "left out: telemetry was too far behind")?;
    } else if bodies {
        out.extend_from_slice(b",\"request\":");
        put_body(out, &record.request_body, true)?;
        if let Some(bytes) = &record.response_body {
            out.extend_from_slice(b",\"response\":");
            put_body(out, bytes, record.response_is_json)?;
        } else if record.stream {
            field(
                out,
                "response",
                &StreamOutput {
                    content: &summary.content,
                    reasoning: &summary.reasoning,
                    refusal: &summary.refusal,
                    tool_calls: &summary.tool_calls,
                    finish_reason: summary.finish_reason.as_deref(),
                },
            )?;
        }
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn needs_escaping_agrees_with_a_byte_by_byte_check(bytes in proptest::collection::vec(prop_oneof![9 => 0x20u8..0x7f, 1 => any::<u8>()], 0..100)) {
            let slow = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f);
            prop_assert_eq!(needs_escaping(&bytes), slow);
        }
    }

    /// A streamed refusal is the logged answer (it was the whole of it).
    #[test]
    fn a_streamed_refusal_is_logged() {
        let mut record = crate::record::tests::sample();
        record.stream = true;
        record.response_body = None;
        record.response.refusal = "I cannot help with that.".into();
        let mut out = Vec::new();
        serialize_line(&mut out, &record, true).expect("serialized");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            line["response"],
            serde_json::json!({"content": "", "refusal": "I cannot help with that.",
                "finish_reason": null})
        );
    }

    #[test]
    fn file_names_keep_the_extension() {
        assert_eq!(
            file_parts(Path::new("./api_proxy.log")),
            (
                PathBuf::from("."),
                "api_proxy".to_owned(),
                Some("log".to_owned())
            )
        );
        assert_eq!(
            file_parts(Path::new("requests")),
            (PathBuf::from("."), "requests".to_owned(), None)
        );
        assert_eq!(
            file_parts(Path::new("/var/log/llm/.hidden")),
            (PathBuf::from("/var/log/llm"), ".hidden".to_owned(), None)
        );
    }

    fn daily(dir: &Path, prefix: &str, suffix: Option<&str>) -> DailyFiles {
        DailyFiles {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            suffix: suffix.map(str::to_owned),
        }
    }

    fn day(text: &str) -> Date {
        parse_day(text).expect("day")
    }

    /// File names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_names_the_router_gives_are_its_files() {
        let files = daily(Path::new("."), "api_proxy", Some("log"));
        assert_eq!(
            files.day_of("api_proxy.2025-01-31.log"),
            Some(day("2025-01-31"))
        );
        for other in [
            "api_proxy.log",
            "api_proxy.old.log",
            "api_proxy.2025-01-31.log.gz",
            "api_proxy.2025-02-30.log",
            "api_proxy.2025-1-31.log",
            "api_proxy2025-01-31.log",
            "api_proxy.2025-01-31log",
            "api_proxy.x.2025-01-31.log",
            "other.2025-01-31.log",
            "api_proxy.2025-01-31",
        ] {
            assert_eq!(files.day_of(other), None, "{other}");
        }
        let bare = daily(Path::new("."), "requests", None);
        assert_eq!(bare.day_of("requests.2025-01-31"), Some(day("2025-01-31")));
        assert_eq!(bare.day_of("requests"), None);
        assert_eq!(bare.day_of("requests.2025-01-31.log"), None);
    }

    #[test]
    fn pruning_keeps_the_seven_newest_dated_files_and_touches_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        let others = [
            "api_proxy.log",
            "api_proxy.old.log",
            "api_proxy.2020-01-01.log.gz",
            "api_proxy.2020-13-01.log",
            "api_proxy.2020-01-01.txt",
            "other.2020-01-01.log",
        ];
        for name in others {
            std::fs::write(path.join(name), "not the router's").expect("write");
        }
        // Named like the router's files, but not files.
        std::fs::create_dir(path.join("api_proxy.2020-01-02.log")).expect("mkdir");
        #[cfg(unix)]
        std::os::unix::fs::symlink("api_proxy.log", path.join("api_proxy.2020-01-03.log"))
            .expect("symlink");
        for d in 1..=10 {
            std::fs::write(path.join(format!("api_proxy.2025-01-{d:02}.log")), "{}\n")
                .expect("write");
        }
        let files = daily(path, "api_proxy", Some("log"));
        let ours = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .filter(|n| files.day_of(n).is_some() && path.join(n).is_file())
                .filter(|n| !path.join(n).is_symlink())
                .cloned()
                .collect()
        };

        // Today's file exists (a restart): it and the 6 before it stay.
        assert_eq!(files.prune(day("2025-01-10")), 3);
        let expected: Vec<String> = (4..=10)
            .map(|d| format!("api_proxy.2025-01-{d:02}.log"))
            .collect();
        assert_eq!(ours(&names(path)), expected);
        // The same day again: nothing more goes.
        assert_eq!(files.prune(day("2025-01-10")), 0);
        // The next day, before its file is written: room is left for it.
        assert_eq!(files.prune(day("2025-01-11")), 1);
        assert_eq!(ours(&names(path)), expected[1..]);

        for name in others {
            assert_eq!(
                std::fs::read_to_string(path.join(name)).expect("still there"),
                "not the router's"
            );
        }
        assert!(path.join("api_proxy.2020-01-02.log").is_dir());
        #[cfg(unix)]
        assert!(path.join("api_proxy.2020-01-03.log").is_symlink());
    }

    #[test]
    fn a_name_without_extension_prunes_its_own_files_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        for name in ["requests", "requests.2020-01-01.log"] {
            std::fs::write(path.join(name), "x").expect("write");
        }
        for d in 1..=9 {
            std::fs::write(path.join(format!("requests.2025-01-{d:02}")), "x").expect("write");
        }
        assert_eq!(daily(path, "requests", None).prune(day("2025-01-09")), 2);
        let mut expected = vec!["requests".to_owned()];
        expected.extend((3..=9).map(|d| format!("requests.2025-01-{d:02}")));
        expected.push("requests.2020-01-01.log".to_owned());
        expected.sort();
        assert_eq!(names(path), expected);
    }

    #[test]
    fn the_writer_prunes_at_start_and_once_on_each_new_day() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        let now = SystemTime::now();
        let one_day = Duration::from_secs(86_400);
        let dated = |t: SystemTime| format!("api_proxy.{}.log", crate::sinks::clock::utc_day(t));
        for back in 1..=8 {
            std::fs::write(path.join(dated(now - one_day * back)), "x").expect("write");
        }
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("api_proxy")
            .filename_suffix("log")
            .build(path)
            .expect("appender");
        let mut writer = Writer {
            out: BufWriter::new(appender),
            line: Vec::new(),
            bodies: true,
            redactor: Redactor::default(),
            last_error: None,
            files: daily(path, "api_proxy", Some("log")),
            pruned_for: None,
        };
        writer.prune_once_a_day(now);
        assert_eq!(names(path).len(), KEPT_FILES);
        assert!(path.join(dated(now)).is_file(), "today's");
        assert!(!path.join(dated(now - one_day * 7)).exists());
        // A day later: once, when the day changes.
        std::fs::write(path.join(dated(now + one_day)), "x").expect("write");
        writer.prune_once_a_day(now + one_day);
        assert_eq!(names(path).len(), KEPT_FILES);
        assert!(!path.join(dated(now - one_day * 6)).exists());
        std::fs::write(path.join(dated(now - one_day * 20)), "x").expect("write");
        writer.prune_once_a_day(now + one_day);
        assert!(path.join(dated(now - one_day * 20)).exists(), "once a day");
    }

    #[test]
    fn string_fields_match_serde_json() {
        for text in [
            "gpt-4o",
            "",
            "a\"b",
            "back\\slash",
            "line\nbreak",
            "\u{1}",
            "ünï ✓",
        ] {
            let mut fast = Vec::new();
            field_str(&mut fast, "k", text).expect("write");
            let mut serde = b",\"k\":".to_vec();
            serde_json::to_writer(&mut serde, text).expect("write");
            assert_eq!(fast, serde, "{text:?}");
        }
        let mut out = Vec::new();
        field_opt_str(&mut out, "user", None).expect("write");
        assert_eq!(out, b",\"user\":null");
    }

    #[test]
    fn bodies_stay_on_one_line() {
        let mut out = Vec::new();
        let pretty = b"{\n  \"a\": [1,\r\n 2]\n}";
        put_body(&mut out, pretty, true).expect("json");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid");
        assert_eq!(v["a"][1], 2);
        let mut out = Vec::new();
        put_body(&mut out, b"plain\ntext", false).expect("json");
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"plain\\ntext\"");
        let mut out = Vec::new();
        put_body(&mut out, &[0xff, 0xfe, 0x00], false).expect("json");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"[3 bytes, not text]\""
        );
    }
}
