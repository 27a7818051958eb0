//! Admission of LLM requests under permanent overload: per-tenant token and request budgets,
//! and which tier gets a replica's slots. Pure: the gateway passes the time in and applies the
//! answers.
//!
//! The policy, per replica with best concurrency `B` and hard cap `M >= B`:
//! - realtime is admitted while the replica holds fewer than `M` requests; when every replica
//!   holds `B` or more, a lower-tier request in flight is cut off to make room;
//! - interruptible is admitted only below `B - headroom` (it is the first shed at a peak);
//! - batch, offline and filler are admitted only below `B - headroom` too, and they are the
//!   first to be cut off when realtime needs a slot (filler first, then offline, batch,
//!   interruptible).
//!
//! **Invariant**: a realtime request within its tenant's budget is never refused while any
//! replica is below its hard cap.

use crate::tier::Tier;

/// A token bucket: `capacity` units, refilled continuously over a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    updated_ms: u64,
}

impl Bucket {
    /// A full bucket of `per_minute` units.
    pub fn per_minute(per_minute: u64, now_ms: u64) -> Bucket {
        Bucket { capacity: per_minute as f64, level: per_minute as f64, updated_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.updated_ms {
            let add = self.capacity * (now_ms - self.updated_ms) as f64 / 60_000.0;
            self.level = (self.level + add).min(self.capacity);
            self.updated_ms = now_ms;
        }
    }

    /// What [`Bucket::take`] says of more units than the bucket ever holds.
    pub const NEVER: u64 = u64::MAX;

    /// Takes `n` units, or says in how many milliseconds they will be there: [`Bucket::NEVER`]
    /// for more than the capacity, however full the bucket.
    pub fn take(&mut self, n: u64, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        let n = n as f64;
        if n > self.capacity {
            return Err(Bucket::NEVER);
        }
        if self.level >= n {
            self.level -= n;
            return Ok(());
        }
        let missing = n - self.level;
        Err(((missing / self.capacity.max(1e-9)) * 60_000.0).ceil() as u64)
    }

    /// Gives back `n` units (an estimate that turned out too high).
    pub fn give_back(&mut self, n: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level = (self.level + n as f64).min(self.capacity);
    }

    /// Takes `n` units even if that leaves the bucket in debt (tokens already generated).
    pub fn charge(&mut self, n: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level -= n as f64;
    }

    /// Whole units left now.
    pub fn remaining(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.level.max(0.0) as u64
    }

    /// Milliseconds until the bucket is full again.
    pub fn ms_to_full(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        (((self.capacity - self.level) / self.capacity.max(1e-9)) * 60_000.0).ceil() as u64
    }

    /// The bucket's size.
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }
}

/// One replica's slots as admission sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSlots {
    /// Most efficient number of concurrent requests.
    pub best_concurrency: u32,
    /// Never more than this many.
    pub max_concurrency: u32,
    /// Requests in flight, per tier (index = tier order).
    pub in_flight: [u32; 6],
    /// Of those, how many may still be cut off (streams not already being cut), per tier.
    pub cuttable: [u32; 6],
}

impl ReplicaSlots {
    /// A replica with nothing in flight.
    pub fn new(best_concurrency: u32, max_concurrency: u32) -> ReplicaSlots {
        ReplicaSlots { best_concurrency, max_concurrency: max_concurrency.max(best_concurrency), in_flight: [0; 6], cuttable: [0; 6] }
    }

    /// Requests in flight, all tiers.
    pub fn total(&self) -> u32 {
        self.in_flight.iter().sum()
    }
}

/// What admission decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to this replica.
    Admit {
        /// Replica index.
        replica: usize,
    },
    /// Send it to this replica after cutting off a lower-tier request in flight there.
    AdmitByCutting {
        /// Replica index.
        replica: usize,
        /// The tier of the request to cut off (the gateway picks the youngest of that tier).
        victim_tier: Tier,
    },
    /// No room: answer 429 and suggest retrying after this many milliseconds.
    Refuse {
        /// Suggested wait.
        retry_after_ms: u64,
    },
}

fn tier_idx(t: Tier) -> usize {
    Tier::ALL.iter().position(|x| *x == t).unwrap_or(2)
}

