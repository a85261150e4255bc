//! A whole 2xx answer the upstream compressed although asked for `identity`, read piece by
//! piece rather than decoded whole ([`BodyPieces`]): searched for an echoed key and measured
//! ([`scan`]), then, for a client that does not take its coding, decoded once more as it is
//! written to it ([`DecodedAnswer`]). What it decodes to is never held whole on the request
//! path, only its compressed bytes and a decoder's window, however slowly the client reads:
//! six clients reading little of 40 MiB answers decoded whole held 240 MiB of the decode
//! budget until they were done, and the next compressed answer went undecoded, its usage
//! lost. Its record decodes it later, off the request path (`record::complete_summary`).
//!
//! This never decides what becomes of an answer that may echo a key, nor of one whose data is
//! corrupt or cut short: `success_body` decodes those whole, as before.

use bytes::Bytes;

use crate::content_coding::BodyPieces;
use crate::sinks::redact::Redactor;

/// What reading a compressed answer piece by piece found, when that settles how it goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// It decodes, within the limit, to `len` bytes that echo no configured key.
    Clean { len: usize },
    /// It decodes to more than the limit, and its first `limit` bytes echo no key.
    OverLimit,
}

/// Reads `body` in `coding` piece by piece, up to `limit` decoded bytes, measuring it and
/// looking for what [`super::echoed_keys_removed`] looks for: an `"error"` member and a
/// configured key, across the pieces' seams too. `None` when that does not settle how the
/// answer goes: it may echo a key, its data is corrupt or cut short (what came before the
/// fault may be one whole document, read as curl reads it), or its coding is not one
/// [`BodyPieces`] takes.
pub(crate) fn scan(coding: &str, body: Bytes, limit: usize, redactor: &Redactor) -> Option<Scan> {
    let mut pieces = BodyPieces::new(coding, body)?;
    let mut search = EchoSearch::new(redactor);
    let mut len = 0usize;
    loop {
        let piece = pieces.next_piece().ok()?;
        let Some(piece) = piece else {
            return (!search.echoes()).then_some(Scan::Clean { len });
        };
        let room = limit.saturating_sub(len);
        if piece.len() > room {
            search.feed(&piece[..room]);
            return (!search.echoes()).then_some(Scan::OverLimit);
        }
        len += piece.len();
        search.feed(&piece);
        if search.echoes() {
            return None;
        }
    }
}

/// Looks for an `"error"` member and a configured key in a text that comes in pieces: each
/// piece is searched, and so is each seam, with as many bytes either side as the widest
/// occurrence of a key may span ([`Redactor::widest_occurrence`]).
struct EchoSearch<'a> {
    redactor: &'a Redactor,
    /// The last bytes of the text so far, up to `reach`.
    tail: Vec<u8>,
    reach: usize,
    error: bool,
    key: bool,
}

impl<'a> EchoSearch<'a> {
    fn new(redactor: &'a Redactor) -> Self {
        Self {
            redactor,
            tail: Vec::new(),
            reach: redactor.widest_occurrence(),
            error: false,
            key: false,
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        static ERROR_MEMBER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));
        if self.redactor.is_empty() || self.echoes() {
            return;
        }
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(&piece[..piece.len().min(self.reach)]);
        for text in [&seam[..], piece] {
            self.error = self.error || ERROR_MEMBER.find(text).is_some();
            self.key = self.key || self.redactor.finds_any(text);
        }
        // The seam's last bytes are the text's last ones when the piece is short; else the
        // piece's.
        let from = if piece.len() >= self.reach {
            seam.clear();
            seam.extend_from_slice(&piece[piece.len() - self.reach..]);
            0
        } else {
            seam.len().saturating_sub(self.reach)
        };
        seam.drain(..from);
        self.tail = seam;
    }

    /// Both were found: [`super::echoed_keys_removed`] would take the key out.
    fn echoes(&self) -> bool {
        self.error && self.key
    }
}

/// A whole answer written to its client decoded, decoded as it is written (see the module's
/// doc): exactly the `len` bytes [`scan`] measured, so the `Content-Length` sent ahead holds.
pub struct DecodedAnswer {
    pieces: BodyPieces,
    /// Bytes not handed out yet, `pending`'s included.
    left: usize,
    /// Decoded, not handed out yet (a piece longer than the writer takes at once).
    pending: Bytes,
}

impl DecodedAnswer {
    /// `body` in `coding`, which [`scan`] found to decode to `len` bytes.
    pub(crate) fn new(coding: &str, body: Bytes, len: usize) -> Option<Self> {
        Some(Self {
            pieces: BodyPieces::new(coding, body)?,
            left: len,
            pending: Bytes::new(),
        })
    }

