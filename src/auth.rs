//! Who is calling: the caller of a request and what it may use.
//!
//! With account management off every request is an anonymous caller that may use every
//! provider. With it on, a [`KeyIndex`] (the users module's in-memory index) turns the
//! presented key into a caller; anything else is 401. Only the routes in the router's
//! allow-list (`/health`) skip this, so a new route is protected by default.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::ProxyError;
use crate::http1::fields::Fields;

/// What a caller may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permissions {
    /// `{"*": true}`, and every anonymous caller.
    All,
    /// Only these aliases.
    Only(HashSet<String>),
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account name; `None` with account management off.
    pub user: Option<String>,
    pub permissions: Permissions,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            user: None,
            permissions: Permissions::All,
        }
    }

    /// A caller with an account: URL targets are refused for it (no open relay).
    pub fn is_account(&self) -> bool {
        self.user.is_some()
    }

    pub fn may_use(&self, alias: &str) -> bool {
        match &self.permissions {
            Permissions::All => true,
            Permissions::Only(aliases) => aliases.contains(alias),
        }
    }
}

/// Looks a presented key up. Implementations must not wait on anything slow (the users
/// index asks SQLite only whether the database changed, a read of shared memory, and the
/// file system whether its path still names the same file, a `stat`) and must
/// compare keys without leaking timing (hash the presented key, look the hash up).
pub trait KeyIndex: Send + Sync + 'static {
    fn find(&self, presented_key: &str) -> Option<Caller>;
}

/// Content types a browser page may post to another site without asking it first (CORS's
/// "simple" requests); a JSON body needs the router's consent, which it never gives.
const SIMPLE_CONTENT_TYPES: [&str; 3] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
];

/// Refuses a request a browser page of some other site made a visitor's browser send: a web
/// page cannot read the router's answers (it sends no CORS headers), but a form or a
/// `fetch` with a text body reaches it all the same, and with account management off would
/// spend the provider keys the router holds. Such a request carries `Origin` and one of the
/// [`SIMPLE_CONTENT_TYPES`] (or none); API clients send `application/json`, and scripts
/// (curl's `-d` posts a form type) send no `Origin`, so neither is refused.
pub fn refuse_cross_site(fields: &Fields) -> Result<(), ProxyError> {
    if !fields.contains("origin") {
        return Ok(());
    }
    let simple = match fields.get_str("content-type") {
        None => true,
        Some(value) => {
            let media_type = value.split(';').next().unwrap_or_default().trim();
            SIMPLE_CONTENT_TYPES
                .iter()
                .any(|t| media_type.eq_ignore_ascii_case(t))
        }
    };
    if simple {
        return Err(ProxyError::CrossSiteRequest(
            "a browser request from a web page (Origin) with a form or text body is refused: \
             send the JSON body with Content-Type: application/json"
                .into(),
        ));
    }
    Ok(())
}

