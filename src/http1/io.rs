//! Reading and writing a socket by readiness, through `&TcpStream`: a task can wait for a
//! client's end of file while it writes to the same socket, with no split halves and no
//! locks. Writes are tried at once (a socket is nearly always writable) and wait only when
//! the kernel's buffer is full.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::hard_stop::Stopped;

/// The least a read asks the kernel for, and the most.
pub const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Reads what is there (waiting until something is) into `buf`; 0 means end of file.
/// `expect` is how much more the reader knows is coming (a declared body length), so a
/// large body is read in large pieces.
///
/// Through tokio's `AsyncRead`, which treats a read that did not fill the buffer as having
/// drained the socket (as nginx does): the next read waits for the kernel's next event
/// instead of asking first and getting `EAGAIN`, one system call less per message.
pub async fn read_some(io: &mut TcpStream, buf: &mut BytesMut, expect: usize) -> io::Result<usize> {
    reserve(buf, expect);
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}

/// [`read_some`] for a client connection [`closed_by_peer`] may have left with bytes unread:
/// while `unread` is set those are read straight from the socket, since tokio no longer
/// shows them (a pipelined request behind them waited for the client to send a byte more,
/// or to leave: bb68). `unread` is cleared once the socket has nothing more.
pub async fn read_client(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    expect: usize,
    unread: &mut bool,
) -> io::Result<usize> {
    if *unread {
        match read_unwatched(io, buf, expect) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *unread = false,
            read => return read,
        }
    }
    read_some(io, buf, expect).await
}

/// One read from the socket itself, whatever tokio's readiness says (it may not have seen
/// bytes arrive yet, or have been told they were taken); `WouldBlock` when there is nothing
/// (tokio made the socket non-blocking).
pub fn read_unwatched(io: &TcpStream, buf: &mut BytesMut, expect: usize) -> io::Result<usize> {
    use std::io::Read as _;
    reserve(buf, expect);
    let start = buf.len();
    // Zeroed first: the crate forbids `unsafe`, and this read is only ever the rare one.
    buf.resize(buf.capacity(), 0);
    let socket = socket2::SockRef::from(io);
    let read = loop {
        match (&*socket).read(&mut buf[start..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => break read,
        }
    };
    buf.truncate(start + read.as_ref().map_or(0, |n| *n));
    read
}

/// Makes room in `buf` for a read of about `expect` bytes (see [`read_some`]).
pub fn reserve(buf: &mut BytesMut, expect: usize) {
    let want = expect.clamp(MIN_READ, MAX_READ);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
}

/// [`read_some`] through a shared reference, for a task that also writes to the socket.
async fn read_shared(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    reserve(buf, 0);
    std::future::poll_fn(|cx| {
        loop {
            std::task::ready!(io.poll_read_ready(cx))?;
            match io.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => return std::task::Poll::Ready(read),
            }
        }
    })
    .await
}

/// A write that failed, and how much of it had gone out.
#[derive(Debug)]
pub struct WriteFailure {
    pub written: usize,
    pub error: io::Error,
}

/// Writes `first` then `second` (either may be empty), in one system call when the kernel
/// takes them at once. Fails with `TimedOut` when the peer takes nothing for `stall`: a
/// client that stopped reading (a laptop gone to sleep mid-stream leaves no FIN behind)
/// would otherwise hold the connection, and a stream's upstream, until TCP gives up on it
/// a quarter of an hour later.
pub async fn write_all(
    io: &TcpStream,
    first: &[u8],
    second: &[u8],
    stall: Duration,
) -> Result<(), WriteFailure> {
    match write_all_unless(io, first, second, stall, None).await {
        Ok(Wrote::All | Wrote::Stopped) => Ok(()),
        Err(failure) => Err(failure),
    }
}

/// How [`write_all_unless`] ended without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    All,
    /// `stop` fired while the peer took nothing: what was written of it is unknown to the
    /// peer's parser (a chunk may be cut), so the connection can only be closed.
    Stopped,
}

