//! The command line: clap structs, and the errors of values that came from variables. Every
//! flag has an environment variable; `.env` is loaded before parsing, so it feeds the same
//! variables.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The variable behind every `--json` flag.
const JSON_VAR: &str = "LLMSROUTER_JSON";
/// The variable behind `user add --email`.
const EMAIL_VAR: &str = "LLMSROUTER_USER_EMAIL";
/// The variable behind `user add --permissions` and `user modify --permissions`.
const PERMISSIONS_VAR: &str = "LLMSROUTER_USER_PERMISSIONS";

/// `--json`'s value from [`JSON_VAR`] (the flag alone is `true`): the booleans every other
/// variable takes, so `LLMSROUTER_JSON=maybe` is refused with the accepted words.
fn flag_value(value: &str) -> Result<bool, String> {
    crate::env::parse_bool(value).ok_or_else(|| {
        format!("\"{value}\" is not a boolean ({JSON_VAR} takes true/false, 1/0 or yes/no)")
    })
}

/// Each flag that takes a value, and the variable that gives it when the flag is absent.
pub(crate) const FLAG_VARIABLES: &[(&str, &str)] = &[
    ("--config", "LLMSROUTER_CONFIG"),
    ("--db", "LLMSROUTER_DB"),
    ("--host", "LLMSROUTER_HOST"),
    ("--port", "LLMSROUTER_PORT"),
    ("--by", "LLMSROUTER_USAGE_BY"),
    ("--since", "LLMSROUTER_USAGE_SINCE"),
    ("--email", EMAIL_VAR),
    ("--permissions", PERMISSIONS_VAR),
    ("--json", JSON_VAR),
    ("--key", KEY_VAR),
    ("--rowid", "LLMSROUTER_USER_ROWID"),
];

/// The variable behind `--key` of `user show/modify/delete/rotate-key`.
const KEY_VAR: &str = "LLMSROUTER_USER_KEY";

impl Cli {
    /// Parses the process's command line. A mistake is one line on stderr, exit status 2
    /// (`check`'s 1 for a bad or empty variable: judging the environment is its job; help and
    /// version print as clap prints them). A bad value that came from a variable
    /// (the flag not on the line) is reported under the variable's name: clap's own message
    /// names only the flag, which the user never typed.
    pub fn parse_or_exit() -> Self {
        let args: Vec<OsString> = std::env::args_os().collect();
        match Self::try_parse() {
            Ok(cli) => {
                if let Some((line, from_variable)) = cli.empty_path(&args) {
                    crate::console::line(format_args!("error: {line}"));
                    // `check` judges the environment: a bad variable is its 1 (0 valid,
                    // 1 not), as for a bad config.yaml; an empty flag is a command-line
                    // mistake there too.
                    let judged = from_variable && matches!(cli.command, Command::Check);
                    std::process::exit(if judged { 1 } else { 2 });
                }
                if let Some(line) = cli.bad_user_variable(&args, &|name| std::env::var_os(name)) {
                    crate::console::line(format_args!("error: {line}"));
                    std::process::exit(2);
                }
                cli
            }
            Err(error) => match error_line(&error, &args, &|name| std::env::var_os(name)) {
                Some(line) => {
                    crate::console::line(format_args!("error: {line}"));
                    std::process::exit(2);
                }
                None => error.exit(),
            },
        }
    }
}

