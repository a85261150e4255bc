//! `llmsrouter user ...`: runs one command against the database and writes what people and
//! scripts read.
//!
//! stdout carries the result (a new key alone on its line, a table, JSON); stderr carries
//! notes and warnings; failures come back as a [`UserError`] whose one-line message the
//! binary prints. Keys appear on stdout only as the freshly made key of `add`, `rotate-key`
//! and `import`; `list` and `show` print a masked prefix.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use super::UserError;
use super::import::{self, ImportRow};
use super::key::masked;
use super::names::{self, quoted};
use super::permissions::{self, parse_spec, unknown_aliases};
use super::store::{NewUser, OpenMode, User, UserStore, Who};
use crate::auth::Permissions;
use crate::cli::{UserCommand, WhichUser};
use crate::printable;
use crate::secret::Secret;

/// Where a command writes, and what it checks permissions against.
pub struct Context<'a> {
    pub db: &'a Path,
    /// config.yaml's aliases, when it could be read: permissions naming others are accepted
    /// (the config may gain them later) with a warning.
    pub known_aliases: Option<&'a [String]>,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

pub fn run(command: &UserCommand, cx: &mut Context<'_>) -> Result<(), UserError> {
    run_command(command, cx).map_err(|e| locked_at(cx.db, e))
}

/// SQLite's bare "database is locked" (another program kept the write lock past the busy
/// timeout) said as what it is, with the file, and that the command changed no user: each
/// change is one transaction, which never began. "No user", not "nothing", as the command's
/// other refusals say: opening the file may have made a dropped usage ledger again (said on
/// its own warning line) before the change waited for the lock, and that stays.
fn locked_at(db: &Path, e: UserError) -> UserError {
    let path = match e {
        UserError::Sqlite(e) if crate::db::is_locked(&e) => db.display().to_string(),
        UserError::Db(crate::db::DbError::Locked { path, .. }) => path,
        e => return e,
    };
    UserError::Db(crate::db::DbError::Locked {
        path,
        kept: "no user was changed",
    })
}

fn run_command(command: &UserCommand, cx: &mut Context<'_>) -> Result<(), UserError> {
    match command {
        UserCommand::Add {
            username,
            email,
            permissions,
        } => add(cx, username, email.as_deref(), permissions),
        UserCommand::Delete { who } => {
            let key = presented_key(who)?;
            let revoked =
                open_store(cx.db, OpenMode::Existing, cx.err)?.delete(target(who, &key))?;
            writeln!(cx.out, "deleted user {}", revoked.user.quoted_name())?;
            warn_key_still_works(cx.err, &revoked, "its key")?;
            Ok(())
        }
        UserCommand::Import { file } => import_file(cx, file),
        UserCommand::List { json } => list(cx, *json),
        UserCommand::Modify { who, permissions } => {
            let permissions = parse_spec(permissions)?;
            let key = presented_key(who)?;
            let user = open_store(cx.db, OpenMode::Existing, cx.err)?
                .set_permissions(target(who, &key), &permissions)?;
            let name = user.quoted_name();
            warn_unknown_aliases(cx, &permissions, &name)?;
            writeln!(
                cx.out,
                "user {name} may now use: {}",
                permissions::display(&permissions)
            )?;
            Ok(())
        }
        UserCommand::Show { who, json } => {
            let key = presented_key(who)?;
            show(cx, target(who, &key), *json)
        }
        UserCommand::RotateKey { who } => {
            let key = presented_key(who)?;
            let out = &mut *cx.out;
            let (revoked, _) = open_store(cx.db, OpenMode::Existing, cx.err)?
                .rotate_key_delivering(target(who, &key), |key| print_key(out, key))?;
            let name = revoked.user.quoted_name();
            if revoked.still_held_by.is_empty() {
                writeln!(
                    cx.err,
                    "new key for {name} (above, shown only now); the old key no longer works"
                )?;
            } else {
                writeln!(cx.err, "new key for {name} (above, shown only now)")?;
                warn_key_still_works(cx.err, &revoked, "the old key")?;
            }
            Ok(())
        }
    }
}

