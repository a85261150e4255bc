//! The model catalog: the cached merged list, refreshed single-flight, with each server's last
//! good answer kept so one failure does not empty the pickers.
//!
//! Reading the cache is lock-free (an `ArcSwap` snapshot). A refresh is one owned task (a
//! `TaskTracker` that [`ModelCatalog::shutdown`] waits for); every caller that needs it joins
//! that task, none starts a second one. No lock is held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, join_all};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fetch::{FetchError, Fetched, fetch_models};
use super::filter::Filter;
use super::list::{MergedList, ServerInput, Source, UpstreamModel};
use super::loops::{Chain, RouterId};
use crate::config::{Config, Server, Settings};
use crate::state::HttpClients;

/// A server that failed is asked again after this long (or after the cache TTL, if shorter),
/// so a local server started after the router shows up without waiting out a long TTL.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

/// The model lists of every configured server. Lives in [`crate::state::AppState`]; the
/// `llmsrouter models` command uses one too.
#[derive(Default)]
pub struct ModelCatalog {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    current: ArcSwapOption<Snapshot>,
    /// The refresh under way, if any: every caller that must wait joins this one.
    running: Mutex<Option<Refresh>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Callers waiting for a refresh right now.
    waiting: AtomicUsize,
    /// This router's id on its model-list fetches (see [`super::loops`]).
    id: RouterId,
    /// The lists being built for other routers, by the chain their fetches name: callers
    /// asking for the same routers at once share one.
    for_routers: Mutex<HashMap<Box<str>, Refresh>>,
}

/// Most lists built for other routers at once. A client may send any chain (the header is
/// not secret): past this many, askers get the cached list rather than more fetches.
const MAX_BUILDS_FOR_ROUTERS: usize = 8;

/// A running refresh; `None` when it was stopped by shutdown.
type Refresh = Shared<BoxFuture<'static, Option<Arc<Snapshot>>>>;

impl ModelCatalog {
    /// The current list. Fresh: returned at once, with no allocation. Expired while a
    /// previous list exists (TTL above 0): the previous list is returned at once and one
    /// background refresh runs. No list yet (cold), a changed config, or a TTL of 0: waits
    /// for the one refresh every such caller shares.
    pub async fn snapshot(&self, client: &HttpClients, config: Arc<Config>) -> Arc<Snapshot> {
        if let Some(cached) = self.cached(client, &config) {
            return cached;
        }
        let refresh = self.refresh(client, config.clone());
        let _waiting = Waiting::enter(&self.inner.waiting);
        match refresh.await {
            Some(snapshot) => snapshot,
            None => Arc::new(Snapshot::assemble(config, Vec::new())),
        }
    }

