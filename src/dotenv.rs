//! `./.env`, read the way the Python version read it (python-dotenv's `load_dotenv()`), so
//! its `.env` files keep their meaning, then loaded into the environment through dotenvy.
//!
//! Why not dotenvy's own parser: it refuses lines python-dotenv accepts (an unquoted value
//! with spaces, `TITLE=My Team Router`; a key with no `=`), and it stops at the first line it
//! refuses, so every variable after it, `ENABLE_ACCOUNT_MANAGEMENT` included, was silently
//! lost. Here, as in python-dotenv, a line that cannot be read is skipped on its own and
//! named (by line number: the line may hold a secret) in a warning; `check` counts it an
//! error. Why dotenvy still sets the variables: this crate forbids `unsafe`, and
//! `std::env::set_var` is unsafe in edition 2024; each value is handed to dotenvy quoted in
//! a form its parser reads back exactly.
//!
//! The grammar, as python-dotenv 1.2's parser has it, on the text as Python reads a file
//! (`\r\n` and a lone `\r` become `\n`): blank lines and `#` comments are skipped;
//! `[export ]KEY[ ]=[ ]VALUE[ # comment]`; a key is `'quoted'` or runs to `=`, `#` or white
//! space; a value is `'single-quoted'` (`\\` and `\'` decoded), `"double-quoted"`
//! (`\\`, `\'`, `\"`, `\a`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v` decoded), both possibly
//! spanning lines, a backslash in them always taking the next character along; or unquoted
//! to the end of the line, less a ` #comment` and trailing white space (`KEY= #x` is empty,
//! `KEY=#x` is `#x`).
//! `KEY` alone sets nothing. Then `${NAME}` and `${NAME:-default}` are expanded in every
//! value: from the real environment, else from the lines above, else the default, else empty.
//! Real environment variables win over the file.

use std::collections::HashMap;
use std::path::Path;

/// A `.env` line that could not be read: skipped, as python-dotenv skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line where the statement starts.
    pub line: usize,
    /// 1-based line where it ends: later than `line` when a quote opened on `line` closes
    /// only on a later line, and every line up to it is skipped with it (as python-dotenv
    /// skips them).
    pub last_line: usize,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.last_line > self.line {
            return write!(
                f,
                ".env lines {}-{}: not KEY=value: a quote opened on line {} closes only on \
                 line {} (an unclosed quote?), so these {} lines are skipped as one statement",
                self.line,
                self.last_line,
                self.line,
                self.last_line,
                self.last_line - self.line + 1
            );
        }
        write!(
            f,
            ".env line {}: not KEY=value (an unclosed quote, or text after a closing quote?); \
             the line is skipped",
            self.line
        )
    }
}

/// What loading `.env` did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Lines skipped because they could not be read.
    pub bad_lines: Vec<BadLine>,
    /// Lines (1-based, where the statement starts) whose key the environment cannot take
    /// through dotenvy (not `[A-Za-z_][A-Za-z0-9_.]*`), a name with `-` aside (see
    /// `another_programs_name`); the router reads none of them. By number, never by the
    /// key: such a "key" is most often a pasted secret (base64 has `/` and `+`).
    pub skipped_key_lines: Vec<usize>,
    /// Lines (1-based) holding bytes that are not UTF-8: read with U+FFFD in their place, so
    /// a key on one is not the key that was meant (python-dotenv refused the whole file).
    pub non_utf8_lines: Vec<usize>,
    /// Lines (1-based, where the statement starts) whose value holds a NUL byte, which no
    /// environment variable can: skipped (setting it panicked, printing the value).
    pub nul_lines: Vec<usize>,
    /// Of the skipped statements (`bad_lines`, `nul_lines`), the keys that can still be
    /// read, so that a skipped line for a variable the router reads can stop it
    /// (`ENABLE_ACCOUNT_MANAGEMENT="true`, a quote left open, ran the router open). Never a
    /// value.
    pub skipped_keys: Vec<SkippedKey>,
    /// Keys read but set to nothing, with their lines: a statement with no `=`
    /// (`ENABLE_ACCOUNT_MANAGEMENT:true`, which python-dotenv reads as a key with no value),
    /// the key cut at `:`. A router variable written so would start the router without it.
    pub keys_without_value: Vec<(usize, String)>,
    /// Lines inside a quoted value over several lines that read `KEY=` or `KEY:`: a quote
    /// left open above `ENABLE_ACCOUNT_MANAGEMENT=true` and closed by a later value's quote
    /// makes that line part of the value, with no warning from python-dotenv either.
    pub keys_inside_values: Vec<KeyInsideValue>,
    /// The names with `-` skipped in silence (see `another_programs_name`), with their lines
    /// (where the statement starts): the caller warns of one that looks like a variable it
    /// reads written with `-` for `_` (`ENABLE-ACCOUNT-MANAGEMENT=true` left accounts off
    /// without a word).
    pub dashed_keys: Vec<(usize, String)>,
}

