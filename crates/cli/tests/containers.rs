//! Tasks in an OCI image: a local registry (Debian's docker-registry) on loopback, a small
//! image built here from busybox-static with umoci and pushed with skopeo (the helpers of
//! `tidepool-bench containers`), and a 1,000-task array run in it across two agents, one starting containers with crun
//! (where installed) and the other with runc.
//! `.ci/run` installs the tools and sets TIDEPOOL_TEST_CONTAINERS=1; elsewhere the tests say
//! they are skipped.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pids_of, Env};
use tidepool_bench::containers::{missing_tools, push_image, push_image_as, start_registry, start_registry_with};

/// Whether this machine is to run the container tests: an error when CI asked for them and a
/// tool is missing, a skip elsewhere.
fn containers_here() -> bool {
    let wanted = std::env::var("TIDEPOOL_TEST_CONTAINERS").is_ok_and(|v| v == "1");
    let missing = missing_tools();
    if !wanted && (!missing.is_empty() || !common::is_root()) {
        eprintln!("skipped: needs root and {missing:?} (set TIDEPOOL_TEST_CONTAINERS=1 to make this a failure)");
        return false;
    }
    assert!(missing.is_empty() && common::is_root(), "TIDEPOOL_TEST_CONTAINERS=1 but missing {missing:?} or not root");
    true
}

