//! `tidepool-bench sched`: the scheduling core alone on 2,000 × 24-core nodes and 1,000,000
//! pending tasks, next to plain first fit in submission order measured in the same run.

use crate::line;
use std::time::Instant;
use tidepool_core::{ArraySpec, Cluster, JobId, JobSpec, Resources, TaskOutcome};

/// The scheduler benchmark's shape: nodes × cores, jobs × tasks each.
struct Workload {
    n_nodes: u32,
    cores_per_node: u64,
    n_jobs: u32,
    tasks_per_job: u32,
    n_completions: usize,
}

/// A small deterministic generator (64-bit LCG), so both schedulers see the same workload.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn shapes(w: &Workload, seed: u64) -> Vec<u64> {
    let mut rng = Lcg(seed);
    (0..w.n_jobs).map(|_| [1u64, 2, 4, 8, 16][(rng.next() % 5) as usize]).collect()
}

/// Figures of one scheduler.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    full_pass_ms: f64,
    incremental_pass_ms: f64,
    placements_per_s: f64,
    allocated_share: f64,
}

impl Figures {
    /// From the two passes' durations in seconds, the placements of the first, and the share.
    fn from_passes(full_s: f64, incremental_s: f64, n_placed: usize, allocated_share: f64) -> Figures {
        Figures {
            full_pass_ms: full_s * 1000.0,
            incremental_pass_ms: incremental_s * 1000.0,
            placements_per_s: n_placed as f64 / full_s.max(1e-9),
            allocated_share,
        }
    }
}

fn run_core(w: &Workload, job_cores: &[u64]) -> Figures {
    let mut c = Cluster::new();
    for i in 0..w.n_nodes {
        let id = c.add_node(&format!("node{i:04}"), "cpu", Resources::cores(w.cores_per_node));
        c.set_node_online(id, true);
    }
    for (j, cores) in job_cores.iter().enumerate() {
        let array = ArraySpec::first(w.tasks_per_job);
        let spec = JobSpec::new(&format!("job{j}"), &format!("project{}", j % 10), Resources::cores(*cores), array);
        c.submit(JobId(j as u64 + 1), spec, 0);
    }
    let started = Instant::now();
    let decisions = c.schedule(1_000);
    let full = started.elapsed().as_secs_f64();
    let n_placed = decisions.placements.len();
    let total = w.n_nodes as f64 * w.cores_per_node as f64 * 1000.0;
    let allocated: u64 = c.nodes().map(|(_, n)| n.allocated().cpu_millis).sum();
    let mut rng = Lcg(7);
    let mut placed = decisions.placements;
    for _ in 0..w.n_completions.min(placed.len()) {
        let p = placed.swap_remove((rng.next() as usize) % placed.len());
        c.finish(p.job_id, p.pos, p.attempt, TaskOutcome::Succeeded, 2_000);
    }
    let started = Instant::now();
    let _ = c.schedule(2_000);
    Figures::from_passes(full, started.elapsed().as_secs_f64(), n_placed, allocated as f64 / total)
}

/// Plain first fit in submission order: each task on the first node where it fits.
fn run_first_fit(w: &Workload, job_cores: &[u64]) -> Figures {
    let mut free: Vec<u64> = vec![w.cores_per_node; w.n_nodes as usize];
    let mut next: Vec<u32> = vec![0; job_cores.len()];
    let mut placed: Vec<(usize, u64)> = Vec::new();
    let pass = |free: &mut Vec<u64>, next: &mut Vec<u32>, placed: &mut Vec<(usize, u64)>| -> usize {
        let mut n = 0;
        // Nothing frees during a pass, so once a size failed every larger task fails too.
        let mut smallest_failed = u64::MAX;
        for (j, cores) in job_cores.iter().enumerate() {
            while next[j] < w.tasks_per_job && *cores < smallest_failed {
                match free.iter().position(|f| f >= cores) {
                    Some(node) => {
                        free[node] -= cores;
                        next[j] += 1;
                        placed.push((node, *cores));
                        n += 1;
                    }
                    None => smallest_failed = *cores,
                }
            }
        }
        n
    };
    let started = Instant::now();
    let n_placed = pass(&mut free, &mut next, &mut placed);
    let full = started.elapsed().as_secs_f64();
    let total = w.n_nodes as f64 * w.cores_per_node as f64;
    let allocated: u64 = free.iter().map(|f| w.cores_per_node - f).sum();
    let mut rng = Lcg(7);
    for _ in 0..w.n_completions.min(placed.len()) {
        let (node, cores) = placed.swap_remove((rng.next() as usize) % placed.len());
        free[node] += cores;
    }
    let started = Instant::now();
    pass(&mut free, &mut next, &mut placed);
    Figures::from_passes(full, started.elapsed().as_secs_f64(), n_placed, allocated as f64 / total)
}

/// Runs of each of the no-history and forgotten-history passes, taken in turns.
const PAIRED_RUNS: usize = 5;

/// Finished jobs kept in the core's history for [`pass_with_history_ms`].
pub const HISTORY_JOBS: u64 = 1_000_000;

