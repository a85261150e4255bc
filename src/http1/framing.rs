//! Where a message body ends (RFC 9112 §6), and the chunked transfer coding both ways.
//!
//! Requests are read strictly: a request whose length two readers could see differently
//! (`Transfer-Encoding` and `Content-Length` together, lengths that disagree, a transfer coding
//! other than `chunked`) is refused, never guessed at. Responses are read as RFC 9112 §6.3
//! says a client must, and a response framed oddly is not followed by a reuse of its
//! connection; but one in a transfer coding other than `chunked` is refused too (see
//! [`response_codings`]).

use bytes::{Buf as _, Bytes, BytesMut};

use super::fields::{Fields, trim};

/// How a body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Known(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A message whose framing cannot be read safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("Transfer-Encoding and Content-Length together")]
    BothLengths,
    #[error("an invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("Transfer-Encoding {0:?} (only chunked is supported)")]
    UnsupportedCoding(String),
    /// An answer in a transfer coding the router did not ask for (it sends no `TE`) and
    /// does not undo.
    #[error(
        "Transfer-Encoding {0:?}: a transfer coding the router did not ask for and cannot undo (only chunked is read)"
    )]
    UnrequestedCoding(String),
    /// `chunked` named more than once (`chunked, chunked`): RFC 9112 §6.1 forbids applying it
    /// twice. Said so, not as a coding the router did not ask for: `chunked` it reads.
    #[error("Transfer-Encoding {0:?}: chunked applied more than once, which RFC 9112 §6.1 forbids")]
    ChunkedTwice(String),
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    CodingInHttp10,
    #[error("a malformed chunk")]
    BadChunk,
    /// A trailer line that is not a header field line (RFC 9112 §7.1.2): no `name:`, a
    /// folded (obs-fold) line, a NUL in a value. Refused as the same line in a head is, so a
    /// front proxy that reads trailers strictly and the router never disagree on one.
    #[error(
        "a trailer line that is not a header field (no \"name:\", a folded line or a control byte)"
    )]
    BadTrailer,
    /// Over [`MAX_EXTENSION`]: well-formed, but more than the router reads of something it
    /// does not use.
    #[error("a chunk extension over {MAX_EXTENSION} bytes (the router's limit)")]
    ExtensionTooLong,
    /// Over [`MAX_TRAILERS`], counted as sent (names, values and line ends).
    #[error("a trailer section over {} KiB (the router's limit)", MAX_TRAILERS / 1024)]
    TrailersTooLarge,
    #[error("the connection closed before the body's end")]
    Truncated,
}

impl FramingError {
    /// Well-formed, but over one of the router's limits (not the sender's mistake as such).
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::ExtensionTooLong | Self::TrailersTooLarge)
    }
}

/// The framing of a request from a client; `http10` for an HTTP/1.0 request.
pub fn request_length(fields: &Fields, http10: bool) -> Result<BodyLength, FramingError> {
    if fields.contains("transfer-encoding") {
        if http10 {
            return Err(FramingError::CodingInHttp10);
        }
        if fields.contains("content-length") {
            return Err(FramingError::BothLengths);
        }
        let codings = codings(fields);
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(BodyLength::Chunked),
            _ => Err(FramingError::UnsupportedCoding(
                codings
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        };
    }
    match content_length(fields)? {
        Some(0) | None => Ok(BodyLength::Empty),
        Some(n) => Ok(BodyLength::Known(n)),
    }
}

/// The framing of a response to a `POST`, and whether its connection may carry another
/// request after it (as far as its framing goes: `Connection: close` is the caller's).
pub fn response_length(status: u16, fields: &Fields) -> Result<(BodyLength, bool), FramingError> {
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((BodyLength::Empty, true));
    }
    if let Some(length) = response_codings(fields)? {
        // A length beside a transfer coding is ignored, and the connection not trusted again.
        let reusable = length == BodyLength::Chunked && !fields.contains("content-length");
        return Ok((length, reusable));
    }
    match content_length(fields)? {
        Some(0) => Ok((BodyLength::Empty, true)),
        Some(n) => Ok((BodyLength::Known(n), true)),
        None => Ok((BodyLength::UntilClose, false)),
    }
}

