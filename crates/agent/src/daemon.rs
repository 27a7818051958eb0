//! The agent daemon: registers, long-polls, hands attempts to its executor, reports results.
//!
//! **Invariant**: a result file is deleted only after the server has acknowledged it, and an
//! attempt directory is never started twice, so a crash of the agent or the server at any point
//! neither loses a result nor runs an attempt again.

use crate::cgroup::CgroupPlan;
use crate::executor::{keep_result, Executor, Recovered, Results};
use crate::launcher::now_ms;
use crate::process::{ProcessExecutor, ProcessSettings};
use crate::rundir;
use crate::spares::{start_remover, SpareDirs};
use crate::{Error, Result};
use std::collections::HashSet;
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
    /// The identities its tasks may run as.
    pub identities: crate::identity::IdentityPolicy,
    /// How its GPUs are checked, if they are.
    pub gpu_health: Option<crate::gpus::GpuHealth>,
    /// How far its image cache may grow (least recently used images go first).
    pub image_cache: crate::images::CacheLimits,
    /// The only registries images may come from (`HOST[:PORT]`); empty: any.
    pub allowed_registries: Vec<String>,
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

pub(crate) struct Agent {
    config: AgentConfig,
    client: reqwest::Client,
    /// Where attempts run: this node's processes, or a Slurm site.
    executor: Arc<dyn Executor>,
    /// Acknowledged attempt directories, given back by a thread of their own.
    remover: std::sync::mpsc::Sender<PathBuf>,
    spares: Arc<SpareDirs>,
    /// Attempts cancelled before they came: refused when they do.
    prekilled: Mutex<HashSet<AttemptRef>>,
    results: Results,
    pub(crate) session: AtomicU64,
    /// The images this node has pulled.
    images: crate::images::ImageStore,
}

/// Runs the agent until the future is dropped.
pub async fn run(config: AgentConfig) -> Result<()> {
    run_until(config, std::future::pending()).await
}

/// The executor `config` asks for, sending results to `results`.
fn executor_of(config: &AgentConfig, results: Results) -> Arc<dyn Executor> {
    if let Some(site) = &config.slurm {
        return crate::slurm_site::SlurmExecutor::following(site.clone(), config.run_dir.clone(), results);
    }
    let (plan, why) = CgroupPlan::detect();
    tracing::info!(node = %config.name, "{why}");
    let settings = ProcessSettings {
        run_dir: config.run_dir.clone(),
        launcher_program: config.launcher_program.clone(),
        plan,
        bin_dir: make_command_links(config),
        kill_grace_s: config.kill_grace_s,
        node_cpu_millis: config.cpu_millis,
        node_mem_bytes: config.mem_bytes,
    };
    Arc::new(ProcessExecutor::new(settings, results))
}

/// Runs the agent until `shutdown` completes, then stops in order: unless `keep_tasks`, its
/// tasks are stopped and reported as such, so the server runs them again as new attempts and
/// nothing of this agent runs on after it.
pub async fn run_until(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.run_dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", config.run_dir.display())))?;
    let client = api_client(config.ca_cert.as_deref(), Duration::from_secs(60)).map_err(Error::Io)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let executor = executor_of(&config, tx.clone());
    tracing::info!(node = %config.name, "{}", config.identities.describe(executor.switches_users()));
    let mut config = config;
    if let Some(runtime) = crate::images::offered_runtime().filter(|_| executor.switches_users()) {
        config.features.push(tidepool_api::CONTAINER_FEATURE.to_string());
        tracing::info!(node = %config.name, runtime = %runtime.path.display(), "tasks may run in OCI images");
    }
    let agent = Arc::new(Agent::new(config, client, executor, tx));
    let reporter = tokio::spawn(report_loop(agent.clone(), rx));
    let checker = match (&agent.config.gpu_health, agent.config.gpus) {
        (Some(health), n_gpus) if n_gpus > 0 => Some(tokio::spawn(crate::gpus::health_loop(agent.clone(), n_gpus, health.clone()))),
        _ => None,
    };
    let outcome = tokio::select! {
        outcome = main_loop(agent.clone()) => outcome,
        () = shutdown => {
            stop_in_order(&agent).await;
            Ok(())
        }
    };
    reporter.abort();
    if let Some(checker) = checker {
        checker.abort();
    }
    outcome
}

/// How long a stopping agent waits for the server to acknowledge its stopped tasks.
const STOP_REPORT_WAIT: Duration = Duration::from_secs(5);

