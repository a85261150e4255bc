//! The body a request goes upstream with: the client's bytes, shared, with the few the router
//! changes (the `model` value, `stream_options`) spliced in.
//!
//! The router holds a request's body whole while it forwards it (it reads the whole body to
//! find the model). A rewritten body used to be a second, edited copy of it: a 50 MiB upload
//! whose `[provider]model` became `model` cost 100 MiB. A large body is now sent as pieces,
//! slices of the client's buffer around the edits and the new bytes between them, written
//! upstream together (one vectored write, or one frame each); a small one is still joined into
//! one buffer, which costs less than pieces and is what the hot path (small JSON bodies at
//! ~100k requests a second) has always paid: one allocation.

use std::convert::Infallible;
use std::io::IoSlice;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// From this size on a rewritten body is sent as pieces rather than copied whole: below it a
/// copy is cheaper than the pieces' own allocations, and small enough not to matter.
pub const SPLICED_FROM: usize = 64 * 1024;

/// A request body as it goes upstream: one buffer, or pieces that go out one after another.
#[derive(Debug, Clone, Default)]
pub struct RequestBody(Shape);

#[derive(Debug, Clone)]
enum Shape {
    Whole(Bytes),
    /// No piece is empty; `len` is their sum.
    Pieces {
        pieces: Vec<Bytes>,
        len: usize,
    },
}

impl Default for Shape {
    fn default() -> Self {
        Self::Whole(Bytes::new())
    }
}

impl From<Bytes> for RequestBody {
    fn from(body: Bytes) -> Self {
        Self(Shape::Whole(body))
    }
}

impl RequestBody {
    /// `body` with each of `edits`' ranges replaced by its bytes. The ranges are in order and
    /// do not overlap (one may be empty: an insertion). A body of [`SPLICED_FROM`] or more
    /// shares `body`'s buffer; a smaller one is copied into one buffer, edits and all.
    pub fn spliced(body: &Bytes, edits: &[(Range<usize>, &[u8])]) -> Self {
        if body.len() < SPLICED_FROM {
            return Self(Shape::Whole(joined(body, edits)));
        }
        // The new bytes in one buffer, each piece of them a slice of it.
        let added: Bytes = edits
            .iter()
            .flat_map(|(_, text)| text.iter().copied())
            .collect::<Vec<u8>>()
            .into();
        let mut pieces = Vec::with_capacity(2 * edits.len() + 1);
        let mut push = |piece: Bytes| {
            if !piece.is_empty() {
                pieces.push(piece);
            }
        };
        let (mut at, mut added_at) = (0, 0);
        for (range, text) in edits {
            push(body.slice(at..range.start));
            push(added.slice(added_at..added_at + text.len()));
            added_at += text.len();
            at = range.end;
        }
        push(body.slice(at..));
        let len = pieces.iter().map(Bytes::len).sum();
        Self(Shape::Pieces { pieces, len })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Shape::Whole(body) => body.len(),
            Shape::Pieces { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes, in order: one slice for a whole body.
    pub fn pieces(&self) -> &[Bytes] {
        match &self.0 {
            Shape::Whole(body) => std::slice::from_ref(body),
            Shape::Pieces { pieces, .. } => pieces,
        }
    }

    /// The body as one buffer: shared when it is one, else joined (a copy).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Shape::Whole(body) => body.clone(),
            Shape::Pieces { pieces, len } => {
                let mut out = Vec::with_capacity(*len);
                for piece in pieces {
                    out.extend_from_slice(piece);
                }
                out.into()
            }
        }
    }

    /// The one buffer it is, if it is one.
    pub fn as_whole(&self) -> Option<&Bytes> {
        match &self.0 {
            Shape::Whole(body) => Some(body),
            Shape::Pieces { .. } => None,
        }
    }

    /// The body for hyper or reqwest: each piece one frame, its exact length known (so it goes
    /// with a `Content-Length`).
    pub fn into_frames(self) -> Frames {
        match self.0 {
            Shape::Whole(body) => Frames {
                left: body.len() as u64,
                next: (!body.is_empty()).then_some(body),
                rest: Vec::new().into_iter(),
            },
            Shape::Pieces { pieces, len } => Frames {
                left: len as u64,
                next: None,
                rest: pieces.into_iter(),
            },
        }
    }
}

