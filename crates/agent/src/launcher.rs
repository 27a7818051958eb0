//! The node's launcher: `tidepool-launcher __launch RUN_DIR`, one small synchronous process
//! that starts every task of its agent and watches each to its end (the role of Slurm's
//! slurmstepd, for all the node's tasks at once).
//!
//! The agent makes the attempt's directory and writes its `LaunchSpec` as one JSON line on the
//! launcher's stdin; the launcher answers each ended attempt with its `TaskResult` as one JSON
//! line on stdout, after writing it to `result.json`. A cancel is a `cancel` file in the attempt
//! directory plus `SIGUSR1`, so an agent that restarted can still stop the attempts of the
//! launchers it left behind (each names itself by a locked `launcher.PID` in the run directory).
//!
//! Tasks are started with `posix_spawn` (no `fork` of this process, whatever its size), in
//! their own process group; to place a task in its cgroup from birth, the launcher steps into
//! that cgroup for the spawn and back into its own (`tidepool/launcher`) right after.
//!
//! The server may send short tasks ahead of free cores; an attempt that does not fit beside
//! the running ones (by the node's cores and memory in its `LaunchSpec`) waits, and is started
//! in arrival order the moment a running leader exits. Its directory is locked only then: an
//! agent that restarts meanwhile has it requeued and removes it, and the launcher skips it.
//!
//! **Invariant**: a running attempt's `lock` is held (flock) by the launcher that runs it, and
//! released only after `result.json` is written, so a directory with neither is an attempt that
//! will never report and may be requeued.

use crate::cgroup::{CgroupPlan, TaskCgroup};
use crate::rundir::{self, LaunchSpec};
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use tidepool_api::dates::now_ms;

/// The signals a launcher reads from a descriptor rather than taking their default action.
const SIGNALS_READ: [i32; 5] = [libc::SIGCHLD, libc::SIGUSR1, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Makes the launcher `command` starts hold the signals it reads until it reads them, so that
/// an agent's nudge sent while it is still starting is not its end.
pub(crate) fn hold_signals_until_read(command: &mut std::process::Command) {
    start_with_blocked(command, &SIGNALS_READ);
}

mod attempt;
mod files;
mod inside;
mod oci;
mod shared;
mod sys;
pub use inside::serve_inside;
use files::*;
use sys::*;
use attempt::Attempt;
use shared::Signal;

/// How long a program found on a PATH is taken to stay there (one installed earlier on the
/// PATH is seen after this).
const RESOLVED_FOR: Duration = Duration::from_secs(1);

/// How long the leftovers of an ended task may take to die before the result is written anyway.
const LEFTOVER_WAIT: Duration = Duration::from_secs(1);

/// A started attempt: its key in the launcher's `running`, its end note (see
/// [`Attempt::note_slurm_end`]), and its shared container and task when it runs in one.
type Spawned = (i32, Option<File>, Option<(u64, u64)>);

/// An attempt waiting for room. Its directory is not taken (opened and locked) until it
/// starts: a launcher's descriptors are copied into every task it spawns and closed there one
/// by one at exec, and a hundred waiting locks made each launch pay for them. An agent that
/// restarts meanwhile finds the directory free and has it requeued; the launcher then finds
/// it gone and skips it, so it never runs twice.
struct Waiting {
    spec: LaunchSpec,
    dir: PathBuf,
}

struct Launcher {
    run_dir: PathBuf,
    /// Where the files tasks' output went to are recorded.
    outputs_dir: PathBuf,
    /// Running attempts by their leader's pid.
    running: HashMap<i32, Attempt>,
    /// Attempts that wait for room beside the running ones, in the order they came: the
    /// server may send short tasks ahead of free cores.
    waiting: VecDeque<Waiting>,
    /// Cores (thousandths) and memory the running attempts were given.
    cpu_in_use: u64,
    mem_in_use: u64,
    /// `cgroup.procs` of the launcher's own cgroup, per hierarchy, to step back into.
    home_procs: Vec<File>,
    /// The plan the home cgroup belongs to.
    home_plan: Option<CgroupPlan>,
    /// Emptied task cgroups kept for the next tasks: creating and removing one per task was
    /// a third of the launcher's time on a stream of short tasks.
    idle_cgroups: Vec<(CgroupPlan, TaskCgroup)>,
    /// Task cgroups made so far (their names' numbers).
    cgroups_made: u64,
    stdout: File,
    /// `RUN_DIR/launcher.PID`, locked for the launcher's life.
    named: Option<File>,
    /// Where programs were found, by (program, PATH, working directory): a search of the
    /// task's PATH per task was a stat per PATH entry.
    resolved: HashMap<(String, String, String), (String, Instant)>,
    /// Told to stop (SIGTERM, SIGINT, SIGHUP): what it ends from then on was stopped with the
    /// node, not cancelled by its owner, and runs again elsewhere or later.
    stopping: bool,
    /// The OCI runtime containers start with, where one is installed.
    runtime: Option<crate::images::Runtime>,
    /// Containers shared by the tasks of a job.
    shared: shared::Shared,
    /// Each container's staged bind sources, by container id, held while it runs.
    bind_sources: HashMap<String, Vec<oci::Staged>>,
}

/// Runs the launcher for `run_dir` until its stdin closes and its last attempt has ended.
pub fn run(run_dir: &Path) -> i32 {
    match Launcher::new(run_dir).and_then(|mut l| l.serve()) {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "tidepool-launcher: {message}");
            1
        }
    }
}

