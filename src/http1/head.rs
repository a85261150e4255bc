//! Message heads: a client's request head and an upstream's response head, parsed with
//! `httparse` straight into [`Fields`] over the bytes they came in; and the status line and
//! `Date` the router writes.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Buf, Bytes, BytesMut};

use super::fields::{Fields, trim};
use super::{MAX_FIELDS, MAX_HEAD_BYTES, MAX_RESPONSE_FIELDS};

/// Why a head could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the message head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the message head has more than {MAX_FIELDS} header fields")]
    TooManyFields,
    #[error("the answer's head has more than {MAX_RESPONSE_FIELDS} header fields")]
    TooManyResponseFields,
    /// A request line naming an HTTP version other than 1.x (`HTTP/2.0`, `HTTP/3.0` in
    /// HTTP/1's text form): 505.
    #[error(
        "{0} is not served in an HTTP/1 request line: send HTTP/1.1, or HTTP/2 with prior \
         knowledge (h2c, its binary framing)"
    )]
    VersionNotSupported(String),
    #[error("malformed HTTP/1 message head ({0})")]
    Malformed(String),
    /// The connection opened with HTTP/2's preface (prior knowledge, h2c).
    #[error("HTTP/2 connection preface")]
    Http2Preface,
}

/// A request head from a client.
#[derive(Debug)]
pub struct RequestHead {
    pub method: http::Method,
    head: Bytes,
    target: Range<u32>,
    /// `HTTP/1.0` (else 1.1).
    pub http10: bool,
    pub fields: Fields,
}

impl RequestHead {
    /// The request target as sent (origin form `/v1/x?y`, or absolute form).
    pub fn target(&self) -> &str {
        // httparse checked the target is UTF-8 (it accepts nothing else there).
        std::str::from_utf8(&self.head[self.target.start as usize..self.target.end as usize])
            .unwrap_or("")
    }

    /// The path and query of the target: an absolute-form target (`http://host/p?q`, as sent
    /// to a proxy) loses its scheme and host, as hyper's `Uri::path` did.
    pub fn path_and_query(&self) -> (&str, Option<&str>) {
        let target = self.target();
        let origin = if target.starts_with('/') {
            target
        } else {
            match target.find("://") {
                Some(at) => {
                    let rest = &target[at + 3..];
                    memchr::memchr2(b'/', b'?', rest.as_bytes()).map_or("/", |i| &rest[i..])
                }
                None => target,
            }
        };
        match memchr::memchr(b'?', origin.as_bytes()) {
            Some(at) => {
                let path = &origin[..at];
                (
                    if path.is_empty() { "/" } else { path },
                    Some(&origin[at + 1..]),
                )
            }
            None => (origin, None),
        }
    }

    /// Whether the client wants the connection kept after this request.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            // `close` wins whatever the version (RFC 9112 9.6): `Connection: close, keep-alive`.
            self.fields.has_token("connection", "keep-alive")
                && !self.fields.has_token("connection", "close")
        } else {
            !self.fields.has_token("connection", "close")
        }
    }

    /// Whether the request asks to switch its connection to WebSocket (RFC 6455 §4.1; the
    /// openai SDKs' Realtime clients open `GET /v1/realtime?model=...` so): HTTP/1.1, an
    /// `Upgrade` that lists the protocol `websocket` (any case, with or without a
    /// `/version`), and a `Connection` that lists `upgrade`, as RFC 9110 §7.8 has every
    /// sender of `Upgrade` add. Without that option the `Upgrade` was not meant for this hop
    /// (something in front passed a hop-by-hop field on), and in an HTTP/1.0 request it must
    /// be ignored (RFC 9110 §7.8): neither counts. Any method counts (RFC 6455 asks for
    /// `GET`): whatever the method, the client waits for a `101` the router never sends, and
    /// the request forwarded with its `Upgrade` stripped, or refused for its method, would
    /// not tell it why. Other protocols are not looked at: an `Upgrade: h2c` (deprecated by
    /// RFC 9113) is ignored and the request answered over HTTP/1.1, as RFC 9110 lets a
    /// server.
    pub fn asks_for_websocket(&self) -> bool {
        // The usual request has no `Upgrade`: one look through its fields.
        if self.http10 || !self.fields.contains("upgrade") {
            return false;
        }
        let websocket = |protocol: &[u8]| {
            let name = trim(protocol)
                .split(|b| *b == b'/')
                .next()
                .unwrap_or_default();
            name.eq_ignore_ascii_case(b"websocket")
        };
        self.fields.has_token("connection", "upgrade")
            && self
                .fields
                .get_all("upgrade")
                .flat_map(|v| v.split(|b| *b == b','))
                .any(websocket)
    }

    /// `Expect: 100-continue`: the client waits for a go-ahead before it sends the body.
    pub fn expects_continue(&self) -> bool {
        self.fields
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }
}

