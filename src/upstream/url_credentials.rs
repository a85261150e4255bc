//! A server `url` with user info (`http://user:password@host/v1`): sent by the router's own
//! clients (the lane's connections for `http://`, hyper's pool for `https://`), so that its
//! answers meet the same limits and are said in the same words as any other upstream's, with
//! the Basic credentials reqwest 0.12 made of the user info when it sent these requests; and
//! by reqwest for the model-list fetch, with the user info taken out here too.

use base64::Engine as _;
use http::HeaderValue;

use crate::http1::fields::FieldSource;

/// Whether `url`'s authority (between `://` and the next `/`, `?` or `#`) holds user info.
pub(super) fn has_user_info(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let end = memchr::memchr3(b'/', b'?', b'#', rest.as_bytes()).unwrap_or(rest.len());
    memchr::memchr(b'@', &rest.as_bytes()[..end]).is_some()
}

/// `url` without its user info, and the `Authorization` value made of it ([`take_out`]).
/// `None` when `url` cannot be parsed (it then goes to reqwest as before, which refuses it).
pub(crate) fn split(url: &str) -> Option<(String, Option<HeaderValue>)> {
    let mut parsed = url::Url::parse(url).ok()?;
    let basic = take_out(&mut parsed);
    Some((parsed.into(), basic))
}

/// Takes the user info out of `url` and returns the `Authorization` value reqwest 0.12 made
/// of it (`RequestBuilder::new`, `extract_authority`), marked sensitive: `Basic
/// base64(user:password)`, both percent-decoded, `user:` without a password (or with one that
/// is not UTF-8 once decoded); none when the user name is not UTF-8 once decoded (reqwest
/// then sent none, and hyper's client wrote neither the user info nor the credentials).
pub(crate) fn take_out(url: &mut url::Url) -> Option<HeaderValue> {
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .ok()
            .map(std::borrow::Cow::into_owned)
    };
    let basic = decoded(url.username()).and_then(|user| {
        let password = url.password().and_then(decoded);
        if user.is_empty() && password.is_none() {
            return None;
        }
        let credentials = format!("{user}:{}", password.unwrap_or_default());
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    });
    // An `http(s)` URL has a host: both succeed, and on a URL without one there is no user
    // info to take out.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    basic
}

/// A request's fields, with the URL's Basic credentials in an `Authorization` ahead of them
/// when they have none: reqwest set the URL's credentials first, and a field of the same name
/// (the server's `api_key`, a configured `Authorization`) replaced them.
pub(super) struct WithBasic<'a> {
    pub fields: &'a (dyn FieldSource + Sync),
    pub basic: Option<&'a HeaderValue>,
}

impl FieldSource for WithBasic<'_> {
    fn for_each(&self, emit: &mut dyn FnMut(&[u8], &[u8])) {
        if let Some(basic) = self.basic {
            let mut named = false;
            self.fields.for_each(&mut |name, _| {
                named |= name.eq_ignore_ascii_case(b"authorization");
            });
            if !named {
                emit(b"authorization", basic.as_bytes());
            }
        }
        self.fields.for_each(emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic_of(url: &str) -> Option<String> {
        let (_, basic) = split(url).expect("parsed");
        basic.map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn user_info_is_taken_out_and_sent_as_reqwest_sent_it() {
        let (bare, basic) = split("http://user:p%40ss@127.0.0.1:9/v1/chat?x=1").expect("parsed");
        assert_eq!(bare, "http://127.0.0.1:9/v1/chat?x=1");
        let basic = basic.expect("credentials");
        assert!(basic.is_sensitive());
        // base64("user:p@ss")
        assert_eq!(basic, "Basic dXNlcjpwQHNz");
        // A lone user name (a token): `token:`.
        assert_eq!(
            basic_of("https://tok@h/v1").as_deref(),
            Some("Basic dG9rOg==")
        );
        // A user name that is not UTF-8 once decoded: no credentials, and no user info sent.
        let (bare, basic) = split("http://%ff:pw@h/v1").expect("parsed");
        assert_eq!((bare.as_str(), basic), ("http://h/v1", None));
        // A password that is not UTF-8 once decoded: `user:`.
        assert_eq!(basic_of("http://u:%ff@h/").as_deref(), Some("Basic dTo="));
    }

    #[test]
    fn user_info_is_found_in_the_authority_only() {
        assert!(has_user_info("http://u:p@h/v1"));
        assert!(has_user_info("https://tok@h"));
        assert!(!has_user_info("http://h/v1/a@b"));
        assert!(!has_user_info("http://h?x=a@b"));
        assert!(!has_user_info("http://h"));
    }

    #[test]
    fn an_authorization_of_the_request_replaces_the_urls() {
        let basic = HeaderValue::from_static("Basic dTpw");
        let collect = |fields: &crate::http1::fields::Fields| {
            let with = WithBasic {
                fields,
                basic: Some(&basic),
            };
            let mut out = Vec::new();
            with.for_each(&mut |name, value| {
                out.push(format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value)
                ));
            });
            out
        };
        let mut map = http::HeaderMap::new();
        map.insert("accept", HeaderValue::from_static("*/*"));
        let without = crate::http1::fields::Fields::from_header_map(&map);
        assert_eq!(
            collect(&without),
            ["authorization: Basic dTpw", "accept: */*"]
        );
        map.insert("authorization", HeaderValue::from_static("Bearer sk-key"));
        let with = crate::http1::fields::Fields::from_header_map(&map);
        assert_eq!(
            collect(&with),
            ["accept: */*", "authorization: Bearer sk-key"]
        );
    }
}
