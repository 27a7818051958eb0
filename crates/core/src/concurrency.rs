//! Learning a replica's best concurrency from the pace of its streams.
//!
//! A replica batches the requests it holds: up to some batch size each token takes about the
//! same time, beyond it every request slows down while throughput stays flat. The best
//! concurrency is the largest number of requests in flight whose time between tokens stays
//! within [`TOLERANCE`] of the fastest pace seen. The learner keeps the median of the last
//! [`WINDOW`] gaps per concurrency level (a median, because a busy host adds rare long gaps
//! that would drag a mean); while the highest level it knows is still fast it proposes one more
//! (a probe), so it climbs to the knee and stays there. Started above the knee, it sees every
//! level slow down in proportion and steps down.

/// How much slower than the fastest pace a level may be and still count as "at best".
pub const TOLERANCE: f64 = 0.15;
/// Gaps a level keeps; a level is trusted once it has this many.
pub const WINDOW: usize = 31;
/// How the gap must grow with concurrency (1 = in proportion, 0 = flat) between the lowest and
/// highest levels known before they are all taken to be past the knee.
const ELASTICITY_TO_STEP_DOWN: f64 = 0.8;

#[derive(Debug, Clone, Default, PartialEq)]
struct Level {
    /// The last gaps, oldest overwritten first.
    gaps: Vec<f64>,
    next: usize,
    median_gap_ms: f64,
}

impl Level {
    fn trusted(&self) -> bool {
        self.gaps.len() == WINDOW
    }

    fn push(&mut self, gap_ms: f64) {
        if self.gaps.len() < WINDOW {
            self.gaps.push(gap_ms);
        } else {
            self.gaps[self.next] = gap_ms;
            self.next = (self.next + 1) % WINDOW;
        }
        let mut sorted = self.gaps.clone();
        sorted.sort_by(f64::total_cmp);
        self.median_gap_ms = sorted[sorted.len() / 2];
    }
}

/// Learns one replica's best concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyLearner {
    /// Index = requests in flight.
    levels: Vec<Level>,
    best: u32,
}

impl ConcurrencyLearner {
    /// Starts from a guess of `start`, never proposing more than `cap`.
    pub fn new(start: u32, cap: u32) -> ConcurrencyLearner {
        let cap = cap.max(1);
        ConcurrencyLearner { levels: vec![Level::default(); cap as usize + 1], best: start.clamp(1, cap) }
    }

    /// The current proposal.
    pub fn best(&self) -> u32 {
        self.best
    }

    /// Records one time between two tokens of a stream while `concurrency` requests were in
    /// flight on the replica; returns the (possibly new) proposal.
    pub fn observe(&mut self, concurrency: u32, gap_ms: f64) -> u32 {
        let Some(level) = self.levels.get_mut(concurrency as usize) else { return self.best };
        if concurrency == 0 || !gap_ms.is_finite() || gap_ms < 0.0 {
            return self.best;
        }
        level.push(gap_ms);
        if level.trusted() {
            self.best = self.propose();
        }
        self.best
    }

    fn propose(&self) -> u32 {
        let trusted = || self.levels.iter().enumerate().skip(1).filter(|(_, l)| l.trusted());
        let Some(fastest) = trusted().map(|(_, l)| l.median_gap_ms).min_by(f64::total_cmp) else { return self.best };
        let (Some((lo, low)), Some((hi, high))) = (trusted().next(), trusted().next_back()) else { return self.best };
        // Past the batch size the gap grows in proportion to the requests in flight. When every
        // level known is like that (started above the knee), look lower.
        let span = hi as f64 / lo as f64;
        let slowdown = high.median_gap_ms / low.median_gap_ms.max(1e-9);
        if lo > 1 && span >= 1.0 + TOLERANCE && slowdown.ln() >= ELASTICITY_TO_STEP_DOWN * span.ln() {
            return lo as u32 - 1;
        }
        let mut knee = None;
        for (c, level) in trusted() {
            if level.median_gap_ms > fastest * (1.0 + TOLERANCE) {
                break;
            }
            knee = Some(c as u32);
        }
        let cap = (self.levels.len() - 1) as u32;
        match knee {
            Some(k) if k == hi as u32 => (k + 1).min(cap),
            Some(k) => k,
            None => self.best,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replica emulator's model: flat gap up to the batch, proportional beyond it.
    fn emulated_gap(c: u32, batch: u32) -> f64 {
        20.0 * (f64::from(c) / f64::from(batch)).max(1.0)
    }

    #[test]
    fn climbs_to_the_knee_and_stays_there() {
        for (start, batch) in [(4, 22), (1, 8), (40, 22)] {
            let mut l = ConcurrencyLearner::new(start, 64);
            // Closed loop: the replica runs at whatever the learner proposes, as under overload.
            for i in 0..20_000u32 {
                let c = l.best();
                let jitter = 1.0 + 0.04 * f64::from(i % 5) / 5.0;
                l.observe(c, emulated_gap(c, batch) * jitter);
            }
            let best = l.best();
            assert!(best >= batch && best <= batch + batch * 15 / 100 + 1, "start {start} batch {batch}: learned {best}");
        }
    }

    #[test]
    fn ignores_nonsense_and_respects_the_cap() {
        let mut l = ConcurrencyLearner::new(3, 5);
        assert_eq!(l.observe(0, 10.0), 3);
        assert_eq!(l.observe(99, 10.0), 3);
        assert_eq!(l.observe(3, f64::NAN), 3);
        for _ in 0..1000 {
            let c = l.best();
            l.observe(c, 10.0);
        }
        assert_eq!(l.best(), 5, "a replica that never slows is run at the cap");
    }
}
