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
//!
//! An upstream that answers early may also keep the connection open and read nothing more.
//! hyper reads and relays that answer all the same, but its connection would go on waiting to
//! write the rest of the request for as long as the upstream keeps it, holding the body: a
//! write that waits [`SEND_TIMEOUT`] without room fails instead (as the plain-HTTP client's
//! does), and the connection closes. That holds for HTTP/2 connections too, whose peer, not
//! reading its socket for that long, cannot be reading anything (pings, window updates).
//!
//! A read that fails (the connection reset, a TLS session ended without `close_notify`) before
//! the request was written whole, or on an HTTP/2 connection (where that cannot be told), is
//! marked ([`cut_request`]), as is a held write's error: an upstream that ended the
//! connection unanswered is then not said to have had the request (see
//! `UpstreamError::from_direct`).
//!
//! An HTTP/1 connection also says whether any of an answer came since the request was last
//! written ([`AnswerBegun`], in its [`Connected`] extra, which a failed request's error
//! carries): a request that fails once some of its answer came, the connection ended, had its
//! answer's head cut short, as the plain-HTTP client says it
//! (`plain::PlainError::HeadCut`), not an upstream that sent nothing.

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};

use super::{closed_by_upstream, ended_by_upstream};
use crate::state::SEND_TIMEOUT;

/// How long a write that found the connection closed waits before it fails: time enough to
/// read an answer already received.
const GRACE: Duration = Duration::from_secs(10);

/// The most the first read after a request takes (see [`KeepReading::poll_first_read`]): an
/// answer's head, usually, and hyper reads the rest next.
const FIRST_READ: usize = 4096;

/// A connection whose writes wait once the upstream closed it (see the module).
pub struct KeepReading<T> {
    inner: T,
    /// A write found the connection closed by the upstream.
    failed: Option<Failed>,
    /// The timer of a write waiting for room, kept for the next wait (see [`Self::settle`]).
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last write (or flush) waited for room and has not made progress since: the timer
    /// runs on from when that wait began.
    waiting: bool,
    /// Bytes were written since the last flush that completed. hyper's HTTP/1 client flushes
    /// only once it has handed over all it holds, so while this is false, all of the request
    /// hyper had is with the connection.
    unflushed: bool,
    /// HTTP/2: a flush says nothing of a request's body, which may wait in h2's buffers for
    /// the upstream's window, so no read error tells of a request written whole.
    multiplexed: bool,
    /// Bytes were read since the last write: `begun`'s value, kept here so that reads and
    /// writes touch the shared flag only when it changes.
    answered: bool,
    /// Shared with the connection's [`Connected`] (HTTP/1 only).
    begun: AnswerBegun,
}

/// Whether bytes of an answer were read on an HTTP/1 connection since its request was last
/// written (see the module). Cloned into the connection's [`Connected`] extra.
#[derive(Clone, Default)]
pub struct AnswerBegun(Arc<AtomicBool>);

