//! The connections hyper's client sends TLS upstreams' requests over, changed in one way: a
//! write that fails because the upstream closed the connection does not fail at once. It
//! waits, so that hyper, which reads while it writes, reads the answer the upstream sent
//! before it closed.
//!
//! An upstream may answer before it has read the whole request, then close: a front-end with a
//! body-size limit answers 413 to a large prompt as soon as it sees the head. hyper's HTTP/1
//! client fails the request as soon as writing its body fails (hyper#2384, hyper#4176),
//! losing the answer already in the socket's receive buffer. Held instead, the write leaves
//! hyper reading: it hands the answer over, then finds the end of the connection (the reset,
//! after what had arrived) and closes it. A connection whose request was never written whole
//! is never idle, so the pool cannot give it to another request (hyper#2646). Should the end
//! not be found, the write fails after [`GRACE`] and the connection closes then. Reads, and
//! every other write error, pass through as they are.

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};

use super::closed_by_upstream;

/// How long a write that found the connection closed waits before it fails: time enough to
/// read an answer already received.
const GRACE: Duration = Duration::from_secs(10);

/// A connection whose writes wait once the upstream closed it (see the module).
pub struct KeepReading<T> {
    inner: T,
    /// A write found the connection closed by the upstream.
    failed: Option<Failed>,
}

struct Failed {
    /// The write's error, given to hyper when the grace is over.
    error: Option<io::Error>,
    until: Pin<Box<tokio::time::Sleep>>,
}

impl<T> KeepReading<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            failed: None,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    /// A write after the upstream closed the connection: pending until the grace is over,
    /// then the error.
    fn poll_failed<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(failed) = self.failed.as_mut() else {
            return Poll::Pending;
        };
        ready!(failed.until.as_mut().poll(cx));
        let error = failed
            .error
            .take()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
        Poll::Ready(Err(error))
    }

    /// The result of a write, held (see the module) when the upstream closed the connection.
    fn hold<R>(&mut self, cx: &mut Context<'_>, result: io::Result<R>) -> Poll<io::Result<R>> {
        match result {
            Err(error) if closed_by_upstream(&error) => {
                tracing::debug!(%error, "the upstream closed the connection while the request was written; reading its answer");
                self.failed = Some(Failed {
                    error: Some(error),
                    until: Box::pin(tokio::time::sleep(GRACE)),
                });
                self.poll_failed(cx)
            }
            other => Poll::Ready(other),
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for KeepReading<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for KeepReading<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        self.hold(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        self.hold(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
        }
        let result = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.hold(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing more can be sent on a connection the upstream closed.
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for KeepReading<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
