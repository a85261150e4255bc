//! Undoing an upstream's `Content-Encoding` (gzip, deflate, br, zstd) where the router must
//! read a body: an error body it redacts and wraps, a whole answer the recorder reads usage
//! from, an event stream it splits into events ([`StreamDecoder`], as the chunks arrive).
//! Pure: no I/O, and never on a body being relayed as it came (a decoded stream goes on
//! decoded, without the coding).
//!
//! The router asks every upstream for `Accept-Encoding: identity`, so an encoded answer comes
//! only from an upstream that ignores it. Other codings (`compress`, a coding of its own) are
//! not decoded; [`decode`] says so and the caller decides what to do without the text.
//!
//! What follows the end of the compressed data is ignored, as curl and the zlib-based HTTP
//! clients (the openai SDKs') ignore it: bytes after a gzip member or a zstd frame that do
//! not open another one (a proxy's padding, a stray newline), anything after the end of
//! deflate or br data. The client reads the answer; so does its record.
//!
//! br is decoded by `brotli-decompressor` (pure Rust), zstd by libzstd (through the `zstd`
//! crate): the pure-Rust zstd decoder holds the last window of output (up to 8 MiB) until its
//! frame ends, so an event stream's events would wait for the end of the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf as _, Bytes, BytesMut};

use crate::http1::fields::{Fields, trim};

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the content coding \"{0}\" is not one the router decodes (gzip, deflate, br, zstd)")]
    Unsupported(String),
    #[error("{0} content codings are stacked: the router decodes at most {max}, as curl does", max = MAX_CODINGS)]
    TooManyCodings(usize),
    #[error("the {coding} body is corrupt: {error}")]
    Corrupt {
        coding: &'static str,
        error: std::io::Error,
    },
    #[error("the body decodes to more than {} MiB", .0 / (1024 * 1024))]
    TooLarge(usize),
    #[error("the {0} body ended before its compressed data did")]
    Truncated(&'static str),
    #[error(
        "the answers the router was decoding already held the {} MiB it decodes at once",
        .0 / (1024 * 1024)
    )]
    OverBudget(usize),
}

/// The most codings stacked in one `Content-Encoding` the router decodes (curl's limit
/// too). A real answer has one, two at the most; each is a decoder, with its window (8 MiB
/// for zstd), and a level of [`StreamDecoder`]'s recursion: an upstream that listed gzip
/// 15,000 times overflowed the stack and aborted the whole router, and 5,000 zstd layers
/// held 300 MB for one 32 KB answer. More are taken as a coding it does not decode: the body
/// passes as it came.
pub const MAX_CODINGS: usize = 5;

/// How many codings `content_encoding` (as [`content_encoding`] gives it) lists, when that
/// is more than [`MAX_CODINGS`].
fn too_many_codings(content_encoding: &str) -> Option<usize> {
    let listed = content_encoding
        .split(',')
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .count();
    (listed > MAX_CODINGS).then_some(listed)
}

/// `content_encoding` (as [`content_encoding`] gives it) as a message or a record names it:
/// as it is, or, past [`MAX_CODINGS`], its first ones and their count (`gzip, gzip, gzip,
/// gzip, gzip, ... (3000 codings)`): one listing thousands made an 18 KB message.
pub fn named(content_encoding: &str) -> std::borrow::Cow<'_, str> {
    let Some(listed) = too_many_codings(content_encoding) else {
        return std::borrow::Cow::Borrowed(content_encoding);
    };
    let first: Vec<&str> = content_encoding
        .split(',')
        .map(str::trim)
        .filter(|coding| !coding.is_empty())
        .take(MAX_CODINGS)
        .map(|coding| if coding.len() > 32 { "..." } else { coding })
        .collect();
    std::borrow::Cow::Owned(format!("{}, ... ({listed} codings)", first.join(", ")))
}

/// The codings an answer's `Content-Encoding` fields list, joined as one value (`gzip`,
/// `deflate, gzip`); `None` when there are none besides `identity`, i.e. the body is as is.
pub fn content_encoding(fields: &Fields) -> Option<String> {
    let mut codings: Option<String> = None;
    let listed = fields
        .get_all("content-encoding")
        .flat_map(|value| value.split(|b| *b == b','))
        .map(trim);
    for coding in listed {
        if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
            continue;
        }
        let all = codings.get_or_insert_with(String::new);
        if !all.is_empty() {
            all.push_str(", ");
        }
        all.push_str(&String::from_utf8_lossy(coding).to_ascii_lowercase());
    }
    codings
}

/// Whether a client whose request carried the header fields `request` takes an answer in
/// `content_encoding` (as [`content_encoding`] gives it; every coding listed must be one it
/// takes), by its `Accept-Encoding` (RFC 9110 §12.5.3): a coding it lists with a weight above
/// 0 (names are compared without case; a listed `x-gzip` takes gzip too), any other when it
/// lists `*` so. An answer in `x-gzip` is taken only by a client that lists `x-gzip` itself
/// (or `*`): httpx, and so the openai Python SDK, lists `gzip` and cannot read `x-gzip`.
/// A client that sends no `Accept-Encoding` takes none: an HTTP library that decodes no
/// coding sends none (RFC 9110 lets that mean "any", which such a client cannot read).
pub fn accepted(request: &Fields, content_encoding: &str) -> bool {
    content_encoding
        .split(',')
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .all(|coding| takes(request, coding.as_bytes()))
}

/// Whether `request`'s `Accept-Encoding` takes `coding` (see [`accepted`]): its own entry
/// decides, else `*`'s. An old alias (`x-gzip`) is matched only by its own name.
fn takes(request: &Fields, coding: &[u8]) -> bool {
    let alias = coding.len() > 2 && coding[..2].eq_ignore_ascii_case(b"x-");
    let coding = if alias {
        coding.to_ascii_lowercase()
    } else {
        canonical_coding(coding)
    };
    let mut any = None;
    let listed = request
        .get_all("accept-encoding")
        .flat_map(|value| value.split(|b| *b == b','));
    for element in listed {
        let mut parts = element.split(|b| *b == b';');
        let name = trim(parts.next().unwrap_or_default());
        let name = if alias {
            name.to_ascii_lowercase()
        } else {
            canonical_coding(name)
        };
        let refused = parts.any(|parameter| {
            let parameter = trim(parameter);
            let weight = parameter
                .split_first_chunk::<2>()
                .filter(|(name, _)| name.eq_ignore_ascii_case(b"q="))
                .map(|(_, weight)| trim(weight));
            // A weight of 0 (`0`, `0.0`, `0.000`) refuses the coding.
            weight.is_some_and(|w| !w.is_empty() && w.iter().all(|b| matches!(b, b'0' | b'.')))
        });
        if name == coding {
            return !refused;
        }
        if name == b"*" && any.is_none() {
            any = Some(!refused);
        }
    }
    any.unwrap_or(false)
}

/// A coding's name as [`takes`] compares it: lower case, `x-gzip` and `x-compress` as the
/// codings they are (RFC 9110 §8.4.1).
fn canonical_coding(name: &[u8]) -> Vec<u8> {
    let name = name.to_ascii_lowercase();
    match name.strip_prefix(b"x-") {
        Some(rest) if rest == b"gzip" || rest == b"compress" => rest.to_vec(),
        _ => name,
    }
}

/// Most bytes a compressed answer is decoded to for the router's own reading: its record,
/// the key search of a whole 2xx and its copy for a client that does not take its coding, a
/// late JSON answer to a stream (error bodies stop at 4 MiB).
/// A few hundred KB of gzip may hold gigabytes; decoded whole up to the 256 MiB an answer
/// may have, one such answer took the router from 15 MB to 815 MB.
pub const MAX_DECODED_BODY: usize = 64 * 1024 * 1024;

/// Most bytes the router's decodes of whole answers ([`decode_within`]) may hold at once, as
/// the record bodies' budget bounds those (`record::BODY_BUDGET`): on the request path, a 2xx
/// that may echo a key or is corrupt (most are read piece by piece instead, holding nothing:
/// [`BodyPieces`]) and a whole answer made into a stream's events; off it, the recorder's
/// decode of an answer for its record, whose kept body holds its share until the last sink
/// lets the record go. Each may take [`MAX_DECODED_BODY`]: 731 bytes of `gzip, gzip` decode
/// to that, and eight such answers at once took the router from 15 MB to 990 MB. Past it an
/// answer is not decoded on the request path: it goes as it came, its record says why (the
/// recorder still reads its usage: see `record::Decode::AtLeastUsage`).
pub const DECODE_BUDGET: usize = 256 * 1024 * 1024;

