//! Upstreams that refuse the `stream_options` the router adds to a chat stream.
//!
//! The router asks every chat stream for `stream_options.include_usage` (so each has token
//! counts); the Python version never did, and a strict upstream (a pydantic-validated local
//! server) answers such a request 400 "Extra inputs are not permitted". When the router added
//! the field itself and the upstream's 400 names it, the request goes once more as the client
//! sent it, and once that is taken (a 2xx), the target is not asked again for the process's
//! life ([`Refusals`]). Only that answer pays for any of this: the normal stream path checks
//! one atomic flag.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, StatusCode};

use super::early::Sending;
use super::failure_log::{FAILURE_LOG_WINDOW, FailureLog};
use super::headers::UpstreamFields;
use super::{
    Named, ReadBody, decode_error_body, read_upstream_body, send_error, shutting_down,
    timeout_error, unfinished_error,
};
use crate::error::ProxyError;
use crate::hard_stop::Stopped;
use crate::http1::fields::Fields;
use crate::routing::Target;
use crate::state::AppState;
use crate::upstream::{Prepared, UpstreamResponse, Within};
use tokio::time::Instant;

/// The targets that refused `stream_options` since the router started: configured aliases,
/// and the origins of URL targets. Aliases are few (the config's); URL origins are the
/// clients' to pick (with accounts off, a wildcard DNS name gives any number), so at most
/// [`MAX_URL_ORIGINS`] of them are remembered (the oldest forgotten first: it pays one
/// refused attempt again) and their warnings share the failure lines' window.
pub struct Refusals {
    /// Set once any target is in `targets`: until then a stream looks no further.
    any: AtomicBool,
    targets: Mutex<Remembered>,
    url_warnings: FailureLog,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            any: AtomicBool::new(false),
            targets: Mutex::default(),
            url_warnings: FailureLog::new(FAILURE_LOG_WINDOW),
        }
    }
}

/// Most URL origins remembered as refusing `stream_options`.
pub const MAX_URL_ORIGINS: usize = 1024;

#[derive(Default)]
struct Remembered {
    targets: HashSet<String>,
    /// The URL origins among `targets`, oldest first.
    urls: VecDeque<String>,
}

impl Remembered {
    /// Adds `target`; false when it was there already.
    fn insert(&mut self, target: &Refusal) -> bool {
        if !self.targets.insert(target.key.clone()) {
            return false;
        }
        if target.alias.is_none() {
            self.urls.push_back(target.key.clone());
            if self.urls.len() > MAX_URL_ORIGINS {
                if let Some(oldest) = self.urls.pop_front() {
                    self.targets.remove(&oldest);
                }
            }
        }
        true
    }
}

impl Refusals {
    /// Whether `target` refused `stream_options` before. One atomic load while none has.
    #[inline]
    pub fn refused(&self, target: &Target<'_>) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let key = key_of(target);
        let remembered = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        remembered.targets.contains(&key)
    }

    /// Remembers that `target` refused `stream_options`; logs one warning per target, the
    /// first time (for URL origins, at most one per window, saying how many it left out).
    pub fn remember(&self, target: &Refusal) {
        let first = {
            let mut remembered = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
            remembered.insert(target)
        };
        self.any.store(true, Ordering::Relaxed);
        if !first {
            return;
        }
        let left_out = match target.alias {
            Some(_) => 0,
            None => match self.url_warnings.admit("stream_options", Instant::now()) {
                Some(left_out) => left_out,
                None => return,
            },
        };
        let others = match left_out {
            0 => String::new(),
            n => format!(" ({n} more URL targets refused it since the last such line)"),
        };
        let key = &target.key;
        let advice = match &target.alias {
            Some(alias) => format!(
                "set `stream_usage: false` under servers.{alias} in config.yaml to skip the retry"
            ),
            None => "configure it as a server with `stream_usage: false` in config.yaml to skip \
                     the retry"
                .to_owned(),
        };
        tracing::warn!(
            "the upstream {key} refused stream_options (HTTP 400): its streams were sent again \
             without it, and until the router restarts it is not asked for \
             stream_options.include_usage (its streams' usage is what it reports unasked); \
             {advice}{others}"
        );
    }
}

