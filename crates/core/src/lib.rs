//! The model and the policy of Tidepool.
//!
//! Layout:
//! - [`resources`]: resource vectors and the parsers of sizes and durations users type.
//! - [`admission`]: LLM request admission: tenant budgets and tier slots.
//! - [`concurrency`]: learning a replica's best concurrency from the pace of its streams.
//! - [`array`]: job-array index sets (`0-999:2%4`), stored as ranges, never expanded.
//! - [`tier`]: the priority classes of work.
//! - [`job`]: what a user submits, validated.
//! - [`project`]: quotas, borrowing limits and fair share.
//! - [`cluster`]: the in-memory truth about jobs, tasks, nodes and projects, and its events.
//! - [`schedule`]: the scheduling pass (placement, gangs, reservations, backfill, preemption).
//! - [`decisions`]: what a pass decides (placements, preemptions), as values for the edge.
//! - [`pending`]: why a job waits.
//! - [`scale`]: how many nodes to add, which may go, which tail tasks to move (compaction).
//! - [`forecast`]: Holt-Winters forecasting of a daily tide.
//!
//! **Architecture invariant**: this crate does no I/O, spawns nothing, reads no clock and no
//! randomness. Time is an argument (`now_ms`), so the server and a simulator get the same
//! decisions from the same inputs.

pub mod admission;
pub mod array;
pub mod cluster;
pub mod concurrency;
pub mod decisions;
pub mod forecast;
pub mod job;
pub mod project;
pub mod resources;
pub mod tier;

pub use array::ArraySpec;
pub use cluster::{pending, scale, schedule};
pub use cluster::{
    Cluster, Decisions, KillOrder, NodeId, PendingReason, Placement, Policy, TaskCounts, TaskOutcome, TaskSnapshot, TaskState,
};
pub use job::{After, AfterKind, Dependencies, GangSpec, JobId, JobSpec, SpecError};
pub use project::{Identity, IdentityOffer, ProjectLimits};
pub use scale::{Compaction, PoolShape, ScaleAdvice};
pub use schedule::Preemption;
pub use resources::Resources;
pub use tier::Tier;
