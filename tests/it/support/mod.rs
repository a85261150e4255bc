//! Test helpers: the mock upstream, the router in-process or as the real binary, a sink that
//! collects records, and polling with a deadline (never sleeps as synchronisation).

// Each test binary module uses a different subset of these helpers.
#![allow(dead_code)]

pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmsrouter::config::Config;
use llmsrouter::record::{RecordSink, Recorder, RecorderTask, RequestRecord};
use llmsrouter::state::{AppState, build_http_client};

/// Polls `check` until it holds; panics with a clear message after `within`.
pub async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Collects every record the router hands over.
#[derive(Default)]
pub struct Collector(Mutex<Vec<Arc<RequestRecord>>>);

impl RecordSink for Collector {
    fn name(&self) -> &'static str {
        "test-collector"
    }
    fn accept(&self, record: &Arc<RequestRecord>) {
        self.0.lock().expect("lock").push(record.clone());
    }
}

impl Collector {
    pub fn all(&self) -> Vec<Arc<RequestRecord>> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits for the `n`th record (1-based) and returns it.
    pub async fn nth(&self, n: usize) -> Arc<RequestRecord> {
        wait_until(Duration::from_secs(10), || {
            self.0.lock().expect("lock").len() >= n
        })
        .await;
        self.all()[n - 1].clone()
    }
}

/// The value of the sample `name` (a counter with its labels, `llmsrouter_x_total{a="b"}`)
/// in a `/metrics` text, if it is there.
pub fn metric_sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The real router, in-process on an ephemeral loopback port.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub records: Arc<Collector>,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    recorder_task: Option<RecorderTask>,
}

impl TestRouter {
    pub async fn start(config_yaml: &str) -> Self {
        Self::start_with(config_yaml, |_| {}).await
    }

    /// Serves on `listener`, bound beforehand: for configs that name the router's own
    /// address, or another router's that names this one.
    pub async fn start_on(listener: tokio::net::TcpListener, config_yaml: &str) -> Self {
        let records = Arc::new(Collector::default());
        let (recorder, recorder_task) = Recorder::start(vec![records.clone()]);
        Self::launch_on(
            listener,
            config_yaml,
            recorder,
            Some(recorder_task),
            records,
            |_| {},
        )
        .await
    }

    /// Starts with a config and a chance to adjust the state (keep-alive interval, keys).
    pub async fn start_with(config_yaml: &str, adjust: impl FnOnce(&mut AppState)) -> Self {
        Self::start_with_sinks(config_yaml, Vec::new(), adjust).await
    }

    /// Like [`Self::start_with`], with more sinks after the collector (ledger, log, traces).
    pub async fn start_with_sinks(
        config_yaml: &str,
        sinks: Vec<Arc<dyn RecordSink>>,
        adjust: impl FnOnce(&mut AppState),
    ) -> Self {
        let records = Arc::new(Collector::default());
        let mut all = vec![records.clone() as Arc<dyn RecordSink>];
        all.extend(sinks);
        let (recorder, recorder_task) = Recorder::start(all);
        Self::launch(config_yaml, recorder, Some(recorder_task), records, adjust).await
    }

    /// [`Self::start`] with a recorder keeping to another body budget: records held past it
    /// are handed to the sinks without their bodies.
    pub async fn start_with_body_budget(config_yaml: &str, body_budget: usize) -> Self {
        Self::start_with_sinks_and_body_budget(config_yaml, Vec::new(), body_budget).await
    }

    /// [`Self::start_with_body_budget`] with more sinks after the collector.
    pub async fn start_with_sinks_and_body_budget(
        config_yaml: &str,
        sinks: Vec<Arc<dyn RecordSink>>,
        body_budget: usize,
    ) -> Self {
        let records = Arc::new(Collector::default());
        let mut all = vec![records.clone() as Arc<dyn RecordSink>];
        all.extend(sinks);
        let (recorder, recorder_task) = Recorder::start_with_budget(all, body_budget);
        Self::launch(config_yaml, recorder, Some(recorder_task), records, |_| {}).await
    }