/// A response head from an upstream.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub http10: bool,
    pub fields: Fields,
}

/// Finds a whole head at the start of `buf`, looking for its blank line only past `*scanned`
/// (kept between calls, so a head that arrives a byte at a time is not re-read from its
/// start each time) and past the `lead` bytes of an empty line before the request line
/// ([`drop_empty_lines`]): with those taken for the blank line that ends a head, a request
/// line still coming was parsed, and refused by what had come of it so far (`\r\n\r\nGET /
/// HTTP/2` as a malformed version: 400; the same bytes in one read, `HTTP/2.0`: 505).
fn head_complete(buf: &[u8], scanned: &mut usize, lead: usize) -> bool {
    static CRLF_END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\n\r\n"));
    static LF_END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    let from = scanned.saturating_sub(2).max(lead);
    *scanned = buf.len();
    let region = &buf[from..];
    // A line break, then an empty line (CRLF, or a bare LF, which httparse also takes).
    CRLF_END.find(region).is_some() || LF_END.find(region).is_some()
}

/// Whether `buf` holds a whole head; an error once an incomplete one is over the limit.
fn head_complete_within_limit(
    buf: &[u8],
    scanned: &mut usize,
    lead: usize,
) -> Result<bool, HeadError> {
    if head_complete(buf, scanned, lead) {
        Ok(true)
    } else if buf.len() > MAX_HEAD_BYTES {
        Err(HeadError::TooLarge)
    } else {
        Ok(false)
    }
}

/// Drops the empty lines (`\r\n` or a bare `\n`) at the start of `buf` but the last, which
/// a server ignores before a request line (RFC 9112 §2.2; httparse skips them too), and
/// returns the length of the one kept (0 when there is none). One is kept so that what
/// follows is never taken for the connection's first bytes (an HTTP/2 preface is only
/// that), and `*scanned` moves back with what was dropped. Each byte is looked at once
/// however the lines arrive, and a stream of them does not fill the buffer: the head's
/// timeout ends it.
fn drop_empty_lines(buf: &mut BytesMut, scanned: &mut usize) -> usize {
    let (mut at, mut last) = (0, None);
    loop {
        let line = match buf.get(at..at + 2) {
            Some([b'\r', b'\n']) => 2,
            _ if buf.get(at) == Some(&b'\n') => 1,
            _ => break,
        };
        last = Some((at, line));
        at += line;
    }
    let Some((start, line)) = last else {
        return 0;
    };
    if start > 0 {
        buf.advance(start);
        *scanned = scanned.saturating_sub(start);
    }
    line
}

/// The request head at the start of `buf`, split off it; `None` while it is incomplete.
/// `first` is the connection's first request (the only place HTTP/2's preface may be).
pub fn parse_request(
    buf: &mut BytesMut,
    scanned: &mut usize,
    first: bool,
) -> Result<Option<RequestHead>, HeadError> {
    if first && buf.starts_with(b"PRI * HTTP/2.0") {
        return Err(HeadError::Http2Preface);
    }
    let lead = drop_empty_lines(buf, scanned);
    if !head_complete_within_limit(buf, scanned, lead)? {
        return Ok(None);
    }
    let parsed = parse_whole_request(buf)?;
    if parsed.is_some() {
        *scanned = 0;
    }
    Ok(parsed)
}

