//! The reactor in process: a real server state over an in-memory store (the conformance suite
//! holds it to SQLite's behaviour), agents as sessions driven by hand, time on a virtual clock
//! the test moves; no binary, no network, no waiting.

use crate::clock::Clock;
use crate::state::Shared;
use crate::Config;
use tidepool_api::{AttemptOutcome, JobView, Launch, RegisterRequest, SubmitRequest, TaskResult};
use tidepool_store::MemoryStore;

/// A directory removed when the test ends (tokens and secrets still live in files).
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server over a memory store and a virtual clock; `restart` opens another on the same store.
struct Harness {
    dir: Dir,
    store: MemoryStore,
    clock: Clock,
    shared: Shared,
}

const LEASE_MS: u64 = 60_000;

impl Harness {
    fn new(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("tidepool-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = MemoryStore::new();
        let clock = Clock::manual(1_700_000_000_000);
        let shared = Harness::open(&dir, &store, &clock);
        Harness { dir: Dir(dir), store, clock, shared }
    }

    fn open(dir: &std::path::Path, store: &MemoryStore, clock: &Clock) -> Shared {
        let mut config = Config::new(dir.to_path_buf(), "http://127.0.0.1:1".into());
        config.clock = clock.clone();
        config.agent_lease_ms = LEASE_MS;
        config.poll_hold_ms = 100;
        Shared::open_on(config, Box::new(store.clone())).unwrap()
    }

    /// A new server on the same store, as after `kill -9`.
    fn restart(&mut self) {
        self.shared = Harness::open(&self.dir.0, &self.store, &self.clock);
    }

    async fn join(&self, name: &str, cpus: u64) -> u64 {
        self.shared.on_register(node(name, cpus)).await.unwrap().session
    }

    fn view(&self, job: u64) -> JobView {
        self.shared.job_view(job, false).unwrap()
    }

    /// What the journal decides about a job and its tasks: its view without the reason it
    /// waits, which also depends on which agents are connected right now.
    fn journaled(&self, job: u64) -> JobView {
        JobView { pending_code: None, pending_reason: None, ..self.shared.job_view(job, true).unwrap() }
    }

    fn counts(&self, job: u64) -> (u32, u32, u32) {
        let c = self.view(job).counts;
        (c.pending, c.running, c.succeeded)
    }
}

fn node(name: &str, cpus: u64) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        pool: "local".into(),
        cpu_millis: cpus * 1000,
        mem_bytes: 1 << 30,
        gpus: 0,
        features: vec![],
        resources: Default::default(),
        overflow: false,
        identities: tidepool_api::Identities { project_uids: true, operator_uid: Some(4242) },
        running: vec![],
        finished: vec![],
    }
}

fn array(range: &str) -> SubmitRequest {
    SubmitRequest { command: vec!["true".into()], array: Some(range.into()), workdir: Some("/tmp".into()), ..SubmitRequest::default() }
}

fn succeeded(launch: &Launch, at_ms: u64) -> TaskResult {
    TaskResult {
        attempt: launch.attempt,
        outcome: AttemptOutcome::Succeeded,
        exit_code: Some(0),
        signal: None,
        started_ms: at_ms,
        ended_ms: at_ms + 5,
        cpu_ms: 1,
        peak_mem_bytes: 1 << 20,
        message: None,
    }
}

#[tokio::test]
async fn a_no_requeue_job_fails_with_its_lost_node_and_does_not_run_again() {
    let h = Harness::new("no-requeue");
    let quiet = h.join("quiet", 2).await;
    let job = h.shared.on_submit(SubmitRequest { requeue: Some(false), ..array("0-1") }).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    assert_eq!(h.shared.on_poll(quiet).await.unwrap().launch.len(), 2);
    h.clock.advance(LEASE_MS + 1);
    h.shared.expire_leases().await.unwrap();
    let v = h.view(job);
    assert_eq!((v.counts.pending, v.counts.running, v.counts.failed), (0, 0, 2), "failed, not requeued");
    assert_eq!(v.state, "failed");
    let _ = h.join("busy", 2).await;
    assert_eq!(h.shared.schedule_pass().await.unwrap(), 0, "nothing runs again");
}

