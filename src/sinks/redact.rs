//! Redaction of secrets from everything a sink writes: every configured `api_key` and the key
//! the client presented (`Authorization` / `x-api-key`), wherever they appear (bodies, error
//! texts echoed by an upstream, model parameters).
//!
//! Sinks must pass every piece of request-derived text through a [`Redactor`] before it leaves
//! the process; this module never logs or stores the keys it holds.

use std::borrow::Cow;
use std::sync::Arc;

use memchr::memmem::Finder;

use crate::secret::Secret;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not treated as secrets: a client sending `Bearer none` or a local
/// server's `api_key: "x"` must not mangle every "none" or "x" in a prompt.
pub const MIN_SECRET_LEN: usize = 8;

/// Finds and replaces known secrets. Cheap to clone; built once at start-up.
#[derive(Clone, Default)]
pub struct Redactor {
    finders: Arc<[Finder<'static>]>,
    /// Length of the shortest secret: a shorter text cannot hold one (most of the names and
    /// ids a sink writes), so it is not searched at all.
    shortest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.finders.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (e.g. `config.secrets()`); short or empty values are skipped.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut values: Vec<&str> = secrets
            .into_iter()
            .map(Secret::expose)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first: a key that contains another is replaced whole.
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        values.dedup();
        Self {
            shortest: values.iter().map(|v| v.len()).min().unwrap_or(usize::MAX),
            finders: values
                .into_iter()
                .map(|v| Finder::new(v.as_bytes()).into_owned())
                .collect(),
        }
    }

    /// The redaction of one request: the known secrets plus the key that request presented.
    /// Build it once per record and use it for every text of that record.
    pub fn for_request<'a>(&'a self, client_key: Option<&'a Secret>) -> RequestRedactor<'a> {
        let extra = client_key
            .map(|s| s.expose().as_bytes())
            .filter(|s| s.len() >= MIN_SECRET_LEN);
        RequestRedactor {
            base: self,
            shortest: extra.map_or(self.shortest, |e| e.len().min(self.shortest)),
            extra: extra.map(Finder::new),
        }
    }

    /// `bytes` with every known secret, and `extra` (the request's client key), replaced.
    /// Borrows when nothing was found, which is the common case.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8], extra: Option<&Secret>) -> Cow<'a, [u8]> {
        self.for_request(extra).redact_bytes(bytes)
    }

    /// [`Self::redact_bytes`] for text.
    pub fn redact<'a>(&self, text: &'a str, extra: Option<&Secret>) -> Cow<'a, str> {
        self.for_request(extra).redact(text)
    }
}

/// [`Redactor`] plus one request's client key, searched for with a prepared finder.
pub struct RequestRedactor<'a> {
    base: &'a Redactor,
    extra: Option<Finder<'a>>,
    shortest: usize,
}

impl RequestRedactor<'_> {
    /// `bytes` with every secret replaced; borrows when nothing was found.
    pub fn redact_bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        let mut out: Cow<'t, [u8]> = Cow::Borrowed(bytes);
        if bytes.len() < self.shortest {
            return out;
        }
        for finder in self.base.finders.iter().chain(self.extra.iter()) {
            if let Some(replaced) = replace_all(&out, finder) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    /// [`Self::redact_bytes`] for text.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Replacing whole UTF-8 sequences with ASCII keeps the text valid UTF-8.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// Redacts an owned string without copying it when there is nothing to replace.
    pub fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(redacted) => redacted,
        }
    }
}

/// `None` when `needle` does not occur in `haystack`.
fn replace_all(haystack: &[u8], finder: &Finder<'_>) -> Option<Vec<u8>> {
    let needle = finder.needle();
    let mut matches = finder.find_iter(haystack).peekable();
    matches.peek()?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for at in matches {
        if at < last {
            continue;
        }
        out.extend_from_slice(&haystack[last..at]);
        out.extend_from_slice(REDACTED.as_bytes());
        last = at + needle.len();
    }
    out.extend_from_slice(&haystack[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Vec<Secret> {
        vec![
            Secret::new("sk-configured-1234"),
            Secret::new("short"),
            Secret::new(""),
        ]
    }

    #[test]
    fn replaces_every_occurrence_and_the_client_key() {
        let r = Redactor::new(&keys());
        let client = Secret::new("client-key-abcdef");
        let text = r#"{"a":"sk-configured-1234 and sk-configured-1234","b":"client-key-abcdef","c":"short"}"#;
        let out = r.redact(text, Some(&client));
        assert_eq!(
            out,
            r#"{"a":"[redacted] and [redacted]","b":"[redacted]","c":"short"}"#
        );
        assert!(matches!(
            r.redact("nothing here", Some(&client)),
            Cow::Borrowed(_)
        ));
        assert!(!format!("{r:?}").contains("sk-configured"));
    }

    #[test]
    fn texts_shorter_than_any_secret_are_not_searched_but_exact_ones_are() {
        let redactor = Redactor::new(&keys());
        let client = Secret::new("sk-client-9");
        let request = redactor.for_request(Some(&client));
        assert!(matches!(request.redact("sk-clie"), Cow::Borrowed(_)));
        assert_eq!(request.redact("sk-client-9"), REDACTED);
        assert_eq!(request.redact("sk-configured-1234"), REDACTED);
        assert_eq!(redactor.redact("sk-client-9", None), "sk-client-9");
    }

    #[test]
    fn short_client_keys_are_left_alone() {
        let r = Redactor::default();
        let none = Secret::new("none");
        assert_eq!(r.redact("none of it", Some(&none)), "none of it");
    }

    proptest! {
        #[test]
        fn no_key_survives(prefix in ".{0,40}", suffix in ".{0,40}", key in "[a-zA-Z0-9_-]{8,40}") {
            // The only key the marker itself contains.
            prop_assume!(key != "redacted");
            let secret = Secret::new(key.clone());
            let r = Redactor::new([&secret]);
            let text = format!("{prefix}{key}{suffix}{key}");
            let out = r.redact(&text, None);
            prop_assert!(!out.contains(&key));
        }
    }
}
