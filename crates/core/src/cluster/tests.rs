//! Tests of the cluster state and the scheduling pass.

use super::*;
use crate::array::ArraySpec;
use crate::tier::Tier;
use proptest::prelude::*;

fn cores(n: u64) -> Resources {
    Resources { cpu_millis: n * 1000, mem_bytes: 0, n_gpus: 0 }
}

fn spec(array: &str, n_cores: u64) -> JobSpec {
    JobSpec {
        name: "t".into(),
        project: "p".into(),
        tier: Tier::Batch,
        per_task: cores(n_cores),
        array: ArraySpec::parse(array, 10_000_000).unwrap(),
        time_limit_s: None,
        after_ok: vec![],
        pool: None,
    }
}

fn cluster_with_nodes(node_cores: &[u64]) -> Cluster {
    let mut c = Cluster::new();
    for (i, n) in node_cores.iter().enumerate() {
        let id = c.add_node(&format!("n{i}"), "local", cores(*n));
        c.set_node_online(id, true);
    }
    c
}

#[test]
fn fills_nodes_and_no_more() {
    let mut c = cluster_with_nodes(&[2, 4]);
    c.submit(JobId(1), spec("0-99", 1), 0);
    let placed = c.schedule(1);
    assert_eq!(placed.len(), 6);
    c.sanity_check().unwrap();
    assert!(c.schedule(2).is_empty());
    let p = placed[0];
    assert!(c.finish(p.job_id, p.pos, p.attempt, TaskOutcome::Succeeded, 3));
    assert!(!c.finish(p.job_id, p.pos, p.attempt, TaskOutcome::Succeeded, 3), "recorded once");
    assert_eq!(c.schedule(4).len(), 1);
    c.sanity_check().unwrap();
}

#[test]
fn throttle_caps_running_tasks() {
    let mut c = cluster_with_nodes(&[64]);
    c.submit(JobId(1), spec("1-20%4", 1), 0);
    assert_eq!(c.schedule(1).len(), 4);
    let reason = c.why_pending(JobId(1)).unwrap();
    assert_eq!(reason.code, "JobArrayTaskLimit");
}

#[test]
fn dependency_waits_then_never() {
    let mut c = cluster_with_nodes(&[4]);
    c.submit(JobId(1), spec("0", 1), 0);
    let mut s = spec("0", 1);
    s.after_ok = vec![JobId(1)];
    c.submit(JobId(2), s, 0);
    let placed = c.schedule(1);
    assert_eq!(placed.len(), 1);
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "Dependency");
    c.finish(JobId(1), 0, 1, TaskOutcome::Failed, 2);
    assert!(c.schedule(3).is_empty());
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "DependencyNeverSatisfied");
}

#[test]
fn too_big_says_so() {
    let mut c = cluster_with_nodes(&[8, 8]);
    c.submit(JobId(1), spec("0", 16), 0);
    assert!(c.schedule(1).is_empty());
    let reason = c.why_pending(JobId(1)).unwrap();
    assert_eq!(reason.text, "needs 16 cores on one node; the largest node has 8 cores");
}

#[test]
fn requeue_makes_a_new_attempt() {
    let mut c = cluster_with_nodes(&[1]);
    c.submit(JobId(1), spec("0-1", 1), 0);
    let first = c.schedule(1);
    assert!(c.requeue(JobId(1), first[0].pos, 1));
    let again = c.schedule(2);
    assert_eq!((again[0].pos, again[0].attempt), (first[0].pos, 2));
    assert!(!c.finish(JobId(1), first[0].pos, 1, TaskOutcome::Succeeded, 3), "stale attempt");
    c.sanity_check().unwrap();
}

#[test]
fn cancel_ends_pending_and_orders_kills() {
    let mut c = cluster_with_nodes(&[2]);
    c.submit(JobId(1), spec("0-999999", 1), 0);
    c.schedule(1);
    let kills = c.cancel(JobId(1), None, 2).unwrap();
    assert_eq!(kills.len(), 2);
    let counts = c.job(JobId(1)).unwrap().counts();
    assert_eq!((counts.cancelled, counts.running), (999_998, 2));
    for k in kills {
        let pos = c.job(JobId(1)).unwrap().spec().array.position_of(k.index).unwrap();
        c.finish(k.job_id, pos, k.attempt, TaskOutcome::Cancelled, 3);
    }
    assert!(c.job(JobId(1)).unwrap().is_finished());
    c.sanity_check().unwrap();
}

#[test]
fn higher_tier_goes_first() {
    let mut c = cluster_with_nodes(&[1]);
    c.submit(JobId(1), spec("0", 1), 0);
    let mut rt = spec("0", 1);
    rt.tier = Tier::Realtime;
    c.submit(JobId(2), rt, 0);
    assert_eq!(c.schedule(1)[0].job_id, JobId(2));
    assert_eq!(c.why_pending(JobId(1)).unwrap().code, "Resources");
}

#[derive(Debug, Clone)]
enum Op {
    Submit { n_tasks: u32, n_cores: u64, throttle: Option<u32> },
    FinishOne { pick: usize, ok: bool },
    RequeueOne { pick: usize },
    Cancel { pick: usize },
    Schedule,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..50, 1u64..6, proptest::option::of(1u32..5))
            .prop_map(|(n_tasks, n_cores, throttle)| Op::Submit { n_tasks, n_cores, throttle }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Op::FinishOne { pick, ok }),
        any::<usize>().prop_map(|pick| Op::RequeueOne { pick }),
        any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        Just(Op::Schedule),
    ]
}

fn run_ops(node_cores: &[u64], ops: &[Op]) -> (Cluster, Vec<Placement>) {
    let mut c = cluster_with_nodes(node_cores);
    let mut all = Vec::new();
    let mut next_id = 1;
    for (now, op) in ops.iter().enumerate() {
        let now = now as u64;
        match op {
            Op::Submit { n_tasks, n_cores, throttle } => {
                let mut s = spec(&format!("0-{}", n_tasks - 1), *n_cores);
                s.array.max_running = *throttle;
                c.submit(JobId(next_id), s, now);
                next_id += 1;
            }
            Op::FinishOne { pick, ok } if !all.is_empty() => {
                let p: Placement = all[pick % all.len()];
                let outcome = if *ok { TaskOutcome::Succeeded } else { TaskOutcome::Failed };
                c.finish(p.job_id, p.pos, p.attempt, outcome, now);
            }
            Op::RequeueOne { pick } if !all.is_empty() => {
                let p: Placement = all[pick % all.len()];
                c.requeue(p.job_id, p.pos, p.attempt);
            }
            Op::Cancel { pick } if next_id > 1 => {
                let id = JobId(1 + (*pick as u64 % (next_id - 1)));
                let _ = c.cancel(id, None, now);
            }
            Op::Schedule => all.extend(c.schedule(now)),
            _ => {}
        }
        if let Err(e) = c.sanity_check() {
            panic!("after {op:?}: {e}");
        }
        for job in c.jobs() {
            if let Some(max) = job.spec().array.max_running {
                assert!(job.counts().running <= max, "throttle broken");
            }
        }
    }
    (c, all)
}

proptest! {
    #[test]
    fn never_overcommits_and_is_deterministic(
        node_cores in proptest::collection::vec(1u64..32, 1..6),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let (_, first) = run_ops(&node_cores, &ops);
        let (_, second) = run_ops(&node_cores, &ops);
        prop_assert_eq!(first, second);
    }
}
