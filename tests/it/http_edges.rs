//! Edges of HTTP the router's own server and its plain-`http://` upstream client meet less
//! often: HTTP/2 cookies split per field, other HTTP versions in an HTTP/1 request line,
//! answers without a body over HTTP/2, answers with many header fields, trailer sections and
//! chunk extensions past the router's limits, an answer announced far over the size limit,
//! `Content-Encoding` split over several lines.

use llmsrouter::record::Outcome;

use crate::http1::{CHAT, Raw, post};
use crate::support::upstream::{Behavior, EarlyAnswer, MockUpstream};
use crate::support::{TestRouter, h2c_client, one_server_config};

/// A router in front of an upstream that answers every request with exactly `answer`.
async fn router_before(answer: Vec<u8>) -> (EarlyAnswer, TestRouter) {
    let upstream = EarlyAnswer::answering(answer, false).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    (upstream, router)
}

/// The `error.message` and `error.code` of a router error body.
fn error_of(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("a JSON body: {}", String::from_utf8_lossy(body)));
    let field = |name: &str| json["error"][name].as_str().unwrap_or_default().to_owned();
    (field("message"), field("code"))
}

/// What one chat request on a new connection to `addr` gets.
async fn one_chat(addr: std::net::SocketAddr) -> crate::http1::Answer {
    let mut raw = Raw::connect(addr).await;
    raw.send(post("/v1/chat/completions", CHAT, "").as_bytes())
        .await;
    raw.answer().await
}

/// The message of a 502 `upstream_unreachable` answer (asserted to be one).
fn unreachable_message(answer: &crate::http1::Answer) -> String {
    assert_eq!(answer.status, 502);
    let (message, code) = error_of(&answer.body);
    assert_eq!(code, "upstream_unreachable");
    message
}

/// Every `Content-Encoding` line of a request counts, read as one list (RFC 9110 §5.3): a
/// body with any coding besides `identity` is refused with 400 however the lines fall
/// (`identity` then `gzip` on two lines, as on one), over HTTP/1 and HTTP/2 alike; one whose
/// codings are all `identity`, or blank, is a plain body, and goes upstream with no
/// `Content-Encoding` to say otherwise.
#[tokio::test]
async fn content_encoding_lines_of_a_request_are_read_together() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let refused: &[&[&str]] = &[
        &["identity", "gzip"],
        &["gzip", "identity"],
        &["identity, gzip"],
        &["", "br"],
    ];
    let accepted: &[&[&str]] = &[
        &[""],
        &["identity"],
        &["identity", ""],
        &["Identity , identity"],
        &["identity", "IDENTITY"],
    ];
    let h2 = h2c_client();
    for (lines, refuse) in refused
        .iter()
        .map(|l| (l, true))
        .chain(accepted.iter().map(|l| (l, false)))
    {
        let before = upstream.count();
        let extra: String = lines
            .iter()
            .map(|value| format!("Content-Encoding: {value}\r\n"))
            .collect();
        let mut raw = Raw::connect(router.addr).await;
        raw.send(post("/v1/chat/completions", CHAT, &extra).as_bytes())
            .await;
        let http1 = raw.answer().await;
        let mut request = h2
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        for value in *lines {
            request = request.header("content-encoding", *value);
        }
        let response = request.body(CHAT).send().await.expect("send over HTTP/2");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let http2_status = response.status().as_u16();
        let http2_body = response.bytes().await.expect("body");
        for (version, status, body) in [
            ("HTTP/1", http1.status, &http1.body[..]),
            ("HTTP/2", http2_status, &http2_body[..]),
        ] {
            if refuse {
                assert_eq!(status, 400, "{version} {lines:?}");
                let (message, code) = error_of(body);
                assert_eq!(code, "invalid_request", "{version} {lines:?}");
                assert!(
                    message.contains("compressed request bodies"),
                    "{version} {lines:?}: {message}"
                );
            } else {
                assert_eq!(status, 200, "{version} {lines:?}");
            }
        }
        if refuse {
            assert_eq!(upstream.count(), before, "{lines:?}: nothing went upstream");
            continue;
        }
        let received = upstream.received();
        assert_eq!(received.len(), before + 2, "{lines:?}");
        for got in &received[before..] {
            assert_eq!(got.json()["messages"][0]["content"], "hi", "{lines:?}");
            assert!(
                got.headers.get("content-encoding").is_none(),
                "{lines:?}: {:?}",
                got.headers
            );
        }
    }
    router.stop().await;
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send each cookie as a field of its own; they go on
/// over HTTP/1.1 joined into one `Cookie` with "; " (two `Cookie` lines are not HTTP/1.1).
#[tokio::test]
async fn http2_cookie_fields_go_upstream_as_one() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let response = h2c_client()
        .post(router.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(CHAT)
        .send()
        .await
        .expect("send over HTTP/2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    let cookies: Vec<_> = got.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"], "one Cookie line upstream");
    router.stop().await;
}

