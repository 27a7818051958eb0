//! An orderly stop, and no over-commit whatever happened before a start: Ctrl-C stops `up` and
//! its tasks, which run again at the next start; `--keep-tasks` leaves them for the next agent;
//! a launcher killed outright takes its task trees with it and they run again; a cancel sent
//! while the launcher still starts ends that task alone.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pids_of, Env};

fn json(env: &Env, job: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap()
}

fn attempts(v: &serde_json::Value) -> Vec<u64> {
    v["tasks"].as_array().unwrap().iter().map(|t| t["attempt"].as_u64().unwrap_or(0)).collect()
}

#[test]
fn ctrl_c_stops_the_tasks_and_the_next_start_runs_them_again_within_the_node() {
    let mut env = Env::new("stop");
    let marker = format!("sleep 300.{}", std::process::id());
    let job = env.ok(&["submit", "--array", "0-7", "--", "sh", "-c", &format!("exec {marker}")]);
    let job = job.trim().to_string();
    env.eventually(20, "four tasks to run", |_| pids_of(&marker).len() == 4);

    let status = env.interrupt();
    assert!(status.success(), "up exited {status}");
    let log = std::fs::read_to_string(env.dir.join("server.log")).unwrap();
    assert!(log.contains("SIGINT: stopping"), "{log}");
    assert!(pids_of(&marker).is_empty(), "tasks outlived up: {:?}", pids_of(&marker));

    env.start("127.0.0.1:0");
    env.eventually(20, "four tasks to run again", |e| json(e, &job)["counts"]["running"] == 4);
    env.eventually(10, "their processes", |_| pids_of(&marker).len() == 4);
    // A while later still two: the node never runs more than it offers.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(pids_of(&marker).len(), 4, "over-committed after a restart");
    let v = json(&env, &job);
    assert_eq!(v["counts"]["failed"], 0, "a stop is not a failure: {v}");
    assert!(attempts(&v).iter().filter(|a| **a == 2).count() >= 4, "the stopped ones run as new attempts: {v}");
    env.ok(&["cancel", &job]);
    env.eventually(20, "the cancelled tasks to end", |_| pids_of(&marker).is_empty());
}

#[test]
fn keep_tasks_leaves_them_running_for_the_next_agent() {
    let mut env = Env::with_args("keep", &["--keep-tasks"]);
    let marker = format!("sleep 301.{}", std::process::id());
    let job = env.ok(&["submit", "--array", "0-1", "--", "sh", "-c", &format!("exec {marker}")]);
    let job = job.trim().to_string();
    env.eventually(20, "two tasks to run", |_| pids_of(&marker).len() == 2);
    let before = pids_of(&marker);
    assert!(env.interrupt().success());
    assert_eq!(pids_of(&marker), before, "--keep-tasks stopped them");
    env.start("127.0.0.1:0");
    env.eventually(20, "the tasks to be re-attached", |e| json(e, &job)["counts"]["running"] == 2);
    assert_eq!(pids_of(&marker), before, "the same processes, not new attempts");
    assert_eq!(attempts(&json(&env, &job)), [1, 1]);
    env.ok(&["cancel", &job]);
    env.eventually(20, "the cancelled tasks to end", |_| pids_of(&marker).is_empty());
}

#[test]
fn a_killed_launcher_takes_its_task_trees_with_it_and_they_run_again() {
    let env = Env::new("launcher-kill");
    for (n, (token, workdir)) in env.submitters().into_iter().enumerate() {
        let marker = format!("sleep 302.{}{n}", std::process::id());
        // A tree: the task's shell, and a child that left its process group.
        let script = format!("setsid {marker} & exec {marker}");
        let job = env.submit_as(&token, &workdir, &["--", "sh", "-c", &script]);
        env.eventually(20, "the tree to run", |_| pids_of(&marker).len() == 2);
        let run_dir = env.dir.join("data/agent/run");
        let launchers = tidepool_agent::rundir::live_launchers(&run_dir);
        assert_eq!(launchers.len(), 1, "{launchers:?}");
        let first = pids_of(&marker);
        let _ = std::process::Command::new("kill").args(["-KILL", &launchers[0].to_string()]).status();

        // Killed with its launcher, then run again under a new one as attempt 2.
        env.eventually(20, "the task to run again", |e| attempts(&json(e, &job)) == [2] && json(e, &job)["counts"]["running"] == 1);
        env.eventually(20, "the new tree", |_| pids_of(&marker).len() == 2);
        let now = pids_of(&marker);
        assert!(first.iter().all(|p| !now.contains(p)), "the first tree still runs: {first:?} {now:?}");
        assert_eq!(json(&env, &job)["counts"]["failed"], 0);
        env.ok(&["cancel", &job]);
        env.eventually(20, "the cancelled tree to end", |_| pids_of(&marker).is_empty());
    }
}

