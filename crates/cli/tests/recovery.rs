//! Node loss and drains through the real server: leases, requeues as new attempts, stale
//! reports refused, drained nodes taking nothing new.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::process::Command;

fn json(env: &Env, job: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap()
}

#[test]
fn a_silent_agent_loses_its_tasks_to_others_and_nothing_is_counted_twice() {
    let mut env = Env::with_args("lease", &["--agent-lease", "2"]);
    env.add_agent("flaky", &["--cpus", "2", "--feature", "lab"]);
    env.add_agent("steady", &["--cpus", "2", "--feature", "lab"]);
    // As root, the tasks run as a project's uid of their own, as on a shared fleet.
    let job = if common::is_root() {
        let (token, area) = env.project_with_uid("lab", 5501);
        let out = env.cmd(common::BIN, &["submit", "-D", &area, "--constraint", "lab", "--array", "0-3", "--", "sleep", "3"]).env("TIDEPOOL_TOKEN", &token).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    } else {
        env.ok(&["submit", "--constraint", "lab", "--array", "0-3", "--", "sleep", "3"])
    };
    let job = job.trim().to_string();
    env.eventually(20, "four running", |e| json(e, &job)["counts"]["running"] == 4);
    let flaky = env.agent_pid("flaky").to_string();
    assert!(Command::new("kill").args(["-STOP", &flaky]).status().unwrap().success());
    env.eventually(20, "flaky to be lost", |e| e.ok(&["nodes"]).lines().any(|l| l.starts_with("flaky") && l.contains("down")));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(Command::new("kill").args(["-CONT", &flaky]).status().unwrap().success());
    let wait = env.run(&["wait", &job]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let v = json(&env, &job);
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(v["counts"]["succeeded"], 4);
    let rerun: Vec<&serde_json::Value> = tasks.iter().filter(|t| t["attempt"] == 2).collect();
    assert_eq!(rerun.len(), 2, "the two tasks of the lost node ran again: {v}");
    assert!(rerun.iter().all(|t| t["node"] == "steady"), "{v}");
    // The lost node's own late reports were refused: one completion per task.
    let sacct = env.ok(&["sacct", "-j", &job, "-n", "-P", "--format=JobID,State,Restarts"]);
    assert_eq!(sacct.lines().filter(|l| l.contains("COMPLETED")).count(), 4, "{sacct}");
    env.eventually(20, "flaky back", |e| e.ok(&["nodes"]).lines().any(|l| l.starts_with("flaky") && !l.contains("down")));
    env.eventually(10, "flaky to forget its stale attempts", |e| {
        // What is left is its live launcher's own name and emptied directories kept as spares.
        std::fs::read_dir(e.dir.join("agent-flaky/run"))
            .map(|d| {
                d.flatten().all(|entry| {
                    let name = entry.file_name().to_string_lossy().to_string();
                    name.starts_with("launcher.") || name.starts_with("spare.")
                })
            })
            .unwrap_or(true)
    });
}

#[test]
fn a_drained_node_finishes_its_work_and_takes_nothing_new() {
    let mut env = Env::new("drain");
    env.add_agent("spare", &["--cpus", "4", "--feature", "spare"]);
    let first = env.ok(&["submit", "--constraint", "spare", "--", "sleep", "1"]);
    env.eventually(20, "it to run", |e| json(e, first.trim())["counts"]["running"] == 1);
    env.ok(&["drain", "spare"]);
    assert!(env.ok(&["nodes"]).lines().any(|l| l.starts_with("spare") && l.contains("draining")));
    assert!(env.ok(&["sinfo"]).contains("drng"));
    let second = env.ok(&["submit", "--constraint", "spare", "--", "true"]);
    assert!(env.run(&["wait", first.trim()]).status.success(), "running work finishes");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(json(&env, second.trim())["counts"]["pending"], 1, "nothing new on a drained node");
    env.ok(&["resume", "spare"]);
    assert!(env.run(&["wait", second.trim()]).status.success());
    assert!(env.run(&["drain", "no-such-node"]).status.code() == Some(1));
}
