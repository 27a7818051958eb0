//! The node agent and its task launcher.
//!
//! Layout:
//! - [`daemon`]: dials out to the server, registers, long-polls for work, hands attempts to
//!   its executor, reports results. It never listens on a port.
//! - [`executor`]: the seam where attempts run: [`process`] (this node's processes, through
//!   the launcher) and [`slurm_site`] (a Slurm cluster as an overflow site).
//! - [`launcher`]: one small process per agent (the role of Slurm's slurmstepd, for every
//!   task of the node): starts each task with posix_spawn in its own process group and
//!   cgroup, enforces time limits, kills the whole tree on cancel, measures usage and leaves
//!   the result in a file, so a restarted agent collects it and a finished task is never
//!   started again. It outlives the agent until its last task has ended.
//! - [`images`]: OCI images pulled by digest and unpacked once per node.
//! - [`gpus`]: each GPU's health checked, and failing ones reported.
//! - [`identity`]: which Unix identities this node's tasks may run as.
//! - [`cgroup`]: cgroup v2, v1 or none, decided once per node.
//! - [`rundir`]: the on-disk layout shared by the two.
//! - [`outputs`]: which file each task's output went to, so logs are read only from there.
//! - [`spares`]: attempt directories made once, and emptied ones kept for later attempts.

pub mod cgroup;
pub mod daemon;
pub mod executor;
pub mod gpus;
pub mod images;
pub mod identity;
pub mod launcher;
pub mod outputs;
pub mod process;
pub mod rundir;
pub mod slurm_site;
mod spares;

pub use daemon::{api_client, run, run_until, AgentConfig};

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
