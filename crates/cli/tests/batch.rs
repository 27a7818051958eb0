//! The batch path end to end: the real `tidepool` binary, real processes, real SQLite.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{count_lines, rss_mb, Env, BIN};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn an_array_of_1000_writes_1000_files_and_sacct_shows_usage() {
    let env = Env::new("array");
    std::fs::create_dir_all(env.dir.join("out")).unwrap();
    let job = env.ok(&[
        "submit", "--array", "0-999", "--cpus", "1", "--",
        "sh", "-c", "echo $TIDEPOOL_TASK_INDEX > out/$TIDEPOOL_TASK_INDEX",
    ]);
    let job = job.trim();
    assert!(job.parse::<u64>().is_ok(), "job id alone: {job:?}");
    let wait = env.run(&["wait", job]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let files = std::fs::read_dir(env.dir.join("out")).unwrap().count();
    assert_eq!(files, 1000);
    assert_eq!(std::fs::read_to_string(env.dir.join("out/737")).unwrap().trim(), "737");
    let sacct = env.ok(&["sacct", "-j", job]);
    let rows: Vec<&str> = sacct.lines().skip(2).collect();
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().all(|r| r.contains("COMPLETED")), "{sacct}");
    let header = sacct.lines().next().unwrap();
    assert!(header.contains("TotalCPU") && header.contains("MaxRSS"));
    let parsable = env.ok(&["sacct", "-j", job, "--format=JobID,State,MaxRSS", "-P", "-n"]);
    let first = parsable.lines().next().unwrap();
    let fields: Vec<&str> = first.split('|').collect();
    assert_eq!(fields[0], format!("{job}_0"));
    assert!(fields[2].ends_with('K') && fields[2] != "0K", "peak memory measured: {first}");
    let show = env.ok(&["show", job, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["counts"]["succeeded"], 1000);
}

#[test]
fn short_tasks_wait_on_the_node_ahead_of_free_cores_and_a_cancel_reaches_them() {
    // The test node offers 4 cores.
    let env = Env::new("prefetch");
    let job = env.ok(&["submit", "--array", "0-1999", "--", "sh", "-c", "echo $TIDEPOOL_TASK_INDEX >> ran.log"]);
    let job = job.trim();
    let counts = |env: &Env| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&env.ok(&["show", job, "--json"])).unwrap()["counts"].clone()
    };
    // Once its tasks are known to be short, the node is sent more than its cores take.
    let (mut most_running, mut most_queued) = (0, 0);
    env.eventually(60, "tasks sent ahead of the free cores", |env| {
        let c = counts(env);
        most_running = most_running.max(c["running"].as_u64().unwrap());
        // `tidepool nodes` shows them: the last column counts what waits on the node.
        let nodes = env.ok(&["nodes"]);
        let queued: u64 = nodes.lines().nth(1).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap();
        most_queued = most_queued.max(queued);
        most_running > 4 && most_queued > 0 && c["succeeded"].as_u64().unwrap() > 100
    });
    env.ok(&["cancel", job]);
    env.run(&["wait", job]);
    let c = counts(&env);
    let (succeeded, cancelled) = (c["succeeded"].as_u64().unwrap(), c["cancelled"].as_u64().unwrap());
    assert_eq!(succeeded + cancelled, 2000, "every task ended once: {c}");
    assert!(cancelled > 0, "the cancel came before the end: {c}");
    let ran = std::fs::read_to_string(env.dir.join("ran.log")).unwrap();
    let mut indices: Vec<u32> = ran.lines().map(|l| l.parse().unwrap()).collect();
    let n_lines = indices.len() as u64;
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len() as u64, n_lines, "no task ran twice");
    // Every task that succeeded ran; the others ran only if the cancel caught them running
    // (one sent ahead may start before its own kill order reaches the node).
    let sacct = env.ok(&["sacct", "-j", job, "--format=JobID,State", "-P", "-n"]);
    let completed: Vec<u32> = sacct
        .lines()
        .filter(|l| l.ends_with("|COMPLETED"))
        .map(|l| l.split('|').next().unwrap().rsplit('_').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(completed.len() as u64, succeeded, "{sacct}");
    assert!(completed.iter().all(|i| indices.binary_search(i).is_ok()), "a task that succeeded did not run");
    assert!(n_lines < 2000, "the cancel stopped what had not started: {n_lines} ran");
}

