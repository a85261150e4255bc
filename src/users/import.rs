//! Reading an import file (CSV or a JSON array) into users to create.
//!
//! Pure: bytes in, users or errors out; the store writes. A file that cannot be parsed as a
//! whole is one error; otherwise every bad row is reported with its row number, and the
//! caller writes nothing unless every row is good.

use std::collections::HashMap;

use serde_json::Value;

use super::permissions::{from_import_value, parse_spec};
use super::store::NewUser;
use crate::auth::Permissions;

/// At most this many bad rows are named in the error; the rest are counted.
const MAX_ROWS_NAMED: usize = 10;

/// Fields of a JSON import object that `user list --json` prints and import ignores, so the
/// output of `list --json` on one router can be imported into another.
const LIST_ONLY_FIELDS: &[&str] = &[
    "key_prefix",
    "created_at",
    "updated_at",
    "permissions_error",
];

/// One user read from the file, with its row number: for CSV the line of the record in the
/// file (the header is row 1), for JSON the position in the array (the first object is
/// row 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    pub row: usize,
    pub user: NewUser,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The file as a whole is unusable (not CSV / JSON, wrong header, not an array).
    #[error("{0}")]
    File(String),
    /// Rows that are bad, each `row N: reason`.
    #[error("{}", rows_message(.0))]
    Rows(Vec<String>),
}

fn rows_message(rows: &[String]) -> String {
    let mut named: Vec<&str> = rows
        .iter()
        .take(MAX_ROWS_NAMED)
        .map(String::as_str)
        .collect();
    let more;
    if rows.len() > MAX_ROWS_NAMED {
        more = format!("and {} more bad rows", rows.len() - MAX_ROWS_NAMED);
        named.push(&more);
    }
    named.join("; ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

/// The format: by extension (`.csv`, `.json`, any case), else by content (a file starting
/// with `[` or `{` is JSON).
pub fn detect_format(file_name: &str, text: &str) -> Format {
    let lower = file_name.to_ascii_lowercase();
    let json = if lower.ends_with(".csv") {
        false
    } else {
        lower.ends_with(".json") || text.trim_start().starts_with(['[', '{'])
    };
    if json { Format::Json } else { Format::Csv }
}

/// Parses a whole import file. The usernames, emails and permissions of every row are
/// checked here, as are usernames repeated within the file.
pub fn parse(file_name: &str, bytes: &[u8]) -> Result<Vec<ImportRow>, ImportError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ImportError::File(format!("not UTF-8 text ({e})")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (rows, mut errors) = match detect_format(file_name, text) {
        Format::Csv => parse_csv(text)?,
        Format::Json => parse_json(text)?,
    };
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        if let Err(e) = row.user.validate() {
            errors.push((row.row, e.to_string()));
        }
        if let Some(first) = first_seen.insert(&row.user.username, row.row) {
            errors.push((
                row.row,
                format!(
                    "username {} already appears on row {first}",
                    super::names::quoted(&row.user.username)
                ),
            ));
            first_seen.insert(&row.user.username, first);
        }
    }
    if errors.is_empty() {
        return Ok(rows);
    }
    errors.sort_by_key(|(row, _)| *row);
    Err(ImportError::Rows(
        errors
            .into_iter()
            .map(|(row, reason)| format!("row {row}: {reason}"))
            .collect(),
    ))
}

type Parsed = (Vec<ImportRow>, Vec<(usize, String)>);

/// A blank line (nothing, or only spaces) is skipped. A row of separators with nothing
/// between them (`,,`) is a bad row like any other, named with its line: it is not blank, so
/// it was meant to hold a user (a spreadsheet export that lost its cells, say), and skipping
/// it would import fewer users than the file seems to list, with no word.
fn parse_csv(text: &str) -> Result<Parsed, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| ImportError::File(format!("cannot read the CSV header: {e}")))?
        .clone();
    if header.iter().all(str::is_empty) {
        return Err(ImportError::File(
            "empty file: expected a header line username,email[,permissions]".into(),
        ));
    }
    let mut columns: HashMap<String, usize> = HashMap::new();
    for (index, name) in header.iter().enumerate() {
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "username" | "email" | "permissions") {
            return Err(ImportError::File(format!(
                "unknown column {:?} in the header (expected username,email[,permissions])",
                crate::error::clip(&name, 80)
            )));
        }
        if columns.insert(name.clone(), index).is_some() {
            return Err(ImportError::File(format!(
                "column {name:?} appears twice in the header"
            )));
        }
    }
    for required in ["username", "email"] {
        if !columns.contains_key(required) {
            return Err(ImportError::File(format!(
                "the header has no {required:?} column (expected username,email[,permissions])"
            )));
        }
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ImportError::File(format!("not valid CSV: {e}")))?;
        let row = record.position().map_or(0, |p| line_of(text, p.byte()));
        if record.iter().all(str::is_empty) {
            if record.len() > 1 {
                errors.push((row, "every field is empty".to_owned()));
            }
            continue;
        }
        if record.len() != header.len() {
            errors.push((
                row,
                format!(
                    "{} field(s), but the header has {}",
                    record.len(),
                    header.len()
                ),
            ));
            continue;
        }
        let field = |name: &str| {
            columns
                .get(name)
                .and_then(|&i| record.get(i))
                .filter(|v| !v.is_empty())
        };
        let permissions = match field("permissions") {
            None => Ok(Permissions::All),
            Some(spec) => parse_spec(spec),
        };
        match permissions {
            Ok(permissions) => rows.push(ImportRow {
                row,
                user: NewUser {
                    username: field("username").unwrap_or_default().to_owned(),
                    email: field("email").map(str::to_owned),
                    permissions,
                },
            }),
            Err(e) => errors.push((row, e.to_string())),
        }
    }
    Ok((rows, errors))
}

