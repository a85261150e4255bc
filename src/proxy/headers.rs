//! Which headers cross the router, in each direction.
//!
//! Upstream: the client's headers minus hop-by-hop ones, Host, Content-Length, Accept-Encoding,
//! Expect and the router's own credentials; Authorization and the other client credentials
//! ([`crate::auth::KEY_HEADERS`]) by the rules of PRODUCT.md; then
//! the server's configured `headers`, which win; then `Accept-Encoding: identity` unless they
//! named one (the router reads answers, so it asks for them uncompressed: no Accept-Encoding
//! at all would mean any coding is acceptable, RFC 9110 §12.5.3). Downstream: the upstream's
//! headers minus hop-by-hop ones and framing, then what the router sets itself (a stream's
//! headers, the request id).
//!
//! Both directions are written as a stream of `(name, value)` pairs ([`FieldSource`]), so the
//! same rules feed the router's own HTTP/1 (written as bytes) and hyper's `HeaderMap`s.

use std::borrow::Cow;

use http::header::HeaderName;

use crate::error::ProxyError;
use crate::http1::fields::{FieldSource, Fields, FieldsBuilder, trim};
use crate::routing::Target;
use crate::sinks::redact::Redactor;

/// The header names the rules below name, recognised with one look at a name's length
/// first: these checks run for every header of every request and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Describes one connection, not the message (RFC 9110 §7.6.1), or is one of the
    /// non-standard ones proxies also drop.
    HopByHop,
    Host,
    ContentLength,
    AcceptEncoding,
    Expect,
    Authorization,
    /// A header whose whole value is a client's key ([`crate::auth::KEY_HEADERS`]:
    /// `x-api-key`, `api-key`, `x-goog-api-key`).
    ClientKey,
    ContentType,
    Accept,
    ContentEncoding,
    CacheControl,
    XAccelBuffering,
    /// An answer's `Vary`: one whose coding depends on the client's `Accept-Encoding` says
    /// so in it (see [`AnswerFields`]).
    Vary,
    RequestId,
    /// [`HOPS`]: the router writes its own.
    Hops,
    Other,
}

fn known(name: &[u8]) -> Known {
    let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
    match name.len() {
        2 if is("te") => Known::HopByHop,
        4 if is("host") => Known::Host,
        4 if is("vary") => Known::Vary,
        6 if is("expect") => Known::Expect,
        6 if is("accept") => Known::Accept,
        7 if is("trailer") || is("upgrade") => Known::HopByHop,
        7 if is("api-key") => Known::ClientKey,
        9 if is("x-api-key") => Known::ClientKey,
        10 if is("connection") || is("keep-alive") => Known::HopByHop,
        12 if is("content-type") => Known::ContentType,
        13 if is("authorization") => Known::Authorization,
        13 if is("cache-control") => Known::CacheControl,
        14 if is("content-length") => Known::ContentLength,
        14 if is("x-goog-api-key") => Known::ClientKey,
        15 if is("accept-encoding") => Known::AcceptEncoding,
        16 if is("proxy-connection") => Known::HopByHop,
        16 if is("content-encoding") => Known::ContentEncoding,
        17 if is("transfer-encoding") => Known::HopByHop,
        17 if is("x-accel-buffering") => Known::XAccelBuffering,
        17 if is(HOPS) => Known::Hops,
        18 if is("proxy-authenticate") => Known::HopByHop,
        19 if is("proxy-authorization") => Known::HopByHop,
        23 if is(REQUEST_ID) => Known::RequestId,
        _ => Known::Other,
    }
}

/// A name with `_` for `-` that would be one the router reads or frames with
/// (`Transfer_Encoding`, `Content_Length`, `X_Api_Key`): an upstream behind a CGI-style
/// layer (WSGI, PHP) reads both spellings as one (`HTTP_TRANSFER_ENCODING`), so passed on it
/// could frame the body there otherwise than the router did, or stand beside the router's own
/// field. nginx drops every name with `_`; only these are dropped here (others, `X_Trace_Id`,
/// are passed on).
fn underscored_known(name: &[u8]) -> bool {
    if !name.contains(&b'_') || name.len() > 32 {
        return false;
    }
    let mut dashed = [0u8; 32];
    let dashed = &mut dashed[..name.len()];
    for (to, from) in dashed.iter_mut().zip(name) {
        *to = if *from == b'_' { b'-' } else { *from };
    }
    known(dashed) != Known::Other
}

