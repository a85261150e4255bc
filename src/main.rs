//! The `llmsrouter` binary: load `.env`, parse the command line, run the subcommand, own
//! start-up errors (one line on stderr, non-zero exit) and shutdown.
// Standard error only through `console`, whose writes cannot panic.
#![warn(clippy::print_stderr, clippy::print_stdout)]

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tracing_subscriber::EnvFilter;

use llmsrouter::cli::{Cli, Command, ModelsArgs, ServeArgs, UsageArgs, UsageGroup, UserCommand};
use llmsrouter::config::{Config, ConfigError};
use llmsrouter::console;
use llmsrouter::db::DbError;
use llmsrouter::env::EnvSettings;
use llmsrouter::models::{self, ModelCatalog, ServerStatus};
use llmsrouter::record::Recorder;
use llmsrouter::server;
use llmsrouter::sinks::SinkError;
use llmsrouter::sinks::ledger::LedgerError;
use llmsrouter::sinks::redact::Redactor;
use llmsrouter::state::{AppState, build_http_client};
use llmsrouter::users;

/// mimalloc instead of glibc's malloc: a request allocates on its lane and its record is freed
/// on a sink's thread, which glibc pays for with arena locks; mimalloc frees across threads
/// without them. The load benchmark, same run conditions, glibc → mimalloc: 42.0k → 48.5k
/// requests/s, 0.0270 → 0.0225 ms CPU per request, RSS at 2,000 streams 82 → 74 MiB. Built
/// without transparent huge pages, which cost ~8 MiB of idle RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Taken before `.env` adds its own: what the real environment sets wins over `.env`.
    let in_environment: HashSet<OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    // Only the working directory's `.env`, not a parent directory's (another project's).
    let dotenv = llmsrouter::dotenv::load(Path::new(".env"));
    // Before anything reads them (the flags' variables are read by the next line).
    let from_environment = |name: &str| in_environment.contains(OsStr::new(name));
    let unquoted = llmsrouter::env::unquote_router_variables(&from_environment);
    llmsrouter::env::empty_proxy_variables_yield();
    let cli = Cli::parse_or_exit();
    // `models` reports failing servers itself, on one line each; log lines would repeat them.
    let default_filter = match cli.command {
        Command::Models(_) | Command::Healthcheck(_) => "error",
        _ => "info",
    };
    if let Some(reason) = init_tracing(default_filter) {
        let warning =
            format!("RUST_LOG is not a log filter ({reason}); logging at {default_filter}");
        // The server logs it; a command warns as it warns of anything else.
        match cli.command {
            Command::Serve(_) => tracing::warn!("{warning}"),
            _ => console::line(format_args!("warning: {warning}")),
        }
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    let dotenv_problems =
        dotenv_problems(&dotenv, &|key| given_anyway(key, &in_environment, &args));
    // `check` fails on them; the server logs them, and stops on those it cannot start
    // without; the other commands warn as they warn of anything else, one `warning:` line
    // each, not a log line.
    match cli.command {
        Command::Check => {
            // Warnings, which `check` does not fail on: the values are read as meant.
            for warning in &unquoted {
                console::line(format_args!("warning: {warning}"));
            }
        }
        Command::Serve(_) => {
            for warning in &unquoted {
                tracing::warn!("{warning}");
            }
            for problem in dotenv_problems.iter().filter(|p| !p.stops_serve) {
                tracing::warn!("{}", problem.text);
            }
        }
        _ => {
            // Not from `healthcheck`, which a container runs every few seconds in the
            // environment `serve` has warned of once.
            if !matches!(cli.command, Command::Healthcheck(_)) {
                for warning in &unquoted {
                    console::line(format_args!("warning: {warning}"));
                }
            }
            for problem in &dotenv_problems {
                console::line(format_args!("warning: {}", problem.text));
            }
        }
    }
    let result = match &cli.command {
        Command::Serve(args) => {
            refuse_dotenv(&dotenv_problems).and_then(|()| run_serve(&cli, args, &from_environment))
        }
        Command::Check => run_check(&cli, &dotenv_problems, &from_environment),
        Command::Models(args) => run_models(&cli, args, &from_environment),
        Command::Healthcheck(args) => run_healthcheck(args),
        Command::User(command) => run_user(&cli, command),
        Command::Usage(args) => run_usage(&cli, args),
    };
    match result {
        Ok(code) => code,
        // A reader that stopped reading (`| head -1`) is no failure: ended quietly.
        Err(error) if error.is::<ClosedPipe>() => ExitCode::SUCCESS,
        Err(error) => {
            console::line(format_args!("error: {}", one_line(&error)));
            // A bad variable is a mistake in how the command was called, as a bad flag is;
            // but the environment is what `check` validates, and it says so with 1 (its
            // contract: 0 valid, 1 not), as for a bad config.yaml.
            let validated =
                matches!(cli.command, Command::Check) && error.is::<llmsrouter::env::EnvError>();
            if error.is::<CommandLineError>()
                || (error.is::<llmsrouter::env::EnvError>() && !validated)
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Something wrong with `.env`, said in one line.
struct DotenvProblem {
    text: String,
    /// `serve` refuses to start on it (exit status 1), as on an unreadable config.yaml: the
    /// file could not be read at all, or a line setting a variable the router reads was
    /// skipped. Either way the router would run without settings meant for it, which for
    /// `ENABLE_ACCOUNT_MANAGEMENT=true` left it open to anyone. The others are warnings.
    stops_serve: bool,
}

/// What gives the router variable `key` its setting whatever `.env` says: its flag on the
/// command line, or the real environment (which wins over `.env`), said as the end of a
/// warning. `None` when `.env` was the only place for it.
fn given_anyway(
    key: &str,
    in_environment: &HashSet<OsString>,
    args: &[OsString],
) -> Option<String> {
    if let Some(flag) = llmsrouter::cli::flag_on_the_line_for(key, args) {
        return Some(format!("{flag} on the command line gives this setting"));
    }
    in_environment
        .contains(OsStr::new(key))
        .then(|| format!("{key} is set in the environment, which wins over .env"))
}

/// What went wrong reading `.env`, one line each: `serve` and the other commands warn (as the
/// Python version did, they go on without the lines) unless it [`DotenvProblem::stops_serve`];
/// `check` fails on every one. `given_anyway` is [`given_anyway`] for this run.
fn dotenv_problems(
    loaded: &Result<llmsrouter::dotenv::Loaded, llmsrouter::dotenv::DotenvError>,
    given_anyway: &dyn Fn(&str) -> Option<String>,
) -> Vec<DotenvProblem> {
    let loaded = match loaded {
        Err(error) => {
            return vec![DotenvProblem {
                text: error.to_string(),
                stops_serve: true,
            }];
        }
        Ok(loaded) => loaded,
    };
    // A skipped line for one of the router's variables is said with the variable's name
    // (never the value); other skipped lines by their number only (the "key" may be a
    // pasted secret).
    let router_variables = |statement: usize| {
        loaded
            .skipped_keys
            .iter()
            .filter(move |skipped| {
                skipped.statement == statement && llmsrouter::env::read_by_router(&skipped.key)
            })
            .map(|skipped| (skipped.line, skipped.key.as_str()))
    };
    let warning = |text: String| DotenvProblem {
        text,
        stops_serve: false,
    };
    // A setting the command line or the real environment gives anyway is no setting lost:
    // the line is skipped with a warning, as any other.
    let stops = |key: &str, text: String| match given_anyway(key) {
        Some(giver) => DotenvProblem {
            text: format!("{text}; the line is skipped, and {giver}"),
            stops_serve: false,
        },
        None => DotenvProblem {
            text: format!(
                "{text}; skipping it would start the router without this setting: fix the line"
            ),
            stops_serve: true,
        },
    };
    let mut problems = Vec::new();
    for bad in &loaded.bad_lines {
        let before = problems.len();
        // Each line of the statement that sets one: a quote left open above
        // `ENABLE_ACCOUNT_MANAGEMENT=true` swallows that line into the skipped statement.
        for (line, key) in router_variables(bad.line) {
            problems.push(stops(
                key,
                if line == bad.line {
                    format!(
                        ".env line {line}: the line for {key} is not KEY=value (an unclosed quote, text after a closing quote, or ':' for '='?)"
                    )
                } else {
                    format!(
                        ".env line {line}: the line for {key} is inside the statement that begins at line {}, which is skipped as a whole, lines {}-{} (an unclosed quote on line {}?)",
                        bad.line, bad.line, bad.last_line, bad.line
                    )
                },
            ));
        }
        if problems.len() == before {
            problems.push(warning(bad.to_string()));
        }
    }
    problems.extend(loaded.skipped_key_lines.iter().map(|line| {
        warning(format!(
            ".env line {line}: the name before '=' is not a variable name the router can set; the line is skipped"
        ))
    }));
    // Skipped in silence as another program's name, unless it looks like one of ours.
    problems.extend(loaded.dashed_keys.iter().filter_map(|(line, key)| {
        let meant = llmsrouter::env::meant_for_router(key)?;
        Some(warning(format!(
            ".env line {line}: {key} is no variable the router reads (none has a '-'); {meant} was meant? the line is skipped"
        )))
    }));
    problems.extend(loaded.non_utf8_lines.iter().map(|line| {
        warning(format!(
            ".env line {line}: not UTF-8 (saved in another encoding?); read with U+FFFD in place of each bad byte, so a key there is not the one meant"
        ))
    }));
    for (line, key) in &loaded.keys_without_value {
        if llmsrouter::env::read_by_router(key) {
            problems.push(stops(
                key,
                format!(
                    ".env line {line}: the line for {key} sets nothing (no '=' after the name; ':' for '='?)"
                ),
            ));
        }
    }
    for inside in &loaded.keys_inside_values {
        if llmsrouter::env::read_by_router(&inside.key) {
            problems.push(stops(
                &inside.key,
                format!(
                    ".env line {}: the line for {} is inside the quoted value of {} that begins at line {} (a quote left open on line {}?)",
                    inside.line, inside.key, inside.holder, inside.holder_line, inside.holder_line
                ),
            ));
        }
    }
    for &line in &loaded.nul_lines {
        problems.push(match router_variables(line).next() {
            Some((_, key)) => stops(
                key,
                format!(
                    ".env line {line}: the value of {key} holds a NUL byte, which no environment variable can hold"
                ),
            ),
            None => warning(format!(
                ".env line {line}: the value holds a NUL byte, which no environment variable can hold; the line is skipped"
            )),
        });
    }
    problems
}

/// `serve`'s refusal of the `.env` problems it cannot start with: each on an `error:` line,
/// the last as the error (exit status 1).
fn refuse_dotenv(problems: &[DotenvProblem]) -> anyhow::Result<()> {
    let stopping: Vec<&str> = problems
        .iter()
        .filter(|p| p.stops_serve)
        .map(|p| p.text.as_str())
        .collect();
    let Some((last, others)) = stopping.split_last() else {
        return Ok(());
    };
    for problem in others {
        console::line(format_args!("error: {problem}"));
    }
    Err(anyhow!("{last}"))
}

/// The console log, filtered by `RUST_LOG`; a filter that cannot be read gives
/// `default_filter` and the reason, for the caller to warn of.
fn init_tracing(default_filter: &str) -> Option<String> {
    use std::env::VarError;
    let (filter, unreadable) = match std::env::var("RUST_LOG") {
        Ok(wanted) if !wanted.trim().is_empty() => match EnvFilter::try_new(&wanted) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(default_filter), Some(e.to_string())),
        },
        Ok(_) => (
            EnvFilter::new(default_filter),
            Some("it is set but empty".to_owned()),
        ),
        Err(VarError::NotUnicode(_)) => (
            EnvFilter::new(default_filter),
            Some("it is not UTF-8 text".to_owned()),
        ),
        Err(VarError::NotPresent) => (EnvFilter::new(default_filter), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: a file or a log collector would keep the escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A line that cannot be written is dropped, never reported by `eprintln!` (which
        // panics when stderr is a closed pipe or a full disk): see `console`.
        .with_writer(console::Stderr::default)
        .with_target(false)
        .init();
    unreadable
}

/// The error and its causes on one line, each cause left out when the message before it
/// already says it (an error that shows its source in its own message, as `thiserror`'s
/// `#[error("...: {0}")]` with `#[from]` does, would otherwise print it twice).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// A variable of the process's environment, for `${NAME}` in config.yaml.
fn env_var(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
}

/// Loads config.yaml; a missing file is a warning and an empty config (URL targets still work).
fn load_config(path: &Path, from_environment: &dyn Fn(&str) -> bool) -> anyhow::Result<Config> {
    match Config::load(path, &env_var, from_environment) {
        Ok(config) => {
            for warning in &config.warnings {
                tracing::warn!("{}: {warning}", path.display());
            }
            Ok(config)
        }
        Err(ConfigError::NotFound { file }) => {
            tracing::warn!(
                "{}: not found; serving URL targets only (?proxy=https://host or \"[https://host]model\")",
                file.display()
            );
            Ok(Config::default())
        }
        Err(error) => Err(said_but_last(&error)),
    }
}

/// Says each of config.yaml's problems but the last on its own `error:` line (see
/// [`ConfigError::lines`]), and gives the last for `main` to say, as it says any error.
fn said_but_last(error: &ConfigError) -> anyhow::Error {
    let mut lines = error.lines();
    let last = lines.pop().unwrap_or_default();
    for line in lines {
        console::line(format_args!("error: {line}"));
    }
    anyhow!(last)
}

/// How long shutdown waits, after the server stopped, for the last requests to hand over
/// their records (they were cut when the grace period ended, so this is short).
const RECORDS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `from_environment` names the variables set before `.env` was loaded (see [`Config::load`]).
fn run_serve(
    cli: &Cli,
    args: &ServeArgs,
    from_environment: &dyn Fn(&str) -> bool,
) -> anyhow::Result<ExitCode> {
    let env = match EnvSettings::from_env() {
        Ok(env) => env,
        Err(mut errors) => {
            // Logged as when every variable is good (and as the quoted values' warnings were,
            // a moment ago): a bad variable does not hide the others' warnings, which came to
            // light only in the run after it was fixed.
            for warning in std::mem::take(&mut errors.warnings) {
                tracing::warn!("{warning}");
            }
            return Err(say_all_but_last(errors).into());
        }
    };
    for warning in &env.warnings {
        tracing::warn!("{warning}");
    }
    let config = load_config(&cli.config, from_environment)?;
    // Each connection and each upstream connection is a file: see `open_files`.
    #[cfg(unix)]
    llmsrouter::open_files::raise_and_report();
    // Requests are served on lanes (one thread and runtime per core, see `lanes`); this
    // runtime only accepts connections and runs background work: the recorder, exports,
    // model list and user refreshes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Before anything else is started: a SIGTERM from here on is a graceful stop (exit 0),
        // also one sent the moment the start-up line appears.
        let (signals, counted) = tokio::sync::watch::channel(0);
        tokio::spawn(server::count_signals(signals));
        let client = build_http_client().context("cannot build the HTTP client")?;
        let (users_index, users_task) = if env.account_management {
            let (index, task) = start_users(&cli.db)?;
            (Some(index), Some(task))
        } else {
            (None, None)
        };
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("no local address")?;
        let sinks = llmsrouter::sinks::start(&env, &config, &cli.db).map_err(|e| match e {
            SinkError::Ledger(LedgerError::Db(e)) => ledger_db_error(cli, e),
            e => anyhow!(e),
        })?;
        let (recorder, recorder_task) = if sinks.is_empty() {
            (Recorder::disabled(), None)
        } else {
            let (recorder, task) = Recorder::start_warning_every(sinks, env.warning_interval());
            (recorder, Some(task))
        };
        let mut state = AppState::new(config, client, recorder.clone())?;
        state.warning_interval = env.warning_interval();
        // The trace destinations' credentials as well: an upstream error body that echoes
        // one reaches the client as the records have it, redacted.
        let trace_secrets = env.secrets();
        state.redactor = Redactor::new(state.config.load().secrets().chain(&trace_secrets));
        if let Some(index) = users_index {
            state.keys = Some(index);
        }
        let state = Arc::new(state);
        let servers = state.config.load().servers.len();
        let servers = llmsrouter::plural(servers, "server", "servers");
        tracing::info!("llmsrouter listening on http://{local} ({servers} configured)");
        let served = server::run(
            listener,
            state,
            server::signalled(counted.clone(), 1),
            server::signalled(counted, 2),
            server::SHUTDOWN_GRACE,
        )
        .await;
        if let Some(task) = users_task {
            task.shutdown().await;
        }
        // Requests cut at the end of the grace period hand over their records now; then the
        // ledger, the log and the traces are flushed.
        if !recorder.wait_idle(RECORDS_WAIT).await {
            tracing::warn!("some requests were still under way at exit; their records are lost");
        }
        if let Some(task) = recorder_task {
            task.shutdown().await;
        }
        // Beside the sinks' own summaries: what never reached them.
        tracing::info!(
            records_dropped = recorder.dropped(),
            record_bodies_dropped = recorder.bodies_dropped(),
            "recorder finished"
        );
        served.context("server error")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The database refused the ledger, said under the name of what gave its path (`--db` or
/// `LLMSROUTER_DB`), by `serve` and, as `serve` would, by `check`.
fn ledger_db_error(cli: &Cli, error: DbError) -> anyhow::Error {
    let error = LedgerError::Db(error);
    match error {
        // Names both itself.
        LedgerError::Db(DbError::InMemory) => anyhow!(error),
        _ => anyhow!("{}: {error}", cli.db_named()),
    }
}

/// `llmsrouter healthcheck`: GET /health on the address `serve` listens on.
fn run_healthcheck(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let mut addr = SocketAddr::new(args.host, args.port);
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/health");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Redirects are not followed: the router answers `/health` itself, so a redirect is
        // another program's (and one to a dead port read as "no answer" from this one).
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        let response = client.get(&url).send().await.map_err(|e| {
            anyhow!(
                "{url}: no answer ({})",
                llmsrouter::proxy::describe_reqwest_error(&e)
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(anyhow!("{url}: answered HTTP {}", status.as_u16()));
        }
        let body = health_body(response).await;
        let ok = serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("ok"));
        if !ok {
            return Err(anyhow!(
                "{url}: answered HTTP {}, but not with {{\"status\":\"ok\"}} (is another program listening there?); {}",
                status.as_u16(),
                body_start(&body)
            ));
        }
        print_out(format_args!("ok\n"))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The first bytes of a `/health` answer: the router's is 15 bytes, and another program's
/// may be any size.
async fn health_body(mut response: reqwest::Response) -> Vec<u8> {
    const ENOUGH: usize = 4096;
    let mut body = Vec::new();
    while body.len() < ENOUGH {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// How an unexpected `/health` body begins, for the message: a short prefix, with control
/// characters escaped (it is another program's text, bound for a terminal).
fn body_start(body: &[u8]) -> String {
    const SHOWN: usize = 60;
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return "the body is empty".to_owned();
    }
    let start: String = text.chars().take(SHOWN).collect();
    let more = if text.chars().nth(SHOWN).is_some() {
        "…"
    } else {
        ""
    };
    format!("the body begins: {}{more}", llmsrouter::printable(&start))
}

/// What `serve` and `check` say before why the users table cannot be read.
const USERS_NEED_THE_DB: &str = "ENABLE_ACCOUNT_MANAGEMENT=true needs the users database";

/// Loads every user into the in-memory key index and starts the task that follows changes
/// made with `llmsrouter user ...` while the server runs.
fn start_users(db: &Path) -> anyhow::Result<(Arc<users::UserIndex>, users::RefreshTask)> {
    let (index, task) = users::index::start(db).context(USERS_NEED_THE_DB)?;
    if index.is_empty() {
        tracing::warn!(
            "account management is on but {} has no users: every /v1 request gets 401 until one is added (llmsrouter user add <username>)",
            db.display()
        );
    } else {
        tracing::info!(
            "account management on: {} users from {}",
            index.len(),
            db.display()
        );
    }
    Ok((index, task))
}

fn tracing_destinations(env: &EnvSettings) -> String {
    use llmsrouter::env::shown_url;
    let mut on = Vec::new();
    if let Some(langfuse) = &env.langfuse {
        on.push(format!("langfuse {}", shown_url(&langfuse.endpoint)));
    }
    if let Some(otlp) = &env.otlp {
        on.push(format!("otlp {}", shown_url(&otlp.endpoint)));
    }
    if on.is_empty() {
        "off".to_owned()
    } else {
        on.join(" + ")
    }
}

fn run_usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    use llmsrouter::sinks::ledger_report::{GroupBy, has_ledger, query};
    llmsrouter::db::check_path(&cli.db)?;
    if !cli.db.exists() {
        return Err(anyhow!(
            "{}: not found (no usage recorded there yet; serve writes the ledger to LLMSROUTER_DB/--db)",
            cli.db.display()
        ));
    }
    let conn = llmsrouter::db::open_to_read_once(&cli.db)?;
    let by = match args.by {
        UsageGroup::Provider => GroupBy::Provider,
        UsageGroup::User => GroupBy::User,
        UsageGroup::Model => GroupBy::Model,
        UsageGroup::Day => GroupBy::Day,
    };
    let report = query(&conn, by, args.since.as_deref())
        .with_context(|| format!("{}: cannot read the usage ledger", cli.db.display()))?;
    // The report is still printed (empty, exit 0: reading worked, nothing is recorded), and
    // the line says why it is empty, so zeros are not taken for "nothing was used".
    if !has_ledger(&conn).unwrap_or(true) {
        console::line(format_args!(
            "warning: {}: no usage_ledger table (dropped, or never made in a file read as it is), so no usage is recorded there; serve makes it again, empty, when it opens the file",
            cli.db.display()
        ));
    }
    if args.json {
        write_out(|out| {
            use std::io::Write as _;
            report.write_json(out)?;
            out.write_all(b"\n")
        })?;
    } else {
        print_out(format_args!("{}", report.to_table()))?;
        let cut = report.names_cut();
        // Only users and models are cut.
        let (one, many, by) = match by {
            GroupBy::Model => ("model name", "model names", "model"),
            _ => ("user's name", "users' names", "user"),
        };
        if cut > 0 {
            // After the table, which a reader of stdout gets whole: as `user list` says it.
            let (what, its) = match cut {
                1 => (format!("1 {one} is"), "its"),
                n => (format!("{n} {many} are"), "their"),
            };
            console::line(format_args!(
                "note: {what} cut in the table: {its} first 80 characters, then … and {its} length in bytes as recorded; llmsrouter usage --by {by} --json prints every name whole"
            ));
        }
        // Two names cut alike were two identical rows.
        let apart = report.names_told_apart();
        if apart > 0 {
            console::line(format_args!(
                "note: {apart} {many} print alike in the table, so each is followed by # and the first hex digits of the SHA-256 of the whole name as recorded; llmsrouter usage --by {by} --json prints every name whole"
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `serve` would refuse at start that `check` can see without starting, each said
/// apart so one run names them all: the listen address (`LLMSROUTER_HOST`,
/// `LLMSROUTER_PORT`; `serve`'s own flags are not `check`'s), the request log's path (a file,
/// device or pipe, not a folder) and folder, and the database's folder and file.
fn serve_variable_problems(cli: &Cli, env: &EnvSettings) -> Vec<anyhow::Error> {
    let mut problems = Vec::new();
    // In the words `serve`, where clap reads these, reports a bad value; but with `check`'s
    // exit status 1, as for every variable it judges (its contract: 0 valid, 1 not).
    if let Err(lines) = llmsrouter::cli::listen_variables() {
        problems.extend(lines.into_iter().map(|line| anyhow!(line)));
    }
    if let Some(log) = &env.log_file {
        if let Err(problem) = check_log_file(log) {
            problems.push(problem);
        }
    }
    match check_db_folder(cli) {
        Ok(()) => problems.extend(db_problems(cli, env)),
        // The file's own checks would only say the same again.
        Err(problem) => problems.push(problem),
    }
    problems
}

/// SQLite makes the database file, not its folder.
fn check_db_folder(cli: &Cli) -> anyhow::Result<()> {
    let db_folder = folder_of(&cli.db);
    if db_folder.is_dir() {
        return Ok(());
    }
    Err(anyhow!(
        "LLMSROUTER_DB/--db: {}: the folder {} does not exist",
        cli.db.display(),
        db_folder.display()
    ))
}

/// `serve` opens the database for the ledger or the users table; with neither it never
/// touches it. In `serve`'s order, with its words: the users table first (read as it is when
/// it must be), then the ledger, which writes; the same fault is said once.
fn db_problems(cli: &Cli, env: &EnvSettings) -> Vec<anyhow::Error> {
    if env.account_management {
        if let Err(error) = llmsrouter::db::inspect(&cli.db, false).context(USERS_NEED_THE_DB) {
            return vec![error];
        }
    }
    if env.ledger {
        if let Err(error) = llmsrouter::db::inspect(&cli.db, true) {
            return vec![ledger_db_error(cli, error)];
        }
    }
    Vec::new()
}

/// The request log makes its folders; the nearest one that exists must take new entries: by
/// its permission bits first, said in words that name the cause (an owner, a read-only mount),
/// then by what `serve` would meet making the folders and the file, said in `serve`'s words
/// (root passes every permission bit, and `/proc` or `/sys` still refuse a new folder).
fn check_log_file(log: &Path) -> anyhow::Result<()> {
    let target = llmsrouter::sinks::request_log::target(log)?;
    if matches!(target, llmsrouter::sinks::log_file::Target::AsIs(_)) {
        // A device or pipe: written to as it is, no folder to make.
        return Ok(());
    }
    let existing = folder_of(log)
        .ancestors()
        .find(|folder| folder.exists())
        .unwrap_or(Path::new("."));
    // Whether this user may write there, not whether anyone may (root reads 0555 as
    // writable, and a folder of another user's as writable for all is not).
    if existing.is_dir() && folder_writable_by_me(existing) {
        return Ok(llmsrouter::sinks::request_log::check_opens(log)?);
    }
    // A folder of another owner's (a bind mount not chowned to the image's user) is said as
    // such: "not a folder" sent users looking for a file in its place.
    let what = if existing.is_dir() && on_read_only_mount(existing) {
        "is on a read-only mount"
    } else if existing.is_dir() {
        "is a folder this user may not write (its owner or permissions)"
    } else {
        "is not a folder the log can be written in"
    };
    Err(anyhow!(
        "LLMSROUTER_LOG_FILE: {}: {} {what}",
        log.display(),
        existing.display()
    ))
}

/// A mistake in how the command was called (a variable set but empty), found after clap
/// parsed: one line on stderr and exit status 2, as clap's own are.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CommandLineError(String);

/// Standard output is a pipe whose reader has gone (`llmsrouter user list | head -1`): the
/// command ends quietly with exit status 0, as ripgrep and most Unix tools do, not with
/// `error: ... Broken pipe` for output nobody wanted. Never for a command that prints a new
/// key: losing that is a failure ([`run_user`]).
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct ClosedPipe;

/// Writes `text` to standard output and flushes it, so a write error is seen here rather than
/// lost at exit (or a panic of `println!`): a closed pipe is [`ClosedPipe`].
fn print_out(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(text)
        .and_then(|()| out.flush())
        .map_err(output_error)
}

/// A failed write to standard output: [`ClosedPipe`] when its reader has gone.
fn output_error(error: std::io::Error) -> anyhow::Error {
    match error.kind() {
        std::io::ErrorKind::BrokenPipe => anyhow!(ClosedPipe),
        _ => anyhow!("cannot write the output: {error}"),
    }
}

/// As [`print_out`], for output written in pieces (through a buffer: one write per piece
/// would be a system call each).
fn write_out(
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(output_error)
}

#[cfg(unix)]
fn folder_writable_by_me(folder: &Path) -> bool {
    rustix::fs::access(folder, rustix::fs::Access::WRITE_OK).is_ok()
}

#[cfg(not(unix))]
fn folder_writable_by_me(folder: &Path) -> bool {
    std::fs::metadata(folder).is_ok_and(|m| !m.permissions().readonly())
}

/// Whether writing under `folder` is refused by its file system being mounted read-only
/// (what `serve` then meets: "Read-only file system"), not by its owner or mode.
#[cfg(unix)]
fn on_read_only_mount(folder: &Path) -> bool {
    rustix::fs::access(folder, rustix::fs::Access::WRITE_OK) == Err(rustix::io::Errno::ROFS)
}

#[cfg(not(unix))]
fn on_read_only_mount(_folder: &Path) -> bool {
    false
}

/// The folder a file is in (`.` for a bare file name).
fn folder_of(file: &Path) -> &Path {
    match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

fn run_check(
    cli: &Cli,
    dotenv_problems: &[DotenvProblem],
    from_environment: &dyn Fn(&str) -> bool,
) -> anyhow::Result<ExitCode> {
    if !dotenv_problems.is_empty() {
        for problem in dotenv_problems {
            console::line(format_args!("error: {}", problem.text));
        }
        // config.yaml is checked all the same, so one run names the mistakes of both files
        // (its `${VAR}`s read the environment as it is, `.env` lines that could be read
        // included); the environment's own checks wait for a `.env` that reads.
        match checked_config(cli, from_environment) {
            Ok(config) => print_config_ok(cli, &config)?,
            Err(problems) => {
                for problem in problems {
                    console::line(format_args!("error: {problem}"));
                }
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    let env = match EnvSettings::from_env() {
        Ok(env) => env,
        Err(mut errors) => {
            let warnings = std::mem::take(&mut errors.warnings);
            // The listen address and config.yaml are judged all the same; the log's and
            // database's checks need the settings (whether accounts and the ledger are on).
            let problems = errors
                .into_vec()
                .into_iter()
                .map(anyhow::Error::from)
                .chain(
                    llmsrouter::cli::listen_variables()
                        .err()
                        .into_iter()
                        .flatten()
                        .map(|line| anyhow!(line)),
                );
            let config = checked_config(cli, from_environment);
            if let Ok(config) = &config {
                print_config_ok(cli, config)?;
            }
            // The other variables' warnings, as when every variable is good: a bad one does
            // not hide them.
            for warning in &warnings {
                console::line(format_args!("warning: {warning}"));
            }
            for problem in problems.chain(config.err().into_iter().flatten()) {
                console::line(format_args!("error: {}", one_line(&problem)));
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // Every problem found is said, config.yaml's too, so one run names them all (a log
    // folder's owner and a database's, as a bind mount not chowned gives both).
    let problems = serve_variable_problems(cli, &env);
    // As `serve` warns at start: the file holds every user key in the clear.
    if env.account_management && problems.is_empty() {
        if let Some(warning) = users::index::others_may_read(&cli.db) {
            console::line(format_args!("warning: {warning}"));
        }
    }
    let config = checked_config(cli, from_environment);
    if let Ok(config) = &config {
        print_config_ok(cli, config)?;
    }
    let problems: Vec<anyhow::Error> = problems
        .into_iter()
        .chain(config.err().into_iter().flatten())
        .collect();
    if !problems.is_empty() {
        // The environment's warnings, as beside a bad variable: another problem (the listen
        // address, the log, the database, config.yaml) does not hide them.
        for warning in &env.warnings {
            console::line(format_args!("warning: {warning}"));
        }
        for problem in &problems {
            console::line(format_args!("error: {}", one_line(problem)));
        }
        return Ok(ExitCode::FAILURE);
    }
    print_out(format_args!(
        "environment: ok (account management {}, request log {}, tracing {})\n",
        if env.account_management { "on" } else { "off" },
        env.log_file
            .as_ref()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
        tracing_destinations(&env)
    ))?;
    // On stderr, as every command's notes and warnings: stdout holds only the result.
    for warning in &env.warnings {
        console::line(format_args!("warning: {warning}"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Says every bad variable but the last on its own `error:` line, and gives the last for
/// `main` to say as it says any error (with the exit status of a bad variable).
fn say_all_but_last(errors: llmsrouter::env::EnvErrors) -> llmsrouter::env::EnvError {
    // Its warnings are the caller's to say: `serve` logged them before the errors.
    let llmsrouter::env::EnvErrors {
        first, mut rest, ..
    } = errors;
    let Some(last) = rest.pop() else {
        return first;
    };
    for error in std::iter::once(first).chain(rest) {
        console::line(format_args!("error: {}", one_line(&anyhow!(error))));
    }
    last
}

/// config.yaml as `serve` would load it, or why `serve` would not start with it: the first
/// problem of each server that has one (see [`ConfigError::lines`]).
fn checked_config(
    cli: &Cli,
    from_environment: &dyn Fn(&str) -> bool,
) -> Result<Config, Vec<anyhow::Error>> {
    match Config::load(&cli.config, &env_var, from_environment) {
        Ok(config) => Ok(config),
        Err(ConfigError::NotFound { file }) => Err(vec![anyhow!(
            "{}: not found (serve would start with no providers; create it from config.yaml.template)",
            file.display()
        )]),
        Err(error) => Err(error
            .lines()
            .into_iter()
            .map(|line| anyhow!(line))
            .collect()),
    }
}

/// `check`'s line for a config.yaml that loads, after its warnings.
fn print_config_ok(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    // On stderr, as every command's notes and warnings: stdout holds only the result.
    for warning in &config.warnings {
        console::line(format_args!("warning: {}: {warning}", cli.config.display()));
    }
    let aliases: Vec<&str> = config.servers.keys().map(String::as_str).collect();
    print_out(format_args!(
        "{}: ok, {} ({})\n",
        cli.config.display(),
        llmsrouter::plural(aliases.len(), "server", "servers"),
        if aliases.is_empty() {
            "none".to_owned()
        } else {
            aliases.join(", ")
        }
    ))
}

/// `llmsrouter models`: the merged list, fetched now, as a table or as /v1/models JSON. Exits
/// non-zero only when nothing could be listed and some server failed: an empty list from
/// servers that answered (or no servers) is an answer, not an error.
fn run_models(
    cli: &Cli,
    args: &ModelsArgs,
    from_environment: &dyn Fn(&str) -> bool,
) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&cli.config, &env_var, from_environment) {
        Ok(config) => config,
        Err(ConfigError::NotFound { file }) => {
            return Err(anyhow!(
                "{}: not found; the model list comes from its servers (create it from config.yaml.template)",
                file.display()
            ));
        }
        Err(error) => return Err(said_but_last(&error)),
    };
    // As `check` says them: the log is off for `models` (its level is `error`).
    for warning in &config.warnings {
        console::line(format_args!("warning: {}: {warning}", cli.config.display()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let snapshot = runtime.block_on(async {
        let client = build_http_client().context("cannot build the HTTP client")?;
        let catalog = ModelCatalog::default();
        let snapshot = catalog.snapshot(&client, Arc::new(config)).await;
        catalog.shutdown().await;
        anyhow::Ok(snapshot)
    })?;
    let mut failed = 0;
    for server in snapshot.servers() {
        if let Some(warning) = &server.filter_kept_none {
            console::line(format_args!(
                "warning: server \"{}\": {warning}",
                server.alias
            ));
        }
        if let ServerStatus::Failed {
            error,
            kept_last_good,
        } = &server.status
        {
            failed += 1;
            let consequence = match snapshot.config().servers.get(&server.alias) {
                _ if *kept_last_good => "showing its last list".to_owned(),
                // A server leading back lists nothing, its `append` entries included.
                Some(config) if *error != models::fetch::FetchError::Loop => {
                    models::catalog::left_out(config, "")
                }
                _ => "its models are left out".to_owned(),
            };
            console::line(format_args!(
                "warning: server \"{}\": {error}; {consequence}",
                server.alias
            ));
        }
    }
    if snapshot.list().is_empty() && failed > 0 {
        return Err(anyhow!(
            "no model could be listed: {failed} of {} servers failed",
            snapshot.servers().len()
        ));
    }
    let body = snapshot.list().body(|_| true);
    if args.json {
        print_out(format_args!("{}\n", String::from_utf8_lossy(&body)))?;
    } else {
        let table = models::table::render(&body).context("the merged list is not JSON")?;
        print_out(format_args!("{table}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether standard output is `/dev/null`: a new key printed there is lost. Rust's runtime
/// gives a process started with it closed (`>&-`) `/dev/null` in its place, so that case is
/// this one too; before, `user add` printed its key to nowhere and saved it.
fn stdout_is_dev_null() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return true;
    };
    let (Ok(out), Ok(null)) = (
        std::fs::File::from(fd).metadata(),
        std::fs::metadata("/dev/null"),
    ) else {
        return false;
    };
    (out.dev(), out.ino(), out.rdev()) == (null.dev(), null.ino(), null.rdev())
}

/// Standard output where a new key would be lost: every write fails, saying so.
struct LosingStdout;

impl std::io::Write for LosingStdout {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(Self::error())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(Self::error())
    }
}

impl LosingStdout {
    fn error() -> std::io::Error {
        std::io::Error::other("standard output is /dev/null or closed, where it would be lost")
    }
}

/// `llmsrouter user ...`: the users store from the command line.
fn run_user(cli: &Cli, command: &UserCommand) -> anyhow::Result<ExitCode> {
    let (known_aliases, warning) = match command {
        UserCommand::Add { .. } | UserCommand::Modify { .. } | UserCommand::Import { .. } => {
            config_aliases(&cli.config, names_providers(command))
        }
        _ => (None, None),
    };
    let stdout = std::io::stdout();
    let mut locked = stdout.lock();
    let mut losing = LosingStdout;
    let prints_a_new_key = matches!(
        command,
        UserCommand::Add { .. } | UserCommand::RotateKey { .. } | UserCommand::Import { .. }
    );
    let out: &mut dyn std::io::Write = if prints_a_new_key && stdout_is_dev_null() {
        &mut losing
    } else {
        &mut locked
    };
    // Notes after a change is made: one that cannot be written must not make it look failed.
    let mut err = console::Stderr;
    let mut cx = users::commands::Context {
        db: &cli.db,
        known_aliases: known_aliases.as_deref(),
        out,
        err: &mut err,
    };
    match users::commands::run(command, &mut cx) {
        Err(users::UserError::Output(error))
            if !prints_a_new_key && error.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Err(anyhow!(ClosedPipe));
        }
        done => done?,
    }
    // Only after success: a command that fails says so in one line.
    if let Some(warning) = warning {
        console::line(format_args!(
            "warning: provider names not checked: {warning}"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// config.yaml's aliases, to warn about permissions naming others. One that cannot be read:
/// no check, and why (for a warning). No config file: no check (the CLI may run where the
/// config is not), said when the command names providers (`names_providers`), since a typo
/// in one then goes unnoticed.
fn config_aliases(
    path: &Path,
    names_providers: bool,
) -> (Option<Vec<String>>, Option<ConfigError>) {
    match Config::aliases(path) {
        Ok(aliases) => (Some(aliases), None),
        Err(error @ ConfigError::NotFound { .. }) => (None, names_providers.then_some(error)),
        Err(error) => (None, Some(error)),
    }
}

/// Whether `command` grants providers by name: `--permissions` other than `*` (an import
/// file may name them in any row, and is checked when config.yaml is there).
fn names_providers(command: &UserCommand) -> bool {
    match command {
        UserCommand::Add { permissions, .. } => permissions.trim() != "*",
        UserCommand::Modify { permissions, .. } => permissions.trim() != "*",
        _ => false,
    }
}