/// The framing a response's `Transfer-Encoding` gives it (`None` without one): `chunked`
/// alone, or the obsolete `identity` alone (no coding: the body ends at the close, as RFC 9112
/// §6.3 reads any list that does not end in `chunked`). Any other coding (`gzip, chunked`,
/// `chunked, gzip`, `gzip`) is an error: transfer codings are hop-by-hop, so the router could
/// only relay such a body by undoing the coding, which it does not; passed on without its
/// `Transfer-Encoding`, the body would reach the client as a silently corrupt answer. The
/// router sends no `TE`, so an upstream has no business sending one. hyper reads the same
/// answers (see `crate::upstream`), so every client refuses them alike.
pub fn response_codings(fields: &Fields) -> Result<Option<BodyLength>, FramingError> {
    if !fields.contains("transfer-encoding") {
        return Ok(None);
    }
    let codings = codings(fields);
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Some(BodyLength::Chunked)),
        [only] if only.eq_ignore_ascii_case(b"identity") => Ok(Some(BodyLength::UntilClose)),
        _ if chunked_twice(&codings) => Err(FramingError::ChunkedTwice(listed(&codings))),
        _ => Err(FramingError::UnrequestedCoding(listed(&codings))),
    }
}

/// Whether `chunked` is among `codings` more than once.
fn chunked_twice(codings: &[&[u8]]) -> bool {
    codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .nth(1)
        .is_some()
}

