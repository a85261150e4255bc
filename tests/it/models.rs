//! `/v1/models`, `/v1/models/<id>`, the model lookup of routing rule 4, and
//! `llmsrouter models`: several mock upstreams with different lists (one failing, one slow),
//! asserting on the merged list and on how many `/models` requests each upstream received.

use std::sync::Arc;
use std::time::Duration;

use llmsrouter::auth::{Caller, KeyIndex, Permissions};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{TestRouter, client, run_cli, wait_until};

const WITHIN: Duration = Duration::from_secs(10);

/// A mock whose `GET /models` answers `body`.
async fn upstream_listing(body: &str) -> MockUpstream {
    MockUpstream::start(Behavior {
        models_body: Some(body.to_owned()),
        ..Behavior::default()
    })
    .await
}

/// A mock whose `GET /models` answers only after every timeout here.
async fn slow_listing() -> MockUpstream {
    MockUpstream::start(Behavior {
        models_body: Some(r#"["too-late"]"#.into()),
        models_delay: Duration::from_secs(600),
        ..Behavior::default()
    })
    .await
}

/// `GET .../models` requests the upstream received.
fn model_fetches(upstream: &MockUpstream) -> usize {
    upstream
        .received()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/models"))
        .count()
}

/// One `servers:` entry with api key `sk-<alias>-key` and `extra` YAML lines.
fn server(alias: &str, url: &str, extra: &str) -> String {
    format!("  {alias}:\n    url: \"{url}\"\n    api_key: \"sk-{alias}-key\"\n{extra}")
}

fn config(servers: &[String], settings: &str) -> String {
    format!("servers:\n{}settings:\n{settings}", servers.concat())
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = client().get(url).send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

async fn list(router: &TestRouter) -> Value {
    let (status, body) = get_json(&router.url("/v1/models")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list", "{body}");
    body
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn list_ids(router: &TestRouter) -> Vec<String> {
    ids(&list(router).await)
}

#[tokio::test]
async fn the_list_merges_every_server_and_leaves_out_failing_and_slow_ones() {
    let a = upstream_listing(
        r#"{"object":"list","data":[
            {"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"openai","context_length":128000},
            {"id":"o1"}]}"#,
    )
    .await;
    let b = upstream_listing(r#"["qwen2.5:14b","llama3"]"#).await;
    let c = upstream_listing(r#"{"data":["deepseek-chat"]}"#).await;
    let broken = MockUpstream::start(Behavior {
        models_status: Some(500),
        models_body: Some(r#"{"error":{"message":"boom"}}"#.into()),
        ..Behavior::default()
    })
    .await;
    let slow = slow_listing().await;
    let fixed = upstream_listing(r#"["never-asked"]"#).await;
    let yaml = config(
        &[
            server("a", &a.url(), "    headers: {X-Title: \"router-test\"}\n"),
            format!("  b:\n    url: \"{}\"\n", b.url()),
            server("c", &c.url(), ""),
            server("broken", &broken.url(), ""),
            server("slow", &slow.url(), ""),
            server(
                "fixed",
                &fixed.url(),
                "    override: [\"x1\", \"x2\"]\n    append: [\"x3\"]\n",
            ),
        ],
        "  models_fetch_timeout_secs: 1\n",
    );
    let router = TestRouter::start(&yaml).await;

    let body = list(&router).await;
    assert_eq!(
        ids(&body),
        [
            "[a]gpt-4o",
            "[a]o1",
            "[b]qwen2.5:14b",
            "[b]llama3",
            "[c]deepseek-chat",
            "[fixed]x1",
            "[fixed]x2",
            "[fixed]x3"
        ]
    );
    assert_eq!(
        body["data"][0],
        json!({"id": "[a]gpt-4o", "object": "model", "created": 1715367049,
               "owned_by": "openai", "context_length": 128000})
    );
    for entry in body["data"].as_array().expect("data").iter().skip(1) {
        let alias = entry["id"].as_str().expect("id")[1..].split(']').next();
        assert_eq!(entry["object"], "model", "{entry}");
        assert_eq!(entry["created"], 0, "{entry}");
        assert_eq!(entry["owned_by"].as_str(), alias, "{entry}");
    }

    for (upstream, expected) in [
        (&a, 1),
        (&b, 1),
        (&c, 1),
        (&broken, 1),
        (&slow, 1),
        (&fixed, 0),
    ] {
        assert_eq!(model_fetches(upstream), expected, "{}", upstream.url());
    }
    let asked_a = a.last();
    assert_eq!(asked_a.path, "/v1/models");
    assert_eq!(asked_a.headers["authorization"], "Bearer sk-a-key");
    assert_eq!(asked_a.headers["x-title"], "router-test");
    assert!(
        b.last().headers.get("authorization").is_none(),
        "no api_key: no Authorization"
    );

    // Cached: the same list again, no upstream asked again.
    assert_eq!(list(&router).await, body);
    for (upstream, expected) in [
        (&a, 1),
        (&b, 1),
        (&c, 1),
        (&broken, 1),
        (&slow, 1),
        (&fixed, 0),
    ] {
        assert_eq!(model_fetches(upstream), expected, "{}", upstream.url());
    }
    router.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_requests_on_a_cold_cache_cause_one_fetch_per_server() {
    let gate = Arc::new(Semaphore::new(0));
    let gated = |body: &str| Behavior {
        models_body: Some(body.to_owned()),
        models_gate: Some(gate.clone()),
        ..Behavior::default()
    };
    let a = MockUpstream::start(gated(r#"["m-a"]"#)).await;
    let b = MockUpstream::start(gated(r#"["m-b"]"#)).await;
    let router = TestRouter::start(&config(
        &[server("a", &a.url(), ""), server("b", &b.url(), "")],
        "  models_cache_ttl_secs: 300\n",
    ))
    .await;

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = router.url("/v1/models");
            tokio::spawn(async move { get_json(&url).await })
        })
        .collect();
    // Every request is in the router, waiting, while both fetches are held at the gate.
    // (The fetches are spawned tasks: they may reach the mocks after the callers are counted.)
    wait_until(WITHIN, || {
        router.state.models.waiting() == 20 && model_fetches(&a) >= 1 && model_fetches(&b) >= 1
    })
    .await;
    assert_eq!((model_fetches(&a), model_fetches(&b)), (1, 1));
    gate.add_permits(1);

    for request in requests {
        let (status, body) = tokio::time::timeout(WITHIN, request)
            .await
            .expect("answered, not left hanging")
            .expect("request task");
        assert_eq!(status, 200);
        assert_eq!(ids(&body), ["[a]m-a", "[b]m-b"]);
    }
    assert_eq!((model_fetches(&a), model_fetches(&b)), (1, 1));
    router.stop().await;
}

#[tokio::test]
async fn an_expired_list_is_refreshed_once_while_callers_get_the_previous_one() {
    let a = upstream_listing(r#"["old-1","old-2"]"#).await;
    let router = TestRouter::start(&config(&[server("a", &a.url(), "")], "")).await;
    assert_eq!(list_ids(&router).await, ["[a]old-1", "[a]old-2"]);
    assert_eq!(model_fetches(&a), 1);

    let gate = Arc::new(Semaphore::new(0));
    a.set(Behavior {
        models_body: Some(r#"["new-1"]"#.into()),
        models_gate: Some(gate.clone()),
        ..Behavior::default()
    });
    router.state.models.invalidate();

    // The refresh is held at the gate, yet every caller is answered: with the previous list.
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = router.url("/v1/models");
            tokio::spawn(async move { get_json(&url).await })
        })
        .collect();
    for request in requests {
        let (status, body) = tokio::time::timeout(WITHIN, request)
            .await
            .expect("answered, not left hanging")
            .expect("request task");
        assert_eq!(status, 200);
        assert_eq!(ids(&body), ["[a]old-1", "[a]old-2"]);
    }
    wait_until(WITHIN, || model_fetches(&a) >= 2).await;
    assert_eq!(model_fetches(&a), 2, "one refresh for twenty callers");

    gate.add_permits(1);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while list_ids(&router).await != ["[a]new-1"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new list never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model_fetches(&a), 2);
    router.stop().await;
}

#[tokio::test]
async fn a_cache_ttl_of_zero_asks_the_servers_on_every_request() {
    let a = upstream_listing(r#"["m"]"#).await;
    let fixed = upstream_listing(r#"["never-asked"]"#).await;
    let router = TestRouter::start(&config(
        &[
            server("a", &a.url(), ""),
            server("fixed", &fixed.url(), "    override: [\"o\"]\n"),
        ],
        "  models_cache_ttl_secs: 0\n",
    ))
    .await;
    for expected in 1..=3 {
        assert_eq!(list_ids(&router).await, ["[a]m", "[fixed]o"]);
        assert_eq!(model_fetches(&a), expected);
    }
    assert_eq!(model_fetches(&fixed), 0);
    router.stop().await;
}

/// Two routers whose servers point at each other, one of them also at itself.
struct LoopedPair {
    x: MockUpstream,
    y: MockUpstream,
    a: TestRouter,
    /// `None` only while it restarts.
    b: Option<TestRouter>,
    b_addr: std::net::SocketAddr,
    b_config: String,
}

impl LoopedPair {
    async fn start(settings: &str) -> Self {
        let x = upstream_listing(r#"["mx"]"#).await;
        let y = upstream_listing(r#"["my"]"#).await;
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (la, lb) = (bind().await.expect("bind"), bind().await.expect("bind"));
        let b_addr = lb.local_addr().expect("addr");
        let a_url = format!("http://{}/v1", la.local_addr().expect("addr"));
        let b_url = format!("http://{b_addr}/v1");
        let a_config = config(
            &[
                server("x", &x.url(), ""),
                server("b", &b_url, "    append: [\"b-app\"]\n"),
                server("me", &a_url, ""),
            ],
            settings,
        );
        let b_config = config(
            &[server("y", &y.url(), ""), server("a", &a_url, "")],
            settings,
        );
        let a = TestRouter::start_on(la, &a_config).await;
        let b = TestRouter::start_on(lb, &b_config).await;
        Self {
            x,
            y,
            a,
            b: Some(b),
            b_addr,
            b_config,
        }
    }

    /// B stopped and started again on its address: a new process, with a new id.
    async fn restart_b(&mut self) {
        if let Some(old) = self.b.take() {
            old.stop().await;
        }
        let listener = tokio::net::TcpListener::bind(self.b_addr)
            .await
            .expect("rebind");
        self.b = Some(TestRouter::start_on(listener, &self.b_config).await);
    }

    fn b(&self) -> &TestRouter {
        self.b.as_ref().expect("b runs")
    }

    async fn assert_lists(&self) {
        assert_eq!(listed(&self.a).await, ["[x]mx", "[b][y]my", "[b]b-app"]);
        // A's addition to b leads back here: left out with b's list.
        assert_eq!(listed(self.b()).await, ["[y]my", "[a][x]mx"]);
    }

    async fn stop(self) {
        self.a.stop().await;
        if let Some(b) = self.b {
            b.stop().await;
        }
        drop((self.x, self.y));
    }
}

/// The ids of a router's list, which must come at once: the fetch timeout in these tests is
/// far longer than this wait.
async fn listed(router: &TestRouter) -> Vec<String> {
    let (status, body) = tokio::time::timeout(WITHIN, get_json(&router.url("/v1/models")))
        .await
        .expect("the routers waited on each other");
    assert_eq!(status, 200, "{body}");
    ids(&body)
}

/// Two routers whose servers point at each other, one of them also at itself: each list
/// answers at once (they waited on each other for the whole fetch timeout and listed nothing
/// of the other), holds the other router's own models, and never comes back nested
/// (`[b][a][b]...`), with a cache or none, and after one of them restarts with a new id.
#[tokio::test]
async fn routers_listing_each_other_or_themselves_answer_at_once_without_nesting() {
    let mut pair = LoopedPair::start("  models_fetch_timeout_secs: 600\n").await;
    for _ in 0..2 {
        pair.assert_lists().await;
    }
    pair.restart_b().await;
    // B's first list is asked of A, which still knows B's old process.
    assert_eq!(listed(pair.b()).await, ["[y]my", "[a][x]mx"]);
    pair.assert_lists().await;
    pair.stop().await;

    let pair =
        LoopedPair::start("  models_cache_ttl_secs: 0\n  models_fetch_timeout_secs: 600\n").await;
    for _ in 0..3 {
        pair.assert_lists().await;
    }
    pair.stop().await;
}

/// Routers in front of routers, three deep, with a slow server at the back: each list built
/// for the routers in front takes half the fetch timeout per router it is for, so every
/// router up the chain has its answer in time and the front one lists the back router's other
/// models (with one half for all, the middle router gave up on the back one at the moment the
/// back one gave up on its slow server). Twenty askers at once share one build.
#[tokio::test]
async fn routers_behind_routers_answer_within_their_share_of_the_fetch_timeout() {
    let p = MockUpstream::start(Behavior {
        models_body: Some(r#"["mp"]"#.into()),
        // Long enough for the twenty askers below to meet in one build.
        models_delay: Duration::from_millis(300),
        ..Behavior::default()
    })
    .await;
    let slow = slow_listing().await;
    let settings = "  models_fetch_timeout_secs: 4\n";
    let back = TestRouter::start(&config(
        &[server("p", &p.url(), ""), server("slow", &slow.url(), "")],
        settings,
    ))
    .await;
    let asked = (0..20).map(|_| {
        client()
            .get(back.url("/v1/models"))
            .header("x-llmsrouter-models-for", "0123")
            .send()
    });
    for response in futures_util::future::join_all(asked).await {
        let body: Value = response.expect("send").json().await.expect("json");
        assert_eq!(ids(&body), ["[p]mp"]);
    }
    // One fetch for the twenty, one by the refresh they started for the back router's own.
    assert_eq!(model_fetches(&p), 2);
    let middle = TestRouter::start(&config(&[server("z3", &back.url("/v1"), "")], settings)).await;
    let front = TestRouter::start(&config(&[server("z2", &middle.url("/v1"), "")], settings)).await;
    assert_eq!(listed(&front).await, ["[z2][z3][p]mp"]);
    front.stop().await;
    middle.stop().await;
    back.stop().await;
}

/// A model-list fetch naming the router itself is a 508, marked as a router's answer; a
/// garbled one a 400; one from another router gets the list, marked.
#[tokio::test]
async fn a_fetch_naming_the_router_itself_is_a_loop() {
    let pair = LoopedPair::start("").await;
    let own = pair.a.state.models.id().as_str().to_owned();
    let fetch = |value: String| {
        client()
            .get(pair.a.url("/v1/models"))
            .header("x-llmsrouter-models-for", value)
            .send()
    };
    let response = fetch(format!("0123,{own}")).await.expect("send");
    assert_eq!(response.status().as_u16(), 508);
    assert_eq!(response.headers()["x-llmsrouter-models-from"], own.as_str());
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "loop_detected", "{body}");
    let response = fetch("not an id".into()).await.expect("send");
    assert_eq!(response.status().as_u16(), 400);
    let response = fetch("0123".into()).await.expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-llmsrouter-models-from"], own.as_str());
    let body: Value = response.json().await.expect("json");
    assert_eq!(ids(&body), ["[x]mx", "[b][y]my", "[b]b-app"]);
    pair.stop().await;
}

#[tokio::test]
async fn a_server_that_fails_after_answering_keeps_its_last_good_list() {
    let a = upstream_listing(r#"["a-model"]"#).await;
    let b = upstream_listing(r#"["b-v1"]"#).await;
    let c = MockUpstream::start(Behavior {
        models_status: Some(503),
        ..Behavior::default()
    })
    .await;
    let router = TestRouter::start(&config(
        &[
            server("a", &a.url(), ""),
            server("b", &b.url(), ""),
            server("c", &c.url(), ""),
        ],
        "",
    ))
    .await;
    assert_eq!(list_ids(&router).await, ["[a]a-model", "[b]b-v1"]);

    // a now fails, b has a new list, c comes back.
    a.set(Behavior {
        models_status: Some(500),
        ..Behavior::default()
    });
    b.set(Behavior {
        models_body: Some(r#"["b-v2"]"#.into()),
        ..Behavior::default()
    });
    c.set(Behavior {
        models_body: Some(r#"["c-model"]"#.into()),
        ..Behavior::default()
    });
    router.state.models.invalidate();
    let expected = ["[a]a-model", "[b]b-v2", "[c]c-model"];
    let deadline = tokio::time::Instant::now() + WITHIN;
    while list_ids(&router).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (model_fetches(&a), model_fetches(&b), model_fetches(&c)),
        (2, 2, 2)
    );

    // An unprefixed model of the failing server is still routed to it.
    a.set(Behavior::default());
    let response = router
        .chat(&json!({"model": "a-model", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(a.last().json()["model"], "a-model");
    router.stop().await;
}

#[tokio::test]
async fn filter_override_and_append_follow_the_table() {
    let shared = upstream_listing(
        r#"["gpt-4o","gpt-4o-mini","openai/gpt-4o","o1-preview","deepseek-r1:free","free-llama","GPT-OSS:FREE"]"#,
    )
    .await;
    let url = shared.url();
    let router = TestRouter::start(&config(
        &[
            server("starts", &url, "    filter: \"gpt*\"\n"),
            server("ends", &url, "    filter: \"*free\"\n"),
            server("both", &url, "    filter: \"gpt free\"\n"),
            server("contains", &url, "    filter: \"GPT\"\n"),
            server("star", &url, "    filter: \"*\"\n"),
            server("blank", &url, "    filter: \"  \"\n"),
            server(
                "appended",
                &url,
                "    filter: \"o1\"\n    append: [\"my-model\", \"o1-preview\"]\n",
            ),
            server(
                "fixed",
                &url,
                "    filter: \"nothing-matches\"\n    override: [\"only-this\"]\n    append: [\"and-this\"]\n",
            ),
        ],
        "",
    ))
    .await;
    let all = [
        "gpt-4o",
        "gpt-4o-mini",
        "openai/gpt-4o",
        "o1-preview",
        "deepseek-r1:free",
        "free-llama",
        "GPT-OSS:FREE",
    ];
    let mut expected: Vec<String> = Vec::new();
    let mut add = |alias: &str, names: &[&str]| {
        expected.extend(names.iter().map(|n| format!("[{alias}]{n}")));
    };
    add("starts", &["gpt-4o", "gpt-4o-mini", "GPT-OSS:FREE"]);
    add("ends", &["deepseek-r1:free", "GPT-OSS:FREE"]);
    add("both", &["GPT-OSS:FREE"]);
    add(
        "contains",
        &["gpt-4o", "gpt-4o-mini", "openai/gpt-4o", "GPT-OSS:FREE"],
    );
    add("star", &all);
    add("blank", &all);
    add("appended", &["o1-preview", "my-model"]);
    add("fixed", &["only-this", "and-this"]);
    assert_eq!(list_ids(&router).await, expected);
    assert_eq!(
        model_fetches(&shared),
        7,
        "one per server, none for override"
    );
    router.stop().await;
}

#[tokio::test]
async fn one_model_is_found_by_raw_and_percent_encoded_ids() {
    let a = upstream_listing(
        r#"{"data":[{"id":"google/gemini-2.0-flash","owned_by":"google","created":1733000000}]}"#,
    )
    .await;
    let b = upstream_listing(r#"["qwen"]"#).await;
    let router = TestRouter::start(&config(
        &[server("a", &a.url(), ""), server("b", &b.url(), "")],
        "",
    ))
    .await;
    let listed = list(&router).await;
    let gemini = &listed["data"][0];

    for path in [
        "/v1/models/%5Ba%5Dgoogle%2Fgemini-2.0-flash",
        "/v1/models/[a]google/gemini-2.0-flash",
        "/models/%5Ba%5Dgoogle%2Fgemini-2.0-flash",
        "/v1/models/%5ba%5dgoogle%2fgemini-2.0-flash",
    ] {
        let (status, body) = get_json(&router.url(path)).await;
        assert_eq!((status, &body), (200, gemini), "{path}");
    }
    let (status, body) = get_json(&router.url("/v1/models/qwen")).await;
    assert_eq!(status, 200, "an unprefixed id finds its owner's entry");
    assert_eq!(body["id"], "[b]qwen");

    for path in [
        "/v1/models/%5Ba%5Dnope",
        "/v1/models/%5Bb%5Dgoogle%2Fgemini-2.0-flash",
        "/v1/models/%5Bzzz%5Dqwen",
        "/v1/models/nope",
    ] {
        let (status, body) = get_json(&router.url(path)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("aliases: a, b"), "{message}");
    }
    assert_eq!((model_fetches(&a), model_fetches(&b)), (1, 1));
    router.stop().await;
}

#[tokio::test]
async fn unprefixed_models_go_to_the_first_server_listing_them() {
    let a = upstream_listing(r#"["shared","only-a"]"#).await;
    let b = upstream_listing(r#"["shared","only-b"]"#).await;
    let router = TestRouter::start(&config(
        &[server("a", &a.url(), ""), server("b", &b.url(), "")],
        "",
    ))
    .await;
    let chat = |model: &str| {
        client()
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": model, "messages": []}))
            .send()
    };

    // Cold cache: the lookup fetches the lists first.
    let response = chat("only-b").await.expect("send");
    assert_eq!(response.status(), 200);
    let sent = b.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.json()["model"], "only-b");
    assert_eq!(sent.headers["authorization"], "Bearer sk-b-key");

    let response = chat("shared").await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        a.last().path,
        "/v1/chat/completions",
        "the first server wins"
    );

    let response = chat("nowhere").await.expect("send");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_found");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("aliases: a, b"), "{message}");

    assert_eq!((model_fetches(&a), model_fetches(&b)), (1, 1));
    router.stop().await;
}

/// Servers merged into `servers:` by `<<` come where PyYAML put them (merged ones first, a
/// `<<: [...]` list last listed first), so the first server listing a model, and the order of
/// `/v1/models`, are the Python version's: they used to come after the written ones, and an
/// unprefixed `shared` went to `w` where the Python version sent it to `n`.
#[tokio::test]
async fn merged_servers_come_first_in_config_order_as_pyyaml_puts_them() {
    let w = upstream_listing(r#"["shared","only-w"]"#).await;
    let m = upstream_listing(r#"["shared","only-m"]"#).await;
    let n = upstream_listing(r#"["shared","only-n"]"#).await;
    let one_line =
        |alias: &str, url: &str| format!("{alias}: {{url: \"{url}\", api_key: sk-{alias}-key}}");
    let yaml = format!(
        "servers:\n  {}\n  <<: [{{{}}}, {{{}}}]\n",
        one_line("w", &w.url()),
        one_line("m", &m.url()),
        one_line("n", &n.url()),
    );
    let router = TestRouter::start(&yaml).await;

    assert_eq!(
        list_ids(&router).await,
        [
            "[n]shared",
            "[n]only-n",
            "[m]shared",
            "[m]only-m",
            "[w]shared",
            "[w]only-w"
        ]
    );
    let response = client()
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": "shared", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let sent = n.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.json()["model"], "shared");
    assert_eq!(sent.headers["authorization"], "Bearer sk-n-key");
    let chats = |upstream: &MockUpstream| {
        upstream
            .received()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .count()
    };
    assert_eq!((chats(&w), chats(&m), chats(&n)), (0, 0, 1));
    router.stop().await;
}

#[tokio::test]
async fn with_a_default_server_no_model_list_is_fetched_for_routing() {
    let a = upstream_listing(r#"["only-a"]"#).await;
    let b = upstream_listing(r#"["only-b"]"#).await;
    let router = TestRouter::start(&config(
        &[server("a", &a.url(), ""), server("b", &b.url(), "")],
        "  default_server: b\n",
    ))
    .await;
    let response = router
        .chat(&json!({"model": "only-a", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(b.last().json()["model"], "only-a");
    assert_eq!((model_fetches(&a), model_fetches(&b)), (0, 0));

    let (status, body) = get_json(&router.url("/v1/models/only-b")).await;
    assert_eq!((status, &body["id"]), (200, &json!("[b]only-b")));
    let (status, _) = get_json(&router.url("/v1/models/only-a")).await;
    assert_eq!(status, 404, "the default server does not list it");
    router.stop().await;
}

/// Keys for the narrowing hook: `k-b` may use only `b`.
struct OnlyB;

impl KeyIndex for OnlyB {
    fn find(&self, key: &str) -> Option<Caller> {
        (key == "k-b").then(|| Caller {
            user: Some("bea".into()),
            permissions: Permissions::Only(["b".to_owned()].into()),
        })
    }
}

#[tokio::test]
async fn a_user_sees_and_reaches_only_the_providers_they_may_use() {
    let a = upstream_listing(r#"["shared","only-a"]"#).await;
    let b = upstream_listing(r#"["shared","only-b"]"#).await;
    let yaml = config(&[server("a", &a.url(), ""), server("b", &b.url(), "")], "");
    let router = TestRouter::start_with(&yaml, |state| state.keys = Some(Arc::new(OnlyB))).await;
    let get = |path: &str| client().get(router.url(path)).bearer_auth("k-b").send();

    let body: Value = get("/v1/models")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(ids(&body), ["[b]shared", "[b]only-b"]);

    let response = get("/v1/models/%5Ba%5Donly-a").await.expect("send");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("aliases: b") && !message.contains("a, b"),
        "{message}"
    );

    let response = client()
        .post(router.url("/v1/chat/completions"))
        .bearer_auth("k-b")
        .json(&json!({"model": "shared", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        b.last().path,
        "/v1/chat/completions",
        "a is skipped for this user"
    );

    let status = client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 401, "no key, no list");
    assert_eq!(model_fetches(&a), 1, "the cache is shared: a was fetched");
    router.stop().await;
}

/// A server url with a query of its own (Azure's `?api-version=`): its model list is asked
/// at `{path}/models?{query}`, as a chat request keeps the query after its path; the list
/// went to `...?api-version=.../models` and was lost.
#[tokio::test]
async fn a_server_url_with_a_query_keeps_it_after_models() {
    let upstream = upstream_listing(r#"["gpt-4o"]"#).await;
    let url = format!("{}?api-version=2024-10-21", upstream.url());
    let router = TestRouter::start(&config(&[server("azure", &url, "")], "")).await;
    assert_eq!(list_ids(&router).await, ["[azure]gpt-4o"]);
    let fetch = upstream
        .received()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("the list was asked for");
    assert!(fetch.path.ends_with("/v1/models"), "{}", fetch.path);
    assert_eq!(fetch.query.as_deref(), Some("api-version=2024-10-21"));
    router.stop().await;
}

#[tokio::test]
async fn bad_upstream_answers_leave_only_that_server_out() {
    let good = upstream_listing(r#"["fine"]"#).await;
    let not_json = upstream_listing("<html>gateway error</html>").await;
    let not_a_list = upstream_listing(r#"{"data": 5}"#).await;
    let no_ids = upstream_listing(r#"{"data":[{"name":"x"},{"model":"y"}]}"#).await;
    let partly = upstream_listing(r#"{"data":[{"id":"kept"},{"name":"dropped"}]}"#).await;
    let huge = upstream_listing(&format!(r#"["{}"]"#, "x".repeat(50 * 1024 * 1024))).await;
    let silent = MockUpstream::start(Behavior {
        models_delay: Duration::from_secs(3600),
        ..Behavior::default()
    })
    .await;
    let router = TestRouter::start(&config(
        &[
            server("good", &good.url(), ""),
            server("not_json", &not_json.url(), ""),
            server("not_a_list", &not_a_list.url(), ""),
            server("no_ids", &no_ids.url(), ""),
            server("partly", &partly.url(), ""),
            server("huge", &huge.url(), ""),
            server("silent", &silent.url(), ""),
        ],
        "  models_fetch_timeout_secs: 1\n",
    ))
    .await;
    assert_eq!(list_ids(&router).await, ["[good]fine", "[partly]kept"]);
    let (status, _) = get_json(&router.url("/health")).await;
    assert_eq!(status, 200);
    for upstream in [&not_json, &not_a_list, &no_ids, &huge, &silent] {
        assert_eq!(model_fetches(upstream), 1);
    }
    router.stop().await;
}

/// Entries with no usable id (none, not a string, empty or only white space) are left out
/// and counted in one warning per server, in words that fit the count.
#[tokio::test]
async fn entries_without_a_usable_id_are_counted_blank_ones_too() {
    let one = upstream_listing(r#"{"data":[{"id":"   "},{"id":"ok1"}]}"#).await;
    let two = upstream_listing(r#"[{"id":""},"\t ","ok2"]"#).await;
    let yaml = config(
        &[server("one", &one.url(), ""), server("two", &two.url(), "")],
        "",
    );
    let router = crate::support::RouterProcess::start(Some(&yaml), &[]);
    router
        .list_models_and_wait_for_warnings(&[
            (
                "one",
                "1 entry of its model list has no usable \"id\" and is left out",
            ),
            (
                "two",
                "2 entries of its model list have no usable \"id\" and are left out",
            ),
        ])
        .await;
    let (status, body) = get_json(&router.url("/v1/models")).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), ["[one]ok1", "[two]ok2"]);
}

/// A list that starts with a UTF-8 byte-order mark (RFC 8259 lets a parser ignore it) is read
/// as the list it is, not refused as "not JSON".
#[tokio::test]
async fn a_list_after_a_byte_order_mark_is_read() {
    let bom = upstream_listing("\u{feff}{\"data\":[{\"id\":\"bom-model\"}]}").await;
    let router = TestRouter::start(&config(&[server("bom", &bom.url(), "")], "")).await;
    assert_eq!(list_ids(&router).await, ["[bom]bom-model"]);
    router.stop().await;
}

/// A list compressed although the router asked for `identity` (as some servers do; the
/// Python version's aiohttp decoded them) is decoded; one that does not decode leaves only
/// its server out, saying why.
#[tokio::test]
async fn a_compressed_list_is_decoded_and_a_corrupt_one_named() {
    let coded = |coding: &'static str, body: &str| {
        MockUpstream::start(Behavior {
            models_body: Some(body.to_owned()),
            models_coding: Some(coding),
            ..Behavior::default()
        })
    };
    let gzipped = coded("gzip", r#"{"data":[{"id":"gz-model"}]}"#).await;
    let deflated = coded("deflate", r#"["zl-model"]"#).await;
    let corrupt = MockUpstream::start(Behavior {
        models_body: Some(r#"["plain"]"#.to_owned()),
        headers: vec![("content-encoding".to_owned(), "gzip".to_owned())],
        ..Behavior::default()
    })
    .await;
    let yaml = config(
        &[
            server("gz", &gzipped.url(), ""),
            server("zl", &deflated.url(), ""),
            server("corrupt", &corrupt.url(), ""),
        ],
        "",
    );
    let router = TestRouter::start(&yaml).await;
    assert_eq!(list_ids(&router).await, ["[gz]gz-model", "[zl]zl-model"]);
    let fetch = gzipped
        .received()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("the list was asked for");
    assert_eq!(fetch.headers["accept-encoding"], "identity");
    router.stop().await;

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), &yaml).expect("write");
    let (code, stdout, stderr) = cli(dir.path(), &["models"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("[gz]gz-model") && stdout.contains("[zl]zl-model"),
        "{stdout}"
    );
    assert!(
        stderr
            .contains("server \"corrupt\": its answer cannot be decoded: the gzip body is corrupt"),
        "{stderr}"
    );

    // An error answer compressed so is quoted decoded: it was quoted as compressed bytes.
    let refusing = MockUpstream::start(Behavior {
        models_status: Some(400),
        models_body: Some(r#"{"error":{"message":"no lists today"}}"#.to_owned()),
        models_coding: Some("gzip"),
        ..Behavior::default()
    })
    .await;
    std::fs::write(
        dir.path().join("config.yaml"),
        config(&[server("refusing", &refusing.url(), "")], ""),
    )
    .expect("write");
    let (_, _, stderr) = cli(dir.path(), &["models"]).await;
    assert!(
        stderr.contains(
            "server \"refusing\": HTTP 400: {\"error\":{\"message\":\"no lists today\"}}"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("\\u{1f}"), "no gzip header: {stderr}");
}

/// A `filter` that keeps none of a server's models (most likely a regular expression from the
/// Python version, where here only `*` is special) is warned of: by `llmsrouter models`, and
/// by `serve` once, not at each refresh. Said without the hint for a plain term, and not at
/// all for a filter that keeps something or an `override` server's (never applied).
#[tokio::test]
async fn a_filter_that_keeps_nothing_is_warned_of_once() {
    let shared = upstream_listing(r#"["gpt-4o","claude-3","deepseek-r1:free"]"#).await;
    let url = shared.url();
    let yaml = config(
        &[
            server("anchored", &url, "    filter: \"^gpt\"\n"),
            server("either", &url, "    filter: \"gpt|claude\"\n"),
            server("plain", &url, "    filter: \"llama\"\n"),
            server("fine", &url, "    filter: \"gpt*\"\n"),
            server("fixed", &url, "    filter: \"^x\"\n    override: [\"m\"]\n"),
        ],
        "  models_cache_ttl_secs: 0\n",
    );
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), &yaml).expect("write");
    let (code, stdout, stderr) = cli(dir.path(), &["models"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("[fine]gpt-4o") && stdout.contains("[fixed]m"),
        "{stdout}"
    );
    let regex_hint = "; its terms look like regular expressions, but filter terms are plain \
                      text and globs (only `*` is special; see README \"filter\")";
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .collect::<Vec<_>>(),
        [
            format!(
                "warning: server \"anchored\": filter \"^gpt\" keeps none of its 3 models{regex_hint}"
            ),
            format!(
                "warning: server \"either\": filter \"gpt|claude\" keeps none of its 3 models{regex_hint}"
            ),
            "warning: server \"plain\": filter \"llama\" keeps none of its 3 models".to_owned(),
        ]
    );

    let router = crate::support::RouterProcess::start(
        Some(&yaml),
        &[("LLMSROUTER_LEDGER", "false"), ("LLMSROUTER_LOG_FILE", "")],
    );
    for _ in 0..3 {
        let (status, _) = get_json(&router.url("/v1/models")).await;
        assert_eq!(status, 200);
    }
    let fetched = model_fetches(&shared);
    assert!(fetched >= 4 * 4, "asked again at each request: {fetched}");
    let said = router.stderr();
    for alias in ["anchored", "either", "plain"] {
        let warnings = said
            .lines()
            .filter(|l| l.contains("keeps none") && l.contains(&format!("server={alias}")))
            .count();
        assert_eq!(warnings, 1, "{alias}: {said}");
    }
    assert!(
        !said.contains("server=fine") && !said.contains("server=fixed"),
        "{said}"
    );
}

// ---- llmsrouter models -------------------------------------------------------------------

async fn cli(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let dir = dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    // The mocks run on this test's runtime: the CLI must not block it.
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&dir, &args, &[])
    })
    .await
    .expect("cli task")
}

#[tokio::test]
async fn the_models_command_prints_the_same_list_as_the_server() {
    let a = upstream_listing(
        r#"{"data":[{"id":"gpt-4o","owned_by":"openai","created":1700000000,"context_length":128000}]}"#,
    )
    .await;
    let broken = MockUpstream::start(Behavior {
        models_status: Some(500),
        ..Behavior::default()
    })
    .await;
    let yaml = config(
        &[
            server("a", &a.url(), "    append: [\"extra\"]\n"),
            server("broken", &broken.url(), ""),
            server("fixed", &a.url(), "    override: [\"x1\"]\n"),
        ],
        "",
    );
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("other.yaml"), &yaml).expect("write");

    let (code, stdout, stderr) =
        cli(dir.path(), &["models", "--json", "--config", "other.yaml"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("server \"broken\"") && stderr.contains("HTTP 500"),
        "{stderr}"
    );
    let router = TestRouter::start(&yaml).await;
    let served = client()
        .get(router.url("/v1/models"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    assert_eq!(
        stdout.trim_end(),
        served,
        "the CLI prints what /v1/models serves"
    );
    assert_eq!(
        ids(&serde_json::from_str(&stdout).expect("json")),
        ["[a]gpt-4o", "[a]extra", "[fixed]x1"]
    );

    std::fs::write(dir.path().join("config.yaml"), &yaml).expect("write");
    let (code, stdout, stderr) = cli(dir.path(), &["models"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("OWNED BY"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("[a]gpt-4o")
            && lines[1].contains("openai")
            && lines[1].contains("2023-11-14"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("[fixed]x1") && lines[3].contains("fixed"),
        "{stdout}"
    );
    assert!(stderr.contains("server \"broken\""), "{stderr}");
    router.stop().await;
}

#[tokio::test]
async fn the_models_command_fails_only_when_nothing_could_be_listed() {
    let broken = MockUpstream::start(Behavior {
        models_status: Some(401),
        models_body: Some(r#"{"error":{"message":"bad key sk-broken-key"}}"#.into()),
        ..Behavior::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path();

    std::fs::write(
        path.join("config.yaml"),
        config(&[server("broken", &broken.url(), "")], ""),
    )
    .expect("write");
    let (code, stdout, stderr) = cli(path, &["models"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("server \"broken\": HTTP 401"), "{stderr}");
    assert!(
        stderr.contains("error: no model could be listed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk-broken-key"),
        "the key is never printed: {stderr}"
    );

    std::fs::write(path.join("config.yaml"), "servers: {}\n").expect("write");
    let (code, stdout, stderr) = cli(path, &["models", "--json"]).await;
    assert_eq!(
        code, 0,
        "no servers is an empty list, not an error: {stderr}"
    );
    assert_eq!(stdout.trim_end(), r#"{"object":"list","data":[]}"#);

    std::fs::remove_file(path.join("config.yaml")).expect("remove");
    let (code, _, stderr) = cli(path, &["models"]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("config.yaml") && stderr.contains("not found"),
        "{stderr}"
    );
}

/// A failed server's error text comes from the upstream: its control and invisible
/// formatting characters are shown escaped, as the table's ids are, in `llmsrouter models`'
/// warning and in the `serve` log alike, never sent to the terminal.
#[tokio::test]
async fn a_failed_servers_error_text_is_shown_escaped() {
    let broken = MockUpstream::start(Behavior {
        models_status: Some(500),
        models_body: Some("\u{1b}[31mred\u{1b}[0m \u{202e}gnp.exe".into()),
        ..Behavior::default()
    })
    .await;
    let yaml = config(&[server("broken", &broken.url(), "")], "");
    let escaped = r"HTTP 500: \u{1b}[31mred\u{1b}[0m \u{202e}gnp.exe";
    let raw = |text: &str| text.contains(['\u{1b}', '\u{202e}']);

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), &yaml).expect("write");
    let (_, _, stderr) = cli(dir.path(), &["models"]).await;
    assert!(
        stderr.contains(&format!("warning: server \"broken\": {escaped};")),
        "{stderr}"
    );
    assert!(!raw(&stderr), "{stderr:?}");

    let router = crate::support::RouterProcess::start(Some(&yaml), &[]);
    router
        .list_models_and_wait_for_warnings(&[("broken", escaped)])
        .await;
    let log = router.stderr();
    assert!(!raw(&log), "{log:?}");
}

/// A failed server's `append` entries come from the config and are still listed: its warning
/// says its fetched models are left out and those entries are listed, in `llmsrouter models`
/// and in the `serve` log; a server with none (or only blank ones) has its models left out.
#[tokio::test]
async fn a_failed_server_with_append_entries_is_said_to_keep_them() {
    let dead = crate::support::closed_url();
    let yaml = config(
        &[
            server("dead", &dead, "    append: [\"app-dead\"]\n"),
            server("plain", &dead, ""),
            server("blank", &dead, "    append: [\" \"]\n"),
        ],
        "",
    );
    let kept =
        "its fetched models are left out; its append entries from the config are still listed";
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("config.yaml"), &yaml).expect("write");
    let (code, stdout, stderr) = cli(dir.path(), &["models", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        ids(&serde_json::from_str(&stdout).expect("json")),
        ["[dead]app-dead"]
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: server \"dead\": unreachable: ")
            && warnings[0].ends_with(&format!("; {kept}")),
        "{stderr}"
    );
    for line in &warnings[1..] {
        assert!(line.ends_with("; its models are left out"), "{stderr}");
    }

    let router = crate::support::RouterProcess::start(Some(&yaml), &[]);
    router
        .list_models_and_wait_for_warnings(&[
            (
                "dead",
                &kept.replacen("left out", "left out of /v1/models", 1),
            ),
            ("plain", "; its models are left out of /v1/models"),
            ("blank", "; its models are left out of /v1/models"),
        ])
        .await;
}

/// A server's configured framing and hop-by-hop fields (`Content-Length`, `Transfer-Encoding`,
/// `Connection`, `Keep-Alive`) are left out of the model list's fetch and of every proxied
/// request, and the config still loads: sent on a `GET` with no body, a `Content-Length` had
/// the upstream wait for bytes that never came, and a `Connection: close` went upstream on
/// every request. Its other configured headers still go.
#[tokio::test]
async fn configured_framing_and_hop_by_hop_headers_never_reach_the_upstream() {
    let upstream = upstream_listing(r#"{"data":[{"id":"m1"}]}"#).await;
    let extra = "    headers: {Content-Length: \"5\", Transfer-Encoding: chunked, Connection: close, Keep-Alive: timeout=5, X-Title: me}\n";
    let router = TestRouter::start(&config(
        &[server("a", &upstream.url(), extra)],
        "  models_fetch_timeout_secs: 5\n",
    ))
    .await;
    assert_eq!(list_ids(&router).await, ["[a]m1"]);
    let fetch = upstream.last();
    let chat = client()
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": "[a]m1", "messages": []}))
        .send()
        .await
        .expect("chat");
    assert_eq!(chat.status(), 200);
    let proxied = upstream.last();
    for request in [&fetch, &proxied] {
        let field = |name: &str| request.headers.get(name).map(|v| v.as_bytes().to_vec());
        let path = &request.path;
        assert_eq!(field("x-title").as_deref(), Some(&b"me"[..]), "{path}");
        assert_ne!(
            field("content-length").as_deref(),
            Some(&b"5"[..]),
            "{path}"
        );
        assert_ne!(
            field("transfer-encoding").as_deref(),
            Some(&b"chunked"[..]),
            "{path}"
        );
        assert_ne!(
            field("connection").as_deref(),
            Some(&b"close"[..]),
            "{path}"
        );
        assert_eq!(field("keep-alive"), None, "{path}");
    }
    router.stop().await;
}

/// A server whose `url` has `user:password@` is asked for its model list with one
/// `Authorization`, by the rule a chat request follows: the api key's Bearer, a configured
/// `Authorization` over that, the url's Basic credentials only when neither is there. reqwest
/// sent the url's Basic beside the key's Bearer, two fields. The user info is not in the
/// request it sent.
#[tokio::test]
async fn a_model_list_fetch_sends_one_authorization_for_credentials_in_the_url() {
    let (basic, keyed, configured) = (
        upstream_listing(r#"{"data":[{"id":"b"}]}"#).await,
        upstream_listing(r#"{"data":[{"id":"k"}]}"#).await,
        upstream_listing(r#"{"data":[{"id":"c"}]}"#).await,
    );
    let with_credentials =
        |upstream: &MockUpstream| upstream.url().replacen("http://", "http://user:p%40ss@", 1);
    let servers = [
        format!("  basic:\n    url: \"{}\"\n", with_credentials(&basic)),
        server("keyed", &with_credentials(&keyed), ""),
        server(
            "configured",
            &with_credentials(&configured),
            "    headers:\n      Authorization: \"Token configured-secret\"\n",
        ),
    ];
    let router = TestRouter::start(&config(&servers, "")).await;
    let mut listed = list_ids(&router).await;
    listed.sort();
    assert_eq!(listed, ["[basic]b", "[configured]c", "[keyed]k"]);
    for (upstream, authorization) in [
        // base64("user:p@ss")
        (&basic, "Basic dXNlcjpwQHNz"),
        (&keyed, "Bearer sk-keyed-key"),
        (&configured, "Token configured-secret"),
    ] {
        let fetch = upstream.last();
        assert_eq!(
            (fetch.method.as_str(), fetch.path.as_str()),
            ("GET", "/v1/models")
        );
        let sent: Vec<_> = fetch.headers.get_all("authorization").iter().collect();
        assert_eq!(sent, [authorization]);
        assert!(!fetch.target.contains('@'), "{}", fetch.target);
        assert_eq!(fetch.headers["host"], upstream.addr.to_string());
    }
    router.stop().await;
}

/// Lines of the router's log that hold `text`.
fn lines_saying(router: &crate::support::RouterProcess, text: &str) -> usize {
    router.stderr().lines().filter(|l| l.contains(text)).count()
}

/// A server whose list fetch keeps failing the same way (the same status, whatever its
/// error body quotes) is warned of once, not at every
/// refresh (with a short TTL, one line per request); its coming back is said, and a failure
/// after that is warned of again.
#[tokio::test]
async fn a_lasting_model_list_failure_is_warned_of_once() {
    let failing = Behavior {
        models_status: Some(500),
        models_body: Some(r#"{"error":{"message":"boom"}}"#.into()),
        ..Behavior::default()
    };
    let upstream = MockUpstream::start(failing.clone()).await;
    let yaml = config(
        &[server("a", &upstream.url(), "")],
        "  models_cache_ttl_secs: 0\n",
    );
    let router = crate::support::RouterProcess::start(Some(&yaml), &[]);
    let failed = "GET /models failed";
    for fetches in 1..=3 {
        // An error body quoting a request id differs at every retry: the same failure still.
        upstream.set(Behavior {
            models_body: Some(format!(
                r#"{{"error":{{"message":"boom, request {fetches}"}}}}"#
            )),
            ..failing.clone()
        });
        router
            .list_models_and_wait_for_warnings(&[("a", failed)])
            .await;
        wait_until(WITHIN, || model_fetches(&upstream) >= fetches).await;
    }
    assert_eq!(lines_saying(&router, failed), 1, "{}", router.stderr());
    // Another failure (an answer that is no list, twice) is warned of once again.
    upstream.set(Behavior {
        models_body: Some("<html>not a list</html>".into()),
        ..Behavior::default()
    });
    for fetches in 4..=5 {
        router
            .list_models_and_wait_for_warnings(&[("a", failed)])
            .await;
        wait_until(WITHIN, || model_fetches(&upstream) >= fetches).await;
    }
    assert_eq!(lines_saying(&router, failed), 2, "{}", router.stderr());
    // So is one of the same kind in other words: JSON, but no list in it.
    upstream.set(Behavior {
        models_body: Some(r#"{"object":"list"}"#.into()),
        ..Behavior::default()
    });
    router
        .list_models_and_wait_for_warnings(&[("a", failed)])
        .await;
    wait_until(WITHIN, || lines_saying(&router, failed) == 3).await;

    upstream.set(Behavior {
        models_body: Some(r#"["m"]"#.into()),
        ..Behavior::default()
    });
    let back = "GET /models answered again";
    router
        .list_models_and_wait_for_warnings(&[("a", back)])
        .await;
    upstream.set(failing);
    router
        .list_models_and_wait_for_warnings(&[("a", back)])
        .await;
    wait_until(WITHIN, || lines_saying(&router, failed) == 4).await;
    assert_eq!(lines_saying(&router, back), 1, "{}", router.stderr());
}