/// RFC 9112 §2.3: a request of a higher HTTP/1.x minor version is served as 1.1; HTTP/2.0
/// or 3.0 written in HTTP/1's text form gets 505, in OpenAI's shape, and the connection
/// closes.
#[tokio::test]
async fn other_http_versions_in_a_request_line() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let mut raw = Raw::connect(router.addr).await;
    raw.send(
        post("/v1/chat/completions", CHAT, "")
            .replacen("HTTP/1.1", "HTTP/1.2", 1)
            .as_bytes(),
    )
    .await;
    let proxied = raw.answer().await;
    assert_eq!(
        proxied.status,
        200,
        "{}",
        String::from_utf8_lossy(&proxied.body)
    );
    assert_eq!(upstream.count(), 1);
    // The connection carries another request, as a 1.1 one does.
    raw.send(b"GET /health HTTP/1.9\r\nHost: r\r\n\r\n").await;
    assert_eq!(raw.answer().await.status, 200);

    for version in ["HTTP/2.0", "HTTP/3.0"] {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(format!("GET /health {version}\r\nHost: r\r\n\r\n").as_bytes())
            .await;
        let refused = raw.answer().await;
        assert_eq!(refused.status, 505, "{version}");
        assert_eq!(refused.header("x-should-retry"), Some("false"));
        assert_eq!(refused.header("connection"), Some("close"), "{version}");
        let (message, code) = error_of(&refused.body);
        assert_eq!(code, "http_version_not_supported", "{version}");
        assert!(message.contains(version), "{message}");
        assert!(raw.closed().await, "{version}: the connection closes");
    }
    // Other versions stay malformed.
    let mut raw = Raw::connect(router.addr).await;
    raw.send(b"GET /health HTTP/1.10\r\nHost: r\r\n\r\n").await;
    assert_eq!(raw.answer().await.status, 400);
    router.stop().await;
}

/// A 204 relayed as it arrives (to a stream, or labelled as no JSON) has no framing over
/// HTTP/1.1 either: no `Transfer-Encoding`, and no last chunk after its head, which the
/// client would read as the start of the next answer on the connection (RFC 9112 6.1).
#[tokio::test]
async fn a_relayed_no_content_answer_has_no_chunked_framing() {
    for head in [
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 204 No Content\r\ncontent-type: application/octet-stream\r\n\r\n",
    ] {
        let (_upstream, router) = router_before(head.as_bytes().to_vec()).await;
        let mut raw = Raw::connect(router.addr).await;
        let stream = CHAT.replace("\"messages\"", "\"stream\":true,\"messages\"");
        raw.send(post("/v1/chat/completions", &stream, "").as_bytes())
            .await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 204, "{head:?}");
        for framing in ["content-length", "transfer-encoding"] {
            assert_eq!(answer.header(framing), None, "{head:?}: {framing}");
        }
        raw.send(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n").await;
        let next = raw.answer().await;
        assert_eq!(next.status, 200, "{head:?}: {next:?}");
        let record = router.records.nth(1).await;
        assert_eq!(
            (record.outcome, record.status),
            (Outcome::Success, Some(204)),
            "{head:?}"
        );
        router.stop().await;
    }
}

