//! The user's commands: submit, jobs, show, cancel, logs, nodes, wait.

use crate::client::Client;
use crate::output::{iso_time, line};
use clap::Args;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use tidepool_api::{CancelRequest, CancelResponse, JobView, NodeView, SubmitRequest, SubmitResponse};
use tidepool_core::resources::{format_bytes, format_elapsed};

/// Flags of `submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Array indices: 0-99999[:STEP][%MAXRUNNING].
    #[arg(long, short = 'a')]
    array: Option<String>,
    /// Cores per task.
    #[arg(long, short = 'c')]
    cpus: Option<u32>,
    /// Tasks (ranks) of each allocation, on one node, as Slurm's --ntasks: it gets their cores
    /// together and its script sees SLURM_NTASKS.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "nodes")]
    ntasks: Option<u32>,
    /// Memory per task (500M, 4G; a bare number is MB).
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per task.
    #[arg(long)]
    gpus: Option<u32>,
    /// Run the tasks in this OCI image (HOST[:PORT]/NAME[:TAG][@sha256:DIGEST]).
    #[arg(long)]
    image: Option<String>,
    /// Bind a host directory into the container, SRC:DST[:ro] (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    container_mounts: Vec<String>,
    /// The working directory inside the container (default: this one, bound at the same path).
    #[arg(long)]
    container_workdir: Option<String>,
    /// Size of the container's /dev/shm (default: half the task's memory, or 1G).
    #[arg(long)]
    shm_size: Option<String>,
    /// `none`: the container gets loopback alone, not the host's network.
    #[arg(long, value_parser = ["host", "none"])]
    network: Option<String>,
    /// Variables whose value here wins over the image's, e.g. PATH (comma-separated).
    #[arg(long, value_delimiter = ',')]
    container_env: Vec<String>,
    /// `append` to add to output files that exist, `truncate` (the default) to start them anew.
    #[arg(long, value_parser = ["append", "truncate"])]
    open_mode: Option<String>,
    /// `[B:]SIG[@SECONDS]`: send SIG that long (default 60 s) before the time limit (`B:`: to
    /// a script's shell alone), as Slurm's --signal.
    #[arg(long)]
    signal: Option<String>,
    /// Job name.
    #[arg(long, short = 'J')]
    name: Option<String>,
    /// Project that pays.
    #[arg(long, short = 'A')]
    project: Option<String>,
    /// Priority class.
    #[arg(long)]
    tier: Option<String>,
    /// Time limit per task (30, 2:00:00, 1-00:00:00).
    #[arg(long, short = 't')]
    time: Option<String>,
    /// Start only after this job succeeded (repeatable).
    #[arg(long)]
    after: Vec<u64>,
    /// Slurm's dependency syntax: afterok:12:13,afterany:14+10, after:12?afternotok:13, singleton.
    #[arg(long, short = 'd', conflicts_with = "after")]
    dependency: Option<String>,
    /// Cancel the job when a dependency can no longer be met (default: it waits).
    #[arg(long)]
    kill_on_invalid_dep: bool,
    /// A task whose node is lost, or that is stopped for other work, fails instead of running
    /// again (Slurm's --no-requeue).
    #[arg(long)]
    no_requeue: bool,
    /// Output path pattern (%A %a %j %x), relative to the working directory.
    #[arg(long, short = 'o')]
    output: Option<String>,
    /// Error path pattern.
    #[arg(long, short = 'e')]
    error: Option<String>,
    /// Working directory (default: the current one).
    #[arg(long, short = 'D')]
    workdir: Option<String>,
    /// Pool (partition) to run in.
    #[arg(long, short = 'p')]
    pool: Option<String>,
    /// Node features required (repeatable or comma-separated), e.g. avx512.
    #[arg(long, short = 'C', value_delimiter = ',')]
    constraint: Vec<String>,
    /// Named countable resource per task, NAME=COUNT (repeatable), e.g. fpga=1.
    #[arg(long)]
    resource: Vec<String>,
    /// Multi-node job: this many distinct nodes, started all at once or not at all.
    #[arg(long, short = 'N')]
    nodes: Option<u32>,
    /// With --nodes: tasks (ranks) per node.
    #[arg(long)]
    tasks_per_node: Option<u32>,
    /// Extra environment variable (repeatable); the submitting environment is passed too.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// A secret environment value, K=V (repeatable): the tasks see it; the journal, answers
    /// and logs never hold it.
    #[arg(long = "secret-env", value_name = "K=V")]
    secret_env: Vec<String>,
    /// Pass none of the submitting environment, only --env values.
    #[arg(long)]
    no_inherit_env: bool,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The submitting process's environment, as sbatch's `--export=ALL` passes it.