/// The median time (ms) of an incremental pass over the same live work (200 × 24-core nodes,
/// 100 jobs of 100 tasks, 50 tasks ending before each pass) when `n_finished` jobs have
/// finished before it, still held (within the server's `--keep-finished`) or, with `forgotten`,
/// past it: a pass should cost what its live work costs, whatever the history.
fn pass_with_history_ms(n_finished: u64, forgotten: bool) -> f64 {
    let mut c = Cluster::new();
    for i in 0..200 {
        let id = c.add_node(&format!("node{i:03}"), "cpu", Resources::cores(24));
        c.set_node_online(id, true);
    }
    for j in 0..n_finished {
        let id = JobId(j + 1);
        c.submit(id, JobSpec::new("done", "history", Resources::cores(1), ArraySpec::first(1)), 0);
        let _ = c.cancel(id, None, 0);
    }
    if forgotten {
        let _ = c.schedule(0);
        c.forget_finished(0);
    }
    let first_live = n_finished + 1;
    for j in 0..100u64 {
        let spec = JobSpec::new(&format!("live{j}"), &format!("project{}", j % 10), Resources::cores(1 + j % 4), ArraySpec::first(100));
        c.submit(JobId(first_live + j), spec, 1);
    }
    let mut placed = c.schedule(1_000).placements;
    let mut rng = Lcg(11);
    let mut times = Vec::new();
    for round in 0..21u64 {
        for _ in 0..50.min(placed.len()) {
            let p = placed.swap_remove((rng.next() as usize) % placed.len());
            c.finish(p.job_id, p.pos, p.attempt, TaskOutcome::Succeeded, 2_000 + round);
        }
        let started = Instant::now();
        let decisions = c.schedule(2_000 + round);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        placed.extend(decisions.placements);
    }
    crate::batch::median(&mut times)
}

/// `tidepool-bench sched`: the core alone on 2,000 × 24-core nodes and 1,000,000 pending tasks.
pub fn sched(json: bool) -> Result<u8, String> {
    let w = Workload { n_nodes: 2_000, cores_per_node: 24, n_jobs: 1_000, tasks_per_job: 1_000, n_completions: 1_000 };
    let job_cores = shapes(&w, 42);
    let ours = run_core(&w, &job_cores);
    let base = run_first_fit(&w, &job_cores);
    // Without history and past it, in turns: the first cluster built in a process runs on a
    // fresh heap and the later ones on what earlier ones freed, which alone moved a figure
    // by a tenth either way.
    // A hundred times fewer forgotten jobs too: the pass after them is the one to compare
    // with, growth with history being what the figure asks about.
    let (mut fresh, mut forgotten, mut few_forgotten) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRED_RUNS {
        fresh.push(pass_with_history_ms(0, false));
        forgotten.push(pass_with_history_ms(HISTORY_JOBS, true));
        few_forgotten.push(pass_with_history_ms(HISTORY_JOBS / 100, true));
    }
    let (fresh_pass_ms, forgotten_pass_ms) = (crate::batch::median(&mut fresh), crate::batch::median(&mut forgotten));
    let few_forgotten_pass_ms = crate::batch::median(&mut few_forgotten);
    let history_pass_ms = pass_with_history_ms(HISTORY_JOBS, false);
    if json {
        let v = serde_json::json!({
            "nodes": w.n_nodes, "cores_per_node": w.cores_per_node,
            "pending_tasks": u64::from(w.n_jobs) * u64::from(w.tasks_per_job),
            "full_pass_ms": ours.full_pass_ms, "incremental_pass_ms": ours.incremental_pass_ms,
            "placements_per_s": ours.placements_per_s, "allocated_share": ours.allocated_share,
            "baseline_full_pass_ms": base.full_pass_ms, "baseline_incremental_pass_ms": base.incremental_pass_ms,
            "baseline_placements_per_s": base.placements_per_s, "baseline_allocated_share": base.allocated_share,
            "history_jobs": HISTORY_JOBS, "pass_with_history_ms": history_pass_ms, "pass_without_history_ms": fresh_pass_ms,
            "pass_with_forgotten_history_ms": forgotten_pass_ms,
            "pass_with_small_forgotten_history_ms": few_forgotten_pass_ms, "small_history_jobs": HISTORY_JOBS / 100,
        });
        line(&v.to_string());
        return Ok(0);
    }
    line(&format!(
        "scheduler core: {} nodes x {} cores, {} pending tasks of 1/2/4/8/16 cores ({} jobs), then {} completions",
        w.n_nodes, w.cores_per_node, u64::from(w.n_jobs) * u64::from(w.tasks_per_job), w.n_jobs, w.n_completions
    ));
    line(&format!("{:<24} {:>14} {:>22} {:>8}", "figure", "tidepool", "first-fit baseline", "ratio"));
    let row = |name: &str, a: f64, b: f64, digits: usize| {
        line(&format!("{name:<24} {a:>14.digits$} {b:>22.digits$} {:>8.2}", a / b.max(1e-12)));
    };
    row("full pass (ms)", ours.full_pass_ms, base.full_pass_ms, 2);
    row("incremental pass (ms)", ours.incremental_pass_ms, base.incremental_pass_ms, 3);
    row("placements per s", ours.placements_per_s, base.placements_per_s, 0);
    row("allocated share", ours.allocated_share, base.allocated_share, 4);
    line(&format!(
        "incremental pass over the same live work after {HISTORY_JOBS} finished jobs: {forgotten_pass_ms:.3} ms once they are past --keep-finished, {history_pass_ms:.3} ms while all are still held, {fresh_pass_ms:.3} ms with none ({:.2}x and {:.2}x; goal: the same)",
        forgotten_pass_ms / fresh_pass_ms.max(1e-9),
        history_pass_ms / fresh_pass_ms.max(1e-9)
    ));
    line(&format!(
        "after {} forgotten jobs instead of {HISTORY_JOBS}: {few_forgotten_pass_ms:.3} ms ({:.2}x for a hundred times the history; goal: 1)",
        HISTORY_JOBS / 100,
        forgotten_pass_ms / few_forgotten_pass_ms.max(1e-9)
    ));
    Ok(0)
}
