//! The request body: read its top level once, then rewrite only what must change.
//!
//! The body goes upstream byte for byte except the `model` value (and, for streams, an added
//! `stream_options.include_usage`). Key order, spacing, unknown and vendor fields
//! (`reasoning_content`, `cache_control`, ...) are untouched because nothing is re-serialized:
//! edits are splices at the byte ranges the parser reported.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProxyError;
use crate::record::BodyLayout;
use crate::upstream::RequestBody;

/// The top-level facts of a request body the router needs.
#[derive(Debug)]
pub struct RequestView {
    pub model: String,
    pub stream: bool,
    /// Byte ranges of every top-level `model` value (duplicates included).
    model_ranges: Vec<Range<usize>>,
    /// Where each top-level member's key and value sit, when asked for (see
    /// [`Self::parse_keeping_layout`]).
    pub layout: Option<BodyLayout>,
    stream_options: StreamOptions,
    /// Offset of the closing `}` of the top-level object.
    closing_brace: usize,
    has_members: bool,
}

#[derive(Debug)]
enum StreamOptions {
    Absent,
    /// `null`: replaced by an object.
    Null(Range<usize>),
    /// An object; `include_usage` says whether the client asked for usage itself.
    Object {
        range: Range<usize>,
        include_usage: bool,
    },
    /// Something else: left alone, the upstream will say what it thinks.
    Other,
}

impl RequestView {
    /// Parses the top level of `body`. The whole document is checked for valid JSON and UTF-8.
    pub fn parse(body: &[u8]) -> Result<Self, ProxyError> {
        Self::parse_keeping_layout(body, false)
    }

    /// [`Self::parse`], keeping the body's [`BodyLayout`] when `keep_layout` (and no key has an
    /// escape, and the body is under 4 GiB).
    pub fn parse_keeping_layout(body: &[u8], keep_layout: bool) -> Result<Self, ProxyError> {
        let members = top_level_members(body)?;
        let layout = keep_layout.then(|| layout_of(body, &members)).flatten();
        let mut model: Option<String> = None;
        let mut model_ranges = Vec::new();
        let mut stream = false;
        let mut stream_options = StreamOptions::Absent;
        for (key, value) in &members {
            let range = range_of(body, value);
            match key.as_ref() {
                "model" => {
                    let name: String =
                        serde_json::from_str(value).map_err(|_| model_not_text(value))?;
                    model = Some(name);
                    model_ranges.push(range);
                }
                "stream" => stream = *value == "true",
                "stream_options" => {
                    stream_options = classify_stream_options(value, range);
                }
                _ => {}
            }
        }
        let Some(model) = model else {
            return Err(ProxyError::InvalidRequest(
                "the request body has no \"model\"".into(),
            ));
        };
        let closing_brace = body.iter().rposition(|b| *b == b'}').ok_or_else(|| {
            ProxyError::InvalidRequest("the request body is not a JSON object".into())
        })?;
        Ok(Self {
            model,
            stream,
            model_ranges,
            stream_options,
            closing_brace,
            has_members: !members.is_empty(),
            layout,
        })
    }

    /// For a body that names no model: `Some(stream)` when it is empty (a `POST` with no
    /// body, such as `/responses/{id}/cancel`) or a JSON object without a top-level `model`
    /// (`/batches`), `stream` being its `"stream": true`; `None` for anything else. Read only
    /// after [`Self::parse`] refused the body, so a request that names its model never pays.
    pub fn unnamed(body: &[u8]) -> Option<bool> {
        if body.trim_ascii().is_empty() {
            return Some(false);
        }
        let members = top_level_members(body).ok()?;
        let mut stream = false;
        for (key, value) in &members {
            match key.as_ref() {
                "model" => return None,
                "stream" => stream = *value == "true",
                _ => {}
            }
        }
        Some(stream)
    }

    /// Whether the client asked for `stream_options.include_usage` itself.
    pub fn client_asked_for_usage(&self) -> bool {
        matches!(
            self.stream_options,
            StreamOptions::Object {
                include_usage: true,
                ..
            }
        )
    }

    /// Whether the client sent no `stream_options`: one the upstream got was the router's alone.
    pub fn sends_no_stream_options(&self) -> bool {
        matches!(self.stream_options, StreamOptions::Absent)
    }

    /// Whether `include_usage` can be added without breaking a field the client set oddly.
    fn can_inject_usage(&self) -> bool {
        !matches!(self.stream_options, StreamOptions::Other) && !self.client_asked_for_usage()
    }

