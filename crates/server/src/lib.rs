//! The control plane: REST API, agent sessions, and the reactor that owns the in-memory state,
//! journals every change before acknowledging it, and asks the core for decisions.
//!
//! Layout:
//! - [`config`]: what the server is told at start.
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`journal`]: the group-commit writer in front of the store.
//! - [`logs`]: task logs relayed from the agent that wrote them, streamed in pieces.
//! - [`state`]: the shared state, replay and the reactor's `on_*` functions.
//! - [`routes`]: paths to handlers, and the handlers.
//! - [`spec`]: validation of submissions and expansion of output patterns.
//! - [`tls`]: the REST API over TLS (rustls) when a certificate is configured.

pub mod config;
pub mod error;
pub mod journal;
pub mod logs;
pub mod routes;
pub mod spec;
pub mod state;
pub mod tls;
pub mod tokens;

pub use config::Config;
pub use error::{Error, Result};

use std::sync::Arc;
use tokio::net::TcpListener;

/// How long open connections may finish after the shutdown signal: agents hold long polls and
/// reuse their connections, so waiting for every connection to close would wait forever.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `app` until `shutdown` resolves, then lets connections finish for [`SHUTDOWN_GRACE`].
async fn serve_until<L>(listener: L, app: axum::Router, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let signalled = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let graceful = axum::serve(listener, app).with_graceful_shutdown(signalled);
    tokio::select! {
        served = graceful => served,
        _ = async {
            let _ = rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
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
    let app = routes::router(shared.clone());
    let served = match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls).map_err(|e| Error::Internal(format!("TLS listener: {e}")))?;
            serve_until(listener, app, shutdown).await
        }
        None => serve_until(listener, app, shutdown).await,
    };
    reactor.abort();
    served.map_err(|e| Error::Internal(format!("http server: {e}")))
}
