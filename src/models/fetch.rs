//! Asking one upstream for its model list: `GET {url}/models`, bounded in time and in size.
//!
//! Never lets a server's answer hurt the router: no more than [`MAX_MODELS_BODY`] is read, the
//! whole exchange ends at the fetch timeout, and error texts never carry the server's api key.

use std::time::Duration;

use http::header::ACCEPT;

use super::list::{ParseError, Parsed, parse_listing};
use super::loops::{Chain, MODELS_FOR, from_a_router};
use crate::config::Server;
use crate::proxy::describe_reqwest_error;
use crate::routing::request_url;
use crate::secret::Secret;
use crate::sinks::redact::Redactor;
use crate::state::HttpClients;
use crate::upstream::{ProxyEnv, Via, url_credentials};

/// Largest `/models` answer read. OpenRouter's full list is a few MB; more than this is not a
/// model list, and holding it whole would only cost memory.
pub const MAX_MODELS_BODY: usize = 16 * 1024 * 1024;

/// How much of an error answer is read, and how much of it is quoted in the log.
const ERROR_BODY_READ: usize = 4096;
const ERROR_BODY_QUOTED: usize = 200;

/// Why a server's list could not be had. `Display` is one line for the log and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer within `after`, through the proxy the environment names when `via` it, as a
    /// chat request's 504 says: a proxy that accepts and never answers is not the server's
    /// fault.
    #[error("{via}no answer within {} s (settings.models_fetch_timeout_secs)", .after.as_secs_f64())]
    Timeout { after: Duration, via: Via },
    /// Asked for a list built for other routers, which gives each server a share of the
    /// timeout ([`super::loops`]).
    #[error(
        "{via}no answer within {} s (the share of settings.models_fetch_timeout_secs a list built for other routers gives it)",
        .after.as_secs_f64()
    )]
    TimeoutForRouters { after: Duration, via: Via },
    /// No answer had: the cause, through the proxy the environment names when the request
    /// went through it ([`ProxyEnv::through`]).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The proxy the environment names refused the request (a 407 to an `http://` server's
    /// request, [`ProxyEnv::refusal`]): said as a chat request's 502 says it, not as the
    /// server's answer.
    #[error("{0}")]
    ProxyRefused(String),
    #[error("HTTP {status}{detail}")]
    Status { status: u16, detail: String },
    /// A router that found itself among those the fetch was made for ([`super::loops`]).
    #[error(
        "it leads back to this router (HTTP 508: its url is this router's own address, or a router whose servers lead here); its models are left out"
    )]
    Loop,
    #[error("its answer is larger than {} MiB", MAX_MODELS_BODY / (1024 * 1024))]
    TooLarge,
    #[error("its answer broke off: {0}")]
    BrokeOff(String),
    #[error("its answer cannot be decoded: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

impl FetchError {
    /// Whether `other` is the same failure for the log's purpose: for an error status the
    /// same status, whatever the error body quoting a request id or a time says; any other
    /// failure said in the same words (a refused connection, then a server answering
    /// something that is not HTTP, are two).
    pub fn same_kind(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Status { status: a, .. }, Self::Status { status: b, .. }) => a == b,
            _ => self == other,
        }
    }
}

/// A server's list, and whether the server is a router (another llmsrouter).
#[derive(Debug)]
pub struct Fetched {
    pub parsed: Parsed,
    pub from_a_router: bool,
}

/// Fetches and parses `server`'s model list, all within `timeout`. The fetch names `chain`,
/// the routers it is made for ([`super::loops`]).
pub async fn fetch_models(
    client: &HttpClients,
    server: &Server,
    timeout: Duration,
    chain: &Chain,
) -> Result<Fetched, FetchError> {
    // Built as a chat request's URL is: the base's own query (`?api-version=...`) stays a
    // query, after `/models`.
    let url = request_url(&server.base, "/models", None);
    let proxy = ProxyEnv::get();
    tokio::time::timeout(timeout, fetch(client, server, chain, &url, proxy))
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                after: timeout,
                via: proxy.via(url.as_str()),
            })
        })
}