/// The bytes decodes of whole answers hold together ([`DECODE_BUDGET`]), shared by every
/// request (cheap to clone). A decode takes its share as its buffer grows and never waits for
/// room: one that finds the budget spent stops ([`DecodeError::OverBudget`]).
#[derive(Clone, Debug)]
pub struct DecodeBudget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for DecodeBudget {
    fn default() -> Self {
        Self::new(DECODE_BUDGET)
    }
}

impl DecodeBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            held: Arc::default(),
            limit,
        }
    }

    /// Bytes held right now by decodes and by what they decoded to.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One decode's share of a [`DecodeBudget`], given back when dropped: it goes with the decoded
/// bytes ([`charged_bytes`]), so the budget counts them for as long as anything holds them.
/// Without a budget ([`decode_partly`]) it counts nothing.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<DecodeBudget>,
    bytes: usize,
}

impl Charge {
    /// Takes `bytes` more of the budget; `false` (taking nothing) when that would spend it.
    fn take(&mut self, bytes: usize) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let before = budget.held.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > budget.limit {
            budget.held.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        self.bytes += bytes;
        true
    }

    /// Gives `bytes` of this share back (a buffer freed).
    fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        if let Some(budget) = &self.budget {
            budget.held.fetch_sub(bytes, Ordering::AcqRel);
        }
        self.bytes -= bytes;
    }

    /// What the budget stands at, for the error that says it was spent.
    fn limit(&self) -> usize {
        self.budget
            .as_ref()
            .map_or(usize::MAX, |budget| budget.limit)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.give_back(self.bytes);
    }
}

/// `decoded` (what [`decode_within`] gave) as bytes that hold `charge` until the last of
/// them (clones and slices too) is dropped.
pub fn charged_bytes(decoded: Vec<u8>, charge: Charge) -> Bytes {
    struct Owned(Vec<u8>, #[allow(dead_code)] Charge);
    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    if charge.bytes == 0 {
        return Bytes::from(decoded);
    }
    Bytes::from_owner(Owned(decoded, charge))
}

/// `body` with the codings of `content_encoding` (as [`content_encoding`] gives it, in the
/// order they were applied) undone, at most `limit` bytes of it. The same decoder as a
/// stream's ([`StreamDecoder`]), so a body reads the same whichever way it came.
pub fn decode(content_encoding: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    decode_partly(content_encoding, body, limit).map_err(|broken| broken.error)
}

/// A body that could not be decoded whole, and what it decoded to before that.
#[derive(Debug)]
pub struct Broken {
    pub error: DecodeError,
    /// What decoded before the data turned out corrupt or cut short (as much as a client
    /// that reads on to the fault gets), or before it went past the limit (its first bytes,
    /// up to the limit: see [`Self::is_over_limit`]); in a coding the router does not decode,
    /// nothing.
    pub decoded: Vec<u8>,
}

impl Broken {
    /// Whether the data was corrupt or cut short only after one whole JSON document: a gzip
    /// answer without its 8-byte trailer, deflate cut after its last block. curl and the
    /// openai SDKs read such an answer without complaint, so the router reads it so too.
    pub fn holds_one_json_document(&self) -> bool {
        self.is_broken_data()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&self.decoded).is_ok()
    }

    /// Whether the body decodes to more than the limit: [`Self::decoded`] is its beginning.
    pub fn is_over_limit(&self) -> bool {
        matches!(self.error, DecodeError::TooLarge(_))
    }

    /// Whether the decode stopped because the router's [`DecodeBudget`] was spent: nothing of
    /// it is kept.
    pub fn is_over_budget(&self) -> bool {
        matches!(self.error, DecodeError::OverBudget(_))
    }

    /// Whether the compressed data itself is corrupt or cut short (not too large, nor in a
    /// coding the router does not decode): [`Self::decoded`] is then what came before that.
    pub fn is_broken_data(&self) -> bool {
        matches!(
            self.error,
            DecodeError::Corrupt { .. } | DecodeError::Truncated(_)
        )
    }
}

