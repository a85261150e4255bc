//! The process's limit on open files, raised at start-up.
//!
//! Every client connection takes one file descriptor, and every request under way one more
//! for its upstream connection. Linux starts most processes (a login shell, a systemd
//! service) with a soft limit of 1024 and a hard limit far above it; at 1024 the router would
//! stop accepting connections at about 500 concurrent streams, and the 2,000 it is measured
//! with (README "Benchmark") would fail. The soft limit is a default any process may raise up
//! to the hard one, which is what nginx's `worker_rlimit_nofile` and Go's runtime do, so the
//! router raises it too. The hard limit is the administrator's, and left alone.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Below this many open files the router warns at start-up: fewer than about 2,000
/// concurrent streams fit.
pub const FEW_OPEN_FILES: u64 = 4096;

/// The most the soft limit is raised to when the hard limit is unlimited. Linux refuses more
/// than `fs.nr_open` (1,048,576 by default) anyway.
const MOST: u64 = 1 << 20;

/// What [`raise_to_hard_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// The soft limit was raised from the first value to the second.
    From(u64, u64),
    /// It already was as high as allowed (or unlimited).
    Already(u64),
    /// Raising it failed; the limit stays.
    Refused(u64),
}

impl Raised {
    /// The limit in force afterwards.
    pub fn limit(self) -> u64 {
        match self {
            Raised::From(_, now) | Raised::Already(now) | Raised::Refused(now) => now,
        }
    }
}

/// Raises the soft limit on open files to the hard limit (at most [`MOST`]).
pub fn raise_to_hard_limit() -> Raised {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let Some(soft) = current else {
        return Raised::Already(u64::MAX);
    };
    let wanted = maximum.map_or(MOST, |hard| hard.min(MOST));
    if soft >= wanted {
        return Raised::Already(soft);
    }
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum,
        },
    );
    match raised {
        Ok(()) => Raised::From(soft, wanted),
        Err(_) => Raised::Refused(soft),
    }
}

/// Raises the limit and says so in the log; warns when it stays low.
pub fn raise_and_report() {
    let raised = raise_to_hard_limit();
    match raised {
        Raised::From(before, now) => {
            tracing::info!("open files limit raised from {before} to {now}");
        }
        Raised::Refused(now) => {
            tracing::debug!("open files limit {now}: raising it to the hard limit was refused");
        }
        Raised::Already(_) => {}
    }
    let limit = raised.limit();
    if limit < FEW_OPEN_FILES {
        tracing::warn!(
            "open files limit is {limit}: about {} concurrent requests fit; raise it \
             (`ulimit -Hn`, systemd's LimitNOFILE=, docker run --ulimit nofile=)",
            limit / 2
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_raising_the_soft_limit_equals_the_hard_one_or_the_cap() {
        let raised = raise_to_hard_limit();
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        let wanted = maximum.map_or(MOST, |hard| hard.min(MOST));
        match raised {
            Raised::From(before, now) => {
                assert!(before < now);
                assert_eq!((current, now), (Some(wanted), wanted));
            }
            Raised::Already(now) => {
                assert!(current.is_none_or(|soft| soft >= wanted && soft == now))
            }
            Raised::Refused(now) => {
                panic!("raising the soft limit to the hard one failed at {now}")
            }
        }
        // A second call finds nothing left to do.
        assert!(matches!(raise_to_hard_limit(), Raised::Already(_)));
    }
}
