//! `/v1/models` and the model lookup: every server's model list, merged, filtered and cached.
//!
//! [`list`] and [`filter`] are pure (parsing upstream answers, merging, filtering);
//! [`fetch`] asks one upstream; [`catalog`] owns the cache and its single-flight refresh; this
//! file answers HTTP. Callers see only the providers they may use (`Caller::may_use`); the
//! cache itself is shared by everyone. Nothing here ever fails a request because an upstream
//! failed: a server that does not answer is left out (or served from its last good list).

pub mod catalog;
pub mod fetch;
pub mod filter;
pub mod list;
pub mod loops;
pub mod table;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, header};

use crate::auth::Caller;
use crate::error::ProxyError;
use crate::http1::fields::Fields;
use crate::routing::{ModelRef, parse_model};
use crate::state::AppState;
pub use catalog::{ModelCatalog, ServerState, ServerStatus, Snapshot};

impl ModelCatalog {
    /// The alias of the first server (config order) the caller may use whose model list holds
    /// exactly `model`: rule 4 of routing, for a model with no `[prefix]`. On a cold cache it
    /// waits for the (shared) first fetch rather than answer "unknown"; on a warm one it is a
    /// hash lookup.
    pub async fn find_owner(
        &self,
        state: &AppState,
        model: &str,
        caller: &Caller,
    ) -> Option<String> {
        let snapshot = self.snapshot(&state.client, state.config.load_full()).await;
        snapshot
            .list()
            .owner(model, |alias| caller.may_use(alias))
            .map(str::to_owned)
    }
}

/// `GET /v1/models`: the merged list, narrowed to the providers the caller may use. Asked by
/// other routers ([`loops`]), a list built for them, and the answer says it is a router's.
pub async fn handle_list(state: &AppState, caller: &Caller, fields: &Fields) -> Response {
    let own = state.models.id();
    let askers = match loops::chain_of(fields, own) {
        Ok(askers) => askers,
        Err(error) => return from_a_router(error.into_response(), own),
    };
    let config = state.config.load_full();
    let visible = |alias: &str| caller.may_use(alias);
    if askers.is_empty() {
        let snapshot = state.models.snapshot(&state.client, config).await;
        return json_response(snapshot.list().body(visible));
    }
    let snapshot = state
        .models
        .snapshot_for_routers(&state.client, config, &askers)
        .await;
    from_a_router(json_response(snapshot.list().body(visible)), own)
}

/// `response`, marked as a router's answer to a router's fetch: its 508 is a loop found.
fn from_a_router(mut response: Response, own: &loops::RouterId) -> Response {
    response
        .headers_mut()
        .insert(loops::MODELS_FROM, own.header_value());
    response
}

/// `GET /v1/models/<id>`: one entry. `id` is `[alias]id` (the dispatcher has percent-decoded
/// it); an id with no prefix finds the entry a request with that model would be routed to.
pub async fn handle_get(state: &AppState, caller: &Caller, id: &str) -> Response {
    let snapshot = state
        .models
        .snapshot(&state.client, state.config.load_full())
        .await;
    let list = snapshot.list();
    let visible = |alias: &str| caller.may_use(alias);
    let entry = match parse_model(id) {
        Ok(ModelRef::Prefixed { .. }) => list.get(id, visible),
        Ok(ModelRef::Plain(name)) => {
            let owner = match snapshot.config().settings.default_server.as_deref() {
                Some(default) => Some(default),
                None => list.owner(name, visible),
            };
            owner.and_then(|alias| list.get(&format!("[{alias}]{name}"), visible))
        }
        Err(_) => None,
    };
    if let Some(entry) = entry {
        return json_response(entry.json.clone());
    }
    let aliases: Vec<&str> = list
        .aliases()
        .iter()
        .map(String::as_str)
        .filter(|a| visible(a))
        .collect();
    let hint = if aliases.is_empty() {
        "no providers are configured for you".to_owned()
    } else {
        format!(
            "address a model as \"[alias]model\", aliases: {}",
            aliases.join(", ")
        )
    };
    ProxyError::ModelNotFound(format!(
        "model \"{}\" is not in the model list (see GET /v1/models); {hint}",
        crate::routing::quoted(id)
    ))
    .into_response()
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
