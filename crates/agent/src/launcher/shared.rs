//! Shared containers: the tasks of one job that run in the same image, as the same identity,
//! with the same mounts, share one container per node, made once by the OCI runtime, as
//! Slurm's pyxis makes one per job step. Its first process is the helper (`inside.rs`),
//! which starts each task with one posix_spawn, so a stream of short tasks costs a spawn each
//! rather than a runtime start each. Tasks with GPUs (each its own device nodes) keep a
//! container of their own. The container's cgroup holds the memory of the
//! tasks running in it, as Slurm's job cgroup does; it closes once idle for [`IDLE_FOR`].

use super::inside::{recv_message, send_message, socket_pair, MAX_MESSAGE, MAX_REPORT};
use super::oci::{bind, config, environment, reachable, user_of, Reached, RuntimeRun, SCRIPT_INSIDE};
use super::sys::{signal_tree, warn_ahead_of_limit};
use super::Launcher;
use crate::cgroup::{CgroupPlan, TaskCgroup};
use crate::rundir::{InsideEnded, InsideOrder, LaunchSpec};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tidepool_api::Launch;

/// How long an emptied shared container waits for its job's next task before it closes.
pub(super) const IDLE_FOR: Duration = Duration::from_secs(2);

/// Where the helper and what it needs are bound inside: on the container's own /dev tmpfs,
/// so that nothing is made in the image's shared root filesystem.
const HELPER_DIR: &str = "/dev/.tidepool";

/// Where shared containers' bundles are made, under the run directory (beside the
/// runtime's own state, never in it).
pub(super) const BUNDLES_DIR: &str = "shared-bundles";

/// Shared containers by number.
pub(super) struct Shared {
    pub(super) containers: HashMap<u64, SharedContainer>,
    made: u64,
    tasks_started: u64,
    /// Where a helper's report is read into, made once.
    report_buf: Vec<u8>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared { containers: HashMap::new(), made: 0, tasks_started: 0, report_buf: vec![0; MAX_REPORT] }
    }
}

/// One job's container on this node.
pub(super) struct SharedContainer {
    /// What a task must have in common with the first to run in it.
    key: String,
    /// The launcher's end of the helper's socket.
    socket: OwnedFd,
    /// The runtime's process (a child of the launcher), alive as long as the container.
    pub(super) runtime_pid: i32,
    cgroup: Option<TaskCgroup>,
    plan: CgroupPlan,
    /// Running tasks' numbers, with their attempts' keys in the launcher's `running` and the
    /// memory each was given.
    pub(super) tasks: HashMap<u64, (i32, u64)>,
    idle_since: Option<Instant>,
    /// Closed to new tasks: its socket is shut and it ends once its tasks have.
    closing: bool,
    bundle: PathBuf,
    id: String,
    /// Orders the socket has not taken yet, with the descriptors they bring.
    outbox: VecDeque<(Vec<u8>, Vec<File>)>,
    /// The longest order its socket takes.
    max_order: usize,
}

/// A signal for an attempt: to its whole tree, or its `--signal` (and whether it runs a
/// batch script, whose shell is spared).
pub(super) enum Signal {
    /// This signal to every process of the attempt.
    Tree(i32),
    /// A `--signal`, the way it reaches a batch script (true) or a command.
    Warn(tidepool_api::WarnSignal, bool),
}

/// True when `launch` runs in a container it may share with other tasks of its job.
pub(super) fn shareable(launch: &Launch) -> bool {
    launch.container.is_some() && launch.gpus.is_empty()
}

/// What tasks sharing a container have in common: job, identity, image and mounts, working
/// directory, batch script.
fn key_of(launch: &Launch) -> String {
    use std::hash::{Hash, Hasher};
    let identity = launch.run_as.as_ref().map(|r| (r.uid, r.gid, r.groups.clone()));
    let c = launch.container.as_ref();
    let image = c.map(|c| (&c.rootfs, &c.digest, &c.mounts, &c.workdir, c.shm_bytes, c.isolated_network));
    let script = launch.script.as_ref().map(|text| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        (text.len(), hasher.finish())
    });
    serde_json::json!([launch.attempt.job_id, identity, image, launch.workdir, script]).to_string()
}

/// How the helper is started inside a container.
struct Helper {
    /// Its command line inside.
    args: Vec<String>,
    /// (source on the node, destination inside), bound read-only.
    binds: Vec<(String, String)>,
}

/// The helper's command line inside, and what must be bound for it: this launcher's own
/// program and, when it is linked dynamically, its loader and the directories of the
/// libraries it loaded (under [`HELPER_DIR`], so the image's own are untouched).
fn helper() -> Result<&'static Helper, String> {
    static HELPER: std::sync::OnceLock<Result<Helper, String>> = std::sync::OnceLock::new();
    HELPER.get_or_init(find_helper).as_ref().map_err(String::clone)
}

