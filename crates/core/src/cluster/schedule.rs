//! The scheduling pass: queue order (tier, fair share, age), best-fit placement, gangs placed
//! whole with reservations and backfill around them, preemption by tier and quota reclaim.
//!
//! **Invariants** (checked by the property tests): nothing is over-committed; a gang is placed
//! whole or not at all; realtime work is never preempted; a victim is always of a lower tier
//! than the job it makes room for, or of the same tier and a project borrowing beyond its quota
//! while the preemptor's project is under its own; a project never holds more than quota plus
//! borrowing limit.

use crate::cluster::{Cluster, Decisions, KillOrder, Node, Placement};
use crate::job::JobId;
use crate::resources::Resources;
use crate::tier::Tier;

/// Tasks to preempt, as (job, position).
type Victims = Vec<(JobId, u32)>;

/// How many blocked jobs may look for victims in one pass (bounds the cost of a full fleet).
const MAX_PREEMPTION_SEARCHES: usize = 16;

pub use crate::decisions::Preemption;

impl Cluster {
    /// One scheduling pass at `now_ms`. The state already reflects what it decided.
    pub fn schedule(&mut self, now_ms: u64) -> Decisions {
        self.now_ms = self.now_ms.max(now_ms);
        let half_life = self.policy.fair_share_half_life_ms;
        for p in &mut self.projects {
            p.advance(now_ms, half_life);
        }
        let mut order: Vec<(Tier, u64, JobId)> = self
            .queue
            .iter()
            .filter_map(|(tier, id)| {
                let job = self.jobs.get(id)?;
                Some((*tier, self.projects[job.project_idx].fair_share_key(), *id))
            })
            .collect();
        order.sort_unstable();
        self.reservations.clear();
        // A finished job never has work again: it leaves the live set for good.
        let (jobs, ended) = (&self.jobs, &mut self.ended);
        self.live.retain(|id| {
            let live = jobs.get(id).is_some_and(|j| !j.is_finished());
            if !live {
                ended.push_back(*id);
            }
            live
        });
        let lowest_running_tier = self
            .live_jobs()
            .filter(|j| j.counts.running > 0)
            .map(|j| j.spec.tier)
            .max();
        let any_borrowing = self.projects.iter().any(|p| p.is_borrowing());
        let mut decisions = Decisions::default();
        let mut n_searches = 0;
        let mut refilling = Vec::new();
        for (tier, _, job_id) in order {
            let Some(job) = self.jobs.get(&job_id) else { continue };
            if self.dependencies_met(job) != Ok(true) {
                continue;
            }
            if job.spec.gang.is_some() && job.counts.pending == job.counts.total() {
                self.schedule_gang(job_id, now_ms, &mut decisions);
                continue;
            }
            let mut blocked = false;
            while let Some(job) = self.jobs.get(&job_id) {
                if job.throttled() || !job.has_pending() || !self.quota_allows(job, 1) {
                    break;
                }
                match self.best_node(job_id, now_ms).or_else(|| self.prefetch_node(job_id, now_ms, &mut refilling)) {
                    Some(node_id) => self.place_next(job_id, node_id, now_ms, &mut decisions),
                    None => {
                        blocked = true;
                        break;
                    }
                }
            }
            let may_preempt = lowest_running_tier.is_some_and(|low| low > tier) || any_borrowing;
            if blocked && may_preempt && tier != Tier::Preemptible && n_searches < MAX_PREEMPTION_SEARCHES {
                n_searches += 1;
                self.try_preempt(job_id, now_ms, &mut decisions);
            }
        }
        decisions
    }

