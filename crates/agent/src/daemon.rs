//! The agent daemon: registers, long-polls, hands attempts to its launcher, reports results.
//!
//! **Invariant**: a result file is deleted only after the server has acknowledged it, and an
//! attempt directory is never started twice, so a crash of the agent or the server at any point
//! neither loses a result nor runs an attempt again.

use crate::cgroup::CgroupPlan;
use crate::launcher::now_ms;
use crate::rundir::{self, LaunchSpec};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidepool_api::{
    AttemptRef, Launch, PollRequest, PollResponse, RegisterRequest, RegisterResponse, ReportRequest,
    ReportResponse, TaskResult,
};
use tokio::sync::mpsc;

/// How the agent is started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server's base URL (`http://host:port`).
    pub server_url: String,
    /// The join token.
    pub join_token: String,
    /// Where attempt directories live.
    pub run_dir: PathBuf,
    /// This node's name.
    pub name: String,
    /// Its pool.
    pub pool: String,
    /// Cores offered, thousandths.
    pub cpu_millis: u64,
    /// Memory offered, bytes.
    pub mem_bytes: u64,
    /// GPUs offered.
    pub gpus: u32,
    /// Node features offered (`avx512`, `rdma`, `gpu=h100`).
    pub features: Vec<String>,
    /// Named countable resources offered (`fpga`, `npu`).
    pub resources: std::collections::BTreeMap<String, u64>,
    /// The launcher, run as `PROGRAM __launch RUN_DIR` once per agent process:
    /// `tidepool-launcher` (small) or `tidepool` itself.
    pub launcher_program: PathBuf,
    /// The `tidepool` binary, linked as `sbatch`, `squeue`... on tasks' PATH.
    pub tidepool_program: PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a task is cancelled or times out.
    pub kill_grace_s: u64,
    /// A CA certificate (PEM) to trust for the server's TLS, besides none.
    pub ca_cert: Option<PathBuf>,
    /// Hand tasks to this Slurm cluster instead of running them here (an overflow site).
    pub slurm: Option<crate::slurm_site::SlurmSite>,
    /// On an orderly stop, leave the tasks running for the next agent to re-attach to, rather
    /// than stop them (they then run again as new attempts).
    pub keep_tasks: bool,
}

