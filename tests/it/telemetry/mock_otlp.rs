//! A mock OTLP/HTTP traces endpoint: decodes each protobuf `ExportTraceServiceRequest` with
//! the `opentelemetry-proto` crate and keeps it with its headers. It can answer scripted
//! statuses (429, 500, ...), hold requests until released, or accept exports while
//! rejecting their spans (OTLP `partial_success`), to test retries, drops and recovery.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::watch;

use crate::support::wait_until;

/// One accepted export.
#[derive(Debug, Clone)]
pub struct Export {
    pub path: String,
    pub headers: HeaderMap,
    /// The protobuf body, gunzipped when it came with `Content-Encoding: gzip`.
    pub body: Bytes,
    /// Bytes as they came over the wire.
    pub wire_len: usize,
    pub request: ExportTraceServiceRequest,
}

/// A span with what surrounded it in its export.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub span: Span,
    pub scope_name: String,
    pub resource: Vec<KeyValue>,
    pub headers: HeaderMap,
    pub path: String,
}

struct Shared {
    exports: Mutex<Vec<Export>>,
    /// Statuses for the next requests, in order; then 200.
    script: Mutex<VecDeque<(u16, Option<String>)>>,
    /// When set, every request answers this (after the script).
    fail_with: Mutex<Option<u16>>,
    hits: AtomicUsize,
    /// When each request arrived.
    hit_times: Mutex<Vec<Instant>>,
    /// `true`: requests wait until it turns `false`.
    hold: watch::Sender<bool>,
    /// When set, a 200 answer says every span of the export was rejected, with this message.
    reject: Mutex<Option<String>>,
    /// A `Location` every answer carries (a redirect's target).
    location: Mutex<Option<String>>,
}

pub struct MockOtlp {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl MockOtlp {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(listener).await
    }