/// [`decode`], keeping on failure what decoded before it ([`Broken`]). In stacked codings
/// what a broken (or over-limit) outer coding gave is decoded on as far as it goes.
pub fn decode_partly(content_encoding: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, Broken> {
    decode_charged(content_encoding, body, limit, &mut Charge::default())
}

/// [`decode_partly`] within `budget`: the buffers it grows take their bytes from it first,
/// and it stops ([`DecodeError::OverBudget`], nothing kept) when the budget is spent. What it
/// decoded holds the returned share until given to [`charged_bytes`] (or dropped with it).
pub fn decode_within(
    content_encoding: &str,
    body: &[u8],
    limit: usize,
    budget: &DecodeBudget,
) -> (Result<Vec<u8>, Broken>, Charge) {
    let mut charge = Charge {
        budget: Some(budget.clone()),
        bytes: 0,
    };
    let decoded = decode_charged(content_encoding, body, limit, &mut charge);
    // What the earlier layers of stacked codings decoded to is freed: the share left is the
    // buffer kept.
    let kept = match &decoded {
        Ok(decoded) => decoded.capacity(),
        Err(broken) => broken.decoded.capacity(),
    };
    let spare = charge.bytes.saturating_sub(kept);
    charge.give_back(spare);
    (decoded, charge)
}

fn decode_charged(
    content_encoding: &str,
    body: &[u8],
    limit: usize,
    charge: &mut Charge,
) -> Result<Vec<u8>, Broken> {
    if let Some(listed) = too_many_codings(content_encoding) {
        return Err(Broken {
            error: DecodeError::TooManyCodings(listed),
            decoded: Vec::new(),
        });
    }
    let mut decoded: Option<Vec<u8>> = None;
    let mut first_error = None;
    for coding in content_encoding.rsplit(',').map(str::trim) {
        let coding = coding.to_ascii_lowercase();
        if coding.is_empty() || coding == "identity" {
            continue;
        }
        let Some(decoder) = Layer::new(&coding) else {
            let error = DecodeError::Unsupported(coding);
            return Err(Broken {
                error,
                decoded: Vec::new(),
            });
        };
        let input = match decoded.take() {
            Some(before) => Bytes::from(before),
            None => Bytes::copy_from_slice(body),
        };
        let declared = declared_size(&coding, &input);
        match decode_whole(decoder, input, (limit, declared), charge) {
            Ok(out) => decoded = Some(out),
            Err(broken) if !broken.is_broken_data() && !broken.is_over_limit() => {
                return Err(broken);
            }
            Err(Broken {
                error,
                decoded: out,
            }) => {
                first_error.get_or_insert(error);
                decoded = Some(out);
            }
        }
    }
    let decoded = decoded.unwrap_or_else(|| body.to_vec());
    match first_error {
        Some(error) => Err(Broken { error, decoded }),
        None => Ok(decoded),
    }
}

/// How many bytes a body in `coding` says it decodes to, where its format records that: a
/// gzip body's last 4 bytes (its last member's ISIZE, the size modulo 4 GiB), at most what
/// `input` could decode to (deflate expands at most 1032 times), so a trailer that lies (or
/// padding after it) reserves no more than the data might need. Reserved at once, the buffer
/// is not grown by doubling, each step a copy held beside the one before (96 MiB held to
/// decode 64).
fn declared_size(coding: &str, input: &[u8]) -> Option<usize> {
    if !matches!(coding, "gzip" | "x-gzip") || !input.starts_with(&GZIP_MAGIC) {
        return None;
    }
    let size = u32::from_le_bytes(*input.last_chunk::<4>()?) as usize;
    Some(size.min(input.len().saturating_mul(1032)))
}

/// Everything `input` decodes to with `decoder`, failing past `limit` bytes (a small body may
/// decode to gigabytes); on failure, with what decoded before it. The buffer starts at the
/// size the body `declared` ([`declared_size`]), up to the limit, and takes its bytes from
/// `charge` as it grows.
fn decode_whole(
    mut decoder: Layer,
    input: Bytes,
    (limit, declared): (usize, Option<usize>),
    charge: &mut Charge,
) -> Result<Vec<u8>, Broken> {
    let mut out = Vec::new();
    let reserved = match declared {
        Some(size) => grow(&mut out, size.min(limit), charge),
        None => Ok(()),
    };
    let decoded = reserved.and_then(|()| {
        decoder.push(input);
        loop {
            match decoder.next_piece() {
                Ok(Some(piece)) => append_limited(&mut out, &piece, limit, charge)?,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        }
    });
    let finished = decoded.and_then(|()| match decoder.finish()? {
        Some(tail) => append_limited(&mut out, &tail, limit, charge),
        None => Ok(()),
    });
    // A declared size that was too large (a lying trailer) leaves no buffer mostly empty.
    if out.capacity() > out.len().saturating_mul(2).max(64 * 1024) {
        let before = out.capacity();
        out.shrink_to_fit();
        charge.give_back(before - out.capacity());
    }
    match finished {
        Ok(()) => Ok(out),
        // Nothing is kept of a decode the budget stopped: its bytes go back at once.
        Err(error @ DecodeError::OverBudget(_)) => {
            charge.give_back(out.capacity());
            Err(Broken {
                error,
                decoded: Vec::new(),
            })
        }
        Err(error) => Err(Broken {
            error,
            decoded: out,
        }),
    }
}

/// Appends `piece` to `out`, failing when that would take it past `limit` (`out` then holds
/// the first `limit` bytes: see [`Broken::decoded`]). `out` doubles as it grows, as a `Vec`
/// does, but never past `limit`: doubling from just under it took twice the limit.
fn append_limited(
    out: &mut Vec<u8>,
    piece: &[u8],
    limit: usize,
    charge: &mut Charge,
) -> Result<(), DecodeError> {
    let len = out.len().saturating_add(piece.len());
    if len > limit {
        let room = limit.saturating_sub(out.len());
        grow(out, limit, charge)?;
        out.extend_from_slice(&piece[..room.min(piece.len())]);
        return Err(DecodeError::TooLarge(limit));
    }
    if len > out.capacity() {
        let grown = len.max(out.capacity().saturating_mul(2)).min(limit);
        grow(out, grown, charge)?;
    }
    out.extend_from_slice(piece);
    Ok(())
}

/// Grows `out` to hold `capacity` bytes, taking them from `charge` first; the old buffer's
/// bytes are given back once it is freed (a move to a larger buffer holds both meanwhile).
fn grow(out: &mut Vec<u8>, capacity: usize, charge: &mut Charge) -> Result<(), DecodeError> {
    let before = out.capacity();
    if capacity <= before {
        return Ok(());
    }
    if !charge.take(capacity) {
        return Err(DecodeError::OverBudget(charge.limit()));
    }
    out.reserve_exact(capacity - out.len());
    charge.give_back(before);
    Ok(())
}

/// Most decoded bytes [`StreamDecoder::next_piece`] gathers before it hands them out (one
/// step of a decoder can add up to its 32 KiB buffer more). A chunk of a few KiB may decode
/// to gigabytes: that must go on piece by piece, as fast as the client takes it, never be
/// held whole.
pub const STREAM_PIECE: usize = 64 * 1024;

/// Where a flate2 decoder writes what it decoded; [`StreamDecoder`] moves it out from there
/// after each step.
type Sink = bytes::buf::Writer<BytesMut>;

/// gzip's magic bytes, which open every member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

/// Most decoded bytes one step of the br or zstd decoder writes (flate2's write at most its
/// 32 KiB buffer).
const STEP_OUT: usize = 32 * 1024;

/// The largest zstd window the router decodes: 8 MiB, the most a `Content-Encoding: zstd`
/// body may use (RFC 9659); a decoder holds its window in memory. libzstd's own limit is
/// 128 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The brotli decoder's state (its window, up to 16 MiB, allocated as the stream needs it).
type Brotli = brotli_decompressor::BrotliState<
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
>;

/// The bytes of a zstd frame's header libzstd reads first (its magic number and descriptor):
/// its hint before a frame begins.
const ZSTD_FRAME_PREFIX: usize = 5;

/// The input to give libzstd's next step, from its `hint`: not the next block's 3-byte header
/// that the hint of a block includes (less than a header's hint asks for is only read in
/// more steps). A step that decodes a block and then finds the header after it corrupt fails
/// without saying what it wrote, and the block's events would be lost; given the block
/// alone, the step hands them out, and the next one fails.
fn zstd_input(hint: usize) -> usize {
    hint.saturating_sub(3).max(1)
}

/// Whether `opening` opens a zstd frame: its magic number, or a skippable frame's (RFC 8878).
fn is_zstd_frame(opening: [u8; 4]) -> bool {
    let magic = u32::from_le_bytes(opening);
    magic == 0xFD2F_B528 || magic & 0xFFFF_FFF0 == 0x184D_2A50
}

/// The decoder of one stream, in the state the compressed data has reached.
enum Codec {
    /// A gzip member, from its header to its trailer.
    Gzip(Box<flate2::write::GzDecoder<Sink>>),
    /// Before a gzip member. The body opens with gzip's magic bytes; after a whole member,
    /// what follows is another member when it opens with them too, else bytes that are not
    /// part of the body.
    GzipNext {
        after_member: bool,
    },
    Zlib(Box<flate2::write::ZlibDecoder<Sink>>),
    RawDeflate(Box<flate2::write::DeflateDecoder<Sink>>),
    /// `deflate` before its first two bytes tell the zlib format (RFC 9110's deflate) from
    /// raw deflate (which some servers send instead).
    Deflate,
    /// One brotli stream.
    Brotli(Box<Brotli>),
    /// zstd frames. After a whole one (`frame_over`), what follows is another frame when it
    /// opens with a frame's magic number, else bytes that are not part of the body.
    Zstd {
        decoder: Box<zstd::stream::raw::Decoder<'static>>,
        frame_over: bool,
        /// libzstd's hint of the input its next step needs: the rest of a header, or of a
        /// block and the next block's header (see [`zstd_input`]).
        hint: usize,
    },
}

impl Codec {
    /// The flate2 decoder writing into its sink, in the states that have one.
    fn writer(&mut self) -> Option<&mut dyn std::io::Write> {
        match self {
            Self::Gzip(d) => Some(&mut **d),
            Self::Zlib(d) => Some(&mut **d),
            Self::RawDeflate(d) => Some(&mut **d),
            Self::GzipNext { .. } | Self::Deflate | Self::Brotli(_) | Self::Zstd { .. } => None,
        }
    }

    fn sink(&mut self) -> Option<&mut BytesMut> {
        match self {
            Self::Gzip(d) => Some(d.get_mut().get_mut()),
            Self::Zlib(d) => Some(d.get_mut().get_mut()),
            Self::RawDeflate(d) => Some(d.get_mut().get_mut()),
            Self::GzipNext { .. } | Self::Deflate | Self::Brotli(_) | Self::Zstd { .. } => None,
        }
    }
}

/// A zlib stream's first two bytes (RFC 1950): method 8 (deflate), a window of at most 32 KiB,
/// no preset dictionary, and the check bits.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0F == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Undoes the `Content-Encoding` (gzip, deflate, br or zstd, or several of them stacked:
/// `gzip, br`) of a body that arrives in chunks, handing out what each chunk decodes to
/// before the next one is there: an event stream's events go on as they arrive, not when the
/// upstream finishes. Memory stays bounded whatever the compression ratio: output is handed
/// out in pieces of about [`STREAM_PIECE`] (a br or zstd decoder also holds its window: up to
/// 16 or 8 MiB), and stacked codings pass each piece on through the next decoder before the
/// next piece is taken.
///
/// Use: [`Self::push`] a chunk, then [`Self::next_piece`] until it gives `None` (the chunk is
/// then consumed, and everything it decoded to handed out), then the next chunk; at the end
/// of the body, [`Self::finish`] until it gives `None`.
pub struct StreamDecoder {
    /// One decoder per coding, the one applied last (listed last) first: it gets the body.
    layers: Vec<Layer>,
    /// Layers whose input ended and which were finished, from the first.
    finished: usize,
    /// The body ended ([`Self::finish`]).
    ending: bool,
}

impl StreamDecoder {
    /// A decoder for a body in `content_encoding` (as [`content_encoding`] gives it); `None`
    /// when a coding listed is not one the router decodes (`compress`), none is, more than
    /// [`MAX_CODINGS`] are, or libzstd could not allocate a decoder.
    pub fn new(content_encoding: &str) -> Option<Self> {
        if too_many_codings(content_encoding).is_some() {
            return None;
        }
        let layers = content_encoding
            .rsplit(',')
            .map(str::trim)
            .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
            .map(|coding| Layer::new(&coding.to_ascii_lowercase()))
            .collect::<Option<Vec<Layer>>>()?;
        (!layers.is_empty()).then_some(Self {
            layers,
            finished: 0,
            ending: false,
        })
    }

    /// The next chunk of the body. The one before must be consumed ([`Self::next_piece`]
    /// gave `None`).
    pub fn push(&mut self, chunk: Bytes) {
        if let Some(first) = self.layers.first_mut() {
            first.push(chunk);
        }
    }

    /// Decoded bytes of the chunks pushed so far, at most about [`STREAM_PIECE`] at a time;
    /// `None` once all of them are handed out. An error means the body is corrupt; the
    /// decoder is not to be used after one.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>, DecodeError> {
        self.pull(self.layers.len().saturating_sub(1))
    }

    /// The body ended: hands out what was left, a piece at a time (`None` once all of it is
    /// out), checking that the compressed data of each coding ended too.
    pub fn finish(&mut self) -> Result<Option<Bytes>, DecodeError> {
        self.ending = true;
        self.next_piece()
    }

    /// The next piece out of layer `at`, fed from the layers before it as it needs input.
    fn pull(&mut self, at: usize) -> Result<Option<Bytes>, DecodeError> {
        loop {
            let Some(layer) = self.layers.get_mut(at) else {
                return Ok(None);
            };
            if let Some(piece) = layer.next_piece()? {
                return Ok(Some(piece));
            }
            let more = match at.checked_sub(1) {
                Some(before) => self.pull(before)?,
                None => None,
            };
            match more {
                Some(piece) => self.layers[at].push(piece),
                // Nothing more for now, or (the body ended, and the layers before it are
                // finished) ever: this layer is finished in turn.
                None if self.ending && self.finished == at => {
                    self.finished += 1;
                    return self.layers[at].finish();
                }
                None => return Ok(None),
            }
        }
    }
}

/// A whole body, already read, decoded piece by piece ([`StreamDecoder`] with the body as its
/// one chunk): what it decodes to is never held whole, so a body can be searched, measured
/// or written to a client decoded while only its compressed bytes and the decoder's window
/// stay in memory (a 40 MiB answer to a client that reads slowly held 40 MiB for as long
/// as it read).
pub struct BodyPieces {
    decoder: StreamDecoder,
    /// The body's end was given to the decoder ([`StreamDecoder::finish`]).
    ending: bool,
}

impl BodyPieces {
    /// `None` in a coding [`StreamDecoder::new`] does not take.
    pub fn new(content_encoding: &str, body: Bytes) -> Option<Self> {
        let mut decoder = StreamDecoder::new(content_encoding)?;
        decoder.push(body);
        Some(Self {
            decoder,
            ending: false,
        })
    }

    /// The next piece of what the body decodes to (about [`STREAM_PIECE`] at most); `None`
    /// at its end. An error means the data is corrupt or cut short: nothing comes after it.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if !self.ending {
            if let Some(piece) = self.decoder.next_piece()? {
                return Ok(Some(piece));
            }
            self.ending = true;
        }
        self.decoder.finish()
    }
}

