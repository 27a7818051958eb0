//! LLM serving as discrete events: every request of a trace is routed to a replica (one GPU),
//! waits there until its KV cache holds it, is prefilled in chunks and decoded one token a step
//! under continuous batching (a token budget per step), and its prompt's 512-token blocks are
//! looked up in the replica's prefix cache (an LRU fed by the trace's `hash_ids`): a cached
//! leading block is not computed again. Reported: time to first token and time per output
//! token against their SLOs, the share of requests meeting both, the prefix-cache hit rate and
//! the queueing before a request is first scheduled.

use crate::llm_trace::TraceRequest;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Tokens a `hash_ids` block stands for.
pub const BLOCK_TOKENS: u64 = 512;

/// One replica's speed and room, and the SLOs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServingModel {
    /// Fixed cost of a step, ms.
    pub step_ms: f64,
    /// Cost of each prefilled token in a step, ms.
    pub prefill_ms_per_token: f64,
    /// Cost of each sequence decoding in a step, ms.
    pub decode_ms_per_seq: f64,
    /// Tokens one step may take (decodes first, then prefill chunks).
    pub token_budget: u64,
    /// KV cache of a replica, tokens: a request is admitted only when its prompt and output fit.
    pub kv_tokens: u64,
    /// Prefix-cache blocks a replica keeps.
    pub prefix_blocks: usize,
    /// Time-to-first-token SLO, ms.
    pub ttft_slo_ms: f64,
    /// Time-per-output-token SLO, ms.
    pub tpot_slo_ms: f64,
}

impl Default for ServingModel {
    /// An 8B-class model on one H100-class GPU.
    fn default() -> ServingModel {
        ServingModel {
            step_ms: 12.0,
            prefill_ms_per_token: 0.03,
            decode_ms_per_seq: 0.05,
            token_budget: 2048,
            kv_tokens: 400_000,
            prefix_blocks: 800,
            ttft_slo_ms: 2000.0,
            tpot_slo_ms: 100.0,
        }
    }
}

/// What a trace met on a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingReport {
    /// Requests served (those no replica could ever hold are counted in `refused`).
    pub served: usize,
    /// Requests larger than a replica's KV cache.
    pub refused: usize,
    /// Time to first token, ms: median and 99th percentile.
    pub ttft_p50_ms: f64,
    /// See `ttft_p50_ms`.
    pub ttft_p99_ms: f64,
    /// Time per output token after the first, ms: median and 99th percentile.
    pub tpot_p50_ms: f64,
    /// See `tpot_p50_ms`.
    pub tpot_p99_ms: f64,
    /// Share of requests within both SLOs.
    pub slo_attainment: f64,
    /// Share of prompt blocks found in the prefix cache.
    pub prefix_hit_rate: f64,
    /// Mean wait from arrival to first scheduling, ms.
    pub mean_queue_ms: f64,
}

/// A replica's prefix cache: blocks by id, least recently used dropped first.
#[derive(Default)]
struct PrefixCache {
    last_use: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixCache {
    /// How many leading blocks of `ids` are held; then all of them are (most recently used).
    fn take(&mut self, ids: &[u64], capacity: usize) -> usize {
        let hits = ids.iter().take_while(|id| self.last_use.contains_key(id)).count();
        for id in ids {
            self.clock += 1;
            if let Some(old) = self.last_use.insert(*id, self.clock) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.clock, *id);
        }
        while self.last_use.len() > capacity {
            let Some((_, id)) = self.by_age.pop_first() else { break };
            self.last_use.remove(&id);
        }
        hits
    }
}

/// A request on a replica.
struct Seq {
    request: usize,
    prefill_left: u64,
    decode_left: u64,
    kv: u64,
    first_token_ms: Option<f64>,
}

#[derive(Default)]
struct Replica {
    waiting: VecDeque<usize>,
    running: Vec<Seq>,
    kv_used: u64,
    /// The step under way: when it ends, and per running sequence the prefill tokens it takes.
    step: Option<(f64, Vec<u64>)>,
    cache: PrefixCache,
    load: u64,
}

