//! The classic baselines of parallel job scheduling, as the literature runs them on a log: a
//! machine of P processors, rigid jobs, event-driven (a job starts the moment the discipline
//! allows, no tick), under first-come first-served, EASY backfilling (only the queue head's
//! reservation is protected) and conservative backfilling (every waiting job holds one),
//! planning with the users' requested times or with the exact run times; and the per-job
//! metrics reported for them: wait, response time, bounded slowdown and utilisation.

use std::collections::VecDeque;

/// A job as the baselines see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RigidJob {
    /// Submission, seconds.
    pub submit_s: f64,
    /// Run time, seconds.
    pub run_s: f64,
    /// Processors held for the whole run.
    pub procs: u64,
    /// What the scheduler plans with: the requested time, or the run time itself.
    pub estimate_s: f64,
}

/// How waiting jobs are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discipline {
    /// In order of arrival; nothing passes the head.
    Fcfs,
    /// A later job may start now if it does not delay the head's reservation.
    Easy,
    /// A later job may start now if it delays no earlier job's reservation.
    Conservative,
}

/// A running job: when it really ends, when the scheduler thinks it ends, its processors.
#[derive(Debug, Clone, Copy)]
struct Running {
    end_s: f64,
    expected_end_s: f64,
    procs: u64,
}

/// Start times of `jobs` (sorted by submission) on `machine` processors under `discipline`.
/// Jobs wider than the machine never start (`f64::INFINITY`).
pub fn schedule(jobs: &[RigidJob], machine: u64, discipline: Discipline) -> Vec<f64> {
    let mut starts = vec![f64::INFINITY; jobs.len()];
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut free = machine;
    let mut next = 0;
    loop {
        let next_end = running.iter().map(|r| r.end_s).fold(f64::INFINITY, f64::min);
        let next_submit = jobs.get(next).map_or(f64::INFINITY, |j| j.submit_s);
        let now = next_end.min(next_submit);
        if !now.is_finite() {
            break;
        }
        running.retain(|r| {
            let ended = r.end_s <= now;
            if ended {
                free += r.procs;
            }
            !ended
        });
        while jobs.get(next).is_some_and(|j| j.submit_s <= now) {
            if jobs[next].procs <= machine {
                queue.push_back(next);
            }
            next += 1;
        }
        let started = match discipline {
            Discipline::Fcfs => fcfs(jobs, &queue, free),
            Discipline::Easy => easy(jobs, &queue, &running, free, now),
            Discipline::Conservative => conservative(jobs, &queue, &running, free, machine, now),
        };
        for i in started {
            let job = jobs[i];
            starts[i] = now;
            free -= job.procs;
            running.push(Running { end_s: now + job.run_s, expected_end_s: now + job.estimate_s, procs: job.procs });
            queue.retain(|q| *q != i);
        }
    }
    starts
}

fn fcfs(jobs: &[RigidJob], queue: &VecDeque<usize>, mut free: u64) -> Vec<usize> {
    let mut started = Vec::new();
    for &i in queue {
        if jobs[i].procs > free {
            break;
        }
        free -= jobs[i].procs;
        started.push(i);
    }
    started
}

fn easy(jobs: &[RigidJob], queue: &VecDeque<usize>, running: &[Running], free: u64, now: f64) -> Vec<usize> {
    let mut started = fcfs(jobs, queue, free);
    let mut free = free - started.iter().map(|i| jobs[*i].procs).sum::<u64>();
    let Some(&head) = queue.get(started.len()) else { return started };
    // The head's reservation: when enough processors are expected free, and how many spare.
    let mut ends: Vec<(f64, u64)> = running.iter().map(|r| (r.expected_end_s.max(now), r.procs)).collect();
    ends.extend(started.iter().map(|i| (now + jobs[*i].estimate_s, jobs[*i].procs)));
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut available = free;
    let mut shadow = f64::INFINITY;
    for (end, procs) in ends {
        available += procs;
        if available >= jobs[head].procs {
            shadow = end;
            break;
        }
    }
    let mut extra = available.saturating_sub(jobs[head].procs);
    for &i in queue.iter().skip(started.len() + 1) {
        let job = jobs[i];
        if job.procs > free {
            continue;
        }
        let ends_in_time = now + job.estimate_s <= shadow;
        if ends_in_time || job.procs <= extra {
            free -= job.procs;
            if !ends_in_time {
                extra -= job.procs;
            }
            started.push(i);
        }
    }
    started
}

/// A step function of free processors over time: `(from, free)` pieces in time order, the last
/// lasting for ever.
struct Profile(Vec<(f64, u64)>);

