//! `tidepool sim SCENARIO`: runs a scenario (or a replayed log) through the simulator twice,
//! with Tidepool's policy and with the baseline's, and prints the two side by side; `--out DIR`
//! writes the plots.

use crate::output::line;
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tidepool_sim::batch::{self, Pool, Report, SimJob, SimPolicy};

/// Flags of `sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// `llm-day` (a day of a 1,000-GPU LLM fleet), `science-burst` (100,000 tasks on a pool
    /// growing from 0 to 2,000 nodes), `replay` (a batch log given with --swf) or `serve` (an
    /// LLM trace given with --llm-trace, request by request on --gpus replicas, and on half
    /// and twice as many).
    #[arg(value_parser = ["llm-day", "science-burst", "replay", "serve"])]
    scenario: String,
    /// llm-day: settings file (`key = value` lines) instead of the shipped one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed of the scenario's random draws: the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the plots (SVG).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The policy run beside Tidepool's (its figures are the `baseline_` keys): `baseline`
    /// (llm-day: a static fleet; science-burst: first fit, no compaction, slow release),
    /// `no-forecast` (llm-day: lending, replicas that only react), `first-fit` or
    /// `no-compaction` (science-burst and replay: Tidepool's policy with that one change).
    #[arg(long, default_value = "baseline", value_parser = ["baseline", "no-forecast", "first-fit", "no-compaction"])]
    compare: String,
    /// Replay: a batch log in the Standard Workload Format (Parallel Workloads Archive).
    #[arg(long, conflicts_with = "llm_trace")]
    swf: Option<PathBuf>,
    /// Replay: an LLM request trace, JSON lines with timestamp (ms), input_length and
    /// output_length (Mooncake), or CSV with TIMESTAMP, ContextTokens, GeneratedTokens (Azure),
    /// on the llm-day fleet (--config, --gpus).
    #[arg(long)]
    llm_trace: Option<PathBuf>,
    /// llm-day and LLM replay: GPUs in the fleet instead of the settings' value.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    gpus: Option<u32>,
    /// Replay: nodes of the fleet.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    nodes: u32,
    /// Replay: cores per node.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=4096))]
    cores_per_node: u64,
    /// Replay: the log's processor fields count whole nodes (as machines that allocate whole
    /// nodes write them), not cores.
    #[arg(long)]
    processors_are_nodes: bool,
    /// Replay: also run the classic baselines on the fleet's processors (FCFS, EASY and
    /// conservative backfilling, with the users' requested times and with exact run times) and
    /// report per job: wait, response time, bounded slowdown (tau = 10 s), utilisation.
    #[arg(long)]
    baselines: bool,
}