    /// With every sink off, as `serve` runs without a log file, ledger or Langfuse: no record
    /// is built at all (`records` stays empty).
    pub async fn start_unrecorded(config_yaml: &str) -> Self {
        let records = Arc::new(Collector::default());
        Self::launch(config_yaml, Recorder::disabled(), None, records, |_| {}).await
    }

    async fn launch(
        config_yaml: &str,
        recorder: Recorder,
        recorder_task: Option<RecorderTask>,
        records: Arc<Collector>,
        adjust: impl FnOnce(&mut AppState),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::launch_on(
            listener,
            config_yaml,
            recorder,
            recorder_task,
            records,
            adjust,
        )
        .await
    }

    async fn launch_on(
        listener: tokio::net::TcpListener,
        config_yaml: &str,
        recorder: Recorder,
        recorder_task: Option<RecorderTask>,
        records: Arc<Collector>,
        adjust: impl FnOnce(&mut AppState),
    ) -> Self {
        let config =
            Config::parse(config_yaml, &|n| std::env::var(n).ok()).expect("test config is valid");
        let mut state =
            AppState::new(config, build_http_client().expect("client"), recorder).expect("state");
        adjust(&mut state);
        let state = Arc::new(state);
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            let _ = llmsrouter::server::run(
                listener,
                server_state,
                shutdown,
                std::future::pending(),
                Duration::from_secs(5),
            )
            .await;
        });
        Self {
            addr,
            records,
            state,
            stop: Some(tx),
            server: Some(server),
            recorder_task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `/v1/chat/completions`; panics only when it cannot be sent.
    pub async fn chat(&self, body: &(impl serde::Serialize + ?Sized)) -> reqwest::Response {
        post_json(&self.url("/v1/chat/completions"), body).await
    }

    /// Stops the server and drains the recorder.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.state.recorder.wait_idle(Duration::from_secs(5)).await;
        if let Some(task) = self.recorder_task.take() {
            task.shutdown().await;
        }
    }
}

/// A config with one alias `mock` pointing at `url`, plus extra YAML for that server.
pub fn one_server_config(url: &str, extra: &str) -> String {
    format!("servers:\n  mock:\n    url: \"{url}\"\n    api_key: \"sk-mock-upstream-key\"\n{extra}")
}

/// POSTs `body` as JSON to `url`; panics only when it cannot be sent.
pub async fn post_json(url: &str, body: &(impl serde::Serialize + ?Sized)) -> reqwest::Response {
    client().post(url).json(body).send().await.expect("send")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("test client")
}

/// A client that speaks HTTP/2 without TLS from the first byte (h2c prior knowledge).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client")
}

/// Removes from a spawned router every variable it reads (and proxy settings, which would
/// send loopback traffic elsewhere), so a developer's own settings — Langfuse keys, a log
/// file, accounts on — never leak into a test. Tests set what they need explicitly.
fn isolate_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let upper = name.to_ascii_uppercase();
        if upper.starts_with("LLMSROUTER_")
            || upper.starts_with("LANGFUSE_")
            || upper.starts_with("OTEL_")
            || upper == "ENABLE_ACCOUNT_MANAGEMENT"
            || upper.ends_with("_PROXY")
        {
            command.env_remove(name.as_ref());
        }
    }
}

/// A loopback URL nothing listens on: a port bound for the rest of the test process and never
/// listened on, so a connection is refused. (A port taken and let go could be given to another
/// test's listener running alongside.)
pub fn closed_url() -> String {
    format!("{}/v1", closed_origin())
}

/// `closed_url` without the `/v1` path.
pub fn closed_origin() -> String {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IP address");
    std::mem::forget(socket);
    format!("http://{addr}")
}

