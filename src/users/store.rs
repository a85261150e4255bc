//! The users table: every read and write of accounts, on the Python version's schema.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions, so a writer waits (the busy timeout) for
//! another writer instead of failing with "database is locked", and a check-then-write (does
//! this user exist?) cannot race another process. Timestamps are written as the Python
//! version wrote them: local time, ISO 8601 with microseconds (`2024-05-01T12:34:56.789012`).
//! Keys leave this module only as [`Secret`]s, and only from `add`, `rotate_key` and `import`.
//!
//! A command that acts on an existing user first finds its row ([`Who`]: by name as `user
//! list` prints it, or by key) and then acts on that row by its rowid, so a name that is NULL,
//! a BLOB or not UTF-8 (the Python version's table does not enforce the type) is addressed
//! exactly, and two users that print alike are refused rather than confused.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, TransactionBehavior, params};

use super::UserError;
use super::key::{KeyHash, generate_key, hash_key, looks_like_key, masked, pasted_key};
use super::names::{self, StoredName, check_email, check_username};
use super::permissions::{from_json, to_json};
use crate::auth::Permissions;
use crate::secret::Secret;

/// One account as stored.
#[derive(Debug, Clone)]
pub struct User {
    /// SQLite's id of the row: what a command acts on once a name or key picked the user.
    pub rowid: i64,
    /// The name as printed ([`StoredName::shown`]): the stored name itself when it is UTF-8
    /// text, as every name `user add` makes is.
    pub username: String,
    /// The name as stored.
    pub stored_name: StoredName,
    /// The key as text, for `list`'s masked prefix; a BLOB or text that is not UTF-8 is read
    /// lossily here, a number as its digits, and signs in nobody ([`Self::key_signs_in`]).
    pub key: Secret,
    /// Whether the stored key signs anyone in: stored as UTF-8 text, not empty (see
    /// [`key_readable`]).
    pub key_signs_in: bool,
    pub email: Option<String>,
    /// `Err` with the reason when the stored column cannot be read; such a user may use no
    /// provider.
    pub permissions: Result<Permissions, String>,
    pub created_at: String,
    pub updated_at: String,
}

impl User {
    /// The name for a message, as `user list` prints it ([`names::quoted`]).
    pub fn quoted_name(&self) -> String {
        names::quoted(&self.username)
    }
}

/// A user whose key a command took away (`rotate-key`, `delete`), as it was, and the other
/// users that hold the very same key (possible once a tool rebuilt the table without the
/// `UNIQUE` on `api_key`), by rowid: for them the key still works, and it now signs in as
/// the first of them, so a command must not say the key stopped working.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub user: User,
    pub still_held_by: Vec<User>,
}

/// Which existing user a command means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// A name as `user list` (or `user list --json`) prints it, or as stored; `rowid` picks
    /// one of several users that print alike (the refusal lists them).
    Name { name: &'a str, rowid: Option<i64> },
    /// The user's key, matched as the server matches it (by its SHA-256). Never printed.
    Key(&'a str),
}

impl<'a> From<&'a str> for Who<'a> {
    fn from(name: &'a str) -> Self {
        Self::Name { name, rowid: None }
    }
}

impl<'a> From<&'a String> for Who<'a> {
    fn from(name: &'a String) -> Self {
        Self::from(name.as_str())
    }
}

/// An account to create; its key is made by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub permissions: Permissions,
}