/// `body` with `edits` made, in one new buffer.
fn joined(body: &[u8], edits: &[(Range<usize>, &[u8])]) -> Bytes {
    let added: usize = edits.iter().map(|(_, text)| text.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    for (range, text) in edits {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(text);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

/// Fills `out` with what is left to write of `head` then `pieces`, `written` bytes in (as many
/// slices as `out` holds); returns how many it filled. For one vectored write: a whole body
/// after its head is two slices, as it always was.
pub fn unwritten<'a>(
    head: &'a [u8],
    pieces: &'a [Bytes],
    mut written: usize,
    out: &mut [IoSlice<'a>],
) -> usize {
    let mut filled = 0;
    let all = std::iter::once(head).chain(pieces.iter().map(|piece| &piece[..]));
    for part in all {
        if filled == out.len() {
            break;
        }
        if written >= part.len() {
            written -= part.len();
            continue;
        }
        out[filled] = IoSlice::new(&part[written..]);
        written = 0;
        filled += 1;
    }
    filled
}

/// A [`RequestBody`] as an [`http_body::Body`]: one frame per piece.
#[derive(Debug)]
pub struct Frames {
    /// A whole body's one frame.
    next: Option<Bytes>,
    rest: std::vec::IntoIter<Bytes>,
    left: u64,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.next.take().or_else(|| self.rest.next());
        if let Some(piece) = &next {
            self.left -= piece.len() as u64;
        }
        Poll::Ready(next.map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn large(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn a_small_body_is_one_buffer() {
        let body = Bytes::from_static(b"0123456789");
        let out = RequestBody::spliced(&body, &[(2..4, b"ab"), (6..6, b"+")]);
        assert_eq!(out.as_whole().map(|b| &b[..]), Some(&b"01ab45+6789"[..]));
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn a_large_body_shares_the_clients_bytes() {
        let body = large(SPLICED_FROM * 3);
        let edits: [(Range<usize>, &[u8]); 3] = [
            (0..0, b"<"),
            (100..120, b"model"),
            (body.len()..body.len(), b">"),
        ];
        let out = RequestBody::spliced(&body, &edits);
        assert!(out.as_whole().is_none());
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&body[..100]);
        expected.extend_from_slice(b"model");
        expected.extend_from_slice(&body[120..]);
        expected.push(b'>');
        assert_eq!(out.to_bytes(), expected);
        assert_eq!(out.len(), expected.len());
        // The client's bytes are slices of its buffer, not copies.
        let within = |piece: &Bytes| {
            let start = body.as_ptr() as usize;
            let at = piece.as_ptr() as usize;
            at >= start && at + piece.len() <= start + body.len()
        };
        let shared: usize = out
            .pieces()
            .iter()
            .filter(|p| within(p))
            .map(Bytes::len)
            .sum();
        assert_eq!(shared, body.len() - 20);
        assert!(out.pieces().iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn unwritten_skips_what_went_out() {
        let pieces = [Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        let mut out = [IoSlice::new(&[]); 4];
        let text = |n: usize, out: &[IoSlice<'_>]| {
            out[..n]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect::<Vec<u8>>()
        };
        for written in 0..=9 {
            let n = unwritten(b"HT", &pieces, written, &mut out);
            assert_eq!(text(n, &out), b"HTabcdefg"[written..].to_vec());
        }
        let mut two = [IoSlice::new(&[]); 2];
        let n = unwritten(b"HT", &pieces, 1, &mut two);
        assert_eq!(text(n, &two), b"Tabc");
    }

    #[tokio::test]
    async fn frames_carry_every_piece_and_the_exact_length() {
        let body = large(SPLICED_FROM + 10);
        let out = RequestBody::spliced(&body, &[(5..9, b"xy")]);
        let expected = out.to_bytes();
        let frames = out.into_frames();
        assert_eq!(
            http_body::Body::size_hint(&frames).exact(),
            Some(expected.len() as u64)
        );
        let collected = frames.collect().await.expect("infallible").to_bytes();
        assert_eq!(collected, expected);
        let empty = RequestBody::default().into_frames();
        assert!(http_body::Body::is_end_stream(&empty));
    }
}