/// Serves `requests` (sorted by arrival) on `gpus` replicas of `model`, each request to the
/// replica with the least work queued and running.
pub fn serve(requests: &[TraceRequest], gpus: usize, model: &ServingModel) -> ServingReport {
    let mut replicas: Vec<Replica> = (0..gpus.max(1)).map(|_| Replica::default()).collect();
    let n = requests.len();
    let (mut ttft, mut tpot, mut queued) = (vec![f64::NAN; n], vec![f64::NAN; n], vec![f64::NAN; n]);
    let (mut blocks, mut hits, mut refused) = (0u64, 0u64, 0usize);
    let mut next = 0;
    let mut now;
    loop {
        let next_arrival = requests.get(next).map_or(f64::INFINITY, |r| r.at_s * 1000.0);
        let next_step = replicas.iter().filter_map(|r| r.step.as_ref().map(|s| s.0)).fold(f64::INFINITY, f64::min);
        now = next_arrival.min(next_step);
        if !now.is_finite() {
            break;
        }
        // Steps that end now.
        for replica in replicas.iter_mut().filter(|r| r.step.as_ref().is_some_and(|s| s.0 <= now)) {
            let Some((_, chunks)) = replica.step.take() else { continue };
            for (seq, chunk) in replica.running.iter_mut().zip(chunks) {
                if seq.prefill_left > 0 {
                    seq.prefill_left -= chunk;
                    if seq.prefill_left == 0 {
                        // The prompt's last chunk yields the first token.
                        seq.first_token_ms = Some(now);
                        ttft[seq.request] = now - requests[seq.request].at_s * 1000.0;
                        seq.decode_left = seq.decode_left.saturating_sub(1);
                    }
                } else if chunk == 0 && seq.first_token_ms.is_some() {
                    seq.decode_left = seq.decode_left.saturating_sub(1);
                }
            }
            let mut kept = Vec::new();
            for seq in replica.running.drain(..) {
                if seq.prefill_left == 0 && seq.decode_left == 0 {
                    let out = requests[seq.request].output_tokens.max(1);
                    let first = seq.first_token_ms.unwrap_or(now);
                    tpot[seq.request] = if out > 1 { (now - first) / (out - 1) as f64 } else { 0.0 };
                    replica.kv_used -= seq.kv;
                    replica.load -= seq.kv;
                } else {
                    kept.push(seq);
                }
            }
            replica.running = kept;
        }
        // Arrivals now, each to the least loaded replica.
        while requests.get(next).is_some_and(|r| r.at_s * 1000.0 <= now) {
            let r = &requests[next];
            let need = r.input_tokens.max(1) + r.output_tokens.max(1);
            if need > model.kv_tokens {
                refused += 1;
            } else if let Some(replica) = replicas.iter_mut().min_by_key(|x| x.load) {
                replica.waiting.push_back(next);
                replica.load += need;
            }
            next += 1;
        }
        // Idle replicas with work start a step.
        for replica in replicas.iter_mut().filter(|r| r.step.is_none()) {
            while let Some(&i) = replica.waiting.front() {
                let r = &requests[i];
                let need = r.input_tokens.max(1) + r.output_tokens.max(1);
                if replica.kv_used + need > model.kv_tokens {
                    break;
                }
                replica.waiting.pop_front();
                replica.kv_used += need;
                queued[i] = now - r.at_s * 1000.0;
                let held = replica.cache.take(&r.hash_ids, model.prefix_blocks) as u64;
                blocks += r.hash_ids.len() as u64;
                hits += held;
                let prefill = r.input_tokens.saturating_sub(held * BLOCK_TOKENS).max(1);
                replica.running.push(Seq { request: i, prefill_left: prefill, decode_left: r.output_tokens.max(1), kv: need, first_token_ms: None });
            }
            if replica.running.is_empty() {
                continue;
            }
            let decoding = replica.running.iter().filter(|s| s.prefill_left == 0).count() as u64;
            let mut budget = model.token_budget.saturating_sub(decoding);
            let chunks: Vec<u64> = replica
                .running
                .iter()
                .map(|s| {
                    let take = s.prefill_left.min(budget);
                    budget -= take;
                    take
                })
                .collect();
            let prefilled: u64 = chunks.iter().sum();
            let length = model.step_ms + model.prefill_ms_per_token * prefilled as f64 + model.decode_ms_per_seq * decoding as f64;
            replica.step = Some((now + length, chunks));
        }
    }
    let served: Vec<usize> = (0..n).filter(|i| ttft[*i].is_finite() && tpot[*i].is_finite()).collect();
    let pick = |values: &[f64], q: f64| -> f64 {
        let mut v: Vec<f64> = served.iter().map(|i| values[*i]).collect();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round().max(0.0) as usize).copied().unwrap_or(0.0)
    };
    let within = served.iter().filter(|i| ttft[**i] <= model.ttft_slo_ms && tpot[**i] <= model.tpot_slo_ms).count();
    ServingReport {
        served: served.len(),
        refused,
        ttft_p50_ms: pick(&ttft, 0.5),
        ttft_p99_ms: pick(&ttft, 0.99),
        tpot_p50_ms: pick(&tpot, 0.5),
        tpot_p99_ms: pick(&tpot, 0.99),
        slo_attainment: within as f64 / n.max(1) as f64,
        prefix_hit_rate: if blocks == 0 { 0.0 } else { hits as f64 / blocks as f64 },
        mean_queue_ms: served.iter().map(|i| queued[*i]).sum::<f64>() / served.len().max(1) as f64,
    }
}