impl NewUser {
    /// Checks the username and email of an account about to be created.
    pub fn validate(&self) -> Result<(), UserError> {
        check_username(&self.username).map_err(|reason| UserError::BadUsername {
            name: names::given(&self.username),
            reason,
        })?;
        if let Some(email) = &self.email {
            check_email(email).map_err(|reason| UserError::BadEmail {
                email: email.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// What an import did: the accounts made (with their keys, to hand out) and the positions
/// (in the input) of the usernames that existed already and were left alone.
#[derive(Debug, Default)]
pub struct ImportOutcome {
    pub created: Vec<(String, Secret)>,
    pub skipped: Vec<usize>,
}

/// Whether opening may create the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `add` and `import`: a new file is made (readable by its owner only).
    Create,
    /// Every other command: a missing file is an error, so a mistyped `--db` does not
    /// quietly answer from (and leave behind) an empty database.
    Existing,
    /// `list` and `show`: as `Existing`, and a file the router may only read, or that
    /// another program keeps from the switch to WAL, is read as it is (see
    /// [`crate::db::open_to_read_once`]).
    Read,
}

pub struct UserStore {
    conn: Connection,
}

impl UserStore {
    /// Opens the users table of the database at `path`; what opening repaired (a usage ledger
    /// made again) is logged.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Self, UserError> {
        Self::open_noting(path, mode, &mut |note| tracing::warn!("{note}"))
    }

    /// [`Self::open`] for a command, which says what opening repaired as its own warnings:
    /// each is handed to `note` (see [`crate::db::open_noting`]).
    pub fn open_noting(
        path: &Path,
        mode: OpenMode,
        note: &mut dyn FnMut(String),
    ) -> Result<Self, UserError> {
        crate::db::check_path(path)?;
        let existed = path.exists();
        if !existed && mode != OpenMode::Create {
            return Err(UserError::NoDatabase(path.display().to_string()));
        }
        let conn = match mode {
            OpenMode::Read => crate::db::open_to_read_once(path)?,
            OpenMode::Create | OpenMode::Existing => crate::db::open_noting(path, note)?,
        };
        Ok(Self { conn })
    }

    /// Creates `user` with a new key and returns the key. A username that exists is an error
    /// and its row (and key) is left as it was.
    pub fn add(&mut self, user: &NewUser) -> Result<Secret, UserError> {
        self.add_delivering(user, |_| Ok(()))
    }

    /// [`Self::add`], handing the key to `deliver` (which shows it) before the change is
    /// committed: a key that cannot be shown is never stored, so a command that says it
    /// failed has changed nothing and no account is left with a key nobody saw.
    pub fn add_delivering(
        &mut self,
        user: &NewUser,
        deliver: impl FnOnce(&Secret) -> std::io::Result<()>,
    ) -> Result<Secret, UserError> {
        user.validate()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Before the name is looked up: a name that is a key is never echoed, not even as
        // an existing user's.
        if stored_keys(&tx)?.contains(&hash_key(&user.username)) {
            return Err(UserError::NameIsAKey { position: None });
        }
        if exists(&tx, &user.username)? {
            return Err(UserError::DuplicateUser(user.username.clone()));
        }
        let key = insert(&tx, user)?;
        deliver(&key).map_err(UserError::Undelivered)?;
        tx.commit()
            .map_err(|error| unsaved(error, "the key", "no user was changed"))?;
        Ok(key)
    }

    /// For each of `names` (new users' names, once added), the users whose names look like
    /// it on a screen without answering to it ([`StoredName::looks_like`]: `carol ` for
    /// `carol`, a decomposed `José` for the NFC one): rowid and name as messages quote it, by
    /// rowid. The table is read once, however many names are asked about, so an import of
    /// many rows into a large table stays one pass.
    pub fn look_alikes(&self, names: &[&str]) -> Result<Vec<Vec<(i64, String)>>, UserError> {
        let mut statement = self
            .conn
            .prepare("SELECT rowid, username FROM users ORDER BY rowid")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, StoredName::from_sql(row.get_ref(1)?)))
        })?;
        let wanted: HashSet<String> = names.iter().map(|name| names::looks(name)).collect();
        let mut by_look: HashMap<String, Vec<(i64, StoredName)>> = HashMap::new();
        for row in rows {
            let (rowid, stored) = row?;
            let look = names::looks(&stored.shown());
            if wanted.contains(&look) {
                by_look.entry(look).or_default().push((rowid, stored));
            }
        }
        Ok(names
            .iter()
            .map(|name| {
                by_look
                    .get(&names::looks(name))
                    .into_iter()
                    .flatten()
                    .filter(|(_, stored)| !stored.answers_to(name))
                    .map(|(rowid, stored)| (*rowid, names::quoted(&stored.shown())))
                    .collect()
            })
            .collect())
    }

    /// Deletes the user `who` means; returns it as it was, with the other users that hold
    /// its key (and still sign in with it).
    pub fn delete<'a>(&mut self, who: impl Into<Who<'a>>) -> Result<Revoked, UserError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = find(&tx, who.into())?;
        let still_held_by = others_holding_key(&tx, &user)?;
        tx.execute("DELETE FROM users WHERE rowid = ?1", [user.rowid])?;
        tx.commit()?;
        Ok(Revoked {
            user,
            still_held_by,
        })
    }

    pub fn get<'a>(&self, who: impl Into<Who<'a>>) -> Result<User, UserError> {
        find(&self.conn, who.into())
    }

    /// Every account, by username.
    pub fn list(&self) -> Result<Vec<User>, UserError> {
        let mut statement = self.conn.prepare(
            "SELECT rowid, username, api_key, email, permissions, created_at, updated_at
             FROM users ORDER BY username, rowid",
        )?;
        let users = statement
            .query_map([], user_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(users)
    }

    /// Replaces the permissions of the user `who` means; returns it as it was.
    pub fn set_permissions<'a>(
        &mut self,
        who: impl Into<Who<'a>>,
        permissions: &Permissions,
    ) -> Result<User, UserError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = find(&tx, who.into())?;
        let now = now_iso(&tx)?;
        tx.execute(
            "UPDATE users SET permissions = ?1, updated_at = ?2 WHERE rowid = ?3",
            params![to_json(permissions), now, user.rowid],
        )?;
        tx.commit()?;
        Ok(user)
    }

    /// Gives the user `who` means a new key and returns it. The old key no longer matches
    /// that user's row; other rows that hold the same key keep it (see [`Revoked`]).
    pub fn rotate_key<'a>(&mut self, who: impl Into<Who<'a>>) -> Result<Secret, UserError> {
        self.rotate_key_delivering(who, |_| Ok(()))
            .map(|(_, key)| key)
    }

    /// [`Self::rotate_key`], handing the new key to `deliver` before the change is
    /// committed: when it cannot be shown, the old key keeps working (see
    /// [`Self::add_delivering`]). Returns the user as it was with the other users that
    /// still hold the old key, and the new key.
    pub fn rotate_key_delivering<'a>(
        &mut self,
        who: impl Into<Who<'a>>,
        deliver: impl FnOnce(&Secret) -> std::io::Result<()>,
    ) -> Result<(Revoked, Secret), UserError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = find(&tx, who.into())?;
        let still_held_by = others_holding_key(&tx, &user)?;
        let now = now_iso(&tx)?;
        let key = with_fresh_key(|key| {
            tx.execute(
                "UPDATE users SET api_key = ?1, updated_at = ?2 WHERE rowid = ?3",
                params![key.expose(), now, user.rowid],
            )
        })?;
        deliver(&key).map_err(UserError::Undelivered)?;
        tx.commit()
            .map_err(|error| unsaved(error, "the new key", "the old key still works"))?;
        Ok((
            Revoked {
                user,
                still_held_by,
            },
            key,
        ))
    }

    /// Creates every user of `users` that does not exist yet, all in one transaction: either
    /// all of them are written or, on an error, none.
    pub fn import(&mut self, users: &[NewUser]) -> Result<ImportOutcome, UserError> {
        self.import_delivering(users, |_| Ok(()))
    }

    /// [`Self::import`], handing the new keys to `deliver` before the change is committed:
    /// when they cannot be shown, no user is created (see [`Self::add_delivering`]).
    pub fn import_delivering(
        &mut self,
        users: &[NewUser],
        deliver: impl FnOnce(&ImportOutcome) -> std::io::Result<()>,
    ) -> Result<ImportOutcome, UserError> {
        for user in users {
            user.validate()?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let keys = stored_keys(&tx)?;
        if let Some(position) = users
            .iter()
            .position(|user| keys.contains(&hash_key(&user.username)))
        {
            return Err(UserError::NameIsAKey {
                position: Some(position),
            });
        }
        let mut outcome = ImportOutcome::default();
        for (position, user) in users.iter().enumerate() {
            if exists(&tx, &user.username)? {
                outcome.skipped.push(position);
                continue;
            }
            let key = insert(&tx, user)?;
            outcome.created.push((user.username.clone(), key));
        }
        deliver(&outcome).map_err(UserError::Undelivered)?;
        match tx.commit() {
            Ok(()) => Ok(outcome),
            // No key was printed: the plain error says it all.
            Err(error) if outcome.created.is_empty() => Err(error.into()),
            Err(error) => Err(unsaved(error, "each key", "no user was imported")),
        }
    }
}