    /// The list for a `GET /v1/models` made for other routers (`askers`, not empty; see
    /// [`super::loops`]). Built for them, never taken from the refresh other callers share,
    /// which may be waiting on one of the askers: each server that is a router is asked
    /// again, naming them, so one that leads back to them answers 508 at once and is left
    /// out; the others come from the cache, due or not (a due cache is refreshed in the
    /// background, as for any caller), or are asked when never asked, within the share of the
    /// fetch timeout [`Asking::timeout`] gives, so every router up the chain has the answer
    /// in time. Callers asking for the same routers at once share one build. Not cached: a
    /// list built for routers leaves out what this router's own callers see.
    pub async fn snapshot_for_routers(
        &self,
        client: &HttpClients,
        config: Arc<Config>,
        askers: &Chain,
    ) -> Arc<Snapshot> {
        let current = self.inner.current.load_full();
        let fresh = current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.config, &config) && c.is_fresh(Instant::now()));
        if !fresh && !config.settings.models_cache_ttl.is_zero() {
            drop(self.refresh(client, config.clone()));
        }
        let asking = Asking {
            chain: Chain::of(&self.inner.id, askers),
            for_routers: askers.len(),
        };
        let key: Box<str> = asking.chain.to_string().into();
        let build = {
            let mut running = lock(&self.inner.for_routers);
            match running.get(&key) {
                Some(build) => build.clone(),
                None if running.len() >= MAX_BUILDS_FOR_ROUTERS => {
                    drop(running);
                    return current
                        .filter(|c| Arc::ptr_eq(&c.config, &config))
                        .unwrap_or_else(|| Arc::new(Snapshot::assemble(config, Vec::new())));
                }
                None => {
                    let build = self.build_for_routers(
                        client,
                        config.clone(),
                        current,
                        asking,
                        key.clone(),
                    );
                    running.insert(key, build.clone());
                    build
                }
            }
        };
        match build.await {
            Some(snapshot) => snapshot,
            None => Arc::new(Snapshot::assemble(config, Vec::new())),
        }
    }

    /// Starts one build for other routers, removed from the running ones when it ends.
    fn build_for_routers(
        &self,
        client: &HttpClients,
        config: Arc<Config>,
        previous: Option<Arc<Snapshot>>,
        asking: Asking,
        key: Box<str>,
    ) -> Refresh {
        let inner = Arc::clone(&self.inner);
        let client = client.clone();
        let task = self.inner.tasks.spawn(async move {
            let _clear = ClearBuildForRouters(&inner, key);
            tokio::select! {
                built = build(&client, config, previous.as_deref(), &asking) => Some(Arc::new(built)),
                () = inner.stop.cancelled() => None,
            }
        });
        async move { task.await.ok().flatten() }.boxed().shared()
    }

    /// The cached list, when it may be served without waiting: fresh, or expired with a TTL
    /// above 0 (one background refresh is then started or joined; its result lands in
    /// `current`).
    fn cached(&self, client: &HttpClients, config: &Arc<Config>) -> Option<Arc<Snapshot>> {
        let current = self.current_for(config)?;
        if current.is_fresh(Instant::now()) {
            return Some(current);
        }
        if config.settings.models_cache_ttl.is_zero() {
            return None;
        }
        drop(self.refresh(client, Arc::clone(config)));
        Some(current)
    }

    /// This router's id among routers.
    pub fn id(&self) -> &RouterId {
        &self.inner.id
    }

    /// Marks the current list expired: the next caller gets it once more and starts a refresh
    /// that asks every server again.
    pub fn invalidate(&self) {
        if let Some(current) = self.inner.current.load().as_ref() {
            current.invalidated.store(true, Ordering::Release);
        }
    }

    /// How many callers are waiting for a refresh at this moment (diagnostics and tests).
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Acquire)
    }

    /// Stops a running refresh and waits for its task to end. Later calls still answer (with
    /// what is cached, or overrides only) but no longer reach upstreams.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn current_for(&self, config: &Arc<Config>) -> Option<Arc<Snapshot>> {
        self.inner
            .current
            .load_full()
            .filter(|current| Arc::ptr_eq(&current.config, config))
    }

    /// Joins the running refresh, or starts one.
    fn refresh(&self, client: &HttpClients, config: Arc<Config>) -> Refresh {
        let mut running = lock(&self.inner.running);
        if let Some(refresh) = running.as_ref() {
            return refresh.clone();
        }
        // A refresh may have finished between the caller's look at the cache and this lock
        // (it stores its list before it clears `running`): use that list, do not start another.
        if let Some(current) = self.current_for(&config) {
            if current.is_fresh(Instant::now()) {
                return futures_util::future::ready(Some(current)).boxed().shared();
            }
        }
        let inner = Arc::clone(&self.inner);
        let client = client.clone();
        let asking = Asking {
            chain: Chain::of(&self.inner.id, &Chain::default()),
            for_routers: 0,
        };
        let task = self.inner.tasks.spawn(async move {
            let _clear = ClearRunning(&inner);
            let previous = inner.current.load_full();
            let built = tokio::select! {
                built = build(&client, config, previous.as_deref(), &asking) => Arc::new(built),
                () = inner.stop.cancelled() => return None,
            };
            inner.current.store(Some(Arc::clone(&built)));
            Some(built)
        });
        let refresh = async move { task.await.ok().flatten() }.boxed().shared();
        *running = Some(refresh.clone());
        refresh
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears `running` when the refresh task ends, however it ends (done, stopped, panicked), so
/// a later caller never joins a finished refresh forever.
struct ClearRunning<'a>(&'a Inner);

impl Drop for ClearRunning<'_> {
    fn drop(&mut self) {
        *lock(&self.0.running) = None;
    }
}

