//! A task belongs to its project: a project created with a uid runs its tasks as that uid,
//! opens the output files it names as that uid, and gains nothing from a setuid program.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn token_for(env: &Env, project: &str) -> String {
    env.ok(&["token", "create", "--project", project]).trim().lines().last().unwrap().to_string()
}

/// Submits as `token` and waits; (exit status of the job's wait, its log).
fn run_as(env: &Env, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = env.cmd(common::BIN, &[&["submit"], args].concat()).env("TIDEPOOL_TOKEN", token).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let waited = env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", token).output().unwrap();
    let shown = env.cmd(common::BIN, &["show", &job, "--json"]).env("TIDEPOOL_TOKEN", token).output().unwrap();
    let logs = env.cmd(common::BIN, &["logs", &job]).env("TIDEPOOL_TOKEN", token).output().unwrap();
    (waited.status.success(), String::from_utf8_lossy(&logs.stdout).to_string(), String::from_utf8_lossy(&shown.stdout).to_string())
}

#[test]
fn a_project_with_a_uid_runs_its_tasks_as_that_uid_and_opens_its_files_as_it() {
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running tasks as another identity needs the agent to be root");
        return;
    }
    let env = Env::new("identities");
    let bad = env.run(&["project", "create", "rooty", "--uid", "0"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("uid"), "uid 0 refused");
    env.ok(&["project", "create", "chem", "--uid", "5001", "--gid", "5002", "--groups", "5003,5004"]);
    env.ok(&["project", "create", "bio", "--uid", "6001"]);
    let (chem, bio) = (token_for(&env, "chem"), token_for(&env, "bio"));
    // Only the admin gives identities: a project's token can make no project, let alone one
    // that runs as another project's uid.
    let taken = env.cmd(common::BIN, &["project", "create", "evil", "--uid", "6001"]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    assert!(!taken.status.success(), "a project token created a project with bio's uid");
    assert!(!env.ok(&["project", "list"]).contains("evil"));

    // A directory each project may write in, as a site would give them.
    let area = |name: &str, uid: u32| {
        let dir = env.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir.display().to_string()
    };
    let (chem_dir, bio_dir) = (area("chem-area", 5001), area("bio-area", 6001));

    let (ok, log, _) = run_as(&env, &chem, &["-D", &chem_dir, "-o", "ids.out", "--", "sh", "-c", "id -u; id -g; id -G"]);
    assert!(ok);
    assert_eq!(log.split_whitespace().collect::<Vec<_>>(), ["5001", "5002", "5002", "5003", "5004"], "{log}");
    let written = std::fs::metadata(format!("{chem_dir}/ids.out")).unwrap();
    assert_eq!((written.uid(), written.gid()), (5001, 5002), "the output file is the task's, not root's");

    let (ok, log, _) = run_as(&env, &bio, &["-D", &bio_dir, "-o", "ids.out", "--", "id", "-u"]);
    assert!(ok);
    assert_eq!(log.trim(), "6001");

    // An output file where the identity may not write: the task fails at start, naming it.
    let (ok, _, shown) = run_as(&env, &chem, &["-D", &chem_dir, "-o", &format!("{bio_dir}/stolen.out"), "--", "true"]);
    assert!(!ok, "chem wrote into bio's area");
    assert!(!std::path::Path::new(&format!("{bio_dir}/stolen.out")).exists());
    assert!(shown.contains("\"failed\""), "{shown}");
    let (ok, _, _) = run_as(&env, &chem, &["-D", &chem_dir, "-o", "/etc/tidepool-escape.out", "--", "true"]);
    assert!(!ok && !std::path::Path::new("/etc/tidepool-escape.out").exists(), "chem wrote into /etc");

    // The data directory (tokens, journal, secrets) is root's and owner-only.
    let admin_token = env.dir.join("data/admin.token").display().to_string();
    let (ok, log, _) = run_as(&env, &chem, &["-D", &chem_dir, "-o", "peek.out", "--", "sh", "-c", &format!("cat {admin_token} || echo refused")]);
    assert!(ok);
    assert!(log.contains("Permission denied") && log.trim_end().ends_with("refused") && !log.contains("tpa_"), "a project's task read the admin token: {log}");

    // A setuid-root program gains the task nothing.
    let setuid_id = env.dir.join("setuid-id");
    std::fs::copy("/usr/bin/id", &setuid_id).unwrap();
    std::fs::set_permissions(&setuid_id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (ok, log, _) = run_as(&env, &chem, &["-D", &chem_dir, "-o", "setuid.out", "--", &setuid_id.display().to_string(), "-u"]);
    assert!(ok);
    assert_eq!(log.trim(), "5001", "a setuid-root binary ran as root");

    // A batch script runs as the identity too.
    let script = "#!/bin/sh\n#SBATCH -o script.out\nid -u\n";
    let path = env.dir.join(format!("{}/job.sh", chem_dir));
    std::fs::write(&path, script).unwrap();
    let out = env.cmd(common::BIN, &["sbatch", "--parsable", "-D", &chem_dir, &path.display().to_string()]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    assert_eq!(std::fs::read_to_string(format!("{chem_dir}/script.out")).unwrap().trim(), "5001");
}

#[test]
fn a_project_runs_only_on_nodes_that_can_give_it_its_identity_and_squeue_says_why() {
    if !common::is_root() {
        eprintln!("skipped: running tasks as another identity needs the agent to be root");
        return;
    }
    let mut env = Env::new("identity-nodes");
    // A second node whose agent is not root: it can run tasks only as its own user.
    env.add_agent_as("plain", 5999, &["--cpus", "2", "--feature", "plain"]);
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let submit = |token: &str, args: &[&str]| -> String {
        let out = env.cmd(common::BIN, &[&["submit"], args].concat()).env("TIDEPOOL_TOKEN", token).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let squeue = |job: &str| env.ok(&["squeue", "-h", "-j", job]);

    // chem's work pinned to the node that cannot become uid 5001 waits there, saying why.
    let pinned = submit(&chem, &["-D", &chem_area, "--constraint", "plain", "--", "true"]);
    env.eventually(10, "the pinned job's reason", |_| squeue(&pinned).contains("(ProjectIdentity)"));
    // Spread over both nodes, every task lands where it can be uid 5001.
    let spread = submit(&chem, &["-D", &chem_area, "--array", "0-7", "-o", "ids-%a.out", "--", "id", "-u"]);
    assert!(env.cmd(common::BIN, &["wait", &spread]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &spread, "--tasks", "--json"])).unwrap();
    let tasks = shown["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 8);
    assert!(tasks.iter().all(|t| t["node"] != "plain"), "a chem task ran on the node that cannot switch users: {shown}");
    for i in 0..8 {
        assert_eq!(std::fs::read_to_string(format!("{chem_area}/ids-{i}.out")).unwrap().trim(), "5001");
    }
    assert!(squeue(&pinned).contains("(ProjectIdentity)"), "still waiting, still saying why");

    // A project with no identity of its own runs nowhere.
    env.ok(&["project", "create", "bare"]);
    let bare = env.ok(&["token", "create", "--project", "bare"]).trim().lines().last().unwrap().to_string();
    let waiting = submit(&bare, &["-D", "/tmp", "--", "true"]);
    env.eventually(10, "the bare project's reason", |_| squeue(&waiting).contains("(ProjectIdentity)"));
    let why: serde_json::Value = serde_json::from_str(&env.ok(&["show", &waiting, "--json"])).unwrap();
    assert_eq!(why["pending_code"], "ProjectIdentity", "{why}");
    assert!(why["pending_reason"].as_str().unwrap().contains("--uid"), "{why}");

    // The operator's own work on the plain node runs as that agent's user, never root.
    let out_dir = env.dir.join("plain-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(5999), Some(5999)).unwrap();
    let out_dir = out_dir.display().to_string();
    let operator = env.ok(&["submit", "-D", &out_dir, "--constraint", "plain", "-o", "op.out", "--", "id", "-u"]);
    assert!(env.run(&["wait", operator.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(format!("{out_dir}/op.out")).unwrap().trim(), "5999");
}