/// Opens the users table for a command; what opening repaired (a usage ledger made again)
/// is said on stderr as the command's other warnings are, one `warning:` line each, not as
/// a log line.
fn open_store(db: &Path, mode: OpenMode, err: &mut dyn Write) -> Result<UserStore, UserError> {
    let mut notes = Vec::new();
    let store = UserStore::open_noting(db, mode, &mut |note| notes.push(note))?;
    for note in notes {
        writeln!(err, "warning: {note}")?;
    }
    Ok(store)
}

/// Most users a warning of a key still held names; the rest are counted.
const LISTED_HOLDERS: usize = 5;

/// After `rotate-key` or `delete` took a key from a user that other users hold too (a table
/// rebuilt without the `UNIQUE` on `api_key`): a warning that the key still works, and as
/// whom it now signs in, with the commands that revoke it for each of them. The command is
/// done all the same, since it is the first step of revoking the key; refusing would leave
/// no way to do it by name, as `rotate-key` on any of the holders would be refused too (and
/// `--key` with the shared key is: it names several users). `what` names the key in the
/// message ("the old key", "its key"). The users are named as every message names them
/// (quoted, escaped, never a key), and in the commands by rowid, which picks the very row
/// even among users that print alike, and by name quoted for a shell ([`names::for_shell`]).
fn warn_key_still_works(
    err: &mut dyn Write,
    revoked: &super::store::Revoked,
    what: &str,
) -> Result<(), UserError> {
    let holders = &revoked.still_held_by;
    let Some(first) = holders.first() else {
        return Ok(());
    };
    let mut names: Vec<String> = holders
        .iter()
        .take(LISTED_HOLDERS)
        .map(User::quoted_name)
        .collect();
    if holders.len() > LISTED_HOLDERS {
        names.push(format!("and {} more", holders.len() - LISTED_HOLDERS));
    }
    let (who, verb, them) = match holders.len() {
        1 => ("user", "holds", "that user"),
        _ => ("users", "hold", "each of them"),
    };
    let commands: Vec<String> = holders
        .iter()
        .take(LISTED_HOLDERS)
        .map(|u| {
            // Quoted for a shell, so it runs as pasted; after `--` a name that begins with
            // `-` (a Python-era one) is not read as a flag.
            let name = names::for_shell(&u.username);
            let end = if name.starts_with('-') { "-- " } else { "" };
            format!("llmsrouter user rotate-key --rowid {} {end}{name}", u.rowid)
        })
        .collect();
    writeln!(
        err,
        "warning: {what} still works: {who} {} {verb} the same key, and it now signs in as {}; to revoke it, give {them} a new key too: {}",
        names.join(", "),
        first.quoted_name(),
        commands.join("; ")
    )?;
    Ok(())
}

/// The key `--key` gives, read from stdin for `-` (so it stays out of the shell's history
/// and the process list); `None` when the user is named instead. White space around it is
/// not part of it, as the server reads `Bearer  <key> `: a key pasted with a space still
/// finds its user.
fn presented_key(who: &WhichUser) -> Result<Option<Secret>, UserError> {
    match &who.by.key {
        None => Ok(None),
        Some(key) if key.expose().trim() == "-" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(UserError::KeyInput)?;
            let key = line.trim();
            if key.is_empty() {
                return Err(UserError::NoKeyRead);
            }
            Ok(Some(Secret::new(key)))
        }
        Some(key) => Ok(Some(Secret::new(key.expose().trim()))),
    }
}

/// Whom the command means: the key when one was given (clap allows a name or a key, not
/// both), else the name with its `--rowid`.
fn target<'a>(who: &'a WhichUser, key: &'a Option<Secret>) -> Who<'a> {
    match key {
        Some(key) => Who::Key(key.expose()),
        None => Who::Name {
            name: who.by.username.as_deref().unwrap_or_default(),
            rowid: who.rowid,
        },
    }
}