/// See [`helper`]: what this process is and loaded, read once.
fn find_helper() -> Result<Helper, String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("cannot find the launcher's program: {e}"))?;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut loader = None;
    let mut lib_dirs: Vec<String> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.starts_with('/') && p.contains(".so")) {
        let name = path.rsplit('/').next().unwrap_or("");
        if name.starts_with("ld-") {
            loader = Some(path.to_string());
        } else if let Some((dir, _)) = path.rsplit_once('/') {
            if !lib_dirs.iter().any(|d| d == dir) {
                lib_dirs.push(dir.to_string());
            }
        }
    }
    let program = format!("{HELPER_DIR}/launcher");
    let mut binds = vec![(exe.display().to_string(), program.clone())];
    let args = match loader {
        Some(loader) => {
            binds.push((loader, format!("{HELPER_DIR}/ld.so")));
            let inside: Vec<String> = (0..lib_dirs.len()).map(|i| format!("{HELPER_DIR}/lib{i}")).collect();
            binds.extend(lib_dirs.into_iter().zip(inside.iter().cloned()));
            vec![format!("{HELPER_DIR}/ld.so"), "--library-path".into(), inside.join(":"), program, "__inside".into()]
        }
        None => vec![program, "__inside".into()],
    };
    Ok(Helper { args, binds })
}

/// The longest message `socket` takes in one send: half its send buffer (the kernel counts
/// its own bookkeeping in it), at most [`MAX_MESSAGE`].
fn max_message(socket: &OwnedFd) -> usize {
    let mut size: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into memory we own.
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, (&mut size as *mut libc::c_int).cast(), &mut len) };
    if rc != 0 {
        return 64 << 10;
    }
    (size.max(0) as usize / 2).min(MAX_MESSAGE)
}

impl SharedContainer {
    /// Queues `order` (with `files`) and sends what the socket takes.
    fn order(&mut self, bytes: Vec<u8>, files: Vec<File>) {
        self.outbox.push_back((bytes, files));
        self.flush();
    }

    /// Sends queued orders until the socket is full.
    pub(super) fn flush(&mut self) {
        while let Some((bytes, files)) = self.outbox.front() {
            let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
            match send_message(self.socket.as_raw_fd(), bytes, &fds, false) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // Sent, or never to be: a helper that is gone ends its tasks when the runtime exits.
                _ => {
                    self.outbox.pop_front();
                }
            }
        }
    }

    /// The socket and what to wait on it for.
    pub(super) fn poll_events(&self) -> (RawFd, libc::c_short) {
        let out = if self.outbox.is_empty() { 0 } else { libc::POLLOUT };
        (self.socket.as_raw_fd(), libc::POLLIN | out)
    }

    /// Sets its memory limit to what its tasks were given (none when one asked for none).
    fn fit_memory(&self) {
        let Some(cgroup) = &self.cgroup else { return };
        let unlimited = self.tasks.values().any(|(_, mem)| *mem == 0);
        let total = if unlimited { 0 } else { self.tasks.values().map(|(_, mem)| mem).sum() };
        // A limit below what is charged now is refused: it then stays higher until the next fit.
        let _ = self.plan.limit_memory(cgroup, total);
    }

    /// When an idle container is due to close.
    pub(super) fn closes_at(&self) -> Option<Instant> {
        self.idle_since.filter(|_| !self.closing).map(|t| t + IDLE_FOR)
    }
}

impl Launcher {
    /// Starts a task in its job's shared container, making the container first when the
    /// task is its first here: the attempt's key in `running`, the task's error output (for
    /// Slurm's end line), and the container and task numbers.
    pub(super) fn start_inside(&mut self, spec: &LaunchSpec, stdout: File, stderr: Option<File>) -> Result<(i32, u64, u64), String> {
        let launch = &spec.launch;
        let Some(container) = &launch.container else { return Err("no image".into()) };
        let key = key_of(launch);
        let found = self.shared.containers.iter().find(|(_, c)| !c.closing && c.key == key).map(|(n, _)| *n);
        let number = match found {
            Some(n) => n,
            None => self.make_shared(spec, key)?,
        };
        self.shared.tasks_started += 1;
        let task = self.shared.tasks_started;
        let attempt_key = -((task % i32::MAX as u64) as i32).max(1);
        // A batch script is the container's, bound in when it was made.
        let (program, args) = match launch.script {
            Some(_) => (SCRIPT_INSIDE.to_string(), Vec::new()),
            None => super::files::program_of(spec, Path::new("/"))?,
        };
        let mut argv = vec![program.clone()];
        argv.extend(args);
        let cwd = container.workdir.clone().unwrap_or_else(|| launch.workdir.clone());
        let order = InsideOrder::Start { task, program, argv, env: environment(launch, container), cwd };
        let files: Vec<File> = std::iter::once(stdout).chain(stderr).collect();
        let Some(c) = self.shared.containers.get_mut(&number) else { return Err("the container is gone".into()) };
        let bytes = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
        if bytes.len() > c.max_order {
            return Err(format!("its command and environment take {} bytes, more than the {} a task in a shared container may have", bytes.len(), c.max_order));
        }
        c.tasks.insert(task, (attempt_key, launch.mem_bytes));
        c.idle_since = None;
        c.fit_memory();
        c.order(bytes, files);
        Ok((attempt_key, number, task))
    }