/// Chooses a replica for a request of `tier`. `headroom` slots below best concurrency are kept
/// free of lower tiers for realtime bursts. `typical_request_ms` sizes Retry-After.
pub fn admit(replicas: &[ReplicaSlots], tier: Tier, headroom: u32, typical_request_ms: u64) -> Verdict {
    let least_loaded = |limit: &dyn Fn(&ReplicaSlots) -> u32| {
        replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.total() < limit(r))
            .min_by_key(|(i, r)| (r.total() * 1000 / r.best_concurrency.max(1), *i))
            .map(|(i, _)| i)
    };
    if tier == Tier::Realtime {
        if let Some(i) = least_loaded(&|r| r.best_concurrency) {
            return Verdict::Admit { replica: i };
        }
        // Every replica is at its best: make room by cutting the lowest tier in flight.
        for victim in Tier::ALL.iter().rev().filter(|t| **t != Tier::Realtime) {
            let vi = tier_idx(*victim);
            let on = replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.cuttable[vi] > 0)
                .max_by_key(|(i, r)| (r.total(), std::cmp::Reverse(*i)));
            if let Some((i, _)) = on {
                return Verdict::AdmitByCutting { replica: i, victim_tier: *victim };
            }
        }
        if let Some(i) = least_loaded(&|r| r.max_concurrency) {
            return Verdict::Admit { replica: i };
        }
        return Verdict::Refuse { retry_after_ms: typical_request_ms / 4 };
    }
    match least_loaded(&|r| r.best_concurrency.saturating_sub(headroom)) {
        Some(i) => Verdict::Admit { replica: i },
        None => {
            // Lower tiers wait longer the lower they are: they are the first to be refused and
            // should come back after the peak, not at once.
            let factor = 1 + tier_idx(tier) as u64;
            Verdict::Refuse { retry_after_ms: typical_request_ms * factor / 2 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_refill_and_say_when() {
        let mut b = Bucket::per_minute(600, 0);
        assert!(b.take(600, 0).is_ok());
        assert_eq!(b.take(10, 0), Err(1000), "10 units at 10 per second");
        assert!(b.take(10, 1000).is_ok());
        assert_eq!(b.remaining(1000), 0);
        b.give_back(5, 1000);
        assert_eq!(b.remaining(1000), 5);
        let mut full = Bucket::per_minute(600, 0);
        assert_eq!(full.take(601, 0), Err(Bucket::NEVER), "more than the whole bucket, even full");
        assert_eq!(full.remaining(0), 600);
    }

    #[test]
    fn realtime_cuts_the_lowest_tier_when_full() {
        let mut r = ReplicaSlots::new(2, 4);
        r.in_flight[tier_idx(Tier::Filler)] = 1;
        r.in_flight[tier_idx(Tier::Interruptible)] = 1;
        r.cuttable = r.in_flight;
        assert_eq!(
            admit(&[r.clone()], Tier::Realtime, 0, 1000),
            Verdict::AdmitByCutting { replica: 0, victim_tier: Tier::Filler }
        );
        assert!(matches!(admit(&[r], Tier::Batch, 0, 1000), Verdict::Refuse { .. }));
    }

    #[test]
    fn headroom_keeps_slots_for_realtime() {
        let mut r = ReplicaSlots::new(4, 6);
        r.in_flight[tier_idx(Tier::Batch)] = 3;
        assert!(matches!(admit(&[r.clone()], Tier::Filler, 1, 1000), Verdict::Refuse { .. }));
        assert_eq!(admit(&[r], Tier::Realtime, 1, 1000), Verdict::Admit { replica: 0 });
    }

    proptest! {
        #[test]
        fn realtime_is_never_refused_below_the_cap(
            loads in proptest::collection::vec((1u32..30, 0u32..10, proptest::array::uniform6(0u32..8)), 1..5),
            headroom in 0u32..4,
        ) {
            let replicas: Vec<ReplicaSlots> = loads
                .iter()
                .map(|(best, extra, in_flight)| ReplicaSlots { best_concurrency: *best, max_concurrency: best + extra, in_flight: *in_flight, cuttable: *in_flight })
                .collect();
            let below_cap = replicas.iter().any(|r| r.total() < r.max_concurrency);
            let verdict = admit(&replicas, Tier::Realtime, headroom, 1000);
            if below_cap {
                let refused = matches!(verdict, Verdict::Refuse { .. });
                prop_assert!(!refused, "realtime refused below the cap");
            }
            if let Verdict::AdmitByCutting { victim_tier, .. } = verdict {
                prop_assert_ne!(victim_tier, Tier::Realtime);
            }
            for tier in &Tier::ALL[1..] {
                if let Verdict::Admit { replica } = admit(&replicas, *tier, headroom, 1000) {
                    let r = &replicas[replica];
                    prop_assert!(r.total() < r.best_concurrency.saturating_sub(headroom), "lower tier past best concurrency");
                }
            }
        }
    }
}
