//! The scheduling core through the real server: gangs across agents, preemption by tier,
//! project quotas, node features, and the pending reasons users see.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;

fn json(env: &Env, job: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap()
}

#[test]
fn a_gang_starts_whole_across_agents_and_says_why_when_it_cannot() {
    let mut env = Env::new("gang");
    env.add_agent("second", &["--cpus", "4"]);
    let job = env.ok(&[
        "submit", "--nodes", "2", "--tasks-per-node", "2", "--",
        "sh", "-c", "echo $SLURM_PROCID $SLURM_NODEID $SLURM_JOB_NODELIST >> gang.txt",
    ]);
    let wait = env.run(&["wait", job.trim()]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let text = std::fs::read_to_string(env.dir.join("gang.txt")).unwrap();
    let mut ranks: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, ["0", "1", "2", "3"], "{text}");
    let node_ids: std::collections::BTreeSet<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(node_ids.len(), 2);
    assert!(text.lines().all(|l| l.contains("second") && l.contains(',')), "every rank sees both nodes: {text}");

    let too_big = env.run(&["submit", "--nodes", "3", "--", "true"]);
    let err = String::from_utf8_lossy(&too_big.stderr);
    assert!(!too_big.status.success(), "no 3 nodes have ever joined: {err}");
    assert!(err.contains("nodes") && err.contains("Requested node configuration is not available"), "{err}");

    let marker = format!("sleep 30.{}", std::process::id());
    let blocker = env.ok(&["submit", "--nodes", "2", "--tasks-per-node", "4", "--", "sh", "-c", &marker]);
    env.eventually(20, "the blocker to hold both nodes", |e| json(e, blocker.trim())["counts"]["running"] == 8);
    let waiting = env.ok(&["submit", "--nodes", "2", "--", "true"]);
    let v = json(&env, waiting.trim());
    let reason = v["pending_reason"].as_str().unwrap();
    assert!(reason.contains("needs 2 nodes") && reason.contains("free each"), "{reason}");
    let q = env.ok(&["squeue", "-h", "-j", waiting.trim()]);
    assert!(q.contains("(Resources)"), "{q}");
    env.ok(&["cancel", blocker.trim()]);
    assert!(env.run(&["wait", waiting.trim()]).status.success());
}

#[test]
fn realtime_preempts_preemptible_work_which_runs_again_later() {
    let env = Env::new("preempt");
    let low = env.ok(&["submit", "--tier", "preemptible", "--array", "0-3", "--", "sleep", "30"]);
    let low = low.trim().to_string();
    env.eventually(20, "the low tier to fill the node", |e| json(e, &low)["counts"]["running"] == 4);
    let high = env.ok(&["submit", "--tier", "realtime", "--", "sh", "-c", "echo realtime ran"]);
    let wait = env.run(&["wait", high.trim()]);
    assert!(wait.status.success());
    assert_eq!(env.ok(&["logs", high.trim()]).trim(), "realtime ran");
    let v = json(&env, &low);
    let retried = v["tasks"].as_array().unwrap().iter().filter(|t| t["attempt"].as_u64() == Some(2)).count();
    let pending = v["counts"]["pending"].as_u64().unwrap();
    assert!(retried == 1 || pending == 1, "one victim requeued: {v}");
    assert_eq!(v["counts"]["failed"], 0, "a preempted task is not a failure");
    env.ok(&["cancel", &low]);
}

#[test]
fn project_quota_caps_running_work_and_says_so() {
    let env = Env::with_args("quota", &["--project", "chem=1"]);
    let job = env.ok(&["submit", "--project", "chem", "--array", "0-3", "--", "sleep", "0.5"]);
    let job = job.trim().to_string();
    env.eventually(20, "one task to run", |e| json(e, &job)["counts"]["running"] == 1);
    let v = json(&env, &job);
    assert_eq!(v["counts"]["running"], 1, "quota of 1 core");
    assert_eq!(v["pending_reason"], "project chem quota used: 1/1 cores");
    let q = env.ok(&["squeue", "-h", "-j", &job]);
    assert!(q.contains("(QOSGrpCpuLimit)"), "{q}");
    assert!(env.run(&["wait", &job]).status.success());
}

#[test]
fn required_features_are_refused_where_no_node_has_them_and_run_where_one_does() {
    let mut env = Env::new("features");
    let refused = env.run(&["submit", "--constraint", "rdma", "--", "true"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("constraint") && err.contains("rdma"), "{err}");
    env.add_agent("fabric", &["--cpus", "1", "--feature", "rdma"]);
    let job = env.ok(&["submit", "--constraint", "rdma", "--", "sh", "-c", "echo $SLURMD_NODENAME"]);
    let job = job.trim().to_string();
    assert!(env.run(&["wait", &job]).status.success());
    assert_eq!(env.ok(&["logs", &job]).trim(), "fabric");
}

#[test]
fn bench_sched_prints_our_figures_and_the_baselines() {
    let out = common::bench().args(["sched", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["full_pass_ms", "incremental_pass_ms", "placements_per_s", "allocated_share"] {
        assert!(v[key].as_f64().is_some(), "{key}");
        assert!(v[format!("baseline_{key}")].as_f64().is_some(), "baseline_{key}");
    }
    assert_eq!(v["pending_tasks"], 1_000_000);
    assert!(v["allocated_share"].as_f64().unwrap() > 0.97);
}
