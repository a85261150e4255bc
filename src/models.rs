//! The model catalog: `/v1/models` and the owner lookup for unprefixed model names.
//!
//! Minimal for now: `override` and `append` entries of config.yaml, no upstream fan-out.
//! The models issue replaces this with the fan-out, filter and single-flight cache.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ProxyError;
use crate::state::AppState;

#[derive(Default)]
pub struct ModelCatalog {}

impl ModelCatalog {
    /// The alias of the first server whose model list holds exactly `model`.
    pub async fn find_owner(
        &self,
        state: &AppState,
        model: &str,
        caller: &Caller,
    ) -> Option<String> {
        let config = state.config.load();
        config
            .servers
            .values()
            .filter(|s| caller.may_use(&s.alias))
            .find(|s| {
                s.override_models
                    .iter()
                    .flatten()
                    .chain(&s.append)
                    .any(|m| m == model)
            })
            .map(|s| s.alias.clone())
    }
}

fn entries(state: &AppState, caller: &Caller) -> Vec<Value> {
    let config = state.config.load();
    config
        .servers
        .values()
        .filter(|s| caller.may_use(&s.alias))
        .flat_map(|s| {
            s.override_models
                .iter()
                .flatten()
                .chain(&s.append)
                .map(move |m| json!({"id": format!("[{}]{m}", s.alias), "object": "model", "created": 0, "owned_by": s.alias}))
        })
        .collect()
}

pub async fn handle_list(state: &AppState, caller: &Caller) -> Response {
    Json(json!({"object": "list", "data": entries(state, caller)})).into_response()
}

pub async fn handle_get(state: &AppState, caller: &Caller, id: &str) -> Response {
    match entries(state, caller).into_iter().find(|e| e["id"] == id) {
        Some(entry) => Json(entry).into_response(),
        None => ProxyError::ModelNotFound(format!(
            "model \"{}\" is not in the model list",
            crate::error::clip(id, 200)
        ))
        .into_response(),
    }
}
