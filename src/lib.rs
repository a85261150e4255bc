//! llmsrouter: one OpenAI-compatible base URL in front of many LLM providers.
//!
//! Data flows one way: request → auth ([`auth`]) → routing ([`routing`]) → proxy ([`proxy`])
//! → stream tee ([`proxy::stream`]) → client; the tee hands one finished
//! [`record::RequestRecord`] to the sinks through [`record::Recorder`], off the request path.
// Standard error only through `console`, whose writes cannot panic.
#![warn(clippy::print_stderr, clippy::print_stdout)]

pub mod app;
pub mod auth;
pub mod caught;
pub mod cli;
pub mod config;
pub mod console;
pub mod content_coding;
pub mod db;
pub mod dotenv;
pub mod env;
pub mod error;
pub mod hard_stop;
pub mod http1;
pub mod json_object;
pub mod lanes;
pub mod models;
#[cfg(unix)]
pub mod open_files;
pub mod proxy;
pub mod record;
pub mod routing;
pub mod secret;
pub mod server;
pub mod sinks;
pub mod state;
pub mod upstream;
pub mod usage;
pub mod users;

pub use app::build_app;

/// A cell for the terminal (the `user list` and `usage` tables, and names in messages):
/// control characters (escape sequences, newlines) and invisible formatting characters
/// (bidi overrides, zero-width characters) from an older database are shown escaped
/// (`\u{1b}`, `\u{202e}`), never sent to the terminal, so a name cannot forge a row, clear
/// the screen, or show `evil\u{202e}gnp.exe` as `evilexe.png`.
pub fn printable(text: &str) -> String {
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A character [`printable`] escapes: a control character, or one that changes how the text
/// around it shows while showing nothing itself (the soft hyphen, zero-width spaces and
/// joiners, direction marks, line and paragraph separators, embeddings, overrides and
/// isolates, word joiners, the byte-order mark).
pub(crate) fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `1 server`, `2 servers`: a count with its noun, for messages people read.
pub fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}