/// Removes a build for other routers from the running ones when it ends, however it ends.
struct ClearBuildForRouters<'a>(&'a Inner, Box<str>);

impl Drop for ClearBuildForRouters<'_> {
    fn drop(&mut self) {
        lock(&self.0.for_routers).remove(&self.1);
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One merged list and how each server fared. Immutable once built (but for the
/// invalidation mark), shared by every request that reads it.
pub struct Snapshot {
    config: Arc<Config>,
    servers: Vec<ServerState>,
    list: MergedList,
    /// When its first server is due to be asked again; `None`: never.
    expires_at: Option<Instant>,
    invalidated: AtomicBool,
}

/// What one server contributed to a snapshot.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub alias: String,
    pub status: ServerStatus,
    url: String,
    /// The latest list this server answered with, kept across failures.
    latest_good: Option<Arc<Vec<UpstreamModel>>>,
    /// When to ask again; `None`: never (an `override` server).
    due: Option<Instant>,
    /// Its `filter` kept none of the models it listed (see
    /// [`super::filter::keeps_none_warning`]): what to warn of.
    pub filter_kept_none: Option<String>,
    /// The server is a router (another llmsrouter, [`super::loops`]): asked again for every
    /// list built for routers.
    from_a_router: bool,
    /// Entries of its latest answer left out for want of a usable id: warned of when the
    /// count changes, not at every refresh.
    skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// `override` in config.yaml: not asked.
    Override,
    /// Answered.
    Listed,
    /// Did not answer usably; its last good list is served when `kept_last_good`, else its
    /// models are left out.
    Failed {
        error: FetchError,
        kept_last_good: bool,
    },
    /// Not asked: the router is shutting down.
    NotAsked,
}

impl Snapshot {
    pub fn list(&self) -> &MergedList {
        &self.list
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every configured server, in config order.
    pub fn servers(&self) -> &[ServerState] {
        &self.servers
    }

    fn is_fresh(&self, now: Instant) -> bool {
        !self.invalidated.load(Ordering::Acquire) && self.expires_at.is_none_or(|at| now < at)
    }

    fn server(&self, alias: &str) -> Option<&ServerState> {
        self.servers.iter().find(|s| s.alias == alias)
    }

    /// Merges the servers' lists. `states` follows `config.servers`; a missing state (nothing
    /// fetched) counts as not asked.
    fn assemble(config: Arc<Config>, mut states: Vec<ServerState>) -> Self {
        let now = Instant::now();
        for server in config.servers.values().skip(states.len()) {
            states.push(ServerState {
                alias: server.alias.clone(),
                status: ServerStatus::NotAsked,
                url: server.url.clone(),
                latest_good: None,
                due: Some(now),
                filter_kept_none: None,
                from_a_router: false,
                skipped: 0,
            });
        }
        let filters: Vec<Filter> = config
            .servers
            .values()
            .map(|s| Filter::parse(s.filter.as_deref().unwrap_or("")))
            .collect();
        let inputs: Vec<ServerInput<'_>> = config
            .servers
            .values()
            .zip(&states)
            .zip(&filters)
            .map(|((server, state), filter)| ServerInput {
                alias: &server.alias,
                source: match (&server.override_models, &state.latest_good) {
                    (Some(ids), _) => Source::Override(ids),
                    (None, Some(models)) => Source::Upstream(models),
                    (None, None) => Source::Nothing,
                },
                filter,
                // A server that leads back here lists nothing, its own additions included.
                append: if matches!(
                    &state.status,
                    ServerStatus::Failed {
                        error: FetchError::Loop,
                        ..
                    }
                ) {
                    &[]
                } else {
                    &server.append
                },
            })
            .collect();
        let list = MergedList::merge(&inputs);
        let expires_at = states.iter().filter_map(|s| s.due).min();
        Self {
            config,
            servers: states,
            list,
            expires_at,
            invalidated: AtomicBool::new(false),
        }
    }
}

/// Whom a list is built for, and so which fetches it makes.
struct Asking {
    /// The routers every fetch names: this one first.
    chain: Chain,
    /// How many other routers it is built for ([`ModelCatalog::snapshot_for_routers`]); 0
    /// for this router's own callers.
    for_routers: usize,
}

impl Asking {
    fn for_routers(&self) -> bool {
        self.for_routers > 0
    }

    /// How long a fetch may take: the whole fetch timeout for the own callers; for other
    /// routers half of it per router the list is built for, so each router up a chain (with
    /// the same timeout) has its answer in time: one asked for A waits 5 s of 10, one asked
    /// through it for A and B 2.5 s.
    fn timeout(&self, settings: &Settings) -> std::time::Duration {
        let halvings = u32::try_from(self.for_routers).unwrap_or(u32::MAX).min(16);
        settings.models_fetch_timeout / (1u32 << halvings)
    }
}

/// One refresh: every server asked concurrently, but for those whose answer in `previous`
/// (same config, not invalidated) may be reused (see [`server_state`]).
async fn build(
    client: &HttpClients,
    config: Arc<Config>,
    previous: Option<&Snapshot>,
    asking: &Asking,
) -> Snapshot {
    let reusable = previous
        .filter(|p| Arc::ptr_eq(&p.config, &config) && !p.invalidated.load(Ordering::Acquire));
    let states = join_all(config.servers.values().map(|server| {
        // The last answer of the same alias at the same URL, also across a config change.
        let before = previous
            .and_then(|p| p.server(&server.alias))
            .filter(|s| s.url == server.url);
        server_state(
            client,
            server,
            &config.settings,
            before,
            reusable.is_some(),
            asking,
        )
    }))
    .await;
    let snapshot = Snapshot::assemble(config, states);
    tracing::debug!(
        models = snapshot.list.len(),
        servers = snapshot.servers.len(),
        "model lists refreshed"
    );
    snapshot
}

/// One server's part of a list: asked, or its previous answer reused. For the router's own
/// callers a previous answer is reused until due; for other routers, due or not, unless the
/// server is a router (it may lead back to them) or the TTL is 0.
async fn server_state(
    client: &HttpClients,
    server: &Server,
    settings: &Settings,
    before: Option<&ServerState>,
    may_reuse: bool,
    asking: &Asking,
) -> ServerState {
    let mut state = ServerState {
        alias: server.alias.clone(),
        status: ServerStatus::Override,
        url: server.url.clone(),
        latest_good: None,
        due: None,
        filter_kept_none: None,
        from_a_router: false,
        skipped: 0,
    };
    if server.override_models.is_some() {
        return state;
    }
    let ttl = settings.models_cache_ttl;
    if let Some(before) = before.filter(|_| may_reuse) {
        let reuse = if asking.for_routers() {
            !before.from_a_router && before.status != ServerStatus::NotAsked && !ttl.is_zero()
        } else {
            before.due.is_none_or(|due| Instant::now() < due)
        };
        if reuse {
            return before.clone();
        }
    }
    let timeout = asking.timeout(settings);
    let fetched = match fetch_models(client, server, timeout, &asking.chain).await {
        Err(FetchError::Timeout { after, via }) if asking.for_routers() => {
            Err(FetchError::TimeoutForRouters { after, via })
        }
        fetched => fetched,
    };
    match fetched {
        Ok(Fetched {
            parsed,
            from_a_router,
        }) => {
            if parsed.skipped > 0 && before.is_none_or(|b| b.skipped != parsed.skipped) {
                tracing::warn!(server = %server.alias, "{}", skipped_warning(parsed.skipped));
            }
            state.skipped = parsed.skipped;
            if before.is_some_and(|b| matches!(b.status, ServerStatus::Failed { .. })) {
                tracing::info!(server = %server.alias, "GET /models answered again");
            }
            state.filter_kept_none = filter_kept_none(server, &parsed.models);
            if let Some(warning) = &state.filter_kept_none {
                // Once, not at every refresh while it lasts.
                if before.is_none_or(|b| b.filter_kept_none.is_none()) {
                    tracing::warn!(server = %server.alias, "{warning}");
                }
            }
            state.status = ServerStatus::Listed;
            state.latest_good = Some(Arc::new(parsed.models));
            state.from_a_router = from_a_router;
            state.due = Instant::now().checked_add(ttl);
        }
        Err(FetchError::Loop) => {
            // Nothing of its list, not even a last good one: it would hold this router's.
            state.from_a_router = true;
            let said_before = before.is_some_and(|b| {
                matches!(
                    &b.status,
                    ServerStatus::Failed {
                        error: FetchError::Loop,
                        ..
                    }
                )
            });
            // Built for routers, a loop found is the check doing its work; found by the own
            // refresh, it is a server that leads back here: said once while it lasts.
            if asking.for_routers() || said_before {
                tracing::debug!(server = %server.alias, "GET /models: {}", FetchError::Loop);
            } else {
                tracing::warn!(server = %server.alias, "GET /models: {}", FetchError::Loop);
            }
            state.status = ServerStatus::Failed {
                error: FetchError::Loop,
                kept_last_good: false,
            };
            state.due = Instant::now().checked_add(ttl.min(RETRY_FAILED_AFTER));
        }
        Err(error) => {
            state.latest_good = before.and_then(|b| b.latest_good.clone());
            state.filter_kept_none = before.and_then(|b| b.filter_kept_none.clone());
            state.from_a_router = before.is_some_and(|b| b.from_a_router);
            state.skipped = before.map_or(0, |b| b.skipped);
            let kept_last_good = state.latest_good.is_some();
            let status = ServerStatus::Failed {
                error,
                kept_last_good,
            };
            // Once while the same failure lasts: a server down for an hour with a short TTL
            // would otherwise fill the log with one line per retry.
            if before.is_none_or(|b| !same_failure(&b.status, &status)) {
                warn_failed(server, &status);
            } else if let ServerStatus::Failed { error, .. } = &status {
                tracing::debug!(server = %server.alias, "GET /models still failing: {error}");
            }
            state.status = status;
            state.due = Instant::now().checked_add(ttl.min(RETRY_FAILED_AFTER));
        }
    }
    state
}

/// Whether two statuses are the same failure, as far as warning of it again goes (see
/// [`FetchError::same_kind`]).
fn same_failure(a: &ServerStatus, b: &ServerStatus) -> bool {
    match (a, b) {
        (
            ServerStatus::Failed {
                error: a,
                kept_last_good: kept_a,
            },
            ServerStatus::Failed {
                error: b,
                kept_last_good: kept_b,
            },
        ) => kept_a == kept_b && a.same_kind(b),
        _ => false,
    }
}

/// The warning for a server's list fetch failing (a `Failed` status), saying what is served
/// instead.
fn warn_failed(server: &Server, status: &ServerStatus) {
    let ServerStatus::Failed {
        error,
        kept_last_good,
    } = status
    else {
        return;
    };
    if *kept_last_good {
        tracing::warn!(server = %server.alias, "GET /models failed: {error}; serving its last good model list");
    } else {
        tracing::warn!(
            server = %server.alias,
            "GET /models failed: {error}; {}",
            left_out(server, " of /v1/models")
        );
    }
}

/// What a failed server's warning says becomes of its models when it has no last good list:
/// left out (of `place`), but for its `append` entries, which come from the config and are
/// still listed (by [`Snapshot::assemble`]; a blank one is not, see [`MergedList::merge`]).
pub fn left_out(server: &Server, place: &str) -> String {
    if server.append.iter().any(|id| !id.trim().is_empty()) {
        format!(
            "its fetched models are left out{place}; its append entries from the config are still listed"
        )
    } else {
        format!("its models are left out{place}")
    }
}

/// The warning for entries of a server's list left out for want of a usable id (none, not a
/// string, or blank).
fn skipped_warning(skipped: usize) -> String {
    if skipped == 1 {
        "1 entry of its model list has no usable \"id\" and is left out".to_owned()
    } else {
        format!("{skipped} entries of its model list have no usable \"id\" and are left out")
    }
}

/// The warning for a server whose `filter` keeps none of the (non-empty) list it answered.
fn filter_kept_none(server: &Server, models: &[UpstreamModel]) -> Option<String> {
    let text = server.filter.as_deref()?;
    let filter = Filter::parse(text);
    (!models.is_empty() && !models.iter().any(|m| filter.matches(&m.id)))
        .then(|| super::filter::keeps_none_warning(text, models.len()))
}