    /// Makes a job's shared container for the task `spec`; its number.
    fn make_shared(&mut self, spec: &LaunchSpec, key: String) -> Result<u64, String> {
        let launch = &spec.launch;
        let Some(container) = &launch.container else { return Err("no image".into()) };
        let Reached { mut container, held } = reachable(&self.run_dir, launch, container)?;
        let Helper { args, binds } = helper()?;
        self.shared.made += 1;
        let number = self.shared.made;
        let id = format!("tidepool-{}.shared{}.{}", launch.attempt.job_id, number, super::own_pid());
        let bundle = self.run_dir.join(BUNDLES_DIR).join(&id);
        std::fs::create_dir_all(&bundle).map_err(|e| format!("cannot make {}: {e}", bundle.display()))?;
        let log = File::create(bundle.join("runtime.log")).map_err(|e| format!("cannot make the container's log: {e}"))?;
        let user = user_of(launch);
        if let Some(script) = &launch.script {
            // The job's script, its identity's to read and run, on the container's own /tmp.
            use std::os::unix::fs::PermissionsExt;
            let path = bundle.join("batch-script");
            let given = std::fs::write(&path, script)
                .and_then(|()| std::os::unix::fs::chown(&path, Some(user.0), Some(user.1)))
                .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)));
            if let Err(e) = given {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(format!("script: {e}"));
            }
            container.mounts.push(format!("{}:{SCRIPT_INSIDE}:ro", path.display()));
        }
        let (ours, theirs) = socket_pair().map_err(|e| format!("cannot make the container's socket: {e}"))?;
        let cgroup = self.take_cgroup(&spec.cgroup, launch.mem_bytes);
        let run = RuntimeRun { bundle: &bundle, id: &id, image: &container.image, passed: Some(theirs.as_raw_fd()), stdout: &log, stderr: &log };
        let started = self.run_runtime(spec, cgroup.as_ref(), &[], run, |cgroups_path| {
            let mut config = config(launch, &container, args, user, &[], cgroups_path);
            if let Some(mounts) = config["mounts"].as_array_mut() {
                mounts.extend(binds.iter().map(|(source, destination)| bind(source, destination, true)));
            }
            config
        });
        drop(theirs);
        let runtime_pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(c) = cgroup {
                    self.release_cgroup(&spec.cgroup, c, true);
                }
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let max_order = max_message(&ours);
        self.bind_sources.insert(id.clone(), held);
        let shared = SharedContainer {
            key,
            socket: ours,
            runtime_pid,
            cgroup,
            plan: spec.cgroup.clone(),
            tasks: HashMap::new(),
            idle_since: None,
            closing: false,
            bundle,
            id,
            outbox: VecDeque::new(),
            max_order,
        };
        self.shared.containers.insert(number, shared);
        Ok(number)
    }

    /// Reads what the helper of container `number` reported: each ended task's attempt gets
    /// its status and usage, and frees its room.
    pub(super) fn read_inside(&mut self, number: u64) {
        loop {
            let Some(c) = self.shared.containers.get_mut(&number) else { return };
            match recv_message(c.socket.as_raw_fd(), &mut self.shared.report_buf) {
                Ok(Some((n, _))) => {
                    if let Ok(ended) = serde_json::from_slice::<InsideEnded>(&self.shared.report_buf[..n]) {
                        let key = c.tasks.get(&ended.task).map(|(key, _)| *key);
                        if let Some(key) = key {
                            self.inside_ended(key, ended.status, ended.cpu_ms, ended.peak_mem_bytes, ended.message);
                        }
                    }
                }
                // The helper closed its end; the runtime's exit (reaped) ends what is left.
                Ok(None) => {
                    c.closing = true;
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Records the end of the attempt `key` in a shared container, as `reap` does for a task
    /// of the launcher's own.
    fn inside_ended(&mut self, key: i32, status: i32, cpu_ms: u64, peak_mem_bytes: u64, message: Option<String>) {
        let Some(a) = self.running.get_mut(&key) else { return };
        if a.ended.is_some() {
            return;
        }
        let mut usage = super::sys::zeroed_rusage();
        usage.ru_utime = libc::timeval { tv_sec: (cpu_ms / 1000) as libc::time_t, tv_usec: ((cpu_ms % 1000) * 1000) as libc::suseconds_t };
        usage.ru_maxrss = (peak_mem_bytes / 1024) as libc::c_long;
        a.ended = Some((status, usage));
        if message.is_some() {
            a.result.message = message;
        }
        a.leftovers_until = Some(Instant::now());
        self.cpu_in_use -= a.spec.launch.cpu_millis;
        self.mem_in_use -= a.spec.launch.mem_bytes;
    }

    /// A finished attempt leaves its container, which waits idle for the next task once empty.
    pub(super) fn leave_shared(&mut self, number: u64, task: u64) {
        let Some(c) = self.shared.containers.get_mut(&number) else { return };
        c.tasks.remove(&task);
        c.fit_memory();
        if c.tasks.is_empty() {
            c.idle_since = Some(Instant::now());
        }
    }

    /// Sends `signal` to the attempt `key`: through its container's helper when it runs in a
    /// shared container, else to its process group and cgroup.
    pub(super) fn deliver(&mut self, key: i32, signal: Signal) {
        let Some(a) = self.running.get(&key) else { return };
        match (a.inside, signal) {
            (Some((number, task)), Signal::Tree(signal)) => self.order_inside(number, &InsideOrder::Signal { task, signal }),
            (Some((number, task)), Signal::Warn(warn, script)) => self.order_inside(number, &InsideOrder::Warn { task, warn, script }),
            (None, Signal::Tree(signal)) => signal_tree(a.pid, &a.cgroup_pids(), signal),
            (None, Signal::Warn(warn, script)) => warn_ahead_of_limit(a.pid, &a.cgroup_pids(), warn, script),
        }
    }

    /// The process group and `cgroup.procs` that stand for a task of container `number` in
    /// its start line: the runtime's, so that an agent ending a dead launcher's tasks ends the
    /// container.
    pub(super) fn leader_of(&self, number: u64) -> (i32, Option<PathBuf>) {
        let Some(c) = self.shared.containers.get(&number) else { return (0, None) };
        let procs = c.cgroup.as_ref().and_then(|cg| c.plan.task_dirs(&cg.name).into_iter().next()).map(|d| d.join("cgroup.procs"));
        (c.runtime_pid, procs)
    }

    /// Sends an order about a task to its container's helper.
    pub(super) fn order_inside(&mut self, number: u64, order: &InsideOrder) {
        if let Some(c) = self.shared.containers.get_mut(&number) {
            if let Ok(bytes) = serde_json::to_vec(order) {
                c.order(bytes, Vec::new());
            }
        }
    }

    /// Closes containers idle for [`IDLE_FOR`] (all idle ones when `now_all`, as the launcher
    /// is about to end): the helper sees its socket shut and exits, and the container with it.
    pub(super) fn close_idle(&mut self, now_all: bool) {
        let now = Instant::now();
        for c in self.shared.containers.values_mut() {
            let due = c.closes_at().is_some_and(|t| now >= t) || (now_all && c.tasks.is_empty());
            if due && !c.closing {
                c.closing = true;
                // SAFETY: shutdown on a socket we own.
                unsafe { libc::shutdown(c.socket.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// The runtime of container `pid` exited: the container is gone. What still ran in it
    /// ends failed, with the runtime's last words; its state, bundle and cgroup go.
    /// False when `pid` ran no shared container.
    pub(super) fn shared_runtime_ended(&mut self, pid: i32) -> bool {
        let Some(number) = self.shared.containers.iter().find(|(_, c)| c.runtime_pid == pid).map(|(n, _)| *n) else { return false };
        let Some(c) = self.shared.containers.remove(&number) else { return false };
        let log = std::fs::read_to_string(c.bundle.join("runtime.log")).unwrap_or_default();
        let words = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").to_string();
        for (key, _) in c.tasks.values() {
            let message = format!("its container ended before it did: {words}");
            self.inside_ended(*key, 127 << 8, 0, 0, Some(message));
        }
        self.forget_container(&c.id);
        let _ = std::fs::remove_dir_all(&c.bundle);
        if let Some(cgroup) = c.cgroup {
            self.release_cgroup(&c.plan, cgroup, false);
        }
        true
    }
}
