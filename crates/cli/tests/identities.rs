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
    // A user name is looked up where the command runs, with its primary group.
    env.ok(&["project", "create", "named", "--uid", "daemon"]);
    let listed = env.ok(&["project", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("named") && l.ends_with("uid 1 gid 1")), "{listed}");
    let unknown = env.run(&["project", "create", "ghost", "--uid", "no-such-user-anywhere"]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("--uid: no user"), "{unknown:?}");
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

    // Operators see it: what each node can run tasks as, and where each project's run.
    let table = env.ok(&["nodes", "--identities"]);
    let row = |name: &str| table.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{table}")).to_string();
    assert!(row("plain").contains(" no ") && row("plain").contains("uid 5999"), "{table}");
    assert!(row("chem").contains("uid 5001 gid 5001") && !row("chem").contains("plain"), "{table}");
    assert!(row("bare").contains("no identity"), "{table}");
    let listed = env.ok(&["project", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("chem") && l.ends_with("uid 5001 gid 5001")), "{listed}");

    // The operator's own work on the plain node runs as that agent's user, never root.
    let out_dir = env.dir.join("plain-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(5999), Some(5999)).unwrap();
    let out_dir = out_dir.display().to_string();
    let operator = env.ok(&["submit", "-D", &out_dir, "--constraint", "plain", "-o", "op.out", "--", "id", "-u"]);
    assert!(env.run(&["wait", operator.trim()]).status.success());
    assert_eq!(std::fs::read_to_string(format!("{out_dir}/op.out")).unwrap().trim(), "5999");
}

/// Runs `script` as a chem task in chem's area and waits; its output, one line per attempt.
fn chem_runs(env: &Env, chem: &str, area: &str, script: &str) -> String {
    let (ok, log, shown) = run_as(env, chem, &["-D", area, "-o", "attack.out", "--", "sh", "-c", script]);
    assert!(ok, "the attack script itself failed: {shown}");
    log
}

