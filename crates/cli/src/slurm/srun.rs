//! `srun` inside a job's allocation: a job step of N copies of a command on the allocation's
//! node, each with Slurm's per-task variables (`SLURM_PROCID`, `SLURM_LOCALID`,
//! `SLURM_STEP_ID`...), waited for together; and `scontrol show hostnames`.
//!
//! The step runs inside the task that calls it, so it is held by that task's cgroup, limits and
//! cancel, and needs no port on the node.

use super::sbatch::edit_distance;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

/// What a step's `--export=NONE` keeps of the task's environment, as Slurm does: who the user
/// is and where home is.
const LOGIN_IDENTITY: [&str; 4] = ["HOME", "USER", "LOGNAME", "SHELL"];

/// srun's options Tidepool reads, and those it accepts with no effect here (binding, MPI
/// plugin, verbosity), by long name, with their short letter and whether they take a value.
const SRUN_OPTIONS: &[(&str, Option<char>, bool)] = &[
    ("ntasks", Some('n'), true),
    ("nodes", Some('N'), true),
    ("cpus-per-task", Some('c'), true),
    ("ntasks-per-node", None, true),
    ("tasks-per-node", None, true),
    ("label", Some('l'), false),
    ("kill-on-bad-exit", Some('K'), false),
    ("overcommit", Some('O'), false),
    ("output", Some('o'), true),
    ("error", Some('e'), true),
    ("export", None, true),
    ("chdir", Some('D'), true),
    ("job-name", Some('J'), true),
    ("mpi", None, true),
    ("cpu-bind", None, true),
    ("cpu_bind", None, true),
    ("distribution", Some('m'), true),
    ("hint", None, true),
    ("unbuffered", Some('u'), false),
    ("exclusive", None, false),
    ("exact", None, false),
    ("overlap", None, false),
    ("mem", None, true),
    ("mem-per-cpu", None, true),
    ("gres", None, true),
    ("gpus", Some('G'), true),
    ("gpus-per-task", None, true),
    ("gpu-bind", None, true),
    ("time", Some('t'), true),
    ("quiet", Some('Q'), false),
    ("verbose", Some('v'), false),
    ("propagate", None, false),
    ("wait", Some('W'), true),
    ("jobid", None, true),
    ("partition", Some('p'), true),
    ("account", Some('A'), true),
    ("pty", None, false),
];

/// A step as asked.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Step {
    pub(super) ntasks: Option<u32>,
    pub(super) nodes: Option<u32>,
    pub(super) cpus_per_task: Option<u32>,
    pub(super) ntasks_per_node: Option<u32>,
    label: bool,
    kill_on_bad_exit: bool,
    overcommit: bool,
    output: Option<String>,
    error: Option<String>,
    pub(super) chdir: Option<String>,
    export_none: bool,
    export: Vec<(String, String)>,
    jobid: Option<String>,
    /// Outside an allocation, what the job it makes asks for.
    pub(super) job_name: Option<String>,
    pub(super) time: Option<String>,
    pub(super) mem: Option<String>,
    pub(super) partition: Option<String>,
    pub(super) account: Option<String>,
    pub(super) pty: bool,
    pub(super) command: Vec<String>,
}

fn unknown(name: &str) -> String {
    let bare = name.trim_start_matches('-');
    match SRUN_OPTIONS.iter().map(|(long, _, _)| (edit_distance(bare, long), *long)).min() {
        Some((d, long)) if d <= 3 || long.starts_with(bare) => format!("unrecognized option '{name}' (did you mean '--{long}'?)"),
        _ => format!("unrecognized option '{name}'"),
    }
}

fn count(name: &str, value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("--{name}: '{value}' is not a positive count")),
    }
}

