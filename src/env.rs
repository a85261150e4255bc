//! Settings that come only from environment variables (and `.env`), not from flags.
//!
//! Booleans accept `true/false`, `1/0`, `yes/no` in any case; anything else is an error that
//! names the variable, so a typo never silently turns a feature off. For the same reason a
//! variable the router would use that is set but empty (what `docker --env-file` leaves for
//! a missing value) or not UTF-8 is an error naming it, never taken as unset.

use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// Environment settings of the router.
#[derive(Debug, Clone)]
pub struct EnvSettings {
    /// `ENABLE_ACCOUNT_MANAGEMENT`: require a user key on every /v1 route.
    pub account_management: bool,
    /// `LLMSROUTER_LOG_FILE`: the request log; `None` when set to the empty string.
    pub log_file: Option<PathBuf>,
    /// `LLMSROUTER_LOG_BODIES`: include request and response bodies in the request log.
    pub log_bodies: bool,
    /// `LLMSROUTER_LEDGER`: write the usage ledger (default on; off only for benchmarks or a
    /// read-only database).
    pub ledger: bool,
    /// Langfuse tracing: on when both `LANGFUSE_PUBLIC_KEY` and `LANGFUSE_SECRET_KEY` are set.
    pub langfuse: Option<LangfuseEnv>,
    /// A generic OTLP/HTTP destination: `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `_HEADERS`).
    pub otlp: Option<OtlpEnv>,
    /// `LLMSROUTER_TRACE_MAX_IO_BYTES`: the cap on a span's input plus output.
    pub trace_max_io_bytes: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds): how often a batch of spans is sent.
    pub trace_export_interval: std::time::Duration,
    /// `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`, else `OTEL_EXPORTER_OTLP_COMPRESSION`, is
    /// `gzip`: every destination's export requests are gzipped (Langfuse accepts that).
    pub trace_gzip: bool,
    /// The resource of every exported span, `service.name` first: `OTEL_SERVICE_NAME`, else
    /// `service.name` of `OTEL_RESOURCE_ATTRIBUTES`, else `llmsrouter`; then the other
    /// attributes of `OTEL_RESOURCE_ATTRIBUTES` (`deployment.environment.name`, which
    /// Langfuse shows as the environment), and `service.version` unless given there.
    pub resource: Vec<(String, String)>,
    /// `LLMSROUTER_TEST_WARNING_INTERVAL_MS`, for tests only (undocumented): the interval
    /// between two warnings about lost records (10 s otherwise), so a test of the catch-up
    /// warning need not wait 10 s. See [`crate::sinks::loss`].
    pub test_warning_interval: Option<std::time::Duration>,
    /// Settings that look like mistakes but do not stop start-up (logged by `serve`).
    pub warnings: Vec<String>,
    /// The credentials in the proxy variables' URLs, for the sinks' redactor.
    pub proxy_secrets: Vec<Secret>,
}

/// Where and how to send spans to Langfuse.
#[derive(Debug, Clone)]
pub struct LangfuseEnv {
    /// `{LANGFUSE_HOST}/api/public/otel/v1/traces`.
    pub endpoint: String,
    pub public_key: Secret,
    pub secret_key: Secret,
}

/// A generic OTLP/HTTP (protobuf) traces destination.
#[derive(Debug, Clone)]
pub struct OtlpEnv {
    /// The endpoint with `/v1/traces` appended, as the OpenTelemetry spec says.
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, parsed; values are secrets (they often hold tokens).
    pub headers: Vec<(String, Secret)>,
}

impl EnvSettings {
    /// How often at most a warning about lost records (or failed accepts) of one kind is
    /// given: 10 s, or what `LLMSROUTER_TEST_WARNING_INTERVAL_MS` says (tests only).
    pub fn warning_interval(&self) -> std::time::Duration {
        self.test_warning_interval
            .unwrap_or(crate::sinks::loss::DEFAULT_WARNING_INTERVAL)
    }

    /// The credentials of the trace destinations, for the sinks' redactor: a prompt holding
    /// the Langfuse secret key or an OTLP token must not carry it to Langfuse, the collector
    /// or the request log. `LANGFUSE_SECRET_KEY`, `LANGFUSE_PUBLIC_KEY` (half of the Basic
    /// credentials, and with the secret key all a caller needs to read the project's traces)
    /// and the Basic credentials made of them; each
    /// `OTEL_EXPORTER_OTLP_HEADERS` value, and its last word (the token of `Bearer <token>`);
    /// the credentials in either endpoint's URL (see `config::url_secrets`); and those of the
    /// proxy variables (a proxy that passes `Proxy-Authorization` on lets an upstream echo
    /// them). Values too short to be keys are left out by the redactor, as for config.yaml's.
    pub fn secrets(&self) -> Vec<Secret> {
        let mut out = self.proxy_secrets.clone();
        if let Some(langfuse) = &self.langfuse {
            out.push(langfuse.secret_key.clone());
            out.push(langfuse.public_key.clone());
            out.push(crate::sinks::langfuse::basic_credentials(
                &langfuse.public_key,
                &langfuse.secret_key,
            ));
            out.extend(endpoint_secrets(&langfuse.endpoint));
        }
        if let Some(otlp) = &self.otlp {
            for (_, value) in &otlp.headers {
                out.push(value.clone());
                if let Some((_, token)) = value.expose().trim().rsplit_once([' ', '\t']) {
                    out.push(Secret::new(token));
                }
            }
            out.extend(endpoint_secrets(&otlp.endpoint));
        }
        out
    }
}

/// [`proxy_secrets`] of the process's environment, as the upstream client reads its
/// proxies (`.env` applied): for the redactor of the error bodies clients get.
pub fn process_proxy_secrets() -> Vec<Secret> {
    proxy_secrets(&|name| std::env::var(name).ok())
}

/// The credentials in each proxy variable's URL (`http://user:password@host:port`, the
/// scheme optional as the upstream client reads it), with the Basic credentials made of them.
fn proxy_secrets(env: &dyn Fn(&str) -> Option<String>) -> Vec<Secret> {
    PROXY_VARIABLES
        .iter()
        .filter_map(|name| env(name))
        .map(|value| {
            let value = value.trim().to_owned();
            if value.contains("://") {
                value
            } else {
                format!("http://{value}")
            }
        })
        .flat_map(|url| endpoint_secrets(&url))
        .collect()
}

fn endpoint_secrets(endpoint: &str) -> Vec<Secret> {
    url::Url::parse(endpoint)
        .map(|url| crate::config::url_secrets(&url))
        .unwrap_or_default()
}

/// Default of `LLMSROUTER_TRACE_MAX_IO_BYTES`: 1 MiB of input plus output per span.
pub const DEFAULT_TRACE_MAX_IO_BYTES: usize = 1024 * 1024;
/// Default of `LANGFUSE_HOST`.
pub const DEFAULT_LANGFUSE_HOST: &str = "https://cloud.langfuse.com";

#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub reason: String,
}

/// Every variable [`EnvSettings::from_lookup`] reads, and the proxy variables the upstream
/// client reads: a value of one that is not UTF-8 stops start-up naming it (`std::env::var`
/// gives no value for it, which read as "unset" turned accounts off, or the proxy).
pub const VARIABLES: &[&str] = &[
    "ENABLE_ACCOUNT_MANAGEMENT",
    "LLMSROUTER_LOG_FILE",
    "LLMSROUTER_LOG_BODIES",
    "LLMSROUTER_LEDGER",
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "LANGFUSE_HOST",
    "LANGFUSE_BASE_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "LLMSROUTER_TRACE_MAX_IO_BYTES",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "LLMSROUTER_TEST_WARNING_INTERVAL_MS",
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Whether llmsrouter reads the variable `name`: one of [`VARIABLES`], a flag's variable
/// (`LLMSROUTER_HOST`, `LLMSROUTER_DB`, ...), or `RUST_LOG`. A `.env` line for one that is
/// skipped (it cannot be read) stops `serve` and `check`: the router would run without the
/// setting, which for `ENABLE_ACCOUNT_MANAGEMENT` or `LLMSROUTER_HOST` opens it up.
pub fn read_by_router(name: &str) -> bool {
    router_variables().any(|variable| variable == name)
}

/// The variable of the router's that `name` (a `.env` name with `-`, which none of them
/// has) was probably meant to be: the same with `_` for each `-`, in any case.
pub fn meant_for_router(name: &str) -> Option<&'static str> {
    let underscored = name.replace('-', "_");
    router_variables().find(|variable| variable.eq_ignore_ascii_case(&underscored))
}