/// How long a connection to the server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for the server's API that trusts `ca_cert` (PEM) for TLS when given.
pub fn api_client(ca_cert: Option<&Path>, timeout: Duration) -> std::result::Result<reqwest::Client, String> {
    // A stopped server (its socket still accepting) is noticed: nothing read for `timeout`
    // ends the request, while a long answer that keeps coming is read to its end.
    let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).read_timeout(timeout);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("CA certificate {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("CA certificate {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA certificate {}: no certificate in the file", path.display()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

impl AgentConfig {
    /// The launcher to run beside the `tidepool` binary `tidepool`: `tidepool-launcher` in
    /// the same directory when it is there, else `tidepool` itself.
    pub fn launcher_beside(tidepool: &Path) -> PathBuf {
        let small = tidepool.with_file_name("tidepool-launcher");
        if small.is_file() {
            small
        } else {
            tidepool.to_path_buf()
        }
    }

    /// This machine's cores and memory, offered whole.
    pub fn local_capacity() -> (u64, u64) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        (cpus * 1000, mem_kb * 1024)
    }

    /// Features this machine's CPU has that tasks commonly require (`avx2`, `avx512`).
    pub fn local_features() -> Vec<String> {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: HashSet<&str> = info
            .lines()
            .find_map(|l| l.strip_prefix("flags"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).split_whitespace().collect())
            .unwrap_or_default();
        let mut features = vec![std::env::consts::ARCH.to_string()];
        for (flag, feature) in [("avx2", "avx2"), ("avx512f", "avx512"), ("sse4_2", "sse4_2")] {
            if flags.contains(flag) {
                features.push(feature.to_string());
            }
        }
        features
    }
}

struct Agent {
    config: AgentConfig,
    client: reqwest::Client,
    plan: CgroupPlan,
    bin_dir: Option<String>,
    /// Attempts this agent follows, with the pid of the launcher that runs them.
    tracked: Mutex<HashMap<AttemptRef, u32>>,
    /// The launcher new attempts go to, started on first use and again if it dies.
    launcher: Mutex<Option<LauncherHandle>>,
    /// Acknowledged attempt directories, given back by a thread of their own.
    remover: std::sync::mpsc::Sender<PathBuf>,
    spares: Arc<SpareDirs>,
    prekilled: Mutex<HashSet<AttemptRef>>,
    results: mpsc::UnboundedSender<TaskResult>,
    session: AtomicU64,
    /// With `--executor slurm`, where attempts go instead of the launcher.
    slurm: Option<Arc<crate::slurm_site::SlurmExecutor>>,
    /// Attempts this agent's launchers started and have not ended, with their process group.
    started: Mutex<HashMap<AttemptRef, rundir::Started>>,
}

/// Runs the agent until the future is dropped.
pub async fn run(config: AgentConfig) -> Result<()> {
    run_until(config, std::future::pending()).await
}

/// Runs the agent until `shutdown` completes, then stops in order: unless `keep_tasks`, its
/// tasks are stopped and reported as such, so the server runs them again as new attempts and
/// nothing of this agent runs on after it.
pub async fn run_until(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.run_dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", config.run_dir.display())))?;
    let (plan, why) = CgroupPlan::detect();
    tracing::info!(node = %config.name, "{why}");
    let bin_dir = make_command_links(&config);
    let client = api_client(config.ca_cert.as_deref(), Duration::from_secs(60)).map_err(Error::Io)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let spares = Arc::new(SpareDirs::adopt(&config.run_dir));
    let remover = start_remover(config.run_dir.clone(), config.slurm.is_none().then(|| spares.clone()));
    let config_slurm = config.slurm.clone();
    let agent = Arc::new(Agent {
        config,
        client,
        plan,
        bin_dir,
        tracked: Mutex::new(HashMap::new()),
        launcher: Mutex::new(None),
        remover,
        spares,
        prekilled: Mutex::new(HashSet::new()),
        results: tx,
        session: AtomicU64::new(0),
        slurm: config_slurm.map(|site| Arc::new(crate::slurm_site::SlurmExecutor::new(site))),
        started: Mutex::new(HashMap::new()),
    });
    let reporter = tokio::spawn(report_loop(agent.clone(), rx));
    if agent.config.slurm.is_some() {
        tokio::spawn(follow_slurm(agent.clone()));
    }
    let outcome = tokio::select! {
        outcome = main_loop(agent.clone()) => outcome,
        () = shutdown => {
            stop_in_order(&agent).await;
            Ok(())
        }
    };
    reporter.abort();
    outcome
}

/// How long a stopping agent waits for the server to acknowledge its stopped tasks.
const STOP_REPORT_WAIT: Duration = Duration::from_secs(5);

/// Stops the launchers (their tasks end as `stopped`, their whole trees killed) and waits for
/// the results to be acknowledged; what is not stays on disk for the next registration.
async fn stop_in_order(agent: &Arc<Agent>) {
    let config = &agent.config;
    if config.keep_tasks || config.slurm.is_some() {
        // Attempts in Slurm run on without us and are followed again at the next start.
        tracing::info!(node = %config.name, "stopping; tasks keep running for the next agent");
        return;
    }
    let n_running = agent.lock_tracked().len();
    tracing::info!(node = %config.name, n_running, "stopping this node's tasks; they run again at the next start");
    // First the server stops placing work here, or what stops would be sent straight back.
    let session = agent.session.load(Ordering::SeqCst);
    let left: Result<serde_json::Value> = agent.post("leave", &PollRequest { session }).await;
    if let Err(e) = left {
        tracing::warn!(error = %e, "could not tell the server this node is leaving");
    }
    let run_dir = config.run_dir.clone();
    let grace = Duration::from_secs(config.kill_grace_s + 5);
    let _ = tokio::task::spawn_blocking(move || rundir::stop_launchers(&run_dir, grace)).await;
    let deadline = tokio::time::Instant::now() + STOP_REPORT_WAIT;
    while !agent.lock_tracked().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most emptied attempt directories kept for later attempts.
const MAX_SPARE_DIRS: usize = 256;

/// Emptied attempt directories kept to be renamed into place for the next attempts.
#[derive(Default)]
struct SpareDirs {
    dirs: Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

impl SpareDirs {
    /// The spares an earlier agent process left in `run_dir`.
    fn adopt(run_dir: &Path) -> SpareDirs {
        let spares = SpareDirs::default();
        if let Ok(entries) = std::fs::read_dir(run_dir) {
            let mut dirs = spares.lock();
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(rundir::SPARE_PREFIX) {
                    dirs.push(entry.path());
                }
            }
        }
        spares
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the directory `dir` for an attempt, from a spare when there is one; fails with
    /// `AlreadyExists` when it exists.
    fn make(&self, dir: &Path) -> std::io::Result<()> {
        loop {
            // Popped apart from the match: the lock must not be held while a spare is put back.
            let popped = self.lock().pop();
            let Some(spare) = popped else { break };
            match rundir::rename_no_replace(&spare, dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    self.lock().push(spare);
                    return Err(e);
                }
                // Gone, or a file system without renameat2: a new directory instead.
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&spare);
                }
            }
        }
        std::fs::create_dir(dir)
    }

    /// Empties an acknowledged attempt directory and keeps it as a spare, or removes it.
    fn give_back(&self, run_dir: &Path, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(rundir::CANCEL_FILE));
        let _ = std::fs::remove_file(dir.join(rundir::SCRIPT_FILE));
        // A task spawned while the attempt ran holds a copy of its lock until its exec closes
        // it, which can come after the attempt's end: a directory still locked is not reused,
        // or the next attempt's launcher would find it taken. Once free, nothing relocks it.
        if self.lock().len() < MAX_SPARE_DIRS && !rundir::launcher_alive(dir) {
            let n = self.made.fetch_add(1, Ordering::Relaxed);
            let spare = run_dir.join(format!("{}{}.{n}", rundir::SPARE_PREFIX, std::process::id()));
            if rundir::rename_no_replace(dir, &spare).is_ok() {
                self.lock().push(spare);
                return;
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A thread that gives back the acknowledged attempt directories it is sent: kept as spares
/// for local attempts, removed for those handed to Slurm (which leave files of their own).
fn start_remover(run_dir: PathBuf, spares: Option<Arc<SpareDirs>>) -> std::sync::mpsc::Sender<PathBuf> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::spawn(move || {
        for dir in rx {
            match &spares {
                Some(spares) => spares.give_back(&run_dir, &dir),
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    });
    tx
}

/// Links named like Slurm's commands, so a task that calls `sbatch` finds it on its PATH.
fn make_command_links(config: &AgentConfig) -> Option<String> {
    let dir = config.run_dir.parent()?.join("bin");
    std::fs::create_dir_all(&dir).ok()?;
    for name in ["sbatch", "squeue", "scancel", "sacct", "sinfo"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&config.tidepool_program, &link).ok()?;
    }
    Some(dir.display().to_string())
}

impl Agent {
    fn lock_tracked(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptRef, u32>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp> {
        let url = format!("{}/api/v1/agent/{path}", self.config.server_url.trim_end_matches('/'));
        let resp = self
            .client
            .post(url)
            .bearer_auth(&self.config.join_token)
            .json(body)
            .send()
            .await
            .map_err(|e| Error::Server(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Error::Refused(resp.text().await.unwrap_or_default()));
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Server(format!("{status}: {text}")));
        }
        resp.json().await.map_err(|e| Error::Server(e.to_string()))
    }

    /// What the run directory holds: attempts still running, and results not yet acknowledged.
    fn scan(&self) -> (Vec<AttemptRef>, Vec<TaskResult>) {
        let mut running = Vec::new();
        let mut finished = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.config.run_dir) else { return (running, finished) };
        let tracked: HashSet<AttemptRef> = self.lock_tracked().keys().copied().collect();
        for entry in entries.flatten() {
            let Some(a) = entry.file_name().to_str().and_then(rundir::parse_attempt_dir) else { continue };
            let dir = entry.path();
            if let Some(result) = rundir::read_result(&dir) {
                finished.push(result);
            } else if self.slurm.as_ref().is_some_and(|slurm| slurm.adopt(a, &dir, now_ms())) {
                // Handed to Slurm by an earlier agent process: followed again.
                running.push(a);
            } else if tracked.contains(&a) {
                running.push(a);
            } else {
                match rundir::examine(&dir) {
                    rundir::Found::Running => {
                        running.push(a);
                        self.watch_orphan(a, dir);
                    }
                    rundir::Found::Ended(result) => finished.push(result),
                    // The server requeues it.
                    rundir::Found::Abandoned => {}
                }
            }
        }
        // Files of launchers that died are removed.
        let _ = rundir::live_launchers(&self.config.run_dir);
        (running, finished)
    }

    /// Follows an attempt of a launcher left by an earlier agent process until its result.
    fn watch_orphan(&self, a: AttemptRef, dir: PathBuf) {
        // Not our launcher's: its pid matters to no one (a cancel signals every live launcher).
        self.lock_tracked().insert(a, 0);
        let tx = self.results.clone();
        tokio::spawn(async move {
            while rundir::launcher_alive(&dir) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tx.send(rundir::read_result(&dir).unwrap_or_else(|| lost(a, "the launcher ended without a result")));
        });
    }

    fn lock_launcher(&self) -> std::sync::MutexGuard<'_, Option<LauncherHandle>> {
        self.launcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an attempt, as one line of JSON, to the launcher; the launcher's pid.
    fn hand_to_launcher(self: &Arc<Self>, line: &[u8]) -> std::result::Result<u32, String> {
        use std::io::Write;
        let mut launcher = self.lock_launcher();
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
    fn start_launcher(self: &Arc<Self>) -> std::result::Result<LauncherHandle, String> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.run_dir.with_file_name("launcher.log"))
            .map_err(|e| format!("launcher log: {e}"))?;
        let mut child = std::process::Command::new(&self.config.launcher_program)
            .arg("__launch")
            .arg(&self.config.run_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the launcher {}: {e}", self.config.launcher_program.display()))?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the launcher has no pipes".into());
        };
        let agent = self.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                // A start line opens with its first field, so each line is parsed once.
                if line.starts_with(rundir::STARTED_LINE_PREFIX) {
                    if let Ok(started) = serde_json::from_str::<rundir::Started>(&line) {
                        agent.lock_started().insert(started.started, started);
                    }
                } else if let Ok(result) = serde_json::from_str::<TaskResult>(&line) {
                    agent.lock_started().remove(&result.attempt);
                    let _ = agent.results.send(result);
                }
            }
            let _ = child.wait();
            agent.on_launcher_gone(pid);
        });
        Ok(LauncherHandle { stdin, pid })
    }

    fn lock_started(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptRef, rundir::Started>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A launcher ended: what it ran and did not answer for will never report. Its tasks are
    /// killed, whole trees, and reported stopped, so the server runs them again (the next
    /// attempt goes to a new launcher) and the node never runs more than it offers.
    fn on_launcher_gone(&self, pid: u32) {
        {
            let mut launcher = self.lock_launcher();
            if launcher.as_ref().is_some_and(|h| h.pid == pid) {
                *launcher = None;
            }
        }
        let orphaned: Vec<AttemptRef> = self.lock_tracked().iter().filter(|(_, p)| **p == pid).map(|(a, _)| *a).collect();
        for a in orphaned {
            let dir = rundir::attempt_dir(&self.config.run_dir, &a);
            let started = self.lock_started().remove(&a);
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

    fn forget(&self, acked: &[AttemptRef]) {
        let mut tracked = self.lock_tracked();
        for a in acked {
            let dir = rundir::attempt_dir(&self.config.run_dir, a);
            if rundir::read_result(&dir).is_some() {
                tracked.remove(a);
                // Deleting files can wait on the disk (discard); it is no one's critical path.
                let _ = self.remover.send(dir);
            }
        }
    }

    fn start(self: &Arc<Self>, mut launch: Launch) {
        let a = launch.attempt;
        // A task that calls sbatch or squeue reaches a TLS server with this node's CA.
        if let Some(ca) = &self.config.ca_cert {
            launch.env.entry("TIDEPOOL_CA_CERT".into()).or_insert_with(|| ca.display().to_string());
        }
        if self.prekilled.lock().unwrap_or_else(|p| p.into_inner()).remove(&a) {
            let _ = self.results.send(rundir::cancelled_unstarted(a, now_ms()));
            return;
        }
        let dir = rundir::attempt_dir(&self.config.run_dir, &a);
        // An attempt directory is made once: one that exists was handed over already.
        match self.spares.make(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return,
            Err(e) => {
                let _ = self.results.send(lost(a, &format!("cannot prepare {}: {e}", dir.display())));
                return;
            }
        }
        if let Some(slurm) = &self.slurm {
            match slurm.start(&launch, &dir, now_ms()) {
                Ok(id) => {
                    tracing::debug!(job = a.job_id, index = a.index, slurm_job = %id, "handed to Slurm");
                }
                Err(e) => {
                    let result = lost(a, &format!("cannot hand the task to Slurm: {e}"));
                    keep_result(&dir, &result);
                    let _ = self.results.send(result);
                }
            }
            return;
        }
        let spec = LaunchSpec {
            launch,
            cgroup: self.plan.clone(),
            bin_dir: self.bin_dir.clone(),
            kill_grace_s: self.config.kill_grace_s,
            node_cpu_millis: self.config.cpu_millis,
            node_mem_bytes: self.config.mem_bytes,
        };
        let mut line = match serde_json::to_vec(&spec) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.results.send(lost(a, &format!("cannot encode the launch: {e}")));
                return;
            }
        };
        line.push(b'\n');
        // Followed before it is handed over, so that even an instant result finds it tracked.
        self.lock_tracked().insert(a, 0);
        match self.hand_to_launcher(&line) {
            Ok(pid) => {
                self.lock_tracked().insert(a, pid);
            }
            Err(e) => {
                let result = lost(a, &e);
                keep_result(&dir, &result);
                let _ = self.results.send(result);
            }
        }
    }

    fn kill(self: &Arc<Self>, a: AttemptRef) {
        if let Some(slurm) = &self.slurm {
            if !slurm.cancel(a) {
                self.prekilled.lock().unwrap_or_else(|p| p.into_inner()).insert(a);
            }
            return;
        }
        let dir = rundir::attempt_dir(&self.config.run_dir, &a);
        if rundir::read_result(&dir).is_some() {
            return;
        }
        let tracked = self.lock_tracked().get(&a).copied();
        let own = self.lock_launcher().as_ref().map(|h| h.pid);
        // Only a launcher known to be alive is signalled: a stale pid may belong to anyone.
        let pids: Vec<u32> = match tracked {
            Some(pid) if pid != 0 && Some(pid) == own => vec![pid],
            _ if rundir::launcher_alive(&dir) => rundir::live_launchers(&self.config.run_dir),
            Some(_) => own.into_iter().collect(),
            None => Vec::new(),
        };
        if pids.is_empty() {
            self.prekilled.lock().unwrap_or_else(|p| p.into_inner()).insert(a);
            return;
        }
        // The mark is read at the start of the attempt and on SIGUSR1, so it stops the
        // attempt whether or not the launcher has reached it yet.
        if let Err(e) = std::fs::write(dir.join(rundir::CANCEL_FILE), b"") {
            // The signal still stops it if it runs; one its launcher has yet to start would start.
            tracing::warn!(job = a.job_id, index = a.index, error = %e, "the cancel mark could not be written");
        }
        for pid in pids {
            // SAFETY: kill(2) on a launcher alive in this run directory; no memory is touched.
            unsafe {
                libc::kill(pid as i32, libc::SIGUSR1);
            }
        }
    }
}