/// A commit that failed after the new key(s) were printed (see [`UserError::Unsaved`]).
fn unsaved(error: rusqlite::Error, printed: &'static str, kept: &'static str) -> UserError {
    UserError::Unsaved {
        error,
        printed,
        kept,
    }
}

/// The one user `who` means. Every row is read and compared here rather than in SQL: a
/// name matches by what it prints as too ([`StoredName::answers_to`]), and a key by its
/// hash, as the server's index matches it. More than one match is refused, listing them.
fn find(conn: &Connection, who: Who<'_>) -> Result<User, UserError> {
    let mut statement = conn.prepare_cached(
        "SELECT rowid, username, api_key, email, permissions, created_at, updated_at
         FROM users ORDER BY rowid",
    )?;
    let users = statement.query_map([], user_from_row)?;
    let mut found = Vec::new();
    match who {
        Who::Name { name, rowid } => {
            // The users that answer to the name (rowid and name as messages quote it), those
            // whose names only look like it, and whether the name is some other user's key
            // (pasted where the name goes).
            let mut named = Vec::new();
            let mut alike = Vec::new();
            let mut is_a_key = false;
            // White space and quotes around a key are not part of it (nor a `,` after it).
            let as_key = hash_key(pasted_key(name));
            for user in users {
                let user = user?;
                if user.stored_name.answers_to(name) {
                    named.push((user.rowid, user.quoted_name()));
                    if rowid.is_none_or(|id| id == user.rowid) {
                        found.push(user);
                    }
                } else {
                    is_a_key |= holds_key(&user, &as_key);
                    if user.stored_name.looks_like(name) {
                        alike.push(user);
                    }
                }
            }
            if found.is_empty() {
                not_found(name, rowid, &named, alike, is_a_key).map(|user| found.push(user))?;
            }
        }
        Who::Key(key) => {
            let presented = hash_key(key);
            for user in users {
                let user = user?;
                if holds_key(&user, &presented) {
                    found.push(user);
                }
            }
            if found.is_empty() {
                return Err(UserError::UnknownKey);
            }
        }
    }
    if found.len() > 1 {
        return Err(ambiguous(who, &found));
    }
    found.pop().ok_or(UserError::UnknownKey)
}

