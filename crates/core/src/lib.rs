//! The model and the policy of Tidepool.
//!
//! Layout:
//! - [`resources`]: resource vectors and the parsers of sizes and durations users type.
//! - [`array`]: job-array index sets (`0-999:2%4`), stored as ranges, never expanded.
//! - [`tier`]: the priority classes of work.
//! - [`job`]: what a user submits, validated.
//! - [`cluster`]: the in-memory truth about jobs, tasks and nodes, and the scheduling pass.
//!
//! **Architecture invariant**: this crate does no I/O, spawns nothing, reads no clock and no
//! randomness. Time is an argument (`now_ms`), so the server and a simulator get the same
//! decisions from the same inputs.

pub mod array;
pub mod cluster;
pub mod job;
pub mod resources;
pub mod tier;

pub use array::ArraySpec;
pub use cluster::{Cluster, KillOrder, NodeId, Placement, TaskCounts, TaskOutcome, TaskState};
pub use job::{JobId, JobSpec, SpecError};
pub use resources::Resources;
pub use tier::Tier;
