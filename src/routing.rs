//! Target resolution: which upstream a request goes to, as a pure function.
//!
//! `(?proxy=, model, config, model lookup) -> Target`. No I/O and no clock: everything the
//! rules need comes in as arguments, so every rule of PRODUCT.md "Routing a request" is unit-
//! and property-tested here. Rules, first match wins:
//! 1. `?proxy=<http(s) URL>`: that URL is the base (no path: `/v1`); the model goes up without
//!    a `[prefix]` it may have (`[alias]name` goes up as `name`), otherwise unchanged.
//! 2. `[alias]name`: that server; upstream sees `name`.
//! 3. `[http(s) URL]name`: that URL is the base, as in 1; upstream sees `name`.
//! 4. `name`: `settings.default_server`, else the first server whose model list holds `name`.

use std::borrow::Cow;
use std::fmt;

use crate::config::{Config, Server};
use crate::error::{ProxyError, clip};

/// How the target was chosen; recorded with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// `?proxy=<url>`
    ProxyParam,
    /// `[alias]model`
    Alias,
    /// `[http(s)://...]model`
    UrlPrefix,
    /// unprefixed model, `settings.default_server`
    DefaultServer,
    /// unprefixed model, found in a server's model list
    ModelLookup,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProxyParam => "proxy_param",
            Self::Alias => "alias",
            Self::UrlPrefix => "url",
            Self::DefaultServer => "default_server",
            Self::ModelLookup => "model_lookup",
        }
    }

    /// URL targets carry the client's own Authorization and are refused with accounts on.
    pub fn is_url_target(self) -> bool {
        matches!(self, Self::ProxyParam | Self::UrlPrefix)
    }
}

impl fmt::Display for RouteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one request goes.
#[derive(Debug, Clone)]
pub struct Target<'c> {
    pub mode: RouteMode,
    /// Base URL without trailing `/` and without query.
    pub base_url: String,
    /// Query of a URL target's base (`?api-version=...`), kept on every upstream URL.
    pub base_query: Option<String>,
    /// The base, parsed (its query included); borrowed from the config for aliases.
    pub base: Cow<'c, url::Url>,
    /// The model name the upstream sees.
    pub upstream_model: String,
    /// The configured server for alias modes; `None` for URL targets.
    pub server: Option<&'c Server>,
    /// The alias, or the URL's host for URL targets: the provider in records and traces.
    pub provider: String,
}

impl Target<'_> {
    pub fn alias(&self) -> Option<&str> {
        self.server.map(|s| s.alias.as_str())
    }
}

/// Everything rule 4 and the error messages need besides the config.
pub struct Lookup<'a> {
    /// Alias of the first server whose model list holds this exact id.
    pub model_owner: &'a dyn Fn(&str) -> Option<String>,
    /// Whether an alias may be shown to this client (accounts narrow it); used in messages.
    pub alias_visible: &'a dyn Fn(&str) -> bool,
    /// Whether this client may address a server by URL (not with an account); in messages.
    pub url_targets: bool,
}

impl Lookup<'_> {
    /// For callers with no model list and no user narrowing.
    pub fn none() -> Lookup<'static> {
        Lookup {
            model_owner: &|_| None,
            alias_visible: &|_| true,
            url_targets: true,
        }
    }
}

/// Longest model text quoted back in an error message.
const MODEL_IN_MESSAGE: usize = 200;

/// Resolves the target of a request. `proxy_param` is the decoded `?proxy=` value.
pub fn resolve<'c>(
    proxy_param: Option<&str>,
    model: &str,
    config: &'c Config,
    lookup: &Lookup<'_>,
) -> Result<Target<'c>, ProxyError> {
    if let Some(proxy) = proxy_param {
        let (base_url, base_query, base) = url_target(proxy).map_err(|reason| {
            ProxyError::InvalidRequest(format!(
                "bad proxy URL \"{}\": {reason}",
                clip(&without_userinfo(proxy), MODEL_IN_MESSAGE)
            ))
        })?;
        return Ok(Target {
            mode: RouteMode::ProxyParam,
            provider: host_of(&base_url),
            base_url,
            base_query,
            base: Cow::Owned(base),
            upstream_model: without_prefix(model).to_owned(),
            server: None,
        });
    }
    match parse_model(model)? {
        ModelRef::Prefixed { prefix, name } if is_url(prefix) => {
            let (base_url, base_query, base) = url_target(prefix).map_err(|reason| {
                ProxyError::InvalidRequest(format!(
                    "bad URL in model prefix \"[{}]\": {reason}",
                    clip(&without_userinfo(prefix), MODEL_IN_MESSAGE)
                ))
            })?;
            Ok(Target {
                mode: RouteMode::UrlPrefix,
                provider: host_of(&base_url),
                base_url,
                base_query,
                base: Cow::Owned(base),
                upstream_model: name.to_owned(),
                server: None,
            })
        }
        ModelRef::Prefixed { prefix, name } => {
            let Some(server) = config.server(prefix) else {
                return Err(ProxyError::ModelNotFound(format!(
                    "unknown provider \"[{}]\"; {}",
                    quoted(prefix),
                    how_to_address(config, lookup)
                )));
            };
            Ok(alias_target(server, name, RouteMode::Alias))
        }
        ModelRef::Plain(name) => {
            if let Some(default) = config.settings.default_server.as_deref() {
                if let Some(server) = config.server(default) {
                    return Ok(alias_target(server, name, RouteMode::DefaultServer));
                }
            }
            if let Some(owner) = (lookup.model_owner)(name) {
                if let Some(server) = config.server(&owner) {
                    return Ok(alias_target(server, name, RouteMode::ModelLookup));
                }
            }
            Err(ProxyError::ModelNotFound(format!(
                "model \"{}\" has no [provider] prefix and no provider lists it; {}",
                quoted(name),
                how_to_address(config, lookup)
            )))
        }
    }
}

/// The target of a request that names no model: a form without a `model` field (a file
/// upload to `/v1/files`, a part to `/v1/uploads/<id>/parts`). `?proxy=` as in rule 1, else
/// `settings.default_server`; else a 400 that says what would have worked. The upstream sees
/// no model (`upstream_model` is empty) and the body goes as it came.
pub fn resolve_unnamed<'c>(
    proxy_param: Option<&str>,
    config: &'c Config,
) -> Result<Target<'c>, ProxyError> {
    if proxy_param.is_some() {
        return resolve(proxy_param, "", config, &Lookup::none());
    }
    let default = config.settings.default_server.as_deref();
    if let Some(server) = default.and_then(|alias| config.server(alias)) {
        return Ok(alias_target(server, "", RouteMode::DefaultServer));
    }
    Err(ProxyError::InvalidRequest(
        "the form has no \"model\" field: add one (model=[alias]name), or name the target \
         with ?proxy=<url> (a file upload names no model: it goes to ?proxy= or to \
         settings.default_server)"
            .into(),
    ))
}

fn alias_target<'c>(server: &'c Server, name: &str, mode: RouteMode) -> Target<'c> {
    Target {
        mode,
        base_url: server.url.clone(),
        base_query: None,
        base: Cow::Borrowed(&server.base),
        upstream_model: name.to_owned(),
        server: Some(server),
        provider: server.alias.clone(),
    }
}

/// The part of a 404 message that tells the client what would have worked.
fn how_to_address(config: &Config, lookup: &Lookup<'_>) -> String {
    let aliases: Vec<&str> = config
        .servers
        .keys()
        .map(String::as_str)
        .filter(|a| (lookup.alias_visible)(a))
        .collect();
    if aliases.is_empty() && lookup.url_targets {
        "no providers are configured for you: address a server by URL as \"[https://host/v1]model\" or with ?proxy=https://host".to_owned()
    } else if aliases.is_empty() {
        "your key may use no provider: an administrator grants them (llmsrouter user modify <username> --permissions <aliases>)".to_owned()
    } else {
        format!(
            "address a provider as \"[alias]model\", aliases: {}",
            aliases.join(", ")
        )
    }
}

/// The model a `?proxy=` target sees: without a `[prefix]`, which names a target that
/// `?proxy=` overrides (the Python version stripped it too, so a saved `[alias]name` model
/// works on a `?proxy=` base URL). A model that does not parse as prefixed goes unchanged.
fn without_prefix(model: &str) -> &str {
    match parse_model(model) {
        Ok(ModelRef::Prefixed { name, .. }) => name,
        _ => model,
    }
}

/// A model name split into its optional `[prefix]`.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelRef<'m> {
    Prefixed { prefix: &'m str, name: &'m str },
    Plain(&'m str),
}

