//! The router's own HTTP/1.1, driven over raw sockets: pipelining, chunked request bodies,
//! `Expect: 100-continue`, framing it must refuse, HTTP/1.0 clients, heads it cannot take,
//! a client that leaves early, and HTTP/2 with prior knowledge (handed to hyper).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmsrouter::record::Outcome;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::upstream::{Behavior, MockUpstream, chat_completion, expected_stream};
use crate::support::{TestRouter, h2c_client, one_server_config, wait_until};

/// One answer as it came off the wire.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Names lower-cased, in order.
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A raw client connection that reads answers with its own small HTTP/1 reader (not the
/// router's), so a framing mistake on either side cannot hide the other's.
pub(crate) struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at end of file.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the router answered within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn take_line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..at].to_vec()).expect("ascii line");
                self.buf.drain(..at + 2);
                return line;
            }
            assert!(self.fill().await, "closed in the middle of a line");
        }
    }

    async fn take_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed in the middle of a body");
        }
        self.buf.drain(..n).collect()
    }

    /// The next answer, skipping none: a `100 Continue` is returned like any other.
    pub(crate) async fn answer(&mut self) -> Answer {
        let mut answer = self.answer_head().await;
        if answer.status == 100 || answer.status == 204 || answer.status == 304 {
            return answer;
        }
        self.read_body(&mut answer).await;
        answer
    }

    /// The next answer's status line and header fields only, as to a HEAD request.
    pub(crate) async fn answer_head(&mut self) -> Answer {
        let status_line = self.take_line().await;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Answer {
            status,
            headers,
            body: Vec::new(),
        }
    }

    pub(crate) async fn read_body(&mut self, answer: &mut Answer) {
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.take_line().await, 16).expect("chunk size");
                if size == 0 {
                    assert_eq!(self.take_line().await, "", "no trailers");
                    break;
                }
                let data = self.take_exact(size).await;
                answer.body.extend_from_slice(&data);
                assert_eq!(self.take_line().await, "", "CRLF after a chunk");
            }
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("length");
            answer.body = self.take_exact(length).await;
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
    }

    /// At least `n` bytes of what came after the head, read but not taken: a later
    /// [`Self::read_body`] still reads them.
    pub(crate) async fn peek_at_least(&mut self, n: usize) -> &[u8] {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed before {n} bytes came");
        }
        &self.buf
    }

    /// Whether the router closed the connection (end of file with nothing more).
    pub(crate) async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

pub(crate) fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

pub(crate) const CHAT: &str =
    r#"{"model":"[mock]gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

async fn setup() -> (MockUpstream, TestRouter) {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    (upstream, router)
}

/// A router before an upstream that holds every answer's head until the gate is opened.
async fn held_upstream() -> (Arc<tokio::sync::Semaphore>, MockUpstream, TestRouter) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        hold_head: Some(gate.clone()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    (gate, upstream, router)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let mut wire = post("/v1/chat/completions", CHAT, "");
    wire.push_str("GET /health HTTP/1.1\r\nHost: router\r\n\r\n");
    wire.push_str(&post("/v1/chat/completions", CHAT, ""));
    raw.send(wire.as_bytes()).await;
    let first = raw.answer().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, chat_completion("mock-model-2024").as_bytes());
    let health = raw.answer().await;
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let third = raw.answer().await;
    assert_eq!(third.status, 200);
    assert_ne!(
        first.header("x-llmsrouter-request-id"),
        third.header("x-llmsrouter-request-id")
    );
    assert_eq!(upstream.count(), 2);
    router.stop().await;
}

/// A client that pipelined more than the router keeps (64 KiB) behind a request whose
/// upstream is still silent, then left: its request is dropped at once and recorded as a
/// disconnect (the router read no further than it keeps, and did not see the close: the
/// upstream's answer came to a gone client and was recorded a success; bb62).
#[tokio::test]
async fn a_client_leaving_behind_a_long_pipeline_is_seen_to_leave() {
    let (gate, upstream, router) = held_upstream().await;
    let mut raw = Raw::connect(router.addr).await;
    let filler = "x".repeat(70 * 1024);
    let mut wire = post("/v1/chat/completions", CHAT, "");
    wire.push_str(&format!(
        "GET /health HTTP/1.1\r\nHost: router\r\nX-Filler: {filler}\r\n\r\n"
    ));
    raw.send(wire.as_bytes()).await;
    crate::support::wait_until(Duration::from_secs(10), || upstream.count() == 1).await;
    drop(raw);
    let record = tokio::time::timeout(Duration::from_secs(10), router.records.nth(1))
        .await
        .expect("recorded while the upstream is still silent");
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    gate.add_permits(1);
    router.stop().await;
}

/// A request pipelined behind one whose upstream is still silent, larger than the router
/// keeps meanwhile (64 KiB), is answered once the first is: the bytes left in the kernel are
/// read then, with nothing more from the client to wake the socket (it waited for the client
/// to send another byte, or to leave: bb68).
#[tokio::test]
async fn a_long_pipelined_request_is_answered_without_more_from_the_client() {
    let (gate, upstream, router) = held_upstream().await;
    let mut raw = Raw::connect(router.addr).await;
    let client = raw.stream.local_addr().expect("client address");
    let long = format!(
        r#"{{"model":"[mock]gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(200 * 1024)
    );
    let mut wire = post("/v1/chat/completions", CHAT, "");
    wire.push_str(&post("/v1/chat/completions", &long, ""));
    raw.send(wire.as_bytes()).await;
    wait_until(Duration::from_secs(10), || upstream.count() == 1).await;
    // The router stopped reading with bytes still in its socket: the case at hand.
    wait_until(Duration::from_secs(10), || {
        unread_by_router(router.addr, client) > 0
    })
    .await;
    gate.add_permits(1);
    for _ in 0..2 {
        let answer = raw.answer().await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.last().body.len(), long.len() - "[mock]".len());
    router.stop().await;
}

/// Bytes waiting in the kernel for the router's end of the connection from `client`, from
/// `/proc/net/tcp` (its `rx_queue`); 0 when the connection is not found.
fn unread_by_router(router: SocketAddr, client: SocketAddr) -> u64 {
    tcp_queues(router, client).1
}

/// The `tx_queue` and `rx_queue` of the socket at `local` connected to `remote`, from
/// `/proc/net/tcp` (a socket its program closed is listed while it still has bytes to send);
/// zeros when it is not found.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> (u64, u64) {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let queue = |hex: &str| u64::from_str_radix(hex, 16).unwrap_or(0);
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() > 4 && fields[1] == local && fields[2] == remote)
        .and_then(|fields| {
            fields[4]
                .split_once(':')
                .map(|(tx, rx)| (queue(tx), queue(rx)))
        })
        .unwrap_or((0, 0))
}

