//! Model lists between routers: a router's server may be another llmsrouter (a team router in
//! front of a company one), and a misconfiguration can make two routers list each other, or
//! a router list itself (a server `url` that is its own address).
//!
//! Chat requests find such loops by `x-llmsrouter-hops`; a model-list fetch cannot: it is made
//! by one shared refresh, not by the request that waits for it. Without a marker, router A's
//! refresh asked B, B's refresh asked A, and each waited on the other for the whole fetch
//! timeout (10 s) to list nothing; and lists passed around a loop would nest (`[b][a][b]...`)
//! one level deeper at every refresh. So:
//!
//! - every router has a random id for its lifetime ([`RouterId`]);
//! - a model-list fetch names the routers it is made for ([`MODELS_FOR`]): the fetching
//!   router, then the routers that asked it, when its list is being built for them;
//! - a router that finds its own id there answers 508 `loop_detected` at once, and the server
//!   that answered so is left out of the list being built ([`super::fetch::FetchError::Loop`]);
//! - a router asked by routers never waits on the refresh every other caller shares (it may
//!   be waiting on the asker): it builds a list for them, asking again each of its servers
//!   that is a router (its answers carry [`MODELS_FROM`]) with them named too, and taking the
//!   others from its cache. A router restarted with a new id is thereby never mistaken for
//!   another one: whether a server leads back is asked each time, not remembered.
use http::HeaderValue;

use crate::error::ProxyError;
use crate::http1::fields::Fields;
use crate::proxy::headers::MAX_HOPS;

/// On a model-list fetch: the ids of the routers it is made for, comma-separated, the
/// fetching router first.
pub const MODELS_FOR: &str = "x-llmsrouter-models-for";

/// On a router's model-list answer to another router: its own id. Marks the server as a
/// router, whose list is asked again for every list built for routers.
pub const MODELS_FROM: &str = "x-llmsrouter-models-from";

/// Longest id read from another router: ours are 16 hex digits.
const MAX_ID_LEN: usize = 64;

/// One router's id: random, for the life of the process, never shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterId(Box<str>);

impl RouterId {
    /// A new id: 64 random bits. Two routers sharing one by chance would only refuse each
    /// other's model lists.
    pub fn random() -> Self {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            bytes = fastrand::u64(..).to_le_bytes();
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The [`MODELS_FROM`] value: hex, so always a valid value.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).unwrap_or(HeaderValue::from_static(""))
    }
}

impl Default for RouterId {
    fn default() -> Self {
        Self::random()
    }
}

/// The routers a model-list fetch is made for, as sent and as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain(Vec<Box<str>>);

impl Chain {
    /// The chain of a fetch by `own` for the routers in `askers` (empty: for its own callers).
    pub fn of(own: &RouterId, askers: &Chain) -> Self {
        let mut ids = vec![own.0.clone()];
        ids.extend(askers.0.iter().filter(|id| **id != own.0).cloned());
        Self(ids)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|own| &**own == id)
    }

    /// The header value: ids are hex, so always a valid value.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).unwrap_or(HeaderValue::from_static(""))
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// The routers a `GET /v1/models` is made for: none for a client. A chain longer than
/// [`MAX_HOPS`] is a loop, as for chat requests; a malformed one is refused rather than read
/// as none, so a loop cannot hide by garbling it.
pub fn chain_of(fields: &Fields, own: &RouterId) -> Result<Chain, ProxyError> {
    let Some(value) = fields.get(MODELS_FOR) else {
        return Ok(Chain::default());
    };
    let ids = router_ids(value).ok_or_else(|| {
        ProxyError::InvalidRequest(format!(
            "the {MODELS_FOR} header is malformed: routers send it on their model-list fetches \
             (comma-separated ids); a client need not send it"
        ))
    })?;
    if ids.iter().any(|id| **id == *own.0) {
        return Err(ProxyError::LoopDetected(
            "this model-list fetch was made for this very router: a server's url leads back to \
             it (directly or through other routers)"
                .to_owned(),
        ));
    }
    if ids.len() > MAX_HOPS as usize {
        return Err(ProxyError::LoopDetected(format!(
            "this model-list fetch has come through {} routers ({MODELS_FOR} header); a \
             server's url leads back to a router",
            ids.len()
        )));
    }
    Ok(Chain(ids))
}

/// Whether an answer came from a router: it names one valid id in [`MODELS_FROM`].
pub fn from_a_router(headers: &http::HeaderMap) -> bool {
    headers
        .get(MODELS_FROM)
        .and_then(|value| router_ids(value.as_bytes()))
        .is_some_and(|ids| ids.len() == 1)
}

/// Comma-separated ids of ASCII letters, digits and `-`; `None` when any is not.
fn router_ids(value: &[u8]) -> Option<Vec<Box<str>>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut ids = Vec::new();
    for id in text.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let valid =
            id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return None;
        }
        ids.push(Box::from(id));
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: &str) -> Fields {
        let mut map = http::HeaderMap::new();
        map.insert(MODELS_FOR, HeaderValue::from_str(value).expect("value"));
        Fields::from_header_map(&map)
    }

    #[test]
    fn ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (RouterId::random(), RouterId::random());
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_chain_names_the_fetcher_first_then_its_askers_once() {
        let own = RouterId::random();
        let askers = chain_of(&fields(" aa , bb,,"), &own).expect("valid");
        let chain = Chain::of(&own, &askers);
        assert_eq!(
            chain.header_value().to_str().ok(),
            Some(format!("{},aa,bb", own.as_str()).as_str())
        );
        assert!(chain.contains("bb") && !chain.contains("cc"));
        assert!(chain_of(&Fields::default(), &own).expect("none").is_empty());
    }

    #[test]
    fn the_own_id_or_a_long_chain_is_a_loop_and_garbage_is_malformed() {
        let own = RouterId::random();
        let code = |value: &str| chain_of(&fields(value), &own).map_err(|e| e.code());
        assert_eq!(code(&format!("x,{}", own.as_str())), Err("loop_detected"));
        assert_eq!(code("1,2,3,4,5,6,7,8,9"), Err("loop_detected"));
        assert!(code("1,2,3,4,5,6,7,8").is_ok());
        assert_eq!(code("a b"), Err("invalid_request"));
        assert_eq!(code(&"a".repeat(65)), Err("invalid_request"));
    }

    #[test]
    fn an_answer_from_a_router_names_one_id() {
        let own = RouterId::random();
        let mut headers = http::HeaderMap::new();
        assert!(!from_a_router(&headers));
        headers.insert(MODELS_FROM, own.header_value());
        assert!(from_a_router(&headers));
        headers.insert(MODELS_FROM, HeaderValue::from_static("no way"));
        assert!(!from_a_router(&headers));
    }
}