/// Stops the executor's attempts (they end as `stopped`, their whole trees killed) and waits
/// for the results to be acknowledged; what is not stays on disk for the next registration.
async fn stop_in_order(agent: &Arc<Agent>) {
    let config = &agent.config;
    if config.keep_tasks || agent.executor.is_overflow() {
        tracing::info!(node = %config.name, "stopping; tasks keep running for the next agent");
        return;
    }
    let n_running = agent.executor.running().len();
    tracing::info!(node = %config.name, n_running, "stopping this node's tasks; they run again at the next start");
    // First the server stops placing work here, or what stops would be sent straight back.
    let session = agent.session.load(Ordering::SeqCst);
    let left: Result<serde_json::Value> = agent.post("leave", &PollRequest { session }).await;
    if let Err(e) = left {
        tracing::warn!(error = %e, "could not tell the server this node is leaving");
    }
    let executor = agent.executor.clone();
    let stopped = tokio::task::spawn_blocking(move || executor.stop_all()).await.unwrap_or(false);
    if !stopped {
        return;
    }
    let deadline = tokio::time::Instant::now() + STOP_REPORT_WAIT;
    while !agent.executor.running().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Links named like Slurm's commands, so a task that calls `sbatch` finds it on its PATH.
fn make_command_links(config: &AgentConfig) -> Option<String> {
    let dir = config.run_dir.parent()?.join("bin");
    std::fs::create_dir_all(&dir).ok()?;
    for name in ["sbatch", "squeue", "scancel", "sacct", "sinfo", "srun", "scontrol"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&config.tidepool_program, &link).ok()?;
    }
    Some(dir.display().to_string())
}

impl Agent {
    fn new(config: AgentConfig, client: reqwest::Client, executor: Arc<dyn Executor>, results: Results) -> Agent {
        let spares = Arc::new(SpareDirs::adopt(&config.run_dir));
        let remover = start_remover(config.run_dir.clone(), executor.reuses_dirs().then(|| spares.clone()));
        let images_dir = config.run_dir.parent().unwrap_or(&config.run_dir).join("images");
        let images = crate::images::ImageStore::new(images_dir.clone(), reqwest::Client::new());
        // The list was checked when the agent's flags were read.
        let images = images.allowing_only(&config.allowed_registries).unwrap_or_else(|_| crate::images::ImageStore::new(images_dir, reqwest::Client::new()));
        Agent { config, client, executor, remover, spares, prekilled: Mutex::default(), results, session: AtomicU64::new(0), images }
    }

    pub(crate) async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
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

