//! Header fields as they arrived: names and values are slices of the message head's own
//! buffer, so reading a request's headers neither copies nor hashes them. Must never print a
//! value (`Authorization` is one): `Debug` shows names only.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

/// The header fields of one message, in the order they came. Names keep the case they were
/// sent in; lookups ignore case.
#[derive(Clone, Default)]
pub struct Fields {
    head: Bytes,
    spans: Vec<(Range<u32>, Range<u32>)>,
}

impl Fields {
    /// Fields over `head`, at `spans` (name, value) inside it.
    pub(crate) fn from_spans(head: Bytes, spans: Vec<(Range<u32>, Range<u32>)>) -> Self {
        debug_assert!(
            spans
                .iter()
                .all(|(n, v)| n.end as usize <= head.len() && v.end as usize <= head.len())
        );
        Self { head, spans }
    }

    /// The fields of a `HeaderMap` (hyper's side: HTTP/2 clients, TLS upstreams), copied into
    /// one buffer.
    pub fn from_header_map(map: &HeaderMap) -> Self {
        let mut builder = FieldsBuilder::with_capacity(map.len(), 32 * map.len());
        for (name, value) in map {
            builder.push(name.as_str().as_bytes(), value.as_bytes());
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The buffer the fields lie in (every name and value, maybe more of the message head):
    /// to search all of them at once.
    pub fn buffer(&self) -> &[u8] {
        &self.head
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|(n, v)| (self.slice(n.clone()), self.slice(v.clone())))
    }

    /// The first value of `name` (ASCII, any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|(n, _)| self.slice(n.clone()).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| self.slice(v.clone()))
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether `name`'s comma-separated values hold `token` (any case): `Connection: close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .flat_map(|v| v.split(|b| *b == b','))
            .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
    }

    /// `get` as text, when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The fields as a `HeaderMap`, leaving out any name or value it cannot hold (none that
    /// came off the wire through `httparse`).
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        for (name, value) in self.iter() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// Fields from `(name, value)` pairs (for tests).
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let mut builder = FieldsBuilder::with_capacity(pairs.len(), 64);
        for (name, value) in pairs {
            builder.push(name.as_bytes(), value.as_bytes());
        }
        builder.finish()
    }

    fn slice(&self, range: Range<u32>) -> &[u8] {
        &self.head[range.start as usize..range.end as usize]
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.iter().map(|(n, _)| String::from_utf8_lossy(n));
        f.debug_struct("Fields")
            .field("names", &names.collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Something that yields header fields, given to the code that writes them (upstream
/// requests are written as bytes, or built as a `HeaderMap` for hyper and reqwest).
pub trait FieldSource {
    fn for_each(&self, emit: &mut dyn FnMut(&[u8], &[u8]));
}

impl FieldSource for Fields {
    fn for_each(&self, emit: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in self.iter() {
            emit(name, value);
        }
    }
}

/// The fields of `source` as a `HeaderMap` (see [`Fields::to_header_map`]).
pub fn header_map_of(source: &dyn FieldSource) -> HeaderMap {
    let mut map = HeaderMap::new();
    source.for_each(&mut |name, value| {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    });
    map
}

/// Builds [`Fields`] one field at a time into one buffer.
pub struct FieldsBuilder {
    buf: BytesMut,
    spans: Vec<(Range<u32>, Range<u32>)>,
}

impl FieldsBuilder {
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let name = self.append(name);
        let value = self.append(value);
        self.spans.push((name, value));
    }

    fn append(&mut self, bytes: &[u8]) -> Range<u32> {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        // Heads are bounded far below 4 GiB; a field past it is not kept.
        let end = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        u32::try_from(start).unwrap_or(u32::MAX)..end
    }

    pub fn finish(self) -> Fields {
        Fields::from_spans(self.buf.freeze(), self.spans)
    }
}

/// `bytes` without leading and trailing spaces and tabs (optional white space, RFC 9110 §5.6.3).
pub fn trim(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fields {
        let mut b = FieldsBuilder::with_capacity(4, 64);
        b.push(b"Content-Type", b"application/json");
        b.push(b"Authorization", b"Bearer sk-secret-value");
        b.push(b"Connection", b"keep-alive, X-Drop");
        b.push(b"x-multi", b"a");
        b.push(b"X-Multi", b"b");
        b.finish()
    }

    #[test]
    fn lookups_ignore_case_and_keep_order() {
        let f = sample();
        assert_eq!(f.get("content-type"), Some(&b"application/json"[..]));
        assert_eq!(f.get_all("x-multi").collect::<Vec<_>>(), [b"a", b"b"]);
        assert!(f.has_token("connection", "x-drop"));
        assert!(!f.has_token("connection", "close"));
        assert!(f.get("host").is_none());
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn debug_shows_names_not_values() {
        let text = format!("{:?}", sample());
        assert!(text.contains("Authorization"));
        assert!(!text.contains("sk-secret-value"), "{text}");
    }

    #[test]
    fn header_maps_round_trip() {
        let map = sample().to_header_map();
        assert_eq!(map.get_all("x-multi").iter().count(), 2);
        let back = Fields::from_header_map(&map);
        assert_eq!(
            back.get("authorization"),
            Some(&b"Bearer sk-secret-value"[..])
        );
        assert_eq!(back.len(), 5);
    }

    #[test]
    fn trim_strips_optional_white_space_only() {
        assert_eq!(trim(b" \tclose \t"), b"close");
        assert_eq!(trim(b""), b"");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b"a b"), b"a b");
    }
}
