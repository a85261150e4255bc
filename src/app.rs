//! The HTTP surface: one dispatcher that normalises the path, authenticates, and hands the
//! request to its handler. The router's own HTTP/1 ([`crate::http1::server`]) serves
//! proxied `POST`s itself, and the `GET`s and `DELETE`s it forwards ([`forwarded_path`]),
//! with the same [`Route`] and the same authentication, and brings every other request here.
//!
//! Paths are normalised before matching, because clients build URLs from a base URL: `/v1` is
//! optional (but for a forwarded `GET` or `DELETE`), doubled and trailing slashes are
//! ignored. Authentication runs for every route
//! except `/health`, checked first, so a route added later is protected by default.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, header};

use crate::auth::{authenticate, refuse_cross_site};
use crate::error::ProxyError;
use crate::http1::fields::Fields;
use crate::proxy::{self, Incoming};
use crate::state::AppState;

/// Builds the router over shared state; tests call this to run the real router in-process.
pub fn build_app(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// A request's route after path normalisation.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    ListModels,
    /// The id as the client wrote it, percent-decoded.
    GetModel(String),
    /// Any other path: proxied when POSTed; the path after `/v1`.
    Upstream(String),
    /// A path with a `.` or `..` segment (raw or percent-encoded, or one a server may read so:
    /// [`crate::routing::reads_as_dot_segment`]): refused, since the upstream URL would resolve
    /// it and leave the configured base path, with the provider's key.
    DotSegment,
    /// `/api/user/bypass`: the Python version's per-user model pin (`ENABLE_BYPASS`), which
    /// llmsrouter does not have. Refused with a message saying so: proxied as any other POST
    /// with a model, the pin request went to a provider with its key, and looked set.
    PythonBypass,
    /// The target `*` (RFC 9112 §3.2.4: the server as a whole, for `OPTIONS`): no path, so
    /// never proxied (it was, as `/*`). The router's HTTP/1 refuses it before this for any
    /// other method.
    Asterisk,
}

/// Collapses repeated slashes, drops a trailing slash and a leading `/v1` segment.
pub fn normalize_path(raw: &str) -> String {
    // The usual path, `/v1/chat/completions`, is already normal: one copy, no rebuilding.
    if let Some(rest) = raw.strip_prefix("/v1/") {
        let plain = !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.ends_with('/')
            && memchr::memmem::find(rest.as_bytes(), b"//").is_none();
        if plain {
            return raw["/v1".len()..].to_owned();
        }
    }
    rebuild_path(raw)
}

/// [`normalize_path`] the long way: every segment looked at.
fn rebuild_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 1);
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out == "/v1" {
        return "/".to_owned();
    }
    if let Some(rest) = out.strip_prefix("/v1/") {
        return format!("/{rest}");
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether a path segment is `.` or `..`, or one a server may read so (`...`, `..%20`,
/// `..%00`, `..;x`, overlong UTF-8 such as `%c0%ae%c0%ae`: see
/// [`crate::routing::reads_as_dot_segment`]), also when percent-encoded (`%2e`, `.%2E`,
/// ...), or holds one behind an encoded slash or backslash (`..%2f..%2fadmin`, or the
/// overlong `..%c0%af`): a server that decodes `%2F` before it resolves dot segments (nginx
/// normalises URIs so) would climb out of the configured base URL there too.
fn is_dot_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        return crate::routing::reads_as_dot_segment(bytes);
    }
    let decoded = percent_encoding::percent_decode(bytes).collect::<Vec<u8>>();
    crate::routing::fold_overlong(&decoded)
        .split(|&b| b == b'/' || b == b'\\')
        .any(crate::routing::reads_as_dot_segment)
}

impl Route {
    /// Whether a `POST` to this route is proxied: its answer, the router's own error included,
    /// carries a request id.
    pub fn is_proxied(&self) -> bool {
        matches!(self, Self::Upstream(path) if path != "/")
    }

