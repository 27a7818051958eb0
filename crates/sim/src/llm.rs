//! The LLM fleet over a day: GPUs shared by inference replicas (realtime chat with a daily tide
//! and unforecast bursts, about 10% interruptible, offline and filler requests filling spare
//! slots) and preemptible training jobs of whole nodes. Where GPUs go is decided by the core:
//! each replica is a realtime task of one GPU, each training job a preemptible task of a whole
//! node, and the core's pass places them and names the training to preempt when replicas need
//! room.
//!
//! Requests are a fluid: every second the demand in concurrent requests (rate x duration) meets
//! the ready replicas' slots, realtime first up to the hard cap, interruptible up to best
//! concurrency, offline and filler in what is left. A new replica serves after its cold start.
//! The forecaster plans replicas for the demand a cold start ahead: the core's Holt-Winters
//! over one-minute buckets, its season started from yesterday and updated minute by minute
//! with today's demand (level, trend and shape).

use crate::rng::Rng;
use crate::svg::Series;
use tidepool_core::forecast::{HoltWinters, Smoothing};
use tidepool_core::{ArraySpec, Cluster, JobId, JobSpec, Resources, TaskOutcome, Tier};

/// The scenario's settings (the file `scenarios/llm-day.conf` holds the shipped values).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmDay {
    /// GPUs in the fleet.
    pub gpus: u32,
    /// GPUs per node (a training job takes a whole node).
    pub gpus_per_node: u32,
    /// Concurrent requests a replica (one GPU) serves best.
    pub best_concurrency: u32,
    /// Hard cap, as a multiple of best concurrency (realtime may use it at a burst).
    pub max_concurrency_factor: f64,
    /// Mean time a request holds its slot, seconds.
    pub request_s: f64,
    /// Realtime requests per second at the daily peak.
    pub peak_rps: f64,
    /// Valley-to-peak ratio of the tide (1/30: 30x).
    pub valley_ratio: f64,
    /// Interruptible requests per realtime request.
    pub interruptible_share: f64,
    /// Unforecast bursts in the day.
    pub bursts: u32,
    /// A burst's extra demand, as a share of the demand at that moment.
    pub burst_size: f64,
    /// A burst's length, seconds.
    pub burst_s: f64,
    /// Today's level against yesterday's (growth the forecaster must notice).
    pub level: f64,
    /// Seconds before a new replica serves.
    pub cold_start_s: f64,
    /// Length of a training job, seconds.
    pub training_s: f64,
    /// A training job checkpoints this often, seconds (work since then is lost when preempted).
    pub checkpoint_s: f64,
    /// Time between tokens at or below best concurrency, ms (the replica emulator's model:
    /// `itl_ms * max(1, c / best)` with `c` requests in flight).
    pub itl_ms: f64,
}

impl LlmDay {
    /// Reads `key = value` lines (`#` comments); unknown keys and bad values are errors naming
    /// the line.
    pub fn parse(text: &str) -> Result<LlmDay, String> {
        let mut d = LlmDay::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
            let (key, value) = (key.trim(), value.trim());
            let num = value.parse::<f64>().map_err(|_| format!("line {}: {key}: '{value}' is not a number", n + 1))?;
            if !num.is_finite() || num < 0.0 {
                return Err(format!("line {}: {key}: must be a number of at least 0", n + 1));
            }
            let whole = || num as u32;
            match key {
                "gpus" => d.gpus = whole(),
                "gpus_per_node" => d.gpus_per_node = whole().max(1),
                "best_concurrency" => d.best_concurrency = whole().max(1),
                "max_concurrency_factor" => d.max_concurrency_factor = num.max(1.0),
                "request_s" => d.request_s = num.max(0.01),
                "peak_rps" => d.peak_rps = num,
                "valley_ratio" => d.valley_ratio = num.min(1.0),
                "interruptible_share" => d.interruptible_share = num,
                "bursts" => d.bursts = whole(),
                "burst_size" => d.burst_size = num,
                "burst_s" => d.burst_s = num,
                "level" => d.level = num,
                "cold_start_s" => d.cold_start_s = num,
                "training_s" => d.training_s = num.max(1.0),
                "checkpoint_s" => d.checkpoint_s = num.max(1.0),
                "itl_ms" => d.itl_ms = num.max(0.001),
                _ => return Err(format!("line {}: unknown key '{key}'", n + 1)),
            }
        }
        if d.gpus < d.gpus_per_node {
            return Err("gpus: fewer than one node".into());
        }
        Ok(d)
    }
}

