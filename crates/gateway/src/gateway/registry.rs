//! The replicas the gateway serves from, keyed by a `ReplicaId` that is never reused: the
//! configuration fills the registry at start, and replicas can be added, drained (no new
//! requests; those running finish) and removed while requests run. A request keeps the
//! connection pool of the replica it was admitted to, so a replica removed under it still
//! answers it, and its slot's release finds nothing to release.

use crate::config::Replica;
use crate::upstream::Upstream;
use std::sync::Arc;
use tidepool_core::admission::ReplicaSlots;
use tidepool_core::concurrency::ConcurrencyLearner;
use tidepool_core::Tier;
use tokio::sync::Notify;

/// A replica's identity in this gateway's life; the first replicas of the configuration are
/// 0, 1, 2, ... in their order there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u64);

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A request holding one of a replica's slots.
pub(crate) struct InFlight {
    pub id: u64,
    pub tier: Tier,
    pub cut: Arc<Notify>,
    pub cuttable: bool,
}

/// One replica: what it is, how to reach it, and what it carries now.
pub(crate) struct ReplicaEntry {
    pub id: ReplicaId,
    pub spec: Replica,
    pub upstream: Arc<Upstream>,
    pub slots: ReplicaSlots,
    pub in_flight: Vec<InFlight>,
    pub cut_off: u64,
    /// Present when the best concurrency is learned rather than configured.
    pub learner: Option<ConcurrencyLearner>,
    /// Takes no new requests.
    pub draining: bool,
}

/// Every replica, in the order they were added.
#[derive(Default)]
pub(crate) struct Registry {
    entries: Vec<ReplicaEntry>,
    next_id: u64,
}

impl Registry {
    /// Adds a replica; its id.
    pub fn add(&mut self, spec: Replica, upstream: Upstream) -> ReplicaId {
        let id = ReplicaId(self.next_id);
        self.next_id += 1;
        self.entries.push(ReplicaEntry {
            id,
            slots: ReplicaSlots::new(spec.best_concurrency, spec.max_concurrency),
            learner: spec.learn.map(|l| ConcurrencyLearner::new(spec.best_concurrency, l.cap)),
            spec,
            upstream: Arc::new(upstream),
            in_flight: Vec::new(),
            cut_off: 0,
            draining: false,
        });
        id
    }

    /// Stops giving `id` new requests; false if there is no such replica.
    pub fn drain(&mut self, id: ReplicaId) -> bool {
        self.get_mut(id).map(|r| r.draining = true).is_some()
    }

    /// Forgets `id`; its running requests finish on the connections they hold. False if there
    /// is no such replica.
    pub fn remove(&mut self, id: ReplicaId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|r| r.id != id);
        self.entries.len() < before
    }

    /// One replica.
    pub fn get(&self, id: ReplicaId) -> Option<&ReplicaEntry> {
        // Few replicas per gateway, and in id order: a binary search of a small vector.
        self.entries.binary_search_by_key(&id, |r| r.id).ok().map(|i| &self.entries[i])
    }

    /// One replica, to change.
    pub fn get_mut(&mut self, id: ReplicaId) -> Option<&mut ReplicaEntry> {
        self.entries.binary_search_by_key(&id, |r| r.id).ok().map(|i| &mut self.entries[i])
    }

    /// The replicas that take new requests for `model`.
    pub fn serving(&self, model: &str) -> Vec<ReplicaId> {
        self.entries.iter().filter(|r| !r.draining && r.spec.model == model).map(|r| r.id).collect()
    }

    /// Every replica.
    pub fn iter(&self) -> impl Iterator<Item = &ReplicaEntry> {
        self.entries.iter()
    }
}