/// The variables [`read_by_router`] names: [`VARIABLES`], the flags' and `RUST_LOG`.
fn router_variables() -> impl Iterator<Item = &'static str> {
    VARIABLES
        .iter()
        .copied()
        .chain(
            crate::cli::FLAG_VARIABLES
                .iter()
                .map(|&(_, variable)| variable),
        )
        .chain(["RUST_LOG"])
}

/// Why a variable's value is read without the quotes around it, after the variable's name.
pub const READ_WITHOUT_QUOTES: &str =
    "its value is in quotes, as `docker run --env-file` keeps them: read without them";

/// What is inside the quotes of `value` when one pair of matching quotes (`"..."` or
/// `'...'`) wraps it whole, taken as it is (no escapes decoded); `None` otherwise.
/// `docker run --env-file .env` keeps a `.env`'s quotes in the value (moby#46773,
/// docker/cli#3630), where python-dotenv takes them off: the Python version's own `.env`
/// (`ENABLE_ACCOUNT_MANAGEMENT="false"`, `LANGFUSE_HOST="https://..."`) stopped the router
/// ("\"\"false\"\" is not a boolean"), and `api_key: "${K}"` sent `Bearer "sk-..."`. A value
/// with its quote inside as well (`"a" "b"`) is more than one pair, and stays as it is.
pub fn without_docker_quotes(value: &str) -> Option<&str> {
    let quote = value.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let inner = value.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains(quote)).then_some(inner)
}

/// Takes the quotes off each variable llmsrouter reads whose value is in quotes (see
/// [`without_docker_quotes`]), in the process's environment, before anything reads it: the
/// flags' variables are read by clap, the proxy variables by the upstream client, `RUST_LOG`
/// by the log, the others by [`EnvSettings::from_env`]. Only those `from_environment` names
/// (set before `.env` was loaded): the `.env` reader took a `.env` value's quotes off already,
/// and quotes left in one (`V='"x"'`) are meant, as python-dotenv reads them. Returns one
/// warning for each, naming the variable, never the value. Run at start, before any thread
/// is started.
pub fn unquote_router_variables(from_environment: &dyn Fn(&str) -> bool) -> Vec<String> {
    let unquoted: Vec<(&str, String)> = router_variables()
        .filter(|name| from_environment(name))
        .filter_map(|name| {
            let value = std::env::var(name).ok()?;
            Some((name, without_docker_quotes(&value)?.to_owned()))
        })
        .collect();
    if unquoted.is_empty() {
        return Vec::new();
    }
    if crate::dotenv::set_all(&unquoted).is_err() {
        // Not expected (the values came from the environment); if it happens the quoted
        // values stay, and each reader names its variable as it does a bad value.
        return Vec::new();
    }
    unquoted
        .into_iter()
        .map(|(name, _)| format!("{name}: {READ_WITHOUT_QUOTES}"))
        .collect()
}

/// Every bad variable [`EnvSettings::from_env`] found, in [`VARIABLES`]' order (those not
/// UTF-8 first): `check` names them all in one run, beside the listen address and
/// config.yaml, and `serve` says them all before it stops (it stopped at the first, so a
/// user with two mistakes needed two runs to learn of the second).
#[derive(Debug)]
pub struct EnvErrors {
    pub first: EnvError,
    pub rest: Vec<EnvError>,
    /// What [`EnvSettings::warnings`] would have held: the other variables' warnings, found
    /// all the same, so that `check` says them beside the errors (a bad variable hid them,
    /// and fixing it brought new complaints to light one run later).
    pub warnings: Vec<String>,
}

impl EnvErrors {
    /// The errors, with no warnings yet (the caller adds them).
    fn from_vec(mut errors: Vec<EnvError>) -> Option<Self> {
        if errors.is_empty() {
            return None;
        }
        let first = errors.remove(0);
        Some(Self {
            first,
            rest: errors,
            warnings: Vec::new(),
        })
    }

    pub fn into_vec(self) -> Vec<EnvError> {
        std::iter::once(self.first).chain(self.rest).collect()
    }
}

/// Reads each variable on, keeping every error: a bad one reads as its default, which is never
/// used, as the settings are not returned while there is an error.
#[derive(Default)]
struct Gathered {
    errors: Vec<EnvError>,
}

impl Gathered {
    fn value<T: Default>(&mut self, read: Result<T, EnvError>) -> T {
        read.unwrap_or_else(|error| {
            self.errors.push(error);
            T::default()
        })
    }
}

impl EnvSettings {
    pub fn from_env() -> Result<Self, EnvErrors> {
        let not_utf8: Vec<EnvError> = VARIABLES
            .iter()
            .filter(|&&name| matches!(std::env::var(name), Err(std::env::VarError::NotUnicode(_))))
            .map(|&name| not_utf8(name))
            .collect();
        // A value that is not UTF-8 reads as unset here: its own error comes first.
        let not_utf8 = EnvErrors::from_vec(not_utf8);
        match (Self::gather(&|name| std::env::var(name).ok()), not_utf8) {
            (Ok(settings), None) => Ok(settings),
            (Ok(settings), Some(mut errors)) => {
                errors.warnings = settings.warnings;
                Err(errors)
            }
            (Err(errors), None) => Err(errors),
            (Err(mut errors), Some(mut ahead)) => {
                ahead.warnings = std::mem::take(&mut errors.warnings);
                ahead.rest.extend(errors.into_vec());
                Err(ahead)
            }
        }
    }

