//! The Slurm front: `sbatch`, `squeue`, `scancel`, `sacct`, `sinfo`, with Slurm's options,
//! `#SBATCH` directives, columns and state names, so scripts written for Slurm keep working.

use crate::client::Client;
use crate::commands::{absolute, current_dir, current_env, parse_target};
use crate::output::{iso_time, line};
use std::collections::BTreeMap;
use tidepool_api::{CancelRequest, CancelResponse, JobView, NodeView, SubmitRequest, SubmitResponse, TaskView};
use tidepool_core::resources::{format_elapsed, parse_mem_size};

mod allocation;
mod sbatch;
mod scontrol;
mod squeue;
mod srun;
mod steps;
use sbatch::{Takes, NO_MEANING_HERE, SBATCH_OPTIONS};

/// Runs one of the Slurm commands with its arguments.
pub async fn run(command: &str, args: Vec<String>) -> Result<u8, String> {
    if asks_for_help(command, &args) {
        crate::output::line(usage(command).trim_end());
        return Ok(0);
    }
    match command {
        "sbatch" => sbatch::sbatch(args).await,
        "squeue" => squeue::squeue(args).await,
        "scancel" => scancel(args).await,
        "sacct" => sacct(args).await,
        "srun" => srun::srun(args).await,
        "scontrol" => scontrol::scontrol(args).await,
        _ => sinfo(args).await,
    }
}

/// True when `--help` or `--usage` comes among the command's own options (for `sbatch`, before
/// the script, whose own arguments may be anything).
fn asks_for_help(command: &str, args: &[String]) -> bool {
    // srun's command and sbatch's script have arguments of their own.
    let own = args.iter().take_while(|a| match command {
        "sbatch" => a.starts_with('-') || !std::path::Path::new(a.as_str()).is_file(),
        "srun" => a.starts_with('-'),
        _ => true,
    });
    own.take_while(|a| a.as_str() != "--").any(|a| a == "--help" || a == "--usage")
}