/// `error` as one line (no `error: ` prefix), or `None` for help and version output. A
/// router key in it (one pasted where a command or a value goes, which clap quotes) is
/// `[redacted]`.
pub fn error_line(
    error: &clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<String> {
    let line = unredacted_error_line(error, args, env)?;
    let redacted = crate::sinks::redact::Redactor::default().redact(&line, &[]);
    Some(redacted.into_owned())
}

fn unredacted_error_line(
    error: &clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    // clap's first paragraph (`error: invalid value ... [possible values: ...]`), one line.
    let rendered = error.to_string();
    let message = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    if let Some(from) = conflict_from_a_variable(error, args, env) {
        return Some(from);
    }
    if let Some(from) = not_utf8_variable(error, args, env) {
        return Some(from);
    }
    if let Some(hint) = dash_name_hint(error, args).or_else(|| dash_value_hint(error, args)) {
        return Some(format!("{message} ({hint})"));
    }
    Some(match from_a_variable(error, args, env) {
        Some(from) if from.value.to_string_lossy().trim().is_empty() => {
            set_but_empty(from.variable, from.flag)
        }
        Some(from) => format!(
            "{}: {}",
            from.variable,
            message.replace(&format!("'{}'", from.arg), from.flag)
        ),
        None => match clap_tips(&rendered) {
            Some(tips) => format!("{message} ({tips}; see --help)"),
            None => format!("{message} (see --help)"),
        },
    })
}

/// clap's "a similar ... exists" tips (`a similar argument exists: '--json'`; `some similar
/// subcommands exist: 'usage', 'user'` for `usge`), which follow
/// its first paragraph, joined with `; `: the one-line error keeps the suggestion clap's own
/// output gives, so `usage --jsn` still says what was meant. Its other tip, "to pass '-b' as
/// a value, use '-- -b'", is left out: it names only the first letter of `-bob`.
fn clap_tips(rendered: &str) -> Option<String> {
    let tips: Vec<&str> = rendered
        .lines()
        .filter_map(|line| line.trim().strip_prefix("tip: "))
        .filter(|tip| tip.starts_with("a similar ") || tip.starts_with("some similar "))
        .collect();
    (!tips.is_empty()).then(|| tips.join("; "))
}

impl Cli {
    /// The error line for an empty `--config` or `--db`, which clap lets through (see
    /// [`path_value`]): under the variable's name when the flag is not on the line, as for
    /// every other flag; and whether the variable gave it.
    pub fn empty_path(&self, args: &[OsString]) -> Option<(String, bool)> {
        let paths = [
            (&self.config, "--config", "LLMSROUTER_CONFIG"),
            (&self.db, "--db", "LLMSROUTER_DB"),
        ];
        let (_, flag, variable) = paths
            .into_iter()
            .find(|(path, _, _)| path.as_os_str().is_empty())?;
        Some(if on_the_line(args, flag) {
            (
                format!("a value is required for {flag} but none was supplied (see --help)"),
                false,
            )
        } else {
            (set_but_empty(variable, flag), true)
        })
    }
}

impl Cli {
    /// The error line for a `user add`/`modify` value that came from its variable and is
    /// blank or not valid: the command would fail on it (or, for an empty email, quietly
    /// take none), naming `--permissions` or "bad email", which the user never typed. Said
    /// under the variable's name, as every other variable's bad value is; exit status 2.
    pub fn bad_user_variable(
        &self,
        args: &[OsString],
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Option<String> {
        let Command::User(command) = &self.command else {
            return None;
        };
        let (email, permissions) = match command {
            UserCommand::Add {
                email, permissions, ..
            } => (email.as_deref(), permissions),
            UserCommand::Modify { permissions, .. } => (None, permissions),
            _ => return None,
        };
        let from_variable =
            |flag: &str, variable: &str| !on_the_line(args, flag) && env(variable).is_some();
        if from_variable("--permissions", PERMISSIONS_VAR) {
            if permissions.trim().is_empty() {
                return Some(set_but_empty(PERMISSIONS_VAR, "--permissions"));
            }
            if let Err(e) = crate::users::permissions::parse_spec(permissions) {
                return Some(format!("{PERMISSIONS_VAR}: {e}"));
            }
        }
        let email = email.filter(|_| from_variable("--email", EMAIL_VAR))?;
        if email.trim().is_empty() {
            return Some(set_but_empty(EMAIL_VAR, "--email"));
        }
        crate::users::names::check_email(email)
            .err()
            .map(|reason| format!("{EMAIL_VAR}: not an email address: {reason}"))
    }
}

/// `--config` and `--db` taken as given, empty too. clap reads a global flag's variable at
/// the top level, before the flag given after the subcommand replaces it; its own check of
/// an empty path there broke `LLMSROUTER_CONFIG= llmsrouter serve --config x.yaml`, naming
/// neither the variable nor the cause. Emptiness is checked once the flag had its say
/// ([`Cli::empty_path`]).
fn path_value() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// `--key`: kept as a [`crate::secret::Secret`], so no `Debug` of the command line shows it.
/// An empty (or blank) key is refused here, never looked up: from `LLMSROUTER_USER_KEY=` it
/// is reported as a variable set but empty ([`error_line`]), as every variable is. Only a
/// blank value can be refused, so clap's message never quotes a key.
fn secret_value() -> impl clap::builder::TypedValueParser<Value = crate::secret::Secret> {
    use clap::builder::TypedValueParser as _;
    clap::builder::StringValueParser::new().try_map(|value| {
        if value.trim().is_empty() {
            Err("a key cannot be empty")
        } else {
            Ok(crate::secret::Secret::new(value))
        }
    })
}

impl Cli {
    /// The name an error about the database's path gives its origin, as a bad value is
    /// named: `LLMSROUTER_DB` when the variable gave it, `--db` when the flag (or its
    /// default) did.
    pub fn db_named(&self) -> &'static str {
        let args: Vec<OsString> = std::env::args_os().collect();
        given_by("--db", &args, &|name| std::env::var_os(name))
    }
}

/// `flag`'s variable when the value came from it (set, and the flag not on the line),
/// else `flag`.
pub fn given_by(
    flag: &'static str,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> &'static str {
    FLAG_VARIABLES
        .iter()
        .find(|(f, variable)| *f == flag && !on_the_line(args, f) && env(variable).is_some())
        .map_or(flag, |&(_, variable)| variable)
}

/// The flag on the command line that gives `variable`'s setting, if any: a `.env` line for
/// the variable then sets nothing the command reads.
pub fn flag_on_the_line_for(variable: &str, args: &[OsString]) -> Option<&'static str> {
    FLAG_VARIABLES
        .iter()
        .find(|(flag, v)| *v == variable && on_the_line(args, flag))
        .map(|&(flag, _)| flag)
}

/// Whether `flag` is on the command line (`--db x` or `--db=x`).
fn on_the_line(args: &[OsString], flag: &str) -> bool {
    args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
    })
}

