//! The process executor: attempts run as processes of this node, started by the agent's
//! launcher (`launcher.rs`), which outlives the agent. Attempts are handed to it as JSON lines
//! on its stdin; it answers with a start line and a result line on its stdout. A launcher that
//! dies takes its tasks with it (killed whole, reported `stopped`, to run again).

use crate::cgroup::CgroupPlan;
use crate::executor::{keep_result, Executor, Recovered, Results};
use crate::launcher::now_ms;
use crate::rundir::{self, LaunchSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tidepool_api::{AttemptRef, Launch, TaskResult};

/// What a process executor is told at start.
pub struct ProcessSettings {
    /// Where attempt directories live.
    pub run_dir: PathBuf,
    /// The launcher, run as `PROGRAM __launch RUN_DIR`.
    pub launcher_program: PathBuf,
    /// The node's cgroup layout.
    pub plan: CgroupPlan,
    /// A directory put first on tasks' PATH (Slurm's commands, linked to `tidepool`).
    pub bin_dir: Option<String>,
    /// Seconds between SIGTERM and SIGKILL.
    pub kill_grace_s: u64,
    /// Cores offered, thousandths.
    pub node_cpu_millis: u64,
    /// Memory offered, bytes.
    pub node_mem_bytes: u64,
}

/// Attempts as processes of this node, through one launcher at a time.
pub struct ProcessExecutor {
    state: Arc<State>,
}

struct State {
    settings: ProcessSettings,
    results: Results,
    /// Attempts followed, with the pid of the launcher that runs them (0: an earlier agent's).
    tracked: Mutex<HashMap<AttemptRef, u32>>,
    /// The launcher new attempts go to, started on first use and again if it dies.
    launcher: Mutex<Option<LauncherHandle>>,
    /// Attempts this agent's launchers started and have not ended, with their process group.
    started: Mutex<HashMap<AttemptRef, rundir::Started>>,
}

/// The pipe to a running launcher.
struct LauncherHandle {
    stdin: std::process::ChildStdin,
    pid: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessExecutor {
    /// An executor that sends results to `results`; its launcher starts with the first attempt.
    pub fn new(settings: ProcessSettings, results: Results) -> ProcessExecutor {
        ProcessExecutor {
            state: Arc::new(State {
                settings,
                results,
                tracked: Mutex::default(),
                launcher: Mutex::default(),
                started: Mutex::default(),
            }),
        }
    }

    /// Sends SIGUSR1 to the launcher that runs `a` (or, after a restart, to every live one),
    /// which then reads the attempt's cancel and signal files; false when none is alive.
    fn nudge_launchers(&self, a: AttemptRef, dir: &Path) -> bool {
        let tracked = lock(&self.state.tracked).get(&a).copied();
        let own = lock(&self.state.launcher).as_ref().map(|h| h.pid);
        // Only a launcher known to be alive is signalled: a stale pid may belong to anyone.
        let pids: Vec<u32> = match tracked {
            Some(pid) if pid != 0 && Some(pid) == own => vec![pid],
            _ if rundir::launcher_alive(dir) => rundir::live_launchers(&self.state.settings.run_dir),
            Some(_) => own.into_iter().collect(),
            None => Vec::new(),
        };
        if pids.is_empty() {
            return false;
        }
        for pid in pids {
            // SAFETY: kill(2) on a launcher alive in this run directory; no memory is touched.
            unsafe {
                libc::kill(pid as i32, libc::SIGUSR1);
            }
        }
        true
    }
}

impl State {
    /// Hands an attempt, as one line of JSON, to the launcher; the launcher's pid.
    fn hand_to_launcher(self: &Arc<Self>, line: &[u8]) -> Result<u32, String> {
        use std::io::Write;
        let mut launcher = lock(&self.launcher);
        for _ in 0..2 {
            if launcher.is_none() {
                *launcher = Some(self.start_launcher()?);
            }
            if let Some(handle) = launcher.as_mut() {
                if handle.stdin.write_all(line).is_ok() {
                    return Ok(handle.pid);
                }
            }
            *launcher = None;
        }
        Err("the launcher takes no work".into())
    }

    /// Starts a launcher and a thread that turns its answers into results.
    fn start_launcher(self: &Arc<Self>) -> Result<LauncherHandle, String> {
        use std::os::unix::process::CommandExt;
        let settings = &self.settings;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(settings.run_dir.with_file_name("launcher.log"))
            .map_err(|e| format!("launcher log: {e}"))?;
        let mut command = std::process::Command::new(&settings.launcher_program);
        command
            .arg("__launch")
            .arg(&settings.run_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .process_group(0);
        crate::launcher::hold_signals_until_read(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the launcher {}: {e}", settings.launcher_program.display()))?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the launcher has no pipes".into());
        };
        let state = self.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                // A start line opens with its first field, so each line is parsed once.
                if line.starts_with(rundir::STARTED_LINE_PREFIX) {
                    if let Ok(started) = serde_json::from_str::<rundir::Started>(&line) {
                        lock(&state.started).insert(started.started, started);
                    }
                } else if let Ok(result) = serde_json::from_str::<TaskResult>(&line) {
                    lock(&state.started).remove(&result.attempt);
                    let _ = state.results.send(result);
                }
            }
            let _ = child.wait();
            state.on_launcher_gone(pid);
        });
        Ok(LauncherHandle { stdin, pid })
    }

    /// A launcher ended: what it ran and did not answer for will never report. Its tasks are
    /// killed, whole trees, and reported stopped, so the server runs them again (the next
    /// attempt goes to a new launcher) and the node never runs more than it offers.
    fn on_launcher_gone(&self, pid: u32) {
        {
            let mut launcher = lock(&self.launcher);
            if launcher.as_ref().is_some_and(|h| h.pid == pid) {
                *launcher = None;
            }
        }
        let orphaned: Vec<AttemptRef> = lock(&self.tracked).iter().filter(|(_, p)| **p == pid).map(|(a, _)| *a).collect();
        for a in orphaned {
            let dir = rundir::attempt_dir(&self.settings.run_dir, &a);
            let started = lock(&self.started).remove(&a);
            if rundir::read_result(&dir).is_none() && !rundir::launcher_alive(&dir) {
                if let Some(started) = &started {
                    rundir::kill_started(started);
                }
                tracing::warn!(job = a.job_id, index = a.index, "the launcher ended without a result: the task is stopped and runs again");
                let result = rundir::stopped_at(a, now_ms(), "its launcher died; it was stopped and runs again as a new attempt");
                keep_result(&dir, &result);
                let _ = self.results.send(result);
            }
        }
    }

    /// Follows an attempt of a launcher left by an earlier agent process until its result.
    fn watch_orphan(&self, a: AttemptRef, dir: PathBuf) {
        // Not our launcher's: its pid matters to no one (a cancel signals every live launcher).
        lock(&self.tracked).insert(a, 0);
        let results = self.results.clone();
        std::thread::spawn(move || {
            while rundir::launcher_alive(&dir) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let result = rundir::read_result(&dir).unwrap_or_else(|| rundir::failed_at(a, now_ms(), "the launcher ended without a result"));
            let _ = results.send(result);
        });
    }
}

