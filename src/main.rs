//! The `llmsrouter` binary: load `.env`, parse the command line, run the subcommand, own
//! start-up errors (one line on stderr, non-zero exit) and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use llmsrouter::cli::{Cli, Command, ServeArgs, UsageArgs, UsageGroup};
use llmsrouter::config::{Config, ConfigError};
use llmsrouter::env::EnvSettings;
use llmsrouter::record::Recorder;
use llmsrouter::server;
use llmsrouter::state::{AppState, build_http_client};

fn main() -> ExitCode {
    let dotenv = load_dotenv();
    let cli = Cli::parse();
    init_tracing();
    if let Err(message) = &dotenv {
        tracing::warn!("{message}");
    }
    let result = match &cli.command {
        Command::Serve(args) => run_serve(&cli, args),
        Command::Check => run_check(&cli, dotenv.err()),
        Command::Usage(args) => run_usage(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// Reads `./.env` into the environment; real variables win. A missing file is normal.
fn load_dotenv() -> Result<(), String> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(format!(".env: {e}")),
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads config.yaml; a missing file is a warning and an empty config (URL targets still work).
fn load_config(path: &Path) -> anyhow::Result<Config> {
    match Config::load(path, &env_lookup) {
        Ok(config) => Ok(config),
        Err(ConfigError::NotFound { file }) => {
            tracing::warn!(
                "{}: not found; serving URL targets only (?proxy=https://host or \"[https://host]model\")",
                file.display()
            );
            Ok(Config::default())
        }
        Err(error) => Err(anyhow!(error)),
    }
}

fn run_serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let env = EnvSettings::from_env()?;
    for warning in &env.warnings {
        tracing::warn!("{warning}");
    }
    let config = load_config(&cli.config)?;
    if env.account_management {
        return Err(anyhow!(
            "ENABLE_ACCOUNT_MANAGEMENT=true needs the users store, which this build does not have yet"
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = build_http_client().context("cannot build the HTTP client")?;
        let addr = listen_addr(&args.host, args.port)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("no local address")?;
        let sinks = llmsrouter::sinks::start(&env, &config, &cli.db)?;
        let (recorder, recorder_task) = if sinks.is_empty() {
            (Recorder::disabled(), None)
        } else {
            let (recorder, task) = Recorder::start(sinks);
            (recorder, Some(task))
        };
        let state = Arc::new(AppState::new(config, client, recorder));
        let servers = state.config.load().servers.len();
        tracing::info!("llmsrouter listening on http://{local} ({servers} servers configured)");
        let served = server::run(
            listener,
            state,
            server::shutdown_signal(),
            server::SHUTDOWN_GRACE,
        )
        .await;
        // Every record is handed over by now; flush the ledger, the log and the traces.
        if let Some(task) = recorder_task {
            task.shutdown().await;
        }
        served.context("server error")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn tracing_destinations(env: &EnvSettings) -> String {
    let mut on = Vec::new();
    if let Some(langfuse) = &env.langfuse {
        on.push(format!("langfuse {}", langfuse.endpoint));
    }
    if let Some(otlp) = &env.otlp {
        on.push(format!("otlp {}", otlp.endpoint));
    }
    if on.is_empty() {
        "off".to_owned()
    } else {
        on.join(" + ")
    }
}

fn run_usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    use llmsrouter::sinks::ledger_report::{GroupBy, query};
    if let Some(since) = &args.since {
        if llmsrouter::sinks::clock::parse_day(since).is_none() {
            return Err(anyhow!(
                "--since: \"{since}\" is not a date (use YYYY-MM-DD, e.g. 2025-01-31)"
            ));
        }
    }
    if !cli.db.exists() {
        return Err(anyhow!(
            "{}: not found (no usage recorded there yet; serve writes the ledger to LLMSROUTER_DB/--db)",
            cli.db.display()
        ));
    }
    let conn = llmsrouter::db::open(&cli.db)?;
    let by = match args.by {
        UsageGroup::Provider => GroupBy::Provider,
        UsageGroup::User => GroupBy::User,
        UsageGroup::Model => GroupBy::Model,
        UsageGroup::Day => GroupBy::Day,
    };
    let report = query(&conn, by, args.since.as_deref())
        .with_context(|| format!("{}: cannot read the usage ledger", cli.db.display()))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn listen_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .map_err(|_| anyhow!("LLMSROUTER_HOST/--host: \"{host}\" is not an IP address"))?
    };
    Ok(SocketAddr::new(ip, port))
}

fn run_check(cli: &Cli, dotenv_error: Option<String>) -> anyhow::Result<ExitCode> {
    if let Some(message) = dotenv_error {
        return Err(anyhow!(message));
    }
    let env = EnvSettings::from_env()?;
    let config = match Config::load(&cli.config, &env_lookup) {
        Ok(config) => config,
        Err(ConfigError::NotFound { file }) => {
            return Err(anyhow!(
                "{}: not found (serve would start with no providers; create it from config.yaml.template)",
                file.display()
            ));
        }
        Err(error) => return Err(anyhow!(error)),
    };
    let aliases: Vec<&str> = config.servers.keys().map(String::as_str).collect();
    println!(
        "{}: ok, {} servers ({})",
        cli.config.display(),
        aliases.len(),
        if aliases.is_empty() {
            "none".to_owned()
        } else {
            aliases.join(", ")
        }
    );
    println!(
        "environment: ok (account management {}, request log {}, tracing {})",
        if env.account_management { "on" } else { "off" },
        env.log_file
            .as_ref()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
        tracing_destinations(&env)
    );
    for warning in &env.warnings {
        println!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
