//! A server `url` with user info (`http://user:password@host/v1`): sent by the router's own
//! clients (the lane's connections for `http://`, hyper's pool for `https://`), so that its
//! answers meet the same limits and are said in the same words as any other upstream's, with
//! the Basic credentials reqwest 0.12 made of the user info when it sent these requests; and
//! by reqwest (a target the environment's proxy covers, the model-list fetch) with the user
//! info taken out here too. Never sends the user info on in a URL.

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

/// Takes the user info out of `url` and returns the `Authorization` value made of it, marked
/// sensitive: `Basic base64(user:password)` ([`basic_credentials`]), none when the URL has
/// neither a user name nor a password. The user info never stays in the URL: a URL sent on
/// is written in a proxy's request line and in hyper's and reqwest's debug logs.
pub(crate) fn take_out(url: &mut url::Url) -> Option<HeaderValue> {
    let basic = basic_credentials(url).and_then(|encoded| {
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

/// The base64 of `user:password` for `url`'s user info, both percent-decoded to bytes, as
/// reqwest 0.12 made it (`RequestBuilder::new`, `extract_authority`): `user:` without a
/// password; `None` without user info. Bytes, not text: a user name or password that is not
/// UTF-8 once decoded (`%FF`) goes as those bytes, where reqwest sent no credentials and
/// left the user info in the URL, password and all. What [`crate::config::url_secrets`]
/// redacts as the form an upstream may echo.
pub(crate) fn basic_credentials(url: &url::Url) -> Option<String> {
    let (user, password) = (url.username(), url.password());
    if user.is_empty() && password.is_none() {
        return None;
    }
    let mut credentials: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
    credentials.push(b':');
    credentials.extend(percent_encoding::percent_decode_str(
        password.unwrap_or_default(),
    ));
    Some(base64::engine::general_purpose::STANDARD.encode(credentials))
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
        // A user name or password that is not UTF-8 once decoded: its bytes, and no user
        // info left in the URL. base64(b"\xffkay:pw"), base64(b"u:\xff").
        let (bare, basic) = split("http://%FFkay:pw@h/v1").expect("parsed");
        assert_eq!(bare, "http://h/v1");
        assert_eq!(basic.expect("credentials"), "Basic /2theTpwdw==");
        assert_eq!(basic_of("http://u:%ff@h/").as_deref(), Some("Basic dTr/"));
        // A password alone: `:password`; no user info at all: no credentials.
        assert_eq!(basic_of("http://:pw@h/").as_deref(), Some("Basic OnB3"));
        assert_eq!(
            split("http://@h/v1").expect("parsed"),
            ("http://h/v1".into(), None)
        );
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
