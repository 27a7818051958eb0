//! `srun` outside an allocation, as Slurm users type it at a login node (`srun -n 4 ./a.out`):
//! a job is made for the step, on one node, running this same srun inside it; what it prints
//! comes back as it is written, its exit status is srun's, and Ctrl-C cancels it.

use super::srun::Step;
use crate::client::Client;
use crate::commands::{absolute, current_dir, current_env, print_log};
use tidepool_api::{JobView, SubmitRequest, SubmitResponse};

/// Makes a job for the step `args` describe, follows it to its end and returns its exit status.
pub(super) async fn run_in_new_job(args: &[String], step: &Step) -> Result<u8, String> {
    if step.pty {
        return Err("--pty: interactive terminals are not offered here; run the program without --pty, or submit a batch script with sbatch".into());
    }
    let nodes = step.nodes.unwrap_or(1);
    if nodes > 1 {
        return Err(format!(
            "--nodes={nodes}: a step over several nodes runs inside a multi-node allocation; submit a batch script with sbatch --nodes {nodes} and call srun in it"
        ));
    }
    let ntasks = step.ntasks.or(step.ntasks_per_node);
    let workdir = match &step.chdir {
        Some(dir) => absolute(dir)?,
        None => current_dir()?,
    };
    let mut env = current_env();
    env.insert("SLURM_SUBMIT_HOST".into(), crate::up::host_name());
    let program = step.command[0].rsplit('/').next().unwrap_or(&step.command[0]).to_string();
    let req = SubmitRequest {
        name: Some(step.job_name.clone().unwrap_or(program)),
        // The same srun, inside the job's allocation, runs the step with the options given.
        command: std::iter::once("srun".to_string()).chain(args.iter().cloned()).collect(),
        cpus: step.cpus_per_task.map(|c| c.saturating_mul(ntasks.unwrap_or(1))),
        ntasks,
        mem: step.mem.clone(),
        time_limit: step.time.clone(),
        pool: step.partition.clone(),
        project: step.account.clone(),
        workdir: Some(workdir),
        env,
        ..SubmitRequest::default()
    };
    let client = Client::from_env()?;
    let job = client.post::<_, SubmitResponse>("/jobs", &req).await.map_err(|e| format!("Unable to allocate resources: {e}"))?.job_id;
    tokio::select! {
        outcome = follow(&client, job) => outcome,
        _ = tokio::signal::ctrl_c() => {
            let _ = client.post::<_, serde_json::Value>(&format!("/jobs/{job}/cancel"), &serde_json::json!({})).await;
            eprintln!("srun: Job step aborted: cancelled job {job}");
            Ok(130)
        }
    }
}

/// Says when the job waits and when it starts, as Slurm's srun does, prints its output as it
/// comes, then its errors; the task's exit status.
async fn follow(client: &Client, job: u64) -> Result<u8, String> {
    let mut said_waiting = false;
    loop {
        let view: JobView = client.get(&format!("/jobs/{job}")).await?;
        if view.state != "pending" {
            break;
        }
        if !said_waiting {
            let reason = view.pending_code.unwrap_or_else(|| "Priority".into());
            eprintln!("srun: job {job} queued and waiting for resources ({reason})");
            said_waiting = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    if said_waiting {
        eprintln!("srun: job {job} has been allocated resources");
    }
    print_log(client, job, 0, "stdout", None, true, &mut std::io::stdout().lock()).await?;
    // A task that wrote nothing on standard error leaves no file to read.
    let _ = print_log(client, job, 0, "stderr", None, true, &mut std::io::stderr().lock()).await;
    let view: JobView = client.get(&format!("/jobs/{job}?tasks=true")).await?;
    let task = view.tasks.first();
    Ok(match (task.map(|t| t.state.as_str()), task.and_then(|t| t.exit_code), task.and_then(|t| t.signal)) {
        (Some("succeeded"), _, _) => 0,
        (_, Some(code), _) if code > 0 => u8::try_from(code.clamp(1, 255)).unwrap_or(1),
        (_, _, Some(signal)) => u8::try_from((128 + signal).clamp(1, 255)).unwrap_or(1),
        _ => 1,
    })
}