/// A target that refused `stream_options`, owned: a stream answered early ([`super::early`])
/// outlives the request's borrow of the config.
pub struct Refusal {
    /// Its alias, or a URL target's origin (scheme, host, port; never its path or query,
    /// which may carry a key).
    key: String,
    alias: Option<String>,
}

impl Refusal {
    pub fn of(target: &Target<'_>) -> Self {
        Self {
            key: key_of(target),
            alias: target.alias().map(str::to_owned),
        }
    }
}

/// What a target is remembered by ([`Refusal::key`]).
fn key_of(target: &Target<'_>) -> String {
    match target.alias() {
        Some(alias) => alias.to_owned(),
        None => target.base.origin().ascii_serialization(),
    }
}

/// Whether an upstream's 400 body (decoded) is about `stream_options`.
pub fn mentions_stream_options(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"stream_options").is_some()
}

/// What sending a chat stream once more without `stream_options` needs.
pub(super) struct Resend<'a, V> {
    pub state: &'a Arc<AppState>,
    pub view: &'a V,
    /// The client's body, as it came.
    pub body: &'a Bytes,
    pub target: &'a Target<'a>,
    /// The path after `/v1`, the query, the client's header fields.
    pub request: (&'a str, Option<&'a str>, &'a Fields),
    pub hops: u32,
    /// The first attempt's deadline: the retry does not extend `timeout_secs`.
    pub within: Within,
    /// The stream may open before its upstream answers ([`super::early`]): a resend still
    /// unanswered after the keep-alive interval is handed to the early answer, as the first
    /// attempt would have been.
    pub opens_early: bool,
}

/// How a 400 to a stream the router added `stream_options` to ended.
pub(super) enum Retried {
    /// The 400 named `stream_options`: the upstream's answer to the request without them.
    Again(UpstreamResponse),
    /// As `Again`, but the upstream had not answered within the keep-alive interval: the
    /// exchange under way, for the router to answer the client early meanwhile.
    Waiting(Sending),
    /// The 400 was about something else: it, read whole, for the client as it is.
    Kept(StatusCode, Fields, Bytes),
    /// Reading the 400 or sending again failed.
    Failed(ProxyError),
}

/// Reads the upstream's 400 (`refused`) and, when it names `stream_options`, sends the request
/// once more: the client's body with only the model rewritten (the target is remembered when
/// that is taken: see [`sending_without`]).
pub(super) async fn without_them<V: ReadBody>(
    resend: &Resend<'_, V>,
    refused: UpstreamResponse,
    hard_stop: &mut Stopped,
) -> Retried {
    let Within { deadline, timeout } = resend.within;
    let provider = &resend.target.provider;
    let UpstreamResponse {
        status,
        fields,
        body,
    } = refused;
    let declared = http_body::Body::size_hint(&body).exact();
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, read_upstream_body(body, declared)) => read,
        () = &mut *hard_stop => return Retried::Failed(shutting_down()),
    };
    let body = match read {
        Err(_) => return Retried::Failed(unfinished_error(Named::of(resend.target), timeout)),
        Ok(Err(error)) => return Retried::Failed(error.into_proxy_error(Named::of(resend.target))),
        Ok(Ok(body)) => body,
    };
    let (readable, _) = decode_error_body(status, body.clone(), &fields);
    if !mentions_stream_options(&readable) {
        return Retried::Kept(status, fields, body);
    }
    let mut sending = sending_without(resend);
    // As the first attempt waits (see `forward_read`): one timer, at the keep-alive interval
    // when the stream may open early, else at the deadline.
    let wake_at = if resend.opens_early {
        deadline.min(tokio::time::Instant::now() + resend.state.keepalive_interval)
    } else {
        deadline
    };
    let sent = tokio::select! {
        biased;
        sent = &mut sending => Some(sent),
        () = tokio::time::sleep_until(wake_at) => None,
        () = &mut *hard_stop => return Retried::Failed(shutting_down()),
    };
    match sent {
        None if wake_at < deadline => Retried::Waiting(sending),
        None => Retried::Failed(timeout_error(Named::of(resend.target), timeout)),
        Some(Err(error)) => Retried::Failed(send_error(provider, &error, &resend.state.redactor)),
        Some(Ok(mut response)) => {
            let redactor = &resend.state.redactor;
            response.fields = super::headers::fields_without_echoed_keys(redactor, response.fields);
            Retried::Again(response)
        }
    }
}