/// The line a record starts on. The csv crate's position is where it began reading, before
/// the blank lines it skips (and its own line count does not count those), so blank lines
/// right after the position are counted here.
fn line_of(text: &str, byte: u64) -> usize {
    let start = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
    let (before, after) = text.as_bytes().split_at(start);
    let blank_lines = after
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .filter(|b| **b == b'\n')
        .count();
    1 + memchr::memchr_iter(b'\n', before).count() + blank_lines
}

fn parse_json(text: &str) -> Result<Parsed, ImportError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ImportError::File(format!("not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ImportError::File(format!(
            "expected a JSON array of users ([{{\"username\": ...}}, ...]), found {}",
            match value {
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )));
    };
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let row = index + 1;
        match json_user(item) {
            Ok(user) => rows.push(ImportRow { row, user }),
            Err(reason) => errors.push((row, reason)),
        }
    }
    Ok((rows, errors))
}

fn json_user(item: &Value) -> Result<NewUser, String> {
    let Value::Object(fields) = item else {
        return Err("expected an object with \"username\"".into());
    };
    if let Some(unknown) = fields.keys().find(|k| {
        !matches!(k.as_str(), "username" | "email" | "permissions")
            && !LIST_ONLY_FIELDS.contains(&k.as_str())
    }) {
        return Err(format!(
            "unknown field {:?} (expected username, email, permissions)",
            crate::error::clip(unknown, 80)
        ));
    }
    let username = match fields.get("username") {
        Some(Value::String(name)) => name.trim().to_owned(),
        Some(_) => return Err("\"username\" must be a string".into()),
        None => return Err("no \"username\"".into()),
    };
    let email = match fields.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if e.trim().is_empty() => None,
        Some(Value::String(e)) => Some(e.trim().to_owned()),
        Some(_) => return Err("\"email\" must be a string".into()),
    };
    let permissions = match fields.get("permissions") {
        None | Some(Value::Null) => Permissions::All,
        Some(value) => from_import_value(value).map_err(|e| e.to_string())?,
    };
    Ok(NewUser {
        username,
        email,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &[&str]) -> Permissions {
        Permissions::Only(names.iter().map(|n| (*n).to_owned()).collect())
    }

    fn rows_of(result: Result<Vec<ImportRow>, ImportError>) -> Vec<String> {
        match result {
            Err(ImportError::Rows(rows)) => rows,
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn csv_with_and_without_permissions() {
        let text = "\u{feff}username,email,permissions\nann,ann@example.com,\"a,b\"\nbob,,\n\n  \ncarl,carl@example.com,*\n";
        let rows = parse("users.csv", text.as_bytes()).expect("parse");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].row, 2);
        assert_eq!(rows[0].user.permissions, only(&["a", "b"]));
        assert_eq!(rows[1].user.email, None);
        assert_eq!(rows[1].user.permissions, Permissions::All);
        assert_eq!(rows[2].row, 6);
        let two = parse("u.csv", b"Email , Username\nx@example.com, x\n").expect("two columns");
        assert_eq!(two[0].user.username, "x");
    }

    #[test]
    fn csv_file_errors() {
        for (text, expected) in [
            ("username\nann\n", "no \"email\" column"),
            ("username,mail\nann,a@b.c\n", "unknown column \"mail\""),
            ("username,email,email\n", "appears twice"),
            ("", "empty file"),
        ] {
            match parse("u.csv", text.as_bytes()) {
                Err(ImportError::File(m)) => assert!(m.contains(expected), "{m}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("u.csv", b"\xff\xfe"),
            Err(ImportError::File(_))
        ));
    }

    #[test]
    fn csv_bad_rows_are_named() {
        let text = "username,email\nann,ann@example.com\nbob\n,x@example.com\ndan,nope\nann,a2@example.com\n";
        let rows = rows_of(parse("u.csv", text.as_bytes()));
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(rows[0].starts_with("row 3: 1 field(s)"), "{rows:?}");
        assert!(rows[1].starts_with("row 4: bad username"), "{rows:?}");
        assert!(rows[2].starts_with("row 5: bad email"), "{rows:?}");
        assert!(
            rows[3].starts_with("row 6: username \"ann\" already appears on row 2"),
            "{rows:?}"
        );
        // Separators with nothing between them are a row, not a blank line.
        let empty = rows_of(parse(
            "u.csv",
            b"username,email,permissions\nann,,\n,,\n\n , \t,\nbob,,\n",
        ));
        assert_eq!(
            empty,
            ["row 3: every field is empty", "row 5: every field is empty"]
        );
        let bad_permissions = rows_of(parse("u.csv", b"username,email,permissions\nann,,\",,\"\n"));
        assert!(
            bad_permissions[0].starts_with("row 2: "),
            "{bad_permissions:?}"
        );
    }

    #[test]
    fn json_array_in_every_accepted_form() {
        let text = r#"[
            {"username": "ann", "email": "ann@example.com", "permissions": "a,b"},
            {"username": "bob", "permissions": ["*"], "key_prefix": "sk-lr-AbCd", "created_at": "x"},
            {"username": "carl", "email": null, "permissions": {"a": true, "b": false}}
        ]"#;
        let rows = parse("users.json", text.as_bytes()).expect("parse");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].user.permissions, only(&["a", "b"]));
        assert_eq!(rows[1].user.permissions, Permissions::All);
        assert_eq!(rows[2].user.permissions, only(&["a"]));
        assert_eq!(rows[2].row, 3);
    }

    #[test]
    fn json_file_and_row_errors() {
        match parse("u.json", br#"{"username": "ann"}"#) {
            Err(ImportError::File(m)) => assert!(m.contains("found an object"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("u.json", b"[{\"username\": "),
            Err(ImportError::File(_))
        ));
        let rows = rows_of(parse(
            "u.json",
            br#"[{"username": "ann"}, {"email": "x@example.com"}, "bob", {"username": "c", "permisions": "*"}, {"username": "d", "permissions": ",,"}]"#,
        ));
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(rows[0].starts_with("row 2: no \"username\""));
        assert!(rows[1].starts_with("row 3: expected an object"));
        assert!(rows[2].starts_with("row 4: unknown field \"permisions\""));
        assert!(rows[3].starts_with("row 5: "));
    }

    #[test]
    fn format_by_extension_then_content() {
        assert_eq!(detect_format("U.CSV", "[]"), Format::Csv);
        assert_eq!(detect_format("u.json", "username"), Format::Json);
        assert_eq!(detect_format("users.txt", "  [{}]"), Format::Json);
        assert_eq!(detect_format("users.txt", "username,email"), Format::Csv);
    }

    #[test]
    fn many_bad_rows_are_counted_not_all_named() {
        let rows: Vec<String> = (1..=15).map(|i| format!("row {i}: x")).collect();
        let message = ImportError::Rows(rows).to_string();
        assert!(
            message.contains("row 10: x; and 5 more bad rows"),
            "{message}"
        );
        assert!(!message.contains("row 11"));
    }
}