/// No user answers to `name` (with `rowid`, when given). A look-alike's rowid picks it: the
/// name given looks like its name (`carol` for `carol `, an NFC `José` for a decomposed one),
/// so the rowid cannot be a stale one that reaches another user. Otherwise the refusal names
/// the look-alikes, with their rowids, so the one meant can be named; a name that is some
/// user's key, or looks like a key, is never echoed.
fn not_found(
    name: &str,
    rowid: Option<i64>,
    named: &[(i64, String)],
    mut alike: Vec<User>,
    is_a_key: bool,
) -> Result<User, UserError> {
    if named.is_empty() && is_a_key {
        return Err(UserError::KeyAsName);
    }
    if named.is_empty() && (alike.is_empty() || looks_like_key(name)) {
        return Err(unknown(name));
    }
    let Some(rowid) = rowid else {
        return Err(UserError::LookAlikes {
            name: name.to_owned(),
            count: alike.len(),
            users: listed(&alike),
        });
    };
    if let Some(at) = alike.iter().position(|u| u.rowid == rowid) {
        return Ok(alike.swap_remove(at));
    }
    let only = match named {
        [(one, _)] if alike.is_empty() => Some(*one),
        _ => None,
    };
    let candidates = named
        .iter()
        .cloned()
        .chain(alike.iter().map(|u| (u.rowid, u.quoted_name())));
    let alike = if alike.is_empty() {
        String::new()
    } else {
        candidates
            .map(|(rowid, name)| format!("rowid {rowid}: {name}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(UserError::NoSuchRowid {
        name: name.to_owned(),
        rowid,
        only,
        alike,
    })
}

/// Users listed in a refusal: rowid, name, masked key, created; the first five.
fn listed(users: &[User]) -> String {
    const LISTED: usize = 5;
    let mut listed: Vec<String> = users
        .iter()
        .take(LISTED)
        .map(|u| {
            format!(
                "rowid {}: {}, key {}, created {}",
                u.rowid,
                u.quoted_name(),
                masked(&u.key),
                crate::printable(
                    &u.created_at
                        .get(..19)
                        .unwrap_or(&u.created_at)
                        .replacen('T', " ", 1)
                )
            )
        })
        .collect();
    if users.len() > LISTED {
        listed.push(format!("and {} more", users.len() - LISTED));
    }
    listed.join("; ")
}

/// Several users answer to `who`: the refusal lists each (rowid, name, masked key, created)
/// so the rowid of the one meant can be given with the name.
fn ambiguous(who: Who<'_>, found: &[User]) -> UserError {
    let (what, hint) = match who {
        Who::Name { name, .. } => (
            names::quoted(name),
            "add --rowid <N> to pick one, or give --key <KEY> instead of the name",
        ),
        // Two stored keys that read as the same text (a BLOB and text of the same bytes).
        Who::Key(_) => (
            "the given key".to_owned(),
            "name the user instead, with --rowid <N>",
        ),
    };
    UserError::Ambiguous {
        what,
        count: found.len(),
        users: listed(found),
        hint,
    }
}

/// Whether `user` signs in with the key whose hash is `presented`, matched as the server's
/// index matches it: by hash, and a key that is empty, a BLOB or not UTF-8 signs in nobody.
fn holds_key(user: &User, presented: &KeyHash) -> bool {
    user.key_signs_in && hash_key(user.key.expose()) == *presented
}

/// The users other than `user` that sign in with `user`'s key, by rowid (the first of them
/// is the one the key signs in as once `user` no longer holds it).
fn others_holding_key(conn: &Connection, user: &User) -> Result<Vec<User>, UserError> {
    if !user.key_signs_in {
        return Ok(Vec::new());
    }
    let hash = hash_key(user.key.expose());
    let mut statement = conn.prepare_cached(
        "SELECT rowid, username, api_key, email, permissions, created_at, updated_at
         FROM users ORDER BY rowid",
    )?;
    let mut others = Vec::new();
    for other in statement.query_map([], user_from_row)? {
        let other = other?;
        if other.rowid != user.rowid && holds_key(&other, &hash) {
            others.push(other);
        }
    }
    Ok(others)
}

/// The hashes of every stored key that signs someone in ([`holds_key`]): a new user's name
/// must be none of them (a key pasted where the name goes, a Python-era key of 32 letters
/// and digits, which a name may look like), or `user list` and every request record of that
/// user would print the key whole.
fn stored_keys(conn: &Connection) -> rusqlite::Result<HashSet<KeyHash>> {
    let mut statement = conn.prepare_cached("SELECT api_key FROM users")?;
    let keys = statement.query_map([], |row| text(row, 0).map(Secret::new))?;
    let mut hashes = HashSet::new();
    for key in keys {
        let key = key?;
        if !key.expose().is_empty() {
            hashes.insert(hash_key(key.expose()));
        }
    }
    Ok(hashes)
}

/// No user answers to `name`: the error echoes it, unless it looks like a key.
fn unknown(name: &str) -> UserError {
    if looks_like_key(name) {
        UserError::KeyLikeName(names::given(name))
    } else {
        UserError::UnknownUser(name.to_owned())
    }
}

fn exists(conn: &Connection, username: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)",
        [username],
        |row| row.get(0),
    )
}