/// Splits `[prefix]name`. A URL prefix may itself hold brackets (`[http://[::1]:8080]m`): the
/// prefix ends at the first `]` after which the text so far is a well-formed URL (with user
/// info or not: a `?proxy=` request's prefix is not checked, yet its record must know where
/// the user info is).
pub fn parse_model(model: &str) -> Result<ModelRef<'_>, ProxyError> {
    if model.is_empty() {
        return Err(ProxyError::InvalidRequest("\"model\" is empty".into()));
    }
    let Some(inner) = model.strip_prefix('[') else {
        return Ok(ModelRef::Plain(model));
    };
    let close = if is_url(inner) {
        inner
            .match_indices(']')
            .map(|(i, _)| i)
            .find(|&i| well_formed(&inner[..i]).is_ok())
            .or_else(|| inner.find(']'))
    } else {
        inner.find(']')
    };
    let Some(close) = close else {
        return Err(ProxyError::InvalidRequest(format!(
            "model \"{}\" starts with '[' but has no closing ']': write \"[alias]model\"",
            quoted(model)
        )));
    };
    let prefix = &inner[..close];
    let name = &inner[close + 1..];
    if prefix.is_empty() {
        return Err(ProxyError::InvalidRequest(format!(
            "model \"{}\" has an empty [provider] prefix: write \"[alias]model\"",
            quoted(model)
        )));
    }
    // White space alone is no name either: sent upstream as `"  "`, it was recorded as a
    // success (or a provider's error) where the client named nothing.
    if name.trim().is_empty() {
        return Err(ProxyError::InvalidRequest(format!(
            "model \"{}\" has no model name after the [provider] prefix",
            quoted(model)
        )));
    }
    Ok(ModelRef::Prefixed { prefix, name })
}

/// Characters a model name cannot carry as they are in a path it is put back into: those a
/// URL path percent-encodes (RFC 3986's path, as the WHATWG URL spec lists them) and `%`.
/// A backslash too: URL parsers read it as `/`.
const PATH_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Whether a path segment, percent-decoded, is one a server may read as `.` or `..`: a dot
/// or two, or a dot followed only by dots and white space (`...`, `.. `, `..\t`: Windows
/// drops the dots and spaces that end a file name, and some servers trim white space), up to
/// a NUL (`..\0x`: a server written in C reads no further) or its path parameters (`..;x`:
/// Tomcat and Spring read `..;` as `..`); overlong UTF-8 for any of these bytes counts as the
/// byte ([`fold_overlong`]: `\xC0\xAE` for `.`, which IIS once decoded so). A dot inside a
/// name (`a..b`, `v1.5`) is no such segment.
pub fn reads_as_dot_segment(segment: &[u8]) -> bool {
    let folded = fold_overlong(segment);
    let name = folded
        .split(|&b| b == b';' || b == 0)
        .next()
        .unwrap_or_default();
    name.first() == Some(&b'.')
        && name
            .iter()
            .all(|&b| matches!(b, b'.' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
}

/// `bytes` with each overlong UTF-8 encoding of an ASCII byte (two to six bytes for what UTF-8
/// writes in one: `C0 AE` or `E0 80 AE` for `.`, `C0 AF` for `/`, `C0 80` for NUL) replaced by
/// that byte. Such sequences are invalid UTF-8, but lenient decoders read them (IIS's did:
/// `..%c0%af` climbed out of its web root); continuation bytes are not checked, as such a
/// decoder does not check them (`C0 2E` reads as `.` too). Valid UTF-8 is left as it is.
pub fn fold_overlong(bytes: &[u8]) -> Cow<'_, [u8]> {
    // The lead bytes of overlong forms: `C0` and `C1` (two bytes), `E0`, `F0`, `F8`, `FC`.
    if !bytes
        .iter()
        .any(|&b| matches!(b, 0xC0 | 0xC1 | 0xE0 | 0xF0 | 0xF8 | 0xFC))
    {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&lead) = bytes.get(at) {
        let len = match lead {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            0xF8..=0xFB => 5,
            0xFC..=0xFD => 6,
            _ => 1,
        };
        let folded = bytes
            .get(at + 1..at + len)
            .filter(|_| len > 1)
            .and_then(|rest| {
                let value = rest
                    .iter()
                    .fold(u32::from(lead & (0x7F >> len)), |value, &b| {
                        (value << 6) | u32::from(b & 0x3F)
                    });
                u8::try_from(value).ok().filter(u8::is_ascii)
            });
        match folded {
            Some(ascii) => {
                out.push(ascii);
                at += len;
            }
            None => {
                out.push(lead);
                at += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// A `DELETE /models/<id>` (`models.delete`) whose id (percent-decoded) is `[alias]name`
/// with a configured alias, as `GET /v1/models` lists it: the id as the model the request
/// names (so it goes to that alias, with its key and the caller's permission checked), and
/// the path upstream with the bare name, `/models/ft:gpt-4o:me::abc`. `None` for any other
/// path or id (those go to `?proxy=` or `settings.default_server`). Before, such a delete
/// went to `default_server` with the prefix in its path, which no upstream knows.
pub fn aliased_model_path(path: &str, config: &Config) -> Option<(String, String)> {
    let id = path.strip_prefix("/models/")?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()?
        .into_owned();
    let ModelRef::Prefixed { prefix, name } = parse_model(&id).ok()? else {
        return None;
    };
    // `[alias]..` or `[alias]../files/x` put back into the path would leave `/models/`
    // (`DELETE /v1/files/x` with the alias's key): no model is named so. A backslash counts
    // as a slash: a server may read `..\\x` as `../x`. So does a segment a server may read as
    // `..` ([`reads_as_dot_segment`]: `..;x`, `.. `, `...`).
    if name
        .split(['/', '\\'])
        .any(|segment| reads_as_dot_segment(segment.as_bytes()))
    {
        return None;
    }
    config.server(prefix)?;
    let upstream = format!(
        "/models/{}",
        percent_encoding::utf8_percent_encode(name, PATH_UNSAFE)
    );
    Some((id, upstream))
}

/// Whether `path` (normalized, `/models/<id>`) names a model as `[prefix]name` whose prefix is
/// no server in `config` (an alias mistyped, or one since removed): a `DELETE` of it has no
/// alias to go to, and its 405 says why rather than only naming the other targets.
pub fn model_path_names_unknown_alias(path: &str, config: &Config) -> bool {
    let Some(id) = path.strip_prefix("/models/") else {
        return false;
    };
    let Ok(id) = percent_encoding::percent_decode_str(id).decode_utf8() else {
        return false;
    };
    matches!(parse_model(&id), Ok(ModelRef::Prefixed { prefix, .. }) if config.server(prefix).is_none())
}

/// The model name as records (log, ledger, traces) show it: a URL prefix's user info and
/// query, which may carry a password or a key (`[https://user:pw@host/v1?key=...]model`),
/// are replaced by `[redacted]` and `?[redacted]`, and so is any other `scheme://` URL's
/// user info in it ([`redact_userinfo`]: `[ftp://u:p@h]m`, `[[http://u:p@h]]m`). A URL
/// target refuses user info, but with `?proxy=` the prefix names no target and is not
/// checked: the record still shows it.
pub fn model_for_records(model: &str) -> Cow<'_, str> {
    let shown = url_prefix_for_records(model);
    if let Cow::Owned(shown) = redact_userinfo(&shown) {
        return Cow::Owned(shown);
    }
    shown
}

/// An endpoint path as records show it: with [`redact_userinfo`] applied, to the path
/// percent-decoded when that is where a URL's user info shows (the id of
/// `GET /v1/models/%5Bhttp%3A%2F%2Fu%3Ap%40h%5Dm`).
pub fn path_for_records(path: &str) -> Cow<'_, str> {
    if path.contains('%') {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        if let Cow::Owned(shown) = redact_userinfo(&decoded) {
            return Cow::Owned(shown);
        }
    }
    redact_userinfo(path)
}

/// `text` as an error message quotes a model or an id the client sent: its URLs' user info
/// redacted ([`redact_userinfo`]), then clipped.
pub fn quoted(text: &str) -> String {
    clip(&redact_userinfo(text), MODEL_IN_MESSAGE)
}

/// `text` with the user info of every `scheme://` URL in it ([`userinfo_spans`]) replaced
/// by `[redacted]`: the rule for any model text, path or message the router writes, whether
/// the router reads that text as a URL or not. Borrows, after one search for `@`, when there
/// is none (the usual text).
pub fn redact_userinfo(text: &str) -> Cow<'_, str> {
    let mut shown = String::new();
    let mut done = 0;
    for span in userinfo_spans(text) {
        shown.push_str(&text[done..span.start]);
        shown.push_str(crate::sinks::redact::REDACTED);
        done = span.end;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    shown.push_str(&text[done..]);
    Cow::Owned(shown)
}

/// Where the user info of each `scheme://userinfo@` in `text` is: from after a `://` to the
/// last `@` before the next `/`, `]`, `?`, `#` or white space, or further when a password
/// holds one of the first three unescaped ([`userinfo_past_authority`]). Read so for any
/// scheme: a prefix the router does not take for a URL (`[ftp://u:p@h]m`) holds a password
/// all the same. A `//` or a `:/` starts one too: a path's doubled slashes are merged
/// (`/models/[http:/u:p@h]m`), and `[http//u:p@h]m` has no colon. Nothing when `text` has
/// no `@`.
fn userinfo_spans(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let bytes = text.as_bytes();
    let any = memchr::memchr(b'@', bytes).is_some();
    let mut next = 0;
    memchr::memchr_iter(b'/', bytes)
        .take_while(move |_| any)
        .filter_map(move |slash| {
            let after_scheme = slash > 0 && matches!(bytes[slash - 1], b':' | b'/');
            if slash < next || !after_scheme {
                return None;
            }
            let rest = text[slash..].trim_start_matches('/');
            let start = text.len() - rest.len();
            let end = rest.find(ends_authority).unwrap_or(rest.len());
            let info = rest[..end]
                .rfind('@')
                .or_else(|| userinfo_past_authority(rest));
            // No later URL starts inside this one's user info (`u:pa//ss@h`): spans must
            // not overlap.
            next = start + end.max(info.unwrap_or(0));
            info.filter(|&len| len > 0).map(|len| start..start + len)
        })
}

/// Where the user info of the URL at the start of `rest` (after its scheme and slashes)
/// ends when its authority, read up to the first `/`, `?` or `#`, holds no `@`: a password
/// pasted with one of them unescaped (`u:pa/ss@h`, `u:pa#ss@h`) ends it early. [`userinfo`]'s
/// rule for a URL target, applied to the URL as it runs in free text (to white space or a
/// `]`, which closes a `[URL]` prefix): in one that is no well-formed URL, read as an
/// `http://` URL (`u:pa/ss@h` is the port `pa`), the last `@`; in a well-formed one the
/// last `@` in its fragment (`u:12#ss@h` is the host `u`, port 12). An `@` in a well-formed
/// URL's path or query (`/v1/@org`, `?email=a@b`) is none. Parses only when an `@` follows
/// the authority, which the usual text has not.
fn userinfo_past_authority(rest: &str) -> Option<usize> {
    let url = &rest[..rest
        .find(|c: char| c == ']' || c.is_whitespace())
        .unwrap_or(rest.len())];
    let last = url.rfind('@')?;
    // The first `#` starts the fragment, in the query or not.
    let in_fragment = url[..last].contains('#');
    let malformed = || url::Url::parse(&format!("http://{url}")).is_err();
    (in_fragment || malformed()).then_some(last)
}

/// Whether `c` ends a URL's authority in [`userinfo_spans`]'s reading.
fn ends_authority(c: char) -> bool {
    matches!(c, '/' | ']' | '?' | '#') || c.is_whitespace()
}

/// The URL prefix's part of [`model_for_records`].
fn url_prefix_for_records(model: &str) -> Cow<'_, str> {
    let Ok(ModelRef::Prefixed { prefix, name }) = parse_model(model) else {
        return Cow::Borrowed(model);
    };
    if !is_url(prefix) {
        return Cow::Borrowed(model);
    }
    let shown = without_userinfo(prefix);
    // The user info ends before the first `?` (see [`userinfo`]): that `?` is the query's.
    let shown = match shown.split_once('?') {
        Some((base, _)) => Cow::Owned(format!("{base}?[redacted]")),
        None => shown,
    };
    match shown {
        Cow::Borrowed(_) => Cow::Borrowed(model),
        Cow::Owned(shown) => Cow::Owned(format!("[{shown}]{name}")),
    }
}

/// What of a URL target no record may show (it may carry a key or a password), in each form
/// a record might hold it: a URL prefix's query as the model text writes it (so the logged
/// request body reads `?[redacted]`, as [`model_for_records`] does), the target's query as it
/// went upstream, and each parameter's value, also percent-decoded (an upstream may quote
/// just the key); and a URL prefix's user info (which only a `?proxy=` request gets past
/// the router: its prefix names no target), whole and in parts, also percent-decoded. For
/// any target, also the user info of any other `scheme://` URL in the model text
/// ([`userinfo_spans`]), which records show as `[redacted]` ([`model_for_records`]).
pub fn url_target_secrets<'a>(target: &'a Target<'_>, model: &'a str) -> Vec<Cow<'a, str>> {
    let mut out = Vec::new();
    let prefix_info = if target.mode.is_url_target() {
        url_target_query_secrets(target, model, &mut out)
    } else {
        None
    };
    for span in userinfo_spans(model).filter(|span| Some(span) != prefix_info.as_ref()) {
        userinfo_secrets(model, span, &mut out);
    }
    out
}

