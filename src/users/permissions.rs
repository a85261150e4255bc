//! Per-provider permissions: the `--permissions "a,b" | "*"` syntax, and the JSON column the
//! Python version wrote (`{"alias": true}` or `{"*": true}`).
//!
//! Pure: no I/O. Reading is lenient with what an older database may hold, and fails closed:
//! anything that is not a clear grant grants nothing.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use crate::auth::Permissions;
use crate::config::is_valid_alias;

/// Why a permission list was refused. `Display` is the message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionsError {
    #[error("permissions are empty: give provider aliases (\"a,b\") or \"*\" for all")]
    Empty,
    #[error("permissions {spec:?} have an empty entry: give provider aliases (\"a,b\") or \"*\"")]
    EmptyEntry { spec: String },
    #[error("\"*\" (every provider) cannot be combined with aliases")]
    StarWithAliases,
    #[error(
        "{alias:?} is not a provider alias (letters, digits, '-', '_' and '.' only, as in config.yaml)"
    )]
    BadAlias { alias: String },
    #[error("permissions must be \"a,b\", \"*\", a list of aliases or {{\"alias\": true}}: {0}")]
    BadShape(String),
}

/// Parses the command line's `"a,b"` or `"*"`. Entries are trimmed; an empty entry
/// (`",,"`, `"a,"`) is an error rather than silently dropped, so a typo never narrows access
/// unnoticed.
pub fn parse_spec(spec: &str) -> Result<Permissions, PermissionsError> {
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(PermissionsError::Empty);
    }
    let entries: Vec<&str> = trimmed.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err(PermissionsError::EmptyEntry {
            spec: crate::error::clip(spec, 100),
        });
    }
    from_names(entries)
}

/// Builds permissions from alias names; `"*"` alone means every provider.
pub fn from_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Permissions, PermissionsError> {
    let mut aliases = HashSet::new();
    let mut star = false;
    for name in names {
        if name == "*" {
            star = true;
        } else if is_valid_alias(name) {
            aliases.insert(name.to_owned());
        } else {
            return Err(PermissionsError::BadAlias {
                alias: crate::error::clip(name, 100),
            });
        }
    }
    match (star, aliases.is_empty()) {
        (true, true) => Ok(Permissions::All),
        (true, false) => Err(PermissionsError::StarWithAliases),
        (false, true) => Err(PermissionsError::Empty),
        (false, false) => Ok(Permissions::Only(aliases)),
    }
}

/// Reads an import file's `permissions` value: a string as on the command line (empty: every
/// provider, as an empty CSV cell), a list of aliases (what `user list --json` prints), or
/// the stored object form. An empty list or object is a user with no provider, as a Python
/// database may hold (`{}`), so `user list --json` output imports back as it was.
pub fn from_import_value(value: &Value) -> Result<Permissions, PermissionsError> {
    match value {
        Value::String(spec) if spec.trim().is_empty() => Ok(Permissions::All),
        Value::String(spec) => parse_spec(spec),
        Value::Array(items) if items.is_empty() => Ok(Permissions::Only(HashSet::new())),
        Value::Object(map) if map.values().all(|grant| *grant == Value::Bool(false)) => {
            Ok(Permissions::Only(HashSet::new()))
        }
        Value::Array(items) => {
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let names = names.ok_or_else(|| {
                PermissionsError::BadShape("a list must hold alias strings only".into())
            })?;
            from_names(names)
        }
        Value::Object(map) => {
            let mut granted = Vec::new();
            for (name, grant) in map {
                match grant {
                    Value::Bool(true) => granted.push(name.as_str()),
                    Value::Bool(false) => {}
                    _ => {
                        return Err(PermissionsError::BadShape(format!(
                            "the value for {:?} must be true or false",
                            crate::error::clip(name, 100)
                        )));
                    }
                }
            }
            from_names(granted)
        }
        other => Err(PermissionsError::BadShape(format!(
            "found {}",
            json_kind(other)
        ))),
    }
}

