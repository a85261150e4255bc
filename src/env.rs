//! Settings that come only from environment variables (and `.env`), not from flags.
//!
//! Booleans accept `true/false`, `1/0`, `yes/no` in any case; anything else is an error that
//! names the variable, so a typo never silently turns a feature off.

use std::path::PathBuf;

/// Environment settings of the router.
#[derive(Debug, Clone)]
pub struct EnvSettings {
    /// `ENABLE_ACCOUNT_MANAGEMENT`: require a user key on every /v1 route.
    pub account_management: bool,
    /// `LLMSROUTER_LOG_FILE`: the request log; `None` when set to the empty string.
    pub log_file: Option<PathBuf>,
    /// `LLMSROUTER_LOG_BODIES`: include request and response bodies in the request log.
    pub log_bodies: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub reason: String,
}

impl EnvSettings {
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let log_file = match env("LLMSROUTER_LOG_FILE") {
            None => Some(PathBuf::from("./api_proxy.log")),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
        };
        Ok(Self {
            account_management: bool_var(env, "ENABLE_ACCOUNT_MANAGEMENT", false)?,
            log_file,
            log_bodies: bool_var(env, "LLMSROUTER_LOG_BODIES", true)?,
        })
    }
}

/// Reads a boolean variable; unset or empty means `default`.
pub fn bool_var(
    env: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, EnvError> {
    match env(name) {
        None => Ok(default),
        Some(v) if v.trim().is_empty() => Ok(default),
        Some(v) => parse_bool(&v).ok_or_else(|| EnvError {
            name,
            reason: format!("\"{v}\" is not a boolean (use true/false, 1/0 or yes/no)"),
        }),
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

    #[test]
    fn bad_boolean_names_the_variable() {
        let env = |n: &str| (n == "ENABLE_ACCOUNT_MANAGEMENT").then(|| "maybe".to_owned());
        let err = EnvSettings::from_lookup(&env).expect_err("bad");
        assert!(err.to_string().starts_with("ENABLE_ACCOUNT_MANAGEMENT:"));
    }

    #[test]
    fn defaults_and_empty_log_file() {
        let s = EnvSettings::from_lookup(&|_| None).expect("defaults");
        assert!(!s.account_management && s.log_bodies);
        assert_eq!(s.log_file, Some(PathBuf::from("./api_proxy.log")));
        let env = |n: &str| (n == "LLMSROUTER_LOG_FILE").then(String::new);
        assert_eq!(EnvSettings::from_lookup(&env).expect("ok").log_file, None);
    }
}
