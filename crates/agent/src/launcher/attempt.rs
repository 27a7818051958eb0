//! One attempt between its start and its result, and how its result is written and told.

use super::sys::zeroed_rusage;
use super::{now_ms, oci, Launcher};
use crate::cgroup::TaskCgroup;
use crate::rundir::{self, LaunchSpec};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tidepool_api::{AttemptOutcome, TaskResult};

/// One attempt between its start and its result.
pub(super) struct Attempt {
    pub(super) dir: PathBuf,
    /// Held while the attempt runs: tells a restarted agent that someone still watches it.
    pub(super) _lock: File,
    pub(super) spec: LaunchSpec,
    /// The task's leader, also its process group.
    pub(super) pid: i32,
    pub(super) cgroup: Option<TaskCgroup>,
    pub(super) result: TaskResult,
    pub(super) started: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) kill_at: Option<Instant>,
    pub(super) cancelled: bool,
    pub(super) timed_out: bool,
    /// The leader's wait status and its usage, once it has ended.
    pub(super) ended: Option<(i32, libc::rusage)>,
    /// Until when leftovers of an ended leader are waited for.
    pub(super) leftovers_until: Option<Instant>,
    /// The task's error output, kept for the line Slurm writes there when the job is cancelled
    /// or reaches its time limit.
    pub(super) end_note: Option<File>,
    /// When its `--signal` is due, until it is sent.
    pub(super) warn_at: Option<Instant>,
    /// (container, task) when it runs in a shared container, whose helper signals it.
    pub(super) inside: Option<(u64, u64)>,
}

impl Attempt {
    /// Slurm's line in a batch script's error output when the job is ended for it (a cancel,
    /// or `reason` such as " DUE TO TIME LIMIT"), in Slurm's words, which scripts and people
    /// grep for.
    pub(super) fn note_slurm_end(&mut self, reason: &str) {
        let Some(note) = self.end_note.as_mut() else { return };
        let env = &self.spec.launch.env;
        let job = env.get("SLURM_JOB_ID").map_or("", String::as_str);
        let node = env.get("SLURMD_NODENAME").map_or("", String::as_str);
        let at = tidepool_api::dates::iso_time(now_ms() / 1000);
        let _ = writeln!(note, "slurmstepd-{node}: error: *** JOB {job} ON {node} CANCELLED AT {at}{reason} ***");
    }

    /// Every process in the attempt's cgroup (none without one).
    pub(super) fn cgroup_pids(&self) -> Vec<i32> {
        self.cgroup.as_ref().map(TaskCgroup::pids).unwrap_or_default()
    }
}

impl Launcher {
    /// Writes and sends an ended attempt's result; `emptied` when its cgroup has no process left.
    pub(super) fn finish(&mut self, a: Attempt, emptied: bool) {
        let Attempt { dir, _lock, spec, cgroup, mut result, started, cancelled, timed_out, ended, inside, .. } = a;
        let (status, usage) = ended.unwrap_or((0, zeroed_rusage()));
        let tv_ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
        let measured = cgroup.as_ref().and_then(|c| c.usage(&spec.cgroup));
        let (cpu_ms, peak) = measured.unwrap_or((tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime), usage.ru_maxrss as u64 * 1024));
        match inside {
            Some((number, task)) => self.leave_shared(number, task),
            None if spec.launch.container.is_some() => self.forget_container(&oci::container_id(&spec.launch)),
            None => {}
        }
        if let Some(c) = cgroup {
            self.release_cgroup(&spec.cgroup, c, emptied);
        }
        result.cpu_ms = cpu_ms;
        result.peak_mem_bytes = peak;
        result.ended_ms = result.started_ms + started.elapsed().as_millis() as u64;
        if libc::WIFEXITED(status) {
            result.exit_code = Some(libc::WEXITSTATUS(status));
        } else if libc::WIFSIGNALED(status) {
            result.signal = Some(libc::WTERMSIG(status));
        }
        result.outcome = if cancelled && self.stopping && !dir.join(rundir::CANCEL_FILE).exists() {
            result.message = Some("stopped with its node".into());
            AttemptOutcome::Stopped
        } else if cancelled {
            AttemptOutcome::Cancelled
        } else if timed_out {
            AttemptOutcome::Timeout
        } else if result.exit_code == Some(0) {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Failed
        };
        let launch = &spec.launch;
        if launch.discard_empty_output {
            for p in [&launch.stdout_path, &launch.stderr_path] {
                if std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        self.write_and_emit(&dir, &result);
        // The lock is dropped here, after the result is on disk.
    }

    pub(super) fn write_and_emit(&mut self, dir: &Path, result: &TaskResult) {
        if rundir::write_result(dir, result).is_ok() {
            self.emit(result);
        }
    }

    /// Tells the agent, if it still listens; a restarted agent reads `result.json` instead.
    pub(super) fn emit(&mut self, result: &TaskResult) {
        self.emit_line(result);
    }

    /// One line of JSON to the agent, if it still listens.
    pub(super) fn emit_line(&mut self, what: &impl serde::Serialize) {
        if let Ok(mut line) = serde_json::to_vec(what) {
            line.push(b'\n');
            let _ = self.stdout.write_all(&line);
        }
    }
}