impl Executor for ProcessExecutor {
    fn start(&self, launch: Launch, _dir: &Path) -> Result<(), String> {
        let a = launch.attempt;
        let settings = &self.state.settings;
        let spec = LaunchSpec {
            launch,
            cgroup: settings.plan.clone(),
            bin_dir: settings.bin_dir.clone(),
            kill_grace_s: settings.kill_grace_s,
            node_cpu_millis: settings.node_cpu_millis,
            node_mem_bytes: settings.node_mem_bytes,
        };
        let mut line = serde_json::to_vec(&spec).map_err(|e| format!("cannot encode the launch: {e}"))?;
        line.push(b'\n');
        // Followed before it is handed over, so that even an instant result finds it tracked.
        lock(&self.state.tracked).insert(a, 0);
        match self.state.hand_to_launcher(&line) {
            Ok(pid) => {
                lock(&self.state.tracked).insert(a, pid);
                Ok(())
            }
            Err(e) => {
                lock(&self.state.tracked).remove(&a);
                Err(e)
            }
        }
    }

    fn signal(&self, order: &tidepool_api::SignalOrder, dir: &Path) -> bool {
        if rundir::read_result(dir).is_some() {
            return false;
        }
        let scope = match order.scope {
            tidepool_api::SignalScope::Steps => "steps",
            tidepool_api::SignalScope::Batch => "batch",
            tidepool_api::SignalScope::Full => "full",
        };
        // Written whole under another name, then renamed: the launcher never reads half a line.
        let staged = dir.join(format!("{}.new", rundir::SIGNAL_FILE));
        if std::fs::write(&staged, format!("{} {scope}\n", order.signal)).and_then(|_| std::fs::rename(&staged, dir.join(rundir::SIGNAL_FILE))).is_err() {
            return false;
        }
        self.nudge_launchers(order.attempt, dir)
    }

    fn cancel(&self, a: AttemptRef, dir: &Path) -> bool {
        if rundir::read_result(dir).is_some() {
            return true;
        }
        if !rundir::launcher_alive(dir) && !lock(&self.state.tracked).contains_key(&a) {
            return false;
        }
        // The mark is read at the start of the attempt and on SIGUSR1, so it stops the
        // attempt whether or not the launcher has reached it yet.
        if let Err(e) = std::fs::write(dir.join(rundir::CANCEL_FILE), b"") {
            // The signal still stops it if it runs; one its launcher has yet to start would start.
            tracing::warn!(job = a.job_id, index = a.index, error = %e, "the cancel mark could not be written");
        }
        self.nudge_launchers(a, dir)
    }


    fn recover(&self, a: AttemptRef, dir: &Path) -> Recovered {
        if lock(&self.state.tracked).contains_key(&a) {
            return Recovered::Running;
        }
        match rundir::examine(dir) {
            rundir::Found::Running => {
                self.state.watch_orphan(a, dir.to_path_buf());
                Recovered::Running
            }
            rundir::Found::Ended(result) => Recovered::Ended(result),
            rundir::Found::Abandoned => Recovered::Abandoned,
        }
    }

    fn running(&self) -> Vec<AttemptRef> {
        lock(&self.state.tracked).keys().copied().collect()
    }

    fn forget(&self, acked: &[AttemptRef]) {
        let mut tracked = lock(&self.state.tracked);
        for a in acked {
            tracked.remove(a);
        }
    }

    fn stop_all(&self) -> bool {
        let settings = &self.state.settings;
        rundir::stop_launchers(&settings.run_dir, Duration::from_secs(settings.kill_grace_s + 5));
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