impl Default for LlmDay {
    fn default() -> LlmDay {
        LlmDay {
            gpus: 1000,
            gpus_per_node: 8,
            best_concurrency: 22,
            max_concurrency_factor: 1.5,
            request_s: 12.0,
            peak_rps: 1200.0,
            valley_ratio: 1.0 / 30.0,
            interruptible_share: 0.1,
            bursts: 4,
            burst_size: 0.3,
            burst_s: 600.0,
            level: 1.05,
            cold_start_s: 40.0,
            training_s: 4.0 * 3600.0,
            checkpoint_s: 1800.0,
            itl_ms: 20.0,
        }
    }
}

/// Which policy runs the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmPolicy {
    /// Forecast replicas, lend the rest to training, fill spare slots with offline work.
    Tidepool,
    /// A static replica count sized for yesterday's peak, nothing lent.
    Static,
    /// Tidepool's lending without a forecast: replicas follow the most asked in the last five
    /// minutes, so every rise waits a cold start.
    Reactive,
}

/// What a day measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmReport {
    /// Realtime request-seconds served over those asked for.
    pub realtime_availability: f64,
    /// Interruptible request-seconds served over those asked for.
    pub interruptible_availability: f64,
    /// GPU-seconds doing useful work (replica slots filled, training) over all GPU-seconds.
    pub gpu_busy_share: f64,
    /// GPU-hours of training.
    pub training_gpu_hours: f64,
    /// Training jobs preempted.
    pub preemptions: u64,
    /// GPU-hours of training lost to preemption (work since the last checkpoint).
    pub lost_gpu_hours: f64,
    /// Most replicas at once.
    pub peak_replicas: u32,
    /// Time between tokens of realtime streams, ms, 50th and 99th percentile over
    /// request-seconds (interruptible streams share their replicas' batches, so their pace).
    pub realtime_itl_ms: (f64, f64),
    /// Realtime demand over the day (hours, concurrent requests).
    pub demand: Series,
    /// Replicas serving over the day (hours, replicas).
    pub replicas: Series,
    /// GPUs training over the day (hours, GPUs).
    pub training: Series,
}

const DAY_S: u64 = 24 * 3600;
/// Seconds between scheduling passes and replica decisions.
const PLAN_EVERY_S: u64 = 5;

/// The tide: share of the peak at second `t` of the day, with a lunch and an evening peak.
fn tide(d: &LlmDay, t: f64) -> f64 {
    let hour = t / 3600.0;
    let bump = |centre: f64, width: f64| (-((hour - centre) / width).powi(2)).exp();
    let shape = 0.55 * bump(12.5, 2.5) + 0.5 * bump(20.5, 2.0) + 0.35 * bump(16.0, 4.0) + 0.1 * bump(9.0, 1.5);
    let max_shape = 0.55 + 0.5 * (-(8.0_f64 / 2.0).powi(2)).exp() + 0.35 * (-(3.5_f64 / 4.0).powi(2)).exp();
    (d.valley_ratio + (1.0 - d.valley_ratio) * (shape / max_shape)).min(1.0)
}

/// Realtime concurrent requests per second of a day: the tide, a little noise, the level and
/// the bursts.
fn day_curve(d: &LlmDay, rng: &mut Rng, level: f64, bursts: &[(u64, u64)]) -> Vec<f64> {
    let mut noise = 1.0;
    (0..DAY_S)
        .map(|t| {
            // Slow noise (a random walk pulled back to 1), so neighbouring seconds agree.
            noise += 0.002 * rng.normal() - 0.001 * (noise - 1.0);
            let burst = if bursts.iter().any(|(s, e)| (*s..*e).contains(&t)) { 1.0 + d.burst_size } else { 1.0 };
            d.peak_rps * tide(d, t as f64) * level * noise.clamp(0.9, 1.1) * burst * d.request_s
        })
        .collect()
}

struct Replica {
    job: JobId,
    pos: u32,
    ready_at: u64,
}