    pub fn of(raw_path: &str) -> Self {
        if raw_path == "*" {
            return Self::Asterisk;
        }
        // A dot segment has a `.` (raw or as `%2e`); the usual path has neither. A backslash
        // is refused with them: URL parsers read it as `/` (WHATWG, for http URLs), so
        // `a\..\..\admin` would climb out of a server's base URL where no `/` shows it.
        let bytes = raw_path.as_bytes();
        if memchr::memchr3(b'.', b'%', b'\\', bytes).is_some()
            && (bytes.contains(&b'\\') || raw_path.split('/').any(is_dot_segment))
        {
            return Self::DotSegment;
        }
        let path = normalize_path(raw_path);
        match path.as_str() {
            "/health" => Self::Health,
            "/models" => Self::ListModels,
            "/api/user/bypass" => Self::PythonBypass,
            _ => match path.strip_prefix("/models/") {
                Some(id) => Self::GetModel(
                    percent_encoding::percent_decode_str(id)
                        .decode_utf8_lossy()
                        .into_owned(),
                ),
                None => Self::Upstream(path),
            },
        }
    }
}

/// The path (after `/v1`) a `GET` or `DELETE` is forwarded upstream with, or `None` when the
/// router answers it itself. Forwarded: a path that came with its `/v1/` prefix (doubled
/// slashes aside), but `/v1`, `/v1/health` and `/v1/metrics`, when the request names a
/// target, `?proxy=` or `settings.default_server`. The prefix is not optional here as it is
/// for a `POST`: a browser's `/favicon.ico` or a scanner's `/.env` would otherwise go
/// upstream with the provider's key. The model routes are the exception: they are the
/// router's own, answered with or without `/v1`, so they are forwarded the same either way
/// (a client whose base URL lacks `/v1` must not get the merged list for its `?proxy=`): a
/// `GET` only with `?proxy=` (without it they are the merged list of every server, with it
/// the client asks that server for its own names), a `DELETE` (`models.delete`) to either
/// target. One rule for both servers: the router's HTTP/1 ([`crate::http1::server`]) and
/// this dispatcher (HTTP/2).
pub fn forwarded_path(
    method: &Method,
    raw_path: &str,
    query: Option<&str>,
    state: &AppState,
) -> Option<String> {
    if method != Method::GET && method != Method::DELETE {
        return None;
    }
    // A conflicting `?proxy=` names a target too: forwarded, it is refused with a request id.
    let proxy = || crate::routing::names_proxy(query);
    let default_server = || state.config.load().settings.default_server.is_some();
    // `models.delete` of an id as the merged list gives it, `[alias]name`: to that alias.
    let aliased =
        |path: &str| crate::routing::aliased_model_path(path, &state.config.load()).is_some();
    match Route::of(raw_path) {
        Route::ListModels | Route::GetModel(_)
            if proxy()
                || (method == Method::DELETE
                    && (default_server() || aliased(&normalize_path(raw_path)))) =>
        {
            Some(normalize_path(raw_path))
        }
        Route::Upstream(path) if has_v1_prefix(raw_path) && path != "/" && path != "/metrics" => {
            (default_server() || proxy()).then_some(path)
        }
        _ => None,
    }
}

/// Whether the router may serve this request by its method and path: `false` where all it
/// can answer is a refusal that no body would change (404 for no route, 405 for a method the
/// route does not take, 400 for a dot segment or a misused `*`). The router's HTTP/1 leaves
/// such a body unread ([`crate::http1::server`]), so an oversized one gets that 404 or 405
/// (with its `Allow`), not a 413 for a body nobody would read. Mirrors [`dispatch`]'s routes.
pub fn serves(method: &Method, raw_path: &str, query: Option<&str>, state: &AppState) -> bool {
    if forwarded_path(method, raw_path, query, state).is_some() {
        return true;
    }
    let read = method == Method::GET
        || (method == Method::HEAD
            && forwarded_path(&Method::GET, raw_path, query, state).is_none());
    match Route::of(raw_path) {
        Route::Health => method == Method::GET || method == Method::HEAD,
        Route::ListModels | Route::GetModel(_) => read,
        Route::Upstream(path) if method == Method::POST => path != "/",
        Route::Upstream(path) => path == "/metrics" && read,
        Route::DotSegment | Route::PythonBypass | Route::Asterisk => false,
    }
}

