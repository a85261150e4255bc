//! Running the router: accept connections until shutdown, then let running requests finish.
//!
//! Shutdown order (PRODUCT.md "Shutdown"): stop accepting; let running streams finish for at
//! most [`SHUTDOWN_GRACE`]; then cut what is left (each cut stream ends with an error event and
//! still hands over its record); the caller then flushes the sinks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::app::build_app;
use crate::state::AppState;

/// How long running requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `state` on `listener` until `shutdown` resolves and running requests are done (or
/// the grace period is over), then ends the state's background work (model list refreshes).
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let result = serve(listener, state.clone(), shutdown, grace).await;
    state.models.shutdown().await;
    result
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = build_app(state.clone());
    // Small SSE events must leave at once: without TCP_NODELAY, Nagle holds an event until
    // the client's delayed ACK (40 ms on Linux) of the headers.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop_accepting = tokio_util::sync::CancellationToken::new();
    let signal = stop_accepting.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { signal.cancelled().await });
    let mut server = std::pin::pin!(server.into_future());
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = &mut server => return result,
        () = &mut shutdown => {
            tracing::info!("shutting down: no new connections; waiting for running requests");
            stop_accepting.cancel();
        }
    }
    tokio::select! {
        result = &mut server => return result,
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after {} s; cutting them", grace.as_secs());
            state.hard_stop.cancel();
        }
    }
    // Cut streams end at their next poll; give them a moment to send their error event.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
    Ok(())
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
