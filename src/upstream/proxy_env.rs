//! The outbound proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`), as reqwest reads it: which requests go through it, and the words of a failure
//! of one that did. Shared by the proxied requests ([`super::UpstreamClient`]) and the
//! model-list fetch, so that both say a proxy's failure the same way.

use std::sync::OnceLock;

use http::StatusCode;
use hyper_util::client::proxy::matcher::Matcher;

/// What a failure of a request through the proxy is prefixed with. The proxy's URL is not
/// said: it may hold credentials.
macro_rules! through {
    () => {
        "through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY)"
    };
}
const THROUGH: &str = through!();

/// [`THROUGH`] as an aside after the upstream's name.
const ASIDE: &str = concat!(", ", through!(), ",");

/// Whether a request went through the proxy the environment names, said (as `Proxy`'s
/// prefix) before the words of its failure, for an error put into words after the request,
/// such as the model-list fetch's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    Proxy,
}

impl Via {
    /// The words that say the request went through the proxy, as an aside after the
    /// upstream's name (`the upstream m, through the proxy ..., did not finish its answer`),
    /// for a failure whose message begins with the upstream; nothing for a direct one.
    pub fn aside(self) -> &'static str {
        match self {
            Self::Direct => "",
            Self::Proxy => ASIDE,
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct => Ok(()),
            Self::Proxy => write!(f, "{THROUGH}: "),
        }
    }
}

pub struct ProxyEnv {
    matcher: Matcher,
    /// Some proxy variable is set: only then can `matcher` intercept a request. Asking it
    /// when none is set cost 650 instructions a request for a certain `None`.
    set: bool,
    /// The variable `http://` targets' proxy comes from, for the words of a proxy's refusal.
    http_variable: &'static str,
}

impl ProxyEnv {
    /// The environment's proxy, read once, at its first use: the upstream client's, made at
    /// start once `.env` is applied (as reqwest reads it when its client is built).
    pub fn get() -> &'static Self {
        static ENV: OnceLock<ProxyEnv> = OnceLock::new();
        ENV.get_or_init(|| Self {
            matcher: Matcher::from_env(),
            set: proxy_env_set(),
            http_variable: http_proxy_variable(),
        })
    }

    /// Whether some proxy variable is set, so that any request may go through a proxy.
    pub(super) fn is_set(&self) -> bool {
        self.set
    }

    /// Whether a request to `uri` goes through the proxy.
    pub(super) fn covers_uri(&self, uri: &http::Uri) -> bool {
        self.set && self.matcher.intercept(uri).is_some()
    }

    /// Whether a request to `url` goes through the proxy.
    pub fn covers(&self, url: &str) -> bool {
        self.set && http::Uri::try_from(url).is_ok_and(|uri| self.covers_uri(&uri))
    }

    /// The way a request to `url` goes: through the proxy or not.
    pub fn via(&self, url: &str) -> Via {
        if self.covers(url) {
            Via::Proxy
        } else {
            Via::Direct
        }
    }

    /// `description` of a failed request to `url`, saying that it went through the proxy
    /// when it did: a proxy that cannot be reached (a typo in `HTTP_PROXY`) or does not
    /// answer otherwise reads as the upstream's fault.
    pub fn through(&self, url: &str, description: String) -> String {
        format!("{}{description}", self.via(url))
    }

    /// A 407 a proxy answered a request to an `http://` target it carries (one to an
    /// `https://` target is the tunnel's refusal, which reqwest reports as an error): the
    /// proxy's own refusal, not the provider's answer. The proxy's URL is not said: it may
    /// hold the credentials refused.
    pub fn refusal(&self, url: &str, status: StatusCode) -> Option<String> {
        if status != StatusCode::PROXY_AUTHENTICATION_REQUIRED || !self.set {
            return None;
        }
        let uri = http::Uri::try_from(url).ok()?;
        if uri.scheme_str() != Some("http") || !self.covers_uri(&uri) {
            return None;
        }
        Some(format!(
            "the proxy ({}) refused the request: 407 Proxy Authentication Required; check the \
             credentials in the variable",
            self.http_variable
        ))
    }
}

/// Whether a variable `Matcher::from_env` reads a proxy from is set and not empty, and
/// `NO_PROXY` is not `*`. When none is, the matcher has no proxy to offer any request; with
/// `NO_PROXY=*` it must offer none (see [`crate::env::no_proxy_for_any_host`]).
fn proxy_env_set() -> bool {
    !crate::env::no_proxy_for_any_host()
        && crate::env::PROXY_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// The variable `Matcher::from_env` takes `http://` targets' proxy from: `HTTP_PROXY` (or
/// `http_proxy`) when one is set and not empty, else `ALL_PROXY` (or `all_proxy`); start-up
/// refused any set one the matcher could not use.
fn http_proxy_variable() -> &'static str {
    let first_set = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find(|name| std::env::var_os(name).is_some())
            .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    };
    first_set(["HTTP_PROXY", "http_proxy"])
        .or_else(|| first_set(["ALL_PROXY", "all_proxy"]))
        .unwrap_or("ALL_PROXY")
}