/// The stored column, written as Python's `json.dumps` wrote it (`{"a": true, "b": true}`),
/// aliases sorted so the text is stable.
pub fn to_json(permissions: &Permissions) -> String {
    let names = names(permissions);
    let entries: Vec<String> = names
        .iter()
        .map(|name| {
            let quoted = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
            format!("{quoted}: true")
        })
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// Reads the stored column. `{"*": true}` grants everything; otherwise each alias whose value
/// is `true` is granted and anything else (`false`, `1`, `"yes"`) grants nothing. A list of
/// aliases is read as the same grant. Text that is not one of these is an error; the caller
/// then grants nothing.
pub fn from_json(text: &str) -> Result<Permissions, String> {
    // NULL or empty (the earliest Python table had no such column; see `db`): said as such,
    // not as the JSON parser's "EOF while parsing", which reads as a damaged file.
    if text.trim().is_empty() {
        return Err("empty: none was ever set (grant some with user modify)".to_owned());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let granted: Vec<&str> = match &value {
        Value::Object(map) => map
            .iter()
            .filter(|(_, grant)| **grant == Value::Bool(true))
            .map(|(name, _)| name.as_str())
            .collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        other => {
            return Err(format!(
                "expected a JSON object like {{\"alias\": true}}, found {}",
                json_kind(other)
            ));
        }
    };
    if granted.contains(&"*") {
        return Ok(Permissions::All);
    }
    // A blank name (`{"": true}`, what the Python version stored for `--permissions ""`)
    // names no provider: left out, so the user shows as granted none, which is what it is.
    Ok(Permissions::Only(
        granted
            .into_iter()
            .filter(|name| !name.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// The granted names, sorted; `["*"]` for every provider.
pub fn names(permissions: &Permissions) -> Vec<String> {
    match permissions {
        Permissions::All => vec!["*".to_owned()],
        Permissions::Only(aliases) => aliases
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

/// For people: `*` or `a, b`; `(none)` for a user who may use nothing.
pub fn display(permissions: &Permissions) -> String {
    let names = names(permissions);
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Aliases granted that `known` (config.yaml's servers) does not have, sorted.
pub fn unknown_aliases(permissions: &Permissions, known: &[String]) -> Vec<String> {
    names(permissions)
        .into_iter()
        .filter(|name| name != "*" && !known.contains(name))
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn only(names: &[&str]) -> Permissions {
        Permissions::Only(names.iter().map(|n| (*n).to_owned()).collect())
    }

    #[test]
    fn command_line_specs() {
        assert_eq!(parse_spec("*"), Ok(Permissions::All));
        assert_eq!(parse_spec(" * "), Ok(Permissions::All));
        assert_eq!(parse_spec("a,b"), Ok(only(&["a", "b"])));
        assert_eq!(parse_spec(" a , b.c-d_e "), Ok(only(&["a", "b.c-d_e"])));
        assert_eq!(parse_spec("a,a"), Ok(only(&["a"])));
        assert_eq!(parse_spec(""), Err(PermissionsError::Empty));
        assert!(matches!(
            parse_spec(",,"),
            Err(PermissionsError::EmptyEntry { .. })
        ));
        assert!(matches!(
            parse_spec("a,"),
            Err(PermissionsError::EmptyEntry { .. })
        ));
        assert_eq!(parse_spec("*,a"), Err(PermissionsError::StarWithAliases));
        assert!(matches!(
            parse_spec("open router"),
            Err(PermissionsError::BadAlias { .. })
        ));
        assert!(matches!(
            parse_spec("[a]"),
            Err(PermissionsError::BadAlias { .. })
        ));
    }

    #[test]
    fn stored_json_is_written_as_python_wrote_it() {
        assert_eq!(to_json(&Permissions::All), r#"{"*": true}"#);
        assert_eq!(to_json(&only(&["b", "a"])), r#"{"a": true, "b": true}"#);
    }

    #[test]
    fn stored_json_is_read_failing_closed() {
        assert_eq!(from_json(r#"{"*": true}"#), Ok(Permissions::All));
        assert_eq!(from_json(r#"{"*": false}"#), Ok(only(&[])));
        assert_eq!(
            from_json(r#"{"a": true, "b": false, "c": 1, "d": "yes"}"#),
            Ok(only(&["a"]))
        );
        assert_eq!(from_json(r#"{}"#), Ok(only(&[])));
        assert_eq!(from_json(r#"["a", "b"]"#), Ok(only(&["a", "b"])));
        assert_eq!(from_json(r#"["*"]"#), Ok(Permissions::All));
        assert!(from_json("not json").is_err());
        assert_eq!(
            from_json(" "),
            Err("empty: none was ever set (grant some with user modify)".to_owned())
        );
        assert!(from_json("true").is_err());
        // What we write, we read back.
        let p = only(&["x", "y"]);
        assert_eq!(from_json(&to_json(&p)), Ok(p));
    }

    #[test]
    fn import_values_in_every_form() {
        assert_eq!(from_import_value(&json!("a,b")), Ok(only(&["a", "b"])));
        assert_eq!(from_import_value(&json!(["*"])), Ok(Permissions::All));
        assert_eq!(
            from_import_value(&json!({"a": true, "b": false})),
            Ok(only(&["a"]))
        );
        assert!(from_import_value(&json!({"a": "yes"})).is_err());
        assert!(from_import_value(&json!([1])).is_err());
        assert!(from_import_value(&json!(7)).is_err());
        // Empty text is every provider (as an empty CSV cell); an empty list or object, or
        // one granting nothing, is no provider (as `list --json` prints such a user).
        assert_eq!(from_import_value(&json!(" ")), Ok(Permissions::All));
        assert_eq!(from_import_value(&json!([])), Ok(only(&[])));
        assert_eq!(from_import_value(&json!({})), Ok(only(&[])));
        assert_eq!(from_import_value(&json!({"a": false})), Ok(only(&[])));
    }

    #[test]
    fn names_display_and_unknown_aliases() {
        assert_eq!(display(&Permissions::All), "*");
        assert_eq!(display(&only(&["b", "a"])), "a, b");
        assert_eq!(display(&only(&[])), "(none)");
        for python_blank in [r#"{"": true}"#, r#"{" ": true, "a": true}"#, r#"[""]"#] {
            let read = from_json(python_blank).expect("read");
            let expected = if python_blank.contains("\"a\"") {
                "a"
            } else {
                "(none)"
            };
            assert_eq!(display(&read), expected, "{python_blank}");
        }
        let known = vec!["a".to_owned()];
        assert_eq!(unknown_aliases(&only(&["a", "z"]), &known), vec!["z"]);
        assert!(unknown_aliases(&Permissions::All, &known).is_empty());
    }
}