#[tokio::test]
async fn a_private_image_is_pulled_ahead_with_its_projects_login_and_no_other() {
    let h = Harness::new("pull-login");
    let mut features = node("n1", 4);
    features.features = vec![tidepool_api::CONTAINER_FEATURE.to_string()];
    let session = h.shared.on_register(features).await.unwrap().session;
    for (project, uid) in [("chem", 5001), ("bio", 5002)] {
        let req = tidepool_api::ProjectRequest { name: project.into(), quota: None, borrow: None, share: None, uid: Some(uid), gid: Some(uid), groups: vec![] };
        h.shared.on_create_project(&req).unwrap();
    }
    let chem = crate::state::Principal::Project("chem".into());
    let login = tidepool_api::RegistryLoginRequest { host: "reg.example:5000".into(), username: "chem-bot".into(), password: "s3cret".into(), project: None };
    h.shared.on_registry_login(&chem, login).unwrap();
    let image = |project: &str| SubmitRequest { image: Some("reg.example:5000/sim:1".into()), project: Some(project.into()), ..array("0-1") };
    h.shared.on_submit(image("chem")).await.unwrap();
    h.shared.on_submit(image("bio")).await.unwrap();
    let work = h.shared.on_poll(session).await.unwrap();
    assert_eq!(work.pull_with_login.len(), 1, "chem's, with its login");
    assert_eq!((work.pull_with_login[0].login.username.as_str(), work.pull_with_login[0].login.password.as_str()), ("chem-bot", "s3cret"));
    assert_eq!(work.pull, ["reg.example:5000/sim:1"], "bio has no login: pulled as anyone would");
}

#[tokio::test]
async fn a_failed_journal_append_takes_the_dispatches_back() {
    let mut h = Harness::new("undo");
    let session = h.join("n1", 2).await;
    let job = h.shared.on_submit(array("0-3")).await.unwrap();

    h.store.fail_next_append();
    assert!(h.shared.schedule_pass().await.is_err(), "the append failed");
    assert_eq!(h.counts(job), (4, 0, 0), "nothing runs without its row");

    // The next pass places them again, journaled, and the agent gets exactly those.
    assert_eq!(h.shared.schedule_pass().await.unwrap(), 2);
    let work = h.shared.on_poll(session).await.unwrap();
    assert_eq!(work.launch.len(), 2);
    assert_eq!(h.counts(job), (2, 2, 0));

    // What a restart replays agrees with what ran.
    h.restart();
    assert_eq!(h.counts(job), (2, 2, 0));
}

#[tokio::test]
async fn a_silent_agent_loses_its_node_at_the_lease_and_its_work_runs_elsewhere() {
    let h = Harness::new("lease");
    let quiet = h.join("quiet", 2).await;
    let job = h.shared.on_submit(array("0-1")).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    let first = h.shared.on_poll(quiet).await.unwrap().launch;
    assert_eq!(first.len(), 2);

    // Just inside the lease nothing changes; just past it, the node is lost.
    h.clock.advance(LEASE_MS);
    h.shared.expire_leases().await.unwrap();
    assert_eq!(h.counts(job), (0, 2, 0));
    h.clock.advance(1);
    h.shared.expire_leases().await.unwrap();
    assert_eq!(h.counts(job), (2, 0, 0), "both attempts requeued");

    let busy = h.join("busy", 2).await;
    h.shared.schedule_pass().await.unwrap();
    let second = h.shared.on_poll(busy).await.unwrap().launch;
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|l| l.attempt.attempt == 2), "new attempts: {second:?}");

    // A late report of the lost attempts changes nothing; the new ones count.
    let now = h.clock.now_ms();
    let stale: Vec<TaskResult> = first.iter().map(|l| succeeded(l, now)).collect();
    h.shared.on_results(&stale).await.unwrap();
    assert_eq!(h.counts(job), (0, 2, 0), "a stale report finished a task");
    let fresh: Vec<TaskResult> = second.iter().map(|l| succeeded(l, now)).collect();
    h.shared.on_results(&fresh).await.unwrap();
    assert_eq!(h.counts(job), (0, 0, 2));
}