/// Reads srun's command line: options, then the command (after `--` or the first word that
/// is not an option).
fn parse(args: &[String]) -> Result<Step, String> {
    let mut step = Step::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            i += 1;
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        let (long, inline): (&str, Option<String>) = if let Some(rest) = arg.strip_prefix("--") {
            match rest.split_once('=') {
                Some((k, v)) => (SRUN_OPTIONS.iter().find(|(l, _, _)| *l == k).map(|(l, _, _)| *l).ok_or_else(|| unknown(arg))?, Some(v.to_string())),
                None => (SRUN_OPTIONS.iter().find(|(l, _, _)| *l == rest).map(|(l, _, _)| *l).ok_or_else(|| unknown(arg))?, None),
            }
        } else {
            let letter = arg.chars().nth(1).ok_or_else(|| unknown(arg))?;
            let long = SRUN_OPTIONS.iter().find(|(_, s, _)| *s == Some(letter)).map(|(l, _, _)| *l).ok_or_else(|| unknown(arg))?;
            let rest: String = arg.chars().skip(2).collect();
            (long, (!rest.is_empty()).then_some(rest))
        };
        let takes = SRUN_OPTIONS.iter().find(|(l, _, _)| *l == long).is_some_and(|(_, _, t)| *t);
        let value = if takes {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("option '--{long}' needs a value"))?
                }
            }
        } else {
            if inline.is_some() && long != "kill-on-bad-exit" {
                return Err(format!("option '--{long}' takes no value"));
            }
            inline.unwrap_or_default()
        };
        match long {
            "ntasks" => step.ntasks = Some(count(long, &value)?),
            "nodes" => step.nodes = Some(count(long, value.split('-').next().unwrap_or(&value))?),
            "cpus-per-task" => step.cpus_per_task = Some(count(long, &value)?),
            "ntasks-per-node" | "tasks-per-node" => step.ntasks_per_node = Some(count(long, &value)?),
            "label" => step.label = true,
            "kill-on-bad-exit" => step.kill_on_bad_exit = value != "0",
            "overcommit" => step.overcommit = true,
            "output" => step.output = Some(value),
            "error" => step.error = Some(value),
            "chdir" => step.chdir = Some(value),
            "jobid" => step.jobid = Some(value),
            "job-name" => step.job_name = Some(value),
            "time" => step.time = Some(value),
            "mem" => step.mem = Some(value),
            "partition" => step.partition = Some(value),
            "account" => step.account = Some(value),
            "pty" => step.pty = true,
            "export" => {
                for item in value.split(',') {
                    match item {
                        "ALL" => {}
                        "NONE" => step.export_none = true,
                        kv => match kv.split_once('=') {
                            Some((k, v)) => step.export.push((k.to_string(), v.to_string())),
                            None => step.export.push((kv.to_string(), std::env::var(kv).unwrap_or_default())),
                        },
                    }
                }
            }
            // Accepted: binding, the MPI plugin, memory and GPUs are the allocation's here.
            _ => {}
        }
        i += 1;
    }
    step.command = args[i..].to_vec();
    if step.command.is_empty() {
        return Err("no command to run (srun [OPTIONS] COMMAND [ARGS])".into());
    }
    Ok(step)
}

/// The next step id of this job attempt: a counter kept, under a lock, in a file named by the
/// attempt and by its task's session (the task leads one of its own), with the session
/// leader's start time, so no other task, here or on another server, shares it.
fn next_step_id(job: &str) -> u32 {
    let attempt = std::env::var("TIDEPOOL_ATTEMPT").unwrap_or_default();
    let index = std::env::var("TIDEPOOL_TASK_INDEX").unwrap_or_default();
    // SAFETY: getsid(0) only reads this process's session id.
    let session = unsafe { libc::getsid(0) };
    let started = std::fs::read_to_string(format!("/proc/{session}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19).map(str::to_string)))
        .unwrap_or_default();
    let path = std::env::temp_dir().join(format!(".tidepool-steps-{job}.{index}.{attempt}-{}-{session}-{started}", own_uid()));
    let Some(mut file) = open_counter(&path) else { return 0 };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when it closes.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut file, &mut text);
    let id: u32 = text.trim().parse().unwrap_or(0);
    let _ = file.set_len(0);
    let _ = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0));
    let _ = write!(file, "{}", id + 1);
    id
}

/// Opens (or makes) a step counter in the shared temporary directory: never through a symbolic
/// link, and only a file of our own, so another user's task cannot aim it at a file we may write.
fn open_counter(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.uid() == own_uid()).then_some(file)
}

fn own_uid() -> u32 {
    // SAFETY: getuid only reads this process's credentials.
    unsafe { libc::getuid() }
}

