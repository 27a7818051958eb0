//! Tests of the cluster state and the scheduling pass: hand-built cases, then properties over
//! random fleets and workloads.

use super::*;
use crate::array::ArraySpec;
use crate::job::{After, AfterKind, Dependencies, GangSpec};
use crate::tier::Tier;
use proptest::prelude::*;

fn cores(n: u64) -> Resources {
    Resources::cores(n)
}

fn spec(array: &str, n_cores: u64) -> JobSpec {
    JobSpec::new("t", "p", cores(n_cores), ArraySpec::parse(array, 10_000_000).unwrap())
}

fn gang(n_nodes: u32, tasks_per_node: u32, n_cores: u64) -> JobSpec {
    let n = n_nodes * tasks_per_node;
    JobSpec { gang: Some(GangSpec { n_nodes, tasks_per_node }), ..spec(&format!("0-{}", n - 1), n_cores) }
}

fn cluster_with_nodes(node_cores: &[u64]) -> Cluster {
    let mut c = Cluster::new();
    for (i, n) in node_cores.iter().enumerate() {
        let id = c.add_node(&format!("n{i}"), "local", cores(*n));
        c.set_node_online(id, true);
    }
    c
}

fn placed(c: &mut Cluster, now: u64) -> Vec<Placement> {
    let d = c.schedule(now);
    c.sanity_check().unwrap();
    d.placements
}

#[test]
fn fills_nodes_and_no_more() {
    let mut c = cluster_with_nodes(&[2, 4]);
    c.submit(JobId(1), spec("0-99", 1), 0);
    let p = placed(&mut c, 1);
    assert_eq!(p.len(), 6);
    assert!(placed(&mut c, 2).is_empty());
    assert!(c.finish(p[0].job_id, p[0].pos, p[0].attempt, TaskOutcome::Succeeded, 3));
    assert!(!c.finish(p[0].job_id, p[0].pos, p[0].attempt, TaskOutcome::Succeeded, 3), "recorded once");
    assert_eq!(placed(&mut c, 4).len(), 1);
}

#[test]
fn short_tasks_wait_on_their_node_and_start_as_one_ends() {
    let mut c = cluster_with_nodes(&[2]);
    c.submit(JobId(1), spec("0-999", 1), 0);
    c.submit(JobId(2), JobSpec { tier: Tier::Offline, ..spec("0-9", 1) }, 0);
    // Until enough tasks have ended, nothing is sent beyond the free cores.
    let mut now = 0;
    for _ in 0..4 {
        let p = placed(&mut c, now);
        assert_eq!(p.len(), 2, "{p:?}");
        now += 2;
        for t in p {
            assert!(c.finish(t.job_id, t.pos, t.attempt, TaskOutcome::Succeeded, now));
        }
    }
    // Tasks of 2 ms: the node may hold 50 ms of them per core beyond its two cores.
    let p = placed(&mut c, now);
    assert!(p.iter().all(|t| t.job_id == JobId(1)), "only the short job's tasks wait there: {p:?}");
    assert_eq!(p.len(), 2 + 50, "{p:?}");
    let node = c.node(NodeId(0)).unwrap();
    assert_eq!((node.n_running(), node.n_queued()), (2, 50));
    assert!(placed(&mut c, now).is_empty(), "the window is full");
    // The first ended task's core goes to the oldest waiting one, in the same step.
    let first_queued = p[2];
    assert!(c.job(JobId(1)).unwrap().running_task(first_queued.pos).unwrap().queued);
    assert!(c.finish(p[0].job_id, p[0].pos, p[0].attempt, TaskOutcome::Succeeded, now + 1));
    c.sanity_check().unwrap();
    let run = c.job(JobId(1)).unwrap().running_task(first_queued.pos).unwrap();
    assert!(!run.queued && run.started_ms == now + 1, "{run:?}");
    assert_eq!(c.node(NodeId(0)).unwrap().n_queued(), 49);
    // A waiting task cancelled or requeued leaves the queue without taking a core.
    let last = p[51];
    assert!(c.requeue(last.job_id, last.pos, last.attempt, now + 1));
    c.sanity_check().unwrap();
    assert_eq!(c.node(NodeId(0)).unwrap().n_queued(), 48);
    // A lost node gives back the waiting tasks with the running ones.
    assert_eq!(c.running_on(NodeId(0)).len(), 2 + 48);
}

#[test]
fn the_prefetch_window_follows_how_long_tasks_ran_on_their_node() {
    let mut c = cluster_with_nodes(&[1]);
    c.submit(JobId(1), spec("0-999", 1), 0);
    let mut now = 0;
    for _ in 0..8 {
        let p = placed(&mut c, now);
        assert_eq!(p.len(), 1);
        // 25 ms from dispatch to the journaled end, of which the process ran 5.
        now += 25;
        assert!(c.finish_after(p[0].job_id, p[0].pos, p[0].attempt, TaskOutcome::Succeeded, now, 5));
    }
    // 50 ms of 5 ms tasks on one core: ten wait beside the one running.
    assert_eq!(placed(&mut c, now).len(), 1 + 10);
}

