//! Lanes: one thread per core, each running its own single-threaded tokio runtime, serving
//! the client connections handed to it and holding its own pool of upstream connections.
//!
//! Why not one multi-threaded runtime: a proxied request wakes three tasks (the client's
//! connection, the upstream connection, the request itself), and on a work-stealing runtime
//! they often sit on different threads, so each request paid about one futex wake-up and one
//! context switch (measured with `perf stat`: ~0.8 of each per request at 25k requests/s).
//! On a lane everything a request touches stays on one thread, as in nginx's worker model.
//! The cost: a connection stays on the lane it was given (round robin), so one very busy
//! connection cannot spread over cores; clients open several connections in practice.
//!
//! A lane never blocks: nothing on it may wait on SQLite or a file (the sinks have their own
//! threads).

use std::future::Future;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The lane that serves the current connection; picks its upstream pool.
    static CURRENT_LANE: usize;
}

/// Runs `future` as part of lane `index` (see [`current`]).
pub fn scope<F: Future>(index: usize, future: F) -> impl Future<Output = F::Output> {
    CURRENT_LANE.scope(index, future)
}

/// The lane serving the running task; 0 outside any lane (a test driving the router in its
/// own runtime, a background task).
pub fn current() -> usize {
    CURRENT_LANE.try_with(|lane| *lane).unwrap_or(0)
}

/// How many lanes to run: the cores this process may use (cgroup quotas count).
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long a stopping lane waits for work it handed to its blocking pool.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// The running lanes. Dropping this tells them to stop without waiting; [`Self::stop`] waits.
pub struct Lanes {
    lanes: Vec<Lane>,
    next: usize,
    stop: CancellationToken,
}

struct Lane {
    runtime: tokio::runtime::Handle,
    thread: Option<JoinHandle<()>>,
}

impl Lanes {
    /// Starts `count` lane threads (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut lanes = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            lanes.push(Lane::start(index, stop.clone())?);
        }
        Ok(Self {
            lanes,
            next: 0,
            stop,
        })
    }

    /// Runs `task(lane index)` on the next lane in turn.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.next;
        self.next = (self.next + 1) % self.lanes.len();
        self.lanes[index]
            .runtime
            .spawn(scope(index, async move { task(index).await }));
    }

    /// Stops every lane and waits for its thread to end. Connections still open are dropped
    /// (a request cut this way hands over its record from `Drop`).
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads: Vec<JoinHandle<()>> = self
            .lanes
            .iter_mut()
            .filter_map(|lane| lane.thread.take())
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Lane {
    fn start(index: usize, stop: CancellationToken) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("llmsrouter-lane-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = tx.send(Err(error));
                        return;
                    }
                };
                let _ = tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(stop.cancelled());
                runtime.shutdown_timeout(BLOCKING_GRACE);
            })?;
        let runtime = rx
            .recv()
            .map_err(|_| io::Error::other("a lane thread ended before its runtime started"))??;
        Ok(Self {
            runtime,
            thread: Some(thread),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_go_round_robin_and_know_their_lane() {
        let mut lanes = Lanes::start(2).expect("lanes");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            lanes.spawn(move |index| async move {
                let thread = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((index, current(), thread));
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.expect("a lane ran the task"));
        }
        seen.sort();
        let lane = |i: usize| (i, i, Some(format!("llmsrouter-lane-{i}")));
        assert_eq!(seen, vec![lane(0), lane(0), lane(1), lane(1)]);
        lanes.stop().await;
    }

    #[test]
    fn outside_a_lane_the_first_pool_is_used() {
        assert_eq!(current(), 0);
    }
}
