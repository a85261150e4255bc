//! The load benchmark: `cargo bench --bench load`.
//!
//! Starts a fast mock upstream (this binary re-executed) and the release router as separate
//! processes on 127.0.0.1, drives both with the load client in this process, and prints one
//! table: direct to the mock vs through the router (non-stream c=32; 20-chunk streams 2 ms
//! apart, c=64), router CPU per request from /proc, router RSS idle / at 2,000 concurrent
//! streams / after 100k requests, and telemetry on vs off. Every phase is bounded; the default
//! run takes about a minute. `BENCH_SECS` sets the length of each measured phase (default 5).

mod client;
mod mock;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Results, Shot, percentile};

const NON_STREAM_CONCURRENCY: usize = 32;
const STREAM_CONCURRENCY: usize = 64;
const HELD_STREAMS: usize = 2000;
const GROWTH_REQUESTS: u64 = 100_000;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("mock-upstream") {
        mock::run();
        return;
    }
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s <= 60.0)
        .unwrap_or(5.0);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(bench(Duration::from_secs_f64(secs))) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

/// A child process that is killed when dropped, so no run leaves processes behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn start_mock() -> Result<(Proc, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("mock-upstream")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the mock: {e}"))?;
    let stdout = child.stdout.take().ok_or("mock has no stdout")?;
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("mock said {line:?}"))?;
    Ok((proc, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn start_router(
    dir: &Path,
    mock: SocketAddr,
    telemetry: bool,
) -> Result<(Proc, SocketAddr), String> {
    let config = format!(
        "servers:\n  mock:\n    url: \"http://{mock}/v1\"\n    api_key: \"sk-bench-upstream\"\n"
    );
    std::fs::write(dir.join("config.yaml"), config).map_err(|e| e.to_string())?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmsrouter"));
    command
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--config",
            "config.yaml",
        ])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("LLMSROUTER_DB", dir.join("users.db"))
        .env_remove("ENABLE_ACCOUNT_MANAGEMENT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if telemetry {
        command
            .env("LANGFUSE_PUBLIC_KEY", "pk-lf-bench")
            .env("LANGFUSE_SECRET_KEY", "sk-lf-bench")
            .env("LANGFUSE_HOST", format!("http://{mock}"))
            .env("LLMSROUTER_LOG_FILE", dir.join("api_proxy.log"))
            .env("LLMSROUTER_LOG_BODIES", "true")
            .env("LLMSROUTER_LEDGER", "true");
    } else {
        command
            .env_remove("LANGFUSE_PUBLIC_KEY")
            .env_remove("LANGFUSE_SECRET_KEY")
            .env("LLMSROUTER_LOG_FILE", "")
            .env("LLMSROUTER_LEDGER", "false");
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the router: {e}"))?;
    let stderr = child.stderr.take().ok_or("router has no stderr")?;
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("listening on http://")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the router did not start".to_owned())?;
    Ok((proc, addr))
}

/// CPU time (user + system) of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) * 1000.0 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident set size, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn body(model: &str, stream: bool) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello in one short sentence."}}],"temperature":0.7,"stream":{stream}}}"#
    ))
}

fn shot(addr: SocketAddr, model: &str, stream: bool) -> Shot {
    Shot {
        addr,
        path: "/v1/chat/completions".to_owned(),
        body: body(model, stream),
        stream,
        headers: vec![],
    }
}

/// A measured phase: the load results and the router's CPU time during it.
struct Phase {
    results: Results,
    cpu_per_request_ms: f64,
}

async fn phase(
    shot: Shot,
    concurrency: usize,
    duration: Duration,
    router_pid: Option<u32>,
) -> Phase {
    let before = router_pid.map(cpu_ms);
    let results = client::run(shot, concurrency, duration, None).await;
    let cpu_per_request_ms = match (router_pid, before) {
        (Some(pid), Some(before)) => (cpu_ms(pid) - before) / results.requests.max(1) as f64,
        _ => f64::NAN,
    };
    Phase {
        results,
        cpu_per_request_ms,
    }
}

struct Row {
    label: String,
    direct: String,
    router: String,
    ratio: String,
    target: String,
}

fn row(label: &str, direct: String, router: String, ratio: String, target: &str) -> Row {
    Row {
        label: label.to_owned(),
        direct,
        router,
        ratio,
        target: target.to_owned(),
    }
}

fn print_table(title: &str, headers: [&str; 4], rows: &[Row]) {
    println!("\n{title}\n");
    println!(
        "| measure | {} | {} | {} | {} |",
        headers[0], headers[1], headers[2], headers[3]
    );
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.label, r.direct, r.router, r.ratio, r.target
        );
    }
}