/// A `KEY=` line that is part of another variable's quoted value (see
/// [`Loaded::keys_inside_values`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInsideValue {
    /// 1-based line of the `KEY=`.
    pub line: usize,
    pub key: String,
    /// The variable whose value holds it, and the line that value begins on.
    pub holder: String,
    pub holder_line: usize,
}

/// A key in a skipped statement: the statement's own, or, for one spanning several lines,
/// the `KEY=` or `KEY:` that begins a line inside it (`APP_TITLE="My Team` left open above
/// `ENABLE_ACCOUNT_MANAGEMENT=true` swallowed that line into the skipped statement).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SkippedKey {
    /// 1-based line where the statement starts (its [`BadLine::line`]).
    pub statement: usize,
    /// 1-based line of the key.
    pub line: usize,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error(".env: {0}")]
    Read(std::io::Error),
    #[error(".env: {0}")]
    Load(String),
    #[error(".env is a link to {}, which does not exist", .0.display())]
    DanglingLink(std::path::PathBuf),
    /// Read as UTF-8, each `KEY=` of it was a name with NULs, skipped with a warning that
    /// did not say why, and `ENABLE_ACCOUNT_MANAGEMENT=true` there started the router open;
    /// python-dotenv refused the file (UnicodeDecodeError), so the Python version never
    /// started with it.
    #[error(".env is UTF-16 (as Windows PowerShell writes it); save it as UTF-8")]
    Utf16,
    /// As [`Self::Utf16`], for a file in UTF-32 (`Out-File -Encoding utf32`), which was
    /// called UTF-16.
    #[error(".env is UTF-32; save it as UTF-8")]
    Utf32,
    /// A value whose `${NAME}`s, each expanding others, grow past [`MAX_EXPANDED_BYTES`]
    /// (`V1=${V0}${V0}...`, a line more each: eight times as long): it took all the memory
    /// there was, then the process.
    #[error(
        ".env line {line}: the value of {key} expands to over 1 MiB (a ${{NAME}} that expands \
         others, each many times over?)"
    )]
    ExpandsTooFar { line: usize, key: String },
    /// Values each under [`MAX_EXPANDED_BYTES`] whose expansions add up past
    /// [`MAX_EXPANDED_TOTAL_BYTES`] (150 lines of `${BIG}` x 12, 768 KiB each, held 550 MB).
    #[error(
        ".env line {line}: with the value of {key}, the file's ${{NAME}}s expand to over 8 MiB \
         in all (a ${{NAME}} used many times over?)"
    )]
    ExpandTooFarInAll { line: usize, key: String },
}

/// The longest value `.env`'s `${NAME}` expansions may make (an environment variable holds
/// far less in practice: Linux passes 128 KiB at most to a program).
const MAX_EXPANDED_BYTES: usize = 1024 * 1024;

/// The most the `${NAME}` expansions of the whole file may add to its values.
const MAX_EXPANDED_TOTAL_BYTES: usize = 8 * 1024 * 1024;

/// The key whose value's expansion went past a bound, and which one.
#[derive(Debug)]
pub struct ExpandsTooFar {
    pub key: String,
    /// The file's total, [`MAX_EXPANDED_TOTAL_BYTES`], not the value's own.
    pub in_all: bool,
}

