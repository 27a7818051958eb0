//! Validation of submissions, and what a task's launch is made of (paths, environment).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tidepool_api::{SubmitRequest, CONTAINER_FEATURE};
use tidepool_core::resources::{parse_mem_size, parse_time_limit};
use tidepool_core::{ArraySpec, GangSpec, JobId, JobSpec, Resources, Tier};

/// Longest name accepted.
const MAX_NAME_LEN: usize = 200;
/// Largest script accepted, in bytes.
const MAX_SCRIPT_BYTES: usize = 4 << 20;
/// Most cores one task may ask for (the largest machines sold have a few thousand).
const MAX_CPUS: u32 = 65_536;
/// Most GPUs one task may ask for.
const MAX_GPUS: u32 = 4_096;
/// Most memory one task may ask for: 1 PiB.
const MAX_MEM_BYTES: u64 = 1 << 50;
/// Longest time limit: one year (`unlimited` asks for none).
const MAX_TIME_LIMIT_S: u64 = 365 * 86_400;
/// Most nodes one multi-node job may span.
const MAX_NODES: u32 = 10_000;
/// Most of one named resource a task may ask for.
const MAX_NAMED_COUNT: u64 = 1_000_000;
/// Longest single argument or environment string: the kernel refuses longer ones at exec
/// (MAX_ARG_STRLEN, 32 pages).
const MAX_ARG_BYTES: usize = 128 * 1024;
/// Most bytes of command and environment together: exec's limit is 2 MiB with a default
/// stack, and Tidepool adds variables of its own.
const MAX_EXEC_BYTES: usize = 1 << 20;

/// The container fields of a submission: an image reference, `SRC:DST[:ro]` mounts of absolute
/// paths, an absolute working directory, a /dev/shm size.
fn check_container(req: &SubmitRequest) -> Result<()> {
    let container_only = !req.container_mounts.is_empty()
        || req.container_workdir.is_some()
        || req.shm_size.is_some()
        || req.network.is_some()
        || !req.container_env.is_empty();
    if req.network.as_deref().is_some_and(|n| !matches!(n, "host" | "none")) {
        return Err(Error::field("network", "use host or none"));
    }
    if let Some(bad) = req.container_env.iter().find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(Error::field("container_env", format!("'{bad}' is not a variable name")));
    }
    let Some(image) = &req.image else {
        return if container_only { Err(Error::field("image", "container options need an image")) } else { Ok(()) };
    };
    let variants = image_variants(image).map_err(|e| Error::field("image", e))?;
    for (feature, reference) in &variants {
        if let Some(f) = feature {
            if f.is_empty() || f.len() > 64 || !f.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
                return Err(Error::field("image", format!("'{f}' is not a feature name")));
            }
        }
        tidepool_api::ImageRef::parse(reference).map_err(|e| Error::field("image", e))?;
    }
    if variants.last().is_some_and(|(feature, _)| feature.is_some()) {
        return Err(Error::field("image", "the last variant must be generic=REF, for nodes with none of the features"));
    }
    if req.container_mounts.len() > 64 {
        return Err(Error::field("container_mounts", "at most 64 mounts"));
    }
    let usable = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.contains(['\0', ',']) && p.len() <= 4096;
    for mount in &req.container_mounts {
        let parts: Vec<&str> = mount.split(':').collect();
        let ok = match parts.as_slice() {
            [src, dst] => usable(src) && usable(dst),
            [src, dst, mode] => usable(src) && usable(dst) && matches!(*mode, "ro" | "rw"),
            _ => false,
        };
        if !ok {
            return Err(Error::field("container_mounts", format!("'{mount}' is not SRC:DST[:ro] with absolute paths")));
        }
    }
    if let Some(dir) = &req.container_workdir {
        if !usable(dir) {
            return Err(Error::field("container_workdir", "must be an absolute path"));
        }
    }
    if let Some(size) = &req.shm_size {
        tidepool_core::resources::parse_mem_size(size).map_err(|e| Error::field("shm_size", e))?;
    }
    Ok(())
}

