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

/// A bare nginx `proxy_pass` hop to the mock: the reference the targets are set against.
/// Started only when `nginx` is on PATH (or `BENCH_NGINX` names it).
struct Nginx {
    master: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.master.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

impl Nginx {
    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.master.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let ppid = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

fn start_nginx(dir: &Path, mock: SocketAddr) -> Option<(Nginx, SocketAddr)> {
    let binary = std::env::var("BENCH_NGINX").unwrap_or_else(|_| "nginx".to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream mock {{ server {mock}; keepalive 256; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://mock;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let master = Command::new(binary)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let nginx = Nginx { master };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((nginx, addr))
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

async fn phase(shot: Shot, concurrency: usize, duration: Duration, pids: &[u32]) -> Phase {
    let cpu = || pids.iter().map(|p| cpu_ms(*p)).sum::<f64>();
    let before = cpu();
    let results = client::run(shot, concurrency, duration, None).await;
    let cpu_per_request_ms = if pids.is_empty() {
        f64::NAN
    } else {
        (cpu() - before) / results.requests.max(1) as f64
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
    let mut d_ns = phase(direct_ns.clone(), NON_STREAM_CONCURRENCY, duration, &[]).await;
    let mut r_ns = phase(router_ns.clone(), NON_STREAM_CONCURRENCY, duration, &[pid]).await;
    eprintln!(
        "bench: streams of {} chunks {} ms apart, c={STREAM_CONCURRENCY}",
        mock::CHUNKS,
        mock::CHUNK_GAP.as_millis()
    );
    let mut d_s = phase(direct_s.clone(), STREAM_CONCURRENCY, duration, &[]).await;
    let mut r_s = phase(router_s.clone(), STREAM_CONCURRENCY, duration, &[pid]).await;

    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).map_err(|e| e.to_string())?;
    let mut reference = None;
    if let Some((nginx, nginx_addr)) = start_nginx(&nginx_dir, mock) {
        eprintln!("bench: the same through nginx (reference)");
        let pids = nginx.pids();
        let n_ns_shot = shot(nginx_addr, "gpt-4o-mini", false);
        client::run(n_ns_shot.clone(), NON_STREAM_CONCURRENCY, warm, None).await;
        let n_ns = phase(n_ns_shot, NON_STREAM_CONCURRENCY, duration, &pids).await;
        let n_s = phase(
            shot(nginx_addr, "gpt-4o-mini", true),
            STREAM_CONCURRENCY,
            duration,
            &pids,
        )
        .await;
        reference = Some((n_ns, n_s));
        drop(nginx);
    } else {
        eprintln!(
            "bench: nginx not found (apt install nginx-light, or BENCH_NGINX=path): no reference column"
        );
    }

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
    let on_ns = phase(on_ns_shot, NON_STREAM_CONCURRENCY, duration, &[on_pid]).await;
    let on_s = phase(on_s_shot, STREAM_CONCURRENCY, duration, &[on_pid]).await;
    let rss_on = rss_mib(on_pid);
    drop(on_proc);
    drop(mock_proc);

    let (mut n_ns, mut n_s) = match reference {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let ms = |v: f64| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.2}")
        }
    };
    let cpu = |v: f64| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.4}")
        }
    };
    let p = |r: &mut Results, stream_first: bool, q: f64| {
        if stream_first {
            percentile(&mut r.first_byte, q)
        } else {
            percentile(&mut r.total, q)
        }
    };
    let opt = |x: Option<&mut Phase>, f: &dyn Fn(&mut Phase) -> f64| x.map_or(f64::NAN, f);
    let mut lines: Vec<[String; 6]> = Vec::new();
    let mut add = |label: &str,
                   d: f64,
                   n: f64,
                   r: f64,
                   fmt: &dyn Fn(f64) -> String,
                   relative: bool,
                   target: &str| {
        let rel = |x: f64| {
            if x.is_nan() || d.is_nan() || (relative && d == 0.0) {
                "-".to_owned()
            } else if relative {
                format!("{:.2}x", x / d)
            } else {
                format!("{:+.2} ms", x - d)
            }
        };
        lines.push([
            label.to_owned(),
            fmt(d),
            fmt(n),
            fmt(r),
            format!("{} / {}", rel(r), rel(n)),
            target.to_owned(),
        ]);
    };
    let rate = |r: &Phase| r.results.rate();
    let count = |v: f64| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.0}")
        }
    };
    add(
        "non-stream c=32: requests/s",
        rate(&d_ns),
        opt(n_ns.as_mut(), &|x| rate(x)),
        rate(&r_ns),
        &count,
        true,
        "router ≥ 0.6x",
    );
    for (q, target) in [(50.0, ""), (99.0, "router ≤ +0.5 ms")] {
        let label = format!("non-stream: p{q:.0} ms");
        let (dv, rv) = (
            p(&mut d_ns.results, false, q),
            p(&mut r_ns.results, false, q),
        );
        let nv = opt(n_ns.as_mut(), &|x| p(&mut x.results, false, q));
        add(&label, dv, nv, rv, &ms, false, target);
    }
    add(
        "stream c=64: streams/s",
        rate(&d_s),
        opt(n_s.as_mut(), &|x| rate(x)),
        rate(&r_s),
        &count,
        true,
        "",
    );
    for (q, first, label, target) in [
        (50.0, true, "stream: first byte p50 ms", ""),
        (99.0, true, "stream: first byte p99 ms", "router ≤ +1 ms"),
        (50.0, false, "stream: total p50 ms", ""),
        (99.0, false, "stream: total p99 ms", ""),
    ] {
        let (dv, rv) = (p(&mut d_s.results, first, q), p(&mut r_s.results, first, q));
        let nv = opt(n_s.as_mut(), &|x| p(&mut x.results, first, q));
        add(label, dv, nv, rv, &ms, false, target);
    }
    add(
        "CPU per non-stream request, ms",
        f64::NAN,
        opt(n_ns.as_mut(), &|x| x.cpu_per_request_ms),
        r_ns.cpu_per_request_ms,
        &cpu,
        true,
        "router ≤ 0.05",
    );
    add(
        "CPU per 20-chunk stream, ms",
        f64::NAN,
        opt(n_s.as_mut(), &|x| x.cpu_per_request_ms),
        r_s.cpu_per_request_ms,
        &cpu,
        true,
        "router ≤ 0.45",
    );
    let errors = |x: &Phase, y: &Phase| (x.results.errors + y.results.errors) as f64;
    let n_errors = match (n_ns.as_ref(), n_s.as_ref()) {
        (Some(a), Some(b)) => errors(a, b),
        _ => f64::NAN,
    };
    add(
        "errors",
        errors(&d_ns, &d_s),
        n_errors,
        errors(&r_ns, &r_s),
        &count,
        true,
        "0",
    );
    println!(
        "\n### llmsrouter benchmark: direct to the mock, through nginx, through the router (telemetry off)\n"
    );
    println!("| measure | direct | nginx | router | router / nginx vs direct | target |");
    println!("|---|---:|---:|---:|---:|---|");
    for l in &lines {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            l[0], l[1], l[2], l[3], l[4], l[5]
        );
    }

    let show_rate = |r: &Results| format!("{:.0}", r.rate());
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
            show_rate(&r_ns.results),
            show_rate(&on_ns.results),
            format!("{:.2}x", on_ns.results.rate() / r_ns.results.rate()),
            "≥ 0.9x",
        ),
        row(
            "stream c=64: streams/s",
            show_rate(&r_s.results),
            show_rate(&on_s.results),
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