/// The values of the client's own query parameters whose names say they are credentials
/// ([`crate::secret::names_a_credential`]: `?key=AIza...` as Gemini's clients send it,
/// `access_token`, `sig`, `code`, ...), as written, percent-decoded and form-decoded (`+` a
/// space). They go upstream with the request, to an alias and a URL target alike
/// ([`upstream_url`]), and an upstream may echo the URL or the key in an error or an answer:
/// no record may show them. Other parameters (`api-version`, `limit`) are not secrets;
/// `proxy`'s query is [`url_target_secrets`]'s. Names are compared decoded.
pub fn client_query_secrets(query: Option<&str>) -> Vec<Cow<'_, str>> {
    let mut out = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some((_, value)) = pair.split_once('=') else {
            continue;
        };
        let name = query_key(pair);
        if value.is_empty() || name == "proxy" || !crate::secret::names_a_credential(&name) {
            continue;
        }
        out.push(Cow::Borrowed(value));
        out.extend(percent_decoded(value));
        if value.contains('+') {
            out.extend(percent_decoded(&value.replace('+', " ")));
        }
    }
    out
}

/// [`url_target_secrets`] of a URL target: its queries' and its URL prefix's user info.
/// Returns where in `model` that user info is.
fn url_target_query_secrets<'a>(
    target: &'a Target<'_>,
    model: &'a str,
    out: &mut Vec<Cow<'a, str>>,
) -> Option<std::ops::Range<usize>> {
    let prefix = match parse_model(model) {
        Ok(ModelRef::Prefixed { prefix, .. }) if is_url(prefix) => Some(prefix),
        _ => None,
    };
    let in_model = prefix.and_then(|prefix| prefix.split_once('?').map(|(_, query)| query));
    for query in in_model.into_iter().chain(target.base_query.as_deref()) {
        out.push(Cow::Borrowed(query));
        for value in query
            .split(['&', '#'])
            .filter_map(|pair| pair.split_once('='))
        {
            let value = value.1;
            out.push(Cow::Borrowed(value));
            out.extend(percent_decoded(value));
        }
    }
    // The prefix starts after the model's `[`.
    let range = userinfo(prefix?)?;
    let range = range.start + 1..range.end + 1;
    userinfo_secrets(model, range.clone(), out);
    Some(range)
}

/// The user info at `range` of `text` (a URL prefix's, [`userinfo`], or another URL's,
/// [`userinfo_spans`]) as [`url_target_secrets`] lists it: whole, its user and password,
/// each also percent-decoded. One too short to be redacted on its own (`u:pw`) goes also
/// with the host after it, so the logged body shows neither.
fn userinfo_secrets<'a>(text: &'a str, range: std::ops::Range<usize>, out: &mut Vec<Cow<'a, str>>) {
    let info = &text[range.clone()];
    let (user, password) = info.split_once(':').unwrap_or(("", ""));
    for part in [info, user, password].into_iter().filter(|p| !p.is_empty()) {
        out.push(Cow::Borrowed(part));
        out.extend(percent_decoded(part));
    }
    if info.len() < crate::sinks::redact::MIN_SECRET_LEN {
        let rest = &text[range.end..];
        let end = range.end + rest.find(ends_authority).unwrap_or(rest.len());
        out.push(Cow::Borrowed(&text[range.start..end]));
    }
}

/// `text` percent-decoded, when that changes it.
fn percent_decoded(text: &str) -> Option<Cow<'static, str>> {
    match percent_encoding::percent_decode_str(text).decode_utf8() {
        Ok(Cow::Owned(decoded)) => Some(Cow::Owned(decoded)),
        _ => None,
    }
}

/// `text` with the user info of the URL it holds ([`userinfo`]) replaced by `[redacted]`:
/// how an error message or a record quotes a URL the client sent.
fn without_userinfo(text: &str) -> Cow<'_, str> {
    match userinfo(text) {
        Some(range) => Cow::Owned(format!(
            "{}[redacted]{}",
            &text[..range.start],
            &text[range.end..]
        )),
        None => Cow::Borrowed(text),
    }
}

/// Where the user info (`user:password`, or a token) of the URL in `text` is: from after the
/// scheme and its slashes (or backslashes, however many) to the last `@` before the path,
/// query or fragment. A password written with a `/`, `?` or `#` unescaped (`user:pa/ss@host`,
/// `user:pa#ss@host`: malformed, but users paste passwords so) ends the authority early in
/// a URL parser's reading; in text that is no well-formed URL the user info reaches to the
/// last `@` anywhere, as [`crate::env::shown_url`] reads it (it only ever shows more as
/// `[redacted]`), and in a well-formed one to the last `@` in its fragment (`user:12#ss@host`
/// parses as the host `user`, port 12: a base URL has no use for a fragment, let alone one
/// with an `@`). An `@` in a well-formed URL's path or query (`/v1/@org`, `?email=a@b`) is
/// no user info.
fn userinfo(text: &str) -> Option<std::ops::Range<usize>> {
    let scheme = text.find(':')?;
    let rest = &text[scheme + 1..];
    let start = scheme + 1 + (rest.len() - rest.trim_start_matches(['/', '\\']).len());
    let rest = &text[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@').or_else(|| {
        let last = rest.rfind('@')?;
        // The first `#` starts the fragment, in the query or not.
        let in_fragment = rest[..last].contains('#');
        (well_formed(text).is_err() || in_fragment).then_some(last)
    })?;
    Some(start..start + at)
}

