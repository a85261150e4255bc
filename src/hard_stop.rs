//! The hard stop: fired when shutdown's grace period is over, so whatever a request still
//! waits on (an upstream's answer, the next stream event) gives up and the client gets an
//! error instead of a cut connection.
//!
//! Every request waits on it, and a stream checks it at every event, so it must cost nearly
//! nothing while it has not fired. A plain `CancellationToken` does not: each poll of its
//! future takes the lock of one wait list shared by every request on every core (callgrind:
//! 7.3 K of a 20-chunk stream's 281 K instructions, and that lock's cache line moves between
//! the cores). Here each lane has its own child token, so a wait list is only touched by its
//! own thread, and [`Stopped`] registers its waker once and afterwards checks an atomic flag
//! (a stream: 281 K → 275 K instructions).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Cheap to clone; every clone sees the same signal.
#[derive(Clone, Debug)]
pub struct HardStop {
    fired: Arc<AtomicBool>,
    root: CancellationToken,
    /// One child of `root` per lane (plus one for work outside any lane).
    lanes: Arc<[CancellationToken]>,
}

impl Default for HardStop {
    fn default() -> Self {
        Self::new()
    }
}

impl HardStop {
    pub fn new() -> Self {
        let root = CancellationToken::new();
        let lanes = (0..=crate::lanes::count())
            .map(|_| root.child_token())
            .collect();
        Self {
            fired: Arc::default(),
            root,
            lanes,
        }
    }

    /// Stops every waiter, now and to come.
    pub fn fire(&self) {
        // The flag first: a waiter woken by the token must find it set.
        self.fired.store(true, Ordering::Release);
        self.root.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once the hard stop fires. Poll it from the lane it was made on.
    pub fn stopped(&self) -> Stopped {
        let token = &self.lanes[crate::lanes::current() % self.lanes.len()];
        Stopped {
            fired: self.fired.clone(),
            wait: Box::pin(token.clone().cancelled_owned()),
            registered: None,
        }
    }
}

/// The future of [`HardStop::stopped`].
pub struct Stopped {
    fired: Arc<AtomicBool>,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker the token will wake, once registered: while the same task polls, there is
    /// nothing to register again, and the flag alone tells whether the stop came.
    registered: Option<Waker>,
}

impl Stopped {
    /// Whether the stop came (without registering anything).
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let this = &mut *self;
        match this.wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_stop_see_it() {
        let stop = HardStop::new();
        let early = tokio::spawn({
            let stop = stop.clone();
            async move { stop.stopped().await }
        });
        // The early waiter is registered (polled at least once) before the stop fires.
        let mut probe = Box::pin(stop.stopped());
        assert!(futures_util::poll!(probe.as_mut()).is_pending());
        assert!(
            futures_util::poll!(probe.as_mut()).is_pending(),
            "polled again: still waiting"
        );
        tokio::task::yield_now().await;
        assert!(!stop.is_fired());
        stop.fire();
        assert!(stop.is_fired());
        tokio::time::timeout(std::time::Duration::from_secs(10), early)
            .await
            .expect("the early waiter woke")
            .expect("task");
        assert!(futures_util::poll!(probe.as_mut()).is_ready());
        // A waiter made after the stop completes at once.
        assert!(futures_util::poll!(Box::pin(stop.stopped())).is_ready());
    }
}