/// The `user` subcommands that name a user as `user list` prints it: a name of the Python
/// version's may begin with `-` there (`add` refuses such a name).
const NAMING_A_USER: [&str; 4] = ["delete", "modify", "show", "rotate-key"];

/// How to name a user whose name begins with `-` (the Python version allowed `-bob`, and
/// `user list` prints it so), when clap took that name for flags: `user delete -bob` said
/// only "unexpected argument '-b' found", and `--` was documented nowhere. `Some` only when
/// the unexpected argument stands where such a command's name goes: the name not yet given,
/// no `--` before it. The command line is walked as clap walks it (subcommands, flags and
/// the values they take), so `--db -x.db` is a value and `user delete bob -x` a mistyped
/// flag, not a name.
fn dash_name_hint(error: &clap::Error, args: &[OsString]) -> Option<String> {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // A flag of the command mistyped (`--keyy`), not a name.
    if error.get(ContextKind::SuggestedArg).is_some() {
        return None;
    }
    let mut root = Cli::command();
    root.build();
    let mut at = &root;
    let mut path: Vec<&str> = Vec::new();
    let mut positionals = 0;
    let mut tokens = args.iter().skip(1).map(|a| a.to_string_lossy());
    let unexpected = loop {
        let token = tokens.next()?;
        if token == "--" {
            return None;
        }
        let flag = if let Some(long) = token.strip_prefix("--") {
            let name = long.split_once('=').map_or(long, |(name, _)| name);
            at.get_arguments()
                .find(|a| a.get_long() == Some(name))
                .map(|a| (a, !long.contains('=')))
        } else if let Some(shorts) = token.strip_prefix('-').filter(|s| !s.is_empty()) {
            let first = shorts.chars().next();
            at.get_arguments()
                .find(|a| a.get_short() == first)
                .map(|a| (a, shorts.chars().count() == 1))
        } else {
            if let Some(sub) = at.find_subcommand(token.as_ref()) {
                at = sub;
                path.push(sub.get_name());
                positionals = 0;
            } else {
                positionals += 1;
            }
            continue;
        };
        match flag {
            // A flag's value is the next token, whatever it looks like.
            Some((arg, value_follows)) => {
                if value_follows && arg.get_action().takes_values() {
                    tokens.next();
                }
            }
            None => break token,
        }
    };
    let [user, command] = path[..] else {
        return None;
    };
    // `--kye=<key>` is a mistyped flag (clap's own tip names `--key`), not a name, and
    // quoting it would print its value.
    if user != "user"
        || !NAMING_A_USER.contains(&command)
        || positionals > 0
        || unexpected.starts_with("--")
        || !unexpected.starts_with(invalid.as_str())
    {
        return None;
    }
    Some(format!(
        "a user name that begins with \"-\" goes last, after --: llmsrouter user {command} -- {}",
        shell_word(&crate::printable(&unexpected))
    ))
}

