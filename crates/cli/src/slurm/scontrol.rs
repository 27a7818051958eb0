//! `scontrol show job [ID]` in Slurm's `Key=Value` records (one per line with `-o`), and
//! `scontrol show hostnames [LIST]`.

use super::srun::expand_hostlist;
use crate::client::Client;
use crate::commands::parse_target;
use crate::output::{iso_time, line};
use tidepool_api::{JobView, TaskView};

/// `scontrol show ...`; other subcommands are refused with what is known here.
pub(super) async fn scontrol(args: Vec<String>) -> Result<u8, String> {
    let one_liner = args.iter().any(|a| a == "-o" || a == "--oneliner");
    let words: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "-o" && *a != "--oneliner").collect();
    match words.as_slice() {
        ["show", "hostnames" | "hostname", rest @ ..] => {
            let list = match rest.first() {
                Some(list) => list.to_string(),
                None => std::env::var("SLURM_JOB_NODELIST").map_err(|_| "no host list given and SLURM_JOB_NODELIST is not set".to_string())?,
            };
            for name in expand_hostlist(&list)? {
                line(&name);
            }
            Ok(0)
        }
        ["show", "job" | "jobs", rest @ ..] => {
            let target = match rest.first() {
                Some(t) => t.to_string(),
                None => std::env::var("SLURM_JOB_ID").map_err(|_| "name a job: scontrol show job ID".to_string())?,
            };
            let (asked, index) = parse_target(&target)?;
            let client = Client::from_env()?;
            let job: JobView = client
                .get(&format!("/jobs/{asked}?tasks=true"))
                .await
                .map_err(|e| if e.contains("does not exist") { "slurm_load_jobs error: Invalid job id specified".to_string() } else { e })?;
            let tasks: Vec<&TaskView> = job
                .tasks
                .iter()
                .filter(|t| index.is_none_or(|i| t.index == i) && (asked == job.id || t.job_id == asked))
                .collect();
            // The partition a job that named none runs in is its node's pool.
            let nodes: Vec<tidepool_api::NodeView> = if job.pool.is_none() { client.get("/nodes").await.unwrap_or_default() } else { Vec::new() };
            let pool_of = |task: Option<&TaskView>| {
                job.pool.clone().or_else(|| {
                    let node = task?.node.as_deref()?;
                    nodes.iter().find(|n| n.name == node).map(|n| n.pool.clone())
                })
            };
            let joiner = if one_liner { " " } else { "\n   " };
            if tasks.is_empty() {
                line(&record(&job, None, pool_of(None)).join(joiner));
            }
            for task in tasks {
                line(&record(&job, Some(task), pool_of(Some(task))).join(joiner));
            }
            Ok(0)
        }
        _ => Err(format!("'{}' is not supported here: Tidepool's scontrol knows `show job [ID]` and `show hostnames [LIST]`", words.join(" "))),
    }
}

/// One job's (or array task's) record, a group of `Key=Value` pairs per line as Slurm prints it.
fn record(job: &JobView, task: Option<&TaskView>, pool: Option<String>) -> Vec<String> {
    let state = task.map_or(job.state.as_str(), |t| t.state.as_str());
    let slurm_state = super::slurm_state(state);
    let id = task.map_or(job.id, |t| t.job_id);
    let mut first = vec![format!("JobId={id}")];
    if let (Some(_), Some(t)) = (&job.array, task) {
        first.push(format!("ArrayJobId={} ArrayTaskId={}", job.id, t.index));
    }
    first.push(format!("JobName={}", job.name));
    let reason = if state == "pending" { job.pending_code.clone().unwrap_or_else(|| "None".into()) } else { "None".into() };
    let exit = match task.map(|t| (t.exit_code, t.signal)) {
        Some((_, Some(sig))) => format!("0:{sig}"),
        Some((Some(code), None)) => format!("{code}:0"),
        _ => "0:0".into(),
    };
    let started = task.and_then(|t| t.started_ms);
    let ended = task.and_then(|t| t.ended_ms);
    let run_s = started.map_or(0, |s| ended.unwrap_or_else(tidepool_api::dates::now_ms).saturating_sub(s) / 1000);
    let limit = job.time_limit_s.map_or_else(|| "UNLIMITED".to_string(), super::squeue_time);
    let node = task.and_then(|t| t.node.clone());
    let cpus = job.cpus.ceil() as u64;
    let per_node_mem = if job.mem_bytes > 0 { format!("{}M", job.mem_bytes >> 20) } else { "0".into() };
    vec![
        first.join(" "),
        format!("Account={} QOS={}", job.project, job.tier),
        format!("JobState={slurm_state} Reason={reason}"),
        format!("Restarts={} ExitCode={exit}", task.map_or(0, |t| t.attempt.saturating_sub(1))),
        format!("RunTime={} TimeLimit={limit}", super::squeue_time(run_s)),
        format!("SubmitTime={}", iso_time(job.submitted_ms)),
        format!(
            "StartTime={} EndTime={}",
            started.map_or_else(|| "Unknown".to_string(), iso_time),
            ended.map_or_else(|| "Unknown".to_string(), iso_time)
        ),
        format!("Partition={}", pool.unwrap_or_else(|| "(null)".into())),
        format!("NodeList={}", node.clone().unwrap_or_else(|| "(null)".into())),
        format!("NumNodes={} NumCPUs={cpus} NumTasks=1 CPUs/Task={cpus}", u32::from(node.is_some())),
        format!("MinMemoryNode={per_node_mem}"),
        format!("Command={}", job.command.join(" ")),
        format!("WorkDir={}", job.workdir),
    ]
}
