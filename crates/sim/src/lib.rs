//! The simulator: the very scheduling core the server runs ([`tidepool_core::Cluster`]) on
//! virtual time, with simulated nodes that take time to provision, so a policy can be tried on
//! a fleet no one has at hand.
//!
//! Layout:
//! - [`baselines`]: FCFS, EASY and conservative backfilling on P processors, and the per-job
//!   metrics the literature reports (wait, response, bounded slowdown, utilisation).
//! - [`rng`]: a seeded generator and the distributions workloads draw from.
//! - [`batch`]: the batch engine (jobs arrive, a pool of nodes grows and shrinks, tasks run)
//!   and its report.
//! - [`llm`]: the LLM fleet over a day (replicas, forecaster, training lent the rest).
//! - [`llm_trace`]: LLM request traces (Mooncake JSONL, Azure CSV) as demand curves.
//! - [`serving`]: LLM serving as discrete events (continuous batching, KV cache, prefix cache
//!   from `hash_ids`), with TTFT and TPOT SLO attainment.
//! - [`scenario`]: the shipped scenarios (`science-burst`, `llm-day`).
//! - [`swf`]: the Standard Workload Format reader, for replaying real batch logs.
//! - [`svg`]: plots as SVG.
//!
//! **Invariant**: no clock, no threads, no I/O: the same inputs and seed give the same report,
//! byte for byte.

pub mod baselines;
pub mod batch;
pub mod llm;
pub mod llm_trace;
pub mod rng;
pub mod scenario;
pub mod serving;
pub mod svg;
pub mod swf;
