//! The shared state and the reactor: every change is journaled first, then applied to the
//! in-memory [`Cluster`], then the scheduler is woken.
//!
//! **Invariant**: nothing is acknowledged (to a client or an agent) before its journal commit,
//! and every in-memory change after a commit is fenced by attempt number, so replaying the
//! journal gives the same state whatever interleaving happened live.
//!
//! Here: the state's types, opening it, submissions, cancels, results, the pass and replay.
//! Beside it: `auth` (tokens and projects), `sessions` (agents, leases, log reads), `views`
//! (what clients are shown), `snapshot`, and `launch` (what an agent is sent).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::JournalWriter;
use crate::spec::{self, PatternValues};
use crate::tokens;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tidepool_api::{
    AttemptOutcome, AttemptRef, CancelResponse, JobView, Launch, NodeView, PollResponse, RegisterRequest,
    RegisterResponse, SubmitRequest, TaskCountsView, TaskResult, TaskView,
};
use tidepool_core::resources::format_cores;
use tidepool_core::{Cluster, JobId, JobSpec, NodeId, Resources, TaskCounts, TaskState};
use tidepool_store::{Ending, Event, SqliteStore, Store};
use tokio::sync::Notify;

mod archive;
mod auth;
mod launch;
mod registries;
mod sessions;
mod snapshot;
mod steps;
mod views;

pub use views::job_state;
use auth::token_id;
use launch::{load_secrets, save_secrets};

/// Milliseconds since the epoch; the only clock the server reads.
pub use tidepool_api::dates::now_ms;

/// Where and since when a task runs: (node, attempt, started ms).
type RunOf = (String, u32, u64);

/// One connected agent.
struct Session {
    id: u64,
    launches: Vec<Launch>,
    kills: Vec<AttemptRef>,
    log_reads: Vec<tidepool_api::LogRead>,
    wake: Arc<Notify>,
    last_seen_ms: u64,
    /// What its agent offered when it registered.
    identities: tidepool_api::Identities,
    /// Its GPUs that failed the health check, and why.
    gpus_failed: std::collections::BTreeMap<u32, String>,
    /// The images its agent holds unpacked.
    images: Vec<tidepool_api::ImageView>,
    /// Images it is to pull ahead of a job that may run there.
    pulls: Vec<String>,
    /// Private images it is to pull ahead, with the login of the job's project.
    pulls_with_login: Vec<tidepool_api::PullWithLogin>,
    /// Signals for its running attempts.
    signals: Vec<tidepool_api::SignalOrder>,
}

impl Session {
    /// What the agent is to do next, handed over.
    fn take_work(&mut self) -> PollResponse {
        PollResponse {
            launch: std::mem::take(&mut self.launches),
            kill: std::mem::take(&mut self.kills),
            reregister: false,
            log_reads: std::mem::take(&mut self.log_reads),
            pull: std::mem::take(&mut self.pulls),
            pull_with_login: std::mem::take(&mut self.pulls_with_login),
            signal: std::mem::take(&mut self.signals),
        }
    }
}

impl Inner {
    /// Asks the connected nodes that could run a job naming an image, and do not hold it, to
    /// pull it now: a task then finds it there, however long it waited for room.
    fn pull_ahead(&mut self, job_id: JobId) {
        let Some(job) = self.cluster.job(job_id) else { return };
        let Some(image) = job.spec().warm_key.clone() else { return };
        // A private image goes with its project's login, to the nodes that may run the job
        // alone (the agent keys its pull by the login, so no other project is handed it).
        let login = self.registry_logins.for_image(&job.spec().project, &image);
        for node_id in self.cluster.nodes_that_could_run(job_id) {
            if let Some(session) = self.sessions.get_mut(&node_id) {
                let held = session.images.iter().any(|i| i.reference == image);
                match &login {
                    None if !held && !session.pulls.contains(&image) => session.pulls.push(image.clone()),
                    Some(login) if !session.pulls_with_login.iter().any(|p| p.image == image && p.login == *login) => {
                        session.pulls_with_login.push(tidepool_api::PullWithLogin { image: image.clone(), login: login.clone() });
                    }
                    _ => continue,
                }
                session.wake.notify_one();
            }
        }
    }
}

