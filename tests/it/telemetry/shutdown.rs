//! Shutdown closes the sinks together: each waits for its own bound (the ledger for a lock,
//! the request log for a pipe's reader, Langfuse for its endpoint), and one after another
//! those waits would add up.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use llmsrouter::record::{RecordSink, RequestRecord};
use serde_json::json;
use tokio::sync::Barrier;

use crate::support::upstream::{Behavior, MockUpstream};
use crate::support::{TestRouter, one_server_config};

/// A sink whose close waits until every sink sharing `closing` is closing too: closed one
/// after another, the first never finishes.
struct WaitsForTheOthers {
    closing: Arc<Barrier>,
}

impl RecordSink for WaitsForTheOthers {
    fn name(&self) -> &'static str {
        "waits-for-the-others"
    }
    fn accept(&self, _record: &Arc<RequestRecord>) {}
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.closing.wait().await;
        })
    }
}

#[tokio::test]
async fn shutdown_closes_every_sink_at_once() {
    let upstream = MockUpstream::start(Behavior::default()).await;
    let closing = Arc::new(Barrier::new(3));
    let sinks: Vec<Arc<dyn RecordSink>> = (0..3)
        .map(|_| {
            Arc::new(WaitsForTheOthers {
                closing: closing.clone(),
            }) as Arc<dyn RecordSink>
        })
        .collect();
    let router =
        TestRouter::start_with_sinks(&one_server_config(&upstream.url(), ""), sinks, |_| {}).await;
    let response = router
        .chat(&json!({"model": "[mock]gpt-4o", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    router.records.nth(1).await;
    tokio::time::timeout(Duration::from_secs(10), router.stop())
        .await
        .expect("the sinks closed together, so each one's wait for the others ended");
}