/// Undoes one `Content-Encoding` of a body that arrives in chunks (see [`StreamDecoder`],
/// which has the same use).
struct Layer {
    codec: Codec,
    /// What is left of the chunk pushed last.
    input: Bytes,
    /// Bytes taken from the input that do not yet tell what follows (the opening of deflate
    /// data, or of what comes after a gzip member or a zstd frame): joined back in front of
    /// the next chunk.
    held: Vec<u8>,
    /// Decoded bytes not handed out yet.
    out: BytesMut,
    /// The flate2 decoder may hold output of input it consumed since it was last flushed.
    unflushed: bool,
    /// The br or zstd decoder's last step filled its room: it may hold more output of input
    /// it consumed.
    more_output: bool,
    /// The compressed data ended; whatever follows it is ignored.
    ended: bool,
    /// Some input arrived: a body with none decodes to nothing, not to an error.
    seen_input: bool,
    /// For messages.
    coding: &'static str,
    /// Corruption found after some output: that output goes out first, this error next.
    failed: Option<DecodeError>,
}

impl Layer {
    /// A decoder for a body in `coding` (one, in lower case); `None` when the router does not
    /// decode it (`compress`), or libzstd could not allocate a decoder.
    fn new(coding: &str) -> Option<Self> {
        let (codec, coding) = match coding {
            "gzip" | "x-gzip" => (
                Codec::GzipNext {
                    after_member: false,
                },
                "gzip",
            ),
            "deflate" => (Codec::Deflate, "deflate"),
            "br" => (Codec::Brotli(Box::new(brotli())), "br"),
            "zstd" => (zstd_decoder()?, "zstd"),
            _ => return None,
        };
        Some(Self {
            codec,
            input: Bytes::new(),
            held: Vec::new(),
            out: BytesMut::new(),
            unflushed: false,
            more_output: false,
            ended: false,
            seen_input: false,
            coding,
            failed: None,
        })
    }

