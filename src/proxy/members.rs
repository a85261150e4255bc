//! The members of a top-level JSON object found in one pass over the bytes, with the whole
//! document checked against JSON's grammar on the way: the request path's fast way to what
//! [`super::body`] otherwise asks serde_json for (about 4 K of a proxied request's 29 K
//! instructions, for a typical chat body).
//!
//! It is a fast path only: whatever it is not sure of (a key with an escape, nesting deeper
//! than serde_json's limit, anything malformed), it leaves to serde_json by answering `None`,
//! so errors and their messages stay serde_json's. It must never accept a document
//! serde_json refuses, and must find exactly the members serde_json finds: a property test
//! holds it to that.

use std::ops::Range;

/// One member: the key's text (inside its quotes) and the raw value, as byte ranges.
pub type Member = (Range<usize>, Range<usize>);

/// Deeper than this is left to serde_json (its own limit is 128).
const MAX_DEPTH: u32 = 100;

/// More top-level members than this are left to serde_json, whose reader refuses them (see
/// `super::body::MAX_MEMBERS`): no member list is built past it.
pub const MAX_MEMBERS: usize = 4096;

/// The members of `text`, a JSON object, in order; `None` to ask serde_json.
pub fn scan(text: &str) -> Option<Vec<Member>> {
    let bytes = text.as_bytes();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    let mut members = Vec::with_capacity(16);
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            let key_start = at + 1;
            let key_end = plain_string_end(bytes, key_start)?;
            at = skip_ws(bytes, key_end + 1);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            let value_start = skip_ws(bytes, at + 1);
            let value_end = value(bytes, value_start, 1)?;
            if members.len() == MAX_MEMBERS {
                return None;
            }
            members.push((key_start..key_end, value_start..value_end));
            at = skip_ws(bytes, value_end);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(bytes, at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(bytes, at) == bytes.len()).then_some(members)
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the value starting at `at`.
fn value(bytes: &[u8], at: usize, depth: u32) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' => string_end(bytes, at + 1).map(|end| end + 1),
        b'{' => object_end(bytes, at + 1, depth + 1),
        b'[' => array_end(bytes, at + 1, depth + 1),
        b't' => literal(bytes, at, b"true"),
        b'f' => literal(bytes, at, b"false"),
        b'n' => literal(bytes, at, b"null"),
        b'-' | b'0'..=b'9' => number_end(bytes, at),
        _ => None,
    }
}

fn literal(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    bytes[at..].starts_with(word).then_some(at + word.len())
}

fn object_end(bytes: &[u8], at: usize, depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut at = skip_ws(bytes, at);
    if bytes.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        at = skip_ws(bytes, string_end(bytes, at + 1)? + 1);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(bytes, value(bytes, skip_ws(bytes, at + 1), depth)?);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => return Some(at + 1),
            _ => return None,
        }
    }
}

fn array_end(bytes: &[u8], at: usize, depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut at = skip_ws(bytes, at);
    if bytes.get(at) == Some(&b']') {
        return Some(at + 1);
    }
    loop {
        at = skip_ws(bytes, value(bytes, at, depth)?);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b']') => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The index of the closing quote of a string whose text starts at `at`: escapes checked as
/// JSON defines them (`\uXXXX` needs four hex digits; which code point they name is not
/// checked, as serde_json does not check it in a value it skips), control characters refused.
fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = next_special(bytes, at)?;
        match bytes[at] {
            b'"' => return Some(at),
            b'\\' => {}
            _ => return None, // a control character
        }
        at += 1;
        match *bytes.get(at)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 1,
            b'u' => {
                let hex = bytes.get(at + 1..at + 5)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                at += 5;
            }
            _ => return None,
        }
    }
}

/// [`string_end`] for a key: one with any escape is left to serde_json, which decodes it.
fn plain_string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let end = next_special(bytes, at)?;
    (bytes[end] == b'"').then_some(end)
}

