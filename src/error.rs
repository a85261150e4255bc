//! The one error type of the request path, and its conversion to OpenAI's error shape.
//!
//! Every error the router itself makes reaches the client as
//! `{"error": {"message", "type", "param", "code"}}` with the status and code of PRODUCT.md's
//! table. Messages never carry keys: callers build them from sanitized parts only.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// An error made by the router (not one relayed from an upstream).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Body not JSON, no model, bad proxy URL, malformed `[prefix]`.
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing or unknown user key (account management on).
    #[error("{0}")]
    InvalidApiKey(String),
    /// The user may not use this provider.
    #[error("{0}")]
    ProviderForbidden(String),
    /// `?proxy=` and `[URL]` targets are refused while accounts are on.
    #[error("{0}")]
    UrlTargetForbidden(String),
    /// A browser page of another site posting a form or text body (see
    /// [`crate::auth::refuse_cross_site`]).
    #[error("{0}")]
    CrossSiteRequest(String),
    /// Unknown alias or a model no provider claims.
    #[error("{0}")]
    ModelNotFound(String),
    /// Route that the router does not serve.
    #[error("{0}")]
    NotFound(String),
    /// Method not allowed on a known route.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A request head (request line and header fields) over the router's limits.
    #[error("{0}")]
    HeadTooLarge(String),
    /// A request target longer than a route the router answers itself can take
    /// ([`crate::http1::MAX_URI_BYTES`]).
    #[error("{0}")]
    UriTooLong(String),
    /// An HTTP/1 request line naming a major version other than 1 (`HTTP/2.0`).
    #[error("{0}")]
    HttpVersionNotSupported(String),
    /// A request to switch the connection to WebSocket
    /// ([`crate::http1::head::RequestHead::asks_for_websocket`]): the router relays HTTP
    /// requests and answers, not a connection's frames.
    #[error(
        "WebSocket upgrades (the Realtime API) are not proxied by llmsrouter; use the Realtime \
         API's HTTP endpoints or connect to the provider directly"
    )]
    WebSocketNotSupported,
    /// Request body over `settings.max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes (settings.max_body_bytes)")]
    BodyTooLarge { limit: usize },
    /// The upstream was reached but gave no usable answer: it had the request and closed
    /// unanswered, answered something unreadable, or its answer broke off. It may have
    /// generated (and billed) an answer: see [`Self::upstream_had_request`].
    #[error("{0}")]
    UpstreamUnreachable(String),
    /// The upstream did not answer, or finish its answer, within `timeout_secs`.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// No connection to the upstream (refused, unknown host, TLS handshake refused, reset
    /// while the request was written): it never had the request. Answered as
    /// [`Self::UpstreamUnreachable`] is.
    #[error("{0}")]
    UpstreamNotConnected(String),
    /// The connection (or its TLS handshake) was not made in time: answered as
    /// [`Self::UpstreamTimeout`] is; the upstream never had the request.
    #[error("{0}")]
    ConnectTimeout(String),
    /// Shutdown's grace period ended while the request still waited for its upstream.
    #[error("{0}")]
    ShuttingDown(String),
    /// The request has come through routers (this one, or others of its kind) more times
    /// than any real chain needs: a target that leads back to a router.
    #[error("{0}")]
    LoopDetected(String),
    /// A panic in the router's own code ended the handling of the request before its answer
    /// began ([`crate::caught`]). The message says nothing of the panic's: it may quote what
    /// the request held.
    #[error(
        "internal error in the router while handling this request; the router's log says where"
    )]
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidApiKey(_) => StatusCode::UNAUTHORIZED,
            Self::ProviderForbidden(_)
            | Self::UrlTargetForbidden(_)
            | Self::CrossSiteRequest(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HttpVersionNotSupported(_) => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::WebSocketNotSupported => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamUnreachable(_) | Self::UpstreamNotConnected(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) | Self::ConnectTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `code` field; clients and scripts match on it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidApiKey(_) => "invalid_api_key",
            Self::ProviderForbidden(_) => "provider_forbidden",
            Self::UrlTargetForbidden(_) => "url_target_forbidden",
            Self::CrossSiteRequest(_) => "cross_site_request",
            Self::ModelNotFound(_) => "model_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::HeadTooLarge(_) => "request_header_too_large",
            Self::UriTooLong(_) => "uri_too_long",
            Self::HttpVersionNotSupported(_) => "http_version_not_supported",
            Self::WebSocketNotSupported => "websocket_not_supported",
            Self::UpstreamUnreachable(_) | Self::UpstreamNotConnected(_) => "upstream_unreachable",
            Self::UpstreamTimeout(_) | Self::ConnectTimeout(_) => "upstream_timeout",
            Self::ShuttingDown(_) => "server_shutting_down",
            Self::LoopDetected(_) => "loop_detected",
            Self::Internal => "internal_error",
        }
    }

    /// OpenAI's `type` field: the family of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidApiKey(_) => "authentication_error",
            Self::ProviderForbidden(_)
            | Self::UrlTargetForbidden(_)
            | Self::CrossSiteRequest(_) => "permission_error",
            Self::UpstreamUnreachable(_)
            | Self::UpstreamTimeout(_)
            | Self::UpstreamNotConnected(_)
            | Self::ConnectTimeout(_) => "upstream_error",
            Self::ShuttingDown(_) | Self::Internal => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// Whether this is a server error (5xx) that the same request would get again: the
    /// router's own refusal (a loop, a WebSocket upgrade, an HTTP version it does not speak)
    /// or a panic in its code on this request. Its answer says `x-should-retry: false`
    /// ([`NO_RETRY`]): the openai SDKs retry every 5xx twice unless told so, and each
    /// attempt is another record (a loop, another trip around it). An upstream that cannot
    /// be reached or is slow (502, 504), and shutdown (503), may answer the next attempt.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::WebSocketNotSupported
                | Self::HttpVersionNotSupported(_)
                | Self::LoopDetected(_)
                | Self::Internal
        )
    }

    /// Whether the upstream had the request when the router gave up on it (timed out
    /// waiting, an answer unreadable or cut): it may have generated, and billed, an answer
    /// the client never got, so the record's usage is unknown rather than none
    /// ([`crate::record::RequestRecord::usage_partial`]). So is shutdown's 503 to a routed
    /// request: the router stopped waiting for an exchange under way (one still connecting
    /// is taken for one the upstream had: unknown either way, not none).
    pub fn upstream_had_request(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable(_) | Self::UpstreamTimeout(_) | Self::ShuttingDown(_)
        )
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn body(&self) -> Bytes {
        error_body(&self.to_string(), self.kind(), Some(self.code()))
    }
}

