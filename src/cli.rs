//! The command line: clap structs only. Every flag has an environment variable; `.env` is
//! loaded before parsing, so it feeds the same variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "llmsrouter",
    version,
    about = "One OpenAI-compatible base URL in front of many LLM providers",
    long_about = "One OpenAI-compatible base URL in front of many LLM providers.\n\n\
Pick the provider per request with the model name ([openrouter]google/gemini-2.5) or a \
?proxy= URL; answers stream through untouched, and every prompt, answer and token count is \
recorded.\n\nA .env file in the working directory is read first; real environment variables \
win over it."
)]
pub struct Cli {
    /// Provider config file.
    #[arg(
        long,
        global = true,
        env = "LLMSROUTER_CONFIG",
        default_value = "./config.yaml",
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// SQLite database: users and the usage ledger.
    #[arg(
        long,
        global = true,
        env = "LLMSROUTER_DB",
        default_value = "./users.db",
        value_name = "PATH"
    )]
    pub db: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router.
    #[command(
        long_about = "Run the router.\n\nStarts without a config file too: then only URL \
targets (?proxy=https://host or \"[https://host]model\") work.\n\nExamples:\n  \
llmsrouter serve\n  llmsrouter serve --port 9000 --config /etc/llmsrouter/config.yaml"
    )]
    Serve(ServeArgs),

    /// Validate config.yaml and the environment (.env); exit 0 when valid, 1 when not.
    Check,

    /// Token usage from the ledger (requests, input, output, cached, reasoning, cost, errors).
    #[command(
        long_about = "Token usage from the usage ledger in the database (--db): requests, \
input, output, cached and reasoning tokens, cost (as upstreams reported it) and errors, \
grouped by provider, user, model or day (UTC).\n\nExamples:\n  llmsrouter usage\n  \
llmsrouter usage --by day --since 2025-01-01\n  llmsrouter usage --by model --json"
    )]
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// What to group by.
    #[arg(long, value_enum, default_value_t = UsageGroup::Provider)]
    pub by: UsageGroup,

    /// Only requests on or after this day (UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub since: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsageGroup {
    Provider,
    User,
    Model,
    Day,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "LLMSROUTER_HOST",
        default_value = "0.0.0.0",
        value_name = "ADDR"
    )]
    pub host: String,

    /// Port to listen on (0 picks a free one).
    #[arg(
        long,
        env = "LLMSROUTER_PORT",
        default_value_t = 8000,
        value_name = "N"
    )]
    pub port: u16,
}