fn insert(conn: &Connection, user: &NewUser) -> Result<Secret, UserError> {
    let now = now_iso(conn)?;
    let permissions = to_json(&user.permissions);
    with_fresh_key(|key| {
        conn.execute(
            "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![user.username, key.expose(), user.email, permissions, now],
        )
    })
}

/// Runs `write` with a new key, drawing another if the key collides with a stored one
/// (UNIQUE on api_key). With 190 random bits that never happens; the loop only makes the
/// outcome certain rather than an error.
fn with_fresh_key(
    mut write: impl FnMut(&Secret) -> rusqlite::Result<usize>,
) -> Result<Secret, UserError> {
    let mut attempts = 0;
    loop {
        let key = generate_key()?;
        match write(&key) {
            Ok(_) => return Ok(key),
            Err(e) if is_constraint(&e) && attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// Local time as Python's `datetime.now().isoformat()` wrote it. SQLite converts to local
/// time (the C library's `localtime`, as Python does); the microseconds come from here.
fn now_iso(conn: &Connection) -> rusqlite::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds: String = conn.query_row(
        "SELECT strftime('%Y-%m-%dT%H:%M:%S', ?1, 'unixepoch', 'localtime')",
        [now.as_secs() as i64],
        |row| row.get(0),
    )?;
    Ok(format!("{seconds}.{:06}", now.subsec_micros()))
}

/// A row of `SELECT rowid, username, api_key, email, permissions, created_at, updated_at`.
fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let stored_name = StoredName::from_sql(row.get_ref(1)?);
    let email = text(row, 3)?;
    Ok(User {
        rowid: row.get(0)?,
        username: stored_name.shown(),
        stored_name,
        key_signs_in: key_readable(row, 2)?.is_ok(),
        key: Secret::new(text(row, 2)?),
        email: (!email.is_empty()).then_some(email),
        permissions: from_json(&text(row, 4)?),
        created_at: text(row, 5)?,
        updated_at: text(row, 6)?,
    })
}

/// Why a stored key signs in nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnusableKey {
    /// Empty or NULL.
    Empty,
    /// A BLOB: the Python version's `WHERE api_key = ?`, with a text parameter, never
    /// matched one.
    Blob,
    /// An INTEGER or a REAL (a hand-edited table whose column has no type): the Python
    /// version compared the key typed (a `str`) with what `sqlite3` gave back (an `int` or
    /// a `float`), which never matched. Read as its text, `12345` signed in with the
    /// presented key `12345`.
    Number,
    /// Text that is not UTF-8, which no presented key (always UTF-8) equals: read lossily,
    /// two such keys differing only in those bytes would be one key, and a presented key
    /// holding U+FFFD would match them.
    NotUtf8,
}