/// The header the openai SDKs (Python and Node) read before retrying: `false` stops them
/// retrying an error they would otherwise retry (any 5xx). See [`ProxyError::is_final`].
pub const NO_RETRY: (&str, &str) = ("x-should-retry", "false");

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// Serializes an OpenAI-shaped error body. Used for router errors, wrapped upstream errors and
/// the error event that ends a failed stream.
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    let envelope = ErrorEnvelope {
        error: ErrorObject {
            message,
            kind,
            param: None,
            code,
        },
    };
    // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#))
}

/// Which API's form the router's own error event takes when it ends a stream.
///
/// OpenAI's SDKs read `data: {"error": {...}}`. Anthropic's SDKs skip every event without an
/// `event:` name (their parsers `continue` on it), so on `/messages` such an event would go
/// unseen and a cut answer would look complete: there the event is Anthropic's own
/// (`event: error`, `{"type": "error", "error": {"type", "message"}}`), which they raise.
/// The Responses API's clients that check each event against its schema (the Vercel AI
/// SDK) refused the chat form as a malformed event, burying the message in a validation
/// dump: on `/responses` the event is that API's `error` (see [`responses_error_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorForm {
    OpenAi,
    Anthropic,
    Responses,
}

impl StreamErrorForm {
    /// The form for a request to `path` (the path after `/v1`).
    pub fn of(path: &str) -> Self {
        if path == "/messages" {
            Self::Anthropic
        } else if path == "/responses" || path.starts_with("/responses/") {
            Self::Responses
        } else {
            Self::OpenAi
        }
    }
}