/// The prefix-cache hit rate an unbounded cache on one replica would reach: each request's
/// leading blocks already seen in an earlier request, over all blocks.
pub fn ideal_prefix_hit_rate(requests: &[TraceRequest]) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let (mut blocks, mut hits) = (0u64, 0u64);
    for r in requests {
        hits += r.hash_ids.iter().take_while(|id| seen.contains(*id)).count() as u64;
        blocks += r.hash_ids.len() as u64;
        seen.extend(r.hash_ids.iter().copied());
    }
    if blocks == 0 {
        0.0
    } else {
        hits as f64 / blocks as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: usize, every_ms: f64) -> Vec<TraceRequest> {
        // Requests share a long system prompt (blocks 1-4) and then their own blocks.
        (0..n)
            .map(|i| TraceRequest {
                at_s: i as f64 * every_ms / 1000.0,
                input_tokens: 3000,
                output_tokens: 200,
                hash_ids: [1, 2, 3, 4].into_iter().chain([1000 + i as u64, 2000 + i as u64]).collect(),
            })
            .collect()
    }

    #[test]
    fn fewer_gpus_meet_fewer_slos_and_one_replica_reaches_the_ideal_prefix_hit_rate() {
        let requests = trace(400, 50.0);
        let model = ServingModel { prefix_blocks: 1_000_000, ..ServingModel::default() };
        let one = serve(&requests, 1, &model);
        let many = serve(&requests, 8, &model);
        assert_eq!((one.served, many.served), (400, 400));
        assert!(one.slo_attainment < many.slo_attainment, "{one:?}\n{many:?}");
        assert!(one.ttft_p99_ms > many.ttft_p99_ms);
        let ideal = ideal_prefix_hit_rate(&requests);
        assert!((ideal - 4.0 * 399.0 / (6.0 * 400.0)).abs() < 1e-12);
        assert!((one.prefix_hit_rate - ideal).abs() < 1e-12, "{} vs {ideal}", one.prefix_hit_rate);
        // Spread over replicas, each learns the shared prefix once: fewer hits.
        assert!(many.prefix_hit_rate < ideal);
        // A small cache forgets: fewer hits than the ideal.
        let small = serve(&requests, 1, &ServingModel { prefix_blocks: 3, ..ServingModel::default() });
        assert!(small.prefix_hit_rate < ideal, "{small:?}");
    }

    #[test]
    fn a_request_larger_than_the_kv_cache_is_refused_not_waited_for_for_ever() {
        let mut requests = trace(3, 10.0);
        requests[1].input_tokens = 10_000_000;
        let r = serve(&requests, 1, &ServingModel::default());
        assert_eq!((r.served, r.refused), (2, 1));
    }
}
