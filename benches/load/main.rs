//! The load benchmark: `cargo bench --bench load`.
//!
//! Starts a fast mock upstream (this binary re-executed) and the release router as separate
//! processes on 127.0.0.1, drives both with the load client in this process, and prints one
//! table: direct to the mock vs through the router (non-stream c=32; 20-chunk streams 2 ms
//! apart, c=64), router CPU per request from /proc, router RSS idle / at 2,000 concurrent
//! streams / after 100k requests, and telemetry on vs off. Every phase is bounded; the default
//! run takes about three minutes. The telemetry-on router is stopped with SIGTERM and its sinks'
//! shutdown counts (ledger rows, spans, log lines, drops) are printed: a fast router that drops
//! records does not pass. `BENCH_SECS` sets the length of each measured phase (default 5);
//! `BENCH_ROUTER` names another router binary to measure.

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

/// The router's stderr lines that report what its sinks wrote and dropped, gathered as they
/// come (the last ones at shutdown).
type SinkReport = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn start_router(
    dir: &Path,
    mock: SocketAddr,
    telemetry: bool,
) -> Result<(Proc, SocketAddr, SinkReport), String> {
    let config = format!(
        "servers:\n  mock:\n    url: \"http://{mock}/v1\"\n    api_key: \"sk-bench-upstream\"\n"
    );
    std::fs::write(dir.join("config.yaml"), config).map_err(|e| e.to_string())?;
    // BENCH_ROUTER runs another build (an A/B against an older commit, say).
    let binary = std::env::var("BENCH_ROUTER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_llmsrouter").to_owned());
    let mut command = Command::new(binary);
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
    let report = SinkReport::default();
    let kept = report.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = strip_ansi(&line);
            if line.contains("dropped") || line.contains("written=") {
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line.clone());
                }
            }
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
    Ok((proc, addr, report))
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The number after `key=` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Stops the router as a user would (SIGTERM: it drains and flushes its sinks), waits for it,
/// and returns what its sinks reported on the way out.
fn stop_gracefully(mut proc: Proc, report: &SinkReport) -> Vec<String> {
    let pid = proc.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(proc.0.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(proc);
    // The stderr reader may still be on the last lines.
    std::thread::sleep(Duration::from_millis(100));
    report.lock().map(|r| r.clone()).unwrap_or_default()
}

/// What the telemetry-on router's sinks kept, from its shutdown report and its request log:
/// `(label, value)` rows. Every record kept and none dropped is the only acceptable result.
fn telemetry_kept(lines: &[String], log_dir: &Path) -> Vec<(String, String)> {
    let last = |needle: &str| lines.iter().rev().find(|l| l.contains(needle));
    let mut rows = Vec::new();
    if let Some(l) = last("usage ledger flushed") {
        rows.push((
            "ledger rows written / dropped".to_owned(),
            format!(
                "{} / {}",
                field(l, "written").unwrap_or(0),
                field(l, "dropped").unwrap_or(0)
            ),
        ));
    }
    if let Some(l) = last("trace exporter stopped") {
        rows.push((
            "spans exported / dropped / failed".to_owned(),
            format!(
                "{} / {} / {}",
                field(l, "exported").unwrap_or(0),
                field(l, "dropped").unwrap_or(0),
                field(l, "failed").unwrap_or(0)
            ),
        ));
    }
    let log_lines: usize = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        // Daily files: `api_proxy.YYYY-MM-DD.log`.
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("api_proxy.") && name.ends_with(".log")
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
        .sum();
    // Warnings carry the running total of drops.
    let most_dropped = |warning: &str| {
        lines
            .iter()
            .filter(|l| l.contains(warning))
            .filter_map(|l| field(l, "dropped"))
            .max()
            .unwrap_or(0)
    };
    let log_dropped = most_dropped("request log writer behind");
    rows.push((
        "request log lines written / dropped".to_owned(),
        format!("{log_lines} / {log_dropped}"),
    ));
    let records_dropped = most_dropped("record queue full");
    rows.push((
        "records dropped before the sinks".to_owned(),
        records_dropped.to_string(),
    ));
    rows
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

/// The machine's CPU time so far from `/proc/stat`'s first line: (steal, all), in ticks.
/// Steal is time the hypervisor gave this VM's cores to someone else: on a shared host it
/// comes and goes, and a run with much of it measured a slower machine than one without.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice: guest time is
    // counted in user time already.
    let steal = *fields.get(7)?;
    Some((steal, fields.iter().take(8).sum()))
}

/// One line on how much of the measured rounds the host took back.
fn report_steal(before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
    let (Some((steal0, all0)), Some((steal1, all1))) = (before, after) else {
        return;
    };
    let (steal, all) = (steal1.saturating_sub(steal0), all1.saturating_sub(all0));
    println!(
        "\nHost: {steal} of {all} CPU ticks ({:.1}%) were steal time (taken back by the hypervisor) during the measured rounds; compare runs with little of it.",
        steal as f64 * 100.0 / all.max(1) as f64
    );
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

/// One measured round of one target: load results and the CPU its processes used.
struct Round {
    results: Results,
    cpu_ms: f64,
}

async fn round(shot: Shot, concurrency: usize, duration: Duration, pids: &[u32]) -> Round {
    let cpu = || pids.iter().map(|p| cpu_ms(*p)).sum::<f64>();
    let before = cpu();
    let results = client::run(shot, concurrency, duration, None).await;
    let cpu_ms = if pids.is_empty() {
        f64::NAN
    } else {
        cpu() - before
    };
    Round { results, cpu_ms }
}

/// Everything measured of one target in one kind of load, over all rounds.
struct Tally {
    rounds: Vec<Round>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

impl Tally {
    /// Requests per second: the median round, so one round disturbed by the host does not
    /// decide the figure.
    fn rate(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.results.rate()).collect())
    }
    /// CPU milliseconds per request, median round.
    fn cpu_per_request(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| r.cpu_ms / r.results.requests.max(1) as f64)
                .collect(),
        )
    }
    /// A latency percentile over every request of every round on a reused connection, ms.
    fn percentile(&self, first_byte: bool, p: f64) -> f64 {
        self.samples(p, |r| if first_byte { &r.first_byte } else { &r.total })
    }
    /// The same over the first request of each new connection, ms.
    fn fresh_percentile(&self, first_byte: bool, p: f64) -> f64 {
        self.samples(p, |r| {
            if first_byte {
                &r.fresh_first_byte
            } else {
                &r.fresh_total
            }
        })
    }
    fn samples(&self, p: f64, pick: impl Fn(&Results) -> &Vec<u32>) -> f64 {
        let mut all: Vec<u32> = self
            .rounds
            .iter()
            .flat_map(|r| pick(&r.results).iter())
            .copied()
            .collect();
        percentile(&mut all, p)
    }
    fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.results.errors).sum()
    }
}