    /// The body to send upstream: `model` replaced by `upstream_model`, and when
    /// `inject_usage`, `stream_options.include_usage: true` set. Returns whether usage was
    /// injected (then the usage-only chunk is the router's to drop). Shares `body` when
    /// nothing changes, and a large body's unchanged bytes when something does (see
    /// [`RequestBody::spliced`]).
    pub fn rewrite(
        &self,
        body: &Bytes,
        upstream_model: &str,
        inject_usage: bool,
    ) -> (RequestBody, bool) {
        let inject = inject_usage && self.can_inject_usage();
        let model_changed = upstream_model != self.model;
        if !model_changed && !inject {
            return (body.clone().into(), false);
        }
        let quoted = if model_changed {
            json_string(upstream_model)
        } else {
            String::new()
        };
        let with_usage;
        let mut edits: Vec<(Range<usize>, &[u8])> = Vec::with_capacity(self.model_ranges.len() + 1);
        if model_changed {
            for range in &self.model_ranges {
                edits.push((range.clone(), quoted.as_bytes()));
            }
        }
        if inject {
            match &self.stream_options {
                StreamOptions::Absent => {
                    let text: &[u8] = if self.has_members {
                        br#","stream_options":{"include_usage":true}"#
                    } else {
                        br#""stream_options":{"include_usage":true}"#
                    };
                    edits.push((self.closing_brace..self.closing_brace, text));
                }
                StreamOptions::Null(range) => {
                    edits.push((range.clone(), br#"{"include_usage":true}"#));
                }
                StreamOptions::Object { range, .. } => {
                    with_usage = with_include_usage(&body[range.clone()]);
                    edits.push((range.clone(), &with_usage));
                }
                StreamOptions::Other => {}
            }
        }
        edits.sort_by_key(|(range, _)| range.start);
        (RequestBody::spliced(body, &edits), inject)
    }
}

/// The refusal of a `model` that is not a string, or one whose text cannot be read: the
/// body's syntax was checked, so a string refused here holds a `\uD800`-`\uDFFF` escape
/// without its pair, which is no character (Python's parsers take it; it was called "not a
/// string").
fn model_not_text(value: &str) -> ProxyError {
    ProxyError::InvalidRequest(if value.starts_with('"') {
        "\"model\" holds a \\u escape of half a UTF-16 surrogate pair (\\ud800 to \\udfff) \
         without its other half, which is no character"
            .into()
    } else {
        "\"model\" must be a string".into()
    })
}

fn classify_stream_options(value: &str, range: Range<usize>) -> StreamOptions {
    let text = value;
    if text == "null" {
        return StreamOptions::Null(range);
    }
    if !text.starts_with('{') {
        return StreamOptions::Other;
    }
    match top_level_members(text.as_bytes()) {
        // A member written twice is read as JSON parsers read it, the last one winning: with
        // any `true` counting, `{"include_usage":true,"include_usage":false}` was the client
        // asking, so nothing was added, and the upstream, reading `false`, sent no usage.
        Ok(members) => StreamOptions::Object {
            range,
            include_usage: members
                .iter()
                .rev()
                .find(|(k, _)| k == "include_usage")
                .is_some_and(|(_, v)| *v == "true"),
        },
        Err(_) => StreamOptions::Other,
    }
}

/// `{...}` with `include_usage` set to true: an existing member's value is replaced, or the
/// member is appended; other members keep their order and text.
fn with_include_usage(object: &[u8]) -> Vec<u8> {
    let Ok(members) = top_level_members(object) else {
        return object.to_vec();
    };
    let mut out = Vec::with_capacity(object.len() + 24);
    out.push(b'{');
    let mut first = true;
    let mut replaced = false;
    for (key, value) in &members {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(json_string(key).as_bytes());
        out.push(b':');
        if key == "include_usage" {
            out.extend_from_slice(b"true");
            replaced = true;
        } else {
            out.extend_from_slice(value.as_bytes());
        }
    }
    if !replaced {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(br#""include_usage":true"#);
    }
    out.push(b'}');
    out
}

fn json_string(text: &str) -> String {
    // The usual model name needs no escape: quoted as is, without serde's writer.
    let plain = text
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f);
    if plain {
        let mut quoted = String::with_capacity(text.len() + 2);
        quoted.push('"');
        quoted.push_str(text);
        quoted.push('"');
        return quoted;
    }
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Where a borrowed raw value sits inside `body`.
fn range_of(body: &[u8], value: &str) -> Range<usize> {
    let start = value.as_ptr() as usize - body.as_ptr() as usize;
    start..start + value.len()
}

/// The top-level members: keys (borrowed unless they had escapes) and raw value text.
type Members<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// The [`BodyLayout`] of `members`, all borrowed from `body`; `None` if a key had escapes (an
/// owned key has no place in the body) or an offset does not fit.
fn layout_of(body: &[u8], members: &Members<'_>) -> Option<BodyLayout> {
    let start = body.as_ptr() as usize;
    let span = |text: &str| -> Option<Range<u32>> {
        let from = (text.as_ptr() as usize).checked_sub(start)?;
        let to = from.checked_add(text.len())?;
        (to <= body.len()).then_some(u32::try_from(from).ok()?..u32::try_from(to).ok()?)
    };
    members
        .iter()
        .map(|(key, value)| match key {
            Cow::Borrowed(key) => Some((span(key)?, span(value)?)),
            Cow::Owned(_) => None,
        })
        .collect()
}

/// The members of a top-level JSON object, in order, values borrowed raw.
///
/// The body's UTF-8 is checked once, up front; then [`super::members::scan`] reads the
/// usual body in one pass. What it leaves (escaped keys, deep nesting, anything invalid) is
/// read by serde_json from `&str` (read from bytes, serde_json checks every key and every raw
/// value again), which also words the error. A body that is not UTF-8 is read from bytes, for
/// serde_json's error and its position.
fn top_level_members(body: &[u8]) -> Result<Members<'_>, ProxyError> {
    match std::str::from_utf8(body) {
        Ok(text) => match super::members::scan(text) {
            Some(spans) => Ok(spans
                .into_iter()
                .map(|(key, value)| (Cow::Borrowed(&text[key]), &text[value]))
                .collect()),
            None => members_of(&mut serde_json::Deserializer::from_str(text)),
        },
        Err(_) => members_of(&mut serde_json::Deserializer::from_slice(body)),
    }
}

fn members_of<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> Result<Members<'de>, ProxyError> {
    let members = de.deserialize_map(MembersVisitor).map_err(not_json)?;
    de.end().map_err(not_json)?;
    Ok(members)
}

/// A request body's top-level members, at most: an API request has a few dozen. A list of
/// every member is built to find `model` and the fields the router edits (40 bytes each, and
/// the scan's ranges), so 60 MB of `"k1":0,` (5.6 million members) took 600 MB and stalled
/// every connection on its thread; past this the body is refused, with no list past it.
pub use super::members::MAX_MEMBERS;

/// The start of the refusal of a body with more than [`MAX_MEMBERS`] members.
const TOO_MANY_MEMBERS: &str = "more than 4096 top-level members";
const _: () = assert!(MAX_MEMBERS == 4096, "TOO_MANY_MEMBERS names the limit");

fn not_json(e: serde_json::Error) -> ProxyError {
    if e.is_data() && e.to_string().starts_with(TOO_MANY_MEMBERS) {
        return ProxyError::InvalidRequest(format!(
            "the request body has {TOO_MANY_MEMBERS}: an API request has a few dozen"
        ));
    }
    if e.is_data() && e.to_string().starts_with("invalid type") {
        return ProxyError::InvalidRequest("the request body must be a JSON object".into());
    }
    ProxyError::InvalidRequest(format!("the request body is not valid JSON: {e}"))
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(JsonKey(key)) = map.next_key::<JsonKey<'de>>()? {
            if members.len() == MAX_MEMBERS {
                return Err(serde::de::Error::custom(TOO_MANY_MEMBERS));
            }
            let value: &'de RawValue = map.next_value()?;
            members.push((key, value.get()));
        }
        Ok(members)
    }
}