#[test]
fn an_overflow_site_only_gets_what_local_nodes_cannot_take() {
    let mut c = cluster_with_nodes(&[8, 2]);
    c.set_node_overflow(NodeId(0), true);
    c.submit(JobId(1), spec("0-1", 1), 0);
    let p = placed(&mut c, 1);
    assert!(p.iter().all(|p| p.node_id == NodeId(1)), "local first, though the site fits better: {p:?}");
    c.submit(JobId(2), spec("0-2", 1), 0);
    let p = placed(&mut c, 2);
    assert_eq!(p.len(), 3);
    assert!(p.iter().all(|p| p.node_id == NodeId(0)), "the overflow takes the rest");
    assert!(c.finish(JobId(1), 0, 1, TaskOutcome::Succeeded, 3));
    c.submit(JobId(3), spec("0", 1), 4);
    assert_eq!(placed(&mut c, 5)[0].node_id, NodeId(1), "a freed local core goes before the site's free ones");
}

#[test]
fn best_fit_keeps_whole_nodes_free() {
    let mut c = cluster_with_nodes(&[8, 8, 8]);
    c.submit(JobId(1), spec("0-3", 2), 0);
    placed(&mut c, 1);
    let busy = c.nodes().filter(|(_, n)| n.n_running() > 0).count();
    assert_eq!(busy, 1, "small tasks packed on one node");
    c.submit(JobId(2), spec("0-1", 8), 0);
    assert_eq!(placed(&mut c, 2).len(), 2, "two whole nodes left for the large tasks");
}

#[test]
fn throttle_caps_running_tasks() {
    let mut c = cluster_with_nodes(&[64]);
    c.submit(JobId(1), spec("1-20%4", 1), 0);
    assert_eq!(placed(&mut c, 1).len(), 4);
    assert_eq!(c.why_pending(JobId(1)).unwrap().code, "JobArrayTaskLimit");
}

#[test]
fn dependency_waits_then_never() {
    let mut c = cluster_with_nodes(&[4]);
    c.submit(JobId(1), spec("0", 1), 0);
    c.submit(JobId(2), JobSpec { dependencies: Dependencies::after_ok([JobId(1)]), ..spec("0", 1) }, 0);
    assert_eq!(placed(&mut c, 1).len(), 1);
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "Dependency");
    c.finish(JobId(1), 0, 1, TaskOutcome::Failed, 2);
    assert!(placed(&mut c, 3).is_empty());
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "DependencyNeverSatisfied");
}

#[test]
fn work_waiting_only_for_drained_nodes_says_so() {
    let mut c = cluster_with_nodes(&[8, 8]);
    let ids: Vec<NodeId> = c.nodes().map(|(id, _)| id).collect();
    for id in ids {
        c.set_node_draining(id, true);
    }
    c.submit(JobId(1), spec("0", 1), 0);
    assert!(placed(&mut c, 1).is_empty());
    assert_eq!(c.why_pending(JobId(1)).unwrap().code, "ReqNodeNotAvail");
}

#[test]
fn a_project_runs_only_where_its_identity_is_offered() {
    let mut c = cluster_with_nodes(&[8, 8]);
    let (root_agent, plain_agent) = (NodeId(0), NodeId(1));
    c.set_node_identities(root_agent, IdentityOffer { own_uids: true, operator: false });
    c.set_node_identities(plain_agent, IdentityOffer { own_uids: false, operator: true });
    c.set_project_identity("chem", Identity::OwnUid);
    c.set_project_identity("bare", Identity::Missing);
    c.set_new_project_identity(Identity::Operator);
    let in_project = |project: &str| JobSpec { project: project.into(), ..spec("0-3", 1) };
    c.submit(JobId(1), in_project("chem"), 0);
    c.submit(JobId(2), in_project("bare"), 0);
    c.submit(JobId(3), in_project("default"), 0);
    let placements = placed(&mut c, 1);
    let on = |job: u64| -> Vec<NodeId> { placements.iter().filter(|p| p.job_id == JobId(job)).map(|p| p.node_id).collect() };
    assert_eq!(on(1), vec![root_agent; 4], "a project's uid only where the agent can switch to it");
    assert!(on(2).is_empty(), "a project with no identity runs nowhere");
    assert_eq!(on(3), vec![plain_agent; 4], "the operator's work only where a user is given for it");
    let why = c.why_pending(JobId(2)).unwrap();
    assert_eq!(why.code, "ProjectIdentity");
    assert!(why.text.contains("project bare has no identity"), "{}", why.text);
    // With room on the switching node gone, chem still never goes to the other one.
    c.submit(JobId(4), JobSpec { project: "chem".into(), ..spec("0-7", 1) }, 2);
    assert!(placed(&mut c, 3).iter().all(|p| p.node_id == root_agent));
    c.set_node_identities(root_agent, IdentityOffer { own_uids: false, operator: true });
    assert_eq!(c.why_pending(JobId(4)).unwrap().code, "ProjectIdentity");
}