/// The variants of an `image` field: `REF`, or `FEATURE=REF,...,generic=REF` (the first whose
/// feature a node has runs there; `generic` on any node), as (feature, reference) pairs.
pub fn image_variants(image: &str) -> std::result::Result<Vec<(Option<String>, String)>, String> {
    let mut variants = Vec::new();
    for part in image.split(',') {
        // A reference's '=' could only follow a '/', ':' or '@'; a variant's comes first.
        let variant = part.split_once('=').filter(|(feature, _)| !feature.contains(['/', ':', '@']));
        match variant {
            Some(("generic", reference)) => variants.push((None, reference.to_string())),
            Some((feature, reference)) => variants.push((Some(feature.to_string()), reference.to_string())),
            None if image.contains(',') => return Err(format!("'{part}': a variant is FEATURE=REF (or generic=REF)")),
            None => variants.push((None, part.to_string())),
        }
    }
    if variants.len() > 16 {
        return Err("at most 16 variants".into());
    }
    Ok(variants)
}

/// The image of `image`'s variants that runs on a node with `features`.
pub fn image_for(image: &str, features: &[&str]) -> Option<String> {
    image_variants(image)
        .ok()?
        .into_iter()
        .find(|(feature, _)| feature.as_deref().is_none_or(|f| features.contains(&f)))
        .map(|(_, reference)| reference)
}

/// Slurm's `--dependency`: `TYPE:JOB[:JOB...][+MINUTES]` joined by `,` (all) or `?` (any one),
/// or `singleton`; types `after`, `afterok`, `afterany`, `afternotok`, `aftercorr`.
pub fn parse_dependency(text: &str) -> std::result::Result<tidepool_core::Dependencies, String> {
    use tidepool_core::{After, AfterKind, Dependencies};
    let text = text.trim();
    if text.contains(',') && text.contains('?') {
        return Err("use ',' (all) or '?' (any one), not both".into());
    }
    let mut deps = Dependencies { any_of: text.contains('?'), ..Dependencies::default() };
    for item in text.split([',', '?']).map(str::trim) {
        if item == "singleton" {
            deps.singleton = true;
            continue;
        }
        let mut parts = item.split(':');
        let kind = match parts.next().unwrap_or("") {
            "after" => AfterKind::Start,
            "afterok" => AfterKind::Ok,
            "afterany" => AfterKind::Any,
            "afternotok" => AfterKind::NotOk,
            "aftercorr" => AfterKind::Corr,
            "afterburstbuffer" => return Err("afterburstbuffer: this fleet has no burst buffers".into()),
            "" => return Err("an empty dependency".into()),
            other => return Err(format!("'{other}' is not a dependency type (after, afterok, afterany, afternotok, aftercorr, singleton)")),
        };
        let mut named = false;
        for part in parts {
            let (id, delay) = match part.split_once('+') {
                Some((id, minutes)) => {
                    let minutes: u64 = minutes.parse().map_err(|_| format!("'+{minutes}': a delay is whole minutes"))?;
                    (id, minutes.checked_mul(60_000).filter(|ms| *ms <= 366 * 86_400_000).ok_or("a delay of over a year")?)
                }
                None => (part, 0),
            };
            if id.contains('_') {
                return Err(format!("'{id}': a dependency names a whole job here, not one array task"));
            }
            let job: u64 = id.parse().map_err(|_| format!("'{id}' is not a job id"))?;
            deps.on.push(After { kind, job: JobId(job), delay_ms: delay });
            named = true;
        }
        if !named {
            return Err(format!("'{item}' names no job (example: afterok:12)"));
        }
    }
    if deps.on.len() > 1000 {
        return Err("at most 1000 dependencies".into());
    }
    Ok(deps)
}

/// How big a container's /dev/shm is: as asked, else half the task's memory, else 1 GiB
/// (never the 64 MB that breaks scientific codes).
pub fn shm_bytes(req: &SubmitRequest, mem_bytes: u64) -> u64 {
    match req.shm_size.as_deref().and_then(|s| tidepool_core::resources::parse_mem_size(s).ok()) {
        Some(bytes) => bytes,
        None if mem_bytes > 0 => (mem_bytes / 2).max(64 << 20),
        None => 1 << 30,
    }
}