#[derive(Serialize)]
struct ResponsesErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
    sequence_number: u64,
    error: ResponsesErrorObject<'a>,
}

/// The error object beside a Responses API `error` event's own fields: its `code` is the
/// event's (never `null` where the event says one), and its `status` the one the failure
/// carries, as the chat form's error object has it.
#[derive(Serialize)]
struct ResponsesErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a serde_json::Value>,
}

/// The Responses API's `error` event (`event: error`) as its reference describes it (`type`,
/// `code`, `message`, `param`, `sequence_number`), with the error object beside them too, as
/// OpenAI's SDKs look for it (they raise on an event whose `error` is set, and read the
/// message there): each client reads the fields it knows. `code` is the error's type when it
/// has no code: the reference has it always a string; the error object says the same code,
/// and the `status` given (an HTTP status, or one an upstream named), when there is one.
pub fn responses_error_data(
    message: &str,
    kind: &str,
    code: Option<&str>,
    status: Option<&serde_json::Value>,
    sequence_number: u64,
) -> Bytes {
    let code = code.unwrap_or(kind);
    let event = ResponsesErrorEvent {
        kind: "error",
        code,
        message,
        param: None,
        sequence_number,
        error: ResponsesErrorObject {
            message,
            kind,
            param: None,
            code,
            status,
        },
    };
    // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&event).map(Bytes::from).unwrap_or_else(|_| {
        Bytes::from_static(
            br#"{"type":"error","code":"api_error","message":"internal error","param":null,"sequence_number":0,"error":{"message":"internal error","type":"api_error","param":null,"code":"api_error"}}"#,
        )
    })
}

/// Anthropic's error types, by what their API documents for each status; an upstream error
/// already typed with one of them keeps its type.
pub const ANTHROPIC_ERROR_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// Anthropic's error `type` for an answer with `status`. 503 is "overloaded" too: the
/// router's own 503 (shutting down) asks the client to try again later, as a 529 does.
pub fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The data of an Anthropic error event: `{"type":"error","error":{"type":..,"message":..}}`,
/// on one line.
pub fn anthropic_error_data(kind: &str, message: &str) -> Bytes {
    let envelope = AnthropicEnvelope {
        kind: "error",
        error: AnthropicError { kind, message },
    };
    // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope)
        .map(Bytes::from)
        .unwrap_or_else(|_| {
            Bytes::from_static(
                br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#,
            )
        })
}

/// A whole SSE event: `event: <name>` (when given) and `data` on one line, then a blank line.
pub fn sse_event(name: Option<&str>, data: &[u8]) -> Bytes {
    let name_len = name.map_or(0, |n| n.len() + 8);
    let mut event = bytes::BytesMut::with_capacity(name_len + data.len() + 8);
    if let Some(name) = name {
        event.extend_from_slice(b"event: ");
        event.extend_from_slice(name.as_bytes());
        event.extend_from_slice(b"\n");
    }
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.is_final() {
            let (name, value) = NO_RETRY;
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Shortens text that came from a client (a model name, say) before it goes into an error
/// message, so a 10 MB model name does not come back as a 10 MB error.
pub fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let err = ProxyError::ModelNotFound("no such model".into());
        let v: serde_json::Value = serde_json::from_slice(&err.body()).expect("json");
        assert_eq!(v["error"]["message"], "no such model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["param"].is_null());
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text() {
        assert_eq!(clip("abc", 5), "abc");
        let long = "x".repeat(1000);
        let clipped = clip(&long, 10);
        assert!(clipped.starts_with("xxxxxxxxxx…"));
        assert!(clipped.contains("1000 bytes"));
    }
}