    /// The next chunk of the body. The one before must be consumed ([`Self::next_piece`]
    /// gave `None`).
    fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.input.is_empty(), "the chunk before was not consumed");
        if self.ended || chunk.is_empty() {
            return;
        }
        self.seen_input = true;
        self.input = chunk;
    }

    /// Decoded bytes of the chunks pushed so far, at most about [`STREAM_PIECE`] at a time;
    /// `None` once all of them are handed out. An error means the body is corrupt; the
    /// decoder is not to be used after one.
    fn next_piece(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        while !self.ended && (!self.input.is_empty() || self.more_output) {
            if let Err(error) = self.step() {
                return self.fail(error);
            }
            if self.out.len() >= STREAM_PIECE {
                return Ok(self.take());
            }
        }
        if std::mem::take(&mut self.unflushed) && !self.ended {
            if let Some(writer) = self.codec.writer() {
                let flushed = writer.flush();
                self.drain_sink();
                if let Err(error) = flushed {
                    let coding = self.coding;
                    return self.fail(DecodeError::Corrupt { coding, error });
                }
            }
        }
        Ok(self.take())
    }

    /// Decodes some of the input: at most one buffer of output (32 KiB) at a time.
    fn step(&mut self) -> Result<(), DecodeError> {
        let coding = self.coding;
        match self.codec {
            Codec::Deflate => {
                if let Some(opening) = self.opening::<2>() {
                    self.codec = if is_zlib_header(opening[0], opening[1]) {
                        Codec::Zlib(Box::new(flate2::write::ZlibDecoder::new(sink())))
                    } else {
                        Codec::RawDeflate(Box::new(flate2::write::DeflateDecoder::new(sink())))
                    };
                }
                return Ok(());
            }
            Codec::GzipNext { after_member } => {
                match self.opening::<2>() {
                    Some(GZIP_MAGIC) => self.codec = Codec::Gzip(gzip_member()),
                    Some(_) if after_member => self.ignore_the_rest(),
                    Some(_) => {
                        let error = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "invalid gzip header",
                        );
                        return Err(DecodeError::Corrupt { coding, error });
                    }
                    None => {}
                }
                return Ok(());
            }
            Codec::Brotli(_) => return self.brotli_step(),
            Codec::Zstd { .. } => return self.zstd_step(),
            Codec::Gzip(_) | Codec::Zlib(_) | Codec::RawDeflate(_) => {}
        }
        let Some(writer) = self.codec.writer() else {
            return Ok(());
        };
        let written = writer.write(&self.input);
        // What was decoded before corrupt data is handed out first: a flush moves it out of
        // the decoder (and fails again, which says nothing new).
        if written.is_err() {
            let _ = writer.flush();
        }
        self.drain_sink();
        let written = written.map_err(|error| DecodeError::Corrupt { coding, error })?;
        self.unflushed = true;
        if written > 0 {
            self.input.advance(written);
            return Ok(());
        }
        // The compressed data ended before this input.
        if let Codec::Gzip(_) = self.codec {
            // A whole member (its checksum checked): another may follow.
            self.end()?;
            self.codec = Codec::GzipNext { after_member: true };
            return Ok(());
        }
        self.ignore_the_rest();
        self.end()
    }

    /// One step of br: at most [`STEP_OUT`] bytes of output.
    fn brotli_step(&mut self) -> Result<(), DecodeError> {
        use brotli_decompressor::BrotliResult;
        let Codec::Brotli(state) = &mut self.codec else {
            return Ok(());
        };
        let start = self.out.len();
        self.out.resize(start + STEP_OUT, 0);
        let (mut available_in, mut input_offset) = (self.input.len(), 0);
        let (mut available_out, mut output_offset, mut total_out) = (STEP_OUT, 0, 0);
        let result = brotli_decompressor::BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            &self.input,
            &mut available_out,
            &mut output_offset,
            &mut self.out[start..],
            &mut total_out,
            state,
        );
        self.out.truncate(start + output_offset);
        self.input.advance(input_offset.min(self.input.len()));
        self.more_output = matches!(result, BrotliResult::NeedsMoreOutput);
        match result {
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok(()),
            BrotliResult::ResultSuccess => {
                self.ignore_the_rest();
                Ok(())
            }
            BrotliResult::ResultFailure => Err(DecodeError::Corrupt {
                coding: "br",
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("invalid brotli data ({:?})", state.error_code),
                ),
            }),
        }
    }

    /// One step of zstd: at most [`STEP_OUT`] bytes of output.
    fn zstd_step(&mut self) -> Result<(), DecodeError> {
        use zstd::stream::raw::{InBuffer, Operation as _, OutBuffer};
        if let Codec::Zstd {
            frame_over: true, ..
        } = self.codec
        {
            self.more_output = false;
            match self.opening::<4>() {
                Some(opening) if is_zstd_frame(opening) => {}
                Some(_) => self.ignore_the_rest(),
                None => {}
            }
            if self.input.is_empty() {
                return Ok(());
            }
        }
        let Codec::Zstd {
            decoder,
            frame_over,
            hint,
        } = &mut self.codec
        else {
            return Ok(());
        };
        let start = self.out.len();
        self.out.resize(start + STEP_OUT, 0);
        let fed = zstd_input(*hint).min(self.input.len());
        let mut input = InBuffer::around(&self.input[..fed]);
        let mut output = OutBuffer::around(&mut self.out[start..]);
        let ran = decoder.run(&mut input, &mut output);
        let (consumed, written) = (input.pos(), output.pos());
        self.out.truncate(start + written);
        self.input.advance(consumed.min(self.input.len()));
        let corrupt = |error| DecodeError::Corrupt {
            coding: "zstd",
            error,
        };
        let next = ran.map_err(corrupt)?;
        // libzstd makes progress whenever it can; none at all would loop for ever.
        if consumed == 0 && written == 0 && fed > 0 {
            let stuck = std::io::Error::new(std::io::ErrorKind::InvalidData, "no progress");
            return Err(corrupt(stuck));
        }
        // At a frame's end (0) libzstd has handed out all of it.
        self.more_output = written == STEP_OUT && next != 0;
        *frame_over = next == 0;
        *hint = if next == 0 { ZSTD_FRAME_PREFIX } else { next };
        Ok(())
    }

    /// The first `N` bytes of what is left (bytes held from before joined back in front), or
    /// `None` while fewer than `N` have come: the input is held then, waiting for the next
    /// chunk.
    fn opening<const N: usize>(&mut self) -> Option<[u8; N]> {
        if !self.held.is_empty() {
            self.held.extend_from_slice(&self.input);
            self.input = Bytes::from(std::mem::take(&mut self.held));
        }
        match self.input.first_chunk::<N>() {
            Some(opening) => Some(*opening),
            None => {
                self.held = self.input.to_vec();
                self.input.clear();
                None
            }
        }
    }

    /// What is left is not part of the compressed data (see the module's doc).
    fn ignore_the_rest(&mut self) {
        self.input.clear();
        self.held.clear();
        self.ended = true;
    }

    /// Moves what the flate2 decoder wrote out of its sink.
    fn drain_sink(&mut self) {
        let Some(sink) = self.codec.sink() else {
            return;
        };
        if sink.is_empty() {
            return;
        }
        let decoded = sink.split();
        if self.out.is_empty() {
            self.out = decoded;
        } else {
            self.out.extend_from_slice(&decoded);
        }
    }

    /// The data is corrupt: what was decoded before the corrupt part (chunks that arrived
    /// together are pushed as one) is handed out first, the error on the next call.
    fn fail(&mut self, error: DecodeError) -> Result<Option<Bytes>, DecodeError> {
        self.input.clear();
        self.ended = true;
        match self.take() {
            Some(piece) => {
                self.failed = Some(error);
                Ok(Some(piece))
            }
            None => Err(error),
        }
    }

    /// The body ended: checks that its compressed data did too, and hands out what was left.
    fn finish(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.ended || !self.seen_input {
            return Ok(self.take());
        }
        self.ended = true;
        self.end()?;
        Ok(self.take())
    }

    /// Checks that the compressed data ended (and, for gzip, its checksum), moving out what
    /// the decoder still held.
    fn end(&mut self) -> Result<(), DecodeError> {
        let coding = self.coding;
        let ended = match &mut self.codec {
            Codec::Gzip(d) => d.try_finish(),
            Codec::Zlib(d) => d.try_finish(),
            Codec::RawDeflate(d) => d.try_finish(),
            // Whatever came after the last member was not gzip.
            Codec::GzipNext { after_member: true } => Ok(()),
            Codec::GzipNext {
                after_member: false,
            } => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Codec::Deflate => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Codec::Brotli(state) if brotli_decompressor::BrotliDecoderIsFinished(state) => Ok(()),
            Codec::Zstd {
                frame_over: true, ..
            } => Ok(()),
            Codec::Brotli(_) | Codec::Zstd { .. } => Err(std::io::ErrorKind::UnexpectedEof.into()),
        };
        self.drain_sink();
        ended.map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                DecodeError::Truncated(coding)
            } else {
                DecodeError::Corrupt { coding, error }
            }
        })
    }

    fn take(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

fn brotli() -> Brotli {
    use brotli_decompressor::StandardAlloc;
    Brotli::new(
        StandardAlloc::default(),
        StandardAlloc::default(),
        StandardAlloc::default(),
    )
}

/// A zstd decoder that refuses windows over [`ZSTD_WINDOW_LOG_MAX`]; `None` when libzstd
/// could not allocate one.
fn zstd_decoder() -> Option<Codec> {
    let mut decoder = zstd::stream::raw::Decoder::new().ok()?;
    decoder
        .set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            ZSTD_WINDOW_LOG_MAX,
        ))
        .ok()?;
    Some(Codec::Zstd {
        decoder: Box::new(decoder),
        frame_over: false,
        hint: ZSTD_FRAME_PREFIX,
    })
}

fn gzip_member() -> Box<flate2::write::GzDecoder<Sink>> {
    Box::new(flate2::write::GzDecoder::new(sink()))
}

