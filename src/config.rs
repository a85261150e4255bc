//! config.yaml: the typed providers list and settings, `${ENV}` expansion, strict validation.
//!
//! Loading is all-or-nothing: a config either passes every check or start-up fails with one
//! message naming the file, the key path and what is wrong. Nothing here does network I/O, and
//! no error message ever contains an `api_key` value.

use std::env::VarError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::secret::Secret;

mod key_order;
mod merge_order;
mod python;

/// Default for `timeout_secs`: a whole non-stream request, or the idle gap inside a stream.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MODELS_CACHE_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_MODELS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The validated config. Servers keep the order of the file: rule 4 of routing ("the first
/// server whose model list holds the name") depends on it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub servers: IndexMap<String, Server>,
    pub settings: Settings,
    /// What was read but left out, each `key.path: why` (the caller names the file): said at
    /// start by `serve` and `check`, so a line of the file is never ignored in silence.
    pub warnings: Vec<String>,
}

/// One provider under `servers:`.
#[derive(Debug, Clone)]
pub struct Server {
    pub alias: String,
    /// Base URL as configured (trailing `/` trimmed); used as is, no `/v1` added.
    pub url: String,
    /// `url` parsed once, so a request builds its upstream URL without parsing one.
    pub base: url::Url,
    /// `None` when the config has no key (local servers): no Authorization is sent.
    pub api_key: Option<Secret>,
    /// `Authorization: Bearer <api_key>`, built once (marked sensitive) rather than formatted
    /// and validated on every request. Private, so a `Server` exists only as [`validate`]
    /// built it: `None` exactly when there is no key (or an empty one). A key no header can
    /// carry is a start-up error, never a request sent without its key.
    authorization: Option<HeaderValue>,
    pub filter: Option<String>,
    /// `Some`: this list replaces the upstream's model list; the upstream is not asked.
    pub override_models: Option<Vec<String>>,
    pub append: Vec<String>,
    /// Extra headers sent upstream; they win over forwarded client headers. Their values are
    /// marked sensitive (they often carry keys: Azure's `api-key`), so `Debug` hides them.
    /// Never framing or hop-by-hop fields (`Content-Length`, `Connection`, ...), nor one name
    /// twice in different case: [`validate`] refuses those.
    pub headers: HeaderMap,
    /// The values of `headers`, each in the forms an upstream may echo it
    /// ([`crate::secret::credential_forms`]), kept for redaction wherever a sink writes text
    /// and in the error bodies relayed to clients: all of them but those of the protocol
    /// fields [`carries_public_value`] names, and those too when written with a `${NAME}`
    /// (with each variable's value).
    pub header_secrets: Vec<Secret>,
    /// The credentials written into `url` (see [`url_secrets`]), for redaction as well.
    pub url_secrets: Vec<Secret>,
    pub timeout: Duration,
    pub stream_usage: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub models_cache_ttl: Duration,
    pub models_fetch_timeout: Duration,
    pub max_body_bytes: usize,
    pub default_server: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            models_cache_ttl: DEFAULT_MODELS_CACHE_TTL,
            models_fetch_timeout: DEFAULT_MODELS_FETCH_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            default_server: None,
        }
    }
}

impl Server {
    /// The `Authorization` value every request to this server carries (see the field).
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

impl Config {
    pub fn server(&self, alias: &str) -> Option<&Server> {
        self.servers.get(alias)
    }

    /// Every configured api key, for redaction in logs and traces.
    pub fn api_keys(&self) -> impl Iterator<Item = &Secret> {
        self.servers
            .values()
            .filter_map(|s| s.api_key.as_ref())
            .filter(|k| !k.is_empty())
    }

    /// Every configured secret: api keys, header values (see [`Server::header_secrets`]) and
    /// the credentials in a `url`. What must never be written anywhere, nor echoed back to a
    /// client.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.api_keys().chain(
            self.servers
                .values()
                .flat_map(|s| s.header_secrets.iter().chain(&s.url_secrets))
                .filter(|k| !k.is_empty()),
        )
    }
}

/// Why a config could not be loaded. `Display` is the one-line message for the user.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: file not found")]
    NotFound { file: PathBuf },
    #[error("{file}: cannot read: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    /// The key path and the reason are shown escaped ([`crate::printable`]): an alias or a
    /// header name is the file's text, and an escape sequence in it would reach the terminal.
    #[error("{file}: {}: {}", crate::printable(path), crate::printable(reason))]
    Invalid {
        file: PathBuf,
        /// Dotted key path, e.g. `servers.openrouter.url`; `(top level)` for the document.
        path: String,
        reason: String,
        /// The first problem of each other server that has one, then each problem of the
        /// `settings` (`(path, reason)`), for `check` and `serve` to say too, one line each:
        /// two servers' unset `${NAME}`s took two runs to learn of (bb58), and a settings
        /// problem was said only once every server was good.
        more: Vec<(String, String)>,
    },
}

impl ConfigError {
    /// Every problem said, one line each, as the error itself says the first.
    pub fn lines(&self) -> Vec<String> {
        let Self::Invalid { file, more, .. } = self else {
            return vec![self.to_string()];
        };
        std::iter::once(self.to_string())
            .chain(more.iter().map(|(path, reason)| {
                format!(
                    "{}: {}: {}",
                    file.display(),
                    crate::printable(path),
                    crate::printable(reason)
                )
            }))
            .collect()
    }
}

impl Config {
    /// Reads and validates `file`, expanding `${NAME}` with `env` (`std::env::var` in the
    /// binary: a value that is not UTF-8 is told apart from an unset one). A `${NAME}` for
    /// which `from_environment` is true may be read without quotes (see [`Config::parse_with`]);
    /// the others are taken as they are: a `.env` value was read by the `.env` reader, which
    /// took its quotes off already, and one left in (`V='"x"'`) is meant, as python-dotenv
    /// reads it.
    pub fn load(
        file: &Path,
        env: &EnvLookup<'_>,
        from_environment: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let text = Self::read(file)?;
        Self::parse_every_problem(&text, env, from_environment).map_err(|problems| {
            let ((path, reason), problems) = first_and_rest(problems);
            ConfigError::Invalid {
                file: file.to_owned(),
                path,
                reason,
                more: problems,
            }
        })
    }

    /// The provider aliases `file` defines, as written, without expanding `${NAME}` or
    /// checking the values: all the `user` commands need to know, and they must not depend
    /// on a provider's key variable being set where they run.
    pub fn aliases(file: &Path) -> Result<Vec<String>, ConfigError> {
        let text = Self::read(file)?;
        // `settings` is not read: a mistake there (an unknown key) is `serve`'s and `check`'s
        // to refuse, and no reason to leave the aliases unchecked.
        let raw = parse_yaml::<serde::de::IgnoredAny>(&text).map_err(|(path, reason)| {
            ConfigError::Invalid {
                file: file.to_owned(),
                path,
                reason,
                more: Vec::new(),
            }
        })?;
        Ok(raw
            .and_then(|raw| raw.servers)
            .map(|servers| servers.0.into_keys().collect())
            .unwrap_or_default())
    }

    fn read(file: &Path) -> Result<String, ConfigError> {
        let bytes = std::fs::read(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound {
                file: file.to_owned(),
            },
            _ => ConfigError::Unreadable {
                file: file.to_owned(),
                reason: e.to_string(),
            },
        })?;
        let unreadable = |reason| ConfigError::Unreadable {
            file: file.to_owned(),
            reason,
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(not_utf8(e.as_bytes(), e.utf8_error())))?;
        // UTF-16 or UTF-32 without a byte-order mark is valid UTF-8, with NULs beside every
        // ASCII letter.
        if let Some(at) = text.find('\0') {
            let line = text[..at].matches('\n').count() + 1;
            return Err(unreadable(format!(
                "line {line} holds a NUL byte (saved as UTF-16 or UTF-32?): save the file as UTF-8"
            )));
        }
        Ok(text)
    }

    /// Parses YAML text; the error is `(key path, reason)`. `env` gives each set variable.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, (String, String)> {
        Self::parse_with(text, &|name| env(name).ok_or(VarError::NotPresent))
    }

    /// [`Config::parse`], with an environment that can hold values that are not UTF-8.
    pub fn parse_with(text: &str, env: &EnvLookup<'_>) -> Result<Self, (String, String)> {
        Self::parse_unquoting(text, env, &|_| true)
    }

    /// [`Config::parse_with`], taking quotes off only the `${NAME}`s `unquotable` names.
    fn parse_unquoting(
        text: &str,
        env: &EnvLookup<'_>,
        unquotable: &dyn Fn(&str) -> bool,
    ) -> Result<Self, (String, String)> {
        Self::parse_every_problem(text, env, unquotable)
            .map_err(|problems| first_and_rest(problems).0)
    }

    /// [`Config::parse_unquoting`], giving the first problem of each server that has one,
    /// then the settings' problems (never none; see [`validate`]).
    fn parse_every_problem(
        text: &str,
        env: &EnvLookup<'_>,
        unquotable: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<Invalid>> {
        // A setting the YAML library refused is said after the servers' problems, not alone,
        // and the other settings are read one by one (see [`without_settings`]): they took
        // a second run to learn of.
        let (raw, unread_settings) = match parse_yaml(text) {
            Ok(raw) => (raw, Vec::new()),
            Err(problem) => without_settings(text, problem).map_err(|problem| vec![problem])?,
        };
        let Some(raw) = raw else {
            return match unread_settings.is_empty() {
                true => Ok(Self::default()),
                false => Err(unread_settings),
            };
        };
        // A `${NAME}` whose value is in quotes (`docker run --env-file` keeps a `.env`'s) is
        // read without them, with a warning naming it once: `api_key: "${K}"` went
        // upstream as `Bearer "sk-..."`, and `check` said ok.
        let quoted: std::cell::RefCell<Vec<String>> = std::cell::RefCell::default();
        // Past the file's bound, every variable reads as empty, and the file is refused for
        // that alone below: memory stays bounded whatever the problems it would have had.
        let expanded = std::cell::Cell::new(0usize);
        let unquoting = |name: &str| {
            let value = env(name)?;
            expanded.set(expanded.get().saturating_add(value.len()));
            if expanded.get() > MAX_EXPANDED_TOTAL_BYTES {
                return Ok(String::new());
            }
            if !unquotable(name) {
                return Ok(value);
            }
            let Some(inner) = crate::env::without_docker_quotes(&value) else {
                return Ok(value);
            };
            let mut quoted = quoted.borrow_mut();
            if !quoted.iter().any(|seen| seen == name) {
                quoted.push(name.to_owned());
            }
            Ok(inner.to_owned())
        };
        let validated = validate(raw, &unquoting);
        if expanded.get() > MAX_EXPANDED_TOTAL_BYTES {
            return Err(vec![(
                "(top level)".to_owned(),
                "the file's ${NAME}s expand to over 8 MiB in all (a variable used many times \
                 over?)"
                    .to_owned(),
            )]);
        }
        let validated = match (validated, unread_settings) {
            (validated, unread) if unread.is_empty() => validated,
            (Ok(_), unread) => Err(unread),
            (Err(mut problems), unread) => {
                problems.extend(unread);
                Err(problems)
            }
        };
        let mut config = validated.map_err(|mut problems| {
            settings_in_file_order(text, &mut problems);
            problems
        })?;
        config.warnings.extend(quoted.take().iter().map(|name| {
            format!(
                "${{{}}}: {}",
                shown_name(name),
                crate::env::READ_WITHOUT_QUOTES
            )
        }));
        Ok(config)
    }
}

/// Where `bytes` (config.yaml) stop being UTF-8, as the `.env` reader says it: by line, never
/// quoting the bytes (the line may hold a key). A file saved as UTF-16 (Windows editors
/// offer it as "Unicode") is named as such: its first bytes are already not UTF-8.
fn not_utf8(bytes: &[u8], error: std::str::Utf8Error) -> String {
    if starts_with_utf32_bom(bytes) {
        return "the file is UTF-32 text (it starts with a UTF-32 byte-order mark); save it as UTF-8"
            .to_owned();
    }
    if starts_with_utf16_bom(bytes) {
        return "the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
            .to_owned();
    }
    let valid = &bytes[..error.valid_up_to()];
    let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&valid[line_start..])
        .chars()
        .count()
        + 1;
    format!(
        "line {line}, column {column} is not UTF-8 text (saved as Latin-1 or another encoding?): save the file as UTF-8"
    )
}

/// Whether `bytes` begin with a UTF-32 byte-order mark (little- or big-endian;
/// `Out-File -Encoding utf32`). Checked before [`starts_with_utf16_bom`]: the little-endian
/// one begins with UTF-16's.
pub(crate) fn starts_with_utf32_bom(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xFE, 0, 0]) || bytes.starts_with(&[0, 0, 0xFE, 0xFF])
}

/// Whether `bytes` begin with a UTF-16 byte-order mark (little- or big-endian): a file saved
/// as UTF-16, as Windows editors ("Unicode") and PowerShell 5's `>` write it.
pub(crate) fn starts_with_utf16_bom(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF])
}

/// An environment variable by name, as `std::env::var` gives it.
pub type EnvLookup<'a> = dyn Fn(&str) -> Result<String, VarError> + 'a;

// ---- raw, as written in the file ---------------------------------------------------------