impl Launcher {
    fn new(run_dir: &Path) -> Result<Launcher, String> {
        close_on_exec_from(3);
        // Its own descriptor, so that writing results does not go through the standard
        // library's shared, locked handle.
        let stdout = dup_of(1).ok_or("no stdout")?;
        oci::clear_stale(run_dir);
        Ok(Launcher {
            run_dir: run_dir.to_path_buf(),
            outputs_dir: crate::outputs::dir_of(run_dir),
            running: HashMap::new(),
            waiting: VecDeque::new(),
            cpu_in_use: 0,
            mem_in_use: 0,
            home_procs: Vec::new(),
            home_plan: None,
            idle_cgroups: Vec::new(),
            cgroups_made: 0,
            stdout,
            named: None,
            resolved: HashMap::new(),
            stopping: false,
            runtime: oci::choose_runtime(),
            shared: shared::Shared::default(),
            bind_sources: HashMap::new(),
        })
    }

    /// Names this launcher in the run directory by a file it keeps locked, so that a restarted
    /// agent can signal it.
    fn name_itself(&mut self) -> Result<(), String> {
        let path = rundir::launcher_file(&self.run_dir, own_pid());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Held until this process exits.
        if !rundir::try_flock(&file, true) {
            return Err(format!("{}: locked by another process", path.display()));
        }
        self.named = Some(file);
        Ok(())
    }

    /// Steps into (or creates) the launcher's own cgroup under `plan`, once per plan.
    fn enter_home(&mut self, plan: &CgroupPlan) {
        if self.home_plan.as_ref() == Some(plan) || matches!(plan, CgroupPlan::None) {
            return;
        }
        self.home_plan = Some(plan.clone());
        self.home_procs.clear();
        if plan.create("launcher", 0).is_err() {
            return;
        }
        for dir in plan.task_dirs("launcher") {
            if let Ok(f) = OpenOptions::new().write(true).open(dir.join("cgroup.procs")) {
                self.home_procs.push(f);
            }
        }
        self.go_home();
    }

    /// A cgroup for a task under `plan` limited to `mem_limit`: an idle one reset, else a new
    /// one (named with this launcher's pid: several agents may share one machine).
    fn take_cgroup(&mut self, plan: &CgroupPlan, mem_limit: u64) -> Option<TaskCgroup> {
        if *plan == CgroupPlan::None {
            return None;
        }
        while let Some(i) = self.idle_cgroups.iter().rposition(|(p, _)| p == plan) {
            let (_, cgroup) = self.idle_cgroups.swap_remove(i);
            if cgroup.reset(mem_limit) {
                return Some(cgroup);
            }
            plan.discard(cgroup);
        }
        self.cgroups_made += 1;
        let name = format!("task{}.{}", self.cgroups_made, own_pid());
        plan.create(&name, mem_limit).ok()?;
        match plan.open(&name) {
            Ok(cgroup) => Some(cgroup),
            Err(_) => {
                plan.remove(&name);
                None
            }
        }
    }