/// Reads `path` (a missing file is normal) and sets each of its variables that the
/// environment does not already have.
pub fn load(path: &Path) -> Result<Loaded, DotenvError> {
    let (text, non_utf8_lines) = match std::fs::read(path) {
        Ok(bytes) if is_utf32(&bytes) => return Err(DotenvError::Utf32),
        Ok(bytes) if is_utf16(&bytes) => return Err(DotenvError::Utf16),
        Ok(bytes) => (
            String::from_utf8_lossy(&bytes).into_owned(),
            non_utf8_lines(&bytes),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A link to nothing (a secret mount not there yet) is not a missing `.env`: the
            // settings meant for the router are somewhere it cannot read.
            return match std::fs::read_link(path) {
                Ok(target) => Err(DotenvError::DanglingLink(target)),
                Err(_) => Ok(Loaded::default()),
            };
        }
        Err(e) => return Err(DotenvError::Read(e)),
    };
    let (bindings, lines, bad) = parse_with_lines(&text);
    let mut skipped_keys: Vec<SkippedKey> = bad
        .iter()
        .flat_map(|(bad, keys)| {
            keys.iter().map(|(line, key)| SkippedKey {
                statement: bad.line,
                line: *line,
                key: key.clone(),
            })
        })
        .collect();
    let bad_lines = bad.into_iter().map(|(bad, _)| bad).collect();
    let skipped_key_lines = bindings
        .iter()
        .zip(&lines)
        .filter(|((key, value), _)| {
            value.is_some() && !dotenvy_can_take(key) && !another_programs_name(key)
        })
        .map(|(_, line)| *line)
        .collect();
    let dashed_keys = bindings
        .iter()
        .zip(&lines)
        .filter(|((key, value), _)| {
            value.is_some() && !dotenvy_can_take(key) && another_programs_name(key)
        })
        .map(|((key, _), line)| (*line, key.clone()))
        .collect();
    // The line that gave each key its value: the last one setting it.
    let line_of: HashMap<String, usize> = bindings
        .iter()
        .zip(&lines)
        .filter(|((_, value), _)| value.is_some())
        .map(|((key, _), line)| (key.clone(), *line))
        .collect();
    let (keys_without_value, keys_inside_values) = keys_set_to_nothing(&bindings, &lines);
    let values = resolve(bindings, &|name| std::env::var(name).ok()).map_err(|too_far| {
        let line = line_of.get(&too_far.key).copied().unwrap_or_default();
        let key = too_far.key;
        if too_far.in_all {
            DotenvError::ExpandTooFarInAll { line, key }
        } else {
            DotenvError::ExpandsTooFar { line, key }
        }
    })?;
    let mut nul_keys: Vec<SkippedKey> = values
        .iter()
        .filter(|(key, value)| dotenvy_can_take(key) && value.contains('\0'))
        .filter_map(|(key, _)| {
            let line = *line_of.get(key)?;
            Some(SkippedKey {
                statement: line,
                line,
                key: key.clone(),
            })
        })
        .collect();
    nul_keys.sort_unstable();
    let nul_lines = nul_keys.iter().map(|skipped| skipped.line).collect();
    skipped_keys.extend(nul_keys);
    skipped_keys.sort_unstable();
    let loaded = Loaded {
        bad_lines,
        skipped_key_lines,
        non_utf8_lines,
        nul_lines,
        skipped_keys,
        keys_without_value,
        keys_inside_values,
        dashed_keys,
    };
    let mut quoted = String::new();
    for (key, value) in values {
        // Only what `std::env::set_var` (behind dotenvy) takes without a panic: a name of
        // `[A-Za-z_][A-Za-z0-9_.]*` (no `=`, no NUL) and a value with no NUL.
        if !dotenvy_can_take(&key) || value.contains('\0') {
            continue;
        }
        // The environment wins, with a value that is not UTF-8 too (dotenvy asks
        // `std::env::var`, which has no value for it, and so replaced it with the file's).
        if std::env::var_os(&key).is_some() {
            continue;
        }
        quoted.push_str(&key);
        quoted.push('=');
        quoted.push_str(&dotenvy_quoted(&value));
        quoted.push('\n');
    }
    // dotenvy leaves a variable the environment has alone, as python-dotenv does.
    dotenvy::from_read(std::io::Cursor::new(quoted))
        // Its error quotes the line, value included: say only that it failed.
        .map_err(|_| DotenvError::Load("a value could not be passed to the environment".into()))?;
    Ok(loaded)
}

/// Sets each `(name, value)` in the process's environment, over a value it has: through
/// dotenvy, as [`load`] sets `.env`'s (see the module's comment). Names of the router's
/// variables, values with no NUL.
pub(crate) fn set_all(variables: &[(&str, String)]) -> Result<(), DotenvError> {
    let mut quoted = String::new();
    for (name, value) in variables {
        quoted.push_str(name);
        quoted.push('=');
        quoted.push_str(&dotenvy_quoted(value));
        quoted.push('\n');
    }
    dotenvy::from_read_override(std::io::Cursor::new(quoted))
        .map_err(|_| DotenvError::Load("a value could not be passed to the environment".into()))
}

/// The keys a read file sets to nothing ([`Loaded::keys_without_value`]) and the `KEY=` lines
/// inside quoted values ([`Loaded::keys_inside_values`]).
fn keys_set_to_nothing(
    bindings: &Bindings,
    lines: &[usize],
) -> (Vec<(usize, String)>, Vec<KeyInsideValue>) {
    let mut without_value = Vec::new();
    let mut inside_values = Vec::new();
    for ((key, value), &line) in bindings.iter().zip(lines) {
        match value {
            None => {
                let key = key.split(':').next().unwrap_or_default().trim();
                if !key.is_empty() {
                    without_value.push((line, key.to_owned()));
                }
            }
            Some(value) if value.contains('\n') => {
                for (i, text) in physical_lines(value).enumerate().skip(1) {
                    if let Some(inner) = line_key(text) {
                        inside_values.push(KeyInsideValue {
                            line: line + i,
                            key: inner,
                            holder: key.clone(),
                            holder_line: line,
                        });
                    }
                }
            }
            Some(_) => {}
        }
    }
    (without_value, inside_values)
}

/// Whether `bytes` are UTF-32 text: with a byte-order mark, or without one, NULs in more
/// than half of each of three byte positions out of four, as mostly-ASCII text has in
/// UTF-32 (either byte order). Checked before [`is_utf16`], which such a file also fits.
fn is_utf32(bytes: &[u8]) -> bool {
    let nul_positions = (0..4).filter(|&start| mostly_nul(bytes, start, 4)).count();
    crate::config::starts_with_utf32_bom(bytes) || nul_positions >= 3
}

