//! Tasks in an OCI image: a local registry (Debian's docker-registry) on loopback, a small
//! image built here from busybox-static with umoci and pushed with skopeo, and a 1,000-task
//! array run in it with runc across two agents. `.ci/run` installs the tools and sets
//! TIDEPOOL_TEST_CONTAINERS=1; elsewhere the test says it is skipped.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: [&str; 5] = ["docker-registry", "umoci", "skopeo", "runc", "busybox"];

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A registry on a free loopback port, its requests logged to `log`; stopped when dropped.
struct Registry {
    child: Child,
    address: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &std::path::Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n", dir.join("blobs").display()),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new("docker-registry").arg("serve").arg(&config).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let registry = Registry { child, address };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&registry.address).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}

/// Builds an image of busybox alone and pushes it as `NAME:1`; its reference.
fn push_busybox(dir: &std::path::Path, registry: &str) -> String {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:1", layout.display());
    run("umoci", &["init", "--layout", &layout.display().to_string()]);
    run("umoci", &["new", "--image", &image]);
    run("umoci", &["unpack", "--image", &image, &bundle.display().to_string()]);
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox = Command::new("sh").args(["-c", "command -v busybox"]).output().unwrap();
    std::fs::copy(String::from_utf8(busybox.stdout).unwrap().trim(), bin.join("busybox")).unwrap();
    for applet in ["sh", "id", "cat", "df", "echo", "ls", "sleep", "touch", "tail", "test"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    run("umoci", &["repack", "--image", &image, &bundle.display().to_string()]);
    run("umoci", &["config", "--image", &image, "--config.env", "PATH=/bin"]);
    let reference = format!("{registry}/tidepool-test/busybox:1");
    run("skopeo", &["copy", "--dest-tls-verify=false", &format!("oci:{image}"), &format!("docker://{reference}")]);
    reference
}

#[test]
fn a_thousand_tasks_run_in_an_image_pulled_once_per_node_as_their_project() {
    let wanted = std::env::var("TIDEPOOL_TEST_CONTAINERS").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !have(t)).collect();
    if !wanted && (!missing.is_empty() || !common::is_root()) {
        eprintln!("skipped: needs root and {missing:?} (set TIDEPOOL_TEST_CONTAINERS=1 to make this a failure)");
        return;
    }
    assert!(missing.is_empty() && common::is_root(), "TIDEPOOL_TEST_CONTAINERS=1 but missing {missing:?} or not root");
    let mut env = Env::new("containers");
    let registry = start_registry(&env.dir);
    let image = push_busybox(&env.dir, &registry.address);
    env.add_agent("second", &["--cpus", "2"]);
    let (chem, chem_area) = env.project_with_uid("chem", 5001);
    let (bio, bio_area) = env.project_with_uid("bio", 6001);
    std::fs::write(format!("{chem_area}/chem-only.txt"), "CHEM").unwrap();
    std::os::unix::fs::chown(format!("{chem_area}/chem-only.txt"), Some(5001), Some(5001)).unwrap();

    let script = "id -u; df -k /dev/shm | tail -1; cat chem-only.txt";
    let job = env.submit_as(&chem, &chem_area, &["--image", &image, "--shm-size", "256M", "--array", "0-999", "-o", "out-%a.txt", "--", "sh", "-c", script]);
    let waited = env.cmd(common::BIN, &["wait", &job]).env("TIDEPOOL_TOKEN", &chem).output().unwrap();
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", &job, "--json", "--tasks"])).unwrap();
    assert!(waited.status.success(), "{}\n{}", String::from_utf8_lossy(&waited.stderr), serde_json::to_string(&shown["tasks"][0]).unwrap());
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
    let log = std::fs::read_to_string(env.dir.join("registry.log")).unwrap();
    let layer_gets = log.lines().filter(|l| l.contains("GET /v2/tidepool-test/busybox/blobs/") && l.contains("\" 200 ") && !l.contains("HEAD")).count();
    assert_eq!(layer_gets, 2 * 2, "a config and a layer per node, once each:\n{}", log.lines().filter(|l| l.contains("GET /v2/")).collect::<Vec<_>>().join("\n"));

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

    // A pull that fails fails the task with the registry's words, and never hangs.
    let absent = format!("{}/tidepool-test/absent:1", registry.address);
    let failed = env.submit_as(&chem, &chem_area, &["--image", &absent, "--", "true"]);
    assert!(!env.cmd(common::BIN, &["wait", &failed]).env("TIDEPOOL_TOKEN", &chem).status().unwrap().success());
    let why: serde_json::Value = serde_json::from_str(&env.ok(&["show", &failed, "--json", "--tasks"])).unwrap();
    let message = why["tasks"][0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("404") || message.contains("MANIFEST_UNKNOWN") || message.contains("NAME_UNKNOWN"), "{why}");
}
