//! One request on a lane's own HTTP/1 connection to a plain-`http://` upstream, written and
//! its answer read by the request's own task: no task per connection and no channel between
//! the request and its connection (hyper's client had both, and they cost about a fifth of a
//! proxied request's instructions).
//!
//! The request goes out in one write (head and body together, a body in pieces too: see
//! [`super::RequestBody`]). A connection taken from the lane's list that fails before any byte
//! of the request was written is set aside and the next one tried, as hyper-util's client
//! retried such requests; once a byte went out, a request is never sent again. The answer's body ([`PlainBody`]) is read from the same
//! connection as the caller polls it, and the connection goes back to the list when that body
//! has been read to its end and nothing else arrived; a body dropped before its end closes
//! the connection (the rest of the answer would still be on the wire).
//!
//! An upstream may answer before it has read the whole request: a front-end with a body-size
//! limit (nginx's `client_max_body_size`) answers 413 as soon as it sees the head. If it then
//! closes the connection, the write fails once the socket's buffers are full (a broken pipe,
//! or a reset), but the answer is already in the receive buffer: it is read and relayed, as
//! nginx and curl do. If it keeps the connection open without reading, the write would wait
//! for room that never comes; so a write that has to wait reads meanwhile (RFC 9112 §9.3: a
//! client sending a body watches for an early answer), and once a whole answer is in it stops
//! (`write_request`). Either way that connection is never used again.

use std::future::Future as _;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::closed_by_upstream;
use super::pool::{LanePools, PlainConn};
use super::request_body::{RequestBody, unwritten};
use crate::http1::framing::{Decoded, Decoder, FramingError, response_length};
use crate::http1::head::{HeadError, ResponseHead, parse_response};
use crate::http1::io::{MIN_READ, WriteFailure, read_some, reserve};
use crate::state::SEND_TIMEOUT;