    /// Gives back a task's cgroup once its task is over: kept for the next task when it was
    /// seen `emptied` and its counters can be reset, else removed.
    fn release_cgroup(&mut self, plan: &CgroupPlan, cgroup: TaskCgroup, emptied: bool) {
        for dir in plan.task_dirs(&cgroup.name) {
            let _ = std::fs::remove_dir(dir.join(crate::cgroup::CONTAINER_CGROUP));
        }
        if emptied && cgroup.reusable() {
            self.idle_cgroups.push((plan.clone(), cgroup));
        } else {
            plan.discard(cgroup);
        }
    }

    /// Moves the launcher into the cgroup whose `cgroup.procs` files are `procs`.
    pub(super) fn join(&self, procs: &[File]) -> std::io::Result<()> {
        let me = own_pid().to_string();
        for mut f in procs {
            f.write_all(me.as_bytes())?;
        }
        Ok(())
    }

    /// Steps back into the launcher's own cgroup; failing that, the next tasks are born in the
    /// last task's cgroup until a later step back works, which the log says.
    pub(super) fn go_home(&self) {
        if let Err(e) = self.join(&self.home_procs) {
            let _ = writeln!(std::io::stderr(), "tidepool-launcher: cannot step back into its own cgroup: {e}");
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        // SAFETY: prctl changes only this process's own settings.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let signals = signal_fd(&SIGNALS_READ)?;
        raise_fd_limit();
        self.name_itself()?;
        let mut stdin_open = true;
        let mut pending = Vec::<u8>::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Read raw, so that poll's readiness is the whole truth (a buffered reader could hold
        // lines poll no longer sees).
        let mut stdin = dup_of(0).ok_or("no stdin")?;
        let stdin_fd = stdin.as_raw_fd();
        // What each turn polls, and the shared containers behind its third and later entries:
        // made once, refilled each turn.
        let (mut fds, mut numbers) = (Vec::<libc::pollfd>::new(), Vec::<u64>::new());
        loop {
            if !stdin_open && self.running.is_empty() && self.waiting.is_empty() {
                // Its shared containers end first: their helpers see their sockets shut.
                self.close_idle(true);
            }
            if !stdin_open && self.running.is_empty() && self.waiting.is_empty() && self.shared.containers.is_empty() {
                for (plan, cgroup) in self.idle_cgroups.drain(..) {
                    plan.discard(cgroup);
                }
                let _ = std::fs::remove_file(rundir::launcher_file(&self.run_dir, own_pid()));
                return Ok(());
            }
            let timeout_ms = self.next_timer().map_or(-1, |t| {
                let d = t.saturating_duration_since(Instant::now());
                d.as_millis().clamp(1, 60_000) as i32
            });
            fds.clear();
            fds.push(libc::pollfd { fd: if stdin_open { stdin_fd } else { -1 }, events: libc::POLLIN, revents: 0 });
            fds.push(libc::pollfd { fd: signals, events: libc::POLLIN, revents: 0 });
            numbers.clear();
            numbers.extend(self.shared.containers.keys().copied());
            for number in &numbers {
                let (fd, events) = self.shared.containers[number].poll_events();
                fds.push(libc::pollfd { fd, events, revents: 0 });
            }
            // SAFETY: poll over the pollfd structs we own.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            for (number, fd) in numbers.iter().zip(&fds[2..]) {
                if fd.revents & libc::POLLOUT != 0 {
                    if let Some(c) = self.shared.containers.get_mut(number) {
                        c.flush();
                    }
                }
                if fd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                    self.read_inside(*number);
                }
            }
            // Ends first: a core that freed waits for its next task while the lines that
            // came meanwhile are read.
            if fds[1].revents != 0 {
                let (mut chld, mut usr1, mut term) = (false, false, false);
                for signal in take_signals(signals) {
                    match signal {
                        libc::SIGCHLD => chld = true,
                        libc::SIGUSR1 => usr1 = true,
                        _ => term = true,
                    }
                }
                if chld {
                    self.reap();
                    self.start_waiting();
                }
                if usr1 {
                    self.check_cancels();
                }
                if term {
                    // The node is going away: stop every task as a cancel would.
                    stdin_open = false;
                    self.stopping = true;
                    for w in std::mem::take(&mut self.waiting) {
                        if let Some(lock) = take_dir(&w.dir) {
                            let result = rundir::stopped_at(w.spec.launch.attempt, now_ms(), "its node stopped before it started");
                            self.write_and_emit(&w.dir, &result);
                            drop(lock);
                        }
                    }
                    let pids: Vec<i32> = self.running.keys().copied().collect();
                    for pid in pids {
                        self.cancel(pid);
                    }
                }
            }
            // Nothing more is taken once told to stop.
            if stdin_open && fds[0].revents != 0 {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        let mut from = 0;
                        while let Some(len) = pending[from..].iter().position(|b| *b == b'\n') {
                            let line = &pending[from..from + len];
                            from += len + 1;
                            match serde_json::from_slice::<LaunchSpec>(line) {
                                Ok(spec) => self.start(spec),
                                Err(e) => {
                                    let _ = writeln!(std::io::stderr(), "tidepool-launcher: a launch that is not one: {e}");
                                }
                            }
                        }
                        pending.drain(..from);
                    }
                }
            }
            self.on_timers();
            self.close_idle(false);
            self.start_waiting();
        }
    }

    /// True when an attempt needing `spec`'s resources fits beside the running ones (one
    /// always runs, whatever it asks; an attempt whose leader exited holds nothing).
    fn fits(&self, spec: &LaunchSpec) -> bool {
        let launch = &spec.launch;
        let cpu_ok = spec.node_cpu_millis == 0 || self.cpu_in_use + launch.cpu_millis <= spec.node_cpu_millis;
        let mem_ok = spec.node_mem_bytes == 0 || self.mem_in_use + launch.mem_bytes <= spec.node_mem_bytes;
        self.cpu_in_use == 0 || (cpu_ok && mem_ok)
    }

    /// Starts waiting attempts, oldest first, while the oldest fits.
    fn start_waiting(&mut self) {
        while self.waiting.front().is_some_and(|w| self.fits(&w.spec)) {
            if let Some(w) = self.waiting.pop_front() {
                self.take_and_begin(w.spec, w.dir);
            }
        }
    }

    /// Ends an attempt that was never started as cancelled.
    fn end_unstarted(&mut self, dir: &Path, a: tidepool_api::AttemptRef) {
        self.write_and_emit(dir, &rundir::cancelled_unstarted(a, now_ms()));
    }

    fn next_timer(&self) -> Option<Instant> {
        self.running
            .values()
            .flat_map(|a| {
                let deadline = a.deadline.filter(|_| !a.timed_out && !a.cancelled);
                let leftovers = a.leftovers_until.map(|_| Instant::now() + Duration::from_millis(20));
                [deadline, a.kill_at, leftovers, a.warn_at.filter(|_| !a.timed_out && !a.cancelled)]
            })
            .flatten()
            .chain(self.shared.containers.values().filter_map(|c| c.closes_at()))
            .min()
    }

    /// Starts the attempt when it fits beside the running ones and none waits before it, else
    /// keeps it waiting.
    fn start(&mut self, spec: LaunchSpec) {
        let dir = rundir::attempt_dir(&self.run_dir, &spec.launch.attempt);
        if self.waiting.is_empty() && self.fits(&spec) {
            self.take_and_begin(spec, dir);
        } else {
            self.waiting.push_back(Waiting { spec, dir });
        }
    }

    /// Takes the attempt's directory (made by the agent) and begins it.
    fn take_and_begin(&mut self, spec: LaunchSpec, dir: PathBuf) {
        if let Some(lock) = take_dir(&dir) {
            self.begin(spec, dir, lock);
        }
    }

    /// Starts a taken attempt now, or reports at once why it cannot run.
    fn begin(&mut self, spec: LaunchSpec, dir: PathBuf, lock: File) {
        self.enter_home(&spec.cgroup);
        let a = spec.launch.attempt;
        if dir.join(rundir::CANCEL_FILE).exists() {
            return self.end_unstarted(&dir, a);
        }
        // A signal meant for what ran before it started is not this start's.
        let _ = std::fs::remove_file(dir.join(rundir::SIGNAL_FILE));
        let mut result = rundir::failed_at(a, now_ms(), "");
        result.message = None;
        let shareable = shared::shareable(&spec.launch);
        let cgroup = if shareable { None } else { self.take_cgroup(&spec.cgroup, spec.launch.mem_bytes) };
        let spawned = if shareable {
            self.spawn_inside(&spec)
        } else {
            self.spawn(&spec, &dir, cgroup.as_ref()).map(|(pid, note)| (pid, note, None))
        };
        match spawned {
            Ok((pid, end_note, inside)) => {
                let (pgid, cgroup_procs) = match inside {
                    Some((number, _)) => self.leader_of(number),
                    None => (pid, cgroup.as_ref().and_then(|c| spec.cgroup.task_dirs(&c.name).into_iter().next()).map(|d| d.join("cgroup.procs"))),
                };
                self.emit_line(&rundir::Started { started: a, pgid, cgroup_procs });
                result.started_ms = now_ms();
                let started = Instant::now();
                let deadline = spec.launch.time_limit_s.map(|s| started + Duration::from_secs(s));
                let warn_at = spec.launch.warn_signal.and_then(|w| deadline.map(|d| d.checked_sub(Duration::from_secs(w.before_s)).unwrap_or(started).max(started)));
                self.cpu_in_use += spec.launch.cpu_millis;
                self.mem_in_use += spec.launch.mem_bytes;
                self.running.insert(
                    pid,
                    Attempt {
                        dir,
                        _lock: lock,
                        spec,
                        pid,
                        cgroup,
                        result,
                        started,
                        deadline,
                        kill_at: None,
                        cancelled: false,
                        timed_out: false,
                        ended: None,
                        leftovers_until: None,
                        end_note,
                        warn_at,
                        inside,
                    },
                );
            }
            Err(message) => {
                let launch = &spec.launch;
                let open = || OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&launch.stderr_path);
                // Where the task may not write, neither may the note of why it did not start.
                let opened = match &launch.run_as {
                    Some(identity) if !launch.discard_empty_output => with_fs_identity(identity, open).ok().and_then(Result::ok),
                    _ => open().ok(),
                };
                if let Some(mut f) = opened {
                    if writeln!(f, "tidepool: {message}").is_ok() {
                        let mut files = vec![("stderr", launch.stderr_path.as_str(), &f)];
                        if launch.stdout_path == launch.stderr_path {
                            files.push(("stdout", launch.stdout_path.as_str(), &f));
                        }
                        let _ = crate::outputs::record(&self.outputs_dir, launch.attempt, &files);
                    }
                }
                result.exit_code = Some(127);
                result.message = Some(message);
                result.ended_ms = now_ms();
                // Nothing was started in it.
                if let Some(cgroup) = cgroup {
                    self.release_cgroup(&spec.cgroup, cgroup, true);
                }
                self.write_and_emit(&dir, &result);
            }
        }
    }

    /// `program` on the task's PATH, as found at most `RESOLVED_FOR` ago.
    fn resolve_cached(&mut self, program: &str, path: &str, workdir: &str) -> String {
        let key = (program.to_string(), path.to_string(), workdir.to_string());
        let now = Instant::now();
        if let Some((found, at)) = self.resolved.get(&key) {
            if now.duration_since(*at) < RESOLVED_FOR {
                return found.clone();
            }
        }
        if self.resolved.len() >= 1024 {
            self.resolved.clear();
        }
        let found = resolve(program, path, workdir);
        self.resolved.insert(key, (found.clone(), now));
        found
    }

    /// Opens the task's stdout and stderr (one file when both are the same path), recorded
    /// for reading back, and a copy of its stderr for Slurm's end line when it may get one.
    fn open_outputs(&self, launch: &tidepool_api::Launch) -> Result<(File, Option<File>, Option<File>), String> {
        let private = launch.discard_empty_output;
        let run_as = launch.run_as.as_ref();
        // A path the user chose is opened as the task's identity, so the task writes only where
        // that identity may; Tidepool's own log files (the server chose them) are the launcher's.
        let open = |path: &str| match run_as {
            Some(identity) if !private => {
                with_fs_identity(identity, || open_output(path, false, launch.append_output))?.map_err(|e| format!("{e} (opened as uid {})", identity.uid))
            }
            _ => open_output(path, private, launch.append_output),
        };
        let stdout = open(&launch.stdout_path)?;
        // One file for both when they are the same path.
        let stderr = if launch.stderr_path == launch.stdout_path { None } else { Some(open(&launch.stderr_path)?) };
        let files = [("stdout", launch.stdout_path.as_str(), &stdout), ("stderr", launch.stderr_path.as_str(), stderr.as_ref().unwrap_or(&stdout))];
        // Unrecorded, the output is still written; only reading it back through Tidepool fails.
        let _ = crate::outputs::record(&self.outputs_dir, launch.attempt, &files);
        let note = (launch.time_limit_s.is_some() || launch.script.is_some()).then(|| stderr.as_ref().unwrap_or(&stdout).try_clone().ok()).flatten();
        Ok((stdout, stderr, note))
    }

    /// Starts the task in its job's shared container: its key, end note and (container, task).
    fn spawn_inside(&mut self, spec: &LaunchSpec) -> Result<Spawned, String> {
        let (stdout, stderr, note) = self.open_outputs(&spec.launch)?;
        let (key, number, task) = self.start_inside(spec, stdout, stderr)?;
        Ok((key, note, Some((number, task))))
    }

    /// Spawns the task inside its cgroup; its pid.
    fn spawn(&mut self, spec: &LaunchSpec, dir: &Path, cgroup: Option<&TaskCgroup>) -> Result<(i32, Option<File>), String> {
        let task_procs = cgroup.map_or(&[][..], TaskCgroup::join_files);
        let launch = &spec.launch;
        let run_as = launch.run_as.as_ref();
        let (stdout, stderr, note) = self.open_outputs(launch)?;
        let (mut program, args) = program_of(spec, dir)?;
        if let Some(container) = &launch.container {
            return self
                .spawn_container(spec, dir, container, cgroup, (program, args), &stdout, stderr.as_ref().unwrap_or(&stdout))
                .map(|pid| (pid, note));
        }
        // A batch script lies in the attempt's directory, which only the launcher may enter: a
        // task with an identity of its own runs it through a descriptor it inherits, made its
        // identity's to read and run.
        let script_fd = match (run_as, &launch.script) {
            (Some(identity), Some(_)) => {
                let (fd, path) = script_for(Path::new(&program), identity)?;
                program = path;
                Some(fd)
            }
            _ => None,
        };
        let path = launch.env.get("PATH").map_or("/usr/local/bin:/usr/bin:/bin", String::as_str);
        let path = match &spec.bin_dir {
            Some(bin) => format!("{bin}:{path}"),
            None => path.to_string(),
        };
        let resolved = self.resolve_cached(&program, &path, &launch.workdir);
        let c_string = |s: String, what: &str| CString::new(s).map_err(|_| format!("cannot start {program}: {what} holds a NUL byte"));
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(c_string(program.clone(), "the program")?);
        for arg in args {
            argv.push(c_string(arg, "an argument")?);
        }
        let mut envp = Vec::with_capacity(launch.env.len() + 1);
        for (key, value) in launch.env.iter().filter(|(key, _)| key.as_str() != "PATH") {
            envp.push(c_string(format!("{key}={value}"), "the environment")?);
        }
        envp.push(c_string(format!("PATH={path}"), "PATH")?);
        let file = c_string(resolved, "the program")?;
        let workdir = c_string(launch.workdir.clone(), "the working directory")?;
        // The child is born in whatever cgroup we stand in: one that could not be entered would
        // leave the task without its memory limit, so it does not start.
        if let Err(e) = self.join(task_procs) {
            self.go_home();
            return Err(format!("cannot start {program}: cannot enter its cgroup, so its limits would not hold: {e}"));
        }
        let stderr = stderr.as_ref().unwrap_or(&stdout);
        let spawned = with_umask(TASK_UMASK, || match run_as {
            Some(identity) => spawn_task_as(identity, &file, &argv, &envp, &workdir, &stdout, stderr),
            None => spawn_task(&file, &argv, &envp, &workdir, &stdout, stderr),
        });
        drop(script_fd);
        self.go_home();
        spawned.map(|pid| (pid, note)).map_err(|e| format!("cannot start {program}: {e}"))
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: wait4 on our own children, filling a status and rusage we own.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                return;
            }
            let Some(a) = self.running.get_mut(&pid) else {
                self.shared_runtime_ended(pid);
                continue;
            };
            {
                a.ended = Some((status, usage));
                // Its room is free once its leader has exited (what it left is killed now):
                // the next attempt starts before this one's result is written.
                self.cpu_in_use -= a.spec.launch.cpu_millis;
                self.mem_in_use -= a.spec.launch.mem_bytes;
                // The leader is gone: end whatever it left behind, as Slurm does at a job's end
                // (its process group now; what is left in its cgroup in `on_timers`, next).
                signal_tree(a.pid, &[], libc::SIGKILL);
                a.leftovers_until = Some(Instant::now() + LEFTOVER_WAIT);
            }
        }
    }

    fn check_cancels(&mut self) {
        // A waiting attempt asked to stop ends without starting (`begin` sees the mark).
        let (asked, kept): (VecDeque<Waiting>, VecDeque<Waiting>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| w.dir.join(rundir::CANCEL_FILE).exists());
        self.waiting = kept;
        for w in asked {
            self.take_and_begin(w.spec, w.dir);
        }
        let asked: Vec<i32> = self
            .running
            .values()
            .filter(|a| !a.cancelled && a.ended.is_none() && a.dir.join(rundir::CANCEL_FILE).exists())
            .map(|a| a.pid)
            .collect();
        for pid in asked {
            self.cancel(pid);
        }
        // Signals asked for running attempts (scancel --signal), each sent once.
        let mut orders = Vec::new();
        for a in self.running.values().filter(|a| a.ended.is_none()) {
            let path = a.dir.join(rundir::SIGNAL_FILE);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let _ = std::fs::remove_file(&path);
            let mut words = text.split_whitespace();
            let (Some(signal), scope) = (words.next().and_then(|s| s.parse::<i32>().ok()).filter(|s| (1..=64).contains(s)), words.next()) else { continue };
            let order = match scope {
                Some("full") => Signal::Tree(signal),
                Some("batch") => Signal::Warn(tidepool_api::WarnSignal { signal, before_s: 0, batch_only: true }, true),
                _ => Signal::Warn(tidepool_api::WarnSignal { signal, before_s: 0, batch_only: false }, a.spec.launch.script.is_some()),
            };
            orders.push((a.pid, order));
        }
        for (key, order) in orders {
            self.deliver(key, order);
        }
    }

    fn cancel(&mut self, pid: i32) {
        let Some(a) = self.running.get_mut(&pid) else { return };
        if a.cancelled || a.ended.is_some() {
            return;
        }
        a.cancelled = true;
        // A node that stops is no cancel of the job's: it runs again elsewhere.
        if !self.stopping {
            a.note_slurm_end("");
        }
        a.kill_at = Some(Instant::now() + Duration::from_secs(a.spec.kill_grace_s));
        self.deliver(pid, Signal::Tree(libc::SIGTERM));
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut orders = Vec::new();
        for a in self.running.values_mut() {
            if a.ended.is_some() {
                let left = a.cgroup_pids();
                if left.is_empty() || a.leftovers_until.is_some_and(|t| now >= t) {
                    done.push((a.pid, left.is_empty()));
                } else {
                    signal_tree(a.pid, &left, libc::SIGKILL);
                }
                continue;
            }
            if a.kill_at.is_some_and(|t| now >= t) {
                orders.push((a.pid, Signal::Tree(libc::SIGKILL)));
                a.kill_at = Some(now + Duration::from_secs(1));
            }
            if a.warn_at.is_some_and(|t| now >= t) && !a.timed_out && !a.cancelled {
                a.warn_at = None;
                if let Some(warn) = a.spec.launch.warn_signal {
                    orders.push((a.pid, Signal::Warn(warn, a.spec.launch.script.is_some())));
                }
            }
            if a.deadline.is_some_and(|d| now >= d) && !a.timed_out && !a.cancelled {
                a.timed_out = true;
                a.note_slurm_end(" DUE TO TIME LIMIT");
                orders.push((a.pid, Signal::Tree(libc::SIGTERM)));
                a.kill_at = Some(now + Duration::from_secs(a.spec.kill_grace_s));
            }
        }
        for (key, order) in orders {
            self.deliver(key, order);
        }
        for (pid, emptied) in done {
            if let Some(a) = self.running.remove(&pid) {
                self.finish(a, emptied);
            }
        }
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_tasks_own_path() {
        assert_eq!(resolve("sh", "/nonexistent:/bin", "/"), "/bin/sh");
        assert_eq!(resolve("./x", "/bin", "/"), "./x");
        assert_eq!(resolve("no-such-program-here", "/bin", "/"), "no-such-program-here");
    }
}
