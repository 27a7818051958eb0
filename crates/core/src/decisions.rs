//! What a scheduling pass decides, as values for the edge to carry out: attempts to start where,
//! and attempts to stop for the work that needs their place.

use crate::cluster::NodeId;
use crate::job::JobId;

/// The core's decision: run this attempt of this task on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The job.
    pub job_id: JobId,
    /// The task's position in the array.
    pub pos: u32,
    /// The task's array index.
    pub index: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Where.
    pub node_id: NodeId,
}

/// The core's decision: stop this running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOrder {
    /// The job.
    pub job_id: JobId,
    /// The task's array index.
    pub index: u32,
    /// The attempt to stop.
    pub attempt: u32,
    /// Where it runs.
    pub node_id: NodeId,
}

/// What one scheduling pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    /// Attempts to start.
    pub placements: Vec<Placement>,
    /// Attempts to stop so that higher-priority work fits; they go back to the queue.
    pub preemptions: Vec<Preemption>,
}

/// A preemption: the attempt to stop and the job it makes room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preemption {
    /// The attempt to stop.
    pub victim: KillOrder,
    /// The job that needs its place.
    pub for_job: JobId,
}