/// What [`PlainError::Framing`] says of `error`.
fn framing_message(error: &FramingError) -> String {
    match error {
        FramingError::Truncated => error.to_string(),
        error if error.is_limit() => format!("the upstream's answer went past a limit: {error}"),
        error => format!("the upstream's answer is malformed: {error}"),
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A body cut off by the upstream's close is said so (not "malformed": what came was
    /// well-formed as far as it went); one past a limit too.
    #[error("{}", framing_message(.0))]
    Framing(#[from] FramingError),
    #[error("the upstream's answer could not be read: {0}")]
    Head(#[from] HeadError),
    #[error("the upstream closed the connection without answering")]
    ClosedBeforeAnswer,
    /// The whole request went out and the upstream then closed the connection, or reset it,
    /// without a byte of answer: it had the request, and may have worked on it (a crash, a
    /// restart, a worker killed mid-generation); the connection was made. Never sent again
    /// (see [`send`]), and not said as "could not reach".
    #[error("the upstream closed the connection without answering (after it had the request)")]
    ClosedAfterRequest,
    #[error("the upstream reset the connection without answering (after it had the request): {0}")]
    ResetAfterRequest(std::io::Error),
    /// Part of an answer's head came, then the connection ended (closed or reset) before
    /// the head's end: the upstream answered, in a form the router cannot read. Not said as
    /// "without answering", nor sent again.
    #[error("the upstream closed the connection in the middle of its answer head")]
    HeadCut,
    #[error("the upstream switched protocols (101), which the router never asks for")]
    Upgrade,
}

/// Why a request could not be sent.
pub(super) enum SendError {
    /// Connecting (TCP) failed or timed out.
    Connect(super::BoxError),
    Exchange(PlainError),
}

/// Where a connection goes back to.
struct Lease {
    pools: Arc<LanePools>,
    lane: usize,
    authority: Arc<str>,
}

/// Sends `head` (request line and header fields, ending in the blank line) and `body` to
/// `authority` over one of lane `lane`'s idle connections, or a new one from `connect`, and
/// reads the answer's head.
///
/// A kept connection the upstream closes as the request reaches it (it idled out on the
/// upstream's side: uvicorn, llama.cpp's server and httpx close after 5 s) ends without a
/// byte of answer within [`RETRY_WINDOW`] of the write; the request then goes once more, on
/// a new connection. A close later than that, or after an interim answer (`100 Continue`),
/// means the upstream had the request and worked on it: not sent again, so a generation is
/// never run (and billed) twice.
pub(super) async fn send<C, F>(
    pools: &Arc<LanePools>,
    lane: usize,
    authority: &str,
    head: &[u8],
    body: &RequestBody,
    connect: C,
) -> Result<(ResponseHead, PlainBody), SendError>
where
    C: FnOnce() -> F,
    F: std::future::Future<Output = Result<tokio::net::TcpStream, super::BoxError>>,
{
    let (authority, mut idle) = pools.take(lane, authority);
    let mut sent = None;
    while let Some(mut conn) = idle {
        let mut early = Early::default();
        match write_request(&mut conn, head, body.pieces(), &mut early).await {
            // Closed before it took a byte: the request may go on another connection.
            Written::Failed(failure) if failure.written == 0 => {
                idle = pools.take(lane, &authority).1;
            }
            written => {
                sent = Some((conn, written, early));
                break;
            }
        }
    }
    // `connect` serves once: the request's first connection when no kept one took it, else
    // its one retry.
    let (mut conn, written, early, unused_connect) = match sent {
        Some((conn, written, early)) => (conn, written, early, Some(connect)),
        None => {
            let (conn, written, early) = on_new_connection(connect, head, body).await?;
            (conn, written, early, None)
        }
    };
    let written_at = std::time::Instant::now();
    let mut interim = false;
    let mut answer = read_answer(&mut conn, written, early, &mut interim).await;
    let idled_out = !interim
        && conn.buf.is_empty()
        && written_at.elapsed() < RETRY_WINDOW
        && answer.as_ref().is_err_and(never_answered);
    let retry = unused_connect.filter(|_| idled_out);
    if let Some(connect) = retry {
        (conn, answer) = match on_new_connection(connect, head, body).await {
            Ok((mut conn, written, early)) => {
                let answer = read_answer(&mut conn, written, early, &mut interim).await;
                (conn, answer)
            }
            // The new connection could not be made: the first failure is the one to report,
            // an idle close that crossed the request, which the upstream never had.
            Err(_) => (conn, answer.map_err(PlainError::before_request)),
        };
    }
    let (head, answered_early) = answer.map_err(SendError::Exchange)?;
    let (length, framing_allows_reuse) =
        response_length(head.status, &head.fields).map_err(|e| SendError::Exchange(e.into()))?;
    let reusable = !answered_early
        && framing_allows_reuse
        && !head.http10
        && !head.fields.has_token("connection", "close");
    let body = PlainBody {
        conn: Some(conn),
        decoder: Decoder::new(length),
        reusable,
        answered_early,
        lease: Lease {
            pools: Arc::clone(pools),
            lane,
            authority,
        },
        grown: false,
        deferred: None,
    };
    Ok((head, body))
}

/// How soon after the request went out a kept connection must have closed, unanswered, for
/// the request to go again: the upstream's idle close then crossed it on the wire (within a
/// round trip), rather than coming after the upstream read and worked on it.
const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// Connects and writes the request: the connection, how the write went and what the
/// upstream sent meanwhile.
async fn on_new_connection<C, F>(
    connect: C,
    head: &[u8],
    body: &RequestBody,
) -> Result<(PlainConn, Written, Early), SendError>
where
    C: FnOnce() -> F,
    F: std::future::Future<Output = Result<tokio::net::TcpStream, super::BoxError>>,
{
    let mut conn = PlainConn::new(connect().await.map_err(SendError::Connect)?);
    let mut early = Early::default();
    let written = write_request(&mut conn, head, body.pieces(), &mut early).await;
    Ok((conn, written, early))
}

/// How writing a request ended.
enum Written {
    /// All of it went out.
    Whole,
    /// The write failed, after `written` bytes.
    Failed(WriteFailure),
    /// The upstream's whole answer (or one that cannot be read) came before the request was
    /// all written: the rest was not sent (see [`write_request`]).
    Stopped,
}

/// What the upstream may send, unread, while its request still waits to be written before
/// the write stops reading (and waits for room alone, as an upstream that neither reads nor
/// answers leaves it): an early answer is nearly always a short error, and a larger one that
/// does not fit would have to be held whole in memory.
const EARLY_ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// Writes the request (`head`, then `body`) in one system call when the kernel takes it all,
/// the common case, which costs nothing more than a plain write. Only when the socket's
/// buffer is full does it wait for room, and while it waits it reads what the upstream sends
/// into `conn.buf` ([`Early`]): an upstream may answer before it has read the request (a
/// front-end's body-size limit), then read nothing more and keep the connection open, and
/// the write would wait for room until it stalled out, the answer unread. Once that answer
/// is whole the write stops ([`Written::Stopped`]); the connection is then reset when it is
/// dropped (the rest of the request is thrown away, not left to the kernel to deliver), and
/// never reused. An answer's head alone stops nothing: the upstream may still read the rest
/// (an upstream that answers 200 early and then reads the body is within its rights). Fails
/// with `TimedOut` when the upstream takes nothing for [`SEND_TIMEOUT`].
async fn write_request(
    conn: &mut PlainConn,
    head: &[u8],
    body: &[Bytes],
    early: &mut Early,
) -> Written {
    let total = head.len() + body.iter().map(Bytes::len).sum::<usize>();
    let mut written = 0;
    let mut watching = true;
    while written < total {
        // A body in pieces (see [`RequestBody`]) goes up to this many slices a write.
        let mut parts = [IoSlice::new(&[]); 16];
        let filled = unwritten(head, body, written, &mut parts);
        match conn.io.try_write_vectored(&parts[..filled]) {
            Ok(0) => {
                let error = std::io::ErrorKind::WriteZero.into();
                return Written::Failed(WriteFailure { written, error });
            }
            Ok(n) => {
                written += n;
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Written::Failed(WriteFailure { written, error }),
        }
        let mut stall = std::pin::pin!(tokio::time::sleep(SEND_TIMEOUT));
        loop {
            match wait_for_room(&conn.io, watching, stall.as_mut()).await {
                Room::Writable => break,
                Room::Failed(error) => return Written::Failed(WriteFailure { written, error }),
                Room::Stalled => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer took nothing for {} s", SEND_TIMEOUT.as_secs()),
                    );
                    return Written::Failed(WriteFailure { written, error });
                }
                Room::Readable => {}
            }
            reserve(&mut conn.buf, 0);
            let decided = match conn.io.try_read_buf(&mut conn.buf) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
                Ok(0) => {
                    watching = false;
                    early.arrived(&mut conn.buf, true)
                }
                Ok(_) => {
                    watching = conn.buf.len() < EARLY_ANSWER_LIMIT;
                    early.arrived(&mut conn.buf, false)
                }
                // A reset: the write fails next, and the answer's reader finds what came.
                Err(_) => {
                    watching = false;
                    false
                }
            };
            if decided {
                // Dropped, the connection is reset rather than left to deliver the rest.
                let _ = conn.io.set_zero_linger();
                return Written::Stopped;
            }
        }
    }
    Written::Whole
}

/// What a write that found no room waited for.
enum Room {
    Writable,
    /// The upstream sent something (looked for only while `watching`).
    Readable,
    Stalled,
    Failed(std::io::Error),
}

/// Waits until `io` has room for more of the request, or (when `watching`) has something to
/// read, or `stall` is over.
async fn wait_for_room(
    io: &tokio::net::TcpStream,
    watching: bool,
    mut stall: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Room {
    std::future::poll_fn(|cx| {
        // An error here shows in the read that follows.
        if watching && io.poll_read_ready(cx).is_ready() {
            return Poll::Ready(Room::Readable);
        }
        match io.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Room::Writable),
            Poll::Ready(Err(error)) => return Poll::Ready(Room::Failed(error)),
            Poll::Pending => {}
        }
        stall.as_mut().poll(cx).map(|()| Room::Stalled)
    })
    .await
}