fn add(
    cx: &mut Context<'_>,
    username: &str,
    email: Option<&str>,
    permissions: &str,
) -> Result<(), UserError> {
    let user = NewUser {
        username: username.to_owned(),
        email: email
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
        permissions: parse_spec(permissions)?,
    };
    // Checked before the database is opened (or created): bad input writes nothing.
    user.validate()?;
    let out = &mut *cx.out;
    let made = file_made_by_opening(cx.db);
    let added = open_store(cx.db, OpenMode::Create, cx.err).and_then(|mut store| {
        store.add_delivering(&user, |key| print_key(out, key))?;
        Ok(store)
    });
    let store = unmade_if_undelivered(made.as_deref(), added)?;
    writeln!(
        cx.err,
        "created user {} (may use: {}); the key above is shown only now",
        quoted(username),
        permissions::display(&user.permissions)
    )?;
    note_look_alikes(cx.err, &store, &[(None, username)])?;
    warn_unknown_aliases(cx, &user.permissions, &quoted(username))?;
    Ok(())
}

/// Most look-alikes a note lists; the rest are counted.
const LISTED_LOOK_ALIKES: usize = 5;

/// A note on stderr for each new user (`user add`'s, or each made row of `user import`)
/// whose name looks like an existing user's on a screen without being it (`carol` beside a
/// Python-era `carol `, an NFC `José` beside a decomposed one): the two are different users,
/// which a reader of `user list` or of a usage report could take for one. The user is made
/// all the same (the names differ, and each is named as `user list` prints it); the note
/// names the look-alikes by rowid and quoted name, as a lookup that misses does, and never
/// by key. It is written after the change is committed, so a failure to read the table for
/// it is not the command's failure: the note is left out then.
fn note_look_alikes(
    err: &mut dyn Write,
    store: &UserStore,
    made: &[(Option<usize>, &str)],
) -> Result<(), UserError> {
    let names: Vec<&str> = made.iter().map(|(_, name)| *name).collect();
    let Ok(alikes) = store.look_alikes(&names) else {
        return Ok(());
    };
    for ((row, name), alike) in made.iter().zip(alikes) {
        if alike.is_empty() {
            continue;
        }
        let mut listed: Vec<String> = alike
            .iter()
            .take(LISTED_LOOK_ALIKES)
            .map(|(rowid, name)| format!("rowid {rowid}: {name}"))
            .collect();
        if alike.len() > LISTED_LOOK_ALIKES {
            listed.push(format!("and {} more", alike.len() - LISTED_LOOK_ALIKES));
        }
        let (what, kept) = match alike.len() {
            1 => ("an existing user's name".to_owned(), "both are"),
            n => (format!("{n} existing users' names"), "all are"),
        };
        let at = row.map(|row| format!("row {row}: ")).unwrap_or_default();
        writeln!(
            err,
            "note: {at}{} looks like {what} ({}); {kept} kept apart: name them as \"user list\" prints them, or by --rowid",
            quoted(name),
            listed.join("; ")
        )?;
    }
    Ok(())
}

/// The database file that opening `db` will make, asked before it is opened: `None` when
/// there is one already. Through a symlink to a missing file that is the link's target.
fn file_made_by_opening(db: &Path) -> Option<PathBuf> {
    (!db.exists()).then(|| crate::db::file_to_create(db))
}

/// Passes `result` on; when the keys could not be shown (or, shown, not saved) and the
/// command made the database file itself (`made`), removes that file too (with SQLite's side
/// files, which are made beside it), so the refusal leaves nothing behind on the file system
/// either. A symlink the file was made through is the administrator's, and stays.
fn unmade_if_undelivered<T>(
    made: Option<&Path>,
    result: Result<T, UserError>,
) -> Result<T, UserError> {
    if let (Some(db), true) = (
        made,
        matches!(
            result,
            Err(UserError::Undelivered(_) | UserError::Unsaved { .. })
        ),
    ) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = db.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
    result
}

/// A new key alone on its line, flushed: it must have left before the change is committed.
fn print_key(out: &mut dyn Write, key: &Secret) -> std::io::Result<()> {
    writeln!(out, "{}", key.expose())?;
    out.flush()
}

