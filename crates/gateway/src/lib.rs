//! The OpenAI-compatible inference gateway: tenants with TPM/RPM budgets, traffic tiers,
//! admission under overload (429 with Retry-After), routing to replicas at their best
//! concurrency, cutting lower-tier streams off when realtime needs the slot.
//!
//! Layout:
//! - [`config`]: the TOML file, validated.
//! - [`gateway`]: the state, admission and proxying (`mod.rs`); `routes`, `stream` (SSE
//!   pass-through and cut-off), `scrape` (`/metrics`) and `serving` (accepting and threads).
//! - `connection`: one client connection; the completion endpoints' plain HTTP/1.1 read and
//!   answered there, the rest handed to hyper and the router.
//! - [`error`]: every refusal as one `Error`, answered as OpenAI's error object.
//! - `openai`: OpenAI's object shapes (errors, models, event streams).
//! - [`http1`]: HTTP/1.1 framing by hand for tests and benchmarks.
//! - `request`: the few facts the gateway reads of a completion request, in one pass.
//! - [`batch`]: the Files and Batches APIs and the batch runner.
//! - [`emulator`]: an OpenAI-compatible replica whose pace follows a batching model.
//!
//! The tier policy is `tidepool_core::admission` (pure, tested); this crate applies it.

// Handlers answer early with the response itself (axum's idiom), so `Err(Response)` is
// returned on purpose.
#![allow(clippy::result_large_err)]

pub mod batch;
pub mod config;
mod connection;
pub mod emulator;
pub mod error;
pub mod gateway;
pub mod http1;
mod openai;
mod request;
#[cfg(test)]
mod testing;
mod upstream;

pub use config::GatewayConfig;
pub use gateway::{router, run, run_on_workers};