#[test]
fn a_project_task_reaches_nothing_of_another_project_nor_of_tidepool() {
    if !common::is_root() {
        eprintln!("skipped: running tasks as another identity needs the agent to be root");
        return;
    }
    let mut env = Env::new("identity-attack");
    env.add_agent("second", &["--cpus", "2"]);
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let (bio, bio_area) = env.project_with_uid("bio", 6001);
    let data = env.dir.join("data").display().to_string();

    // bio's work: an output of its own, a log Tidepool keeps, a secret, and a task still
    // running with that secret in its environment.
    let (ok, _, _) = run_as(&env, &bio, &["-D", &bio_area, "-o", "result.txt", "--", "echo", "BIO-RESULT"]);
    assert!(ok);
    let logged = env.cmd(common::BIN, &["submit", "-D", &bio_area, "--", "echo", "BIO-LOG"]).env("TIDEPOOL_TOKEN", &bio).output().unwrap();
    let logged = String::from_utf8(logged.stdout).unwrap().trim().to_string();
    assert!(env.cmd(common::BIN, &["wait", &logged]).env("TIDEPOOL_TOKEN", &bio).status().unwrap().success());
    let bio_log = format!("{data}/logs/{logged}/0.out");
    assert_eq!(std::fs::read_to_string(&bio_log).unwrap().trim(), "BIO-LOG", "where Tidepool keeps a log");
    let running = env
        .cmd(common::BIN, &["submit", "-D", &bio_area, "-o", "pid", "--secret-env", "API_KEY=BIO-SECRET-VALUE", "--", "sh", "-c", "echo $$; exec sleep 60"])
        .env("TIDEPOOL_TOKEN", &bio)
        .output()
        .unwrap();
    let running = String::from_utf8(running.stdout).unwrap().trim().to_string();
    let pid_file = format!("{bio_area}/pid");
    env.eventually(20, "bio's task to run", |_| std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty()));
    let bio_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let secret_file = format!("{data}/secrets/{running}.json");
    assert!(std::fs::read_to_string(&secret_file).unwrap().contains("BIO-SECRET-VALUE"), "the secret is on disk while its job runs");

    // Everything chem's task must not read, by absolute path, by a path relative to its own
    // directory, and through a symlink it makes there.
    let to_read = [
        ("the output of bio", format!("{bio_area}/result.txt")),
        ("the log of bio", bio_log.clone()),
        ("the secret file of bio", secret_file.clone()),
        ("the task environment of bio", format!("/proc/{bio_pid}/environ")),
        ("the admin token", format!("{data}/admin.token")),
        ("the join token", format!("{data}/join.token")),
        ("the journal", format!("{data}/journal.db")),
    ];
    let to_write = [
        ("the directory of bio", format!("{bio_area}/planted")),
        ("/etc", "/etc/tidepool-planted".to_string()),
        ("the data directory", format!("{data}/planted")),
    ];
    let relative = |path: &str| -> String {
        // From chem's area, one level under the test's directory.
        match path.strip_prefix(&format!("{}/", env.dir.display())) {
            Some(rest) => format!("../{rest}"),
            None => format!("../../../../../../../..{path}"),
        }
    };
    let mut script = String::new();
    for (i, (what, path)) in to_read.iter().enumerate() {
        for (how, target) in [("absolute", path.clone()), ("relative", relative(path)), ("symlink", format!("link-r{i}"))] {
            if how == "symlink" {
                script += &format!("ln -sf '{path}' link-r{i}; ");
            }
            script += &format!("if out=$(cat '{target}' 2>&1); then echo 'READ {what} {how}: '\"$out\"; else echo 'refused {what} {how}: '\"$out\"; fi; ");
        }
    }
    for (i, (what, path)) in to_write.iter().enumerate() {
        for (how, target) in [("absolute", path.clone()), ("relative", relative(path)), ("symlink", format!("link-w{i}"))] {
            if how == "symlink" {
                script += &format!("ln -sf '{path}' link-w{i}; ");
            }
            script += &format!("if out=$( (echo planted > '{target}') 2>&1); then echo 'WROTE {what} {how}'; else echo 'refused {what} {how}: '\"$out\"; fi; ");
        }
    }
    let log = chem_runs(&env, &chem, &chem_area, &script);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), (to_read.len() + to_write.len()) * 3, "one line per attempt:\n{log}");
    for line in &lines {
        assert!(line.starts_with("refused "), "chem got through: {line}\n{log}");
        // Each refusal is the kernel's, for want of permission: not a missing file or a typo.
        assert!(line.contains("Permission denied"), "refused for another reason: {line}");
    }
    for secret in ["BIO-RESULT", "BIO-LOG", "BIO-SECRET-VALUE", "tpa_", "tpj_", "SQLite format"] {
        assert!(!log.contains(secret), "{secret} reached chem:\n{log}");
    }
    for (_, path) in &to_write {
        assert!(!std::path::Path::new(path).exists(), "{path} was written");
    }

    // Through Tidepool itself: output files and working directories in bio's directory, by
    // absolute path, relative path, a symlink, and a job name with '..' in an output pattern.
    std::os::unix::fs::symlink(format!("{bio_area}/result.txt"), format!("{chem_area}/aimed.out")).unwrap();
    let bio_stolen = format!("{bio_area}/stolen.out");
    let chem_workdir_out = format!("{chem_area}/workdir.out");
    let attempts: [(&str, Vec<&str>, &str); 5] = [
        ("an absolute output", vec!["-o", &bio_stolen], "Permission denied"),
        ("a relative output", vec!["-o", "../bio-area/stolen.out"], "Permission denied"),
        ("a symlinked output", vec!["-o", "aimed.out"], "symbolic link"),
        ("a job name with ..", vec!["-J", "../bio-area/victim", "-o", "%x.out"], "Permission denied"),
        ("bio's directory as workdir", vec!["-D", &bio_area, "-o", &chem_workdir_out], "enter"),
    ];
    for (what, args, why) in attempts {
        let workdir: &[&str] = if args.contains(&"-D") { &[] } else { &["-D", &chem_area] };
        let (ok, _, shown) = run_as(&env, &chem, &[workdir, &args, &["--", "echo", "CHEM-WAS-HERE"]].concat());
        assert!(!ok, "{what}: the task ran");
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", &shown_id(&shown), "--tasks", "--json"])).unwrap();
        let message = v["tasks"][0]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(why) && message.contains("5001"), "{what}: {message}\n{v}");
    }
    assert_eq!(std::fs::read_to_string(format!("{bio_area}/result.txt")).unwrap().trim(), "BIO-RESULT", "bio's output untouched");
    for name in ["stolen.out", "victim.out"] {
        assert!(!std::path::Path::new(&format!("{bio_area}/{name}")).exists(), "{name} was written in bio's directory");
    }
    env.ok(&["cancel", &running]);
}

fn shown_id(shown: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(shown).unwrap();
    v["id"].to_string()
}