/// Checks a request and turns it into the core's spec. Nothing is written here.
pub fn validate(req: &SubmitRequest, max_array_size: u32) -> Result<JobSpec> {
    match (&req.script, req.command.is_empty()) {
        (Some(_), false) => {
            return Err(Error::field("command", "give either a command or a script, not both"))
        }
        (None, true) => return Err(Error::field("command", "is empty: nothing to run")),
        (Some(script), true) => {
            if !script.starts_with("#!") {
                return Err(Error::field(
                    "script",
                    "must start with #! and an interpreter (e.g. #!/bin/bash)",
                ));
            }
            if script.len() > MAX_SCRIPT_BYTES {
                return Err(Error::field("script", "is larger than 4 MiB"));
            }
        }
        (None, false) => {
            if req.command[0].is_empty() {
                return Err(Error::field("command", "the program name is empty"));
            }
        }
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(Error::field("command", "contains a NUL byte"));
    }
    let name = match &req.name {
        Some(n) if n.trim().is_empty() => return Err(Error::field("name", "is empty")),
        Some(n) if n.len() > MAX_NAME_LEN => {
            return Err(Error::field("name", format!("is longer than {MAX_NAME_LEN} bytes")))
        }
        Some(n) if n.chars().any(char::is_control) => {
            return Err(Error::field("name", "contains control characters"))
        }
        Some(n) => n.clone(),
        None => default_name(req),
    };
    // Slurm's default: one core per task of the allocation (on each node of a multi-node one).
    let cpus = req.cpus.unwrap_or_else(|| if is_batch_allocation(req) { req.tasks_per_node.unwrap_or(1) } else { req.ntasks.unwrap_or(1) });
    if cpus == 0 {
        return Err(Error::field("cpus", "must be at least 1"));
    }
    if cpus > MAX_CPUS {
        return Err(Error::field("cpus", format!("{cpus} is more than the {MAX_CPUS} cores a task may ask for")));
    }
    if let Some(gpus) = req.gpus.filter(|g| *g > MAX_GPUS) {
        return Err(Error::field("gpus", format!("{gpus} is more than the {MAX_GPUS} GPUs a task may ask for")));
    }
    let mem_bytes = match &req.mem {
        Some(m) => parse_mem_size(m).map_err(|e| Error::field("mem", e))?,
        None => 0,
    };
    if mem_bytes > MAX_MEM_BYTES {
        return Err(Error::field("mem", format!("'{}' is more than the 1 PiB a task may ask for", req.mem.as_deref().unwrap_or(""))));
    }
    if let Some(nodes) = req.nodes.filter(|n| *n > MAX_NODES) {
        return Err(Error::field("nodes", format!("{nodes} is more than the {MAX_NODES} nodes a job may span")));
    }
    let gang = match (req.nodes, req.tasks_per_node) {
        // The script once, on the first node; one share of the allocation on each node.
        (Some(n), _) if is_batch_allocation(req) => {
            if req.array.is_some() {
                return Err(Error::field("array", "a multi-node job cannot also be an array"));
            }
            if req.image.is_some() {
                return Err(Error::field("image", "a multi-node batch script cannot run in an image yet; submit its ranks as a gang with a command"));
            }
            Some(GangSpec { n_nodes: n, tasks_per_node: 1 })
        }
        (None, None) => None,
        (Some(0), _) => return Err(Error::field("nodes", "must be at least 1")),
        (_, Some(0)) => return Err(Error::field("tasks_per_node", "must be at least 1")),
        (n, m) => {
            if req.array.is_some() {
                return Err(Error::field("array", "a multi-node job cannot also be an array"));
            }
            let gang = GangSpec { n_nodes: n.unwrap_or(1), tasks_per_node: m.unwrap_or(1) };
            if u64::from(gang.n_nodes) * u64::from(gang.tasks_per_node) > 100_000 {
                return Err(Error::field("nodes", "more than 100,000 ranks"));
            }
            Some(gang)
        }
    };
    let array = match (&req.array, gang) {
        (Some(a), _) => ArraySpec::parse(a, max_array_size.saturating_sub(1))
            .map_err(|e| Error::field("array", e))?,
        (None, Some(g)) => ArraySpec::parse(&format!("0-{}", g.n_nodes * g.tasks_per_node - 1), u32::MAX)
            .map_err(|e| Error::field("nodes", e))?,
        (None, None) => ArraySpec::single(),
    };
    for f in &req.constraint {
        if f.is_empty() || f.len() > 64 || !f.chars().all(|c| c.is_ascii_alphanumeric() || "-_.=:".contains(c)) {
            return Err(Error::field("constraint", format!("'{f}' is not a feature name")));
        }
    }
    for name in req.resources.keys() {
        if name.is_empty() || name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(Error::field("resources", format!("'{name}' is not a resource name")));
        }
        if matches!(name.as_str(), "cpu" | "cpus" | "mem" | "memory" | "gpu" | "gpus") {
            return Err(Error::field("resources", format!("'{name}' has its own field")));
        }
        if req.resources[name] > MAX_NAMED_COUNT {
            return Err(Error::field("resources", format!("{name}={} is more than the {MAX_NAMED_COUNT} a task may ask for", req.resources[name])));
        }
    }
    let tier: Tier = match &req.tier {
        Some(t) => t.parse().map_err(|e: String| Error::field("tier", e))?,
        None => Tier::Batch,
    };
    let time_limit_s = match &req.time_limit {
        Some(t) => parse_time_limit(t).map_err(|e| Error::field("time_limit", e))?,
        None => None,
    };
    if time_limit_s.is_some_and(|s| s > MAX_TIME_LIMIT_S) {
        return Err(Error::field("time_limit", "is longer than a year (use 'unlimited' for no limit)"));
    }
    let project = req.project.clone().unwrap_or_else(|| "default".to_string());
    if project.is_empty() || !project.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::field("project", "use letters, digits, '-', '_' and '.'"));
    }
    match &req.workdir {
        Some(w) if !w.starts_with('/') => {
            return Err(Error::field("workdir", "must be an absolute path"))
        }
        _ => {}
    }
    for (key, value) in &req.env {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::field("env", format!("'{key}' is not a variable name")));
        }
        if value.contains('\0') {
            return Err(Error::field("env", format!("the value of {key} contains a NUL byte")));
        }
    }
    check_exec_sizes(req)?;
    for key in req.secret_env.keys() {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::field("secret_env", format!("'{key}' is not a variable name")));
        }
    }
    for pattern in [&req.output, &req.error].into_iter().flatten() {
        if pattern.is_empty() || pattern.contains('\0') {
            return Err(Error::field("output", "is not a usable path pattern"));
        }
    }
    if let Some(n) = req.ntasks {
        if req.nodes.is_some() && !is_batch_allocation(req) {
            return Err(Error::field("ntasks", "with nodes, give tasks_per_node"));
        }
        if n == 0 || n > 100_000 {
            return Err(Error::field("ntasks", "must be 1 to 100,000"));
        }
    }
    if let Some(signal) = &req.signal {
        tidepool_api::parse_warn_signal(signal).map_err(|e| Error::field("signal", e))?;
    }
    if req.open_mode.as_deref().is_some_and(|m| !matches!(m, "append" | "truncate")) {
        return Err(Error::field("open_mode", "use append or truncate"));
    }
    let dependencies = match (&req.dependency, req.after.is_empty()) {
        (Some(_), false) => return Err(Error::field("dependency", "give dependencies in one of after and dependency")),
        (Some(text), true) => parse_dependency(text).map_err(|e| Error::field("dependency", e))?,
        (None, _) => tidepool_core::Dependencies::after_ok(req.after.iter().map(|id| JobId(*id))),
    };
    let mut requires = req.constraint.clone();
    check_container(req)?;
    if req.image.is_some() {
        // Only nodes whose agent can run OCI bundles take them.
        requires.push(CONTAINER_FEATURE.to_string());
    }
    Ok(JobSpec {
        name,
        project,
        tier,
        per_task: Resources {
            cpu_millis: u64::from(cpus) * 1000,
            mem_bytes,
            n_gpus: req.gpus.unwrap_or(0),
            ..Resources::default()
        },
        array,
        time_limit_s,
        dependencies,
        pool: req.pool.clone(),
        requires,
        named: req.resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        gang,
        // Nodes that hold the image start its tasks without a pull (variants: none preferred).
        warm_key: req.image.clone().filter(|image| !image.contains(',')),
    })
}

