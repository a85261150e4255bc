//! The load client: `concurrency` workers, each on its own keep-alive HTTP/1.1 connection,
//! sending requests back to back until a deadline or a request budget; latencies in µs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// What one load phase sends.
#[derive(Clone)]
pub struct Shot {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    pub stream: bool,
    /// Extra headers (e.g. the mock's chunk gap).
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Default)]
pub struct Results {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Whole request, µs, on a connection that already carried one (see `fresh_total`).
    pub total: Vec<u32>,
    /// Time to the first body bytes, µs (streams), as `total`.
    pub first_byte: Vec<u32>,
    /// Whole request, µs, for the first request of each new connection. Kept apart because
    /// each round opens all its connections at once: their first requests meet the server's
    /// connection set-up work for the whole burst, a per-connection cost, and they are about 1% of a
    /// round's requests, right where p99 falls.
    pub fresh_total: Vec<u32>,
    /// Time to the first body bytes, µs (streams), as `fresh_total`.
    pub fresh_first_byte: Vec<u32>,
}

impl Results {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub fn percentile(samples: &mut [u32], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    f64::from(samples[rank.min(samples.len() - 1)]) / 1000.0
}

/// Runs `concurrency` workers until `duration` passes or `budget` requests were sent.
pub async fn run(
    shot: Shot,
    concurrency: usize,
    duration: Duration,
    budget: Option<u64>,
) -> Results {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let shot = shot.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            worker(shot, deadline, budget, issued).await
        }));
    }
    let mut results = Results::default();
    for worker in workers {
        if let Ok(part) = worker.await {
            results.requests += part.requests;
            results.errors += part.errors;
            results.total.extend(part.total);
            results.first_byte.extend(part.first_byte);
            results.fresh_total.extend(part.fresh_total);
            results.fresh_first_byte.extend(part.fresh_first_byte);
        }
    }
    results.elapsed = started.elapsed();
    results
}

async fn connect(addr: SocketAddr) -> Option<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One request on `sender`: `Ok((total, first byte))`, or `Err(reconnect)`.
async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    shot: &Shot,
) -> Result<(Duration, Option<Duration>), bool> {
    if sender.ready().await.is_err() {
        return Err(true);
    }
    let mut request = hyper::Request::post(shot.path.as_str())
        .header("host", "bench")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench");
    for (k, v) in &shot.headers {
        request = request.header(*k, v.as_str());
    }
    let request = request
        .body(Full::new(shot.body.clone()))
        .map_err(|_| false)?;
    let start = Instant::now();
    let response = sender.send_request(request).await.map_err(|_| true)?;
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| true)?;
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(start.elapsed());
        }
    }
    if !ok {
        return Err(false);
    }
    Ok((start.elapsed(), first))
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

async fn worker(
    shot: Shot,
    deadline: Instant,
    budget: Option<u64>,
    issued: Arc<AtomicU64>,
) -> Results {
    let mut out = Results::default();
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline {
        if let Some(budget) = budget {
            if issued.fetch_add(1, Ordering::Relaxed) >= budget {
                break;
            }
        }
        let fresh = sender.as_ref().is_none_or(|s| s.is_closed());
        if fresh {
            sender = connect(shot.addr).await;
        }
        let Some(s) = sender.as_mut() else {
            out.errors += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        match exchange(s, &shot).await {
            Ok((total, first)) => {
                out.requests += 1;
                let (totals, first_bytes) = if fresh {
                    (&mut out.fresh_total, &mut out.fresh_first_byte)
                } else {
                    (&mut out.total, &mut out.first_byte)
                };
                totals.push(micros(total));
                if shot.stream {
                    first_bytes.push(micros(first.unwrap_or(total)));
                }
            }
            Err(reconnect) => {
                out.errors += 1;
                if reconnect {
                    sender = None;
                }
            }
        }
    }
    out
}

/// Opens `n` connections, each with one stream, all at once; returns (completed, failed).
pub async fn hold_streams(shot: Shot, n: usize) -> (u64, u64) {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let shot = shot.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(shot.addr).await?;
            exchange(&mut sender, &shot).await.ok()
        }));
    }
    let mut done = 0;
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Some(_)) => done += 1,
            _ => failed += 1,
        }
    }
    (done, failed)
}