/// A place load can be sent: its address for whole answers and streams, and the processes
/// whose CPU time counts.
struct Target {
    whole: Shot,
    stream: Shot,
    pids: Vec<u32>,
}

/// Runs `rounds` rounds; in each, every target gets the same load for `each`, in a rotating
/// order, so a slow spell of the host hits all targets alike.
async fn interleaved(
    targets: &[&Target],
    stream: bool,
    concurrency: usize,
    each: Duration,
    rounds: usize,
) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = targets
        .iter()
        .map(|_| Tally { rounds: Vec::new() })
        .collect();
    for r in 0..rounds {
        for k in 0..targets.len() {
            let i = (r + k) % targets.len();
            let t = targets[i];
            let shot = if stream {
                t.stream.clone()
            } else {
                t.whole.clone()
            };
            tallies[i]
                .rounds
                .push(round(shot, concurrency, each, &t.pids).await);
        }
    }
    tallies
}

const ROUNDS: usize = 3;

async fn bench(duration: Duration) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mock_proc, mock) = start_mock()?;
    let off_dir = dir.path().join("off");
    let on_dir = dir.path().join("on");
    let nginx_dir = dir.path().join("nginx");
    for d in [&off_dir, &on_dir, &nginx_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let (off_proc, off, _) = start_router(&off_dir, mock, false)?;
    let pid = off_proc.pid();
    tokio::time::sleep(Duration::from_millis(300)).await; // let start-up allocations settle
    let rss_idle = rss_mib(pid);
    let (on_proc, on, on_report) = start_router(&on_dir, mock, true)?;
    let on_pid = on_proc.pid();
    let nginx = start_nginx(&nginx_dir, mock);
    if nginx.is_none() {
        eprintln!(
            "bench: nginx not found (apt install nginx-light, or BENCH_NGINX=path): no reference column"
        );
    }
    let each = duration.div_f64(ROUNDS as f64);
    eprintln!(
        "bench: mock {mock}, router {off} (telemetry off, pid {pid}), router {on} (telemetry on); {ROUNDS} interleaved rounds of {:.1} s per target",
        each.as_secs_f64()
    );

    let model = "[mock]gpt-4o-mini";
    let direct = Target {
        whole: shot(mock, "gpt-4o-mini", false),
        stream: shot(mock, "gpt-4o-mini", true),
        pids: vec![],
    };
    let router_off = Target {
        whole: shot(off, model, false),
        stream: shot(off, model, true),
        pids: vec![pid],
    };
    let router_on = Target {
        whole: shot(on, model, false),
        stream: shot(on, model, true),
        pids: vec![on_pid],
    };
    let reference = nginx.as_ref().map(|(n, addr)| Target {
        whole: shot(*addr, "gpt-4o-mini", false),
        stream: shot(*addr, "gpt-4o-mini", true),
        pids: n.pids(),
    });
    let mut targets = vec![&direct, &router_off, &router_on];
    if let Some(r) = &reference {
        targets.push(r);
    }
    for t in &targets {
        client::run(
            t.whole.clone(),
            NON_STREAM_CONCURRENCY,
            Duration::from_millis(700),
            None,
        )
        .await;
    }

    eprintln!("bench: non-stream, c={NON_STREAM_CONCURRENCY}");
    let ticks_before = cpu_ticks();
    let whole = interleaved(&targets, false, NON_STREAM_CONCURRENCY, each, ROUNDS).await;
    eprintln!(
        "bench: streams of {} chunks {} ms apart, c={STREAM_CONCURRENCY}",
        mock::CHUNKS,
        mock::CHUNK_GAP.as_millis()
    );
    let streams = interleaved(&targets, true, STREAM_CONCURRENCY, each, ROUNDS).await;
    let ticks_after = cpu_ticks();
    drop(nginx);
    let rss_on = rss_mib(on_pid);
    let on_lines = stop_gracefully(on_proc, &on_report);
    let kept = telemetry_kept(&on_lines, &on_dir);

    eprintln!("bench: {HELD_STREAMS} concurrent streams");
    let mut held = router_off.stream.clone();
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
    }
    .max(rss_mib(pid));

    eprintln!("bench: {GROWTH_REQUESTS} requests for memory growth");
    let rss_before_growth = rss_mib(pid);
    let growth = client::run(
        router_off.whole.clone(),
        NON_STREAM_CONCURRENCY,
        Duration::from_secs(120),
        Some(GROWTH_REQUESTS),
    )
    .await;
    let rss_after_growth = rss_mib(pid);
    drop(off_proc);
    drop(mock_proc);

    report(&whole, &streams, reference.is_some());
    report_steal(ticks_before, ticks_after);
    let rows = vec![
        row(
            "RSS idle, MiB",
            String::new(),
            format!("{rss_idle:.1}"),
            String::new(),
            "≤ 15",
        ),
        row(
            &format!(
                "RSS at {HELD_STREAMS} concurrent streams, MiB ({held_done} ok, {held_failed} failed)"
            ),
            String::new(),
            format!("{rss_held:.1}"),
            String::new(),
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
        row(
            "RSS with telemetry on, after its load, MiB",
            String::new(),
            format!("{rss_on:.1}"),
            String::new(),
            "",
        ),
    ];
    print_table(
        "### router memory (telemetry off)",
        ["before", "value", "growth", "target"],
        &rows,
    );
    let kept: Vec<Row> = kept
        .into_iter()
        .map(|(label, value)| row(&label, String::new(), value, String::new(), "none dropped"))
        .collect();
    print_table(
        "### telemetry kept (router with telemetry on, counted at its shutdown)",
        ["", "value", "", "target"],
        &kept,
    );
    Ok(())
}