#[tokio::test]
async fn a_restart_from_a_snapshot_or_from_a_damaged_one_rebuilds_the_same_state() {
    let mut h = Harness::new("snapshot");
    let session = h.join("n1", 3).await;
    let done = h.shared.on_submit(array("0-2")).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    let launches = h.shared.on_poll(session).await.unwrap().launch;
    let now = h.clock.now_ms();
    h.shared.on_results(&launches.iter().map(|l| succeeded(l, now)).collect::<Vec<_>>()).await.unwrap();
    let running = h.shared.on_submit(array("0-9")).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    h.shared.take_snapshot().await.unwrap();
    // Events after the snapshot: one more task ends.
    let more = h.shared.on_poll(session).await.unwrap().launch;
    assert_eq!(more.len(), 3);
    h.shared.on_results(&[succeeded(&more[0], now)]).await.unwrap();
    h.shared.on_drain("n1", true).await.unwrap();
    let before = (h.journaled(done), h.journaled(running));
    assert_eq!(h.view(running).pending_code.as_deref(), Some("ReqNodeNotAvail"));

    h.restart();
    assert_eq!((h.journaled(done), h.journaled(running)), before, "from the snapshot");

    h.store.damage_snapshot();
    h.restart();
    assert_eq!((h.journaled(done), h.journaled(running)), before, "by full replay");
    assert_eq!(h.counts(running), (7, 2, 1));
}

#[tokio::test]
async fn a_cancel_ends_pending_tasks_at_once_and_tells_the_agent_to_stop_the_running_ones() {
    let mut h = Harness::new("cancel");
    let session = h.join("n1", 2).await;
    let job = h.shared.on_submit(array("0-4")).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    let launched = h.shared.on_poll(session).await.unwrap().launch;
    assert_eq!(launched.len(), 2);

    let answer = h.shared.on_cancel(job, None).await.unwrap();
    assert_eq!((answer.n_cancelled, answer.n_signalled), (3, 2));
    let told = h.shared.on_poll(session).await.unwrap().kill;
    let mut expected: Vec<_> = launched.iter().map(|l| l.attempt).collect();
    let mut got = told.clone();
    expected.sort_by_key(|a| a.index);
    got.sort_by_key(|a| a.index);
    assert_eq!(got, expected, "the agent is told to stop exactly what it runs");
    // Until the agent reports, the two still run; a pass places nothing of a cancelled job.
    assert_eq!(h.shared.schedule_pass().await.unwrap(), 0);
    let stopped: Vec<TaskResult> =
        launched.iter().map(|l| TaskResult { outcome: AttemptOutcome::Cancelled, exit_code: None, signal: Some(15), ..succeeded(l, 0) }).collect();
    h.shared.on_results(&stopped).await.unwrap();
    let c = h.view(job).counts;
    assert_eq!((c.pending, c.running, c.cancelled), (0, 0, 5));
    assert!(h.shared.on_cancel(job, None).await.unwrap().already_ended);
    h.restart();
    assert_eq!(h.view(job).counts.cancelled, 5, "the cancel and the ends were journaled");
}