/// Refuses a command or environment that exec would refuse, naming the field.
fn check_exec_sizes(req: &SubmitRequest) -> Result<()> {
    let kib = |n: usize| n / 1024;
    if let Some(arg) = req.command.iter().find(|a| a.len() >= MAX_ARG_BYTES) {
        return Err(Error::field("command", format!("an argument of {} KiB is longer than exec allows ({} KiB)", kib(arg.len()), kib(MAX_ARG_BYTES))));
    }
    let variables = req.env.iter().map(|(k, v)| ("env", k, v)).chain(req.secret_env.iter().map(|(k, v)| ("secret_env", k, v)));
    let mut total: usize = req.command.iter().map(|a| a.len() + 1).sum();
    for (field, key, value) in variables {
        let len = key.len() + value.len() + 2;
        if len >= MAX_ARG_BYTES {
            return Err(Error::field(field, format!("{key} is {} KiB, longer than exec allows for one variable ({} KiB)", kib(len), kib(MAX_ARG_BYTES))));
        }
        total += len;
    }
    if total > MAX_EXEC_BYTES {
        return Err(Error::field("env", format!("the command and environment take {} KiB, more than the {} KiB a task may be started with", kib(total), kib(MAX_EXEC_BYTES))));
    }
    Ok(())
}