/// Whether more than half of the bytes at `start`, `start + step`, ... are NUL (two at
/// least): where mostly-ASCII text in UTF-16 or UTF-32 has its zero high bytes.
fn mostly_nul(bytes: &[u8], start: usize, step: usize) -> bool {
    let (nul, all) = bytes
        .iter()
        .skip(start)
        .step_by(step)
        .fold((0, 0), |(nul, all), &b| {
            (nul + usize::from(b == 0), all + 1)
        });
    nul >= 2 && nul * 2 > all
}

/// Whether `bytes` are UTF-16 text: with a byte-order mark (what PowerShell 5's `echo ... >
/// .env` writes), or without one, a NUL in more than half the bytes at odd positions
/// (little-endian) or at even ones (big-endian), as mostly-ASCII text such as a `.env` has
/// in UTF-16. A UTF-8 `.env` has no NUL but in a value, which no variable can hold.
fn is_utf16(bytes: &[u8]) -> bool {
    crate::config::starts_with_utf16_bom(bytes)
        || mostly_nul(bytes, 0, 2)
        || mostly_nul(bytes, 1, 2)
}

/// The lines (1-based) of `bytes` that are not UTF-8.
fn non_utf8_lines(bytes: &[u8]) -> Vec<usize> {
    if std::str::from_utf8(bytes).is_ok() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| std::str::from_utf8(line).is_err())
        .map(|(index, _)| index + 1)
        .collect()
}

/// `(key, value)` in file order; `None` for a key with no `=`.
pub type Bindings = Vec<(String, Option<String>)>;

/// Every statement of `text`, and the lines that could not be read.
pub fn parse(text: &str) -> (Bindings, Vec<BadLine>) {
    let (bindings, _, bad) = parse_with_lines(text);
    (bindings, bad.into_iter().map(|(bad, _)| bad).collect())
}

/// Statements that could not be read, each with the keys that can be read in it and their
/// lines: the statement's own key, and for one spanning several lines, each later line's
/// `KEY=` or `KEY:`.
type BadLines = Vec<(BadLine, Vec<(usize, String)>)>;

/// [`parse`], with the line each binding starts on, and the keys of each bad statement.
fn parse_with_lines(text: &str) -> (Bindings, Vec<usize>, BadLines) {
    // python-dotenv reads the file in text mode, whose universal newlines turn `\r\n` and a
    // lone `\r` into `\n` before its parser sees them: a quoted value over several lines of
    // a CRLF file holds `\n`, not `\r\n`. Line numbers stay as they were (each of the three
    // ended a line).
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut reader = Reader {
        text: text.strip_prefix('\u{feff}').unwrap_or(&text),
        pos: 0,
    };
    let mut bindings = Vec::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    loop {
        reader.skip_while(char::is_whitespace);
        if reader.at_end() {
            break;
        }
        let start = reader.pos;
        match reader.statement() {
            Ok(Some(binding)) => {
                bindings.push(binding);
                lines.push(reader.line_of(start));
            }
            Ok(None) => {}
            Err(Unreadable) => {
                // python-dotenv skips from where the statement began to the end of the line
                // where reading it failed: past a quote that closed on a later line.
                reader.skip_while(|c| c != '\n' && c != '\r');
                let skipped = &reader.text[start..reader.pos];
                let line = reader.line_of(start);
                let own_key = Reader {
                    text: reader.text,
                    pos: start,
                }
                .statement_key()
                // `KEY: value`, as docker-compose writes it.
                .map(|key| key.split(':').next().unwrap_or_default().to_owned());
                let keys = physical_lines(skipped)
                    .enumerate()
                    .filter_map(|(i, text)| match i {
                        0 => Some((line, own_key.clone()?)),
                        _ => Some((line + i, line_key(text)?)),
                    })
                    .filter(|(_, key)| !key.is_empty())
                    .collect();
                bad.push((
                    BadLine {
                        line,
                        last_line: reader.line_of(reader.pos),
                    },
                    keys,
                ));
                reader.rest_of_line();
            }
        }
    }
    (bindings, lines, bad)
}

/// The lines of `text`, each ended by `\r\n`, `\n` or a lone `\r` (as [`Reader::line_of`]
/// counts them).
fn physical_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .flat_map(|line| line.split('\r'))
}

/// The `KEY` of a line that begins, after blanks and `export `, with `KEY=` or `KEY:`.
fn line_key(line: &str) -> Option<String> {
    let mut reader = Reader {
        text: line.trim_start_matches(is_blank),
        pos: 0,
    };
    reader.export_prefix();
    let key = reader.skip_while(|c| !matches!(c, '=' | ':' | '#') && !c.is_whitespace());
    reader.skip_blanks();
    (!key.is_empty() && matches!(reader.peek(), Some('=' | ':'))).then(|| key.to_owned())
}