/// [`write_all`], giving up when `stop` fires while it waits for the peer to take more (a
/// client that stopped reading a stream, at shutdown's hard stop: it would otherwise hold
/// the exit for the stall limit). `stop` is looked at only while the write waits, so a write
/// the kernel takes at once costs nothing more.
pub async fn write_all_unless(
    io: &TcpStream,
    first: &[u8],
    second: &[u8],
    stall: Duration,
    mut stop: Option<&mut Stopped>,
) -> Result<Wrote, WriteFailure> {
    let total = first.len() + second.len();
    let mut written = 0;
    while written < total {
        let parts = if written < first.len() {
            [IoSlice::new(&first[written..]), IoSlice::new(second)]
        } else {
            [
                IoSlice::new(&second[written - first.len()..]),
                IoSlice::new(&[]),
            ]
        };
        match io.try_write_vectored(&parts) {
            Ok(0) => {
                let error = io::Error::from(io::ErrorKind::WriteZero);
                return Err(WriteFailure { written, error });
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let writable = tokio::time::timeout(stall, io.writable());
                let writable = match stop.as_deref_mut() {
                    None => writable.await,
                    Some(stop) => tokio::select! {
                        biased;
                        writable = writable => writable,
                        () = stop => return Ok(Wrote::Stopped),
                    },
                };
                match writable {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(WriteFailure { written, error }),
                    Err(_) => {
                        let error = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer took nothing for {} s", stall.as_secs()),
                        );
                        return Err(WriteFailure { written, error });
                    }
                }
            }
            Err(error) => return Err(WriteFailure { written, error }),
        }
    }
    Ok(Wrote::All)
}

/// Resolves when the peer closed the connection (or it failed); bytes it sends meanwhile (a
/// pipelined request) are kept in `buf`, up to `keep` bytes. Past that it reads no more (the
/// rest waits in the kernel, and then in the peer, for the answer under way) and learns of
/// the close from the socket's readiness instead (`EPOLLRDHUP`), which comes behind unread
/// bytes too: a client that pipelined more than `keep` and left was not seen to leave, and
/// its request ran on to its end (bb62). Setting `unread` when it leaves bytes unread: the
/// next read must look for them itself ([`read_client`]).
pub async fn closed_by_peer(io: &TcpStream, buf: &mut BytesMut, keep: usize, unread: &mut bool) {
    while buf.len() < keep && !*unread {
        match read_shared(io, buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    loop {
        match io.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            // More bytes, left unread: the readiness they set is cleared (the closed state
            // never is), so the next wait is for what comes after them.
            Ok(_) => {
                *unread = true;
                let _ = io.try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn large_writes_finish_while_the_peer_reads_slowly() {
        let (a, mut b) = pair().await;
        let first = vec![1u8; 3 << 20];
        let second = vec![2u8; 1 << 20];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read");
            got
        });
        write_all(&a, &first, &second, Duration::from_secs(10))
            .await
            .expect("written");
        drop(a);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), 4 << 20);
        assert!(got[..3 << 20].iter().all(|b| *b == 1) && got[3 << 20..].iter().all(|b| *b == 2));
    }

    #[tokio::test]
    async fn a_peer_closing_is_seen_and_its_last_bytes_kept() {
        let (a, mut b) = pair().await;
        b.write_all(b"GET /next").await.expect("write");
        drop(b);
        let mut buf = BytesMut::new();
        closed_by_peer(&a, &mut buf, 1024, &mut false).await;
        assert_eq!(&buf[..], b"GET /next");
    }

    /// A peer that sent more than is kept is still seen to close, its first bytes kept and
    /// the rest left unread; one that does not close is waited for.
    #[tokio::test]
    async fn a_peer_closing_behind_more_than_is_kept_is_seen() {
        let (a, mut b) = pair().await;
        let sent = vec![b'x'; 70 * 1024];
        b.write_all(&sent).await.expect("write");
        let mut buf = BytesMut::new();
        let mut unread = false;
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            closed_by_peer(&a, &mut buf, 16 * 1024, &mut unread),
        )
        .await;
        assert!(waited.is_err(), "the peer is still there");
        b.write_all(b"more").await.expect("write");
        drop(b);
        tokio::time::timeout(
            Duration::from_secs(10),
            closed_by_peer(&a, &mut buf, 16 * 1024, &mut unread),
        )
        .await
        .expect("the close is seen");
        assert!(buf.len() >= 16 * 1024, "{}", buf.len());
        assert!(buf.iter().all(|b| *b == b'x'));
    }

    /// What a peer sent past what is kept is read afterwards, though nothing more comes to
    /// wake the socket (bb68: a pipelined request waited for the client's next byte).
    #[tokio::test]
    async fn bytes_left_unread_are_read_next() {
        let (mut a, mut b) = pair().await;
        let sent = vec![b'x'; 200 * 1024];
        b.write_all(&sent).await.expect("write");
        let mut buf = BytesMut::new();
        let mut unread = false;
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            closed_by_peer(&a, &mut buf, 16 * 1024, &mut unread),
        )
        .await;
        assert!(waited.is_err() && unread, "bytes were left unread");
        tokio::time::timeout(Duration::from_secs(10), async {
            while buf.len() < sent.len() {
                let read = read_client(&mut a, &mut buf, 0, &mut unread).await;
                assert!(read.expect("read") > 0, "end of file before all came");
            }
        })
        .await
        .expect("every byte sent is read without the peer sending more");
        assert_eq!(&buf[..], &sent[..]);
        drop(b);
    }
}