/// The request as the client sent it (only the model rewritten), ready to go upstream.
fn prepare_without<V: ReadBody>(resend: &Resend<'_, V>) -> Prepared {
    let (path, query, client) = resend.request;
    let (upstream_body, _) = resend
        .view
        .rewrite(resend.body, &resend.target.upstream_model, false);
    let url = crate::routing::request_url_text(&resend.target.base, path, query);
    let upstream_fields = UpstreamFields {
        client,
        target: resend.target,
        post: true,
        hops: resend.hops,
    };
    let upstream = &resend.state.upstream;
    upstream.prepare(&Method::POST, url, &upstream_fields, upstream_body)
}

/// For a stream answered before its upstream ([`super::early`]): the request without
/// `stream_options`, made when the stream opened (the slow path) and sent only if the
/// upstream's answer refuses them.
pub struct Again {
    sending: Sending,
}

/// The exchange of the request without `stream_options`, owning what it needs (a stream
/// answered early takes it along). The target is remembered as refusing them only when this
/// request is taken (a 2xx): a 400 that names `stream_options` because it quotes the client's
/// own text (a message, a role the upstream refuses) refuses the request without them too,
/// and must not stop the router asking that target for usage, for every client, until it
/// restarts (bb54: one such request left an alias's streams unmetered).
fn sending_without<V: ReadBody>(resend: &Resend<'_, V>) -> Sending {
    let prepared = prepare_without(resend);
    let exchange = Arc::clone(resend.state);
    let within = resend.within;
    let refusal = Refusal::of(resend.target);
    Box::pin(async move {
        let sent = exchange.upstream.send_prepared(prepared, within).await;
        if matches!(&sent, Ok(response) if response.status.is_success()) {
            exchange.stream_options_refused.remember(&refusal);
        }
        sent
    })
}

impl Again {
    pub(super) fn of<V: ReadBody>(resend: &Resend<'_, V>) -> Self {
        Self {
            sending: sending_without(resend),
        }
    }

    /// The request to send instead, when `body` (the upstream's error answer, read whole)
    /// is a 400 about `stream_options`.
    pub fn instead_of(self, status: StatusCode, body: &Bytes, fields: &Fields) -> Option<Sending> {
        if status != StatusCode::BAD_REQUEST {
            return None;
        }
        let (readable, _) = decode_error_body(status, body.clone(), fields);
        mentions_stream_options(&readable).then_some(self.sending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::resolve_unnamed;

    /// At most [`MAX_URL_ORIGINS`] URL origins are remembered, the oldest forgotten first;
    /// aliases (the config's few) are never forgotten.
    #[test]
    fn url_origins_remembered_are_bounded() {
        let config =
            Config::parse("servers:\n  a:\n    url: http://a/v1\n", &|_| None).expect("config");
        let lookup = crate::routing::Lookup::none();
        let alias = crate::routing::resolve(None, "[a]m", &config, &lookup).expect("an alias");
        let target = |n: usize| {
            resolve_unnamed(Some(&format!("http://h{n}/v1")), &config).expect("a URL target")
        };
        let refusals = Refusals::default();
        refusals.remember(&Refusal::of(&alias));
        for n in 0..=MAX_URL_ORIGINS {
            refusals.remember(&Refusal::of(&target(n)));
        }
        assert!(!refusals.refused(&target(0)), "the oldest is forgotten");
        assert!(refusals.refused(&target(1)));
        assert!(refusals.refused(&target(MAX_URL_ORIGINS)));
        assert!(refusals.refused(&alias));
    }

    /// A URL target is remembered by its origin as the router parsed it for routing: another
    /// spelling of the same origin (case, default port, path) is the same target.
    #[test]
    fn a_url_target_is_remembered_whatever_its_spelling() {
        let config = Config::parse("", &|_| None).expect("empty config");
        let target = |url: &str| resolve_unnamed(Some(url), &config).expect("a URL target");
        let refusals = Refusals::default();
        refusals.remember(&Refusal::of(&target("http://a/v1")));
        for same in ["HTTP://A:80/v1", "http://a:80/other/", "http://A/v1?x=1"] {
            assert!(refusals.refused(&target(same)), "{same}");
        }
        for other in ["https://a/v1", "http://a:8080/v1", "http://b/v1"] {
            assert!(!refusals.refused(&target(other)), "{other}");
        }
    }
}