/// The pipe to a running launcher.
struct LauncherHandle {
    stdin: std::process::ChildStdin,
    pid: u32,
}

/// Writes an attempt's result beside it; if that fails the result still goes to the server,
/// but an agent restarted before the server acknowledges it would not find it, and the task
/// would run again: the log says so.
fn keep_result(dir: &Path, result: &TaskResult) {
    if let Err(e) = rundir::write_result(dir, result) {
        let a = result.attempt;
        tracing::warn!(job = a.job_id, index = a.index, error = %e, "result.json not written: the task runs again if this agent restarts before the server records it");
    }
}

fn lost(a: AttemptRef, message: &str) -> TaskResult {
    rundir::failed_at(a, now_ms(), message)
}

/// Every second, asks Slurm which of the attempts handed to it are still queued or running,
/// and reports the others as ended.
async fn follow_slurm(agent: Arc<Agent>) {
    let Some(slurm) = agent.slurm.clone() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (slurm, run_dir) = (slurm.clone(), agent.config.run_dir.clone());
        let ended = tokio::task::spawn_blocking(move || slurm.collect_ended(&run_dir, now_ms())).await.unwrap_or_default();
        for (dir, result) in ended {
            keep_result(&dir, &result);
            let _ = agent.results.send(result);
        }
    }
}

