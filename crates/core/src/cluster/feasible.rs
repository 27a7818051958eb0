//! Whether any node the cluster has ever known could hold a job: what no node could ever run is
//! refused at submission, as Slurm answers "Requested node configuration is not available".

use super::{Cluster, Node};
use crate::job::{JobSpec, SpecError};
use crate::resources::{format_bytes, format_cores};

impl Cluster {
    /// Refuses `spec` when no node known to the cluster (online or not, drained or lost), in
    /// its pool if it names one, could ever hold one of its tasks, or a gang's share of one
    /// node; a cluster that has never known such a node refuses nothing (one may yet join).
    pub(crate) fn check_some_node_could_hold(&self, spec: &JobSpec) -> Result<(), SpecError> {
        let candidates: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| spec.pool.as_ref().is_none_or(|p| &n.pool == p))
            // A node known by name only (replayed before its agent registers again) has no
            // capacity yet: it proves nothing either way.
            .filter(|n| n.capacity.cpu_millis > 0)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let where_ = match &spec.pool {
            Some(pool) => format!("in pool {pool}"),
            None => "on this fleet".to_string(),
        };
        let per_node = spec.gang.map_or(1, |g| u64::from(g.tasks_per_node));
        let need = spec.per_task.times(per_node);
        let unavailable = "(Slurm: Requested node configuration is not available)";
        let largest = |of: fn(&Node) -> u64| candidates.iter().map(|n| of(n)).max().unwrap_or(0);
        let most_cpu = largest(|n| n.capacity.cpu_millis);
        if need.cpu_millis > most_cpu {
            return Err(SpecError::new(
                "cpus",
                format!("{} cores per node, but the largest node {where_} has {} {unavailable}", format_cores(need.cpu_millis), format_cores(most_cpu)),
            ));
        }
        let most_mem = largest(|n| n.capacity.mem_bytes);
        if need.mem_bytes > most_mem {
            return Err(SpecError::new(
                "mem",
                format!("{} per node, but the largest node {where_} has {} {unavailable}", format_bytes(need.mem_bytes), format_bytes(most_mem)),
            ));
        }
        let most_gpus = largest(|n| u64::from(n.capacity.n_gpus));
        if u64::from(need.n_gpus) > most_gpus {
            return Err(SpecError::new(
                "gpus",
                format!("{} GPUs per node, but the most any node {where_} has is {most_gpus} {unavailable}", need.n_gpus),
            ));
        }
        let mut named_need = Vec::new();
        for (name, count) in &spec.named {
            let slot = self.named_slots.iter().position(|s| s == name);
            let most = slot.map_or(0, |i| candidates.iter().map(|n| n.capacity.named[i]).max().unwrap_or(0));
            let wanted = count.saturating_mul(per_node);
            if wanted > most {
                return Err(SpecError::new(
                    "resources",
                    format!("{name}={wanted} per node, but the most any node {where_} has is {most} {unavailable}"),
                ));
            }
            if let Some(i) = slot {
                named_need.push((i, wanted));
            }
        }
        let mut features = 0u64;
        for feature in &spec.requires {
            let bit = self.feature_bits.iter().position(|f| f == feature);
            let Some(bit) = bit.filter(|b| candidates.iter().any(|n| n.features & (1 << b) != 0)) else {
                return Err(SpecError::new("constraint", format!("no node {where_} has feature {feature} {unavailable}")));
            };
            features |= 1 << bit;
        }
        let holds = |n: &&&Node| {
            n.capacity.cpu_millis >= need.cpu_millis
                && n.capacity.mem_bytes >= need.mem_bytes
                && n.capacity.n_gpus >= need.n_gpus
                && named_need.iter().all(|(i, wanted)| n.capacity.named[*i] >= *wanted)
                && n.features & features == features
        };
        let n_able = candidates.iter().filter(holds).count() as u64;
        let n_wanted = spec.gang.map_or(1, |g| u64::from(g.n_nodes));
        if n_able < n_wanted {
            let field = if spec.gang.is_some() { "nodes" } else { "cpus" };
            return Err(SpecError::new(
                field,
                format!("{n_wanted} node(s) holding all of it at once, but {n_able} node(s) {where_} could {unavailable}"),
            ));
        }
        Ok(())
    }
}