fn default_name(req: &SubmitRequest) -> String {
    if req.script.is_some() {
        return "sbatch".to_string();
    }
    let program = req.command.first().map(String::as_str).unwrap_or("job");
    program.rsplit('/').next().unwrap_or(program).chars().take(MAX_NAME_LEN).collect()
}

/// A job as the journal holds it (its request's JSON), read back with its spec; accepted
/// once, so no bound of today refuses it.
pub fn journaled(text: &str) -> std::result::Result<(SubmitRequest, JobSpec), String> {
    let req: SubmitRequest = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let spec = validate(&req, u32::MAX).map_err(|e| e.to_string())?;
    Ok((req, spec))
}

/// What Slurm's filename patterns are filled with for one task.
pub struct PatternValues<'a> {
    /// The job id (an array's: `%A`).
    pub job_id: u64,
    /// The task's own job id (`%j`): an array task's, else the job's.
    pub own_job_id: u64,
    /// The task's array index.
    pub index: u32,
    /// The job name.
    pub name: &'a str,
    /// The node name.
    pub node: &'a str,
    /// The submitting user.
    pub user: &'a str,
    /// The step and the task's rank in it (`%s`, `%t`, and `%J` as `JOB.STEP`), for srun's
    /// files; none for a batch script's, whose step and rank are 0 and whose `%J` is the job.
    pub step: Option<(u32, u32)>,
}

/// Expands `%A %a %j %J %x %N %u %n %t %s %%` with optional zero-padding (`%4a`), as sbatch
/// and srun do.
pub fn expand_pattern(pattern: &str, v: &PatternValues<'_>) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        let width: usize = width.parse().unwrap_or(0).min(10);
        let pad = |n: u64| format!("{n:0width$}");
        match chars.next() {
            Some('A') => out.push_str(&pad(v.job_id)),
            Some('j') => out.push_str(&pad(v.own_job_id)),
            Some('J') => match v.step {
                Some((step, _)) => out.push_str(&format!("{}.{step}", pad(v.own_job_id))),
                None => out.push_str(&pad(v.own_job_id)),
            },
            Some('a') => out.push_str(&pad(u64::from(v.index))),
            Some('x') => out.push_str(v.name),
            Some('N') => out.push_str(v.node),
            Some('u') => out.push_str(v.user),
            Some('s') => out.push_str(&pad(v.step.map_or(0, |(step, _)| u64::from(step)))),
            Some('t') => out.push_str(&pad(v.step.map_or(0, |(_, rank)| u64::from(rank)))),
            // The node's index in the step: one node here.
            Some('n') => out.push_str(&pad(0)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The job id of task `index` of job `job_id`: an array task's own (Slurm gives each one),
/// else the job's.
pub fn own_job_id(spec: &JobSpec, job_id: u64, index: u32) -> u64 {
    spec.array.position_of(index).map_or(job_id, |pos| spec.task_job_id(job_id, pos))
}

/// Joins a path to the working directory unless it is absolute.
pub fn under_workdir(workdir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), path)
    }
}

/// A batch script over several nodes (Slurm's `sbatch --nodes N`, N > 1): the script runs once,
/// on the first node; each other node holds its share of the allocation for the script's
/// `srun` steps (`srun --step-host`).
pub fn is_batch_allocation(req: &SubmitRequest) -> bool {
    req.script.is_some() && req.nodes.is_some_and(|n| n > 1)
}

/// How `ntasks` ranks spread over `nodes` nodes, block by block as Slurm's default: the first
/// `ntasks % nodes` nodes take one more.
pub fn ranks_per_node(ntasks: u32, nodes: u32) -> Vec<u32> {
    let nodes = nodes.max(1);
    (0..nodes).map(|k| ntasks / nodes + u32::from(k < ntasks % nodes)).collect()
}

