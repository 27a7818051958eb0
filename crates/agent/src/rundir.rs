//! One directory per attempt under `RUN_DIR/`, named `JOB.INDEX.ATTEMPT`, locked (flock) by
//! the launcher that runs it, holding a `cancel` mark when asked to stop and its `result.json`
//! once ended; beside them one `launcher.PID` per live launcher, locked by it for its life.
//! What to run reaches the launcher through its stdin, never the disk (it holds secrets, and
//! files created and deleted per task were a tenth of the node's CPU on short tasks).

use crate::cgroup::CgroupPlan;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tidepool_api::{AttemptOutcome, AttemptRef, Launch, TaskResult};

/// What the launcher reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The attempt.
    pub launch: Launch,
    /// How to confine and measure it.
    pub cgroup: CgroupPlan,
    /// Directory prepended to the task's PATH (links to `sbatch` and friends).
    pub bin_dir: Option<String>,
    /// Seconds between the polite signal and SIGKILL.
    pub kill_grace_s: u64,
    /// The node's cores (thousandths) and memory (bytes): an attempt that does not fit beside
    /// those running waits for one to end (0: no limit).
    #[serde(default)]
    pub node_cpu_millis: u64,
    /// See `node_cpu_millis`.
    #[serde(default)]
    pub node_mem_bytes: u64,
}

/// An order from a launcher to the helper that runs the tasks of one job inside its shared
/// container (one message each on a socket; a start brings the task's stdout and stderr along).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InsideOrder {
    /// Start task `task`: `program` found on the PATH of `env`, in `cwd`.
    Start { task: u64, program: String, argv: Vec<String>, env: Vec<String>, cwd: String },
    /// Send `signal` to the task's whole process group.
    Signal { task: u64, signal: i32 },
    /// Send a `--signal` the way a bare task gets it (`script` as for a batch script).
    Warn { task: u64, warn: tidepool_api::WarnSignal, script: bool },
}

/// What the helper inside a shared container reports of a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InsideEnded {
    /// The task, as its start order named it.
    pub task: u64,
    /// Its wait status (exit 127 when it could not start).
    pub status: i32,
    /// CPU time of the task's leader and what it waited for, milliseconds.
    pub cpu_ms: u64,
    /// Its leader's peak resident memory, bytes.
    pub peak_mem_bytes: u64,
    /// Why it could not start, when it could not.
    pub message: Option<String>,
}

/// What the launcher tells the agent as an attempt starts, so that a launcher that dies leaves
/// no task running unsupervised: the agent ends the task's process group and cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The attempt.
    pub started: AttemptRef,
    /// Its process group (the task's first process).
    pub pgid: i32,
    /// `cgroup.procs` of its cgroup, when it has one: every process of its tree.
    pub cgroup_procs: Option<PathBuf>,
}

/// How a [`Started`] line begins (serde writes fields in their order), unlike a result's.
pub const STARTED_LINE_PREFIX: &str = "{\"started\":";

