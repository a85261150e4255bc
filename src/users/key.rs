//! User keys: making new ones from the OS's CSPRNG, hashing presented ones, and the masked
//! form people may see.
//!
//! A key's value leaves this module only as a [`Secret`]; nothing here logs or formats one.

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Every key this router makes starts with this, so a leaked key is recognisable (and
/// secret scanners can be taught the pattern).
pub const KEY_PREFIX: &str = "sk-lr-";
/// Random characters after the prefix: 32 base62 characters are about 190 bits.
pub const KEY_RANDOM_CHARS: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Bytes at or above this are thrown away: 248 = 4 × 62, so `byte % 62` is uniform below it
/// (rejection sampling, no modulo bias).
const ACCEPT_BELOW: u8 = 248;

/// The OS's random source failed; no key was made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// The SHA-256 of a key: what the in-memory index is keyed by, so a lookup compares hashes,
/// never key bytes, and its timing says nothing about any stored key.
pub type KeyHash = [u8; 32];

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A new key: `sk-lr-` and 32 base62 characters from the OS's CSPRNG.
pub fn generate_key() -> Result<Secret, RandomError> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    key.push_str(KEY_PREFIX);
    fill_base62(&mut key, KEY_RANDOM_CHARS, &mut |buf| {
        getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
    })?;
    Ok(Secret::new(key))
}

/// Appends `count` base62 characters drawn from `random`, rejecting biased bytes.
fn fill_base62(
    out: &mut String,
    count: usize,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), RandomError>,
) -> Result<(), RandomError> {
    let mut buf = [0u8; 64];
    let mut added = 0;
    while added < count {
        random(&mut buf)?;
        for &byte in buf.iter().filter(|&&b| b < ACCEPT_BELOW) {
            if added == count {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
            added += 1;
        }
    }
    Ok(())
}

/// Whether `text` (a name given on the command line, say) may be a key pasted where a name
/// goes: such text is masked in messages, never echoed. What a copy and paste brings around
/// a key is not part of it ([`pasted_key`]), so it is looked past: text that starts with
/// this router's prefix once trimmed; or, with something trimmed, what is left having a
/// Python-era key's form (32 letters and digits). Without anything around it that form is
/// also a good username, which messages echo as such.
pub fn looks_like_key(text: &str) -> bool {
    let trimmed = pasted_key(text);
    trimmed.starts_with(KEY_PREFIX) || (trimmed.len() != text.len() && has_python_key_form(trimmed))
}

/// `text` without what a copy and paste of a key often brings along: white space and quote
/// characters (`"`, `'`, `` ` ``, typographic quotes) at both ends, and the `,` or `;` that
/// ends a key copied out of a list or a line of code. No key has any of these characters.
pub fn pasted_key(text: &str) -> &str {
    const QUOTES: [char; 7] = [
        '"', '\'', '`', '\u{201c}', '\u{201d}', '\u{2018}', '\u{2019}',
    ];
    let around = |c: char| c.is_whitespace() || QUOTES.contains(&c);
    text.trim_start_matches(around)
        .trim_end_matches(|c: char| around(c) || matches!(c, ',' | ';'))
}

/// The Python version's keys: 32 letters and digits (`-` and `_` let in too, as URL-safe
/// random tokens have them: for masking, a wider net is the safe side).
fn has_python_key_form(text: &str) -> bool {
    const PYTHON_KEY_CHARS: usize = 32;
    text.len() == PYTHON_KEY_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// What `list` and `show` print instead of a key: enough to tell two keys apart, far too
/// little to use. A third of the key at most (10 characters), so a short legacy key is not
/// shown whole: `sk-lr-AbCd…`.
pub fn masked(key: &Secret) -> String {
    let value = key.expose();
    let shown = (value.chars().count() / 3).min(KEY_PREFIX.len() + 4);
    let prefix: String = value.chars().take(shown).collect();
    format!("{prefix}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = generate_key().expect("key");
        let b = generate_key().expect("key");
        for key in [&a, &b] {
            let value = key.expose();
            assert_eq!(value.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
            let random = value.strip_prefix(KEY_PREFIX).expect("prefix");
            assert!(random.bytes().all(|c| c.is_ascii_alphanumeric()), "{value}");
        }
        assert_ne!(a, b);
    }

    #[test]
    fn biased_bytes_are_rejected_not_folded() {
        // A source that gives only bytes >= 248 first, then 61 and 247: the high bytes must be
        // skipped, never mapped through `% 62`.
        let mut calls = 0;
        let mut source = |buf: &mut [u8]| {
            calls += 1;
            let fill = if calls == 1 { 250 } else { 61 };
            buf.fill(fill);
            if calls > 1 {
                buf[0] = 247;
            }
            Ok(())
        };
        let mut out = String::new();
        fill_base62(&mut out, 3, &mut source).expect("fill");
        // 247 % 62 = 61 -> 'z'; 61 -> 'z'.
        assert_eq!(out, "zzz");
        assert_eq!(calls, 2);
    }

    #[test]
    fn every_base62_character_is_reachable_and_none_else() {
        let mut next = 0u8;
        let mut source = |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                *b = next;
                next = next.wrapping_add(1);
            }
            Ok(())
        };
        let mut out = String::new();
        fill_base62(&mut out, 62 * 4, &mut source).expect("fill");
        let distinct: std::collections::BTreeSet<char> = out.chars().collect();
        assert_eq!(distinct.len(), 62);
    }

    #[test]
    fn hashing_is_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        let hash = hash_key("abc");
        assert_eq!(hash[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(hash[28..], [0xf2, 0x00, 0x15, 0xad]);
    }

    #[test]
    fn masking_shows_a_short_prefix_only() {
        let key = Secret::new("sk-lr-AbCdEfGhIjKlMnOpQrStUvWxYz012345");
        assert_eq!(masked(&key), "sk-lr-AbCd…");
        assert_eq!(masked(&Secret::new("sk-old")), "sk…");
        assert_eq!(masked(&Secret::new("")), "…");
    }

    #[test]
    fn white_space_around_a_key_does_not_hide_it() {
        let key = "sk-lr-AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        let python = "Xq3vB9kLm2Np7Rt5Wz8Yc1Df4Gh6Jk0A";
        for text in [
            key.to_owned(),
            format!(" {key}"),
            format!("{key}\t"),
            format!("\u{3000}{key}\u{a0}"),
            format!(" {python}"),
            format!("{python}\n"),
        ] {
            assert!(looks_like_key(&text), "{text:?}");
        }
        // Quotes and a trailing `,` or `;` as a copy and paste brings them are looked past too.
        for text in [
            format!("\"{key}\""),
            format!("'{key}'"),
            format!("`{key}`"),
            format!("\u{201c}{key}\u{201d}"),
            format!("\u{2018}{python}\u{2019}"),
            format!("{key},"),
            format!("\"{key}\";"),
            format!("'{python}',"),
            format!("{python};"),
        ] {
            assert!(looks_like_key(&text), "{text:?}");
        }
        assert_eq!(pasted_key(&format!(" \"{key}\", ")), key);
        // Alone, a Python-era key's form is a good username.
        for text in [python, "bob", " bob", "sk-l", " x-sk-lr-"] {
            assert!(!looks_like_key(text), "{text:?}");
        }
    }
}