async fn fetch(
    client: &HttpClients,
    server: &Server,
    chain: &Chain,
    url: &url::Url,
    proxy: &ProxyEnv,
) -> Result<Fetched, FetchError> {
    // The url's user info goes as a chat request's does (`url_credentials`): out of the URL
    // (reqwest would keep one that is not UTF-8, password and all, in a proxy's request line),
    // as Basic credentials only where nothing else authorizes the request; reqwest would send
    // them beside the api key's, two `Authorization` fields. A server with a configured `Host`
    // is asked over HTTP/1.1, as its chat requests go ([`HttpClients`]).
    let mut bare = url.clone();
    let basic = url_credentials::take_out(&mut bare);
    let mut request = client
        .for_headers(&server.headers)
        .get(bare)
        .header(ACCEPT, "application/json")
        .header(http::header::ACCEPT_ENCODING, "identity")
        .header(MODELS_FOR, chain.header_value());
    // The very value a chat request carries: built (or refused) once, at config load.
    if let Some(authorization) = server.authorization().or(basic.as_ref()) {
        request = request.header(http::header::AUTHORIZATION, authorization.clone());
    }
    // The server's own headers go last and win (a configured `Authorization` replaces the
    // one above), as on every proxied request.
    let response = request
        .headers(server.headers.clone())
        .send()
        .await
        .map_err(|e| {
            FetchError::Unreachable(proxy.through(url.as_str(), describe_reqwest_error(&e)))
        })?;
    let status = response.status();
    if let Some(refusal) = proxy.refusal(url.as_str(), status) {
        return Err(FetchError::ProxyRefused(refusal));
    }
    if status == http::StatusCode::LOOP_DETECTED && from_a_router(response.headers()) {
        return Err(FetchError::Loop);
    }
    if !status.is_success() {
        let coding = content_coding(response.headers());
        let body = read_body(response, ERROR_BODY_READ, true).await?;
        // Decoded as far as it goes (its first 4 KiB may be cut mid-data), so the warning
        // quotes the server's words, not compressed bytes; one that decodes to nothing is
        // quoted as it came.
        let body = match coding {
            Some(coding) => decoded_error(coding, body).await,
            None => body,
        };
        return Err(FetchError::Status {
            status: status.as_u16(),
            detail: quote(&body, server, &crate::env::process_proxy_secrets()),
        });
    }
    let coding = content_coding(response.headers());
    let from_a_router = from_a_router(response.headers());
    let body = read_body(response, MAX_MODELS_BODY, false).await?;
    let body = match coding {
        None => body,
        Some(coding) => decoded(coding, body).await?,
    };
    Ok(Fetched {
        parsed: parse_listing(&body)?,
        from_a_router,
    })
}

/// The codings of an answer's `Content-Encoding`, or `None` for a body as it is. The router
/// asks for `Accept-Encoding: identity`, but some servers compress their lists anyway (the
/// Python version's aiohttp asked for and decoded gzip, so they worked there).
fn content_coding(headers: &http::HeaderMap) -> Option<String> {
    let codings: Vec<&str> = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// `body` decoded (at most [`MAX_MODELS_BODY`] of it), on a blocking thread: a list of
/// several MB takes milliseconds of CPU to inflate.
async fn decoded(coding: String, body: Vec<u8>) -> Result<Vec<u8>, FetchError> {
    let decode = move || {
        crate::content_coding::decode(&coding, &body, MAX_MODELS_BODY).map_err(|e| e.to_string())
    };
    match tokio::task::spawn_blocking(decode).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(reason)) => Err(FetchError::Undecodable(reason)),
        Err(e) => Err(FetchError::Undecodable(e.to_string())),
    }
}

/// An error answer's first bytes in `coding`, decoded as far as they go (at most
/// [`ERROR_BODY_READ`] of it), or as they came when nothing decodes.
async fn decoded_error(coding: String, body: Vec<u8>) -> Vec<u8> {
    let decode = move || match crate::content_coding::decode_partly(&coding, &body, ERROR_BODY_READ)
    {
        Ok(decoded) => decoded,
        Err(broken) if !broken.decoded.is_empty() => broken.decoded,
        Err(_) => body,
    };
    tokio::task::spawn_blocking(decode)
        .await
        .unwrap_or_default()
}

