//! `GET` and `DELETE` forwarded to the target a request names (`?proxy=`, else
//! `settings.default_server`): `models.list()` with `?proxy=`, `files.content`,
//! `files.delete`, ... over HTTP/1 (the router's own server) and HTTP/2 (hyper's) alike.

use std::sync::Arc;
use std::time::Duration;

use llmsrouter::auth::{Caller, KeyIndex, Permissions};
use llmsrouter::record::Outcome;
use serde_json::{Value, json};

use crate::http1::Raw;
use crate::support::upstream::{Behavior, MockUpstream, brotli, gzip, zstd};
use crate::support::{TestRouter, client, h2c_client, one_server_config};

/// The model list a server answers for itself: its own names, no `[prefix]`.
const OWN_MODELS: &str =
    r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","owned_by":"them","extra":1}]}"#;

/// The JSON answer to a `GET` of `url`.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

/// The first `len` bytes of `response`'s body (at least), which must arrive while the upstream
/// still holds the rest, before it `then` (sends the rest, breaks off).
async fn first_part(response: &mut reqwest::Response, len: usize, then: &str) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("the first part arrives before the upstream {then}"))
            .expect("read")
            .expect("more");
        got.extend_from_slice(&chunk);
    }
    got
}

/// Both clients: HTTP/1 (the router's own server) and HTTP/2 without TLS (hyper's).
fn clients() -> [(&'static str, reqwest::Client); 2] {
    [("http1", client()), ("h2c", h2c_client())]
}

/// `GET /v1/models?proxy=<url>` asks that server, with the client's own key, and its answer
/// comes back as it came (status, its own headers, its body byte for byte, no `[prefix]`);
/// the rest of the query goes along. Without `?proxy=` the route is the merged list still.
#[tokio::test]
async fn the_model_routes_with_proxy_ask_that_server() {
    let upstream = MockUpstream::start(Behavior {
        models_body: Some(OWN_MODELS.into()),
        body: Some(r#"{"id":"gpt-4o","object":"model"}"#.into()),
        headers: vec![("x-request-id".into(), "req-upstream-7".into())],
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (name, http) in clients() {
        let url = router.url(&format!("/v1/models?proxy={}&limit=5", upstream.origin()));
        let response = http
            .get(url)
            .bearer_auth("sk-client-own-key")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(
            response.headers()["x-request-id"],
            "req-upstream-7",
            "{name}"
        );
        assert_eq!(response.text().await.expect("body"), OWN_MODELS, "{name}");
        let got = upstream.last();
        assert_eq!(
            (got.method.as_str(), got.path.as_str(), got.query.as_deref()),
            ("GET", "/v1/models", Some("limit=5")),
            "{name}"
        );
        assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
        for framing in ["content-type", "content-length"] {
            assert!(
                got.headers.get(framing).is_none(),
                "{name}: no body, no {framing}"
            );
        }

        let url = router.url(&format!("/v1/models/gpt-4o?proxy={}", upstream.origin()));
        let response = http
            .get(url)
            .bearer_auth("sk-client-own-key")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(
            response.text().await.expect("body"),
            r#"{"id":"gpt-4o","object":"model"}"#
        );
        assert_eq!(upstream.last().path, "/v1/models/gpt-4o", "{name}");

        // Without `?proxy=`: the merged list, each id with its alias.
        let merged: Value = get_json(&http, router.url("/v1/models")).await;
        assert_eq!(merged["data"][0]["id"], "[mock]gpt-4o", "{name}");
    }
    router.stop().await;
}

/// `files.content` through `settings.default_server`: the alias's key upstream, the binary
/// answer's bytes intact and relayed as they arrive (the first part reaches the client while
/// the upstream still holds the rest), and a record whose endpoint names the method.
#[tokio::test]
async fn a_binary_answer_through_the_default_server_streams_intact() {
    let first: Vec<u8> = (0u8..=255).chain(*b"\r\n\r\ndata: x\n\n").collect();
    let rest: Vec<u8> = (0u8..=255).rev().cycle().take(100_000).collect();
    // The second part waits for the gate: a fresh one for each client, since a permit
    // goes back to its gate once the part has passed.
    let held = |gate: &Arc<tokio::sync::Semaphore>| Behavior {
        stream_unasked: true,
        stream_content_type: Some("application/octet-stream".into()),
        raw_chunks: Some(vec![first.clone(), rest.clone()]),
        hold_chunk: Some((1, gate.clone())),
        // Its length known, as a file's is: the router must still relay it as it arrives,
        // not hold it whole because its size is known.
        headers: vec![(
            "content-length".into(),
            (first.len() + rest.len()).to_string(),
        )],
        ..Default::default()
    };
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    for (n, (name, http)) in clients().into_iter().enumerate() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        upstream.set(held(&gate));
        let sent = http
            .get(router.url("/v1/files/file-abc/content"))
            .bearer_auth("sk-client-own-key")
            .send();
        let mut response = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("the head arrives before the upstream sends the rest")
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        assert_eq!(
            response.content_length(),
            Some((first.len() + rest.len()) as u64),
            "{name}"
        );
        let mut got = first_part(&mut response, first.len(), "sends the rest").await;
        assert!(got == first, "{name}: the first part is intact, and alone");
        gate.add_permits(1);
        got.extend_from_slice(&response.bytes().await.expect("the rest"));
        assert_eq!(got.len(), first.len() + rest.len(), "{name}");
        assert!(
            got[first.len()..] == rest[..],
            "{name}: the bytes are intact"
        );
        let sent = upstream.last();
        assert_eq!(
            (sent.method.as_str(), sent.path.as_str()),
            ("GET", "/v1/files/file-abc/content")
        );
        assert_eq!(sent.headers["authorization"], "Bearer sk-mock-upstream-key");

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.endpoint, "GET /files/file-abc/content", "{name}");
        assert_eq!(record.alias.as_deref(), Some("mock"));
        assert_eq!(record.requested_model, "");
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(&record.request_body[..], b"{}");
    }
    router.stop().await;
}

/// The model routes answer without `/v1` too, and so take `?proxy=` there as they do with
/// it: a client whose base URL lacks `/v1` got the router's merged list for
/// `GET /models?proxy=<url>` (and 200 for a `?proxy=` that is no URL). Each request is
/// answered as its `/v1/` form is: same status, same `code`, same `Allow`, same request
/// upstream.
#[tokio::test]
async fn the_model_routes_take_proxy_without_v1_as_with_it() {
    let upstream = MockUpstream::start(Behavior {
        models_body: Some(OWN_MODELS.into()),
        body: Some(r#"{"id":"gpt-4o","object":"model"}"#.into()),
        ..Default::default()
    })
    .await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    let proxy = format!("proxy={}", upstream.origin());
    let cases = [
        ("GET", format!("/models?{proxy}&limit=5"), 200),
        ("GET", format!("/models/gpt-4o?{proxy}"), 200),
        (
            "DELETE",
            format!("/models/ft:gpt-4o:acme::abc?{proxy}"),
            200,
        ),
        ("GET", "/models?proxy=nonsense".to_owned(), 400),
        ("HEAD", format!("/models?{proxy}"), 405),
    ];
    for (name, http) in clients() {
        for (method, path, status) in &cases {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut answers = Vec::new();
            for spelling in [format!("/v1{path}"), path.clone()] {
                let before = upstream.count();
                let response = http
                    .request(method.clone(), router.url(&spelling))
                    .bearer_auth("sk-client-own-key")
                    .send()
                    .await
                    .expect("send");
                let what = format!("{name} {method} {spelling}");
                assert_eq!(response.status(), *status, "{what}");
                let allow = response.headers().get("allow").cloned();
                let body = response.bytes().await.expect("body");
                let went = upstream.count() - before;
                let got = (went > 0).then(|| {
                    let got = upstream.last();
                    assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
                    (got.method, got.path, got.query)
                });
                let code = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .map(|v| v["error"]["code"].clone());
                let body = if *status == 200 { Some(body) } else { None };
                answers.push((went, got, allow, code, body));
            }
            assert_eq!(answers[0], answers[1], "{name} {method} {path}");
        }
    }
    assert_eq!(
        upstream.received()[0].path,
        "/v1/models",
        "the first was forwarded"
    );
    router.stop().await;
}

/// `files.delete` with `?proxy=`: a `DELETE` upstream with the client's key, the answer back.
#[tokio::test]
async fn a_delete_with_proxy_is_forwarded() {
    let deleted = r#"{"id":"file-abc","object":"file","deleted":true}"#;
    let upstream = MockUpstream::start(Behavior {
        body: Some(deleted.into()),
        ..Default::default()
    })
    .await;
    // No server configured at all: `?proxy=` alone names the target.
    let router = TestRouter::start("servers: {}\n").await;
    for (name, http) in clients() {
        let url = router.url(&format!("/v1/files/file-abc?proxy={}", upstream.origin()));
        let response = http
            .delete(url)
            .bearer_auth("sk-client-own-key")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        assert!(response.headers().contains_key("x-llmsrouter-request-id"));
        assert_eq!(response.text().await.expect("body"), deleted, "{name}");
        let got = upstream.last();
        assert_eq!(
            (got.method.as_str(), got.path.as_str(), got.query.as_deref()),
            ("DELETE", "/v1/files/file-abc", None),
            "{name}"
        );
        assert_eq!(got.headers["authorization"], "Bearer sk-client-own-key");
    }
    let record = router.records.nth(1).await;
    assert_eq!(record.endpoint, "DELETE /files/file-abc");
    router.stop().await;
}

/// With no `?proxy=` and no `default_server` a `GET` or `DELETE` is refused as before, and
/// the message says what would route it; nothing goes upstream.
#[tokio::test]
async fn without_a_target_other_methods_are_refused_with_the_way_to_route_them() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (name, http) in clients() {
        for request in [
            http.get(router.url("/v1/files/file-abc/content")),
            http.delete(router.url("/v1/files/file-abc")),
        ] {
            let response = request.send().await.expect("send");
            assert_eq!(response.status(), 405, "{name}");
            assert_eq!(response.headers()["allow"], "POST");
            let error: Value = response.json().await.expect("json");
            assert_eq!(error["error"]["code"], "method_not_allowed");
            let message = error["error"]["message"].as_str().expect("message");
            assert!(
                message.contains("?proxy=") && message.contains("default_server"),
                "{message}"
            );
        }
    }
    assert_eq!(upstream.count(), 0);
    router.stop().await;
}

const ANN_KEY: &str = "sk-lr-othermethods0123456789abcdAB";
const BOB_KEY: &str = "sk-lr-othermethods0123456789abcdCD";

/// Ann may use `mock` only, Bob every provider.
struct Users;

impl KeyIndex for Users {
    fn find(&self, presented_key: &str) -> Option<Caller> {
        match presented_key {
            ANN_KEY => Some(Caller {
                user: Some("ann".into()),
                permissions: Permissions::Only(["mock".to_owned()].into()),
            }),
            BOB_KEY => Some(Caller {
                user: Some("bob".into()),
                permissions: Permissions::All,
            }),
            _ => None,
        }
    }
}

/// With accounts on, the guards a `POST` has: `?proxy=` is refused (403
/// `url_target_forbidden`, the model routes too), the default server needs the user's key
/// (401) and a user who may use it (403 `provider_forbidden`); one who may goes through with
/// the server's key.
#[tokio::test]
async fn with_accounts_on_other_methods_are_held_to_what_the_user_may_use() {
    let upstream = MockUpstream::start(Behavior {
        body: Some(r#"{"object":"list","data":[]}"#.into()),
        ..Default::default()
    })
    .await;
    let config = format!(
        "{}  other:\n    url: \"{}\"\n    api_key: \"sk-other-upstream-key\"\nsettings:\n  default_server: other\n",
        one_server_config(&upstream.url(), ""),
        upstream.url()
    );
    let router = TestRouter::start_with(&config, |state| {
        state.keys = Some(Arc::new(Users));
    })
    .await;
    let proxy = format!("?proxy={}", upstream.origin());
    for (name, http) in clients() {
        let refusals = [
            (
                format!("/v1/files{proxy}"),
                Some(ANN_KEY),
                403,
                "url_target_forbidden",
            ),
            (
                format!("/v1/models{proxy}"),
                Some(BOB_KEY),
                403,
                "url_target_forbidden",
            ),
            (
                format!("/models/gpt-4o{proxy}"),
                Some(BOB_KEY),
                403,
                "url_target_forbidden",
            ),
            (
                "/v1/files".to_owned(),
                Some(ANN_KEY),
                403,
                "provider_forbidden",
            ),
            (
                "/v1/files".to_owned(),
                Some("sk-lr-nobody"),
                401,
                "invalid_api_key",
            ),
            ("/v1/files".to_owned(), None, 401, "invalid_api_key"),
        ];
        for (path, key, status, code) in refusals {
            let mut request = http.get(router.url(&path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("send");
            assert_eq!(response.status(), status, "{name} {path} {key:?}");
            assert!(response.headers().contains_key("x-llmsrouter-request-id"));
            let error: Value = response.json().await.expect("json");
            assert_eq!(error["error"]["code"], json!(code), "{name} {path}");
        }
        assert_eq!(upstream.count(), 0, "{name}: nothing refused went upstream");
    }
    let response = client()
        .get(router.url("/v1/files"))
        .bearer_auth(BOB_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let got = upstream.last();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("GET", "/v1/files")
    );
    assert_eq!(got.headers["authorization"], "Bearer sk-other-upstream-key");
    let record = router.records.nth(1).await;
    assert_eq!(record.user.as_deref(), Some("bob"));
    assert_eq!(record.endpoint, "GET /files");
    router.stop().await;
}

/// `mock` as `settings.default_server`, its model list [`OWN_MODELS`].
async fn with_default_server(behavior: Behavior) -> (MockUpstream, TestRouter) {
    let upstream = MockUpstream::start(Behavior {
        models_body: Some(OWN_MODELS.into()),
        ..behavior
    })
    .await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    (upstream, router)
}

/// A browser's `/favicon.ico` or a scanner's `/.env` does not go upstream with the provider's
/// key: a `GET` or `DELETE` is forwarded only on a path that came with `/v1/` (doubled
/// slashes aside); without it the answer is the 405 it was before forwarding, and no record.
#[tokio::test]
async fn stray_paths_without_v1_are_not_forwarded() {
    let (upstream, router) = with_default_server(Behavior::default()).await;
    for (name, http) in clients() {
        for path in [
            "/favicon.ico",
            "/.env",
            "/wp-login.php",
            "/robots.txt",
            "/files",
        ] {
            for request in [http.get(router.url(path)), http.delete(router.url(path))] {
                let response = request.send().await.expect("send");
                assert_eq!(response.status(), 405, "{name} {path}");
                assert_eq!(response.headers()["allow"], "POST", "{name} {path}");
                let error: Value = response.json().await.expect("json");
                let message = error["error"]["message"].as_str().expect("message");
                assert!(message.contains("/v1/"), "{message}");
                assert!(!message.contains("default_server"), "{message}");
            }
        }
        assert_eq!(upstream.count(), 0, "{name}: nothing went upstream");
    }
    for (n, (name, http)) in clients().into_iter().enumerate() {
        let response = http
            .get(router.url("//v1//files"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        let got = upstream.last();
        assert_eq!(
            (got.method.as_str(), got.path.as_str()),
            ("GET", "/v1/files")
        );
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.endpoint, "GET /files", "{name}: no stray's record");
    }
    router.stop().await;
}

/// `models.delete` (a fine-tuned model) goes to the default server, its key upstream; a
/// `GET` of the model routes is still the router's merged list. Without a target the
/// `DELETE` is refused, its `Allow` the routes' own.
#[tokio::test]
async fn a_model_delete_goes_to_the_default_server() {
    let deleted = r#"{"id":"ft:gpt-4o:acme::abc","object":"model","deleted":true}"#;
    let (upstream, router) = with_default_server(Behavior {
        body: Some(deleted.into()),
        ..Default::default()
    })
    .await;
    for (name, http) in clients() {
        let response = http
            .delete(router.url("/v1/models/ft:gpt-4o:acme::abc"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.text().await.expect("body"), deleted, "{name}");
        let got = upstream.last();
        assert_eq!(
            (got.method.as_str(), got.path.as_str()),
            ("DELETE", "/v1/models/ft:gpt-4o:acme::abc"),
            "{name}"
        );
        assert_eq!(got.headers["authorization"], "Bearer sk-mock-upstream-key");
        let merged: Value = get_json(&http, router.url("/v1/models")).await;
        assert_eq!(merged["data"][0]["id"], "[mock]gpt-4o", "{name}");
    }
    router.stop().await;

    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for (name, http) in clients() {
        let response = http
            .delete(router.url("/v1/models/ft:gpt-4o:acme::abc"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 405, "{name}");
        assert_eq!(response.headers()["allow"], "GET, HEAD", "{name}");
        // Without `/v1` the same: the model routes need no prefix, so it is not suggested.
        let response = http
            .delete(router.url("/models/ft:gpt-4o:acme::abc"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 405, "{name}");
        assert_eq!(response.headers()["allow"], "GET, HEAD", "{name}");
        let error: Value = response.json().await.expect("json");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains("?proxy="), "{message}");
        assert!(!message.contains("starts with /v1/"), "{message}");
        assert!(
            !message.contains("[prefix]"),
            "no prefix, no word of one: {message}"
        );
        // An id as the merged list would give it, but its alias is not configured (mistyped):
        // the message says so.
        for path in [
            "/v1/models/[nosuch]ft:gpt-4o:acme::abc",
            "/models/%5Bnosuch%5Dft%3Agpt-4o",
        ] {
            let response = http.delete(router.url(path)).send().await.expect("send");
            assert_eq!(response.status(), 405, "{name} {path}");
            let error: Value = response.json().await.expect("json");
            let message = error["error"]["message"].as_str().expect("message");
            assert!(
                message.contains("[prefix] is no server in config.yaml"),
                "{name} {path}: {message}"
            );
        }
        // The same id with a configured alias goes there: not refused.
        let response = http
            .delete(router.url("/v1/models/[mock]ft:gpt-4o:acme::abc"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
    }
    assert_eq!(upstream.count(), clients().len());
    router.stop().await;
}

/// `models.delete` of an id as the merged list gives it, `[other]ft:...`, goes to that alias
/// with the bare id and that alias's key, raw or percent-encoded, with or without a
/// `default_server` (before: to the default server, prefix and all, or a 405); a user who may
/// not use that alias gets 403 and nothing goes upstream.
#[tokio::test]
async fn a_model_delete_of_an_aliased_id_goes_to_that_alias() {
    let deleted = r#"{"id":"ft:gpt-4o:acme::abc","object":"model","deleted":true}"#;
    let default = MockUpstream::start(Behavior::default()).await;
    let other = MockUpstream::start(Behavior {
        body: Some(deleted.into()),
        ..Default::default()
    })
    .await;
    let servers = format!(
        "{}  other:\n    url: \"{}\"\n    api_key: \"sk-other-upstream-key\"\n",
        one_server_config(&default.url(), ""),
        other.url()
    );
    for config in [
        servers.clone(),
        format!("{servers}settings:\n  default_server: mock\n"),
    ] {
        let router = TestRouter::start_with(&config, |state| {
            state.keys = Some(Arc::new(Users));
        })
        .await;
        for (name, http) in clients() {
            for path in [
                "/v1/models/[other]ft:gpt-4o:acme::abc",
                "/models/%5Bother%5Dft%3Agpt-4o%3Aacme%3A%3Aabc",
            ] {
                let response = http
                    .delete(router.url(path))
                    .bearer_auth(BOB_KEY)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200, "{name} {path}");
                assert_eq!(response.text().await.expect("body"), deleted);
                let got = other.last();
                assert_eq!(
                    (got.method.as_str(), got.path.as_str()),
                    ("DELETE", "/v1/models/ft:gpt-4o:acme::abc"),
                    "{name} {path}"
                );
                assert_eq!(got.headers["authorization"], "Bearer sk-other-upstream-key");
            }
            let response = http
                .delete(router.url("/v1/models/[other]ft:gpt-4o:acme::abc"))
                .bearer_auth(ANN_KEY)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 403, "{name}");
        }
        let record = router.records.nth(1).await;
        assert_eq!(record.provider, "other");
        assert_eq!(record.endpoint, "DELETE /models/ft:gpt-4o:acme::abc");
        // A name that is a dot segment would leave `/models/` on the alias's server
        // (`DELETE /v1/files/file-abc` with its key): not taken for an aliased model.
        for path in [
            "/v1/models/[other]../files/file-abc",
            "/v1/models/[other]%2e%2e/batches/b1",
            "/v1/models/[other]..%5cassistants%5casst_1",
            "/v1/models/[other]..",
            "/v1/models/[other].",
            "/v1/models/[other]..;/files/file-abc",
            "/v1/models/[other]..%3B/files/file-abc",
            // Read as `..` by a server that drops a name's last spaces or stops at a NUL.
            "/v1/models/[other]..%20/files/file-abc",
            "/v1/models/[other]..%00/files/file-abc",
            "/v1/models/[other].../files/file-abc",
        ] {
            // Refused (no default_server), or the id as it came to the default server.
            client()
                .delete(router.url(path))
                .bearer_auth(BOB_KEY)
                .send()
                .await
                .expect("send");
        }
        router.stop().await;
    }
    assert_eq!(other.count(), 8, "nothing more reached the alias");
    let escaped = default
        .received()
        .into_iter()
        .filter(|r| !r.path.starts_with("/v1/models/"));
    assert_eq!(
        escaped.count(),
        0,
        "nothing left /models/ on the default server"
    );
}

/// A 405's `Allow` names what the route takes for that request: `GET, DELETE, POST` where a
/// target exists. A `HEAD` is not forwarded, so where the `GET` is (`/v1/files` with a
/// target, the model routes with `?proxy=`) it gets 405 rather than the head of the
/// router's own list. The message is worded from what the request had: one with `?proxy=`
/// is not told to add it.
#[tokio::test]
async fn allow_and_head_follow_the_routing() {
    let (upstream, router) = with_default_server(Behavior::default()).await;
    let proxy = format!("?proxy={}", upstream.origin());
    let cases = [
        ("HEAD", "/v1/files".to_owned(), "GET, DELETE, POST"),
        ("PUT", format!("/v1/files{proxy}"), "GET, DELETE, POST"),
        ("HEAD", format!("/v1/models{proxy}"), "GET, DELETE"),
        ("HEAD", format!("/v1/models/gpt-4o{proxy}"), "GET, DELETE"),
        ("PUT", "/v1/models".to_owned(), "GET, HEAD, DELETE"),
        ("DELETE", "/v1/metrics".to_owned(), "GET, HEAD, POST"),
    ];
    for (name, http) in clients() {
        for (method, path, allow) in &cases {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = http
                .request(method.clone(), router.url(path))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 405, "{name} {method} {path}");
            assert_eq!(
                response.headers()["allow"],
                *allow,
                "{name} {method} {path}"
            );
            if method == reqwest::Method::HEAD {
                continue;
            }
            let error: Value = response.json().await.expect("json");
            let message = error["error"]["message"].as_str().expect("message");
            assert!(!message.contains("?proxy=<url>"), "{message}");
        }
    }
    assert_eq!(upstream.count(), 0, "nothing refused went upstream");
    // Without `?proxy=` the model list is the router's own, its HEAD too.
    for (name, http) in clients() {
        let response = http
            .head(router.url("/v1/models"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
    }
    router.stop().await;
}

/// A stored response as `GET /v1/responses/<id>` (and its cancellation) answers it, usage and
/// all: tokens generated, billed and counted when it was made.
const STORED_RESPONSE: &str = r#"{"id":"resp_1","object":"response","status":"completed","model":"gpt-4o","output":[],"usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}"#;

/// A read-back (`GET`, and a `POST` that names no model, as `responses.cancel`) records no
/// usage: each poll would count the same tokens again in the ledger and Langfuse. Its answer
/// is still recorded readably (a small JSON answer whole); a request that names a model
/// still counts its usage.
#[tokio::test]
async fn read_backs_do_not_count_the_usage_they_repeat() {
    let (upstream, router) = with_default_server(Behavior {
        body: Some(STORED_RESPONSE.into()),
        ..Default::default()
    })
    .await;
    let mut n = 0;
    for (name, http) in clients() {
        let got = http
            .get(router.url("/v1/responses/resp_1"))
            .send()
            .await
            .expect("send");
        assert_eq!(got.status(), 200, "{name}");
        assert_eq!(got.text().await.expect("body"), STORED_RESPONSE, "{name}");
        let got = http
            .post(router.url("/v1/responses/resp_1/cancel"))
            .send()
            .await
            .expect("send");
        assert_eq!(got.status(), 200, "{name}");
        assert_eq!(got.text().await.expect("body"), STORED_RESPONSE, "{name}");
        for endpoint in ["GET /responses/resp_1", "/responses/resp_1/cancel"] {
            n += 1;
            let record = router.records.nth(n).await;
            assert_eq!(record.endpoint, endpoint, "{name}");
            assert_eq!(record.outcome, Outcome::Success, "{name} {endpoint}");
            assert!(
                record.response.usage.is_none(),
                "{name} {endpoint}: {:?}",
                record.response.usage
            );
            assert!(!record.usage_partial(), "{name} {endpoint}");
            assert!(!record.stream, "{name} {endpoint}: one document");
            // Readable still: the answer whole, as JSON.
            assert!(record.response_is_json, "{name} {endpoint}");
            assert_eq!(
                record.response_body.as_deref(),
                Some(STORED_RESPONSE.as_bytes()),
                "{name} {endpoint}"
            );
        }
    }
    // A generation names its model: its usage counts.
    upstream.set(Behavior::default());
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    let record = router.records.nth(n + 1).await;
    assert!(record.response.usage.is_some());
    router.stop().await;
}

/// A Responses API `background: true` generation answers its own request at once, queued and
/// without usage; its tokens count when a read-back first finds it over (`GET`, or the answer
/// to its cancellation), and never again however often it is read back. Before, they never
/// counted. A background generation still running, or one that is not background, counts
/// nothing when read back.
#[tokio::test]
async fn a_background_generations_usage_counts_once_when_read_back_done() {
    let generation = |id: &str, status: &str, background: bool| {
        format!(
            r#"{{"id":"{id}","object":"response","background":{background},"status":"{status}","model":"gpt-4o","output":[],"usage":{{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}}"#
        )
    };
    let (upstream, router) = with_default_server(Behavior::default()).await;
    let read_back = |path: String, body: String| {
        upstream.set(Behavior {
            body: Some(body),
            ..Default::default()
        });
        let http = client();
        let url = router.url(&path);
        async move {
            let request = if path.ends_with("/cancel") {
                http.post(url)
            } else {
                http.get(url)
            };
            let response = request.send().await.expect("send");
            assert_eq!(response.status(), 200, "{path}");
        }
    };
    // (id, path after it, status, background, whether this read-back counts)
    let read_backs = [
        ("resp_bg", "", "in_progress", true, false),
        ("resp_bg", "", "completed", true, true),
        ("resp_bg", "", "completed", true, false),
        ("resp_fg", "", "completed", false, false),
        ("resp_c", "/cancel", "cancelled", true, true),
        ("resp_c", "", "cancelled", true, false),
    ];
    for (n, (id, rest, status, background, counts)) in read_backs.into_iter().enumerate() {
        let path = format!("/v1/responses/{id}{rest}");
        read_back(path.clone(), generation(id, status, background)).await;
        let record = router.records.nth(n + 1).await;
        assert_eq!(
            record.response.usage.as_ref().map(|u| u.total),
            counts.then_some(15),
            "read-back {} of {path}",
            n + 1
        );
    }
    router.stop().await;
}

/// A `background: true` generation whose own request already carried its usage (streamed to
/// its `response.completed`, or answered already completed) was counted there: a read-back
/// finding it done counts nothing. Before, the first read-back counted its tokens again. One
/// answered queued, without usage, still counts at its first read-back done, and only there.
#[tokio::test]
async fn a_background_generation_counted_by_its_own_request_counts_no_read_back() {
    let usage = r#"{"input_tokens":1000,"output_tokens":500,"total_tokens":1500}"#;
    let generation = |id: &str, status: &str, usage: Option<&str>| {
        let usage = usage.map_or(String::new(), |u| format!(r#","usage":{u}"#));
        format!(
            r#"{{"id":"{id}","object":"response","background":true,"status":"{status}","model":"gpt-4o","output":[]{usage}}}"#
        )
    };
    let (upstream, router) = with_default_server(Behavior::default()).await;
    let http = client();
    let create = |stream: bool| json!({"model": "[mock]gpt-4o", "input": "long task", "background": true, "stream": stream});
    // A streamed create: its `response.completed` carries the usage.
    let events = |id: &str| {
        let created = generation(id, "in_progress", None);
        let completed = generation(id, "completed", Some(usage));
        vec![
            format!("event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{created}}}\n\n").into_bytes(),
            format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{completed}}}\n\n").into_bytes(),
        ]
    };
    // (case, generation id, streamed)
    let cases = [
        ("streamed", "resp_streamed", true),
        ("answered done", "resp_done", false),
        ("answered queued", "resp_queued", false),
    ];
    let mut n = 0;
    for (name, id, stream) in cases {
        let queued = name == "answered queued";
        upstream.set(if stream {
            Behavior {
                raw_chunks: Some(events(id)),
                ..Default::default()
            }
        } else if queued {
            Behavior {
                body: Some(generation(id, "queued", None)),
                ..Default::default()
            }
        } else {
            Behavior {
                body: Some(generation(id, "completed", Some(usage))),
                ..Default::default()
            }
        });
        let response = http
            .post(router.url("/v1/responses"))
            .json(&create(stream))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        response.bytes().await.expect("body");
        n += 1;
        let record = router.records.nth(n).await;
        assert_eq!(
            record.response.usage.as_ref().map(|u| u.total),
            (!queued).then_some(1500),
            "{name}: its own request"
        );
        // Read back done, twice: only a generation answered queued counts, at the first.
        for read in [1, 2] {
            upstream.set(Behavior {
                body: Some(generation(id, "completed", Some(usage))),
                ..Default::default()
            });
            let response = http
                .get(router.url(&format!("/v1/responses/{id}")))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 200, "{name}");
            response.bytes().await.expect("body");
            n += 1;
            let record = router.records.nth(n).await;
            assert_eq!(record.endpoint, format!("GET /responses/{id}"));
            assert_eq!(
                record.response.usage.as_ref().map(|u| u.total),
                (queued && read == 1).then_some(1500),
                "{name}: read-back {read}"
            );
        }
    }
    router.stop().await;
}

/// A `GET`'s answer compressed although the router asked for `identity` is decoded for its
/// record, as a `POST`'s is: a background generation read back done counts its usage (the
/// record said `<application/json, gzip, 205 bytes>`, without usage), and a corrupt one is
/// the upstream's error, as a corrupt answer to a `POST` is (it was a success). The client
/// gets the bytes as they came.
#[tokio::test]
async fn a_compressed_answer_to_a_get_is_decoded_for_its_record() {
    // Past 64 KiB even compressed (digits of a pseudo-random sequence do not shrink much),
    // so it is relayed as it arrives and decoded from the copy kept for its record, not
    // read whole first (see `proxy::held_answer`).
    let mut seed: u64 = 7;
    let noise: String = (0..200_000)
        .map(|_| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(b'0' + (seed >> 59) as u8 % 10)
        })
        .collect();
    let done = |id: &str| {
        let instructions = if id == "resp_large" {
            noise.as_str()
        } else {
            ""
        };
        format!(
            r#"{{"id":"{id}","object":"response","background":true,"status":"completed","model":"gpt-4o","instructions":"{instructions}","output":[],"usage":{{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}}"#
        )
    };
    let (upstream, router) = with_default_server(Behavior::default()).await;
    let http = client();
    let mut corrupt = gzip(done("resp_bad").as_bytes());
    corrupt[10..].fill(0xFF);
    let large = gzip(done("resp_large").as_bytes());
    assert!(large.len() > 64 * 1024, "{}", large.len());
    let cases = [
        ("resp_large", "gzip", large),
        ("resp_gzip", "gzip", gzip(done("resp_gzip").as_bytes())),
        ("resp_br", "br", brotli(done("resp_br").as_bytes())),
        ("resp_zstd", "zstd", zstd(done("resp_zstd").as_bytes())),
        ("resp_bad", "gzip", corrupt),
    ];
    for (n, (id, coding, sent)) in cases.into_iter().enumerate() {
        upstream.set(Behavior {
            raw_body: Some(sent.clone()),
            headers: vec![("content-encoding".into(), coding.into())],
            ..Default::default()
        });
        let response = http
            .get(router.url(&format!("/v1/responses/{id}")))
            .header("accept-encoding", "gzip, br, zstd")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], coding);
        assert_eq!(response.bytes().await.expect("body"), sent, "{id}");

        let record = router.records.nth(n + 1).await;
        if id == "resp_bad" {
            assert_eq!(record.outcome, Outcome::UpstreamError);
            let error = record.error.as_deref().unwrap_or_default();
            assert!(
                error.starts_with("the upstream's compressed answer could not be decoded: "),
                "{error}"
            );
            // Small, it is read whole (see `proxy::held_answer`) and described as a corrupt
            // whole answer to a `POST` is.
            assert_eq!(
                record.response.content,
                format!("<binary, gzip, {} bytes>", sent.len())
            );
            continue;
        }
        assert_eq!(record.outcome, Outcome::Success, "{id}: {:?}", record.error);
        assert_eq!(
            record.response.usage.as_ref().map(|u| u.total),
            Some(15),
            "{id}"
        );
        assert_eq!(
            record.response_body.as_deref(),
            Some(done(id).as_bytes()),
            "{id}"
        );
        assert!(record.response_is_json);
    }
    router.stop().await;
}

/// A `GET`'s small answer (read whole, see `proxy::held_answer`) in a coding the client does
/// not take goes to it decoded, as a `POST`'s whole answer does: zstd to a client that takes
/// gzip, deflate and br (the openai SDKs), which failed to read it.
#[tokio::test]
async fn a_small_get_answer_in_a_coding_the_client_does_not_take_goes_decoded() {
    let answer = r#"{"id":"resp_1","object":"response","status":"completed","output":[]}"#;
    let (upstream, router) = with_default_server(Behavior {
        raw_body: Some(zstd(answer.as_bytes())),
        headers: vec![("content-encoding".into(), "zstd".into())],
        ..Default::default()
    })
    .await;
    let response = client()
        .get(router.url("/v1/responses/resp_1"))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(
        response.headers()["content-length"],
        answer.len().to_string()
    );
    assert_eq!(response.text().await.expect("body"), answer);
    let record = router.records.nth(1).await;
    assert_eq!(record.outcome, Outcome::Success, "{:?}", record.error);
    assert_eq!(record.response_body.as_deref(), Some(answer.as_bytes()));
    drop(upstream);
    router.stop().await;
}

/// `files.content` of a text file is relayed as it arrives, never held whole (the head and
/// first part reach the client while the upstream holds the rest), and its record is a note
/// of its type and size, not megabytes of its bytes (the request log writes the record).
#[tokio::test]
async fn a_large_text_answer_to_a_get_is_relayed_as_it_arrives() {
    // JSONL as `text/plain`: it opens with `{`, as one JSON document would.
    let line = format!("{{\"custom_id\":\"{}\"}}\n", "x".repeat(1000));
    let part: Vec<u8> = line.repeat(1024).into_bytes();
    let parts = 5;
    let upstream = MockUpstream::start(Behavior::default()).await;
    let config = format!(
        "{}settings:\n  default_server: mock\n",
        one_server_config(&upstream.url(), "")
    );
    let router = TestRouter::start(&config).await;
    for (n, (name, http)) in clients().into_iter().enumerate() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        upstream.set(Behavior {
            stream_unasked: true,
            stream_content_type: Some("text/plain; charset=utf-8".into()),
            raw_chunks: Some(vec![part.clone(); parts]),
            hold_chunk: Some((1, gate.clone())),
            ..Default::default()
        });
        let sent = http.get(router.url("/v1/files/file-abc/content")).send();
        let mut response = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("the head arrives before the upstream sends the rest")
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        let mut got = first_part(&mut response, part.len(), "sends the rest").await;
        gate.add_permits(1);
        got.extend_from_slice(&response.bytes().await.expect("the rest"));
        assert_eq!(got.len(), part.len() * parts, "{name}");
        assert!(got == part.repeat(parts), "{name}: the bytes are intact");

        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{name}");
        assert_eq!(
            record.response.content,
            format!("<text/plain, {} bytes>", part.len() * parts),
            "{name}"
        );
        assert!(record.response_body.is_none(), "{name}");
        assert!(
            record.body_bytes() < 1024,
            "{name}: {}",
            record.body_bytes()
        );
    }
    router.stop().await;
}

/// An error under a 200 that echoes the provider's key, answered to a forwarded `GET` or
/// `DELETE` (relayed as it arrives otherwise): it reaches the client without the key, as the
/// same answer to a `POST` does, whether it came with a `Content-Length`, chunked with the
/// key cut between two chunks, or gzipped (then decoded). Its record is the upstream's error.
#[tokio::test]
async fn a_200_error_echoing_the_key_to_a_get_reaches_the_client_redacted() {
    let echoed = r#"{"error":{"message":"provider failed, key sk-mock-upstream-key"}}"#;
    let redacted = echoed.replace("sk-mock-upstream-key", "[redacted]");
    let (at, _) = echoed.split_at(echoed.find("upstream-key").expect("key"));
    let cases = [
        (
            "content-length",
            Behavior {
                body: Some(echoed.into()),
                ..Default::default()
            },
        ),
        (
            "chunked",
            Behavior {
                stream_unasked: true,
                stream_content_type: Some("application/json".into()),
                raw_chunks: Some(vec![
                    at.as_bytes().to_vec(),
                    echoed.as_bytes()[at.len()..].to_vec(),
                ]),
                ..Default::default()
            },
        ),
        (
            "gzip",
            Behavior {
                raw_body: Some(crate::support::upstream::gzip(echoed.as_bytes())),
                headers: vec![("content-encoding".into(), "gzip".into())],
                ..Default::default()
            },
        ),
    ];
    let (upstream, router) = with_default_server(Behavior::default()).await;
    let mut n = 0;
    for (framing, behavior) in cases {
        upstream.set(behavior);
        for (name, http) in clients() {
            for method in [http::Method::GET, http::Method::DELETE] {
                let response = http
                    .request(method.clone(), router.url("/v1/files/file-abc"))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200, "{name} {method} {framing}");
                assert!(
                    response.headers().get("content-encoding").is_none(),
                    "{name} {method} {framing}"
                );
                let text = response.text().await.expect("body");
                assert_eq!(text, redacted, "{name} {method} {framing}");
                n += 1;
                let record = router.records.nth(n).await;
                assert_eq!(record.outcome, Outcome::UpstreamError, "{name} {method}");
                assert_eq!(
                    record.error.as_deref(),
                    Some("provider failed, key [redacted]"),
                    "{name} {method} {framing}"
                );
            }
        }
    }
    router.stop().await;
}

/// A file's content is the user's data: a one-line batch output file whose line reports an
/// error (`{"error": {...}, "custom_id": ...}`) reaches the client as it is and is recorded
/// as a success, not as the upstream's error. So is a resource read back (it has an `id`) that
/// reports its own failure, a failed fine-tuning job polled. An error envelope under a 200
/// (no `id`) to a `GET` still is the upstream's error.
#[tokio::test]
async fn an_error_shaped_file_or_failed_resource_is_not_the_upstreams_error() {
    let line =
        r#"{"custom_id":"r1","response":null,"error":{"code":"x","message":"line 3 failed"}}"#;
    let job = r#"{"id":"ftjob-1","object":"fine_tuning.job","status":"failed","error":{"code":"invalid_file","message":"bad file"}}"#;
    let envelope = r#"{"error":{"message":"provider failed"}}"#;
    let (upstream, router) = with_default_server(Behavior::default()).await;
    for (n, (path, body, outcome)) in [
        ("/v1/files/file-abc/content", line, Outcome::Success),
        ("/v1/fine_tuning/jobs/ftjob-1", job, Outcome::Success),
        ("/v1/files/file-abc", envelope, Outcome::UpstreamError),
    ]
    .into_iter()
    .enumerate()
    {
        upstream.set(Behavior {
            body: Some(body.into()),
            ..Default::default()
        });
        let response = client().get(router.url(path)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("body"), body, "{path}");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, outcome, "{path}");
    }
    assert_eq!(upstream.count(), 3);
    router.stop().await;
}

/// `application/jsonl` (and its kin) is many JSON documents, not one: a 2xx answer so
/// labelled to a `POST` is relayed as it arrives, as NDJSON is, so one cut halfway gives the
/// client the bytes that came rather than a 502 for a body the router held and lost.
#[tokio::test]
async fn a_jsonl_answer_cut_halfway_gives_the_client_what_came() {
    let first = b"{\"id\":1}\n{\"id\":2}\n".to_vec();
    let upstream = MockUpstream::start(Behavior::default()).await;
    let router = TestRouter::start(&one_server_config(&upstream.url(), "")).await;
    for label in [
        "application/jsonl",
        "application/jsonlines",
        "application/json-seq",
    ] {
        for (name, http) in clients() {
            // The cut waits for the gate, so the first part is on the wire before it.
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            upstream.set(Behavior {
                stream_unasked: true,
                stream_content_type: Some(label.into()),
                raw_chunks: Some(vec![first.clone(), b"{\"id\":3}\n".to_vec()]),
                hold_chunk: Some((1, gate.clone())),
                abort_after: Some(1),
                ..Default::default()
            });
            let sent = http
                .post(router.url("/v1/chat/completions"))
                .json(&json!({"model": "[mock]gpt-4o", "messages": []}))
                .send();
            let mut response = tokio::time::timeout(Duration::from_secs(10), sent)
                .await
                .expect("the head arrives before the upstream breaks off")
                .expect("send");
            assert_eq!(response.status(), 200, "{name} {label}");
            assert_eq!(response.headers()["content-type"], label, "{name} {label}");
            let mut got = first_part(&mut response, first.len(), "breaks off").await;
            gate.add_permits(1);
            // Then the body ends in an error where the upstream broke off.
            while let Ok(Some(chunk)) = response.chunk().await {
                got.extend_from_slice(&chunk);
            }
            assert!(
                got == first,
                "{name} {label}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    router.stop().await;
}

/// A `304 Not Modified` (or another 3xx) to a `GET` is an ordinary answer: relayed, and
/// recorded as a success with its status, not as the upstream's error.
#[tokio::test]
async fn a_redirect_to_a_get_is_an_ordinary_answer() {
    let (_upstream, router) = with_default_server(Behavior {
        status: 304,
        body: Some(String::new()),
        headers: vec![("etag".into(), "\"v1\"".into())],
        ..Default::default()
    })
    .await;
    for (n, (name, http)) in clients().into_iter().enumerate() {
        let response = http
            .get(router.url("/v1/files/file-abc/content"))
            .header("if-none-match", "\"v1\"")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 304, "{name}");
        assert_eq!(response.headers()["etag"], "\"v1\"", "{name}");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.status, Some(304), "{name}");
        assert_eq!(record.outcome, Outcome::Success, "{name}");
        assert_eq!(record.error, None, "{name}");
    }
    router.stop().await;
}

/// A `204 No Content` to a `DELETE` (relayed as it arrives, as every 2xx to it is) reaches
/// either client as an empty answer, and is recorded as a success.
#[tokio::test]
async fn a_no_content_answer_to_a_delete_is_relayed() {
    let (_upstream, router) = with_default_server(Behavior {
        status: 204,
        body: Some(String::new()),
        stream_unasked: false,
        ..Default::default()
    })
    .await;
    for (n, (name, http)) in clients().into_iter().enumerate() {
        let response = http
            .delete(router.url("/v1/files/file-abc"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 204, "{name}");
        assert_eq!(response.bytes().await.expect("body").len(), 0, "{name}");
        let record = router.records.nth(n + 1).await;
        assert_eq!(record.outcome, Outcome::Success, "{name}");
        assert_eq!(record.status, Some(204), "{name}");
    }
    // On the wire: no framing (a 204 has no body, RFC 9110), so the connection carries the
    // next answer cleanly.
    let mut raw = Raw::connect(router.addr).await;
    for _ in 0..2 {
        raw.send(b"DELETE /v1/files/file-abc HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 204);
        for framing in ["content-length", "transfer-encoding"] {
            assert_eq!(answer.header(framing), None, "{framing}");
        }
    }
    router.stop().await;
}