/// Expands `${NAME}` / `${NAME:-default}` in each value and drops keys with no value; a key
/// set twice keeps its last value. `Err` names the key whose value would pass
/// [`MAX_EXPANDED_BYTES`], or take the file's expansions past [`MAX_EXPANDED_TOTAL_BYTES`].
pub fn resolve(
    bindings: Bindings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ExpandsTooFar> {
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut added = 0usize;
    for (key, value) in bindings {
        let value = match value {
            Some(v) => {
                let expanded = expand(&v, &|name| match env(name) {
                    Some(real) => Some(Some(real)),
                    None => seen.get(name).cloned(),
                });
                let Some(expanded) = expanded else {
                    return Err(ExpandsTooFar { key, in_all: false });
                };
                added += expanded.len().saturating_sub(v.len());
                if added > MAX_EXPANDED_TOTAL_BYTES {
                    return Err(ExpandsTooFar { key, in_all: true });
                }
                Some(expanded)
            }
            None => None,
        };
        if !seen.contains_key(&key) {
            order.push(key.clone());
        }
        seen.insert(key, value);
    }
    Ok(order
        .into_iter()
        .filter_map(|key| {
            let value = seen.remove(&key).flatten()?;
            Some((key, value))
        })
        .collect())
}

/// `${NAME}` and `${NAME:-default}`; anything else is kept as written. `lookup` gives
/// `Some(None)` for a name set with no value (which expands to nothing, not the default).
/// `None` when the result would pass [`MAX_EXPANDED_BYTES`].
fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<Option<String>>) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match variable(after) {
            Some((name, default, used)) => {
                let found = match lookup(name) {
                    Some(found) => found.unwrap_or_default(),
                    None => default.unwrap_or_default().to_owned(),
                };
                if out.len() + found.len() > MAX_EXPANDED_BYTES {
                    return None;
                }
                out.push_str(&found);
                rest = &after[used..];
            }
            None => {
                out.push('$');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    (out.len() <= MAX_EXPANDED_BYTES).then_some(out)
}

/// After `${`: `(name, default, bytes up to and including the closing brace)`.
fn variable(after: &str) -> Option<(&str, Option<&str>, usize)> {
    let name_end = after.find(['}', ':'])?;
    let name = &after[..name_end];
    let tail = &after[name_end..];
    if tail.starts_with('}') {
        return Some((name, None, name_end + 1));
    }
    let default_text = tail.strip_prefix(":-")?;
    let close = default_text.find('}')?;
    Some((name, Some(&default_text[..close]), name_end + 2 + close + 1))
}

/// A key dotenvy reads (python-dotenv allows any, but the router reads only such names).
fn dotenvy_can_take(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// A name with `-` (`MY-OTHER-APP_TOKEN`, from a `.env` shared with other programs), which
/// python-dotenv sets and dotenvy cannot: skipped in silence, as it costs the router nothing
/// (none of its variables has a `-`, nor can a `${NAME}` in config.yaml) and starts no
/// program that could read it. `check` failed on it. A name with other characters (`/`,
/// `+`, `=` of a pasted base64 secret) is still named by its line.
fn another_programs_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `value` double-quoted so that dotenvy's parser gives it back unchanged: it decodes `\\`,
/// `\"`, `\$` (nothing is expanded) and `\n`; every other character stands for itself.
fn dotenvy_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A statement that does not follow the grammar.
struct Unreadable;

struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn line_of(&self, pos: usize) -> usize {
        let before = &self.text[..pos];
        // `\r\n`, `\n` and a lone `\r` each end a line.
        1 + before.matches('\n').count() + before.matches('\r').count()
            - before.matches("\r\n").count()
    }

    /// Consumes characters while `keep` holds; returns them.
    fn skip_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        let len = self
            .rest()
            .char_indices()
            .find(|(_, c)| !keep(*c))
            .map_or(self.rest().len(), |(i, _)| i);
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn skip_blanks(&mut self) {
        self.skip_while(is_blank);
    }

    /// One statement, at a character that is not white space.
    fn statement(&mut self) -> Result<Option<(String, Option<String>)>, Unreadable> {
        self.export_prefix();
        let key = match self.peek() {
            Some('#') => None,
            Some('\'') => Some(self.single_quoted_key()?),
            _ => Some(self.unquoted_key()?),
        };
        self.skip_blanks();
        let value = if self.peek() == Some('=') {
            self.pos += 1;
            let spaced = !self.skip_while(is_blank).is_empty();
            if spaced && self.peek() == Some('#') {
                // `KEY= # comment` is empty; `KEY=#value` is `#value`.
                Some(String::new())
            } else {
                Some(self.value()?)
            }
        } else {
            None
        };
        self.comment();
        self.end_of_line()?;
        Ok(key.map(|key| (key, value)))
    }

    /// The key of the statement here, read as [`Self::statement`] reads it, for one that
    /// could not be read as a whole: the variable it was meant to set.
    fn statement_key(mut self) -> Option<String> {
        self.export_prefix();
        match self.peek() {
            None | Some('#') => None,
            Some('\'') => self.single_quoted_key().ok(),
            _ => self.unquoted_key().ok(),
        }
    }

    fn export_prefix(&mut self) {
        if let Some(after) = self.rest().strip_prefix("export") {
            let blanks = after.len() - after.trim_start_matches(is_blank).len();
            if blanks > 0 {
                self.pos += "export".len() + blanks;
            }
        }
    }

    fn single_quoted_key(&mut self) -> Result<String, Unreadable> {
        let inner = &self.rest()[1..];
        match inner.find('\'') {
            Some(close) if close > 0 => {
                let key = inner[..close].to_owned();
                self.pos += close + 2;
                Ok(key)
            }
            _ => Err(Unreadable),
        }
    }

    fn unquoted_key(&mut self) -> Result<String, Unreadable> {
        let key = self.skip_while(|c| c != '=' && c != '#' && !c.is_whitespace());
        if key.is_empty() {
            return Err(Unreadable);
        }
        Ok(key.to_owned())
    }

    fn value(&mut self) -> Result<String, Unreadable> {
        match self.peek() {
            Some(quote @ ('\'' | '"')) => {
                let (raw, used) = quoted(&self.rest()[1..], quote).ok_or(Unreadable)?;
                self.pos += 1 + used;
                Ok(if quote == '\'' {
                    decode_single(raw)
                } else {
                    decode_double(raw)
                })
            }
            None | Some('\n' | '\r') => Ok(String::new()),
            Some(_) => Ok(self.unquoted_value()),
        }
    }

    /// To the end of the line, less a ` #comment` (`#` after white space) and trailing white
    /// space.
    fn unquoted_value(&mut self) -> String {
        let part = self.skip_while(|c| c != '\n' && c != '\r');
        let mut cut = part.len();
        let mut previous_blank = false;
        for (i, c) in part.char_indices() {
            if c == '#' && previous_blank {
                cut = part[..i].trim_end_matches(char::is_whitespace).len();
                break;
            }
            previous_blank = c.is_whitespace();
        }
        part[..cut].trim_end_matches(char::is_whitespace).to_owned()
    }

    fn comment(&mut self) {
        let rest = self.rest();
        let blanks = rest.len() - rest.trim_start_matches(is_blank).len();
        if rest[blanks..].starts_with('#') {
            self.pos += blanks;
            self.skip_while(|c| c != '\n' && c != '\r');
        }
    }

    fn end_of_line(&mut self) -> Result<(), Unreadable> {
        self.skip_blanks();
        let rest = self.rest();
        let eol = if rest.starts_with("\r\n") {
            2
        } else if rest.starts_with(['\n', '\r']) {
            1
        } else if rest.is_empty() {
            0
        } else {
            return Err(Unreadable);
        };
        self.pos += eol;
        Ok(())
    }

    /// After an unreadable statement: on to the next line.
    fn rest_of_line(&mut self) {
        self.skip_while(|c| c != '\n' && c != '\r');
        let rest = self.rest();
        self.pos += if rest.starts_with("\r\n") {
            2
        } else {
            usize::from(!rest.is_empty())
        };
    }
}

/// White space other than a line break.
fn is_blank(c: char) -> bool {
    c.is_whitespace() && c != '\n' && c != '\r'
}

/// After an opening `quote`: the raw text up to its closing quote, and the bytes used (the
/// closing quote included). A backslash takes the character after it along, whatever it is
/// (python-dotenv 1.2's `Q((?:\\.|[^Q\\])*)Q`), so `\\` never starts an escaped quote.
fn quoted(text: &str, quote: char) -> Option<(&str, usize)> {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next()?;
        } else if c == quote {
            return Some((&text[..i], i + 1));
        }
    }
    None
}