/// Kills everything of a started attempt: its process group and whatever its cgroup holds
/// (processes that left the group), until the cgroup is empty or a second has passed.
pub fn kill_started(s: &Started) {
    // SAFETY: kill has no memory effects; a negative pid names the process group.
    unsafe { libc::kill(-s.pgid, libc::SIGKILL) };
    let Some(procs) = &s.cgroup_procs else { return };
    for _ in 0..100 {
        let pids: Vec<i32> = std::fs::read_to_string(procs).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The file by which launcher `pid` names itself in the run directory.
pub fn launcher_file(run_dir: &Path, pid: u32) -> PathBuf {
    run_dir.join(format!("{LAUNCHER_FILE_PREFIX}{pid}"))
}

/// The pids of the launchers alive in `run_dir`; the files of dead ones are removed.
pub fn live_launchers(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return Vec::new() };
    let mut alive = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.strip_prefix(LAUNCHER_FILE_PREFIX)?.parse().ok()) else {
            continue;
        };
        if is_locked(&entry.path()) {
            alive.push(pid);
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    alive
}

/// Stops the launchers alive in `run_dir` (SIGTERM ends what each runs and what waits on it) and
/// waits up to `timeout` for them to exit, so that whoever removes the directory next does not
/// race a launcher still starting queued tasks in it.
pub fn stop_launchers(run_dir: &Path, timeout: std::time::Duration) {
    let launchers = live_launchers(run_dir);
    for &pid in &launchers {
        // SAFETY: kill with a pid and a signal number has no memory effects.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + timeout;
    while launchers.iter().any(|&pid| process_running(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// True while process `pid` exists and has not exited (a zombie waiting to be reaped has).
/// Its state is read after the last `)` of /proc/PID/stat, as a command name may hold spaces.
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// The directory of one attempt.
pub fn attempt_dir(run_dir: &Path, a: &AttemptRef) -> PathBuf {
    run_dir.join(format!("{}.{}.{}", a.job_id, a.index, a.attempt))
}

/// Reads an attempt back from its directory name.
pub fn parse_attempt_dir(name: &str) -> Option<AttemptRef> {
    let mut parts = name.split('.');
    let job_id = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(AttemptRef { job_id, index, attempt })
}

/// `launcher.PID` in the run directory: a live launcher, which holds a flock on it.
pub const LAUNCHER_FILE_PREFIX: &str = "launcher.";
/// Present when the agent asked for the attempt to stop.
pub const CANCEL_FILE: &str = "cancel";
/// A signal to send to an attempt that runs (`scancel --signal`): its number and scope, one
/// line `SIGNAL SCOPE`, read and removed by the launcher on SIGUSR1.
pub const SIGNAL_FILE: &str = "signal";
/// Written when the attempt has ended, over the last attempt's in a spare directory: it is
/// the attempt's result only when it parses whole and names that attempt.
pub const RESULT_FILE: &str = "result.json";
/// A batch script the launcher writes for the attempt.
pub const SCRIPT_FILE: &str = "script";
/// `spare.N` in the run directory: an emptied attempt directory kept for a later attempt
/// (renamed into place), holding only its last result file to write over. Creating and
/// deleting a directory and a file per task was the largest cost of ext4 on short tasks.
pub const SPARE_PREFIX: &str = "spare.";

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: renameat2(2) on two NUL-terminated paths we own.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The result of an attempt that failed at `now` without running (or whose run went unseen).
pub fn failed_at(a: AttemptRef, now: u64, message: &str) -> TaskResult {
    TaskResult {
        attempt: a,
        outcome: AttemptOutcome::Failed,
        exit_code: None,
        signal: None,
        started_ms: now,
        ended_ms: now,
        cpu_ms: 0,
        peak_mem_bytes: 0,
        message: Some(message.to_string()),
    }
}

/// The result of an attempt cancelled before it started.
pub fn cancelled_unstarted(a: AttemptRef, now: u64) -> TaskResult {
    TaskResult { outcome: AttemptOutcome::Cancelled, ..failed_at(a, now, "cancelled before it started") }
}

/// The result of an attempt stopped with its node, started or not.
pub fn stopped_at(a: AttemptRef, now: u64, message: &str) -> TaskResult {
    TaskResult { outcome: AttemptOutcome::Stopped, ..failed_at(a, now, message) }
}

/// Reads a finished attempt's result, if there is one.
pub fn read_result(dir: &Path) -> Option<TaskResult> {
    let text = std::fs::read(dir.join(RESULT_FILE)).ok()?;
    let result: TaskResult = serde_json::from_slice(&text).ok()?;
    // A spare directory keeps its last attempt's result until the next one is written over it.
    match dir.file_name().and_then(|n| n.to_str()).and_then(parse_attempt_dir) {
        Some(named) if named != result.attempt => None,
        _ => Some(result),
    }
}

/// Writes the result over the directory's last one in one write, then cuts what is left of
/// a longer one: a reader (or a restart after a crash between the two) sees either a whole
/// result, or text that does not parse, or the last attempt's, which names another attempt.
/// No rename and no truncation to zero, which ext4 flushes at close.
pub fn write_result(dir: &Path, result: &TaskResult) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_vec(result).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(RESULT_FILE))?;
    file.write_all(&text)?;
    file.set_len(text.len() as u64)
}

/// True while a launcher holds the attempt's lock.
pub fn launcher_alive(dir: &Path) -> bool {
    is_locked(dir)
}

/// Takes a flock on `file` without waiting, `exclusive` or shared; false when someone holds
/// one that conflicts. It lasts as long as the file's descriptor (and its copies).
pub fn try_flock(file: &std::fs::File, exclusive: bool) -> bool {
    use std::os::fd::AsRawFd;
    let mode = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock on a file descriptor the caller owns; no memory is shared.
    unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) == 0 }
}

/// True while someone holds a flock on `path`.
fn is_locked(path: &Path) -> bool {
    std::fs::File::open(path).is_ok_and(|file| !try_flock(&file, false))
}

/// What an attempt directory that no agent follows holds.
#[derive(Debug)]
pub enum Found {
    /// A launcher runs it.
    Running,
    /// It ended with this result.
    Ended(TaskResult),
    /// It never started, or its launcher died without a word: the directory is removed.
    Abandoned,
}

/// Looks at an attempt directory under its lock, so that no launcher takes it up or ends it
/// between the look and the removal of an abandoned one.
pub fn examine(dir: &Path) -> Found {
    let Ok(file) = std::fs::File::open(dir) else { return Found::Abandoned };
    if !try_flock(&file, true) {
        return Found::Running;
    }
    if let Some(result) = read_result(dir) {
        return Found::Ended(result);
    }
    let _ = std::fs::remove_dir_all(dir);
    Found::Abandoned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_line_opens_with_its_prefix() {
        let a = AttemptRef { job_id: 1, index: 2, attempt: 3 };
        let line = serde_json::to_string(&Started { started: a, pgid: 9, cgroup_procs: None }).unwrap();
        assert!(line.starts_with(STARTED_LINE_PREFIX), "{line}");
        let result = serde_json::to_string(&failed_at(a, 0, "x")).unwrap();
        assert!(!result.starts_with(STARTED_LINE_PREFIX), "{result}");
    }

    #[test]
    fn attempt_dirs_name_their_attempt() {
        let a = AttemptRef { job_id: 12, index: 7, attempt: 3 };
        let dir = attempt_dir(Path::new("/run"), &a);
        assert_eq!(dir, Path::new("/run/12.7.3"));
        assert_eq!(parse_attempt_dir("12.7.3"), Some(a));
        assert_eq!(parse_attempt_dir("12.7"), None);
        assert_eq!(parse_attempt_dir("12.7.3.4"), None);
        assert_eq!(parse_attempt_dir("x.7.3"), None);
    }

    #[test]
    fn a_directory_without_a_launcher_is_not_alive() {
        let dir = std::env::temp_dir().join(format!("tidepool-rundir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!launcher_alive(&dir));
        assert!(read_result(&dir).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_result_written_over_a_longer_one_is_read_back_whole() {
        let dir = std::env::temp_dir().join(format!("tidepool-rundir-over-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(RESULT_FILE), vec![b'x'; 4096]).unwrap();
        assert!(read_result(&dir).is_none(), "text that does not parse is no result");
        let result = failed_at(AttemptRef { job_id: 1, index: 2, attempt: 3 }, 5, "short");
        write_result(&dir, &result).unwrap();
        assert_eq!(read_result(&dir).unwrap().message.as_deref(), Some("short"));
        // The directory renamed for the next attempt still holds this result: not the next one's.
        let next = dir.join("1.2.4");
        std::fs::create_dir(&next).unwrap();
        write_result(&next, &result).unwrap();
        assert!(read_result(&next).is_none(), "a result naming another attempt is not this one's");
        let own = dir.join("1.2.3");
        rename_no_replace(&next, &own).unwrap();
        assert_eq!(read_result(&own).unwrap().attempt, result.attempt);
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        let moved = dir.join("moved");
        rename_no_replace(&other, &moved).unwrap();
        std::fs::create_dir(&other).unwrap();
        let refused = rename_no_replace(&other, &moved).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