async fn bench(duration: Duration) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mock_proc, mock) = start_mock()?;
    let off_dir = dir.path().join("off");
    let on_dir = dir.path().join("on");
    std::fs::create_dir_all(&off_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&on_dir).map_err(|e| e.to_string())?;
    let (router_proc, router) = start_router(&off_dir, mock, false)?;
    let pid = router_proc.pid();
    tokio::time::sleep(Duration::from_millis(300)).await; // let start-up allocations settle
    let rss_idle = rss_mib(pid);
    eprintln!(
        "bench: mock on {mock}, router on {router} (pid {pid}); {:.0} s per phase",
        duration.as_secs_f64()
    );

    let warm = Duration::from_secs(1);
    let direct_ns = shot(mock, "gpt-4o-mini", false);
    let router_ns = shot(router, "[mock]gpt-4o-mini", false);
    let direct_s = shot(mock, "gpt-4o-mini", true);
    let router_s = shot(router, "[mock]gpt-4o-mini", true);
    client::run(direct_ns.clone(), NON_STREAM_CONCURRENCY, warm, None).await;
    client::run(router_ns.clone(), NON_STREAM_CONCURRENCY, warm, None).await;

    eprintln!("bench: non-stream, c={NON_STREAM_CONCURRENCY}");
    let mut d_ns = phase(direct_ns.clone(), NON_STREAM_CONCURRENCY, duration, None).await;
    let mut r_ns = phase(
        router_ns.clone(),
        NON_STREAM_CONCURRENCY,
        duration,
        Some(pid),
    )
    .await;
    eprintln!(
        "bench: streams of {} chunks {} ms apart, c={STREAM_CONCURRENCY}",
        mock::CHUNKS,
        mock::CHUNK_GAP.as_millis()
    );
    let mut d_s = phase(direct_s.clone(), STREAM_CONCURRENCY, duration, None).await;
    let mut r_s = phase(router_s.clone(), STREAM_CONCURRENCY, duration, Some(pid)).await;

    eprintln!("bench: {HELD_STREAMS} concurrent streams");
    let mut held = router_s.clone();
    held.headers.push(("x-bench-gap-ms", "150".to_owned()));
    let sampler = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let rss = rss_mib(pid);
            if rss.is_nan() {
                break;
            }
            peak = peak.max(rss);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    let (held_done, held_failed) = client::hold_streams(held, HELD_STREAMS).await;
    sampler.abort();
    let rss_held = match sampler.await {
        Ok(peak) => peak,
        Err(_) => rss_mib(pid),
    };
    let rss_held_now = rss_mib(pid);
    let rss_held = rss_held.max(rss_held_now);

    eprintln!("bench: {GROWTH_REQUESTS} requests for memory growth");
    let rss_before_growth = rss_mib(pid);
    let growth = client::run(
        router_ns.clone(),
        NON_STREAM_CONCURRENCY,
        Duration::from_secs(120),
        Some(GROWTH_REQUESTS),
    )
    .await;
    let rss_after_growth = rss_mib(pid);
    drop(router_proc);

    eprintln!("bench: telemetry on (Langfuse to the mock, request log, ledger)");
    let (on_proc, on_router) = start_router(&on_dir, mock, true)?;
    let on_pid = on_proc.pid();
    let on_ns_shot = shot(on_router, "[mock]gpt-4o-mini", false);
    let on_s_shot = shot(on_router, "[mock]gpt-4o-mini", true);
    client::run(on_ns_shot.clone(), NON_STREAM_CONCURRENCY, warm, None).await;
    let on_ns = phase(on_ns_shot, NON_STREAM_CONCURRENCY, duration, Some(on_pid)).await;
    let on_s = phase(on_s_shot, STREAM_CONCURRENCY, duration, Some(on_pid)).await;
    let rss_on = rss_mib(on_pid);
    drop(on_proc);
    drop(mock_proc);

    let ms = |v: f64| format!("{v:.2}");
    let rate = |r: &Results| format!("{:.0}", r.rate());
    let (d50, d99) = (
        percentile(&mut d_ns.results.total, 50.0),
        percentile(&mut d_ns.results.total, 99.0),
    );
    let (r50, r99) = (
        percentile(&mut r_ns.results.total, 50.0),
        percentile(&mut r_ns.results.total, 99.0),
    );
    let (dt50, dt99) = (
        percentile(&mut d_s.results.first_byte, 50.0),
        percentile(&mut d_s.results.first_byte, 99.0),
    );
    let (rt50, rt99) = (
        percentile(&mut r_s.results.first_byte, 50.0),
        percentile(&mut r_s.results.first_byte, 99.0),
    );
    let (d_tot50, d_tot99) = (
        percentile(&mut d_s.results.total, 50.0),
        percentile(&mut d_s.results.total, 99.0),
    );
    let (r_tot50, r_tot99) = (
        percentile(&mut r_s.results.total, 50.0),
        percentile(&mut r_s.results.total, 99.0),
    );
    let added = |router: f64, direct: f64| format!("+{:.2} ms", router - direct);
    let rows = vec![
        row(
            "non-stream c=32: requests/s",
            rate(&d_ns.results),
            rate(&r_ns.results),
            format!("{:.2}x", r_ns.results.rate() / d_ns.results.rate()),
            "≥ 0.6x",
        ),
        row("non-stream: p50 ms", ms(d50), ms(r50), added(r50, d50), ""),
        row(
            "non-stream: p99 ms",
            ms(d99),
            ms(r99),
            added(r99, d99),
            "≤ +0.5 ms",
        ),
        row(
            "stream c=64: streams/s",
            rate(&d_s.results),
            rate(&r_s.results),
            format!("{:.2}x", r_s.results.rate() / d_s.results.rate()),
            "",
        ),
        row(
            "stream: first byte p50 ms",
            ms(dt50),
            ms(rt50),
            added(rt50, dt50),
            "",
        ),
        row(
            "stream: first byte p99 ms",
            ms(dt99),
            ms(rt99),
            added(rt99, dt99),
            "≤ +1 ms",
        ),
        row(
            "stream: total p50 ms",
            ms(d_tot50),
            ms(r_tot50),
            added(r_tot50, d_tot50),
            "",
        ),
        row(
            "stream: total p99 ms",
            ms(d_tot99),
            ms(r_tot99),
            added(r_tot99, d_tot99),
            "",
        ),
        row(
            "router CPU per non-stream request, ms",
            "".into(),
            format!("{:.4}", r_ns.cpu_per_request_ms),
            "".into(),
            "≤ 0.05",
        ),
        row(
            "router CPU per 20-chunk stream, ms",
            "".into(),
            format!("{:.4}", r_s.cpu_per_request_ms),
            "".into(),
            "≤ 0.45",
        ),
        row(
            "errors (direct / router)",
            format!("{}", d_ns.results.errors + d_s.results.errors),
            format!("{}", r_ns.results.errors + r_s.results.errors),
            "".into(),
            "0",
        ),
    ];
    print_table(
        "### llmsrouter benchmark: direct to the mock vs through the router (telemetry off)",
        ["direct", "router", "ratio / added", "target"],
        &rows,
    );

    let memory = vec![
        row(
            "RSS idle, MiB",
            "".into(),
            format!("{rss_idle:.1}"),
            "".into(),
            "≤ 15",
        ),
        row(
            &format!(
                "RSS at {HELD_STREAMS} concurrent streams, MiB ({held_done} ok, {held_failed} failed)"
            ),
            "".into(),
            format!("{rss_held:.1}"),
            "".into(),
            "≤ 100",
        ),
        row(
            &format!("RSS before / after {} more requests, MiB", growth.requests),
            format!("{rss_before_growth:.1}"),
            format!("{rss_after_growth:.1}"),
            format!(
                "{:+.1}%",
                (rss_after_growth / rss_before_growth - 1.0) * 100.0
            ),
            "≤ +10%",
        ),
    ];
    print_table(
        "### router memory",
        ["before", "value", "growth", "target"],
        &memory,
    );

    let telemetry = vec![
        row(
            "non-stream c=32: requests/s",
            rate(&r_ns.results),
            rate(&on_ns.results),
            format!("{:.2}x", on_ns.results.rate() / r_ns.results.rate()),
            "≥ 0.9x",
        ),
        row(
            "stream c=64: streams/s",
            rate(&r_s.results),
            rate(&on_s.results),
            format!("{:.2}x", on_s.results.rate() / r_s.results.rate()),
            "≥ 0.9x",
        ),
        row(
            "router CPU per non-stream request, ms",
            format!("{:.4}", r_ns.cpu_per_request_ms),
            format!("{:.4}", on_ns.cpu_per_request_ms),
            format!("{:.2}x", on_ns.cpu_per_request_ms / r_ns.cpu_per_request_ms),
            "",
        ),
        row(
            "router CPU per stream, ms",
            format!("{:.4}", r_s.cpu_per_request_ms),
            format!("{:.4}", on_s.cpu_per_request_ms),
            format!("{:.2}x", on_s.cpu_per_request_ms / r_s.cpu_per_request_ms),
            "",
        ),
        row(
            "RSS at the end, MiB",
            "".into(),
            format!("{rss_on:.1}"),
            "".into(),
            "",
        ),
        row(
            "errors",
            format!("{}", r_ns.results.errors + r_s.results.errors),
            format!("{}", on_ns.results.errors + on_s.results.errors),
            "".into(),
            "0",
        ),
    ];
    print_table(
        "### telemetry off vs on (Langfuse exporter to a local mock, request log, ledger)",
        ["off", "on", "ratio", "target"],
        &telemetry,
    );
    Ok(())
}