fn import_file(cx: &mut Context<'_>, file: &Path) -> Result<(), UserError> {
    let shown = file.display().to_string();
    let failed = |reason: String| UserError::Import {
        file: shown.clone(),
        reason,
    };
    let bytes = std::fs::read(file).map_err(|e| failed(format!("cannot read: {e}")))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let rows = import::parse(name, &bytes).map_err(|e| failed(e.to_string()))?;
    let users: Vec<NewUser> = rows.iter().map(|r| r.user.clone()).collect();
    let out = &mut *cx.out;
    let made = file_made_by_opening(cx.db);
    let imported = open_store(cx.db, OpenMode::Create, cx.err).and_then(|mut store| {
        let outcome = store.import_delivering(&users, |outcome| {
            // Nothing to print, nothing to lose: stdout is not asked to take a key (nor is
            // one written to /dev/null refused) when every user existed.
            if outcome.created.is_empty() {
                return Ok(());
            }
            for (username, key) in &outcome.created {
                writeln!(out, "{username}\t{}", key.expose())?;
            }
            out.flush()
        })?;
        Ok((store, outcome))
    });
    let (store, outcome) =
        unmade_if_undelivered(made.as_deref(), imported).map_err(|e| match e {
            // Which row, as for every other bad row.
            UserError::NameIsAKey {
                position: Some(position),
            } => failed(format!(
                "row {}: {}",
                rows.get(position).map_or(position + 1, |r| r.row),
                UserError::NameIsAKey { position: None }
            )),
            e => e,
        })?;
    for &position in &outcome.skipped {
        let ImportRow { row, user } = &rows[position];
        writeln!(
            cx.err,
            "warning: row {row}: user {} exists; skipped (its key is unchanged)",
            quoted(&user.username)
        )?;
    }
    // The rows made, in order: every row but those skipped (a name twice in the file is
    // skipped the second time, as the first made it).
    let made_rows: Vec<(Option<usize>, &str)> = rows
        .iter()
        .enumerate()
        .filter(|(position, _)| !outcome.skipped.contains(position))
        .map(|(_, r)| (Some(r.row), r.user.username.as_str()))
        .collect();
    note_look_alikes(cx.err, &store, &made_rows)?;
    if let Some(known) = cx.known_aliases {
        let unknown: BTreeSet<String> = rows
            .iter()
            .flat_map(|r| unknown_aliases(&r.user.permissions, known))
            .collect();
        for alias in unknown {
            writeln!(
                cx.err,
                "warning: provider {alias:?} is not in config.yaml; users granted it cannot use it until it is added there"
            )?;
        }
    }
    writeln!(
        cx.err,
        "imported {}, skipped {} that existed",
        crate::plural(outcome.created.len(), "user", "users"),
        outcome.skipped.len()
    )?;
    Ok(())
}

/// What `list --json` and `show --json` print for a user.
#[derive(Serialize)]
struct UserJson<'a> {
    username: &'a str,
    email: Option<&'a str>,
    /// Sorted aliases, `["*"]` for every provider, `[]` for none.
    permissions: Vec<String>,
    /// Present only when the stored column cannot be read (the user may use nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions_error: Option<&'a str>,
    key_prefix: String,
    created_at: &'a str,
    updated_at: &'a str,
}

impl<'a> UserJson<'a> {
    fn of(user: &'a User) -> Self {
        let (permissions, permissions_error) = match &user.permissions {
            Ok(p) => (permissions::names(p), None),
            Err(reason) => (Vec::new(), Some(reason.as_str())),
        };
        Self {
            username: &user.username,
            email: user.email.as_deref(),
            permissions,
            permissions_error,
            key_prefix: masked(&user.key).trim_end_matches('…').to_owned(),
            created_at: &user.created_at,
            updated_at: &user.updated_at,
        }
    }
}

fn list(cx: &mut Context<'_>, json: bool) -> Result<(), UserError> {
    let users = open_store(cx.db, OpenMode::Read, cx.err)?.list()?;
    if json {
        let items: Vec<UserJson<'_>> = users.iter().map(UserJson::of).collect();
        write_json(cx.out, &items)?;
        return Ok(());
    }
    if users.is_empty() {
        writeln!(
            cx.out,
            "no users (add one with: llmsrouter user add <username>)"
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                names::in_list(&u.username),
                u.email
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), names::text_in_list),
                permissions_cell(u),
                masked(&u.key),
                printable(&short_time(&u.created_at)),
            ]
        })
        .collect();
    let table = render_table(
        &["USERNAME", "EMAIL", "PERMISSIONS", "KEY", "CREATED"],
        &rows,
    );
    cx.out.write_all(table.as_bytes())?;
    let cut = users
        .iter()
        .filter(|u| {
            names::cut_in_list(&u.username) || u.email.as_deref().is_some_and(names::cut_in_list)
        })
        .count();
    if cut > 0 {
        // After the table, which a reader of stdout gets whole: how to see the rest.
        let (what, its) = match cut {
            1 => ("1 user's name or email is".to_owned(), "its"),
            n => (format!("{n} users' names or emails are"), "their"),
        };
        writeln!(
            cx.err,
            "note: {what} cut in the table: {its} first 80 characters, then … and {its} length in bytes; llmsrouter user list --json prints every name and email whole, and llmsrouter user show <the name as the table shows it> that user's"
        )?;
    }
    Ok(())
}