/// What an upstream sent while its request was still being written: interim answers, the
/// final answer's head, and as much of its body as came, left in the connection's buffer for
/// [`PlainBody`] to read as usual.
#[derive(Default)]
struct Early {
    /// How far [`parse_response`] looked for the end of a head.
    scanned: usize,
    /// An interim (1xx) answer came.
    interim: bool,
    /// The final answer's head, and a decoder run over its body as it arrives (to tell when
    /// it is whole); or why the answer cannot be read.
    head: Option<Result<(ResponseHead, Decoder), PlainError>>,
    /// How much of the buffer after the head the decoder has been run over.
    probed: usize,
}

impl Early {
    /// Takes in what was just read into `buf` (`closed`: the upstream closed its side).
    /// True once the answer is decided: its head and whole body are in, or it cannot be read
    /// (malformed, an upgrade, or ended by the close before its end: the body's reader
    /// reports those as it would have).
    fn arrived(&mut self, buf: &mut BytesMut, closed: bool) -> bool {
        if self.head.is_none() {
            self.head = self.next_head(buf);
        }
        let decoder = match &mut self.head {
            None => return false,
            Some(Err(_)) => return true,
            Some(Ok((_, decoder))) => decoder,
        };
        if let Some(fresh) = buf.get(self.probed..).filter(|f| !f.is_empty()) {
            let mut fresh = BytesMut::from(fresh);
            self.probed = buf.len();
            loop {
                match decoder.decode(&mut fresh) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::NeedMore | Decoded::Done) => break,
                    Err(_) => return true,
                }
            }
        }
        decoder.is_done() || closed
    }

    /// The final answer's head when it is in `buf` (taken out of it, interim answers too).
    fn next_head(
        &mut self,
        buf: &mut BytesMut,
    ) -> Option<Result<(ResponseHead, Decoder), PlainError>> {
        loop {
            let head = match parse_response(buf, &mut self.scanned) {
                Ok(None) => return None,
                Err(error) => return Some(Err(error.into())),
                Ok(Some(head)) => head,
            };
            match head.status {
                101 => return Some(Err(PlainError::Upgrade)),
                100..200 => self.interim = true,
                status => {
                    let framed = response_length(status, &head.fields);
                    return Some(match framed {
                        Ok((length, _)) => Ok((head, Decoder::new(length))),
                        Err(error) => Err(error.into()),
                    });
                }
            }
        }
    }
}