impl Profile {
    /// The earliest time from which `procs` are free for `length` seconds.
    fn earliest(&self, procs: u64, length: f64) -> f64 {
        for (k, &(t, _)) in self.0.iter().enumerate() {
            let end = t + length;
            let fits = self.0[k..].iter().take_while(|(from, _)| *from < end).all(|(_, f)| *f >= procs);
            if fits {
                return t;
            }
        }
        f64::INFINITY
    }

    /// Takes `procs` from `start` to `start + length`.
    fn reserve(&mut self, start: f64, length: f64, procs: u64) {
        let end = start + length;
        for point in [start, end] {
            if let Err(at) = self.0.binary_search_by(|(t, _)| t.total_cmp(&point)) {
                let before = self.0[at.saturating_sub(1)].1;
                self.0.insert(at, (point, before));
            }
        }
        for piece in self.0.iter_mut().filter(|(t, _)| *t >= start && *t < end) {
            piece.1 -= procs;
        }
    }
}

fn conservative(jobs: &[RigidJob], queue: &VecDeque<usize>, running: &[Running], free: u64, machine: u64, now: f64) -> Vec<usize> {
    let mut ends: Vec<(f64, u64)> = running.iter().map(|r| (r.expected_end_s.max(now), r.procs)).collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut profile = Profile(vec![(now, free)]);
    let mut level = free;
    for (end, procs) in ends {
        level = (level + procs).min(machine);
        match profile.0.last_mut() {
            Some(last) if last.0 == end => last.1 = level,
            _ => profile.0.push((end, level)),
        }
    }
    let mut started = Vec::new();
    for &i in queue {
        let job = jobs[i];
        let start = profile.earliest(job.procs, job.estimate_s.max(1e-9));
        profile.reserve(start, job.estimate_s.max(1e-9), job.procs);
        if start <= now {
            started.push(i);
        }
    }
    started
}

/// What a schedule gave, per job, as the literature reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Jobs that started.
    pub jobs: usize,
    /// Mean wait, seconds.
    pub mean_wait_s: f64,
    /// 95th percentile of the wait, seconds.
    pub p95_wait_s: f64,
    /// Mean response time (wait plus run), seconds.
    pub mean_response_s: f64,
    /// Mean bounded slowdown: max(1, response / max(run, tau)).
    pub mean_bounded_slowdown: f64,
    /// Processor-seconds used over processor-seconds offered from the first submission to the
    /// last end.
    pub utilisation: f64,
}