/// The file as written. `S` is [`RawSettings`], or, for a file whose `settings` the YAML
/// library refused ([`without_settings`]), [`serde::de::IgnoredAny`] to read its servers,
/// [`SettingsKeys`] and [`OnlySetting`] to read its settings one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "S: Deserialize<'de>")]
struct RawConfig<S = RawSettings> {
    #[serde(default)]
    servers: Option<Entries<RawServer>>,
    #[serde(default)]
    settings: Option<S>,
    /// How each key written with a tag is spelled ([`merge_order::TaggedKeys`]), to say it so.
    #[serde(skip)]
    tagged_keys: merge_order::TaggedKeys,
    /// How each number or boolean key's value is written ([`merge_order::Forms`]), to read it
    /// as the Python version did.
    #[serde(skip)]
    forms: merge_order::Forms,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: Option<String>,
    #[serde(default)]
    api_key: Option<Scalar>,
    #[serde(default)]
    filter: Option<Scalar>,
    #[serde(default, rename = "override")]
    override_models: Option<Vec<Scalar>>,
    #[serde(default)]
    append: Option<Vec<Scalar>>,
    #[serde(default)]
    headers: Option<Entries<Located>>,
    #[serde(default)]
    timeout_secs: Option<Typed>,
    #[serde(default)]
    stream_usage: Option<Typed>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    models_cache_ttl_secs: Option<Typed>,
    #[serde(default)]
    models_fetch_timeout_secs: Option<Typed>,
    #[serde(default)]
    max_body_bytes: Option<Typed>,
    #[serde(default)]
    default_server: Option<String>,
}

/// The keys of `settings`, as [`RawSettings`] names them.
const SETTINGS: [&str; 4] = [
    "models_cache_ttl_secs",
    "models_fetch_timeout_secs",
    "max_body_bytes",
    "default_server",
];

impl RawSettings {
    /// Takes each setting `other` holds that `self` does not.
    fn fill(&mut self, other: Self) {
        self.models_cache_ttl_secs = self
            .models_cache_ttl_secs
            .take()
            .or(other.models_cache_ttl_secs);
        self.models_fetch_timeout_secs = self
            .models_fetch_timeout_secs
            .take()
            .or(other.models_fetch_timeout_secs);
        self.max_body_bytes = self.max_body_bytes.take().or(other.max_body_bytes);
        self.default_server = self.default_server.take().or(other.default_server);
    }
}

/// `settings` with only the key `SETTINGS[K]` read, as [`RawSettings`] reads it; every other
/// key is passed over, known or not ([`settings_apart`]). The first of two keys of one name
/// (one merged in by `<<`) is read, as the YAML library gives it first.
struct OnlySetting<const K: usize>(RawSettings);

impl<'de, const K: usize> Deserialize<'de> for OnlySetting<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<const K: usize>;
        impl<'de, const K: usize> serde::de::Visitor<'de> for Visit<K> {
            type Value = OnlySetting<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut raw = RawSettings::default();
                let mut read = false;
                while let Some(key) = map.next_key::<AnyKey>()? {
                    let this = matches!(&key, AnyKey::Name(name) if SETTINGS.get(K) == Some(&name.as_str()));
                    if read || !this {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    read = true;
                    match K {
                        0 => raw.models_cache_ttl_secs = map.next_value()?,
                        1 => raw.models_fetch_timeout_secs = map.next_value()?,
                        2 => raw.max_body_bytes = map.next_value()?,
                        _ => raw.default_server = map.next_value()?,
                    }
                }
                Ok(OnlySetting(raw))
            }
        }
        d.deserialize_map(Visit::<K>)
    }
}

/// A key of `settings` of whatever shape it is written: a setting's name, or an odd key
/// (`null:`, `[k]:`, `1:`) that names no setting. Read as a name (`String`), a `null:` or
/// `[k]:` stopped the reading of `settings`, hiding every other setting's mistake.
#[derive(Debug, PartialEq)]
enum AnyKey {
    /// Text, as written.
    Name(String),
    /// A number or boolean, as the YAML library gives it (`0x1F` as `31`): [`settings_keys`]
    /// makes it a [`AnyKey::Name`] of its text as written.
    Scalar(String),
    /// `null:`, `~:` or a `:` with no key before it.
    Null,
    /// `[k]:`.
    List,
    /// `{k: v}:`.
    Mapping,
}