#[test]
fn each_gpu_task_gets_gpus_of_its_own_and_a_failed_gpu_gets_none() {
    let mut c = Cluster::new();
    let node = c.add_node("g", "local", Resources { n_gpus: 4, ..cores(16) });
    c.set_node_online(node, true);
    let one_gpu = |array: &str| JobSpec::new("t", "p", Resources { n_gpus: 1, ..cores(1) }, ArraySpec::parse(array, 100).unwrap());
    c.submit(JobId(1), one_gpu("0-3"), 0);
    c.submit(JobId(2), one_gpu("0"), 0);
    assert_eq!(placed(&mut c, 1).len(), 4);
    let held: Vec<u64> = c.job(JobId(1)).unwrap().running_tasks().map(|(_, r)| r.gpus).collect();
    assert_eq!(held.iter().fold(0, |m, g| m | g), 0b1111, "four distinct GPUs: {held:?}");
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "Resources");

    // GPU 2 fails: the task on it is named, to be stopped; once it is requeued nothing more
    // lands on GPU 2, while the others are still used.
    let on_two = c.set_gpus_failed(node, 0b0100);
    assert_eq!(on_two.len(), 1);
    let (job, pos, attempt) = on_two[0];
    assert!(c.requeue(job, pos, attempt, 2));
    c.sanity_check().unwrap();
    assert!(placed(&mut c, 3).is_empty(), "only the failed GPU is free");
    c.finish(JobId(1), if pos == 0 { 1 } else { 0 }, 1, TaskOutcome::Succeeded, 4);
    let next = placed(&mut c, 5);
    assert_eq!(next.len(), 1);
    let gpus = c.job(next[0].job_id).unwrap().running_tasks().find(|(p, _)| *p == next[0].pos).unwrap().1.gpus;
    assert_ne!(gpus & 0b0100, 0b0100, "a task was given the failed GPU");
    assert_eq!(c.node(node).unwrap().gpus_failed(), 0b0100);
    c.set_gpus_failed(node, 0);
    assert_eq!(c.node(node).unwrap().free().n_gpus, 1, "back, and free");
}

#[test]
fn replayed_gpu_attempts_keep_the_gpus_their_agent_was_told_once_their_node_is_back() {
    let mut c = Cluster::new();
    let one_gpu = JobSpec::new("t", "p", Resources { n_gpus: 1, ..cores(1) }, ArraySpec::parse("0-1", 100).unwrap());
    c.submit(JobId(1), one_gpu, 0);
    // Replay after a restart: the node is not back yet, its size unknown.
    let node = c.add_node("g", "", Resources::default());
    c.replay_dispatch(JobId(1), 0, 1, node, 1, 0b1000).unwrap();
    c.replay_dispatch(JobId(1), 1, 1, node, 1, 0b0010).unwrap();
    c.sanity_check().unwrap();
    // It registers with its four GPUs: the attempts hold those two, and a new task gets another.
    let node = c.add_node("g", "local", Resources { n_gpus: 4, ..cores(8) });
    c.set_node_online(node, true);
    let mut held: Vec<(u32, u64)> = c.job(JobId(1)).unwrap().running_tasks().map(|(pos, r)| (pos, r.gpus)).collect();
    held.sort_unstable();
    assert_eq!(held, vec![(0, 0b1000), (1, 0b0010)]);
    assert_eq!(c.node(node).unwrap().free().n_gpus, 2);
    c.sanity_check().unwrap();
}

#[test]
fn too_big_says_so() {
    let mut c = cluster_with_nodes(&[8, 8]);
    c.submit(JobId(1), spec("0", 16), 0);
    assert!(placed(&mut c, 1).is_empty());
    let reason = c.why_pending(JobId(1)).unwrap();
    assert_eq!(reason.text, "needs 16 cores on one node; the largest node has 8 cores");
}

#[test]
fn features_and_named_resources_are_matched() {
    let mut c = Cluster::new();
    let plain = c.add_node("plain", "local", cores(8));
    let fast = c.add_node_with("fast", "local", cores(8), &["avx512".into()], &[("fpga".into(), 1)]);
    c.set_node_online(plain, true);
    c.set_node_online(fast, true);
    c.submit(JobId(1), JobSpec { requires: vec!["avx512".into()], ..spec("0-3", 1) }, 0);
    c.submit(JobId(2), JobSpec { named: vec![("fpga".into(), 1)], ..spec("0-1", 1) }, 0);
    c.submit(JobId(3), JobSpec { requires: vec!["rdma".into()], ..spec("0", 1) }, 0);
    let p = placed(&mut c, 1);
    assert!(p.iter().filter(|p| p.job_id != JobId(3)).all(|p| p.node_id == fast));
    assert_eq!(p.iter().filter(|p| p.job_id == JobId(2)).count(), 1, "one fpga");
    assert_eq!(c.why_pending(JobId(3)).unwrap().text, "no node has the feature rdma");
}

#[test]
fn requeue_makes_a_new_attempt() {
    let mut c = cluster_with_nodes(&[1]);
    c.submit(JobId(1), spec("0-1", 1), 0);
    let first = placed(&mut c, 1);
    assert!(c.requeue(JobId(1), first[0].pos, 1, 2));
    let again = placed(&mut c, 2);
    assert_eq!((again[0].pos, again[0].attempt), (first[0].pos, 2));
    assert!(!c.finish(JobId(1), first[0].pos, 1, TaskOutcome::Succeeded, 3), "stale attempt");
}