/// `sim serve`: a trace's requests as discrete events on replicas of one GPU each, at --gpus
/// (default 8), half and twice as many.
fn serve(a: &SimArgs) -> Result<u8, String> {
    use tidepool_sim::serving::{ideal_prefix_hit_rate, serve, ServingModel};
    let path = a.llm_trace.as_ref().ok_or("serve needs --llm-trace FILE (Mooncake JSON lines or Azure CSV)")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("--llm-trace {}: {e}", path.display()))?;
    let requests = tidepool_sim::llm_trace::read(&text).map_err(|e| format!("--llm-trace {}: {e}", path.display()))?;
    if requests.is_empty() {
        return Err(format!("--llm-trace {}: no request", path.display()));
    }
    let gpus = a.gpus.unwrap_or(8) as usize;
    let model = ServingModel::default();
    let counts = [(gpus / 2).max(1), gpus, gpus * 2];
    let rows: Vec<(usize, tidepool_sim::serving::ServingReport)> = counts.iter().map(|g| (*g, serve(&requests, *g, &model))).collect();
    let ideal = ideal_prefix_hit_rate(&requests);
    if a.json {
        let by_gpus: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(g, r)| {
                (g.to_string(), json!({"served": r.served, "refused": r.refused, "ttft_p50_ms": r.ttft_p50_ms, "ttft_p99_ms": r.ttft_p99_ms,
                    "tpot_p50_ms": r.tpot_p50_ms, "tpot_p99_ms": r.tpot_p99_ms, "slo_attainment": r.slo_attainment,
                    "prefix_hit_rate": r.prefix_hit_rate, "mean_queue_ms": r.mean_queue_ms}))
            })
            .collect();
        line(&json!({"requests": requests.len(), "ideal_prefix_hit_rate": ideal, "by_gpus": by_gpus}).to_string());
        return Ok(0);
    }
    line(&format!("{} requests of {}; SLOs: first token within {} ms, then {} ms a token", requests.len(), path.display(), model.ttft_slo_ms, model.tpot_slo_ms));
    line(&format!("{:>6}{:>12}{:>12}{:>12}{:>12}{:>10}{:>12}{:>12}", "GPUs", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "SLO met", "prefix hit", "queue (ms)"));
    for (g, r) in &rows {
        line(&format!("{g:>6}{:>12.0}{:>12.0}{:>12.1}{:>12.1}{:>10.3}{:>12.3}{:>12.0}", r.ttft_p50_ms, r.ttft_p99_ms, r.tpot_p50_ms, r.tpot_p99_ms, r.slo_attainment, r.prefix_hit_rate, r.mean_queue_ms));
    }
    line(&format!("ideal prefix hit rate (one replica, unbounded cache): {ideal:.3}"));
    Ok(0)
}

/// The bound of the bounded slowdown, seconds, as the literature takes it.
const SLOWDOWN_TAU_S: f64 = 10.0;

/// The share of jobs that waited at most each wait, hours, at every percent: a distribution to plot.
fn wait_distribution(name: &str, jobs: &[SimJob], starts: &[f64]) -> tidepool_sim::svg::Series {
    let mut waits: Vec<f64> = jobs.iter().zip(starts).filter(|(_, s)| s.is_finite()).map(|(j, s)| (s - j.submit_s).max(0.0) / 3600.0).collect();
    waits.sort_by(f64::total_cmp);
    let points = (0..=100)
        .filter_map(|p| {
            let at = ((waits.len() as f64 - 1.0) * f64::from(p) / 100.0).round();
            waits.get(at.max(0.0) as usize).map(|w| (*w, f64::from(p) / 100.0))
        })
        .collect();
    tidepool_sim::svg::Series { name: name.to_string(), points }
}

/// Per-job metrics of Tidepool's replay and of each classic baseline, by name, with each one's
/// distribution of waits.
fn per_job(jobs: &[SimJob], tidepool_starts: &[f64], machine: u64) -> Vec<(&'static str, tidepool_sim::baselines::Metrics, tidepool_sim::svg::Series)> {
    use tidepool_sim::baselines::{metrics, schedule, Discipline, RigidJob};
    let rigid = |exact: bool| -> Vec<RigidJob> {
        jobs.iter()
            .map(|j| {
                let run_s = j.run_s.iter().copied().fold(0.0, f64::max);
                RigidJob { submit_s: j.submit_s, run_s, procs: j.cores * u64::from(j.gang_nodes.unwrap_or(1)), estimate_s: if exact { run_s } else { j.limit_s.unwrap_or(run_s).max(run_s.min(1.0)) } }
            })
            .collect()
    };
    let (estimated, exact) = (rigid(false), rigid(true));
    let mut rows = vec![("tidepool", metrics(&exact, tidepool_starts, machine, SLOWDOWN_TAU_S), wait_distribution("tidepool", jobs, tidepool_starts))];
    for (name, discipline, with) in [
        ("fcfs", Discipline::Fcfs, &exact),
        ("easy", Discipline::Easy, &estimated),
        ("easy_exact", Discipline::Easy, &exact),
        ("conservative", Discipline::Conservative, &estimated),
        ("conservative_exact", Discipline::Conservative, &exact),
    ] {
        let starts = schedule(with, machine, discipline);
        rows.push((name, metrics(&exact, &starts, machine, SLOWDOWN_TAU_S), wait_distribution(name, jobs, &starts)));
    }
    rows
}