/// The answer's head once the request was written (`written` says how that went, `early`
/// what came meanwhile), and whether the upstream answered before it had the whole request.
async fn read_answer(
    conn: &mut PlainConn,
    written: Written,
    early: Early,
    interim: &mut bool,
) -> Result<(ResponseHead, bool), PlainError> {
    *interim |= early.interim;
    let cut_short = !matches!(written, Written::Whole);
    if let Some(head) = early.head {
        // The answer's head came while the request was written: it is the answer, however
        // the write ended.
        return head.map(|(head, _)| (head, cut_short));
    }
    let whole = matches!(written, Written::Whole);
    let write_error = match written {
        Written::Whole | Written::Stopped => None,
        Written::Failed(failure) if closed_by_upstream(&failure.error) => Some(failure.error),
        Written::Failed(failure) => return Err(failure.error.into()),
    };
    match (read_head(conn, interim).await, write_error) {
        (Ok(head), write_error) => Ok((head, write_error.is_some())),
        // Part of an answer came: that, not the failed write, is what went wrong.
        (Err(PlainError::HeadCut), _) => Err(PlainError::HeadCut),
        // No answer came before the close: the failed write is what went wrong.
        (Err(_), Some(write_error)) => Err(write_error.into()),
        // Nothing of an answer came (a head cut short is not "without answering").
        (Err(error), None) if whole && conn.buf.is_empty() => Err(error.after_request()),
        (Err(error), None) => Err(error),
    }
}

impl PlainError {
    /// The error of an upstream that closed or reset the connection unanswered once it had
    /// the whole request ([`Self::ClosedAfterRequest`], [`Self::ResetAfterRequest`]).
    fn after_request(self) -> Self {
        match self {
            Self::ClosedBeforeAnswer => Self::ClosedAfterRequest,
            Self::Io(error) if closed_by_upstream(&error) => Self::ResetAfterRequest(error),
            other => other,
        }
    }

    /// Undoes [`Self::after_request`]: the close crossed the request (see [`send`]).
    fn before_request(self) -> Self {
        match self {
            Self::ClosedAfterRequest => Self::ClosedBeforeAnswer,
            Self::ResetAfterRequest(error) => Self::Io(error),
            other => other,
        }
    }

    /// The upstream had the whole request when the connection ended unanswered.
    pub(super) fn had_request(&self) -> bool {
        matches!(self, Self::ClosedAfterRequest | Self::ResetAfterRequest(_))
    }
}

/// The upstream closed (or reset) the connection and sent nothing.
fn never_answered(error: &PlainError) -> bool {
    match error {
        PlainError::ClosedBeforeAnswer | PlainError::ClosedAfterRequest => true,
        PlainError::Io(error) | PlainError::ResetAfterRequest(error) => closed_by_upstream(error),
        _ => false,
    }
}

/// The answer's head, after any interim (1xx) answers (`interim` says one came). A
/// connection that ends with part of a head in the buffer is [`PlainError::HeadCut`].
async fn read_head(conn: &mut PlainConn, interim: &mut bool) -> Result<ResponseHead, PlainError> {
    let mut scanned = 0;
    loop {
        match parse_response(&mut conn.buf, &mut scanned)? {
            Some(head) if head.status == 101 => return Err(PlainError::Upgrade),
            Some(head) if (100..200).contains(&head.status) => {
                *interim = true;
                continue;
            }
            Some(head) => return Ok(head),
            None => match read_some(&mut conn.io, &mut conn.buf, 0).await {
                Ok(0) if conn.buf.is_empty() => return Err(PlainError::ClosedBeforeAnswer),
                Ok(0) => return Err(PlainError::HeadCut),
                Ok(_) => {}
                Err(error) if closed_by_upstream(&error) && !conn.buf.is_empty() => {
                    return Err(PlainError::HeadCut);
                }
                Err(error) => return Err(error.into()),
            },
        }
    }
}

