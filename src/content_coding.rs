//! Undoing an upstream's `Content-Encoding` (gzip, deflate) where the router must read a body:
//! an error body it redacts and wraps, a whole answer the recorder reads usage from. Pure: no
//! I/O, and never on a body being relayed as it came.
//!
//! The router asks every upstream for `Accept-Encoding: identity`, so an encoded answer comes
//! only from an upstream that ignores it. Codings other than gzip and deflate (br, zstd) are
//! not decoded; [`decode`] says so and the caller decides what to do without the text.

use std::io::Read as _;

use crate::http1::fields::{Fields, trim};

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the content coding \"{0}\" is not one the router decodes (gzip, deflate)")]
    Unsupported(String),
    #[error("the {coding} body is corrupt: {error}")]
    Corrupt {
        coding: &'static str,
        error: std::io::Error,
    },
    #[error("the body decodes to more than {} MiB", .0 / (1024 * 1024))]
    TooLarge(usize),
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

/// `body` with the codings of `content_encoding` (as [`content_encoding`] gives it, in the
/// order they were applied) undone, at most `limit` bytes of it.
pub fn decode(content_encoding: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut data = body.to_vec();
    for coding in content_encoding.rsplit(',').map(str::trim) {
        data = match coding.to_ascii_lowercase().as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => {
                read_limited(flate2::read::MultiGzDecoder::new(&data[..]), limit, "gzip")?
            }
            // RFC 9110's deflate is the zlib format; some servers send raw deflate instead.
            "deflate" => {
                match read_limited(flate2::read::ZlibDecoder::new(&data[..]), limit, "deflate") {
                    Err(DecodeError::Corrupt { .. }) => read_limited(
                        flate2::read::DeflateDecoder::new(&data[..]),
                        limit,
                        "deflate",
                    )?,
                    zlib => zlib?,
                }
            }
            other => return Err(DecodeError::Unsupported(other.to_owned())),
        };
    }
    Ok(data)
}

/// Reads `decoder` to its end, failing past `limit` bytes (a small body may decode to
/// gigabytes).
fn read_limited(
    decoder: impl std::io::Read,
    limit: usize,
    coding: &'static str,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|error| DecodeError::Corrupt { coding, error })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
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
    fn gzip_and_both_kinds_of_deflate_are_decoded() {
        for (coding, body) in [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("identity", TEXT.to_vec()),
            ("deflate, gzip", gzip(&zlib(TEXT))),
        ] {
            let decoded = decode(coding, &body, 1024).expect(coding);
            assert_eq!(decoded, TEXT, "{coding}");
        }
    }

    #[test]
    fn other_codings_corrupt_bodies_and_bombs_are_refused() {
        assert!(matches!(
            decode("br", TEXT, 1024),
            Err(DecodeError::Unsupported(c)) if c == "br"
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
    }
}
