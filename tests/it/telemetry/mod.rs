//! Telemetry: the Langfuse / OTLP exporter against a mock OTLP endpoint that decodes the
//! protobuf, the request log, the usage ledger and `llmsrouter usage`, and a scan that no
//! configured or client key is written anywhere.

mod binary;
mod langfuse;
mod ledger;
mod loss_warnings;
mod mock_otlp;
pub mod request_log;
mod secrets;
mod shapes;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use llmsrouter::record::RecordSink;
use llmsrouter::secret::Secret;
use llmsrouter::sinks::langfuse::{Destination, LangfuseOptions, LangfuseSink};
use llmsrouter::sinks::otlp_http::RetryPolicy;
use llmsrouter::sinks::redact::Redactor;

use crate::support::TestRouter;
use mock_otlp::MockOtlp;

pub const PUBLIC_KEY: &str = "pk-lf-test-public";
pub const SECRET_KEY: &str = "sk-lf-test-secret";
/// The api_key of `support::one_server_config`.
pub const UPSTREAM_KEY: &str = "sk-mock-upstream-key";

/// Exporter options for tests: Langfuse at `mock`, quick batches and quick retries.
pub fn langfuse_options(mock: &MockOtlp) -> LangfuseOptions {
    let mut options = LangfuseOptions::new(
        vec![Destination::langfuse(
            mock.langfuse_endpoint(),
            &Secret::new(PUBLIC_KEY),
            &Secret::new(SECRET_KEY),
        )],
        Redactor::new([&Secret::new(UPSTREAM_KEY)]),
    );
    options.export_interval = Duration::from_millis(20);
    options.retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(30),
        budget: Duration::from_secs(30),
    };
    options.shutdown_timeout = Duration::from_secs(10);
    options
}

/// The router in-process with the exporter built from `options`.
pub async fn router_with_langfuse(
    config_yaml: &str,
    options: LangfuseOptions,
    adjust: impl FnOnce(&mut llmsrouter::state::AppState),
) -> (TestRouter, Arc<LangfuseSink>) {
    let sink = Arc::new(LangfuseSink::start(options).expect("exporter starts"));
    let router = TestRouter::start_with_sinks(
        config_yaml,
        vec![sink.clone() as Arc<dyn RecordSink>],
        adjust,
    )
    .await;
    (router, sink)
}

/// The request id the router answered with (the trace id of its span).
pub fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-llmsrouter-request-id")
        .expect("request id header")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Milliseconds since the epoch of `2025-01-31T09:05:03.123Z` (the form the sinks write),
/// or of `2025-01-31T09:05:03.123456Z` (a span's completion start), cut to the millisecond.
pub fn parse_rfc3339_millis(text: &str) -> i64 {
    parse_rfc3339_micros(text) / 1000
}

/// Microseconds since the epoch of `2025-01-31T09:05:03.123Z` or
/// `2025-01-31T09:05:03.123456Z`.
pub fn parse_rfc3339_micros(text: &str) -> i64 {
    assert!(text.len() == 24 || text.len() == 27, "{text}");
    assert!(text.ends_with('Z'), "{text}");
    let n = |r: std::ops::Range<usize>| -> i64 { text[r].parse().expect("digits") };
    let date = time::Date::from_calendar_date(
        n(0..4) as i32,
        time::Month::try_from(n(5..7) as u8).expect("month"),
        n(8..10) as u8,
    )
    .expect("date");
    let time = time::Time::from_hms_milli(n(11..13) as u8, n(14..16) as u8, n(17..19) as u8, 0)
        .expect("time");
    let at = time::PrimitiveDateTime::new(date, time).assume_utc();
    let fraction = &text[20..text.len() - 1];
    let micros: i64 =
        fraction.parse::<i64>().expect("digits") * 10_i64.pow(6 - fraction.len() as u32);
    (at.unix_timestamp_nanos() / 1_000) as i64 + micros
}