/// A client that pipelined a request behind one whose upstream is still silent, and so much
/// after it that its close waits behind bytes the router has not read (in the client's own
/// send buffer), then closed the connection: once the first request is answered (the
/// client's system resets the connection in reply), the request pipelined behind it, already
/// read, is recorded as a disconnect and never sent upstream. It went upstream and was
/// cancelled at once: a generation started, and perhaps billed, for a client that was gone.
/// A client that resets the connection instead is seen to leave at once, as one whose close
/// is not held back: its first request is dropped, and nothing behind it is read.
#[tokio::test]
async fn a_request_pipelined_by_a_client_that_left_is_not_sent_upstream() {
    for reset in [false, true] {
        let (gate, upstream, router) = held_upstream().await;
        let stream = TcpStream::connect(router.addr).await.expect("connect");
        let client = stream.local_addr().expect("client address");
        if reset {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
        }
        let mut wire = post("/v1/chat/completions", CHAT, "");
        wire.push_str(&post("/v1/chat/completions", CHAT, ""));
        // A third request, never whole: its body fills the router's socket, then the client's.
        wire.push_str(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        );
        let writer = tokio::spawn(async move {
            let mut stream = stream;
            stream.write_all(wire.as_bytes()).await.expect("write");
            let filler = vec![b' '; 16 * 1024];
            while stream.write_all(&filler).await.is_ok() {}
        });
        wait_until(Duration::from_secs(10), || upstream.count() == 1).await;
        // The router stopped reading, and the client's own buffer holds what it could not
        // send.
        wait_until(Duration::from_secs(10), || {
            unread_by_router(router.addr, client) > 0 && tcp_queues(client, router.addr).0 > 0
        })
        .await;
        writer.abort();
        assert!(
            writer.await.is_err_and(|e| e.is_cancelled()),
            "still writing"
        );
        let records = Arc::clone(&router.records);
        if reset {
            let first = records.nth(1).await;
            assert_eq!(first.outcome, Outcome::ClientDisconnected);
            gate.add_permits(1);
        } else {
            // Closed, its end of file behind bytes it could not send: the case at hand.
            assert!(
                tcp_queues(client, router.addr).0 > 0,
                "the close waits unsent"
            );
            gate.add_permits(1);
            let first = records.nth(1).await;
            assert_eq!(first.outcome, Outcome::Success, "{:?}", first.error);
            let second = records.nth(2).await;
            assert_eq!(second.outcome, Outcome::ClientDisconnected);
            assert_eq!(
                second.error.as_deref(),
                Some("client disconnected before the request was sent upstream")
            );
            assert_eq!(second.status, None);
        }
        router.stop().await;
        assert_eq!(
            upstream.count(),
            1,
            "nothing after the first request went upstream"
        );
        assert_eq!(
            records.all().len(),
            if reset { 1 } else { 2 },
            "reset: {reset}"
        );
    }
}

#[tokio::test]
async fn a_chunked_request_body_goes_upstream_whole() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let (a, b) = CHAT.split_at(20);
    let wire = format!(
        // The second size and the last padded with zeros past 16 digits, as RFC 9112 allows.
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:020x}\r\n{b}\r\n00000000000000000000\r\nx-trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    raw.send(wire.as_bytes()).await;
    let answer = raw.answer().await;
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let got = upstream.last();
    assert_eq!(got.body, CHAT.replace("[mock]gpt-4o", "gpt-4o").as_bytes());
    assert_eq!(got.headers["content-length"], got.body.len().to_string());
    assert!(got.headers.get("transfer-encoding").is_none());
    // The connection carries another request.
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(raw.answer().await.status, 200);
    router.stop().await;
}

#[tokio::test]
async fn expect_continue_gets_a_go_ahead_or_a_413_at_once() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        CHAT.len()
    );
    raw.send(head.as_bytes()).await;
    assert_eq!(raw.answer().await.status, 100);
    raw.send(CHAT.as_bytes()).await;
    assert_eq!(raw.answer().await.status, 200);
    assert_eq!(upstream.count(), 1);
    assert!(
        upstream.last().headers.get("expect").is_none(),
        "Expect is the router's to answer"
    );

    // Declared over the limit (64 MiB by default): refused without a go-ahead.
    let mut raw = Raw::connect(router.addr).await;
    raw.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let refused = raw.answer().await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.json()["error"]["code"], "body_too_large");
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(raw.closed().await);
    assert_eq!(upstream.count(), 1);
    router.stop().await;
}

/// A request the router only refuses by its method (or path) is answered without its body
/// being asked for: no go-ahead, and the connection closes after the 405, since the body
/// may still come. One whose body came whole is read and dropped, and the connection
/// carries the next request.
#[tokio::test]
async fn a_refused_method_gets_no_go_ahead_and_its_body_is_dropped() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(
        b"PUT /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let refused = raw.answer().await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("POST"));
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(raw.closed().await);

    let mut raw = Raw::connect(router.addr).await;
    let put = post("/v1/models", CHAT, "").replacen("POST", "PUT", 1);
    raw.send(put.as_bytes()).await;
    let refused = raw.answer().await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(
        raw.answer().await.status,
        200,
        "the body was read and dropped"
    );
    assert_eq!(upstream.count(), 1);
    router.stop().await;
}

