//! A string that must never be printed: provider api keys, user keys; and what the router
//! takes for one where nothing says so (a value under a name that reads as a credential's,
//! the forms an upstream may echo a credential in). Pure: no I/O, nothing here logs a value.
//!
//! `Debug` and `Display` print `[redacted]`, so a secret inside any struct that derives
//! `Debug` cannot leak through a log line, an error or a panic message.

use std::fmt;

use base64::Engine as _;

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

/// The forms in which an upstream may echo a credential sent as the header value `value`:
/// the value itself; with a scheme (`Bearer <token>`, `Basic <base64>`, `Token <t>`), the
/// credentials after it; for `Basic`, also what [`basic_decoded`] gives.
pub fn credential_forms(value: &str) -> Vec<String> {
    let value = value.trim();
    let mut out = vec![value.to_owned()];
    if let Some((scheme, credentials)) = value.split_once([' ', '\t']) {
        let credentials = credentials.trim();
        let is_scheme = scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if is_scheme && !credentials.is_empty() && !credentials.contains([' ', '\t']) {
            out.push(credentials.to_owned());
            if scheme.eq_ignore_ascii_case("basic") {
                out.extend(basic_decoded(credentials));
            }
        }
    }
    out
}

/// What an upstream may echo of `Basic` credentials (`base64(user:password)`) besides the
/// base64 text: the decoded `user:password`, and the password alone. Nothing when the text
/// is not base64 (padded or not) of UTF-8 text with a `:`.
pub fn basic_decoded(credentials: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let credentials = credentials.trim();
    let Some(decoded) = STANDARD
        .decode(credentials)
        .or_else(|_| STANDARD_NO_PAD.decode(credentials))
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
    else {
        return Vec::new();
    };
    let Some((_, password)) = decoded.split_once(':') else {
        return Vec::new();
    };
    let password = password.to_owned();
    if password.is_empty() {
        return vec![decoded];
    }
    vec![decoded, password]
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
    fn a_credentials_echoable_forms() {
        // base64("alice:BASICPASSWORD123")
        let basic = "YWxpY2U6QkFTSUNQQVNTV09SRDEyMw==";
        assert_eq!(
            credential_forms(&format!(" Basic {basic} ")),
            [
                format!("Basic {basic}"),
                basic.to_owned(),
                "alice:BASICPASSWORD123".to_owned(),
                "BASICPASSWORD123".to_owned()
            ]
        );
        assert_eq!(basic_decoded(basic.trim_end_matches('=')).len(), 2);
        assert_eq!(
            credential_forms("Bearer tok-123456789"),
            ["Bearer tok-123456789", "tok-123456789"]
        );
        assert_eq!(credential_forms("plain-value-1234"), ["plain-value-1234"]);
        // Words, not a scheme and its credentials.
        assert_eq!(credential_forms("my app v2"), ["my app v2"]);
        assert!(basic_decoded("not base64!").is_empty());
        // base64("no-colon-here")
        assert!(basic_decoded("bm8tY29sb24taGVyZQ==").is_empty());
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