pub fn current_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit()))
        // A credential is not the job's to keep in the journal.
        .filter(|(k, _)| k != "TIDEPOOL_TOKEN")
        .collect()
}

/// The absolute current directory.
pub fn current_dir() -> Result<String, String> {
    std::env::current_dir()
        .map(|d| d.display().to_string())
        .map_err(|e| format!("cannot read the current directory: {e}"))
}

/// Makes a relative directory absolute against the current one.
pub fn absolute(dir: &str) -> Result<String, String> {
    if dir.starts_with('/') {
        Ok(dir.to_string())
    } else {
        Ok(format!("{}/{}", current_dir()?, dir))
    }
}

/// Submits a job; prints its id alone.
pub async fn submit(a: SubmitArgs) -> Result<u8, String> {
    let mut env = if a.no_inherit_env { BTreeMap::new() } else { current_env() };
    env.insert("SLURM_SUBMIT_HOST".into(), crate::up::host_name());
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--env '{kv}' is not K=V"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let workdir = match &a.workdir {
        Some(d) => absolute(d)?,
        None => current_dir()?,
    };
    let req = SubmitRequest {
        name: a.name,
        command: a.command,
        script: None,
        array: a.array,
        cpus: match a.ntasks {
            Some(n) => a.cpus.map(|c| c.saturating_mul(n)),
            None => a.cpus,
        },
        mem: a.mem,
        gpus: a.gpus,
        project: a.project,
        tier: a.tier,
        time_limit: a.time,
        after: a.after,
        output: a.output,
        error: a.error,
        workdir: Some(workdir),
        env,
        pool: a.pool,
        constraint: a.constraint,
        resources: a
            .resource
            .iter()
            .map(|r| {
                let (k, v) = r.split_once('=').ok_or_else(|| format!("--resource '{r}' is not NAME=COUNT"))?;
                let v = v.parse::<u64>().map_err(|_| format!("--resource '{r}': '{v}' is not a count"))?;
                Ok((k.to_string(), v))
            })
            .collect::<Result<_, String>>()?,
        nodes: a.nodes,
        tasks_per_node: a.tasks_per_node,
        ntasks: a.ntasks,
        secret_env: a
            .secret_env
            .iter()
            .map(|kv| {
                // The value is never echoed back, not even in an error.
                let (k, v) = kv.split_once('=').ok_or("--secret-env takes K=V")?;
                Ok((k.to_string(), v.to_string()))
            })
            .collect::<Result<_, String>>()?,
        image: a.image,
        container_mounts: a.container_mounts,
        container_workdir: a.container_workdir,
        shm_size: a.shm_size,
        network: a.network,
        container_env: a.container_env,
        open_mode: a.open_mode,
        signal: a.signal,
        dependency: a.dependency,
        kill_on_invalid_dep: a.kill_on_invalid_dep,
        requeue: a.no_requeue.then_some(false),
    };
    let client = Client::from_env()?;
    let resp: SubmitResponse = client.post("/jobs", &req).await?;
    line(&resp.job_id.to_string());
    Ok(0)
}