/// RFC 9110 §8.6: a 204 has no `Content-Length`, and a 304's may only be the 200's; over
/// HTTP/2 hyper used to write `content-length: 0` on both (over HTTP/1 they had none).
#[tokio::test]
async fn http2_answers_without_a_body_have_no_content_length() {
    for head in [
        "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
    ] {
        let (_upstream, router) = router_before(head.as_bytes().to_vec()).await;
        let response = h2c_client()
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
            .await
            .expect("send over HTTP/2");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert!(
            response.status() == 204 || response.status() == 304,
            "{head:?}: {}",
            response.status()
        );
        assert_eq!(
            response.headers().get("content-length"),
            None,
            "{head:?}: {:?}",
            response.headers()
        );
        assert!(response.bytes().await.expect("body").is_empty());
        // The record is still handed over as delivered when the answer is out.
        let record = router.records.nth(1).await;
        assert_ne!(record.outcome, Outcome::ClientDisconnected, "{head:?}");
        router.stop().await;
    }
    // A HEAD keeps the `Content-Length` its GET has.
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let head = h2c_client()
        .head(router.url("/health"))
        .send()
        .await
        .expect("HEAD over HTTP/2");
    assert_eq!(head.headers()["content-length"], "15");
    router.stop().await;
}

/// An answer head of `n` extra fields and a small JSON body.
pub(crate) fn answer_with_fields(n: usize) -> Vec<u8> {
    let body = r#"{"id":"x","choices":[]}"#;
    let fields: String = (0..n).map(|i| format!("x-h{i}: v{i}\r\n")).collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{fields}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An upstream's answer may have more than a request's 100 header fields (up to 256, and
/// the head's 256 KiB): it was made, and billed, so it is relayed, its fields with it.
#[tokio::test]
async fn upstream_answers_with_many_header_fields_are_relayed() {
    let (_upstream, router) = router_before(answer_with_fields(200)).await;
    let answer = one_chat(router.addr).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.header("x-h199"), Some("v199"));
    router.stop().await;

    let (_upstream, router) = router_before(answer_with_fields(300)).await;
    let answer = one_chat(router.addr).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("more than 256 header fields"), "{message}");
    router.stop().await;
}

/// An answer whose head has a field of `kib` KiB, and a small JSON body.
pub(crate) fn answer_with_a_head_of(kib: usize) -> Vec<u8> {
    let body = r#"{"id":"x","choices":[]}"#;
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-large: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "v".repeat(kib * 1024),
        body.len()
    )
    .into_bytes()
}

/// A server whose `url` has `user:password@` is sent to as any other (its credentials as
/// Basic auth): its answers meet the same head limits, and a failure is said in the same
/// words (they were reqwest's: "could not reach the upstream mock: message head is too
/// large" for 101 fields, a 300 KiB head relayed).
#[tokio::test]
async fn an_upstream_named_with_credentials_meets_the_same_head_limits() {
    let bad_status = b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
    for (answer, said) in [
        (answer_with_fields(101), None),
        (answer_with_fields(300), Some("more than 256 header fields")),
        (bad_status, Some("(invalid response status)")),
        (
            answer_with_a_head_of(300),
            Some("the message head is larger than 262144 bytes"),
        ),
    ] {
        let upstream = EarlyAnswer::answering(answer, false).await;
        let with_credentials = upstream.url().replacen("http://", "http://user:pw@", 1);
        let mut answers = Vec::new();
        for url in [upstream.url(), with_credentials] {
            let router = TestRouter::start(&one_server_config(&url, "")).await;
            let answer = one_chat(router.addr).await;
            match said {
                None => {
                    assert_eq!(answer.status, 200, "{url}");
                    assert_eq!(answer.header("x-h100"), Some("v100"), "{url}");
                }
                Some(said) => {
                    let message = unreachable_message(&answer);
                    let answered =
                        "the upstream mock answered, but not in a form the router can read: ";
                    assert!(
                        message.starts_with(answered) && message.contains(said),
                        "{url}: {message}"
                    );
                }
            }
            answers.push((answer.status, answer.body));
            router.stop().await;
        }
        assert_eq!(answers[0], answers[1], "{said:?}");
    }
}