impl UnusableKey {
    /// The server's warning, at each load of the users (the user is named beside it).
    pub(crate) fn warning(self) -> &'static str {
        match self {
            Self::Empty => "user has an empty key; it cannot sign in",
            Self::Blob => {
                "user's key is stored as a BLOB, not as text; it cannot sign in (nor could it with the Python version); give the user a new key (llmsrouter user rotate-key <username>)"
            }
            Self::Number => {
                "user's key is stored as a number, not as text; it cannot sign in (nor could it with the Python version); give the user a new key (llmsrouter user rotate-key <username>)"
            }
            Self::NotUtf8 => {
                "user's key is text that is not UTF-8; it cannot sign in; give the user a new key (llmsrouter user rotate-key <username>)"
            }
        }
    }
}

/// The `api_key` column as a key that signs in, or why it signs in nobody: only a key
/// stored as UTF-8 text that is not empty does; a BLOB or a number (a hand-edited table
/// without column types) signs in nobody, as with the Python version.
pub(crate) fn key_readable(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<Result<String, UnusableKey>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Blob(_) => Err(UnusableKey::Blob),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok("") => Err(UnusableKey::Empty),
            Ok(key) => Ok(key.to_owned()),
            Err(_) => Err(UnusableKey::NotUtf8),
        },
        ValueRef::Null => Err(UnusableKey::Empty),
        ValueRef::Integer(_) | ValueRef::Real(_) => Err(UnusableKey::Number),
    })
}