/// The usage of one of the Slurm commands, as Slurm's own `--help` lays it out.
fn usage(command: &str) -> String {
    let mut text = match command {
        "sbatch" => String::from("Usage: sbatch [OPTIONS(0)...] [ : [OPTIONS(N)...]] script(0) [args(0)...]\n\nOptions:\n"),
        "squeue" => String::from("Usage: squeue [OPTIONS]\n\nOptions:\n"),
        "scancel" => String::from("Usage: scancel [OPTIONS] [job_id[_array_id]...]\n\nJobs are named JOB or JOB_INDEX (JOB.INDEX also works).\nOptions:\n  -s, --signal=SIG  send SIG to running tasks (what a batch script started) instead of cancelling\n  -b, --batch       with -s: the batch shell alone\n  -f, --full        with -s: every process of the task\n  -n, --name, -t, --state, -p, --partition, -A, --account, -u, --user: pick jobs\n"),
        "sacct" => String::from("Usage: sacct [OPTIONS]\n\nOptions:\n"),
        "srun" => String::from("Usage: srun [OPTIONS] executable [args...]\n\nInside a job's allocation: a step of N copies over its nodes (all of them unless -N says fewer).\nOutside one: a job is made for the step on one node, its output printed as it comes (Ctrl-C cancels it).\nOptions:\n"),
        "scontrol" => String::from("Usage: scontrol [-o] show job [ID]\n       scontrol show hostnames [HOSTLIST]\n"),
        _ => String::from("Usage: sinfo [OPTIONS]\n\nOptions:\n"),
    };
    let lines: Vec<String> = match command {
        "sbatch" => SBATCH_OPTIONS
            .iter()
            .map(|(long, short, takes)| {
                let short = short.map_or("    ".to_string(), |c| format!("-{c}, "));
                let value = match takes {
                    Takes::Value => "=VALUE",
                    Takes::OptionalValue => "[=VALUE]",
                    Takes::Flag => "",
                };
                let note = if NO_MEANING_HERE.contains(long) { "  (accepted; no effect on this fleet)" } else { "" };
                format!("  {short}--{long}{value}{note}")
            })
            .chain(["      --wrap=COMMAND runs COMMAND as a one-line script".to_string()])
            .collect(),
        "squeue" => ["-j, --jobs=LIST", "-t, --states=LIST", "-h, --noheader", "-o, --format=FORMAT (%i %j %T %t %P %u %a %M %l %C %D %N %r %R %A %K)", "-O, --Format=FIELD[:[.]WIDTH],... (JobID, Name, State, StateCompact, Partition, UserName, Account, TimeUsed, TimeLimit, NumCPUs, NumNodes, NodeList, Reason, ReasonList, ArrayJobID, ArrayTaskID)", "-u, --user, -A, --account, -p, --partition=NAME (accepted)", "--me, -a, --all, -l, --long, -r, --array (accepted)"]
            .iter()
            .map(|l| format!("  {l}"))
            .collect(),
        "sacct" => ["-j, --jobs=LIST", "-o, --format=FIELDS", "-n, --noheader", "-P, --parsable2", "-p, --parsable", "-S, --starttime, -E, --endtime=TIME (default: since midnight; YYYY-MM-DD[THH:MM[:SS]], now, midnight)", "-s, --state=LIST", "-X, -a, -b, -l, -u, -A (accepted)"]
            .iter()
            .map(|l| format!("  {l}"))
            .collect(),
        "scancel" | "scontrol" => Vec::new(),
        "srun" => ["-n, --ntasks=N", "-N, --nodes=N", "-c, --cpus-per-task=N", "--ntasks-per-node=N", "-l, --label", "-K, --kill-on-bad-exit", "-O, --overcommit", "-o, --output=PATTERN (%t %j %J %s %N)", "-e, --error=PATTERN", "-D, --chdir=DIR", "--export=ALL|NONE|VAR[=VAL],...", "-J, --job-name, -t, --time, --mem, -p, --partition, -A, --account (outside an allocation: the job's)", "--mpi, --cpu-bind, -m, --hint, -u, --exclusive, --exact, --overlap, --gres, --gpus, -Q, -v (accepted)"]
            .iter()
            .map(|l| format!("  {l}"))
            .collect(),
        _ => ["-h, --noheader", "-N, --Node, -l, --long, -a, --all (accepted)"].iter().map(|l| format!("  {l}")).collect(),
    };
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str("\nThis is Tidepool's front for Slurm's command; `tidepool --help` lists its own commands.\n");
    text
}

fn slurm_state(state: &str) -> &'static str {
    match state {
        "pending" => "PENDING",
        "running" => "RUNNING",
        "succeeded" => "COMPLETED",
        "failed" => "FAILED",
        "cancelled" => "CANCELLED",
        "timeout" => "TIMEOUT",
        _ => "UNKNOWN",
    }
}

/// Elapsed time as squeue prints it: `0:05`, `12:34`, `1:02:03`, `2-01:02:03`.
fn squeue_time(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h) {
        (0, 0) => format!("{m}:{s:02}"),
        (0, h) => format!("{h}:{m:02}:{s:02}"),
        (d, h) => format!("{d}-{h:02}:{m:02}:{s:02}"),
    }
}

use tidepool_api::dates::now_ms;

fn fit(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// Walks `--opt=value`, `--opt value` and `-o value` arguments of squeue and sacct.
struct OptionReader<'a> {
    args: &'a [String],
    i: usize,
}

impl OptionReader<'_> {
    fn next_option(&mut self) -> Option<(String, Option<String>)> {
        let a = self.args.get(self.i)?;
        self.i += 1;
        Some(match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        })
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self.args.get(self.i).cloned().ok_or_else(|| format!("option '{name}' needs a value"))?;
        self.i += 1;
        Ok(v)
    }
}