/// The keys a client presented, in the order they are tried: `Authorization: Bearer <key>`,
/// then `x-api-key: <key>`. Both are tried: Claude Code sends `Authorization` from
/// `ANTHROPIC_AUTH_TOKEN` beside `x-api-key` from `ANTHROPIC_API_KEY`, and a user whose router
/// key is in the second was refused for what the first held.
pub fn presented_keys(fields: &Fields) -> impl Iterator<Item = &str> {
    let bearer = fields
        .get_str("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|k| !k.is_empty());
    let api_key = fields
        .get_str("x-api-key")
        .map(str::trim)
        .filter(|k| !k.is_empty() && Some(*k) != bearer);
    bearer.into_iter().chain(api_key)
}

/// Headers whose whole value is a key: Anthropic's and many gateways' `x-api-key`, Azure
/// OpenAI's `api-key`, Gemini's `x-goog-api-key`. Redacted from records, and never sent to
/// a configured server (`proxy::headers` drops each; a test there keeps the two in step).
pub const KEY_HEADERS: [&str; 3] = ["x-api-key", "api-key", "x-goog-api-key"];

/// Every credential the client sent, whatever its scheme: each `Authorization` value's
/// credentials (what follows `Bearer`, `Basic` or any other scheme, or the whole value when
/// there is no scheme) and each value of the [`KEY_HEADERS`]. Not for authentication
/// ([`presented_keys`] are): for redaction, since a URL target gets them as sent and may echo
/// them back.
pub fn presented_credentials(fields: &Fields) -> impl Iterator<Item = &str> {
    let authorization = fields.get_all("authorization").filter_map(|v| {
        let value = std::str::from_utf8(v).ok()?.trim();
        Some(match value.split_once(char::is_whitespace) {
            Some((_, credentials)) if !credentials.trim().is_empty() => credentials.trim(),
            _ => value,
        })
    });
    let api_keys = KEY_HEADERS
        .into_iter()
        .flat_map(|name| fields.get_all(name))
        .filter_map(|v| Some(std::str::from_utf8(v).ok()?.trim()));
    authorization.chain(api_keys).filter(|c| !c.is_empty())
}

/// What an upstream may echo of each `Authorization: Basic <base64>` the client sent, beside
/// the base64 text [`presented_credentials`] gives: the decoded `user:password` and the
/// password alone ([`crate::secret::basic_decoded`]). For redaction, as that is. Nothing
/// (no allocation) for a request without Basic credentials.
pub fn presented_basic(fields: &Fields) -> impl Iterator<Item = String> + '_ {
    fields.get_all("authorization").flat_map(|v| {
        let value = std::str::from_utf8(v).ok().map(str::trim);
        let credentials = value.and_then(|value| {
            let (scheme, credentials) = value.split_once(char::is_whitespace)?;
            scheme.eq_ignore_ascii_case("basic").then_some(credentials)
        });
        credentials
            .map(crate::secret::basic_decoded)
            .unwrap_or_default()
    })
}

/// Turns request headers into a caller. `keys` is `None` when account management is off.
pub fn authenticate(
    keys: Option<&Arc<dyn KeyIndex>>,
    fields: &Fields,
) -> Result<Caller, ProxyError> {
    let Some(keys) = keys else {
        return Ok(Caller::anonymous());
    };
    let mut presented = 0;
    for key in presented_keys(fields) {
        if let Some(caller) = keys.find(key) {
            return Ok(caller);
        }
        presented += 1;
    }
    Err(ProxyError::InvalidApiKey(
        match presented {
            0 => no_key(fields),
            1 => "invalid API key",
            _ => "invalid API key: neither the Authorization bearer token nor x-api-key is a user's key",
        }
        .into(),
    ))
}