/// An answer's body, read from its connection as it is polled.
pub struct PlainBody {
    /// `None` once the body ended (the connection went back, or was closed).
    conn: Option<PlainConn>,
    decoder: Decoder,
    /// The answer's framing and `Connection` allow another request after it.
    reusable: bool,
    /// The upstream answered before it took the whole request (then closed, or the router
    /// stopped writing): a reset after the answer's bytes ends it as the close would, and the
    /// connection is not reused.
    answered_early: bool,
    lease: Lease,
    /// The buffer was grown for a large declared body: not kept while the connection idles.
    /// (Its `capacity()` cannot tell: once the body is split off, it is what is left of the
    /// allocation, which the buffer still holds whole.)
    grown: bool,
    /// Malformed framing found after data that was already taken (see
    /// [`PlainBody::with_buffered`]): that data goes out first, this error next.
    deferred: Option<FramingError>,
}

/// A connection that read a body this large keeps no buffer that size while it idles.
const IDLE_BUFFER_LIMIT: usize = 16 * 1024;

impl PlainBody {
    /// The body ended: its connection goes back when it can carry another request.
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.reusable && self.decoder.is_done() && conn.buf.is_empty() {
            if self.grown || conn.buf.capacity() > IDLE_BUFFER_LIMIT {
                conn.buf = BytesMut::new();
            }
            let lease = &self.lease;
            lease
                .pools
                .put_back(lease.lane, Arc::clone(&lease.authority), conn);
        }
    }

    /// `first` and the body bytes after it that are already in the buffer, as one piece:
    /// chunks that arrived in one read (stream events bunched by a busy upstream or network)
    /// go on together, so the client gets them in one write instead of one write each (a
    /// 20-event stream traced under load made 23.5 writes to the client for 13.5 reads from
    /// the upstream). Framing that turns out malformed after
    /// `first` is kept for the next poll, so the good bytes before it still go out. A read
    /// holding a single chunk costs nothing more: its trailing CRLF is consumed here instead
    /// of on the next poll.
    fn with_buffered(&mut self, first: Bytes) -> Bytes {
        let Some(conn) = self.conn.as_mut() else {
            return first;
        };
        let mut joined: Option<BytesMut> = None;
        while !conn.buf.is_empty() {
            match self.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(more)) => {
                    let joined = joined.get_or_insert_with(|| {
                        let mut all =
                            BytesMut::with_capacity(first.len() + conn.buf.len() + more.len());
                        all.extend_from_slice(&first);
                        all
                    });
                    joined.extend_from_slice(&more);
                }
                Ok(Decoded::NeedMore | Decoded::Done) => break,
                Err(error) => {
                    self.deferred = Some(error);
                    break;
                }
            }
        }
        joined.map_or(first, BytesMut::freeze)
    }

    fn fail(&mut self, error: PlainError) -> Poll<Option<Result<Frame<Bytes>, PlainError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for PlainBody {
    type Data = Bytes;
    type Error = PlainError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PlainError>>> {
        let this = &mut *self;
        if let Some(error) = this.deferred.take() {
            return this.fail(error.into());
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    let data = this.with_buffered(data);
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Err(error) => return this.fail(error.into()),
                Ok(Decoded::NeedMore) => {}
            }
            let expect = this
                .decoder
                .remaining()
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
            reserve(&mut conn.buf, expect);
            this.grown |= expect > MIN_READ;
            let read = ready!(tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ));
            let closed = match read {
                Ok(0) => true,
                Ok(_) => false,
                // An upstream that closed with the request unread resets the connection.
                Err(error)
                    if this.answered_early
                        && error.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    true
                }
                Err(error) => return this.fail(error.into()),
            };
            if closed {
                if let Err(error) = this.decoder.end_of_input() {
                    return this.fail(error.into());
                }
                // Ended by the close: nothing to give back.
                this.conn = None;
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for PlainBody {
    fn drop(&mut self) {
        // Read to its end (a reader may stop at the exact size without asking again).
        if self.decoder.is_done() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A hyper server on a loopback port answering every request with one body. It counts
    /// the connections it accepted and reports each one that ended.
    struct Server {
        addr: std::net::SocketAddr,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        ended: tokio::sync::mpsc::UnboundedReceiver<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(body: Bytes) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = Arc::clone(&accepted);
            let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (body, ended_tx) = (body.clone(), ended_tx.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_request| {
                            let body = http_body_util::Full::new(body.clone());
                            async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                        });
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                        let _ = ended_tx.send(());
                    });
                }
            });
            Self {
                addr,
                accepted,
                ended,
                task,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// One lane's pool and a way to reach the test server at `addr`.
    struct Client {
        pools: Arc<LanePools>,
        addr: std::net::SocketAddr,
        authority: String,
    }

    impl Client {
        fn new(addr: std::net::SocketAddr) -> Self {
            Self::idling(addr, Duration::from_secs(90))
        }

        fn idling(addr: std::net::SocketAddr, idle_timeout: Duration) -> Self {
            Self {
                pools: Arc::new(LanePools::new(1, idle_timeout)),
                addr,
                authority: addr.to_string(),
            }
        }

        async fn post(&self) -> (ResponseHead, PlainBody) {
            let sent = self.try_post(Bytes::from_static(b"{}")).await;
            sent.ok().expect("sent")
        }

        async fn try_post(&self, body: Bytes) -> Result<(ResponseHead, PlainBody), SendError> {
            let head = format!(
                "POST /v1/x HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
                self.authority,
                body.len()
            );
            let addr = self.addr;
            let connect = || async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| Box::new(e) as super::super::BoxError)
            };
            send(
                &self.pools,
                0,
                &self.authority,
                head.as_bytes(),
                &RequestBody::from(body),
                connect,
            )
            .await
        }

        fn idle(&self) -> usize {
            self.pools.idle_count(0, &self.authority)
        }
    }

    /// A connection goes back only after its answer was read to the end; one whose answer
    /// was abandoned halfway is closed instead.
    #[tokio::test]
    async fn connections_are_reused_only_after_a_whole_answer() {
        // More than one read can hold.
        const BIG: usize = 4 << 20;
        let server = Server::start(Bytes::from(vec![b'x'; BIG])).await;
        let client = Client::new(server.addr);
        for _ in 0..3 {
            let (head, body) = client.post().await;
            assert_eq!(head.status, 200);
            let body = body.collect().await;
            assert_eq!(body.expect("body").to_bytes().len(), BIG);
            assert_eq!(client.idle(), 1);
        }
        assert_eq!(server.accepted(), 1);

        // Read one frame and drop the rest: that connection is not returned.
        let (_, mut body) = client.post().await;
        assert_eq!(client.idle(), 0);
        let _first = body.frame().await;
        drop(body);
        assert_eq!(client.idle(), 0);
        let (_, body) = client.post().await;
        assert_eq!(body.collect().await.expect("body").to_bytes().len(), BIG);
        assert_eq!(server.accepted(), 2);
    }

    /// A connection that read a large body goes back without the buffer it grew for it; one
    /// that read a small body keeps its buffer for the next answer.
    #[tokio::test]
    async fn a_connection_goes_back_without_a_buffer_grown_for_a_large_body() {
        for (size, released) in [(1 << 20, true), (100, false)] {
            let server = Server::start(Bytes::from(vec![b'x'; size])).await;
            let client = Client::new(server.addr);
            let (_, body) = client.post().await;
            let read = body.collect().await.expect("body").to_bytes();
            assert_eq!(read.len(), size);
            drop(read);
            let (_, conn) = client.pools.take(0, &client.authority);
            let conn = conn.expect("the connection went back");
            // Taking it may have read (nothing) into a released buffer: 64 bytes of room.
            assert_eq!(conn.buf.capacity() < 1024, released, "{size}-byte body");
        }
    }

    /// An upstream that closes a keep-alive connection while it idles in the list (its own
    /// idle timeout): the next request finds it closed and goes on a new connection.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            // One answer per connection, then a silent close (no `Connection: close`).
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while !seen.ends_with(b"\r\n\r\n{}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = socket.write_all(answer).await;
                drop(socket);
                let _ = closed_tx.send(());
            }
        });
        let client = Client::new(addr);
        for _ in 0..3 {
            let (_, body) = client.post().await;
            assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
            // Back in the list, where the next request will find it closed.
            assert_eq!(client.idle(), 1);
            closed.recv().await.expect("the server closed it");
        }
        server.abort();
    }

    /// Answers framed by the connection's close, chunked answers with trailers, and a
    /// `Connection: close` answer: read whole, and only the chunked one is kept.
    #[tokio::test]
    async fn framings_are_read_and_reuse_follows_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\n\r\nok",
        ];
        let server = tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(answer).await;
                if !answer.starts_with(b"HTTP/1.1 100") {
                    let _ = socket.shutdown().await;
                } else {
                    // Kept open: the client decides. Hand it back so the test ends cleanly.
                    let mut rest = Vec::new();
                    let _ = socket.read_to_end(&mut rest).await;
                }
            }
        });
        let client = Client::new(addr);
        let (head, body) = client.post().await;
        assert_eq!(head.status, 200, "the interim answer is skipped");
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(client.idle(), 1, "chunked and keep-alive: reused");
        // Close the kept connection so the next request needs a new one.
        drop(client.pools.take(0, &client.authority).1);
        for _ in 0..2 {
            let (_, body) = client.post().await;
            assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
            assert_eq!(client.idle(), 0, "closed after the answer");
        }
        server.abort();
    }

    /// Chunks that arrived in one read leave as one frame (one write to the client), and
    /// malformed framing after good chunks fails only after those chunks went out.
    #[tokio::test]
    async fn chunks_that_arrived_together_leave_together() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (go_on_tx, go_on) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let bunched = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n";
            let _ = socket.write_all(bunched).await;
            let _ = go_on.await;
            let _ = socket.write_all(b"4\r\nfour\r\n0\r\n\r\n").await;
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        let client = Client::new(addr);
        let (_, mut body) = client.post().await;
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"onetwothree"[..]));
        let _ = go_on_tx.send(());
        let rest = body.collect().await.expect("body").to_bytes();
        assert_eq!(rest, "four");
        assert_eq!(client.idle(), 1, "the whole answer was read: reused");
        server.abort();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let broken = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                2\r\nok\r\n3\r\nyes\r\nzz\r\n";
            let _ = socket.write_all(broken).await;
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        let client = Client::new(addr);
        let (_, mut body) = client.post().await;
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"okyes"[..]));
        let second = body.frame().await.expect("the error");
        assert!(matches!(second, Err(PlainError::Framing(_))), "{second:?}");
        assert!(body.frame().await.is_none(), "nothing after the error");
        assert_eq!(client.idle(), 0, "a broken connection is not kept");
        server.abort();
    }

    /// An upstream that answers as soon as it has read a request's head, leaves the body
    /// unread and closes (a front-end's body-size limit): the write fails once the socket's
    /// buffers are full, yet the answer is read (its framing would allow reuse, but the
    /// connection is not kept). One that closes without answering fails with the write's
    /// error.
    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_is_still_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
            b"",
        ];
        let server = tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let _ = socket.set_nodelay(true);
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = socket.write_all(answer).await;
                // Closed with the body unread: the kernel resets the connection.
                drop(socket);
            }
        });
        // Far more than the loopback's socket buffers hold.
        let large = Bytes::from(vec![b'x'; 32 << 20]);
        let client = Client::new(addr);
        let Ok((head, body)) = client.try_post(large.clone()).await else {
            panic!("the early answer was lost");
        };
        assert_eq!(head.status, 413);
        assert_eq!(body.collect().await.expect("body").to_bytes(), "too big!");
        assert_eq!(
            client.idle(),
            0,
            "a connection the upstream closed is not kept"
        );

        match client.try_post(large).await {
            Ok(_) => panic!("no answer was sent"),
            Err(SendError::Exchange(PlainError::Io(error))) => {
                assert!(closed_by_upstream(&error), "the write's own error: {error}")
            }
            Err(_) => panic!("the write's error was replaced"),
        }
        server.abort();
    }

    /// An upstream that answers as soon as it has read a request's head and then neither
    /// reads nor closes: the write, waiting for room, reads the answer and stops once it is
    /// whole (by its length, or its last chunk; interim answers skipped). The connection is
    /// not kept.
    #[tokio::test]
    async fn a_whole_answer_sent_before_the_body_was_read_ends_the_write() {
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\n\
              transfer-encoding: chunked\r\n\r\n3\r\ntoo\r\n5\r\n big!\r\n0\r\n\r\n",
        ];
        for answer in answers {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                // Half of it, then the rest: the write goes on until the answer is whole.
                let (first, rest) = answer.split_at(answer.len() / 2);
                let _ = socket.write_all(first).await;
                tokio::task::yield_now().await;
                let _ = socket.write_all(rest).await;
                std::future::pending::<()>().await;
            });
            let client = Client::new(addr);
            let large = Bytes::from(vec![b'x'; 32 << 20]);
            let sent = tokio::time::timeout(Duration::from_secs(20), client.try_post(large)).await;
            let Ok(Ok((head, body))) = sent else {
                panic!("the early answer was not read");
            };
            assert_eq!(head.status, 413);
            assert_eq!(body.collect().await.expect("body").to_bytes(), "too big!");
            assert_eq!(
                client.idle(),
                0,
                "a request cut short leaves its connection unusable"
            );
            server.abort();
        }
    }

    /// An upstream that sends its answer's head before it reads the body, then reads it all
    /// and sends the answer's body: the write goes on after the head, and the connection,
    /// with its whole request written and its whole answer read, is kept.
    #[tokio::test]
    async fn an_early_head_does_not_stop_the_write() {
        const LARGE: usize = 32 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            let mut buffer = vec![0u8; 64 * 1024];
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                .await;
            let head_end = loop {
                if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            };
            let mut body = seen.len() - head_end;
            while body < LARGE {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body += n,
                }
            }
            let _ = socket.write_all(b"ok").await;
            std::future::pending::<()>().await;
        });
        let client = Client::new(addr);
        let large = Bytes::from(vec![b'x'; LARGE]);
        let sent = tokio::time::timeout(Duration::from_secs(20), client.try_post(large)).await;
        let Ok(Ok((head, body))) = sent else {
            panic!("no answer");
        };
        assert_eq!(head.status, 200);
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(client.idle(), 1, "written and read whole: kept");
        server.abort();
    }

    /// A listener on a loopback port, its address, and a count for the requests it reads.
    async fn counting_listener() -> (
        tokio::net::TcpListener,
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr, Arc::default())
    }

    /// Reads one of [`Client::post`]'s requests (its body is `{}`); false when the client
    /// closed first.
    async fn next_request(socket: &mut tokio::net::TcpStream) -> bool {
        let mut buffer = [0u8; 4096];
        let mut pending = Vec::new();
        while !pending.windows(6).any(|w| w == b"\r\n\r\n{}") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => pending.extend_from_slice(&buffer[..n]),
            }
        }
        true
    }

    /// A kept connection the upstream closes as the next request reaches it (it idled out
    /// on the upstream's side), without a byte of answer: the request goes once more, on a
    /// new connection, and is answered. A new connection that does the same is not retried.
    #[tokio::test]
    async fn a_kept_connection_closed_unanswered_is_retried_once_on_a_new_one() {
        let (listener, addr, requests) = counting_listener().await;
        let seen = Arc::clone(&requests);
        // Connection 1 answers one request and closes at the next; connection 2 answers
        // one; connection 3 closes at its first.
        let server = tokio::spawn(async move {
            for answered in [1, 1, 0] {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut served = 0;
                loop {
                    if !next_request(&mut socket).await {
                        break;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if served == answered {
                        break;
                    }
                    served += 1;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                drop(socket);
            }
        });
        let client = Client::new(addr);
        for _ in 0..2 {
            let (head, body) = client.post().await;
            assert_eq!(head.status, 200);
            assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        }
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the second request went twice"
        );
        assert_eq!(client.idle(), 1, "the new connection is kept");
        // Kept connection 2 is closed unanswered too; the retry's new connection as well:
        // the failure is reported, not retried again.
        match client.try_post(Bytes::from_static(b"{}")).await {
            Ok(_) => panic!("no answer was sent"),
            Err(SendError::Exchange(error)) => assert!(never_answered(&error), "{error}"),
            Err(SendError::Connect(error)) => panic!("connect failed: {error}"),
        }
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 5);
        server.abort();
    }

    /// A kept connection the upstream closes without an answer after it had the request a
    /// while (it worked on it), or after an interim `100 Continue`: not sent again.
    #[tokio::test]
    async fn a_request_the_upstream_worked_on_is_not_sent_again() {
        for (pause, interim) in [
            (RETRY_WINDOW * 2, &b""[..]),
            (Duration::ZERO, &b"HTTP/1.1 100 Continue\r\n\r\n"[..]),
        ] {
            let (listener, addr, requests) = counting_listener().await;
            let seen = Arc::clone(&requests);
            let server = tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    for answer in [true, false] {
                        if !next_request(&mut socket).await {
                            return;
                        }
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if answer {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            let _ = socket.write_all(ok).await;
                        } else {
                            let _ = socket.write_all(interim).await;
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            });
            let client = Client::new(addr);
            let (_, body) = client.post().await;
            assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
            assert!(client.try_post(Bytes::from_static(b"{}")).await.is_err());
            assert_eq!(
                requests.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "sent once (pause {pause:?}, interim {})",
                !interim.is_empty()
            );
            server.abort();
        }
    }

    /// An idle connection the upstream closed (as uvicorn does after 5 s) is dropped by the
    /// lane's sweep long before the idle timeout, not held in CLOSE-WAIT, with its file,
    /// until a request takes it or the timeout passes.
    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_dropped_by_the_sweep() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\n{}") {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request came whole");
                seen.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            // Then closed, as an upstream that ends idle connections does.
        });
        // Nine seconds idle at most: the sweep runs every second.
        let client = Client::idling(addr, Duration::from_secs(9));
        let (_, body) = client.post().await;
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        server.await.expect("server");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.idle() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the closed connection is still held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connections past the idle timeout are closed even when no request comes to return or
    /// take one.
    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let mut server = Server::start(Bytes::from_static(b"ok")).await;
        let client = Client::idling(server.addr, Duration::from_millis(50));
        let (_, body) = client.post().await;
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(client.idle(), 1);
        let closed = tokio::time::timeout(Duration::from_secs(10), server.ended.recv()).await;
        assert!(
            matches!(closed, Ok(Some(()))),
            "the idle connection was not closed"
        );
        assert_eq!(client.idle(), 0);
        let (sweeping, hosts) = client.pools.sweep_state(0);
        assert!(!sweeping, "the sweep ends with nothing to sweep");
        assert_eq!(hosts, 0, "a host without connections is forgotten");
    }
}