/// How to give a flag a value that begins with `-` (an alias may: `-lead`), when clap took
/// the value for flags: `--permissions -lead` said only "unexpected argument '-l' found".
/// `Some` when the unexpected argument is the word right after a long flag, written without
/// `=`, that takes a value. The value is not repeated: it may be a key.
fn dash_value_hint(error: &clap::Error, args: &[OsString]) -> Option<String> {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let words: Vec<std::borrow::Cow<'_, str>> =
        args.iter().skip(1).map(|a| a.to_string_lossy()).collect();
    let at = words
        .iter()
        .position(|w| *w != "--" && w.starts_with(invalid.as_str()))?;
    let flag = words.get(at.checked_sub(1)?)?.strip_prefix("--")?;
    let mut root = Cli::command();
    root.build();
    let takes_a_value = |command: &clap::Command| {
        command
            .get_arguments()
            .any(|a| a.get_long() == Some(flag) && a.get_action().takes_values())
    };
    let known = takes_a_value(&root)
        || root
            .get_subcommands()
            .any(|sub| takes_a_value(sub) || sub.get_subcommands().any(&takes_a_value));
    known.then(|| format!("a value that begins with \"-\" is written --{flag}=<value>"))
}

/// `word` as a shell reads it back: as is when it holds only characters the shell leaves
/// alone, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = |c: char| {
        c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+' | '/' | ':' | ',' | '=')
    };
    if word.chars().all(plain) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A value the flag did not give, so its variable did.
struct FromVariable<'e> {
    flag: &'static str,
    /// clap's name for the argument: `--port <N>`.
    arg: &'e str,
    variable: &'static str,
    value: OsString,
}

fn from_a_variable<'e>(
    error: &'e clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<FromVariable<'e>> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let ContextValue::String(arg) = error.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let named = arg.split([' ', '=']).next()?;
    let &(flag, variable) = FLAG_VARIABLES.iter().find(|(f, _)| *f == named)?;
    if on_the_line(args, flag) {
        return None;
    }
    Some(FromVariable {
        flag,
        arg,
        variable,
        value: env(variable)?,
    })
}

