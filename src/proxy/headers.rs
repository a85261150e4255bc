//! Which headers cross the router, in each direction.
//!
//! Upstream: the client's headers minus hop-by-hop ones, Host, Content-Length, Accept-Encoding
//! (the router reads answers, so it asks for them uncompressed) and the router's own
//! credentials; Authorization by the rules of PRODUCT.md; then the server's configured
//! `headers`, which win. Downstream: the upstream's headers minus hop-by-hop ones and framing.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::routing::Target;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_hop_by_hop(name: &HeaderName, connection_tokens: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || connection_tokens.contains(name)
}

/// Header names listed in `Connection: a, b`: also hop-by-hop for this message.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// The header through which a router user key may arrive besides Authorization.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Builds the upstream request headers for `target`.
pub fn upstream_headers(client: &HeaderMap, target: &Target<'_>) -> HeaderMap {
    let tokens = connection_tokens(client);
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if is_hop_by_hop(name, &tokens)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::ACCEPT_ENCODING
            || name == header::EXPECT
        {
            continue;
        }
        // A configured server is reached with the router's key: the client's credentials
        // (a router user key, or a key for some other provider) are not passed on.
        if target.server.is_some() && (name == header::AUTHORIZATION || name == X_API_KEY) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(server) = target.server {
        if let Some(value) = &server.authorization {
            out.insert(header::AUTHORIZATION, value.clone());
        }
        for (name, value) in &server.headers {
            out.insert(name.clone(), value.clone());
        }
    }
    if !out.contains_key(header::CONTENT_TYPE) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    out
}

/// Copies upstream response headers for the client, minus hop-by-hop and framing headers
/// (the router frames the body itself).
pub fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let tokens = connection_tokens(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len() + 3);
    for (name, value) in upstream {
        if is_hop_by_hop(name, &tokens) || name == header::CONTENT_LENGTH {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The headers every streamed answer carries (PRODUCT.md "Streaming").
pub fn set_stream_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::{Lookup, resolve};

    fn config() -> Config {
        Config::parse(
            "servers:\n  a:\n    url: http://a/v1\n    api_key: sk-a\n    headers: {X-Title: me}\n  nokey:\n    url: http://b/v1\n",
            &|_| None,
        )
        .expect("config")
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        h.insert(X_API_KEY, HeaderValue::from_static("client-x"));
        h.insert(header::HOST, HeaderValue::from_static("router"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-drop"),
        );
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        h.insert("openai-organization", HeaderValue::from_static("org"));
        h
    }

    #[test]
    fn alias_target_replaces_credentials() {
        let c = config();
        let t = resolve(None, "[a]m", &c, &Lookup::none()).expect("target");
        let h = upstream_headers(&client_headers(), &t);
        assert_eq!(h[header::AUTHORIZATION], "Bearer sk-a");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert!(!h.contains_key(X_API_KEY));
        assert_eq!(h["x-title"], "me");
        assert_eq!(h["x-custom"], "kept");
        assert_eq!(h["openai-organization"], "org");
        for gone in [
            "host",
            "content-length",
            "connection",
            "x-drop",
            "keep-alive",
            "accept-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} must not go upstream");
        }
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn alias_without_key_sends_no_authorization() {
        let c = config();
        let t = resolve(None, "[nokey]m", &c, &Lookup::none()).expect("target");
        let h = upstream_headers(&client_headers(), &t);
        assert!(!h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn url_target_forwards_client_authorization() {
        let c = config();
        let t = resolve(Some("https://x.com"), "m", &c, &Lookup::none()).expect("target");
        let h = upstream_headers(&client_headers(), &t);
        assert_eq!(h[header::AUTHORIZATION], "Bearer client");
        assert_eq!(h[X_API_KEY], "client-x");
    }

    #[test]
    fn downstream_keeps_rate_limit_headers() {
        let mut up = HeaderMap::new();
        up.insert("retry-after", HeaderValue::from_static("3"));
        up.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("9"),
        );
        up.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        up.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let h = downstream_headers(&up);
        assert_eq!(h["retry-after"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], "9");
        assert!(!h.contains_key(header::TRANSFER_ENCODING));
        assert!(!h.contains_key(header::CONTENT_LENGTH));
    }
}