async fn scancel(args: Vec<String>) -> Result<u8, String> {
    let mut targets = Vec::new();
    let (mut name, mut state, mut partition, mut account) = (None, None, None, None);
    let mut by_user = false;
    let (mut signal, mut scope): (Option<String>, Option<&str>) = (None, None);
    let mut reader = OptionReader { args: &args, i: 0 };
    while let Some((option, inline)) = reader.next_option() {
        if !option.starts_with('-') {
            targets.push(parse_target(&option)?);
            continue;
        }
        let mut value = || reader.value(&option, inline.clone());
        match option.as_str() {
            "-n" | "--name" | "--jobname" => name = Some(value()?),
            "-t" | "--state" => state = Some(value()?.to_uppercase()),
            "-p" | "--partition" => partition = Some(value()?),
            "-A" | "--account" => account = Some(value()?),
            "-u" | "--user" => {
                let user = value()?;
                let me = std::env::var("USER").unwrap_or_default();
                if user != me {
                    return Err(format!("only your own jobs can be named by user here (-u {me}); another project's jobs do not exist for your token"));
                }
                by_user = true;
            }
            "-s" | "--signal" => {
                let v = value()?;
                if tidepool_api::signal_number(&v).is_none() {
                    return Err(format!("Invalid job signal: {v}"));
                }
                signal = Some(v);
            }
            "-b" | "--batch" => scope = Some("batch"),
            "-f" | "--full" => scope = Some("full"),
            "-Q" | "--quiet" | "-v" | "--verbose" => {}
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let filtered = by_user || name.is_some() || state.is_some() || partition.is_some() || account.is_some();
    if let Some(s) = &state {
        if !matches!(s.as_str(), "PENDING" | "PD" | "RUNNING" | "R") {
            return Err(format!("--state={s}: use PENDING or RUNNING"));
        }
    }
    if targets.is_empty() && !filtered {
        return Err("no job identification provided".into());
    }
    let client = Client::from_env()?;
    let mut code = 0;
    if filtered {
        // Slurm's filters pick among active jobs (those named, or all the token sees).
        let jobs: Vec<JobView> = client.get("/jobs?active=true").await?;
        let named: Vec<u64> = targets.iter().map(|(j, _)| *j).collect();
        targets.clear();
        for j in jobs {
            let chosen = (named.is_empty() || named.contains(&j.id))
                && name.as_ref().is_none_or(|n| &j.name == n)
                && partition.as_ref().is_none_or(|p| j.pool.as_deref().unwrap_or("local") == p)
                && account.as_ref().is_none_or(|a| &j.project == a);
            if !chosen {
                continue;
            }
            match state.as_deref() {
                Some("RUNNING" | "R") => targets.extend(j.tasks.iter().map(|t| (j.id, Some(t.index)))),
                Some(_) if j.counts.running > 0 => {
                    eprintln!("scancel: error: job {} runs tasks too: cancelling only its pending ones is not possible yet", j.id);
                    code = 1;
                }
                Some(_) if j.counts.pending == 0 => {}
                _ => targets.push((j.id, None)),
            }
        }
    }
    // With a signal, only running tasks are sent it (-b: their batch shell, -f: everything).
    let scope = signal.as_ref().and(scope).map(str::to_string);
    for (job_id, index) in targets {
        let req = CancelRequest { index, signal: signal.clone(), scope: scope.clone() };
        let r: Result<CancelResponse, String> = client.post(&format!("/jobs/{job_id}/cancel"), &req).await;
        if let Err(e) = r {
            eprintln!("scancel: error: Kill job error on job id {job_id}: {e}");
            code = 1;
        }
    }
    Ok(code)
}

/// A state as `sacct -s` takes it, long or short (`CD`, `F`, `CA`, `TO`, `R`, `PD`).
fn sacct_state(text: &str) -> Result<&'static str, String> {
    Ok(match text.trim().to_ascii_uppercase().as_str() {
        "CD" | "COMPLETED" => "COMPLETED",
        "F" | "FAILED" => "FAILED",
        "CA" | "CANCELLED" => "CANCELLED",
        "TO" | "TIMEOUT" => "TIMEOUT",
        "R" | "RUNNING" => "RUNNING",
        "PD" | "PENDING" => "PENDING",
        other => return Err(format!("--state: '{other}' is not a job state (CD, F, CA, TO, R, PD)")),
    })
}

/// The columns sacct shows when not told otherwise (Slurm's default, plus usage).
const SACCT_DEFAULT: &str = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode,TotalCPU,MaxRSS";

fn sacct_width(field: &str) -> usize {
    match field.to_ascii_lowercase().as_str() {
        "jobid" | "jobidraw" => 12,
        "exitcode" => 8,
        "start" | "end" | "submit" => 19,
        _ => 10,
    }
}

fn cpu_time(ms: u64) -> String {
    let (m, s, milli) = (ms / 60_000, ms / 1000 % 60, ms % 1000);
    if m >= 60 {
        format!("{}:{:02}:{:02}", m / 60, m % 60, s)
    } else {
        format!("{m:02}:{s:02}.{milli:03}")
    }
}

fn sacct_field(field: &str, j: &JobView, t: &TaskView) -> Result<String, String> {
    let elapsed = match (t.started_ms, t.ended_ms) {
        (Some(s), Some(e)) => format_elapsed(e.saturating_sub(s) / 1000),
        (Some(s), None) => format_elapsed(now_ms().saturating_sub(s) / 1000),
        _ => "00:00:00".into(),
    };
    Ok(match field.to_ascii_lowercase().as_str() {
        "jobid" => if j.array.is_some() { format!("{}_{}", j.id, t.index) } else { j.id.to_string() },
        "jobidraw" => if t.job_id > 0 { t.job_id } else { j.id }.to_string(),
        "jobname" => j.name.clone(),
        "partition" => j.pool.clone().unwrap_or_else(|| "local".into()),
        "account" => j.project.clone(),
        "alloccpus" | "reqcpus" | "ncpus" => format!("{}", j.cpus),
        "state" => slurm_state(&t.state).to_string(),
        "exitcode" => format!("{}:{}", t.exit_code.unwrap_or(0), t.signal.unwrap_or(0)),
        "totalcpu" => t.cpu_ms.map(cpu_time).unwrap_or_default(),
        "maxrss" => t.peak_mem_bytes.map(|b| format!("{}K", b / 1024)).unwrap_or_default(),
        "reqmem" => if j.mem_bytes > 0 { tidepool_core::resources::format_bytes(j.mem_bytes) } else { "0".into() },
        "elapsed" => elapsed,
        "start" => t.started_ms.map(iso_time).unwrap_or_else(|| "Unknown".into()),
        "end" => t.ended_ms.map(iso_time).unwrap_or_else(|| "Unknown".into()),
        "submit" => iso_time(j.submitted_ms),
        "nodelist" => t.node.clone().unwrap_or_else(|| "None assigned".into()),
        "timelimit" => j.time_limit_s.map(format_elapsed).unwrap_or_else(|| "UNLIMITED".into()),
        "user" => std::env::var("USER").unwrap_or_default(),
        "restarts" => t.attempt.saturating_sub(1).to_string(),
        other => return Err(format!("invalid field requested: '{other}'")),
    })
}

async fn sacct(args: Vec<String>) -> Result<u8, String> {
    let mut jobs_filter: Option<Vec<u64>> = None;
    let mut format = std::env::var("SACCT_FORMAT").unwrap_or_else(|_| SACCT_DEFAULT.to_string());
    let mut header = true;
    let mut delimiter: Option<(&str, bool)> = None;
    let mut states: Option<Vec<&'static str>> = None;
    let now_s = now_ms() / 1000;
    // Slurm's default window: jobs of today (UTC here).
    let (mut since_s, mut until_s) = (now_s - now_s % 86_400, u64::MAX);
    let mut reader = OptionReader { args: &args, i: 0 };
    while let Some((name, inline)) = reader.next_option() {
        let mut value = || reader.value(&name, inline.clone());
        match name.as_str() {
            "-j" | "--jobs" => {
                jobs_filter = Some(value()?.split(',').map(|t| parse_target(t).map(|(j, _)| j)).collect::<Result<_, _>>()?);
            }
            "-o" | "--format" => format = value()?,
            "-n" | "--noheader" => header = false,
            "-P" | "--parsable2" => delimiter = Some(("|", false)),
            "-p" | "--parsable" => delimiter = Some(("|", true)),
            "-X" | "--allocations" | "-a" | "--allusers" | "-b" | "--brief" | "-l" | "--long" => {}
            "-s" | "--state" => {
                let listed = value()?;
                states = Some(listed.split(',').map(sacct_state).collect::<Result<_, _>>()?);
            }
            "-S" | "--starttime" | "-E" | "--endtime" => {
                let text = value()?;
                let at = tidepool_api::dates::parse_time(&text, now_s).ok_or_else(|| format!("{name}: '{text}' is not a time (YYYY-MM-DD[THH:MM[:SS]], now, midnight)"))?;
                if name == "-S" || name == "--starttime" {
                    since_s = at;
                } else {
                    until_s = at;
                }
            }
            "-u" | "--user" | "-A" | "--accounts" => {
                value()?;
            }
            other if !other.starts_with('-') && jobs_filter.is_none() => {
                return Err(format!("unexpected argument '{other}' (use -j JOB)"));
            }
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let fields: Vec<(String, usize)> = format
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('%') {
            Some((name, w)) => (name.to_string(), w.parse().unwrap_or(sacct_width(name))),
            None => (f.to_string(), sacct_width(f)),
        })
        .collect();
    let client = Client::from_env()?;
    let ids: Vec<u64> = match jobs_filter {
        Some(ids) => ids,
        None => {
            // Jobs that left the server's memory come from its journal, a page at a time.
            let mut ids = Vec::new();
            let mut after = 0u64;
            loop {
                let resp = client.get_streamed(&format!("/jobs?history=true&after={after}&since_ms={}&limit=1000", since_s.saturating_mul(1000))).await?;
                let next = resp.headers().get("x-next-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                let page: Vec<JobView> = resp.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
                ids.extend(page.iter().filter(|j| j.submitted_ms / 1000 <= until_s).map(|j| j.id));
                match next {
                    Some(n) if n > after => after = n,
                    _ => break,
                }
            }
            let in_memory = client.get::<Vec<JobView>>("/jobs").await?;
            ids.extend(in_memory.iter().filter(|j| j.submitted_ms / 1000 <= until_s && (j.ended_ms.is_none() || j.submitted_ms / 1000 >= since_s || j.ended_ms.is_some_and(|e| e / 1000 >= since_s))).map(|j| j.id));
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    let render = |cells: Vec<String>| -> String {
        match delimiter {
            Some((d, trailing)) => {
                let mut s = cells.join(d);
                if trailing {
                    s.push_str(d);
                }
                s
            }
            None => cells
                .iter()
                .zip(&fields)
                .map(|(c, (name, w))| {
                    let c = fit(c, *w);
                    if name.eq_ignore_ascii_case("jobid") || name.eq_ignore_ascii_case("jobname") {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    // Validate the format before printing anything.
    let probe_job = JobView {
        id: 0, name: String::new(), project: String::new(), tier: String::new(), pool: None, state: String::new(),
        array: None, n_tasks: 0, counts: Default::default(), cpus: 0.0, mem_bytes: 0, gpus: 0, time_limit_s: None,
        submitted_ms: 0, ended_ms: None, pending_code: None, pending_reason: None, pending_indices: String::new(),
        command: vec![], workdir: String::new(), image: None, tasks: vec![],
    };
    let probe_task = TaskView { index: 0, state: String::new(), attempt: 0, node: None, started_ms: None, ended_ms: None, exit_code: None, signal: None, cpu_ms: None, peak_mem_bytes: None, message: None, image: None, job_id: 0 };
    for (f, _) in &fields {
        sacct_field(f, &probe_job, &probe_task)?;
    }
    if header {
        line(&render(fields.iter().map(|(f, _)| f.clone()).collect()));
        if delimiter.is_none() {
            line(&fields.iter().map(|(_, w)| "-".repeat(*w)).collect::<Vec<_>>().join(" "));
        }
    }
    for id in ids {
        let j: JobView = client.get(&format!("/jobs/{id}?tasks=true")).await?;
        // An array task's own job id names that task alone.
        let own = |t: &&TaskView| j.id == id || t.job_id == id;
        for t in j.tasks.iter().filter(own).filter(|t| states.as_ref().is_none_or(|s| s.contains(&slurm_state(&t.state)))) {
            let cells = fields.iter().map(|(f, _)| sacct_field(f, &j, t)).collect::<Result<Vec<_>, _>>()?;
            line(&render(cells));
        }
    }
    Ok(0)
}

/// A node's state as sinfo abbreviates it.
fn sinfo_state(state: &str) -> &'static str {
    match state {
        "allocated" => "alloc",
        "mixed" => "mix",
        "down" => "down",
        "draining" => "drng",
        "drained" => "drain",
        _ => "idle",
    }
}

async fn sinfo(args: Vec<String>) -> Result<u8, String> {
    let (mut header, mut by_node, mut long) = (true, false, false);
    for a in &args {
        match a.as_str() {
            "-h" | "--noheader" => header = false,
            "-N" | "--Node" => by_node = true,
            "-l" | "--long" => long = true,
            "-Nl" | "-lN" => (by_node, long) = (true, true),
            "-a" | "--all" => {}
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let client = Client::from_env()?;
    let nodes: Vec<NodeView> = client.get("/nodes").await?;
    if by_node {
        // One line per node, as `sinfo -N` prints; with -l its size and why it is not all up.
        if header {
            let extra = if long { format!(" {:>5} {:>8} {:<8} {}", "CPUS", "MEMORY", "GRES", "REASON") } else { String::new() };
            line(&format!("{:<20} {:>5} {:<9} {:<5}{extra}", "NODELIST", "NODES", "PARTITION", "STATE"));
        }
        for n in &nodes {
            let extra = if long {
                let gres = if n.gpus > 0 { format!("gpu:{}", n.gpus) } else { "(null)".into() };
                let reason = match (n.state.as_str(), n.gpus_failed.first()) {
                    (_, Some(f)) => format!("gpu {} failed: {}", f.index, f.reason),
                    ("drained" | "draining", _) => "drained by the admin".into(),
                    ("down", _) => "agent not connected".into(),
                    _ => "none".into(),
                };
                format!(" {:>5} {:>8} {:<8} {reason}", n.cpus, n.mem_bytes >> 20, gres)
            } else {
                String::new()
            };
            line(&format!("{:<20} {:>5} {:<9} {:<5}{extra}", fit(&n.name, 20), 1, fit(&n.pool, 9), sinfo_state(&n.state)));
        }
        return Ok(0);
    }
    if header {
        line(&format!("{:<9} {:>5} {:>10} {:>6} {:>5} {}", "PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"));
    }
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in nodes {
        groups.entry((n.pool.clone(), sinfo_state(&n.state).to_string())).or_default().push(n.name);
    }
    let first_pool = groups.keys().next().map(|(p, _)| p.clone());
    for ((pool, state), names) in groups {
        let mark = if Some(&pool) == first_pool.as_ref() { "*" } else { "" };
        line(&format!("{:<9} {:>5} {:>10} {:>6} {:>5} {}", format!("{pool}{mark}"), "up", "infinite", names.len(), state, names.join(",")));
    }
    Ok(0)
}
