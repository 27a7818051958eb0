//! The task vocabulary every crate speaks: a task's state, how an attempt ended, and a job's
//! counts by state. The edges convert to and from it (the API's names, the journal's names).

use std::fmt;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskState {
    /// Waiting to be placed.
    Pending = 0,
    /// Handed to a node.
    Running = 1,
    /// Exited 0.
    Succeeded = 2,
    /// Exited non-zero or was killed by a signal.
    Failed = 3,
    /// Cancelled by a user before or while running.
    Cancelled = 4,
    /// Killed at its time limit.
    Timeout = 5,
}

impl TaskState {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Timeout => "timeout",
        }
    }

    /// True once the task will not change again.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit or a signal.
    Failed,
    /// Ended on a user's request.
    Cancelled,
    /// Ended at its time limit.
    Timeout,
}

impl TaskOutcome {
    pub(crate) fn state(self) -> TaskState {
        match self {
            TaskOutcome::Succeeded => TaskState::Succeeded,
            TaskOutcome::Failed => TaskState::Failed,
            TaskOutcome::Cancelled => TaskState::Cancelled,
            TaskOutcome::Timeout => TaskState::Timeout,
        }
    }
}

/// How many tasks of a job are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCounts {
    /// Waiting.
    pub pending: u32,
    /// On a node.
    pub running: u32,
    /// Exited 0.
    pub succeeded: u32,
    /// Exited otherwise.
    pub failed: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Hit the time limit.
    pub timeout: u32,
}

impl TaskCounts {
    pub(crate) fn slot(&mut self, state: TaskState) -> &mut u32 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
            TaskState::Timeout => &mut self.timeout,
        }
    }

    /// Tasks that will not change again.
    pub fn n_final(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled + self.timeout
    }

    /// Every task.
    pub fn total(&self) -> u32 {
        self.pending + self.running + self.n_final()
    }
}