/// Everything behind the lock.
pub struct Inner {
    /// The core's state.
    pub cluster: Cluster,
    /// The request each job was submitted with.
    pub requests: HashMap<JobId, Arc<SubmitRequest>>,
    next_job_id: u64,
    sessions: HashMap<NodeId, Session>,
    next_session_id: u64,
    cancel_pending: HashSet<AttemptRef>,
    /// Secret environment values per job, kept in their own files, never in the journal, and
    /// deleted when the job ends.
    secrets: HashMap<JobId, std::collections::BTreeMap<String, String>>,
    /// Where the secrets' files are.
    secrets_dir: std::path::PathBuf,
    /// The identity each project's tasks run as, for projects that have one.
    identities: HashMap<String, tidepool_api::RunAs>,
    /// Attempts told to stop for higher-priority work: their end puts them back in the queue.
    preempt_pending: HashSet<AttemptRef>,
    /// Each project's registry logins.
    registry_logins: registries::RegistryLogins,
    /// Jobs finished long enough ago to have left memory.
    forgotten: archive::ForgottenIds,
    /// The secret each job's step key is derived from (`steps.key` in the data directory).
    step_secret: String,
}

/// The server's state, shared by handlers and the reactor.
pub struct Shared {
    /// Settings.
    pub config: Config,
    inner: Mutex<Inner>,
    writer: JournalWriter,
    /// The store's handle for reads and catalog writes; the writer thread holds another.
    reader: Mutex<Box<dyn Store>>,
    /// The admin API token.
    pub admin_token: String,
    schedule_wanted: Notify,
    /// Project tokens by hash: (id, project, revoked).
    /// Project and join tokens by hash: (id, project or "" for a join token, revoked).
    api_tokens: Mutex<HashMap<String, (String, String, bool)>>,
    /// Held (shared) from a journal append until its in-memory apply; a snapshot holds it
    /// exclusively, so it never sees an event journaled but not yet applied.
    apply_gate: tokio::sync::RwLock<()>,
    /// Events journaled when the last snapshot was taken.
    events_at_snapshot: std::sync::atomic::AtomicU64,
    /// Log reads handed to agents, awaiting their answers.
    pub log_relay: crate::logs::Relay,
    /// Steps of the running multi-node allocations.
    steps: steps::StepBoard,
}

/// Variables that carry Tidepool's own tokens: never journaled, never handed to a task.
const TOKEN_VARIABLES: [&str; 2] = ["TIDEPOOL_TOKEN", "TIDEPOOL_JOIN_TOKEN"];

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: everything.
    Admin,
    /// A project token: that project's jobs only.
    Project(String),
}

/// The most of an agent's message about an attempt that is journaled.
const MAX_MESSAGE_BYTES: usize = 1000;