fn show(cx: &mut Context<'_>, who: Who<'_>, json: bool) -> Result<(), UserError> {
    let user = open_store(cx.db, OpenMode::Read, cx.err)?.get(who)?;
    if json {
        write_json(cx.out, &UserJson::of(&user))?;
        return Ok(());
    }
    let rows = vec![
        vec!["username:".to_owned(), names::in_table(&user.username)],
        vec![
            "email:".to_owned(),
            user.email
                .as_deref()
                .map_or_else(|| "-".to_owned(), printable),
        ],
        vec!["permissions:".to_owned(), permissions_cell(&user)],
        vec!["key:".to_owned(), masked(&user.key)],
        vec!["created_at:".to_owned(), printable(&user.created_at)],
        vec!["updated_at:".to_owned(), printable(&user.updated_at)],
    ];
    cx.out.write_all(render_rows(&rows).as_bytes())?;
    Ok(())
}

fn permissions_cell(user: &User) -> String {
    match &user.permissions {
        Ok(p) => permissions::display(p),
        Err(reason) => format!("(unreadable: {}; none granted)", printable(reason)),
    }
}

fn write_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), UserError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `quoted_name`: the user as messages name it (quoted, escaped).
fn warn_unknown_aliases(
    cx: &mut Context<'_>,
    permissions: &Permissions,
    quoted_name: &str,
) -> Result<(), UserError> {
    let Some(known) = cx.known_aliases else {
        return Ok(());
    };
    for alias in unknown_aliases(permissions, known) {
        writeln!(
            cx.err,
            "warning: provider {alias:?} is not in config.yaml; {quoted_name} cannot use it until it is added there"
        )?;
    }
    Ok(())
}

/// `2024-05-01T12:34:56.789012` → `2024-05-01 12:34:56` for the table; JSON keeps it whole.
fn short_time(iso: &str) -> String {
    iso.get(..19).unwrap_or(iso).replacen('T', " ", 1)
}

/// Columns padded to their widest cell (by display width, so CJK names line up), two
/// spaces apart, with a header.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows.iter().cloned());
    render_rows(&all)
}

fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.width())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.push_str(&" ".repeat(width.saturating_sub(cell.width()) + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_by_display_width() {
        let table = render_table(
            &["USERNAME", "EMAIL"],
            &[
                vec!["李雷".into(), "li@example.com".into()],
                vec!["ann".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "USERNAME  EMAIL");
        assert_eq!(lines[1], "李雷      li@example.com");
        assert_eq!(lines[2], "ann       -");
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("ann"), "ann");
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(quoted("a\u{7}"), "\"a\\u{7}\"");
        // Invisible formatting characters too: a right-to-left override, a zero-width
        // space, a byte-order mark; the rest of the text as it is.
        assert_eq!(
            printable("evil\u{202e}gnp.exe \u{200b}李\u{feff}"),
            "evil\\u{202e}gnp.exe \\u{200b}李\\u{feff}"
        );
        assert_eq!(printable("a\u{2066}b\u{2069}"), "a\\u{2066}b\\u{2069}");
        assert_eq!(printable("\u{2070}\u{200a}"), "\u{2070}\u{200a}");
        // Quoted as the table prints: one backslash in `bob\xff`, not `{:?}`'s two.
        assert_eq!(quoted("bob\\xff"), "\"bob\\xff\"");
    }

    #[test]
    fn short_times() {
        assert_eq!(
            short_time("2024-05-01T12:34:56.789012"),
            "2024-05-01 12:34:56"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
    }
}
