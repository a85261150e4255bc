//! The command line: clap structs only. Every flag has an environment variable; `.env` is
//! loaded before parsing, so it feeds the same variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

    /// Print the merged model list, as GET /v1/models gives it (no server needs to run).
    #[command(
        long_about = "Print the merged model list, as GET /v1/models gives it.\n\nAsks every \
server of config.yaml for its models right now (no server needs to run), applies filter, \
override and append, and prints a table, or with --json the exact /v1/models JSON. A server \
that fails is named on stderr and left out; the exit code is 1 only when no model could be \
listed because servers failed.\n\nExamples:\n  llmsrouter models\n  \
llmsrouter models --json | jq -r '.data[].id'"
    )]
    Models(ModelsArgs),

    /// Probe a running router's GET /health; exit 0 when it answers ok (for container health checks).
    #[command(
        long_about = "Probe a running router's GET /health; exit 0 when it answers {\"status\":\"ok\"}, 1 otherwise.\n\nMeant for container health checks, where curl may be missing. It asks the address serve listens on (LLMSROUTER_HOST / LLMSROUTER_PORT; a wildcard host is asked on loopback).\n\nExamples:\n  llmsrouter healthcheck\n  llmsrouter healthcheck --port 9000"
    )]
    Healthcheck(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print the JSON of GET /v1/models instead of a table.
    #[arg(long)]
    pub json: bool,
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