/// A job or one of its tasks, as users type it: `12`, `12.3` or `12_3`.
pub fn parse_target(text: &str) -> Result<(u64, Option<u32>), String> {
    let bad = || format!("'{text}' is not a job id (examples: 12, 12.3, 12_3)");
    let (job, index) = match text.split_once(['.', '_']) {
        Some((j, i)) => (j, Some(i)),
        None => (text, None),
    };
    let job = job.parse::<u64>().map_err(|_| bad())?;
    let index = match index {
        Some(i) => Some(i.parse::<u32>().map_err(|_| bad())?),
        None => None,
    };
    Ok((job, index))
}

/// Flags of `jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Also list jobs that have ended: those still in memory, and those that left it (after
    /// the server's --keep-finished) since --since.
    #[arg(long)]
    all: bool,
    /// With --all, how far back jobs that left memory are listed: YYYY-MM-DD[THH:MM[:SS]], now
    /// or midnight (default: midnight, as sacct).
    #[arg(long, default_value = "midnight", requires = "all")]
    since: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists jobs.
pub async fn jobs(a: JobsArgs) -> Result<u8, String> {
    let client = Client::from_env()?;
    let path = if a.all { "/jobs" } else { "/jobs?active=true" };
    let resp = client.get_streamed(path).await?;
    let hidden: u64 = resp.headers().get("x-finished-not-shown").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let mut jobs: Vec<JobView> = resp.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
    if a.all {
        // Jobs that left memory come from the journal, a page at a time, oldest first.
        let now_s = tidepool_api::dates::now_ms() / 1000;
        let since_s = tidepool_api::dates::parse_time(&a.since, now_s).ok_or_else(|| format!("--since: '{}' is not a time (YYYY-MM-DD[THH:MM[:SS]], now, midnight)", a.since))?;
        let mut older: Vec<JobView> = Vec::new();
        let mut after = 0u64;
        loop {
            let resp = client.get_streamed(&format!("/jobs?history=true&after={after}&since_ms={}&limit=500", since_s * 1000)).await?;
            let next: Option<u64> = resp.headers().get("x-next-after").and_then(|v| v.to_str().ok()?.parse().ok());
            let page: Vec<JobView> = resp.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
            older.extend(page);
            match next {
                Some(n) if n > after => after = n,
                _ => break,
            }
        }
        let in_memory: std::collections::HashSet<u64> = jobs.iter().map(|j| j.id).collect();
        older.retain(|j| !in_memory.contains(&j.id));
        older.append(&mut jobs);
        jobs = older;
        jobs.sort_by_key(|j| j.id);
    }
    if a.json {
        line(&serde_json::to_string_pretty(&jobs).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    line(&format!(
        "{:>8} {:<16} {:<10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}  REASON",
        "JOB", "NAME", "STATE", "TASKS", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
    ));
    for j in jobs {
        let c = j.counts;
        line(&format!(
            "{:>8} {:<16} {:<10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}  {}",
            j.id,
            truncate(&j.name, 16),
            j.state,
            j.n_tasks,
            c.pending,
            c.running,
            c.succeeded,
            c.failed + c.timeout,
            c.cancelled,
            j.pending_reason.unwrap_or_default()
        ));
    }
    if hidden > 0 {
        let jobs = if hidden == 1 { "job" } else { "jobs" };
        eprintln!("({hidden} finished {jobs} not shown: tidepool jobs --all)");
    }
    Ok(0)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Flags of `show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The job.
    job: String,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Every task's detail.
    #[arg(long)]
    tasks: bool,
}

/// Shows one job.
pub async fn show(a: ShowArgs) -> Result<u8, String> {
    let (job_id, _) = parse_target(&a.job)?;
    let client = Client::from_env()?;
    let suffix = if a.tasks { "?tasks=true" } else { "" };
    let j: JobView = client.get(&format!("/jobs/{job_id}{suffix}")).await?;
    if a.json {
        line(&serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    let c = j.counts;
    line(&format!("job {}  {}  ({})", j.id, j.name, j.state));
    line(&format!("  command:   {}", j.command.join(" ")));
    line(&format!("  workdir:   {}", j.workdir));
    if let Some(image) = &j.image {
        line(&format!("  image:     {image}"));
    }
    line(&format!("  project:   {}   tier: {}   pool: {}", j.project, j.tier, j.pool.as_deref().unwrap_or("any")));
    let mem = if j.mem_bytes > 0 { format_bytes(j.mem_bytes) } else { "-".into() };
    line(&format!("  per task:  {} cores, memory {}, {} GPUs, time limit {}", j.cpus, mem, j.gpus,
        j.time_limit_s.map(format_elapsed).unwrap_or_else(|| "none".into())));
    if let Some(array) = &j.array {
        line(&format!("  array:     {array} ({} tasks)", j.n_tasks));
    }
    line(&format!("  submitted: {}", iso_time(j.submitted_ms)));
    if let Some(end) = j.ended_ms {
        line(&format!("  ended:     {}", iso_time(end)));
    }
    line(&format!(
        "  tasks:     {} pending, {} running, {} succeeded, {} failed, {} cancelled, {} timeout",
        c.pending, c.running, c.succeeded, c.failed, c.cancelled, c.timeout
    ));
    if let Some(reason) = &j.pending_reason {
        line(&format!("  pending:   {reason} [{}]", j.pending_code.as_deref().unwrap_or("")));
    }
    if a.tasks || !j.tasks.is_empty() {
        line(&format!("  {:>8} {:<10} {:>7} {:<16} {:>6} {:>10} {:>9}", "INDEX", "STATE", "ATTEMPT", "NODE", "EXIT", "CPU", "MAXRSS"));
        for t in &j.tasks {
            let exit = match (t.exit_code, t.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(sig)) => format!("sig{sig}"),
                _ => "-".into(),
            };
            line(&format!(
                "  {:>8} {:<10} {:>7} {:<16} {:>6} {:>10} {:>9}",
                t.index,
                t.state,
                t.attempt,
                t.node.as_deref().unwrap_or("-"),
                exit,
                t.cpu_ms.map(|ms| format!("{:.3}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                t.peak_mem_bytes.map(format_bytes).unwrap_or_else(|| "-".into()),
            ));
            if let Some(message) = &t.message {
                line(&format!("  {:>8} {message}", ""));
            }
            // Which variant ran where, when the job has several.
            if let (Some(image), true) = (&t.image, j.image.as_deref().is_some_and(|i| i.contains(','))) {
                line(&format!("  {:>8} in {image}", ""));
            }
        }
    }
    Ok(0)
}

/// Flags of `cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// `JOB` or `JOB.INDEX` (repeatable).
    #[arg(required = true)]
    targets: Vec<String>,
}

/// Cancels jobs or tasks.
pub async fn cancel(a: CancelArgs) -> Result<u8, String> {
    let client = Client::from_env()?;
    let targets: Vec<(u64, Option<u32>)> = a.targets.iter().map(|t| parse_target(t)).collect::<Result<_, _>>()?;
    for (job_id, index) in targets {
        let answer: CancelResponse = client.post(&format!("/jobs/{job_id}/cancel"), &CancelRequest { index, ..CancelRequest::default() }).await?;
        if answer.already_ended {
            match index {
                Some(i) => eprintln!("tidepool: task {job_id}.{i} had already ended"),
                None => eprintln!("tidepool: job {job_id} had already ended"),
            }
        }
    }
    Ok(0)
}

/// Flags of `logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// `JOB.INDEX` (or `JOB` for a single-task job).
    task: String,
    /// Standard error instead of standard output.
    #[arg(long)]
    stderr: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<u64>,
    /// Keep printing what the task writes until it ends.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Writes a task's `stream` (stdout or stderr) to `out`: its last `tail` lines or all of it,
/// and with `follow` what it writes until it ends; the bytes written.
pub(crate) async fn print_log(client: &Client, job_id: u64, index: u32, stream: &str, tail: Option<u64>, follow: bool, out: &mut impl Write) -> Result<u64, String> {
    let (mut offset, mut printed) = (0u64, 0u64);
    let mut range = match tail {
        Some(n) => format!("tail={n}"),
        None => "offset=0".to_string(),
    };
    loop {
        let path = format!("/jobs/{job_id}/tasks/{index}/log?stream={stream}&{range}");
        let mut resp = match client.get_streamed(&path).await {
            // Following a task that has not started, or not yet opened its output: wait for it,
            // unless the job has ended meanwhile (a task that wrote nothing leaves no file).
            Err(e) if follow && (e.contains("has not run yet") || e.contains("no output of this task")) => {
                let view: JobView = client.get(&format!("/jobs/{job_id}")).await?;
                if !matches!(view.state.as_str(), "pending" | "running") {
                    return Ok(printed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            answered => answered?,
        };
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let ended = header("x-task-ended").as_deref() == Some("true");
        let start: u64 = header("x-log-start").and_then(|v| v.parse().ok()).unwrap_or(offset);
        let mut read = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the log: {e}"))? {
            out.write_all(&chunk).map_err(|e| format!("writing the log: {e}"))?;
            read += chunk.len() as u64;
        }
        let _ = out.flush();
        offset = start + read;
        printed += read;
        range = format!("offset={offset}");
        if !follow || (ended && read == 0) {
            return Ok(printed);
        }
        if read == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Prints a task's output.
pub async fn logs(a: LogsArgs) -> Result<u8, String> {
    let (job_id, index) = parse_target(&a.task)?;
    let client = Client::from_env()?;
    let index = match index {
        Some(i) => i,
        None => {
            let j: JobView = client.get(&format!("/jobs/{job_id}")).await?;
            if j.n_tasks != 1 {
                return Err(format!("job {job_id} has {} tasks: name one, e.g. {job_id}.0", j.n_tasks));
            }
            j.array.as_deref().and_then(|a| a.split(['-', ',', '%', ':']).next()?.parse().ok()).unwrap_or(0)
        }
    };
    let stream = if a.stderr { "stderr" } else { "stdout" };
    let printed = print_log(&client, job_id, index, stream, a.tail, a.follow, &mut std::io::stdout().lock()).await?;
    if printed == 0 {
        eprintln!("tidepool: the {stream} log of {job_id}.{index} is empty");
    }
    Ok(0)
}

/// Lists nodes.
pub async fn nodes(a: NodesArgs) -> Result<u8, String> {
    let client = Client::from_env()?;
    let nodes: Vec<NodeView> = client.get("/nodes").await?;
    if a.identities {
        let projects: Vec<tidepool_api::ProjectView> = client.get("/projects").await?;
        for row in identity_table(&nodes, &projects) {
            line(&row);
        }
        return Ok(0);
    }
    line(&format!("{:<20} {:<10} {:<10} {:>11} {:>15} {:>5} {:>8} {:>7}", "NODE", "POOL", "STATE", "CPUS(A/T)", "MEM(A/T)", "GPUS", "RUNNING", "QUEUED"));
    for n in nodes {
        line(&format!(
            "{:<20} {:<10} {:<10} {:>11} {:>15} {:>5} {:>8} {:>7}",
            n.name,
            n.pool,
            n.state,
            format!("{}/{}", n.cpus_allocated, n.cpus),
            format!("{}/{}", format_bytes(n.mem_allocated_bytes), format_bytes(n.mem_bytes)),
            n.gpus,
            n.n_running,
            n.n_queued
        ));
        for failed in &n.gpus_failed {
            line(&format!("  gpu {} failed its health check: {}", failed.index, failed.reason));
        }
    }
    Ok(0)
}

/// The images each node holds unpacked.
pub async fn images(only: Option<&str>) -> Result<u8, String> {
    let client = Client::from_env()?;
    let nodes: Vec<NodeView> = client.get("/nodes").await?;
    if let Some(name) = only {
        if !nodes.iter().any(|n| n.name == name) {
            return Err(format!("node {name} does not exist"));
        }
    }
    line(&format!("{:<20} {:<19} {:>10} {}", "NODE", "DIGEST", "SIZE", "REFERENCE"));
    for n in nodes.iter().filter(|n| only.is_none_or(|name| n.name == name)) {
        for image in &n.images {
            let short: String = image.digest.chars().take(19).collect();
            line(&format!("{:<20} {short:<19} {:>10} {}", n.name, format_bytes(image.bytes), image.reference));
        }
    }
    Ok(0)
}

/// Flags of `nodes`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Which identity each project's tasks (and the operator's) run as, and on which nodes.
    #[arg(long)]
    identities: bool,
}

/// Rows saying what each node can run tasks as, then where each project's tasks may run.
fn identity_table(nodes: &[NodeView], projects: &[tidepool_api::ProjectView]) -> Vec<String> {
    let mut rows = vec![format!("{:<20} {:<14} {}", "NODE", "PROJECT UIDS", "OPERATOR'S TASKS AS")];
    for n in nodes {
        let operator = match (n.state.as_str(), n.identities.operator_uid) {
            ("down", _) => "- (not connected)".to_string(),
            (_, Some(0)) => "uid 0 (root)".to_string(),
            (_, Some(uid)) => format!("uid {uid}"),
            (_, None) => "nobody (no --admin-runs-as)".to_string(),
        };
        rows.push(format!("{:<20} {:<14} {operator}", n.name, if n.identities.project_uids { "yes" } else { "no" }));
    }
    rows.push(String::new());
    rows.push(format!("{:<16} {:<36} {}", "PROJECT", "RUNS AS", "ON NODES"));
    for p in projects {
        let (runs_as, where_) = match p.uid {
            Some(uid) => {
                let groups = if p.groups.is_empty() { String::new() } else { format!(" groups {}", p.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")) };
                let on: Vec<&str> = nodes.iter().filter(|n| n.identities.project_uids && n.state != "down").map(|n| n.name.as_str()).collect();
                (format!("uid {uid} gid {}{groups}", p.gid.unwrap_or(uid)), if on.is_empty() { "none".to_string() } else { on.join(",") })
            }
            None => ("no identity (create it with --uid)".to_string(), "none".to_string()),
        };
        rows.push(format!("{:<16} {:<36} {where_}", p.name, runs_as));
    }
    rows
}

/// Drains a node, or puts it back.
pub async fn drain(node: &str, draining: bool) -> Result<u8, String> {
    let client = Client::from_env()?;
    let action = if draining { "drain" } else { "resume" };
    let _: serde_json::Value = client.post(&format!("/nodes/{node}/{action}"), &serde_json::json!({})).await?;
    Ok(0)
}

/// Gives a node's failed GPU work again.
pub async fn resume_gpu(node: &str, gpu: u32) -> Result<u8, String> {
    let client = Client::from_env()?;
    let _: serde_json::Value = client.post(&format!("/nodes/{node}/resume"), &tidepool_api::ResumeRequest { gpu: Some(gpu) }).await?;
    Ok(0)
}

/// `tidepool project create|list`.
pub async fn project(action: crate::cli::ProjectAction) -> Result<u8, String> {
    let client = Client::from_env()?;
    match action {
        crate::cli::ProjectAction::Create { name, quota, borrow, share, uid, gid, groups } => {
            let (uid, gid, groups) = match uid {
                Some(text) if !text.starts_with(|c: char| c.is_ascii_digit()) => {
                    let user = tidepool_agent::identity::resolve_user(&text).map_err(|e| format!("--uid: {e}"))?;
                    (Some(user.uid), gid.or(Some(user.gid)), if groups.is_empty() { user.groups } else { groups })
                }
                Some(text) => (Some(text.parse::<u32>().map_err(|_| format!("--uid: '{text}' is not a uid or a user name"))?), gid, groups),
                None => (None, gid, groups),
            };
            let req = tidepool_api::ProjectRequest { name, quota, borrow, share, uid, gid, groups };
            let _: serde_json::Value = client.post("/projects", &req).await?;
        }
        crate::cli::ProjectAction::List => {
            let projects: Vec<tidepool_api::ProjectView> = client.get("/projects").await?;
            line(&format!("{:<16} {:>7} {:>7} {:>6} {}", "PROJECT", "QUOTA", "BORROW", "SHARE", "RUNS AS"));
            let or_dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            for p in projects {
                let runs_as = p.uid.map_or("no identity".to_string(), |uid| format!("uid {uid} gid {}", p.gid.unwrap_or(uid)));
                line(&format!("{:<16} {:>7} {:>7} {:>6} {runs_as}", p.name, or_dash(p.quota), or_dash(p.borrow), p.share.unwrap_or(1)));
            }
        }
    }
    Ok(0)
}

/// `tidepool token create|revoke`.
pub async fn token(action: crate::cli::TokenAction) -> Result<u8, String> {
    let client = Client::from_env()?;
    match action {
        crate::cli::TokenAction::Create { project, join } => {
            let created: tidepool_api::TokenCreated = client.post("/tokens", &tidepool_api::TokenRequest { project, join }).await?;
            let what = created.project.as_ref().map_or("joining agents".to_string(), |p| format!("project {p}"));
            line(&format!("token id {} for {what} (shown once; keep it secret):", created.id));
            line(&created.token);
        }
        crate::cli::TokenAction::List => {
            let tokens: Vec<tidepool_api::TokenView> = client.get("/tokens").await?;
            line(&format!("{:<18} {:<8} {:<16} {}", "ID", "KIND", "PROJECT", "REVOKED"));
            for t in tokens {
                line(&format!("{:<18} {:<8} {:<16} {}", t.id, t.kind, t.project.as_deref().unwrap_or("-"), if t.revoked { "yes" } else { "no" }));
            }
        }
        crate::cli::TokenAction::Revoke { id } => {
            let _: serde_json::Value = client.post(&format!("/tokens/{id}/revoke"), &serde_json::json!({})).await?;
        }
    }
    Ok(0)
}

/// Flags of `wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The job.
    job: String,
}

/// Waits for a job to end, with a progress bar on a terminal.
pub async fn wait(a: WaitArgs) -> Result<u8, String> {
    let (job_id, _) = parse_target(&a.job)?;
    let client = Client::from_env()?;
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last_plain = std::time::Instant::now() - std::time::Duration::from_secs(60);
    loop {
        let j: JobView = client.get(&format!("/jobs/{job_id}")).await?;
        let c = j.counts;
        let done = c.succeeded + c.failed + c.cancelled + c.timeout;
        let finished = c.pending == 0 && c.running == 0;
        let mut err = std::io::stderr().lock();
        if tty {
            let width = 30usize;
            let filled = if j.n_tasks == 0 { width } else { (done as usize * width) / j.n_tasks as usize };
            let _ = write!(
                err,
                "\r[{}{}] {done}/{} done, {} running, {} failed  {:>6.0}s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                j.n_tasks,
                c.running,
                c.failed + c.timeout + c.cancelled,
                started.elapsed().as_secs_f64()
            );
            if finished {
                let _ = writeln!(err);
            }
        } else if finished || last_plain.elapsed().as_secs() >= 5 {
            let _ = writeln!(err, "job {job_id}: {done}/{} done, {} running, {} failed", j.n_tasks, c.running, c.failed + c.timeout + c.cancelled);
            last_plain = std::time::Instant::now();
        }
        drop(err);
        if finished {
            let ok = c.succeeded == j.n_tasks;
            if !ok {
                eprintln!(
                    "job {job_id} {}: {} succeeded, {} failed, {} timeout, {} cancelled",
                    j.state, c.succeeded, c.failed, c.timeout, c.cancelled
                );
            }
            return Ok(if ok { 0 } else { 1 });
        }
        tokio::time::sleep(std::time::Duration::from_millis(if tty { 250 } else { 500 })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("12"), Ok((12, None)));
        assert_eq!(parse_target("12.3"), Ok((12, Some(3))));
        assert_eq!(parse_target("12_3"), Ok((12, Some(3))));
        assert!(parse_target("x").is_err());
        assert!(parse_target("1.y").is_err());
    }
}
