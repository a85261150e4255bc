//! Finds SSE event boundaries in a byte stream without copying complete events.
//!
//! An event ends at a blank line; lines end in `\n`, `\r\n` or `\r` (the SSE spec allows all
//! three, even mixed). The splitter only cuts: it never changes a byte, so what it returns,
//! concatenated, is exactly what went in.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: Pending,
    /// Offset in `pending` of the start of the line being scanned.
    line_start: usize,
    /// Offset in `pending` up to which terminators have been looked for.
    scanned: usize,
    /// The last line ended in a `\r` that was the last byte then come: a `\n` right after
    /// it is the rest of its `\r\n`, not a line of its own.
    after_cr: bool,
}

/// What waits to be cut. Usually a chunk of the upstream's, shared as it is; once an event
/// spans chunks, an owned buffer that later chunks are appended to (amortized: an event
/// arriving in many small chunks is not copied again for each one).
#[derive(Debug, Default)]
enum Pending {
    #[default]
    Empty,
    Shared(Bytes),
    Owned(BytesMut),
}

impl Pending {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Shared(b) => b,
            Self::Owned(b) => b,
        }
    }

    fn split_to(&mut self, end: usize) -> Bytes {
        let (event, empty) = match self {
            Self::Empty => return Bytes::new(),
            Self::Shared(b) => (b.split_to(end), b.is_empty()),
            Self::Owned(b) => (b.split_to(end).freeze(), b.is_empty()),
        };
        if empty {
            *self = Self::Empty;
        }
        event
    }
}

impl EventSplitter {
    /// Adds bytes from upstream. Copies only when an incomplete event is already waiting.
    pub fn push(&mut self, chunk: Bytes) {
        self.pending = match std::mem::take(&mut self.pending) {
            Pending::Empty => Pending::Shared(chunk),
            Pending::Shared(waiting) => {
                let mut joined =
                    BytesMut::with_capacity((waiting.len() + chunk.len()).max(2 * waiting.len()));
                joined.extend_from_slice(&waiting);
                joined.extend_from_slice(&chunk);
                Pending::Owned(joined)
            }
            Pending::Owned(mut waiting) => {
                waiting.extend_from_slice(&chunk);
                Pending::Owned(waiting)
            }
        };
    }

    /// The last event ended at a `\r` that was the last byte come: the `\n` of its `\r\n`
    /// may be the next byte (it goes with the next event).
    pub fn ends_in_cr(&self) -> bool {
        self.after_cr
    }

    /// Bytes waiting for the end of their event.
    pub fn pending_len(&self) -> usize {
        self.pending.as_slice().len()
    }

    /// The next complete event, its terminating blank line included.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let buf = self.pending.as_slice();
        if self.after_cr {
            match buf.get(self.line_start) {
                None => return None,
                Some(b'\n') => self.line_start += 1,
                Some(_) => {}
            }
            self.after_cr = false;
        }
        let mut pos = self.scanned.max(self.line_start);
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &buf[pos..]) {
            let at = pos + offset;
            let len = match buf[at] {
                b'\r' => match buf.get(at + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A '\r' that ends what has come ends its line whatever follows (so an
                    // event ending "\r\r" goes at once); a '\n' next is the rest of it.
                    None => {
                        self.after_cr = true;
                        1
                    }
                },
                _ => 1,
            };
            let end = at + len;
            if at == self.line_start {
                let event = self.pending.split_to(end);
                self.line_start = 0;
                self.scanned = 0;
                return Some(event);
            }
            self.line_start = end;
            pos = end;
        }
        self.scanned = buf.len();
        None
    }

    /// Whatever is left: an event the upstream never terminated. Used at end of stream.
    pub fn take_rest(&mut self) -> Bytes {
        self.line_start = 0;
        self.scanned = 0;
        self.after_cr = false;
        match std::mem::take(&mut self.pending) {
            Pending::Empty => Bytes::new(),
            Pending::Shared(b) => b,
            Pending::Owned(b) => b.freeze(),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending_len() > 0
    }
}

