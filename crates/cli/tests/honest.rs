//! Honest answers: cancelled work says CANCELLED, hidden and ended jobs say so, every Slurm
//! command has its --help, and numbers out of any node's reach are refused naming the field.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::process::Command;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn cancelled_work_is_cancelled_and_ended_or_hidden_jobs_say_so() {
    let env = Env::new("honest");
    let marker = format!("sleep 300.{}", std::process::id());
    let job = env.ok(&["submit", "--array", "0-19", "--", "sh", "-c", &marker]);
    let job = job.trim();
    env.ok(&["cancel", job]);
    let _ = env.run(&["wait", job]);
    let listed = env.ok(&["jobs", "--all"]);
    let header = listed.lines().next().unwrap();
    let row = listed.lines().find(|l| l.split_whitespace().next() == Some(job)).unwrap();
    let cell = |name: &str| {
        let at = header.split_whitespace().position(|h| h == name).unwrap_or_else(|| panic!("no {name} column: {header}"));
        row.split_whitespace().nth(at).unwrap().to_string()
    };
    assert_eq!((cell("STATE").to_uppercase().as_str(), cell("CANCELLED").as_str(), cell("FAILED").as_str()), ("CANCELLED", "20", "0"), "{listed}");

    let active = env.run(&["jobs"]);
    assert!(!String::from_utf8_lossy(&active.stdout).lines().any(|l| l.split_whitespace().next() == Some(job)));
    assert!(stderr(&active).contains("1 finished job not shown"), "{}", stderr(&active));

    let again = env.run(&["cancel", job]);
    assert!(again.status.success());
    assert!(stderr(&again).contains("had already ended"), "{}", stderr(&again));
    let task = env.run(&["cancel", &format!("{job}.3")]);
    assert!(task.status.success() && stderr(&task).contains("task") && stderr(&task).contains("had already ended"), "{}", stderr(&task));
}

#[test]
fn every_slurm_command_has_its_help_and_tidepool_lists_them() {
    let scratch = common::Scratch::new("help");
    let top = Command::new(common::BIN).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    for command in ["sbatch", "squeue", "scancel", "sacct", "sinfo"] {
        assert!(top.contains(command), "tidepool --help does not list {command}: {top}");
        let link = scratch.join(command);
        std::os::unix::fs::symlink(common::BIN, &link).unwrap();
        for out in [Command::new(&link).arg("--help").output().unwrap(), Command::new(common::BIN).args([command, "--help"]).output().unwrap()] {
            assert!(out.status.success(), "{command} --help: {}", stderr(&out));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.starts_with(&format!("Usage: {command}")), "{command} --help: {text}");
        }
    }
    let sbatch = Command::new(common::BIN).args(["sbatch", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sbatch.stdout).contains("--array"));
}

/// The status and body of a submission posted as JSON.
fn post_job(env: &Env, body: &serde_json::Value) -> (String, serde_json::Value) {
    let token = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", token.trim()), "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg("@-")
        .arg(format!("{}/api/v1/jobs", env.url))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn numbers_beyond_any_node_are_refused_naming_the_field() {
    let env = Env::new("bounds");
    let cases: [(&[&str], &str); 6] = [
        (&["--mem", "99999999999999999999T"], "mem"),
        (&["--time", "2562047788015215:00:00"], "time"),
        (&["--cpus", "4294967295"], "cpus"),
        (&["--nodes", "100000"], "nodes"),
        (&["--gpus", "100000"], "gpus"),
        // Within the bounds, but beyond every node this server has known (4 cores).
        (&["--cpus", "64"], "cpus"),
    ];
    for (flags, field) in cases {
        let args = [&["submit"][..], flags, &["--", "true"]].concat();
        let out = env.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flags:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{flags:?}: {err}");
        assert!(err.contains(field), "{flags:?} does not name {field}: {err}");
    }
    // An environment too big to exec (each variable under the kernel's own cap, 1.2 MB in all).
    let mut big = env.cmd(common::BIN, &["submit", "--", "true"]);
    for i in 0..10 {
        big.env(format!("BIG{i}"), "x".repeat(120_000));
    }
    let out = big.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a 1.2 MB environment was accepted");
    assert!(stderr(&out).contains("env"), "{}", stderr(&out));
    let too_big = env.run(&["submit", "--cpus", "64", "--", "true"]);
    assert!(stderr(&too_big).contains("Requested node configuration is not available"), "{}", stderr(&too_big));

    // Through the API as JSON: a 400 naming the field.
    let (code, body) = post_job(&env, &serde_json::json!({"command": ["true"], "cpus": 4294967295u64}));
    assert_eq!(code, "400", "{body}");
    assert_eq!(body["field"], "cpus", "{body}");
    let (code, body) = post_job(&env, &serde_json::json!({"command": ["true"], "env": {"BIG": "x".repeat(1_900_000)}}));
    assert_eq!(code, "400", "{body}");
    assert_eq!(body["field"], "env", "{body}");
    assert_eq!(env.ok(&["jobs", "--all", "--json"]).trim(), "[]", "nothing half-written");
}