fn sink() -> Sink {
    use bytes::BufMut as _;
    BytesMut::new().writer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const TEXT: &[u8] = br#"{"detail":"gzipped error text"}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("write");
        encoder.finish().expect("gzip")
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("write");
        encoder.finish().expect("zlib")
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("write");
        encoder.finish().expect("deflate")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).expect("zstd")
    }

    include!("../tests/fixtures/brotli_stored.rs");

    /// `chunks` in br (see `brotli_stored_blocks`), one piece for each, then the last
    /// meta-block as a piece of its own (real compressor output is in [`BROTLI_FLUSHED`]).
    fn brotli_stored(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let (mut pieces, last) = brotli_stored_blocks(chunks);
        pieces.push(last);
        pieces
    }

    /// What Python's `brotli` (Google's C library) made of `data: one\n\n`, `data: two\n\n`,
    /// `data: [DONE]\n\n`, flushed after each: compressed meta-blocks after the first, then
    /// the end.
    const BROTLI_FLUSHED: [&[u8]; 4] = [
        b"\x0b\x05\x80data: one\n\n",
        b"\x50\x00\x80\x5f\x5a\xe1\x8d\xee\x4e\x11\xa2\x4a\x04\x60\x0b",
        b"\x68\x00\x80\x5f\x52\x61\xab\x2b\x09\x50\x44\x93\x50\x49\x35\xf8\x31\x00",
        b"\x03",
    ];

    /// `TEXT` as Python's `brotli.compress` made it.
    const BROTLI_TEXT: &[u8] = b"\x0b\x0f\x80{\"detail\":\"gzipped error text\"}\x03";

    /// 8 MiB of `0`, in 14 bytes of br.
    const BROTLI_BOMB: &[u8] = b"\xcb\xff\xff\x3f\xf8\x25\x60\xe2\xb1\x40\x20\xf7\xfe\x6f";

    fn brotli(data: &[u8]) -> Vec<u8> {
        brotli_stored(&[data]).concat()
    }

    #[test]
    fn the_listed_codings_are_read_from_every_field() {
        let none = Fields::from_pairs(&[("Content-Type", "application/json")]);
        assert_eq!(content_encoding(&none), None);
        let identity = Fields::from_pairs(&[("Content-Encoding", " identity ")]);
        assert_eq!(content_encoding(&identity), None);
        let two = Fields::from_pairs(&[
            ("Content-Encoding", "deflate"),
            ("content-encoding", "identity, GZIP"),
        ]);
        assert_eq!(content_encoding(&two).as_deref(), Some("deflate, gzip"));
    }

    #[test]
    fn a_client_takes_the_codings_its_accept_encoding_lists() {
        let client = |value: Option<&str>| match value {
            Some(value) => Fields::from_pairs(&[("Accept-Encoding", value)]),
            None => Fields::from_pairs(&[("Accept", "application/json")]),
        };
        for (accept, coding, taken) in [
            (None, "gzip", false),
            (Some(""), "gzip", false),
            (Some("gzip, deflate, br"), "zstd", false),
            (Some("gzip, deflate, br"), "br", true),
            (Some("gzip, deflate, br"), "gzip, br", true),
            (Some("gzip, deflate"), "gzip, br", false),
            (Some("GZIP"), "gzip", true),
            // httpx lists gzip and cannot read x-gzip.
            (Some("gzip"), "x-gzip", false),
            (Some("X-GZIP"), "x-gzip", true),
            (Some("*"), "x-gzip", true),
            (Some("x-gzip"), "gzip", true),
            (Some("*"), "zstd", true),
            (Some("*;q=0"), "zstd", false),
            (Some("br;q=0, *"), "br", false),
            (Some("gzip;q=0.000"), "gzip", false),
            (Some("gzip;Q=0"), "gzip", false),
            (Some("gzip; q=0.5"), "gzip", true),
            (Some("zstd;q=1, *;q=0"), "zstd", true),
            (Some("identity"), "gzip", false),
        ] {
            assert_eq!(
                accepted(&client(accept), coding),
                taken,
                "{accept:?} takes {coding}"
            );
        }
        let two = Fields::from_pairs(&[("Accept-Encoding", "gzip"), ("accept-encoding", "zstd")]);
        assert!(accepted(&two, "zstd"));
    }

    /// What decoded before the data broke off is kept, and told whole JSON or not.
    #[test]
    fn a_body_cut_after_its_json_keeps_what_decoded() {
        let body = gzip(TEXT);
        for cut in [8, 4, 1] {
            let broken = decode_partly("gzip", &body[..body.len() - cut], 1024)
                .expect_err("cut in its trailer");
            assert_eq!(broken.decoded, TEXT, "cut by {cut}");
            assert!(broken.holds_one_json_document(), "cut by {cut}");
        }
        let zlib_body = zlib(TEXT);
        let broken = decode_partly("deflate", &zlib_body[..zlib_body.len() - 4], 1024)
            .expect_err("cut in its checksum");
        assert!(broken.holds_one_json_document());
        // Stacked: the outer coding cut, the inner decodes what it gave.
        let stacked = brotli(&gzip(TEXT));
        let mut cut_inner = gzip(TEXT);
        cut_inner.truncate(cut_inner.len() - 8);
        let broken = decode_partly("gzip, br", &brotli(&cut_inner), 1024).expect_err("cut");
        assert!(broken.holds_one_json_document());
        assert_eq!(
            decode_partly("gzip, br", &stacked, 1024).expect("whole"),
            TEXT
        );
        // Cut inside the document: what decoded is no whole document.
        let broken = decode_partly("gzip", &body[..body.len() / 2], 1024).expect_err("cut");
        assert!(!broken.holds_one_json_document());
        let bomb = gzip(&[b'{'; 4096]);
        let broken = decode_partly("gzip", &bomb, 1024).expect_err("too large");
        assert!(!broken.is_broken_data());
        assert!(broken.is_over_limit());
        // Its beginning, up to the limit, in stacked codings too.
        assert_eq!(broken.decoded, [b'{'; 1024], "its first 1024 bytes");
        let stacked = brotli(&gzip(&[b'{'; 4096]));
        let broken = decode_partly("gzip, br", &stacked, 1024).expect_err("too large");
        assert!(broken.is_over_limit(), "{:?}", broken.error);
        assert_eq!(broken.decoded, [b'{'; 1024], "its first 1024 bytes");
    }

    #[test]
    fn gzip_and_both_kinds_of_deflate_are_decoded() {
        for (coding, body) in [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("br", BROTLI_TEXT.to_vec()),
            ("br", brotli(TEXT)),
            ("zstd", zstd(TEXT)),
            ("identity", TEXT.to_vec()),
            ("deflate, gzip", gzip(&zlib(TEXT))),
            ("zstd, br", brotli(&zstd(TEXT))),
        ] {
            let decoded = decode(coding, &body, 1024).expect(coding);
            assert_eq!(decoded, TEXT, "{coding}");
        }
    }

    #[test]
    fn other_codings_corrupt_bodies_and_bombs_are_refused() {
        assert!(matches!(
            decode("compress", TEXT, 1024),
            Err(DecodeError::Unsupported(c)) if c == "compress"
        ));
        assert!(matches!(
            decode("gzip", b"not gzip at all", 1024),
            Err(DecodeError::Corrupt { .. })
        ));
        let bomb = gzip(&vec![b'0'; 1 << 20]);
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            decode("gzip", &bomb, 64 * 1024),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(
            decode("gzip", &bomb, 1 << 20).expect("at the limit").len(),
            1 << 20
        );
        for (coding, bomb) in [
            ("br", BROTLI_BOMB.to_vec()),
            ("zstd", zstd(&[b'0'; 1 << 20])),
        ] {
            assert!(matches!(
                decode(coding, &bomb, 64 * 1024),
                Err(DecodeError::TooLarge(_))
            ));
        }
    }

    /// A body decoded whole never takes a buffer bigger than its limit: doubling from just
    /// under the limit took twice as much.
    #[test]
    fn decoding_grows_its_buffer_at_most_to_the_limit() {
        let limit = 1000;
        let mut out = Vec::new();
        for _ in 0..9 {
            append_limited(&mut out, &[0; 111], limit, &mut Charge::default())
                .expect("under the limit");
            assert!(out.capacity() <= limit, "{}", out.capacity());
        }
        assert!(matches!(
            append_limited(&mut out, &[0; 2], limit, &mut Charge::default()),
            Err(DecodeError::TooLarge(1000))
        ));
        let size = (5 << 20) + 1;
        let decoded = decode("gzip", &gzip(&vec![b'0'; size]), size).expect("at the limit");
        assert_eq!(decoded.len(), size);
        assert!(decoded.capacity() <= size, "{}", decoded.capacity());
    }

    /// A gzip body's buffer is the size its trailer declares, taken at once (no doubling,
    /// whose last step held half the limit beside the whole of it), and a trailer that lies
    /// leaves no oversized buffer behind.
    #[test]
    fn a_gzip_body_is_decoded_into_the_size_it_declares() {
        let text = vec![b'x'; (3 << 20) + 5];
        let decoded = decode("gzip", &gzip(&text), 64 << 20).expect("decodes");
        assert_eq!(decoded.len(), text.len());
        assert_eq!(decoded.capacity(), text.len());
        let bomb = gzip(&gzip(&vec![b'0'; 4 << 20]));
        let broken = decode_partly("gzip, gzip", &bomb, 1 << 20).expect_err("too large");
        assert!(broken.is_over_limit());
        assert_eq!(broken.decoded.capacity(), 1 << 20);
        // Some 300 bytes that deflate cannot shrink, declared to be 4 GiB.
        let text: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut lying = gzip(&text);
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        let broken = decode_partly("gzip", &lying, 1 << 20).expect_err("size differs");
        assert_eq!(broken.decoded, text);
        assert!(
            broken.decoded.capacity() < 1024,
            "{}",
            broken.decoded.capacity()
        );
    }

    /// Decodes within a budget take their buffers from it and give them back when what they
    /// decoded is dropped; one that finds it spent stops, keeping nothing.
    #[test]
    fn decodes_within_a_budget_hold_it_while_their_bytes_live() {
        let budget = DecodeBudget::new(3 << 20);
        let text = vec![b'x'; 2 << 20];
        let body = gzip(&text);
        let (decoded, charge) = decode_within("gzip", &body, 64 << 20, &budget);
        let decoded = charged_bytes(decoded.expect("decodes"), charge);
        assert_eq!(decoded, text);
        assert_eq!(budget.held(), 2 << 20);
        let (second, charge) = decode_within("gzip", &body, 64 << 20, &budget);
        let broken = second.expect_err("over budget");
        assert!(broken.is_over_budget(), "{:?}", broken.error);
        assert!(broken.decoded.is_empty());
        drop(charge);
        assert_eq!(budget.held(), 2 << 20);
        let slice = decoded.slice(1..10);
        drop(decoded);
        assert_eq!(budget.held(), 2 << 20, "a slice holds its share");
        drop(slice);
        assert_eq!(budget.held(), 0);
        // Stacked, without a declared size (zstd): grown by doubling, given back whole.
        let bomb = zstd(&gzip(&vec![b'0'; 8 << 20]));
        let (decoded, charge) = decode_within("gzip, zstd", &bomb, 64 << 20, &budget);
        assert!(decoded.expect_err("over budget").is_over_budget());
        drop(charge);
        assert_eq!(budget.held(), 0);
        let (decoded, charge) = decode_within("gzip, zstd", &bomb, 1 << 20, &budget);
        assert!(decoded.expect_err("over the limit").is_over_limit());
        assert!(budget.held() <= 1 << 20, "{}", budget.held());
        drop(charge);
        assert_eq!(budget.held(), 0);
    }

    /// Everything `chunks` decode to, each chunk's output checked to be handed out before
    /// the next chunk is pushed; then `finish`.
    fn decode_chunks(coding: &str, chunks: &[&[u8]]) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = StreamDecoder::new(coding).expect("a coding it decodes");
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            while let Some(piece) = decoder.next_piece()? {
                assert!(piece.len() <= 2 * STREAM_PIECE, "{}", piece.len());
                out.extend_from_slice(&piece);
            }
        }
        while let Some(tail) = decoder.finish()? {
            out.extend_from_slice(&tail);
        }
        Ok(out)
    }

    const EVENTS: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";

    #[test]
    fn streams_decode_whatever_the_chunk_boundaries() {
        for (coding, body) in [
            ("gzip", gzip(EVENTS)),
            ("x-gzip", gzip(EVENTS)),
            ("deflate", zlib(EVENTS)),
            ("deflate", raw_deflate(EVENTS)),
            ("br", brotli(EVENTS)),
            ("br", BROTLI_FLUSHED.concat()),
            ("zstd", zstd(EVENTS)),
            // Two gzip members, or two zstd frames, as `decode` reads them too.
            (
                "gzip",
                [gzip(b"data: 1\n\n"), gzip(b"data: 2\n\n")].concat(),
            ),
            (
                "zstd",
                [zstd(b"data: 1\n\n"), zstd(b"data: 2\n\n")].concat(),
            ),
        ] {
            let whole = decode(coding, &body, 1 << 20).expect(coding);
            for at in 0..=body.len() {
                let (a, b) = body.split_at(at);
                assert_eq!(
                    decode_chunks(coding, &[a, b]).expect(coding),
                    whole,
                    "{coding} at {at}"
                );
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                decode_chunks(coding, &bytes).expect(coding),
                whole,
                "{coding} by byte"
            );
        }
    }

    /// What an upstream that flushes its compressor after each event sends: one chunk per
    /// event, the last with the coding's trailer.
    fn flushed_chunks(coding: &str, events: &[&[u8]]) -> Vec<Vec<u8>> {
        let level = flate2::Compression::fast();
        let mut chunks = Vec::new();
        if coding == "br" {
            return brotli_stored(events);
        }
        if coding == "zstd" {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
            for event in events {
                encoder.write_all(event).expect("write");
                encoder.flush().expect("flush");
                chunks.push(std::mem::take(encoder.get_mut()));
            }
            chunks.push(encoder.finish().expect("finish"));
            return chunks;
        }
        if coding == "gzip" {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            for event in events {
                encoder.write_all(event).expect("write");
                encoder.flush().expect("flush");
                chunks.push(std::mem::take(encoder.get_mut()));
            }
            chunks.push(encoder.finish().expect("finish"));
        } else {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
            for event in events {
                encoder.write_all(event).expect("write");
                encoder.flush().expect("flush");
                chunks.push(std::mem::take(encoder.get_mut()));
            }
            chunks.push(encoder.finish().expect("finish"));
        }
        chunks
    }

    /// Each event is handed out whole as soon as its chunk arrives, nothing held back for
    /// the next chunk.
    #[test]
    fn each_flushed_event_is_handed_out_with_its_chunk() {
        let events = [&b"data: one\n\n"[..], b"data: two\n\n", b"data: [DONE]\n\n"];
        let real_br: Vec<Vec<u8>> = BROTLI_FLUSHED.iter().map(|c| c.to_vec()).collect();
        for (coding, chunks) in [
            ("gzip", flushed_chunks("gzip", &events)),
            ("deflate", flushed_chunks("deflate", &events)),
            ("br", flushed_chunks("br", &events)),
            ("br", real_br),
            ("zstd", flushed_chunks("zstd", &events)),
        ] {
            let mut decoder = StreamDecoder::new(coding).expect(coding);
            for (chunk, event) in chunks.iter().zip(events) {
                decoder.push(Bytes::copy_from_slice(chunk));
                let mut out = Vec::new();
                while let Some(piece) = decoder.next_piece().expect(coding) {
                    out.extend_from_slice(&piece);
                }
                assert_eq!(out, event, "{coding}");
            }
            let trailer = chunks.last().expect("trailer");
            decoder.push(Bytes::copy_from_slice(trailer));
            assert_eq!(decoder.next_piece().expect(coding), None);
            assert_eq!(decoder.finish().expect(coding), None);
        }
    }

    /// Good data and corrupt data pushed as one chunk (they arrived in one read): what the
    /// good part decodes to is handed out, then the error.
    #[test]
    fn output_before_corruption_in_the_same_chunk_is_handed_out_first() {
        let events = [&b"data: one\n\n"[..], b"data: two\n\n"];
        // Not br: its decoder hands out what it decoded only when it needs more input, and
        // loses it when the same call finds the data corrupt (the error still comes, see
        // `corrupt_br_after_good_chunks_is_an_error`).
        for coding in ["gzip", "deflate", "zstd"] {
            let chunks = flushed_chunks(coding, &events);
            let mut joined = chunks[0].clone();
            joined.extend_from_slice(b"\xFF\xFF\xFF\xFFjunk");
            let mut decoder = StreamDecoder::new(coding).expect(coding);
            decoder.push(Bytes::from(joined));
            let first = decoder.next_piece().expect("the good part first");
            assert_eq!(first.as_deref(), Some(events[0]), "{coding}");
            assert!(
                matches!(decoder.next_piece(), Err(DecodeError::Corrupt { .. })),
                "{coding}"
            );
        }
    }

    /// br: corrupt data in the chunk that ended the events before it still ends the stream
    /// with an error; the events of earlier chunks went out with them.
    #[test]
    fn corrupt_br_after_good_chunks_is_an_error() {
        let mut decoder = StreamDecoder::new("br").expect("br");
        decoder.push(Bytes::from_static(BROTLI_FLUSHED[0]));
        assert_eq!(
            decoder.next_piece().expect("good").as_deref(),
            Some(&b"data: one\n\n"[..])
        );
        assert_eq!(decoder.next_piece().expect("consumed"), None);
        decoder.push(Bytes::from_static(b"\xff\xff\xff\xffjunk"));
        assert!(matches!(
            decoder.next_piece(),
            Err(DecodeError::Corrupt { coding: "br", .. })
        ));
    }

    /// A whole body read piece by piece is what [`decode`] makes of it, in bounded pieces,
    /// a bomb's too; its corruption is an error after what came before it.
    #[test]
    fn a_body_read_in_pieces_is_what_it_decodes_to() {
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for (coding, body) in [
            ("gzip", gzip(&text)),
            ("deflate", zlib(&text)),
            ("br", brotli(&text)),
            ("zstd", zstd(&text)),
            ("gzip, br", brotli(&gzip(&text))),
            ("gzip, gzip", gzip(&gzip(&vec![b'0'; 8 << 20]))),
        ] {
            let whole = decode(coding, &body, 64 << 20).expect(coding);
            let mut pieces = BodyPieces::new(coding, Bytes::from(body)).expect(coding);
            let mut out = Vec::new();
            while let Some(piece) = pieces.next_piece().expect(coding) {
                assert!(piece.len() <= 2 * STREAM_PIECE, "{coding}: {}", piece.len());
                out.extend_from_slice(&piece);
            }
            assert!(out == whole, "{coding}");
            assert!(pieces.next_piece().expect("over").is_none(), "{coding}");
        }
        let body = gzip(&text);
        let mut pieces =
            BodyPieces::new("gzip", Bytes::from(body[..body.len() / 2].to_vec())).expect("gzip");
        let mut out = 0;
        let error = loop {
            match pieces.next_piece() {
                Ok(Some(piece)) => out += piece.len(),
                Ok(None) => panic!("a cut body decoded whole"),
                Err(error) => break error,
            }
        };
        assert!(matches!(error, DecodeError::Truncated("gzip")), "{error}");
        assert!(out > 0 && out < text.len());
        assert!(BodyPieces::new("compress", Bytes::new()).is_none());
    }

    #[test]
    fn unknown_codings_are_not_decoded() {
        for coding in ["compress", "x-foo", "gzip, compress", "", "identity"] {
            assert!(StreamDecoder::new(coding).is_none(), "{coding}");
        }
    }

    /// Stacked codings (`gzip, br`: gzip applied first) are undone in turn, whatever the
    /// chunk boundaries, and a bomb inside them still comes out in bounded pieces, the end of
    /// the body included.
    #[test]
    fn stacked_codings_decode_as_a_stream() {
        for (coding, body) in [
            ("gzip, br", brotli(&gzip(EVENTS))),
            ("deflate, zstd", zstd(&zlib(EVENTS))),
            ("br, gzip", gzip(&brotli(EVENTS))),
            ("gzip, identity, gzip", gzip(&gzip(EVENTS))),
        ] {
            for at in 0..=body.len() {
                let (a, b) = body.split_at(at);
                assert_eq!(decode_chunks(coding, &[a, b]).expect(coding), EVENTS);
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(decode_chunks(coding, &bytes).expect(coding), EVENTS);
            let cut = &body[..body.len() - 2];
            assert!(decode_chunks(coding, &[cut]).is_err(), "{coding} cut");
        }
        let size = 8 << 20;
        let bomb = gzip(&gzip(&vec![b'0'; size]));
        assert!(bomb.len() < 64 * 1024);
        let mut decoder = StreamDecoder::new("gzip, gzip").expect("stacked");
        decoder.push(Bytes::from(bomb));
        let mut total = 0;
        loop {
            let piece = match decoder.next_piece().expect("valid") {
                Some(piece) => piece,
                None => match decoder.finish().expect("complete") {
                    Some(piece) => piece,
                    None => break,
                },
            };
            assert!(piece.len() <= 2 * STREAM_PIECE, "{}", piece.len());
            total += piece.len();
        }
        assert_eq!(total, size);
    }

    #[test]
    fn a_corrupt_or_cut_stream_is_an_error() {
        let body = gzip(EVENTS);
        let mut bad = body.clone();
        bad[12] ^= 0xFF;
        bad[13] ^= 0xFF;
        assert!(matches!(
            decode_chunks("gzip", &[&bad]),
            Err(DecodeError::Corrupt { coding: "gzip", .. })
        ));
        assert!(matches!(
            decode_chunks("gzip", &[b"not gzip at all"]),
            Err(DecodeError::Corrupt { .. })
        ));
        // Cut inside the trailer, the checksum cannot match: reported as corrupt.
        assert!(matches!(
            decode_chunks("gzip", &[&body[..body.len() - 1]]),
            Err(DecodeError::Corrupt { .. })
        ));
        for cut in [1, 5, body.len() / 2] {
            assert!(
                matches!(
                    decode_chunks("gzip", &[&body[..cut]]),
                    Err(DecodeError::Truncated("gzip"))
                ),
                "cut at {cut}"
            );
        }
        let zlib_body = zlib(EVENTS);
        assert!(matches!(
            decode_chunks("deflate", &[&zlib_body[..zlib_body.len() - 3]]),
            Err(DecodeError::Truncated("deflate"))
        ));
        assert!(matches!(
            decode_chunks("deflate", &[&zlib_body[..1]]),
            Err(DecodeError::Truncated("deflate"))
        ));
        for (coding, body) in [("br", BROTLI_FLUSHED.concat()), ("zstd", zstd(EVENTS))] {
            for cut in [1, 3, body.len() / 2, body.len() - 1] {
                assert!(
                    matches!(
                        decode_chunks(coding, &[&body[..cut]]),
                        Err(DecodeError::Truncated(_))
                    ),
                    "{coding} cut at {cut}"
                );
            }
        }
        assert!(matches!(
            decode_chunks("br", &[b"\xff\xff\xff\xffnot br at all"]),
            Err(DecodeError::Corrupt { coding: "br", .. })
        ));
        assert!(matches!(
            decode_chunks("zstd", &[b"not zstd at all"]),
            Err(DecodeError::Corrupt { coding: "zstd", .. })
        ));
        // No body at all is an empty body, not a cut one.
        assert_eq!(decode_chunks("gzip", &[]).expect("empty"), b"");
    }

    #[test]
    fn what_follows_the_end_of_deflate_or_br_data_or_a_zstd_frame_is_ignored() {
        for (coding, body) in [
            ("deflate", zlib(EVENTS)),
            ("br", brotli(EVENTS)),
            ("br", BROTLI_FLUSHED.concat()),
            ("zstd", zstd(EVENTS)),
        ] {
            let text = decode(coding, &body, 1 << 20).expect(coding);
            for junk in [&b"trailing junk"[..], b"\r\n", b"\x28"] {
                let body = [&body[..], junk].concat();
                assert_eq!(decode(coding, &body, 1 << 20).expect(coding), text);
                let bytes: Vec<&[u8]> = body.chunks(1).collect();
                assert_eq!(decode_chunks(coding, &bytes).expect(coding), text);
            }
        }
    }

    /// Bytes after a whole gzip member that do not open another member are not part of the
    /// body: the members before them are its text, as curl and zlib-based clients read it.
    /// Bytes that do open one must be a whole member.
    #[test]
    fn what_follows_the_last_gzip_member_is_ignored() {
        let two = [gzip(b"data: 1\n\n"), gzip(b"data: 2\n\n")].concat();
        for (body, text) in [
            ([gzip(EVENTS), b"\r\n".to_vec()].concat(), EVENTS),
            (
                [gzip(EVENTS), b"trailing garbage".to_vec()].concat(),
                EVENTS,
            ),
            ([gzip(EVENTS), vec![0; 512]].concat(), EVENTS),
            ([gzip(EVENTS), vec![0x1F]].concat(), EVENTS),
            ([gzip(EVENTS), vec![0x1F, 0x00, 0x8B]].concat(), EVENTS),
            (
                [two.clone(), b"junk".to_vec()].concat(),
                b"data: 1\n\ndata: 2\n\n",
            ),
        ] {
            assert_eq!(decode("gzip", &body, 1 << 20).expect("decodes"), text);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(decode_chunks("gzip", &bytes).expect("by byte"), text);
            for at in 0..=body.len() {
                let (a, b) = body.split_at(at);
                assert_eq!(
                    decode_chunks("gzip", &[a, b]).expect("split"),
                    text,
                    "at {at}"
                );
            }
        }
        let member = gzip(EVENTS);
        let cut = [member.clone(), member[..member.len() / 2].to_vec()].concat();
        assert!(matches!(
            decode("gzip", &cut, 1 << 20),
            Err(DecodeError::Truncated("gzip"))
        ));
        // Not gzip from the start: nothing to keep, however short.
        for body in [&b"not gzip at all"[..], b"[\"a\"]", b"{}"] {
            assert!(matches!(
                decode("gzip", body, 1 << 20),
                Err(DecodeError::Corrupt { .. })
            ));
        }
    }

    /// A few KiB that decode to many MiB come out in bounded pieces, all of it.
    #[test]
    fn a_bomb_is_handed_out_in_bounded_pieces() {
        let size = 8 << 20;
        let bomb = gzip(&vec![b'0'; size]);
        assert!(bomb.len() < 64 * 1024);
        let mut decoder = StreamDecoder::new("gzip").expect("gzip");
        decoder.push(Bytes::from(bomb));
        let mut total = 0;
        let mut pieces = 0;
        while let Some(piece) = decoder.next_piece().expect("valid") {
            assert!(piece.len() <= STREAM_PIECE + 64 * 1024, "{}", piece.len());
            total += piece.len();
            pieces += 1;
        }
        total += decoder.finish().expect("complete").map_or(0, |t| t.len());
        assert_eq!(total, size);
        assert!(pieces >= size / (2 * STREAM_PIECE), "{pieces}");
        for (coding, bomb) in [
            ("br", BROTLI_BOMB.to_vec()),
            ("zstd", zstd(&vec![b'0'; size])),
        ] {
            assert!(bomb.len() < 64 * 1024);
            let mut decoder = StreamDecoder::new(coding).expect(coding);
            decoder.push(Bytes::from(bomb));
            let mut total = 0;
            while let Some(piece) = decoder.next_piece().expect("valid") {
                assert!(piece.len() <= STREAM_PIECE + STEP_OUT, "{}", piece.len());
                total += piece.len();
            }
            total += decoder.finish().expect("complete").map_or(0, |t| t.len());
            assert_eq!(total, size, "{coding}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_any_stream_decodes_to_the_text(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            cuts in proptest::collection::vec(0usize..4096, 0..8),
            which in 0..4u8,
        ) {
            let (coding, body) = match which {
                0 => ("deflate", raw_deflate(&text)),
                1 => ("zstd", zstd(&text)),
                2 => ("br", brotli(&text)),
                _ => ("gzip", gzip(&text)),
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&body[from..cut]);
                from = cut;
            }
            chunks.push(&body[from..]);
            proptest::prop_assert_eq!(decode_chunks(coding, &chunks).expect("decodes"), text);
        }
    }
}