/// Hop-by-hop for this message: always, or named in its `Connection` header.
fn is_hop_by_hop(kind: Known, name: &[u8], connection_tokens: &[&[u8]]) -> bool {
    kind == Known::HopByHop
        || connection_tokens
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
}

/// Header names listed in `Connection: a, b`: also hop-by-hop for this message.
fn connection_tokens(fields: &Fields) -> Vec<&[u8]> {
    fields
        .get_all("connection")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// A `multipart/...` type: its boundary parameter is what frames the body, so the client's
/// value must reach the upstream even where a server's configured `headers` name a
/// `Content-Type` (often `application/json`, copied from a provider's curl example).
fn is_form(content_type: &[u8]) -> bool {
    let value = content_type.trim_ascii_start();
    value
        .get(..b"multipart/".len())
        .is_some_and(|start| start.eq_ignore_ascii_case(b"multipart/"))
}

fn is(name: &[u8], wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted.as_bytes())
}

/// The header through which a router user key may arrive besides Authorization.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The header fields a request to `target` goes upstream with (all but `Host` and the
/// framing, which the sender adds).
pub struct UpstreamFields<'a> {
    pub client: &'a Fields,
    pub target: &'a Target<'a>,
    /// A `POST`: without a Content-Type of its own it goes as JSON. A `GET` or `DELETE` gets
    /// none added: it has no body to describe.
    pub post: bool,
    /// The routers the request has come through so far ([`hops_of`], read once when it was
    /// checked): it goes upstream with one more.
    pub hops: u32,
}

impl FieldSource for UpstreamFields<'_> {
    fn for_each(&self, emit: &mut dyn FnMut(&[u8], &[u8])) {
        let server = self.target.server;
        let tokens = connection_tokens(self.client);
        let configured =
            |name: &[u8]| server.is_some_and(|s| s.headers.keys().any(|k| is(name, k.as_str())));
        let mut content_type = false;
        let mut accept = false;
        let mut accept_encoding = false;
        for (name, value) in self.client.iter() {
            let kind = known(name);
            if is_hop_by_hop(kind, name, &tokens) || underscored_known(name) {
                continue;
            }
            match kind {
                // A request's `Content-Encoding` can only say `identity` (a compressed body
                // was refused: `intake::check_encoding`), and the body goes as the router
                // wrote it: passed on, a stray value would tell the upstream otherwise.
                Known::Host
                | Known::ContentLength
                | Known::ContentEncoding
                | Known::AcceptEncoding
                | Known::Expect
                | Known::Hops => continue,
                // A configured server is reached with the router's key: the client's
                // credentials (a router user key, or a key for some other provider), in any
                // header the router reads as one, are not passed on.
                Known::Authorization | Known::ClientKey if server.is_some() => continue,
                Known::ContentType => content_type = true,
                Known::Accept => accept = true,
                _ => {}
            }
            // The server's configured value replaces the client's; but not a form's type,
            // whose boundary frames the body (see `is_form`).
            if configured(name) && !(matches!(kind, Known::ContentType) && is_form(value)) {
                continue;
            }
            emit(name, value);
        }
        if let Some(server) = server {
            let own_authorization = server.headers.contains_key(http::header::AUTHORIZATION);
            if let Some(value) = server.authorization().filter(|_| !own_authorization) {
                emit(b"authorization", value.as_bytes());
            }
            for (name, value) in &server.headers {
                // (Never framing or hop-by-hop fields: the config refuses them.)
                let name = name.as_str().as_bytes();
                let names_type = is(name, "content-type");
                if names_type && self.client.get("content-type").is_some_and(is_form) {
                    continue;
                }
                content_type |= names_type;
                accept |= is(name, "accept");
                accept_encoding |= is(name, "accept-encoding");
                emit(name, value.as_bytes());
            }
        }
        if !content_type && self.post {
            emit(b"content-type", b"application/json");
        }
        // What reqwest sent when the client named no type; some upstreams expect one.
        if !accept {
            emit(b"accept", b"*/*");
        }
        if !accept_encoding {
            emit(b"accept-encoding", b"identity");
        }
        let hops = self.hops.saturating_add(1);
        emit(HOPS.as_bytes(), itoa::Buffer::new().format(hops).as_bytes());
    }
}