/// [`parse_request`] once `buf` holds a whole head.
fn parse_whole_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        // Not expected: the blank line found is past the request line's start (see
        // `head_complete`); were it not, more is to come.
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        // Off the common path: httparse takes only 1.0 and 1.1.
        Err(httparse::Error::Version) => return parse_other_version(buf),
        Err(error) => return Err(malformed(error, buf)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("bad method".into()))?;
    let target = span(base, target.as_bytes());
    let spans = request
        .headers
        .iter()
        .map(|h| (span(base, h.name.as_bytes()), span(base, h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    let request = RequestHead {
        method,
        target,
        http10: version == 0,
        fields: Fields::from_spans(head.clone(), spans),
        head,
    };
    check_target_and_host(&request)?;
    Ok(Some(request))
}

/// A request line whose version httparse refused. RFC 9112 §2.3: a server that speaks 1.1
/// serves a request of a higher 1.x minor version (`HTTP/1.2` ... `HTTP/1.9`) as 1.1, so its
/// digit is made a 1 and the head parsed again (one more parse at most: the version is then
/// 1.1). A higher major version (`HTTP/2.0`, `HTTP/3.0`) is not spoken in this form: 505.
/// Anything else (a space in the target, `HTTP/1.10`) stays malformed.
fn parse_other_version(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let (at, version) = request_line_version(buf);
    match *version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            buf[at + 7] = b'1';
            parse_whole_request(buf)
        }
        [b'H', b'T', b'T', b'P', b'/', b'2'..=b'9', b'.', b'0'..=b'9'] => Err(
            HeadError::VersionNotSupported(String::from_utf8_lossy(version).into_owned()),
        ),
        _ => Err(HeadError::Malformed(httparse::Error::Version.to_string())),
    }
}

/// Where the request line's last word (its version) starts in `buf`, and that word; empty
/// lines before the request line are skipped, as httparse skips them.
fn request_line_version(buf: &[u8]) -> (usize, &[u8]) {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let word = memchr::memrchr(b' ', line).map_or(0, |space| space + 1);
    (start + word, &line[word..])
}

/// RFC 9112 §3.2: an HTTP/1.1 request must have exactly one `Host`, and a server must answer
/// 400 to one without, with two, or with one that is not a host; an HTTP/1.0 request may
/// have none. A `#fragment` is never part of a request target (RFC 9112 §3.2): a client that
/// sends one would have it go upstream percent-encoded as part of the path. A target is a
/// path (origin form) or a URL (absolute form), or `*` for a server-wide `OPTIONS` (§3.2.4):
/// anything else (`POST *`, `POST chat/completions`) was read as a path after `/v1` and
/// proxied, `*` to `<base>/*` with the provider's key.
fn check_target_and_host(request: &RequestHead) -> Result<(), HeadError> {
    let target = request.target();
    if target.contains('#') {
        return Err(HeadError::Malformed(
            "the request target holds a '#' fragment".into(),
        ));
    }
    if !target.contains("://") {
        if let Some(why) = target_form_error(target, &request.method) {
            return Err(HeadError::Malformed(why.into()));
        }
    }
    let mut hosts = request.fields.get_all("host");
    match (hosts.next(), hosts.next()) {
        (None, _) if request.http10 => Ok(()),
        (None, _) => Err(HeadError::Malformed(
            "an HTTP/1.1 request without a Host header field".into(),
        )),
        (Some(_), Some(_)) => Err(HeadError::Malformed(
            "more than one Host header field".into(),
        )),
        (Some(host), None) if host.iter().all(|&b| is_host_byte(b)) && host_then_port(host) => {
            Ok(())
        }
        (Some(_), None) => Err(HeadError::Malformed(
            "the Host header field is not a host[:port]".into(),
        )),
    }
}

/// Why a request target that is no URL cannot be served: it is not a path, or it is `*`
/// for a method other than `OPTIONS`. An HTTP/2 request's `:path` takes the same rule (a
/// `CONNECT`, which has none, is not a path either), so both get the same 400.
pub fn target_form_error(target: &str, method: &http::Method) -> Option<&'static str> {
    match target {
        _ if target.starts_with('/') => None,
        "*" if method == http::Method::OPTIONS => None,
        "*" => Some(
            "the request target \"*\" is only for OPTIONS (RFC 9112 §3.2.4); send a path, \
             e.g. /v1/chat/completions",
        ),
        _ => Some(
            "the request target is not a path: send one that starts with /, \
             e.g. /v1/chat/completions",
        ),
    }
}

/// A byte of RFC 3986's `host [ ":" port ]`: a registered name (unreserved, sub-delims,
/// percent-encoding), an IP literal's brackets and colons, the port's digits. An empty
/// `Host` is allowed: RFC 9110 §7.2 has clients send one for a target without authority.
fn is_host_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&byte)
}