async fn main_loop(agent: Arc<Agent>) -> Result<()> {
    let mut announced = false;
    loop {
        let (running, finished) = agent.scan();
        let req = RegisterRequest {
            name: agent.config.name.clone(),
            pool: agent.config.pool.clone(),
            cpu_millis: agent.config.cpu_millis,
            mem_bytes: agent.config.mem_bytes,
            gpus: agent.config.gpus,
            features: agent.config.features.clone(),
            resources: agent.config.resources.clone(),
            overflow: agent.config.slurm.is_some(),
            running,
            finished,
        };
        let resp: RegisterResponse = match agent.post("register", &req).await {
            Ok(r) => r,
            Err(e @ Error::Refused(_)) => {
                // No longer trusted: its work is requeued elsewhere once its lease ends, so
                // nothing of it may go on running here.
                // Attempts handed to Slurm too: they are scancelled, or they would run twice.
                let mut attempts: Vec<AttemptRef> = agent.lock_tracked().keys().copied().collect();
                attempts.extend(agent.slurm.as_ref().map(|slurm| slurm.held()).unwrap_or_default());
                for a in attempts {
                    agent.kill(a);
                }
                tracing::error!(error = %e, "stopping this agent and its tasks");
                return Err(e);
            }
            Err(e) => {
                if !announced {
                    tracing::warn!(error = %e, "cannot register with the server; retrying");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        announced = false;
        agent.session.store(resp.session, Ordering::SeqCst);
        agent.forget(&resp.acked);
        for a in resp.kill {
            agent.kill(a);
        }
        loop {
            let polled: Result<PollResponse> =
                agent.post("poll", &PollRequest { session: resp.session }).await;
            match polled {
                Ok(work) if work.reregister => break,
                Ok(work) => {
                    for launch in work.launch {
                        agent.start(launch);
                    }
                    for a in work.kill {
                        agent.kill(a);
                    }
                    for read in work.log_reads {
                        tokio::spawn(answer_log_read(agent.clone(), resp.session, read));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the server; registering again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// Reads the piece of a task's log the server asked for, from the file the task wrote, and
/// posts it back.
async fn answer_log_read(agent: Arc<Agent>, session: u64, read: tidepool_api::LogRead) {
    let dir = crate::outputs::dir_of(&agent.config.run_dir);
    let r = read.clone();
    let piece = tokio::task::spawn_blocking(move || crate::outputs::read(&dir, r.job_id, r.index, &r.stream, r.offset, r.limit, r.tail_lines))
        .await
        .unwrap_or_else(|e| Err(crate::outputs::Unreadable::Io(e.to_string())));
    let mut query = vec![("session", session.to_string()), ("request", read.request.to_string())];
    let body = match piece {
        Ok(p) => {
            query.push(("start", p.start.to_string()));
            query.push(("size", p.size.to_string()));
            p.bytes
        }
        Err(e) => {
            query.push(("error", e.to_string()));
            Vec::new()
        }
    };
    let url = format!("{}/api/v1/agent/log", agent.config.server_url.trim_end_matches('/'));
    let sent = agent.client.post(url).bearer_auth(&agent.config.join_token).query(&query).body(body).send().await;
    if let Err(e) = sent.and_then(reqwest::Response::error_for_status) {
        tracing::debug!(error = %e, request = read.request, "log piece not delivered");
    }
}

/// How long the first of a batch of results waits for others before they are reported: a
/// stream of short tasks costs one report (and one journal commit) per several tasks rather
/// than one each, and a node with tasks queued on it keeps running them meanwhile.
const REPORT_GATHER: Duration = Duration::from_millis(10);

async fn report_loop(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<TaskResult>) {
    let mut pending: Vec<TaskResult> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
            // The results of the next few milliseconds go in the same report.
            tokio::time::sleep(REPORT_GATHER).await;
        }
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        let session = agent.session.load(Ordering::SeqCst);
        let req = ReportRequest { session, results: pending.clone() };
        match agent.post::<_, ReportResponse>("report", &req).await {
            Ok(resp) if !resp.reregister => {
                agent.forget(&resp.acked);
                let acked: HashSet<AttemptRef> = resp.acked.into_iter().collect();
                pending.retain(|r| !acked.contains(&r.attempt));
            }
            _ => {
                // The next registration carries every result still on disk; keep retrying in
                // case the session is fine and only this request failed.
                tokio::time::sleep(Duration::from_millis(300)).await;
                pending.retain(|r| rundir::attempt_dir(&agent.config.run_dir, &r.attempt).exists());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_attempt_directory_serves_the_next_attempt() {
        use std::os::unix::fs::MetadataExt;
        let run = std::env::temp_dir().join(format!("tidepool-spares-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        let spares = SpareDirs::adopt(&run);
        let first = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 0, attempt: 1 });
        spares.make(&first).unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        rundir::write_result(&first, &lost(AttemptRef { job_id: 1, index: 0, attempt: 1 }, "x")).unwrap();
        std::fs::write(first.join(rundir::CANCEL_FILE), b"").unwrap();
        spares.give_back(&run, &first);
        assert!(!first.exists());
        let second = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 1, attempt: 1 });
        spares.make(&second).unwrap();
        assert_eq!(std::fs::metadata(&second).unwrap().ino(), inode, "the spare was renamed into place");
        assert!(rundir::read_result(&second).is_none(), "no result carried over");
        assert!(!second.join(rundir::CANCEL_FILE).exists(), "no cancel mark carried over");
        // A directory made twice is refused, and the spare kept (not lost, no deadlock).
        rundir::write_result(&second, &lost(AttemptRef { job_id: 1, index: 1, attempt: 1 }, "y")).unwrap();
        spares.give_back(&run, &second);
        std::fs::create_dir(&first).unwrap();
        let twice = spares.make(&first).unwrap_err();
        assert_eq!(twice.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(spares.lock().len(), 1);
        // A restarted agent adopts what the earlier one kept.
        assert_eq!(SpareDirs::adopt(&run).lock().len(), 1);
        // A directory whose lock someone still holds is removed, not kept.
        let third = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 2, attempt: 1 });
        std::fs::create_dir(&third).unwrap();
        rundir::write_result(&third, &lost(AttemptRef { job_id: 1, index: 2, attempt: 1 }, "z")).unwrap();
        let holder = std::fs::File::open(&third).unwrap();
        assert!(rundir::try_flock(&holder, true));
        spares.give_back(&run, &third);
        assert!(!third.exists());
        assert_eq!(spares.lock().len(), 1, "a locked directory is not a spare");
        drop(holder);
        let _ = std::fs::remove_dir_all(&run);
    }
}