    /// The settings, or the first bad variable's error.
    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        Self::gather(env).map_err(|errors| errors.first)
    }

    fn gather(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, EnvErrors> {
        let log_file = match env("LLMSROUTER_LOG_FILE") {
            None => Some(PathBuf::from("./api_proxy.log")),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
        };
        let mut warnings = Vec::new();
        let mut read = Gathered::default();
        unused_otlp_variables(env, &mut warnings);
        python_bypass(env, &mut warnings);
        proxy_variables(env, &mut read);
        proxy_warnings(env, &mut warnings);
        read.value(trusted_ca_file(env));
        read.value(trusted_ca_folders(env));
        let settings = Self {
            account_management: read.value(bool_var(env, "ENABLE_ACCOUNT_MANAGEMENT", false)),
            log_file,
            log_bodies: read.value(bool_var(env, "LLMSROUTER_LOG_BODIES", true)),
            ledger: read.value(bool_var(env, "LLMSROUTER_LEDGER", true)),
            langfuse: read.value(langfuse_env(env, &mut warnings)),
            otlp: otlp_env(env, &mut warnings, &mut read),
            trace_max_io_bytes: read.value(trace_max_io_bytes(env)),
            trace_export_interval: read.value(trace_export_interval(env)),
            trace_gzip: read.value(otlp_gzip(env)),
            resource: read.value(resource(env)),
            test_warning_interval: read.value(warning_interval(env)),
            warnings,
            proxy_secrets: proxy_secrets(env),
        };
        match EnvErrors::from_vec(read.errors) {
            None => Ok(settings),
            Some(mut errors) => {
                errors.warnings = settings.warnings;
                Err(errors)
            }
        }
    }
}

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` name the CAs the upstream client trusts in place of the
/// system's store (rustls-native-certs reads them when the client is built, and drops what
/// it cannot read): a file or folder that cannot be read, a file with no certificate, or
/// folders with none between them stop `serve` and `check` naming the variable, as the user
/// asked for that CA. Before, they were dropped in silence, `check` said ok, and every
/// request to the provider behind the private CA failed with UnknownIssuer. A file in a
/// folder that cannot be read is skipped, as OpenSSL skips it. This judges `SSL_CERT_FILE`;
/// [`trusted_ca_folders`] judges `SSL_CERT_DIR`.
fn trusted_ca_file(env: &dyn Fn(&str) -> Option<String>) -> Result<(), EnvError> {
    if let Some(file) = env("SSL_CERT_FILE") {
        if file.trim().is_empty() {
            return Err(set_but_empty("SSL_CERT_FILE"));
        }
        let path = Path::new(&file);
        let error = |reason: String| EnvError {
            name: "SSL_CERT_FILE",
            reason: format!("{}: {reason}: {NOT_TRUSTED}", path.display()),
        };
        if let Err(e) = std::fs::File::open(path) {
            return Err(error(format!("cannot be read ({e})")));
        }
        if rustls_native_certs::load_certs_from_paths(Some(path), None)
            .certs
            .is_empty()
        {
            return Err(error(
                "holds no PEM certificate (a -----BEGIN CERTIFICATE----- block) that can be read"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// What the CA variables' errors end with.
const NOT_TRUSTED: &str = "the CAs it names would not be trusted";

/// `SSL_CERT_DIR`, as [`trusted_ca_file`] reads `SSL_CERT_FILE`; each is judged apart, so
/// both are named when both are wrong.
fn trusted_ca_folders(env: &dyn Fn(&str) -> Option<String>) -> Result<(), EnvError> {
    let not_trusted = NOT_TRUSTED;
    if let Some(dirs) = env("SSL_CERT_DIR") {
        if dirs.trim().is_empty() {
            return Err(set_but_empty("SSL_CERT_DIR"));
        }
        // Folders separated by ':', as rustls-native-certs and OpenSSL read it: each must be
        // one, and together they must hold a certificate (an image may list an empty one).
        let folders: Vec<PathBuf> = std::env::split_paths(&dirs)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        for dir in &folders {
            if let Err(e) = std::fs::read_dir(dir) {
                return Err(EnvError {
                    name: "SSL_CERT_DIR",
                    reason: format!(
                        "{}: cannot be read as a folder ({e}): {not_trusted}",
                        dir.display()
                    ),
                });
            }
        }
        let holds_one = folders.iter().any(|dir| {
            !rustls_native_certs::load_certs_from_paths(None, Some(dir))
                .certs
                .is_empty()
        });
        if !holds_one {
            return Err(EnvError {
                name: "SSL_CERT_DIR",
                reason: format!(
                    "{}: holds no file with a PEM certificate (a -----BEGIN CERTIFICATE----- block): {not_trusted}",
                    dirs.trim()
                ),
            });
        }
    }
    Ok(())
}

/// A set, non-blank variable.
fn non_empty(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A variable the router uses, trimmed; `None` when unset. Set but blank is an error: taken
/// as unset, `LANGFUSE_HOST=` sent a self-hosted user's prompts to Langfuse Cloud.
fn given(
    env: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<String>, EnvError> {
    match env(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(set_but_empty(name)),
        Some(v) => Ok(Some(v.trim().to_owned())),
    }
}

/// The error of a variable that is set but empty, in the words the command line uses.
pub fn set_but_empty(name: &'static str) -> EnvError {
    EnvError {
        name,
        reason: "is set but empty: unset it, or give it a value".into(),
    }
}

/// The error of a variable whose value is not UTF-8 (never shown: it may be a key).
pub fn not_utf8(name: &'static str) -> EnvError {
    EnvError {
        name,
        reason: "is not UTF-8 text (saved in another encoding?): fix its value, or unset it".into(),
    }
}

fn langfuse_env(
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<LangfuseEnv>, EnvError> {
    const KEYS: [&str; 2] = ["LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"];
    let public_key = non_empty(env, KEYS[0]);
    let secret_key = non_empty(env, KEYS[1]);
    let (public_key, secret_key) = match (public_key, secret_key) {
        (Some(public_key), Some(secret_key)) => (public_key, secret_key),
        (public_key, secret_key) => {
            // An empty key turns tracing off with a warning, not an error: a Python version's
            // `.env` may hold `LANGFUSE_SECRET_KEY=` as a blank placeholder, and nothing is
            // sent anywhere.
            let empty: Vec<&str> = KEYS
                .into_iter()
                .filter(|name| env(name).is_some_and(|v| v.trim().is_empty()))
                .collect();
            if !empty.is_empty() {
                warnings.push(format!(
                    "Langfuse tracing is off: {} set but empty",
                    match empty[..] {
                        [one] => format!("{one} is"),
                        _ => format!("{} are", empty.join(" and ")),
                    }
                ));
            } else if public_key.is_some() || secret_key.is_some() {
                warnings.push(
                    "Langfuse tracing is off: set both LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"
                        .to_owned(),
                );
            }
            return Ok(None);
        }
    };
    // `LANGFUSE_HOST` first; `LANGFUSE_BASE_URL` only when it is unset. The one used must
    // not be empty.
    let (host_name, host) = match given(env, "LANGFUSE_HOST")? {
        Some(host) => ("LANGFUSE_HOST", host),
        None => match given(env, "LANGFUSE_BASE_URL")? {
            Some(base) => ("LANGFUSE_BASE_URL", base),
            None => ("LANGFUSE_HOST", DEFAULT_LANGFUSE_HOST.to_owned()),
        },
    };
    let base = http_url(host_name, &host)?;
    Ok(Some(LangfuseEnv {
        endpoint: with_path_appended(&base, "/api/public/otel/v1/traces"),
        public_key: Secret::new(public_key),
        secret_key: Secret::new(secret_key),
    }))
}

/// The endpoint and its headers are judged apart, so both are named when both are wrong.
fn otlp_env(
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
    read: &mut Gathered,
) -> Option<OtlpEnv> {
    let endpoint = given(env, "OTEL_EXPORTER_OTLP_ENDPOINT");
    if matches!(endpoint, Ok(None)) {
        let headers = read
            .value(
                non_empty(env, "OTEL_EXPORTER_OTLP_HEADERS")
                    .map(|raw| parse_otlp_headers(&raw))
                    .transpose(),
            )
            .unwrap_or_default();
        if !headers.is_empty() {
            warnings.push(
                "OTEL_EXPORTER_OTLP_HEADERS is set without OTEL_EXPORTER_OTLP_ENDPOINT; it is ignored"
                    .to_owned(),
            );
        }
        return None;
    }
    let base = read.value(endpoint.and_then(|endpoint| {
        endpoint
            .map(|endpoint| http_url("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint))
            .transpose()
    }));
    let headers = read.value(
        given(env, "OTEL_EXPORTER_OTLP_HEADERS")
            .and_then(|raw| raw.map(|raw| parse_otlp_headers(&raw)).transpose()),
    );
    Some(OtlpEnv {
        endpoint: traces_endpoint(&base?),
        headers: headers.unwrap_or_default(),
    })
}

/// Standard OTLP variables a user may well set that the router does not act on: each gets a
/// warning at start rather than being silently ignored.
/// The Python version's `ENABLE_BYPASS` (a per-user model pin, on unless set to false there)
/// has no counterpart: ignored, as every variable the router does not know is, but said when
/// it is set to anything the Python version took for on, so nobody counts on pins that no
/// longer apply: any value but a false one (`on` too), in quotes too (`docker --env-file`
/// keeps a `.env`'s `ENABLE_BYPASS="true"` so; bb79: no warning).
fn python_bypass(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) {
    let Some(value) = non_empty(env, "ENABLE_BYPASS") else {
        return;
    };
    let value = without_docker_quotes(&value).unwrap_or(&value);
    if parse_bool(value) != Some(false) {
        warnings.push(
            "ENABLE_BYPASS is ignored: llmsrouter has no bypass (the Python version's per-user \
             model pin, /api/user/bypass); each request's model is used as it names it"
                .to_owned(),
        );
    }
}

fn unused_otlp_variables(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if non_empty(env, name).is_some() {
            warnings.push(format!(
                "{name} is not read; use OTEL_EXPORTER_OTLP_ENDPOINT (/v1/traces is appended) \
                 and OTEL_EXPORTER_OTLP_HEADERS"
            ));
        }
    }
    // Spans leave as OTLP/HTTP protobuf only (Langfuse takes nothing else); a collector set
    // up for gRPC or JSON would otherwise wonder why nothing it understands arrives.
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Some(protocol) = non_empty(env, name) {
            if !protocol.trim().eq_ignore_ascii_case("http/protobuf") {
                warnings.push(format!(
                    "{name}={protocol} is not supported: spans are sent as http/protobuf"
                ));
            }
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    ] {
        if non_empty(env, name).is_some() {
            warnings.push(format!(
                "{name} has no effect; each export attempt may take 10 s, and its retries 60 s in all"
            ));
        }
    }
}

/// Whether spans are gzipped: the per-signal compression variable if set, else the general
/// one, as in the OTLP crate (which reads them too, for every exporter, so the router and the
/// crate always agree). Each one set must say `gzip` or `none`: any other value stops
/// start-up naming it. Skipped with a warning, `zstd` (a valid OTLP value that Langfuse does
/// not accept) left the exports uncompressed while `check` said ok.
fn otlp_gzip(env: &dyn Fn(&str) -> Option<String>) -> Result<bool, EnvError> {
    let mut gzip = None;
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ] {
        let Some(value) = given(env, name)? else {
            continue;
        };
        let on = if value.eq_ignore_ascii_case("gzip") {
            true
        } else if value.eq_ignore_ascii_case("none") {
            false
        } else {
            return Err(EnvError {
                name,
                reason: format!(
                    "\"{}\" is not supported: give gzip or none, or unset it",
                    value.escape_debug()
                ),
            });
        };
        gzip.get_or_insert(on);
    }
    Ok(gzip.unwrap_or(false))
}

/// `base` + `/v1/traces`, with exactly one `/` between them (OTLP exporter spec).
pub fn traces_endpoint(base: &str) -> String {
    with_path_appended(base, "/v1/traces")
}

/// `base` with `suffix` after its path, before any query: `http://h/otel?token=t` gives
/// `http://h/otel/v1/traces?token=t`, where appending to the text put the suffix inside the
/// query. A base without a query or fragment keeps its exact text.
fn with_path_appended(base: &str, suffix: &str) -> String {
    let end = base.find(['?', '#']).unwrap_or(base.len());
    let (before, after) = base.split_at(end);
    format!("{}{suffix}{after}", before.trim_end_matches('/'))
}