/// Whether `text` starts as a URL target does: `http:` or `https:`, either case. No alias
/// holds a `:`, so a prefix that starts so is a URL, well-formed or not.
fn is_url(text: &str) -> bool {
    let starts = |scheme: &str| {
        text.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    };
    starts("http:") || starts("https:")
}

/// [`url_target_base`], plus the base parsed (query included) for building request URLs.
fn url_target(text: &str) -> Result<(String, Option<String>, url::Url), String> {
    let (base_url, query) = url_target_base(text)?;
    let mut base = url::Url::parse(&base_url).map_err(|e| e.to_string())?;
    base.set_query(query.as_deref());
    Ok((base_url, query, base))
}

/// Checks that `text` is an http(s) URL with a host written as such, and returns it parsed
/// with its authority as written (`user@host:port`). The url crate reads URLs as browsers do
/// (WHATWG): `http:/h`, `http:h` and `http:\\h` as `http://h`, `http:///v1` as host `v1`,
/// `http://h\v1` as path `/v1`; a target that is not written `http(s)://host` is refused
/// rather than guessed at (`http:///v1` went to a host named `v1`). Leading and trailing
/// white space and control characters are ignored, as the url crate ignores them. A tab or
/// line break inside is refused: the url crate drops it silently, so `/v%0A1` reached `/v1`
/// and a pasted URL broken over two lines went somewhere its writer never saw.
pub(crate) fn well_formed(text: &str) -> Result<(url::Url, &str), String> {
    let text = text.trim_matches(|c: char| c <= ' ');
    if text.contains(['\t', '\n', '\r']) {
        return Err("a tab or line break inside the URL: remove it".to_owned());
    }
    let parsed = url::Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http and https URLs can be targets".to_owned());
    }
    let authority = ["http://", "https://"].into_iter().find_map(|scheme| {
        let rest = text
            .get(..scheme.len())
            .filter(|start| start.eq_ignore_ascii_case(scheme))
            .map(|_| &text[scheme.len()..])?;
        Some(&rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())])
    });
    let Some(authority) = authority.filter(|a| !a.is_empty() && !a.starts_with('\\')) else {
        return Err("the URL has no host: write http://host or https://host".to_owned());
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if authority.contains(|c: char| c == '\\' || c.is_whitespace() || c.is_control()) {
        return Err(
            "a backslash, white space or a control character in the URL's host part".to_owned(),
        );
    }
    Ok((parsed, authority))
}

/// Validates a URL target and returns `(base without trailing '/' or query, query)`.
/// A URL with no path gets `/v1`, as the openai SDK's default base URL has.
pub fn url_target_base(text: &str) -> Result<(String, Option<String>), String> {
    // Checked first: a password with an unescaped `/` or `#` makes the URL malformed
    // (`user:pa/ss@host` reads as the port `pa`), and "invalid port number" would not say
    // what is wrong. Its text is quoted with it as `[redacted]` ([`without_userinfo`]).
    let credentials =
        || "credentials in the URL are not accepted; send an Authorization header".to_owned();
    if userinfo(text).is_some() {
        return Err(credentials());
    }
    let (parsed, authority) = well_formed(text)?;
    if authority.contains('@') || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(credentials());
    }
    let query = parsed.query().filter(|q| !q.is_empty()).map(str::to_owned);
    let mut base = parsed.clone();
    base.set_query(None);
    base.set_fragment(None);
    let path = base.path().trim_end_matches('/').to_owned();
    let origin = base.as_str();
    let origin = &origin[..origin.len() - base.path().len()];
    let base_url = if path.is_empty() {
        format!("{origin}/v1")
    } else {
        format!("{origin}{path}")
    };
    Ok((base_url, query))
}

fn host_of(base_url: &str) -> String {
    url::Url::parse(base_url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| base_url.to_owned())
}

/// Builds the upstream URL: base + the client's path after `/v1`, then the base's query and the
/// client's query (minus `proxy=`), joined by [`joined_query`].
pub fn upstream_url(
    base_url: &str,
    base_query: Option<&str>,
    path: &str,
    client_query: Option<&str>,
) -> String {
    let mut url = join_path(base_url, path, 32);
    let forwarded = client_query.map(strip_proxy_param).unwrap_or_default();
    let query = match base_query.filter(|q| !q.is_empty()) {
        Some(own) => joined_query(own, &forwarded),
        None => forwarded,
    };
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

/// A base url's own query (`own`: a server's url, a `?proxy=` or `[URL]` target's) and the
/// client's (`forwarded`, its `proxy=` taken out) as one: the base's parameters first, then
/// the client's, but for a name the client sends, whose value replaces the base's. Both sent,
/// a parameter went twice (Azure's `api-version` in a server's url and in the openai SDK's
/// query), and which one the upstream took was its choice; the client's is the one its
/// request was written for. Names are compared decoded (`api%2Dversion` is `api-version`).
fn joined_query(own: &str, forwarded: &str) -> String {
    if forwarded.is_empty() {
        return own.to_owned();
    }
    let replaced: Vec<Cow<'_, str>> = forwarded.split('&').map(query_key).collect();
    let mut query = String::with_capacity(own.len() + 1 + forwarded.len());
    for pair in own
        .split('&')
        .filter(|pair| !replaced.contains(&query_key(pair)))
    {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(pair);
    }
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(forwarded);
    query
}

/// The name of one `name=value` pair of a query, decoded as a form decodes it (only when it
/// has something to decode).
fn query_key(pair: &str) -> Cow<'_, str> {
    let key = pair.split('=').next().unwrap_or("");
    if !key.contains(['%', '+']) {
        return Cow::Borrowed(key);
    }
    url::form_urlencoded::parse(key.as_bytes())
        .next()
        .map_or(Cow::Borrowed(""), |(key, _)| Cow::Owned(key.into_owned()))
}

/// The upstream URL of a request, built from a parsed base: the same URL as [`upstream_url`]
/// gives, without parsing a URL (host and all) on every request.
pub fn request_url(base: &url::Url, path: &str, client_query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    url.set_path(&join_path(base.path(), path, 0));
    let forwarded = client_query.map(strip_proxy_param).unwrap_or_default();
    match (base.query().filter(|q| !q.is_empty()), forwarded.is_empty()) {
        (None, true) => url.set_query(None),
        (None, false) => url.set_query(Some(&forwarded)),
        (Some(_), true) => {}
        (Some(own), false) => url.set_query(Some(&joined_query(own, &forwarded))),
    }
    url
}

/// [`request_url`] as text. The usual request (a plain path such as `/chat/completions`, no
/// query, a base without query or fragment) is joined as text onto the parsed base's
/// serialization, which is what `request_url` produces for it: building a `url::Url` and
/// setting its path re-parses the whole path (1.4 K of a request's 67 K instructions).
/// Anything else goes the long way, and so does an empty path (a request to `/v1` itself):
/// joined as text onto a host-only base it would lose the `/` a URL's path always has.
pub fn request_url_text(base: &url::Url, path: &str, client_query: Option<&str>) -> String {
    let plain = client_query.is_none()
        && base.query().is_none()
        && base.fragment().is_none()
        && !path.is_empty()
        && is_plain_path(path);
    if !plain {
        return request_url(base, path, client_query).into();
    }
    join_path(base.as_str(), path, 0)
}

/// `base` without its trailing slashes, then `path`, with one `/` between them; room for
/// `extra` more bytes.
fn join_path(base: &str, path: &str, extra: usize) -> String {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + 1 + extra);
    url.push_str(base);
    if !path.is_empty() && !path.starts_with('/') {
        url.push('/');
    }
    url.push_str(path);
    url
}

/// Letters, digits, `-`, `_` and `/`: nothing a URL parser would encode, decode or resolve
/// (no `.` segments, no `%`).
fn is_plain_path(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/')
}

/// The client's query string without its `proxy` parameter, which is the router's own. A
/// key is compared decoded, as [`proxy_param`] reads it: `%70roxy=` names the target too, and
/// left in the query it would go upstream, naming the target again (a router that is its own
/// target would forward it to itself without end).
pub fn strip_proxy_param(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_proxy_pair(pair))
        .collect::<Vec<_>>()
        .join("&")
}

fn is_proxy_pair(pair: &str) -> bool {
    query_key(pair) == "proxy"
}