    fn place_next(&mut self, job_id: JobId, node_id: crate::cluster::NodeId, now_ms: u64, decisions: &mut Decisions) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let Some(pos) = job.next_pending() else { return };
        let attempt = job.last_attempt.get(&pos).map_or(1, |a| a + 1);
        let index = job.spec.array.index_at(pos).unwrap_or(pos);
        if self.apply_dispatch(job_id, pos, attempt, node_id, now_ms).is_ok() {
            decisions.placements.push(Placement { job_id, pos, index, attempt, node_id });
        }
    }

    /// True when the job's project may take `n_tasks` more tasks.
    pub(crate) fn quota_allows(&self, job: &crate::cluster::Job, n_tasks: u64) -> bool {
        let project = &self.projects[job.project_idx];
        project
            .limits
            .cap()
            .is_none_or(|cap| project.allocated_cpu_millis + job.demand.cpu_millis * n_tasks <= cap)
    }

    /// True when `job` may use `node` now, given holds and reservations.
    fn allowed(&self, node_idx: usize, node: &Node, job_id: JobId, now_ms: u64) -> bool {
        if let Some(holder) = node.held_for {
            if holder != job_id && self.jobs.get(&holder).is_some_and(|j| j.has_pending()) {
                return false;
            }
        }
        match self.reservations.get(&crate::cluster::NodeId(node_idx as u32)) {
            Some((owner, start)) if *owner != job_id => {
                // Backfill: only work known to end before the reservation starts.
                let limit = self.jobs.get(&job_id).and_then(|j| j.spec.time_limit_s);
                limit.is_some_and(|s| now_ms.saturating_add(s * 1000) <= *start)
            }
            _ => true,
        }
    }

    /// The node where one task of the job fits most tightly on its dominant resource.
    fn best_node(&self, job_id: JobId, now_ms: u64) -> Option<crate::cluster::NodeId> {
        let job = self.jobs.get(&job_id)?;
        let need = job.demand;
        let fits = |i: usize, n: &Node| {
            n.online && self.node_suits(n, job) && n.free().fits(&need) && self.allowed(i, n, job_id, now_ms)
        };
        if self.policy.first_fit {
            return self.nodes.iter().enumerate().find(|(i, n)| fits(*i, n)).map(|(i, _)| crate::cluster::NodeId(i as u32));
        }
        // A node that already holds what the job's tasks start from (its image) goes first,
        // tightest fit among them.
        if let Some(warm) = job.spec.warm_key.as_ref().and_then(|k| self.warm.get(k)) {
            let chosen = warm
                .iter()
                .filter(|id| {
                    let n = &self.nodes[id.0 as usize];
                    !n.overflow && fits(id.0 as usize, n)
                })
                .min_by_key(|id| (self.nodes[id.0 as usize].free().cpu_millis, **id));
            if let Some(id) = chosen {
                return Some(*id);
            }
        }
        if need.has_devices() {
            return self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| fits(*i, n))
                .min_by_key(|(i, n)| {
                    let f = n.free();
                    (n.overflow, f.n_gpus - need.n_gpus, f.named.iter().sum::<u64>(), f.cpu_millis, *i)
                })
                .map(|(i, _)| crate::cluster::NodeId(i as u32));
        }
        // Local nodes first; an overflow site (e.g. Slurm) only gets what they cannot take now.
        let tightest = |overflow: bool| {
            self.free_index
                .range((need.cpu_millis, crate::cluster::NodeId(0))..)
                .map(|(_, id)| *id)
                .find(|id| self.nodes[id.0 as usize].overflow == overflow && fits(id.0 as usize, &self.nodes[id.0 as usize]))
        };
        tightest(false).or_else(|| tightest(true))
    }

    /// A node running a task of a job known to be short where one more may wait for a running
    /// task to end (the node's queue starts in arrival order): the node's queue holds at most
    /// `Policy::prefetch_ms` of such work per core, so what waits there waits no longer than that. A queue is topped up once it
    /// is down to half (the nodes being topped up in this pass are in `refilling`), so that
    /// launches go out in batches rather than one per ended task.
    fn prefetch_node(&self, job_id: JobId, now_ms: u64, refilling: &mut Vec<crate::cluster::NodeId>) -> Option<crate::cluster::NodeId> {
        let job = self.jobs.get(&job_id)?;
        let prefetch_ms = self.policy.prefetch_ms;
        let mean_ms = job.mean_run_ms()?.max(1);
        // A GPU is given by index when a task starts: one waiting on a node holds none.
        if prefetch_ms == 0 || job.spec.gang.is_some() || job.demand.n_gpus > 0 || mean_ms > prefetch_ms {
            return None;
        }
        let need = job.demand;
        if need.has_devices() {
            return None;
        }
        let chosen = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                let window = n.capacity.cpu_millis.saturating_mul(prefetch_ms) / mean_ms;
                let topping_up = refilling.contains(&crate::cluster::NodeId(*i as u32)) || n.queued_cpu_millis * 2 <= window;
                topping_up
                    && n.online
                    && !n.overflow
                    && self.node_suits(n, job)
                    && self.allowed(*i, n, job_id, now_ms)
                    && n.queued_cpu_millis + need.cpu_millis <= window
                    && n.running.range((job_id, 0)..=(job_id, u32::MAX)).next().is_some()
            })
            .min_by_key(|(i, n)| (n.queued_cpu_millis, *i))
            .map(|(i, _)| crate::cluster::NodeId(i as u32))?;
        if !refilling.contains(&chosen) {
            refilling.push(chosen);
        }
        Some(chosen)
    }

    /// Places a gang whole, or reserves the nodes it will get first.
    fn schedule_gang(&mut self, job_id: JobId, now_ms: u64, decisions: &mut Decisions) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        let Some(gang) = job.spec.gang else { return };
        if !self.quota_allows(job, u64::from(gang.n_nodes * gang.tasks_per_node)) {
            return;
        }
        let per_node = job.demand.times(u64::from(gang.tasks_per_node));
        let mut ready: Vec<(u64, u64, usize)> = self
            .gang_hosts(job, &per_node)
            .filter(|(i, n)| n.free().fits(&per_node) && self.allowed(*i, n, job_id, now_ms))
            .map(|(i, n)| (u64::from(n.overflow), n.free().cpu_millis, i))
            .collect();
        if ready.len() >= gang.n_nodes as usize {
            ready.sort_unstable();
            for (_, _, i) in ready.into_iter().take(gang.n_nodes as usize) {
                for _ in 0..gang.tasks_per_node {
                    self.place_next(job_id, crate::cluster::NodeId(i as u32), now_ms, decisions);
                }
            }
            return;
        }
        if self.reservations.values().map(|(j, _)| *j).collect::<std::collections::BTreeSet<_>>().len()
            >= self.policy.max_reservations
        {
            return;
        }
        // Reserve the nodes expected to be free first; later (lower-priority) work may only use
        // them if it ends before the gang starts.
        let mut candidates: Vec<(u64, usize)> = self
            .gang_hosts(job, &per_node)
            .filter(|(i, _)| !self.reservations.contains_key(&crate::cluster::NodeId(*i as u32)))
            .map(|(i, n)| (self.expected_free_at(n, &per_node, now_ms), i))
            .collect();
        if candidates.len() < gang.n_nodes as usize {
            return;
        }
        candidates.sort_unstable();
        candidates.truncate(gang.n_nodes as usize);
        let start = candidates.iter().map(|(t, _)| *t).max().unwrap_or(u64::MAX);
        for (_, i) in candidates {
            self.reservations.insert(crate::cluster::NodeId(i as u32), (job_id, start));
        }
    }

    /// Online nodes that could ever host one node's share of a gang.
    fn gang_hosts<'a>(&'a self, job: &'a crate::cluster::Job, per_node: &'a Resources) -> impl Iterator<Item = (usize, &'a Node)> + 'a {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.online && self.node_suits(n, job) && n.capacity.fits(per_node))
    }

    /// When `need` will fit on `node`, from its running tasks' time limits (MAX if unknown).
    pub(crate) fn expected_free_at(&self, node: &Node, need: &Resources, now_ms: u64) -> u64 {
        if node.free().fits(need) {
            return now_ms;
        }
        let mut ends: Vec<(u64, Resources)> = node
            .running
            .iter()
            .filter_map(|(jid, pos)| {
                let job = self.jobs.get(jid)?;
                let run = job.running.get(pos)?;
                let end = job
                    .spec
                    .time_limit_s
                    .map_or(u64::MAX, |s| run.started_ms.saturating_add(s * 1000));
                Some((end, job.demand))
            })
            .collect();
        ends.sort_unstable_by_key(|(end, _)| *end);
        let mut free = node.free();
        for (end, demand) in ends {
            free = free.plus(&demand);
            if free.fits(need) {
                return end;
            }
        }
        u64::MAX
    }

    /// Finds the node where stopping lower-priority work frees room for one task of the job
    /// at the least lost work, and orders those stops.
    fn try_preempt(&mut self, job_id: JobId, now_ms: u64, decisions: &mut Decisions) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        if self.nodes.iter().any(|n| n.held_for == Some(job_id)) {
            return;
        }
        if !self.quota_allows(job, 1) {
            return;
        }
        let tier = job.spec.tier;
        let reclaim = self.projects[job.project_idx].is_under_quota();
        let need = job.demand;
        // (work lost, node, victims as (job, position)).
        let mut best: Option<(u64, usize, Victims)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.online || !self.node_suits(node, job) {
                continue;
            }
            if node.held_for.is_some_and(|h| h != job_id) || self.reservations.contains_key(&crate::cluster::NodeId(i as u32)) {
                continue;
            }
            let mut free = node.free();
            let mut victims: Vec<(u64, JobId, u32, Resources)> = Vec::new();
            for (vj, vpos) in &node.running {
                let Some(vjob) = self.jobs.get(vj) else { continue };
                let Some(run) = vjob.running.get(vpos) else { continue };
                if run.preempting {
                    free = free.plus(&vjob.demand);
                    continue;
                }
                let vtier = vjob.spec.tier;
                let lower = vtier > tier;
                let reclaimable = reclaim
                    && vtier == tier
                    && vjob.project_idx != job.project_idx
                    && self.projects[vjob.project_idx].is_borrowing();
                if vtier != Tier::Realtime && (lower || reclaimable) {
                    victims.push((now_ms.saturating_sub(run.checkpoint_ms), *vj, *vpos, vjob.demand));
                }
            }
            if free.fits(&need) {
                continue;
            }
            victims.sort_unstable_by_key(|(lost, vj, vpos, _)| (*lost, *vj, *vpos));
            let mut chosen = Vec::new();
            let mut cost = 0u64;
            for (lost, vj, vpos, demand) in victims {
                free = free.plus(&demand);
                cost += lost;
                chosen.push((vj, vpos));
                if free.fits(&need) {
                    break;
                }
            }
            if free.fits(&need) && best.as_ref().is_none_or(|(c, bi, _)| (cost, i) < (*c, *bi)) {
                best = Some((cost, i, chosen));
            }
        }
        let Some((_, node_idx, chosen)) = best else { return };
        let node_id = crate::cluster::NodeId(node_idx as u32);
        for (vj, vpos) in chosen {
            let Some(vjob) = self.jobs.get_mut(&vj) else { continue };
            let index = vjob.spec.array.index_at(vpos).unwrap_or(vpos);
            let Some(run) = vjob.running.get_mut(&vpos) else { continue };
            run.preempting = true;
            decisions.preemptions.push(Preemption {
                victim: KillOrder { job_id: vj, index, attempt: run.attempt, node_id },
                for_job: job_id,
            });
        }
        self.nodes[node_idx].held_for = Some(job_id);
    }
}