/// Why no key was read: none was sent, or a field meant to carry one holds none that can
/// be read (a byte that is not text, `Bearer` and a tab, another scheme). A client that did
/// send its key must not be told it sent none, or its author looks for the wrong mistake.
/// Neither message quotes the field: it may hold a key. Off the hot path (refusals only).
fn no_key(fields: &Fields) -> &'static str {
    let sent = |name| {
        fields
            .get_all(name)
            .any(|value| !crate::http1::fields::trim(value).is_empty())
    };
    if sent("authorization") || sent("x-api-key") {
        "unreadable API key: the Authorization (or x-api-key) header holds no key the router can read; send \"Authorization: Bearer <your llmsrouter key>\" (one space after Bearer, the key in printable ASCII)"
    } else if sent("api-key") || sent("x-goog-api-key") {
        // Azure's and Gemini's SDKs put the key there: the client did send one, in a field
        // the router does not read its users' keys from.
        "API key in a header the router does not read: the router takes your llmsrouter key from \"Authorization: Bearer <key>\" or \"x-api-key: <key>\", not from api-key or x-goog-api-key"
    } else {
        "missing API key: send \"Authorization: Bearer <your llmsrouter key>\" (or \"x-api-key: <your llmsrouter key>\", as Anthropic's SDKs do)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields::from_pairs(pairs)
    }

    #[test]
    fn bearer_is_tried_before_x_api_key() {
        let keys = |pairs: &[(&str, &str)]| {
            let f = fields(pairs);
            presented_keys(&f).map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(keys(&[("X-Api-Key", "xk")]), ["xk"]);
        assert_eq!(
            keys(&[("x-api-key", "xk"), ("Authorization", "bearer  bk ")]),
            ["bk", "xk"]
        );
        assert_eq!(
            keys(&[("x-api-key", "k"), ("Authorization", "Bearer k")]),
            ["k"]
        );
        assert_eq!(
            keys(&[("x-api-key", "xk"), ("authorization", "Basic abc")]),
            ["xk"]
        );
    }

    #[test]
    fn every_credential_of_any_scheme_is_presented_for_redaction() {
        let credentials = |pairs: &[(&str, &str)]| {
            let f = fields(pairs);
            presented_credentials(&f)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            credentials(&[
                ("Authorization", "Basic dXNlcjpwYXNz=="),
                ("x-api-key", " xk ")
            ]),
            ["dXNlcjpwYXNz==", "xk"]
        );
        assert_eq!(
            credentials(&[("authorization", "bare-token")]),
            ["bare-token"]
        );
        assert_eq!(credentials(&[("authorization", "Bearer  \tbk ")]), ["bk"]);
        assert_eq!(credentials(&[("authorization", "Bearer ")]), ["Bearer"]);
        assert!(credentials(&[("authorization", " "), ("x-api-key", "")]).is_empty());
        assert!(credentials(&[("x-other", "v")]).is_empty());
        assert_eq!(
            credentials(&[("Api-Key", "azure-key"), ("x-goog-api-key", "gemini-key")]),
            ["azure-key", "gemini-key"]
        );
    }

    #[test]
    fn a_basic_credentials_user_and_password_are_presented_decoded() {
        let decoded = |pairs: &[(&str, &str)]| presented_basic(&fields(pairs)).collect::<Vec<_>>();
        // base64("alice:BASICPASSWORD123")
        assert_eq!(
            decoded(&[("Authorization", "basic  YWxpY2U6QkFTSUNQQVNTV09SRDEyMw== ")]),
            ["alice:BASICPASSWORD123", "BASICPASSWORD123"]
        );
        assert!(
            decoded(&[("authorization", "Bearer YWxpY2U6QkFTSUNQQVNTV09SRDEyMw==")]).is_empty()
        );
        assert!(decoded(&[("authorization", "Basic not-base64!")]).is_empty());
        assert!(decoded(&[("x-api-key", "YWxpY2U6QkFTSUNQQVNTV09SRDEyMw==")]).is_empty());
    }

    #[test]
    fn accounts_off_is_anonymous_with_everything() {
        let c = authenticate(None, &Fields::default()).expect("anonymous");
        assert!(c.may_use("anything"));
        assert!(!c.is_account());
    }

    struct One;
    impl KeyIndex for One {
        fn find(&self, key: &str) -> Option<Caller> {
            (key == "good").then(|| Caller {
                user: Some("ann".into()),
                permissions: Permissions::Only(["a".to_owned()].into()),
            })
        }
    }

    #[test]
    fn accounts_on_requires_a_known_key() {
        let keys: Arc<dyn KeyIndex> = Arc::new(One);
        assert_eq!(
            authenticate(Some(&keys), &Fields::default())
                .expect_err("missing")
                .code(),
            "invalid_api_key"
        );
        let err = authenticate(Some(&keys), &fields(&[("Authorization", "Bearer bad")]))
            .expect_err("bad");
        assert_eq!(err.code(), "invalid_api_key");
        assert!(!err.to_string().contains("bad"));
        let c =
            authenticate(Some(&keys), &fields(&[("Authorization", "Bearer good")])).expect("good");
        assert!(c.may_use("a") && !c.may_use("b") && c.is_account());
    }
}
