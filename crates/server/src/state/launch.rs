//! What an agent is sent to start an attempt: its command, environment, secrets and output paths.

use super::*;

/// Where a task's output goes: (stdout, stderr, discard when empty).
/// What each node of a multi-node batch allocation but the first runs: srun's step host, from
/// the task's PATH as the script would find it.
const STEP_HOST_SCRIPT: &str = "#!/bin/sh\nexec srun --step-host\n";

pub(super) fn output_paths(
    config: &Config,
    req: &SubmitRequest,
    spec: &JobSpec,
    job_id: u64,
    index: u32,
    node: &str,
) -> (String, String, bool) {
    let workdir = req.workdir.clone().unwrap_or_else(|| "/".into());
    let user = req.env.get("USER").map(String::as_str).unwrap_or("");
    let values = PatternValues { job_id, own_job_id: spec::own_job_id(spec, job_id, index), index, name: &spec.name, node, user, step: None };
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

/// Writes a job's secret values to their own file (mode 0600), durably, before the job is
/// journaled.
pub(super) fn save_secrets(dir: &std::path::Path, job_id: u64, secrets: &std::collections::BTreeMap<String, String>) -> Result<()> {
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

pub(super) fn load_secrets(dir: &std::path::Path) -> HashMap<JobId, std::collections::BTreeMap<String, String>> {
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

/// The variables that tell a task which GPUs are its own, by index, as CUDA, NVIDIA's
/// container tools, ROCm and Slurm scripts read them; a task given none on a node that has
/// some is shown none, so it cannot take another task's.
fn set_gpu_env(env: &mut std::collections::BTreeMap<String, String>, gpus: &[u32], node_has_gpus: bool) {
    if gpus.is_empty() && !node_has_gpus {
        return;
    }
    let list = gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    env.insert("CUDA_VISIBLE_DEVICES".into(), list.clone());
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), if gpus.is_empty() { "void".into() } else { list.clone() });
    env.insert("GPU_DEVICE_ORDINAL".into(), list.clone());
    env.insert("ROCR_VISIBLE_DEVICES".into(), list.clone());
    env.insert("TIDEPOOL_GPUS".into(), list.clone());
    if !gpus.is_empty() {
        env.insert("SLURM_JOB_GPUS".into(), list.clone());
        env.insert("SLURM_STEP_GPUS".into(), list);
    }
}

impl Inner {
    pub(super) fn launch_for(&self, config: &Config, job_id: JobId, index: u32, attempt: u32, node: &str) -> Option<Launch> {
        let req = self.requests.get(&job_id)?;
        let job = self.cluster.job(job_id)?;
        let spec = job.spec();
        let pos = spec.array.position_of(index)?;
        let gpus = tidepool_core::cluster::gpu_indexes(job.running_task(pos).map_or(0, |r| r.gpus));
        let allocation = spec::is_batch_allocation(req);
        // The script runs on the allocation's first node; the others hold their share for its
        // steps, writing their own log, never the script's output files.
        let step_host = allocation && index > 0;
        let (stdout_path, stderr_path, discard_empty_output) = if step_host {
            let base = config.data_dir.join("logs").join(job_id.0.to_string()).join(index.to_string());
            (format!("{}.out", base.display()), format!("{}.err", base.display()), true)
        } else {
            output_paths(config, req, spec, job_id.0, index, node)
        };
        let nodelist = if spec.gang.is_some() {
            let job = self.cluster.job(job_id)?;
            let mut placed: Vec<(u32, &str)> = job
                .running_tasks()
                .filter_map(|(pos, r)| self.cluster.node(r.node_id).map(|n| (pos, n.name())))
                .collect();
            // An allocation's nodes in node-number order (the batch script's first, as in
            // Slurm, where it runs on the first of the list); a gang's sorted by name.
            if spec::is_batch_allocation(req) {
                placed.sort_unstable();
            } else {
                placed.sort_unstable_by_key(|(_, name)| *name);
            }
            let mut names: Vec<&str> = placed.into_iter().map(|(_, name)| name).collect();
            names.dedup();
            names.join(",")
        } else {
            node.to_string()
        };
        Some(Launch {
            attempt: AttemptRef { job_id: job_id.0, index, attempt },
            command: req.command.clone(),
            script: if step_host { Some(STEP_HOST_SCRIPT.to_string()) } else { req.script.clone() },
            env: {
                let mut env = spec::task_env(req, spec, job_id.0, index, attempt, node, &nodelist, &config.public_url);
                let the_node = self.cluster.node_id(node).and_then(|id| self.cluster.node(id));
                let node_has_gpus = the_node.is_some_and(|n| n.capacity().n_gpus > 0);
                // The partition it runs in: the node's pool (of a list, the one that took it).
                if let Some(n) = the_node {
                    env.insert("SLURM_JOB_PARTITION".into(), n.pool().to_string());
                }
                set_gpu_env(&mut env, &gpus, node_has_gpus);
                if allocation {
                    env.insert("TIDEPOOL_STEP_KEY".into(), self.step_key_of(job_id.0));
                }
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
            append_output: req.open_mode.as_deref() == Some("append"),
            warn_signal: req.signal.as_deref().and_then(|s| tidepool_api::parse_warn_signal(s).ok()),
            run_as: self.identities.get(&spec.project).cloned(),
            gpus,
            container: req.image.as_ref().map(|image| tidepool_api::ContainerLaunch {
                image: {
                    let features = self.cluster.node_id(node).and_then(|id| self.cluster.node(id)).map(|n| self.cluster.feature_names(n.feature_mask())).unwrap_or_default();
                    spec::image_for(image, &features).unwrap_or_else(|| image.clone())
                },
                mounts: req.container_mounts.clone(),
                workdir: req.container_workdir.clone(),
                shm_bytes: spec::shm_bytes(req, spec.per_task.mem_bytes),
                isolated_network: req.network.as_deref() == Some("none"),
                task_env_wins: req.container_env.clone(),
                rootfs: String::new(),
                image_env: Vec::new(),
                digest: String::new(),
                registry_auth: self.registry_logins.for_image(&spec.project, image),
            }),
        })
    }
}