/// A body declared longer than the router drops (64 MiB) is not read for a refusal of an
/// unread body: a method no route takes (405), a path nothing serves (404) or a key nobody
/// has (401) is answered at once and the connection closed. Before, the router spent its 5 s
/// of dropping on a body it could never drop whole before it answered.
#[tokio::test]
async fn a_refusal_of_a_body_declared_past_what_is_dropped_goes_out_at_once() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = one_server_config(&upstream.url(), "");
    let open = TestRouter::start(&config).await;
    let keyed = TestRouter::start_with(&config, |state| {
        state.keys = Some(Arc::new(crate::errors::NobodysKey));
    })
    .await;
    let key = "Authorization: Bearer sk-lr-nobodys00000000000000000000000000\r\n";
    let refusals = [
        (&open, "PUT", "/v1/chat/completions", "", 405),
        (&open, "POST", "/health", "", 405),
        (&open, "POST", "/v1/", "", 404),
        (&open, "PUT", "/api/user/bypass", "", 404),
        // Refused by the proxied route, then by the app.
        (&keyed, "POST", "/v1/chat/completions", key, 401),
        (&keyed, "PUT", "/v1/chat/completions", key, 401),
    ];
    for (router, method, path, extra, status) in refusals {
        let what = format!("{method} {path}");
        let mut raw = Raw::connect(router.addr).await;
        raw.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n\
                 Content-Length: 100000000\r\n{extra}\r\n{{\"model\":\"[mock]m\","
            )
            .as_bytes(),
        )
        .await;
        // Well under the 5 s the router spends dropping a body it may drop whole.
        let answer = tokio::time::timeout(Duration::from_secs(3), raw.answer())
            .await
            .unwrap_or_else(|_| panic!("{what}: answered at once"));
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(answer.header("connection"), Some("close"), "{what}");
        assert!(raw.closed().await, "{what}");
    }
    assert_eq!(upstream.count(), 0);
    open.stop().await;
    keyed.stop().await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let (upstream, router) = setup().await;
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Content-Length: five\r\n",
    ] {
        let mut raw = Raw::connect(router.addr).await;
        let wire = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n{framing}\r\n0\r\n\r\nPOST /smuggled HTTP/1.1\r\n\r\n"
        );
        raw.send(wire.as_bytes()).await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 400, "{framing}");
        assert_eq!(answer.json()["error"]["code"], "invalid_request");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(raw.closed().await, "{framing}: the connection must close");
    }
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    router.stop().await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host` that is a host, and a
/// request target never holds a fragment; each is refused with 400 before anything goes
/// upstream. HTTP/1.0 may leave `Host` out, and an empty one is allowed.
#[tokio::test]
async fn a_missing_doubled_or_bad_host_and_a_fragment_are_refused() {
    let (upstream, router) = setup().await;
    let body = CHAT;
    let length = body.len();
    for (line, host) in [
        ("POST /v1/chat/completions HTTP/1.1", ""),
        (
            "POST /v1/chat/completions HTTP/1.1",
            "Host: a\r\nHost: b\r\n",
        ),
        ("POST /v1/chat/completions HTTP/1.1", "Host: a b\r\n"),
        ("POST /v1/chat/completions HTTP/1.1", "Host: evil/x\r\n"),
        (
            "POST /v1/chat/completions#frag HTTP/1.1",
            "Host: router\r\n",
        ),
    ] {
        let mut raw = Raw::connect(router.addr).await;
        let wire = format!(
            "{line}\r\n{host}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
        );
        raw.send(wire.as_bytes()).await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 400, "{line} {host:?}");
        assert_eq!(answer.json()["error"]["code"], "invalid_request");
        assert!(raw.closed().await, "{host:?}: the connection must close");
    }
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    for (version, host) in [("HTTP/1.0", ""), ("HTTP/1.1", "Host:\r\n")] {
        let mut raw = Raw::connect(router.addr).await;
        let wire = format!(
            "POST /v1/chat/completions {version}\r\n{host}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
        );
        raw.send(wire.as_bytes()).await;
        assert_eq!(raw.answer().await.status, 200, "{version} {host:?}");
    }
    assert_eq!(upstream.count(), 2);
    router.stop().await;
}

/// A request target that is not a path is not proxied: `POST *` went upstream as
/// `<base>/*` with the provider's key, and `POST chat/completions` as a path. `*` is only
/// for a server-wide `OPTIONS` (RFC 9112 §3.2.4), which gets 405 as `OPTIONS` does
/// everywhere; the others are malformed (400, the connection closes). Through a
/// `settings.default_server` too, which a `GET` would otherwise reach.
#[tokio::test]
async fn a_target_that_is_not_a_path_is_refused() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    for (method, target) in [
        ("POST", "*"),
        ("GET", "*"),
        ("DELETE", "*"),
        ("POST", "chat/completions"),
        ("POST", "v1/chat/completions"),
    ] {
        let mut raw = Raw::connect(router.addr).await;
        let wire = post(target, CHAT, "").replacen("POST", method, 1);
        raw.send(wire.as_bytes()).await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 400, "{method} {target}");
        let error = answer.json();
        assert_eq!(error["error"]["code"], "invalid_request");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains("request target"), "{message}");
        assert!(
            raw.closed().await,
            "{method} {target}: the connection closes"
        );
    }
    let mut raw = Raw::connect(router.addr).await;
    raw.send(b"OPTIONS * HTTP/1.1\r\nHost: router\r\n\r\n")
        .await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some(""));
    assert_eq!(answer.json()["error"]["code"], "method_not_allowed");
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    router.stop().await;
}

/// Over HTTP/2 a `CONNECT` has no `:path`: it gets HTTP/1's 400 for a target that is not a
/// path, where the app used to look up an empty route (404 "no route"); the connection
/// carries the next request.
#[tokio::test]
async fn an_http2_connect_is_refused_as_a_target_that_is_not_a_path() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    let client = h2c_client();
    let answer = client
        .request(reqwest::Method::CONNECT, router.url("/"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 400);
    let error: serde_json::Value = answer.json().await.expect("JSON error");
    assert_eq!(error["error"]["code"], "invalid_request");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("the request target is not a path"),
        "{message}"
    );
    let health = client
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    router.stop().await;
}

/// A request the router answers itself (the model list, a 405) with a target longer than
/// `http::Uri` takes gets 414 `uri_too_long` in OpenAI's shape, not 400 "not a valid URI"
/// (the head itself is well within its 256 KiB); the connection stays usable.
#[tokio::test]
async fn a_target_too_long_for_the_routers_own_routes_is_414() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let query = "a".repeat(70 * 1024);
    for target in [
        format!("/v1/models?x={query}"),
        format!("/v1/files?x={query}"),
    ] {
        raw.send(format!("GET {target} HTTP/1.1\r\nHost: router\r\n\r\n").as_bytes())
            .await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 414);
        let error = answer.json();
        assert_eq!(error["error"]["code"], "uri_too_long");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains("65534 bytes"), "{message}");
    }
    let fits = format!("/v1/models?x={}", "a".repeat(60 * 1024));
    raw.send(format!("GET {fits} HTTP/1.1\r\nHost: router\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        raw.answer().await.status,
        200,
        "same connection, a target that fits"
    );
    assert_eq!(
        upstream
            .received()
            .iter()
            .filter(|r| r.path != "/v1/models")
            .count(),
        0,
        "nothing but the model list was asked upstream"
    );
    router.stop().await;
}

#[tokio::test]
async fn heads_it_cannot_take_get_openai_shaped_errors() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(b"POST /v1/chat/completions HTTP/1.1\r\nbad header line\r\n\r\n")
        .await;
    let bad = raw.answer().await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "invalid_request");
    assert!(raw.closed().await);

    let mut raw = Raw::connect(router.addr).await;
    let huge = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "v".repeat(300 * 1024)
    );
    raw.send(huge.as_bytes()).await;
    let too_large = raw.answer().await;
    assert_eq!(too_large.status, 431);
    assert_eq!(
        too_large.json()["error"]["code"],
        "request_header_too_large"
    );
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// Over HTTP/2 the same limits hold with the same JSON 431, and a head HTTP/1 takes (20 KB
/// of one field) is taken: hyper's HTTP/2 default refused it with a bare 431 or a reset.
#[tokio::test]
async fn http2_heads_meet_the_http1_limits_and_their_json_431() {
    let (upstream, router) = setup().await;
    let client = h2c_client();
    let send = |headers: Vec<(String, String)>| {
        let mut request = client
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(CHAT);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let big = send(vec![("x-big".into(), "v".repeat(20 * 1024))])
        .await
        .expect("send");
    assert_eq!(big.status(), 200);
    let many: Vec<(String, String)> = (0..105).map(|i| (format!("x-{i}"), "v".into())).collect();
    let huge = vec![("x-huge".into(), "v".repeat(300 * 1024))];
    for headers in [many, huge] {
        let response = send(headers).await.expect("send");
        assert_eq!(response.status(), 431);
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "request_header_too_large");
    }
    assert_eq!(upstream.count(), 1, "only the first reached the upstream");

    // The router's own routes, `/health` first among them, meet the limits too, as over
    // HTTP/1 (where a head is measured before it is routed).
    for path in ["/health", "/v1/health", "/v1/models", "/v1/api/user/bypass"] {
        let mut request = client.get(router.url(path));
        for i in 0..150 {
            request = request.header(format!("x-{i}"), "v");
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 431, "{path}");
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "request_header_too_large", "{path}");
    }
    router.stop().await;
}

#[tokio::test]
async fn http10_clients_get_whole_answers_and_close_delimited_streams() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let wire = post("/v1/chat/completions", CHAT, "Connection: keep-alive\r\n")
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    raw.send(wire.as_bytes()).await;
    let whole = raw.answer().await;
    assert_eq!(whole.status, 200);
    assert!(whole.header("content-length").is_some());
    assert_eq!(
        whole.header("connection"),
        Some("keep-alive"),
        "kept, as asked"
    );

    // `close` wins over `keep-alive` whatever the version (RFC 9112 9.6).
    let wire = post(
        "/v1/chat/completions",
        CHAT,
        "Connection: close, keep-alive\r\n",
    )
    .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let mut closing = Raw::connect(router.addr).await;
    closing.send(wire.as_bytes()).await;
    let last = closing.answer().await;
    assert_eq!(
        (last.status, last.header("connection")),
        (200, Some("close"))
    );
    assert!(closing.closed().await);

    let stream = CHAT.replace("\"messages\"", "\"stream\":true,\"messages\"");
    let wire = post("/v1/chat/completions", &stream, "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    raw.send(wire.as_bytes()).await;
    let streamed = raw.answer().await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.header("transfer-encoding").is_none());
    assert_eq!(streamed.header("connection"), Some("close"));
    assert_eq!(
        String::from_utf8_lossy(&streamed.body),
        expected_stream(&upstream.behavior(), false)
    );

    // A whole chat completion to a stream request goes as its events, framed as a stream:
    // to the close for HTTP/1.0; chunked to HTTP/1.1, the connection kept for the next.
    upstream.set(Behavior {
        never_stream: true,
        ..Default::default()
    });
    let mut old = Raw::connect(router.addr).await;
    old.send(wire.as_bytes()).await;
    let events = old.answer().await;
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert!(events.header("content-length").is_none());
    assert!(events.header("transfer-encoding").is_none());
    assert_eq!(events.header("connection"), Some("close"));
    let body = String::from_utf8_lossy(&events.body).into_owned();
    assert!(body.starts_with("data: {") && body.ends_with("data: [DONE]\n\n"));
    assert!(old.closed().await);
    let mut kept = Raw::connect(router.addr).await;
    kept.send(post("/v1/chat/completions", &stream, "").as_bytes())
        .await;
    let chunked = kept.answer().await;
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert!(chunked.header("content-length").is_none());
    assert_eq!(chunked.header("connection"), None);
    assert_eq!(String::from_utf8_lossy(&chunked.body), body);
    kept.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(kept.answer().await.status, 200, "the connection goes on");
    router.stop().await;
}

/// Over HTTP/2 the router writes the `date` field itself, as over HTTP/1 (hyper's own
/// formatter, off, panicked with a clock before 1970 and took the connection down): one on
/// its own answers and on relayed ones, the upstream's kept.
#[tokio::test]
async fn http2_answers_carry_one_date() {
    let (_upstream, router) = setup().await;
    let client = h2c_client();
    let relayed = client
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("send");
    let own = client
        .post(router.url("/v1/chat/completions"))
        .body(r#"{"model":"[nope]x"}"#)
        .send()
        .await
        .expect("send");
    let health = client
        .get(router.url("/health"))
        .send()
        .await
        .expect("send");
    for (status, answer) in [(200, relayed), (404, own), (200, health)] {
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.status(), status);
        let dates: Vec<_> = answer.headers().get_all("date").iter().collect();
        assert_eq!(dates.len(), 1, "{:?}", answer.headers());
        let date = httpdate::parse_http_date(dates[0].to_str().expect("text")).expect("a date");
        let off = date
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_else(|early| early.duration());
        assert!(off.as_secs() < 60, "{dates:?}");
    }
    router.stop().await;
}

#[tokio::test]
async fn answers_carry_one_date_and_none_of_the_upstreams_framing() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    let relayed = raw.answer().await;
    assert_eq!(relayed.count("date"), 1, "{:?}", relayed.headers);
    assert_eq!(relayed.count("content-length"), 1);
    raw.send(post("/v1/chat/completions", r#"{"model":"[nope]x"}"#, "").as_bytes())
        .await;
    let own = raw.answer().await;
    assert_eq!(own.status, 404);
    assert_eq!(own.count("date"), 1);
    assert_eq!(own.header("content-type"), Some("application/json"));
    // A client that asks to close gets its answer, then the close.
    raw.send(post("/v1/chat/completions", CHAT, "Connection: close\r\n").as_bytes())
        .await;
    let last = raw.answer().await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(raw.closed().await);
    assert_eq!(upstream.count(), 2);
    router.stop().await;
}

/// HEAD on a route that answers GET gets GET's head, its Content-Length included, and no
/// body (the next answer on the connection still reads right); a method a route does not
/// take gets 405 with the `Allow` field naming those it does.
#[tokio::test]
async fn head_gets_the_head_of_get_and_405_says_what_is_allowed() {
    let (_upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    for path in ["/health", "/v1/models", "/metrics"] {
        raw.send(format!("GET {path} HTTP/1.1\r\nHost: router\r\n\r\n").as_bytes())
            .await;
        let get = raw.answer().await;
        raw.send(format!("HEAD {path} HTTP/1.1\r\nHost: router\r\n\r\n").as_bytes())
            .await;
        let head = raw.answer_head().await;
        assert_eq!((get.status, head.status), (200, 200), "{path}");
        let length = get.body.len().to_string();
        assert_eq!(
            head.header("content-length"),
            Some(length.as_str()),
            "{path}"
        );
        assert_eq!(head.header("content-type"), get.header("content-type"));
    }
    let cases = [
        ("PUT", "/v1/models", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/metrics", "GET, HEAD, POST"),
    ];
    for (method, path, allow) in cases {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: router\r\nContent-Length: 0\r\n\r\n");
        raw.send(request.as_bytes()).await;
        let refused = raw.answer().await;
        assert_eq!(refused.status, 405, "{method} {path}");
        assert_eq!(refused.header("allow"), Some(allow), "{method} {path}");
        assert_eq!(refused.json()["error"]["code"], "method_not_allowed");
    }
    router.stop().await;
}

/// What the openai SDKs' Realtime client sends to open its WebSocket.
fn websocket_upgrade(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer sk-client-own-key\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The router's answer to a WebSocket upgrade: 501 `websocket_not_supported` with no request
/// id (it is not proxied), and the connection closed after it.
async fn assert_websocket_refused(raw: &mut Raw, what: &str) {
    let answer = raw.answer().await;
    assert_eq!(answer.status, 501, "{what}: {answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-should-retry"), Some("false"), "{what}");
    let error = answer.json();
    assert_eq!(error["error"]["code"], "websocket_not_supported", "{what}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{what}");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("WebSocket upgrades (the Realtime API) are not proxied"),
        "{message}"
    );
    assert!(
        answer.header("x-llmsrouter-request-id").is_none(),
        "{what}: not proxied, no request id"
    );
    assert_eq!(answer.header("connection"), Some("close"), "{what}");
    assert!(raw.closed().await, "{what}: the connection closes");
}

/// A WebSocket upgrade (the Realtime API's `GET /v1/realtime`) gets 501
/// `websocket_not_supported`, whatever would have routed a plain `GET`: with `?proxy=`, and
/// through `settings.default_server`, it used to go upstream as a plain `GET` with its
/// `Upgrade` stripped (and get the upstream's puzzling 400 or 426); nothing reaches either
/// upstream now, and nothing is recorded, as for a 405.
#[tokio::test]
async fn a_websocket_upgrade_is_refused_and_never_forwarded() {
    let configured = MockUpstream::start(Behavior::default()).await;
    let named = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&configured.url(), "")
    );
    let router = TestRouter::start(&config).await;
    let targets = [
        format!("/v1/realtime?model=gpt-realtime&proxy={}", named.origin()),
        "/v1/realtime?model=gpt-realtime".to_owned(),
    ];
    for target in &targets {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(websocket_upgrade(target).as_bytes()).await;
        assert_websocket_refused(&mut raw, target).await;
    }
    assert_eq!(named.count(), 0, "nothing reached the ?proxy= target");
    assert_eq!(configured.count(), 0, "nothing reached the default server");

    // The next request is recorded, and is the only one.
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(raw.answer().await.status, 200);
    assert_eq!(router.records.nth(1).await.endpoint, "/chat/completions");
    assert_eq!(router.records.all().len(), 1, "the upgrades have no record");
    router.stop().await;
}

/// Without `?proxy=` or `settings.default_server` a WebSocket upgrade used to get a 405 that
/// named the methods of the path, not the upgrade; it gets the 501 too, on any route.
#[tokio::test]
async fn a_websocket_upgrade_with_no_target_is_refused_as_such() {
    let (upstream, router) = setup().await;
    for target in ["/v1/realtime?model=gpt-realtime", "/v1/models", "/health"] {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(websocket_upgrade(target).as_bytes()).await;
        assert_websocket_refused(&mut raw, target).await;
    }
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    router.stop().await;
}

/// An `Upgrade: h2c` (HTTP/2 over cleartext by upgrade, which RFC 9113 deprecated) is not
/// taken: the request is served over HTTP/1.1 as if it had asked for nothing, its upgrade
/// fields not passed on.
#[tokio::test]
async fn an_h2c_upgrade_is_ignored_and_the_request_served() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    let upgrade = "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                   HTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    raw.send(post("/v1/chat/completions", CHAT, upgrade).as_bytes())
        .await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.header("upgrade").is_none());
    let got = upstream.last();
    for field in ["upgrade", "http2-settings"] {
        assert!(got.headers.get(field).is_none(), "{field} went upstream");
    }
    router.stop().await;
}

/// A router error to a `HEAD` (a target too long for a route the router answers itself, a
/// body over `max_body_bytes`) has the head of the error alone: a body after it would be
/// read as the next answer on the connection.
#[tokio::test]
async fn router_errors_to_head_have_no_body() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut raw = Raw::connect(router.addr).await;
    let long = "a".repeat(70_000);
    raw.send(format!("HEAD /v1/models?{long} HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes())
        .await;
    let refused = raw.answer_head().await;
    assert_eq!(refused.status, 414);
    assert!(refused.header("content-length").is_some(), "{refused:?}");
    raw.send(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n").await;
    let next = raw.answer().await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.json()["status"], "ok");
    router.stop().await;

    let router = TestRouter::start(&one_server_config(
        &upstream.url(),
        "settings:\n  max_body_bytes: 100\n",
    ))
    .await;
    let mut raw = Raw::connect(router.addr).await;
    let body = "x".repeat(200);
    raw.send(
        format!("HEAD /v1/models HTTP/1.1\r\nHost: r\r\nContent-Length: 200\r\n\r\n{body}")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw.answer_head().await.status, 413);
    raw.send(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n").await;
    assert_eq!(raw.answer().await.status, 200);
    router.stop().await;
}

#[tokio::test]
async fn absolute_form_targets_are_routed_by_their_path() {
    let (upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("http://router.example/v1/chat/completions?x=1", CHAT, "").as_bytes())
        .await;
    assert_eq!(raw.answer().await.status, 200);
    let got = upstream.last();
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.query.as_deref(), Some("x=1"));
    router.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_is_recorded_as_gone() {
    let upstream = MockUpstream::start(Behavior {
        delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    crate::support::wait_until(Duration::from_secs(10), || upstream.count() == 1).await;
    drop(raw);
    // Long before the upstream's 30 s answer.
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("disconnected"))
    );
    router.stop().await;
}

/// Over HTTP/2 too: a client that reads part of a large whole answer and leaves is recorded
/// as gone, not as an answer delivered the moment hyper buffered it; one that reads it all
/// is a success.
#[tokio::test]
async fn an_http2_client_that_leaves_halfway_through_a_whole_answer_is_recorded_as_gone() {
    let large = format!(
        r#"{{"choices":[{{"message":{{"content":"{}"}}}}]}}"#,
        "x".repeat(20 << 20)
    );
    let upstream = MockUpstream::start(Behavior {
        body: Some(large.clone()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let client = h2c_client();
    let send = || {
        client
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
    };
    let response = send().await.expect("send");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut body = response.bytes_stream();
    let first = futures_util::StreamExt::next(&mut body)
        .await
        .expect("a piece")
        .expect("data");
    assert!(!first.is_empty());
    drop(body);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);

    let whole = send().await.expect("send").bytes().await.expect("body");
    assert_eq!(whole.len(), large.len());
    assert_eq!(router.records.nth(2).await.outcome, Outcome::Success);
    router.stop().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_too() {
    let (upstream, router) = setup().await;
    let client = h2c_client();
    let response = client
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("send over HTTP/2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-llmsrouter-request-id"));
    assert_eq!(
        response.text().await.expect("body"),
        chat_completion("mock-model-2024")
    );
    let health = client
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(upstream.count(), 1);
    // The whole answer was taken: its record is handed over as a success.
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete);
    router.stop().await;
}

/// A raw upstream on a loopback port that reads one request and answers `answer` as is.
async fn raw_upstream(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = socket.write_all(answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn malformed_upstream_answers_are_502_or_a_failed_stream() {
    for (answer, stream) in [
        (&b"garbage, not HTTP\r\n\r\n"[..], false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nab", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", false),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\nzz\r\n",
            true,
        ),
    ] {
        let (addr, upstream) = raw_upstream(answer).await;
        let router = TestRouter::start(&one_server_config(&format!("http://{addr}/v1"), "")).await;
        let body = if stream {
            CHAT.replace("\"messages\"", "\"stream\":true,\"messages\"")
        } else {
            CHAT.to_owned()
        };
        let mut raw = Raw::connect(router.addr).await;
        raw.send(post("/v1/chat/completions", &body, "").as_bytes())
            .await;
        let got = raw.answer().await;
        let text = String::from_utf8_lossy(&got.body).into_owned();
        if stream {
            assert_eq!(got.status, 200);
            assert!(text.starts_with("data: {\"a\":1}\n\n"), "{text}");
            assert!(text.contains("upstream_unreachable"), "{text}");
        } else {
            assert_eq!(got.status, 502, "{:?}: {text}", String::from_utf8_lossy(answer));
            assert_eq!(got.json()["error"]["code"], "upstream_unreachable");
        }
        let record = router.records.nth(1).await;
        assert!(record.outcome.is_error(), "{:?}", record.outcome);
        router.stop().await;
        upstream.abort();
    }
}

/// Large bodies both ways, sent and read in small pieces by a slow peer: nothing is lost or
/// reordered, and the router holds no more than it must.
#[tokio::test]
async fn large_bodies_pass_whole_both_ways_to_slow_peers() {
    let big_answer = format!(
        r#"{{"model":"m","choices":[{{"message":{{"content":"{}"}}}}]}}"#,
        "y".repeat(6 << 20)
    );
    let upstream = MockUpstream::start(Behavior {
        body: Some(big_answer.clone()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let prompt = "x".repeat(5 << 20);
    let body =
        format!(r#"{{"model":"[mock]m","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    let mut raw = Raw::connect(router.addr).await;
    raw.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    for piece in body.as_bytes().chunks(7919) {
        raw.send(format!("{:x}\r\n", piece.len()).as_bytes()).await;
        raw.send(piece).await;
        raw.send(b"\r\n").await;
    }
    raw.send(b"0\r\n\r\n").await;
    // Read the answer in small reads, with pauses the router must wait through.
    let mut read = 0;
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = raw.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed early after {read} bytes");
        all.extend_from_slice(&chunk[..n]);
        read += n;
        // A pause now and then: the router's writes meet a full socket buffer and must
        // wait for room (the behaviour under test, not synchronisation).
        if read % (1 << 20) < 4096 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("a length");
            if all.len() >= end + 4 + length {
                assert_eq!(&all[end + 4..], big_answer.as_bytes());
                break;
            }
        }
    }
    let got = upstream.last();
    assert_eq!(got.body, body.replace("[mock]m", "m").as_bytes());
    router.stop().await;
}

/// Bytes that are not HTTP, or nearly: every one gets an answer or a close, never a hang or
/// a panic, and the router goes on serving.
#[tokio::test]
async fn garbage_never_stops_the_router() {
    let (upstream, router) = setup().await;
    let mut inputs: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab".to_vec(),
        b"\x00\x01\x02\xff\xfe".to_vec(),
        b"POST /%zz HTTP/1.1\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nx:\xff\r\n\r\n".to_vec(),
    ];
    // A deterministic spread of bytes around the usual request, cut and bent.
    let base = post("/v1/chat/completions", CHAT, "").into_bytes();
    for i in 0..40u32 {
        let mut bent = base.clone();
        let at = (i as usize * 37) % bent.len();
        bent[at] = (i * 97 % 256) as u8;
        bent.truncate(bent.len() - (i as usize % 5) * 7);
        inputs.push(bent);
    }
    for input in inputs {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(&input).await;
        // Half-close: the router must not wait for more than this.
        raw.stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), raw.stream.read_to_end(&mut rest))
            .await
            .expect("answered or closed within 10 s");
        let _ = read;
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(&rest);
            assert!(text.starts_with("HTTP/1.1 "), "{text:?} for {input:?}");
        }
    }
    // Still serving.
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(raw.answer().await.status, 200);
    assert!(upstream.count() >= 1);
    router.stop().await;
}

/// Empty lines before a request line, then a request line the router refuses: the same
/// status whether the bytes come in one write, a byte at a time, or with the empty lines
/// and the request line's start in one write and the rest a byte at a time (the empty lines
/// were taken for a head's end, and `HTTP/2` parsed before its `.0` came: 400, not 505).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn empty_lines_then_a_refused_request_line_get_one_status_however_sent() {
    let (upstream, router) = setup().await;
    for (text, status) in [
        ("\r\n\r\nGET /health HTTP/2.0\r\nHost: r\r\n\r\n", 505),
        (
            "\n\r\nPOST /v1/chat/completions HTTP/3.0\r\nHost: r\r\n\r\n",
            505,
        ),
        ("\r\n\r\nGET /health HTTP/2.0x\r\nHost: r\r\n\r\n", 400),
        ("\r\n\r\nxyz\r\n\r\n", 400),
    ] {
        let cut = text
            .find(" HTTP/")
            .map_or(text.len(), |at| at + " HTTP/2".len());
        for first in [text.len(), 0, cut] {
            let mut raw = Raw::connect(router.addr).await;
            raw.stream.set_nodelay(true).expect("nodelay");
            let (head, rest) = text.as_bytes().split_at(first);
            raw.send(head).await;
            // The router has read the first write before the rest is sent (its socket holds
            // no unread byte), so the two reach it in two reads.
            let client = raw.stream.local_addr().expect("local address");
            wait_until(Duration::from_secs(10), || {
                tcp_unread(router.addr, client) == Some(0)
            })
            .await;
            for byte in rest {
                raw.send(&[*byte]).await;
                raw.stream.flush().await.expect("flush");
            }
            let answer = raw.answer().await;
            assert_eq!(answer.status, status, "{text:?}, first write {first} bytes");
            assert!(raw.closed().await, "{text:?}");
        }
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// Shutdown closes a keep-alive connection that waits for its next request at once (it does
/// not wait out the grace period), and one that is mid-answer after that answer, marked as
/// the connection's last.
#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut idle = Raw::connect(router.addr).await;
    idle.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(idle.answer().await.status, 200);
    // Long enough that shutdown has begun when this answer is written.
    upstream.set(Behavior {
        delay: Duration::from_secs(2),
        ..Default::default()
    });
    let mut busy = Raw::connect(router.addr).await;
    busy.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    crate::support::wait_until(Duration::from_secs(10), || upstream.count() == 2).await;
    let stopping = tokio::spawn(router.stop());
    // The test router's grace period is 5 s; the idle connection must not wait for it.
    let closed = tokio::time::timeout(Duration::from_secs(4), idle.closed()).await;
    assert_eq!(
        closed.ok(),
        Some(true),
        "the idle connection was not closed"
    );
    let last = busy.answer().await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(busy.closed().await);
    stopping.await.expect("stopped");
}

/// Half a head, or a body that stops halfway, closes the connection once its timeout is
/// over; a connection that simply waits for its next request is not cut by either.
/// An upstream that streams for as long as anyone reads, behind a router whose send timeout
/// is 300 ms.
async fn endless_stream_with_a_short_send_timeout() -> (MockUpstream, TestRouter) {
    let upstream = MockUpstream::start(Behavior {
        chunks: 200_000,
        ..Behavior::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.send_timeout = Duration::from_millis(300);
    })
    .await;
    (upstream, router)
}

/// A client that stops reading (its socket buffers full) is given up on after the send
/// timeout: its connection closed, the stream's upstream connection closed, the request
/// recorded as a disconnect. Also a whole answer too large for the buffers: recorded as a
/// disconnect too, with the answer's body and usage kept (it was whole when it left the
/// upstream).
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let (upstream, router) = endless_stream_with_a_short_send_timeout().await;
    let streaming =
        r#"{"model":"[mock]gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut stalled = Raw::connect(router.addr).await;
    stalled
        .send(post("/v1/chat/completions", streaming, "").as_bytes())
        .await;
    // Nothing is read: the router's writes fill the buffers, then stall.
    upstream
        .wait_streams_dropped(1, Duration::from_secs(20))
        .await;
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(record.stream && !record.complete);
    // What the buffers held arrives, then the end: no `[DONE]`.
    let mut received = Vec::new();
    while stalled.fill().await {
        received.extend_from_slice(&stalled.buf);
        stalled.buf.clear();
    }
    let received = String::from_utf8_lossy(&received);
    assert!(
        received.starts_with("HTTP/1.1 200"),
        "{}",
        &received[..received.len().min(200)]
    );
    assert!(!received.contains("[DONE]"));

    // A whole answer larger than the buffers, never read.
    let big = "x".repeat(24 << 20);
    upstream.set(Behavior {
        body: Some(big),
        content_type: "text/plain".into(),
        ..Behavior::default()
    });
    let mut unread = Raw::connect(router.addr).await;
    unread
        .send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    // The router, stuck writing, reads nothing more: once it gives up and closes, what is
    // written to it is refused. (Empty lines are what a client may send between requests.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unread.stream.write_all(b"\r\n").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the router kept the connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never taken: a disconnect, though the answer was whole when it left the upstream.
    let record = router.records.nth(2).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(record.complete);
    assert!(
        record
            .response_body
            .as_ref()
            .is_some_and(|b| b.len() == 24 << 20)
    );
    let mut total = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_secs(10),
        unread.stream.read(&mut [0u8; 64 * 1024]),
    )
    .await
    {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total < 24 << 20, "the whole answer arrived ({total} bytes)");
    router.stop().await;
}

/// What `read` finds in the fields of the `/proc/net/tcp` line of the socket with this local
/// and remote address (IPv4).
#[cfg(target_os = "linux")]
fn tcp_socket<T>(
    local: SocketAddr,
    remote: SocketAddr,
    read: impl Fn(&[&str]) -> Option<T>,
) -> Option<T> {
    fn hex(addr: SocketAddr) -> String {
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only: {addr}")
        };
        format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )
    }
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        read(&fields)
    })
}

/// Bytes that arrived on a TCP socket and its program has not read yet (`rx_queue`).
#[cfg(target_os = "linux")]
fn tcp_unread(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    tcp_socket(local, remote, |fields| {
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// The kernel's timer on a TCP socket, from `/proc/net/tcp`: (kind, seconds left) of the
/// socket with this local and remote address (IPv4).
#[cfg(target_os = "linux")]
fn tcp_timer(local: SocketAddr, remote: SocketAddr) -> Option<(u8, f64)> {
    tcp_socket(local, remote, |fields| {
        // `tr:tm->when`: timer kind, then clock ticks (USER_HZ, 100 a second) in hex.
        let (kind, when) = fields.get(5)?.split_once(':')?;
        let kind = u8::from_str_radix(kind, 16).ok()?;
        let ticks = u64::from_str_radix(when, 16).ok()?;
        Some((kind, ticks as f64 / 100.0))
    })
}

/// A client connection gets TCP keep-alive probes after 60 s of silence, so a client that
/// vanished while its request waits is found; the router's side of the socket has the
/// kernel's keep-alive timer running.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn client_connections_have_tcp_keepalive_after_60_s() {
    let (_upstream, router) = setup().await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(raw.answer().await.status, 200);
    let client_side = raw.stream.local_addr().expect("local addr");
    // Kind 2 is the keep-alive timer; 0 would be none on an idle connection. Until the
    // answer's last bytes are acknowledged, the retransmission timer (1) is shown instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let left = loop {
        let timer = tcp_timer(router.addr, client_side).expect("the router's socket");
        match timer {
            (2, left) => break left,
            (1, _) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("no keep-alive timer on the router's socket: {other:?}"),
        }
    };
    assert!(left > 50.0 && left <= 60.0, "keep-alive timer at {left} s");
    router.stop().await;
}

#[tokio::test]
async fn a_connection_idle_past_the_idle_timeout_is_closed_a_busy_one_is_not() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let idle_timeout = Duration::from_millis(300);
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.idle_timeout = idle_timeout;
    })
    .await;
    let mut silent = Raw::connect(router.addr).await;
    let mut served_once = Raw::connect(router.addr).await;
    let mut busy = Raw::connect(router.addr).await;
    served_once
        .send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(served_once.answer().await.status, 200);

    // Requests one after another for three idle timeouts: the timer set when the connection
    // opened must not close it, since it was never idle that long.
    let began = std::time::Instant::now();
    let mut sent = 0;
    while began.elapsed() < idle_timeout * 3 {
        busy.send(post("/v1/chat/completions", CHAT, "").as_bytes())
            .await;
        assert_eq!(busy.answer().await.status, 200, "request {sent}");
        sent += 1;
    }

    assert!(silent.closed().await, "a connection that never sent a byte");
    assert!(
        served_once.closed().await,
        "a connection idle after its answer"
    );
    assert_eq!(upstream.count(), 1 + sent);
    router.stop().await;
}

#[tokio::test]
async fn a_stalled_head_or_body_closes_its_connection_an_idle_one_stays() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.head_timeout = Duration::from_millis(200);
        state.body_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut idle = Raw::connect(router.addr).await;
    idle.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(idle.answer().await.status, 200);

    let mut half_head = Raw::connect(router.addr).await;
    half_head
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\n")
        .await;
    assert!(half_head.closed().await, "a stalled head must close");

    let mut half_body = Raw::connect(router.addr).await;
    half_body
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{\"model\":")
        .await;
    assert!(half_body.closed().await, "a stalled body must close");
    assert_eq!(upstream.count(), 1, "neither reached the upstream");

    // Both timeouts are long over; the idle connection still carries a request.
    idle.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    assert_eq!(idle.answer().await.status, 200);
    router.stop().await;
}

/// HTTP/2's connection preface and an empty SETTINGS frame: an h2c client's opening.
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

const GOAWAY: u8 = 7;

/// The types of the HTTP/2 frames in `wire` (9-byte headers: length, type, flags, stream).
fn h2_frame_types(mut wire: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while wire.len() >= 9 {
        let len = usize::from(wire[0]) << 16 | usize::from(wire[1]) << 8 | usize::from(wire[2]);
        types.push(wire[3]);
        wire = &wire[(9 + len).min(wire.len())..];
    }
    types
}

/// A stream request over HTTP/2 with prior knowledge (on `client`'s connection); its
/// answer's head.
async fn h2c_stream_request(client: &reqwest::Client, router: &TestRouter) -> reqwest::Response {
    client
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"[mock]m","stream":true,"messages":[]}"#)
        .send()
        .await
        .expect("an answer over HTTP/2")
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_one_streaming_an_answer_is_not() {
    let upstream = MockUpstream::start(Behavior {
        chunks: 10,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let idle_timeout = Duration::from_millis(300);
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.idle_timeout = idle_timeout;
    })
    .await;
    let mut silent = Raw::connect(router.addr).await;
    silent.send(H2_OPENING).await;

    // A stream three idle timeouts long: open all along, so never idle.
    let began = std::time::Instant::now();
    let response = h2c_stream_request(&h2c_client(), &router).await;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let text = response.text().await.expect("the whole stream");
    assert!(began.elapsed() > idle_timeout * 3);
    assert_eq!(text, expected_stream(&upstream.behavior(), false));

    // The silent one got the server's SETTINGS, then GOAWAY and the end of the connection.
    while silent.fill().await {}
    assert!(
        h2_frame_types(&silent.buf).contains(&GOAWAY),
        "{:?}",
        h2_frame_types(&silent.buf)
    );
    router.stop().await;
}

/// A client that stops sending its request's body, its connection (or stream) left open,
/// is given up after the body read timeout as a client gone, over HTTP/2 as over HTTP/1:
/// HTTP/1 closes the connection without an answer, HTTP/2 resets the stream (CANCEL) and the
/// connection's other streams go on; neither is logged nor counted as a refusal. Over HTTP/2
/// it was answered 400 invalid_request ("the request body stalled"), logged and counted.
#[tokio::test]
async fn a_request_body_that_stalls_is_a_client_gone_over_http1_and_http2() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.body_read_timeout = Duration::from_millis(200);
    })
    .await;
    let refused = || -> u64 {
        router
            .state
            .failures
            .refusals()
            .iter()
            .map(|(_, count)| count)
            .sum()
    };

    let mut half_body = Raw::connect(router.addr).await;
    half_body
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{\"model\":")
        .await;
    assert!(half_body.closed().await, "closed without an answer");
    assert_eq!(
        refused(),
        0,
        "HTTP/1: {:?}",
        router.state.failures.refusals()
    );

    // The first half of a body, then nothing, without ending the stream.
    let pieces = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
            br#"{"model":"[mock]m","#,
        ))]),
        futures_util::stream::pending(),
    );
    let client = h2c_client();
    let reset = client
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .expect_err("no answer: the stream is reset");
    assert!(format!("{reset:?}").contains("CANCEL"), "{reset:?}");
    assert_eq!(
        refused(),
        0,
        "HTTP/2: {:?}",
        router.state.failures.refusals()
    );
    // The connection goes on.
    let health = client
        .get(router.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        (health.version(), health.status()),
        (reqwest::Version::HTTP_2, reqwest::StatusCode::OK)
    );
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

/// An HTTP/2 client that keeps its connection alive (it answers PINGs) but stops reading an
/// answer shuts that stream's flow-control window: after the send timeout the router resets
/// the stream, lets the upstream go and records a disconnect.
#[tokio::test]
async fn an_http2_client_that_stops_reading_has_its_stream_reset_after_the_send_timeout() {
    let (upstream, router) = endless_stream_with_a_short_send_timeout().await;
    let response = h2c_stream_request(&h2c_client(), &router).await;
    assert_eq!(response.status(), 200);
    // The body is never read: once the window is full the router waits, then gives up.
    upstream
        .wait_streams_dropped(1, Duration::from_secs(20))
        .await;
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(record.stream && !record.complete);
    let text = response.text().await;
    assert!(
        text.as_ref().map_or(true, |t| !t.contains("[DONE]")),
        "the whole stream arrived"
    );
    router.stop().await;
}

/// One unread answer on an HTTP/2 connection costs only its own stream: the router resets
/// it (CANCEL) after the send timeout, and the connection's other stream, read all along,
/// goes on to its end. The connection used to be closed, taking every stream with it.
#[tokio::test]
async fn an_unread_http2_stream_is_reset_alone_its_connection_goes_on() {
    // Both answers pause at a gate far past what the unread one can push into the client's
    // window and the buffers on the way (2 MiB and a few MiB, at about 170 bytes a chunk).
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = MockUpstream::start(Behavior {
        chunks: 160_000,
        hold_chunk: Some((150_000, gate.clone())),
        ..Behavior::default()
    })
    .await;
    let router = TestRouter::start_with(&one_server_config(&upstream.url(), ""), |state| {
        state.send_timeout = Duration::from_millis(300);
    })
    .await;
    let client = h2c_client();
    let unread = h2c_stream_request(&client, &router).await;
    let read = h2c_stream_request(&client, &router).await;
    assert_eq!(unread.status(), 200);
    assert_eq!(read.status(), 200);
    let reading = tokio::spawn(read.text());

    upstream
        .wait_streams_dropped(1, Duration::from_secs(20))
        .await;
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::ClientDisconnected);
    assert!(record.stream && !record.complete);
    let reset = unread
        .text()
        .await
        .expect_err("the unread stream was reset");
    assert!(format!("{reset:?}").contains("CANCEL"), "{reset:?}");

    // The other stream waits at the gate, its connection still open: it finishes.
    gate.add_permits(1);
    let text = reading
        .await
        .expect("task")
        .expect("the read stream, whole");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{}",
        &text[text.len() - 100..]
    );
    let record = router.records.nth(2).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert!(record.complete);
    assert_eq!(upstream.streams_dropped(), 1);
    router.stop().await;
}

/// An h2c client that goes away while it sends a request's body (its connection lost, or
/// its stream reset) has gone, as over HTTP/1 one whose connection ends in a body has:
/// nothing was refused. It was logged and counted as "refused 400 invalid_request" (the body
/// "could not be read").
#[tokio::test]
async fn an_h2c_client_that_leaves_in_its_body_is_gone_not_refused() {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Sent = Result<Frame<Bytes>, std::io::Error>;
    /// A request body fed frame by frame from the channel's sender.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Sent>,
        BoxBody<Bytes, std::io::Error>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Sent>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        (tx, StreamBody::new(frames).boxed())
    }
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let invalid = || {
        router
            .state
            .failures
            .refusals()
            .into_iter()
            .find(|(code, _)| *code == "invalid_request")
            .map_or(0, |(_, count)| count)
    };
    for lost_connection in [true, false] {
        let tcp = std::net::TcpStream::connect(router.addr).expect("connect");
        // hyper drives the connection in a task of its own: its socket is shut from here.
        let socket = tcp.try_clone().expect("clone");
        tcp.set_nonblocking(true).expect("nonblocking");
        let tcp = TcpStream::from_std(tcp).expect("tokio");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);
        let (tx, body) = fed();
        let request = http::Request::post(format!("http://{}/v1/chat/completions", router.addr))
            .header("content-type", "application/json")
            .body(body)
            .expect("request");
        tx.send(Ok(Frame::data(Bytes::from_static(
            b"{\"model\":\"[mock]m\",",
        ))))
        .await
        .expect("first part");
        let answer = tokio::spawn(sender.send_request(request));
        // Answered on the same connection: the router has the first request's head by then
        // (a connection's frames are read in order), and waits for the rest of its body.
        let (_, empty) = fed();
        let health = http::Request::get(format!("http://{}/health", router.addr))
            .body(empty)
            .expect("request");
        let health = sender.send_request(health).await.expect("health");
        assert_eq!(health.status(), 200);
        let before = invalid();
        if lost_connection {
            socket.shutdown(std::net::Shutdown::Both).expect("shutdown");
        } else {
            // hyper resets the stream of a body that fails.
            tx.send(Err(std::io::Error::other("client gave up")))
                .await
                .expect("failure");
        }
        let _ = answer.await;
        // Refused on a new connection, after the first one's end reached the router.
        let refused = h2c_client()
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .expect("refusal");
        assert_eq!(refused.status(), 400);
        assert_eq!(
            invalid(),
            before + 1,
            "lost connection: {lost_connection}: only the bad body is a refusal"
        );
        drop(tx);
    }
}