#[test]
fn sbatch_throttle_squeue_and_scancel() {
    let env = Env::new("sbatch");
    std::fs::write(
        env.dir.join("job.sh"),
        "#!/bin/bash\n#SBATCH --array=1-20%4 -c 1 -o out_%A_%a.txt\n#SBATCH --job-name=thr\n\necho start $SLURM_ARRAY_TASK_ID >> running.log\nsleep 0.4\necho task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT job $SLURM_ARRAY_JOB_ID\n",
    )
    .unwrap();
    let out = env.ok(&["sbatch", "job.sh"]);
    let job: u64 = out.trim().strip_prefix("Submitted batch job ").unwrap().parse().unwrap();
    let mut max_running = 0;
    let mut saw_in_squeue = false;
    loop {
        let q = env.ok(&["squeue", "-h", "-j", &job.to_string()]);
        let running = q.lines().filter(|l| l.split_whitespace().nth(4) == Some("R")).count();
        saw_in_squeue |= running > 0;
        max_running = max_running.max(running);
        if q.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_in_squeue);
    assert!(max_running <= 4, "throttle broken: {max_running}");
    for i in 1..=20 {
        let text = std::fs::read_to_string(env.dir.join(format!("out_{job}_{i}.txt"))).unwrap();
        assert_eq!(text.trim(), format!("task {i} of 20 job {job}"));
    }

    // scancel ends the whole process tree, including a child that ignores SIGTERM.
    // A marker of this test's own: other tests (or the machine) may run sleeps of their own.
    let marker = format!("sleep 300.{}", std::process::id());
    let out = env.ok(&["sbatch", "--parsable", "--wrap", &format!("sh -c 'trap \"\" TERM; {marker}' & {marker}")]);
    let job: u64 = out.trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.ok(&["squeue", "-h"]).contains(" R ") {
        assert!(Instant::now() < deadline, "never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sleepers = || {
        let ps = Command::new("pgrep").args(["-f", &format!("^{marker}")]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout).lines().count()
    };
    assert!(sleepers() >= 2);
    let scancel = Command::new(BIN);
    drop(scancel);
    let started = Instant::now();
    let out = env.cmd(BIN, &["scancel", &job.to_string()]).output().unwrap();
    assert!(out.status.success());
    while sleepers() > 0 {
        assert!(started.elapsed() < Duration::from_secs(2), "processes outlived scancel by 2 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = env.ok(&["sacct", "-j", &job.to_string(), "-n", "-P", "--format=State"]);
        if s.trim() == "CANCELLED" {
            break;
        }
        assert!(Instant::now() < deadline, "state: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn soak_20000_tasks_through_10_kill_9s_run_each_exactly_once() {
    // Snapshots every few thousand events, so restarts go through snapshot + tail as well.
    let mut env = Env::with_args("kill9", &["--snapshot-every", "3000"]);
    // As root, the tasks run as a project's uid of their own, as on a shared fleet.
    let (token, area) = if common::is_root() {
        env.project_with_uid("soak", 5301)
    } else {
        (std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap().trim().to_string(), env.dir.display().to_string())
    };
    let seen = std::path::Path::new(&area).join("seen");
    // Random moments, from a seed printed so a failure can be replayed.
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("soak seed {seed}");
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    // Four jobs of 5,000 tasks, each submitted between kills: every acknowledged one must
    // survive. Job k's task i appends k*5000+i.
    let mut jobs = Vec::new();
    for kill in 0..10 {
        if kill % 3 == 0 && jobs.len() < 4 {
            let k = jobs.len();
            let cmd = format!("echo $(( {k} * 5000 + $TIDEPOOL_TASK_INDEX )) >> {}", seen.display());
            let out = env.cmd(common::BIN, &["submit", "-D", &area, "--array", "0-4999", "--", "sh", "-c", &cmd]).env("TIDEPOOL_TOKEN", &token).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            jobs.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(200 + random(2500)));
        env.kill9();
        let url = env.url.trim_start_matches("http://").to_string();
        env.start(&url);
    }
    assert_eq!(jobs.len(), 4);
    let listed = env.ok(&["jobs", "--all"]);
    for job in &jobs {
        assert!(listed.lines().any(|l| l.split_whitespace().next() == Some(job)), "acknowledged job {job} is gone: {listed}");
        let wait = env.run(&["wait", job]);
        assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    }
    let (total, distinct, indices) = count_lines(&seen);
    assert_eq!(distinct, 20_000, "an index is missing");
    assert_eq!(total, 20_000, "an index ran twice");
    assert_eq!(indices.last(), Some(&19_999));
}

#[test]
fn a_million_tasks_are_accepted_as_one_row() {
    let env = Env::new("million");
    let started = Instant::now();
    let job = env.ok(&["submit", "--array", "0-999999", "--", "true"]);
    let took = started.elapsed();
    eprintln!("submit of 1,000,000 tasks took {} ms as a whole command", took.as_millis());
    let job = job.trim();
    std::thread::sleep(Duration::from_secs(2));
    let view: serde_json::Value = serde_json::from_str(&env.ok(&["show", job, "--json"])).unwrap();
    assert_eq!(view["n_tasks"], 1_000_000);
    assert!(view["counts"]["succeeded"].as_u64().unwrap() > 0, "tasks run");
    let rss = rss_mb(env.server_pid());
    eprintln!("server RSS while the million run: {rss:.1} MB");
    assert!(rss < 300.0, "server RSS {rss} MB");
    let db = std::fs::metadata(env.dir.join("data/journal.db")).unwrap().len();
    assert!(db < 4 << 20, "journal is {db} bytes");
    env.ok(&["cancel", job]);
}

#[test]
fn bad_input_gets_one_line_and_writes_nothing() {
    let env = Env::new("bad");
    let cases: &[&[&str]] = &[
        &["submit", "--bogus", "--", "true"],
        &["submit", "--cpus", "0", "--", "true"],
        &["submit", "--array", "0-1000001", "--", "true"],
        &["submit", "--"],
        &["submit", "--mem", "4Q", "--", "true"],
        &["submit", "--tier", "gold", "--", "true"],
        &["sbatch", "--cpus-per-tsk=2", "--wrap", "true"],
        &["sbatch", "--nodes=3", "--ntasks=2", "--wrap", "true"],
        &["cancel", "999"],
        &["show", "abc"],
    ];
    for args in cases {
        let out = env.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    std::fs::write(env.dir.join("typo.sh"), "#!/bin/sh\n#SBATCH --arary=1-3\ntrue\n").unwrap();
    let out = env.run(&["sbatch", "typo.sh"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--array"), "{err}");

    let mut wrong = env.cmd(BIN, &["jobs"]);
    wrong.env("TIDEPOOL_TOKEN", "wrong");
    let out = wrong.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    let out = env.cmd(BIN, &["jobs"]).env("TIDEPOOL_URL", "http://127.0.0.1:9").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    let jobs = env.ok(&["jobs", "--all", "--json"]);
    assert_eq!(jobs.trim(), "[]", "nothing was written");

    // The API answers 4xx JSON naming the field.
    let token = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    let api = |body: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("{}/api/v1/jobs", env.url))
            .args(["-d", body])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (body.to_string(), code.to_string())
    };
    for (body, field) in [
        (r#"{"command":["true"],"cpus":0}"#, "cpus"),
        (r#"{"command":[]}"#, "command"),
        (r#"{"command":["true"],"array":"0-99999999"}"#, "array"),
        (r#"{"command":["true"],"cpu":1}"#, "cpu"),
    ] {
        let (text, code) = api(body);
        assert_eq!(code, "400", "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["field"], field, "{text}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(env.ok(&["jobs", "--all", "--json"]).trim(), "[]");
}

#[test]
fn squeue_formats_and_scancel_filters_as_slurm_users_type_them() {
    let env = Env::new("slurm-filters");
    let keep = env.ok(&["submit", "-J", "keep", "--", "sleep", "60"]).trim().to_string();
    env.ok(&["submit", "-J", "drop", "--", "sleep", "60"]);
    env.eventually(20, "both to run", |e| e.ok(&["squeue", "-h", "-t", "RUNNING"]).lines().count() == 2);
    let listed = env.ok(&["squeue", "-h", "-o", "%i|%j|%T|%.4C"]);
    assert!(listed.lines().any(|l| l == format!("{keep}|keep|RUNNING|   1")), "{listed}");
    let bad = env.run(&["squeue", "-o", "%Z"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("%Z"));

    env.ok(&["scancel", "--name", "drop"]);
    env.eventually(20, "drop to end", |e| !e.ok(&["squeue", "-h", "-o", "%j"]).contains("drop"));
    assert!(env.ok(&["squeue", "-h", "-o", "%j"]).contains("keep"), "only the named job was cancelled");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    env.cmd(common::BIN, &["scancel", "-u", &user, "--state", "RUNNING"]).env("USER", &user).output().unwrap();
    env.eventually(20, "keep to end", |e| e.ok(&["squeue", "-h"]).trim().is_empty());
    let states = env.ok(&["sacct", "-n", "-P", "-j", &keep, "--format=State"]);
    assert_eq!(states.trim(), "CANCELLED");
    let other = env.cmd(common::BIN, &["scancel", "-u", "someone-else"]).env("USER", &user).output().unwrap();
    assert!(!other.status.success());

    // sacct -s picks rows by state, in Slurm's long or short names; sinfo -N -l lists nodes.
    let done = env.ok(&["submit", "--", "true"]).trim().to_string();
    assert!(env.run(&["wait", &done]).status.success());
    let cancelled = env.ok(&["sacct", "-n", "-P", "-s", "CA", "--format=JobID"]);
    assert!(cancelled.lines().any(|l| l == keep) && !cancelled.lines().any(|l| l == done), "{cancelled}");
    let completed = env.ok(&["sacct", "-n", "-P", "--state", "COMPLETED", "--format=JobID"]);
    assert_eq!(completed.trim(), done);
    assert!(!env.run(&["sacct", "-s", "XX"]).status.success());
    let nodes = env.ok(&["sinfo", "-N", "-l"]);
    let header: Vec<&str> = nodes.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NODELIST", "NODES", "PARTITION", "STATE", "CPUS", "MEMORY", "GRES", "REASON"]);
    assert!(nodes.lines().nth(1).unwrap().split_whitespace().nth(4) == Some("4"), "{nodes}");
}

#[test]
fn dependencies_of_every_slurm_kind_through_sbatch_and_submit() {
    let env = Env::new("dependencies");
    let failed = env.ok(&["submit", "--", "false"]).trim().to_string();
    assert!(!env.run(&["wait", &failed]).status.success());
    let script = env.dir.join("after-failure.sh");
    std::fs::write(&script, format!("#!/bin/sh\n#SBATCH -d afternotok:{failed} -o notok.out\necho cleanup ran\n")).unwrap();
    let cleanup = env.ok(&["sbatch", "--parsable", &script.display().to_string()]).trim().to_string();
    assert!(env.run(&["wait", &cleanup]).status.success());
    assert_eq!(std::fs::read_to_string(env.dir.join("notok.out")).unwrap(), "cleanup ran\n");
    let either = env.ok(&["submit", "-d", &format!("afterok:{failed}?afterany:{cleanup}"), "--", "true"]).trim().to_string();
    assert!(env.run(&["wait", &either]).status.success(), "'?' is satisfied by any one");

    // afterok on a failed job: it waits, saying so, unless told to go.
    let stuck = env.ok(&["submit", "-d", &format!("afterok:{failed}"), "--", "true"]).trim().to_string();
    env.eventually(10, "the reason", |e| e.ok(&["squeue", "-h", "-j", &stuck]).contains("(DependencyNeverSatisfied)"));
    let killed = env.ok(&["submit", "-d", &format!("afterok:{failed}"), "--kill-on-invalid-dep", "--", "true"]).trim().to_string();
    env.eventually(10, "the job to be cancelled", |e| e.ok(&["sacct", "-n", "-P", "-j", &killed, "--format=State"]).trim() == "CANCELLED");

    // singleton: the second of a name waits for the first.
    let first = env.ok(&["submit", "-J", "nightly", "-d", "singleton", "--", "sleep", "2"]).trim().to_string();
    let second = env.ok(&["submit", "-J", "nightly", "-d", "singleton", "--", "true"]).trim().to_string();
    env.eventually(10, "the first to run", |e| e.ok(&["squeue", "-h", "-j", &first, "-o", "%t"]).trim() == "R");
    assert!(env.ok(&["squeue", "-h", "-j", &second]).contains("(Dependency)"));
    assert!(env.run(&["wait", &second]).status.success());
    let ends: Vec<String> = [&first, &second].iter().map(|j| env.ok(&["sacct", "-n", "-P", "-j", j, "--format=Start,End"])).collect();
    assert!(ends[1].split('|').next().unwrap() >= ends[0].trim().split('|').nth(1).unwrap(), "the second started after the first ended: {ends:?}");

    for bad in ["afterok", "afterok:x", "afterok:1,afterany:2?after:3", "afterburstbuffer:1", "sometime:1", "afterok:1_2"] {
        let out = env.run(&["submit", "-d", bad, "--", "true"]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("dependency"), "{bad}: {out:?}");
    }
}

#[test]
fn tasks_see_the_slurm_variables_scripts_read() {
    let env = Env::new("slurm-env");
    let script = "echo $SLURM_CLUSTER_NAME $SLURM_PROCID $SLURM_LOCALID $SLURM_NODEID $SLURM_TASKS_PER_NODE $SLURM_JOB_CPUS_PER_NODE $SLURM_CPUS_PER_TASK $SLURM_JOB_USER $SLURM_SUBMIT_HOST";
    let job = env.cmd(common::BIN, &["submit", "-c", "2", "--", "sh", "-c", script]).env("USER", "alice").output().unwrap();
    let job = String::from_utf8(job.stdout).unwrap().trim().to_string();
    assert!(env.run(&["wait", &job]).status.success());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    // The user the task runs as (here the test's own), not what the submitter's USER said.
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string();
    assert_eq!(env.ok(&["logs", &job]).trim(), format!("tidepool 0 0 0 1 2 2 {me} {host}"));

    // --ntasks=2 --cpus-per-task=1: one allocation of two tasks, as Slurm counts them.
    let script = env.dir.join("ranks.sh");
    std::fs::write(&script, "#!/bin/sh\n#SBATCH --ntasks=2 --cpus-per-task=1 -o ranks.out\necho $SLURM_NTASKS $SLURM_CPUS_PER_TASK $SLURM_TASKS_PER_NODE $SLURM_JOB_CPUS_PER_NODE\n").unwrap();
    let job = env.ok(&["sbatch", "--parsable", &script.display().to_string()]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(env.dir.join("ranks.out")).unwrap().trim(), "2 1 2 2");
    let job = env.ok(&["submit", "-n", "2", "-c", "2", "--", "sh", "-c", "echo $SLURM_NTASKS $SLURM_CPUS_PER_TASK $SLURM_JOB_CPUS_PER_NODE"]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    assert_eq!(env.ok(&["logs", job.trim()]).trim(), "2 2 4");
}

#[test]
fn srun_runs_steps_of_the_allocations_tasks_and_scontrol_expands_host_lists() {
    let env = Env::new("srun");
    let script = "#!/bin/sh\n#SBATCH --ntasks=4 --cpus-per-task=1 -o steps.out\n\
        srun -l sh -c 'echo rank $SLURM_PROCID of $SLURM_NTASKS local $SLURM_LOCALID step $SLURM_STEP_ID' | sort\n\
        srun -n 2 sh -c 'echo two $SLURM_PROCID step $SLURM_STEP_ID' | sort\n\
        srun -n 8 true || echo refused $?\n\
        srun -n 2 -o 'rank-%t.txt' sh -c 'echo file $SLURM_PROCID'\n\
        srun -n 3 sh -c 'exit $SLURM_PROCID'; echo worst $?\n\
        scontrol show hostnames 'n[01-02],gpu7'\n";
    std::fs::write(env.dir.join("steps.sh"), script).unwrap();
    let job = env.ok(&["sbatch", "--parsable", "steps.sh"]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    let out = std::fs::read_to_string(env.dir.join("steps.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["0: rank 0 of 4 local 0 step 0", "1: rank 1 of 4 local 1 step 0", "2: rank 2 of 4 local 2 step 0", "3: rank 3 of 4 local 3 step 0"], "{out}");
    assert_eq!(&lines[4..6], ["two 0 step 1", "two 1 step 1"], "{out}");
    assert!(out.contains("More processors requested than permitted") && out.contains("refused 1"), "{out}");
    assert_eq!(std::fs::read_to_string(env.dir.join("rank-1.txt")).unwrap().trim(), "file 1");
    assert!(out.contains("task 2: Exited with exit code 2") && out.contains("worst 2"), "{out}");
    assert!(out.contains("n01\nn02\ngpu7"), "{out}");
    // Outside an allocation srun makes a job for its step, prints what it prints as it comes,
    // and exits as it did.
    let outside = env.run(&["srun", "-n", "2", "-J", "interactive", "sh", "-c", "echo rank $SLURM_PROCID of $SLURM_NTASKS $SLURM_JOB_NAME"]);
    let printed = String::from_utf8_lossy(&outside.stdout).to_string();
    assert!(outside.status.success(), "{}", String::from_utf8_lossy(&outside.stderr));
    let mut lines: Vec<&str> = printed.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["rank 0 of 2 interactive", "rank 1 of 2 interactive"], "{printed}");
    assert_eq!(env.run(&["srun", "sh", "-c", "exit 3"]).status.code(), Some(3));
    let pty = env.run(&["srun", "--pty", "bash"]);
    assert!(!pty.status.success() && String::from_utf8_lossy(&pty.stderr).trim().lines().count() == 1);
}

#[test]
fn finished_jobs_leave_memory_and_the_journal_answers_for_them_across_a_kill_9() {
    // No retention, and a snapshot every few events: jobs are forgotten at the first pass
    // after they end, and a restart goes through a snapshot that remembers it.
    let mut env = Env::with_args("forget", &["--keep-finished", "0", "--snapshot-every", "5"]);
    let ok = env.ok(&["submit", "--array", "0-2", "-o", "ok-%a.txt", "--", "sh", "-c", "echo hello $TIDEPOOL_TASK_INDEX"]);
    let bad = env.ok(&["submit", "--", "false"]);
    let (ok, bad) = (ok.trim().to_string(), bad.trim().to_string());
    assert!(env.run(&["wait", &ok]).status.success());
    assert!(!env.run(&["wait", &bad]).status.success());
    // Another pass forgets them (any submission wakes one).
    let _ = env.ok(&["submit", "--", "true"]);
    // In memory alone (nothing that left it was submitted after now).
    let listed = |e: &Env, since: &str, id: &str| e.ok(&["jobs", "--all", "--since", since]).lines().any(|l| l.split_whitespace().next() == Some(id));
    env.eventually(10, "the finished jobs to leave memory", |e| !listed(e, "now", &ok));
    assert!(listed(&env, "midnight", &ok) && listed(&env, "midnight", &bad), "jobs --all lists today's jobs that left memory too");
    let answered = |env: &Env| {
        let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &ok, "--json", "--tasks"])).unwrap();
        assert_eq!(shown["state"], "succeeded", "{shown}");
        assert_eq!(shown["counts"]["succeeded"], 3, "{shown}");
        assert_eq!(shown["tasks"][1]["exit_code"], 0, "{shown}");
        assert_eq!(env.ok(&["logs", &format!("{ok}.1")]).trim(), "hello 1", "its output, read from the node");
        let sacct = env.ok(&["sacct", "-j", &bad, "-o", "JobID,State,ExitCode", "-n", "-P"]);
        assert_eq!(sacct.trim(), format!("{bad}|FAILED|1:0"));
        let cancelled = env.run(&["cancel", &ok]);
        assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
        // sacct with no job named lists today's jobs, those that left memory among them.
        let today = env.ok(&["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State"]);
        assert!(today.lines().any(|l| l == format!("{bad}|FAILED")), "{today}");
        let first: u64 = ok.parse().unwrap();
        for raw in first..first + 3 {
            assert!(today.lines().any(|l| l == format!("{raw}|COMPLETED")), "array task {raw}: {today}");
        }
        let later = env.ok(&["sacct", "-n", "-P", "-o", "JobID", "-S", "2999-01-01"]);
        assert!(!later.lines().any(|l| l == bad), "{later}");
    };
    answered(&env);
    // Dependencies on forgotten jobs are settled from the journal.
    let after_ok = env.ok(&["submit", "--dependency", &format!("afterok:{ok}"), "--", "true"]);
    assert!(env.run(&["wait", after_ok.trim()]).status.success());
    let never = env.run(&["submit", "--dependency", &format!("afterok:{bad}"), "--", "true"]);
    assert!(!never.status.success() && String::from_utf8_lossy(&never.stderr).contains("can never be met"), "{never:?}");
    let either = env.ok(&["submit", "--dependency", &format!("afterok:{bad}?afterany:{ok}"), "--", "true"]);
    assert!(env.run(&["wait", either.trim()]).status.success());
    // kill -9 and back: nothing forgotten runs again, the journal still answers, and new ids
    // follow the last one ever given.
    let last: u64 = either.trim().parse().unwrap();
    env.kill9();
    let url = env.url.trim_start_matches("http://").to_string();
    env.start(&url);
    answered(&env);
    assert_eq!(std::fs::read_to_string(env.dir.join("ok-1.txt")).unwrap().trim(), "hello 1", "ran once, not again");
    let next: u64 = env.ok(&["submit", "--", "true"]).trim().parse().unwrap();
    assert_eq!(next, last + 1);
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &ok, "--json"])).unwrap();
    assert_eq!(shown["counts"]["succeeded"], 3, "{shown}");
}

#[test]
fn another_projects_token_reaches_no_forgotten_job_nor_array_task_id() {
    let env = Env::with_args("forget-isolation", &["--keep-finished", "0"]);
    let token = |name: &str| {
        env.ok(&["project", "create", name]);
        env.ok(&["token", "create", "--project", name]).trim().lines().last().unwrap().to_string()
    };
    let (chem, bio) = (token("chem"), token("bio"));
    let as_token = |t: &str, args: &[&str]| env.cmd(common::BIN, args).env("TIDEPOOL_TOKEN", t).output().unwrap();
    // chem's array, held by a dependency, then cancelled: it ends without running, and leaves memory.
    let blocker = String::from_utf8(as_token(&chem, &["submit", "--", "sleep", "60"]).stdout).unwrap();
    let array = String::from_utf8(as_token(&chem, &["submit", "--array", "0-3", "--dependency", &format!("afterok:{}", blocker.trim()), "--", "true"]).stdout).unwrap();
    let array: u64 = array.trim().parse().unwrap();
    assert!(as_token(&chem, &["cancel", &array.to_string()]).status.success());
    let _ = as_token(&chem, &["submit", "--", "true"]);
    env.eventually(10, "chem's array to leave memory", |e| !e.ok(&["jobs", "--all", "--since", "now"]).lines().any(|l| l.split_whitespace().next() == Some(array.to_string().as_str())));
    // chem's listing of the day has it; bio's does not.
    let listing = |token: &str| String::from_utf8(as_token(token, &["jobs", "--all"]).stdout).unwrap();
    assert!(listing(&chem).lines().any(|l| l.split_whitespace().next() == Some(array.to_string().as_str())));
    assert!(!listing(&bio).lines().any(|l| l.split_whitespace().next() == Some(array.to_string().as_str())));
    // chem still sees it; bio sees nothing of it by its id, its tasks' ids, nor in sacct.
    assert!(as_token(&chem, &["show", &array.to_string()]).status.success());
    for id in [array, array + 2] {
        for args in [vec!["show", &*id.to_string()], vec!["cancel", &*id.to_string()], vec!["logs", &*format!("{id}.0")]] {
            let out = as_token(&bio, &args.iter().map(|s| &**s).collect::<Vec<_>>());
            assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{args:?}: {out:?}");
        }
    }
    let listed = as_token(&bio, &["sacct", "-n", "-P", "-o", "JobIDRaw"]);
    assert!(listed.status.success() && String::from_utf8_lossy(&listed.stdout).trim().is_empty(), "{listed:?}");
    let mine = as_token(&chem, &["sacct", "-n", "-P", "-o", "JobIDRaw,State"]);
    assert!(String::from_utf8_lossy(&mine.stdout).lines().any(|l| l == format!("{array}|CANCELLED")), "{mine:?}");
    env.ok(&["cancel", blocker.trim()]);
}

#[test]
fn a_partition_list_runs_in_whichever_partition_can_start_it() {
    let mut env = Env::new("partitions");
    env.add_agent("gpu-node", &["--pool", "gpu", "--cpus", "2"]);
    env.eventually(20, "the gpu node to join", |e| e.ok(&["nodes"]).contains("gpu-node"));
    // The local node is full: a job that may run in either goes to the gpu partition.
    let fill = env.ok(&["submit", "-p", "local", "--array", "0-3", "--", "sleep", "30"]);
    env.eventually(20, "the local node to fill", |e| e.ok(&["squeue", "-h", "-j", fill.trim(), "-t", "R"]).lines().count() == 4);
    std::fs::write(env.dir.join("either.sh"), "#!/bin/sh\n#SBATCH -p local,gpu -o either.out\necho $SLURM_JOB_PARTITION $SLURMD_NODENAME\n").unwrap();
    let job = env.ok(&["sbatch", "--parsable", "either.sh"]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(env.dir.join("either.out")).unwrap().trim(), "gpu gpu-node");
    // Every name of the list must exist, as Slurm refuses an invalid partition.
    let bad = env.run(&["submit", "-p", "local,nope", "--", "true"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("pool 'nope' does not exist"), "{bad:?}");
    env.ok(&["cancel", fill.trim()]);
}

#[test]
fn signal_reaches_the_batch_shell_or_its_children_ahead_of_the_time_limit() {
    let env = Env::new("warn-signal");
    // B: the shell itself traps it and ends cleanly before the limit.
    std::fs::write(env.dir.join("shell.sh"), "#!/bin/bash\n#SBATCH --time=0:06 --signal=B:USR1@4 -o shell.out\ntrap 'echo shell caught USR1; exit 0' USR1\nsleep 30 & wait\n").unwrap();
    // Without B: what the script started gets it, the shell does not (it would die of it).
    std::fs::write(env.dir.join("child.sh"), "#!/bin/bash\n#SBATCH --time=0:06 --signal=USR1@4 -o child.out\nsh -c \"trap 'echo child caught USR1; exit 0' USR1; sleep 30 & wait\"\necho shell goes on\n").unwrap();
    let shell = env.ok(&["sbatch", "--parsable", "shell.sh"]);
    let child = env.ok(&["sbatch", "--parsable", "child.sh"]);
    assert!(env.run(&["wait", shell.trim()]).status.success());
    assert!(env.run(&["wait", child.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(env.dir.join("shell.out")).unwrap().trim(), "shell caught USR1");
    assert_eq!(std::fs::read_to_string(env.dir.join("child.out")).unwrap().trim(), "child caught USR1\nshell goes on");
    let bad = env.run(&["submit", "--signal", "B:NOPE@10", "--", "true"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("signal"), "{bad:?}");
}

#[test]
fn each_array_task_has_a_job_id_of_its_own_as_in_slurm() {
    let env = Env::new("array-ids");
    // Slurm's own example: `--array=1-3` submitted as job 36 runs tasks 36, 37 and 38, each
    // with SLURM_ARRAY_JOB_ID=36; `%j` names a task's own id, `%A` the array's.
    std::fs::write(env.dir.join("ids.sh"), "#!/bin/sh\n#SBATCH --array=1,3,5 -o ids_%A_%a_%j.out\necho $SLURM_JOB_ID $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID\n").unwrap();
    let first: u64 = env.ok(&["sbatch", "--parsable", "ids.sh"]).trim().parse().unwrap();
    assert!(env.run(&["wait", &first.to_string()]).status.success());
    for (pos, index) in [1u64, 3, 5].iter().enumerate() {
        let own = first + pos as u64;
        let out = std::fs::read_to_string(env.dir.join(format!("ids_{first}_{index}_{own}.out"))).unwrap();
        assert_eq!(out.trim(), format!("{own} {first} {index}"));
    }
    // The next job's id follows the array's last task's; a plain job keeps one id.
    let next: u64 = env.ok(&["submit", "--", "true"]).trim().parse().unwrap();
    assert_eq!(next, first + 3);
    // sacct of a task's own id shows that task alone; JobIDRaw is the task's own id.
    let one = env.ok(&["sacct", "-j", &(first + 1).to_string(), "-o", "JobID,JobIDRaw", "-n", "-P"]);
    assert_eq!(one.trim(), format!("{first}_3|{}", first + 1));
    // scancel of a pending task's own id cancels that task and no other.
    let blocker = env.ok(&["submit", "--", "sleep", "60"]);
    let held = env.ok(&["submit", "--array", "0-3", "--dependency", &format!("afterok:{}", blocker.trim()), "--", "true"]);
    let held: u64 = held.trim().parse().unwrap();
    env.ok(&["scancel", &(held + 2).to_string()]);
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &held.to_string(), "--json", "--tasks"])).unwrap();
    let states: Vec<&str> = shown["tasks"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "cancelled").count(), 1, "{states:?}");
    assert_eq!(shown["tasks"][2]["state"], "cancelled", "{states:?}");
    assert_eq!(shown["tasks"][2]["job_id"], held + 2);
    // An id past an array's last task is no job's.
    assert!(!env.run(&["show", &(held + 4 + 1000).to_string()]).status.success());
    env.ok(&["scancel", &held.to_string(), blocker.trim()]);
}

#[test]
fn open_mode_append_adds_to_the_output_and_truncate_starts_it_anew() {
    let env = Env::new("open-mode");
    let run = |args: &[&str]| {
        let job = env.ok(&[&["submit", "-o", "shared.out"], args].concat());
        assert!(env.run(&["wait", job.trim()]).status.success());
    };
    run(&["--", "echo", "first"]);
    run(&["--open-mode", "append", "--", "echo", "second"]);
    assert_eq!(std::fs::read_to_string(env.dir.join("shared.out")).unwrap(), "first\nsecond\n");
    let script = env.dir.join("append.sh");
    std::fs::write(&script, "#!/bin/sh\n#SBATCH --open-mode=append -o shared.out\necho third\n").unwrap();
    let job = env.ok(&["sbatch", "--parsable", &script.display().to_string()]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(env.dir.join("shared.out")).unwrap(), "first\nsecond\nthird\n");
    run(&["--", "echo", "anew"]);
    assert_eq!(std::fs::read_to_string(env.dir.join("shared.out")).unwrap(), "anew\n");
    assert!(!env.run(&["submit", "--open-mode", "sideways", "--", "true"]).status.success());
}

#[test]
fn time_limit_ends_in_timeout_after_a_polite_signal() {
    let env = Env::new("timeout");
    let job = env.ok(&["submit", "--time", "0:01", "--", "sh", "-c", "trap 'echo got TERM; exit 3' TERM; sleep 30 & wait"]);
    let job = job.trim();
    let wait = env.run(&["wait", job]);
    assert!(!wait.status.success(), "a timed-out job is not a success");
    let row = env.ok(&["sacct", "-j", job, "-n", "-P", "--format=State,ExitCode"]);
    assert_eq!(row.trim(), "TIMEOUT|3:0", "the task saw SIGTERM and ran its trap");
    assert_eq!(env.ok(&["logs", job]).trim(), "got TERM");
    // Slurm's line, which scripts and people grep for, in the task's error output.
    let err = env.ok(&["logs", job, "--stderr"]);
    assert!(err.starts_with("slurmstepd-") && err.contains(&format!(": error: *** JOB {job} ON ")) && err.trim_end().ends_with("DUE TO TIME LIMIT ***"), "{err}");
}

#[test]
fn a_task_starts_with_no_signal_blocked_or_ignored() {
    // The launcher blocks the signals it reads; what the agent's parent ignores is not passed on.
    let env = Env::new("signals");
    let job = env.ok(&["submit", "--", "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
    let job = job.trim();
    assert!(env.run(&["wait", job]).status.success());
    let status = env.ok(&["logs", job]);
    let mask = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{status}");
    // Signals 32 and 33 are the C library's own, which it always ignores across posix_spawn.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "a standard signal is ignored: {status}");
}

#[test]
fn a_cancel_reaches_tasks_started_before_a_kill_9_and_one_launcher_runs_them_all() {
    let mut env = Env::new("orphan-cancel");
    let marker = format!("sleep 30.{}", std::process::id());
    let job = env.ok(&["submit", "--array", "0-2", "--", "sh", "-c", &marker]);
    let job = job.trim().to_string();
    let sleepers = || {
        let ps = Command::new("pgrep").args(["-f", &format!("^{marker}")]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout).lines().count()
    };
    let launchers = |dir: &std::path::Path| {
        let pattern = format!("__launch {}", dir.join("data/agent/run").display());
        let ps = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout).lines().count()
    };
    env.eventually(20, "three running", |_| sleepers() == 3);
    assert_eq!(launchers(&env.dir), 1, "one launcher for the agent's three tasks");
    // The server and its agent die; the launcher and its tasks go on, as on a real node.
    env.kill9();
    assert_eq!(sleepers(), 3, "tasks outlive their agent");
    let url = env.url.trim_start_matches("http://").to_string();
    env.start(&url);
    env.ok(&["cancel", &job]);
    env.eventually(10, "the old launcher's tasks to stop", |_| sleepers() == 0);
    env.eventually(10, "the cancel recorded", |e| {
        let s = e.ok(&["sacct", "-j", &job, "-n", "-P", "--format=State"]);
        s.lines().filter(|l| l.trim() == "CANCELLED").count() == 3
    });
    env.eventually(10, "the old launcher to leave once its tasks ended", |e| launchers(&e.dir) == 0);
}

/// Peak memory in KiB of a finished one-task job, as sacct prints it.
fn peak_kib(env: &Env, job: &str) -> (String, u64) {
    let row = env.ok(&["sacct", "-j", job, "--format=State,MaxRSS", "-P", "-n"]);
    let mut fields = row.trim().split('|');
    let state = fields.next().unwrap_or("").to_string();
    let kib = fields.next().and_then(|m| m.trim_end_matches('K').parse().ok()).unwrap_or(0);
    (state, kib)
}

/// The launcher keeps an emptied task cgroup for the next task where it can (cgroup v1):
/// each task must still run under its own memory limit and report its own peak.
#[test]
fn each_task_gets_its_own_memory_limit_and_peak_in_turn() {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
    if !v1 && !v2 {
        eprintln!("skipped: no memory cgroup here, limits are not enforced");
        return;
    }
    let env = Env::new("cgroup-turns");
    let run = |args: &[&str]| {
        let job = env.ok(args).trim().to_string();
        let _ = env.run(&["wait", &job]);
        peak_kib(&env, &job)
    };
    let alloc = |mib: u32| format!("b = bytearray({mib} << 20)");
    let (state, small_limit_peak) = run(&["submit", "--mem", "64M", "--", "python3", "-c", &alloc(40)]);
    assert_eq!(state, "COMPLETED", "40 MiB under a 64 MiB limit");
    assert!(small_limit_peak > 40 * 1024, "its peak counts its 40 MiB: {small_limit_peak} KiB");
    let (state, big_peak) = run(&["submit", "--", "python3", "-c", &alloc(160)]);
    assert_eq!(state, "COMPLETED", "no limit now: the last task's 64 MiB must not stay");
    assert!(big_peak > 160 * 1024, "{big_peak} KiB");
    let (state, _) = run(&["submit", "--mem", "48M", "--", "python3", "-c", &alloc(160)]);
    assert_ne!(state, "COMPLETED", "160 MiB under a 48 MiB limit must not succeed");
    let (state, tiny_peak) = run(&["submit", "--", "true"]);
    assert_eq!(state, "COMPLETED");
    assert!(tiny_peak < 32 * 1024, "`true` reports its own peak, not an earlier task's 160 MiB: {tiny_peak} KiB");
}

#[test]
fn bench_batch_prints_ours_beside_the_floor() {
    // Small and without Slurm or HyperQueue, which the full run adds (and CI's Slurm serves the
    // Slurm-site tests): the command and its figures, not their size.
    let out = common::bench()
        .args(["batch", "--json", "--tasks", "2000", "--no-slurm", "--no-hq"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["submit_100k_ms", "submit_1m_ms", "drain_100k_s", "tasks_per_s", "server_rss_mb", "floor_tasks_per_s", "tasks_per_s_vs_floor"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    let (before, after) = (v["floor_tasks_per_s_before"].as_f64().unwrap(), v["floor_tasks_per_s_after"].as_f64().unwrap());
    assert!((v["floor_tasks_per_s"].as_f64().unwrap() - (before + after) / 2.0).abs() < 1e-6);
    assert_eq!(v["tasks"], 2000);
}

#[test]
fn sbatch_test_only_says_where_and_when_and_submits_nothing() {
    let env = Env::new("test-only");
    let before = env.ok(&["jobs", "--all"]);
    let out = env.run(&["sbatch", "--test-only", "-n", "2", "--wrap", "true"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    // Slurm's words: "sbatch: Job N to start at TIME using 2 processors on nodes NODE in partition P".
    let words: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(&words[..2], ["sbatch:", "Job"], "{said}");
    assert!(words[3..6] == ["to", "start", "at"] && words[6].len() == 19 && words[7..10] == ["using", "2", "processors"], "{said}");
    assert!(said.trim_end().ends_with("in partition local"), "{said}");
    assert_eq!(env.ok(&["jobs", "--all"]), before, "nothing was submitted");
    // What could never run is refused as a submission would be.
    let out = env.run(&["sbatch", "--test-only", "-c", "64", "--wrap", "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).lines().count() == 1);
    // Behind a job holding every core until its limit, it would start when that limit is up.
    let busy = env.ok(&["submit", "-c", "4", "-t", "10", "--", "sleep", "600"]);
    env.eventually(20, "the job to start", |e| e.ok(&["squeue", "-h", "-j", busy.trim()]).contains(" R "));
    let out = env.run(&["sbatch", "--test-only", "-c", "2", "--wrap", "true"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(said.contains("(it would wait:") && !said.contains("an unknown time"), "{said}");
    env.ok(&["cancel", busy.trim()]);
}

#[test]
fn scancel_signal_reaches_what_a_script_started_or_its_shell_and_ends_nothing() {
    let env = Env::new("scancel-signal");
    // The child traps USR1 and ends; the shell (which would die of an untrapped USR1) waits.
    let script = "#!/bin/sh\n#SBATCH -o sig.out\n\
        trap 'echo shell got USR2' USR2\n\
        sh -c 'trap \"echo child got USR1; exit 0\" USR1; echo ready > ready.txt; while true; do sleep 0.1; done' &\n\
        while [ ! -e done.txt ]; do wait; sleep 0.1; done\n\
        echo shell ends\n";
    std::fs::write(env.dir.join("sig.sh"), script).unwrap();
    let job = env.ok(&["sbatch", "--parsable", "sig.sh"]);
    let job = job.trim();
    env.eventually(20, "the child to start", |e| e.dir.join("ready.txt").exists());
    // Another project's token finds no such job to signal, and nothing is sent.
    env.ok(&["project", "create", "bio"]);
    let bio = env.ok(&["token", "create", "--project", "bio"]).trim().lines().last().unwrap().to_string();
    let bio_auth = format!("Bearer {bio}");
    let (status, _, _) = common::http(&env.url, "POST", &format!("/api/v1/jobs/{job}/cancel"), &[("authorization", &bio_auth), ("content-type", "application/json")], r#"{"signal":"USR1"}"#);
    assert_eq!(status, 404);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!std::fs::read_to_string(env.dir.join("sig.out")).unwrap_or_default().contains("child got USR1"), "bio's signal reached chem's task");
    assert!(env.run(&["scancel", "--signal=USR1", job]).status.success());
    env.eventually(20, "the child to get USR1", |e| std::fs::read_to_string(e.dir.join("sig.out")).unwrap_or_default().contains("child got USR1"));
    assert!(env.run(&["scancel", "-b", "-s", "SIGUSR2", job]).status.success());
    env.eventually(20, "the shell to get USR2", |e| std::fs::read_to_string(e.dir.join("sig.out")).unwrap_or_default().contains("shell got USR2"));
    std::fs::write(env.dir.join("done.txt"), "").unwrap();
    assert!(env.run(&["wait", job]).status.success(), "a signal cancels nothing");
    let out = std::fs::read_to_string(env.dir.join("sig.out")).unwrap();
    assert!(out.contains("shell ends"), "{out}");
    let bad = env.run(&["scancel", "--signal=NOPE", job]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("Invalid job signal"));
}