/// The codings as a message quotes them.
fn listed(codings: &[&[u8]]) -> String {
    codings
        .iter()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every transfer coding named, in order, across all `Transfer-Encoding` fields.
fn codings(fields: &Fields) -> Vec<&[u8]> {
    fields
        .get_all("transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The one length all `Content-Length` values agree on (`5, 5` is 5), or `None` without any.
fn content_length(fields: &Fields) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for (name, value) in fields.iter() {
        if name.len() != 14 || !name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        for part in value.split(|b| *b == b',') {
            let n = parse_decimal(trim(part)).ok_or(FramingError::BadContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(FramingError::BadContentLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (a slice of the buffer, not a copy).
    Data(Bytes),
    /// The buffer holds no more of the body; read more.
    NeedMore,
    /// The body is complete.
    Done,
}

/// Reads one body out of a connection's read buffer, taking only its own bytes: what follows
/// the body (the next pipelined request) stays in the buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Left(u64),
    UntilClose,
    Chunk(Chunk),
    Done,
}

/// Where the chunked decoder is: a size line, a chunk's data, or the trailer section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a size; `digits` read so far (at most [`MAX_SIZE_DIGITS`]; leading zeros
    /// count there, but only 16 digits after them fit a `u64`).
    Size {
        size: u64,
        digits: u8,
    },
    /// An extension (`;name=value`) or white space after the size, up to its CR.
    Extension {
        size: u64,
        seen: u32,
    },
    /// The size line's CR seen; its LF next.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the final CRLF.
    TrailerStart {
        seen: u32,
    },
    /// Inside a trailer field line, up to its CR; `value` once its name's `:` was read.
    TrailerLine {
        seen: u32,
        value: bool,
    },
    /// A CR seen in the trailer section; `last` when it ended an empty line.
    TrailerLf {
        seen: u32,
        last: bool,
    },
}

/// Longest chunk extension accepted (they are unused; a size line must not grow forever).
pub const MAX_EXTENSION: u32 = 4096;
/// Largest trailer section accepted; trailers are read and dropped.
pub const MAX_TRAILERS: u32 = 16 * 1024;

/// Most digits a chunk size may have, leading zeros included (a sender padding its sizes to a
/// fixed width writes a few; nobody writes a hundred).
const MAX_SIZE_DIGITS: u8 = 128;

impl Decoder {
    pub fn new(length: BodyLength) -> Self {
        let state = match length {
            BodyLength::Empty | BodyLength::Known(0) => State::Done,
            BodyLength::Known(n) => State::Left(n),
            BodyLength::Chunked => State::Chunk(Chunk::Size { size: 0, digits: 0 }),
            BodyLength::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the body still expected, when its length is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Left(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        match self.state {
            State::Done => Ok(Decoded::Done),
            State::Left(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - take as u64;
                self.state = if rest == 0 {
                    State::Done
                } else {
                    State::Left(rest)
                };
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            State::UntilClose => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            State::Chunk(chunk) => self.decode_chunked(chunk, buf),
        }
    }

    /// The connection closed: the end of an until-close body, a truncated one otherwise.
    pub fn end_of_input(&mut self) -> Result<(), FramingError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(FramingError::Truncated),
        }
    }

    fn decode_chunked(
        &mut self,
        mut chunk: Chunk,
        buf: &mut BytesMut,
    ) -> Result<Decoded, FramingError> {
        loop {
            if let Chunk::Data { left } = chunk {
                if buf.is_empty() {
                    self.state = State::Chunk(chunk);
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - take as u64;
                self.state = State::Chunk(if rest == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left: rest }
                });
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let Some(&byte) = buf.first() else {
                self.state = State::Chunk(chunk);
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            chunk = match step(chunk, byte)? {
                Some(next) => next,
                None => {
                    self.state = State::Done;
                    return Ok(Decoded::Done);
                }
            };
        }
    }
}

/// One byte of a chunk's framing; `None` when the body ended with it.
fn step(chunk: Chunk, byte: u8) -> Result<Option<Chunk>, FramingError> {
    use Chunk::*;
    let bad = Err(FramingError::BadChunk);
    let next = match chunk {
        Size { size, digits } => match hex_value(byte) {
            // RFC 9112 §7.1 bounds neither the digits nor leading zeros: a size fits while
            // its top four bits are clear before the shift.
            Some(v) if size >> 60 == 0 && digits < MAX_SIZE_DIGITS => Size {
                size: size << 4 | u64::from(v),
                digits: digits + 1,
            },
            Some(_) => return bad,
            None if digits == 0 => return bad,
            None if byte == b'\r' => SizeLf { size },
            None if byte == b';' || byte == b' ' || byte == b'\t' => Extension { size, seen: 1 },
            None => return bad,
        },
        Extension { size, seen } => match byte {
            b'\r' => SizeLf { size },
            b'\n' => return bad,
            _ if seen >= MAX_EXTENSION => return Err(FramingError::ExtensionTooLong),
            _ => Extension {
                size,
                seen: seen + 1,
            },
        },
        SizeLf { size } => match byte {
            b'\n' if size == 0 => TrailerStart { seen: 0 },
            b'\n' => Data { left: size },
            _ => return bad,
        },
        // Handled in bulk by the caller.
        Data { .. } => return bad,
        DataCr => match byte {
            b'\r' => DataLf,
            _ => return bad,
        },
        DataLf => match byte {
            b'\n' => Size { size: 0, digits: 0 },
            _ => return bad,
        },
        TrailerStart { seen } => match byte {
            b'\r' => TrailerLf { seen, last: true },
            b'\n' => return bad,
            // Checked here too: lines of one byte each never reach the check in a line.
            _ if seen >= MAX_TRAILERS => return Err(FramingError::TrailersTooLarge),
            // A field name begins the line: not white space (obs-fold), not `:`.
            _ if is_token_byte(byte) => TrailerLine {
                seen: seen + 1,
                value: false,
            },
            _ => return Err(FramingError::BadTrailer),
        },
        TrailerLine { seen, value } => match byte {
            b'\r' if value => TrailerLf { seen, last: false },
            b'\n' => return bad,
            _ if seen >= MAX_TRAILERS => return Err(FramingError::TrailersTooLarge),
            b':' if !value => TrailerLine {
                seen: seen + 1,
                value: true,
            },
            // A value's bytes: visible ones, obs-text, space and tab; no other control byte.
            _ if value && (byte >= 0x20 || byte == b'\t') && byte != 0x7f => TrailerLine {
                seen: seen + 1,
                value,
            },
            _ if !value && is_token_byte(byte) => TrailerLine {
                seen: seen + 1,
                value,
            },
            _ => return Err(FramingError::BadTrailer),
        },
        TrailerLf { seen, last } => match byte {
            b'\n' if last => return Ok(None),
            b'\n' => TrailerStart { seen: seen + 2 },
            _ => return bad,
        },
    };
    Ok(Some(next))
}

/// A byte of a field name, RFC 9110's `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The chunked coding's end: a zero-size chunk and no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` to `out` as one chunk (nothing for empty data: that would end the body).
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    let mut at = size.len();
    let mut n = data.len();
    while n > 0 || at == size.len() {
        at -= 1;
        size[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.reserve(size.len() - at + data.len() + 4);
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields::from_pairs(pairs)
    }

    /// Decodes all of `wire` fed in pieces of `step` bytes; the body and what was left over.
    fn decode_all(
        length: BodyLength,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut decoder = Decoder::new(length);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        decoder.end_of_input()?;
                        return Ok((body, buf.to_vec()));
                    }
                    let end = (fed + step.max(1)).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn request_framing_is_strict() {
        use BodyLength::*;
        let ok = |pairs: &[(&str, &str)]| request_length(&fields(pairs), false);
        assert_eq!(ok(&[]), Ok(Empty));
        assert_eq!(ok(&[("Content-Length", "12")]), Ok(Known(12)));
        assert_eq!(ok(&[("content-length", "0")]), Ok(Empty));
        assert_eq!(ok(&[("content-length", "5, 5")]), Ok(Known(5)));
        assert_eq!(
            ok(&[("content-length", "5"), ("content-length", "5")]),
            Ok(Known(5))
        );
        assert_eq!(ok(&[("Transfer-Encoding", "Chunked")]), Ok(Chunked));
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "-1")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
        ] {
            assert_eq!(ok(bad), Err(FramingError::BadContentLength), "{bad:?}");
        }
        assert_eq!(
            ok(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
            Err(FramingError::BothLengths)
        );
        for coding in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "chunked;q=1",
        ] {
            assert!(
                matches!(
                    ok(&[("transfer-encoding", coding)]),
                    Err(FramingError::UnsupportedCoding(_))
                ),
                "{coding}"
            );
        }
        assert_eq!(
            request_length(&fields(&[("transfer-encoding", "chunked")]), true),
            Err(FramingError::CodingInHttp10)
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use BodyLength::*;
        let of = |status, pairs: &[(&str, &str)]| response_length(status, &fields(pairs));
        assert_eq!(of(200, &[("content-length", "3")]), Ok((Known(3), true)));
        assert_eq!(of(204, &[("content-length", "3")]), Ok((Empty, true)));
        assert_eq!(of(304, &[]), Ok((Empty, true)));
        assert_eq!(of(200, &[]), Ok((UntilClose, false)));
        assert_eq!(
            of(200, &[("transfer-encoding", "Chunked")]),
            Ok((Chunked, true))
        );
        assert_eq!(
            of(200, &[("transfer-encoding", "identity")]),
            Ok((UntilClose, false))
        );
        for unrequested in ["gzip, chunked", "chunked, gzip", "gzip"] {
            assert_eq!(
                of(200, &[("transfer-encoding", unrequested)]),
                Err(FramingError::UnrequestedCoding(unrequested.into())),
                "{unrequested}"
            );
        }
        assert_eq!(
            of(
                200,
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked")
                ]
            ),
            Err(FramingError::UnrequestedCoding("gzip, chunked".into()))
        );
        for twice in ["chunked, chunked", "gzip, chunked, chunked"] {
            assert_eq!(
                of(200, &[("transfer-encoding", twice)]),
                Err(FramingError::ChunkedTwice(twice.into())),
                "{twice}"
            );
        }
        assert_eq!(
            of(
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            ),
            Ok((Chunked, false))
        );
        assert_eq!(
            of(200, &[("content-length", "1, 2")]),
            Err(FramingError::BadContentLength)
        );
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode_all(BodyLength::Chunked, wire, step).expect("valid");
            assert_eq!(body, b"hello world", "step {step}");
            // Bytes past the body are the next message's, in whatever piece they came.
            assert!(b"NEXT".starts_with(&rest), "{rest:?}");
        }
        let (body, _) = decode_all(BodyLength::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n", 4)
            .expect("upper and lower hex");
        assert_eq!(body, b"0123456789");
        // Leading zeros past 16 digits: the size still fits (RFC 9112 §7.1 bounds neither).
        let padded = b"00000000000000000001f\r\n0123456789012345678901234567890\r\n000000000000000000000\r\n\r\n";
        let (body, _) = decode_all(BodyLength::Chunked, padded, 5).expect("zero-padded sizes");
        assert_eq!(body.len(), 31);
    }

    /// `wire`, a chunked body fed `step` bytes at a time, is refused with `error`.
    fn assert_refused(wire: &[u8], step: usize, error: FramingError) {
        assert_eq!(
            decode_all(BodyLength::Chunked, wire, step),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"g\r\n",
            b"11111111111111111\r\n",
            b"000000000000000011111111111111111\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            assert_refused(wire, 3, FramingError::BadChunk);
        }
        assert_eq!(
            decode_all(BodyLength::Chunked, b"5\r\nhel", 100),
            Err(FramingError::Truncated)
        );
        // Well-formed, but past the limits: named as such, not as malformed.
        let long_extension = format!("5;x={}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));
        assert_eq!(
            decode_all(BodyLength::Chunked, long_extension.as_bytes(), 1000),
            Err(FramingError::ExtensionTooLong)
        );
        let trailers: String = (0..20)
            .map(|i| format!("x-t{i}: {}\r\n", "v".repeat(1000)))
            .collect();
        let wire = format!("5\r\nhello\r\n0\r\n{trailers}\r\n");
        assert_eq!(
            decode_all(BodyLength::Chunked, wire.as_bytes(), 1000),
            Err(FramingError::TrailersTooLarge)
        );
        let short_lines = format!("0\r\n{}\r\n", "a:\r\n".repeat(10_000));
        assert_eq!(
            decode_all(BodyLength::Chunked, short_lines.as_bytes(), 1000),
            Err(FramingError::TrailersTooLarge)
        );
        assert_eq!(
            decode_all(BodyLength::Known(10), b"short", 100),
            Err(FramingError::Truncated)
        );
    }

    /// A trailer line must be a header field line, as one in a head must: a line without
    /// `name:`, a folded line, a NUL in a value or a name that is no token is refused; a
    /// well-formed trailer, with an empty value too, is read (and dropped).
    #[test]
    fn trailer_lines_are_header_fields() {
        for wire in [
            &b"0\r\nGET /admin HTTP/1.1\r\n\r\n"[..],
            b"0\r\nx-a: 1\r\n folded\r\n\r\n",
            b"0\r\nx-a: 1\x002\r\n\r\n",
            b"0\r\nx-a: 1\x012\r\n\r\n",
            b"0\r\nx-a: 1\x7f2\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nx a: v\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
        ] {
            assert_refused(wire, 2, FramingError::BadTrailer);
        }
        for wire in [
            &b"5\r\nhello\r\n0\r\nx-checksum: abc\r\nx-e:\r\n\r\n"[..],
            b"5\r\nhello\r\n0\r\nx-b:\tv \xff\r\n\r\n",
        ] {
            assert_eq!(
                decode_all(BodyLength::Chunked, wire, 3),
                Ok((b"hello".to_vec(), Vec::new())),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn lengths_and_until_close() {
        let (body, rest) = decode_all(BodyLength::Known(5), b"helloNEXT", 4).expect("ok");
        assert_eq!(body, b"hello");
        assert!(b"NEXT".starts_with(&rest));
        let (body, rest) = decode_all(BodyLength::UntilClose, b"all of it", 2).expect("ok");
        assert_eq!((body.as_slice(), rest.len()), (&b"all of it"[..], 0));
        let (body, _) = decode_all(BodyLength::Empty, b"NEXT", 2).expect("ok");
        assert!(body.is_empty());
    }

    proptest! {
        /// Whatever the data and however it is split, chunk-encoding then decoding gives it
        /// back, and the decoder takes nothing after the last chunk.
        #[test]
        fn encode_then_decode_round_trips(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            step in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for c in &chunks {
                encode_chunk(&mut wire, c);
            }
            wire.extend_from_slice(LAST_CHUNK);
            wire.extend_from_slice(b"POST /next");
            let (body, rest) = decode_all(BodyLength::Chunked, &wire, step).expect("valid");
            prop_assert_eq!(body, chunks.concat());
            prop_assert!(b"POST /next".starts_with(&rest));
        }

        /// Arbitrary bytes never panic the decoder, and never yield more than was fed.
        #[test]
        fn arbitrary_input_is_an_error_or_a_body(wire in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((body, _)) = decode_all(BodyLength::Chunked, &wire, 5) {
                prop_assert!(body.len() <= wire.len());
            }
        }
    }
}