    /// On a given listener (to come back on the address a test took down).
    pub async fn start_on(listener: tokio::net::TcpListener) -> Self {
        let shared = Arc::new(Shared {
            exports: Mutex::default(),
            script: Mutex::default(),
            fail_with: Mutex::default(),
            hits: AtomicUsize::new(0),
            hit_times: Mutex::default(),
            hold: watch::channel(false).0,
            reject: Mutex::default(),
            location: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            _shutdown: tx,
        }
    }

    /// The Langfuse traces endpoint on this mock (as built from `LANGFUSE_HOST`).
    pub fn langfuse_endpoint(&self) -> String {
        format!("http://{}/api/public/otel/v1/traces", self.addr)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers these statuses (with an optional Retry-After) to the next requests.
    pub fn script(&self, statuses: &[(u16, Option<&str>)]) {
        let mut script = self.shared.script.lock().expect("lock");
        for (status, retry_after) in statuses {
            script.push_back((*status, retry_after.map(str::to_owned)));
        }
    }

    /// Every request answers `status` until [`Self::heal`].
    pub fn fail_with(&self, status: u16) {
        *self.shared.fail_with.lock().expect("lock") = Some(status);
    }

    /// Every export is answered 200 with a `partial_success` rejecting all its spans, with
    /// `message` as the `error_message` (the spans are still kept here, as received).
    pub fn reject_spans(&self, message: &str) {
        *self.shared.reject.lock().expect("lock") = Some(message.to_owned());
    }

    /// Every request answers `status` (a redirect) with this `Location`.
    pub fn redirect(&self, status: u16, location: &str) {
        *self.shared.location.lock().expect("lock") = Some(location.to_owned());
        self.fail_with(status);
    }

    pub fn heal(&self) {
        *self.shared.fail_with.lock().expect("lock") = None;
    }

    /// Requests wait (the endpoint hangs) until [`Self::release`].
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Requests received, failed ones included.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// When each request arrived, in order.
    pub fn hit_times(&self) -> Vec<Instant> {
        self.shared.hit_times.lock().expect("lock").clone()
    }

    pub fn exports(&self) -> Vec<Export> {
        self.shared.exports.lock().expect("lock").clone()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for export in self.exports() {
            for rs in &export.request.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    let scope_name = ss
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            span: span.clone(),
                            scope_name: scope_name.clone(),
                            resource: resource.clone(),
                            headers: export.headers.clone(),
                            path: export.path.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// How long a span may take to arrive: a debug build exporting spans of tens of MiB on a
    /// loaded 2-core machine took over 20 s (the release build, a fraction of a second).
    const ARRIVAL: Duration = Duration::from_secs(60);

    /// Waits for at least `n` spans.
    pub async fn wait_spans(&self, n: usize) -> Vec<ReceivedSpan> {
        wait_until(Self::ARRIVAL, || self.spans().len() >= n).await;
        self.spans()
    }

    /// Waits for the span of the request with this id (its trace id).
    pub async fn span_of(&self, request_id: &str) -> ReceivedSpan {
        wait_until(Self::ARRIVAL, || {
            self.spans().iter().any(|s| trace_id(&s.span) == request_id)
        })
        .await;
        self.spans()
            .into_iter()
            .find(|s| trace_id(&s.span) == request_id)
            .expect("span")
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    shared.hit_times.lock().expect("lock").push(Instant::now());
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let mut hold = shared.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    let scripted = shared.script.lock().expect("lock").pop_front();
    let (status, retry_after) = match scripted {
        Some(s) => s,
        None => match *shared.fail_with.lock().expect("lock") {
            Some(status) => (status, None),
            None => (200, None),
        },
    };
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    if let Some(retry_after) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", retry_after.parse().expect("value"));
    }
    if let Some(location) = shared.location.lock().expect("lock").clone() {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location.parse().expect("value"));
    }
    if status == 200 {
        let wire_len = body.len();
        let body = match parts.headers.get(http::header::CONTENT_ENCODING) {
            Some(encoding) if encoding == "gzip" => gunzip(&body),
            Some(other) => panic!("unexpected content-encoding {other:?}"),
            None => body,
        };
        let request = ExportTraceServiceRequest::decode(body.clone())
            .expect("the router sends protobuf ExportTraceServiceRequest");
        if let Some(message) = shared.reject.lock().expect("lock").clone() {
            *response.body_mut() = partial_success(&request, message).into();
        }
        shared.exports.lock().expect("lock").push(Export {
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
            wire_len,
            request,
        });
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
    }
    response
}

/// An `ExportTraceServiceResponse` rejecting every span of `request`.
fn partial_success(request: &ExportTraceServiceRequest, message: String) -> Vec<u8> {
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: spans as i64,
            error_message: message,
        }),
    }
    .encode_to_vec()
}

fn gunzip(body: &[u8]) -> Bytes {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
        .expect("a gzip body");
    out.into()
}

pub fn trace_id(span: &Span) -> String {
    span.trace_id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

pub fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key)?.value.as_ref()? {
        AnyValueKind::StringValue(s) => Some(s),
        _ => None,
    }
}

pub fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)?.value.as_ref()? {
        AnyValueKind::IntValue(i) => Some(*i),
        _ => None,
    }
}

pub fn float_attr(span: &Span, key: &str) -> Option<f64> {
    match attr(span, key)?.value.as_ref()? {
        AnyValueKind::DoubleValue(f) => Some(*f),
        _ => None,
    }
}

pub fn strings_attr(span: &Span, key: &str) -> Option<Vec<String>> {
    match attr(span, key)?.value.as_ref()? {
        AnyValueKind::ArrayValue(array) => Some(
            array
                .values
                .iter()
                .filter_map(|v| match v.value.as_ref()? {
                    AnyValueKind::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A string attribute holding JSON, parsed.
pub fn json_attr(span: &Span, key: &str) -> Option<serde_json::Value> {
    let text = str_attr(span, key)?;
    Some(serde_json::from_str(text).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {text}")))
}

/// Every string anywhere in a span's attributes, resource and status.
pub fn all_text(s: &ReceivedSpan) -> String {
    let mut out = String::new();
    let mut push = |kv: &KeyValue| {
        out.push_str(&kv.key);
        out.push(' ');
        out.push_str(&format!("{:?}", kv.value));
        out.push('\n');
    };
    s.span.attributes.iter().for_each(&mut push);
    s.resource.iter().for_each(&mut push);
    if let Some(status) = &s.span.status {
        out.push_str(&status.message);
    }
    out.push_str(&s.span.name);
    out
}