/// Reads at most `limit` bytes. Past it: truncated when `truncate`, else [`FetchError::TooLarge`]
/// (the rest is never read).
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>, FetchError> {
    let declared = response.content_length().unwrap_or(0);
    if !truncate && declared > limit as u64 {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::with_capacity(usize::try_from(declared).unwrap_or(0).min(limit));
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(e) => return Err(FetchError::BrokeOff(describe_reqwest_error(&e))),
        };
        if body.len() + chunk.len() > limit {
            if truncate {
                body.extend_from_slice(&chunk[..limit - body.len()]);
                return Ok(body);
            }
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

/// The start of an error answer, on one line, with the secrets a chat request's error body
/// loses blanked out, JSON-escaped or not (some providers echo the credentials they were
/// sent, and a key may sit in a header such as `api-key`): the server's api key, configured
/// header values and the credentials in its url, and `proxy_secrets`, the proxy variables'
/// credentials and the Basic credentials made of them, which a proxy passing
/// `Proxy-Authorization` on (or answering itself) may echo. Control and invisible formatting
/// characters are shown escaped ([`crate::printable`]).
fn quote(body: &[u8], server: &Server, proxy_secrets: &[Secret]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let header_values = server.headers.values().filter_map(|v| v.to_str().ok());
    let secrets: Vec<Secret> = server
        .api_key
        .iter()
        .cloned()
        .chain(header_values.map(Secret::new))
        .chain(server.url_secrets.iter().cloned())
        .chain(proxy_secrets.iter().cloned())
        .collect();
    // Escaped as the table's ids are: the text goes to a terminal (`llmsrouter models`'
    // stderr, the `serve` log), where an escape sequence or a bidi override would act.
    let text = crate::printable(&Redactor::default().redact(&text, &secrets));
    if text.is_empty() {
        return String::new();
    }
    format!(": {}", crate::error::clip(&text, ERROR_BODY_QUOTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn server(key: &str) -> Server {
        let yaml = format!(
            "servers:\n  s:\n    url: http://127.0.0.1:9/v1\n    api_key: \"{key}\"\n    headers: {{api-key: \"azure-secret-value\"}}\n"
        );
        let config = Config::parse(&yaml, &|_| None).expect("config");
        config.servers["s"].clone()
    }

    #[test]
    fn quoted_error_text_never_holds_the_key() {
        let s = server("sk-secret-123");
        let body = br#"{"error": {"message": "Incorrect API key provided: sk-secret-123"}}"#;
        let quoted = quote(body, &s, &[]);
        assert!(!quoted.contains("sk-secret-123"), "{quoted}");
        assert!(
            quoted.contains("Incorrect API key provided: [redacted]"),
            "{quoted}"
        );
        let quoted = quote(b"bad api-key azure-secret-value", &s, &[]);
        assert_eq!(quoted, ": bad api-key [redacted]");
        let quoted = quote(br#"{"error": "bad key sk\u002dsecret-123"}"#, &s, &[]);
        assert_eq!(quoted, r#": {"error": "bad key [redacted]"}"#);
        assert_eq!(quote(b"  \n ", &s, &[]), "");
        let quoted = quote(
            "a\u{1b}[31mred\u{1b}[0m \u{202e}rtl\u{200b}".as_bytes(),
            &s,
            &[],
        );
        assert_eq!(quoted, ": a\\u{1b}[31mred\\u{1b}[0m \\u{202e}rtl\\u{200b}");
        let long = "x".repeat(5000);
        assert!(quote(long.as_bytes(), &s, &[]).len() < 300);
    }

    /// The credentials in a server's url (sent as Basic auth, or in the query) that an
    /// upstream echoes are no more in the warning than an `api_key` is.
    #[test]
    fn quoted_error_text_never_holds_the_urls_credentials() {
        let yaml = "servers:\n  s:\n    url: http://user:s3cretpw@127.0.0.1:9/v1\n  q:\n    url: http://127.0.0.1:9/v1?key=AIzaQuerySecret123456\n";
        let config = Config::parse(yaml, &|_| None).expect("config");
        let quoted = quote(
            b"bad auth: Basic dXNlcjpzM2NyZXRwdw== (s3cretpw)",
            &config.servers["s"],
            &[],
        );
        assert_eq!(quoted, ": bad auth: Basic [redacted] ([redacted])");
        let quoted = quote(
            b"bad path /v1/models?key=AIzaQuerySecret123456",
            &config.servers["q"],
            &[],
        );
        assert_eq!(quoted, ": bad path /v1/models?key=[redacted]");
    }

    #[test]
    fn errors_read_as_one_line() {
        let after = Duration::from_millis(1500);
        let text = FetchError::Timeout {
            after,
            via: Via::Direct,
        }
        .to_string();
        assert_eq!(
            text,
            "no answer within 1.5 s (settings.models_fetch_timeout_secs)"
        );
        let text = FetchError::Timeout {
            after,
            via: Via::Proxy,
        }
        .to_string();
        assert_eq!(
            text,
            "through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY): \
             no answer within 1.5 s (settings.models_fetch_timeout_secs)"
        );
        let text = FetchError::Status {
            status: 500,
            detail: ": boom".into(),
        }
        .to_string();
        assert_eq!(text, "HTTP 500: boom");
        assert_eq!(
            FetchError::TooLarge.to_string(),
            "its answer is larger than 16 MiB"
        );
    }
}