/// A URL as it may be printed (`check`, the start-up log, errors): the user name and
/// password before `@` and the query, which may hold a token, are shown as `[redacted]`.
/// Works on the text, so a value that is not a URL at all is masked too. Everything up to
/// the last `@` is taken for credentials, though a URL's user info ends at its first `/`,
/// `?` or `#`: a password written with one of them unescaped (`user:pa/ss@proxy`) is still
/// what its writer meant as one, and must not be printed.
pub fn shown_url(value: &str) -> String {
    let authority_start = value.find("://").map_or(0, |at| at + 3);
    let mut shown = value[..authority_start].to_owned();
    let mut rest = &value[authority_start..];
    if let Some(at) = rest.rfind('@') {
        shown.push_str("[redacted]");
        rest = &rest[at..];
    }
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    shown.push_str(authority);
    let query = tail.find('?');
    let fragment = tail.find('#');
    match query.filter(|q| fragment.is_none_or(|f| *q < f)) {
        Some(q) => {
            shown.push_str(&tail[..=q]);
            shown.push_str("[redacted]");
            if let Some(f) = fragment {
                shown.push_str(&tail[f..]);
            }
        }
        None => shown.push_str(tail),
    }
    shown
}

/// Checks that `value` is an absolute http(s) URL written `http(s)://host`, as a server's
/// `url` in config.yaml must be; the error names the variable. A control character in it
/// (a tab, a line break: the url crate drops them) is said without the value, which it
/// would break over lines; `http:///x` (the host `x`) used to pass `check` and stop `serve`.
fn http_url(name: &'static str, value: &str) -> Result<String, EnvError> {
    if value.contains(char::is_control) {
        return Err(EnvError {
            name,
            reason: "has a tab, line break or other control character inside: remove it".to_owned(),
        });
    }
    match crate::config::validate_base_url(value) {
        Ok(_) => Ok(value.to_owned()),
        Err(reason) => Err(EnvError {
            name,
            reason: format!("\"{}\" is not an http(s) URL: {reason}", shown_url(value)),
        }),
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: header names and values (see [`KeyValues`]).
pub fn parse_otlp_headers(raw: &str) -> Result<Vec<(String, Secret)>, EnvError> {
    let entries = KeyValues {
        name: "OTEL_EXPORTER_OTLP_HEADERS",
        expected: "key=value,key2=value2",
        bad_key: |key| {
            http::HeaderName::from_bytes(key.as_bytes())
                .is_err()
                .then_some("has an invalid header name")
        },
        bad_value: |value| {
            http::HeaderValue::from_str(value)
                .is_err()
                .then_some("has a value that is not a valid header value")
        },
    };
    Ok(entries
        .parse(raw)?
        .into_iter()
        .map(|(key, value)| (key, Secret::new(value)))
        .collect())
}

/// A `key1=value1,key2=value2` variable with percent-encoded values, the OpenTelemetry
/// format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`. Errors name the
/// entry by its number, never its value (it usually holds a token).
struct KeyValues {
    name: &'static str,
    /// What an entry looks like, for the error.
    expected: &'static str,
    /// What is wrong with a (trimmed) key, if anything.
    bad_key: fn(&str) -> Option<&'static str>,
    /// What is wrong with a decoded value, if anything.
    bad_value: fn(&str) -> Option<&'static str>,
}

impl KeyValues {
    /// The entries, keys trimmed and values trimmed and decoded; blank entries skipped. A `%`
    /// not followed by two hex digits (`Basic%2`, `%zz`) is refused rather than sent as it
    /// is: the value was meant to be decoded, and a token sent half-decoded only fails later,
    /// at the backend, as a 401.
    fn parse(&self, raw: &str) -> Result<Vec<(String, String)>, EnvError> {
        let mut out = Vec::new();
        for (index, entry) in raw.split(',').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            let bad = |what: &str| EnvError {
                name: self.name,
                reason: format!("entry {} {what} (expected {})", index + 1, self.expected),
            };
            let Some((key, value)) = entry.split_once('=') else {
                return Err(bad("has no '='"));
            };
            let key = key.trim();
            if let Some(what) = (self.bad_key)(key) {
                return Err(bad(what));
            }
            let value = value.trim();
            if !percent_escapes_are_whole(value) {
                return Err(bad(
                    "has a '%' not followed by two hex digits; write a literal '%' as %25",
                ));
            }
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| bad("has a value that is not UTF-8 after percent-decoding"))?;
            if let Some(what) = (self.bad_value)(&value) {
                return Err(bad(what));
            }
            out.push((key.to_owned(), value.into_owned()));
        }
        Ok(out)
    }
}

/// The default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "llmsrouter";