/// How the router answers, besides the upstream's own headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The upstream's answer, relayed as it came.
    Relayed,
    /// An upstream error body the router rewrote (wrapped into OpenAI's shape, or decoded
    /// from its Content-Encoding): JSON, uncompressed.
    WrappedError,
    /// The upstream's 2xx answer decoded from its Content-Encoding (to take an echoed key out
    /// of it): without that header, with the upstream's Content-Type.
    Decoded,
    /// A stream relayed as it arrives; `sse` when it is an event stream, which gets the
    /// headers PRODUCT.md "Streaming" names.
    Stream { sse: bool },
    /// The router's own error: JSON, and no upstream headers; `x-should-retry: false` when
    /// `is_final` ([`ProxyError::is_final`]).
    RouterError { is_final: bool },
}

/// The header fields of an answer to the client: the upstream's (filtered on the way out)
/// and the router's own.
#[derive(Debug, Clone)]
pub struct AnswerFields {
    pub upstream: Option<Fields>,
    pub shape: Shape,
    pub request_id: Option<String>,
}

/// The upstream's header fields without a configured key in any value (or name): an upstream, or a
/// gateway or firewall before it, that reflects request headers (`X-Echo-Auth: Bearer
/// sk-...`) must not hand the provider's key to the client, as its error bodies may not.
/// All fields are searched at once; they are rebuilt only when a key is among them.
pub fn fields_without_echoed_keys(redactor: &Redactor, fields: Fields) -> Fields {
    if redactor.is_empty()
        || matches!(
            redactor.redact_bytes(fields.buffer(), &[]),
            Cow::Borrowed(_)
        )
    {
        return fields;
    }
    let mut clean = FieldsBuilder::with_capacity(fields.len(), fields.buffer().len());
    for (name, value) in fields.iter() {
        // A key in a field's name (`x-<key>: 1`) cannot be replaced there (`[redacted]` is
        // no field name): the field is left out.
        if matches!(redactor.redact_bytes(name, &[]), Cow::Owned(_)) {
            continue;
        }
        clean.push(name, &redactor.redact_bytes(value, &[]));
    }
    clean.finish()
}

/// The id of this request, returned to the client so it can be found in logs and traces.
pub const REQUEST_ID: &str = "x-llmsrouter-request-id";

/// How many routers a request has come through: each one sends it on with one more, and
/// refuses it past [`MAX_HOPS`]. A target can lead back to the router (`?proxy=` or
/// `[http://...]` naming its own address, an alias whose url is the router): each hop
/// strips one prefix, so a request nested thousands deep would hold thousands of
/// connections open, and a configuration that points at itself would never end.
pub const HOPS: &str = "x-llmsrouter-hops";

/// Most routers a request may come through: a real chain (a team router in front of a
/// company one) is two or three deep.
pub const MAX_HOPS: u32 = 8;

/// The hops a request has made so far: none without the field. A value that is not a
/// whole number (`abc`, `-1`, empty) is refused as malformed rather than read as 0, so a loop
/// cannot hide by garbling it, nor as [`MAX_HOPS`], which told the client it had come through
/// eight routers. Digits too many for a `u32` are past any limit: the most.
pub fn hops_of(fields: &Fields) -> Result<u32, ProxyError> {
    let Some(value) = fields.get(HOPS) else {
        return Ok(0);
    };
    let digits = trim(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::InvalidRequest(format!(
            "the {HOPS} header is malformed: it must be a whole number (how many routers the \
             request has come through; a client need not send it)"
        )));
    }
    let count = digits.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    Ok(count.unwrap_or(u32::MAX))
}

/// An answer that came with a `Content-Encoding` goes as it came or decoded by the client's
/// `Accept-Encoding` (see `proxy::success_body`): so a cache in front does not hand one
/// client's form to another, its `Vary` names `Accept-Encoding` (added to the upstream's when
/// it lacks it). Shapes that go the same way to every client (an error body, an event
/// stream: decoded for all) are left as they came.
fn varies_by_coding(shape: Shape) -> bool {
    matches!(
        shape,
        Shape::Relayed | Shape::Decoded | Shape::Stream { sse: false }
    )
}

/// Whether a `Content-Encoding` value names a coding (not only `identity`).
fn names_a_coding(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
}