fn insert(report: &mut BTreeMap<String, Value>, prefix: &str, r: &Report) {
    let mut put = |k: &str, v: Value| {
        report.insert(format!("{prefix}{k}"), v);
    };
    put("tasks", json!(r.tasks));
    put("busy_share_while_queued", json!(round(r.busy_share_while_queued, 4)));
    put("node_hours", json!(round(r.node_hours, 1)));
    put("makespan_h", json!(round(r.makespan_h, 3)));
    put("tail_node_hours", json!(round(r.tail_node_hours, 1)));
    put("mean_wait_s", json!(round(r.mean_wait_s, 1)));
    put("p95_wait_s", json!(round(r.p95_wait_s, 1)));
    put("peak_nodes", json!(r.peak_nodes));
    put("moved_tasks", json!(r.moved_tasks));
    put("lost_core_hours", json!(round(r.lost_core_hours, 1)));
    put("spot_reclaims", json!(r.spot_reclaims));
    put("node_failures", json!(r.node_failures));
    put("tasks_lost_with_nodes", json!(r.tasks_lost_with_nodes));
    put("cost_node_hours", json!(round(r.cost_node_hours, 1)));
}

/// Prints `rows` of `report` with Tidepool's value (`key`) beside the other's (`baseline_key`).
fn side_by_side(report: &BTreeMap<String, Value>, other: &str, rows: &[(&str, &str)]) {
    let g = |k: &str| report.get(k).cloned().unwrap_or(Value::Null).to_string();
    line(&format!("{:<28} {:>14} {:>14}", "", "tidepool", other));
    for (label, key) in rows {
        line(&format!("{label:<28} {:>14} {:>14}", g(key), g(&format!("baseline_{key}"))));
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// `sim llm-day`: the day under Tidepool's policy and under a static fleet.
fn llm_day(a: &SimArgs) -> Result<u8, String> {
    use tidepool_sim::llm::{self, LlmDay, LlmPolicy, LlmReport};
    let text = match &a.config {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?,
        None => tidepool_sim::scenario::LLM_DAY.to_string(),
    };
    let mut day = LlmDay::parse(&text).map_err(|e| match &a.config {
        Some(path) => format!("--config {}: {e}", path.display()),
        None => e,
    })?;
    if let Some(gpus) = a.gpus {
        if gpus < day.gpus_per_node {
            return Err(format!("--gpus: fewer than one node of {}", day.gpus_per_node));
        }
        day.gpus = gpus;
    }
    let (other, other_name, other_says) = match a.compare.as_str() {
        "baseline" => (LlmPolicy::Static, "static fleet", "static fleet: replicas for yesterday's peak (a replayed trace: its own peak) plus 10%, nothing lent to offline work or training"),
        "no-forecast" => (LlmPolicy::Reactive, "no forecast", "no forecast: Tidepool's lending, replicas for the most asked in the last five minutes"),
        c => return Err(format!("--compare {c}: llm-day compares with baseline or no-forecast")),
    };
    let (ours, base, title) = match &a.llm_trace {
        None => (llm::run(&day, LlmPolicy::Tidepool, a.seed), llm::run(&day, other, a.seed), format!("llm-day, seed {}", a.seed)),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--llm-trace {}: {e}", path.display()))?;
            let requests = tidepool_sim::llm_trace::read(&text).map_err(|e| format!("--llm-trace {}: {e}", path.display()))?;
            if requests.is_empty() {
                return Err(format!("--llm-trace {}: no request", path.display()));
            }
            // The replica emulator's defaults: 100 µs per prompt token, 20 ms per output token.
            let curve = tidepool_sim::llm_trace::demand_curve(&requests, 100.0, 20.0);
            let title = format!("replay of {} ({} requests over {:.1} h)", path.display(), requests.len(), curve.len() as f64 / 3600.0);
            (llm::run_curve(&day, LlmPolicy::Tidepool, &curve, None), llm::run_curve(&day, other, &curve, None), title)
        }
    };
    let mut report = BTreeMap::new();
    let put = |report: &mut BTreeMap<String, Value>, prefix: &str, r: &LlmReport| {
        report.insert(format!("{prefix}realtime_availability"), json!(round(r.realtime_availability, 6)));
        report.insert(format!("{prefix}interruptible_availability"), json!(round(r.interruptible_availability, 4)));
        report.insert(format!("{prefix}gpu_busy_share"), json!(round(r.gpu_busy_share, 4)));
        report.insert(format!("{prefix}training_gpu_hours"), json!(round(r.training_gpu_hours, 1)));
        report.insert(format!("{prefix}preemptions"), json!(r.preemptions));
        report.insert(format!("{prefix}lost_gpu_hours"), json!(round(r.lost_gpu_hours, 1)));
        report.insert(format!("{prefix}peak_replicas"), json!(r.peak_replicas));
        report.insert(format!("{prefix}realtime_itl_p50_ms"), json!(round(r.realtime_itl_ms.0, 2)));
        report.insert(format!("{prefix}realtime_itl_p99_ms"), json!(round(r.realtime_itl_ms.1, 2)));
    };
    put(&mut report, "", &ours);
    put(&mut report, "baseline_", &base);
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
        let mut base_replicas = base.replicas.clone();
        base_replicas.name = format!("replicas ({other_name})");
        let svg = tidepool_sim::svg::line_chart("llm-day: demand, replicas and training", "hours", "requests in flight / 22, replicas, GPUs", &[
            &tidepool_sim::svg::Series {
                name: "realtime demand / best concurrency".into(),
                points: ours.demand.points.iter().map(|(h, v)| (*h, v / f64::from(day.best_concurrency))).collect(),
            },
            &ours.replicas,
            &ours.training,
            &base_replicas,
        ]);
        let path = dir.join("llm-day.svg");
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if a.json {
        line(&serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    line(&format!("{title}: {} GPUs", day.gpus));
    side_by_side(&report, other_name, &[
        ("realtime availability", "realtime_availability"),
        ("interruptible availability", "interruptible_availability"),
        ("GPU busy share", "gpu_busy_share"),
        ("training GPU-hours", "training_gpu_hours"),
        ("preemptions", "preemptions"),
        ("training GPU-hours lost", "lost_gpu_hours"),
        ("peak replicas", "peak_replicas"),
        ("realtime ITL p50 (ms)", "realtime_itl_p50_ms"),
        ("realtime ITL p99 (ms)", "realtime_itl_p99_ms"),
    ]);
    line(other_says);
    if let Some(dir) = &a.out {
        line(&format!("plot: {}/llm-day.svg", dir.display()));
    }
    Ok(0)
}

/// Runs the command.
pub fn run(a: SimArgs) -> Result<u8, String> {
    let started = std::time::Instant::now();
    if a.scenario == "serve" {
        return serve(&a);
    }
    if a.scenario == "llm-day" || a.llm_trace.is_some() {
        return llm_day(&a);
    }
    let mut skipped = tidepool_sim::swf::Skipped::new();
    let (jobs, pool, ours, baseline, name): (Vec<SimJob>, Pool, SimPolicy, SimPolicy, String) = match a.scenario.as_str() {
        "science-burst" => {
            let (jobs, pool, ours, baseline) = tidepool_sim::scenario::science_burst(a.seed);
            (jobs, pool, ours, baseline, "science-burst".into())
        }
        _ => {
            let path = a.swf.as_ref().ok_or("replay needs --swf FILE (a batch log) or --llm-trace FILE (LLM requests)")?;
            let text = std::fs::read_to_string(path).map_err(|e| format!("--swf {}: {e}", path.display()))?;
            let unit = if a.processors_are_nodes { tidepool_sim::swf::ProcessorUnit::Nodes } else { tidepool_sim::swf::ProcessorUnit::Cores };
            let (jobs, left_out) = tidepool_sim::swf::read(&text, a.cores_per_node, unit).map_err(|e| format!("--swf {}: {e}", path.display()))?;
            if jobs.is_empty() {
                return Err(format!("--swf {}: no job that ran", path.display()));
            }
            skipped = left_out;
            let pool = Pool { node_cores: a.cores_per_node, min_nodes: a.nodes, max_nodes: a.nodes, provision_s: 0.0, faults: None };
            let policy = |first_fit| SimPolicy { first_fit, idle_release_s: f64::INFINITY, compaction: None, event_driven: true };
            (jobs, pool, policy(false), policy(true), format!("replay of {}", path.display()))
        }
    };
    let (baseline, other_name, other_says) = match a.compare.as_str() {
        "baseline" => (baseline, "baseline", "baseline: first fit, no compaction, a node released after 10 idle minutes (replay: first fit on the same fleet)"),
        "first-fit" => (SimPolicy { first_fit: true, ..ours.clone() }, "first fit", "first fit: Tidepool's policy placing first fit instead of best fit"),
        "no-compaction" => (SimPolicy { compaction: None, ..ours.clone() }, "no compaction", "no compaction: Tidepool's policy, tasks never moved and never checkpointed"),
        c => return Err(format!("--compare {c}: {} compares with baseline, first-fit or no-compaction", a.scenario)),
    };
    let too_big = jobs.iter().find(|j| j.cores > pool.node_cores || j.gang_nodes.is_some_and(|g| g > pool.max_nodes));
    if let Some(j) = too_big {
        return Err(format!("a job needs {} cores on {} nodes; the fleet has {} nodes of {} cores", j.cores, j.gang_nodes.unwrap_or(1), pool.max_nodes, pool.node_cores));
    }
    let r = batch::run(&jobs, &pool, &ours);
    let b = batch::run(&jobs, &pool, &baseline);
    let mut report = BTreeMap::new();
    insert(&mut report, "", &r);
    insert(&mut report, "baseline_", &b);
    report.insert("jobs_read".into(), json!(jobs.len()));
    report.insert("jobs_skipped".into(), json!(skipped));
    let per_job_rows = if a.baselines { per_job(&jobs, &r.job_starts_s, pool.node_cores * u64::from(pool.max_nodes)) } else { Vec::new() };
    if !per_job_rows.is_empty() {
        let rows: serde_json::Map<String, Value> = per_job_rows
            .iter()
            .map(|(name, m, _)| {
                let row = json!({"jobs": m.jobs, "mean_wait_s": m.mean_wait_s, "p95_wait_s": m.p95_wait_s, "mean_response_s": m.mean_response_s, "mean_bounded_slowdown": m.mean_bounded_slowdown, "utilisation": m.utilisation});
                (name.to_string(), row)
            })
            .collect();
        report.insert("per_job".into(), Value::Object(rows));
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
        let slug = a.scenario.clone();
        let mut ours_nodes = r.nodes_over_time.clone();
        ours_nodes.name = "tidepool: nodes paid".into();
        let mut base_nodes = b.nodes_over_time.clone();
        base_nodes.name = format!("{other_name}: nodes paid");
        let mut ours_busy = r.busy_over_time.clone();
        ours_busy.name = "tidepool".into();
        let mut base_busy = b.busy_over_time.clone();
        base_busy.name = other_name.into();
        let plots = [
            (format!("{slug}-nodes.svg"), tidepool_sim::svg::line_chart(&format!("{name}: nodes paid for"), "hours", "nodes", &[&ours_nodes, &base_nodes])),
            (format!("{slug}-busy.svg"), tidepool_sim::svg::line_chart(&format!("{name}: busy share of online cores"), "hours", "share", &[&ours_busy, &base_busy])),
        ];
        let waits: Vec<&tidepool_sim::svg::Series> = per_job_rows.iter().map(|(_, _, s)| s).collect();
        let plots: Vec<(String, String)> = if waits.is_empty() {
            plots.into_iter().collect()
        } else {
            plots.into_iter().chain([(format!("{slug}-waits.svg"), tidepool_sim::svg::line_chart(&format!("{name}: share of jobs that waited at most"), "wait (hours)", "share of jobs", &waits))]).collect()
        };
        for (file, svg) in plots {
            let path = dir.join(file);
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if a.json {
        // The same input gives the same bytes: what the run itself cost goes to stderr.
        line(&serde_json::to_string(&report).map_err(|e| e.to_string())?);
        eprintln!("simulated {} jobs twice in {:.1} s, peak memory {} MB", jobs.len(), started.elapsed().as_secs_f64(), peak_rss_mb());
        return Ok(0);
    }
    line(&format!("{name}, seed {}: {} tasks", a.seed, r.tasks));
    if a.swf.is_some() {
        let reasons: Vec<String> = skipped.iter().map(|(why, n)| format!("{n} {why}")).collect();
        line(&format!("jobs read: {}; left out: {}", jobs.len(), if reasons.is_empty() { "none".to_string() } else { reasons.join(", ") }));
    }
    side_by_side(&report, other_name, &[
        ("busy share while queued", "busy_share_while_queued"),
        ("node-hours", "node_hours"),
        ("makespan (h)", "makespan_h"),
        ("tail node-hours", "tail_node_hours"),
        ("mean wait (s)", "mean_wait_s"),
        ("p95 wait (s)", "p95_wait_s"),
        ("peak nodes", "peak_nodes"),
        ("tasks moved (compaction)", "moved_tasks"),
        ("core-hours redone", "lost_core_hours"),
        ("spot reclaims", "spot_reclaims"),
        ("node failures", "node_failures"),
        ("tasks lost with nodes", "tasks_lost_with_nodes"),
        ("cost (on-demand node-h)", "cost_node_hours"),
    ]);
    line(other_says);
    if !per_job_rows.is_empty() {
        line(&format!("per job on {} processors (bounded slowdown with tau = {SLOWDOWN_TAU_S} s):", pool.node_cores * u64::from(pool.max_nodes)));
        line(&format!("{:<32}{:>14}{:>14}{:>18}{:>12}{:>13}", "", "mean wait (s)", "p95 wait (s)", "mean response (s)", "mean bsld", "utilisation"));
        for (name, m, _) in &per_job_rows {
            let label = match *name {
                "tidepool" => "tidepool (its fleet)",
                "fcfs" => "FCFS",
                "easy" => "EASY, requested times",
                "easy_exact" => "EASY, exact run times",
                "conservative" => "conservative, requested times",
                _ => "conservative, exact run times",
            };
            line(&format!("{label:<32}{:>14.1}{:>14.1}{:>18.1}{:>12.2}{:>13.3}", m.mean_wait_s, m.p95_wait_s, m.mean_response_s, m.mean_bounded_slowdown, m.utilisation));
        }
    }
    if let Some(dir) = &a.out {
        let waits = if per_job_rows.is_empty() { String::new() } else { format!(", {}-waits.svg", a.scenario) };
        line(&format!("plots: {}/{}-nodes.svg, {}-busy.svg{waits}", dir.display(), a.scenario, a.scenario));
    }
    line(&format!("simulated {} jobs twice in {:.1} s, peak memory {} MB", jobs.len(), started.elapsed().as_secs_f64(), peak_rss_mb()));
    Ok(0)
}

/// This process's peak resident memory, MB.
fn peak_rss_mb() -> u64 {
    // SAFETY: getrusage fills a struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0) / 1024
}