    fn lock_prekilled(&self) -> std::sync::MutexGuard<'_, HashSet<AttemptRef>> {
        self.prekilled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the run directory holds: attempts still running, and results not yet acknowledged.
    fn scan(&self) -> (Vec<AttemptRef>, Vec<TaskResult>) {
        let mut running = Vec::new();
        let mut finished = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.config.run_dir) else { return (running, finished) };
        for entry in entries.flatten() {
            let Some(a) = entry.file_name().to_str().and_then(rundir::parse_attempt_dir) else { continue };
            let dir = entry.path();
            if let Some(result) = rundir::read_result(&dir) {
                finished.push(result);
                continue;
            }
            match self.executor.recover(a, &dir) {
                Recovered::Running => running.push(a),
                Recovered::Ended(result) => finished.push(result),
                // The server requeues it.
                Recovered::Abandoned => {}
            }
        }
        // Files of launchers that died are removed.
        let _ = rundir::live_launchers(&self.config.run_dir);
        (running, finished)
    }

    /// The server recorded these results: their attempts are forgotten and their directories
    /// given back.
    fn forget(&self, acked: &[AttemptRef]) {
        let mut done = Vec::with_capacity(acked.len());
        for a in acked {
            let dir = rundir::attempt_dir(&self.config.run_dir, a);
            if rundir::read_result(&dir).is_some() {
                done.push(*a);
                // Deleting files can wait on the disk (discard); it is no one's critical path.
                let _ = self.remover.send(dir);
            }
        }
        self.executor.forget(&done);
    }

    /// Starts `launch`, once its image is on this node if it runs in one (pulled on a task of
    /// its own; a pull that fails fails the attempt with the registry's words).
    fn admit(self: &Arc<Self>, launch: Launch) {
        let Some(container) = launch.container.as_ref().filter(|c| c.rootfs.is_empty()) else {
            return self.start(launch);
        };
        let image = container.image.clone();
        let agent = self.clone();
        tokio::spawn(async move {
            let mut launch = launch;
            // The login serves the pull alone: it is not written into the attempt's directory.
            let login = launch.container.as_mut().and_then(|c| c.registry_auth.take());
            match agent.images.ensure(&image, login.as_ref()).await {
                Ok(unpacked) => {
                    if unpacked.fresh {
                        agent.after_pull().await;
                    }
                    if let Some(c) = launch.container.as_mut() {
                        c.rootfs = unpacked.rootfs.display().to_string();
                        c.image_env = unpacked.env;
                        c.digest = unpacked.digest;
                    }
                    agent.start(launch);
                }
                Err(e) => agent.refuse(launch.attempt, &e),
            }
        });
    }

    /// After a pull: the cache kept under its size and its disk under its watermark, and the server told what the node holds.
    async fn after_pull(self: &Arc<Self>) {
        let evicting = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let (images, limits) = (&evicting.images, evicting.config.image_cache);
            images.evict(limits, &evicting.config.run_dir, || crate::images::disk_use(images.dir()))
        })
        .await
        .unwrap_or_default();
        if !removed.is_empty() {
            tracing::info!(images = ?removed, "image cache over its size or its disk over its high watermark: least recently used images removed");
        }
        self.report_images().await;
    }

    /// Tells the server which images this node holds.
    async fn report_images(&self) {
        let session = self.session.load(Ordering::SeqCst);
        let report = tidepool_api::ImagesReport { session, images: self.images.cached() };
        if let Err(e) = self.post::<_, serde_json::Value>("images", &report).await {
            tracing::warn!(error = %e, "the images of this node were not reported");
        }
    }

    /// Ends an attempt that cannot start, keeping its result beside it.
    fn refuse(&self, a: AttemptRef, why: &str) {
        let dir = rundir::attempt_dir(&self.config.run_dir, &a);
        let result = lost(a, why);
        if self.spares.make(&dir).is_ok() {
            keep_result(&dir, &result);
        }
        let _ = self.results.send(result);
    }

    fn start(&self, mut launch: Launch) {
        let a = launch.attempt;
        // A task that calls sbatch or squeue reaches a TLS server with this node's CA.
        if let Some(ca) = &self.config.ca_cert {
            launch.env.entry("TIDEPOOL_CA_CERT".into()).or_insert_with(|| ca.display().to_string());
        }
        if self.lock_prekilled().remove(&a) {
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
        let settled = self.config.identities.settle(&mut launch);
        if let Err(e) = settled.and_then(|()| self.executor.start(launch, &dir)) {
            let result = lost(a, &e);
            keep_result(&dir, &result);
            let _ = self.results.send(result);
        }
    }

    fn kill(&self, a: AttemptRef) {
        let dir = rundir::attempt_dir(&self.config.run_dir, &a);
        if !self.executor.cancel(a, &dir) {
            self.lock_prekilled().insert(a);
        }
    }
}