/// Whether a `Vary` value already covers `Accept-Encoding` (it names it, or `*`).
fn vary_covers_coding(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(trim)
        .any(|name| name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding"))
}

/// Emits the upstream's `Vary` fields held back by [`AnswerFields`], with `Accept-Encoding`
/// added (to the last one) when `coded` and none covers it.
fn emit_vary(held: &[&[u8]], coded: bool, emit: &mut dyn FnMut(&[u8], &[u8])) {
    let add = coded && !held.iter().any(|value| vary_covers_coding(value));
    let Some((last, before)) = held.split_last().filter(|_| add) else {
        for value in held {
            emit(b"vary", value);
        }
        if add {
            emit(b"vary", b"Accept-Encoding");
        }
        return;
    };
    for value in before {
        emit(b"vary", value);
    }
    let last = trim(last);
    if last.is_empty() {
        emit(b"vary", b"Accept-Encoding");
    } else {
        let mut joined = last.to_vec();
        joined.extend_from_slice(b", Accept-Encoding");
        emit(b"vary", &joined);
    }
}

impl FieldSource for AnswerFields {
    fn for_each(&self, emit: &mut dyn FnMut(&[u8], &[u8])) {
        if let Some(upstream) = &self.upstream {
            let tokens = connection_tokens(upstream);
            let varies = varies_by_coding(self.shape);
            // Only an answer whose shape may vary holds its `Vary` back: nothing is kept, nor
            // allocated, for one without a `Vary` (see [`emit_vary`]).
            let mut coded = false;
            let mut held_vary: Vec<&[u8]> = Vec::new();
            for (name, value) in upstream.iter() {
                let kind = known(name);
                // Framing is the router's own: it frames the body it sends.
                if is_hop_by_hop(kind, name, &tokens) || kind == Known::ContentLength {
                    continue;
                }
                if varies {
                    match kind {
                        Known::ContentEncoding => coded |= names_a_coding(value),
                        Known::Vary => {
                            held_vary.push(value);
                            continue;
                        }
                        _ => {}
                    }
                }
                let replaced = match self.shape {
                    Shape::Relayed | Shape::RouterError { .. } | Shape::Stream { sse: false } => {
                        false
                    }
                    Shape::WrappedError => {
                        matches!(kind, Known::ContentType | Known::ContentEncoding)
                    }
                    Shape::Decoded => kind == Known::ContentEncoding,
                    Shape::Stream { sse: true } => matches!(
                        kind,
                        Known::ContentType
                            | Known::ContentEncoding
                            | Known::CacheControl
                            | Known::XAccelBuffering
                    ),
                };
                if !replaced && kind != Known::RequestId {
                    emit(name, value);
                }
            }
            if coded || !held_vary.is_empty() {
                emit_vary(&held_vary, coded, emit);
            }
        }
        match self.shape {
            Shape::WrappedError | Shape::RouterError { is_final: false } => {
                emit(b"content-type", b"application/json");
            }
            Shape::RouterError { is_final: true } => {
                emit(b"content-type", b"application/json");
                let (name, value) = crate::error::NO_RETRY;
                emit(name.as_bytes(), value.as_bytes());
            }
            Shape::Stream { sse: true } => {
                emit(b"content-type", b"text/event-stream");
                emit(b"cache-control", b"no-cache");
                emit(b"x-accel-buffering", b"no");
            }
            Shape::Relayed | Shape::Decoded | Shape::Stream { sse: false } => {}
        }
        if let Some(id) = &self.request_id {
            emit(REQUEST_ID.as_bytes(), id.as_bytes());
            // The openai SDKs show `x-request-id` as an error's request id (null without
            // it): the router's own error, made with no upstream answer, has the router's.
            // An upstream's answer keeps the upstream's own, or none.
            if matches!(self.shape, Shape::RouterError { .. }) && self.upstream.is_none() {
                emit(b"x-request-id", id.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::{Lookup, resolve};

    fn config() -> Config {
        Config::parse(
            "servers:\n  a:\n    url: http://a/v1\n    api_key: sk-a\n    headers: {X-Title: me}\n  nokey:\n    url: http://b/v1\n  own:\n    url: http://c/v1\n    api_key: sk-c\n    headers: {Authorization: Basic xyz, Accept: text/plain, Accept-Encoding: gzip}\n",
            &|_| None,
        )
        .expect("config")
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields::from_pairs(pairs)
    }

    fn client_fields() -> Fields {
        fields(&[
            ("Authorization", "Bearer client"),
            ("x-api-key", "client-x"),
            ("Api-Key", "client-azure"),
            ("x-goog-api-key", "client-gemini"),
            ("Host", "router"),
            ("Content-Length", "10"),
            ("Connection", "keep-alive, x-drop"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("Accept-Encoding", "gzip"),
            ("Expect", "100-continue"),
            ("x-custom", "kept"),
            ("X-Title", "client's"),
            ("openai-organization", "org"),
        ])
    }

    /// What a source yields, names lower-cased.
    fn collect(source: &dyn FieldSource) -> Vec<(String, String)> {
        let mut out = Vec::new();
        source.for_each(&mut |n, v| {
            out.push((
                String::from_utf8_lossy(n).to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        });
        out
    }

    fn value<'a>(all: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        all.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A configured `Content-Type` replaces the client's, except a form's, whose boundary
    /// frames the body.
    #[test]
    fn a_configured_content_type_leaves_a_forms_alone() {
        let c = Config::parse(
            "servers:\n  j:\n    url: http://j/v1\n    headers: {Content-Type: application/json}\n",
            &|_| None,
        )
        .expect("config");
        let t = resolve(None, "[j]m", &c, &Lookup::none()).expect("target");
        let form = "multipart/form-data; boundary=xyz";
        for (client, expected) in [
            (form, form),
            ("application/json; charset=utf-8", "application/json"),
            ("text/plain", "application/json"),
        ] {
            let client = fields(&[("Content-Type", client)]);
            let h = collect(&UpstreamFields {
                client: &client,
                target: &t,
                post: true,
                hops: 0,
            });
            assert_eq!(value(&h, "content-type"), [expected]);
        }
    }

    #[test]
    fn alias_target_replaces_credentials() {
        let c = config();
        let t = resolve(None, "[a]m", &c, &Lookup::none()).expect("target");
        let client = client_fields();
        let h = collect(&UpstreamFields {
            client: &client,
            target: &t,
            post: true,
            hops: 0,
        });
        assert_eq!(value(&h, "authorization"), ["Bearer sk-a"]);
        for key in crate::auth::KEY_HEADERS {
            assert!(value(&h, key).is_empty(), "the client's {key} is not sent");
        }
        assert_eq!(value(&h, "x-title"), ["me"], "the configured value wins");
        assert_eq!(value(&h, "x-custom"), ["kept"]);
        assert_eq!(value(&h, "openai-organization"), ["org"]);
        for gone in [
            "host",
            "content-length",
            "connection",
            "x-drop",
            "keep-alive",
            "expect",
        ] {
            assert!(value(&h, gone).is_empty(), "{gone} must not go upstream");
        }
        assert_eq!(value(&h, "content-type"), ["application/json"]);
        assert_eq!(value(&h, "accept"), ["*/*"]);
        assert_eq!(
            value(&h, "accept-encoding"),
            ["identity"],
            "the client's gzip is not asked for"
        );
    }

    #[test]
    fn configured_headers_win_over_the_key_and_defaults() {
        let c = config();
        let t = resolve(None, "[own]m", &c, &Lookup::none()).expect("target");
        let client = fields(&[("Accept", "application/json")]);
        let h = collect(&UpstreamFields {
            client: &client,
            target: &t,
            post: true,
            hops: 0,
        });
        assert_eq!(value(&h, "authorization"), ["Basic xyz"]);
        assert_eq!(value(&h, "accept"), ["text/plain"]);
        assert_eq!(
            value(&h, "accept-encoding"),
            ["gzip"],
            "the configured one only"
        );
    }

    #[test]
    fn alias_without_key_sends_no_authorization() {
        let c = config();
        let t = resolve(None, "[nokey]m", &c, &Lookup::none()).expect("target");
        let client = client_fields();
        let h = collect(&UpstreamFields {
            client: &client,
            target: &t,
            post: true,
            hops: 0,
        });
        assert!(value(&h, "authorization").is_empty());
    }

    #[test]
    fn url_target_forwards_client_authorization() {
        let c = config();
        let t = resolve(Some("https://x.com"), "m", &c, &Lookup::none()).expect("target");
        let client = client_fields();
        let h = collect(&UpstreamFields {
            client: &client,
            target: &t,
            post: true,
            hops: 0,
        });
        assert_eq!(value(&h, "authorization"), ["Bearer client"]);
        assert_eq!(value(&h, "x-api-key"), ["client-x"]);
        assert_eq!(value(&h, "api-key"), ["client-azure"]);
        assert_eq!(value(&h, "x-goog-api-key"), ["client-gemini"]);
    }

    /// Every header the router reads as a client's key is one the walk drops for a configured
    /// server: the two lists cannot drift apart.
    #[test]
    fn every_client_key_header_is_known_as_one() {
        for name in crate::auth::KEY_HEADERS {
            assert_eq!(known(name.as_bytes()), Known::ClientKey, "{name}");
            assert_eq!(
                known(name.to_ascii_uppercase().as_bytes()),
                Known::ClientKey
            );
        }
    }

    #[test]
    fn hops_are_a_whole_number_or_malformed() {
        let hops = |value: &str| hops_of(&fields(&[(HOPS, value)]));
        assert_eq!(hops_of(&fields(&[])), Ok(0));
        assert_eq!(hops(" 3 "), Ok(3));
        assert_eq!(hops("99999999999999"), Ok(u32::MAX));
        for malformed in ["abc", "-1", "", "+1", "1.5", "0x8"] {
            let error = hops(malformed).expect_err(malformed);
            assert_eq!(error.code(), "invalid_request", "{malformed:?}");
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }

    #[test]
    fn answers_keep_rate_limit_headers_and_drop_framing() {
        let upstream = fields(&[
            ("Retry-After", "3"),
            ("x-ratelimit-remaining-requests", "9"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "gzip"),
            ("Cache-Control", "max-age=9"),
            (REQUEST_ID, "spoofed"),
        ]);
        let answer = |shape| {
            collect(&AnswerFields {
                upstream: Some(upstream.clone()),
                shape,
                request_id: Some("r1".into()),
            })
        };
        let relayed = answer(Shape::Relayed);
        assert_eq!(value(&relayed, "retry-after"), ["3"]);
        assert_eq!(value(&relayed, "x-ratelimit-remaining-requests"), ["9"]);
        assert!(value(&relayed, "transfer-encoding").is_empty());
        assert!(value(&relayed, "content-length").is_empty());
        assert_eq!(value(&relayed, "content-encoding"), ["gzip"]);
        assert_eq!(value(&relayed, REQUEST_ID), ["r1"], "the router's id only");

        let wrapped = answer(Shape::WrappedError);
        assert_eq!(value(&wrapped, "content-type"), ["application/json"]);
        assert!(value(&wrapped, "content-encoding").is_empty());

        assert_eq!(
            value(&relayed, "vary"),
            ["Accept-Encoding"],
            "a compressed answer"
        );

        let stream = answer(Shape::Stream { sse: true });
        assert_eq!(value(&stream, "content-type"), ["text/event-stream"]);
        assert_eq!(value(&stream, "cache-control"), ["no-cache"]);
        assert_eq!(value(&stream, "x-accel-buffering"), ["no"]);
        assert!(value(&stream, "content-encoding").is_empty());
        assert_eq!(value(&stream, "retry-after"), ["3"]);
    }

    /// An answer whose coding depends on the client's `Accept-Encoding` (it came compressed,
    /// and goes as it came or decoded) says so in its `Vary`; an uncompressed one keeps the
    /// upstream's as it came, and so does an error body (decoded for every client).
    #[test]
    fn a_compressed_answer_varies_by_accept_encoding() {
        let answer = |pairs: &[(&str, &str)], shape| {
            let all = collect(&AnswerFields {
                upstream: Some(fields(pairs)),
                shape,
                request_id: None,
            });
            value(&all, "vary").join(" | ")
        };
        let gzip = ("Content-Encoding", "gzip");
        for shape in [Shape::Relayed, Shape::Decoded, Shape::Stream { sse: false }] {
            assert_eq!(answer(&[gzip], shape), "Accept-Encoding", "{shape:?}");
            assert_eq!(
                answer(&[("Vary", "Origin"), gzip], shape),
                "Origin, Accept-Encoding"
            );
            assert_eq!(
                answer(
                    &[("Vary", "Origin"), ("vary", "accept-encoding"), gzip],
                    shape
                ),
                "Origin | accept-encoding"
            );
            assert_eq!(answer(&[("Vary", "*"), gzip], shape), "*");
            assert_eq!(answer(&[("Vary", "Origin")], shape), "Origin");
            assert_eq!(answer(&[("Content-Encoding", "identity")], shape), "");
        }
        assert_eq!(
            answer(&[("Vary", "Origin"), gzip], Shape::WrappedError),
            "Origin"
        );
        assert_eq!(answer(&[gzip], Shape::Stream { sse: true }), "");
    }
}
