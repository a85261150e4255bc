//! User accounts (ENABLE_ACCOUNT_MANAGEMENT): the SQLite users table, key generation, import
//! files, the `llmsrouter user ...` commands, and the in-memory key index the request path
//! authenticates against.
//!
//! The request path only ever sees [`index::UserIndex`] (through [`crate::auth::KeyIndex`]),
//! whose only SQLite work there is asking whether the database changed (and, when the users
//! did, reloading them); all other SQLite work runs in the CLI or on the index's refresh task.
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

pub use index::{RefreshTask, UserIndex};
pub use store::{NewUser, OpenMode, User, UserStore, Who};

/// Why a user command failed. `Display` is the one line the CLI prints; names from the user
/// are quoted with escapes and clipped, so a control character or a 1 MB name cannot garble
/// the terminal.
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
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    /// `--key` matched no user. The key itself is never part of a message.
    #[error("no user has the given key")]
    UnknownKey,
    /// `--rowid` named none of the users that answer to the name.
    #[error("no user {name:?} has rowid {rowid} (the error without --rowid lists them)")]
    NoSuchRowid { name: String, rowid: i64 },
    /// Several users answer to a name (users of the Python version's database that print
    /// alike): none is picked.
    #[error("{what} names {count} users ({users}); nothing was changed: {hint}")]
    Ambiguous {
        what: String,
        count: usize,
        users: String,
        /// How to name one of them.
        hint: &'static str,
    },
    #[error("user {0:?} already exists; its key is unchanged")]
    DuplicateUser(String),
    #[error("bad username {name:?}: {reason}")]
    BadUsername { name: String, reason: String },
    #[error("bad email {email:?}: {reason}")]
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
    /// A new key could not be written out; the change that made it was not committed.
    #[error("cannot write the new key: {0}; nothing was changed")]
    Undelivered(std::io::Error),
    /// The change could not be committed (a full disk) after its new key was printed: the
    /// message must say the printed key is void, or a script that captured it
    /// (`KEY=$(llmsrouter user add bob)`) keeps a key that never works.
    #[error("database: {error}; {printed} printed above was not saved and does not work; {kept}")]
    Unsaved {
        error: rusqlite::Error,
        /// "the key", "the new key", "each key".
        printed: &'static str,
        /// What still holds: "nothing was changed", "the old key still works".
        kept: &'static str,
    },
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