#[test]
fn cancel_ends_pending_and_orders_kills() {
    let mut c = cluster_with_nodes(&[2]);
    c.submit(JobId(1), spec("0-999999", 1), 0);
    placed(&mut c, 1);
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
fn finished_jobs_are_forgotten_after_their_retention_unless_a_waiting_job_needs_them() {
    let mut c = cluster_with_nodes(&[4]);
    c.submit(JobId(1), spec("0-1", 1), 0);
    c.submit(JobId(3), spec("0", 1), 0);
    let running = placed(&mut c, 1);
    for p in &running {
        c.finish(p.job_id, p.pos, p.attempt, TaskOutcome::Succeeded, 10);
    }
    // Job 5 waits for job 3 to succeed... after job 1 is gone it still can.
    c.submit(JobId(5), JobSpec { dependencies: Dependencies::after_ok([JobId(3)]), ..spec("0", 1) }, 11);
    c.submit(JobId(6), JobSpec { dependencies: Dependencies::after_ok([JobId(5)]), ..spec("0", 8) }, 11);
    let _ = c.schedule(12);
    assert!(c.forget_finished(9).is_empty(), "within the retention nothing goes");
    assert_eq!(c.forget_finished(10), [JobId(1)], "job 3 stays while job 5 needs it");
    assert!(c.job(JobId(1)).is_none() && c.job(JobId(3)).is_some());
    assert_eq!(c.n_jobs(), 3);
    c.sanity_check().unwrap();
    // Job 5 ran: job 3 is no longer needed, and goes at the next sweep.
    let five = c.job(JobId(5)).unwrap().running_tasks().next().map(|(pos, r)| (pos, r.attempt)).unwrap();
    c.finish(JobId(5), five.0, five.1, TaskOutcome::Succeeded, 20);
    let _ = c.cancel(JobId(6), None, 20);
    let _ = c.schedule(21);
    assert_eq!(c.forget_finished(30), [JobId(3), JobId(5), JobId(6)]);
    assert_eq!(c.n_jobs(), 0);
    assert_eq!(c.live_jobs().count(), 0);
    c.sanity_check().unwrap();
}

#[test]
fn higher_tier_goes_first_and_preempts_lower() {
    let mut c = cluster_with_nodes(&[2]);
    c.submit(JobId(1), JobSpec { tier: Tier::Preemptible, ..spec("0-1", 1) }, 0);
    assert_eq!(placed(&mut c, 1).len(), 2);
    c.on_checkpoint(JobId(1), 1, 1, 900);
    c.submit(JobId(2), JobSpec { tier: Tier::Realtime, ..spec("0", 1) }, 1000);
    let d = c.schedule(1000);
    assert!(d.placements.is_empty());
    assert_eq!(d.preemptions.len(), 1);
    let victim = d.preemptions[0].victim;
    assert_eq!((victim.job_id, victim.index), (JobId(1), 1), "the one with the least lost work");
    assert_eq!(c.why_pending(JobId(2)).unwrap().text, "lower-priority work is being preempted to make room for it");
    assert!(c.requeue(JobId(1), 1, 1, 1000));
    let p = placed(&mut c, 1001);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].job_id, JobId(2));
}

#[test]
fn gangs_start_whole_and_are_not_starved() {
    let mut c = cluster_with_nodes(&[4, 4, 4]);
    c.submit(JobId(1), JobSpec { time_limit_s: Some(100), ..spec("0-1", 4) }, 0);
    placed(&mut c, 0);
    c.submit(JobId(2), gang(2, 2, 2), 1);
    // Small work without a time limit may not take the nodes reserved for the gang.
    c.submit(JobId(3), spec("0-99", 1), 2);
    // Small work that ends before the gang could start may backfill.
    c.submit(JobId(4), JobSpec { time_limit_s: Some(10), ..spec("0-99", 1) }, 2);
    let p = placed(&mut c, 3);
    assert!(p.iter().all(|p| p.job_id != JobId(2)), "gang waits: only 1 node free");
    assert!(p.iter().any(|p| p.job_id == JobId(4)), "short work backfills");
    assert!(p.iter().all(|p| p.job_id != JobId(3) || p.node_id == NodeId(2)));
    let reason = c.why_pending(JobId(2)).unwrap();
    assert!(reason.text.contains("needs 2 nodes"), "{}", reason.text);
    // Everything ends; the gang starts whole before the older small job takes the nodes back.
    for job_id in [JobId(1), JobId(3), JobId(4)] {
        let running: Vec<(u32, u32)> = c.job(job_id).unwrap().running_tasks().map(|(p, r)| (p, r.attempt)).collect();
        for (pos, attempt) in running {
            c.finish(job_id, pos, attempt, TaskOutcome::Succeeded, 50);
        }
    }
    let p = placed(&mut c, 200);
    assert_eq!(p.iter().filter(|p| p.job_id == JobId(2)).count(), 4);
}