/// The first `"`, `\\` or control character at or after `at`, eight bytes at a time while
/// there are eight (the usual string is plain text, often long: a prompt).
fn next_special(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    while let Some(word) = bytes.get(at..at + 8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let w = u64::from_le_bytes(eight);
        let special = has_zero_byte(w ^ (ONES * u64::from(b'"')))
            | has_zero_byte(w ^ (ONES * u64::from(b'\\')))
            // A byte below 0x20 (bytes of 0x80 and up are UTF-8 text, never special).
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if special != 0 {
            // The lowest marked byte is the first special one (a borrow can only mark bytes
            // above a true match, never below it).
            return Some(at + special.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    let found = rest
        .iter()
        .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)?;
    Some(at + found)
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let digits = |bytes: &[u8], from: usize| {
        let mut end = from;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        (end > from).then_some(end)
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match bytes.get(at)? {
        b'0' => at + 1,
        b'1'..=b'9' => digits(bytes, at)?,
        _ => return None,
    };
    if bytes.get(at) == Some(&b'.') {
        at = digits(bytes, at + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        at = digits(bytes, at)?;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    /// What serde_json finds: members as byte ranges, or `None` when it refuses the text
    /// (or a key needed decoding, which the scan leaves to it).
    fn serde_members(text: &str) -> Option<Vec<Member>> {
        let map: Vec<(String, &RawValue)> = {
            let members: indexmap::IndexMap<&str, &RawValue> = match serde_json::from_str(text) {
                Ok(m) => m,
                Err(_) => return None,
            };
            // IndexMap drops duplicate keys; a plain visit keeps them. Compare with both
            // only when there are none.
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        let base = text.as_ptr() as usize;
        map.iter()
            .map(|(key, value)| {
                let v = value.get().as_ptr() as usize - base;
                let k_end = text[..v].rfind(':').and_then(|c| text[..c].rfind('"'))?;
                let k_start = k_end - key.len();
                Some((k_start..k_end, v..v + value.get().len()))
            })
            .collect()
    }

    fn accepts(text: &str) -> bool {
        scan(text).is_some()
    }

    #[test]
    fn finds_members_and_their_raw_values() {
        let text = r#" { "model" : "a\"b", "n":-1.5e+3,"xs":[1,{"y":null}],"t":true } "#;
        let members = scan(text).expect("valid");
        let pairs: Vec<(&str, &str)> = members
            .iter()
            .map(|(k, v)| (&text[k.clone()], &text[v.clone()]))
            .collect();
        assert_eq!(
            pairs,
            [
                ("model", r#""a\"b""#),
                ("n", "-1.5e+3"),
                ("xs", r#"[1,{"y":null}]"#),
                ("t", "true")
            ]
        );
        assert_eq!(scan("{}"), Some(vec![]));
    }

    #[test]
    fn refuses_what_json_refuses() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":1} x",
            "{\"a\":[1,]}",
            "{\"a\":+1}",
            "{'a':1}",
            "{\"a\":NaN}",
        ] {
            assert!(!accepts(bad), "{bad:?}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err() || bad == "[]");
        }
    }

    #[test]
    fn specials_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x01, 0x1f] {
                    let mut text = vec![b'a'; len];
                    text[at] = special;
                    // Bytes of 0x80 and above (UTF-8 text) are never special.
                    if at > 0 {
                        text[at - 1] = 0xc3;
                    }
                    assert_eq!(next_special(&text, 0), Some(at), "{len} {at} {special}");
                }
            }
            assert_eq!(next_special(&vec![b'a'; len], 0), None);
        }
    }

    #[test]
    fn leaves_escaped_keys_and_deep_nesting_to_serde() {
        assert!(scan(r#"{"mo\u0064el":"x"}"#).is_none());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(150), "]".repeat(150));
        assert!(scan(&deep).is_none());
        let fine = format!("{{\"a\":{}1{}}}", "[".repeat(50), "]".repeat(50));
        assert!(scan(&fine).is_some());
    }

    /// JSON text built from pieces that are often right and sometimes wrong.
    fn jsonish() -> impl Strategy<Value = String> {
        let valid = prop_oneof![
            Just("1".to_owned()),
            Just("-0.5e-3".to_owned()),
            Just("0".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("\"s\\u00e9\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            "\"[a-z \\\\\"]{0,6}\"",
            // Long enough for the eight-bytes-at-a-time path, specials anywhere in it.
            "\"[a-zé ]{0,20}(\\\\[nt\"]|\\\\u00[0-9a-f]{2})?[a-zé ]{0,20}\"",
            "-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
        ];
        let invalid = prop_oneof![
            Just("01".to_owned()),
            Just("1.".to_owned()),
            Just("nul".to_owned()),
            Just("\"bad\\q\"".to_owned()),
            Just("\"ctl\u{1}\"".to_owned()),
            "\"[a-z]{0,20}[\u{0}-\u{1f}][a-z]{0,20}\"",
            "[0-9eE.+-]{1,5}",
        ];
        let leaf = prop_oneof![30 => valid, 1 => invalid];
        let value = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|v| {
                    let body: Vec<String> =
                        v.into_iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        });
        let spaced = prop::sample::select(vec!["", "", "", " ", "\n\t", ","]);
        (
            prop::collection::vec(("[a-z_]{1,4}", value, spaced.clone()), 0..5),
            spaced,
        )
            .prop_map(|(members, tail)| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                    .collect();
                format!("{{{}}}{tail}", body.join(","))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the scan accepts, serde_json accepts with the same members; whatever
        /// serde_json refuses, the scan refuses.
        #[test]
        fn agrees_with_serde_json(text in jsonish()) {
            let ours = scan(&text);
            let keys_unique = ours.as_ref().is_none_or(|m| {
                let mut keys: Vec<&str> = m.iter().map(|(k, _)| &text[k.clone()]).collect();
                keys.sort_unstable();
                keys.windows(2).all(|w| w[0] != w[1])
            });
            let theirs = serde_members(&text);
            // The router's own serde path reads values raw (a lone surrogate in a value is
            // accepted, as here); keys without escapes borrow, so it refuses nothing the
            // scan accepts unless the text is not JSON.
            if ours.is_some() {
                prop_assert!(theirs.is_some(), "accepted what serde_json refuses: {:?}", text);
            }
            if keys_unique && ours.is_some() {
                prop_assert_eq!(ours, theirs, "{:?}", text);
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = scan(text);
            }
        }
    }
}