/// Whether a `Host` of host bytes ([`is_host_byte`]) is shaped as RFC 3986's
/// `host [ ":" port ]`: brackets only around an IP literal at the start, closed, and after
/// the host nothing but a colon and the port's digits (`[::1]:8000`, `router.example:80`).
/// `[::1`, `a]b` or `router.example:abc` would otherwise pass, since each byte alone may
/// appear.
fn host_then_port(host: &[u8]) -> bool {
    let Some(literal) = host.strip_prefix(b"[") else {
        if host.contains(&b'[') || host.contains(&b']') {
            return false;
        }
        // A registered name or IPv4 address holds no colon: the first one starts the port.
        return match memchr::memchr(b':', host) {
            None => true,
            Some(colon) => host[colon + 1..].iter().all(u8::is_ascii_digit),
        };
    };
    let Some(end) = literal.iter().position(|&b| b == b']') else {
        return false;
    };
    if literal[..end].contains(&b'[') {
        return false;
    }
    match &literal[end + 1..] {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The response head at the start of `buf`, split off it; `None` while it is incomplete.
pub fn parse_response(
    buf: &mut BytesMut,
    scanned: &mut usize,
) -> Result<Option<ResponseHead>, HeadError> {
    if !head_complete_within_limit(buf, scanned, 0)? {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyResponseFields),
        Err(error) => return Err(malformed(error, buf)),
    };
    // A head that arrived whole in one read is over the limit as much as one still coming
    // (before, one that did was relayed, or not, by how the reads fell).
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err(HeadError::Malformed("incomplete status line".into()));
    };
    let spans = response
        .headers
        .iter()
        .map(|h| (span(base, h.name.as_bytes()), span(base, h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    *scanned = 0;
    Ok(Some(ResponseHead {
        status,
        http10: version == 0,
        fields: Fields::from_spans(head, spans),
    }))
}

/// Why httparse refused the whole head `buf` starts with. A folded field line (obs-fold: a
/// line that starts with a space or tab, continuing the field above it) is named as such:
/// httparse calls it an invalid header name, which sent the reader looking for a bad name.
fn malformed(error: httparse::Error, buf: &[u8]) -> HeadError {
    // The field lines: after the start line, up to the empty line that ends the head.
    let folded = buf
        .split(|&b| b == b'\n')
        .skip(1)
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .any(|line| line.starts_with(b" ") || line.starts_with(b"\t"));
    if error == httparse::Error::HeaderName && folded {
        return HeadError::Malformed(
            "a folded header line, obs-fold: a line starting with a space or tab that \
             continues the field above it, which HTTP/1.1 messages may not use, RFC 9112 §5.2"
                .into(),
        );
    }
    HeadError::Malformed(error.to_string())
}

/// Where `part` (a slice of the buffer starting at address `base`) sits in it.
fn span(base: usize, part: &[u8]) -> Range<u32> {
    let start = (part.as_ptr() as usize).wrapping_sub(base);
    // Heads are at most MAX_HEAD_BYTES long.
    let start = u32::try_from(start).unwrap_or(u32::MAX);
    start..start.saturating_add(u32::try_from(part.len()).unwrap_or(u32::MAX))
}

/// Appends `HTTP/1.1 <code> <reason>\r\n`.
pub fn write_status_line(out: &mut BytesMut, status: http::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub fn write_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    // Every source of fields (httparse, HeaderValue, the config) has already refused line
    // breaks in values; a header written here can never start another.
    debug_assert!(!value.iter().any(|b| *b == b'\r' || *b == b'\n'));
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `date: <now, IMF-fixdate>\r\n`, formatted once a second per thread (hyper sent one
/// on every answer; RFC 9110 §6.6.1 asks it of origin servers with a clock).
pub fn write_date(out: &mut BytesMut) {
    write_date_at(out, std::time::SystemTime::now());
}

/// The first second of the year 10000, which an IMF-fixdate cannot write.
const YEAR_10000: u64 = 253_402_300_800;

/// [`write_date`] at `now`.
fn write_date_at(out: &mut BytesMut, now: std::time::SystemTime) {
    if let Some(date) = date_at(now) {
        write_field(out, b"date", &date);
    }
}

/// The `date` value for an answer made now (hyper's own, which HTTP/2 answers had, is off:
/// see [`date_at`]).
pub fn date_now() -> Option<[u8; 29]> {
    date_at(std::time::SystemTime::now())
}

/// `now` as an IMF-fixdate, formatted once a second per thread. A clock set before 1970 or
/// past the year 9999 (a VM without an RTC, a test harness) gives none: the RFC asks a
/// `date` field only of a server with a usable clock, and the formatter panics on such
/// times, which took every answer the router makes itself (`/health`, its errors) down with
/// it, and hyper's HTTP/2 connections too.
fn date_at(now: std::time::SystemTime) -> Option<[u8; 29]> {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const {
            std::cell::Cell::new((u64::MAX, [0; 29]))
        };
    }
    let second = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    if second >= YEAR_10000 {
        return None;
    }
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return Some(text);
        }
        let fresh: [u8; 29] = httpdate::fmt_http_date(now).as_bytes().try_into().ok()?;
        cached.set((second, fresh));
        Some(fresh)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock outside what an IMF-fixdate can write gives no `date` field, never a panic.
    #[test]
    fn a_clock_before_1970_or_past_9999_writes_no_date() {
        use std::time::{Duration, UNIX_EPOCH};
        for now in [
            UNIX_EPOCH - Duration::from_secs(43_200),
            UNIX_EPOCH + Duration::from_secs(super::YEAR_10000),
        ] {
            let mut out = bytes::BytesMut::new();
            super::write_date_at(&mut out, now);
            assert!(out.is_empty(), "{out:?}");
        }
        let mut out = bytes::BytesMut::new();
        super::write_date_at(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(super::YEAR_10000 - 1),
        );
        assert_eq!(&out[..], b"date: Fri, 31 Dec 9999 23:59:59 GMT\r\n");
    }

    fn request(text: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(text);
        let mut scanned = 0;
        parse_request(&mut buf, &mut scanned, true)
    }

    #[test]
    fn a_request_head_is_split_off_with_its_fields() {
        let mut buf = BytesMut::from(
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\n{}",
        );
        let mut scanned = 0;
        let head = parse_request(&mut buf, &mut scanned, true)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.path_and_query(), ("/v1/chat/completions", Some("a=1")));
        assert_eq!(head.fields.get("content-length"), Some(&b"2"[..]));
        assert!(head.keep_alive() && !head.http10);
        assert_eq!(&buf[..], b"{}", "the body stays in the buffer");
    }

    /// A WebSocket upgrade needs `websocket` among the `Upgrade` protocols and `upgrade`
    /// among the `Connection` options, over HTTP/1.1; `h2c` is not one.
    #[test]
    fn a_websocket_upgrade_is_told_apart() {
        let asks = |version: &str, fields: &str| {
            let text = format!("GET /v1/realtime?model=m {version}\r\nHost: r\r\n{fields}\r\n");
            request(&text)
                .expect("valid")
                .expect("complete")
                .asks_for_websocket()
        };
        let yes = [
            "Upgrade: websocket\r\nConnection: Upgrade\r\n",
            "Upgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n",
            "upgrade: foo, websocket/13\r\nconnection: close\r\nConnection: UPGRADE\r\n",
            "Upgrade: h2c\r\nUpgrade:  websocket \r\nConnection: Upgrade, HTTP2-Settings\r\n",
        ];
        for fields in yes {
            assert!(asks("HTTP/1.1", fields), "{fields:?}");
        }
        let no = [
            "",
            "Upgrade: websocket\r\n",
            "Upgrade: websocket\r\nConnection: keep-alive\r\n",
            "Connection: Upgrade\r\n",
            "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            "Upgrade: websockets\r\nConnection: Upgrade\r\n",
        ];
        for fields in no {
            assert!(!asks("HTTP/1.1", fields), "{fields:?}");
        }
        assert!(!asks(
            "HTTP/1.0",
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        ));
    }

    #[test]
    fn a_head_arriving_in_pieces_is_found_once_whole() {
        let text = b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        for (i, byte) in text.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let parsed = parse_request(&mut buf, &mut scanned, true).expect("valid");
            assert_eq!(parsed.is_some(), i + 1 == text.len(), "at byte {i}");
            if let Some(head) = parsed {
                assert!(head.http10 && head.keep_alive());
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn targets_in_absolute_form_keep_path_and_query() {
        let head = request(
            "POST http://router:8000/v1/embeddings?x=1 HTTP/1.1\r\nHost: router:8000\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.path_and_query(), ("/v1/embeddings", Some("x=1")));
        let head = request("POST http://router:8000 HTTP/1.1\r\nHost: router:8000\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.path_and_query(), ("/", None));
    }

    #[test]
    fn bad_heads_are_named() {
        assert_eq!(
            request("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").map(|h| h.is_some()),
            Err(HeadError::Http2Preface)
        );
        assert!(matches!(
            request("POST /x HTTP/1.1\r\nbad header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        for bad in [
            "POST /x HTTP/1.1\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a b\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "POST /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST chat/completions HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(request(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        for good in [
            "POST /x HTTP/1.0\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost:\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
            "POST /x HTTP/1.1\r\nhost: router.example:80\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST http://a/v1/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(request(good), Ok(Some(_))), "{good:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            request(&format!("GET / HTTP/1.1\r\n{many}\r\n")).map(|h| h.is_some()),
            Err(HeadError::TooManyFields)
        );
        let huge = format!("GET / HTTP/1.1\r\nx: {}", "v".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            request(&huge).map(|h| h.is_some()),
            Err(HeadError::TooLarge)
        );
    }

    /// RFC 9112 §2.3: a higher 1.x minor version is served as 1.1; another major version is
    /// named, for a 505; anything else stays malformed.
    #[test]
    fn other_versions_in_a_request_line() {
        for served in ["HTTP/1.2", "HTTP/1.9"] {
            let head = request(&format!("\r\nGET /x {served}\r\nHost: a\r\n\r\n"))
                .expect("served")
                .expect("complete");
            assert!(!head.http10 && head.keep_alive(), "{served}");
            assert_eq!(head.fields.get("host"), Some(&b"a"[..]));
        }
        for refused in ["HTTP/2.0", "HTTP/3.0"] {
            assert_eq!(
                request(&format!("GET /x {refused}\r\nHost: a\r\n\r\n")).map(|h| h.is_some()),
                Err(HeadError::VersionNotSupported(refused.into()))
            );
        }
        for malformed in ["HTTP/1.10", "HTTP/1.x", "HTTP/0.9", "http/1.2", "HTTP/2"] {
            assert!(
                matches!(
                    request(&format!("GET /x {malformed}\r\nHost: a\r\n\r\n")),
                    Err(HeadError::Malformed(_))
                ),
                "{malformed}"
            );
        }
        // A space in the target is not a version to serve, whatever follows it.
        assert!(matches!(
            request("GET /a b HTTP/1.2\r\nHost: a\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    /// What [`parse_request`] makes of `text` arriving in `pieces` (as the server reads: a
    /// parse after each read), as text to compare.
    fn read_in_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> String {
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        for piece in pieces {
            buf.extend_from_slice(piece);
            match parse_request(&mut buf, &mut scanned, true) {
                Ok(None) => {}
                Ok(Some(head)) => return format!("{} {}", head.method, head.target()),
                Err(error) => return format!("{error:?}"),
            }
        }
        "incomplete".to_owned()
    }

    /// Empty lines before a request line, then anything: the same outcome whether the bytes
    /// come in one read, a byte at a time, or in two reads split anywhere. A request line cut
    /// after `HTTP/2` was parsed, the empty lines taken for a head's end: 400, not 505.
    #[test]
    fn empty_lines_then_anything_read_the_same_however_split() {
        for text in [
            "\r\n\r\nGET /x HTTP/2.0\r\nHost: a\r\n\r\n",
            "\n\nGET /x HTTP/3.0\r\nHost: a\r\n\r\n",
            "\r\n\n\r\nGET /x HTTP/1.2\r\nHost: a\r\n\r\n",
            "\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\n\r\nGET /x HTTP/2.0garbage\r\n\r\n",
            "\r\n\r\nxyz \x01 HTTP/2.0\r\n\r\n",
            "\r\n\r\nG\r\nET /x HTTP/2.0\r\n\r\n",
            "\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\r\n\r\n\rGET /x HTTP/1.1\r\n\r\n",
        ] {
            let bytes = text.as_bytes();
            let whole = read_in_pieces([bytes]);
            assert_ne!(whole, "incomplete", "{text:?}");
            assert_eq!(
                read_in_pieces(bytes.chunks(1)),
                whole,
                "{text:?} byte by byte"
            );
            for split in 1..bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(read_in_pieces([a, b]), whole, "{text:?} split at {split}");
            }
        }
        // Empty lines alone are no head, however many; the head's timeout ends them.
        let many = "\r\n".repeat(MAX_HEAD_BYTES);
        assert_eq!(read_in_pieces([many.as_bytes()]), "incomplete");
        assert_eq!(
            read_in_pieces(
                many.as_bytes()
                    .chunks(4096)
                    .chain([&b"GET /x HTTP/2.0\r\n\r\n"[..]])
            ),
            "VersionNotSupported(\"HTTP/2.0\")"
        );
    }

    /// An answer's head takes up to [`MAX_RESPONSE_FIELDS`] fields, more than a request's.
    #[test]
    fn answer_heads_take_more_fields_than_requests() {
        let fields = |n: usize| -> String { (0..n).map(|i| format!("x-{i}: v\r\n")).collect() };
        let mut buf = BytesMut::from(
            format!("HTTP/1.1 200 OK\r\n{}\r\n", fields(MAX_RESPONSE_FIELDS)).as_str(),
        );
        let head = parse_response(&mut buf, &mut 0)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.fields.len(), MAX_RESPONSE_FIELDS);
        let mut buf = BytesMut::from(
            format!("HTTP/1.1 200 OK\r\n{}\r\n", fields(MAX_RESPONSE_FIELDS + 1)).as_str(),
        );
        assert_eq!(
            parse_response(&mut buf, &mut 0).map(|h| h.is_some()),
            Err(HeadError::TooManyResponseFields)
        );
    }

    /// An IP literal's brackets close, with nothing after but `:port`, and a port is digits:
    /// each byte of `[::1` or `example:abc` may appear in a Host, so a check of bytes alone
    /// let them through.
    #[test]
    fn a_host_ip_literal_closes_its_bracket_and_a_port_is_digits() {
        for bad in [
            "[::1",
            "[::1]x",
            "[::1]:80]",
            "[::1]:8a",
            "[[::1]]",
            "a]b",
            "a[::1]",
            "]",
            "router.example:abc",
            "router.example:80:80",
            "a:b:c",
            "::1",
        ] {
            let text = format!("GET /x HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(
                matches!(request(&text), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        for good in [
            "[::1]",
            "[::1]:8000",
            "[::1]:",
            "127.0.0.1:80",
            "router.example",
            "router.example:",
        ] {
            let text = format!("GET /x HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(matches!(request(&text), Ok(Some(_))), "{good:?}");
        }
    }

    /// A response head over the limit is refused whether it came in one read or in many.
    #[test]
    fn a_response_head_over_the_limit_is_refused_however_it_arrives() {
        let huge = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\n\r\nbody",
            "v".repeat(MAX_HEAD_BYTES)
        );
        let mut whole = BytesMut::from(huge.as_str());
        assert_eq!(
            parse_response(&mut whole, &mut 0).map(|h| h.is_some()),
            Err(HeadError::TooLarge)
        );
        let mut piecewise = BytesMut::new();
        let mut scanned = 0;
        let mut outcome = Ok(false);
        for piece in huge.as_bytes().chunks(64 * 1024) {
            piecewise.extend_from_slice(piece);
            outcome = parse_response(&mut piecewise, &mut scanned).map(|h| h.is_some());
            if outcome != Ok(false) {
                break;
            }
        }
        assert_eq!(outcome, Err(HeadError::TooLarge));
    }

    #[test]
    fn response_heads_and_status_lines() {
        let mut buf =
            BytesMut::from("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\nrest");
        let mut scanned = 0;
        let head = parse_response(&mut buf, &mut scanned)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, 429);
        assert_eq!(head.fields.get("retry-after"), Some(&b"3"[..]));
        assert_eq!(&buf[..], b"rest");
        for fold in [" b", "\tb"] {
            let mut buf =
                BytesMut::from(format!("HTTP/1.1 200 OK\r\nX-F: a\r\n{fold}\r\n\r\n").as_str());
            let error = parse_response(&mut buf, &mut 0).expect_err("folded");
            assert!(error.to_string().contains("obs-fold"), "{error}");
        }
        let error =
            request("POST /x HTTP/1.1\r\nHost: a\r\nX-F: a\r\n b\r\n\r\n").expect_err("folded");
        assert!(error.to_string().contains("obs-fold"), "{error}");
        let mut out = BytesMut::new();
        write_status_line(&mut out, http::StatusCode::BAD_GATEWAY);
        write_date(&mut out);
        let text = String::from_utf8(out.to_vec()).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 502 Bad Gateway\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n"), "{text}");
    }
}