/// Finds the decoded `proxy` parameter of a raw query string. Sent twice with different
/// values it is a 400: whichever the router took, the client meant the other one just as
/// much (the same value repeated, as a client that adds its default query to a URL that has
/// it already sends, is one target). An empty or blank value (`?proxy=`, left by a client
/// that builds the URL from an unset setting) names nothing and counts as absent, as the
/// Python version took it.
pub fn proxy_param(query: Option<&str>) -> Result<Option<String>, ProxyError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut values = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| k == "proxy" && names_something(v))
        .map(|(_, v)| v);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    // The values are not quoted: a URL target's query may hold a key.
    if values.any(|other| other != first) {
        return Err(ProxyError::InvalidRequest(
            "the query has more than one proxy= parameter, with different values: name one \
             target (send ?proxy=<url> once)"
                .into(),
        ));
    }
    Ok(Some(first.into_owned()))
}

/// Whether a raw query string has a `proxy` parameter that is not blank (one [`proxy_param`]
/// would read, or refuse): the request names its target with it.
pub fn names_proxy(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "proxy" && names_something(&v))
    })
}

/// Whether a `proxy` value names a target: an empty or blank one is taken as absent.
fn names_something(value: &str) -> bool {
    !value.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> Config {
        Config::parse(
            r#"
servers:
  openrouter:
    url: "https://openrouter.ai/api/v1"
    api_key: "k1"
  huoshan:
    url: "https://ark.cn-beijing.volces.com/api/v3/"
    api_key: "k2"
  local.llm:
    url: "http://localhost:11434/v1"
"#,
            &|_| None,
        )
        .expect("config")
    }

    fn resolve_ok<'c>(proxy: Option<&str>, model: &str, config: &'c Config) -> Target<'c> {
        resolve(proxy, model, config, &Lookup::none()).expect("resolves")
    }

    /// A request to `/v1` itself, with a host-only base: the URL keeps its `/` path (found
    /// by the proptest below; its seed is in proptest-regressions/routing.txt).
    #[test]
    fn an_empty_path_on_a_host_only_base_keeps_the_root() {
        let base = url::Url::parse("http://a.com").expect("base");
        assert_eq!(request_url_text(&base, "", None), "http://a.com/");
        let base = url::Url::parse("http://a.com/v1").expect("base");
        assert_eq!(request_url_text(&base, "", None), "http://a.com/v1");
        assert_eq!(
            request_url_text(&base, "/chat/completions", None),
            "http://a.com/v1/chat/completions"
        );
    }

    #[test]
    fn proxy_param_wins_and_gets_v1_when_pathless() {
        let c = config();
        let t = resolve_ok(Some("https://target-server.com"), "[openrouter]x", &c);
        assert_eq!(t.mode, RouteMode::ProxyParam);
        assert_eq!(t.base_url, "https://target-server.com/v1");
        // The prefix names a target `?proxy=` overrides: the upstream sees the name alone.
        assert_eq!(t.upstream_model, "x");
        assert_eq!(t.provider, "target-server.com");
        for (model, upstream) in [
            ("[unknown]x/y:free", "x/y:free"),
            ("[http://[::1]:8080/v1]m", "m"),
            ("plain", "plain"),
            ("a[b]c", "a[b]c"),
        ] {
            let t = resolve_ok(Some("https://h.com"), model, &c);
            assert_eq!(t.upstream_model, upstream, "{model}");
        }
        assert!(t.server.is_none());
        let t = resolve_ok(Some("https://h.com/"), "m", &c);
        assert_eq!(t.base_url, "https://h.com/v1");
        let t = resolve_ok(Some("http://h.com:8080/api/v3/?api-version=2"), "m", &c);
        assert_eq!(t.base_url, "http://h.com:8080/api/v3");
        assert_eq!(t.base_query.as_deref(), Some("api-version=2"));
        assert_eq!(t.provider, "h.com:8080");
    }

    #[test]
    fn a_request_without_a_model_goes_to_proxy_or_the_default_server_or_is_400() {
        let c = config();
        let t = resolve_unnamed(Some("https://h.com"), &c).expect("proxy");
        assert_eq!(t.mode, RouteMode::ProxyParam);
        assert_eq!(t.base_url, "https://h.com/v1");
        assert_eq!(t.upstream_model, "");
        let err = resolve_unnamed(None, &c).expect_err("no default");
        assert_eq!(err.code(), "invalid_request");
        assert!(err.to_string().contains("no \"model\" field"), "{err}");
        let mut with_default = config();
        with_default.settings.default_server = Some("huoshan".into());
        let t = resolve_unnamed(None, &with_default).expect("default");
        assert_eq!(t.mode, RouteMode::DefaultServer);
        assert_eq!(t.alias(), Some("huoshan"));
        assert_eq!(t.upstream_model, "");
        let err = resolve_unnamed(Some("ftp://x"), &with_default).expect_err("bad proxy");
        assert_eq!(err.code(), "invalid_request");
    }

    #[test]
    fn bad_proxy_urls_are_400() {
        let c = config();
        for bad in [
            "file:///etc/passwd",
            "ftp://x",
            "not a url",
            "",
            "http://user:pw@h.com",
            "http://@h.com",
            "http://h.com\\@evil.com",
        ] {
            let err = resolve(Some(bad), "m", &c, &Lookup::none()).expect_err(bad);
            assert_eq!(err.code(), "invalid_request", "{bad}");
        }
    }

    /// The url crate reads these as browsers do (`http:///v1` as host `v1`, `http:/h` as
    /// `http://h`): a target must be written `http(s)://host`, in the query or a prefix.
    #[test]
    fn a_url_target_without_a_written_host_is_400() {
        let c = config();
        for bad in [
            "http:///v1",
            "http:///127.0.0.1:8080/v1",
            "HTTPS:///v1",
            "http:/127.0.0.1:8080/v1",
            "http:127.0.0.1:8080/v1",
            "http:\\\\127.0.0.1:8080\\v1",
            "http://\\h/v1",
            "http://h\\v1",
            "http://h\\:8080/v1",
            "http://\n/v1",
            "http://h\t.com/v1",
        ] {
            let err = resolve(Some(bad), "m", &c, &Lookup::none()).expect_err(bad);
            assert_eq!(err.code(), "invalid_request", "{bad}");
            let msg = err.to_string();
            assert!(msg.starts_with("bad proxy URL"), "{msg}");
            let prefixed = format!("[{bad}]m");
            let err = resolve(None, &prefixed, &c, &Lookup::none()).expect_err(bad);
            assert_eq!(err.code(), "invalid_request", "{bad}");
            assert!(
                err.to_string().starts_with("bad URL in model prefix"),
                "{err}"
            );
        }
        for no_host in ["http:///v1", "http:/h/v1", "http:h", "Http:\\\\h"] {
            let msg = resolve(Some(no_host), "m", &c, &Lookup::none())
                .expect_err(no_host)
                .to_string();
            assert!(msg.contains("the URL has no host"), "{msg}");
        }
        // What the url crate leaves out around a URL is still left out.
        let t = resolve_ok(Some(" https://h.com/v1\n"), "m", &c);
        assert_eq!(t.base_url, "https://h.com/v1");
        let t = resolve_ok(Some("HTTPS://H.com"), "m", &c);
        assert_eq!(t.base_url, "https://h.com/v1");
    }

    /// A 400 quotes the URL it refuses, but never the user info in it, however written.
    #[test]
    fn a_refused_urls_credentials_are_not_quoted() {
        let c = config();
        let long = format!("http://user:{}@h.com/v1", "x".repeat(300));
        for (bad, shown) in [
            (
                "http://user@x:p@ss@127.0.0.1:21001/v1",
                "http://[redacted]@127.0.0.1:21001/v1",
            ),
            (
                "https://tok_abcdefgh12345@h.com",
                "https://[redacted]@h.com",
            ),
            ("http://u:p/ss@h.com/v1", "http://[redacted]@h.com/v1"),
            // A password with an unescaped `#`, `?` or `/` (`p#ss` reads as the port `p`,
            // `12#ss` as the port 12 and a fragment).
            ("http://u:p#ss@h.com/v1", "http://[redacted]@h.com/v1"),
            ("http://u:12#ss@h.com/v1", "http://[redacted]@h.com/v1"),
            ("http://u:p?ss@h.com/v1", "http://[redacted]@h.com/v1"),
            (
                "http://u:p/s#s?s@h.com/v1?k=v",
                "http://[redacted]@h.com/v1?k=v",
            ),
            ("http:/u:p@ss@h.com/v1", "http:/[redacted]@h.com/v1"),
            ("http://u:p@ss@h.com:x/v1", "http://[redacted]@h.com:x/v1"),
            (long.as_str(), "http://[redacted]@h.com/v1"),
        ] {
            let msg = resolve(Some(bad), "m", &c, &Lookup::none())
                .expect_err(bad)
                .to_string();
            assert!(msg.contains(&format!("\"{shown}\"")), "{msg}");
            assert!(
                !msg.contains("p@ss") && !msg.contains("ss@") && !msg.contains("xxx"),
                "{msg}"
            );
            let msg = resolve(None, &format!("[{bad}]m"), &c, &Lookup::none())
                .expect_err(bad)
                .to_string();
            assert!(msg.contains(&format!("\"[{shown}]\"")), "{msg}");
        }
        // Said as such, however the password breaks the URL (not "invalid port number").
        for bad in [
            "http://user:pw@h.com",
            "http://u:p/ss@h.com/v1",
            "http://u:p#ss@h.com/v1",
            "http://u:12#ss@h.com/v1",
            "http://u:p?ss@h.com/v1",
        ] {
            for (proxy, model) in [(Some(bad), "m".to_owned()), (None, format!("[{bad}]m"))] {
                let msg = resolve(proxy, &model, &c, &Lookup::none())
                    .expect_err("credentials")
                    .to_string();
                assert!(
                    msg.contains("credentials in the URL are not accepted"),
                    "{bad}: {msg}"
                );
            }
        }
    }

    #[test]
    fn alias_prefix_uses_the_server_as_configured() {
        let c = config();
        let t = resolve_ok(None, "[huoshan]doubao-pro", &c);
        assert_eq!(t.mode, RouteMode::Alias);
        assert_eq!(t.base_url, "https://ark.cn-beijing.volces.com/api/v3");
        assert_eq!(t.upstream_model, "doubao-pro");
        assert_eq!(t.alias(), Some("huoshan"));
        let t = resolve_ok(None, "[openrouter]google/gemini-2.5[beta]", &c);
        assert_eq!(t.upstream_model, "google/gemini-2.5[beta]");
        let t = resolve_ok(None, "[local.llm]qwen", &c);
        assert_eq!(t.alias(), Some("local.llm"));
    }

    #[test]
    fn url_prefix_is_a_url_target() {
        let c = config();
        let t = resolve_ok(None, "[https://target-server.com]gpt-3.5-turbo", &c);
        assert_eq!(t.mode, RouteMode::UrlPrefix);
        assert_eq!(t.base_url, "https://target-server.com/v1");
        assert_eq!(t.upstream_model, "gpt-3.5-turbo");
        let t = resolve_ok(None, "[http://[::1]:8080/v1]m", &c);
        assert_eq!(t.base_url, "http://[::1]:8080/v1");
        assert_eq!(t.upstream_model, "m");
        let err = resolve(None, "[https://]m", &c, &Lookup::none()).expect_err("no host");
        assert_eq!(err.code(), "invalid_request");
    }

    #[test]
    fn unknown_alias_is_404_listing_visible_aliases() {
        let c = config();
        let visible = |a: &str| a != "huoshan";
        let lookup = Lookup {
            model_owner: &|_| None,
            alias_visible: &visible,
            url_targets: false,
        };
        let err = resolve(None, "[nope]m", &c, &lookup).expect_err("unknown");
        assert_eq!(err.code(), "model_not_found");
        let msg = err.to_string();
        assert!(
            msg.contains("openrouter") && msg.contains("local.llm"),
            "{msg}"
        );
        assert!(!msg.contains("huoshan"), "{msg}");

        // A key that may use nothing is not sent to URL targets it would be refused.
        for url_targets in [true, false] {
            let lookup = Lookup {
                model_owner: &|_| None,
                alias_visible: &|_| false,
                url_targets,
            };
            let msg = resolve(None, "[nope]m", &c, &lookup)
                .expect_err("unknown")
                .to_string();
            assert_eq!(msg.contains("[https://host/v1]model"), url_targets, "{msg}");
            assert_eq!(msg.contains("administrator"), !url_targets, "{msg}");
        }
    }

    #[test]
    fn malformed_prefixes_are_400() {
        let c = config();
        for bad in [
            "[",
            "[]x",
            "[unclosed",
            "[openrouter]",
            "[openrouter]  \t",
            "",
        ] {
            let err = resolve(None, bad, &c, &Lookup::none()).expect_err(bad);
            assert_eq!(err.code(), "invalid_request", "{bad}");
        }
    }

    #[test]
    fn unprefixed_uses_default_then_lookup_then_404() {
        let mut c = config();
        let owner = |m: &str| (m == "llama3").then(|| "local.llm".to_owned());
        let lookup = Lookup {
            model_owner: &owner,
            alias_visible: &|_| true,
            url_targets: true,
        };
        let t = resolve(None, "llama3", &c, &lookup).expect("lookup");
        assert_eq!(t.mode, RouteMode::ModelLookup);
        assert_eq!(t.alias(), Some("local.llm"));
        assert_eq!(t.upstream_model, "llama3");
        let err = resolve(None, "gpt-4o", &c, &lookup).expect_err("404");
        assert_eq!(err.code(), "model_not_found");
        assert!(err.to_string().contains("[alias]model"));
        c.settings.default_server = Some("openrouter".into());
        let t = resolve(None, "llama3", &c, &lookup).expect("default");
        assert_eq!(t.mode, RouteMode::DefaultServer);
        assert_eq!(t.alias(), Some("openrouter"));
    }

    #[test]
    fn huge_model_names_are_clipped_in_messages() {
        let c = config();
        let model = "m".repeat(10 * 1024 * 1024);
        let err = resolve(None, &model, &c, &Lookup::none()).expect_err("404");
        assert!(err.to_string().len() < 2000);
    }

    #[test]
    fn upstream_url_joins_paths_and_queries() {
        assert_eq!(
            upstream_url("https://a.com/v1/", None, "/chat/completions", None),
            "https://a.com/v1/chat/completions"
        );
        assert_eq!(
            upstream_url(
                "https://a.com/api/v3",
                Some("api-version=2"),
                "/embeddings",
                Some("proxy=https%3A%2F%2Fx&x=1")
            ),
            "https://a.com/api/v3/embeddings?api-version=2&x=1"
        );
        assert_eq!(
            upstream_url("http://h/v1", None, "/models", Some("proxy=x")),
            "http://h/v1/models"
        );
    }

    /// A parameter both the base url and the client name goes once, with the client's value,
    /// in the client's place; the others of both stay, the base's first.
    #[test]
    fn the_clients_query_parameter_replaces_the_base_urls_of_its_name() {
        let joined = |own: &str, client: &str| {
            upstream_url("https://a.com/v1", Some(own), "/chat", Some(client))
        };
        assert_eq!(
            joined("api-version=1&deployment=d", "api-version=2&x=1"),
            "https://a.com/v1/chat?deployment=d&api-version=2&x=1"
        );
        assert_eq!(
            joined("a=1&api-version=1&a=3", "proxy=p&api%2Dversion=2"),
            "https://a.com/v1/chat?a=1&a=3&api%2Dversion=2"
        );
        assert_eq!(
            joined("api-version=1", "api-version=2&api-version=3"),
            "https://a.com/v1/chat?api-version=2&api-version=3"
        );
        assert_eq!(joined("k=1", "K=2"), "https://a.com/v1/chat?k=1&K=2");
        assert_eq!(joined("k=1", "proxy=p"), "https://a.com/v1/chat?k=1");
        let base = url::Url::parse("https://a.com/v1?api-version=1&key=s").expect("base");
        assert_eq!(
            request_url(&base, "/chat", Some("api-version=2")).as_str(),
            "https://a.com/v1/chat?key=s&api-version=2"
        );
    }

    #[test]
    fn records_never_show_a_url_prefix_query() {
        assert_eq!(
            model_for_records("[https://h.com/v1?key=sk-123]gpt-4o"),
            "[https://h.com/v1?[redacted]]gpt-4o"
        );
        assert_eq!(
            model_for_records("[https://h.com/v1]gpt-4o"),
            "[https://h.com/v1]gpt-4o"
        );
        assert_eq!(model_for_records("[openrouter]a?b"), "[openrouter]a?b");
        assert_eq!(model_for_records("plain"), "plain");
    }

    /// A URL prefix with user info is refused as a target, but with `?proxy=` the prefix
    /// names none and the request goes through: its record never shows the user info.
    #[test]
    fn records_never_show_a_url_prefixs_user_info() {
        for (model, shown) in [
            (
                "[http://u:secretpw99@127.0.0.1:1/v1]m1",
                "[http://[redacted]@127.0.0.1:1/v1]m1",
            ),
            (
                "[http://tok_abcdefgh12345@h.com/v1?key=sk-1]m1",
                "[http://[redacted]@h.com/v1?[redacted]]m1",
            ),
            (
                "[HTTPS://u%3Ap:p%40ss@[::1]:8080/v1]m",
                "[HTTPS://[redacted]@[::1]:8080/v1]m",
            ),
            ("[http://u:p/ss@h.com/v1]m", "[http://[redacted]@h.com/v1]m"),
            ("[http://u:p#ss@h.com/v1]m", "[http://[redacted]@h.com/v1]m"),
            (
                "[http://u:12#ss@h.com/v1]m",
                "[http://[redacted]@h.com/v1]m",
            ),
            ("[http:/u:pw@h.com]m", "[http:/[redacted]@h.com]m"),
            // Nor one in a well-formed URL's query.
            (
                "[https://h.com/v1?to=a@b.c]m",
                "[https://h.com/v1?[redacted]]m",
            ),
            // An `@` in a well-formed URL's path is no user info.
            ("[https://h.com/v1/@org]m", "[https://h.com/v1/@org]m"),
            ("[http://[::1]:8080/v1]m", "[http://[::1]:8080/v1]m"),
        ] {
            assert_eq!(model_for_records(model), shown, "{model}");
        }
    }

    /// The client's query values under credential names are secrets, in each decoded form;
    /// `api-version`, `proxy` and other parameters are not.
    #[test]
    fn a_clients_credential_query_values_are_secrets() {
        let secrets = |query: &str| -> Vec<String> {
            client_query_secrets(Some(query))
                .into_iter()
                .map(Cow::into_owned)
                .collect()
        };
        assert_eq!(
            secrets("key=AIza%2F12+3&api-version=2024-10-21&limit=5&flag&proxy=http://h/v1"),
            ["AIza%2F12+3", "AIza/12+3", "AIza/12 3"]
        );
        assert_eq!(
            secrets("access_token=tok&SIG=s1&%6Bey=k1&x-amz-signature=s2&code=c1&session=&after=a"),
            ["tok", "s1", "k1", "s2", "c1"]
        );
        assert!(client_query_secrets(None).is_empty());
        assert!(secrets("api-version=2024-10-21&model=gpt-4o").is_empty());
    }

    /// What of `model`'s request (to `proxy`, if given) no record may show.
    fn secrets_of(proxy: Option<&str>, model: &str, config: &Config) -> Vec<String> {
        let target = resolve_ok(proxy, model, config);
        url_target_secrets(&target, model)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn a_url_targets_query_is_a_secret_of_its_request() {
        let config = config();
        let secrets = |proxy: Option<&str>, model: &str| secrets_of(proxy, model, &config);
        assert_eq!(
            secrets(None, "[https://h.com/v1?key=sk%2B1&v=2]m"),
            [
                "key=sk%2B1&v=2",
                "sk%2B1",
                "sk+1",
                "2",
                "key=sk%2B1&v=2",
                "sk%2B1",
                "sk+1",
                "2"
            ]
        );
        // As written in the model, and as the URL parser sent it upstream.
        assert_eq!(
            secrets(None, "[https://h.com/v1?k=a b#f]m"),
            ["k=a b#f", "a b", "k=a%20b", "a%20b", "a b"]
        );
        assert_eq!(
            secrets(Some("https://h.com/v1?key=sk-2"), "gpt-4o"),
            ["key=sk-2", "sk-2"]
        );
        assert!(secrets(None, "[https://h.com/v1]m").is_empty());
        assert!(secrets(None, "[openrouter]a?key=b").is_empty());
        assert!(secrets(Some("https://h.com/v1"), "[x?y=z]m").is_empty());
    }

    /// A URL prefix's user info gets past the router only under `?proxy=`: it is a secret
    /// of the request, whole and in parts, as written and percent-decoded.
    #[test]
    fn a_url_prefixs_user_info_is_a_secret_of_its_request() {
        let config = config();
        let secrets = |model: &str| secrets_of(Some("https://h.com/v1"), model, &config);
        assert_eq!(
            secrets("[http://user:pw%2Dsecret1@127.0.0.1:1/v1]m"),
            [
                "user:pw%2Dsecret1",
                "user:pw-secret1",
                "user",
                "pw%2Dsecret1",
                "pw-secret1"
            ]
        );
        assert_eq!(
            secrets("[https://tok_abcdefgh12345@h.com/v1?k=v]m"),
            ["k=v", "v", "tok_abcdefgh12345"]
        );
        // Too short to be redacted alone: with its host, the logged body shows neither.
        assert_eq!(
            secrets("[http://u:pw@127.0.0.1:1/v1]m"),
            ["u:pw", "u", "pw", "u:pw@127.0.0.1:1"]
        );
        let target = resolve_ok(None, "[openrouter]m", &config);
        assert!(url_target_secrets(&target, "[openrouter]m@h").is_empty());
    }

    /// Any `scheme://` URL's user info in the model text is a secret of its request, for any
    /// target: the router need not read the prefix as a URL (`?proxy=` wins over it).
    #[test]
    fn any_urls_user_info_in_a_model_is_a_secret_of_its_request() {
        let config = config();
        let secrets = |proxy: Option<&str>, model: &str| secrets_of(proxy, model, &config);
        let proxy = Some("https://h.com/v1");
        assert_eq!(
            secrets(proxy, "[ftp://bob:pw-secret-77@h]m"),
            ["bob:pw-secret-77", "bob", "pw-secret-77"]
        );
        assert_eq!(
            secrets(proxy, "[[http://u:pw@h.com/v1]]m"),
            ["u:pw", "u", "pw", "u:pw@h.com"]
        );
        assert_eq!(
            secrets(proxy, "[http//tok_abcdefgh1@h]m"),
            ["tok_abcdefgh1"]
        );
        assert_eq!(
            secrets(None, "[openrouter]ftp://bob:pw-secret-77@h"),
            ["bob:pw-secret-77", "bob", "pw-secret-77"]
        );
    }

    /// The general rule: after `://` (or `//`, `:/`), up to the last `@` before the next
    /// `/`, `]`, `?`, `#` or white space, whatever the scheme and wherever in the text; past
    /// them only as a URL target's user info reaches ([`userinfo_past_authority`]).
    #[test]
    fn any_urls_user_info_is_redacted() {
        for (text, shown) in [
            ("[ftp://u:p@h]m", "[ftp://[redacted]@h]m"),
            ("[http//u:p@h]m", "[http//[redacted]@h]m"),
            ("[[http://u:p@h/v1]]m", "[[http://[redacted]@h/v1]]m"),
            (
                "/models/[http:/bob:pw@h:1/v1]m1",
                "/models/[http:/[redacted]@h:1/v1]m1",
            ),
            (
                "a x://u@v@h?q@r y://k@h",
                "a x://[redacted]@h?q@r y://[redacted]@h",
            ),
            (
                "[http://u:p@[::1]:8080]m",
                "[http://[redacted]@[::1]:8080]m",
            ),
            ("x://@h z://u:p w@h", "x://@h z://u:p w@h"),
            ("[openrouter]org/model@v2", "[openrouter]org/model@v2"),
            ("http://h/v1/@org", "http://h/v1/@org"),
            ("no at sign://", "no at sign://"),
            // A password pasted with a `/`, `#` or `?` unescaped: malformed, so up to the
            // last `@` (of the URL: to white space or a `]`); `12#ss` is a port and a
            // fragment, and a base URL's fragment has no `@`.
            ("[[http://u:pa/ss@h/v1]]m", "[[http://[redacted]@h/v1]]m"),
            ("[[http://u:pa#ss@h/v1]]m", "[[http://[redacted]@h/v1]]m"),
            ("[[http://u:pa?ss@h/v1]]m", "[[http://[redacted]@h/v1]]m"),
            ("[[http://u:12#ss@h/v1]]m", "[[http://[redacted]@h/v1]]m"),
            ("[ftp://u:p/s#s?s@h/x?k=v]m", "[ftp://[redacted]@h/x?k=v]m"),
            ("[http://u:pa/ss@h]@cf/m", "[http://[redacted]@h]@cf/m"),
            (
                "a x://u:p//s@h y://k@h",
                "a x://[redacted]@h y://[redacted]@h",
            ),
            (
                "[[http://u:p/ss@[::1]:8080/v1]]m",
                "[[http://[redacted]@[::1]:8080/v1]]m",
            ),
            // Not in a well-formed URL's path or query, nor past white space or a `]`.
            ("[[https://h/v1/@org]]m", "[[https://h/v1/@org]]m"),
            (
                "[[https://h/v1?email=a@b.c]]m",
                "[[https://h/v1?email=a@b.c]]m",
            ),
            ("http://h:12/x@y", "http://h:12/x@y"),
            ("[http://h]@cf/m", "[http://h]@cf/m"),
            ("[http://[::1]/v1]@cf/m", "[http://[::1]/v1]@cf/m"),
            ("x://u:p/s w@h", "x://u:p/s w@h"),
        ] {
            assert_eq!(redact_userinfo(text), shown, "{text}");
        }
        assert!(matches!(redact_userinfo("[openrouter]m"), Cow::Borrowed(_)));
        assert_eq!(
            path_for_records("/models/%5Bftp%3A%2F%2Fu%3Apw%40h%5Dm"),
            "/models/[ftp://[redacted]@h]m"
        );
        assert_eq!(path_for_records("/models/a%20b"), "/models/a%20b");
        assert_eq!(
            model_for_records("[ftp://u:p@h?key=k]m"),
            "[ftp://[redacted]@h?key=k]m"
        );
    }

    #[test]
    fn proxy_param_is_decoded() {
        assert_eq!(
            proxy_param(Some("a=1&proxy=https%3A%2F%2Fh.com%2Fv1"))
                .expect("one")
                .as_deref(),
            Some("https://h.com/v1")
        );
        assert_eq!(proxy_param(Some("a=1")), Ok(None));
        assert_eq!(proxy_param(None), Ok(None));
        assert!(!names_proxy(Some("a=1&proxyx=2")));
        assert!(!names_proxy(None));
    }

    /// An empty or blank value names no target: absent, and no conflict with one that does.
    #[test]
    fn a_blank_proxy_param_is_absent() {
        for query in ["proxy=", "proxy=%20", "a=1&proxy=+&proxy="] {
            assert_eq!(proxy_param(Some(query)), Ok(None), "{query}");
            assert!(!names_proxy(Some(query)), "{query}");
        }
        for query in ["proxy=http://a&proxy=", "proxy=&%70roxy=http://a&proxy=%09"] {
            assert_eq!(
                proxy_param(Some(query)),
                Ok(Some("http://a".to_owned())),
                "{query}"
            );
            assert!(names_proxy(Some(query)), "{query}");
        }
    }

    /// Two different targets are refused, whichever comes first and however each is
    /// spelled; the same one repeated is that target.
    #[test]
    fn conflicting_proxy_params_are_refused() {
        for query in [
            "proxy=http://a&proxy=http://b",
            "proxy=http://b&limit=1&%70roxy=http://a",
            "proxy=&proxy=http://a&proxy=%20&proxy=http://b",
        ] {
            let error = proxy_param(Some(query)).expect_err(query);
            assert_eq!(error.code(), "invalid_request");
            assert!(
                error.to_string().contains("more than one proxy="),
                "{error}"
            );
            assert!(
                !error.to_string().contains("http://"),
                "no value quoted: {error}"
            );
        }
        assert_eq!(
            proxy_param(Some("proxy=http://a&proxy=http%3A%2F%2Fa")),
            Ok(Some("http://a".to_owned()))
        );
    }

    /// Every spelling of the key that names the target is taken out of the query sent on.
    #[test]
    fn the_proxy_parameter_is_stripped_however_its_key_is_spelled() {
        for query in [
            "proxy=http://h&limit=1",
            "%70roxy=http://h&limit=1",
            "%70%72%6F%78%79=http://h&limit=1",
            "limit=1&proxy=a&proxy=b",
        ] {
            assert!(names_proxy(Some(query)), "{query}");
            assert_eq!(strip_proxy_param(query), "limit=1", "{query}");
        }
        assert_eq!(
            strip_proxy_param("proxyx=1&xproxy=2&a+b=3"),
            "proxyx=1&xproxy=2&a+b=3"
        );
    }

    #[test]
    fn overlong_utf8_reads_as_the_ascii_byte() {
        let folded = |bytes: &[u8]| fold_overlong(bytes).into_owned();
        assert_eq!(folded(b"\xC0\xAE\xC0\xAE"), b"..");
        assert_eq!(folded(b"\xE0\x80\xAE\xF0\x80\x80\xAE"), b"..");
        assert_eq!(
            folded(b"\xF8\x80\x80\x80\xAE\xFC\x80\x80\x80\x80\xAE"),
            b".."
        );
        // Continuation bits unchecked, as a lenient decoder leaves them.
        assert_eq!(folded(b"\xC0\x2E\xC0\xEE"), b"..");
        assert_eq!(folded(b"..\xC0\xAFx\xC1\x9C\xC0\x80"), b"../x\\\0");
        // Not overlong, or cut short: left as it is.
        assert_eq!(folded("é…".as_bytes()), "é…".as_bytes());
        assert_eq!(folded(b"a\xC0"), b"a\xC0");
        assert_eq!(folded(b"\xE0\x80"), b"\xE0\x80");
    }

    #[test]
    fn segments_a_server_may_read_as_dots() {
        for segment in [
            ".", "..", "...", "....", ".. ", "..\t", "..\0", "..\0x", ". ", "..\r\n", ". .",
            "..;x", "..\0;x", "...;",
        ] {
            assert!(reads_as_dot_segment(segment.as_bytes()), "{segment:?}");
        }
        assert!(reads_as_dot_segment(b"\xC0\xAE\xC0\xAE"));
        assert!(reads_as_dot_segment(b".\xC0\xAE\xC0\xA0"));
        for segment in [
            "",
            "a..b",
            "file..txt",
            "v1.5...",
            ".well-known",
            ".env",
            "..a",
            "x.. ",
            " ..",
            "\0..",
            ";..",
            "é",
        ] {
            assert!(!reads_as_dot_segment(segment.as_bytes()), "{segment:?}");
        }
    }

    #[test]
    fn an_aliased_model_name_that_reads_as_dots_is_no_model() {
        let c = config();
        for id in [
            "[openrouter]..%20/files/x",
            "[openrouter]...",
            "[openrouter]..%00/files/x",
            "[openrouter]..%09%5cfiles%5cx",
            "[openrouter]..;/files/x",
        ] {
            let path = format!("/models/{id}");
            assert_eq!(aliased_model_path(&path, &c), None, "{id}");
        }
        assert_eq!(
            aliased_model_path("/models/[openrouter]ft:v1.5...:a", &c),
            Some((
                "[openrouter]ft:v1.5...:a".to_owned(),
                "/models/ft:v1.5...:a".to_owned()
            ))
        );
    }

    proptest! {
        /// Valid UTF-8 has no overlong forms: folding never changes it.
        #[test]
        fn valid_utf8_is_never_folded(text in "\\PC{0,40}") {
            let folded = fold_overlong(text.as_bytes());
            prop_assert_eq!(folded.as_ref(), text.as_bytes());
        }

        #[test]
        fn resolve_never_panics(proxy in proptest::option::of(".{0,40}"), model in ".{0,60}") {
            let c = config();
            let _ = resolve(proxy.as_deref(), &model, &c, &Lookup::none());
        }

        /// User info spans read past the authority (a password with a `/` in it) never
        /// overlap a later URL's, which a `//` inside them starts.
        #[test]
        fn redacting_user_info_never_panics(text in "(x://|[a-z:/@#?\\[\\] %]){0,40}") {
            let _ = redact_userinfo(&text);
            let _ = model_for_records(&text);
            let _ = path_for_records(&text);
        }

        #[test]
        fn alias_prefix_sends_the_name_unchanged(name in "[^\\[\\s].{0,40}") {
            let c = config();
            let t = resolve(None, &format!("[openrouter]{name}"), &c, &Lookup::none()).expect("resolves");
            prop_assert_eq!(t.upstream_model, name);
            prop_assert_eq!(t.base_url, "https://openrouter.ai/api/v1");
        }

        #[test]
        fn url_targets_never_end_with_slash(host in "[a-z]{1,10}", path in "(/[a-z0-9]{1,5}){0,3}/?") {
            let (base, _) = url_target_base(&format!("https://{host}.com{path}")).expect("valid");
            prop_assert!(!base.ends_with('/'));
            prop_assert!(base.starts_with("https://"));
            if path.trim_matches('/').is_empty() {
                prop_assert!(base.ends_with("/v1"));
            }
        }

        #[test]
        fn request_url_matches_upstream_url(
            host in "[a-z]{1,8}",
            base_path in "(/[a-z0-9.]{1,5}){0,3}/?",
            base_query in proptest::option::of("[a-z]{1,4}=[0-9]{1,3}"),
            path in "(/[a-z_]{1,8}){1,3}",
            client_query in proptest::option::of("(proxy=[a-z%0-9]{1,6}&)?[a-z]{1,4}=[a-z0-9]{0,4}"),
        ) {
            let text = format!("https://{host}.com{base_path}");
            let base_text = text.trim_end_matches('/').to_owned();
            let mut base = url::Url::parse(&base_text).expect("base");
            base.set_query(base_query.as_deref());
            let built = request_url(&base, &path, client_query.as_deref());
            let joined = upstream_url(&base_text, base_query.as_deref(), &path, client_query.as_deref());
            let reparsed = url::Url::parse(&joined).expect("joined parses");
            prop_assert_eq!(built.as_str(), reparsed.as_str());
        }

        #[test]
        fn request_url_text_is_request_url(
            scheme in "https?",
            host in "[a-zA-Z]{1,8}",
            port in proptest::option::of(1u16..),
            base_path in "(/[a-z0-9.%]{1,5}){0,3}/{0,2}",
            base_query in proptest::option::of("[a-z]{1,4}=[0-9]{1,3}"),
            path in "/?[a-z_./%-]{0,8}(/[a-z_-]{1,8}){0,3}",
            client_query in proptest::option::of("(proxy=[a-z%0-9]{1,6}&)?[a-z]{0,4}=?[a-z0-9]{0,4}"),
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let mut base = url::Url::parse(&format!("{scheme}://{host}.com{port}{base_path}"))
                .expect("base");
            base.set_query(base_query.as_deref());
            let long = request_url(&base, &path, client_query.as_deref());
            let text = request_url_text(&base, &path, client_query.as_deref());
            prop_assert_eq!(long.as_str(), text.as_str());
        }

        #[test]
        fn upstream_url_never_doubles_slashes_after_base(path in "(/[a-z]{1,6}){1,3}") {
            let url = upstream_url("https://h.com/v1/", None, &path, None);
            prop_assert!(!url["https://".len()..].contains("//"));
        }
    }
}
