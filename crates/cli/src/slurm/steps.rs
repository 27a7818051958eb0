//! Steps across the nodes of a multi-node batch allocation. The batch script's `srun` posts the
//! other nodes' ranks to the server ([`RemoteStep`]); on each of those nodes the allocation's
//! share runs `srun --step-host` ([`serve_as_step_host`]), which takes its ranks, runs them as
//! the job's identity inside the job's cgroup there, and sends back their lines and exits for
//! srun to print. Every connection dials out to the server with the job's step key: no node
//! listens.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;
use tidepool_api::{RankExit, StepLaunch, StepLine, StepProgress, StepReport, StepsForNode};
use tokio::io::AsyncBufReadExt;

/// What every rank of a step is told of it.
pub(super) struct StepShape {
    /// `SLURM_STEP_ID`.
    pub step_id: u32,
    /// Ranks of the whole step.
    pub ntasks: u32,
    /// The step's nodes, comma-separated.
    pub nodelist: String,
    /// How many nodes.
    pub n_nodes: u32,
    /// Ranks per node, compressed as Slurm writes it.
    pub tasks_per_node: String,
    /// Cores per rank.
    pub cpus_per_task: u32,
}

impl StepShape {
    /// Slurm's variables for `rank`, the `local` one of node `node` (whose ranks are `gtids`).
    pub(super) fn rank_vars(&self, rank: u32, node: u32, local: u32, gtids: &str) -> Vec<(String, String)> {
        [
            ("SLURM_STEP_ID", self.step_id.to_string()),
            ("SLURM_STEPID", self.step_id.to_string()),
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_LOCALID", local.to_string()),
            ("SLURM_NODEID", node.to_string()),
            ("SLURM_GTIDS", gtids.to_string()),
            ("SLURM_NTASKS", self.ntasks.to_string()),
            ("SLURM_NPROCS", self.ntasks.to_string()),
            ("SLURM_STEP_NUM_TASKS", self.ntasks.to_string()),
            ("SLURM_STEP_NUM_NODES", self.n_nodes.to_string()),
            ("SLURM_STEP_NODELIST", self.nodelist.clone()),
            ("SLURM_STEP_TASKS_PER_NODE", self.tasks_per_node.clone()),
            ("SLURM_TASKS_PER_NODE", self.tasks_per_node.clone()),
            ("SLURM_CPUS_PER_TASK", self.cpus_per_task.to_string()),
            ("PMI_RANK", rank.to_string()),
            ("PMI_SIZE", self.ntasks.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn of(launch: &StepLaunch) -> StepShape {
        let n_nodes = launch.nodelist.len().max(1) as u32;
        let counts: Vec<u64> = tidepool_server::spec::ranks_per_node(launch.ntasks, n_nodes).into_iter().map(u64::from).collect();
        StepShape {
            step_id: launch.step_id,
            ntasks: launch.ntasks,
            nodelist: launch.nodelist.join(","),
            n_nodes,
            tasks_per_node: tidepool_server::spec::compressed_counts(&counts),
            cpus_per_task: launch.cpus_per_task,
        }
    }
}

/// Variables that belong to the node a rank runs on, not to the srun that started it.
const NODE_LOCAL: &[&str] = &[
    "SLURMD_NODENAME", "SLURM_NODEID", "SLURM_CPUS_ON_NODE", "SLURM_TOPOLOGY_ADDR", "TIDEPOOL_TASK_INDEX", "TIDEPOOL_ATTEMPT",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "TIDEPOOL_GPUS", "HOSTNAME",
];

/// Why a call to the server failed.
enum CallError {
    /// The job or step no longer exists there (the allocation ended, or the server restarted).
    Gone(String),
    /// Anything else, which may pass.
    Other(String),
}

impl CallError {
    fn text(self) -> String {
        match self {
            CallError::Gone(t) | CallError::Other(t) => t,
        }
    }
}

/// The server, reached with the job's step key.
#[derive(Clone)]
struct StepClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl StepClient {
    fn from_env() -> Result<StepClient, String> {
        let key = std::env::var("TIDEPOOL_STEP_KEY").map_err(|_| "no TIDEPOOL_STEP_KEY: steps across nodes run only inside a multi-node batch allocation".to_string())?;
        let url = std::env::var("TIDEPOOL_URL").map_err(|_| "no TIDEPOOL_URL in the task's environment".to_string())?;
        let ca = std::env::var_os("TIDEPOOL_CA_CERT").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        let http = tidepool_agent::api_client(ca.as_deref(), Duration::from_secs(60))?;
        Ok(StepClient { http, base: format!("{}{}", url.trim_end_matches('/'), tidepool_api::API_PREFIX), key })
    }

    async fn answer<T: DeserializeOwned>(resp: Result<reqwest::Response, reqwest::Error>) -> Result<T, CallError> {
        let resp = resp.map_err(|e| CallError::Other(format!("the server did not answer: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CallError::Gone(resp.text().await.unwrap_or_default()));
        }
        if !status.is_success() {
            return Err(CallError::Other(format!("the server answered {status}: {}", resp.text().await.unwrap_or_default())));
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_str("null").map_err(|e| CallError::Other(e.to_string()));
        }
        resp.json().await.map_err(|e| CallError::Other(format!("the server's answer: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        StepClient::answer(self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, CallError> {
        StepClient::answer(self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(body).send().await).await
    }
}

/// A rank on another node that ended badly.
pub(super) struct RemoteExit {
    /// Its node's number.
    pub node: u32,
    /// The rank.
    pub rank: u32,
    /// Its exit code.
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

/// What [`RemoteStep::follow`] learnt.
pub(super) struct News {
    /// Ranks on other nodes that ended badly since the last look.
    pub bad_exits: Vec<RemoteExit>,
}

/// The part of a step that runs on the allocation's other nodes, as its srun follows it.
pub(super) struct RemoteStep {
    client: StepClient,
    job: String,
    launch: StepLaunch,
    after: u64,
    exits_seen: usize,
    done_nodes: BTreeSet<u32>,
}

impl RemoteStep {
    /// Posts the other nodes' ranks of `launch`.
    pub(super) async fn start(job: &str, launch: StepLaunch) -> Result<RemoteStep, String> {
        let client = StepClient::from_env()?;
        let _: tidepool_api::StepPosted = client
            .post(&format!("/jobs/{job}/steps"), &launch)
            .await
            .map_err(|e| format!("Unable to create step for job {job}: {}", e.text()))?;
        Ok(RemoteStep { client, job: job.to_string(), launch, after: 0, exits_seen: 0, done_nodes: BTreeSet::new() })
    }

    /// Prints what the other nodes' ranks printed since the last look (after their rank with
    /// `label`), and returns the ranks that ended badly. Waits for news briefly while this
    /// node's ranks still run, longer once they are done.
    pub(super) async fn follow(&mut self, label: Option<usize>, local_done: bool) -> Result<News, String> {
        let wait_ms = if local_done { 5000 } else { 100 };
        let step = self.launch.step_id;
        let path = format!("/jobs/{}/steps/{step}?after={}&wait_ms={wait_ms}", self.job, self.after);
        let progress: StepProgress = self.client.get(&path).await.map_err(|e| format!("step {}.{step} was lost: {}", self.job, e.text()))?;
        {
            use std::io::Write;
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            if progress.dropped > 0 {
                let _ = writeln!(err, "srun: warning: {} lines of the other nodes' output were dropped", progress.dropped);
            }
            for line in &progress.lines {
                let prefix = label.map_or_else(String::new, |w| format!("{:>w$}: ", line.rank));
                let _ = if line.stderr { writeln!(err, "{prefix}{}", line.text) } else { writeln!(out, "{prefix}{}", line.text) };
            }
            let _ = out.flush();
        }
        self.after = progress.next;
        let bad_exits = progress.exits[self.exits_seen.min(progress.exits.len())..]
            .iter()
            .filter(|e| e.code != 0)
            .map(|e| RemoteExit { node: self.node_of(e.rank), rank: e.rank, code: e.code, signal: e.signal })
            .collect();
        self.exits_seen = progress.exits.len();
        self.done_nodes = progress.done_nodes.into_iter().collect();
        Ok(News { bad_exits })
    }

    fn node_of(&self, rank: u32) -> u32 {
        self.launch.ranks.iter().find(|r| (r.first..r.first + r.count).contains(&rank)).map_or(0, |r| r.node)
    }

    /// Every other node's ranks have ended and what they printed was read.
    pub(super) fn done(&self) -> bool {
        self.launch.ranks.iter().all(|r| self.done_nodes.contains(&r.node))
    }
}

/// `srun --step-host`: what a multi-node allocation's share on each node but the first runs.
/// Takes this node's ranks of each step the batch script starts and runs them, until the
/// batch script ends.
pub(super) async fn serve_as_step_host() -> Result<u8, String> {
    let job = std::env::var("SLURM_JOB_ID").map_err(|_| "srun --step-host runs only as a node's share of an allocation".to_string())?;
    let node: u32 = std::env::var("SLURM_NODEID").ok().and_then(|v| v.parse().ok()).ok_or("no SLURM_NODEID")?;
    let client = StepClient::from_env()?;
    let mut after: Option<u32> = None;
    let mut failures = 0;
    loop {
        let path = match after {
            Some(a) => format!("/jobs/{job}/steps?node={node}&after={a}"),
            None => format!("/jobs/{job}/steps?node={node}"),
        };
        match client.get::<StepsForNode>(&path).await {
            Ok(answer) => {
                failures = 0;
                if answer.ended {
                    return Ok(0);
                }
                for launch in answer.steps {
                    after = Some(after.map_or(launch.step_id, |a| a.max(launch.step_id)));
                    tokio::spawn(run_share(client.clone(), job.clone(), node, launch));
                }
            }
            // The allocation is over: its share here ends with it.
            Err(CallError::Gone(_)) => return Ok(0),
            Err(CallError::Other(e)) => {
                failures += 1;
                if failures > 120 {
                    return Err(format!("srun --step-host: {e}"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A line or an end from one of this node's ranks.
enum RankNews {
    Line(StepLine),
    Exit(RankExit),
}

/// Runs this node's ranks of a step and reports their lines and exits until all have ended.
async fn run_share(client: StepClient, job: String, node: u32, launch: StepLaunch) {
    let Some(share) = launch.ranks.iter().find(|r| r.node == node).copied() else { return };
    let shape = StepShape::of(&launch);
    let node_name = std::env::var("SLURMD_NODENAME").unwrap_or_default();
    let gtids = (share.first..share.first + share.count).map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RankNews>();
    for rank in share.first..share.first + share.count {
        let mut command = tokio::process::Command::new(&launch.command[0]);
        command.args(&launch.command[1..]).env_clear().envs(&launch.env);
        for key in NODE_LOCAL {
            match std::env::var(key) {
                Ok(v) => command.env(key, v),
                Err(_) => command.env_remove(key),
            };
        }
        command.envs(shape.rank_vars(rank, node, rank - share.first, &gtids));
        if let Some(dir) = &launch.chdir {
            command.current_dir(dir);
        }
        let output = |pattern: &Option<String>| -> std::process::Stdio {
            match pattern.as_deref() {
                None => std::process::Stdio::piped(),
                Some("none") => std::process::Stdio::null(),
                Some(p) => {
                    let path = super::srun::expand(p, &job, launch.step_id, rank, &node_name);
                    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                        Ok(f) => f.into(),
                        Err(_) => std::process::Stdio::null(),
                    }
                }
            }
        };
        command.stdout(output(&launch.output)).stderr(output(&launch.error));
        match command.spawn() {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(pump_lines(out, rank, false, tx.clone()));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(pump_lines(err, rank, true, tx.clone()));
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    use std::os::unix::process::ExitStatusExt;
                    let (code, signal) = match child.wait().await {
                        Ok(status) => match (status.code(), status.signal()) {
                            (Some(c), _) => (c, None),
                            (None, Some(s)) => (128 + s, Some(s)),
                            _ => (1, None),
                        },
                        Err(_) => (1, None),
                    };
                    let _ = tx.send(RankNews::Exit(RankExit { rank, code, signal }));
                });
            }
            Err(e) => {
                let text = format!("srun: error: {node_name}: task {rank}: cannot run {}: {e}", launch.command[0]);
                let _ = tx.send(RankNews::Line(StepLine { rank, stderr: true, text }));
                let _ = tx.send(RankNews::Exit(RankExit { rank, code: 2, signal: None }));
            }
        }
    }
    drop(tx);
    let path = format!("/jobs/{job}/steps/{}", launch.step_id);
    let mut open = true;
    while open {
        let mut report = StepReport { node, ..Default::default() };
        // The first news, then whatever else comes within a moment, in one report.
        match rx.recv().await {
            Some(news) => add(&mut report, news),
            None => open = false,
        }
        let gather_until = tokio::time::Instant::now() + Duration::from_millis(20);
        while open && report.lines.len() < 2000 {
            match tokio::time::timeout_at(gather_until, rx.recv()).await {
                Ok(Some(news)) => add(&mut report, news),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        report.done = !open;
        for attempt in 0..30 {
            match client.post::<_, serde_json::Value>(&path, &report).await {
                Ok(_) | Err(CallError::Gone(_)) => break,
                Err(CallError::Other(_)) if attempt < 29 => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(CallError::Other(_)) => {}
            }
        }
    }
}

fn add(report: &mut StepReport, news: RankNews) {
    match news {
        RankNews::Line(line) => report.lines.push(line),
        RankNews::Exit(exit) => report.exits.push(exit),
    }
}

/// Sends each line a rank prints, as it prints it.
async fn pump_lines(from: impl tokio::io::AsyncRead + Unpin, rank: u32, stderr: bool, tx: tokio::sync::mpsc::UnboundedSender<RankNews>) {
    let mut lines = tokio::io::BufReader::new(from).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        if tx.send(RankNews::Line(StepLine { rank, stderr, text })).is_err() {
            return;
        }
    }
}