#[tokio::test]
async fn secret_values_reach_the_tasks_and_are_deleted_when_the_job_ends() {
    let mut h = Harness::new("secrets");
    let session = h.join("n1", 1).await;
    let secret = |range: &str| SubmitRequest { secret_env: [("API_KEY".to_string(), "s3cret-value".to_string())].into(), ..array(range) };
    let ends = h.shared.on_submit(secret("0-1")).await.unwrap();
    let cancelled = h.shared.on_submit(secret("0")).await.unwrap();
    let file = |job: u64| h.dir.0.join("secrets").join(format!("{job}.json"));
    assert!(file(ends).exists() && file(cancelled).exists());

    // One task at a time on one core: the second task still needs the secret after the first ends.
    h.shared.schedule_pass().await.unwrap();
    let first = h.shared.on_poll(session).await.unwrap().launch;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].env.get("API_KEY").map(String::as_str), Some("s3cret-value"));
    h.shared.on_results(&[succeeded(&first[0], 0)]).await.unwrap();
    assert!(file(ends).exists(), "deleted while a task still had to start");
    h.shared.schedule_pass().await.unwrap();
    let second = h.shared.on_poll(session).await.unwrap().launch;
    assert_eq!(second[0].env.get("API_KEY").map(String::as_str), Some("s3cret-value"));
    h.shared.on_results(&[succeeded(&second[0], 0)]).await.unwrap();
    assert!(!file(ends).exists(), "the job ended: its secret file is gone");

    h.shared.on_cancel(cancelled, None).await.unwrap();
    assert!(!file(cancelled).exists(), "a cancelled job's secret file is gone");
    h.restart();
    assert!(!h.dir.0.join("secrets").join(format!("{ends}.json")).exists());
}

#[tokio::test]
async fn a_failed_gpu_stops_its_task_to_run_again_and_its_gpus_survive_a_restart() {
    let mut h = Harness::new("gpus");
    let session = h.shared.on_register(RegisterRequest { gpus: 2, ..node("g", 4) }).await.unwrap().session;
    let job = h.shared.on_submit(SubmitRequest { gpus: Some(1), ..array("0-1") }).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    let launched = h.shared.on_poll(session).await.unwrap().launch;
    let mut given: Vec<Vec<u32>> = launched.iter().map(|l| l.gpus.clone()).collect();
    given.sort();
    assert_eq!(given, [[0], [1]]);
    assert_eq!(launched[0].env["CUDA_VISIBLE_DEVICES"], launched[0].gpus[0].to_string());

    // A restart rebuilds who holds which GPU from the journal, so nothing new is given one.
    h.restart();
    let session = h.shared.on_register(RegisterRequest { gpus: 2, running: launched.iter().map(|l| l.attempt).collect(), ..node("g", 4) }).await.unwrap().session;
    let more = h.shared.on_submit(SubmitRequest { gpus: Some(1), ..array("0") }).await.unwrap();
    h.shared.schedule_pass().await.unwrap();
    assert!(h.shared.on_poll(session).await.unwrap().launch.is_empty(), "a GPU was given twice after a restart");
    assert_eq!(h.view(more).pending_code.as_deref(), Some("Resources"));

    // GPU 1 fails: the attempt on it is told to stop, and its end is a requeue, not a failure.
    let on_one = launched.iter().find(|l| l.gpus == [1]).unwrap();
    let failed = tidepool_api::GpuHealthReport { session, failed: vec![tidepool_api::GpuFailure { index: 1, reason: "XID 79".into() }] };
    assert!(h.shared.on_gpu_health(&failed).unwrap());
    assert_eq!(h.shared.on_poll(session).await.unwrap().kill, [on_one.attempt]);
    h.shared.on_results(&[TaskResult { outcome: AttemptOutcome::Cancelled, exit_code: None, signal: Some(15), ..succeeded(on_one, 0) }]).await.unwrap();
    assert_eq!(h.view(job).counts.failed, 0);
    assert_eq!(h.shared.node_views()[0].gpus_failed[0].reason, "XID 79");
    h.shared.schedule_pass().await.unwrap();
    assert!(h.shared.on_poll(session).await.unwrap().launch.is_empty(), "nothing goes to the failed GPU");
    // Put back by hand, it takes work again.
    h.shared.on_resume_gpu("g", 1).unwrap();
    assert!(h.shared.on_resume_gpu("g", 1).is_err(), "it has not failed any more");
    h.shared.schedule_pass().await.unwrap();
    let relaunched = h.shared.on_poll(session).await.unwrap().launch;
    assert_eq!(relaunched.len(), 1);
    assert_eq!(relaunched[0].gpus, [1]);
    let too_many = tidepool_api::GpuHealthReport { session, failed: vec![tidepool_api::GpuFailure { index: 7, reason: String::new() }] };
    assert!(h.shared.on_gpu_health(&too_many).is_err(), "a GPU the node does not have");
}