/// Whether a path's first segment is `v1`, doubled slashes ignored (`//v1//files`).
fn has_v1_prefix(raw_path: &str) -> bool {
    raw_path.split('/').find(|s| !s.is_empty()) == Some("v1")
}

/// Whether the request names a target a `GET` or `DELETE` could be forwarded to.
fn names_target(query: Option<&str>, state: &AppState) -> bool {
    crate::routing::names_proxy(query) || state.config.load().settings.default_server.is_some()
}

/// The methods `route` takes for this request, for a 405's `Allow` (RFC 9110 §15.5.6): the
/// `GET` and `HEAD` the router answers itself, the `GET` and `DELETE` it forwards
/// ([`forwarded_path`], so they depend on the prefix and the target), the `POST` it proxies.
/// A `HEAD` is never forwarded, so where a `GET` is, `HEAD` is not named.
fn allowed_methods(route: &Route, parts: &http::request::Parts, state: &AppState) -> String {
    let forwards = |method: Method| {
        forwarded_path(&method, parts.uri.path(), parts.uri.query(), state).is_some()
    };
    let get_forwarded = forwards(Method::GET);
    let own_read = !get_forwarded
        && match route {
            Route::ListModels | Route::GetModel(_) => true,
            Route::Upstream(path) => path == "/metrics",
            _ => false,
        };
    let allowed = [
        ("GET", get_forwarded || own_read),
        ("HEAD", own_read),
        ("DELETE", forwards(Method::DELETE)),
        ("POST", route.is_proxied()),
    ];
    let names: Vec<&str> = allowed
        .into_iter()
        .filter_map(|(name, taken)| taken.then_some(name))
        .collect();
    names.join(", ")
}

/// The 405 for a method `route` does not take for this request: its `Allow`, and a message
/// that says what would be taken, worded from what the request had (its prefix, its target).
fn refuse_method(route: &Route, parts: &http::request::Parts, state: &AppState) -> Response {
    let allow = allowed_methods(route, parts, state);
    let method = &parts.method;
    let path = parts.uri.path();
    let mut message = format!("{method} {path} is not served: this path takes {allow}");
    let mut hint = |text: &str| {
        message.push_str("; ");
        message.push_str(text);
    };
    let get_forwarded = || forwarded_path(&Method::GET, path, parts.uri.query(), state).is_some();
    if method == Method::HEAD && get_forwarded() {
        hint("a GET here is forwarded upstream, a HEAD is not: send the GET");
    } else if method == Method::GET || method == Method::DELETE {
        let model_route = matches!(route, Route::ListModels | Route::GetModel(_));
        if !has_v1_prefix(path) && !model_route {
            hint(
                "a GET or DELETE is forwarded upstream only on a path that starts with /v1/, \
                 e.g. /v1/files (a POST is proxied on any path)",
            );
        }
        if !names_target(parts.uri.query(), state) {
            hint(
                "a GET or DELETE goes upstream when the request names its target with \
                 ?proxy=<url> or config.yaml sets settings.default_server",
            );
        }
        if method == Method::DELETE
            && model_route
            && crate::routing::model_path_names_unknown_alias(
                &normalize_path(path),
                &state.config.load(),
            )
        {
            hint(
                "the model id's [prefix] is no server in config.yaml (a DELETE of \
                 /v1/models/[alias]name goes to that alias's server)",
            );
        }
    }
    method_not_allowed(message, &allow)
}