impl<'de> Deserialize<'de> for AnyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = AnyKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AnyKey, E> {
                Ok(AnyKey::Name(v.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AnyKey, E> {
                Ok(AnyKey::Scalar(v.to_string()))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<AnyKey, E> {
                Ok(AnyKey::Name(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<AnyKey, E> {
                Ok(AnyKey::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<AnyKey, E> {
                Ok(AnyKey::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AnyKey, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(AnyKey::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AnyKey, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(AnyKey::Mapping)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The keys of `settings`, each with where it is written, in the order the YAML library
/// gives them (those written, then those merged in by `<<`), each name once.
struct SettingsKeys(Vec<serde_saphyr::Spanned<AnyKey>>);

impl<'de> Deserialize<'de> for SettingsKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SettingsKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys: Vec<serde_saphyr::Spanned<AnyKey>> = Vec::new();
                while let Some(key) = map.next_key::<serde_saphyr::Spanned<AnyKey>>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    // Two lists or mappings as keys are two odd keys, each said.
                    let kept = matches!(key.value, AnyKey::List | AnyKey::Mapping)
                        || !keys.iter().any(|seen| seen.value == key.value);
                    if kept {
                        keys.push(key);
                    }
                }
                Ok(SettingsKeys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A mapping of names to values (aliases to servers, header names to values), in the order the
/// YAML library gives its entries: those written in the mapping, then those merged in by `<<`,
/// the winning merge first (the servers are then put in PyYAML's order, [`parse_yaml`]). Of two
/// entries whose names are the same text, the first is kept:
/// `123:` and `'123':` are two keys to YAML (a number and a text), so the library passes
/// both, and a plain map kept the last, so a merged `<<: {123: ...}` replaced a written
/// `'123':` (written keys win over every merge) and the losing merge replaced the winning one.
/// Two written in the mapping itself never get here: [`merge_order`] refuses them, with both
/// lines.
struct Entries<V>(IndexMap<String, V>);

impl<V> Entries<V> {
    /// Puts the entries named in `order` first, in that order; the others keep theirs after.
    fn put_in_order(&mut self, order: &[String]) {
        let mut rest = std::mem::take(&mut self.0);
        let mut ordered = IndexMap::with_capacity(rest.len());
        for name in order {
            if let Some((name, value)) = rest.shift_remove_entry(name) {
                ordered.insert(name, value);
            }
        }
        ordered.extend(rest);
        self.0 = ordered;
    }
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self(IndexMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = IndexMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if entries.contains_key(&name) {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    entries.insert(name, map.next_value()?);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A YAML scalar taken as its literal text, as written: `X-Retry: 3` or `override: [1234]`
/// mean the string, which is what a user writing them expects, and `api_key: 0123456789`,
/// `1234e12` or `1.10` keep every character (read as a number first, they lost their
/// leading zero, were expanded, or lost digits). PyYAML kept such text too. Lists,
/// mappings and `null` are refused.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Scalar)
    }
}

/// A number or boolean key's scalar as written, plain or quoted, with where it is. It is read
/// as its type only after `${NAME}` is expanded ([`typed`]), so `timeout_secs: "${T}"` works
/// as `${NAME}` does in a text key; before, it was "expected a number".
type Typed = serde_saphyr::Spanned<Scalar>;

/// A scalar with where it is used and where it is written, which differ for one merged in by
/// `<<` (see [`written_here`]).
type Located = serde_saphyr::Spanned<Scalar>;

/// The YAML library's options: the file's, and each [`Typed`] value's.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // A snippet of the file could show an api_key next to the error; never print one.
    options.with_snippet = false;
    // A value passed over unread ([`serde::de::IgnoredAny`], when the settings are read one
    // by one, [`without_settings`]) must not be refused for being `.inf`, `.nan` or `1e400`:
    // the library refused the whole file then, and a `models_cache_ttl_secs: .inf` beside a
    // `default_server: [a]` hid every other mistake. Every number key is read as its type
    // from its text ([`typed`]), which says a non-finite value out of range.
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    options
}

/// The file read when `problem` (the YAML library's refusal of the whole file) is in its
/// `settings` (`default_server: [a]`, an unknown key, `settings: 5`) and the rest reads
/// without them: the servers as written, and each setting read apart ([`settings_apart`]),
/// with the problem of each the library refuses, so every mistake is said in the same run.
/// `Err(problem)` otherwise (a mistake in the YAML itself, or another one past `settings`):
/// then `problem` is said alone.
fn without_settings(
    text: &str,
    problem: Invalid,
) -> Result<(Option<RawConfig>, Vec<Invalid>), Invalid> {
    let path = problem.0.as_str();
    if path != "settings" && !path.starts_with("settings.") {
        return Err(problem);
    }
    let Ok(raw) = parse_yaml::<serde::de::IgnoredAny>(text) else {
        return Err(problem);
    };
    let (settings, problems) = settings_apart(text).unwrap_or((None, vec![problem]));
    Ok((
        raw.map(|raw| RawConfig {
            servers: raw.servers,
            settings,
            tagged_keys: raw.tagged_keys,
            forms: raw.forms,
        }),
        problems,
    ))
}

/// `settings` read one key at a time, each known one as its type with the others passed over
/// ([`OnlySetting`]): the YAML library stops at the first value it refuses, and a
/// `default_server: [a]` hid a `max_body_bytes: abc` below it (and an unknown key every
/// setting after it). Gives what was read and the problem of each key the library refused
/// or does not know (an odd one such as `null:` too), in the order written; `None` when
/// `settings` is no mapping (`settings: 5`): its own problem is then the only one.
fn settings_apart(text: &str) -> Option<(Option<RawSettings>, Vec<Invalid>)> {
    let keys = settings_keys(text)?;
    let mut settings = RawSettings::default();
    let mut problems = Vec::new();
    for key in keys {
        let known = match &key.value {
            AnyKey::Name(name) => SETTINGS.iter().position(|known| known == name),
            _ => None,
        };
        let read = match known {
            Some(0) => only_setting::<0>(text),
            Some(1) => only_setting::<1>(text),
            Some(2) => only_setting::<2>(text),
            Some(_) => only_setting::<3>(text),
            None => {
                problems.push(unknown_setting(&key));
                continue;
            }
        };
        match read {
            Ok(read) => settings.fill(read),
            Err(problem) => problems.push(problem),
        }
    }
    Some((Some(settings), problems))
}

/// The keys of the file's `settings` ([`SettingsKeys`]), a number or boolean one named as it
/// is written (`0x1F`, not the library's `31`), as the YAML library names it when it refuses
/// it. `None` when the file has no `settings` mapping.
fn settings_keys(text: &str) -> Option<Vec<serde_saphyr::Spanned<AnyKey>>> {
    let mut keys = parse_yaml::<SettingsKeys>(text).ok()??.settings?.0;
    for key in &mut keys {
        if let AnyKey::Scalar(given) = &key.value {
            let written = written_at(text, key.defined).unwrap_or_else(|| given.clone());
            key.value = AnyKey::Name(written);
        }
    }
    Some(keys)
}

/// The plain scalar of `text` at `at` (its line, column and length in characters), when
/// there is one there.
fn written_at(text: &str, at: serde_saphyr::Location) -> Option<String> {
    let line = text
        .lines()
        .nth(usize::try_from(at.line()).ok()?.checked_sub(1)?)?;
    let start = usize::try_from(at.column()).ok()?.checked_sub(1)?;
    let len = usize::try_from(at.span().len()).ok()?;
    let written: String = line.chars().skip(start).take(len).collect();
    let plain = !written.is_empty()
        && written.chars().count() == len
        && !written.contains([':', ',', '{', '}', '[', ']', '#', '\'', '"', '*', '&', '!']);
    plain.then_some(written)
}

/// The setting `SETTINGS[K]` of the file, read alone ([`OnlySetting`]).
fn only_setting<const K: usize>(text: &str) -> Result<RawSettings, Invalid> {
    let raw = parse_yaml::<OnlySetting<K>>(text)?;
    Ok(raw
        .and_then(|raw| raw.settings)
        .map(|OnlySetting(read)| read)
        .unwrap_or_default())
}

/// Puts the settings' problems (the last of `problems`, after the servers') in the order their
/// keys are written, as the servers' are said in the order of the servers: they were said
/// in [`RawSettings`]' order, `max_body_bytes` before a `default_server` written above it.
/// A problem of a key not found keeps its place after the others; one of a key merged in by
/// `<<` is put where the `<<` is, as its message says.
fn settings_in_file_order(text: &str, problems: &mut [Invalid]) {
    let is_setting = |(path, _): &Invalid| path == "settings" || path.starts_with("settings.");
    let first = problems
        .iter()
        .position(is_setting)
        .unwrap_or(problems.len());
    let settings = &mut problems[first..];
    if settings.len() < 2 {
        return;
    }
    let Some(keys) = settings_keys(text) else {
        return;
    };
    // Where the key is used: for one merged in by `<<`, the `<<`'s value (`<<: *base` or
    // `<<: {...}`), the line its message names; it was put after every key written.
    let at = |key: &serde_saphyr::Spanned<AnyKey>| (key.referenced.line(), key.referenced.column());
    // The problems of odd keys (`null:`, `[k]:`) are all of `settings` itself, said in the
    // order of those keys ([`settings_apart`]): each takes the next one's place.
    let mut odd = keys
        .iter()
        .filter(|key| !matches!(key.value, AnyKey::Name(_)))
        .map(at);
    let mut place = |(path, _): &Invalid| {
        let Some(key) = path.strip_prefix("settings.") else {
            return odd.next().unwrap_or((u64::MAX, u64::MAX));
        };
        keys.iter()
            .find(|written| {
                let AnyKey::Name(name) = &written.value else {
                    return false;
                };
                key.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
            .map_or((u64::MAX, u64::MAX), at)
    };
    let mut placed: Vec<_> = settings
        .iter_mut()
        .map(|problem| (place(problem), std::mem::take(problem)))
        .collect();
    placed.sort_by_key(|(place, _)| *place);
    for (slot, (_, problem)) in settings.iter_mut().zip(placed) {
        *slot = problem;
    }
}

/// A key under `settings` that is none of [`SETTINGS`], said as the YAML library said it
/// when it refused the file for it; an odd key (`null:`, `[k]:`), which the library said as
/// a null or a list where a value is needed, as the key it is.
fn unknown_setting(key: &serde_saphyr::Spanned<AnyKey>) -> Invalid {
    let at = key.referenced;
    let expected = SETTINGS.join(", ");
    let (line, column) = (at.line(), at.column());
    let odd = match &key.value {
        AnyKey::Name(name) | AnyKey::Scalar(name) => {
            return invalid(
                format!("settings.{name}"),
                format!(
                    "unknown field `{name}`, expected one of {expected} at line {line}, column {column}"
                ),
            );
        }
        AnyKey::Null => "a null key (`null:`, `~:` or no key before the `:`)",
        AnyKey::List => "a list as a key (`[k]:`)",
        AnyKey::Mapping => "a mapping as a key (`{k: v}:`)",
    };
    invalid(
        "settings",
        format!("{odd}, expected one of {expected} at line {line}, column {column}"),
    )
}

/// Reads the file, its servers in PyYAML's order (see [`key_order`]).
fn parse_yaml<S: DeserializeOwned>(text: &str) -> Result<Option<RawConfig<S>>, (String, String)> {
    let mut raw = read_yaml(text)?;
    let servers = raw.as_mut().and_then(|raw| raw.servers.as_mut());
    if let Some(servers) = servers.filter(|_| text.contains("<<")) {
        if let Some(order) = key_order::servers_in_pyyaml_order(text) {
            servers.put_in_order(&order);
        }
    }
    Ok(raw)
}

fn read_yaml<S: DeserializeOwned>(text: &str) -> Result<Option<RawConfig<S>>, (String, String)> {
    let merge_order::Read {
        text,
        tagged,
        forms,
    } = merge_order::read(text)?;
    let text = &*text;
    let options = yaml_options();
    let mut inner_path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<RawConfig<S>>>(de).map_err(|e| {
            inner_path = Some(key_path(e.path()));
            e.into_inner()
        })
    });
    let result = result.map(|raw| {
        raw.map(|raw| RawConfig {
            tagged_keys: tagged,
            forms,
            ..raw
        })
    });
    result.map_err(|e| {
        // `?` is a key the path could not name (an alias as a key, `*k:`): the mapping is
        // what is named, and at the top that is the document.
        let path = match inner_path.as_deref().map(|p| p.trim_end_matches(".?")) {
            None | Some("" | "." | "?") => "(top level)".to_owned(),
            Some(p) => p.to_owned(),
        };
        let message = first_line(&e.to_string());
        let mut reason = in_plain_words(&message);
        if message.starts_with("cannot deserialize tagged scalar") {
            reason = tag_on_a_typed_key(&path, &message).unwrap_or(reason);
        }
        if let Some(loc) = e.location() {
            if let Some(key) = duplicate_key(&message) {
                reason = twice(text, key, loc.line() as usize, loc.column() as usize);
            } else if !reason.contains("line ") {
                reason = format!("{reason} (line {}, column {})", loc.line(), loc.column());
            }
        }
        (path, reason)
    })
}

/// The dotted key path of `path`, without the field a [`Typed`] or [`Located`] value adds
/// inside its key (`timeout_secs.value`, `headers.X-Title.value`: the YAML library's span
/// wrapper is a struct to serde).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let wrapped = match segments.as_slice() {
        [.., Segment::Map { key }, Segment::Map { key: last }]
            if last == "value" && TYPED_KEYS.contains(&key.as_str()) =>
        {
            true
        }
        [
            ..,
            Segment::Map { key },
            Segment::Map { .. },
            Segment::Map { key: last },
        ] => last == "value" && key == "headers",
        _ => false,
    };
    if wrapped {
        let text = path.to_string();
        return text[..text.len() - ".value".len()].to_owned();
    }
    path.to_string()
}

/// A tag refused on a number or boolean key's value (`timeout_secs: !!binary NQ==`), said as
/// what the key takes: it was said as "where text is expected". `!!int` and `!!float` on a
/// number key, and on `stream_usage` `!!bool` on a boolean and `!!int` or `!!float` on a
/// number, are taken off before the library reads the file, as PyYAML and pydantic took them
/// ([`merge_order`]).
fn tag_on_a_typed_key(path: &str, message: &str) -> Option<String> {
    let key = path.rsplit('.').next()?;
    if !TYPED_KEYS.contains(&key) {
        return None;
    }
    let expected = if key == "stream_usage" {
        "true or false"
    } else {
        "a number"
    };
    let at = message.rfind(" at line ").map_or("", |at| &message[at..]);
    Some(format!(
        "a tagged value where {expected} is expected: write the value without its tag{at}"
    ))
}

/// The keys whose values are [`Typed`].
const TYPED_KEYS: [&str; 5] = [
    "timeout_secs",
    "stream_usage",
    "models_cache_ttl_secs",
    "models_fetch_timeout_secs",
    "max_body_bytes",
];

/// The key of the YAML library's duplicate-key message.
fn duplicate_key(message: &str) -> Option<&str> {
    message
        .strip_prefix("duplicate mapping key: ")
        .and_then(|rest| rest.split(", set DuplicateKeyPolicy").next())
}

/// A key written twice in one mapping, said with both lines. Refused, where PyYAML took the
/// last one: a second `a:` under `servers:` is most often a pasted block meant under
/// another name, and taking the last would silently drop the first server.
/// A key of the same text twice, or two spellings of one integer (`0x1F` and `31`), is
/// refused before the library reads the file ([`merge_order`], with exact lines); this says
/// the library's other refusals of one YAML value twice (an alias `*k` as a key), finding
/// the first line in the text.
fn twice(text: &str, key: &str, line: usize, column: usize) -> String {
    let first = earlier_line_of_key(text, key, line, column);
    written_twice(key, None, first, line, column)
}

/// What is said of `key` written twice in one mapping: first at line `first` (when known),
/// again at `line`, `column` (1-based). `spellings` are the two as written, when they differ
/// (`123` and `'123'`: a number and a text to YAML, one alias to the router).
fn written_twice(
    key: &str,
    spellings: Option<(&str, &str)>,
    first: Option<usize>,
    line: usize,
    column: usize,
) -> String {
    let twice = match spellings {
        Some((one, two)) if one != two => format!("twice (as {one} and {two})"),
        _ => "twice".to_owned(),
    };
    match first {
        Some(first) if first < line => format!(
            "the key {key} appears {twice}, at line {first} and again at line {line}, column {column}; keep one"
        ),
        Some(_) => format!("the key {key} appears {twice} on line {line}; keep one"),
        None => format!(
            "the key {key} appears {twice} (again at line {line}, column {column}); keep one"
        ),
    }
}

/// Where `key` (which appears again at `line`, `column`, both 1-based) was first written in
/// the same mapping: earlier on the same line (a `{flow: mapping}`), or on an earlier line at
/// the same indentation, before a line that starts further left (which ends that mapping).
fn earlier_line_of_key(text: &str, key: &str, line: usize, column: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let at = line.checked_sub(1)?;
    let here = lines.get(at)?;
    let before_key = here
        .char_indices()
        .nth(column.checked_sub(1)?)
        .map_or(here.len(), |(i, _)| i);
    if here[..before_key]
        .split([',', '{'])
        .skip(1)
        .any(|piece| starts_with_key(piece.trim_start(), key))
    {
        return Some(line);
    }
    let indent = column - 1;
    for (index, earlier) in lines[..at].iter().enumerate().rev() {
        let trimmed = earlier.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this_indent = earlier.chars().count() - trimmed.chars().count();
        if this_indent < indent {
            return None;
        }
        if this_indent == indent && starts_with_key(trimmed, key) {
            return Some(index + 1);
        }
    }
    None
}

/// Whether `text` starts with `key:`, the key plain or quoted.
fn starts_with_key(text: &str, key: &str) -> bool {
    [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .filter_map(|written| text.strip_prefix(written.as_str()))
        .any(|rest| rest.trim_start().starts_with(':'))
}

/// The YAML library's messages that speak to its programmer ("set DuplicateKeyPolicy in
/// Options", "use Option<String>"), said for the person editing config.yaml. Others pass as
/// they are; the location (" at line N, column M", or for a value reached through an alias
/// " (defined at line N, column M) (used at line ...)") is kept.
fn in_plain_words(reason: &str) -> String {
    let at = [" (defined at line ", " (used at line "]
        .iter()
        .filter_map(|suffix| reason.find(suffix))
        .min()
        .or_else(|| reason.rfind(" at line "));
    let (message, location) = match at {
        Some(at) => reason.split_at(at),
        None => (reason, ""),
    };
    let plain = if let Some(key) = duplicate_key(message) {
        format!("the key {key} appears twice")
    } else if message.starts_with("multiple YAML documents detected") {
        "more than one YAML document (a `---` line in the middle); keep one".to_owned()
    } else if message.starts_with("cannot deserialize null into") {
        "empty (null) where a value is needed".to_owned()
    } else if message == "expected string scalar" {
        "expected one value (text or a number), not a list or a mapping".to_owned()
    } else if message == "expected mapping start" {
        "expected a mapping (indented `key: value` lines)".to_owned()
    } else if message == "expected sequence start" {
        "expected a list (`- item` lines, or `[a, b]`)".to_owned()
    } else if message == "invalid u64" {
        WHOLE_NUMBER.to_owned()
    } else if message == "invalid floating point" || message == "invalid f64" {
        NUMBER.to_owned()
    } else if message == "invalid boolean" || message == "invalid bool" {
        BOOLEAN.to_owned()
    } else if message.starts_with("non-finite float") {
        // The message quotes the value; a number is all that is wanted here anyway.
        "expected a finite number (not .inf or .nan)".to_owned()
    } else if message.starts_with("cannot deserialize tagged scalar") {
        "a tagged value (`!!int`, `!!float`, ...) where text is expected: remove the tag".to_owned()
    } else if message.starts_with("!!binary scalar is not valid UTF-8") {
        "a `!!binary` value that is not UTF-8 text once decoded, where text is expected: \
         write the text itself"
            .to_owned()
    } else if let Some(breach) = message.strip_prefix("budget breached: ") {
        over_budget(breach)
    } else {
        message.to_owned()
    };
    format!("{plain}{location}")
}

/// The YAML library's "budget breached: Nodes { nodes: 250001 }" (its limits on what one
/// file may expand to, against alias bombs), said as what was too much.
fn over_budget(breach: &str) -> String {
    let kind = breach.split([' ', '{']).next().unwrap_or(breach);
    let count: String = breach
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let (what, through_aliases) = match kind {
        "Nodes" => ("values", true),
        "Events" => ("parser events", true),
        "ScalarBytes" => ("bytes of text", true),
        "Aliases" => ("aliases (`*name`)", false),
        "Anchors" => ("anchors (`&name`)", false),
        "Depth" => ("levels of nesting", false),
        "Documents" => ("documents", false),
        "MergeKeys" => ("merge keys (`<<`)", false),
        _ => ("", true),
    };
    let note = if through_aliases {
        " (an alias `*name` counts again all it stands for)"
    } else {
        ""
    };
    if what.is_empty() || count.is_empty() {
        return format!("more than the YAML reader reads in one file{note}");
    }
    format!("more than the YAML reader reads in one file: {count} {what}, past its limit{note}")
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .to_owned()
}

// ---- validation --------------------------------------------------------------------------

type Invalid = (String, String);

/// The first of `problems` and the others. [`Config::parse_every_problem`] gives one at least;
/// were it to give none, the file is refused all the same.
fn first_and_rest(problems: Vec<Invalid>) -> (Invalid, Vec<Invalid>) {
    let mut problems = problems.into_iter();
    let first = problems.next().unwrap_or_else(|| {
        (
            "(top level)".to_owned(),
            "not a configuration llmsrouter can use".to_owned(),
        )
    });
    (first, problems.collect())
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Invalid {
    (path.into(), reason.into())
}

/// `Err` holds the first problem of each server that has one, in the file's order (each
/// server is judged apart), then the problem of each setting that has one: a settings
/// problem used to be said only once every server was good, a second run. Never empty.
fn validate(raw: RawConfig, env: &EnvLookup<'_>) -> Result<Config, Vec<Invalid>> {
    let raw_servers = raw.servers.unwrap_or_default().0;
    let aliases: Vec<String> = raw_servers.keys().cloned().collect();
    let mut servers = IndexMap::new();
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    for (alias, raw_server) in raw_servers {
        let written = Written {
            tagged_keys: &raw.tagged_keys,
            forms: &raw.forms,
        };
        match validate_server(&alias, raw_server, env, written, &mut warnings) {
            Ok(server) => {
                servers.insert(alias, server);
            }
            Err(problem) => problems.push(problem),
        }
    }
    let settings = validate_settings(raw.settings, &aliases, env, &raw.forms);
    match settings {
        Ok(settings) if problems.is_empty() => Ok(Config {
            servers,
            settings,
            warnings,
        }),
        Ok(_) => Err(problems),
        Err(settings_problems) => {
            problems.extend(settings_problems);
            Err(problems)
        }
    }
}

/// Aliases appear inside `[...]` in model names and in permission lists; brackets, spaces and
/// commas would make those ambiguous. Letters and digits of any script are letters and digits
/// (`火山`, as a Chinese config names its provider).
pub fn is_valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && alias
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How the file spells what the YAML library reads into values: keys written with a tag, and
/// the number and boolean keys' values ([`merge_order::read`]).
#[derive(Clone, Copy)]
struct Written<'a> {
    tagged_keys: &'a merge_order::TaggedKeys,
    forms: &'a merge_order::Forms,
}

fn validate_server(
    alias: &str,
    raw: RawServer,
    env: &EnvLookup<'_>,
    written: Written<'_>,
    warnings: &mut Vec<String>,
) -> Result<Server, Invalid> {
    let Written { tagged_keys, forms } = written;
    let at = |key: &str| format!("servers.{alias}.{key}");
    if alias.is_empty() {
        return Err(invalid(
            "servers.\"\"",
            "an alias is empty: name the server",
        ));
    }
    if !is_valid_alias(alias) {
        return Err(invalid(
            format!("servers.{alias}"),
            "an alias may contain only letters, digits, '-', '_' and '.' (no brackets or spaces)",
        ));
    }
    let Some(url) = raw.url else {
        return Err(invalid(at("url"), "missing: every server needs a url"));
    };
    let url = expand_env(&url, &at("url"), env)?;
    let url = validate_base_url(&url).map_err(|reason| invalid(at("url"), reason))?;
    let base = url::Url::parse(&url).map_err(|e| invalid(at("url"), e.to_string()))?;
    if let Some(warning) = no_path(&base) {
        warnings.push(format!("{}: {warning}", at("url")));
    }
    let url_secrets = url_secrets(&base);

    let api_key = raw
        .api_key
        .map(|k| expand_env(&k.0, &at("api_key"), env).map(Secret::new))
        .transpose()?;
    let filter = raw
        .filter
        .map(|f| expand_env(&f.0, &at("filter"), env))
        .transpose()?;
    let override_models = raw
        .override_models
        .map(|list| expand_list(list, &at("override"), env))
        .transpose()?;
    let append = raw
        .append
        .map(|list| expand_list(list, &at("append"), env))
        .transpose()?
        .unwrap_or_default();

    let mut headers = HeaderMap::new();
    let mut header_secrets = Vec::new();
    // Each name as first written (with its tag: `!!str X-A`), to say both spellings of one
    // written twice; `X-A` and `!!str x-a` were said "X-A" and "x-a".
    let mut written: Vec<(HeaderName, String, String)> = Vec::new();
    let raw_headers: Vec<(String, Located)> =
        raw.headers.unwrap_or_default().0.into_iter().collect();
    let here = written_here(&raw_headers);
    for (index, (name, value)) in raw_headers.into_iter().enumerate() {
        let path = format!("servers.{alias}.headers.{name}");
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(&path, "not a valid HTTP header name"))?;
        let spelled = tagged_keys.get(&path).unwrap_or(&name);
        if let Some((_, first_name, first)) = written.iter().find(|(n, ..)| *n == header_name) {
            // A merged header gives way to one of its name in any case written in the mapping
            // or merged from a `<<` that wins (the YAML library gives those first), as one of
            // the same spelling does.
            if index >= here {
                continue;
            }
            return Err(invalid(
                &path,
                format!(
                    "the header {first_name} is written twice (\"{first}\" and \"{spelled}\"; header names ignore case): keep one"
                ),
            ));
        }
        written.push((header_name.clone(), name.clone(), spelled.clone()));
        // The variables' values, kept as they are read: reading them again would count them
        // twice against the file's bound.
        let mut substituted = Vec::new();
        let value = expand_env_noting(&value.value.0, &path, env, &mut |value| {
            substituted.push(value.to_owned());
        })?;
        if let Some(reason) = not_configurable(&header_name) {
            warnings.push(format!("{path}: {reason}; not sent (remove it)"));
            continue;
        }
        if let Some(reason) = unsendable(&value) {
            return Err(invalid(
                &path,
                format!("not a valid HTTP header value: {reason}"),
            ));
        }
        let mut header_value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(&path, "not a valid HTTP header value"))?;
        header_value.set_sensitive(true);
        if !substituted.is_empty() || !carries_public_value(&header_name) {
            let forms = crate::secret::credential_forms(&value);
            header_secrets.extend(forms.into_iter().chain(substituted).map(Secret::new));
        }
        headers.insert(header_name, header_value);
    }

    let timeout = match raw.timeout_secs {
        None => DEFAULT_TIMEOUT,
        Some(secs) => {
            let written = secs.referenced;
            let secs = typed::<f64>(secs, &at("timeout_secs"), env, forms, NUMBER)?;
            positive_duration(secs)
                .ok_or_else(|| out_of_range(&at("timeout_secs"), SECONDS_RANGE, written))?
        }
    };
    let stream_usage = raw
        .stream_usage
        .map(|b| typed::<bool>(b, &at("stream_usage"), env, forms, BOOLEAN))
        .transpose()?
        .unwrap_or(true);

    let authorization = match &api_key {
        None => None,
        Some(key) => bearer(key).map_err(|reason| invalid(at("api_key"), reason))?,
    };
    Ok(Server {
        alias: alias.to_owned(),
        url,
        base,
        api_key,
        authorization,
        filter,
        override_models,
        append,
        headers,
        header_secrets,
        url_secrets,
        timeout,
        stream_usage,
    })
}

/// How many of `entries` (a mapping's, as the YAML library gives them) are written in the
/// mapping itself; the rest are merged in by `<<`. The library gives the written ones first,
/// then the merged ones, the winning `<<` first. A merged value is used at the `<<` and
/// written elsewhere; a written one is used where it is written (unless it is an alias,
/// `X-Title: *t`: so every entry up to the last one used where it is written counts as
/// written).
fn written_here(entries: &[(String, Located)]) -> usize {
    entries
        .iter()
        .rposition(|(_, value)| value.referenced == value.defined)
        .map_or(0, |last| last + 1)
}

/// What to say of a server's `url` with no path (`http://host:8000`, or `.../`), `None` for
/// one with a path. The Python version added `/v1` to every configured url; the router sends
/// to the url as written, so such a config carried over sends `/chat/completions` where it
/// sent `/v1/chat/completions`, and an upstream that serves only the latter answers 404 for
/// reasons nothing said. A warning, not a refusal: some servers do serve at the root
/// (DeepSeek's `https://api.deepseek.com`). Only the origin is quoted: the url's user info
/// and query may hold keys.
fn no_path(base: &url::Url) -> Option<String> {
    if base.path() != "/" {
        return None;
    }
    let origin = base.origin().ascii_serialization();
    Some(format!(
        "no path, so requests go to {origin}/chat/completions; the Python version added /v1 to every url: if this server needs it, end the url with /v1"
    ))
}

/// Why a server's `headers` name a field the router leaves out; `None` when they may name
/// it. Framing is each request's own: a configured `Content-Length: 5` sent on the body-less
/// `GET /models` had the upstream wait for five bytes that never came. Hop-by-hop fields
/// describe one connection, which the router opens and reuses as it sees fit: a configured
/// `Connection: close` or `Upgrade` went to the upstream on every request. Left out with a
/// warning rather than refused: the Python version sent them as written (httpx), so a config
/// of it with `Connection: keep-alive` worked there and must load here. `Host` may be set: it
/// is sent in place of the URL's host.
fn not_configurable(name: &HeaderName) -> Option<&'static str> {
    use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
        return Some("the router frames each request's body itself (its length, or chunked)");
    }
    let hop_by_hop = [CONNECTION, TE, TRAILER, UPGRADE].contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection");
    hop_by_hop.then_some(
        "a hop-by-hop header (it describes one connection, not the request), which the router sets for its own connections",
    )
}

/// The credentials a server's `url` carries, in each form an upstream may echo them: the
/// user info (`http://user:password@host`, or a token as the user name, `http://token@host`),
/// as written and percent-decoded, and the Basic credentials the upstream client builds of it
/// (`Authorization: Basic base64(user:password)`); each query value (`?key=AIza...`), as
/// written and percent-decoded, except `api-version`'s (Azure's, a date: not a secret, and
/// redacting it would blank that date in every prompt). Values too short to be keys are left
/// out later, by the redactor.
pub fn url_secrets(base: &url::Url) -> Vec<Secret> {
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .ok()
    };
    let mut out: Vec<String> = Vec::new();
    let (user, password) = (base.username(), base.password());
    if !user.is_empty() || password.is_some() {
        // The password, or a lone user name (a token), is the credential.
        let credential = password.unwrap_or(user);
        out.push(credential.to_owned());
        out.extend(decoded(credential));
        // What goes upstream: `Basic base64(user:password)`, both decoded to bytes.
        out.extend(crate::upstream::url_credentials::basic_credentials(base));
    }
    for (name, value) in base
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if name.eq_ignore_ascii_case("api-version") {
            continue;
        }
        out.push(value.to_owned());
        out.extend(decoded(value));
        // `+` is a space in a form-encoded query.
        out.extend(decoded(&value.replace('+', " ")));
    }
    out.sort_unstable();
    out.dedup();
    out.into_iter()
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// The Authorization value for `key`; `None` for an empty key (a local server needs none).
/// A key with a line break or another control character cannot be sent in a header. It
/// is refused, not trimmed: a key is used exactly as configured, as a `url` is, and the
/// usual cause (a secret file's last newline) is fixed once where the variable is set.
/// The reason never quotes the key.
fn bearer(key: &Secret) -> Result<Option<HeaderValue>, String> {
    if key.is_empty() {
        return Ok(None);
    }
    if let Some(reason) = unsendable(key.expose()) {
        return Err(format!(
            "cannot be sent as an HTTP header: {reason} (the value is not shown)"
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| "cannot be sent as an HTTP header (the value is not shown)".to_owned())?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Why `text` cannot be a header value, in words that point at the cause and never quote
/// it; `None` when it can.
fn unsendable(text: &str) -> Option<String> {
    let is_bad = |c: char| c.is_ascii_control() && c != '\t';
    let (at, bad) = text.char_indices().find(|(_, c)| is_bad(*c))?;
    let position = text[..at].chars().count() + 1;
    let trailing = text.trim_end_matches(['\r', '\n']);
    if trailing.len() < text.len() && !trailing.contains(is_bad) {
        return Some(
            "it ends with a newline (a secret file's last line?); remove it where the value is set"
                .to_owned(),
        );
    }
    Some(match bad {
        '\n' | '\r' => format!("it contains a line break (character {position})"),
        '\0' => format!("it contains a NUL byte (character {position})"),
        c => format!(
            "it contains the control character U+{:04X} (character {position})",
            u32::from(c)
        ),
    })
}

/// `Err` holds the problem of each setting that has one, in the order of [`RawSettings`]'s
/// keys (put in the file's order later, [`settings_in_file_order`]): each is judged apart. `aliases` are every server the file names, those with a
/// problem too: a `default_server` naming one of them is that server's problem, not its own.
fn validate_settings(
    raw: Option<RawSettings>,
    aliases: &[String],
    env: &EnvLookup<'_>,
    forms: &merge_order::Forms,
) -> Result<Settings, Vec<Invalid>> {
    let mut settings = Settings::default();
    let Some(raw) = raw else {
        return Ok(settings);
    };
    let mut problems = Vec::new();
    if let Some(secs) = raw.models_cache_ttl_secs {
        match cache_ttl(secs, env, forms) {
            Ok(ttl) => settings.models_cache_ttl = ttl,
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(secs) = raw.models_fetch_timeout_secs {
        let path = "settings.models_fetch_timeout_secs";
        let written = secs.referenced;
        let timeout = typed::<f64>(secs, path, env, forms, NUMBER).and_then(|secs| {
            positive_duration(secs).ok_or_else(|| out_of_range(path, SECONDS_RANGE, written))
        });
        match timeout {
            Ok(timeout) => settings.models_fetch_timeout = timeout,
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(bytes) = raw.max_body_bytes {
        let path = "settings.max_body_bytes";
        let written = bytes.referenced;
        // A number past every size (Python's int has no bound) is no limit, as it was there.
        let bytes =
            typed::<python::Whole>(bytes, path, env, forms, WHOLE_NUMBER).and_then(|bytes| {
                match bytes.magnitude {
                    _ if bytes.negative => Err(out_of_range(path, "must be above 0", written)),
                    Some(0) => Err(out_of_range(path, "must be above 0", written)),
                    Some(bytes) => Ok(usize::try_from(bytes).unwrap_or(usize::MAX)),
                    None => Ok(usize::MAX),
                }
            });
        match bytes {
            Ok(bytes) => settings.max_body_bytes = bytes,
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(default) = raw.default_server {
        match default_server(&default, aliases, env) {
            Ok(default) => settings.default_server = Some(default),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(problems)
    }
}

fn cache_ttl(
    secs: Typed,
    env: &EnvLookup<'_>,
    forms: &merge_order::Forms,
) -> Result<Duration, Invalid> {
    let path = "settings.models_cache_ttl_secs";
    let written = secs.referenced;
    let secs = typed::<f64>(secs, path, env, forms, NUMBER)?;
    if !(secs.is_finite() && (0.0..1e9).contains(&secs)) {
        return Err(out_of_range(
            path,
            "must be a number of seconds, 0 or more and below 1000000000 (1e9)",
            written,
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number key's value that is a number but out of its range (`reason` says the range),
/// with where it is written, as a value that is no number is said ([`typed`]): the range
/// messages alone had no line.
fn out_of_range(path: &str, reason: &str, written: serde_saphyr::Location) -> Invalid {
    invalid(
        path,
        format!(
            "{reason} at line {}, column {}",
            written.line(),
            written.column()
        ),
    )
}

fn default_server(
    written: &str,
    aliases: &[String],
    env: &EnvLookup<'_>,
) -> Result<String, Invalid> {
    let path = "settings.default_server";
    let default = expand_env(written, path, env)?;
    if aliases.contains(&default) {
        return Ok(default);
    }
    let known = if aliases.is_empty() {
        "none".to_owned()
    } else {
        aliases.join(", ")
    };
    Err(invalid(
        path,
        format!("\"{default}\" is not a server alias (known: {known})"),
    ))
}

/// Whether a configured header's value is a public protocol value (`anthropic-version:
/// 2023-06-01`, `X-Title`, `User-Agent`, `x-stainless-*`, ...), not redacted. Every other
/// configured value is taken for a secret whatever its name (`X-Org-Sig`,
/// `OpenAI-Organization`, a token under a name of the provider's choosing): a name cannot
/// tell, and an upstream that echoes its request headers would otherwise hand the admin's
/// value to a router user in an error. A name that reads as a credential's is never public.
fn carries_public_value(name: &HeaderName) -> bool {
    const PUBLIC: [&str; 12] = [
        "accept",
        "accept-encoding",
        "accept-language",
        "anthropic-beta",
        "anthropic-version",
        "content-type",
        "host",
        "http-referer",
        "openai-beta",
        "referer",
        "user-agent",
        "x-title",
    ];
    let name = name.as_str();
    (PUBLIC.contains(&name) || name.starts_with("x-stainless-"))
        && !crate::secret::names_a_credential(name)
}

/// What [`positive_duration`] takes, said whole: a value above the bound used to be told it
/// must be "above 0".
const SECONDS_RANGE: &str = "must be a number of seconds above 0 and below 1000000000 (1e9)";

fn positive_duration(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// What a number key takes, said as [`in_plain_words`] says the YAML library's message.
const NUMBER: &str = "expected a number";
const WHOLE_NUMBER: &str = "expected a whole number (no fraction or exponent such as 1e6)";
const BOOLEAN: &str = "expected true or false (or the number 1 or 0)";

/// The type of a number or boolean key, made of the Python value its text is, as pydantic
/// made it ([`python`]).
trait FromPython: Sized {
    /// What the key takes, for a tag refused on it.
    const TAKES: &'static str = "a number";
    fn from_python(value: &python::Value) -> Option<Self>;
}

impl FromPython for f64 {
    fn from_python(value: &python::Value) -> Option<Self> {
        python::to_float(value)
    }
}

impl FromPython for python::Whole {
    fn from_python(value: &python::Value) -> Option<Self> {
        python::to_whole(value)
    }
}

impl FromPython for bool {
    const TAKES: &'static str = "true or false";
    fn from_python(value: &python::Value) -> Option<Self> {
        python::to_bool(value)
    }
}

/// A number or boolean key's value: `${NAME}` expanded, then read as the Python version read
/// the value written so (PyYAML, then pydantic: [`python`]), by how it is written (`forms`:
/// its tag, plain or quoted; a `${NAME}` gives its value in that form). Text that is not a
/// `T` is said with the line; text that came from a variable names the variable
/// (`expected`, the kind of value wanted), never its value.
fn typed<T: FromPython>(
    written: Typed,
    path: &str,
    env: &EnvLookup<'_>,
    forms: &merge_order::Forms,
    expected: &str,
) -> Result<T, Invalid> {
    let text = &written.value.0;
    let expanded = expand_env(text, path, env)?;
    let form = written
        .defined
        .span()
        .byte_offset()
        .and_then(|at| usize::try_from(at).ok())
        .and_then(|at| forms.get(&at).copied())
        .unwrap_or(python::Form::PLAIN);
    let value = python::yaml_value(&expanded, form);
    if let Some(value) = value.as_ref().and_then(T::from_python) {
        return Ok(value);
    }
    let at = written.referenced;
    let location = format!("line {}, column {}", at.line(), at.column());
    let variables = variables_in(text);
    if variables.is_empty() {
        // PyYAML refused the value with its tag (`!!int 5.5`, `!!bool 1`) but would take it
        // without.
        let untagged = python::Form { tag: None, ..form };
        let fine_untagged = value.is_none()
            && python::yaml_value(&expanded, untagged)
                .as_ref()
                .and_then(T::from_python)
                .is_some();
        let reason = match fine_untagged {
            true => format!(
                "a tagged value where {} is expected: write the value without its tag",
                T::TAKES
            ),
            false => expected.to_owned(),
        };
        return Err(invalid(path, format!("{reason} at {location}")));
    }
    let reason = match variables.as_slice() {
        [name] if text.len() == name.len() + 3 => {
            format!("environment variable {name} does not hold one (its value is not shown)")
        }
        [name] => format!(
            "\"{text}\" does not give one with the value of environment variable {name} (not shown)"
        ),
        _ => format!(
            "\"{text}\" does not give one with the values of environment variables {} (not shown)",
            variables.join(", ")
        ),
    };
    Err(invalid(path, format!("{expected} at {location}: {reason}")))
}

/// The variable names of the `${NAME}` references in `text` (which [`expand_env`] took).
fn variables_in(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    names
}

fn expand_list(list: Vec<Scalar>, path: &str, env: &EnvLookup<'_>) -> Result<Vec<String>, Invalid> {
    list.into_iter()
        .enumerate()
        .map(|(i, item)| expand_env(&item.0, &format!("{path}[{i}]"), env))
        .collect()
}

/// The longest value a key's `${NAME}`s may expand to, as for `.env`'s (an environment
/// variable holds far less): one header of 300 `${BIG}`s of 1 MB each held 300 MB while
/// `check` said ok (bb57).
const MAX_EXPANDED_BYTES: usize = 1024 * 1024;

/// The most all of a file's `${NAME}`s may read, as `.env`'s are bounded: 300 headers of one
/// 1 MB variable each held 950 MB in a router that started (bb59).
const MAX_EXPANDED_TOTAL_BYTES: usize = 8 * 1024 * 1024;

/// Replaces every `${NAME}` with that environment variable. An unset variable is an error:
/// an empty api key would only surface later as a confusing 401 from the provider. So is one
/// set but empty (what `docker --env-file` leaves for a missing value, hiding `.env`'s), as
/// every variable the router reads itself is, and one that is not UTF-8. No message quotes
/// a value.
pub fn expand_env(value: &str, path: &str, env: &EnvLookup<'_>) -> Result<String, Invalid> {
    expand_env_noting(value, path, env, &mut |_| {})
}

/// [`expand_env`], handing `substituted` each variable's value as it is put in. `env` is read
/// once for each `${NAME}`: [`Config::parse_every_problem`] counts every read against the
/// file's bound ([`MAX_EXPANDED_TOTAL_BYTES`]).
fn expand_env_noting(
    value: &str,
    path: &str,
    env: &EnvLookup<'_>,
    substituted: &mut dyn FnMut(&str),
) -> Result<String, Invalid> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(invalid(path, "unclosed \"${\": write ${NAME}"));
        };
        let name = &after[..end];
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(invalid(path, not_a_reference(name)));
        }
        let reason = match env(name) {
            Ok(v) if out.len() + v.len() > MAX_EXPANDED_BYTES => {
                return Err(invalid(
                    path,
                    "the value's ${NAME}s expand to over 1 MiB (a variable used many times over?)",
                ));
            }
            Ok(v) if !v.is_empty() => {
                substituted(&v);
                out.push_str(&v);
                rest = &after[end + 1..];
                continue;
            }
            Ok(_) => "is set but empty (as `docker --env-file` leaves a missing value): \
                      give it a value, or leave this key out"
                .to_owned(),
            Err(VarError::NotPresent) => "is not set (set it, or put it in .env)".to_owned(),
            Err(VarError::NotUnicode(_)) => {
                "is not UTF-8 text (saved in another encoding?): fix it where it is set".to_owned()
            }
        };
        return Err(invalid(
            path,
            format!("environment variable {} {reason}", shown_name(name)),
        ));
    }
    out.push_str(rest);
    Ok(out)
}

/// A `${NAME}`'s name as a message shows it, unless it looks like a key pasted where the
/// name belongs: Groq's `gsk_...` keys (and others of letters, digits and `_`) are valid
/// names, and "environment variable gsk_... is not set" printed the key. Variable names are
/// upper case by custom; a long one with lower-case letters and digits both is taken for a
/// key.
fn shown_name(name: &str) -> std::borrow::Cow<'_, str> {
    let key_like = name.len() >= 20
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && name.bytes().any(|b| b.is_ascii_digit());
    if key_like {
        format!(
            "(a name of {} characters, not shown: it looks like a key written where its variable's name belongs)",
            name.len()
        )
        .into()
    } else {
        name.into()
    }
}

/// Why `${text}` is no reference, without `text`: a key pasted where the template has
/// `${OPENROUTER_API_KEY}`, or given as a shell default (`${NAME:-sk-...}`, `:=`, `:?`), would be printed
/// by `check` and at every `serve` start, into container logs.
fn not_a_reference(text: &str) -> String {
    let is_name = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match text.split_once(':') {
        Some((name, _)) if is_name(name) => format!(
            "${{{name}...}}: defaults and other shell forms are not supported (the text after the name is not shown): write ${{{name}}} and give {name} a value"
        ),
        _ => "a ${...} whose text is not a variable name (letters, digits and _; the text is not shown: a key written where its variable's name belongs?)".to_owned(),
    }
}

/// Checks an http(s) base URL and returns it with trailing slashes trimmed.
pub fn validate_base_url(url: &str) -> Result<String, String> {
    // The URL is used as written: white space around it would be sent, and a `#fragment`
    // would sit in the middle of every request's path.
    if url.trim() != url {
        return Err("has white space at its start or end".to_owned());
    }
    // The url crate drops these silently (`/v\n1` would be used as `/v1`), and a control
    // character at either end too.
    if url.contains(char::is_control) {
        return Err(
            "has a tab, line break or other control character inside: remove it".to_owned(),
        );
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if parsed.fragment().is_some() {
        return Err("a base URL has no #fragment".to_owned());
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, not \"{}:\"",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    // Written `http(s)://host`, as a URL target must be: `http:///v1` parsed with the host
    // `v1`, passed `check` and failed every request with a DNS error.
    crate::routing::well_formed(url)?;
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A number key's value tagged as a number (`timeout_secs: !!float 5`) is that number,
    /// and `stream_usage: !!bool false` that boolean, as PyYAML and pydantic read them (the
    /// Python version's config must load unchanged): they were refused as "a tagged value
    /// where text is expected". A tag refused on such a key says what the key takes.
    #[test]
    fn a_number_tagged_as_a_number_is_that_number() {
        let yaml = "servers:\n  a:\n    url: http://x\n    timeout_secs: !!float 5\n    stream_usage: !!bool false\n  \
             b:\n    url: http://x\n    timeout_secs: !!int \"7\"\n  \
             c: {url: http://x, timeout_secs: !<tag:yaml.org,2002:float> 2.5}\n\
             settings:\n  models_cache_ttl_secs: !!float 5\n  models_fetch_timeout_secs: !!int 3\n  \
             max_body_bytes: !!float 9\n";
        let c = Config::parse(yaml, &no_env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.servers["a"].timeout, Duration::from_secs(5));
        assert!(!c.servers["a"].stream_usage);
        assert_eq!(c.servers["b"].timeout, Duration::from_secs(7));
        assert_eq!(c.servers["c"].timeout, Duration::from_millis(2500));
        assert_eq!(c.settings.models_cache_ttl, Duration::from_secs(5));
        assert_eq!(c.settings.models_fetch_timeout, Duration::from_secs(3));
        assert_eq!(c.settings.max_body_bytes, 9);

        let cases = [
            // pydantic refused 5.5 for a whole number, and PyYAML `!!float abc`.
            (
                "settings:\n  max_body_bytes: !!float 5.5\n",
                "settings.max_body_bytes",
                "expected a whole number (no fraction or exponent such as 1e6) at line 2, column 27",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    timeout_secs: !!float abc\n",
                "servers.a.timeout_secs",
                "expected a number at line 4, column 27",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    timeout_secs: !!timestamp 2001-12-14\n",
                "servers.a.timeout_secs",
                "a tagged value where a number is expected: write the value without its tag at line 4",
            ),
            // PyYAML refused `!!bool 1` (no boolean), pydantic the number 2 for a boolean.
            (
                "servers:\n  a:\n    url: http://x\n    stream_usage: !!bool 1\n",
                "servers.a.stream_usage",
                "a tagged value where true or false is expected: write the value without its tag at line 4",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    stream_usage: !!int 2\n",
                "servers.a.stream_usage",
                "expected true or false (or the number 1 or 0) at line 4, column 25",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers: {X-V: !!float 5}\n",
                "servers.a.headers.X-V",
                "a tagged value (`!!int`, `!!float`, ...) where text is expected",
            ),
        ];
        for (yaml, path, expected) in cases {
            let (at, reason) = error_of(yaml);
            assert_eq!(at, path, "{yaml:?}: {reason}");
            assert!(reason.starts_with(expected), "{yaml:?}: {reason}");
        }
    }

    /// What a url carries that is a credential, in the forms an upstream may echo it.
    #[test]
    fn the_credentials_in_a_url_are_secrets() {
        let secrets = |url: &str| -> Vec<String> {
            let base = url::Url::parse(url).expect("url");
            url_secrets(&base)
                .iter()
                .map(|s| s.expose().to_owned())
                .collect()
        };
        // The upstream gets `Authorization: Basic base64("user:s3cret pw")`.
        assert_eq!(
            secrets("http://user:s3cret%20pw@h/v1"),
            ["dXNlcjpzM2NyZXQgcHc=", "s3cret pw", "s3cret%20pw"]
        );
        // A token as the user name is the credential.
        assert_eq!(
            secrets("https://tok%2Ben-123456@h/v1"),
            ["dG9rK2VuLTEyMzQ1Njo=", "tok%2Ben-123456", "tok+en-123456"]
        );
        // A user name that is not UTF-8 once decoded: the Basic credentials of its bytes,
        // base64(b"\xffkay:secretpw"), as sent.
        assert_eq!(
            secrets("https://%FFkay:secretpw@h/v1"),
            ["/2theTpzZWNyZXRwdw==", "secretpw"]
        );
        assert_eq!(
            secrets("https://h/v1?key=AIza%2F12+3&api-version=2024-10-21&flag"),
            ["AIza%2F12+3", "AIza/12 3", "AIza/12+3"]
        );
        assert!(secrets("https://h/v1").is_empty());
        let config = Config::parse(
            "servers:\n  a:\n    url: http://u:pw-secret-1@h/v1?k=qs-secret-22\n",
            &no_env,
        )
        .expect("config");
        let all: Vec<&str> = config.secrets().map(Secret::expose).collect();
        assert!(
            all.contains(&"pw-secret-1") && all.contains(&"qs-secret-22"),
            "{all:?}"
        );
    }

    #[test]
    fn empty_document_is_an_empty_config() {
        let c = Config::parse("", &no_env).expect("empty");
        assert!(c.servers.is_empty());
        let c = Config::parse("# only a comment\n", &no_env).expect("comment");
        assert!(c.servers.is_empty());
    }

    #[test]
    fn full_config_loads() {
        let yaml = r#"
servers:
  openrouter:
    url: "https://openrouter.ai/api/v1/"
    api_key: "${OR_KEY}"
    filter: "gpt free"
    append: ["x"]
    headers: {X-Title: "me", X-Num: 3}
    timeout_secs: 1.5
    stream_usage: false
  local:
    url: http://localhost:11434/v1
    override: [m1, 2]
settings:
  models_cache_ttl_secs: 0
  models_fetch_timeout_secs: 2
  max_body_bytes: 1000
  default_server: local
"#;
        let env = |n: &str| (n == "OR_KEY").then(|| "sk-or".to_owned());
        let c = Config::parse(yaml, &env).expect("valid");
        let or = c.server("openrouter").expect("openrouter");
        assert_eq!(or.url, "https://openrouter.ai/api/v1");
        assert_eq!(or.api_key.as_ref().map(Secret::expose), Some("sk-or"));
        assert_eq!(or.headers["x-num"], "3");
        assert_eq!(or.timeout, Duration::from_millis(1500));
        assert!(!or.stream_usage);
        let local = c.server("local").expect("local");
        assert_eq!(
            local.override_models.as_deref(),
            Some(&["m1".to_owned(), "2".to_owned()][..])
        );
        assert!(local.stream_usage);
        assert_eq!(
            c.servers.keys().collect::<Vec<_>>(),
            ["openrouter", "local"]
        );
        assert_eq!(c.settings.default_server.as_deref(), Some("local"));
        assert_eq!(c.settings.max_body_bytes, 1000);
        assert_eq!(c.settings.models_cache_ttl, Duration::ZERO);
    }

    fn error_of(yaml: &str) -> (String, String) {
        match Config::parse(yaml, &no_env) {
            Ok(_) => panic!("expected an error for {yaml}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let (path, reason) = error_of("servers:\n  a:\n    url: http://x\n    filtre: gpt\n");
        assert_eq!(path, "servers.a.filtre");
        assert!(reason.contains("unknown field"), "{reason}");
        let (path, reason) = error_of("setings: {}\n");
        assert_eq!(path, "setings");
        assert!(reason.contains("setings"), "{reason}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let (path, _) = error_of("servers:\n  a:\n    url: http://x\n    timeout_secs: soon\n");
        assert_eq!(path, "servers.a.timeout_secs");
        let (path, _) = error_of("servers:\n  a:\n    url: http://x\n    override: gpt\n");
        assert_eq!(path, "servers.a.override");
    }

    #[test]
    fn bad_alias_and_bad_url_are_refused() {
        let (path, reason) = error_of("servers:\n  \"a[b]\":\n    url: http://x\n");
        assert_eq!(path, "servers.a[b]");
        assert!(reason.contains("brackets"));
        let (path, reason) = error_of("servers:\n  a:\n    url: ftp://x\n");
        assert_eq!(path, "servers.a.url");
        assert!(reason.contains("http"), "{reason}");
        let (path, _) = error_of("servers:\n  a:\n    api_key: k\n");
        assert_eq!(path, "servers.a.url");
        let (_, reason) = error_of("servers:\n  a:\n    url: \" http://x/v1\"\n");
        assert!(reason.contains("white space"), "{reason}");
        let (_, reason) = error_of("servers:\n  a:\n    url: \"http://x/v1#top\"\n");
        assert!(reason.contains("#fragment"), "{reason}");
        for no_host in ["http:///v1", "http:/x/v1", "https:x", "http:\\\\x/v1"] {
            let (_, reason) = error_of(&format!("servers:\n  a:\n    url: '{no_host}'\n"));
            assert!(reason.contains("no host"), "{no_host}: {reason}");
        }
        let (_, reason) = error_of("servers:\n  a:\n    url: \"http://x/v\\n1\"\n");
        assert!(
            reason.contains("line break or other control character inside"),
            "{reason}"
        );
        let (_, reason) = error_of("servers:\n  a:\n    url: \"http://x/v1\\u0001\"\n");
        assert!(reason.contains("control character"), "{reason}");
        let (path, _) = error_of("servers:\n  \"火 山\":\n    url: http://x\n");
        assert_eq!(path, "servers.火 山");
    }

    #[test]
    fn yaml_mistakes_are_said_for_whoever_edits_the_file() {
        let cases = [
            (
                "servers:\n  a:\n    url: http://x\n  a:\n    url: http://y\n",
                "the key a appears twice, at line 2 and again at line 4",
            ),
            (
                "servers: {}\n---\nservers: {}\n",
                "more than one YAML document",
            ),
            (
                "servers: {~: {url: http://x}}\n",
                "empty (null) where a value is needed",
            ),
            (
                "servers:\n  a:\n    url: [x]\n",
                "expected one value (text or a number)",
            ),
            ("settings: 5\n", "expected a mapping"),
            (
                "servers:\n  a:\n    url: http://x\n    override: [m1, null]\n",
                "empty (null) where a value is needed at line 4, column 20",
            ),
            (
                "settings:\n  max_body_bytes: 1e20\n",
                "expected a whole number (no fraction or exponent such as 1e6) at line 2",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    timeout_secs: soon\n",
                "expected a number at line 4",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    stream_usage: maybe\n",
                "expected true or false (or the number 1 or 0) at line 4",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    api_key: !!int 5\n",
                "a tagged value (`!!int`, `!!float`, ...) where text is expected",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    override: \"m1\"\n",
                "expected a list (`- item` lines, or `[a, b]`) at line 4",
            ),
            (
                "servers:\n  \"\":\n    url: http://x\n",
                "an alias is empty",
            ),
        ];
        for (yaml, expected) in cases {
            let (_, reason) = error_of(yaml);
            assert!(reason.starts_with(expected), "{yaml:?}: {reason}");
            for jargon in [
                "DuplicateKeyPolicy",
                "from_str_multiple",
                "Option<",
                "scalar",
                "unit value",
                "u64",
                "floating point",
                "policy",
            ] {
                assert!(!reason.contains(jargon), "{reason}");
            }
        }
    }

    #[test]
    fn aliases_may_be_letters_of_any_script() {
        let config = Config::parse("servers:\n  火山:\n    url: http://x/v1\n", &no_env)
            .expect("a Chinese alias loads");
        assert!(config.server("火山").is_some());
        assert!(is_valid_alias("deepseek-v3.1_b") && is_valid_alias("火山"));
        assert!(!is_valid_alias("a,b") && !is_valid_alias("[a]") && !is_valid_alias(""));
    }

    #[test]
    fn unset_env_is_an_error_that_does_not_print_other_values() {
        let (path, reason) =
            error_of("servers:\n  a:\n    url: http://x\n    api_key: \"pre-${MISSING_KEY}\"\n");
        assert_eq!(path, "servers.a.api_key");
        assert!(reason.contains("MISSING_KEY"));
        assert!(!reason.contains("pre-"));
    }

    /// A key from a secret file with its last newline, or with a NUL: refused at load with
    /// the reason, the key never quoted. Before, it loaded and every request went upstream
    /// with no Authorization at all.
    #[test]
    fn a_key_no_header_can_carry_is_refused_by_its_reason_not_its_value() {
        let cases = [
            ("sk-real-key-123\n", "ends with a newline"),
            ("sk-real-key-123\r\n", "ends with a newline"),
            ("sk-real\nkey-123", "line break (character 8)"),
            ("sk-real-key\0abc", "NUL byte (character 12)"),
            ("sk-real-key\u{1b}123", "control character U+001B"),
        ];
        for (key, expected) in cases {
            let env = |name: &str| (name == "UP_KEY").then(|| key.to_owned());
            let yaml = "servers:\n  up:\n    url: http://x/v1\n    api_key: \"${UP_KEY}\"\n";
            let (path, reason) = Config::parse(yaml, &env).expect_err(key);
            assert_eq!(path, "servers.up.api_key");
            assert!(reason.contains(expected), "{key:?}: {reason}");
            assert!(!reason.contains("real"), "{reason}");
        }
        // A header value gets the same reason, and a tab or a non-ASCII letter still loads.
        let env = |_: &str| Some("azure-secret\n".to_owned());
        let yaml = "servers:\n  az:\n    url: http://x\n    headers: {api-key: \"${K}\"}\n";
        let (path, reason) = Config::parse(yaml, &env).expect_err("header");
        assert_eq!(path, "servers.az.headers.api-key");
        assert!(reason.contains("ends with a newline"), "{reason}");
        assert!(!reason.contains("azure-secret"), "{reason}");
        let env = |_: &str| Some("sk-ä\tb".to_owned());
        let yaml = "servers:\n  a:\n    url: http://x\n    api_key: \"${K}\"\n";
        let c = Config::parse(yaml, &env).expect("loads");
        assert!(c.servers["a"].authorization().is_some());
    }

    #[test]
    fn a_huge_cache_ttl_is_an_error_not_a_panic() {
        let (path, _) = error_of("settings:\n  models_cache_ttl_secs: 1e300\n");
        assert_eq!(path, "settings.models_cache_ttl_secs");
    }

    #[test]
    fn default_server_must_exist() {
        let (path, _) =
            error_of("servers:\n  a:\n    url: http://x\nsettings:\n  default_server: b\n");
        assert_eq!(path, "settings.default_server");
    }

    #[test]
    fn credential_headers_are_secrets_and_no_header_value_prints() {
        let yaml = "servers:\n  az:\n    url: http://x\n    api_key: sk-az-key-123\n    headers: {api-key: \"azure-secret-value\", X-Title: \"llmsrouter app\"}\n";
        let c = Config::parse(yaml, &|_| None).expect("config");
        let secrets: Vec<&str> = c.secrets().map(Secret::expose).collect();
        assert!(secrets.contains(&"azure-secret-value"), "{secrets:?}");
        let debug = format!("{c:?}");
        assert!(!debug.contains("azure-secret-value"), "{debug}");
        assert!(!debug.contains("llmsrouter app"), "{debug}");
        assert!(
            !debug.contains("sk-az-key-123"),
            "nor the prebuilt Authorization: {debug}"
        );
        let authorization = c.servers["az"].authorization().expect("built");
        assert_eq!(authorization, "Bearer sk-az-key-123");
        assert!(authorization.is_sensitive());
    }

    /// Every configured header value is a secret, whatever its name, but for the public
    /// protocol fields; those too when written with a `${NAME}`. A scheme's credentials and
    /// a variable's value count on their own.
    #[test]
    fn every_header_value_but_a_protocol_ones_is_a_secret() {
        let yaml = r#"servers:
  a:
    url: http://x
    headers:
      X-Org-Sig: "SECRETHEADERVAL222"
      X-Passwd: "passwd-value-1"
      OpenAI-Organization: "org-abcdef123456"
      X-Custom: "Bearer custom-token-1"
      X-Plain: "plain-value-12345"
      anthropic-version: "2023-06-01"
      anthropic-beta: "${BETA}"
      X-Title: "llmsrouter app"
      User-Agent: "my-agent/1.0 (linux)"
      x-stainless-lang: "python-lang"
      X-Tenant: "tenant-${TENANT}"
"#;
        let env = |name: &str| match name {
            "BETA" => Some("tools-2024-04-04".to_owned()),
            "TENANT" => Some("acme-corp-7".to_owned()),
            _ => None,
        };
        let c = Config::parse(yaml, &env).expect("config");
        let secrets: Vec<&str> = c.secrets().map(Secret::expose).collect();
        for secret in [
            "SECRETHEADERVAL222",
            "passwd-value-1",
            "org-abcdef123456",
            "Bearer custom-token-1",
            "custom-token-1",
            "plain-value-12345",
            "tools-2024-04-04",
            "tenant-acme-corp-7",
            "acme-corp-7",
        ] {
            assert!(secrets.contains(&secret), "{secret}: {secrets:?}");
        }
        for public in [
            "2023-06-01",
            "llmsrouter app",
            "my-agent/1.0 (linux)",
            "python-lang",
        ] {
            assert!(!secrets.contains(&public), "{public}: {secrets:?}");
        }
    }

    #[test]
    fn the_shipped_template_loads() {
        let env =
            |n: &str| matches!(n, "OPENROUTER_API_KEY" | "ARK_API_KEY").then(|| "k".to_owned());
        let c = Config::parse(include_str!("../config.yaml.template"), &env).expect("template");
        assert_eq!(c.servers.len(), 3);
        assert_eq!(
            c.server("huoshan").map(|s| s.url.as_str()),
            Some("https://ark.cn-beijing.volces.com/api/v3")
        );
    }

    #[test]
    fn expand_env_replaces_every_reference() {
        let env = |n: &str| Ok(format!("<{n}>"));
        assert_eq!(
            expand_env("a${X}b${Y_2}c", "p", &env).expect("ok"),
            "a<X>b<Y_2>c"
        );
        assert_eq!(
            expand_env("$X no braces", "p", &env).expect("ok"),
            "$X no braces"
        );
        assert!(expand_env("${", "p", &env).is_err());
        // Past 1 MiB in all, however it is reached.
        let big = |_: &str| Ok("x".repeat(300 * 1024));
        assert!(expand_env(&"${B}".repeat(3), "p", &big).is_ok());
        let said = expand_env(&"${B}".repeat(4), "p", &big)
            .expect_err("too long")
            .1;
        assert!(said.contains("expand to over 1 MiB"), "{said}");
        assert!(expand_env("${1A}", "p", &env).is_err());
        // A key where a name belongs, or as a shell default, is never quoted.
        let said = |value: &str| expand_env(value, "p", &env).expect_err(value).1;
        let pasted = said("${sk-or-v1-0123456789abcdef}");
        assert!(!pasted.contains("0123456789abcdef"), "{pasted}");
        assert!(pasted.contains("not a variable name"), "{pasted}");
        let unset = |value: &str| {
            expand_env(value, "p", &|_| Err(VarError::NotPresent))
                .expect_err(value)
                .1
        };
        let groq = unset("${gsk_Q1w2E3r4T5y6U7i8O9p0AsDfGhJkLzXcVbNm1234}");
        assert!(!groq.contains("Q1w2E3r4"), "{groq}");
        assert!(groq.contains("looks like a key"), "{groq}");
        assert!(unset("${OPENROUTER_API_KEY_2}").contains("OPENROUTER_API_KEY_2 is not set"));
        let default = said("Bearer ${OPENROUTER_API_KEY:-sk-or-v1-0123456789abcdef}");
        assert!(!default.contains("0123456789abcdef"), "{default}");
        assert!(
            default.contains("write ${OPENROUTER_API_KEY} and give OPENROUTER_API_KEY a value"),
            "{default}"
        );
    }

    /// `${K}` with K set but empty (what `docker --env-file` leaves, hiding `.env`'s value)
    /// or not UTF-8 is refused naming K, as an unset K is; before, the empty one loaded and
    /// the server got no key, and the one not UTF-8 was called "not set".
    #[test]
    fn an_empty_or_not_utf8_variable_is_refused_naming_it() {
        let yaml = "servers:\n  a:\n    url: http://x\n    api_key: \"pre-${K}\"\n";
        let empty = |_: &str| Ok(String::new());
        let (path, reason) = Config::parse_with(yaml, &empty).expect_err("empty");
        assert_eq!(path, "servers.a.api_key");
        assert!(
            reason.starts_with("environment variable K is set but empty"),
            "{reason}"
        );
        let not_utf8 = |_: &str| {
            use std::os::unix::ffi::OsStringExt as _;
            Err(VarError::NotUnicode(std::ffi::OsString::from_vec(
                b"sk-\xff".to_vec(),
            )))
        };
        let (path, reason) = Config::parse_with(yaml, &not_utf8).expect_err("not UTF-8");
        assert_eq!(path, "servers.a.api_key");
        assert!(
            reason.starts_with("environment variable K is not UTF-8 text"),
            "{reason}"
        );
        assert!(
            !reason.contains("pre-") && !reason.contains("sk-"),
            "{reason}"
        );
    }

    /// Every string-typed value keeps the scalar's text exactly as written, as PyYAML did:
    /// read as a number first, `0123456789` lost its zero, `1234e12` was expanded, a long
    /// number lost digits, `1.10` became `1.1`, and `8e4512345678` failed with a message
    /// quoting the key.
    #[test]
    fn number_like_scalars_keep_their_text() {
        let keys = [
            "0123456789",
            "1234e12",
            "12345678901234567890123",
            "8e4512345678",
            "1.10",
            ".inf",
            "0x1F",
            "true",
            "-0",
        ];
        for key in keys {
            let yaml = format!(
                "servers:\n  a:\n    url: http://x\n    api_key: {key}\n    filter: {key}\n    override: [{key}]\n    append: [{key}]\n    headers: {{X-V: {key}}}\n"
            );
            let c = Config::parse(&yaml, &no_env).unwrap_or_else(|e| panic!("{key}: {e:?}"));
            let a = &c.servers["a"];
            assert_eq!(a.api_key.as_ref().map(Secret::expose), Some(key));
            assert_eq!(a.filter.as_deref(), Some(key));
            assert_eq!(a.override_models.as_deref(), Some(&[key.to_owned()][..]));
            assert_eq!(a.append, [key]);
            assert_eq!(a.headers["x-v"], key);
        }
    }

    /// One header written twice in different case (`X-A`, `x-a`) is refused naming both
    /// spellings as written: both loaded and one was dropped in silence.
    #[test]
    fn a_header_written_twice_in_any_case_is_refused() {
        let (path, reason) = error_of(
            "servers:\n  e:\n    url: http://x\n    headers:\n      X-A: one\n      x-a: two\n",
        );
        assert_eq!(path, "servers.e.headers.x-a");
        assert_eq!(
            reason,
            "the header X-A is written twice (\"X-A\" and \"x-a\"; header names ignore case): keep one"
        );
        // Each said as written, its tag too, as a key written twice is: a tag used to be
        // left out, as if both were plain.
        let cases = [
            (
                "      !!str X-A: one\n      x-a: two\n",
                "\"!!str X-A\" and \"x-a\"",
            ),
            (
                "      X-A: one\n      !!binary eC1h: two\n",
                "\"X-A\" and \"!!binary eC1h\"",
            ),
            (
                "      {X-A: one, !<tag:yaml.org,2002:str> x-a: two}\n",
                "\"X-A\" and \"!<tag:yaml.org,2002:str> x-a\"",
            ),
        ];
        for (headers, spellings) in cases {
            let yaml = format!("servers:\n  e:\n    url: http://x\n    headers:\n{headers}");
            let (path, reason) = error_of(&yaml);
            assert_eq!(path, "servers.e.headers.x-a", "{yaml}");
            assert_eq!(
                reason,
                format!(
                    "the header X-A is written twice ({spellings}; header names ignore case): keep one"
                ),
                "{yaml}"
            );
        }
    }

    /// A header written in a `headers` mapping overrides a merged one (`<<: *h`) of its name
    /// in any case, as it does one of the same spelling (`x-title: t2` over a merged
    /// `X-Title: t1` was refused as "written twice"); of two merged in different case, the
    /// winning `<<`'s is kept. Two spellings written in the mapping itself stay refused.
    #[test]
    fn a_header_written_here_overrides_a_merged_one_in_any_case() {
        let base = "servers:\n  h:\n    url: http://h/v1\n    headers: &h {X-Title: t1, x-h: h}\n";
        let headers = |yaml: &str| -> Vec<(String, String)> {
            let c = Config::parse(&format!("{base}{yaml}"), &no_env).expect(yaml);
            let b = c.server("b").expect("b");
            let mut got: Vec<(String, String)> = b
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_owned()))
                .collect();
            got.sort();
            got
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            headers("  b:\n    url: http://b/v1\n    headers:\n      <<: *h\n      x-title: t2\n"),
            pairs(&[("x-h", "h"), ("x-title", "t2")])
        );
        assert_eq!(
            headers("  b:\n    url: http://b/v1\n    headers: {x-title: t2, <<: *h, X-H: e}\n"),
            pairs(&[("x-h", "e"), ("x-title", "t2")])
        );
        // Two separate `<<`: the last one wins (PyYAML's order), in any case.
        assert_eq!(
            headers(
                "  b:\n    url: http://b/v1\n    headers:\n      <<: {x-title: m1, X-Z: z1}\n      <<: *h\n"
            ),
            pairs(&[("x-h", "h"), ("x-title", "t1"), ("x-z", "z1")])
        );
        let (path, reason) = error_of(&format!(
            "{base}  b:\n    url: http://b/v1\n    headers: {{X-Title: e1, <<: *h, x-title: e2}}\n"
        ));
        assert_eq!(path, "servers.b.headers.x-title");
        assert_eq!(
            reason,
            "the header X-Title is written twice (\"X-Title\" and \"x-title\"; header names ignore case): keep one"
        );
        // A value the YAML library refuses is still named by its header.
        let (path, reason) =
            error_of("servers:\n  b:\n    url: http://b/v1\n    headers: {X-A: ~}\n");
        assert_eq!(path, "servers.b.headers.X-A");
        assert!(reason.starts_with("empty (null)"), "{reason}");
    }

    /// Separate `<<` keys in one mapping apply as PyYAML applies them (the last one wins),
    /// where the first one used to win: `b` went to `a`'s upstream with `a`'s key where the
    /// Python version sent it to `o`'s with `o`'s. Within one `<<: [...]` list the first
    /// listed wins, and keys written in the mapping win over every merge. Each expected
    /// value is what PyYAML 6.0.2 loads from the same text.
    #[test]
    fn separate_merge_keys_apply_last_first_as_pyyaml_does() {
        let base = "servers:\n  a: &a\n    url: http://a/v1\n    api_key: key-a\n  o: &o\n    url: http://o/v1\n    api_key: key-o\n  p: &p\n    url: http://p/v1\n    timeout_secs: 5\n";
        let cases = [
            ("  b:\n    <<: *a\n    <<: *o\n", "http://o/v1", "key-o"),
            ("  b:\n    <<: [*a, *o]\n", "http://a/v1", "key-a"),
            (
                "  b:\n    <<: [*a, *o]\n    <<: *p\n",
                "http://p/v1",
                "key-a",
            ),
            (
                "  b:\n    <<: *p\n    <<: [*a, *o]\n",
                "http://a/v1",
                "key-a",
            ),
            (
                "  b:\n    <<: *a\n    <<: *o\n    <<: *p\n",
                "http://p/v1",
                "key-o",
            ),
            (
                "  b:\n    <<: [*p, *a]\n    <<: [*o]\n    <<: *p\n",
                "http://p/v1",
                "key-o",
            ),
            (
                "  b:\n    <<: *a\n    url: http://b/v1\n    <<: *o\n",
                "http://b/v1",
                "key-o",
            ),
            ("  b: {<<: *a, <<: *o}\n", "http://o/v1", "key-o"),
            (
                "  b:\n    # one\n    <<: *o   # two\n    !!merge <<: {api_key: \"火山\"}\n",
                "http://o/v1",
                "火山",
            ),
            // Nested: a merged mapping's own separate `<<` keys, and `<<` inside a moved value.
            (
                "  d: &d\n    <<: *a\n    <<: *o\n  b: {<<: *d, api_key: key-b}\n",
                "http://o/v1",
                "key-b",
            ),
            (
                "  b: {<<: {<<: *a, <<: *o}, <<: *p}\n",
                "http://p/v1",
                "key-o",
            ),
        ];
        for (yaml, url, key) in cases {
            let c = Config::parse(&format!("{base}{yaml}"), &no_env).expect(yaml);
            let b = c.server("b").expect("b");
            assert_eq!(b.url, url, "{yaml}");
            assert_eq!(b.api_key.as_ref().map(Secret::expose), Some(key), "{yaml}");
        }
        // The lines keep their numbers.
        let (path, reason) = error_of(&format!(
            "{base}  b:\n    <<: [*a]\n    <<: *o\n    timeout_secs: soon\n"
        ));
        assert_eq!(path, "servers.b.timeout_secs");
        assert!(reason.ends_with("at line 14, column 19"), "{reason}");
    }

    /// Servers merged into `servers:` take the places PyYAML gives them (merged ones first, in
    /// the order of the `<<` keys, a list last listed first; a written one that a merge brings
    /// too in the merged one's place), where they came after the written ones: the first
    /// server listing a model was another than the Python version's. Each expected order is
    /// what PyYAML 6.0.2's `safe_load` gives the same text.
    #[test]
    fn merged_servers_come_in_pyyaml_order() {
        let s = |alias: &str| format!("{alias}: {{url: http://{alias}/v1}}");
        let cases: [(String, &[&str]); 5] = [
            (
                format!("servers:\n  {}\n  <<: {{{}, {}}}\n  {}\n", s("w"), s("m"), s("n"), s("v")),
                &["m", "n", "w", "v"],
            ),
            (
                format!("servers:\n  {}\n  <<: [{{{}}}, {{{}}}]\n", s("w"), s("m"), s("n")),
                &["n", "m", "w"],
            ),
            (
                format!(
                    "servers:\n  {}\n  <<: {{{}}}\n  {}\n  <<: {{{}}}\n",
                    s("w"), s("m"), s("v"), s("n")
                ),
                &["m", "n", "w", "v"],
            ),
            // Nested: a merged group's own merges come first in it.
            (
                format!(
                    "servers:\n  {}\n  <<: {{{}, <<: {{{}}}}}\n",
                    s("w"), s("m"), s("n")
                ),
                &["n", "m", "w"],
            ),
            // A written server that a merge brings too: its place is the merged one's.
            (
                "servers:\n  w: {url: http://w/v1}\n  m: {url: http://written/v1}\n  <<: {n: {url: http://n/v1}, m: {url: http://merged/v1}}\n".to_owned(),
                &["n", "m", "w"],
            ),
        ];
        for (yaml, expected) in cases {
            let c = Config::parse(&yaml, &no_env).expect(&yaml);
            assert_eq!(c.servers.keys().collect::<Vec<_>>(), expected, "{yaml}");
            for (alias, server) in &c.servers {
                let url = if alias == "m" && yaml.contains("written") {
                    "http://written/v1".to_owned()
                } else {
                    format!("http://{alias}/v1")
                };
                assert_eq!(server.url, url, "{yaml}");
            }
        }
    }

    /// A url with no path (or just `/`) is warned of by its key path, quoting only the origin
    /// (never the user info or query, which may hold keys); one with any path is not.
    #[test]
    fn a_url_with_no_path_is_warned_of_without_its_credentials() {
        let warnings = |url: &str| {
            Config::parse(&format!("servers:\n  s:\n    url: \"{url}\"\n"), &no_env)
                .expect(url)
                .warnings
        };
        let said = "servers.s.url: no path, so requests go to http://127.0.0.1:8000/chat/completions; the Python version added /v1 to every url: if this server needs it, end the url with /v1";
        for url in [
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000//",
            "http://user:pw-secret@127.0.0.1:8000/?key=q-secret",
        ] {
            assert_eq!(warnings(url), [said], "{url}");
        }
        assert_eq!(
            warnings("https://api.deepseek.com"),
            [
                "servers.s.url: no path, so requests go to https://api.deepseek.com/chat/completions; the Python version added /v1 to every url: if this server needs it, end the url with /v1"
            ]
        );
        for url in ["http://h/v1", "http://h/api/v3/", "http://h/x?key=k"] {
            assert!(warnings(url).is_empty(), "{url}");
        }
    }

    /// Framing and hop-by-hop fields are left out, each named in a warning: `Connection:
    /// close` from the config went upstream on every request, `Content-Length` was dropped in
    /// silence. The config still loads (a Python version's config may have one). `Host` is
    /// sent (it names the upstream's virtual host).
    #[test]
    fn framing_and_hop_by_hop_headers_are_left_out_with_a_warning() {
        for name in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "Upgrade",
            "TE",
            "Trailer",
            "Proxy-Connection",
            "Content-Length",
        ] {
            let c = Config::parse(
                &format!(
                    "servers:\n  e:\n    url: http://x/v1\n    headers: {{{name}: \"5\", X-Kept: k}}\n"
                ),
                &no_env,
            )
            .expect(name);
            assert_eq!(c.servers["e"].headers.len(), 1, "{name}");
            assert_eq!(c.servers["e"].headers["x-kept"], "k");
            assert_eq!(c.warnings.len(), 1, "{name}");
            let warning = &c.warnings[0];
            assert!(
                warning.starts_with(&format!("servers.e.headers.{name}: "))
                    && warning.ends_with("; not sent (remove it)"),
                "{name}: {warning}"
            );
        }
        let c = Config::parse(
            "servers:\n  e:\n    url: http://10.0.0.1/v1\n    headers: {Host: api.internal}\n",
            &no_env,
        )
        .expect("Host loads");
        assert_eq!(c.servers["e"].headers["host"], "api.internal");
        assert!(c.warnings.is_empty());
    }

    /// `${NAME}` is replaced in number and boolean keys too, then the text is read as the
    /// key's type: `timeout_secs: "${T}"` was "expected a number" while `"5"` loaded. Text
    /// that is not one names the variable, never its value.
    #[test]
    fn variables_are_replaced_in_number_and_boolean_keys() {
        let yaml = "servers:\n  a:\n    url: http://x\n    timeout_secs: \"${T}\"\n    stream_usage: \"${B}\"\nsettings:\n  models_cache_ttl_secs: \"${T}0\"\n  models_fetch_timeout_secs: ${T}\n  max_body_bytes: \"${N}\"\n";
        let env = |values: [&'static str; 3]| {
            move |name: &str| match name {
                "T" => Some(values[0].to_owned()),
                "B" => Some(values[1].to_owned()),
                "N" => Some(values[2].to_owned()),
                _ => None,
            }
        };
        let c = Config::parse(yaml, &env(["1.5", "no", "1000"])).expect("loads");
        assert_eq!(c.servers["a"].timeout, Duration::from_millis(1500));
        assert!(!c.servers["a"].stream_usage);
        assert_eq!(
            c.settings.models_cache_ttl,
            Duration::from_millis(1500),
            "\"1.5\" + \"0\""
        );
        assert_eq!(c.settings.models_fetch_timeout, Duration::from_millis(1500));
        assert_eq!(c.settings.max_body_bytes, 1000);

        let cases = [
            (
                ["soon-secret", "no", "1000"],
                "servers.a.timeout_secs",
                "expected a number at line 4, column 19: environment variable T does not hold one (its value is not shown)",
            ),
            (
                ["1", "maybe-secret", "1000"],
                "servers.a.stream_usage",
                "expected true or false (or the number 1 or 0) at line 5, column 19: environment variable B does not hold one (its value is not shown)",
            ),
            (
                ["1", "no", "1e6"],
                "settings.max_body_bytes",
                "expected a whole number (no fraction or exponent such as 1e6) at line 9, column 19: environment variable N does not hold one (its value is not shown)",
            ),
        ];
        for (values, expected_path, expected) in cases {
            let (path, reason) = Config::parse(yaml, &env(values)).expect_err(expected);
            assert_eq!((path.as_str(), reason.as_str()), (expected_path, expected));
        }
        // Text written with a variable: said with the text as written.
        let (path, reason) = Config::parse(
            "servers:\n  a:\n    url: http://x\n    timeout_secs: \"${T}s\"\n",
            &|_| Some("5".to_owned()),
        )
        .expect_err("5s");
        assert_eq!(path, "servers.a.timeout_secs");
        assert_eq!(
            reason,
            "expected a number at line 4, column 19: \"${T}s\" does not give one with the value of environment variable T (not shown)"
        );
        // An unset one is said as in a text key.
        let (path, reason) = error_of("settings:\n  max_body_bytes: \"${N}\"\n");
        assert_eq!(path, "settings.max_body_bytes");
        assert!(
            reason.starts_with("environment variable N is not set"),
            "{reason}"
        );
    }

    /// A key written twice is refused, naming both lines (PyYAML took the last one).
    #[test]
    fn a_key_written_twice_is_named_with_both_lines() {
        let cases = [
            (
                "servers:\n  a:\n    url: http://x\n  # again\n  b:\n    url: http://y\n  a:\n    url: http://z\n",
                "servers",
                "the key a appears twice, at line 2 and again at line 7, column 3; keep one",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers:\n      X-A: 1\n      \"X-A\": 2\n",
                "servers.a.headers",
                "the key X-A appears twice (as X-A and \"X-A\"), at line 5 and again at line 6, column 7; keep one",
            ),
            (
                "servers: {a: {url: http://x}, a: {url: http://y}}\n",
                "servers",
                "the key a appears twice on line 1; keep one",
            ),
        ];
        for (yaml, expected_path, expected) in cases {
            let (path, reason) = error_of(yaml);
            assert_eq!(path, expected_path, "{yaml}");
            assert_eq!(reason, expected, "{yaml}");
        }
    }

    /// A name written as a number and as text (`123:` and `'123':`) is refused as written
    /// twice, naming both lines and both spellings: YAML reads a number and a text, two keys,
    /// but each is the alias (or header name) `123`, so both loaded and one server was dropped
    /// in silence, `[123]x` going to the second with its key.
    #[test]
    fn a_name_written_as_a_number_and_as_text_is_written_twice() {
        let cases = [
            (
                "servers:\n  123:\n    url: http://x\n  '123':\n    url: http://y\n",
                "servers",
                "the key 123 appears twice (as 123 and '123'), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers:\n  \"0x1F\":\n    url: http://x\n  0x1F:\n    url: http://y\n",
                "servers",
                "the key 0x1F appears twice (as \"0x1F\" and 0x1F), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers:\n  1_000: {url: http://x}\n  x: {url: http://z}\n  '1_000': {url: http://y}\n",
                "servers",
                "the key 1_000 appears twice (as 1_000 and '1_000'), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers: {123: x, '123': y}\n",
                "servers.a.headers",
                "the key 123 appears twice (as 123 and '123') on line 4; keep one",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers:\n      !!str 7: x\n      7: y\n",
                "servers.a.headers",
                "the key 7 appears twice (as !!str 7 and 7), at line 5 and again at line 6, column 7; keep one",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers: {'7': x, !!str \"7\": y}\n",
                "servers.a.headers",
                "the key 7 appears twice (as '7' and !!str \"7\") on line 4; keep one",
            ),
            (
                "servers:\n  !<tag:yaml.org,2002:str> 7: {url: http://x}\n  !!str 7: {url: http://y}\n",
                "servers",
                "the key 7 appears twice (as !<tag:yaml.org,2002:str> 7 and !!str 7), at line 2 and again at line 3, column 3; keep one",
            ),
        ];
        for (yaml, expected_path, expected) in cases {
            let (path, reason) = error_of(yaml);
            assert_eq!(
                (path.as_str(), reason.as_str()),
                (expected_path, expected),
                "{yaml}"
            );
        }
    }

    /// Two spellings of one integer (`0x1F:` and `31:`) are one key to the YAML library, which
    /// refused them naming only the second, with no line for the first: said with both
    /// spellings and lines, as every key written twice is. Integers that differ, and
    /// spellings the library reads as text (`031`, a quoted `'31'` beside `0x1F`), pass.
    #[test]
    fn two_spellings_of_one_integer_are_named_with_both_lines() {
        let cases = [
            (
                "servers:\n  0x1F:\n    url: http://x\n  31:\n    url: http://y\n",
                "servers",
                "the key 31 appears twice (as 0x1F and 31), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers:\n  31: {url: http://x}\n  b: {url: http://z}\n  0x1f: {url: http://y}\n",
                "servers",
                "the key 0x1f appears twice (as 31 and 0x1f), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers: {0o17: {url: http://x}, +15: {url: http://y}}\n",
                "servers",
                "the key +15 appears twice (as 0o17 and +15) on line 1; keep one",
            ),
            (
                "servers:\n  1_000:\n    url: http://x\n  !!int 1000:\n    url: http://y\n",
                "servers",
                "the key 1000 appears twice (as 1_000 and !!int 1000), at line 2 and again at line 4, column 3; keep one",
            ),
            (
                "servers:\n  a:\n    url: http://x\n    headers:\n      0b11: a\n      &h 3: b\n",
                "servers.a.headers",
                "the key 3 appears twice (as 0b11 and 3), at line 5 and again at line 6, column 10; keep one",
            ),
        ];
        for (yaml, expected_path, expected) in cases {
            let (path, reason) = error_of(yaml);
            assert_eq!(
                (path.as_str(), reason.as_str()),
                (expected_path, expected),
                "{yaml}"
            );
        }
        for yaml in [
            "servers:\n  031:\n    url: http://x\n  31:\n    url: http://y\n",
            "servers:\n  0x1F:\n    url: http://x\n  '31':\n    url: http://y\n",
            "servers:\n  0x1F:\n    url: http://x\n  32:\n    url: http://y\n",
            "servers:\n  -0:\n    url: http://x\n  -1:\n    url: http://y\n",
        ] {
            let config = Config::parse(yaml, &no_env).expect(yaml);
            assert_eq!(config.servers.len(), 2, "{yaml}");
        }
    }

    /// An alias (or header name) written in the mapping wins over one of the same text merged
    /// in by `<<`, however each is written (`'123'` over a merged `123`), as it does over one
    /// written the same way; of two merged, the winning merge's is kept. The merged one used
    /// to replace the written one.
    #[test]
    fn a_written_name_wins_over_a_merged_one_written_as_a_number() {
        let url = |yaml: &str| {
            let c = Config::parse(yaml, &no_env).expect(yaml);
            assert_eq!(c.servers.len(), 1, "{yaml}");
            c.servers["123"].url.clone()
        };
        for (yaml, expected) in [
            (
                "servers: {<<: {123: {url: http://merged}}, '123': {url: http://written}}\n",
                "http://written",
            ),
            (
                "servers: {'123': {url: http://written}, <<: {123: {url: http://merged}}}\n",
                "http://written",
            ),
            (
                "servers:\n  <<: {'123': {url: http://merged}}\n  123:\n    url: http://written\n",
                "http://written",
            ),
            // Within one list the first listed wins; of separate `<<` keys, the last.
            (
                "servers:\n  <<: [{123: {url: http://first}}, {'123': {url: http://second}}]\n",
                "http://first",
            ),
            (
                "servers:\n  <<: {123: {url: http://first}}\n  <<: {'123': {url: http://second}}\n",
                "http://second",
            ),
        ] {
            assert_eq!(url(yaml), expected, "{yaml}");
        }
        let c = Config::parse(
            "servers:\n  a:\n    url: http://x\n    headers: {<<: {123: merged}, '123': written}\n",
            &no_env,
        )
        .expect("loads");
        assert_eq!(c.servers["a"].headers.len(), 1);
        assert_eq!(c.servers["a"].headers["123"], "written");
    }

    /// A key the path cannot name (an alias used as a key, `*k:`) at the top of the file is said
    /// to be at `(top level)`, as every other error there: it was `?`.
    #[test]
    fn a_top_level_key_written_twice_through_an_alias_is_at_the_top_level() {
        let (path, reason) =
            error_of("&k servers:\n  a:\n    url: http://x\n*k :\n  b:\n    url: http://y\n");
        assert_eq!(path, "(top level)");
        assert!(
            reason.starts_with("the key servers appears twice"),
            "{reason}"
        );
        let (path, reason) =
            error_of("servers:\n  a:\n    url: http://x\nservers:\n  b:\n    url: http://y\n");
        assert_eq!(path, "(top level)");
        assert_eq!(
            reason,
            "the key servers appears twice, at line 1 and again at line 4, column 1; keep one"
        );
    }

    /// The YAML library's wording is said in plain words for a value reached through an alias
    /// too (its message then ends "(defined at ...) (used at ...)", which hid it from the
    /// table), and for its limits on what a file may expand to ("budget breached: Nodes {
    /// nodes: 250001 }").
    #[test]
    fn errors_through_an_alias_and_over_the_limits_are_in_plain_words() {
        let (path, reason) = error_of(
            "servers:\n  s:\n    url: http://x\n    override: &o [a, b]\n  t:\n    url: http://x\n    append: [*o]\n",
        );
        assert_eq!(path, "servers.t.append[0]");
        assert_eq!(
            reason,
            "expected one value (text or a number), not a list or a mapping (defined at line 4, column 18) (used at line 7, column 14)"
        );
        // Six levels of ten aliases each: a million values from a few lines.
        let mut yaml = "servers:\n  s:\n    url: http://x\n    headers: &h0 {A: a, B: b, C: c, D: d, E: e, F: f, G: g, H: h, I: i, J: j}\n".to_owned();
        for level in 1..=6 {
            let merges = vec![format!("*h{}", level - 1); 10].join(", ");
            yaml.push_str(&format!(
                "  s{level}:\n    url: http://x\n    headers: &h{level} {{<<: [{merges}], X-{level}: v}}\n"
            ));
        }
        let (_, reason) = error_of(&yaml);
        assert!(
            reason.starts_with("more than the YAML reader reads in one file: 250001 values, past its limit (an alias `*name` counts again all it stands for)"),
            "{reason}"
        );
        assert!(
            !reason.contains("budget") && !reason.contains('{'),
            "{reason}"
        );
    }
}