/// clap's "invalid UTF-8 was detected in one or more arguments" where the bytes came from a
/// variable (the flag not on the line): said under the variable's name, which clap's words
/// leave out. The value is not shown.
fn not_utf8_variable(
    error: &clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<String> {
    if error.kind() != clap::error::ErrorKind::InvalidUtf8 {
        return None;
    }
    let &(flag, variable) = FLAG_VARIABLES.iter().find(|(flag, variable)| {
        !on_the_line(args, flag) && env(variable).is_some_and(|v| v.to_str().is_none())
    })?;
    Some(not_utf8(variable, flag))
}

/// A conflict (`user show ann` with `LLMSROUTER_USER_KEY` set) where one side came from a
/// variable: clap's words would name a flag never typed.
fn conflict_from_a_variable(
    error: &clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::ArgumentConflict {
        return None;
    }
    let sides = [ContextKind::InvalidArg, ContextKind::PriorArg];
    let (flag, variable) = sides.iter().find_map(|kind| {
        let name = match error.get(*kind)? {
            ContextValue::String(arg) => arg.split([' ', '=']).next()?.to_owned(),
            ContextValue::Strings(args) => args.first()?.split([' ', '=']).next()?.to_owned(),
            _ => return None,
        };
        FLAG_VARIABLES
            .iter()
            .find(|(flag, variable)| {
                *flag == name && !on_the_line(args, flag) && env(variable).is_some()
            })
            .copied()
    })?;
    Some(format!(
        "{variable} is set (it stands for {flag}), which cannot be combined with this command line: unset it, or leave out what conflicts with {flag}"
    ))
}

/// `--host`: an IP address (`[::1]` too, as a URL writes it) or `localhost` (127.0.0.1),
/// in any case, as host names are. Parsed by clap, so a bad or empty host is a command-line
/// mistake (exit status 2, named by its variable when `LLMSROUTER_HOST` gave it), as a bad
/// port is.
pub fn listen_host(value: &str) -> Result<std::net::IpAddr, String> {
    let host = value
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(value);
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    host.parse().map_err(|_| {
        "not an IP address (give one such as 0.0.0.0, 127.0.0.1 or ::, or localhost)".to_owned()
    })
}

/// The listen address `serve` takes from `LLMSROUTER_HOST` and `LLMSROUTER_PORT` alone (no
/// flags: they are not `check`'s), or the error line `serve` prints for them: the same clap
/// parse, so `check` refuses exactly what `serve` refuses, in the same words (a port with a
/// space around it, `" 42125"`, passed `check` and stopped `serve`).
/// When both are bad, both lines are given (clap stops at the first): each is parsed again
/// with the other's variable ignored.
pub fn listen_variables() -> Result<ServeArgs, Vec<String>> {
    parse_listen_variables(None).map_err(|first| {
        let each: Vec<String> = ["port", "host"]
            .into_iter()
            .filter_map(|ignored| parse_listen_variables(Some(ignored)).err())
            .collect();
        if each.is_empty() { vec![first] } else { each }
    })
}

/// `ignored`: the flag whose variable is not read (its default stands).
fn parse_listen_variables(ignored: Option<&'static str>) -> Result<ServeArgs, String> {
    use clap::FromArgMatches as _;
    let args = [OsString::from("llmsrouter")];
    let mut command = ServeArgs::augment_args(clap::Command::new("serve"));
    if let Some(flag) = ignored {
        command = command.mut_arg(flag, |arg| arg.env(None::<&str>));
    }
    command
        .try_get_matches_from(&args)
        .and_then(|matches| ServeArgs::from_arg_matches(&matches))
        .map_err(|error| {
            error_line(&error, &args, &|name| std::env::var_os(name))
                .unwrap_or_else(|| error.to_string())
        })
}

/// The error line of a variable that is set but empty, `flag` being the flag it stands for:
/// the same words for every variable, whichever command reads it.
pub fn set_but_empty(variable: &str, flag: &str) -> String {
    format!("{variable} is set but empty: unset it, or give it a value (it stands for {flag})")
}

/// The error line of a variable whose value is not UTF-8 (never shown: it may be a key).
pub fn not_utf8(variable: &str, flag: &str) -> String {
    format!(
        "{variable} is not UTF-8 text (saved in another encoding?): fix its value, or unset it (it stands for {flag})"
    )
}

/// `--since`: a real calendar day, `YYYY-MM-DD`.
fn day(value: &str) -> Result<String, String> {
    crate::sinks::clock::parse_day(value)
        .map(|_| value.to_owned())
        .ok_or_else(|| "not a date (use YYYY-MM-DD, e.g. 2025-01-31)".to_owned())
}

#[derive(Debug, Parser)]
#[command(
    name = "llmsrouter",
    version,
    about = "One OpenAI-compatible base URL in front of many LLM providers",
    long_about = "One OpenAI-compatible base URL in front of many LLM providers.\n\n\
Point Cline, Roo Code, the openai SDKs or any OpenAI-compatible tool at \
http://<host>:8000/v1 once, and pick the provider per request with the model name \
([openrouter]google/gemini-2.5) or a ?proxy= URL. Answers stream through untouched, and \
every prompt, answer and token count is recorded (Langfuse over OTLP, the request log, the \
usage ledger in --db).\n\n\
A .env file in the working directory is read first; real environment variables win over \
it. --config and --db are accepted anywhere on the command line. Run \
`llmsrouter <COMMAND> --help` for each command's details.\n\n\
Examples:\n  \
llmsrouter serve\n  \
llmsrouter check --config /etc/llmsrouter/config.yaml\n  \
llmsrouter models\n  \
llmsrouter user add ann --email ann@example.com\n  \
llmsrouter usage --by day --since 2025-01-01"
)]
pub struct Cli {
    /// Provider config file.
    #[arg(
        long,
        global = true,
        env = "LLMSROUTER_CONFIG",
        default_value = "./config.yaml",
        value_name = "PATH",
        value_parser = path_value()
    )]
    pub config: PathBuf,

    /// SQLite database: users and the usage ledger.
    #[arg(
        long,
        global = true,
        env = "LLMSROUTER_DB",
        default_value = "./users.db",
        value_name = "PATH",
        value_parser = path_value()
    )]
    pub db: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router (the OpenAI-compatible server).
    #[command(
        long_about = "Run the router: listen on --host and --port (default 0.0.0.0:8000) \
and forward every POST /v1/<path> whose JSON body has a \"model\" (chat/completions, \
completions, embeddings, responses, ...), or whose multipart/form-data form has a \"model\" \
field (audio/transcriptions, images/edits, ...), to the provider that the model name \
([alias]model) or ?proxy= picks (one naming no model, such as batches, and every other GET \
or DELETE /v1/<path>, such as files/<id>/content: ?proxy= or settings.default_server). \
GET /v1/models lists every provider's models (with ?proxy=, that server's own list); \
GET /health answers {\"status\":\"ok\"}.\n\n\
Starts without a config file too: then only URL targets (?proxy=https://host or \
\"[https://host]model\") work. SIGTERM or Ctrl-C lets running requests finish (30 s at \
most), flushes the records and exits 0.\n\n\
Settings without a flag come from the environment (or .env):\n  \
ENABLE_ACCOUNT_MANAGEMENT=true  require a user key (see llmsrouter user)\n  \
LLMSROUTER_LOG_FILE             request log (default ./api_proxy.log; \"\" = off)\n  \
LLMSROUTER_LOG_BODIES=false     leave bodies out of the request log\n  \
LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST\n                                  \
tracing to Langfuse (both keys set: on)\n  \
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS\n                                  \
the same traces to any OTLP/HTTP backend\n  \
RUST_LOG                        console log filter (default info)\n\n\
Examples:\n  \
llmsrouter serve\n  \
llmsrouter serve --port 9000 --config /etc/llmsrouter/config.yaml\n  \
ENABLE_ACCOUNT_MANAGEMENT=true llmsrouter serve --db /srv/llmsrouter/users.db"
    )]
    Serve(ServeArgs),

    /// Validate config.yaml and the environment (.env); exit 0 when valid, 1 when not.
    #[command(
        long_about = "Validate config.yaml and the environment (.env); exit 0 when valid, 1 \
when not.\n\n\
Loads --config exactly as serve does: an unknown key, a wrong type, an alias with brackets, \
a url that is not http(s), an unset ${VAR} or a default_server that is not an alias is \
reported on one line naming the file, the key path and the problem. Then checks .env and \
the settings that have no flag (ENABLE_ACCOUNT_MANAGEMENT, LLMSROUTER_LOG_*, LANGFUSE_*, \
OTEL_*, ...). Unlike serve, it also fails when the config file does not exist. When all is \
well it prints the servers found and what the environment turns on.\n\n\
Examples:\n  \
llmsrouter check\n  \
llmsrouter check --config /etc/llmsrouter/config.yaml"
    )]
    Check,

    /// Print the merged model list, as GET /v1/models gives it (no server needs to run).
    #[command(
        long_about = "Print the merged model list, as GET /v1/models gives it.\n\n\
Asks every server of config.yaml (--config; .env feeds its ${VAR} keys) for its models \
right now (no router needs to run), applies filter, override and append, and prints a \
table, or with --json the exact /v1/models JSON. Every provider is shown (no user \
narrowing). A server that fails is named on stderr and left out. Exit code 1 when the \
config cannot be loaded (a missing file too), or when no model could be listed because \
servers failed; no servers at all is an empty list and 0.\n\n\
Examples:\n  \
llmsrouter models\n  \
llmsrouter models --json | jq -r '.data[].id'\n  \
llmsrouter models --json --config prod.yaml > models.json"
    )]
    Models(ModelsArgs),

    /// Probe a running router's GET /health; exit 0 when it answers ok (for container health checks).
    #[command(
        long_about = "Probe a running router's GET /health; exit 0 when it answers \
{\"status\":\"ok\"} (and print ok), 1 otherwise.\n\n\
Meant for container health checks, where curl may be missing (the Docker image's \
HEALTHCHECK runs it). It asks the address serve listens on (LLMSROUTER_HOST / \
LLMSROUTER_PORT, or --host / --port; a wildcard host such as 0.0.0.0 is asked on \
loopback) and gives up after 5 s.\n\n\
Examples:\n  \
llmsrouter healthcheck\n  \
llmsrouter healthcheck --port 9000\n  \
docker exec llmsrouter llmsrouter healthcheck",
        mut_arg("host", |arg| arg
            .help("Address of the router to probe: an IP address (0.0.0.0 or :: is asked on loopback) or localhost")),
        mut_arg("port", |arg| arg.help("Port of the router to probe"))
    )]
    Healthcheck(ServeArgs),

    /// Manage user accounts and their keys (the users table of --db).
    #[command(
        subcommand,
        long_about = "Manage user accounts and their keys: the users table of the SQLite \
database (--db / LLMSROUTER_DB, default ./users.db), the Python version's table unchanged.\n\n\
Accounts matter when serve runs with ENABLE_ACCOUNT_MANAGEMENT=true: then every route but \
/health needs a user key (Authorization: Bearer <key> or x-api-key: <key>), and a user may \
use only the providers they are granted. Once a command here has returned, the very next \
request to a running server sees its change, without a restart. New keys are printed once, on stdout; list and show mask \
them. Exit status: 0 done, 1 refused or failed (one line on stderr), 2 bad command line.\n\n\
Examples:\n  \
llmsrouter user add ann --email ann@example.com\n  \
llmsrouter user list\n  \
llmsrouter user modify ann --permissions \"openrouter,deepseek\"\n  \
llmsrouter user rotate-key ann\n  \
llmsrouter user list --json --db /srv/llmsrouter/users.db"
    )]
    User(UserCommand),

    /// Token usage from the ledger (requests, input, output, cached, reasoning, cost, errors).
    #[command(
        long_about = "Token usage from the usage ledger in the database (--db): requests, \
input, output, cached and reasoning tokens, cost (as upstreams reported it) and errors, \
grouped by provider (the default), user, model or day (UTC).\n\n\
serve writes one ledger row per request (unless LLMSROUTER_LEDGER=false). The database \
must exist: this command never creates one. --since is inclusive, in UTC.\n\n\
Examples:\n  \
llmsrouter usage\n  \
llmsrouter usage --by day --since 2025-01-01\n  \
llmsrouter usage --by model --json\n  \
llmsrouter usage --by user --db /app/data/users.db"
    )]
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print the JSON of GET /v1/models instead of a table.
    #[arg(long, env = JSON_VAR, value_parser = flag_value)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// What to group by.
    #[arg(
        long,
        value_enum,
        env = "LLMSROUTER_USAGE_BY",
        default_value_t = UsageGroup::Provider
    )]
    pub by: UsageGroup,

    /// Only requests on or after this day (UTC).
    #[arg(
        long,
        env = "LLMSROUTER_USAGE_SINCE",
        value_name = "YYYY-MM-DD",
        value_parser = day
    )]
    pub since: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long, env = JSON_VAR, value_parser = flag_value)]
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
    /// Address to listen on: an IP address (0.0.0.0 or :: for all interfaces) or localhost.
    #[arg(
        long,
        env = "LLMSROUTER_HOST",
        default_value = "0.0.0.0",
        value_name = "ADDR",
        value_parser = listen_host
    )]
    pub host: std::net::IpAddr,

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
        long_about = "Create a user and print its new key on stdout (the key alone, so \
KEY=$(...) works). The key is shown only here; store it now (`llmsrouter user rotate-key` \
makes a new one).\n\n\
--permissions defaults to \"*\" (every provider); an alias not in config.yaml is accepted \
with a warning. The database file is created if it does not exist. An existing username is \
an error, and that user's key stays as it was.\n\n\
Examples:\n  \
llmsrouter user add ann --email ann@example.com\n  \
llmsrouter user add ci-bot --permissions \"openrouter,deepseek\"\n  \
KEY=$(llmsrouter user add bob)"
    )]
    Add {
        /// Letters, digits and . _ - @ + ; at most 64 characters.
        username: String,
        /// The user's email address (optional; "" means none).
        #[arg(long, env = EMAIL_VAR, value_name = "EMAIL")]
        email: Option<String>,
        /// Provider aliases the user may use, comma-separated, or "*" for all.
        #[arg(
            long,
            env = PERMISSIONS_VAR,
            value_name = "\"a,b\" | \"*\"",
            default_value = "*"
        )]
        permissions: String,
    },
    /// Delete a user; running servers refuse its key from the very next request.
    #[command(
        long_about = "Delete a user. A running server refuses its key from the very next \
request, without a restart. An unknown user is an error (exit 1).\n\n\
The user is named as `user list` prints it, or found by its key with --key (the way to \
revoke a leaked key whoever holds it; --key - reads the key from stdin, out of the shell \
history). A name the Python version's database holds as NULL, as a BLOB or as text that \
is not UTF-8 prints, and is accepted, as <null>, <blob:HEX> or with \\xNN for each byte \
that is not UTF-8 (quote it for the shell). A name that begins with - goes last, after \
--: llmsrouter user delete -- -bob. \
When several users print alike, nothing is done and the error lists them with their \
rowids: add --rowid N to pick one. The same holds for show, modify and rotate-key.\n\n\
A key other users hold too (a users table rebuilt without the UNIQUE on api_key) keeps \
working for them once this user is deleted: a warning (exit status 0) names them and the \
command that revokes it for each (see `user rotate-key --help`).\n\n\
Examples:\n  \
llmsrouter user delete bob\n  \
llmsrouter user delete bob --db /srv/llmsrouter/users.db\n  \
llmsrouter user delete '<null>'\n  \
llmsrouter user delete --key - < leaked-key.txt"
    )]
    Delete {
        #[command(flatten)]
        who: WhichUser,
    },
    /// Create users from a CSV (username,email[,permissions]) or JSON array file.
    #[command(
        long_about = "Create users from a file and print each new key on stdout as \
`username<TAB>key`.\n\nCSV: a header `username,email[,permissions]`, then one user per line \
(quote permissions with commas: \"a,b\"). JSON: an array of objects with the same keys \
(permissions as \"a,b\", [\"a\",\"b\"] or {\"a\": true}); the output of `user list --json` \
imports as is (the users get new keys). A missing permissions value or an empty string \
means \"*\"; an empty JSON list or {} means no provider. \
Usernames that exist are skipped with a warning (their keys stay). If any row is bad, the \
rows are named and nothing is imported. The database file is created if it does not \
exist.\n\n\
Examples:\n  \
llmsrouter user import team.csv > keys.tsv\n  \
llmsrouter user list --json --db old.db > users.json && llmsrouter user import users.json"
    )]
    Import {
        /// The file: .csv or .json (other names are recognised by their content).
        file: std::path::PathBuf,
    },
    /// List users (keys masked).
    #[command(
        long_about = "List users as a table: username, email, permissions, key (masked: \
10 characters at most, e.g. sk-lr-AbCd…) and creation time. --json prints them for scripts \
(key_prefix instead of the key, with created_at and updated_at in full); that JSON imports \
into another database with `llmsrouter user import` (the users get new keys).\n\n\
Examples:\n  \
llmsrouter user list\n  \
llmsrouter user list --json --db /srv/llmsrouter/users.db\n  \
llmsrouter user list --json | jq -r '.[].username'"
    )]
    List {
        /// JSON for scripts instead of a table.
        #[arg(long, env = JSON_VAR, value_parser = flag_value)]
        json: bool,
    },
    /// Change which providers a user may use.
    #[command(
        long_about = "Change which providers a user may use: --permissions \"a,b\" (aliases \
from config.yaml) or \"*\" (every provider). The new permissions replace the old ones; the \
key stays the same. A running server applies them from the very next request. An alias not in \
config.yaml is accepted with a warning.\n\n\
Examples:\n  \
llmsrouter user modify ci-bot --permissions \"openrouter,deepseek\"\n  \
llmsrouter user modify ann --permissions \"*\"\n  \
llmsrouter user modify 'bob\\xff' --permissions \"openrouter\""
    )]
    Modify {
        #[command(flatten)]
        who: WhichUser,
        /// Provider aliases the user may use, comma-separated, or "*" for all.
        #[arg(long, env = PERMISSIONS_VAR, value_name = "\"a,b\" | \"*\"")]
        permissions: String,
    },
    /// Show one user (key masked).
    #[command(
        long_about = "Show one user: username, email, permissions, key (masked), created_at \
and updated_at. --json prints the object `llmsrouter user list --json` prints for that \
user. The user is named as `user list` prints it (see `user delete --help`), or found by \
its key with --key.\n\n\
Examples:\n  \
llmsrouter user show ann\n  \
llmsrouter user show ann --json\n  \
llmsrouter user show --key - <<< \"$KEY\""
    )]
    Show {
        #[command(flatten)]
        who: WhichUser,
        /// JSON for scripts instead of text.
        #[arg(long, env = JSON_VAR, value_parser = flag_value)]
        json: bool,
    },
    /// Give a user a new key and print it; the old key stops working.
    #[command(
        long_about = "Give a user a new key and print it on stdout (the key alone; it is \
shown only now). A running server refuses the old key from the very next request; \
username, email and permissions stay. This is the way to replace a lost or leaked key. The \
user is named as `user list` prints it (see `user delete --help`), or found by its (leaked) \
key with --key.\n\n\
A key other users hold too (possible once a tool rebuilt the users table without the UNIQUE \
on api_key) keeps working for them: the user named gets its new key all the same, and a \
warning (exit status 0) names the others, as whom the old key now signs in, and the command \
that revokes it for each: llmsrouter user rotate-key --rowid N <name>. Once one user alone \
holds it, rotate-key (or --key) revokes it for good.\n\n\
Examples:\n  \
llmsrouter user rotate-key ann\n  \
KEY=$(llmsrouter user rotate-key ann)\n  \
llmsrouter user rotate-key '<blob:ff00>'"
    )]
    RotateKey {
        #[command(flatten)]
        who: WhichUser,
    },
}

/// The user a command acts on: by name, or by key (`--key`). A name is the one `user list`
/// prints, `<null>`, `<blob:ff00>` and `bob\xff` too for the Python version's odd names.
#[derive(Debug, Args)]
pub struct WhichUser {
    #[command(flatten)]
    pub by: NameOrKey,

    /// Which of several users that print alike is meant (the refusal lists their rowids).
    #[arg(
        long,
        env = "LLMSROUTER_USER_ROWID",
        value_name = "N",
        conflicts_with = "key"
    )]
    pub rowid: Option<i64>,
}

/// A user's name or key: one of them, not both.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NameOrKey {
    /// The user's name, as `llmsrouter user list` shows it.
    pub username: Option<String>,

    /// The user's key instead of the name ("-": read it from stdin); never printed.
    #[arg(
        long,
        env = KEY_VAR,
        value_name = "KEY",
        hide_env_values = true,
        value_parser = secret_value()
    )]
    pub key: Option<crate::secret::Secret>,
}