#[test]
fn quota_caps_and_reclaims_borrowed_cores() {
    let mut c = cluster_with_nodes(&[8]);
    c.set_project("a", crate::project::ProjectLimits { quota_cpu_millis: Some(4000), borrow_cpu_millis: Some(4000), share: 1 });
    c.set_project("b", crate::project::ProjectLimits { quota_cpu_millis: Some(4000), borrow_cpu_millis: Some(0), share: 1 });
    c.submit(JobId(1), JobSpec { project: "a".into(), ..spec("0-99", 1) }, 0);
    assert_eq!(placed(&mut c, 1).len(), 8, "a borrows b's idle half");
    c.submit(JobId(2), JobSpec { project: "b".into(), ..spec("0-99", 1) }, 2);
    let mut now = 3;
    loop {
        let d = c.schedule(now);
        c.sanity_check().unwrap();
        if now == 3 {
            assert_eq!(d.preemptions.len(), 1, "b reclaims one core at a time");
        }
        for p in &d.preemptions {
            let pos = c.job(p.victim.job_id).unwrap().spec().array.position_of(p.victim.index).unwrap();
            c.requeue(p.victim.job_id, pos, p.victim.attempt, now);
        }
        now += 1;
        if d.placements.is_empty() && d.preemptions.is_empty() {
            break;
        }
    }
    let a = c.project("a").unwrap().allocated_cpu_millis();
    let b = c.project("b").unwrap().allocated_cpu_millis();
    assert_eq!((a, b), (4000, 4000), "both at their guarantee");
    assert_eq!(c.why_pending(JobId(2)).unwrap().code, "QOSGrpCpuLimit");
}

#[test]
fn fair_share_favours_the_project_that_used_less() {
    let mut c = cluster_with_nodes(&[1]);
    c.submit(JobId(1), JobSpec { project: "heavy".into(), ..spec("0-9", 1) }, 0);
    let p = placed(&mut c, 0);
    c.finish(JobId(1), p[0].pos, 1, TaskOutcome::Succeeded, 3_600_000);
    c.submit(JobId(2), JobSpec { project: "light".into(), ..spec("0", 1) }, 3_600_000);
    let p = placed(&mut c, 3_600_001);
    assert_eq!(p[0].job_id, JobId(2), "older job of the heavy user waits its turn");
}

#[test]
fn scale_advice_adds_what_pending_needs_and_never_removes_busy_nodes() {
    let mut c = cluster_with_nodes(&[24, 24]);
    c.submit(JobId(1), spec("0-0", 24), 0);
    c.submit(JobId(2), spec("0-99", 12), 0);
    placed(&mut c, 1);
    let shape = crate::scale::PoolShape { pool: "local".into(), node_capacity: cores(24), features: vec![], max_nodes: 30 };
    let advice = c.scale_advice(&[shape]);
    assert_eq!(advice.add, vec![("local".to_string(), 28)], "98 pending 12-core tasks on 24-core nodes, capped at 30 nodes");
    assert!(advice.removable.is_empty());
}

#[test]
fn compaction_empties_the_lightest_nodes_into_the_room_of_others() {
    // Three 4-core nodes: tasks end so that n0 keeps 3, n1 keeps 1 and n2 keeps 2.
    let mut c = cluster_with_nodes(&[4, 4, 4]);
    c.submit(JobId(1), spec("0-11", 1), 0);
    let p = placed(&mut c, 1);
    assert_eq!(p.len(), 12);
    let keep = |node: u32| match node {
        0 => 3,
        1 => 1,
        _ => 2,
    };
    for node in 0..3 {
        for (i, (job, pos, attempt)) in c.running_on(NodeId(node)).into_iter().enumerate() {
            if i >= keep(node) {
                assert!(c.finish(job, pos, attempt, TaskOutcome::Succeeded, 2));
            }
        }
    }
    // n1's task fits n0's free core; n2's two tasks then find no room (n0 full, n1 emptied).
    let plan = c.compaction(10, 60_000);
    assert_eq!(plan.emptied, vec![NodeId(1)]);
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(plan.moves[0].0, JobId(1));
    // Work since the last checkpoint above the bound: nothing is moved.
    assert_eq!(c.compaction(120_000, 60_000), crate::scale::Compaction::default());
    // The move, as a caller makes it: drain, requeue, place again elsewhere.
    let (job, pos, attempt) = plan.moves[0];
    c.set_node_draining(NodeId(1), true);
    assert!(c.requeue(job, pos, attempt, 11));
    let again = placed(&mut c, 12);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].node_id, NodeId(0), "into the free room of a node that stays");
    assert_eq!(c.node(NodeId(1)).map(|n| n.n_running()), Some(0));
}

#[derive(Debug, Clone)]
enum Op {
    Submit { n_tasks: u32, n_cores: u64, throttle: Option<u32>, tier: usize, project: usize, gang: Option<(u32, u32)>, limit: Option<u64> },
    FinishOne { pick: usize, ok: bool },
    RequeueOne { pick: usize },
    Cancel { pick: usize },
    Schedule,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..40, 1u64..6, proptest::option::of(1u32..5), 0usize..6, 0usize..3, proptest::option::of((1u32..4, 1u32..3)), proptest::option::of(1u64..50))
            .prop_map(|(n_tasks, n_cores, throttle, tier, project, gang, limit)| Op::Submit { n_tasks, n_cores, throttle, tier, project, gang, limit }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Op::FinishOne { pick, ok }),
        any::<usize>().prop_map(|pick| Op::RequeueOne { pick }),
        any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        Just(Op::Schedule),
        Just(Op::Schedule),
    ]
}