impl AnswerBegun {
    /// The flag of the connection a request that failed with `error` was sent on, when that
    /// was an HTTP/1 connection this module made.
    pub fn of(error: &hyper_util::client::legacy::Error) -> Option<Self> {
        let mut extensions = http::Extensions::new();
        error.connect_info()?.get_extras(&mut extensions);
        extensions.remove::<Self>()
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Failed {
    /// The write's error, given to hyper when the grace is over.
    error: Option<io::Error>,
    until: Pin<Box<tokio::time::Sleep>>,
}

/// The error of a connection whose request may not have been written whole when it ended
/// (see the module): its words kept, its kind made `Other`, so that it does not read as an
/// upstream that ended the connection once it had the request (a reset, an unexpected end).
/// The kind, not a type of error, says it: h2 rebuilds an error from its kind and words.
fn cut_request(error: io::Error) -> io::Error {
    if ended_by_upstream(&error) {
        io::Error::other(error)
    } else {
        error
    }
}

impl<T> KeepReading<T> {
    /// `multiplexed`: the connection speaks HTTP/2.
    pub fn new(inner: T, multiplexed: bool) -> Self {
        Self {
            inner,
            failed: None,
            stall: None,
            waiting: false,
            unflushed: false,
            multiplexed,
            answered: false,
            begun: AnswerBegun::default(),
        }
    }

    /// `wrote` bytes of a request went out: what is read next is its answer.
    fn wrote(&mut self, wrote: bool) {
        if wrote && self.answered {
            self.answered = false;
            self.begun.0.store(false, Ordering::Relaxed);
        }
    }

    /// The first read after a request was written (HTTP/1), through a small buffer of its
    /// own, so that it tells whether any of an answer came: what a cursor was filled with
    /// cannot be seen once it is handed on (nor the cursor moved on without `unsafe`). Later
    /// reads, until the next request, go straight to the caller's buffer.
    fn poll_first_read(
        &mut self,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>>
    where
        T: hyper::rt::Read + Unpin,
    {
        let mut scratch = [0u8; FIRST_READ];
        let room = buf.remaining().min(FIRST_READ);
        let mut first = hyper::rt::ReadBuf::new(&mut scratch[..room]);
        match Pin::new(&mut self.inner).poll_read(cx, first.unfilled()) {
            Poll::Ready(Ok(())) => {
                let read = first.filled();
                if !read.is_empty() {
                    buf.put_slice(read);
                    self.answered = true;
                    self.begun.0.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(self.read_failed(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A read's error, marked when the request may not have been written whole (see
    /// [`cut_request`]).
    fn read_failed(&self, error: io::Error) -> io::Error {
        if self.unflushed || self.multiplexed || self.failed.is_some() {
            cut_request(error)
        } else {
            error
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
        Poll::Ready(Err(cut_request(error)))
    }

    /// A write's poll: a result is held when the upstream closed the connection (see
    /// [`Self::hold`]); a wait for room fails once it has lasted [`SEND_TIMEOUT`]
    /// ([`Self::poll_stall`]). A write that does not wait costs a flag.
    fn settle<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.waiting = false;
                self.hold(cx, result)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }

    /// A write is waiting for room: pending until [`SEND_TIMEOUT`] after the wait began,
    /// then `TimedOut`. The timer is allocated at the first wait and reset at the next.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = tokio::time::Instant::now() + SEND_TIMEOUT;
        let stall = match self.stall.as_mut() {
            Some(stall) => {
                if !self.waiting {
                    stall.as_mut().reset(deadline);
                }
                stall
            }
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        ready!(stall.as_mut().poll(cx));
        self.waiting = false;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the upstream took nothing of the request for {} s",
                SEND_TIMEOUT.as_secs()
            ),
        )))
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
        if !self.answered && !self.multiplexed {
            return self.poll_first_read(cx, buf);
        }
        Pin::new(&mut self.inner)
            .poll_read(cx, buf)
            .map_err(|error| self.read_failed(error))
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
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        let poll = self.settle(cx, poll);
        let wrote = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.unflushed |= wrote;
        self.wrote(wrote);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let poll = self.settle(cx, poll);
        let wrote = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.unflushed |= wrote;
        self.wrote(wrote);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
        }
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        let poll = self.settle(cx, poll);
        if let Poll::Ready(Ok(())) = poll {
            self.unflushed = false;
        }
        poll
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
        let connected = self.inner.connected();
        if self.multiplexed {
            connected
        } else {
            connected.extra(self.begun.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Write as _;

    /// A peer that takes nothing more: a write waiting for room fails after [`SEND_TIMEOUT`]
    /// instead of waiting for as long as the peer keeps the connection open.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_for_room_too_long_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Accepted and held, never read.
        let (_peer, _) = listener.accept().await.expect("accept");
        let mut io = KeepReading::new(hyper_util::rt::TokioIo::new(client), false);
        let chunk = vec![b'x'; 1 << 20];
        let started = tokio::time::Instant::now();
        let failed = tokio::time::timeout(SEND_TIMEOUT * 2, async {
            loop {
                let written =
                    std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &chunk)).await;
                if let Err(error) = written {
                    return error;
                }
            }
        })
        .await;
        let Ok(error) = failed else {
            panic!("the write still waits for room");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() >= SEND_TIMEOUT, "{:?}", started.elapsed());
    }
}