    /// Bytes still to be handed out: at first, the answer's length.
    pub fn left(&self) -> usize {
        self.left
    }

    /// The next at most `max` bytes; `None` at the end. The data decoded the same way when
    /// [`scan`] read it, so it cannot fail now; if it did, this ends early (with
    /// [`Self::left`] above 0), and the writer must not pass the answer for whole.
    pub fn next_piece(&mut self, max: usize) -> Option<Bytes> {
        if self.left == 0 || max == 0 {
            return None;
        }
        while self.pending.is_empty() {
            match self.pieces.next_piece() {
                Ok(Some(piece)) => self.pending = piece,
                Ok(None) | Err(_) => return None,
            }
        }
        let n = self.pending.len().min(max).min(self.left);
        self.left -= n;
        Some(self.pending.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::secret::Secret;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("gzip");
        encoder.finish().expect("gzip")
    }

    const KEY: &str = "sk-configured-upstream-key-123456";

    fn redactor() -> Redactor {
        Redactor::new([&Secret::new(KEY.to_owned())])
    }

    /// An answer with an error that echoes the key, the key anywhere in it (across the seam
    /// of two pieces too, and JSON-escaped), is left to the whole decode; one without the
    /// key, or without an error member, is measured.
    #[test]
    fn a_key_echoed_anywhere_is_found() {
        let redactor = redactor();
        let escaped = KEY.replace('-', "\\u002d");
        let pad = "x".repeat(crate::content_coding::STREAM_PIECE - 20);
        for (text, echoes) in [
            (
                format!(r#"{{"error":{{"message":"bad key {KEY}"}}}}"#),
                true,
            ),
            (
                format!(r#"{{"error":{{"message":"{pad}{KEY}{pad}"}}}}"#),
                true,
            ),
            (
                format!(r#"{{"error":{{"message":"{pad}{escaped}{pad}"}}}}"#),
                true,
            ),
            (
                format!(r#"{{"a":"{pad}{pad}{pad}","error":{{"m":"{pad}{KEY}"}}}}"#),
                true,
            ),
            (
                format!(r#"{{"error":{{"message":"{pad}no key{pad}"}}}}"#),
                false,
            ),
            (format!(r#"{{"content":"{pad}{KEY}{pad}"}}"#), false),
        ] {
            let body = Bytes::from(gzip(text.as_bytes()));
            let scanned = scan("gzip", body, 64 << 20, &redactor);
            let expected = (!echoes).then_some(Scan::Clean { len: text.len() });
            assert_eq!(scanned, expected, "{}", &text[..80.min(text.len())]);
        }
    }

    #[test]
    fn a_seam_is_searched_whatever_the_pieces_sizes() {
        let redactor = redactor();
        let text = format!(r#"{{"error":"{KEY}"}}"#);
        for cut in 0..=text.len() {
            let mut search = EchoSearch::new(&redactor);
            let (a, b) = text.as_bytes().split_at(cut);
            for byte in a.chunks(1) {
                search.feed(byte);
            }
            search.feed(b);
            assert!(search.echoes(), "cut at {cut}");
        }
    }

    /// Over the limit it is said so, and nothing past the limit is searched; corrupt data is
    /// left to the whole decode.
    #[test]
    fn an_answer_over_the_limit_or_corrupt_is_told() {
        let redactor = Redactor::default();
        let text = vec![b'a'; 1 << 20];
        let body = Bytes::from(gzip(&text));
        assert_eq!(
            scan("gzip", body.clone(), 1 << 20, &redactor),
            Some(Scan::Clean { len: 1 << 20 })
        );
        assert_eq!(
            scan("gzip", body.clone(), (1 << 20) - 1, &redactor),
            Some(Scan::OverLimit)
        );
        let cut = body.slice(..body.len() / 2);
        assert_eq!(scan("gzip", cut, 1 << 20, &redactor), None);
        assert_eq!(scan("compress", body, 1 << 20, &redactor), None);
    }

    /// Written decoded, it is exactly what it decodes to, in pieces of at most what the
    /// writer takes.
    #[test]
    fn a_decoded_answer_is_handed_out_whole_in_bounded_pieces() {
        let text: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let body = Bytes::from(gzip(&text));
        let mut answer = DecodedAnswer::new("gzip", body, text.len()).expect("gzip");
        assert_eq!(answer.left(), text.len());
        let mut out = Vec::new();
        while let Some(piece) = answer.next_piece(10_000) {
            assert!(piece.len() <= 10_000);
            out.extend_from_slice(&piece);
        }
        assert_eq!(answer.left(), 0);
        assert_eq!(out, text);
    }
}
