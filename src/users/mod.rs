//! User accounts (ENABLE_ACCOUNT_MANAGEMENT): the SQLite users table, key generation, import
//! files, the `llmsrouter user ...` commands, and the in-memory key index the request path
//! authenticates against.
//!
//! The request path only ever sees [`index::UserIndex`] (through [`crate::auth::KeyIndex`]),
//! whose only SQLite work there is asking whether the database changed (and, when the users
//! did, reloading them, or when another file was put at the database's path, opening it);
//! all other SQLite work runs in the CLI or on the index's refresh task.
//! No key is
//! ever logged, put in an error, or printed, except the new key that `add`, `rotate-key`
//! and `import` print once on stdout.

pub mod commands;
pub mod import;
pub mod index;
pub mod key;
pub mod names;
pub mod permissions;
pub mod store;

use crate::db::DbError;
use names::quoted;

pub use index::{RefreshTask, UserIndex};
pub use store::{NewUser, OpenMode, User, UserStore, Who};

/// Why a user command failed. `Display` is the one line the CLI prints; names are quoted as
/// `user list` prints them ([`names::quoted`]: escaped and clipped, so a control character
/// or a 1 MB name cannot garble the terminal, and the name can be copied back), and a name
/// given on the command line that looks like a key is masked ([`names::given`]).
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
    #[error(
        "{0}: no such database file (create users with `llmsrouter user add`, or point --db / LLMSROUTER_DB at the right file)"
    )]
    NoDatabase(String),
    #[error("user {} does not exist", quoted(.0))]
    UnknownUser(String),
    /// A name that names no user and looks like a key; holds the masked form only.
    #[error(
        "no user is named {} (that looks like a key: to find a user by its key, use --key)",
        quoted(.0)
    )]
    KeyLikeName(String),
    /// A name that names no user is some user's key (pasted where the name goes): the
    /// message must not echo it.
    #[error("that is a user's key, not a name: use --key (`--key -` reads it from stdin)")]
    KeyAsName,
    /// A new user's name (of `add`, or of the import row at `position`) is some user's
    /// key: `user list` and every request record of the new user would print that key
    /// whole. The message must not echo it.
    #[error("that is a user's key, not a name: no user may be named with another user's key")]
    NameIsAKey { position: Option<usize> },
    /// `--key -` read nothing but an empty line (or none): it is not a key to look up.
    #[error("--key -: no key was read from stdin (it is empty, or its first line is)")]
    NoKeyRead,
    /// `--key` matched no user. The key itself is never part of a message.
    #[error("no user has the given key")]
    UnknownKey,
    /// `--rowid` named none of the users that answer to the name, or whose names look
    /// like it.
    #[error("no user {} has rowid {rowid}{}", quoted(.name), rowid_hint(.name, *.only, .alike))]
    NoSuchRowid {
        name: String,
        rowid: i64,
        /// The rowid of the one user that answers to the name, when only one does and
        /// none looks like it.
        only: Option<i64>,
        /// When some users' names look like the name: every user that answers to it or
        /// looks like it, `rowid N: "name"`; empty otherwise.
        alike: String,
    },
    /// No user answers to the name, and some have names that look like it on a screen
    /// (white space around it, another Unicode normalisation, invisible characters).
    #[error(
        "user {} does not exist; {} like it ({users}); no user was changed: add --rowid <N> to pick one, or give the name exactly as shown here (in single quotes for the shell), or give --key <KEY> instead of the name",
        quoted(.name),
        if *.count == 1 { "1 user's name looks".to_owned() } else { format!("{count} users' names look") }
    )]
    LookAlikes {
        name: String,
        count: usize,
        /// rowid, name, masked key and creation time of each.
        users: String,
    },
    /// Several users answer to a name (users of the Python version's database that print
    /// alike): none is picked.
    #[error("{what} names {count} users ({users}); no user was changed: {hint}")]
    Ambiguous {
        what: String,
        count: usize,
        users: String,
        /// How to name one of them.
        hint: &'static str,
    },
    #[error("user {} already exists; its key is unchanged", quoted(.0))]
    DuplicateUser(String),
    /// `name` as [`names::given`] leaves it (a key-like name masked).
    #[error("bad username {}: {reason}", quoted(.name))]
    BadUsername { name: String, reason: String },
    #[error("bad email {}: {reason}", quoted(.email))]
    BadEmail { email: String, reason: String },
    #[error("bad --permissions: {0}")]
    Permissions(permissions::PermissionsError),
    #[error(transparent)]
    Random(#[from] key::RandomError),
    #[error("{file}: {reason}; nothing imported")]
    Import { file: String, reason: String },
    #[error("cannot read the key from stdin: {0}")]
    KeyInput(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// A new key could not be written out; the change that made it was not committed. "No
    /// user", not "nothing": opening the file may have made a dropped `usage_ledger` again
    /// (said on its own warning line), and that stays.
    #[error("cannot write the new key: {0}; no user was changed")]
    Undelivered(std::io::Error),
    /// The change could not be committed (a full disk) after its new key was printed: the
    /// message must say the printed key is void, or a script that captured it
    /// (`KEY=$(llmsrouter user add bob)`) keeps a key that never works.
    #[error("database: {error}; {printed} printed above was not saved and does not work; {kept}")]
    Unsaved {
        error: rusqlite::Error,
        /// "the key", "the new key", "each key".
        printed: &'static str,
        /// What still holds: "no user was changed", "the old key still works".
        kept: &'static str,
    },
}

/// Where to find the rowid `--rowid` should have given: the one user that answers to the
/// name has it, or the error without `--rowid` lists them all; when some names look like
/// the name, every candidate, look-alikes included.
fn rowid_hint(name: &str, only: Option<i64>, alike: &str) -> String {
    if !alike.is_empty() {
        return format!(", nor a user whose name looks like it ({alike})");
    }
    match only {
        Some(rowid) => format!(" (the only user {} has rowid {rowid})", quoted(name)),
        None => " (the error without --rowid lists them)".to_owned(),
    }
}

// Written out rather than `#[from]`, which would also make the inner error the `source`,
// and the CLI (which prints the whole chain) would then print its message twice.
impl From<rusqlite::Error> for UserError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<permissions::PermissionsError> for UserError {
    fn from(e: permissions::PermissionsError) -> Self {
        Self::Permissions(e)
    }
}

impl From<std::io::Error> for UserError {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}
