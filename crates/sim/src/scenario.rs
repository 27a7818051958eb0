//! The shipped scenarios.

use crate::batch::{Compaction, Faults, Pool, SimJob, SimPolicy};

/// The settings of `llm-day`, as shipped.
pub const LLM_DAY: &str = include_str!("../scenarios/llm-day.conf");
use crate::rng::Rng;

/// `science-burst`: 100,000 tasks of 1, 2, 4, 8 or 16 cores with long-tailed run times
/// (log-normal, median 15 min, shape 1.2, at most 24 h), all submitted at once, on a pool of
/// 24-core nodes that grows from 0 to at most 2,000 (2 min to provision each) and back to 0.
///
/// Policies: Tidepool's best fit, releasing a node as soon as it is idle with nothing queued
/// (after 60 s), and compacting the tail: tasks checkpoint every 10 minutes, and every 5
/// minutes once nothing waits the tasks of the emptiest nodes move (1 minute to restore) into
/// the room of others. The baseline places first fit, never moves a task, and releases a node
/// after 10 idle minutes, the default scale-down delay of the Kubernetes cluster autoscaler.
///
/// Both run on the same troubled fleet: 60% of new nodes are spot instances at 35% of the
/// on-demand price, reclaimed at 0.002 per spot node-hour (several times the worst bucket of
/// AWS's spot advisor, so reclaims are seen), and any node fails at 0.0001 per node-hour. A
/// lost node's tasks start over under the baseline and resume from their last checkpoint
/// under Tidepool.
pub fn science_burst(seed: u64) -> (Vec<SimJob>, Pool, SimPolicy, SimPolicy) {
    const SIZES: [u64; 5] = [1, 2, 4, 8, 16];
    const WEIGHTS: [u32; 5] = [40, 25, 15, 12, 8];
    let mut rng = Rng::new(seed);
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..100_000 {
        let size = rng.weighted(&WEIGHTS);
        runs[size].push(rng.lognormal(900.0, 1.2).clamp(30.0, 24.0 * 3600.0));
    }
    let jobs = SIZES
        .iter()
        .zip(runs)
        .rev()
        .map(|(cores, run_s)| SimJob { submit_s: 0.0, cores: *cores, run_s, gang_nodes: None, limit_s: None })
        .collect();
    let faults = Faults {
        seed: seed ^ 0x5eed_f417,
        spot_share: 0.6,
        spot_price: 0.35,
        spot_reclaims_per_node_h: 0.002,
        failures_per_node_h: 0.0001,
    };
    let pool = Pool { node_cores: 24, min_nodes: 0, max_nodes: 2_000, provision_s: 120.0, faults: Some(faults) };
    let compaction = Compaction { checkpoint_s: 600.0, restore_s: 60.0, every_s: 300.0, max_candidates: 64 };
    let ours = SimPolicy { first_fit: false, idle_release_s: 60.0, compaction: Some(compaction), event_driven: false };
    (jobs, pool, ours, SimPolicy { first_fit: true, idle_release_s: 600.0, compaction: None, event_driven: false })
}
