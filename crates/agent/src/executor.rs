//! The executor seam: where an agent's attempts run. The daemon makes each attempt's directory,
//! hands the attempt to its executor, and reports the results the executor sends back; it
//! knows nothing of processes, batch systems or images. Two executors today: the launcher's
//! processes (`process.rs`) and a Slurm site (`slurm_site.rs`).

use std::path::Path;
use tidepool_api::{AttemptRef, Launch, TaskResult};

/// Where an executor sends each attempt's result, once, when it ends.
pub type Results = tokio::sync::mpsc::UnboundedSender<TaskResult>;

/// What an attempt directory left by an earlier agent process turned out to hold.
#[derive(Debug)]
pub enum Recovered {
    /// Still running, and followed again: its result will come.
    Running,
    /// It ended while no agent was there: its result.
    Ended(TaskResult),
    /// Nothing runs it and it left no result: the server runs it again.
    Abandoned,
}

/// Runs attempts; every method returns without waiting on the attempt itself.
pub trait Executor: Send + Sync {
    /// Starts `launch` in its freshly made directory `dir`; its result comes later. An error
    /// says why it could not start (the attempt then fails with that message).
    fn start(&self, launch: Launch, dir: &Path) -> Result<(), String>;

    /// Stops attempt `a` (its result says cancelled); false when the executor does not hold it
    /// yet, and the daemon then refuses it if it comes.
    fn cancel(&self, a: AttemptRef, dir: &Path) -> bool;

    /// Sends a running attempt a signal (`scancel --signal`); false when it is not running here.
    fn signal(&self, _order: &tidepool_api::SignalOrder, _dir: &Path) -> bool {
        false
    }

    /// After a restart: what the directory of an attempt with no result holds.
    fn recover(&self, a: AttemptRef, dir: &Path) -> Recovered;

    /// The attempts it runs now.
    fn running(&self) -> Vec<AttemptRef>;

    /// The server recorded these attempts' results: they are no longer followed.
    fn forget(&self, acked: &[AttemptRef]);

    /// The agent stops in order: stop every attempt (each reports `stopped`, to run again) and
    /// return true, or leave them to run on for the next agent and return false. Blocking.
    fn stop_all(&self) -> bool;

    /// An overflow site: its node is filled only after every local node.
    fn is_overflow(&self) -> bool;

    /// An emptied attempt directory may serve a later attempt (nothing else writes there).
    fn reuses_dirs(&self) -> bool;

    /// It can run a task as its project's uid (when the agent is root).
    fn switches_users(&self) -> bool;
}

/// Writes an attempt's result beside it; if that fails the result still goes to the server,
/// but an agent restarted before the server acknowledges it would not find it, and the task
/// would run again: the log says so.
pub fn keep_result(dir: &Path, result: &TaskResult) {
    if let Err(e) = crate::rundir::write_result(dir, result) {
        let a = result.attempt;
        tracing::warn!(job = a.job_id, index = a.index, error = %e, "result.json not written: the task runs again if this agent restarts before the server records it");
    }
}

/// Attempt 1 of task `index` of job 1 running `command` in `/` with one core, its output
/// discarded: what tests of executors change the rest of.
pub fn plain_launch(index: u32, command: &[&str]) -> Launch {
    Launch {
        attempt: AttemptRef { job_id: 1, index, attempt: 1 },
        command: command.iter().map(|c| c.to_string()).collect(),
        script: None,
        env: Default::default(),
        workdir: "/".into(),
        stdout_path: "/dev/null".into(),
        stderr_path: "/dev/null".into(),
        time_limit_s: None,
        cpu_millis: 1000,
        mem_bytes: 0,
        discard_empty_output: false,
        append_output: false,
        warn_signal: None,
        run_as: None,
        gpus: vec![],
        container: None,
    }
}

#[cfg(test)]
pub(crate) mod double {
    //! A test double: attempts are recorded, not run, and the test ends them.

    use super::*;
    use std::sync::Mutex;

    pub use super::plain_launch as launch;

    /// An executor that runs nothing: it records what it is asked and refuses to start
    /// commands named `refuse`.
    pub struct Recorder {
        pub results: Results,
        pub running: Mutex<Vec<AttemptRef>>,
        pub cancelled: Mutex<Vec<AttemptRef>>,
        /// What `recover` answers for an attempt it does not run.
        pub found_after_restart: Mutex<Vec<(AttemptRef, bool)>>,
    }

    impl Recorder {
        pub fn new(results: Results) -> Recorder {
            Recorder { results, running: Mutex::default(), cancelled: Mutex::default(), found_after_restart: Mutex::default() }
        }

        /// Ends a running attempt with `outcome`, as a real executor would report it.
        pub fn end(&self, a: AttemptRef, result: TaskResult) {
            self.running.lock().unwrap().retain(|r| *r != a);
            self.results.send(result).unwrap();
        }
    }

    impl Executor for Recorder {
        fn start(&self, launch: Launch, _dir: &Path) -> Result<(), String> {
            if launch.command.first().is_some_and(|c| c == "refuse") {
                return Err("refused by the test executor".into());
            }
            self.running.lock().unwrap().push(launch.attempt);
            Ok(())
        }

        fn cancel(&self, a: AttemptRef, _dir: &Path) -> bool {
            let held = self.running.lock().unwrap().contains(&a);
            if held {
                self.cancelled.lock().unwrap().push(a);
            }
            held
        }

        fn recover(&self, a: AttemptRef, _dir: &Path) -> Recovered {
            if self.running.lock().unwrap().contains(&a) {
                return Recovered::Running;
            }
            match self.found_after_restart.lock().unwrap().iter().find(|(r, _)| *r == a) {
                Some((_, true)) => {
                    self.running.lock().unwrap().push(a);
                    Recovered::Running
                }
                _ => Recovered::Abandoned,
            }
        }

        fn running(&self) -> Vec<AttemptRef> {
            self.running.lock().unwrap().clone()
        }

        fn forget(&self, _acked: &[AttemptRef]) {}

        fn stop_all(&self) -> bool {
            true
        }

        fn is_overflow(&self) -> bool {
            false
        }

        fn reuses_dirs(&self) -> bool {
            true
        }

        fn switches_users(&self) -> bool {
            true
        }
    }
}