/// The two comparison tables. `whole` and `streams` hold, in order: direct, router with
/// telemetry off, router with telemetry on, and nginx when present.
fn report(whole: &[Tally], streams: &[Tally], with_nginx: bool) {
    let (d, off, on) = (&whole[0], &whole[1], &whole[2]);
    let (ds, offs, ons) = (&streams[0], &streams[1], &streams[2]);
    let n = with_nginx.then(|| &whole[3]);
    let ns = with_nginx.then(|| &streams[3]);
    let num = |v: f64| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.0}")
        }
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
    let times = |x: f64, base: f64| {
        if x.is_nan() || base.is_nan() || base == 0.0 {
            "-".to_owned()
        } else {
            format!("{:.2}x", x / base)
        }
    };
    let plus = |x: f64, base: f64| {
        if x.is_nan() || base.is_nan() {
            "-".to_owned()
        } else {
            format!("{:+.2} ms", x - base)
        }
    };
    let opt = |t: Option<&Tally>, f: &dyn Fn(&Tally) -> f64| t.map_or(f64::NAN, f);

    println!(
        "\n### llmsrouter benchmark: direct to the mock, through nginx, through the router (telemetry off)\n"
    );
    println!(
        "Rates and CPU are the median of {ROUNDS} interleaved rounds. Latencies are over every request of every round on a reused keep-alive connection; each round opens its connections at once, and their first requests are shown in their own rows.\n"
    );
    println!("| measure | direct | nginx | router | router vs direct / nginx vs direct | target |");
    println!("|---|---:|---:|---:|---:|---|");
    let line = |label: &str,
                dv: f64,
                nv: f64,
                rv: f64,
                fmt: &dyn Fn(f64) -> String,
                rel: &dyn Fn(f64, f64) -> String,
                target: &str| {
        println!(
            "| {label} | {} | {} | {} | {} / {} | {target} |",
            fmt(dv),
            fmt(nv),
            fmt(rv),
            rel(rv, dv),
            rel(nv, dv)
        );
    };
    line(
        "non-stream c=32: requests/s",
        d.rate(),
        opt(n, &Tally::rate),
        off.rate(),
        &num,
        &times,
        "router ≥ 0.6x",
    );
    for (q, target) in [(50.0, ""), (99.0, "router ≤ +0.5 ms")] {
        let f = move |t: &Tally| t.percentile(false, q);
        line(
            &format!("non-stream: p{q:.0} ms"),
            f(d),
            opt(n, &f),
            f(off),
            &ms,
            &plus,
            target,
        );
    }
    line(
        "stream c=64: streams/s",
        ds.rate(),
        opt(ns, &Tally::rate),
        offs.rate(),
        &num,
        &times,
        "",
    );
    for (q, first, label, target) in [
        (50.0, true, "stream: first byte p50 ms", ""),
        (99.0, true, "stream: first byte p99 ms", "router ≤ +1 ms"),
        (50.0, false, "stream: total p50 ms", ""),
        (99.0, false, "stream: total p99 ms", ""),
    ] {
        let f = move |t: &Tally| t.percentile(first, q);
        line(label, f(ds), opt(ns, &f), f(offs), &ms, &plus, target);
    }
    for (q, label) in [
        (50.0, "non-stream, a new connection's first request: p50 ms"),
        (99.0, "non-stream, a new connection's first request: p99 ms"),
    ] {
        let f = move |t: &Tally| t.fresh_percentile(false, q);
        line(label, f(d), opt(n, &f), f(off), &ms, &plus, "");
    }
    for (q, label) in [
        (
            50.0,
            "stream, a new connection's first request: first byte p50 ms",
        ),
        (
            99.0,
            "stream, a new connection's first request: first byte p99 ms",
        ),
    ] {
        let f = move |t: &Tally| t.fresh_percentile(true, q);
        line(label, f(ds), opt(ns, &f), f(offs), &ms, &plus, "");
    }
    let none = |_: f64, _: f64| String::new();
    line(
        "CPU per non-stream request, ms",
        f64::NAN,
        opt(n, &Tally::cpu_per_request),
        off.cpu_per_request(),
        &cpu,
        &none,
        "router ≤ 0.05",
    );
    line(
        "CPU per 20-chunk stream, ms",
        f64::NAN,
        opt(ns, &Tally::cpu_per_request),
        offs.cpu_per_request(),
        &cpu,
        &none,
        "router ≤ 0.45",
    );
    let errors = |a: &Tally, b: &Tally| (a.errors() + b.errors()) as f64;
    let n_errors = match (n, ns) {
        (Some(a), Some(b)) => errors(a, b),
        _ => f64::NAN,
    };
    line(
        "errors",
        errors(d, ds),
        n_errors,
        errors(off, offs),
        &num,
        &none,
        "0",
    );

    let rows = vec![
        row(
            "non-stream c=32: requests/s",
            num(off.rate()),
            num(on.rate()),
            times(on.rate(), off.rate()),
            "≥ 0.9x",
        ),
        row(
            "stream c=64: streams/s",
            num(offs.rate()),
            num(ons.rate()),
            times(ons.rate(), offs.rate()),
            "≥ 0.9x",
        ),
        row(
            "router CPU per non-stream request, ms",
            cpu(off.cpu_per_request()),
            cpu(on.cpu_per_request()),
            times(on.cpu_per_request(), off.cpu_per_request()),
            "",
        ),
        row(
            "router CPU per stream, ms",
            cpu(offs.cpu_per_request()),
            cpu(ons.cpu_per_request()),
            times(ons.cpu_per_request(), offs.cpu_per_request()),
            "",
        ),
        row(
            "non-stream p99 ms",
            ms(off.percentile(false, 99.0)),
            ms(on.percentile(false, 99.0)),
            plus(on.percentile(false, 99.0), off.percentile(false, 99.0)),
            "",
        ),
        row(
            "errors",
            num(errors(off, offs)),
            num(errors(on, ons)),
            String::new(),
            "0",
        ),
    ];
    print_table(
        "### telemetry off vs on (Langfuse exporter to the mock, request log, ledger), same rounds",
        ["off", "on", "ratio", "target"],
        &rows,
    );
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