/// An object key, borrowed from the body unless it had escapes. (serde's own `Cow<str>`
/// always copies: a String per key of every request.)
pub(crate) struct JsonKey<'a>(pub Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = JsonKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rewrite(body: &str, model: &str, inject: bool) -> String {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let view = RequestView::parse(&bytes).expect("parses");
        let (out, _) = view.rewrite(&bytes, model, inject);
        String::from_utf8(out.to_bytes().to_vec()).expect("utf8")
    }

    #[test]
    fn only_the_model_changes() {
        let body = r#"{ "messages":[{"role":"user","content":"hi","cache_control":{"type":"ephemeral"}}], "model" : "[or]x/y",  "reasoning_content":null,"zz":1 }"#;
        assert_eq!(
            rewrite(body, "x/y", false),
            r#"{ "messages":[{"role":"user","content":"hi","cache_control":{"type":"ephemeral"}}], "model" : "x/y",  "reasoning_content":null,"zz":1 }"#
        );
    }

    #[test]
    fn unchanged_body_is_shared() {
        let bytes = Bytes::from_static(br#"{"model":"m"}"#);
        let view = RequestView::parse(&bytes).expect("parses");
        let (out, injected) = view.rewrite(&bytes, "m", false);
        assert_eq!(out.as_whole().map(|b| b.as_ptr()), Some(bytes.as_ptr()));
        assert!(!injected);
    }

    #[test]
    fn usage_is_injected_in_every_shape() {
        assert_eq!(
            rewrite(r#"{"model":"a","stream":true}"#, "b", true),
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a","stream_options":null}"#, "a", true),
            r#"{"model":"a","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(
                r#"{"model":"a","stream_options":{"x":1,"include_usage":false}}"#,
                "a",
                true
            ),
            r#"{"model":"a","stream_options":{"x":1,"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a","stream_options":{}}"#, "a", true),
            r#"{"model":"a","stream_options":{"include_usage":true}}"#
        );
        // Written twice, the last one is the client's word (bb54), and both are set.
        assert_eq!(
            rewrite(
                r#"{"model":"a","stream_options":{"include_usage":true,"include_usage":false}}"#,
                "a",
                true
            ),
            r#"{"model":"a","stream_options":{"include_usage":true,"include_usage":true}}"#
        );
        let asked =
            br#"{"model":"a","stream_options":{"include_usage":false,"include_usage":true}}"#;
        let view = RequestView::parse(asked).expect("parses");
        assert!(view.client_asked_for_usage());
    }

    #[test]
    fn client_request_for_usage_is_respected() {
        let body = Bytes::from_static(br#"{"model":"a","stream_options":{"include_usage":true}}"#);
        let view = RequestView::parse(&body).expect("parses");
        assert!(view.client_asked_for_usage());
        let (out, injected) = view.rewrite(&body, "a", true);
        assert!(!injected);
        assert_eq!(out.to_bytes(), body);
    }

    /// A model string with half a surrogate pair is said to be that, not "not a string".
    #[test]
    fn a_model_with_half_a_surrogate_pair_is_said_so() {
        let Err(ProxyError::InvalidRequest(message)) =
            RequestView::parse(br#"{"model":"[a]x\ud800"}"#)
        else {
            panic!("refused");
        };
        assert!(
            message.contains("half a UTF-16 surrogate pair"),
            "{message}"
        );
        let Err(ProxyError::InvalidRequest(message)) = RequestView::parse(br#"{"model":3}"#) else {
            panic!("refused");
        };
        assert_eq!(message, "\"model\" must be a string");
    }

    #[test]
    fn bad_bodies_are_invalid_request() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"model\": 3}",
            b"{\"messages\": []}",
            b"{\"model\":\"a\"} trailing",
            b"{\"model\":\"\xff\xfe\"}",
            // Not UTF-8 in a value the router otherwise skips.
            b"{\"model\":\"a\",\"messages\":[{\"content\":\"\xff\"}]}",
            b"",
            b"\"model\"",
        ] {
            let err = RequestView::parse(bad).expect_err("must fail");
            assert_eq!(
                err.code(),
                "invalid_request",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn duplicate_model_keys_are_all_rewritten() {
        assert_eq!(
            rewrite(r#"{"model":"[a]x","model":"[a]x"}"#, "x", false),
            r#"{"model":"x","model":"x"}"#
        );
    }

    proptest! {
        #[test]
        fn rewrite_keeps_every_other_member(
            keys in proptest::collection::vec("[a-z_]{1,8}", 0..6),
            model in "[ -~]{1,20}",
            upstream in "[ -~]{1,20}",
        ) {
            let mut map = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                if k != "model" && k != "stream_options" { map.insert(k.clone(), serde_json::json!(i)); }
            }
            map.insert("model".into(), serde_json::json!(model));
            let body = serde_json::Value::Object(map.clone()).to_string();
            let out = rewrite(&body, &upstream, true);
            let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid json out");
            prop_assert_eq!(&parsed["model"], &serde_json::json!(upstream));
            prop_assert_eq!(&parsed["stream_options"]["include_usage"], &serde_json::json!(true));
            for (k, v) in &map {
                if k != "model" { prop_assert_eq!(&parsed[k], v); }
            }
        }

        #[test]
        fn quoting_matches_serde_json(text in "\\PC*|[\u{0}-\u{7f}]{0,12}") {
            prop_assert_eq!(json_string(&text), serde_json::to_string(&text).expect("json"));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RequestView::parse(&data);
        }
    }
}
