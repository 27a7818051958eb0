//! The node agent and the per-task supervisor.
//!
//! Layout:
//! - [`daemon`]: dials out to the server, registers, long-polls for work, starts supervisors,
//!   reports results. It never listens on a port.
//! - [`supervisor`]: one small process per task attempt (the role of Slurm's slurmstepd):
//!   runs the task in its own process group and cgroup, enforces the time limit, kills the
//!   whole tree on cancel, measures usage and leaves the result in a file, so a restarted
//!   agent collects it and a finished task is never started again.
//! - [`cgroup`]: cgroup v2, v1 or none, decided once per node.
//! - [`rundir`]: the on-disk layout shared by the two.

pub mod cgroup;
pub mod daemon;
pub mod rundir;
pub mod slurm_site;
pub mod supervisor;

pub use daemon::{api_client, run, AgentConfig};

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or refused.
    #[error("server: {0}")]
    Server(String),
    /// The server refused this agent's join token (revoked or wrong).
    #[error("the server refused this agent's join token: {0}")]
    Refused(String),
    /// A local file or process operation failed.
    #[error("{0}")]
    Io(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;