/// Runs the ops, checking every invariant after each; returns every decision taken.
fn run_ops(node_cores: &[u64], quotas: &[Option<(u64, u64)>], ops: &[Op]) -> Vec<Decisions> {
    let mut c = cluster_with_nodes(node_cores);
    for (i, q) in quotas.iter().enumerate() {
        if let Some((quota, borrow)) = q {
            c.set_project(&format!("p{i}"), crate::project::ProjectLimits { quota_cpu_millis: Some(quota * 1000), borrow_cpu_millis: Some(borrow * 1000), share: 1 });
        }
    }
    let mut all: Vec<Decisions> = Vec::new();
    let mut started: Vec<Placement> = Vec::new();
    let mut next_id = 1;
    for (now, op) in ops.iter().enumerate() {
        let now = now as u64 * 1000;
        match op {
            Op::Submit { n_tasks, n_cores, throttle, tier, project, gang: g, limit } => {
                let mut s = match g {
                    Some((n, m)) => gang(*n, *m, *n_cores),
                    None => spec(&format!("0-{}", n_tasks - 1), *n_cores),
                };
                if g.is_none() {
                    s.array.max_running = *throttle;
                }
                s.tier = Tier::ALL[*tier];
                s.project = format!("p{project}");
                s.time_limit_s = *limit;
                c.submit(JobId(next_id), s, now);
                next_id += 1;
            }
            Op::FinishOne { pick, ok } if !started.is_empty() => {
                let p = started[pick % started.len()];
                let outcome = if *ok { TaskOutcome::Succeeded } else { TaskOutcome::Failed };
                c.finish(p.job_id, p.pos, p.attempt, outcome, now);
            }
            Op::RequeueOne { pick } if !started.is_empty() => {
                let p = started[pick % started.len()];
                c.requeue(p.job_id, p.pos, p.attempt, now);
            }
            Op::Cancel { pick } if next_id > 1 => {
                let _ = c.cancel(JobId(1 + (*pick as u64 % (next_id - 1))), None, now);
            }
            Op::Schedule => {
                let before: Vec<(JobId, bool)> =
                    c.jobs().map(|j| (j.id(), j.counts().pending == j.counts().total())).collect();
                let d = c.schedule(now);
                for p in &d.placements {
                    started.push(*p);
                }
                // Gangs: placed whole or not at all.
                for (job_id, fresh) in before {
                    let job = c.job(job_id).unwrap();
                    if let Some(g) = job.spec().gang {
                        let n = d.placements.iter().filter(|p| p.job_id == job_id).count() as u32;
                        if fresh && n > 0 {
                            assert_eq!(n, g.n_nodes * g.tasks_per_node, "gang placed in part");
                            let nodes: std::collections::BTreeSet<NodeId> =
                                d.placements.iter().filter(|p| p.job_id == job_id).map(|p| p.node_id).collect();
                            assert_eq!(nodes.len() as u32, g.n_nodes, "gang on distinct nodes");
                        }
                    }
                }
                for pre in &d.preemptions {
                    let victim = c.job(pre.victim.job_id).unwrap();
                    let for_job = c.job(pre.for_job).unwrap();
                    assert_ne!(victim.spec().tier, Tier::Realtime, "realtime preempted");
                    assert!(victim.spec().tier >= for_job.spec().tier, "a lower tier preempted a higher one");
                    if victim.spec().tier == for_job.spec().tier {
                        assert_ne!(victim.spec().project, for_job.spec().project, "same tier without reclaim");
                    }
                }
                // Victims go back to the queue, as their agents would report.
                for pre in &d.preemptions {
                    let pos = c.job(pre.victim.job_id).unwrap().spec().array.position_of(pre.victim.index).unwrap();
                    c.requeue(pre.victim.job_id, pos, pre.victim.attempt, now);
                }
                all.push(d);
            }
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
        for p in c.projects() {
            if let Some(cap) = p.limits().cap() {
                assert!(p.allocated_cpu_millis() <= cap, "project {} over its cap", p.name());
            }
        }
    }
    all
}

proptest! {
    #[test]
    fn invariants_hold_and_decisions_repeat(
        node_cores in proptest::collection::vec(1u64..32, 1..6),
        quotas in proptest::collection::vec(proptest::option::of((0u64..16, 0u64..16)), 3),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let first = run_ops(&node_cores, &quotas, &ops);
        let second = run_ops(&node_cores, &quotas, &ops);
        prop_assert_eq!(first, second);
    }
}

#[test]
fn a_snapshot_restores_the_same_state() {
    let mut c = cluster_with_nodes(&[4, 4]);
    c.submit(JobId(1), spec("0-99", 1), 0);
    let p = placed(&mut c, 1);
    c.finish(JobId(1), p[0].pos, 1, TaskOutcome::Succeeded, 2);
    c.requeue(JobId(1), p[1].pos, 1, 3);
    c.cancel(JobId(1), Some(50), 4).unwrap();
    let snap = c.task_snapshot(JobId(1)).unwrap();
    let mut d = cluster_with_nodes(&[4, 4]);
    d.submit(JobId(1), spec("0-99", 1), 0);
    d.restore_tasks(JobId(1), &snap).unwrap();
    d.sanity_check().unwrap();
    assert_eq!(d.task_snapshot(JobId(1)).unwrap(), snap);
    assert_eq!(d.job(JobId(1)).unwrap().counts(), c.job(JobId(1)).unwrap().counts());
    assert_eq!(d.schedule(5), c.schedule(5), "the same next decisions");
}

#[test]
fn what_no_known_node_could_hold_is_refused_naming_the_field() {
    let unavailable = "Requested node configuration is not available";
    // Nothing known yet: everything waits for a node that may come.
    assert!(Cluster::new().validate(&spec("0", 64), &[]).is_ok());
    let mut c = cluster_with_nodes(&[4, 8]);
    assert!(c.validate(&spec("0-99", 8), &[]).is_ok(), "the larger node holds 8");
    let e = c.validate(&spec("0", 9), &[]).unwrap_err();
    assert!(e.field == "cpus" && e.message.contains(unavailable), "{e:?}");
    let mut mem = spec("0", 1);
    mem.per_task.mem_bytes = 1 << 50;
    assert_eq!(c.validate(&mem, &[]).unwrap_err().field, "mem");
    let rdma = JobSpec { requires: vec!["rdma".into()], ..spec("0", 1) };
    assert_eq!(c.validate(&rdma, &[]).unwrap_err().field, "constraint");
    // A gang: as many nodes as could each hold their share, not more.
    assert!(c.validate(&gang(2, 4, 1), &[]).is_ok());
    assert_eq!(c.validate(&gang(2, 8, 1), &[]).unwrap_err().field, "nodes", "only one node holds 8");
    assert_eq!(c.validate(&gang(3, 1, 1), &[]).unwrap_err().field, "nodes");
    // A node that is drained or offline still counts: it may come back.
    let n1 = c.node_id("n1").unwrap();
    c.set_node_online(n1, false);
    assert!(c.validate(&spec("0", 8), &[]).is_ok());
    // One known by name only (replayed, its agent not yet back) proves nothing.
    let mut replayed = Cluster::new();
    replayed.add_node("ghost", "local", Resources::default());
    assert!(replayed.validate(&spec("0", 1), &[]).is_ok());
    // A feature a node gains later is not refused once that node is known.
    c.add_node_with("fabric", "local", cores(2), &["rdma".to_string()], &[]);
    assert!(c.validate(&rdma, &[]).is_ok());
}

fn after(kind: AfterKind, job: u64, delay_ms: u64) -> After {
    After { kind, job: JobId(job), delay_ms }
}

#[test]
fn each_dependency_kind_waits_for_what_slurm_waits_for() {
    // Job 1 fails, job 2 succeeds, job 3 runs on; each dependent is a one-task job.
    let mut c = cluster_with_nodes(&[16]);
    for id in 1..=3 {
        c.submit(JobId(id), spec("0", 1), 0);
    }
    assert_eq!(placed(&mut c, 1).len(), 3);
    c.finish(JobId(1), 0, 1, TaskOutcome::Failed, 10);
    c.finish(JobId(2), 0, 1, TaskOutcome::Succeeded, 20);
    let with = |on: Vec<After>, any_of: bool| JobSpec { dependencies: Dependencies { on, any_of, singleton: false }, ..spec("0", 1) };
    let cases: Vec<(JobSpec, &str)> = vec![
        (with(vec![after(AfterKind::Start, 3, 0)], false), "ready"),
        (with(vec![after(AfterKind::Ok, 2, 0)], false), "ready"),
        (with(vec![after(AfterKind::Ok, 1, 0)], false), "never"),
        (with(vec![after(AfterKind::NotOk, 1, 0)], false), "ready"),
        (with(vec![after(AfterKind::NotOk, 2, 0)], false), "never"),
        (with(vec![after(AfterKind::NotOk, 3, 0)], false), "waiting"),
        (with(vec![after(AfterKind::Any, 1, 0), after(AfterKind::Any, 2, 0)], false), "ready"),
        (with(vec![after(AfterKind::Any, 3, 0)], false), "waiting"),
        (with(vec![after(AfterKind::Ok, 1, 0), after(AfterKind::Ok, 2, 0)], true), "ready"),
        (with(vec![after(AfterKind::Ok, 1, 0), after(AfterKind::Ok, 3, 0)], true), "waiting"),
        (with(vec![after(AfterKind::Ok, 1, 0), after(AfterKind::NotOk, 2, 0)], true), "never"),
        (with(vec![after(AfterKind::Ok, 2, 60_000)], false), "waiting"),
        (with(vec![after(AfterKind::Corr, 2, 0)], false), "ready"),
    ];
    for (i, (spec, _)) in cases.iter().enumerate() {
        c.submit(JobId(10 + i as u64), spec.clone(), 30);
    }
    c.schedule(40);
    for (i, (spec, expected)) in cases.iter().enumerate() {
        let id = JobId(10 + i as u64);
        let got = match c.why_pending(id).map(|r| r.code) {
            None => "ready",
            Some("DependencyNeverSatisfied") => "never",
            Some("Dependency") => "waiting",
            Some(other) => panic!("{other}"),
        };
        assert_eq!(got, *expected, "case {i}: {:?}", spec.dependencies);
    }
    // The delayed one starts once its minute has passed.
    let delayed = JobId(10 + 11);
    c.schedule(20 + 59_999);
    assert!(c.why_pending(delayed).is_some());
    c.schedule(20 + 60_000);
    assert!(c.why_pending(delayed).is_none(), "{:?}", c.why_pending(delayed));
}

#[test]
fn a_singleton_waits_for_the_earlier_job_of_its_name() {
    let mut c = cluster_with_nodes(&[16]);
    let single = |name: &str| JobSpec { name: name.into(), dependencies: Dependencies { singleton: true, ..Dependencies::default() }, ..spec("0", 1) };
    c.submit(JobId(1), single("nightly"), 0);
    c.submit(JobId(2), single("nightly"), 0);
    c.submit(JobId(3), single("other"), 0);
    let placed_ids: Vec<JobId> = placed(&mut c, 1).iter().map(|p| p.job_id).collect();
    assert_eq!(placed_ids, [JobId(1), JobId(3)]);
    let why = c.why_pending(JobId(2)).unwrap();
    assert!(why.code == "Dependency" && why.text.contains("singleton"), "{why:?}");
    c.finish(JobId(1), 0, 1, TaskOutcome::Succeeded, 2);
    assert_eq!(placed(&mut c, 3).iter().map(|p| p.job_id).collect::<Vec<_>>(), [JobId(2)]);
}

fn dependency() -> impl Strategy<Value = (u8, u64, u64)> {
    (0u8..5, 1u64..6, prop_oneof![Just(0u64), 1u64..5_000])
}

proptest! {
    /// Whatever happens to the jobs waited for, no job starts before its dependencies allow.
    #[test]
    fn no_job_starts_before_its_dependencies_allow(
        deps in proptest::collection::vec(proptest::collection::vec(dependency(), 1..4), 1..6),
        any_of in proptest::collection::vec(any::<bool>(), 6),
        outcomes in proptest::collection::vec((1u64..6, 0u8..3, 1u64..3_000), 0..12),
    ) {
        let mut c = cluster_with_nodes(&[64]);
        for id in 1..=5 {
            c.submit(JobId(id), spec("0", 1), 0);
        }
        let kinds = [AfterKind::Start, AfterKind::Ok, AfterKind::Any, AfterKind::NotOk, AfterKind::Corr];
        for (i, list) in deps.iter().enumerate() {
            let on = list.iter().map(|(k, job, delay)| after(kinds[*k as usize], *job, *delay)).collect();
            c.submit(JobId(100 + i as u64), JobSpec { dependencies: Dependencies { on, any_of: any_of[i], singleton: false }, ..spec("0", 1) }, 0);
        }
        let mut now = 0;
        let mut started: std::collections::HashMap<JobId, u64> = Default::default();
        let mut ended: std::collections::HashMap<JobId, (u64, bool)> = Default::default();
        for (job, outcome, step) in outcomes.iter().copied() {
            now += step;
            for p in c.schedule(now).placements {
                started.entry(p.job_id).or_insert(now);
                if p.job_id.0 >= 100 {
                    // Check the placement against what had happened by then, from the outside.
                    let d = &deps[(p.job_id.0 - 100) as usize];
                    let met = |(k, dep, delay): &(u8, u64, u64)| -> bool {
                        let at = match kinds[*k as usize] {
                            AfterKind::Start => started.get(&JobId(*dep)).copied(),
                            AfterKind::Any => ended.get(&JobId(*dep)).map(|e| e.0),
                            AfterKind::Ok | AfterKind::Corr => ended.get(&JobId(*dep)).filter(|e| e.1).map(|e| e.0),
                            AfterKind::NotOk => ended.get(&JobId(*dep)).filter(|e| !e.1).map(|e| e.0),
                        };
                        at.is_some_and(|t| t + delay <= now)
                    };
                    let allowed = if any_of[(p.job_id.0 - 100) as usize] { d.iter().any(met) } else { d.iter().all(met) };
                    prop_assert!(allowed, "job {} started at {now} before its dependencies {:?} allowed", p.job_id, d);
                }
            }
            if (1..=5).contains(&job) && started.contains_key(&JobId(job)) && !ended.contains_key(&JobId(job)) {
                let outcome = [TaskOutcome::Succeeded, TaskOutcome::Failed, TaskOutcome::Timeout][outcome as usize];
                c.finish(JobId(job), 0, 1, outcome, now);
                ended.insert(JobId(job), (now, outcome == TaskOutcome::Succeeded));
            }
            c.sanity_check().map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn a_node_holding_the_jobs_image_is_preferred_among_those_that_fit() {
    let mut c = cluster_with_nodes(&[4, 16]);
    let (tight, roomy) = (NodeId(0), NodeId(1));
    c.set_node_warm(roomy, &["reg/sim:1".to_string()]);
    let in_image = |image: Option<&str>| JobSpec { warm_key: image.map(str::to_string), ..spec("0", 1) };
    c.submit(JobId(1), in_image(Some("reg/sim:1")), 0);
    c.submit(JobId(2), in_image(Some("reg/other:1")), 0);
    c.submit(JobId(3), in_image(None), 0);
    let on: std::collections::HashMap<JobId, NodeId> = placed(&mut c, 1).iter().map(|p| (p.job_id, p.node_id)).collect();
    assert_eq!(on[&JobId(1)], roomy, "the node that holds the image, though another fits tighter");
    assert_eq!(on[&JobId(2)], tight, "best fit for an image no node holds");
    assert_eq!(on[&JobId(3)], tight);
    // A node that drops the image is no longer preferred.
    c.set_node_warm(roomy, &[]);
    c.submit(JobId(4), in_image(Some("reg/sim:1")), 2);
    assert_eq!(placed(&mut c, 3)[0].node_id, tight);
}