/// An HTTP/2 request whose header fields pass the limits an HTTP/1 head has
/// ([`crate::http1::MAX_FIELDS`] fields, [`crate::http1::MAX_HEAD_BYTES`] bytes) gets the same
/// JSON 431; hyper's own HTTP/2 limit is set above them (see `http1::http2`), so that only a
/// far larger list meets hyper's bare one. HTTP/1 heads were checked as they were read.
fn head_over_limits(parts: &http::request::Parts) -> Option<ProxyError> {
    use crate::http1::{MAX_FIELDS, MAX_HEAD_BYTES};
    if parts.version != http::Version::HTTP_2 {
        return None;
    }
    if parts.headers.len() > MAX_FIELDS {
        return Some(ProxyError::HeadTooLarge(format!(
            "the request has more than {MAX_FIELDS} header fields"
        )));
    }
    let bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (bytes > MAX_HEAD_BYTES).then(|| {
        ProxyError::HeadTooLarge(format!(
            "the request's header fields are larger than {MAX_HEAD_BYTES} bytes"
        ))
    })
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split its `Cookie` into one field per cookie (for
/// HPACK's sake), and they must be joined with "; " before the request goes on over
/// HTTP/1.1, where a second `Cookie` line is not allowed (RFC 6265 §5.4). Only HTTP/2
/// requests are looked at; an HTTP/1 one comes with its one line already.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    // Each part was a valid value, and "; " is too.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// A body declared (`Content-Length`) larger than `settings.max_body_bytes` on a route the
/// router answers itself (`GET /health`, `GET /v1/models`, `GET /metrics`, and their `HEAD`):
/// 413 `body_too_large`, before the key is looked at, as the router's HTTP/1 gives it (it
/// reads such a route's body with the limit before the app sees the request, see
/// [`crate::http1::server`]); over HTTP/2 the body went unread and the answer was 200. The
/// caller drops the body first (within bounds, [`proxy::intake::drain_before_refusal`]), so
/// an HTTP/2 client still sending reads the 413 rather than a reset of its stream.
///
/// A body without a declared length is left unread, as before: the answer does not depend on
/// it, reading it would keep a health probe waiting on a client's stream, and HTTP/2's flow
/// control bounds what of it the server holds. Over HTTP/1 such a body (chunked) is still read
/// with the limit. Proxied requests (`POST`, a forwarded `GET`) meet the limit where their
/// body is read; a refusal by method or path (404, 405) comes whatever the body's size.
fn declared_body_over_limit(parts: &http::request::Parts, state: &AppState) -> Option<ProxyError> {
    let declared: u64 = parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let limit = state.config.load().settings.max_body_bytes;
    if declared <= limit as u64 || parts.method == Method::POST {
        return None;
    }
    let (path, query) = (parts.uri.path(), parts.uri.query());
    let answers_itself = serves(&parts.method, path, query, state)
        && forwarded_path(&parts.method, path, query, state).is_none();
    answers_itself.then_some(ProxyError::BodyTooLarge { limit })
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    // First, as an HTTP/1 head's limits are met before it is routed: `/health` too.
    if let Some(error) = head_over_limits(&parts) {
        return error.into_response();
    }
    if let Some(error) = declared_body_over_limit(&parts, &state) {
        proxy::intake::drain_before_refusal(body, &Fields::from_header_map(&parts.headers)).await;
        return error.into_response();
    }
    let route = Route::of(parts.uri.path());
    match route {
        Route::Health => return health(&parts.method),
        Route::Asterisk => return asterisk(&parts.method),
        Route::PythonBypass => {
            return ProxyError::NotFound(
                "llmsrouter has no bypass endpoint: the Python version's per-user model pin \
                 (ENABLE_BYPASS) is not supported; name the model in each request instead"
                    .into(),
            )
            .into_response();
        }
        Route::DotSegment => {
            return ProxyError::InvalidRequest(
                "the path has a \".\" or \"..\" segment (or one a server may read so, such as \"...\", \"..%20\", \"..%00\" or \"%c0%ae%c0%ae\") or a backslash; send the plain path, e.g. /v1/chat/completions".into(),
            )
            .into_response();
        }
        _ => {}
    }
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let fields = Fields::from_header_map(&parts.headers);
    let proxied_post = parts.method == Method::POST && route.is_proxied();
    let forwarded = if parts.method == Method::POST {
        None
    } else {
        forwarded_path(&parts.method, parts.uri.path(), parts.uri.query(), &state)
    };
    if proxied_post {
        if let Err(error) = refuse_cross_site(&fields) {
            proxy::intake::drain_before_refusal(body, &fields).await;
            return proxy::Answer::refused(&error, &state.failures).into_axum();
        }
    }
    let caller = match authenticate(state.keys.as_ref(), &fields) {
        Ok(caller) => caller,
        Err(error) if proxied_post => {
            proxy::intake::drain_before_refusal(body, &fields).await;
            return proxy::Answer::refused(&error, &state.failures).into_axum();
        }
        // Forwarded, its refusal carries a request id as a proxied `POST`'s does.
        Err(error) if forwarded.is_some() => {
            return proxy::Answer::refused(&error, &state.failures).into_axum();
        }
        Err(error) => {
            // A key tried on `GET /v1/models` (the usual way to test one) is counted as a
            // proxied route's refusal is, though it has no request id or log line.
            state.failures.count_refusal(error.code());
            return error.into_response();
        }
    };
    if let Some(path) = forwarded {
        let incoming = Incoming {
            caller: &caller,
            path: &path,
            query: parts.uri.query(),
            fields: &fields,
            body,
        };
        return proxy::forward_other(&state, incoming, &parts.method).await;
    }
    // A `HEAD` where the `GET` is forwarded is not answered with the router's own list:
    // it would not be the head of what the `GET` gets.
    let head_of_forwarded = parts.method == Method::HEAD
        && forwarded_path(&Method::GET, parts.uri.path(), parts.uri.query(), &state).is_some();
    match (&route, &parts.method) {
        // Named as the client wrote it (`/v1`, `/v1/`), not as the route it left.
        (Route::Upstream(path), _) if path == "/" => not_found(parts.uri.path(), parts.uri.query()),
        _ if head_of_forwarded => refuse_method(&route, &parts, &state),
        (Route::Upstream(path), &Method::GET | &Method::HEAD) if path == "/metrics" => {
            metrics(&state)
        }
        (Route::ListModels, &Method::GET | &Method::HEAD) => {
            crate::models::handle_list(&state, &caller, &fields).await
        }
        (Route::GetModel(id), &Method::GET | &Method::HEAD) => {
            crate::models::handle_get(&state, &caller, id).await
        }
        (Route::Upstream(path), &Method::POST) => {
            let incoming = Incoming {
                caller: &caller,
                path,
                query: parts.uri.query(),
                fields: &fields,
                body,
            };
            proxy::forward(&state, incoming).await
        }
        _ => refuse_method(&route, &parts, &state),
    }
}

/// What the routes that only answer (health, model list, metrics) take.
const READ_ONLY: &str = "GET, HEAD";

/// 405, with the `Allow` field RFC 9110 asks of it.
fn method_not_allowed(message: String, allow: &str) -> Response {
    let mut response = ProxyError::MethodNotAllowed(message).into_response();
    // The method names are tokens, always a valid field value.
    if let Ok(allow) = HeaderValue::from_str(allow) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// 404 for the router's root (`/`, `/v1`, `/v1/`): no route there. When its `proxy=` value
/// ends in an API path, the client is an SDK whose base URL carried `?proxy=`: the SDK
/// appends the path to the whole URL, query and all (`/v1?proxy=http://h/v1/chat/completions`,
/// percent-encoded by Node's), so the request lands here; the message says why, and what
/// works instead, without quoting the value (a URL target's query may hold a key).
fn not_found(path: &str, query: Option<&str>) -> Response {
    let mut message = format!(
        "no route {path}: use POST /v1/chat/completions (or any POST /v1/<path> with a model), GET /v1/models, GET /health, GET /metrics"
    );
    if path_in_proxy(query) {
        message.push_str(
            "; the request path is inside the proxy= value: an SDK's base URL cannot carry a \
             query (the SDK appends the path after it); pass proxy= with default_query \
             (Python) / defaultQuery (Node) and a base URL without it, or name the URL in the \
             model: [http://host/v1]model",
        );
    }
    ProxyError::NotFound(message).into_response()
}

/// The endpoints an SDK appends to its base URL, as the end of a `proxy=` value shows them.
const API_PATHS: [&str; 18] = [
    "chat/completions",
    "completions",
    "responses",
    "embeddings",
    "models",
    "messages",
    "moderations",
    "files",
    "batches",
    "uploads",
    "images/generations",
    "images/edits",
    "images/variations",
    "audio/speech",
    "audio/transcriptions",
    "audio/translations",
    "fine_tuning/jobs",
    "vector_stores",
];

/// Whether a `proxy` value in `query` ends in an API path: after a `/`
/// (`http://h/v1/chat/completions`, from a base URL `.../v1?proxy=http://h/v1`), or right
/// after a version segment (`http://h/v1chat/completions`, from `.../v1/?proxy=http://h/v1`,
/// the SDK's `/` gone to the base URL's end), or after one of those with an id
/// (`.../models/gpt-4o`, `.../files/file-abc`).
fn path_in_proxy(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "proxy")
        .any(|(_, value)| ends_in_api_path(value.trim_end_matches('/')))
}

fn ends_in_api_path(value: &str) -> bool {
    // One id after the endpoint (`models/<id>`, `files/<id>`): what comes before it is looked at.
    let before_id = value.rsplit_once('/').map(|(before, _)| before);
    [Some(value), before_id].into_iter().flatten().any(|value| {
        API_PATHS.iter().any(|api| {
            let Some(before) = value.strip_suffix(api) else {
                return false;
            };
            before.ends_with('/') || is_version_end(before)
        })
    })
}

/// Whether `text` ends in a version segment (`/v1`, `/v3`): a base URL's end, with no `/`.
fn is_version_end(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_digit());
    digits.len() < text.len() && digits.ends_with("/v")
}

/// `GET /metrics`: the recorder's and the sinks' counters in Prometheus text format, so a
/// full queue that drops records shows on a dashboard, not only in a warning. Behind the
/// same key check as every route but `/health`.
fn metrics(state: &AppState) -> Response {
    let mut metrics = state.recorder.metrics();
    for (code, count) in state.failures.refusals() {
        metrics.counter(
            "requests_refused",
            "Requests refused before routing (no record), by error code: invalid_api_key, \
             model_not_found, invalid_request, ...",
            &[("code", code)],
            count,
        );
    }
    let mut response = Response::new(Body::from(metrics.into_text()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `OPTIONS *` asks what the server as a whole takes: the router answers `OPTIONS`
/// nowhere, so 405 with an empty `Allow`. Any other method with `*` is a malformed request.
fn asterisk(method: &Method) -> Response {
    if method == Method::OPTIONS {
        return method_not_allowed(
            "OPTIONS is not served: send a request to a path, e.g. POST /v1/chat/completions"
                .into(),
            "",
        );
    }
    ProxyError::InvalidRequest(
        "the request target \"*\" is only for OPTIONS (RFC 9112 §3.2.4); send a path, e.g. \
         /v1/chat/completions"
            .into(),
    )
    .into_response()
}

fn health(method: &Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("use GET /health".into(), READ_ONLY);
    }
    let mut response = Response::new(Body::from(r#"{"status":"ok"}"#));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sdk_path_inside_proxy_is_told() {
        for query in [
            "proxy=http://h/v1/chat/completions",
            "proxy=http%3A%2F%2Fh%3A80%2Fv1%2Fchat%2Fcompletions",
            "proxy=http://h/v1chat/completions",
            "proxy=https://h/api/v3/embeddings/",
            "a=1&proxy=http://h/v1/models/gpt-4o",
            "proxy=http://h/v1/files/file-abc",
            "proxy=http://h/v1/responses",
            "%70roxy=http://h/v1/messages",
        ] {
            assert!(path_in_proxy(Some(query)), "{query}");
        }
        for query in [
            "proxy=http://h/v1",
            "proxy=http://h",
            "proxy=http://h/profiles",
            "proxy=http://h/v1/x/y/models/a/b",
            "other=http://h/v1/chat/completions",
            "",
        ] {
            assert!(!path_in_proxy(Some(query)), "{query}");
        }
        assert!(!path_in_proxy(None));
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("/v1/chat/completions"), "/chat/completions");
        assert_eq!(normalize_path("/chat/completions/"), "/chat/completions");
        assert_eq!(normalize_path("//v1//models"), "/models");
        assert_eq!(normalize_path("/v1"), "/");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/v1beta/x"), "/v1beta/x");
        assert_eq!(normalize_path("/v1/"), "/");
        assert_eq!(normalize_path("/v1//chat"), "/chat");
        assert_eq!(
            normalize_path("/v1/chat//completions/"),
            "/chat/completions"
        );
        assert_eq!(normalize_path("/v1/v1/x"), "/v1/x");
    }

    proptest::proptest! {
        #[test]
        fn the_short_way_agrees_with_the_long_way(
            segments in proptest::collection::vec(
                proptest::sample::select(vec!["", "v1", "chat", "completions", "v1beta"]),
                0..6,
            )
        ) {
            let raw = format!("/{}", segments.join("/"));
            proptest::prop_assert_eq!(normalize_path(&raw), rebuild_path(&raw));
        }
    }

    /// Dot segments, and segments a server may read as one (a trailing space or NUL, only
    /// dots, overlong UTF-8), are refused wherever they are; a dot inside a name is not.
    #[test]
    fn dot_segments_and_what_servers_read_as_them_are_refused() {
        for path in [
            "/v1/chat/../../admin",
            "/v1/./chat/completions",
            "/v1/%2e%2e/admin",
            "/v1/..;/admin",
            "/v1/.../admin",
            "/v1/..../admin",
            "/v1/..%20/admin",
            "/v1/..%09/admin",
            "/v1/..%00/admin",
            "/v1/..%00.txt/admin",
            "/v1/.%20/admin",
            "/v1/..%2e%20%20/admin",
            "/v1/..%0d%0a/admin",
            "/v1/%c0%ae%c0%ae/admin",
            "/v1/%C0%AE%C0%AE/admin",
            "/v1/%e0%80%ae%e0%80%ae/admin",
            "/v1/%f0%80%80%ae%f0%80%80%ae/admin",
            "/v1/%c0%2e%c0%2e/admin",
            "/v1/.%c0%ae/admin",
            // Overlong slash, backslash, NUL and `;` after a `..`.
            "/v1/..%c0%afadmin",
            "/v1/..%c1%9cadmin",
            "/v1/..%c0%80/admin",
            "/v1/..%c0%bbx/admin",
            "/v1/models/..%20",
        ] {
            assert_eq!(Route::of(path), Route::DotSegment, "{path}");
        }
        for path in [
            "/v1/files/file..txt/content",
            "/v1/a..b%2F.c",
            "/v1/.well-known/x",
            "/v1/..a/b",
            "/v1/x..%20/b",
            "/v1/%c3%a9t%c3%a9/x",
            "/v1/%e2%80%a6/x",
        ] {
            assert!(matches!(Route::of(path), Route::Upstream(_)), "{path}");
        }
        assert_eq!(
            Route::of("/v1/models/[openrouter]v1.5..."),
            Route::GetModel("[openrouter]v1.5...".into())
        );
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of("/health"), Route::Health);
        assert_eq!(Route::of("/v1//models/"), Route::ListModels);
        assert_eq!(
            Route::of("/v1/models/%5Bopenrouter%5Dgoogle%2Fgemini-2.0-flash"),
            Route::GetModel("[openrouter]google/gemini-2.0-flash".into())
        );
        assert_eq!(
            Route::of("/models/[openrouter]google/gemini-2.0-flash"),
            Route::GetModel("[openrouter]google/gemini-2.0-flash".into())
        );
        assert_eq!(
            Route::of("/v1/embeddings"),
            Route::Upstream("/embeddings".into())
        );
    }
}