#[test]
fn a_thousand_tasks_run_in_an_image_pulled_once_per_node_as_their_project() {
    if !containers_here() {
        return;
    }
    let mut env = Env::new("containers");
    let registry = start_registry(&env.dir).unwrap();
    let image = push_image(&env.dir, &registry.address, "busybox", 0).unwrap();
    // The first node starts containers with its default runtime (crun where installed), the
    // second with runc.
    let token = std::fs::read_to_string(env.dir.join("data/join.token")).unwrap();
    let mut runc_agent = std::process::Command::new(common::BIN);
    runc_agent.args(["agent", "--server", &env.url]).env("TIDEPOOL_OCI_RUNTIME", "runc");
    env.add_agent_by("second", runc_agent, token.trim(), &["--cpus", "2"]);
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let (bio, bio_area) = env.project_with_uid("bio", 6001);
    std::fs::write(format!("{chem_area}/chem-only.txt"), "CHEM").unwrap();
    std::os::unix::fs::chown(format!("{chem_area}/chem-only.txt"), Some(5001), Some(5001)).unwrap();

    let script = "id -u; df -k /dev/shm | tail -1; cat chem-only.txt";
    let job = env.submit_as(&chem, &chem_area, &["--image", &image, "--shm-size", "256M", "--array", "0-999", "-o", "out-%a.txt", "--", "sh", "-c", script]);
    let waited = env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &job, "--json", "--tasks"])).unwrap();
    let failed = shown["tasks"].as_array().unwrap().iter().find(|t| t["state"] != "succeeded").cloned().unwrap_or_default();
    let failed_output = std::fs::read_to_string(format!("{chem_area}/out-{}.txt", failed["index"])).unwrap_or_default();
    assert!(waited.status.success(), "{}\n{failed}\n{failed_output}", String::from_utf8_lossy(&waited.stderr));
    assert_eq!(shown["counts"]["succeeded"], 1000);
    let nodes: std::collections::BTreeSet<String> = shown["tasks"].as_array().unwrap().iter().map(|t| t["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), 2, "the array ran across both agents: {nodes:?}");
    for i in [0, 1, 499, 999] {
        let out = std::fs::read_to_string(format!("{chem_area}/out-{i}.txt")).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "5001", "the task ran as its project: {out}");
        assert_eq!(lines[1].split_whitespace().nth(1), Some("262144"), "/dev/shm had the size asked: {out}");
        assert_eq!(lines[2], "CHEM");
    }
    // Each node pulled the image's layer once, however many of its tasks started at once.
    let log = std::fs::read_to_string(&registry.log).unwrap();
    let layer_gets = log.lines().filter(|l| l.contains("GET /v2/tidepool-bench/busybox/blobs/") && l.contains("\" 200 ") && !l.contains("HEAD")).count();
    assert_eq!(layer_gets, 2 * 2, "a config and a layer per node, once each:\n{}", log.lines().filter(|l| l.contains("GET /v2/")).collect::<Vec<_>>().join("\n"));

    // Each node holds the image once, and says so to the admin alone.
    env.eventually(10, "both nodes to report the image", |e| e.ok(&["images"]).matches("tidepool-bench/busybox:1").count() == 2);
    let listed = env.ok(&["images", "second"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let as_chem = env.cmd(common::BIN, &["images"]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    assert!(!String::from_utf8_lossy(&as_chem.stdout).contains("busybox"), "a project sees which images nodes hold");

    // bio's container sees nothing of chem's: not its directory, not its file.
    let peek = format!("ls {chem_area} 2>&1; cat {chem_area}/chem-only.txt 2>&1; ls /tmp; echo done");
    let other = env.submit_as(&bio, &bio_area, &["--image", &image, "-o", "peek.txt", "--", "sh", "-c", &peek]);
    assert!(env.cmd(common::BIN, &["wait", &other]).env("TIDEPOOL_TOKEN", &bio).status().unwrap().success());
    let seen = std::fs::read_to_string(format!("{bio_area}/peek.txt")).unwrap();
    assert!(!seen.contains("CHEM") && seen.contains("chem-area: No such file") && seen.trim_end().ends_with("done"), "{seen}");

    // Nor can chem bind bio's files in: the runtime binds as root, so each source is reached as
    // the task's identity first. bio's results are world-readable, but in bio's 0700 directory.
    let results = format!("{bio_area}/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(format!("{results}/r.txt"), "BIO-RESULT").unwrap();
    let stolen = env.submit_as(&chem, &chem_area, &["--image", &image, "--container-mounts", &format!("{results}:/stolen:ro"), "-o", "stolen.txt", "--", "cat", "/stolen/r.txt"]);
    assert!(!env.cmd(common::BIN, &["wait", &stolen]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    let why: serde_json::Value = serde_json::from_str(&env.ok(&["show", &stolen, "--json", "--tasks"])).unwrap();
    let message = why["tasks"][0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("cannot bind") && message.contains("as uid 5001") && message.contains("Permission denied"), "{why}");
    assert!(!std::fs::read_to_string(format!("{chem_area}/stolen.txt")).unwrap_or_default().contains("BIO-RESULT"));

    // Variants by CPU feature: the first whose feature the node has runs there (every node
    // has its architecture as a feature), else the generic one; show says which ran.
    let absent = format!("{}/tidepool-bench/absent:1", registry.address);
    let arch = std::env::consts::ARCH;
    for (variants, expected) in [
        (format!("{arch}={image},generic={absent}"), image.clone()),
        (format!("no-such-cpu-feature={absent},generic={image}"), image.clone()),
    ] {
        let job = env.submit_as(&chem, &chem_area, &["--image", &variants, "-o", "variant.txt", "--", "true"]);
        assert!(env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success(), "{variants}");
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", &job, "--json", "--tasks"])).unwrap();
        assert_eq!(v["tasks"][0]["image"], expected.as_str(), "{variants}: {v}");
    }
    let no_fallback = env.cmd(common::BIN, &["submit", "--image", &format!("{arch}={image}"), "--", "true"]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    assert!(!no_fallback.status.success() && String::from_utf8_lossy(&no_fallback.stderr).contains("generic=REF"));

    // --network none: loopback alone; --container-env PATH: the submitted PATH over the image's.
    let isolated = env.submit_as(&chem, &chem_area, &["--image", &image, "--network", "none", "-o", "net.txt", "--", "ls", "/sys/class/net"]);
    assert!(env.cmd(common::BIN, &["wait", &isolated]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    assert_eq!(std::fs::read_to_string(format!("{chem_area}/net.txt")).unwrap().split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let path_wins = env
        .cmd(common::BIN, &["submit", "-D", &chem_area, "--image", &image, "--container-env", "PATH", "-o", "path.txt", "--", "/bin/sh", "-c", "echo $PATH"])
        .env("TIDEPOOL_TOKEN", &chem)
        .env("PATH", "/bin:/from/the/host")
        .output()
        .unwrap();
    let path_wins = String::from_utf8(path_wins.stdout).unwrap().trim().to_string();
    assert!(env.cmd(common::BIN, &["wait", &path_wins]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    assert_eq!(std::fs::read_to_string(format!("{chem_area}/path.txt")).unwrap().trim(), "/bin:/from/the/host");

    // A job that waits for room has its image pulled ahead by the nodes that could run it.
    let ahead = push_image(&env.dir, &registry.address, "ahead", 0).unwrap();
    let fleet = env.submit_as(&chem, &chem_area, &["--array", "0-5", "-o", "/dev/null", "--", "sleep", "30"]);
    env.eventually(20, "the fleet to be full", |e| e.ok(&["squeue", "-h", "-j", &fleet, "-t", "R"]).lines().count() == 6);
    let waiting = env.submit_as(&chem, &chem_area, &["--image", &ahead, "-o", "/dev/null", "--", "true"]);
    env.eventually(20, "both nodes to hold the waiting job's image", |e| e.ok(&["images"]).matches("tidepool-bench/ahead:1").count() == 2);
    assert!(env.ok(&["squeue", "-h", "-j", &waiting]).contains("(Resources)"), "it pulled while the job waited");
    env.ok(&["cancel", &fleet]);
    assert!(env.cmd(common::BIN, &["wait", &waiting]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());

    // A pull that fails fails the task with the registry's words, and never hangs.
    let failed = env.submit_as(&chem, &chem_area, &["--image", &absent, "--", "true"]);
    assert!(!env.cmd(common::BIN, &["wait", &failed]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    let why: serde_json::Value = serde_json::from_str(&env.ok(&["show", &failed, "--json", "--tasks"])).unwrap();
    let message = why["tasks"][0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("404") || message.contains("MANIFEST_UNKNOWN") || message.contains("NAME_UNKNOWN"), "{why}");
}

/// The message of a job's first task, as `show --tasks` gives it.
fn first_task_message(env: &Env, job: &str) -> String {
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap();
    shown["tasks"][0]["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_private_image_is_pulled_with_its_projects_login_and_by_no_other_project() {
    if !containers_here() {
        return;
    }
    let htpasswd = std::process::Command::new("htpasswd").arg("-h").output().is_ok();
    assert!(htpasswd, "the private registry's password file is made with htpasswd: apt-get install apache2-utils");
    let env = Env::new("private-registry");
    let password = "chem-registry-pw-7f3a";
    let private_dir = env.dir.join("private");
    std::fs::create_dir_all(&private_dir).unwrap();
    let registry = start_registry_with(&private_dir, Some(("chem-bot", password))).unwrap();
    let image = push_image_as(&private_dir, &registry.address, "secret-tool", 0, Some(&format!("chem-bot:{password}"))).unwrap();
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let (bio, bio_area) = env.project_with_uid("bio", 6001);
    let as_project = |token: &str, args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = env.cmd(common::BIN, args).env("TIDEPOOL_TOKEN", token).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };

    // Without a login the registry's 401 fails the task, and says what to do.
    let refused = env.submit_as(&chem, &chem_area, &["--image", &image, "--", "true"]);
    assert!(!env.cmd(common::BIN, &["wait", &refused]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    assert!(first_task_message(&env, &refused).contains("tidepool registry login"), "{}", first_task_message(&env, &refused));

    // chem saves its login; its task pulls with it.
    let saved = as_project(&chem, &["registry", "login", &registry.address, "-u", "chem-bot", "--password-stdin"], &format!("{password}\n"));
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let job = env.submit_as(&chem, &chem_area, &["--image", &image, "-o", "whoami.txt", "--", "id", "-u"]);
    assert!(env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success(), "{}", first_task_message(&env, &job));
    assert_eq!(std::fs::read_to_string(format!("{chem_area}/whoami.txt")).unwrap().trim(), "5001");

    // bio, on the same node that now holds the image, is not handed it: the registry is asked
    // again, without chem's login, and says no.
    let borrowed = env.submit_as(&bio, &bio_area, &["--image", &image, "--", "true"]);
    assert!(!env.cmd(common::BIN, &["wait", &borrowed]).env("TIDEPOOL_TOKEN", &bio).status().unwrap().success());
    assert!(first_task_message(&env, &borrowed).contains("asks for a login"), "{}", first_task_message(&env, &borrowed));

    // bio sees no login of chem's, cannot remove it, cannot save one for chem; the admin sees
    // chem's user name; nobody is ever shown the password.
    let listed = as_project(&bio, &["registry", "list"], "");
    assert!(listed.status.success() && !String::from_utf8_lossy(&listed.stdout).contains("chem"), "{listed:?}");
    assert!(!as_project(&bio, &["registry", "list", "--project", "chem"], "").status.success());
    let logout = as_project(&bio, &["registry", "logout", &registry.address], "");
    assert!(!logout.status.success() && String::from_utf8_lossy(&logout.stderr).contains("no login"), "{logout:?}");
    assert!(!as_project(&bio, &["registry", "login", &registry.address, "-u", "x", "--project", "chem", "--password-stdin"], "guess\n").status.success());
    let admin = env.ok(&["registry", "list"]);
    assert!(admin.contains("chem") && admin.contains("chem-bot") && !admin.contains(password), "{admin}");
    // The password is kept in the server's owner-only logins file alone: not in the journal,
    // not in any attempt's directory or the agent's files.
    let mut holders = Vec::new();
    let mut stack = vec![env.dir.join("data")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(password.len()).any(|w| w == password.as_bytes())) {
                holders.push(path);
            }
        }
    }
    assert_eq!(holders, [env.dir.join("data/registries/chem.json")], "where the password is written");
    // Logged out, chem's next pull is refused again.
    assert!(as_project(&chem, &["registry", "logout", &registry.address], "").status.success());
    assert!(!env.ok(&["registry", "list"]).contains("chem-bot"));
}

#[test]
fn bench_containers_prints_ours_beside_bare_tasks() {
    if !containers_here() {
        return;
    }
    let out = common::bench().args(["containers", "--tasks", "1000", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["container_tasks_per_s", "bare_tasks_per_s", "warm_start_overhead_p50_ms", "warm_start_overhead_p99_ms", "cold_pull_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x.is_finite() && x >= 0.0), "{key} in {v}");
    }
    assert!(v["container_tasks_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["cold_pull_blob_gets"], 2, "the 100 MB image's config and layer, pulled once: {v}");
}

#[test]
fn a_jobs_tasks_share_one_container_that_no_other_job_enters_and_a_cancel_ends_them() {
    if !containers_here() {
        return;
    }
    let env = Env::new("shared-containers");
    let registry = start_registry(&env.dir).unwrap();
    let image = push_image(&env.dir, &registry.address, "busybox", 0).unwrap();
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let (bio, bio_area) = env.project_with_uid("bio", 6001);
    // Task 0 marks the container's own /tmp and stays; the others wait for its mark.
    let marker = format!("sleep 304.{}", std::process::id());
    let script = format!(
        "touch /tmp/mark.$SLURM_ARRAY_TASK_ID; if [ $SLURM_ARRAY_TASK_ID = 0 ]; then exec {marker}; fi; \
         i=0; while [ ! -e /tmp/mark.0 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; ls /tmp; ls -l /proc/$$/fd/"
    );
    let job = env.submit_as(&chem, &chem_area, &["--image", &image, "--array", "0-2", "-o", "shared-%a.txt", "--", "sh", "-c", &script]);
    let json = |job: &str| -> serde_json::Value { serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap() };
    env.eventually(60, "tasks 1 and 2 to end", |_| json(&job)["counts"]["succeeded"] == 2);
    for i in [1, 2] {
        let seen = std::fs::read_to_string(format!("{chem_area}/shared-{i}.txt")).unwrap();
        assert!(seen.contains("mark.0") && seen.contains(&format!("mark.{i}")), "task {i} ran in task 0's container: {seen}");
        assert!(seen.contains("/dev/null") && !seen.contains("socket:"), "a task holds nothing of the helper's: {seen}");
    }
    assert_eq!(pids_of(&marker).len(), 1, "task 0 still runs");

    // Another project's job, in the same image on the same node meanwhile, gets a container
    // of its own: none of chem's marks.
    let other = env.submit_as(&bio, &bio_area, &["--image", &image, "-o", "peek.txt", "--", "ls", "/tmp"]);
    assert!(env.cmd(common::BIN, &["wait", &other]).env("TIDEPOOL_TOKEN", &bio).status().unwrap().success());
    let peeked = std::fs::read_to_string(format!("{bio_area}/peek.txt")).unwrap();
    assert!(!peeked.contains("mark"), "{peeked}");

    // A batch script array in an image, as pyxis users write it: the script runs in the
    // job's container as the project.
    let script = format!("#!/bin/sh\n#SBATCH --container-image={image}\n#SBATCH --array=0-3\n#SBATCH -o script-%a.txt\necho task $SLURM_ARRAY_TASK_ID as $(id -u)\n");
    std::fs::write(format!("{chem_area}/array.sh"), script).unwrap();
    let submitted = env.cmd(common::BIN, &["sbatch", "--parsable", "array.sh"]).env("TIDEPOOL_TOKEN", &chem).current_dir(&chem_area).output().unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let array = String::from_utf8(submitted.stdout).unwrap().trim().to_string();
    assert!(env.cmd(common::BIN, &["wait", &array]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    for i in 0..4 {
        assert_eq!(std::fs::read_to_string(format!("{chem_area}/script-{i}.txt")).unwrap(), format!("task {i} as 5001\n"));
    }

    // A cancel reaches the task inside, and only its job's.
    env.ok(&["cancel", &job]);
    env.eventually(20, "the cancelled task to end", |_| json(&job)["counts"]["cancelled"] == 1);
    assert!(pids_of(&marker).is_empty());
    assert_eq!(json(&job)["counts"]["succeeded"], 2);

    // A launcher killed outright takes its shared containers with it: the task inside ends and
    // runs again as a new attempt in a new container.
    let marker = format!("sleep 305.{}", std::process::id());
    let job = env.submit_as(&chem, &chem_area, &["--image", &image, "-o", "/dev/null", "--", "sh", "-c", &format!("exec {marker}")]);
    env.eventually(20, "the task to run", |_| pids_of(&marker).len() == 1);
    let first = pids_of(&marker);
    let launchers = tidepool_agent::rundir::live_launchers(&env.dir.join("data/agent/run"));
    assert_eq!(launchers.len(), 1, "{launchers:?}");
    let _ = std::process::Command::new("kill").args(["-KILL", &launchers[0].to_string()]).status();
    env.eventually(20, "the task to run again", |_| json(&job)["tasks"][0]["attempt"] == 2 && pids_of(&marker).len() == 1);
    assert!(!pids_of(&marker).iter().any(|p| first.contains(p)), "the first attempt still runs");
    // What the killed launcher staged and made is cleared by the next one.
    let dead = launchers[0].to_string();
    for (dir, named_by_dead) in [("staged-binds", format!("{dead}.")), ("shared-bundles", format!(".{dead}"))] {
        let left: Vec<String> = std::fs::read_dir(env.dir.join("data/agent/run").join(dir)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!left.iter().any(|n| n.starts_with(&named_by_dead) || n.ends_with(&named_by_dead)), "{dir}: {left:?}");
        assert!(!left.is_empty(), "{dir} holds the running attempt's");
    }
    env.ok(&["cancel", &job]);
    env.eventually(20, "the cancelled task to end", |_| pids_of(&marker).is_empty());
}
