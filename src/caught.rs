//! Panics caught where a request is handled, so one bug ends one request: its client gets a
//! 500 `internal_error` (or, once its answer was under way, a cut connection or stream) and
//! the log an error line, instead of an empty reply and nothing said.
//!
//! Must never: log or answer a panic's message. It may quote what the panicking code held (a
//! prompt, a header, a key), so only where the panic happened is kept: a panic hook notes
//! the place of a panic inside [`catching`] and says nothing else; a panic anywhere else goes
//! to the hook that was there before (Rust's own, which prints the message).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;

/// A panic caught by [`catching`]: only where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    /// `file:line:column`; `None` when the hook did not see the panic.
    location: Option<String>,
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "at {location}"),
            None => f.write_str("at an unknown place"),
        }
    }
}

thread_local! {
    /// How many [`catching`] futures this thread is polling, one inside the other.
    static POLLING: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic inside one of them happened.
    static LOCATION: Cell<Option<String>> = const { Cell::new(None) };
}

/// Runs `future`, turning a panic while it is polled into `Err`. Nothing of the future is
/// polled again after its panic (its state is dropped), which is why it is taken as unwind
/// safe; what it borrowed is used after it only to answer or close the connection.
pub async fn catching<F: Future>(future: F) -> Result<F::Output, Panicked> {
    install_hook();
    match AssertUnwindSafe(Polling { inner: future })
        .catch_unwind()
        .await
    {
        Ok(output) => Ok(output),
        // The payload, the message, is dropped unread.
        Err(_) => Err(Panicked {
            location: LOCATION.try_with(Cell::take).ok().flatten(),
        }),
    }
}

/// Installs, once per process, the hook that keeps a caught panic's message out of the log
/// (see the module's doc).
fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if POLLING.try_with(Cell::get).unwrap_or(0) == 0 {
                return previous(info);
            }
            let location = info
                .location()
                .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
            let _ = LOCATION.try_with(|slot| slot.set(location));
        }));
    });
}

pin_project_lite::pin_project! {
    /// A future counted in [`POLLING`] while it is polled.
    struct Polling<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Polling<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _counted = Counted::new();
        self.project().inner.poll(cx)
    }
}

/// One count in [`POLLING`], taken back when dropped (by an unwind too).
struct Counted;

impl Counted {
    fn new() -> Self {
        let _ = POLLING.try_with(|n| n.set(n.get() + 1));
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = POLLING.try_with(|n| n.set(n.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_place_and_the_output_passes_through() {
        assert_eq!(catching(async { 7 }).await, Ok(7));
        let line = line!() + 3;
        let caught = catching(async {
            if line > 0 {
                panic!("a secret the panic quoted");
            }
        })
        .await;
        let Err(panicked) = caught else {
            panic!("the panic was not caught");
        };
        let said = panicked.to_string();
        assert!(
            said.starts_with(&format!("at {}:{line}:", file!())),
            "{said}"
        );
        assert!(!said.contains("secret"), "{said}");
        // Counted back down by the unwind: a panic outside goes to the usual hook again.
        assert_eq!(POLLING.with(Cell::get), 0);
    }
}
