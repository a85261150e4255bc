//! WARN lines for the router's own failures (upstream unreachable, timeouts, shutdown, a
//! stream that broke off), at most one per error code per window.
//!
//! A failure is worth a line in the server log, but during an outage under load a line per
//! request buries everything else (a thousand requests a second to a provider that is down
//! would be a thousand lines a second). Every request is still in the request log, the ledger
//! and the trace; the server log only has to say that it is happening, and how often. So the
//! first failure of a code is logged at once, later ones of that code are counted until the
//! window has passed, and the next line logged says how many were left out before it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most one WARN line per error code per this interval.
pub const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FailureLog {
    window: Duration,
    /// One entry per error code seen; there are only a handful of codes.
    codes: Mutex<Vec<CodeState>>,
    /// Requests refused before routing, per code, since start: they have no record, so
    /// `GET /metrics` counts them here (a flood of unknown keys shows on a dashboard).
    refused: Mutex<Vec<(&'static str, u64)>>,
}

#[derive(Debug)]
struct CodeState {
    code: &'static str,
    last_logged: Instant,
    left_out: u64,
}

impl FailureLog {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            codes: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        }
    }

    /// Whether a failure with `code` at `now` gets its line: `Some(n)` with the number of
    /// failures of that code left out since its previous line, or `None` to leave it out.
    pub fn admit(&self, code: &'static str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update: log rather than go quiet.
        let Ok(mut codes) = self.codes.lock() else {
            return Some(0);
        };
        let Some(state) = codes.iter_mut().find(|s| s.code == code) else {
            codes.push(CodeState {
                code,
                last_logged: now,
                left_out: 0,
            });
            return Some(0);
        };
        if now.saturating_duration_since(state.last_logged) < self.window {
            state.left_out += 1;
            return None;
        }
        state.last_logged = now;
        Some(std::mem::take(&mut state.left_out))
    }
}

impl FailureLog {
    /// Logs a failure at WARN unless another of its code was logged within the window.
    pub fn warn(&self, request_id: &str, code: &'static str, error: &dyn std::fmt::Display) {
        match self.admit(code, Instant::now()) {
            Some(0) => tracing::warn!(request_id, code, "{error}"),
            Some(left_out) => tracing::warn!(
                request_id,
                code,
                left_out,
                "{error} ({left_out} more like it since the last line; the request log has each)"
            ),
            None => {}
        }
    }
}

impl FailureLog {
    /// Logs, at INFO, a request the router refused before routing it (a key it does not
    /// know, a body that is not JSON, a model it cannot route), unless another of its code
    /// was logged within the window: nothing records such a request, so this line is where
    /// the request id its answer carried can be found. Only the status and code are logged,
    /// never the message: it may quote what the client sent (a model name, a `?proxy=` URL
    /// with credentials in it).
    pub fn refusal(&self, request_id: &str, status: u16, code: &'static str) {
        self.count_refusal(code);
        match self.admit(code, Instant::now()) {
            Some(0) => tracing::info!(request_id, status, code, "refused"),
            Some(left_out) => tracing::info!(
                request_id,
                status,
                code,
                left_out,
                "refused ({left_out} more like it since the last line)"
            ),
            None => {}
        }
    }
}

impl FailureLog {
    /// Counts a refusal for `GET /metrics` only ([`Self::refusal`] also logs it).
    pub fn count_refusal(&self, code: &'static str) {
        // Poisoned: a panic elsewhere mid-update; the count is only a metric.
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        match refused.iter_mut().find(|(c, _)| *c == code) {
            Some((_, count)) => *count += 1,
            None => refused.push((code, 1)),
        }
    }

    /// Requests refused before routing since start, per code, in the order the codes were
    /// first seen.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Default for FailureLog {
    fn default() -> Self {
        Self::new(FAILURE_LOG_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_code_per_window_and_the_next_one_counts_what_was_left_out() {
        let log = FailureLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit("upstream_unreachable", t0), Some(0));
        for i in 1..=5 {
            let at = t0 + Duration::from_secs(i);
            assert_eq!(log.admit("upstream_unreachable", at), None);
        }
        // Another code has a window of its own.
        assert_eq!(
            log.admit("upstream_timeout", t0 + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(
            log.admit("upstream_unreachable", t0 + Duration::from_secs(10)),
            Some(5)
        );
        assert_eq!(
            log.admit("upstream_unreachable", t0 + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            log.admit("upstream_unreachable", t0 + Duration::from_secs(25)),
            Some(1)
        );
    }
}
