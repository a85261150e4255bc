//! Warnings about lost records (dropped for want of room, or failed to be written or sent):
//! at most one line per kind per interval, and yet every loss in some line.
//!
//! A line per loss would bury the log during an outage, so a warning is given at most once
//! per interval. Losses inside the interval used to be mentioned only if another came after
//! it: 86 spans dropped within two seconds of the first never reached the log. Now the thread
//! that owns the warning (the sink's own loop, which wakes for it) gives a catch-up line once
//! the interval has passed, whenever the count moved since the last line, so the last line's
//! total is the counter's. Whoever counts a loss on the request path only adds to an atomic.

use std::time::{Duration, Instant};

/// Default of the interval between two warnings of one kind.
pub const DEFAULT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a loop owning warnings may wait at most before it looks at its counters again
/// when nothing is due yet: another thread may count a loss meanwhile (the request path
/// only adds to an atomic and cannot wake it).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Losses not yet in the log: `new` since the last line, `total` so far (the counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreported {
    pub new: u64,
    pub total: u64,
}

/// What the log last said about one loss counter. The counter itself stays where it is
/// (an atomic the sink's metrics read); this only decides when a line is due.
#[derive(Debug)]
pub struct LossWarnings {
    interval: Duration,
    /// When the last line was given.
    said_at: Option<Instant>,
    /// The total the last line gave.
    said: u64,
}

impl Default for LossWarnings {
    fn default() -> Self {
        Self::every(DEFAULT_WARNING_INTERVAL)
    }
}

impl LossWarnings {
    /// At most one line per `interval`.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            said_at: None,
            said: 0,
        }
    }

    /// `Some` when the counter, now at `total`, moved since the last line and no line was
    /// given within the interval: the caller gives the line now (it is taken as said).
    pub fn due(&mut self, total: u64, now: Instant) -> Option<Unreported> {
        if total <= self.said {
            return None;
        }
        if self
            .said_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.interval)
        {
            return None;
        }
        let new = total - self.said;
        self.said_at = Some(now);
        self.said = total;
        Some(Unreported { new, total })
    }

    /// The sink is stopping: the next [`Self::due`] gives its line whatever the interval, so
    /// losses counted in the last interval (the last seconds of a shutdown flush, say) are in
    /// a warning before the process ends, not only in the shutdown summary.
    pub fn closing(&mut self) {
        self.said_at = None;
    }

    /// The total the last line gave (for tests).
    #[cfg(test)]
    pub fn said(&self) -> u64 {
        self.said
    }

    /// When the owning loop should call [`Self::due`] next: when the interval ends if losses
    /// wait to be reported, else after a while (the counter may move meanwhile).
    pub fn next_check(&self, total: u64, now: Instant) -> Instant {
        let look_again = now + LOOK_AGAIN.min(self.interval);
        if total <= self.said {
            return look_again;
        }
        match self.said_at {
            Some(at) => (at + self.interval).max(now),
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_inside_the_interval_are_reported_once_it_ends_without_a_new_one() {
        let mut warnings = LossWarnings::every(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(warnings.due(1, t0), Some(Unreported { new: 1, total: 1 }));
        // 86 more within the interval: no line yet, but the loop is told when to look.
        assert_eq!(warnings.due(87, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            warnings.next_check(87, t0 + Duration::from_secs(2)),
            t0 + Duration::from_secs(10)
        );
        // No new loss after the interval: the catch-up line has them all.
        assert_eq!(
            warnings.due(87, t0 + Duration::from_secs(10)),
            Some(Unreported { new: 86, total: 87 })
        );
        // Nothing moved: no line, and no hurry to look again.
        assert_eq!(warnings.due(87, t0 + Duration::from_secs(30)), None);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(warnings.next_check(87, later), later + LOOK_AGAIN);
    }

    #[test]
    fn losses_inside_the_last_interval_are_due_once_closing() {
        let mut warnings = LossWarnings::every(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(warnings.due(10, t0).is_some());
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(warnings.due(30, soon), None);
        warnings.closing();
        assert_eq!(
            warnings.due(30, soon),
            Some(Unreported { new: 20, total: 30 })
        );
        // Nothing more to say.
        warnings.closing();
        assert_eq!(warnings.due(30, soon), None);
    }

    #[test]
    fn a_first_loss_and_a_loss_after_a_quiet_interval_are_due_at_once() {
        let mut warnings = LossWarnings::every(Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(warnings.next_check(0, t0), t0 + Duration::from_millis(100));
        assert_eq!(warnings.next_check(3, t0), t0);
        assert_eq!(warnings.due(3, t0), Some(Unreported { new: 3, total: 3 }));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(warnings.next_check(4, later), later);
        assert_eq!(
            warnings.due(4, later),
            Some(Unreported { new: 1, total: 4 })
        );
    }
}