/// A step task's file name from srun's pattern: sbatch's patterns, with `%t` the task's rank,
/// `%s` the step and `%J` `JOB.STEP`.
pub(super) fn expand(pattern: &str, job: &str, step: u32, rank: u32, node: &str) -> String {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let own_job_id: u64 = job.parse().unwrap_or(0);
    let values = tidepool_server::spec::PatternValues {
        job_id: env("SLURM_ARRAY_JOB_ID").parse().unwrap_or(own_job_id),
        own_job_id,
        index: env("SLURM_ARRAY_TASK_ID").parse().unwrap_or(0),
        name: &env("SLURM_JOB_NAME"),
        node,
        user: &env("SLURM_JOB_USER"),
        step: Some((step, rank)),
    };
    tidepool_server::spec::expand_pattern(pattern, &values)
}

/// Runs a step inside the calling job's allocation; srun's exit status. On a multi-node
/// allocation the ranks of the first node run here, the others' through their step hosts.
pub async fn srun(args: Vec<String>) -> Result<u8, String> {
    if args.first().map(String::as_str) == Some("--step-host") {
        return super::steps::serve_as_step_host().await;
    }
    let step = parse(&args)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(job) = env("SLURM_JOB_ID") else {
        // Outside an allocation: one is made for the step, as Slurm's srun does.
        return super::allocation::run_in_new_job(&args, &step).await;
    };
    if let Some(asked) = &step.jobid {
        if asked != &job && env("SLURM_ARRAY_JOB_ID").as_deref() != Some(asked.as_str()) {
            return Err(format!("--jobid={asked}: a step runs in the allocation of the job that starts it ({job})"));
        }
    }
    let allocated_nodes: u32 = env("SLURM_JOB_NUM_NODES").and_then(|v| v.parse().ok()).unwrap_or(1);
    let allocated_tasks: u32 = env("SLURM_NTASKS").and_then(|v| v.parse().ok()).unwrap_or(allocated_nodes);
    let multi_node = allocated_nodes > 1 && env("TIDEPOOL_STEP_KEY").is_some();
    let reachable_nodes = if multi_node { allocated_nodes } else { 1 };
    let ntasks = step.ntasks.or(step.ntasks_per_node.map(|n| n * step.nodes.unwrap_or(reachable_nodes))).unwrap_or(allocated_tasks);
    // As Slurm's: every node of the allocation unless -N says fewer, never more nodes than ranks.
    let nodes = step.nodes.unwrap_or(reachable_nodes).min(ntasks);
    if nodes > reachable_nodes {
        return Err(format!("Unable to create step for job {job}: {nodes} nodes asked of an allocation of {reachable_nodes}"));
    }
    let counts = tidepool_server::spec::ranks_per_node(ntasks, nodes);
    let node_cpus: u32 = env("SLURM_JOB_CPUS_PER_NODE").or(env("SLURM_CPUS_ON_NODE")).and_then(|v| v.split(['(', ',']).next().and_then(|n| n.parse().ok())).unwrap_or(1);
    let tasks_per_node = allocated_tasks.div_ceil(allocated_nodes.max(1)).max(1);
    let cpus_per_task = step.cpus_per_task.or(env("SLURM_CPUS_PER_TASK").and_then(|v| v.parse().ok())).unwrap_or_else(|| (node_cpus / tasks_per_node).max(1));
    let busiest = counts.iter().copied().max().unwrap_or(0);
    if !step.overcommit && u64::from(busiest) * u64::from(cpus_per_task) > u64::from(node_cpus) {
        return Err(format!(
            "Unable to create step for job {job}: More processors requested than permitted ({busiest} tasks of {cpus_per_task} cores on a node of {node_cpus} in this allocation; --overcommit shares them)"
        ));
    }
    let node = env("SLURMD_NODENAME").unwrap_or_else(|| "localhost".into());
    let all_nodes = env("SLURM_JOB_NODELIST").map(|l| expand_hostlist(&l).unwrap_or_default()).unwrap_or_default();
    let step_nodes: Vec<String> = if multi_node { all_nodes.into_iter().take(nodes as usize).collect() } else { vec![node.clone()] };
    let step_id = next_step_id(&job);
    let shape = super::steps::StepShape {
        step_id,
        ntasks,
        nodelist: step_nodes.join(","),
        n_nodes: nodes,
        tasks_per_node: tidepool_server::spec::compressed_counts(&counts.iter().map(|c| u64::from(*c)).collect::<Vec<_>>()),
        cpus_per_task,
    };
    // The other nodes' ranks go first, so they start while this node's start.
    let mut remote = if nodes > 1 {
        let launch = tidepool_api::StepLaunch {
            step_id,
            ntasks,
            command: step.command.clone(),
            env: step_environment(&step).into_iter().collect(),
            ranks: counts.iter().enumerate().skip(1).map(|(k, count)| tidepool_api::NodeRanks { node: k as u32, first: counts[..k].iter().sum(), count: *count }).collect(),
            nodelist: step_nodes.clone(),
            cpus_per_task,
            output: step.output.clone(),
            error: step.error.clone(),
            chdir: step.chdir.clone(),
        };
        Some(super::steps::RemoteStep::start(&job, launch).await?)
    } else {
        None
    };
    let width = (ntasks - 1).to_string().len();
    let mut children = Vec::new();
    for rank in 0..counts[0] {
        let mut command = Command::new(&step.command[0]);
        command.args(&step.command[1..]);
        if step.export_none {
            command.env_clear();
        }
        command.envs(step_environment(&step));
        command.envs(shape.rank_vars(rank, 0, rank, &(0..counts[0]).map(|r| r.to_string()).collect::<Vec<_>>().join(",")));
        if let Some(dir) = &step.chdir {
            command.current_dir(dir);
        }
        let open = |pattern: &str| -> Result<std::fs::File, String> {
            let path = expand(pattern, &job, step_id, rank, &node);
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| format!("{path}: {e}"))
        };
        match &step.output {
            Some(p) if p != "none" => command.stdout(open(p)?),
            Some(_) => command.stdout(Stdio::null()),
            None if step.label => command.stdout(Stdio::piped()),
            None => command.stdout(Stdio::inherit()),
        };
        match &step.error {
            Some(p) if p != "none" => command.stderr(open(p)?),
            Some(_) => command.stderr(Stdio::null()),
            None if step.label => command.stderr(Stdio::piped()),
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command.spawn().map_err(|e| format!("task {rank}: cannot run {}: {e}", step.command[0]))?;
        let mut pumps = Vec::new();
        if step.label {
            let prefix = format!("{rank:>width$}: ");
            if let Some(out) = child.stdout.take() {
                let prefix = prefix.clone();
                pumps.push(std::thread::spawn(move || label_lines(out, &prefix, false)));
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(std::thread::spawn(move || label_lines(err, &prefix, true)));
            }
        }
        children.push((rank, child, pumps));
    }
    let mut worst = 0u8;
    let mut remaining: Vec<(u32, std::process::Child, Vec<std::thread::JoinHandle<()>>)> = children;
    let mut bad_exit = false;
    loop {
        let mut still = Vec::new();
        for (rank, mut child, pumps) in remaining {
            match child.try_wait() {
                Ok(Some(status)) => {
                    for p in pumps {
                        let _ = p.join();
                    }
                    use std::os::unix::process::ExitStatusExt;
                    let code = match (status.code(), status.signal()) {
                        (Some(c), _) => c,
                        (None, Some(sig)) => 128 + sig,
                        _ => 1,
                    };
                    if code != 0 {
                        report_bad_exit(&node, rank, code, status.signal());
                        bad_exit = true;
                    }
                    worst = worst.max(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
                }
                Ok(None) => still.push((rank, child, pumps)),
                Err(e) => return Err(format!("task {rank}: {e}")),
            }
        }
        remaining = still;
        let remote_done = match &mut remote {
            Some(r) => {
                let news = r.follow(step.label.then_some(width), remaining.is_empty()).await?;
                for exit in news.bad_exits {
                    let name = step_nodes.get(exit.node as usize).cloned().unwrap_or_default();
                    report_bad_exit(&name, exit.rank, exit.code, exit.signal);
                    bad_exit = true;
                    worst = worst.max(u8::try_from(exit.code.clamp(0, 255)).unwrap_or(255));
                }
                r.done()
            }
            None => true,
        };
        // --kill-on-bad-exit: one task's failure ends the step (here; the other nodes' ranks
        // end with the allocation's next step or its end).
        if bad_exit && step.kill_on_bad_exit {
            for (_, other, _) in &mut remaining {
                let _ = other.kill();
            }
            if remaining.is_empty() {
                break;
            }
        }
        if remaining.is_empty() && remote_done {
            break;
        }
        if remote.is_none() || remote_done {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    Ok(worst)
}

/// Says on srun's standard error that a rank failed, as Slurm does.
fn report_bad_exit(node: &str, rank: u32, code: i32, signal: Option<i32>) {
    let what = match signal {
        Some(sig) => format!("Killed by signal {sig}"),
        None => format!("Exited with exit code {code}"),
    };
    eprintln!("srun: error: {node}: task {rank}: {what}");
}

/// What every rank of the step gets on top of (or, with `--export=NONE`, instead of) the
/// caller's environment.
fn step_environment(step: &Step) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = if step.export_none {
        std::env::vars().filter(|(k, _)| k.starts_with("SLURM_") || k == "PATH" || LOGIN_IDENTITY.contains(&k.as_str())).collect()
    } else {
        std::env::vars().collect()
    };
    env.extend(step.export.iter().cloned());
    env
}

/// Copies a task's lines to srun's own output, each after its rank (`--label`).
fn label_lines(from: impl std::io::Read, prefix: &str, stderr: bool) {
    for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
        if stderr {
            let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
        }
    }
}

/// Expands a Slurm host list (`node[01-03,7],gpu1`) into its names, in order.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut piece = String::new();
    let mut pieces = Vec::new();
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                pieces.push(std::mem::take(&mut piece));
                continue;
            }
            _ => {}
        }
        piece.push(c);
    }
    pieces.push(piece);
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        match piece.split_once('[') {
            None => names.push(piece),
            Some((prefix, rest)) => {
                let (ranges, suffix) = rest.split_once(']').ok_or_else(|| format!("'{piece}': no closing ']'"))?;
                for range in ranges.split(',') {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let width = lo.len();
                    let (a, b): (u64, u64) = (lo.parse().map_err(|_| format!("'{piece}': '{range}' is not a range"))?, hi.parse().map_err(|_| format!("'{piece}': '{range}' is not a range"))?);
                    if b < a || b - a > 100_000 {
                        return Err(format!("'{piece}': '{range}' is not a range"));
                    }
                    for n in a..=b {
                        names.push(format!("{prefix}{n:0width$}{suffix}"));
                    }
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn srun_reads_its_options_as_slurm_does() {
        let s = parse(&words("-n 4 -c2 --label --mpi=pmix --cpu-bind=cores ./prog --n 3")).unwrap();
        assert_eq!((s.ntasks, s.cpus_per_task, s.label), (Some(4), Some(2), true));
        assert_eq!(s.command, words("./prog --n 3"), "the command's own options are its own");
        let s = parse(&words("--ntasks=2 -K -- hostname")).unwrap();
        assert_eq!((s.ntasks, s.kill_on_bad_exit, s.command.as_slice()), (Some(2), true, &words("hostname")[..]));
        assert!(parse(&words("--ntask=2 true")).unwrap_err().contains("did you mean '--ntasks'"));
        assert!(parse(&words("-n 0 true")).unwrap_err().contains("positive"));
        assert!(parse(&words("-n 2")).unwrap_err().contains("no command"));
    }

    #[test]
    fn host_lists_expand_as_scontrol_does() {
        assert_eq!(expand_hostlist("node[01-03,7],gpu1").unwrap(), ["node01", "node02", "node03", "node7", "gpu1"]);
        assert_eq!(expand_hostlist("a,b").unwrap(), ["a", "b"]);
        assert!(expand_hostlist("n[3-1]").is_err());
        assert!(expand_hostlist("n[1-2").is_err());
    }

    #[test]
    fn a_step_counter_is_never_opened_through_a_link() {
        let dir = std::env::temp_dir().join(format!("tidepool-srun-counter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "keep").unwrap();
        let planted = dir.join("counter");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(open_counter(&planted).is_none(), "a planted link is refused");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(open_counter(&dir.join("own")).is_some(), "a counter of its own is made");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn step_files_expand_ranks_and_steps() {
        assert_eq!(expand("out.%j.%s.%t.%N%%", "12", 3, 1, "n1"), "out.12.3.1.n1%");
        assert_eq!(expand("%J", "12", 0, 0, "n"), "12.0");
    }
}