fn decode_single(raw: &str) -> String {
    decode(raw, |c| matches!(c, '\\' | '\'').then_some(c))
}

fn decode_double(raw: &str) -> String {
    decode(raw, |c| {
        Some(match c {
            '\\' | '\'' | '"' => c,
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            _ => return None,
        })
    })
}

/// Replaces each `\c` that `escape` knows, left to right; other backslashes stay.
fn decode(raw: &str, escape: impl Fn(char) -> Option<char>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(decoded) = chars.peek().copied().and_then(&escape) {
                out.push(decoded);
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(text: &str) -> Vec<(String, String)> {
        let (bindings, bad) = parse(text);
        assert!(bad.is_empty(), "{bad:?}");
        resolve(bindings, &|_| None).expect("within the limit")
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn what_python_dotenv_accepts_and_dotenvy_refused() {
        assert_eq!(
            values("APP_TITLE=My Team Router\nBARE\nENABLE_ACCOUNT_MANAGEMENT=\"true\"\n"),
            pairs(&[
                ("APP_TITLE", "My Team Router"),
                ("ENABLE_ACCOUNT_MANAGEMENT", "true")
            ])
        );
    }

    #[test]
    fn quotes_comments_and_export() {
        let text = "\u{feff}# comment\n\
            export A = 1 # one\n\
            B='it''s'\n\
            C=\"line\\nnext \\\"q\\\" \\x\"  # c\n\
            D='x\\'y'\n\
            E=#not a comment\n\
            F=  # only a comment\n\
            G=a#b c #d\n\
            'H K'=spaced key\r\n\
            I=\"two\nlines\"\n\
            J=\n";
        let (bindings, bad) = parse(text);
        assert_eq!(
            bad,
            vec![BadLine {
                line: 3,
                last_line: 3
            }],
            "B='it''s' has text after its quote"
        );
        assert_eq!(
            resolve(bindings, &|_| None).expect("within the limit"),
            pairs(&[
                ("A", "1"),
                ("C", "line\nnext \"q\" \\x"),
                ("D", "x'y"),
                ("E", "#not a comment"),
                ("F", ""),
                ("G", "a#b c"),
                ("H K", "spaced key"),
                ("I", "two\nlines"),
                ("J", ""),
            ])
        );
    }

    #[test]
    fn a_bad_line_loses_only_itself() {
        let (bindings, bad) = parse("A=1\nB=\"open\nC=3\nD E=4\nF=6\n");
        // `"open` never closes: the line is skipped, the next ones are read.
        assert_eq!(
            bad,
            vec![
                BadLine {
                    line: 2,
                    last_line: 2
                },
                BadLine {
                    line: 4,
                    last_line: 4
                }
            ]
        );
        assert_eq!(
            resolve(bindings, &|_| None).expect("within the limit"),
            pairs(&[("A", "1"), ("C", "3"), ("F", "6")])
        );
        let message = bad[0].to_string();
        assert!(message.starts_with(".env line 2:"), "{message}");
        assert!(
            !message.contains("open"),
            "the line's text stays out: {message}"
        );
    }

    /// The key of a line that cannot be read is kept (not its value), so the caller can
    /// tell a skipped setting of its own from another program's.
    #[test]
    fn a_bad_line_keeps_its_key() {
        let (_, _, bad) = parse_with_lines(
            "A=1\nexport  B = 'x'y\nC words\n\"E\"='a'b\n'D K'='a'b\nENABLE_ACCOUNT_MANAGEMENT=\"true\n",
        );
        let keys: Vec<(usize, &[(usize, String)])> = bad
            .iter()
            .map(|(bad, keys)| (bad.line, keys.as_slice()))
            .collect();
        let key = |line: usize, key: &str| vec![(line, key.to_owned())];
        assert_eq!(
            keys,
            [
                (2, key(2, "B").as_slice()),
                (3, &key(3, "C")),
                (4, &key(4, "\"E\"")),
                (5, &key(5, "D K")),
                (6, &key(6, "ENABLE_ACCOUNT_MANAGEMENT")),
            ]
        );
    }

    /// A quote left open on one line and closed on a later one, with text after it, makes
    /// one skipped statement of every line between: the key beginning each of those lines
    /// (`KEY=` or `KEY:`) is kept, so a router variable swallowed there can stop the router.
    #[test]
    fn a_statement_skipped_over_several_lines_keeps_the_key_of_each() {
        let (bindings, _, bad) = parse_with_lines(
            "APP_TITLE=\"My Team\r\n  export ENABLE_ACCOUNT_MANAGEMENT=true\nplain words\nX : y\rLANGFUSE_HOST=\"http://h\"\nENABLE_ACCOUNT_MANAGEMENT: true\nNEXT=ok\n",
        );
        let owned = |list: &[(usize, &str)]| -> Vec<(usize, String)> {
            list.iter().map(|(l, k)| (*l, (*k).to_owned())).collect()
        };
        assert_eq!(
            bad,
            [
                (
                    BadLine {
                        line: 1,
                        last_line: 5
                    },
                    owned(&[
                        (1, "APP_TITLE"),
                        (2, "ENABLE_ACCOUNT_MANAGEMENT"),
                        (4, "X"),
                        (5, "LANGFUSE_HOST")
                    ])
                ),
                (
                    BadLine {
                        line: 6,
                        last_line: 6
                    },
                    owned(&[(6, "ENABLE_ACCOUNT_MANAGEMENT")])
                ),
            ]
        );
        assert_eq!(bindings, [("NEXT".to_owned(), Some("ok".to_owned()))]);
        assert_eq!(
            bad[0].0.to_string(),
            ".env lines 1-5: not KEY=value: a quote opened on line 1 closes only on line 5 \
             (an unclosed quote?), so these 5 lines are skipped as one statement"
        );
    }

    #[test]
    fn variables_expand_from_the_environment_then_the_file_then_the_default() {
        let (bindings, _) = parse(
            "HOST=file-host\nURL=http://${HOST}:${PORT:-8000}/${MISSING}\nREAL=${HOME}\nODD=${x:y} $HOST ${\n",
        );
        let env = |name: &str| (name == "HOME").then(|| "/home/me".to_owned());
        assert_eq!(
            resolve(bindings, &env).expect("within the limit"),
            pairs(&[
                ("HOST", "file-host"),
                ("URL", "http://file-host:8000/"),
                ("REAL", "/home/me"),
                ("ODD", "${x:y} $HOST ${"),
            ])
        );
    }

    /// The three lines python-dotenv 1.2 reads differently from 1.0.1 (the Python version's
    /// pin), each a 1.0.1 bug fixed upstream; the router reads them as 1.2 does, and the
    /// README says so (it claimed 1.0.1's reading, and a tester found `V= #hash` read as
    /// empty, where 1.0.1 gave `#hash`).
    #[test]
    fn reads_as_python_dotenv_1_2_where_1_0_1_differs() {
        // 1.0.1 lost a first line after a byte-order mark.
        assert_eq!(values("\u{feff}A=1\n"), pairs(&[("A", "1")]));
        // 1.0.1 took the comment as the value.
        assert_eq!(
            values("V= #hash\nW=#hash\n"),
            pairs(&[("V", ""), ("W", "#hash")])
        );
        // 1.0.1 read `C:\dir\`; a backslash in quotes always takes the next character along,
        // so the quote is never closed and the line is skipped (and named).
        let (bindings, bad) = parse("P='C:\\dir\\'\nNEXT=ok\n");
        assert_eq!(
            bad,
            [BadLine {
                line: 1,
                last_line: 1
            }]
        );
        assert_eq!(
            resolve(bindings, &|_| None).expect("within the limit"),
            pairs(&[("NEXT", "ok")])
        );
    }

    /// UTF-16, with a byte-order mark or without (either byte order), is told from UTF-8,
    /// a UTF-8 file with a NUL in a value included.
    #[test]
    fn utf16_is_told_from_utf8() {
        let utf16 = |text: &str, big_endian: bool| -> Vec<u8> {
            text.encode_utf16()
                .flat_map(|unit| {
                    if big_endian {
                        unit.to_be_bytes()
                    } else {
                        unit.to_le_bytes()
                    }
                })
                .collect()
        };
        let text = "ENABLE_ACCOUNT_MANAGEMENT=true\r\n# 火山 一\r\n";
        for big_endian in [false, true] {
            let without_bom = utf16(text, big_endian);
            assert!(is_utf16(&without_bom), "big-endian {big_endian}");
            let with_bom = utf16(&format!("\u{feff}{text}"), big_endian);
            assert!(is_utf16(&with_bom), "big-endian {big_endian}");
        }
        for big_endian in [false, true] {
            let utf32 = |text: &str| -> Vec<u8> {
                text.chars()
                    .flat_map(|c| {
                        let unit = u32::from(c);
                        if big_endian {
                            unit.to_be_bytes()
                        } else {
                            unit.to_le_bytes()
                        }
                    })
                    .collect()
            };
            assert!(is_utf32(&utf32(text)), "big-endian {big_endian}");
            assert!(is_utf32(&utf32(&format!("\u{feff}{text}"))));
            assert!(!is_utf32(&utf16(text, big_endian)), "UTF-16 is not UTF-32");
        }
        for utf8 in [
            "ENABLE_ACCOUNT_MANAGEMENT=true\n",
            "A=\0\n",
            "A=1\n\nHTTPS_PROXY=http://proxy:3128\0\n",
            "\u{feff}A=火山\n",
            "",
        ] {
            assert!(!is_utf16(utf8.as_bytes()), "{utf8:?}");
            assert!(!is_utf32(utf8.as_bytes()), "{utf8:?}");
        }
    }

    #[test]
    fn the_last_of_a_repeated_key_wins() {
        assert_eq!(values("A=1\nA=2\n"), pairs(&[("A", "2")]));
    }

    proptest! {
        /// What is handed to dotenvy comes back as it was.
        #[test]
        fn dotenvy_reads_back_every_quoted_value(value in "[^\u{0}]{0,40}") {
            let text = format!("K={}\nNEXT=ok\n", dotenvy_quoted(&value));
            let got: Vec<_> = dotenvy::from_read_iter(std::io::Cursor::new(text))
                .map(|item| item.map_err(|e| e.to_string()))
                .collect();
            prop_assert_eq!(
                got,
                vec![Ok(("K".to_owned(), value)), Ok(("NEXT".to_owned(), "ok".to_owned()))]
            );
        }

        #[test]
        fn parse_never_panics(text in "(?s).{0,200}") {
            let (bindings, _) = parse(&text);
            let _ = resolve(bindings, &|_| None).expect("within the limit");
        }
    }
}