/// Slurm's compressed per-node counts: `4(x2)` for 4 on each of 2 nodes, `3,2` otherwise.
pub fn compressed_counts(counts: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < counts.len() {
        let run = counts[i..].iter().take_while(|c| **c == counts[i]).count();
        parts.push(if run > 1 { format!("{}(x{run})", counts[i]) } else { counts[i].to_string() });
        i += run;
    }
    parts.join(",")
}

/// The environment a task sees: the job's, then the Slurm and Tidepool variables.
#[allow(clippy::too_many_arguments)]
pub fn task_env(
    req: &SubmitRequest,
    spec: &JobSpec,
    job_id: u64,
    index: u32,
    attempt: u32,
    node: &str,
    nodelist: &str,
    public_url: &str,
) -> BTreeMap<String, String> {
    let mut env = req.env.clone();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    let cpus = (spec.per_task.cpu_millis / 1000).max(1);
    let own_job_id = own_job_id(spec, job_id, index);
    set("SLURM_JOB_ID", own_job_id.to_string());
    set("SLURM_JOBID", own_job_id.to_string());
    set("SLURM_JOB_NAME", spec.name.clone());
    set("SLURM_CPUS_ON_NODE", cpus.to_string());
    set("SLURM_JOB_NUM_NODES", "1".into());
    set("SLURM_NNODES", "1".into());
    set("SLURM_JOB_NODELIST", nodelist.to_string());
    set("SLURM_NODELIST", nodelist.to_string());
    set("SLURMD_NODENAME", node.to_string());
    set("SLURM_JOB_ACCOUNT", spec.project.clone());
    set("SLURM_CLUSTER_NAME", "tidepool".into());
    set("SLURM_PROCID", "0".into());
    set("SLURM_LOCALID", "0".into());
    set("SLURM_NODEID", "0".into());
    set("SLURM_TASKS_PER_NODE", "1".into());
    set("SLURM_JOB_CPUS_PER_NODE", cpus.to_string());
    // As Slurm: the task count and cores per task are told only when the job gave them.
    let ntasks = req.ntasks.unwrap_or(1);
    if req.ntasks.is_some() {
        set("SLURM_NTASKS", ntasks.to_string());
        set("SLURM_NPROCS", ntasks.to_string());
        set("SLURM_TASKS_PER_NODE", ntasks.to_string());
    }
    if req.cpus.is_some() {
        set("SLURM_CPUS_PER_TASK", (cpus / u64::from(ntasks)).max(1).to_string());
    }
    // Set only once a task has run again, as Slurm's requeue count.
    if attempt > 1 {
        set("SLURM_RESTART_COUNT", (attempt - 1).to_string());
    }
    if let Some(pool) = &spec.pool {
        set("SLURM_JOB_PARTITION", pool.clone());
    }
    if let Some(dir) = &req.workdir {
        set("SLURM_SUBMIT_DIR", dir.clone());
    }
    // Memory asked per core is told as that instead (sbatch --mem-per-cpu sets it).
    if spec.per_task.mem_bytes > 0 && !req.env.contains_key("SLURM_MEM_PER_CPU") {
        set("SLURM_MEM_PER_NODE", (spec.per_task.mem_bytes >> 20).to_string());
    }
    if req.array.is_some() {
        let ranges = spec.array.ranges();
        let step = if ranges.len() == 1 { ranges[0].step } else { 1 };
        set("SLURM_ARRAY_JOB_ID", job_id.to_string());
        set("SLURM_ARRAY_TASK_ID", index.to_string());
        set("SLURM_ARRAY_TASK_COUNT", spec.array.n_tasks().to_string());
        set("SLURM_ARRAY_TASK_MIN", ranges.first().map_or(0, |r| r.start).to_string());
        set("SLURM_ARRAY_TASK_MAX", spec.array.max_index().to_string());
        set("SLURM_ARRAY_TASK_STEP", step.to_string());
    }
    if let (Some(g), true) = (spec.gang, is_batch_allocation(req)) {
        // One batch script over the allocation: its node numbers, and its ranks for srun.
        let per_node = req.tasks_per_node.unwrap_or(1);
        let ntasks = req.ntasks.unwrap_or(g.n_nodes);
        let counts: Vec<u64> = ranks_per_node(ntasks, g.n_nodes).into_iter().map(u64::from).collect();
        if req.ntasks.is_some() {
            set("SLURM_NTASKS", ntasks.to_string());
            set("SLURM_NPROCS", ntasks.to_string());
        }
        set("SLURM_NODEID", index.to_string());
        set("SLURM_JOB_NUM_NODES", g.n_nodes.to_string());
        set("SLURM_NNODES", g.n_nodes.to_string());
        set("SLURM_TASKS_PER_NODE", compressed_counts(&counts));
        set("SLURM_JOB_CPUS_PER_NODE", compressed_counts(&vec![cpus; g.n_nodes as usize]));
        if req.cpus.is_some() {
            set("SLURM_CPUS_PER_TASK", (cpus / u64::from(per_node.max(1))).max(1).to_string());
        }
    } else if let Some(g) = spec.gang {
        set("SLURM_NTASKS", (g.n_nodes * g.tasks_per_node).to_string());
        set("SLURM_NPROCS", (g.n_nodes * g.tasks_per_node).to_string());
        set("SLURM_PROCID", index.to_string());
        set("SLURM_NODEID", (index / g.tasks_per_node).to_string());
        set("SLURM_LOCALID", (index % g.tasks_per_node).to_string());
        set("SLURM_JOB_NUM_NODES", g.n_nodes.to_string());
        set("SLURM_NNODES", g.n_nodes.to_string());
        set("SLURM_NTASKS_PER_NODE", g.tasks_per_node.to_string());
        // Slurm's compressed per-node lists: "4(x2)" is 4 on each of 2 nodes.
        let per_node = |n: u64| compressed_counts(&vec![n; g.n_nodes as usize]);
        set("SLURM_TASKS_PER_NODE", per_node(u64::from(g.tasks_per_node)));
        set("SLURM_JOB_CPUS_PER_NODE", per_node(cpus * u64::from(g.tasks_per_node)));
    }
    set("TIDEPOOL_JOB_ID", job_id.to_string());
    set("TIDEPOOL_TASK_INDEX", index.to_string());
    set("TIDEPOOL_ATTEMPT", attempt.to_string());
    set("TIDEPOOL_URL", public_url.to_string());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_variants_pick_the_first_feature_a_node_has() {
        let image = "avx512=reg:5000/sim:avx512,avx2=reg:5000/sim:avx2,generic=reg:5000/sim:base";
        assert_eq!(image_for(image, &["x86_64", "avx2", "avx512"]).as_deref(), Some("reg:5000/sim:avx512"));
        assert_eq!(image_for(image, &["x86_64", "avx2"]).as_deref(), Some("reg:5000/sim:avx2"));
        assert_eq!(image_for(image, &["aarch64"]).as_deref(), Some("reg:5000/sim:base"));
        assert_eq!(image_for("reg:5000/a=b", &[]).as_deref(), Some("reg:5000/a=b"), "a '=' after a '/' is the reference's");
        assert!(image_variants("avx2=x,plain").is_err());
    }

    fn req(command: &[&str]) -> SubmitRequest {
        SubmitRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(SubmitRequest, &str)> = vec![
            (req(&[]), "command"),
            (SubmitRequest { cpus: Some(0), ..req(&["true"]) }, "cpus"),
            (SubmitRequest { array: Some("0-2000000".into()), ..req(&["true"]) }, "array"),
            (SubmitRequest { mem: Some("4Q".into()), ..req(&["true"]) }, "mem"),
            (SubmitRequest { tier: Some("gold".into()), ..req(&["true"]) }, "tier"),
            (SubmitRequest { time_limit: Some("x".into()), ..req(&["true"]) }, "time_limit"),
            (SubmitRequest { workdir: Some("rel".into()), ..req(&["true"]) }, "workdir"),
            (SubmitRequest { script: Some("echo".into()), ..Default::default() }, "script"),
        ];
        for (r, field) in cases {
            match validate(&r, 1_000_001) {
                Err(Error::BadRequest { field: Some(f), .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(validate(&req(&["true"]), 1_000_001).is_ok());
    }

    #[test]
    fn patterns_expand_like_sbatch() {
        let v = PatternValues { job_id: 42, own_job_id: 49, index: 7, name: "sim", node: "n1", user: "ana", step: None };
        assert_eq!(expand_pattern("out_%A_%a.txt", &v), "out_42_7.txt");
        assert_eq!(expand_pattern("%x-%j-%3a-%%.log", &v), "sim-49-007-%.log", "an array task's own job id");
        assert_eq!(expand_pattern("%N/%u", &v), "n1/ana");
    }
}