/// The event's `data` payload: its `data:` lines' values joined with `\n`, as an SSE client
/// would see it. `None` for events without data (comments, `event:`-only, blank).
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut found: Option<Cow<'_, [u8]>> = None;
    for line in lines(event) {
        let Some(value) = line.strip_prefix(b"data") else {
            continue;
        };
        let value = match value {
            [] => value,
            [b':', b' ', rest @ ..] => rest,
            [b':', rest @ ..] => rest,
            _ => continue, // a field named e.g. "database"
        };
        found = Some(match found {
            None => Cow::Borrowed(value),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    found
}

/// Whether a body's first bytes open an event stream: after a byte-order mark and blank
/// lines, a `data:`, `event:`, `id:` or `retry:` field or a `:` comment. A whole JSON answer
/// (`{`), NDJSON or text does not. Read only for a stream request's answer whose label does
/// not say what it is (see `proxy::sniffed_event_stream`).
pub fn looks_like_sse(first: &[u8]) -> bool {
    sse_opening(first) == Some(true)
}

/// Whether a body that begins with `first` is an event stream, or `None` while `first` cannot
/// tell yet: it is empty, a byte-order mark or a part of one, blank lines, or the start of a
/// field name (`dat`), as an upstream writing a byte at a time sends it.
pub fn sse_opening(first: &[u8]) -> Option<bool> {
    const BOM: &[u8] = super::stream::BOM;
    if first.len() < BOM.len() && BOM.starts_with(first) {
        return None;
    }
    let opening = first.strip_prefix(BOM).unwrap_or(first);
    let at = opening
        .iter()
        .position(|&b| b != b'\n' && b != b'\r')
        .unwrap_or(opening.len());
    let opening = &opening[at..];
    let fields = [&b"data:"[..], b"event:", b"id:", b"retry:", b":"];
    if opening.is_empty()
        || fields
            .iter()
            .any(|f| f.len() > opening.len() && f.starts_with(opening))
    {
        return None;
    }
    Some(fields.iter().any(|field| opening.starts_with(field)))
}

fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
            Some(at) => {
                let line = &rest[..at];
                let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[at + skip..];
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_event_stream_is_told_by_its_first_field() {
        for sse in [
            &b"data: {}\n\n"[..],
            b"\xEF\xBB\xBFdata:{}\n\n",
            b"\r\n\nevent: message_start\n",
            b"id: 1\n",
            b"retry: 100\n",
            b": keep-alive\n\n",
        ] {
            assert!(looks_like_sse(sse), "{}", String::from_utf8_lossy(sse));
        }
        for other in [
            &b"{\"choices\": []}"[..],
            b"\xEF\xBB\xBF{}",
            b"",
            b"dat",
            b"database: x\n",
            b" data: x\n",
            b"plain text",
        ] {
            assert!(!looks_like_sse(other), "{}", String::from_utf8_lossy(other));
        }
    }

    fn split_all(chunks: &[&[u8]]) -> (Vec<Bytes>, Bytes) {
        let mut s = EventSplitter::default();
        let mut events = Vec::new();
        for c in chunks {
            s.push(Bytes::copy_from_slice(c));
            while let Some(e) = s.next_event() {
                events.push(e);
            }
        }
        (events, s.take_rest())
    }

    #[test]
    fn splits_on_every_line_ending_style() {
        let (events, rest) = split_all(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d"]);
        assert_eq!(events, ["data: a\n\n", "data: b\r\n\r\n", "data: c\r\r"]);
        assert_eq!(rest, "data: d");
    }

    #[test]
    fn crlf_split_across_chunks_is_one_terminator() {
        // The event goes at its blank line's '\r'; the '\n' after it is not a blank line of
        // its own (no empty event), it just comes first in what follows.
        let (events, rest) = split_all(&[b"data: a\r", b"\n\r", b"\ndata: b\n", b"\n"]);
        assert_eq!(events, ["data: a\r\n\r", "\ndata: b\n\n"]);
        assert!(rest.is_empty());
        assert_eq!(event_data(&events[1]).as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn an_event_ending_in_lone_crs_goes_without_waiting_for_more() {
        let mut s = EventSplitter::default();
        s.push(Bytes::from_static(b"data: a\r\r"));
        assert_eq!(s.next_event().as_deref(), Some(&b"data: a\r\r"[..]));
        s.push(Bytes::from_static(b"data: b\r"));
        assert_eq!(s.next_event(), None);
        s.push(Bytes::from_static(b"\r"));
        assert_eq!(s.next_event().as_deref(), Some(&b"data: b\r\r"[..]));
    }

    #[test]
    fn multi_line_events_and_comments() {
        let (events, _) = split_all(&[b": keep-alive\n\nevent: x\ndata: 1\ndata: 2\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(event_data(&events[0]), None);
        assert_eq!(event_data(&events[1]).as_deref(), Some(&b"1\n2"[..]));
        assert_eq!(event_data(b"data:x\n\n").as_deref(), Some(&b"x"[..]));
        assert_eq!(event_data(b"data\n\n").as_deref(), Some(&b""[..]));
        assert_eq!(event_data(b"database: 1\n\n"), None);
    }

    /// Where each event ends in `data`, the '\n' of a "\r\n" counted with its '\r'.
    fn ends(events: &[Bytes], data: &[u8]) -> Vec<usize> {
        let mut end = 0;
        events
            .iter()
            .map(|e| {
                end += e.len();
                if data[end - 1] == b'\r' && data.get(end) == Some(&b'\n') {
                    end + 1
                } else {
                    end
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn splitting_never_changes_a_byte(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b':')], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&data[prev..c]); prev = c; }
            chunks.push(&data[prev..]);
            let (events, rest) = split_all(&chunks);
            let mut joined: Vec<u8> = events.iter().flat_map(|e| e.to_vec()).collect();
            joined.extend_from_slice(&rest);
            prop_assert_eq!(&joined, &data);
            // Chunking must not change where events end, but for the '\n' of a "\r\n" cut
            // between chunks, which goes with what follows.
            let (whole, _) = split_all(&[&data]);
            prop_assert_eq!(ends(&events, &data), ends(&whole, &data));
        }
    }
}