/// A loopback address whose connections are never made: a listener with no room in its
/// accept queue (filled, never accepted) drops new SYNs. Holds the sockets while alive.
pub fn unconnectable() -> (std::net::SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into()).expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut held = vec![listener];
    for _ in 0..4 {
        let filler = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        filler.set_nonblocking(true).expect("nonblocking");
        let _ = filler.connect(&addr.into());
        held.push(filler);
    }
    (addr, held)
}

/// Path of the built binary under test.
/// The Python of the venv `.ci/run` makes (`.venv`, or `LLMSROUTER_TEST_PYTHON`), which holds
/// the `openai` and `python-dotenv` packages. Under CI (`CI=true`) a missing venv fails the
/// test; on a developer machine that has not run `.ci/run` yet, `None` (the test says so and
/// passes).
pub fn test_python() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("LLMSROUTER_TEST_PYTHON") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(
        !in_ci,
        "CI must provide the Python packages: .ci/run makes .venv"
    );
    eprintln!("skipped: no .venv with the Python test packages; run .ci/run once to make it");
    None
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llmsrouter"))
}

/// The real `llmsrouter serve`, in its own working directory, on an ephemeral port.
/// How [`RouterProcess`] starts the binary.
enum Launch {
    Plain,
    /// With the soft limit on open files lowered to this first.
    OpenFiles(u64),
    /// With the hard limit on open files (and so the soft one) lowered to this first.
    HardOpenFiles(u64),
    /// With SIGHUP ignored, as `nohup` starts a program.
    IgnoringHangup,
    AsReader,
    /// As the test prepared it (another user, a wrapper).
    Prepared(Command),
    /// Its stderr's read end closed once it listens, as `serve 2>&1 | head -2` leaves it
    /// once `head` has exited: every later log line fails to write (EPIPE).
    StderrClosedOnceListening,
}

/// A command running the binary as a user for whom a file of mode 444 is read-only: the
/// test's own user, or `nobody` when that is root (which writes any file). `dir` is opened
/// to all (a temporary folder is its owner's only) so `nobody` can enter it.
pub fn reader_command(dir: &Path) -> Command {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let root = std::fs::metadata(dir).expect("dir").uid() == 0;
    if !root {
        return Command::new(binary());
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary());
    command
}

/// The peak resident memory (`VmHWM`) of process `pid` (a [`RouterProcess`]), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

pub struct RouterProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
    /// Set when the thread reading the router's stderr saw its end: every line is in.
    stderr_read: Arc<std::sync::atomic::AtomicBool>,
}

impl RouterProcess {
    /// Starts `llmsrouter serve` in `dir` with `config.yaml` written there if given.
    pub fn start(config_yaml: Option<&str>, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(yaml) = config_yaml {
            std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
        }
        Self::start_in(dir, envs)
    }

    pub fn start_in(dir: tempfile::TempDir, envs: &[(&str, &str)]) -> Self {
        Self::spawn(dir, envs, Launch::Plain)
    }

    /// [`Self::start_in`] by a user who may not write `dir`'s read-only files (see
    /// [`reader_command`]).
    pub fn start_as_reader(dir: tempfile::TempDir, envs: &[(&str, &str)]) -> Self {
        Self::spawn(dir, envs, Launch::AsReader)
    }

    /// [`Self::start_in`] with `command` (the binary, however launched) in place of the
    /// binary itself.
    pub fn start_with(dir: tempfile::TempDir, envs: &[(&str, &str)], command: Command) -> Self {
        Self::spawn(dir, envs, Launch::Prepared(command))
    }