fn lost(a: AttemptRef, message: &str) -> TaskResult {
    rundir::failed_at(a, now_ms(), message)
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
            overflow: agent.executor.is_overflow(),
            identities: agent.config.identities.offer(agent.executor.switches_users()),
            running,
            finished,
        };
        let resp: RegisterResponse = match agent.post("register", &req).await {
            Ok(r) => r,
            Err(e @ Error::Refused(_)) => {
                // No longer trusted: its work is requeued elsewhere once its lease ends, so
                // nothing of it may go on running here.
                // Attempts handed to Slurm too: they are scancelled, or they would run twice.
                for a in agent.executor.running() {
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
        if !agent.images.cached().is_empty() {
            let agent = agent.clone();
            tokio::spawn(async move { agent.report_images().await });
        }
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
                        agent.admit(launch);
                    }
                    for a in work.kill {
                        agent.kill(a);
                    }
                    for order in work.signal {
                        let dir = rundir::attempt_dir(&agent.config.run_dir, &order.attempt);
                        if !agent.executor.signal(&order, &dir) {
                            tracing::info!(job = order.attempt.job_id, index = order.attempt.index, "a signal for an attempt not running here was dropped");
                        }
                    }
                    let public = work.pull.into_iter().map(|image| (image, None));
                    let private = work.pull_with_login.into_iter().map(|p| (p.image, Some(p.login)));
                    for (image, login) in public.chain(private) {
                        let agent = agent.clone();
                        tokio::spawn(async move {
                            match agent.images.ensure(&image, login.as_ref()).await {
                                Ok(unpacked) if unpacked.fresh => agent.after_pull().await,
                                Ok(_) => {}
                                Err(e) => tracing::warn!(image = %image, error = %e, "pulling ahead failed; a task of it will try again"),
                            }
                        });
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
    //! The daemon's part of an attempt's life, over the test executor: no launcher, no server.

    use super::*;
    use crate::executor::double::Recorder;
    use tidepool_api::AttemptOutcome;

    struct Setup {
        agent: Agent,
        executor: Arc<Recorder>,
        results: mpsc::UnboundedReceiver<TaskResult>,
        run_dir: PathBuf,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.run_dir.parent().unwrap_or(&self.run_dir));
        }
    }

    fn setup(name: &str) -> Setup {
        let root = std::env::temp_dir().join(format!("tidepool-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let run_dir = root.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let config = AgentConfig {
            server_url: "http://127.0.0.1:1".into(),
            join_token: String::new(),
            run_dir: run_dir.clone(),
            name: "n1".into(),
            pool: "local".into(),
            cpu_millis: 2000,
            mem_bytes: 1 << 30,
            gpus: 0,
            features: vec![],
            resources: Default::default(),
            launcher_program: PathBuf::from("/nonexistent"),
            tidepool_program: PathBuf::from("/nonexistent"),
            kill_grace_s: 1,
            ca_cert: None,
            slurm: None,
            keep_tasks: false,
            identities: crate::identity::IdentityPolicy::for_invoking_user(),
            gpu_health: None,
            image_cache: crate::images::CacheLimits::default(),
            allowed_registries: Vec::new(),
        };
        let (tx, results) = mpsc::unbounded_channel();
        let executor = Arc::new(Recorder::new(tx.clone()));
        let client = reqwest::Client::new();
        let agent = Agent::new(config, client, executor.clone(), tx);
        Setup { agent, executor, results, run_dir }
    }

    fn launch(index: u32, command: &str) -> Launch {
        crate::executor::double::launch(index, &[command])
    }

    #[test]
    fn an_attempt_is_handed_to_its_executor_once() {
        let mut s = setup("once");
        s.agent.start(launch(0, "true"));
        s.agent.start(launch(0, "true"));
        let a = AttemptRef { job_id: 1, index: 0, attempt: 1 };
        assert_eq!(s.executor.running(), vec![a]);
        assert!(s.results.try_recv().is_err(), "nothing ended");
        // Its end reaches the daemon's report through the results channel.
        s.executor.end(a, rundir::failed_at(a, 7, "ended"));
        assert_eq!(s.results.try_recv().unwrap().ended_ms, 7);
        assert!(s.executor.running().is_empty());
    }

    #[test]
    fn a_cancel_that_comes_first_refuses_the_attempt_when_it_comes() {
        let mut s = setup("prekill");
        let a = AttemptRef { job_id: 1, index: 3, attempt: 1 };
        s.agent.kill(a);
        assert!(s.executor.cancelled.lock().unwrap().is_empty());
        s.agent.start(launch(3, "true"));
        assert!(s.executor.running().is_empty(), "a cancelled attempt was started");
        let result = s.results.try_recv().unwrap();
        assert_eq!((result.attempt, result.outcome), (a, AttemptOutcome::Cancelled));
        // A cancel of a running attempt goes to the executor.
        s.agent.start(launch(4, "true"));
        let b = AttemptRef { job_id: 1, index: 4, attempt: 1 };
        s.agent.kill(b);
        assert_eq!(*s.executor.cancelled.lock().unwrap(), vec![b]);
    }

    #[test]
    fn an_attempt_its_executor_cannot_start_fails_with_the_reason_kept_beside_it() {
        let mut s = setup("refused");
        s.agent.start(launch(5, "refuse"));
        let result = s.results.try_recv().unwrap();
        assert_eq!(result.outcome, AttemptOutcome::Failed);
        assert_eq!(result.message.as_deref(), Some("refused by the test executor"));
        let kept = rundir::read_result(&rundir::attempt_dir(&s.run_dir, &result.attempt)).unwrap();
        assert_eq!(kept.message, result.message, "a restarted agent finds it");
    }

    #[test]
    fn a_restarted_agent_reports_what_ended_and_what_still_runs() {
        let s = setup("scan");
        let ended = AttemptRef { job_id: 2, index: 0, attempt: 1 };
        let running = AttemptRef { job_id: 2, index: 1, attempt: 1 };
        let abandoned = AttemptRef { job_id: 2, index: 2, attempt: 1 };
        for a in [ended, running, abandoned] {
            std::fs::create_dir(rundir::attempt_dir(&s.run_dir, &a)).unwrap();
        }
        rundir::write_result(&rundir::attempt_dir(&s.run_dir, &ended), &lost(ended, "done")).unwrap();
        s.executor.found_after_restart.lock().unwrap().push((running, true));
        let (still, finished) = s.agent.scan();
        assert_eq!(still, vec![running]);
        assert_eq!(finished.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![ended]);
        // Once acknowledged, a result's directory is given back, and only that one.
        s.agent.forget(&[ended, running]);
        let gone = rundir::attempt_dir(&s.run_dir, &ended);
        for _ in 0..100 {
            if !gone.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!gone.exists());
        assert!(rundir::attempt_dir(&s.run_dir, &running).exists());
    }
}