struct Training {
    job: JobId,
    pos: u32,
    attempt: u32,
    started: u64,
    /// Work done before this attempt (checkpointed), seconds.
    done_before: f64,
}

/// Runs a day under `policy`, with draws from `seed`.
pub fn run(d: &LlmDay, policy: LlmPolicy, seed: u64) -> LlmReport {
    let mut rng = Rng::new(seed);
    let bursts: Vec<(u64, u64)> = (0..d.bursts)
        .map(|_| {
            let start = 6 * 3600 + rng.next_u64() % (16 * 3600);
            (start, start + d.burst_s as u64)
        })
        .collect();
    let today = day_curve(d, &mut rng, d.level, &bursts);
    let yesterday = day_curve(d, &mut Rng::new(seed.wrapping_add(1)), 1.0, &[]);
    run_curve(d, policy, &today, Some(&yesterday))
}

/// Runs the fleet on a realtime demand curve (concurrent requests, one value per second).
/// With `yesterday`, the forecaster scales it by today's level; without (a replayed trace), it
/// plans for the most asked in the last five minutes. The static fleet is sized for
/// `yesterday`'s peak, or the curve's own.
pub fn run_curve(d: &LlmDay, policy: LlmPolicy, today: &[f64], yesterday: Option<&[f64]>) -> LlmReport {
    let length = today.len() as u64;
    let b = f64::from(d.best_concurrency);
    let slots_per_replica_max = b * d.max_concurrency_factor;

    let mut cluster = Cluster::new();
    let n_nodes = d.gpus / d.gpus_per_node;
    for i in 0..n_nodes {
        let id = cluster.add_node(&format!("gpu{i:04}"), "gpu", Resources { cpu_millis: 1_000_000, n_gpus: d.gpus_per_node, ..Resources::default() });
        cluster.set_node_online(id, true);
    }
    let replica_need = Resources { cpu_millis: 1000, n_gpus: 1, ..Resources::default() };
    let training_need = Resources { cpu_millis: 1000, n_gpus: d.gpus_per_node, ..Resources::default() };
    let mut next_job = 1u64;
    let mut submit = |cluster: &mut Cluster, name: &str, tier: Tier, need: Resources, n: u32, now_ms: u64| {
        let id = JobId(next_job);
        next_job += 1;
        let mut spec = JobSpec::new(name, "fleet", need, ArraySpec::first(n));
        spec.tier = tier;
        cluster.submit(id, spec, now_ms);
        id
    };
    let lend = policy != LlmPolicy::Static;
    let training_job = if lend { Some(submit(&mut cluster, "training", Tier::Preemptible, training_need, 100_000, 0)) } else { None };
    let mut replicas: Vec<Replica> = Vec::new();
    let mut training: Vec<Training> = Vec::new();
    let mut training_done_before: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    let mut asked_replicas = 0u32;
    let sized_for = yesterday.unwrap_or(today).iter().fold(0.0_f64, |m, v| m.max(*v));
    let static_count = if lend { 0 } else { (sized_for * (1.0 + d.interruptible_share) * 1.1 / b).ceil() as u32 };
    let (mut rt_asked, mut rt_served, mut int_asked, mut int_served) = (0.0, 0.0, 0.0, 0.0);
    let (mut busy_gpu_s, mut training_gpu_s, mut lost_gpu_s) = (0.0, 0.0, 0.0);
    let mut preemptions = 0u64;
    let mut peak_replicas = 0u32;
    // One-minute buckets: the forecaster's season is yesterday's day, minute by minute.
    let minute_means = |curve: &[f64]| -> Vec<f64> { curve.chunks(60).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect() };
    let mut observed_minutes = 0u64;
    let mut forecaster = yesterday.filter(|_| policy != LlmPolicy::Reactive).and_then(|y| HoltWinters::from_season(&minute_means(y), Smoothing::default()));
    let mut surplus_since: Option<u64> = None;
    let (mut demand_series, mut replica_series, mut training_series) = (
        Series { name: "realtime demand (requests in flight)".into(), points: Vec::new() },
        Series { name: "replicas serving".into(), points: Vec::new() },
        Series { name: "GPUs training".into(), points: Vec::new() },
    );
    let cold_ms = (d.cold_start_s * 1000.0) as u64;
    // (time between tokens, realtime request-seconds at that pace), one entry per second.
    let mut paces: Vec<(f64, f64)> = Vec::with_capacity(length as usize);

    for t in 0..length {
        let now_ms = t * 1000;
        let rt = today[t as usize];
        let int = rt * d.interruptible_share;
        if t % PLAN_EVERY_S == 0 {
            // How many replicas to have: the forecast a cold start ahead, or what is asked now
            // if that is more (an unforecast burst).
            let ahead = ((t as f64 + d.cold_start_s + 2.0 * PLAN_EVERY_S as f64) as usize).min(today.len() - 1);
            let forecast = match forecaster.as_mut() {
                Some(hw) => {
                    // Feed every minute that has ended; then ask for the minute `ahead` is in.
                    while t >= 60 * (observed_minutes + 1) {
                        let start = (60 * observed_minutes) as usize;
                        hw.observe(today[start..start + 60].iter().sum::<f64>() / 60.0);
                        observed_minutes += 1;
                    }
                    hw.forecast((ahead as u64 / 60 + 1).saturating_sub(observed_minutes) as usize)
                }
                None => today[(t.saturating_sub(300)) as usize..t as usize].iter().fold(0.0_f64, |m, v| m.max(*v)) * 1.1,
            };
            let want_slots = forecast.max(rt) * (1.0 + d.interruptible_share);
            // One warm spare beyond the forecast: a small fleet's next replica is a cold start away.
            let target = if lend { (want_slots * 1.05 / b).ceil() as u32 + 1 } else { static_count };
            let target = target.min(d.gpus);
            if target > asked_replicas {
                submit(&mut cluster, "replicas", Tier::Realtime, replica_need, target - asked_replicas, now_ms);
                asked_replicas = target;
                surplus_since = None;
            } else if lend && asked_replicas > target + target / 10 + 1 {
                // Give back replicas only after five minutes of surplus, youngest first.
                let since = *surplus_since.get_or_insert(t);
                if t - since >= 300 {
                    for _ in 0..asked_replicas - target {
                        let Some(r) = replicas.pop() else { break };
                        let kills = cluster.cancel(r.job, Some(r.pos), now_ms).unwrap_or_default();
                        for k in kills {
                            cluster.finish(k.job_id, k.index, k.attempt, TaskOutcome::Cancelled, now_ms);
                        }
                        asked_replicas -= 1;
                    }
                    surplus_since = None;
                }
            } else {
                surplus_since = None;
            }
            let decisions = cluster.schedule(now_ms);
            for p in decisions.placements {
                if Some(p.job_id) == training_job {
                    let done_before = training_done_before.get(&p.index).copied().unwrap_or(0.0);
                    training.push(Training { job: p.job_id, pos: p.pos, attempt: p.attempt, started: t, done_before });
                } else {
                    // The day starts with yesterday's replicas warm; later ones start cold.
                    let ready_at = if t == 0 { 0 } else { now_ms + cold_ms };
                    replicas.push(Replica { job: p.job_id, pos: p.pos, ready_at });
                }
            }
            for pre in decisions.preemptions {
                let v = pre.victim;
                if let Some(i) = training.iter().position(|x| x.job == v.job_id && x.pos == v.index && x.attempt == v.attempt) {
                    let x = training.swap_remove(i);
                    let ran = (t - x.started) as f64;
                    let kept = (ran / d.checkpoint_s).floor() * d.checkpoint_s;
                    lost_gpu_s += (ran - kept) * f64::from(d.gpus_per_node);
                    training_done_before.insert(x.pos, x.done_before + kept);
                    preemptions += 1;
                }
                cluster.requeue(v.job_id, v.index, v.attempt, now_ms);
            }
            // Training that reached its length ends.
            let mut ended = Vec::new();
            training.retain(|x| {
                let finished = x.done_before + (t - x.started) as f64 >= d.training_s;
                if finished {
                    ended.push((x.job, x.pos, x.attempt));
                }
                !finished
            });
            for (job, pos, attempt) in ended {
                cluster.finish(job, pos, attempt, TaskOutcome::Succeeded, now_ms);
            }
        }
        let ready = replicas.iter().filter(|r| r.ready_at <= now_ms).count() as f64;
        peak_replicas = peak_replicas.max(replicas.len() as u32);
        let served_rt = rt.min(ready * slots_per_replica_max);
        let served_int = int.min((ready * b - served_rt).max(0.0));
        rt_asked += rt;
        rt_served += served_rt;
        int_asked += int;
        int_served += served_int;
        // Offline and filler fill every spare slot of a ready replica when lending; a statically
        // sized fleet serves only what is asked.
        let filled = if lend { ready * b } else { (served_rt + served_int).min(ready * b) };
        busy_gpu_s += filled / b;
        if ready > 0.0 && served_rt > 0.0 {
            let per_replica = filled.max(served_rt + served_int) / ready;
            paces.push((d.itl_ms * (per_replica / b).max(1.0), served_rt));
        }
        let training_gpus = training.len() as f64 * f64::from(d.gpus_per_node);
        busy_gpu_s += training_gpus;
        training_gpu_s += training_gpus;
        if t % 300 == 0 {
            let h = t as f64 / 3600.0;
            demand_series.points.push((h, rt));
            replica_series.points.push((h, ready));
            training_series.points.push((h, training_gpus));
        }
    }
    LlmReport {
        realtime_itl_ms: (weighted_percentile(&mut paces, 0.5), weighted_percentile(&mut paces, 0.99)),
        realtime_availability: if rt_asked > 0.0 { rt_served / rt_asked } else { 1.0 },
        interruptible_availability: if int_asked > 0.0 { int_served / int_asked } else { 1.0 },
        gpu_busy_share: busy_gpu_s / (f64::from(d.gpus) * length.max(1) as f64),
        training_gpu_hours: training_gpu_s / 3600.0,
        preemptions,
        lost_gpu_hours: lost_gpu_s / 3600.0,
        peak_replicas,
        demand: demand_series,
        replicas: replica_series,
        training: training_series,
    }
}

