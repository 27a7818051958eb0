//! A Slurm cluster as an overflow site, against a real Slurm: runs when `TIDEPOOL_TEST_SLURM=1`
//! (`.ci/run` sets it after starting one with `bench/slurm/start.sh`, and `SLURM_CONF` with it).
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{count_lines, Env, BIN};
use std::process::Command;

fn slurm_wanted() -> bool {
    if std::env::var("TIDEPOOL_TEST_SLURM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: start Slurm with bench/slurm/start.sh, export SLURM_CONF and TIDEPOOL_TEST_SLURM=1");
    false
}

fn tasks(env: &Env, job: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap();
    v["tasks"].as_array().unwrap().clone()
}

/// Our jobs Slurm still holds.
fn in_slurm(job: &str) -> usize {
    let out = Command::new("squeue").args(["-h", "-o", "%j %t"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("tidepool-{job}-")) && !l.ends_with(" CA") && !l.ends_with(" CD"))
        .count()
}

#[test]
fn an_array_splits_between_the_local_agent_and_slurm_and_cancel_reaches_slurm() {
    if !slurm_wanted() {
        return;
    }
    let mut env = Env::new("slurm-site");
    let token = std::fs::read_to_string(env.dir.join("data/join.token")).unwrap();
    let mut site = Command::new(BIN);
    site.args(["agent", "--server", &env.url, "--executor", "slurm"]);
    env.add_agent_by("slurm-site", site, token.trim(), &["--cpus", "4"]);

    let seen = env.dir.join("seen");
    let job = env.ok(&["submit", "--array", "0-199", "--", "sh", "-c", &format!("echo $TIDEPOOL_TASK_INDEX >> {}; sleep 0.3", seen.display())]);
    let job = job.trim().to_string();
    let wait = env.run(&["wait", &job]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let (total, distinct, _) = count_lines(&seen);
    assert_eq!((total, distinct), (200, 200), "every task once");
    let all = tasks(&env, &job);
    let on_site = all.iter().filter(|t| t["node"] == "slurm-site").count();
    assert!(on_site > 0 && on_site < 200, "split between local and Slurm: {on_site} of 200 in Slurm");
    assert!(all.iter().all(|t| t["state"] == "succeeded"), "every task succeeded");
    let sacct = env.ok(&["sacct", "-j", &job, "-n", "-P", "--format=JobID,State"]);
    assert_eq!(sacct.lines().filter(|l| l.ends_with("COMPLETED")).count(), 200, "each counted once");

    // Long work fills the local agent first; the rest goes to Slurm; a cancel reaches it there.
    let long = env.ok(&["submit", "--array", "0-7", "--", "sleep", "300"]).trim().to_string();
    env.eventually(60, "four tasks queued in Slurm", |_| in_slurm(&long) == 4);
    let local = tasks(&env, &long).iter().filter(|t| t["state"] == "running" && t["node"] != "slurm-site").count();
    assert_eq!(local, 4, "the local agent's four cores are used first");
    env.ok(&["cancel", &long]);
    env.eventually(60, "Slurm to hold none of the cancelled job", |_| in_slurm(&long) == 0);
    env.eventually(30, "every task cancelled", |e| tasks(e, &long).iter().all(|t| t["state"] == "cancelled"));
}

#[test]
fn a_slurm_site_whose_join_token_is_revoked_takes_its_jobs_out_of_slurm() {
    if !slurm_wanted() {
        return;
    }
    let mut env = Env::with_args("slurm-revoked", &["--agent-lease", "3"]);
    let out = env.ok(&["token", "create", "--join"]);
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let join = out.trim().lines().last().unwrap().to_string();
    let mut site = Command::new(BIN);
    site.args(["agent", "--server", &env.url, "--executor", "slurm"]);
    env.add_agent_by("hpc-revoked", site, &join, &["--cpus", "2", "--feature", "hpc-only"]);
    let job = env.ok(&["submit", "--constraint", "hpc-only", "--", "sleep", "300"]).trim().to_string();
    env.eventually(60, "the task queued in Slurm", |_| in_slurm(&job) == 1);
    env.ok(&["token", "revoke", &id]);
    // Refused at its next poll, the site agent scancels what it handed over before it leaves:
    // the server requeues the task after the lease, so it must not also run on in Slurm.
    env.eventually(30, "Slurm to hold none of it", |_| in_slurm(&job) == 0);
    let pid = env.agent_pid("hpc-revoked");
    env.eventually(20, "the refused agent to exit", |_| !tidepool_agent::rundir::process_running(pid));
}