/// A column as text, whatever SQLite type an older or hand-edited database gave it.
pub(crate) fn text(row: &Row<'_>, index: usize) -> rusqlite::Result<String> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(name: &str, permissions: Permissions) -> NewUser {
        NewUser {
            username: name.into(),
            email: Some(format!("{name}@example.com")),
            permissions,
        }
    }

    fn store() -> (tempfile::TempDir, UserStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = UserStore::open(&dir.path().join("u.db"), OpenMode::Create).expect("open");
        (dir, store)
    }

    #[test]
    fn add_get_list_modify_rotate_delete() {
        let (_dir, mut store) = store();
        let key = store.add(&new_user("ann", Permissions::All)).expect("add");
        let ann = store.get("ann").expect("get");
        assert_eq!(ann.key, key);
        assert_eq!(ann.email.as_deref(), Some("ann@example.com"));
        assert_eq!(ann.permissions, Ok(Permissions::All));
        assert_eq!(ann.created_at, ann.updated_at);

        let only_a = Permissions::Only(["a".to_owned()].into());
        store.set_permissions("ann", &only_a).expect("modify");
        assert_eq!(store.get("ann").expect("get").permissions, Ok(only_a));

        let new_key = store.rotate_key("ann").expect("rotate");
        assert_ne!(new_key, key);
        assert_eq!(store.get("ann").expect("get").key, new_key);

        store.add(&new_user("bob", Permissions::All)).expect("bob");
        let names: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["ann", "bob"]);

        store.delete("ann").expect("delete");
        assert!(matches!(store.get("ann"), Err(UserError::UnknownUser(_))));
        assert!(matches!(
            store.delete("ann"),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            store.rotate_key("ann"),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            store.set_permissions("ann", &Permissions::All),
            Err(UserError::UnknownUser(_))
        ));
    }

    /// Names of the Python version's table that are not UTF-8 text: each is addressed by
    /// what it prints as, acted on by rowid, and names that print alike are refused.
    #[test]
    fn odd_names_are_found_by_their_printed_form_and_never_confused() {
        let (_dir, mut store) = store();
        store.conn
            .execute_batch(
                "INSERT INTO users VALUES (NULL, 'k-null-1', NULL, '{\"*\": true}', 't', 't');
                 INSERT INTO users VALUES (NULL, 'k-null-2', NULL, '{\"*\": true}', 't', 't');
                 INSERT INTO users VALUES (x'ff00', 'k-blob', NULL, '{\"*\": true}', 't', 't');
                 INSERT INTO users VALUES (CAST(x'626f62ff' AS TEXT), 'k-bad', NULL, '{\"*\": true}', 't', 't');
                 INSERT INTO users VALUES ('bob\\xff', 'k-slash', NULL, '{\"*\": true}', 't', 't');",
            )
            .expect("rows");
        let key_of =
            |store: &UserStore, who: Who<'_>| store.get(who).map(|u| u.key.expose().to_owned());
        assert_eq!(
            key_of(&store, "<blob:ff00>".into()).expect("blob"),
            "k-blob"
        );
        // A non-UTF-8 name and the text `bob\xff` print alike: refused, both listed.
        let err = key_of(&store, "bob\\xff".into()).expect_err("ambiguous");
        let message = err.to_string();
        assert!(
            matches!(err, UserError::Ambiguous { count: 2, .. }),
            "{message}"
        );
        assert!(
            message.contains("rowid 4") && message.contains("rowid 5"),
            "{message}"
        );
        assert!(
            !message.contains("k-bad") && !message.contains("k-slash"),
            "{message}"
        );
        let picked = Who::Name {
            name: "bob\\xff",
            rowid: Some(4),
        };
        assert_eq!(key_of(&store, picked).expect("rowid 4"), "k-bad");
        let wrong = Who::Name {
            name: "bob\\xff",
            rowid: Some(1),
        };
        assert!(matches!(
            store.get(wrong),
            Err(UserError::NoSuchRowid { .. })
        ));

        assert!(matches!(
            store.delete("<null>"),
            Err(UserError::Ambiguous { .. })
        ));
        let deleted = store.delete(Who::Key("k-null-2")).expect("by key");
        assert_eq!(
            (deleted.user.rowid, deleted.user.username.as_str()),
            (2, "<null>")
        );
        assert!(deleted.still_held_by.is_empty());
        assert!(matches!(
            store.get(Who::Key("k-null-2")),
            Err(UserError::UnknownKey)
        ));
        assert_eq!(
            key_of(&store, "<null>".into()).expect("one left"),
            "k-null-1"
        );
        store.rotate_key(Who::Key("k-blob")).expect("rotate");
        store
            .set_permissions(picked, &Permissions::All)
            .expect("modify");
        // Acting by rowid leaves the stored names exactly as they were.
        let kinds: Vec<(String, String)> = store
            .conn
            .prepare("SELECT typeof(username), hex(username) FROM users ORDER BY rowid")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let expected = [
            ("null", ""),
            ("blob", "FF00"),
            ("text", "626F62FF"),
            ("text", "626F625C786666"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(t, h)| ((*t).to_owned(), (*h).to_owned()))
            .collect();
        assert_eq!(kinds, expected);
    }

    #[test]
    fn a_duplicate_keeps_the_first_key() {
        let (_dir, mut store) = store();
        let key = store.add(&new_user("ann", Permissions::All)).expect("add");
        let err = store
            .add(&new_user("ann", Permissions::All))
            .expect_err("duplicate");
        assert!(matches!(err, UserError::DuplicateUser(_)));
        assert_eq!(store.get("ann").expect("get").key, key);
    }

    #[test]
    fn import_skips_existing_and_writes_the_rest_together() {
        let (_dir, mut store) = store();
        let old = store.add(&new_user("ann", Permissions::All)).expect("add");
        let outcome = store
            .import(&[
                new_user("bob", Permissions::All),
                new_user("ann", Permissions::All),
            ])
            .expect("import");
        assert_eq!(outcome.skipped, [1]);
        assert_eq!(outcome.created.len(), 1);
        assert_eq!(outcome.created[0].0, "bob");
        assert_eq!(store.get("ann").expect("ann").key, old);
        // A bad user anywhere: nothing written.
        let mut bad = new_user("carl", Permissions::All);
        bad.email = Some("nope".into());
        let err = store
            .import(&[new_user("dan", Permissions::All), bad])
            .expect_err("bad email");
        assert!(matches!(err, UserError::BadEmail { .. }));
        assert!(store.get("dan").is_err());
    }

    #[test]
    fn timestamps_look_like_pythons_isoformat() {
        let (_dir, store) = store();
        let now = now_iso(&store.conn).expect("now");
        // 2024-05-01T12:34:56.789012
        assert_eq!(now.len(), 26, "{now}");
        let bytes = now.as_bytes();
        assert_eq!(
            (
                bytes[4], bytes[7], bytes[10], bytes[13], bytes[16], bytes[19]
            ),
            (b'-', b'-', b'T', b':', b':', b'.')
        );
        assert!(
            now.chars()
                .filter(|c| !"-T:.".contains(*c))
                .all(|c| c.is_ascii_digit())
        );
    }

    #[test]
    fn a_missing_file_is_created_only_when_asked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("typo.db");
        assert!(matches!(
            UserStore::open(&path, OpenMode::Existing),
            Err(UserError::NoDatabase(_))
        ));
        assert!(!path.exists());
        UserStore::open(&path, OpenMode::Create).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