/// The value below which `share` of the total weight lies, over (value, weight) pairs.
fn weighted_percentile(pairs: &mut [(f64, f64)], share: f64) -> f64 {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    let mut seen = 0.0;
    for (value, weight) in pairs.iter() {
        seen += weight;
        if seen >= share * total {
            return *value;
        }
    }
    pairs.last().map_or(0.0, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tide_runs_from_valley_to_peak() {
        let d = LlmDay::default();
        let values: Vec<f64> = (0..24).map(|h| tide(&d, f64::from(h) * 3600.0)).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(hi > 0.95 && hi <= 1.0, "{values:?}");
        assert!(hi / lo >= 10.0, "peak to valley {}", hi / lo);
    }

    #[test]
    fn a_small_fleet_serves_realtime_and_lends_the_rest() {
        let d = LlmDay { gpus: 96, peak_rps: 100.0, bursts: 2, ..LlmDay::default() };
        let ours = run(&d, LlmPolicy::Tidepool, 1);
        let base = run(&d, LlmPolicy::Static, 1);
        assert!(ours.realtime_availability > 0.99, "{ours:?}");
        assert!(ours.gpu_busy_share > base.gpu_busy_share, "lending keeps GPUs busier");
        assert!(ours.training_gpu_hours > 0.0 && base.training_gpu_hours == 0.0);
        assert_eq!(run(&d, LlmPolicy::Tidepool, 1), ours, "the same seed, the same day");
    }

    #[test]
    fn the_shipped_day_meets_its_goals() {
        let d = LlmDay::parse(crate::scenario::LLM_DAY).unwrap();
        let ours = run(&d, LlmPolicy::Tidepool, 1);
        let base = run(&d, LlmPolicy::Static, 1);
        eprintln!("ours {ours:?}\nbase {base:?}");
        assert!(ours.realtime_availability >= 0.999, "{}", ours.realtime_availability);
        assert!(ours.gpu_busy_share >= 0.95, "{}", ours.gpu_busy_share);
        assert!(base.gpu_busy_share < ours.gpu_busy_share);
    }

    #[test]
    fn the_settings_file_is_checked_by_line() {
        assert_eq!(LlmDay::parse("# comment\ngpus = 64\n").unwrap().gpus, 64);
        assert!(LlmDay::parse("gpus = many\n").unwrap_err().starts_with("line 1: gpus"));
        assert!(LlmDay::parse("\nbogus = 1\n").unwrap_err().contains("line 2: unknown key 'bogus'"));
    }
}