/// The metrics of `starts` for `jobs` on `machine` processors; `tau_s` bounds the slowdown of
/// short jobs (10 s in the literature).
pub fn metrics(jobs: &[RigidJob], starts: &[f64], machine: u64, tau_s: f64) -> Metrics {
    let done: Vec<(RigidJob, f64)> = jobs.iter().zip(starts).filter(|(_, s)| s.is_finite()).map(|(j, s)| (*j, *s)).collect();
    let n = done.len().max(1) as f64;
    let mut waits: Vec<f64> = done.iter().map(|(j, s)| s - j.submit_s).collect();
    waits.sort_by(f64::total_cmp);
    let p95 = waits.get(((waits.len() as f64 - 1.0) * 0.95).round().max(0.0) as usize).copied().unwrap_or(0.0);
    let first = done.iter().map(|(j, _)| j.submit_s).fold(f64::INFINITY, f64::min);
    let last = done.iter().map(|(j, s)| s + j.run_s).fold(0.0, f64::max);
    let used: f64 = done.iter().map(|(j, _)| j.procs as f64 * j.run_s).sum();
    let span = (last - first).max(1e-9);
    Metrics {
        jobs: done.len(),
        mean_wait_s: waits.iter().sum::<f64>() / n,
        p95_wait_s: p95,
        mean_response_s: done.iter().map(|(j, s)| s - j.submit_s + j.run_s).sum::<f64>() / n,
        mean_bounded_slowdown: done.iter().map(|(j, s)| ((s - j.submit_s + j.run_s) / j.run_s.max(tau_s)).max(1.0)).sum::<f64>() / n,
        utilisation: if done.is_empty() { 0.0 } else { used / (machine as f64 * span) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(submit_s: f64, run_s: f64, procs: u64, estimate_s: f64) -> RigidJob {
        RigidJob { submit_s, run_s, procs, estimate_s }
    }

    #[test]
    fn a_narrow_job_passes_a_wide_head_only_where_the_discipline_allows() {
        // 4 processors; a 3-wide job runs to 100; the 4-wide head waits; a 1-wide job of 50 s
        // fits beside the first and ends before the head can start.
        let jobs = [job(0.0, 100.0, 3, 100.0), job(1.0, 10.0, 4, 10.0), job(2.0, 50.0, 1, 50.0)];
        let fcfs = schedule(&jobs, 4, Discipline::Fcfs);
        assert_eq!(fcfs, [0.0, 100.0, 110.0]);
        let easy = schedule(&jobs, 4, Discipline::Easy);
        assert_eq!(easy, [0.0, 100.0, 2.0], "backfilled: it ends before the head's reservation");
        assert_eq!(schedule(&jobs, 4, Discipline::Conservative), easy);
        // Asking 200 s, it would delay the head: neither backfills it.
        let greedy = [jobs[0], jobs[1], job(2.0, 50.0, 1, 200.0)];
        assert_eq!(schedule(&greedy, 4, Discipline::Easy)[2], 110.0);
        assert_eq!(schedule(&greedy, 4, Discipline::Conservative)[2], 110.0);
        let m = metrics(&jobs, &easy, 4, 10.0);
        assert_eq!(m.jobs, 3);
        assert!((m.mean_wait_s - (0.0 + 99.0 + 0.0) / 3.0).abs() < 1e-9, "{m:?}");
        assert!((m.mean_bounded_slowdown - (1.0 + 10.9 + 1.0) / 3.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn conservative_protects_every_reservation_where_easy_protects_the_head_alone() {
        // 4 processors, 2 busy until 100. A (4 wide) must wait for 100. B (2 wide, 300 s)
        // fits now but would hold A back: neither backfills it. C (2 wide, 20 s) ends before
        // 100: both start it at once.
        let jobs = [job(0.0, 100.0, 2, 100.0), job(1.0, 10.0, 4, 10.0), job(2.0, 300.0, 2, 300.0), job(3.0, 20.0, 2, 20.0)];
        for d in [Discipline::Easy, Discipline::Conservative] {
            assert_eq!(schedule(&jobs, 4, d), [0.0, 100.0, 110.0, 3.0], "{d:?}");
        }
        // Where they differ: EASY protects the head alone, so a job may delay the second in
        // line; conservative backfilling does not let it.
        // 2 busy until 100; the head (3 wide) leaves one spare at 100; a long 1-wide job takes
        // that spare under EASY and holds back the 4-wide job behind the head.
        let jobs = [job(0.0, 100.0, 2, 100.0), job(1.0, 50.0, 3, 50.0), job(2.0, 10.0, 4, 10.0), job(3.0, 500.0, 1, 500.0)];
        assert_eq!(schedule(&jobs, 4, Discipline::Easy), [0.0, 100.0, 503.0, 3.0]);
        assert_eq!(schedule(&jobs, 4, Discipline::Conservative), [0.0, 100.0, 150.0, 160.0]);
    }

    proptest! {
        /// With exact estimates, no job of EASY or conservative starts later than its
        /// reservation would have let it under FCFS for the queue head, and none ever
        /// oversubscribes the machine.
        #[test]
        fn backfilling_never_oversubscribes_and_never_delays_the_first_job(
            raw in prop::collection::vec((0u32..200, 1u32..300, 1u64..=8), 1..40)
        ) {
            let mut jobs: Vec<RigidJob> = raw.iter().map(|(s, r, p)| job(f64::from(*s), f64::from(*r), *p, f64::from(*r))).collect();
            jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
            let fcfs = schedule(&jobs, 8, Discipline::Fcfs);
            for d in [Discipline::Fcfs, Discipline::Easy, Discipline::Conservative] {
                let starts = schedule(&jobs, 8, d);
                prop_assert!(starts.iter().all(|s| s.is_finite()));
                // At every start, what runs fits the machine.
                for &t in &starts {
                    let busy: u64 = jobs.iter().zip(&starts).filter(|(j, s)| **s <= t && t < **s + j.run_s).map(|(j, _)| j.procs).sum();
                    prop_assert!(busy <= 8, "{d:?} at {t}: {busy}");
                }
                // The first job never waits longer than under FCFS.
                prop_assert!(starts[0] <= fcfs[0]);
                // Conservative with exact estimates delays no job past its FCFS start.
                if d == Discipline::Conservative {
                    for (i, (c, f)) in starts.iter().zip(&fcfs).enumerate() {
                        prop_assert!(c <= f, "job {i}: conservative {c} after FCFS {f}");
                    }
                }
            }
        }
    }
}