    /// [`Self::start`] with the soft limit on open files lowered to `soft_limit` first (by
    /// the shell that then becomes the router), as a login shell or systemd would start it.
    pub fn start_with_open_files(
        config_yaml: &str,
        envs: &[(&str, &str)],
        soft_limit: u64,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), config_yaml).expect("write config");
        Self::spawn(dir, envs, Launch::OpenFiles(soft_limit))
    }

    /// [`Self::start`] with the hard limit on open files lowered to `limit` first: the router
    /// cannot raise it, and runs out of file descriptors past it.
    pub fn start_with_hard_open_files(
        config_yaml: &str,
        envs: &[(&str, &str)],
        limit: u64,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), config_yaml).expect("write config");
        Self::spawn(dir, envs, Launch::HardOpenFiles(limit))
    }

    /// [`Self::start`] as `nohup` would: SIGHUP ignored (by the shell that then becomes the
    /// router; an ignored signal stays ignored across `exec`).
    pub fn start_ignoring_hangup(config_yaml: &str, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), config_yaml).expect("write config");
        Self::spawn(dir, envs, Launch::IgnoringHangup)
    }

    /// [`Self::start_in`], then its stderr closed ([`Launch::StderrClosedOnceListening`]):
    /// [`Self::stderr`] holds the lines up to the start-up line only.
    pub fn start_then_close_stderr(dir: tempfile::TempDir, envs: &[(&str, &str)]) -> Self {
        Self::spawn(dir, envs, Launch::StderrClosedOnceListening)
    }

    fn spawn(dir: tempfile::TempDir, envs: &[(&str, &str)], launch: Launch) -> Self {
        let close_stderr = matches!(launch, Launch::StderrClosedOnceListening);
        let mut command = match launch {
            Launch::Plain | Launch::StderrClosedOnceListening => Command::new(binary()),
            Launch::AsReader => reader_command(dir.path()),
            Launch::Prepared(command) => command,
            Launch::OpenFiles(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""))
                    .arg(binary());
                shell
            }
            Launch::HardOpenFiles(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!(
                        "ulimit -Sn {limit} && ulimit -Hn {limit} && exec \"$0\" \"$@\""
                    ))
                    .arg(binary());
                shell
            }
            Launch::IgnoringHangup => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg("trap '' HUP && exec \"$0\" \"$@\"")
                    .arg(binary());
                shell
            }
        };
        isolate_env(&mut command);
        command
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn llmsrouter");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let sink = lines.clone();
        let stderr_read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = stderr_read.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = listening_addr(&line);
                // Stored before the start is reported: a test may read it at once.
                sink.lock().expect("lock").push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                    if close_stderr {
                        break;
                    }
                }
            }
            read.store(true, std::sync::atomic::Ordering::Release);
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "router did not start; stderr: {:?}",
                    lines.lock().expect("lock")
                );
            }
        };
        Self {
            child,
            addr,
            dir,
            stderr_lines: lines,
            stderr_read,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `/v1/chat/completions`; panics only when it cannot be sent.
    pub async fn chat(&self, body: &(impl serde::Serialize + ?Sized)) -> reqwest::Response {
        post_json(&self.url("/v1/chat/completions"), body).await
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().expect("lock").join("\n")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Asks for `/v1/models` (which refreshes every server's list) and waits until the log
    /// has, for each `(server, text)`, a line of `server=<server>` holding `text`: the
    /// refresh's warning about that server.
    pub async fn list_models_and_wait_for_warnings(&self, warnings: &[(&str, &str)]) {
        let listed = client()
            .get(self.url("/v1/models"))
            .send()
            .await
            .expect("list");
        assert_eq!(listed.status(), 200);
        let said = |log: &str, server: &str, text: &str| {
            let server = format!("server={server}");
            log.lines().any(|l| l.contains(&server) && l.contains(text))
        };
        wait_until(Duration::from_secs(10), || {
            let log = self.stderr();
            warnings
                .iter()
                .all(|(server, text)| said(&log, server, text))
        })
        .await;
    }

    /// The text of `GET /metrics`, with `key` as the bearer key when accounts are on.
    pub async fn metrics(&self, key: Option<&str>) -> String {
        let request = client().get(self.url("/metrics"));
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request.send().await.expect("metrics");
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("text")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Stops the router with SIGTERM, asserts that it exited cleanly (within 20 s, status 0),
    /// and gives its whole log.
    pub async fn stop_for_log(&mut self) -> String {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "{}", self.stderr());
        self.stderr()
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit with a deadline; returns the exit status. Its stderr is then read to
    /// the end: [`Self::stderr`] holds every line it wrote (the pipe is read by a thread,
    /// which may lag the exit).
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let read = &self.stderr_read;
                wait_until(Duration::from_secs(10), || {
                    read.load(std::sync::atomic::Ordering::Acquire)
                })
                .await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "router did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs the binary with `args` in `dir` writing its stdout to `stdout` (a full device, a
/// closed pipe); returns (exit code, stderr).
pub fn run_cli_writing_to(dir: &Path, args: &[&str], stdout: std::fs::File) -> (i32, String) {
    let mut command = Command::new(binary());
    command.stdout(stdout);
    let (code, _, stderr) = run_prepared(command, dir, args, &[]);
    (code, stderr)
}

/// Runs the binary with `args` in `dir` writing to a pipe whose reader is already gone (as
/// `| head -1` leaves it once head has exited, but every time); returns (exit code, stderr).
pub fn run_cli_into_closed_pipe(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(binary());
    command.stdout(closed_pipe());
    let (code, _, stderr) = run_prepared(command, dir, args, envs);
    (code, stderr)
}

/// A pipe whose reader is already gone: one end of a socket pair, the other dropped, so a
/// write fails with EPIPE.
pub fn closed_pipe() -> std::os::fd::OwnedFd {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    drop(ours);
    theirs.into()
}

/// Runs the binary with `args` in `dir` and `envs` writing its stderr to `stderr` (a full
/// device, a closed pipe); returns (exit code, stdout).
pub fn run_cli_with_stderr(
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    stderr: impl Into<Stdio>,
) -> (i32, String) {
    let mut command = Command::new(binary());
    command.stderr(stderr);
    let (code, stdout, _) = run_prepared(command, dir, args, envs);
    (code, stdout)
}

/// Runs the binary with `args` in `dir` with its standard output closed (`>&-`); returns
/// (exit code, stderr).
pub fn run_cli_with_stdout_closed(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut command = Command::new("sh");
    command.args(["-c", "exec \"$0\" \"$@\" >&-"]).arg(binary());
    let (code, _, stderr) = run_prepared(command, dir, args, &[]);
    (code, stderr)
}

/// Runs the binary with `args` in `dir` reading its stdin from `stdin`; returns (exit code,
/// stdout, stderr).
pub fn run_cli_reading(dir: &Path, args: &[&str], stdin: std::fs::File) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.stdin(stdin);
    run_prepared(command, dir, args, &[])
}

/// [`run_cli`] by a user who may not write `dir`'s read-only files ([`reader_command`]).
pub fn run_cli_as_reader(
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    run_prepared(reader_command(dir), dir, args, envs)
}

/// Runs the binary with `args` in `dir` and `envs`, whose values may be any bytes (not
/// UTF-8, say); returns (exit code, stdout, stderr). One still running after 20 s (a `serve`
/// that should have refused to start) is killed and gives exit code -1, so a test of a
/// refusal fails rather than hangs.
pub fn run_cli_bytes(dir: &Path, args: &[&str], envs: &[(&str, &[u8])]) -> (i32, String, String) {
    use std::os::unix::ffi::OsStrExt as _;
    let mut command = Command::new(binary());
    isolate_env(&mut command);
    command
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, std::ffi::OsStr::from_bytes(v));
    }
    let mut child = command.spawn().expect("run llmsrouter");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `args` in `dir`; returns (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    run_prepared(Command::new(binary()), dir, args, envs)
}

/// Runs `command` (the binary, however launched) with `args` in `dir` and only `envs` of
/// the router's variables; returns (exit code, stdout unless redirected, stderr).
pub fn run_prepared(
    mut command: Command,
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    isolate_env(&mut command);
    command.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("run llmsrouter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What is logged on this thread (a test's current-thread runtime runs its router and its
/// exporter's tasks here) while the guard [`Logged::capture`] returns lives.
#[derive(Clone, Default)]
pub struct Logged(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logged {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logged = Self::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logged, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}