#[test]
fn a_task_inherits_no_descriptor_of_the_launcher_or_the_agent() {
    let env = Env::new("descriptors");
    for (token, workdir) in env.submitters() {
        let job = env.submit_as(&token, &workdir, &["--", "sh", "-c", "ls /proc/$$/fd"]);
        assert!(env.run(&["wait", &job]).status.success());
        let fds = env.ok(&["logs", &job]);
        let fds: Vec<&str> = fds.split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2"], "a task holds more than its standard streams");
    }
}

#[test]
fn a_task_leads_a_session_of_its_own_with_no_controlling_terminal() {
    let env = Env::new("session");
    for (token, workdir) in env.submitters() {
        // /proc/PID/stat after the command's name: state, ppid, pgrp, session, tty_nr, ...
        let job = env.submit_as(&token, &workdir, &["--", "sh", "-c", "echo $$; cat /proc/$$/stat"]);
        assert!(env.run(&["wait", &job]).status.success());
        let out = env.ok(&["logs", &job]);
        let mut lines = out.lines();
        let pid = lines.next().unwrap().trim().to_string();
        let stat = lines.next().unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let (pgrp, session, tty) = (fields[2], fields[3], fields[4]);
        assert_eq!((pgrp, session), (pid.as_str(), pid.as_str()), "its own process group and session: {stat}");
        assert_eq!(tty, "0", "no controlling terminal: {stat}");
    }
}

/// One attempt of job 1 that runs `script` in `workdir`.
fn launch_of(index: u32, script: &str, workdir: &std::path::Path) -> tidepool_api::Launch {
    tidepool_api::Launch { workdir: workdir.display().to_string(), ..tidepool_agent::executor::plain_launch(index, &["sh", "-c", script]) }
}

#[test]
fn a_cancel_sent_while_the_launcher_still_starts_ends_only_its_task() {
    use tidepool_agent::executor::Executor;
    use tidepool_agent::process::{ProcessExecutor, ProcessSettings};
    use tidepool_api::AttemptOutcome;
    let dir = std::env::temp_dir().join(format!("tidepool-it-{}-early-cancel", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let settings = ProcessSettings {
        run_dir: run_dir.clone(),
        launcher_program: common::BIN.into(),
        plan: tidepool_agent::cgroup::CgroupPlan::None,
        bin_dir: None,
        kill_grace_s: 1,
        node_cpu_millis: 2000,
        node_mem_bytes: 1 << 30,
    };
    let executor = ProcessExecutor::new(settings, tx);
    let marker = format!("sleep 303.{}", std::process::id());
    let long = launch_of(0, &format!("exec {marker}"), &dir);
    let short = launch_of(1, "exit 0", &dir);
    let (long_ref, short_ref) = (long.attempt, short.attempt);
    for launch in [long, short] {
        let attempt_dir = tidepool_agent::rundir::attempt_dir(&run_dir, &launch.attempt);
        std::fs::create_dir_all(&attempt_dir).unwrap();
        executor.start(launch, &attempt_dir).unwrap();
    }
    // The launcher was spawned a moment ago: the cancel's nudge reaches it while it starts.
    assert!(executor.cancel(long_ref, &tidepool_agent::rundir::attempt_dir(&run_dir, &long_ref)));
    let mut outcomes = std::collections::HashMap::new();
    while outcomes.len() < 2 {
        let r = results.blocking_recv().expect("the executor ended before both results");
        outcomes.insert(r.attempt, (r.outcome, r.message));
    }
    assert_eq!(outcomes[&long_ref].0, AttemptOutcome::Cancelled, "{outcomes:?}");
    assert_eq!(outcomes[&short_ref].0, AttemptOutcome::Succeeded, "the launcher died with the cancel: {outcomes:?}");
    assert!(pids_of(&marker).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
