//! The shared state and the reactor: every change is journaled first, then applied to the
//! in-memory [`Cluster`], then the scheduler is woken.
//!
//! **Invariant**: nothing is acknowledged (to a client or an agent) before its journal commit,
//! and every in-memory change after a commit is fenced by attempt number, so replaying the
//! journal gives the same state whatever interleaving happened live.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::JournalWriter;
use crate::spec::{self, PatternValues};
use crate::tokens;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tidepool_api::{
    AttemptRef, CancelResponse, JobView, Launch, NodeView, PollResponse, RegisterRequest,
    RegisterResponse, SubmitRequest, TaskCountsView, TaskResult, TaskView,
};
use tidepool_core::resources::format_cores;
use tidepool_core::{Cluster, JobId, JobSpec, NodeId, Resources, TaskCounts, TaskOutcome, TaskState};
use tidepool_store::{Ending, Event, Journal, Outcome};
use tokio::sync::Notify;

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
    last_seen: Instant,
}

impl Session {
    /// What the agent is to do next, handed over.
    fn take_work(&mut self) -> PollResponse {
        PollResponse {
            launch: std::mem::take(&mut self.launches),
            kill: std::mem::take(&mut self.kills),
            reregister: false,
            log_reads: std::mem::take(&mut self.log_reads),
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
    /// Secret environment values per job, kept in their own files, never in the journal.
    secrets: HashMap<JobId, std::collections::BTreeMap<String, String>>,
    /// Attempts told to stop for higher-priority work: their end puts them back in the queue.
    preempt_pending: HashSet<AttemptRef>,
}

/// The server's state, shared by handlers and the reactor.
pub struct Shared {
    /// Settings.
    pub config: Config,
    inner: Mutex<Inner>,
    writer: JournalWriter,
    reader: Mutex<Journal>,
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

/// A token's public id: a prefix of its hash, so the id reveals nothing usable.
fn token_id(hash: &str) -> String {
    format!("tok_{}", &hash[..12])
}

fn pos_of(cluster: &Cluster, job_id: JobId, index: u32) -> Option<u32> {
    cluster.job(job_id)?.spec().array.position_of(index)
}

fn outcome_of(result: &TaskResult) -> Outcome {
    match result.outcome.as_str() {
        "succeeded" => Outcome::Succeeded,
        // Stopped with its node after its owner had cancelled it.
        "cancelled" | "stopped" => Outcome::Cancelled,
        "timeout" => Outcome::Timeout,
        _ => Outcome::Failed,
    }
}

fn core_outcome(outcome: Outcome) -> TaskOutcome {
    match outcome {
        Outcome::Succeeded => TaskOutcome::Succeeded,
        Outcome::Failed => TaskOutcome::Failed,
        Outcome::Cancelled => TaskOutcome::Cancelled,
        Outcome::Timeout => TaskOutcome::Timeout,
    }
}

impl Shared {
    /// Opens the data directory: tokens, journal, and the state replayed from it.
    pub fn open(config: Config) -> Result<Shared> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let admin_path = config.data_dir.join("admin.token");
        let (admin_token, created) = tokens::load_or_create(&admin_path, "tpa_")?;
        if created {
            tracing::info!(path = %admin_path.display(), "created the admin API token");
        }
        let (join_token, _) = tokens::load_or_create(&config.data_dir.join("join.token"), "tpj_")?;
        let db = config.data_dir.join("journal.db");
        let journal = Journal::open(&db)?;
        let started = Instant::now();
        let mut inner = Inner {
            cluster: Cluster::new(),
            requests: HashMap::new(),
            next_job_id: 1,
            sessions: HashMap::new(),
            next_session_id: 1,
            cancel_pending: HashSet::new(),
            preempt_pending: HashSet::new(),
            secrets: load_secrets(&config.data_dir.join("secrets")),
        };
        for (name, limits) in &config.projects {
            inner.cluster.set_project(name, *limits);
        }
        let mut n_events = 0u64;
        match journal.latest_snapshot()? {
            Some((seq, data)) => {
                journal.replay_jobs(|event| inner.replay(event))?;
                inner.restore_snapshot(&data).map_err(|e| Error::Journal(format!("snapshot {seq}: {e}")))?;
                journal.replay_events_after(seq, |event| {
                    n_events += 1;
                    inner.replay(event);
                })?;
            }
            None => journal.replay(|event| {
                n_events += 1;
                inner.replay(event);
            })?,
        }
        inner.next_job_id = inner.cluster.max_job_id().map_or(1, |id| id.0 + 1);
        tracing::info!(
            n_events,
            n_jobs = inner.requests.len(),
            ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        for p in journal.projects()? {
            let limits = tidepool_core::ProjectLimits {
                quota_cpu_millis: p.quota_millis,
                borrow_cpu_millis: p.borrow_millis,
                share: p.share,
            };
            if p.quota_millis.is_some() {
                inner.cluster.set_project(&p.name, limits);
            }
        }
        let mut api_tokens: HashMap<String, (String, String, bool)> = journal
            .tokens()?
            .into_iter()
            .map(|t| (t.hash, (t.id, t.project, t.revoked)))
            .collect();
        // The join token of the data directory is one more revocable join token.
        let join_hash = tokens::hash(&join_token);
        if let std::collections::hash_map::Entry::Vacant(slot) = api_tokens.entry(join_hash.clone()) {
            let row = tidepool_store::TokenRow { id: token_id(&join_hash), hash: join_hash, project: String::new(), revoked: false };
            journal.insert_token(&row, now_ms())?;
            slot.insert((row.id, row.project, false));
        }
        let writer = JournalWriter::start(Journal::open(&db)?)?;
        Ok(Shared {
            api_tokens: Mutex::new(api_tokens),
            apply_gate: tokio::sync::RwLock::new(()),
            events_at_snapshot: std::sync::atomic::AtomicU64::new(if n_events > config.snapshot_every { u64::MAX } else { 0 }),
            log_relay: crate::logs::Relay::default(),
            config,
            inner: Mutex::new(inner),
            writer,
            reader: Mutex::new(journal),
            admin_token,
            schedule_wanted: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that replay can rebuild; serving on is
        // better than refusing every request after one bug.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a snapshot of the state, so a restart replays only what came after it.
    pub async fn take_snapshot(&self) -> Result<()> {
        let _gate = self.apply_gate.write().await;
        let seq = self.reader.lock().unwrap_or_else(|p| p.into_inner()).max_seq()?;
        let data = self.lock().snapshot_json();
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).save_snapshot(seq, now_ms(), &data)?;
        self.events_at_snapshot.store(self.writer.n_appended(), std::sync::atomic::Ordering::SeqCst);
        tracing::info!(seq, bytes = data.len(), "snapshot taken");
        Ok(())
    }

    /// Takes a snapshot when enough has been journaled since the last.
    pub async fn maybe_snapshot(&self) -> Result<()> {
        let last = self.events_at_snapshot.load(std::sync::atomic::Ordering::SeqCst);
        if last == u64::MAX || self.writer.n_appended().saturating_sub(last) >= self.config.snapshot_every {
            self.take_snapshot().await?;
        }
        Ok(())
    }

    /// Who a bearer token stands for, if anyone.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        if tidepool_api::same_secret(token, &self.admin_token) {
            return Some(Principal::Admin);
        }
        let hash = tokens::hash(token);
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&hash) {
            Some((_, project, false)) if !project.is_empty() => Some(Principal::Project(project.clone())),
            _ => None,
        }
    }

    /// Whether `token` is a join token that has not been revoked.
    pub fn is_join_token(&self, token: &str) -> bool {
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        matches!(map.get(&tokens::hash(token)), Some((_, project, false)) if project.is_empty())
    }

    /// Every project and join token, without the tokens themselves.
    pub fn token_views(&self) -> Vec<tidepool_api::TokenView> {
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<tidepool_api::TokenView> = map
            .values()
            .map(|(id, project, revoked)| tidepool_api::TokenView {
                id: id.clone(),
                kind: if project.is_empty() { "join" } else { "project" }.into(),
                project: (!project.is_empty()).then(|| project.clone()),
                revoked: *revoked,
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// True when `text` holds a token this server knows (admin, project or join, revoked
    /// included), as a whole word.
    fn holds_known_token(&self, text: &str) -> bool {
        if text.contains(self.admin_token.as_str()) {
            return true;
        }
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.len() > 4 && word.starts_with("tp") && word.as_bytes()[3] == b'_')
            .any(|word| map.contains_key(&tokens::hash(word)))
    }

    /// Removes from a job's environment every variable that names or holds a token Tidepool
    /// knows, so that none reaches the journal (or a task of the job); the names removed.
    fn drop_known_tokens(&self, env: &mut std::collections::BTreeMap<String, String>) -> Vec<String> {
        let dropped: Vec<String> = env
            .iter()
            .filter(|(key, value)| TOKEN_VARIABLES.contains(&key.as_str()) || self.holds_known_token(value))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &dropped {
            env.remove(key);
        }
        dropped
    }

    /// The project of a job, if the job exists.
    pub fn job_project(&self, job_id: u64) -> Option<String> {
        self.lock().cluster.job(JobId(job_id)).map(|j| j.spec().project.clone())
    }

    /// Creates a project (with a quota when given).
    pub fn on_create_project(&self, req: &tidepool_api::ProjectRequest) -> Result<()> {
        let valid = !req.name.is_empty()
            && req.name.len() <= 64
            && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(Error::field("name", "use 1 to 64 letters, digits, '-', '_' and '.'"));
        }
        if req.borrow.is_some() && req.quota.is_none() {
            return Err(Error::field("borrow", "a borrowing limit needs a quota"));
        }
        let row = tidepool_store::ProjectRow {
            name: req.name.clone(),
            quota_millis: req.quota.map(|q| q * 1000),
            borrow_millis: req.borrow.map(|b| b * 1000),
            share: req.share.unwrap_or(1).max(1),
        };
        let created = self.reader.lock().unwrap_or_else(|p| p.into_inner()).create_project(&row, now_ms())?;
        if !created {
            return Err(Error::field("name", format!("project {} exists", req.name)));
        }
        if row.quota_millis.is_some() {
            let limits = tidepool_core::ProjectLimits { quota_cpu_millis: row.quota_millis, borrow_cpu_millis: row.borrow_millis, share: row.share };
            self.lock().cluster.set_project(&row.name, limits);
        }
        Ok(())
    }

    /// Every project created through the API.
    pub fn project_names(&self) -> Result<Vec<String>> {
        Ok(self.reader.lock().unwrap_or_else(|p| p.into_inner()).projects()?.into_iter().map(|p| p.name).collect())
    }

    /// A new token for a project, or a join token for agents: returned once, stored as a hash.
    pub fn on_create_token(&self, req: &tidepool_api::TokenRequest) -> Result<tidepool_api::TokenCreated> {
        let (project, prefix) = match (&req.project, req.join) {
            (Some(_), true) => return Err(Error::field("join", "a token is either for a project or for joining agents, not both")),
            (None, false) => return Err(Error::field("project", "name a project, or ask for a join token")),
            (None, true) => (String::new(), "tpj_"),
            (Some(project), false) => {
                if !self.project_names()?.iter().any(|p| p == project) {
                    return Err(Error::field("project", format!("project {project} does not exist (tidepool project create {project})")));
                }
                (project.clone(), "tpp_")
            }
        };
        let token = tokens::random_token(prefix)?;
        let hash = tokens::hash(&token);
        let row = tidepool_store::TokenRow { id: token_id(&hash), hash, project: project.clone(), revoked: false };
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).insert_token(&row, now_ms())?;
        self.api_tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(row.hash, (row.id.clone(), project.clone(), false));
        Ok(tidepool_api::TokenCreated { id: row.id, token, project: (!project.is_empty()).then_some(project) })
    }

    /// Revokes a token by id.
    pub fn on_revoke_token(&self, id: &str) -> Result<()> {
        if !self.reader.lock().unwrap_or_else(|p| p.into_inner()).revoke_token(id)? {
            return Err(Error::NotFound(format!("token {id} does not exist")));
        }
        let mut map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        for entry in map.values_mut().filter(|(tid, _, _)| tid == id) {
            entry.2 = true;
        }
        Ok(())
    }

    /// Validates, journals and accepts a job; returns its id once the commit is done.
    pub async fn on_submit(&self, mut req: SubmitRequest) -> Result<u64> {
        let spec = spec::validate(&req, self.config.max_array_size)?;
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
            inner.next_job_id += 1;
            id
        };
        if !secrets.is_empty() {
            save_secrets(&self.config.data_dir.join("secrets"), job_id, &secrets)?;
        }
        let _gate = self.apply_gate.read().await;
        let at_ms = now_ms();
        let text = serde_json::to_string(&req)
            .map_err(|e| Error::Internal(format!("encoding the job: {e}")))?;
        self.writer
            .append(vec![Event::JobSubmitted { job_id, at_ms, spec: text }])
            .await?;
        {
            let mut inner = self.lock();
            inner.cluster.submit(JobId(job_id), spec, at_ms);
            inner.requests.insert(JobId(job_id), Arc::new(req));
            if !secrets.is_empty() {
                inner.secrets.insert(JobId(job_id), secrets);
            }
        }
        self.schedule_wanted.notify_one();
        Ok(job_id)
    }

    /// Cancels a job or one task: pending tasks end now, running ones are told to stop.
    pub async fn on_cancel(&self, job_id: u64, index: Option<u32>) -> Result<CancelResponse> {
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
        self.writer
            .append(vec![Event::JobCancelled { job_id, index, at_ms: now_ms() }])
            .await?;
        let mut inner = self.lock();
        let before = inner.cluster.job(JobId(job_id)).map(|j| j.counts()).unwrap_or_default();
        let kills = inner.cluster.cancel(JobId(job_id), index, now_ms())?;
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
        Ok(CancelResponse { n_cancelled: after.cancelled - before.cancelled, n_signalled, already_ended })
    }

    /// Journals and applies results from an agent. Returns the attempts the agent may forget
    /// (also those already recorded or stale).
    pub async fn on_results(&self, results: &[TaskResult]) -> Result<Vec<AttemptRef>> {
        let _gate = self.apply_gate.read().await;
        let now = now_ms();
        let events: Vec<Event> = {
            let inner = self.lock();
            results
                .iter()
                .filter(|r| inner.is_running(&r.attempt))
                .map(|r| {
                    // Preempted, or stopped with its node (or its launcher): it runs again as a
                    // new attempt, neither failed nor cancelled.
                    let stopped = r.outcome == "stopped" && !inner.cancel_pending.contains(&r.attempt);
                    if (stopped || inner.preempt_pending.contains(&r.attempt)) && r.outcome != "succeeded" {
                        return Event::TaskRequeued {
                            job_id: r.attempt.job_id,
                            index: r.attempt.index,
                            attempt: r.attempt.attempt,
                            at_ms: now,
                        };
                    }
                    Event::TaskEnded {
                    job_id: r.attempt.job_id,
                    index: r.attempt.index,
                    attempt: r.attempt.attempt,
                    outcome: outcome_of(r),
                    ending: Ending {
                        exit_code: r.exit_code,
                        signal: r.signal,
                        started_ms: r.started_ms,
                        cpu_ms: r.cpu_ms,
                        peak_mem_bytes: r.peak_mem_bytes,
                    },
                    at_ms: r.ended_ms.max(r.started_ms).min(now.max(r.started_ms)),
                }})
                .collect()
        };
        self.journal_then_apply(events).await?;
        Ok(results.iter().map(|r| r.attempt).collect())
    }

    /// An agent (re)joins: its finished results are recorded, attempts it no longer has are
    /// requeued, attempts the server no longer wants are to be killed.
    pub async fn on_register(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        if req.name.is_empty() || req.name.len() > 200 {
            return Err(Error::field("name", "must be 1 to 200 characters"));
        }
        if req.cpu_millis == 0 {
            return Err(Error::field("cpu_millis", "must be at least 1"));
        }
        let acked = self.on_results(&req.finished).await?;
        let known: HashSet<AttemptRef> = req
            .running
            .iter()
            .copied()
            .chain(req.finished.iter().map(|r| r.attempt))
            .collect();
        let _gate = self.apply_gate.read().await;
        let capacity = Resources {
            cpu_millis: req.cpu_millis,
            mem_bytes: req.mem_bytes,
            n_gpus: req.gpus,
            ..Resources::default()
        };
        let named: Vec<(String, u64)> = req.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let (session, requeues, kills) = {
            let mut inner = self.lock();
            let node_id = inner.cluster.add_node_with(&req.name, &req.pool, capacity, &req.features, &named);
            inner.cluster.set_node_overflow(node_id, req.overflow);
            inner.cluster.set_node_online(node_id, true);
            let session = inner.next_session_id;
            inner.next_session_id += 1;
            if let Some(old) = inner.sessions.insert(
                node_id,
                Session {
                    id: session,
                    launches: Vec::new(),
                    kills: Vec::new(),
                    log_reads: Vec::new(),
                    wake: Arc::new(Notify::new()),
                    last_seen: Instant::now(),
                },
            ) {
                old.wake.notify_one();
            }
            let mut requeues = Vec::new();
            let mut wanted = HashSet::new();
            for (job_id, pos, attempt) in inner.cluster.running_on(node_id) {
                let index = inner.index_of(job_id, pos);
                let a = AttemptRef { job_id: job_id.0, index, attempt };
                wanted.insert(a);
                if !known.contains(&a) {
                    requeues.push(Event::TaskRequeued { job_id: job_id.0, index, attempt, at_ms: now_ms() });
                }
            }
            let kills: Vec<AttemptRef> = req
                .running
                .iter()
                .filter(|a| !wanted.contains(a) || inner.cancel_pending.contains(a))
                .copied()
                .collect();
            (session, requeues, kills)
        };
        if !requeues.is_empty() {
            tracing::warn!(node = %req.name, n = requeues.len(), "agent lost attempts; requeued");
        }
        self.journal_then_apply(requeues).await?;
        tracing::info!(node = %req.name, cpus = %format_cores(req.cpu_millis), "agent registered");
        // A node came online: there may be work for it.
        self.schedule_wanted.notify_one();
        Ok(RegisterResponse { session, acked, kill: kills })
    }

    /// Hands an agent its work, waiting up to the hold time for some.
    pub async fn on_poll(&self, session: u64) -> Result<PollResponse> {
        let wake = {
            let mut inner = self.lock();
            let Some(s) = inner.session_mut(session) else {
                return Ok(PollResponse { reregister: true, ..PollResponse::default() });
            };
            s.last_seen = Instant::now();
            if !s.launches.is_empty() || !s.kills.is_empty() || !s.log_reads.is_empty() {
                return Ok(s.take_work());
            }
            s.wake.clone()
        };
        let hold = self.config.poll_hold_ms.min(self.config.agent_lease_ms / 3).max(100);
        let _ = tokio::time::timeout(Duration::from_millis(hold), wake.notified()).await;
        let mut inner = self.lock();
        let Some(s) = inner.session_mut(session) else {
            return Ok(PollResponse { reregister: true, ..PollResponse::default() });
        };
        s.last_seen = Instant::now();
        Ok(s.take_work())
    }

    /// An agent stopping in order: its node takes no new work (the attempts it still runs
    /// report as they stop); its next registration brings it back. False for a stale session.
    pub fn on_leave(&self, session: u64) -> bool {
        let mut inner = self.lock();
        let Some(node_id) = inner.sessions.iter().find(|(_, s)| s.id == session).map(|(id, _)| *id) else { return false };
        inner.cluster.set_node_online(node_id, false);
        true
    }

    /// The journal writer, for tests that make it fail.
    #[cfg(test)]
    pub(crate) fn writer_for_tests(&self) -> &JournalWriter {
        &self.writer
    }

    /// True when `session` is an agent's current session.
    pub fn session_is_current(&self, session: u64) -> bool {
        self.lock().sessions.values().any(|s| s.id == session)
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
            let now = now_ms();
            let decisions = inner.cluster.schedule(now);
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
                events.push(Event::TaskDispatched {
                    job_id: p.job_id.0,
                    index: p.index,
                    attempt: p.attempt,
                    node,
                    at_ms: now,
                });
            }
            (events, launches, placed)
        };
        let n = events.len();
        if let Err(e) = self.writer.append(events).await {
            // Journal first: the core applied its placements already; with no row behind
            // them they are taken back, so nothing runs that a restart would not know of.
            let mut inner = self.lock();
            let now = now_ms();
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

    /// Nodes whose agent has been silent past the lease are lost: their sessions end and every
    /// attempt they ran goes back to the queue as a new attempt. If the agent comes back, its
    /// registration kills those stale attempts and their reports change nothing.
    pub async fn expire_leases(&self) -> Result<()> {
        let _gate = self.apply_gate.read().await;
        let limit = Duration::from_millis(self.config.agent_lease_ms);
        let events: Vec<Event> = {
            let mut inner = self.lock();
            let lost: Vec<NodeId> =
                inner.sessions.iter().filter(|(_, s)| s.last_seen.elapsed() > limit).map(|(id, _)| *id).collect();
            let mut events = Vec::new();
            for node_id in lost {
                if let Some(old) = inner.sessions.remove(&node_id) {
                    old.wake.notify_one();
                }
                inner.cluster.set_node_online(node_id, false);
                let name = inner.cluster.node(node_id).map(|n| n.name().to_string()).unwrap_or_default();
                let running = inner.cluster.running_on(node_id);
                tracing::warn!(node = %name, n_requeued = running.len(), "agent lease expired; node lost");
                for (job_id, pos, attempt) in running {
                    let index = inner.index_of(job_id, pos);
                    events.push(Event::TaskRequeued { job_id: job_id.0, index, attempt, at_ms: now_ms() });
                }
            }
            events
        };
        self.journal_then_apply(events).await
    }

    /// Drains a node by name (finishes what runs, takes nothing new) or puts it back.
    pub async fn on_drain(&self, node: &str, draining: bool) -> Result<()> {
        if self.lock().cluster.node_id(node).is_none() {
            return Err(Error::NotFound(format!("node {node} does not exist")));
        }
        let _gate = self.apply_gate.read().await;
        let event = Event::NodeDrained { node: node.to_string(), draining, at_ms: now_ms() };
        self.journal_then_apply(vec![event]).await
    }

    /// The jobs visible to `project` (all for `None`), active ones only when asked, and how many
    /// finished ones that left out.
    pub fn job_views(&self, active_only: bool, project: Option<&str>) -> (Vec<JobView>, usize) {
        let inner = self.lock();
        let mut hidden = 0;
        let views = inner
            .cluster
            .jobs()
            .filter(|j| project.is_none_or(|p| j.spec().project == p))
            .filter(|j| {
                let shown = !active_only || !j.is_finished();
                hidden += usize::from(!shown);
                shown
            })
            .filter_map(|j| inner.job_view(j.id()))
            .collect();
        (views, hidden)
    }

    /// One job; with `with_tasks`, every task's detail from the journal.
    pub fn job_view(&self, job_id: u64, with_tasks: bool) -> Result<JobView> {
        let (mut view, states) = {
            let inner = self.lock();
            let view = inner
                .job_view(JobId(job_id))
                .ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
            let states: Vec<(u32, TaskState, Option<RunOf>)> = if with_tasks {
                let job = inner.cluster.job(JobId(job_id));
                job.map(|job| {
                    (0..job.counts().total())
                        .map(|pos| {
                            let run = job.running_task(pos).map(|r| {
                                let node = inner.cluster.node(r.node_id).map(|n| n.name().to_string()).unwrap_or_default();
                                (node, r.attempt, r.started_ms)
                            });
                            (
                                job.spec().array.index_at(pos).unwrap_or(pos),
                                job.task_state(pos).unwrap_or(TaskState::Pending),
                                run,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            (view, states)
        };
        if with_tasks {
            let records = self
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .task_records(job_id)?;
            let by_index: HashMap<u32, &tidepool_store::TaskRecord> =
                records.iter().map(|r| (r.index, r)).collect();
            view.tasks = states
                .into_iter()
                .map(|(index, state, run)| {
                    let rec = by_index.get(&index);
                    let mut t = TaskView {
                        index,
                        state: state.name().to_string(),
                        attempt: rec.map_or(0, |r| r.attempt),
                        node: rec.and_then(|r| r.node.clone()),
                        started_ms: rec.and_then(|r| r.dispatched_ms),
                        ended_ms: None,
                        exit_code: None,
                        signal: None,
                        cpu_ms: None,
                        peak_mem_bytes: None,
                    };
                    if let Some((node, attempt, started)) = run {
                        t.node = Some(node);
                        t.attempt = attempt;
                        t.started_ms = Some(started);
                    } else if let Some(ending) = rec.and_then(|r| r.ending) {
                        if ending.started_ms > 0 {
                            t.started_ms = Some(ending.started_ms);
                        }
                        t.ended_ms = rec.and_then(|r| r.ended_ms);
                        t.exit_code = ending.exit_code;
                        t.signal = ending.signal;
                        t.cpu_ms = Some(ending.cpu_ms);
                        t.peak_mem_bytes = Some(ending.peak_mem_bytes);
                    }
                    t
                })
                .collect();
        }
        Ok(view)
    }

    /// The node that holds a task's output (where it runs, or where it last ran), and whether
    /// the task has ended for good.
    pub fn log_node(&self, job_id: u64, index: u32) -> Result<(String, bool)> {
        let inner = self.lock();
        let job = inner.cluster.job(JobId(job_id)).ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
        let pos = pos_of(&inner.cluster, JobId(job_id), index)
            .ok_or_else(|| Error::NotFound(format!("job {job_id} has no task {index}")))?;
        let ended = job.task_state(pos).is_some_and(|s| !matches!(s, TaskState::Pending | TaskState::Running));
        let running_on = job.running_task(pos).and_then(|r| inner.cluster.node(r.node_id)).map(|n| n.name().to_string());
        drop(inner);
        let node = match running_on {
            Some(n) => n,
            None => self
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .task_records(job_id)?
                .into_iter()
                .find(|r| r.index == index)
                .and_then(|r| r.node)
                .ok_or_else(|| Error::NotFound(format!("task {job_id}.{index} has not run yet")))?,
        };
        Ok((node, ended))
    }

    /// Hands `read` to the agent of `node` and wakes it, its answer to go to `answer`; false when
    /// no agent of that node is connected.
    pub fn ask_agent(&self, node: &str, read: tidepool_api::LogRead, answer: crate::logs::AnswerTo) -> bool {
        let mut inner = self.lock();
        let Some(session) = inner.cluster.node_id(node).and_then(|id| inner.sessions.get_mut(&id)) else { return false };
        // Awaited before the agent can see the read, so its answer always finds it.
        self.log_relay.expect(read.request, session.id, answer);
        session.log_reads.push(read);
        session.wake.notify_one();
        true
    }

    /// Every node.
    pub fn node_views(&self) -> Vec<NodeView> {
        let inner = self.lock();
        inner
            .cluster
            .nodes()
            .map(|(_, n)| {
                let cap = n.capacity();
                let alloc = n.allocated();
                let state = if !n.is_online() {
                    "down"
                } else if n.is_draining() && n.n_running() > 0 {
                    "draining"
                } else if n.is_draining() {
                    "drained"
                } else if n.n_running() == 0 {
                    "idle"
                } else if n.free().cpu_millis == 0 {
                    "allocated"
                } else {
                    "mixed"
                };
                NodeView {
                    name: n.name().to_string(),
                    pool: n.pool().to_string(),
                    state: state.to_string(),
                    cpus: cap.cpu_millis as f64 / 1000.0,
                    cpus_allocated: alloc.cpu_millis as f64 / 1000.0,
                    mem_bytes: cap.mem_bytes,
                    mem_allocated_bytes: alloc.mem_bytes,
                    gpus: cap.n_gpus,
                    n_running: n.n_running(),
                    n_queued: n.n_queued(),
                }
            })
            .collect()
    }
}

impl Inner {
    fn snapshot_json(&self) -> String {
        let mut jobs = Vec::new();
        for job in self.cluster.jobs() {
            let c = job.counts();
            let Some(snap) = self.cluster.task_snapshot(job.id()) else { continue };
            // A job none of whose tasks ever started is restored by its submission alone.
            if c.pending == c.total() && snap.next_fresh == 0 && snap.requeued.is_empty() && snap.attempts.is_empty() {
                continue;
            }
            let node_name = |id: NodeId| self.cluster.node(id).map(|n| n.name().to_string()).unwrap_or_default();
            jobs.push(serde_json::json!({
                "id": job.id().0,
                "runs": snap.runs.iter().map(|(s, n)| [*s as u8 as u64, u64::from(*n)]).collect::<Vec<_>>(),
                "next_fresh": snap.next_fresh,
                "requeued": snap.requeued,
                "attempts": snap.attempts,
                "running": snap.running.iter().map(|(pos, node, attempt, started, checkpoint)| serde_json::json!([pos, node_name(*node), attempt, started, checkpoint])).collect::<Vec<_>>(),
                "ended_ms": snap.ended_ms,
            }));
        }
        let draining: Vec<&str> = self.cluster.nodes().filter(|(_, n)| n.is_draining()).map(|(_, n)| n.name()).collect();
        let refs = |set: &HashSet<AttemptRef>| set.iter().map(|a| [a.job_id, u64::from(a.index), u64::from(a.attempt)]).collect::<Vec<_>>();
        serde_json::json!({
            "version": 1,
            "jobs": jobs,
            "draining": draining,
            "cancel_pending": refs(&self.cancel_pending),
            "preempt_pending": refs(&self.preempt_pending),
        })
        .to_string()
    }

    fn restore_snapshot(&mut self, data: &str) -> std::result::Result<(), String> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let num = |v: &Value| v.as_u64().unwrap_or(0);
        for job in v["jobs"].as_array().cloned().unwrap_or_default() {
            let job_id = JobId(num(&job["id"]));
            let mut running = Vec::new();
            for r in job["running"].as_array().cloned().unwrap_or_default() {
                let name = r[1].as_str().unwrap_or_default().to_string();
                let node_id = match self.cluster.node_id(&name) {
                    Some(id) => id,
                    None => self.cluster.add_node(&name, "", Resources::default()),
                };
                running.push((num(&r[0]) as u32, node_id, num(&r[2]) as u32, num(&r[3]), num(&r[4])));
            }
            let pairs = |key: &str| -> Vec<(u32, u32)> {
                job[key].as_array().map(|a| a.iter().map(|p| (num(&p[0]) as u32, num(&p[1]) as u32)).collect()).unwrap_or_default()
            };
            let runs: Vec<(TaskState, u32)> = job["runs"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| Some((tidepool_core::cluster::task_state_from_u8(num(&p[0]) as u8)?, num(&p[1]) as u32))).collect())
                .unwrap_or_default();
            let snap = tidepool_core::TaskSnapshot {
                runs,
                next_fresh: num(&job["next_fresh"]) as u32,
                requeued: job["requeued"].as_array().map(|a| a.iter().map(|x| num(x) as u32).collect()).unwrap_or_default(),
                attempts: pairs("attempts"),
                running,
                ended_ms: job["ended_ms"].as_u64(),
            };
            if self.cluster.job(job_id).is_some() {
                self.cluster.restore_tasks(job_id, &snap)?;
            }
        }
        for name in v["draining"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = name.as_str().and_then(|n| self.cluster.node_id(n)) {
                self.cluster.set_node_draining(id, true);
            }
        }
        let refs = |key: &str| -> HashSet<AttemptRef> {
            v[key].as_array().map(|a| a.iter().map(|r| AttemptRef { job_id: num(&r[0]), index: num(&r[1]) as u32, attempt: num(&r[2]) as u32 }).collect()).unwrap_or_default()
        };
        self.cancel_pending = refs("cancel_pending");
        self.preempt_pending = refs("preempt_pending");
        Ok(())
    }

    fn session_mut(&mut self, session: u64) -> Option<&mut Session> {
        self.sessions.values_mut().find(|s| s.id == session)
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
                let parsed = serde_json::from_str::<SubmitRequest>(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|req| {
                        spec::validate(&req, u32::MAX).map(|s| (req, s)).map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok((req, spec)) => {
                        self.cluster.submit(JobId(job_id), spec, at_ms);
                        self.requests.insert(JobId(job_id), Arc::new(req));
                    }
                    Err(e) => tracing::error!(job_id, error = %e, "journaled job unreadable; skipped"),
                }
            }
            Event::TaskDispatched { job_id, index, attempt, node, at_ms } => {
                let node_id = match self.cluster.node_id(&node) {
                    Some(id) => id,
                    None => self.cluster.add_node(&node, "", Resources::default()),
                };
                if let Some(pos) = pos_of(&self.cluster, JobId(job_id), index) {
                    if let Err(e) = self.cluster.apply_dispatch(JobId(job_id), pos, attempt, node_id, at_ms) {
                        tracing::warn!(error = %e, "dispatch in the journal not applied");
                    }
                }
            }
            Event::TaskEnded { job_id, index, attempt, outcome, ending, at_ms } => {
                if let Some(pos) = pos_of(&self.cluster, JobId(job_id), index) {
                    let ran_ms = at_ms.saturating_sub(ending.started_ms);
                    self.cluster.finish_after(JobId(job_id), pos, attempt, core_outcome(outcome), at_ms, ran_ms);
                }
                self.cancel_pending.remove(&AttemptRef { job_id, index, attempt });
                self.preempt_pending.remove(&AttemptRef { job_id, index, attempt });
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
            }
        }
    }

    fn launch_for(&self, config: &Config, job_id: JobId, index: u32, attempt: u32, node: &str) -> Option<Launch> {
        let req = self.requests.get(&job_id)?;
        let spec = self.cluster.job(job_id)?.spec();
        let (stdout_path, stderr_path, discard_empty_output) =
            output_paths(config, req, spec, job_id.0, index, node);
        let nodelist = if spec.gang.is_some() {
            let job = self.cluster.job(job_id)?;
            let mut names: Vec<&str> = job
                .running_tasks()
                .filter_map(|(_, r)| self.cluster.node(r.node_id).map(|n| n.name()))
                .collect();
            names.sort_unstable();
            names.dedup();
            names.join(",")
        } else {
            node.to_string()
        };
        Some(Launch {
            attempt: AttemptRef { job_id: job_id.0, index, attempt },
            command: req.command.clone(),
            script: req.script.clone(),
            env: {
                let mut env = spec::task_env(req, spec, job_id.0, index, attempt, node, &nodelist, &config.public_url);
                if let Some(secrets) = self.secrets.get(&job_id) {
                    env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                env
            },
            workdir: req.workdir.clone().unwrap_or_else(|| "/".into()),
            stdout_path,
            stderr_path,
            time_limit_s: spec.time_limit_s,
            cpu_millis: spec.per_task.cpu_millis,
            mem_bytes: spec.per_task.mem_bytes,
            discard_empty_output,
        })
    }

    fn job_view(&self, job_id: JobId) -> Option<JobView> {
        let job = self.cluster.job(job_id)?;
        let req = self.requests.get(&job_id)?;
        let spec = job.spec();
        let c = job.counts();
        let reason = self.cluster.why_pending(job_id);
        let mut pending = String::new();
        if c.pending > 0 {
            pending = pending_ranges(job);
        }
        let tasks = job
            .running_tasks()
            .map(|(pos, r)| TaskView {
                index: spec.array.index_at(pos).unwrap_or(pos),
                state: "running".into(),
                attempt: r.attempt,
                node: self.cluster.node(r.node_id).map(|n| n.name().to_string()),
                started_ms: Some(r.started_ms),
                ended_ms: None,
                exit_code: None,
                signal: None,
                cpu_ms: None,
                peak_mem_bytes: None,
            })
            .collect::<Vec<_>>();
        let mut tasks = tasks;
        tasks.sort_by_key(|t| t.index);
        Some(JobView {
            id: job_id.0,
            name: spec.name.clone(),
            project: spec.project.clone(),
            tier: spec.tier.name().to_string(),
            pool: spec.pool.clone(),
            state: job_state(&c).to_string(),
            array: req.array.as_ref().map(|_| spec.array.to_string()),
            n_tasks: c.total(),
            counts: TaskCountsView {
                pending: c.pending,
                running: c.running,
                succeeded: c.succeeded,
                failed: c.failed,
                cancelled: c.cancelled,
                timeout: c.timeout,
            },
            cpus: spec.per_task.cpu_millis as f64 / 1000.0,
            mem_bytes: spec.per_task.mem_bytes,
            gpus: spec.per_task.n_gpus,
            time_limit_s: spec.time_limit_s,
            submitted_ms: job.submitted_ms(),
            ended_ms: job.ended_ms(),
            pending_code: reason.as_ref().map(|r| r.code.to_string()),
            pending_reason: reason.map(|r| r.text),
            pending_indices: pending,
            command: if req.command.is_empty() { vec!["(script)".into()] } else { req.command.clone() },
            workdir: req.workdir.clone().unwrap_or_default(),
            tasks,
        })
    }
}

/// Writes a job's secret values to their own file (mode 0600), durably, before the job is
/// journaled.
fn save_secrets(dir: &std::path::Path, job_id: u64, secrets: &std::collections::BTreeMap<String, String>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::Internal(format!("storing secret values: {e}"));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let text = serde_json::to_string(secrets).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = dir.join(format!("{job_id}.tmp"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, dir.join(format!("{job_id}.json"))).map_err(fail)
}

fn load_secrets(dir: &std::path::Path) -> HashMap<JobId, std::collections::BTreeMap<String, String>> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) else { continue };
        if let Some(values) = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            out.insert(JobId(id), values);
        }
    }
    out
}

/// A job's state from its task counts, as `tidepool jobs` shows it.
pub fn job_state(c: &TaskCounts) -> &'static str {
    if c.running > 0 {
        "running"
    } else if c.pending > 0 {
        "pending"
    } else if c.failed > 0 {
        "failed"
    } else if c.timeout > 0 {
        "timeout"
    } else if c.cancelled > 0 {
        "cancelled"
    } else {
        "succeeded"
    }
}

fn pending_ranges(job: &tidepool_core::cluster::Job) -> String {
    let spec = job.spec();
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for pos in 0..job.counts().total() {
        let Some(index) = spec.array.index_at(pos) else { break };
        let pending = job.task_state(pos) == Some(TaskState::Pending);
        run = match (run, pending) {
            (Some((a, b)), true) if index == b + 1 => Some((a, index)),
            (prev, true) => {
                if let Some(r) = prev {
                    out.push(fmt_range(r));
                }
                Some((index, index))
            }
            (prev, false) => {
                if let Some(r) = prev {
                    out.push(fmt_range(r));
                }
                None
            }
        };
        if out.len() > 50 {
            out.push("...".into());
            return out.join(",");
        }
    }
    if let Some(r) = run {
        out.push(fmt_range(r));
    }
    out.join(",")
}

fn fmt_range((a, b): (u32, u32)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Where a task's output goes: (stdout, stderr, discard when empty).
fn output_paths(
    config: &Config,
    req: &SubmitRequest,
    spec: &JobSpec,
    job_id: u64,
    index: u32,
    node: &str,
) -> (String, String, bool) {
    let workdir = req.workdir.clone().unwrap_or_else(|| "/".into());
    let user = req.env.get("USER").map(String::as_str).unwrap_or("");
    let values = PatternValues { job_id, index, name: &spec.name, node, user };
    let expand = |p: &str| spec::under_workdir(&workdir, &spec::expand_pattern(p, &values));
    let slurm_default = if req.array.is_some() { "slurm-%A_%a.out" } else { "slurm-%j.out" };
    match (&req.output, &req.error) {
        (None, None) if req.script.is_none() => {
            let dir = config.data_dir.join("logs").join(job_id.to_string());
            let base = dir.join(index.to_string());
            (
                format!("{}.out", base.display()),
                format!("{}.err", base.display()),
                true,
            )
        }
        (None, None) => {
            let out = expand(slurm_default);
            (out.clone(), out, false)
        }
        (Some(o), None) => {
            let out = expand(o);
            (out.clone(), out, false)
        }
        (None, Some(e)) => (expand(slurm_default), expand(e), false),
        (Some(o), Some(e)) => (expand(o), expand(e), false),
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
    }
}