/// `n` trailer fields of 1,000 bytes each, and the blank line that ends them.
fn trailers(n: usize) -> String {
    let mut section: String = (0..n)
        .map(|i| format!("x-t{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    section.push_str("\r\n");
    section
}

/// A chunked request body past the router's limits (a trailer section over 16 KiB, a chunk
/// extension over 4096 bytes) is refused with a message that names the limit, not as "a
/// malformed chunk"; under them it goes upstream.
#[tokio::test]
async fn client_chunk_limits_are_named() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let chunked = |extension: &str, trailer_fields: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}{extension}\r\n{CHAT}\r\n0\r\n{}",
            CHAT.len(),
            trailers(trailer_fields)
        )
    };
    let mut raw = Raw::connect(router.addr).await;
    raw.send(chunked(";x=1", 10).as_bytes()).await;
    assert_eq!(raw.answer().await.status, 200);
    assert_eq!(upstream.count(), 1);

    let long_extension = format!(";x={}", "e".repeat(5000));
    for (wire, named) in [
        (chunked("", 20), "a trailer section over 16 KiB"),
        (
            chunked(&long_extension, 0),
            "a chunk extension over 4096 bytes",
        ),
    ] {
        let mut raw = Raw::connect(router.addr).await;
        raw.send(wire.as_bytes()).await;
        let refused = raw.answer().await;
        assert_eq!(refused.status, 400);
        let (message, code) = error_of(&refused.body);
        assert_eq!(code, "invalid_request");
        assert!(message.contains(named), "{message}");
    }
    assert_eq!(upstream.count(), 1, "the refused ones never went upstream");
    router.stop().await;
}

/// A trailer line that is no header field line (a request line smuggled there, a folded line,
/// a NUL) is refused with 400 as the same line in a head is, and the connection closed:
/// nothing goes upstream; an upstream's answer with one is a 502 naming it.
#[tokio::test]
async fn trailer_lines_that_are_not_fields_are_refused() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for trailer in [
        "GET /admin HTTP/1.1\r\n",
        "x-a: 1\r\n folded\r\n",
        "x-a: 1\x002\r\n",
    ] {
        let wire = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n{trailer}\r\n",
            CHAT.len()
        );
        let mut raw = Raw::connect(router.addr).await;
        raw.send(wire.as_bytes()).await;
        let refused = raw.answer().await;
        assert_eq!(refused.status, 400, "{trailer:?}");
        let (message, _) = error_of(&refused.body);
        assert!(
            message.contains("a trailer line that is not a header field"),
            "{message}"
        );
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;

    let body = r#"{"id":"x","choices":[]}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nnot a field\r\n\r\n",
        body.len()
    );
    let (_upstream, router) = router_before(answer.into_bytes()).await;
    let message = unreachable_message(&one_chat(router.addr).await);
    assert!(
        message.contains("a trailer line that is not a header field"),
        "{message}"
    );
    router.stop().await;
}

/// An upstream's chunked answer with a trailer section over 16 KiB is a 502 that names the
/// limit; one under it is relayed.
#[tokio::test]
async fn upstream_trailer_limit_is_named() {
    let body = r#"{"id":"x","choices":[]}"#;
    let chunked = |trailer_fields: usize| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n{}",
            body.len(),
            trailers(trailer_fields)
        )
        .into_bytes()
    };
    let (_upstream, router) = router_before(chunked(10)).await;
    let answer = one_chat(router.addr).await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, body.as_bytes())
    );
    router.stop().await;

    let (_upstream, router) = router_before(chunked(20)).await;
    let answer = one_chat(router.addr).await;
    let message = unreachable_message(&answer);
    assert!(
        message.contains("a trailer section over 16 KiB"),
        "{message}"
    );
    assert!(!message.contains("malformed"), "{message}");
    router.stop().await;
}

/// An answer whose `Content-Length` is over the 256 MiB limit is refused before its body is
/// read: the 502 says what was announced, not that so much was sent.
#[tokio::test]
async fn an_answer_announced_over_the_limit_is_named_as_announced() {
    let body = r#"{"id":"x","choices":[]}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000000000\r\n\r\n{body}"
    );
    let (_upstream, router) = router_before(answer.into_bytes()).await;
    let answer = one_chat(router.addr).await;
    let message = unreachable_message(&answer);
    assert!(
        message.contains("announced an answer of 100000000000 bytes")
            && message.contains("256 MiB"),
        "{message}"
    );
    assert!(!message.contains("sent an answer"), "{message}");
    router.stop().await;
}
