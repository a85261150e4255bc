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

    /// Manage user accounts and their keys (the users table of --db).
    #[command(subcommand)]
    User(UserCommand),

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
pub struct ModelsArgs {
    /// Print the JSON of GET /v1/models instead of a table.
    #[arg(long)]
    pub json: bool,
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

/// `llmsrouter user ...`: accounts in the SQLite database (`--db`). Exit status: 0 done,
/// 1 refused or failed (one line on stderr), 2 bad command line.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its new key (stdout, once).
    #[command(
        long_about = "Create a user and print its new key on stdout. The key is shown \
only here; store it now (`llmsrouter user rotate-key` makes a new one).\n\nExamples:\n  \
llmsrouter user add ann --email ann@example.com\n  llmsrouter user add ci-bot --permissions \
\"openrouter,deepseek\"\n  KEY=$(llmsrouter user add ann)"
    )]
    Add {
        /// Letters, digits and . _ - @ + ; at most 64 characters.
        username: String,
        /// The user's email address (optional; "" means none).
        #[arg(long, value_name = "EMAIL")]
        email: Option<String>,
        /// Provider aliases the user may use, comma-separated, or "*" for all.
        #[arg(long, value_name = "\"a,b\" | \"*\"", default_value = "*")]
        permissions: String,
    },
    /// Delete a user; its key stops working on running servers within a second.
    Delete { username: String },
    /// Create users from a CSV (username,email[,permissions]) or JSON array file.
    #[command(
        long_about = "Create users from a file and print each new key on stdout as \
`username<TAB>key`.\n\nCSV: a header `username,email[,permissions]`, then one user per line \
(quote permissions with commas: \"a,b\"). JSON: an array of objects with the same keys \
(permissions as \"a,b\", [\"a\",\"b\"] or {\"a\": true}); the output of `user list --json` \
imports as is. Usernames that exist are skipped with a warning. If any row is bad, the rows \
are named and nothing is imported.\n\nExample:\n  llmsrouter user import team.csv > keys.tsv"
    )]
    Import {
        /// The file: .csv or .json (other names are recognised by their content).
        file: std::path::PathBuf,
    },
    /// List users (keys masked).
    List {
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change which providers a user may use.
    Modify {
        username: String,
        /// Provider aliases the user may use, comma-separated, or "*" for all.
        #[arg(long, value_name = "\"a,b\" | \"*\"")]
        permissions: String,
    },
    /// Show one user (key masked).
    Show {
        username: String,
        /// JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a user a new key and print it; the old key stops working.
    RotateKey { username: String },
}
