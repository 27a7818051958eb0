//! The control plane: REST API, agent sessions, and the reactor that owns the in-memory state,
//! journals every change before acknowledging it, and asks the core for decisions.
//!
//! Layout:
//! - [`clock`]: the one clock, the system's or a virtual one for the in-process harness.
//! - [`config`]: what the server is told at start.
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`http`]: connections with header-read and idle timeouts and a cap.
//! - [`journal`]: the group-commit writer in front of the store (any `tidepool_store::Store`).
//! - [`logs`]: task logs relayed from the agent that wrote them, streamed in pieces.
//! - [`state`]: the shared state, replay and the reactor's `on_*` functions.
//! - [`routes`]: paths to handlers, and the handlers.
//! - [`spec`]: validation of submissions and expansion of output patterns.
//! - [`tls`]: the REST API over TLS (rustls) when a certificate is configured.

pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod journal;
pub mod logs;
pub mod routes;
pub mod spec;
pub mod state;
pub mod tls;
pub mod tokens;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use error::{Error, Result};

use std::sync::Arc;
use tokio::net::TcpListener;

/// How long open connections may finish after the shutdown signal: agents hold long polls and
/// reuse their connections, so waiting for every connection to close would wait forever.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `app` within `limits` until `shutdown` resolves, then lets connections finish for
/// [`SHUTDOWN_GRACE`].
async fn serve_until<L>(listener: L, app: axum::Router, limits: http::Limits, shutdown: impl std::future::Future<Output = ()> + Send + 'static)
where
    L: axum::serve::Listener,
    L::Io: Unpin,
    L::Addr: std::fmt::Debug,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(http::serve(listener, app, limits, rx, SHUTDOWN_GRACE));
    shutdown.await;
    let _ = tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, served).await;
}

/// Runs the server on `listener` (TLS when the config names a certificate) until `shutdown`
/// resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tls = config.tls.clone();
    let shared = state::Shared::open(config)?;
    let shared = Arc::new(shared);
    let reactor = tokio::spawn(state::reactor_loop(shared.clone()));
    let limits = shared.config.limits;
    let app = routes::router(shared.clone())
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::map_response(http::too_large_in_api_shape));
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls).map_err(|e| Error::Internal(format!("TLS listener: {e}")))?;
            serve_until(listener, app, limits, shutdown).await;
        }
        None => serve_until(listener, app, limits, shutdown).await,
    }
    reactor.abort();
    Ok(())
}
