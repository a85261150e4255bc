//! Running the router: accept connections until shutdown, then let running requests finish.
//!
//! Shutdown order (PRODUCT.md "Shutdown"): stop accepting; let running streams finish for at
//! most [`SHUTDOWN_GRACE`]; then cut what is left (each cut stream ends with an error event and
//! still hands over its record); the caller then flushes the sinks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::app::build_app;
use crate::hard_stop::HardStop;
use crate::http1::server::{Service, serve_connection};
use crate::lanes::Lanes;
use crate::sinks::loss::LossWarnings;
use crate::state::AppState;

/// How long running requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `state` on `listener` until `shutdown` resolves and running requests are done (or
/// the grace period is over), then ends the state's background work (model list refreshes).
/// Connections are served on [`crate::lanes`], one per core, by the router's own HTTP/1
/// ([`crate::http1::server`]); this task only accepts them.
///
/// `cut_short` (asked only once shutdown began: a second Ctrl-C or SIGTERM) ends the grace
/// period at once.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cut_short: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let result = serve(listener, state.clone(), shutdown, cut_short, grace).await;
    state.models.shutdown().await;
    result
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cut_short: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let mut lanes = Lanes::start(state.upstream.lanes())?;
    let service = Arc::new(Service {
        app: build_app(state.clone()),
        state: state.clone(),
        draining: HardStop::new(),
    });
    // Every connection, so shutdown can wait for the last one.
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = LossWarnings::every(state.warning_interval);
    let mut failed_accepts = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => hand_over(&mut lanes, tcp, &service, &connections),
                Err(error) => pause_after(error, &mut failed_accepts, &mut accept_errors).await,
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for running requests");
    service.draining.fire();
    connections.close();
    let mut drained = std::pin::pin!(connections.wait());
    let cut = tokio::select! {
        () = &mut drained => false,
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after {} s; cutting them", grace.as_secs());
            true
        }
        // Said by `count_signals`, which counted it.
        () = cut_short => true,
    };
    if cut {
        state.hard_stop.fire();
        // Cut streams end at their next poll; give them a moment to send their error event.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut drained).await;
    }
    lanes.stop().await;
    Ok(())
}

/// TCP keep-alive probes on client connections: a client that vanished without closing (a
/// laptop gone to sleep, a network that dropped it) while its request waits for a long
/// answer is found within about 2.5 minutes (60 s idle, then up to 9 probes 10 s apart), and
/// its request dropped, so the provider stops generating an answer nobody will read. Writes
/// find a vanished client by themselves (`AppState::send_timeout`); a connection waiting
/// for its answer writes nothing.
const CLIENT_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10));

/// Moves an accepted connection to the next lane, which serves it to the end.
fn hand_over(lanes: &mut Lanes, tcp: TcpStream, service: &Arc<Service>, connections: &TaskTracker) {
    // Registered with this runtime's reactor by `accept`; the lane registers it with its own.
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(error) => {
            tracing::debug!("dropping a connection that cannot be handed over: {error}");
            return;
        }
    };
    let service = Arc::clone(service);
    let token = connections.token();
    lanes.spawn(move |_| async move {
        let _token = token;
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::debug!("dropping a connection its lane cannot register: {error}");
                return;
            }
        };
        // Small SSE events must leave at once: without TCP_NODELAY, Nagle holds an event
        // until the client's delayed ACK (40 ms on Linux) of the headers.
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&CLIENT_KEEPALIVE);
        // A panic in a request's handling is caught closer (a 500, or the answer cut); one
        // anywhere else on the connection (reading a head, HTTP/2's own) ends it here, said.
        if let Err(panicked) = crate::caught::catching(serve_connection(tcp, service)).await {
            tracing::error!("internal error: serving a connection panicked {panicked}; closed");
        }
    });
}