/// An agent's message, cut to `MAX_MESSAGE_BYTES` at a character boundary.
fn bounded_message(text: &str) -> String {
    let mut end = text.len().min(MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn pos_of(cluster: &Cluster, job_id: JobId, index: u32) -> Option<u32> {
    cluster.job(job_id)?.spec().array.position_of(index)
}

impl Shared {
    /// Opens the data directory: tokens, the SQLite journal, and the state replayed from it.
    pub fn open(config: Config) -> Result<Shared> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let store = SqliteStore::open(&config.data_dir.join("journal.db"))?;
        Shared::open_on(config, Box::new(store))
    }

    /// Opens the data directory's tokens over `store`, and replays the state from it.
    pub fn open_on(config: Config, mut store: Box<dyn Store>) -> Result<Shared> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let admin_path = config.data_dir.join("admin.token");
        let (admin_token, created) = tokens::load_or_create(&admin_path, "tpa_")?;
        if created {
            tracing::info!(path = %admin_path.display(), "created the admin API token");
        }
        let (join_token, _) = tokens::load_or_create(&config.data_dir.join("join.token"), "tpj_")?;
        let (step_secret, _) = tokens::load_or_create(&config.data_dir.join("steps.key"), "")?;
        let started = Instant::now();
        let (mut inner, n_events) = Inner::replayed(&config, store.as_ref())?;
        // Ids start after the last job journaled, whether or not memory still holds it.
        let after_journal = match store.last_job()? {
            Some((id, text)) => spec::journaled(&text).map_or(id + 1, |(_, spec)| id + spec.ids_held()),
            None => 1,
        };
        inner.next_job_id = inner.cluster.next_free_job_id().max(after_journal);
        inner.step_secret = step_secret;
        tracing::info!(
            n_events,
            n_jobs = inner.requests.len(),
            ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        for p in store.projects()? {
            inner.adopt_project(&p);
        }
        let mut api_tokens: HashMap<String, (String, String, bool)> = store
            .tokens()?
            .into_iter()
            .map(|t| (t.hash, (t.id, t.project, t.revoked)))
            .collect();
        // The join token of the data directory is one more revocable join token.
        let join_hash = tokens::hash(&join_token);
        if let std::collections::hash_map::Entry::Vacant(slot) = api_tokens.entry(join_hash.clone()) {
            let row = tidepool_store::TokenRow { id: token_id(&join_hash), hash: join_hash, project: String::new(), revoked: false };
            store.insert_token(&row, config.clock.now_ms())?;
            slot.insert((row.id, row.project, false));
        }
        let writer = JournalWriter::start(store.reopen()?)?;
        Ok(Shared {
            api_tokens: Mutex::new(api_tokens),
            apply_gate: tokio::sync::RwLock::new(()),
            events_at_snapshot: std::sync::atomic::AtomicU64::new(if n_events > config.snapshot_every { u64::MAX } else { 0 }),
            log_relay: crate::logs::Relay::default(),
            steps: steps::StepBoard::default(),
            config,
            inner: Mutex::new(inner),
            writer,
            reader: Mutex::new(store),
            admin_token,
            schedule_wanted: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that replay can rebuild; serving on is
        // better than refusing every request after one bug.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates, journals and accepts a job; returns its id once the commit is done.
    pub async fn on_submit(&self, mut req: SubmitRequest) -> Result<u64> {
        let mut spec = spec::validate(&req, self.config.max_array_size)?;
        self.settle_forgotten_dependencies(&mut spec)?;
        let secrets = std::mem::take(&mut req.secret_env);
        for key in secrets.keys() {
            if req.env.contains_key(key) {
                return Err(Error::field("secret_env", format!("{key} is also in env")));
            }
        }
        if req.workdir.is_none() {
            req.workdir = Some("/".to_string());
        }
        let dropped = self.drop_known_tokens(&mut req.env);
        if !dropped.is_empty() {
            tracing::info!(variables = %dropped.join(","), "kept tokens out of a job's environment");
        }
        let job_id = {
            let mut inner = self.lock();
            inner.cluster.validate(&spec, &self.config.known_pools)?;
            let id = inner.next_job_id;
            inner.next_job_id += spec.ids_held();
            id
        };
        if !secrets.is_empty() {
            save_secrets(&self.config.data_dir.join("secrets"), job_id, &secrets)?;
        }
        let _gate = self.apply_gate.read().await;
        let at_ms = self.config.clock.now_ms();
        let text = serde_json::to_string(&req)
            .map_err(|e| Error::Internal(format!("encoding the job: {e}")))?;
        self.writer
            .append(vec![Event::JobSubmitted { job_id, at_ms, spec: text }])
            .await?;
        {
            let mut inner = self.lock();
            inner.cluster.submit(JobId(job_id), spec, at_ms);
            inner.pull_ahead(JobId(job_id));
            inner.requests.insert(JobId(job_id), Arc::new(req));
            if !secrets.is_empty() {
                inner.secrets.insert(JobId(job_id), secrets);
            }
        }
        self.schedule_wanted.notify_one();
        Ok(job_id)
    }

    /// Checks a job as [`Shared::on_submit`] would and says where and when it would start;
    /// submits nothing (Slurm's `sbatch --test-only`).
    pub fn on_trial(&self, req: &SubmitRequest) -> Result<tidepool_api::TrialAnswer> {
        let mut spec = spec::validate(req, self.config.max_array_size)?;
        self.settle_forgotten_dependencies(&mut spec)?;
        let cpus = spec.per_task.cpu_millis.div_ceil(1000) * u64::from(spec.gang.map_or(1, |g| g.n_nodes * g.tasks_per_node));
        let asked_pool = spec.pool.clone();
        let inner = self.lock();
        inner.cluster.validate(&spec, &self.config.known_pools)?;
        let trial = inner.cluster.trial(spec, self.config.clock.now_ms());
        let nodes: Vec<&tidepool_core::cluster::Node> = trial.nodes.iter().filter_map(|id| inner.cluster.node(*id)).collect();
        Ok(tidepool_api::TrialAnswer {
            job_id: trial.job_id.0.max(inner.next_job_id),
            start_ms: trial.start_ms,
            nodes: nodes.iter().map(|n| n.name().to_string()).collect(),
            cpus,
            pool: nodes.first().map(|n| n.pool().to_string()).or(asked_pool.map(|p| p.split(',').next().unwrap_or_default().to_string())),
            pending_code: trial.waits_for.as_ref().map(|r| r.code.to_string()),
            pending_reason: trial.waits_for.map(|r| r.text),
        })
    }

    /// Sends `signal` to a job's running tasks (or one task's), as Slurm's `scancel --signal`:
    /// nothing ends and nothing is journaled; pending tasks are not touched.
    pub fn on_signal(&self, job_id: u64, index: Option<u32>, signal: i32, scope: tidepool_api::SignalScope) -> Result<CancelResponse> {
        let mut inner = self.lock();
        let Some(job) = inner.cluster.job(JobId(job_id)) else {
            return Ok(CancelResponse { n_cancelled: 0, n_signalled: 0, already_ended: true });
        };
        let index_of = |pos: u32| job.spec().array.index_at(pos);
        let targets: Vec<(NodeId, AttemptRef)> = job
            .running_tasks()
            .filter_map(|(pos, run)| {
                let i = index_of(pos)?;
                index.is_none_or(|want| want == i).then_some((run.node_id, AttemptRef { job_id, index: i, attempt: run.attempt }))
            })
            .collect();
        let already_ended = job.is_finished();
        for (node_id, attempt) in &targets {
            if let Some(session) = inner.sessions.get_mut(node_id) {
                session.signals.push(tidepool_api::SignalOrder { attempt: *attempt, signal, scope });
                session.wake.notify_one();
            }
        }
        Ok(CancelResponse { n_cancelled: 0, n_signalled: targets.len() as u32, already_ended })
    }

    /// Cancels a job or one task: pending tasks end now, running ones are told to stop.
    pub async fn on_cancel(&self, job_id: u64, index: Option<u32>) -> Result<CancelResponse> {
        if let Some(archived) = self.archived(job_id)? {
            if index.is_some_and(|i| archived.spec.array.position_of(i).is_none()) {
                return Err(Error::NotFound(format!("job {job_id} has no task {}", index.unwrap_or_default())));
            }
            return Ok(CancelResponse { n_cancelled: 0, n_signalled: 0, already_ended: true });
        }
        {
            let inner = self.lock();
            let job = inner
                .cluster
                .job(JobId(job_id))
                .ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
            if let Some(i) = index {
                if job.spec().array.position_of(i).is_none() {
                    return Err(Error::NotFound(format!("job {job_id} has no task {i}")));
                }
            }
        }
        let already_ended = {
            let inner = self.lock();
            let job = inner.cluster.job(JobId(job_id));
            match index {
                None => job.is_some_and(|j| j.is_finished()),
                Some(i) => job
                    .and_then(|j| j.task_state(j.spec().array.position_of(i)?))
                    .is_some_and(|s| !matches!(s, TaskState::Pending | TaskState::Running)),
            }
        };
        if already_ended {
            return Ok(CancelResponse { n_cancelled: 0, n_signalled: 0, already_ended });
        }
        let _gate = self.apply_gate.read().await;
        // One time for the journal and the state, so a replay rebuilds exactly this.
        let at_ms = self.config.clock.now_ms();
        self.writer.append(vec![Event::JobCancelled { job_id, index, at_ms }]).await?;
        let mut inner = self.lock();
        let before = inner.cluster.job(JobId(job_id)).map(|j| j.counts()).unwrap_or_default();
        let kills = inner.cluster.cancel(JobId(job_id), index, at_ms)?;
        let after = inner.cluster.job(JobId(job_id)).map(|j| j.counts()).unwrap_or_default();
        let n_signalled = kills.len() as u32;
        for kill in kills {
            let attempt = AttemptRef { job_id, index: kill.index, attempt: kill.attempt };
            inner.cancel_pending.insert(attempt);
            if let Some(session) = inner.sessions.get_mut(&kill.node_id) {
                session.kills.push(attempt);
                session.wake.notify_one();
            }
        }
        inner.forget_secrets_if_ended(JobId(job_id));
        Ok(CancelResponse { n_cancelled: after.cancelled - before.cancelled, n_signalled, already_ended })
    }

    /// Journals and applies results from an agent. Returns the attempts the agent may forget
    /// (also those already recorded or stale).
    pub async fn on_results(&self, results: &[TaskResult]) -> Result<Vec<AttemptRef>> {
        let _gate = self.apply_gate.read().await;
        let now = self.config.clock.now_ms();
        let events: Vec<Event> = {
            let inner = self.lock();
            results
                .iter()
                .filter(|r| inner.is_running(&r.attempt))
                .map(|r| {
                    // Preempted, or stopped with its node (or its launcher): it runs again as a
                    // new attempt, neither failed nor cancelled.
                    let stopped = r.outcome == AttemptOutcome::Stopped && !inner.cancel_pending.contains(&r.attempt);
                    if (stopped || inner.preempt_pending.contains(&r.attempt)) && r.outcome != AttemptOutcome::Succeeded {
                        let why = if stopped { "its node stopped it" } else { "it was stopped for higher-priority work" };
                        return inner.lost_attempt(r.attempt, now, why);
                    }
                    Event::TaskEnded {
                    job_id: r.attempt.job_id,
                    index: r.attempt.index,
                    attempt: r.attempt.attempt,
                    outcome: r.outcome.recorded(),
                    ending: Ending {
                        exit_code: r.exit_code,
                        signal: r.signal,
                        started_ms: r.started_ms,
                        cpu_ms: r.cpu_ms,
                        peak_mem_bytes: r.peak_mem_bytes,
                    },
                    at_ms: r.ended_ms.max(r.started_ms).min(now.max(r.started_ms)),
                    message: r.message.as_deref().map(bounded_message),
                }})
                .collect()
        };
        self.journal_then_apply(events).await?;
        Ok(results.iter().map(|r| r.attempt).collect())
    }

    /// Journals events, applies them to the state once committed, and wakes the scheduler.
    /// Callers hold the apply gate.
    async fn journal_then_apply(&self, events: Vec<Event>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.writer.append(events.clone()).await?;
        let mut inner = self.lock();
        for event in events {
            inner.replay(event);
        }
        drop(inner);
        self.schedule_wanted.notify_one();
        Ok(())
    }

    /// One scheduling pass: decide, journal the dispatches, then hand them to the agents.
    pub async fn schedule_pass(&self) -> Result<usize> {
        let _gate = self.apply_gate.read().await;
        let (events, launches, placed) = {
            let mut inner = self.lock();
            let now = self.config.clock.now_ms();
            let decisions = inner.cluster.schedule(now);
            let forgotten = inner.cluster.forget_finished(now.saturating_sub(self.config.keep_finished_ms));
            if !forgotten.is_empty() {
                tracing::debug!(n = forgotten.len(), first = forgotten[0].0, "finished jobs left memory; the journal answers for them");
            }
            for id in forgotten {
                inner.requests.remove(&id);
                inner.forgotten.insert(id.0);
            }
            for pre in decisions.preemptions {
                let v = pre.victim;
                let attempt = AttemptRef { job_id: v.job_id.0, index: v.index, attempt: v.attempt };
                tracing::info!(job = v.job_id.0, index = v.index, for_job = pre.for_job.0, "preempting");
                inner.preempt_pending.insert(attempt);
                if let Some(session) = inner.sessions.get_mut(&v.node_id) {
                    session.kills.push(attempt);
                    session.wake.notify_one();
                }
            }
            let placements = decisions.placements;
            let mut events = Vec::with_capacity(placements.len());
            let mut launches = Vec::with_capacity(placements.len());
            let mut placed = Vec::with_capacity(placements.len());
            for p in placements {
                placed.push(AttemptRef { job_id: p.job_id.0, index: p.index, attempt: p.attempt });
                let node = inner.cluster.node(p.node_id).map(|n| n.name().to_string()).unwrap_or_default();
                let session = inner.sessions.get(&p.node_id).map_or(0, |s| s.id);
                if let Some(launch) = inner.launch_for(&self.config, p.job_id, p.index, p.attempt, &node) {
                    launches.push((session, p.node_id, launch));
                }
                let gpus = inner.cluster.job(p.job_id).and_then(|j| j.running_task(p.pos)).map_or(0, |r| r.gpus);
                events.push(Event::TaskDispatched {
                    job_id: p.job_id.0,
                    index: p.index,
                    attempt: p.attempt,
                    node,
                    at_ms: now,
                    gpus,
                });
            }
            (events, launches, placed)
        };
        let n = events.len();
        if let Err(e) = self.writer.append(events).await {
            // Journal first: the core applied its placements already; with no row behind
            // them they are taken back, so nothing runs that a restart would not know of.
            let mut inner = self.lock();
            let now = self.config.clock.now_ms();
            for a in placed.iter().rev() {
                if let Some(pos) = pos_of(&inner.cluster, JobId(a.job_id), a.index) {
                    inner.cluster.requeue(JobId(a.job_id), pos, a.attempt, now);
                }
            }
            tracing::error!(error = %e, n_undone = n, "journaling dispatches failed: they were taken back and will be placed again");
            return Err(e);
        }
        let mut inner = self.lock();
        for (session, node_id, launch) in launches {
            // A placement decided for an older session was requeued when the agent
            // registered again; delivering it now would run the task twice.
            if !inner.is_running(&launch.attempt) {
                continue;
            }
            if let Some(s) = inner.sessions.get_mut(&node_id).filter(|s| s.id == session) {
                s.launches.push(launch);
                s.wake.notify_one();
            }
        }
        Ok(n)
    }

    /// Cancels the jobs submitted with `kill_on_invalid_dep` whose dependencies can no longer
    /// be met (the others wait, with reason DependencyNeverSatisfied, as Slurm's do).
    pub async fn cancel_unsatisfiable(&self) -> Result<()> {
        let doomed: Vec<u64> = {
            let inner = self.lock();
            inner
                .cluster
                .unsatisfiable()
                .into_iter()
                .filter(|id| inner.requests.get(id).is_some_and(|r| r.kill_on_invalid_dep))
                .map(|id| id.0)
                .collect()
        };
        for job in doomed {
            tracing::info!(job, "a dependency can never be met: cancelled (kill_on_invalid_dep)");
            self.on_cancel(job, None).await?;
        }
        Ok(())
    }

    /// Drains a node by name (finishes what runs, takes nothing new) or puts it back.
    pub async fn on_drain(&self, node: &str, draining: bool) -> Result<()> {
        if self.lock().cluster.node_id(node).is_none() {
            return Err(Error::NotFound(format!("node {node} does not exist")));
        }
        let _gate = self.apply_gate.read().await;
        let event = Event::NodeDrained { node: node.to_string(), draining, at_ms: self.config.clock.now_ms() };
        self.journal_then_apply(vec![event]).await
    }

}

impl Inner {
    /// The event for an attempt that ended through no fault of its own: back in the queue as a
    /// new attempt, or, for a job submitted with `--no-requeue`, failed saying `why`.
    pub(super) fn lost_attempt(&self, a: AttemptRef, at_ms: u64, why: &str) -> Event {
        let job_id = JobId(a.job_id);
        if self.requests.get(&job_id).is_none_or(|r| r.requeue != Some(false)) {
            return Event::TaskRequeued { job_id: a.job_id, index: a.index, attempt: a.attempt, at_ms };
        }
        let started_ms = pos_of(&self.cluster, job_id, a.index)
            .and_then(|pos| self.cluster.job(job_id)?.running_task(pos).map(|r| r.started_ms))
            .unwrap_or(at_ms);
        Event::TaskEnded {
            job_id: a.job_id,
            index: a.index,
            attempt: a.attempt,
            outcome: tidepool_core::TaskOutcome::Failed,
            ending: Ending { exit_code: None, signal: None, started_ms, cpu_ms: 0, peak_mem_bytes: 0 },
            at_ms,
            message: Some(format!("{why}, and the job was submitted not to run again (--no-requeue)")),
        }
    }

    fn index_of(&self, job_id: JobId, pos: u32) -> u32 {
        self.cluster.job(job_id).and_then(|j| j.spec().array.index_at(pos)).unwrap_or(pos)
    }

    fn is_running(&self, a: &AttemptRef) -> bool {
        let Some(pos) = pos_of(&self.cluster, JobId(a.job_id), a.index) else { return false };
        self.cluster
            .job(JobId(a.job_id))
            .and_then(|j| j.running_task(pos))
            .is_some_and(|r| r.attempt == a.attempt)
    }

    /// Applies one journaled event; used live after each commit and at start-up.
    fn replay(&mut self, event: Event) {
        match event {
            Event::JobSubmitted { job_id, at_ms, spec } => {
                match spec::journaled(&spec) {
                    Ok((req, mut spec)) => {
                        // A dependency on a job forgotten before this one was submitted was
                        // settled then (met, or the job was refused).
                        let forgotten = &self.forgotten;
                        spec.dependencies.on.retain(|d| !forgotten.contains(d.job.0));
                        self.cluster.submit(JobId(job_id), spec, at_ms);
                        self.requests.insert(JobId(job_id), Arc::new(req));
                    }
                    Err(e) => tracing::error!(job_id, error = %e, "journaled job unreadable; skipped"),
                }
            }
            Event::TaskDispatched { job_id, index, attempt, node, at_ms, gpus } => {
                let node_id = match self.cluster.node_id(&node) {
                    Some(id) => id,
                    None => self.cluster.add_node(&node, "", Resources::default()),
                };
                if let Some(pos) = pos_of(&self.cluster, JobId(job_id), index) {
                    if let Err(e) = self.cluster.replay_dispatch(JobId(job_id), pos, attempt, node_id, at_ms, gpus) {
                        tracing::warn!(error = %e, "dispatch in the journal not applied");
                    }
                }
            }
            Event::TaskEnded { job_id, index, attempt, outcome, ending, at_ms, .. } => {
                if let Some(pos) = pos_of(&self.cluster, JobId(job_id), index) {
                    let ran_ms = at_ms.saturating_sub(ending.started_ms);
                    self.cluster.finish_after(JobId(job_id), pos, attempt, outcome, at_ms, ran_ms);
                }
                self.cancel_pending.remove(&AttemptRef { job_id, index, attempt });
                self.preempt_pending.remove(&AttemptRef { job_id, index, attempt });
                self.forget_secrets_if_ended(JobId(job_id));
            }
            Event::TaskRequeued { job_id, index, attempt, at_ms } => {
                if let Some(pos) = pos_of(&self.cluster, JobId(job_id), index) {
                    self.cluster.requeue(JobId(job_id), pos, attempt, at_ms);
                }
                self.cancel_pending.remove(&AttemptRef { job_id, index, attempt });
                self.preempt_pending.remove(&AttemptRef { job_id, index, attempt });
            }
            Event::NodeDrained { node, draining, .. } => {
                let node_id = match self.cluster.node_id(&node) {
                    Some(id) => id,
                    None => self.cluster.add_node(&node, "", Resources::default()),
                };
                self.cluster.set_node_draining(node_id, draining);
            }
            Event::JobCancelled { job_id, index, at_ms } => {
                if let Ok(kills) = self.cluster.cancel(JobId(job_id), index, at_ms) {
                    for k in kills {
                        self.cancel_pending.insert(AttemptRef { job_id, index: k.index, attempt: k.attempt });
                    }
                }
                self.forget_secrets_if_ended(JobId(job_id));
            }
        }
    }

    /// Once a job has ended, no attempt of it will start again: its secret values go, from
    /// memory and from disk.
    fn forget_secrets_if_ended(&mut self, job_id: JobId) {
        // Few jobs carry secrets: the map is asked first, on this path of every task's end.
        if !self.secrets.contains_key(&job_id) || !self.cluster.job(job_id).is_some_and(|j| j.is_finished()) {
            return;
        }
        self.secrets.remove(&job_id);
        match std::fs::remove_file(self.secrets_dir.join(format!("{}.json", job_id.0))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(job = job_id.0, error = %e, "the secret values of an ended job could not be deleted"),
        }
    }

    /// Deletes the secret values of every job that has ended (those that ended before the
    /// snapshot a restart began from are not replayed one by one).
    pub(super) fn forget_ended_secrets(&mut self) {
        let held: Vec<JobId> = self.secrets.keys().copied().collect();
        for job_id in held {
            self.forget_secrets_if_ended(job_id);
        }
    }

}

/// The reactor: waits for a reason to schedule (or a second), then runs a pass.
pub async fn reactor_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.schedule_wanted.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = shared.expire_leases().await {
            tracing::error!(error = %e, "expiring agent leases failed");
        }
        if let Err(e) = shared.maybe_snapshot().await {
            tracing::error!(error = %e, "snapshot failed");
        }
        if let Err(e) = shared.schedule_pass().await {
            tracing::error!(error = %e, "scheduling pass failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Err(e) = shared.cancel_unsatisfiable().await {
            tracing::error!(error = %e, "cancelling jobs whose dependencies can never be met failed");
        }
    }
}