/// The span resource (see [`EnvSettings::resource`]), as the OpenTelemetry SDK
/// configuration says: `OTEL_SERVICE_NAME` wins over a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, whose values are percent-decoded.
fn resource(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, EnvError> {
    let attributes = match env("OTEL_RESOURCE_ATTRIBUTES") {
        Some(raw) => parse_resource_attributes(&raw)?,
        None => Vec::new(),
    };
    let service_name = non_empty(env, "OTEL_SERVICE_NAME")
        .or_else(|| {
            attributes
                .iter()
                .rev()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let mut out = vec![("service.name".to_owned(), service_name)];
    if !attributes.iter().any(|(k, _)| k == "service.version") {
        out.push((
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ));
    }
    for (key, value) in attributes {
        if key == "service.name" {
            continue;
        }
        // A key given twice: the last one counts, as the SDKs read it.
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    Ok(out)
}

/// `OTEL_RESOURCE_ATTRIBUTES`: resource attributes (see [`KeyValues`]).
pub fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, EnvError> {
    KeyValues {
        name: "OTEL_RESOURCE_ATTRIBUTES",
        expected: "key=value,key2=value2, values percent-encoded",
        bad_key: |key| key.is_empty().then_some("has an empty key"),
        bad_value: |_| None,
    }
    .parse(raw)
}

/// Every `%` in `value` starts an escape of two hex digits. (`percent_decode_str` leaves a
/// bad escape as it is, silently.)
fn percent_escapes_are_whole(value: &str) -> bool {
    let bytes = value.as_bytes();
    memchr::memchr_iter(b'%', bytes).all(|at| {
        bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Default of `OTEL_BSP_SCHEDULE_DELAY` here: 1 s (the SDK's 5 s makes Langfuse lag).
pub const DEFAULT_TRACE_EXPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn trace_export_interval(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<std::time::Duration, EnvError> {
    const NAME: &str = "OTEL_BSP_SCHEDULE_DELAY";
    let Some(value) = given(env, NAME)? else {
        return Ok(DEFAULT_TRACE_EXPORT_INTERVAL);
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(EnvError {
            name: NAME,
            reason: format!("\"{value}\" is not a positive number of milliseconds"),
        }),
    }
}

fn warning_interval(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<std::time::Duration>, EnvError> {
    const NAME: &str = "LLMSROUTER_TEST_WARNING_INTERVAL_MS";
    let Some(value) = given(env, NAME)? else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(std::time::Duration::from_millis(ms))),
        _ => Err(EnvError {
            name: NAME,
            reason: format!("\"{value}\" is not a positive number of milliseconds"),
        }),
    }
}

fn trace_max_io_bytes(env: &dyn Fn(&str) -> Option<String>) -> Result<usize, EnvError> {
    const NAME: &str = "LLMSROUTER_TRACE_MAX_IO_BYTES";
    let Some(value) = given(env, NAME)? else {
        return Ok(DEFAULT_TRACE_MAX_IO_BYTES);
    };
    match value.parse::<usize>() {
        Ok(n) if n >= 1024 => Ok(n),
        _ => Err(EnvError {
            name: NAME,
            reason: format!("\"{value}\" is not a number of bytes of at least 1024"),
        }),
    }
}

/// Reads a boolean variable; unset means `default`. Set but empty is an error, not the
/// default: `docker --env-file` and compose's `${VAR}` leave a variable empty when its value
/// went missing, and for `ENABLE_ACCOUNT_MANAGEMENT` reading that as `false` would open a
/// router meant to be closed (an empty real variable also hides `.env`'s value).
pub fn bool_var(
    env: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, EnvError> {
    match env(name) {
        None => Ok(default),
        Some(v) if v.trim().is_empty() => Err(EnvError {
            name,
            reason: "is set but empty: give it true or false (or 1/0, yes/no), or unset it".into(),
        }),
        Some(v) => parse_bool(&v).ok_or_else(|| EnvError {
            name,
            reason: format!("\"{v}\" is not a boolean (use true/false, 1/0 or yes/no)"),
        }),
    }
}

/// The variables the upstream client takes its proxies from (hyper-util's `Matcher`, which
/// reqwest uses too), as it reads them; `NO_PROXY` cannot be wrong.
pub const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Each proxy variable that is set (empty counts as unset, as in curl) must be a proxy the
/// upstream client uses: one its matcher cannot read (`http://[bad`, `http://proxy host:3128`)
/// it skips without a word, and requests went straight to the provider, past the proxy that
/// was meant to carry them; a `socks5://` one it reads, but reqwest is built without SOCKS,
/// so every request through it failed with 502. The value is never shown: a proxy URL often
/// holds a password.
fn proxy_variables(env: &dyn Fn(&str) -> Option<String>, read: &mut Gathered) {
    for name in PROXY_VARIABLES {
        // Untrimmed: the matcher reads it so.
        let Some(value) = env(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        read.value(proxy_variable(name, value));
    }
}

/// One proxy variable's value, as [`proxy_variables`] judges it.
fn proxy_variable(name: &'static str, value: String) -> Result<(), EnvError> {
    use hyper_util::client::proxy::matcher::Matcher;
    let bad = |reason: String| EnvError { name, reason };
    let scheme = value
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.scheme_str().map(str::to_ascii_lowercase));
    if let Some(scheme) = scheme.filter(|s| s != "http" && s != "https") {
        return Err(bad(format!(
            "{scheme}:// proxies are not supported: give an http:// or https:// proxy \
             (http://host:port), or unset it"
        )));
    }
    if authority_of(&value).matches('@').count() > 1 {
        return Err(bad(
            "holds more than one @ before its host: percent-encode an @ in the user name \
             or password as %40 (its value is not shown: it may hold a password)"
                .to_owned(),
        ));
    }
    // What the matcher makes of it, asked as the upstream client asks it; a port it
    // takes as text (`:99999`, `:pa` of a password with a `/` in it) reaches no proxy.
    let matcher = Matcher::builder().all(value).build();
    let probe = http::Uri::from_static("http://llmsrouter.invalid/");
    let used = matcher.intercept(&probe).is_some_and(|proxy| {
        proxy
            .uri()
            .authority()
            .is_some_and(|authority| port_is_whole(authority.as_str()))
    });
    if !used {
        return Err(bad(
            "is not a proxy URL such as http://host:port or http://user:password@host:port \
             (its value is not shown: it may hold a password)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The authority of a proxy URL as written (`user:password@host:port`): after the scheme's
/// `://`, if any, up to the path, query or fragment. The matcher splits it at its first `@`,
/// so in `http://user:p@ss@host` it took the password to be `p` and the host `ss@host`, and
/// the proxy got the wrong credentials; curl refuses such a URL.
fn authority_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// What the upstream client's matcher reads otherwise than curl and Python do, said once at
/// start rather than found when traffic meant to bypass a proxy went through it:
/// - a `NO_PROXY` entry with a port (`vm:8000`, `127.0.0.1:8000`, `[::1]:8000`; Python's
///   urllib and httpx honour it) or a network that is none (`10.0.0.0/33`): the matcher
///   takes it as a name no host has, so it bypasses nothing;
/// - a variable set in both cases to different values: the upper-case one is read (curl and
///   Python read the lower-case one first).
fn proxy_warnings(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    for [upper, lower] in [
        ["HTTPS_PROXY", "https_proxy"],
        ["HTTP_PROXY", "http_proxy"],
        ["ALL_PROXY", "all_proxy"],
        ["NO_PROXY", "no_proxy"],
    ] {
        if let (Some(a), Some(b)) = (set(upper), set(lower)) {
            if a.trim() != b.trim() {
                // Values not shown: a proxy URL may hold a password.
                warnings.push(format!(
                    "{upper} and {lower} are both set, to different values: {upper} is read \
                     (curl and Python read {lower}); unset one"
                ));
            }
        }
    }
    let Some((name, value)) = ["NO_PROXY", "no_proxy"]
        .into_iter()
        .find_map(|name| set(name).map(|value| (name, value)))
    else {
        return;
    };
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if let Some(why) = unread_no_proxy_entry(entry) {
            // A proxy URL pasted into the list may carry its password, with or without
            // its scheme; a host, address or network is shown as it is.
            warnings.push(format!(
                "{name}: the entry \"{}\" {why}, so it bypasses the proxy for no host",
                crate::printable(&shown_url(entry))
            ));
        }
    }
}

/// Why the matcher reads `entry` of `NO_PROXY` as matching no host, if it does. Read as
/// hyper-util reads it: a network (ipnet's parse), else an IP address, else a name, which
/// matches a host by its name or as a domain's end (`*` alone matches every name); a name
/// no host can have is said with what it looks like.
fn unread_no_proxy_entry(entry: &str) -> Option<&'static str> {
    if entry == "*"
        || entry.parse::<ipnet::IpNet>().is_ok()
        || entry.parse::<std::net::IpAddr>().is_ok()
    {
        return None;
    }
    let why = if entry.contains("://") {
        "is a URL, which is not read (write the host alone)"
    } else if entry.starts_with('[') && entry.contains("]:") {
        // Not "without the brackets": `::1:80` is another address, read without a word.
        "has a port, which is not read (write the address alone, without brackets or port)"
    } else if entry.starts_with('[') {
        "is an IPv6 address in brackets, which is not read (write it without them)"
    } else if entry.contains('/') {
        "is not a network (an IP address, / and a prefix length of its digits alone)"
    } else if entry.starts_with("*.") {
        "starts with a wildcard, which is not read (write .example.com for a domain and every \
         host in it)"
    } else if entry.contains('%') {
        "has a zone (%...), which is not read"
    } else if entry.contains(':') {
        "has a port, which is not read (write the host alone)"
    } else if entry.contains('*') {
        "has a wildcard, which is read only alone (*)"
    } else {
        return None;
    };
    Some(why)
}

/// Gives an upper-case proxy variable set but empty (`HTTP_PROXY=`, as `docker --env-file`
/// leaves a missing value) the value of its lower-case twin when that is set: the upstream
/// client's matcher (hyper-util's, reqwest's too) reads the first of the two that is set,
/// empty or not, so `HTTP_PROXY= http_proxy=http://proxy:3128` went past the proxy, and
/// `NO_PROXY= no_proxy=vm` through it, where curl reads an empty one as unset. Called at start,
/// before anything reads them.
pub fn empty_proxy_variables_yield() {
    let filled: Vec<(&str, String)> = [
        ("HTTPS_PROXY", "https_proxy"),
        ("HTTP_PROXY", "http_proxy"),
        ("ALL_PROXY", "all_proxy"),
        ("NO_PROXY", "no_proxy"),
    ]
    .into_iter()
    .filter_map(|(upper, lower)| {
        std::env::var(upper).ok().filter(|v| v.trim().is_empty())?;
        let value = std::env::var(lower).ok().filter(|v| !v.trim().is_empty())?;
        Some((upper, value))
    })
    .collect();
    if !filled.is_empty() {
        // Not expected to fail (the values came from the environment); if it does, the
        // matcher reads the variables as they are.
        let _ = crate::dotenv::set_all(&filled);
    }
}

/// `NO_PROXY` (or `no_proxy`, when `NO_PROXY` is unset or empty) is `*`: no host is reached
/// through a proxy, as curl and httpx read it. hyper-util's matcher, which reqwest uses too,
/// takes `*` for every name but for no IP address, so `http://127.0.0.1:8000/v1` still went
/// through the proxy; the upstream clients are given no proxy at all instead.
pub fn no_proxy_for_any_host() -> bool {
    ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .is_some_and(|value| value.trim() == "*")
}

/// Whether `host[:port]` has no port, an empty one (the default), or one from 0 to 65535
/// (`[::1]` has none).
fn port_is_whole(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.contains(']') => port.is_empty() || port.parse::<u16>().is_ok(),
        _ => true,
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_in_every_spelling() {
        for t in ["true", "TRUE", "1", "yes", "Yes "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "0", "no", "NO"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("on"), None);
    }

    /// One pair of matching quotes around the whole value, and nothing else, is taken off;
    /// what is inside is kept as it is.
    #[test]
    fn quotes_docker_kept_are_told() {
        for (value, inner) in [
            ("\"false\"", "false"),
            ("'https://cloud.langfuse.com'", "https://cloud.langfuse.com"),
            ("\"\"", ""),
            ("'{\"a\": \"b\"}'", "{\"a\": \"b\"}"),
            ("\"a\\nb 'c'\"", "a\\nb 'c'"),
        ] {
            assert_eq!(without_docker_quotes(value), Some(inner), "{value}");
        }
        for value in [
            "false",
            "\"",
            "'",
            "\"false",
            "false\"",
            "\"false'",
            " \"false\"",
            "\"false\" ",
            "\"a\" \"b\"",
            "'it's'",
        ] {
            assert_eq!(without_docker_quotes(value), None, "{value}");
        }
    }

    #[test]
    fn bad_boolean_names_the_variable() {
        let env = |n: &str| (n == "ENABLE_ACCOUNT_MANAGEMENT").then(|| "maybe".to_owned());
        let err = EnvSettings::from_lookup(&env).expect_err("bad");
        assert!(err.to_string().starts_with("ENABLE_ACCOUNT_MANAGEMENT:"));
    }

    #[test]
    fn an_empty_boolean_is_an_error_not_its_default() {
        for name in [
            "ENABLE_ACCOUNT_MANAGEMENT",
            "LLMSROUTER_LOG_BODIES",
            "LLMSROUTER_LEDGER",
        ] {
            let env = |n: &str| (n == name).then(|| " ".to_owned());
            let err = EnvSettings::from_lookup(&env).expect_err("empty");
            assert!(
                err.to_string()
                    .starts_with(&format!("{name}: is set but empty")),
                "{err}"
            );
        }
    }

    /// The destinations' credentials are what the sinks' redactor looks for beside the
    /// config's; a value too short to be a key (`x-team=ml`) is then skipped by the redactor.
    #[test]
    fn the_trace_destinations_credentials_are_secrets() {
        let s = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-public-1"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-secret-1"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://c:4318/otel?token=qtoken-123",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20tok-123456789,x-team=ml",
            ),
        ]))
        .expect("ok");
        let secrets: Vec<String> = s.secrets().iter().map(|s| s.expose().to_owned()).collect();
        assert_eq!(
            secrets,
            [
                "sk-lf-secret-1",
                "pk-lf-public-1",
                "cGstbGYtcHVibGljLTE6c2stbGYtc2VjcmV0LTE=",
                "Bearer tok-123456789",
                "tok-123456789",
                "ml",
                "qtoken-123",
            ]
        );
        let redactor = crate::sinks::redact::Redactor::new(&s.secrets());
        assert_eq!(
            redactor.redact("sk-lf-secret-1 pk-lf-public-1 tok-123456789 ml", &[]),
            "[redacted] [redacted] [redacted] ml"
        );
    }

    /// A proxy variable's credentials are secrets too (a proxy passing `Proxy-Authorization`
    /// on lets an upstream echo them into a logged error), with or without a scheme.
    #[test]
    fn the_proxy_variables_credentials_are_secrets() {
        let s = EnvSettings::from_lookup(&lookup(&[
            (
                "HTTPS_PROXY",
                "http://proxyuser:ProxyPass_s3cret99@127.0.0.1:3128",
            ),
            ("http_proxy", "tokenonly-123456@proxy:3128"),
        ]))
        .expect("ok");
        let secrets: Vec<String> = s.secrets().iter().map(|s| s.expose().to_owned()).collect();
        assert_eq!(
            secrets,
            [
                "ProxyPass_s3cret99",
                "cHJveHl1c2VyOlByb3h5UGFzc19zM2NyZXQ5OQ==",
                "dG9rZW5vbmx5LTEyMzQ1Njo=",
                "tokenonly-123456",
            ]
        );
        let redactor = crate::sinks::redact::Redactor::new(&s.secrets());
        assert_eq!(
            redactor.redact(
                "'proxy-authorization': 'Basic cHJveHl1c2VyOlByb3h5UGFzc19zM2NyZXQ5OQ==' ProxyPass_s3cret99",
                &[]
            ),
            "'proxy-authorization': 'Basic [redacted]' [redacted]"
        );
    }

    #[test]
    fn the_resource_follows_the_otel_variables() {
        let resource = |pairs: &[(&str, &str)]| {
            EnvSettings::from_lookup(&lookup(pairs))
                .expect("ok")
                .resource
        };
        let version = env!("CARGO_PKG_VERSION");
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            resource(&[]),
            [
                pair("service.name", "llmsrouter"),
                pair("service.version", version)
            ]
        );
        assert_eq!(
            resource(&[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=a%20b,service.version=9,x=1,x=2,,"
            )]),
            [
                pair("service.name", "a b"),
                pair("service.version", "9"),
                pair("x", "2")
            ]
        );
        assert_eq!(
            resource(&[
                ("OTEL_SERVICE_NAME", " gw "),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a")
            ])[0],
            pair("service.name", "gw")
        );
        let error = EnvSettings::from_lookup(&lookup(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1,tok")]))
            .expect_err("no '='");
        assert_eq!(
            error.to_string(),
            "OTEL_RESOURCE_ATTRIBUTES: entry 2 has no '=' (expected key=value,key2=value2, values percent-encoded)"
        );
    }

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn otlp_variables_the_router_does_not_use_are_named_in_warnings() {
        let s = EnvSettings::from_lookup(&lookup(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]))
        .expect("ok");
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is not read",
            "OTEL_EXPORTER_OTLP_TIMEOUT has no effect",
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported",
        ] {
            assert!(s.warnings.iter().any(|w| w.starts_with(name)), "{name}");
        }
    }

    #[test]
    fn compression_is_gzip_or_none_and_the_per_signal_variable_comes_first() {
        let gzip = |pairs: &[(&str, &str)]| {
            let s = EnvSettings::from_lookup(&lookup(pairs)).expect("ok");
            (s.trace_gzip, s.warnings)
        };
        assert_eq!(gzip(&[]), (false, vec![]));
        assert_eq!(
            gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", " GZIP ")]),
            (true, vec![])
        );
        assert_eq!(
            gzip(&[
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ]),
            (false, vec![])
        );
        // Any other value stops start-up, in either variable, whichever comes first.
        for pairs in [
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ],
        ] {
            let error = EnvSettings::from_lookup(&lookup(pairs)).expect_err("zstd");
            assert!(
                error
                    .to_string()
                    .ends_with(": \"zstd\" is not supported: give gzip or none, or unset it"),
                "{error}"
            );
        }
        let error =
            EnvSettings::from_lookup(&lookup(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")]))
                .expect_err("brotli");
        assert_eq!(error.name, "OTEL_EXPORTER_OTLP_COMPRESSION");
    }

    #[test]
    fn a_proxy_must_be_one_the_upstream_client_uses() {
        let refused = |name: &str, value: &str| {
            EnvSettings::from_lookup(&lookup(&[(name, value)]))
                .err()
                .map(|e| e.to_string())
        };
        for value in [
            "http://proxy:3128",
            "https://u:p%40ss@proxy:3128",
            "http://u:p%40ss@proxy:3128/a@b",
            "proxy:3128",
            "HTTP://proxy",
            "http://[::1]:3128",
            "http://proxy:",
            "",
            "  ",
        ] {
            assert_eq!(refused("HTTP_PROXY", value), None, "{value:?}");
        }
        for (value, reason) in [
            ("http://[bad", "is not a proxy URL"),
            ("http://proxy host:3128", "is not a proxy URL"),
            (" http://proxy:3128", "is not a proxy URL"),
            ("/just/a/path", "is not a proxy URL"),
            ("http://proxy:65536", "is not a proxy URL"),
            ("http://u:hun/ter2@proxy:3128", "is not a proxy URL"),
            ("http://u:hun@ter2@proxy:3128", "holds more than one @"),
            ("u@ser:hunter2@proxy:3128", "holds more than one @"),
            ("https://u:h@@proxy:3128/x@y", "holds more than one @"),
            (
                "socks5h://u:hunter2@proxy:1080",
                "socks5h:// proxies are not supported",
            ),
            ("ftp://proxy", "ftp:// proxies are not supported"),
        ] {
            for name in PROXY_VARIABLES {
                let error = refused(name, value).unwrap_or_else(|| panic!("{name}={value}"));
                assert!(error.starts_with(&format!("{name}: {reason}")), "{error}");
                assert!(
                    !error.contains("hunter2") && !error.contains("ter2"),
                    "{error}"
                );
            }
        }
    }

    #[test]
    fn printed_urls_hide_credentials_and_queries() {
        for (value, shown) in [
            ("https://lf.example.com", "https://lf.example.com"),
            (
                "https://admin:pw@lf.example.com:3000/x",
                "https://[redacted]@lf.example.com:3000/x",
            ),
            (
                "http://token@h/v1/traces?key=s#f",
                "http://[redacted]@h/v1/traces?[redacted]#f",
            ),
            ("http://h/p#frag?not-a-query", "http://h/p#frag?not-a-query"),
            ("ftp://u:p@h", "ftp://[redacted]@h"),
            ("u:p@h?q", "[redacted]@h?[redacted]"),
            // A password with an unescaped `/`, `?` or `#` is still one.
            (
                "http://user:pa/s3@proxy:3128",
                "http://[redacted]@proxy:3128",
            ),
            (
                "http://user:pa?s3@proxy:3128/x",
                "http://[redacted]@proxy:3128/x",
            ),
            (
                "http://user:pa#s3@proxy:3128",
                "http://[redacted]@proxy:3128",
            ),
            ("user:s3@proxy.corp:3128", "[redacted]@proxy.corp:3128"),
        ] {
            assert_eq!(shown_url(value), shown, "{value}");
        }
        let err = EnvSettings::from_lookup(&lookup(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://u:hunter2@h",
        )]))
        .expect_err("not http");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_traces_path_goes_before_a_query() {
        assert_eq!(traces_endpoint("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            traces_endpoint("http://h/otel/?token=t#f"),
            "http://h/otel/v1/traces?token=t#f"
        );
        assert_eq!(
            with_path_appended("https://lf.example?x=1", "/api/public/otel/v1/traces"),
            "https://lf.example/api/public/otel/v1/traces?x=1"
        );
    }

    #[test]
    fn langfuse_needs_both_keys_and_builds_the_otel_endpoint() {
        let s = EnvSettings::from_lookup(&lookup(&[("LANGFUSE_PUBLIC_KEY", "pk")])).expect("ok");
        assert!(s.langfuse.is_none());
        assert_eq!(s.warnings.len(), 1);
        let s = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-1"),
        ]))
        .expect("ok");
        let lf = s.langfuse.expect("on");
        assert_eq!(
            lf.endpoint,
            "https://cloud.langfuse.com/api/public/otel/v1/traces"
        );
        assert!(!format!("{lf:?}").contains("sk-lf-1"));
        let s = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", "pk"),
            ("LANGFUSE_SECRET_KEY", "sk"),
            ("LANGFUSE_BASE_URL", "http://lf.local:3000/"),
        ]))
        .expect("ok");
        assert_eq!(
            s.langfuse.expect("on").endpoint,
            "http://lf.local:3000/api/public/otel/v1/traces"
        );
        let err = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", "pk"),
            ("LANGFUSE_SECRET_KEY", "sk"),
            ("LANGFUSE_HOST", "cloud.langfuse.com"),
        ]))
        .expect_err("not a URL");
        assert!(err.to_string().starts_with("LANGFUSE_HOST:"), "{err}");
    }

    #[test]
    fn otlp_endpoint_and_headers() {
        let s = EnvSettings::from_lookup(&lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-team=a%20b, Authorization=Bearer%20tok",
            ),
        ]))
        .expect("ok");
        let otlp = s.otlp.expect("on");
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces");
        let headers: Vec<(&str, &str)> = otlp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            headers,
            [("x-team", "a b"), ("Authorization", "Bearer tok")]
        );
        let err = EnvSettings::from_lookup(&lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,secret-token-no-equals"),
        ]))
        .expect_err("bad");
        let text = err.to_string();
        assert!(
            text.starts_with("OTEL_EXPORTER_OTLP_HEADERS: entry 2"),
            "{text}"
        );
        assert!(!text.contains("secret-token"), "{text}");
        for bad in [
            "Authorization=Basic%2",
            "x=%zz",
            "x=ok,Authorization=Bearer%2Gsecret-tok",
            "x=50%",
        ] {
            let err = EnvSettings::from_lookup(&lookup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_HEADERS", bad),
            ]))
            .expect_err(bad);
            let text = err.to_string();
            assert!(
                text.starts_with("OTEL_EXPORTER_OTLP_HEADERS: entry ")
                    && text.contains("'%' not followed by two hex digits"),
                "{bad}: {text}"
            );
            assert!(
                !text.contains("Basic") && !text.contains("secret"),
                "{text}"
            );
        }
        let ok = EnvSettings::from_lookup(&lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x=100%25,y=%2f%2F"),
        ]))
        .expect("whole escapes");
        let values: Vec<&str> = ok
            .otlp
            .as_ref()
            .expect("on")
            .headers
            .iter()
            .map(|(_, v)| v.expose())
            .collect();
        assert_eq!(values, ["100%", "//"]);
    }

    #[test]
    fn trace_cap_must_be_a_size() {
        let s = EnvSettings::from_lookup(&|_| None).expect("defaults");
        assert_eq!(s.trace_max_io_bytes, DEFAULT_TRACE_MAX_IO_BYTES);
        let s = EnvSettings::from_lookup(&lookup(&[("LLMSROUTER_TRACE_MAX_IO_BYTES", "4096")]))
            .expect("ok");
        assert_eq!(s.trace_max_io_bytes, 4096);
        let s =
            EnvSettings::from_lookup(&lookup(&[("OTEL_BSP_SCHEDULE_DELAY", "250")])).expect("ok");
        assert_eq!(
            s.trace_export_interval,
            std::time::Duration::from_millis(250)
        );
        let err = EnvSettings::from_lookup(&lookup(&[("OTEL_BSP_SCHEDULE_DELAY", "soon")]))
            .expect_err("bad");
        assert!(err.to_string().starts_with("OTEL_BSP_SCHEDULE_DELAY:"));
        for bad in ["1mb", "10", "-1"] {
            let err = EnvSettings::from_lookup(&lookup(&[("LLMSROUTER_TRACE_MAX_IO_BYTES", bad)]))
                .expect_err("bad");
            assert!(
                err.to_string()
                    .starts_with("LLMSROUTER_TRACE_MAX_IO_BYTES:")
            );
        }
    }

    /// A variable the router would use that is set but empty is an error naming it, as
    /// `ENABLE_ACCOUNT_MANAGEMENT=` is, never its default: `LANGFUSE_HOST=` meant Langfuse
    /// Cloud, so a self-hosted user's prompts went to a third party.
    #[test]
    fn an_empty_variable_in_use_is_an_error_not_its_default() {
        let keys = [("LANGFUSE_PUBLIC_KEY", "pk"), ("LANGFUSE_SECRET_KEY", "sk")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[keys[0], keys[1], ("LANGFUSE_HOST", "")], "LANGFUSE_HOST"),
            (
                &[
                    keys[0],
                    keys[1],
                    ("LANGFUSE_HOST", " "),
                    ("LANGFUSE_BASE_URL", "http://lf"),
                ],
                "LANGFUSE_HOST",
            ),
            (
                &[keys[0], keys[1], ("LANGFUSE_BASE_URL", "")],
                "LANGFUSE_BASE_URL",
            ),
            (
                &[("LLMSROUTER_TRACE_MAX_IO_BYTES", "")],
                "LLMSROUTER_TRACE_MAX_IO_BYTES",
            ),
            (
                &[("OTEL_BSP_SCHEDULE_DELAY", "")],
                "OTEL_BSP_SCHEDULE_DELAY",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", ""),
                ],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_COMPRESSION", "")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ),
        ];
        for (pairs, name) in cases {
            let err = EnvSettings::from_lookup(&lookup(pairs)).expect_err(name);
            assert_eq!(
                err.to_string(),
                format!("{name}: is set but empty: unset it, or give it a value"),
                "{pairs:?}"
            );
        }
        // Not in use, not an error: the base URL behind a host, the host with tracing off.
        let s = EnvSettings::from_lookup(&lookup(&[
            keys[0],
            keys[1],
            ("LANGFUSE_HOST", "http://lf.local"),
            ("LANGFUSE_BASE_URL", ""),
        ]))
        .expect("host wins");
        assert!(s.langfuse.is_some());
        let s = EnvSettings::from_lookup(&lookup(&[("LANGFUSE_HOST", "")])).expect("off");
        assert!(
            s.langfuse.is_none() && s.warnings.is_empty(),
            "{:?}",
            s.warnings
        );
    }

    /// Empty Langfuse keys (a blank placeholder in a Python version's `.env`) turn tracing
    /// off with one warning naming them, never an error.
    #[test]
    fn empty_langfuse_keys_are_named_in_one_warning() {
        let s = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", ""),
            ("LANGFUSE_SECRET_KEY", ""),
        ]))
        .expect("off");
        assert!(s.langfuse.is_none());
        assert_eq!(
            s.warnings,
            [
                "Langfuse tracing is off: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are set but empty"
            ]
        );
        let s = EnvSettings::from_lookup(&lookup(&[
            ("LANGFUSE_PUBLIC_KEY", "pk"),
            ("LANGFUSE_SECRET_KEY", ""),
        ]))
        .expect("off");
        assert_eq!(
            s.warnings,
            ["Langfuse tracing is off: LANGFUSE_SECRET_KEY is set but empty"]
        );
    }

    /// [`VARIABLES`] (checked for values that are not UTF-8) holds every name
    /// [`EnvSettings::from_lookup`] reads, so none can be added without the check.
    #[test]
    fn every_variable_read_is_checked_for_utf8() {
        let read = std::cell::RefCell::new(Vec::new());
        let all_set = |name: &str| {
            read.borrow_mut().push(name.to_owned());
            match name {
                "LANGFUSE_PUBLIC_KEY" | "LANGFUSE_SECRET_KEY" => Some("k".to_owned()),
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c".to_owned()),
                _ => None,
            }
        };
        EnvSettings::from_lookup(&all_set).expect("ok");
        // Looked at only to warn that it is ignored: one that is not UTF-8 is ignored too.
        for name in read
            .into_inner()
            .into_iter()
            .filter(|n| n != "ENABLE_BYPASS")
        {
            assert!(
                VARIABLES.contains(&name.as_str()),
                "{name} is not in VARIABLES"
            );
        }
    }

    #[test]
    fn defaults_and_empty_log_file() {
        let s = EnvSettings::from_lookup(&|_| None).expect("defaults");
        assert!(!s.account_management && s.log_bodies && s.ledger);
        assert_eq!(s.log_file, Some(PathBuf::from("./api_proxy.log")));
        let env = |n: &str| (n == "LLMSROUTER_LOG_FILE").then(String::new);
        assert_eq!(EnvSettings::from_lookup(&env).expect("ok").log_file, None);
    }
}