/// After a failed `accept`: go on at once when only that connection failed; otherwise (out
/// of file descriptors, say) wait a second rather than spin. Said at most once per warning
/// interval (10 s), with the count of failures so far: out of file descriptors, the loop
/// fails every second until connections close, which filled the log a line a second.
async fn pause_after(error: std::io::Error, failed: &mut u64, warnings: &mut LossWarnings) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    *failed += 1;
    if let Some(unsaid) = warnings.due(*failed, std::time::Instant::now()) {
        tracing::error!(
            failed = unsaid.total,
            since_last_warning = unsaid.new,
            "accept error: {error}; new connections wait in the listen queue"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Counts Ctrl-C and SIGTERM in `count` as they come, for ever: the first asks for a graceful
/// shutdown, a second cuts the grace period short ([`run`]'s `cut_short`), and a third ends
/// the process at once, as an operator pressing Ctrl-C again and again means (exit status
/// 130; records not yet written are lost, which the log line says).
///
/// SIGHUP (the terminal or ssh session the router runs in closed) starts the same graceful
/// shutdown; left to its default it killed the process and lost the records of the requests
/// under way. It never counts further: a closing session may send it twice (the shell, then
/// the kernel), which must not cut the running requests. A SIGHUP ignored when the process
/// started (`nohup llmsrouter serve &`) stays ignored.
///
/// The handlers are installed by this call, inside a runtime, not when the returned future
/// first runs: a signal that arrives from then on is counted. Spawned after the start-up
/// line, they were installed only once the task first ran, and a SIGTERM sent at once by a
/// supervisor that waits for that line killed the process by the signal (exit status 143,
/// nothing flushed). Call it before binding the listener.
pub fn count_signals(
    count: tokio::sync::watch::Sender<u32>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let installed = unix_signals();
    async move {
        #[cfg(unix)]
        {
            let Some((mut interrupt, mut terminate, mut hangup)) = installed else {
                tracing::warn!(
                    "cannot listen for Ctrl-C and SIGTERM; stop the router with SIGKILL"
                );
                return;
            };
            loop {
                let hung_up = tokio::select! {
                    _ = interrupt.recv() => false,
                    _ = terminate.recv() => false,
                    () = next_hangup(&mut hangup) => true,
                };
                if hung_up {
                    if *count.borrow() > 0 {
                        tracing::info!("SIGHUP ignored: already shutting down");
                        continue;
                    }
                    tracing::info!(
                        "SIGHUP (terminal or session closed): shutting down as for SIGTERM"
                    );
                }
                count.send_modify(|n| *n += 1);
                match *count.borrow() {
                    1 => {}
                    2 => tracing::warn!(
                        "asked again to stop: cutting running requests now (a third time exits at once)"
                    ),
                    _ => {
                        tracing::warn!(
                            "asked a third time to stop: exiting now; records not yet written are lost"
                        );
                        std::process::exit(130);
                    }
                }
            }
        }
        #[cfg(not(unix))]
        loop {
            shutdown_signal().await;
            count.send_modify(|n| *n += 1);
        }
    }
}

/// The handlers of Ctrl-C, SIGTERM and (unless it was ignored at start) SIGHUP, installed
/// now; `None` when the first two cannot be.
#[cfg(unix)]
fn unix_signals() -> Option<(
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    Option<tokio::signal::unix::Signal>,
)> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok()?;
    let terminate = signal(SignalKind::terminate()).ok()?;
    let hangup = if hangup_ignored() {
        None
    } else {
        signal(SignalKind::hangup()).ok()
    };
    Some((interrupt, terminate, hangup))
}

/// The next SIGHUP; never, when it is not listened for.
#[cfg(unix)]
async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) {
    let received = match hangup {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

/// Whether SIGHUP was ignored when the process started (`nohup`), read from the kernel's
/// `SigIgn` mask (bit 0 is signal 1, SIGHUP) before the router listens for it: taking it over
/// would undo what the person who started the router asked for. Where /proc is missing (not
/// Linux), taken as not ignored.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}

/// Resolves once [`count_signals`] has counted `n` signals.
pub async fn signalled(mut count: tokio::sync::watch::Receiver<u32>, n: u32) {
    if count.wait_for(|seen| *seen >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
