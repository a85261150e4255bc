//! A string that must never be printed: provider api keys, user keys; and what the router
//! takes for one where nothing says so (a value under a name that reads as a credential's).
//! Pure: no I/O, nothing here logs a value.
//!
//! `Debug` and `Display` print `[redacted]`, so a secret inside any struct that derives
//! `Debug` cannot leak through a log line, an error or a panic message.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it (a header, a hash).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether a header or query parameter `name` says its value is a credential: one holding
/// auth, key, token, secret, password, passwd, pwd, cookie, credential, session or signature
/// (`api-key`, `X-Auth-Token`, `access_token`, `X-Amz-Signature`), or a word (between `-`,
/// `_`, `.`) that is `code` (OAuth's, Azure Functions' `?code=`) or ends in `sig` (`sig`,
/// `X-Org-Sig`). Any case. Generous on purpose: redacting a value that was no secret costs a
/// `[redacted]` in a record, missing one leaks a key.
pub fn names_a_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let part = [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "cookie",
        "credential",
        "session",
        "signature",
    ]
    .iter()
    .any(|part| name.contains(part));
    part || name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "code" || word.ends_with("sig"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_are_told_from_protocol_ones() {
        for name in [
            "Authorization",
            "api-key",
            "X-Auth-Token",
            "x-goog-api-key",
            "Cookie",
            "key",
            "apikey",
            "access_token",
            "client_secret",
            "X-Passwd",
            "pwd",
            "X-Signature",
            "X-Amz-Signature",
            "sig",
            "X-Org-Sig",
            "apisig",
            "code",
            "session_id",
            "X-Credential",
        ] {
            assert!(names_a_credential(name), "{name}");
        }
        for name in [
            "api-version",
            "X-Title",
            "anthropic-version",
            "OpenAI-Organization",
            "model",
            "limit",
            "after",
            "design",
            "encode",
        ] {
            assert!(!names_a_credential(name), "{name}");
        }
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
