//! `tidepool-bench containers`: trivial tasks in an OCI image beside the same tasks as bare
//! processes, through one Tidepool in the same run: tasks per second, the start overhead an
//! image adds to each task, and a cold pull of a 100 MB image; `podman run` per task beside
//! them where podman runs. The image is built here (busybox-static, umoci) and served by
//! Debian's docker-registry on loopback; the end-to-end test uses the same helpers.

use crate::batch::{timed, Tidepool};
use crate::line;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The most tasks of each kind run: `podman run` per task makes more a long wait.
pub const MAX_TASKS: u32 = 2000;

/// The tools an image run here needs.
pub const TOOLS: [&str; 5] = ["docker-registry", "umoci", "skopeo", "runc", "busybox"];

/// The tools of [`TOOLS`] this machine lacks.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS.iter().copied().filter(|t| which(t).is_none()).collect()
}

fn which(tool: &str) -> Option<String> {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A registry on a free loopback port, its requests logged to `registry.log` in its
/// directory; stopped when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Its request log.
    pub log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's docker-registry under `dir`.
pub fn start_registry(dir: &Path) -> Result<Registry, String> {
    start_registry_with(dir, None)
}

/// Starts Debian's docker-registry under `dir`, asking for `login` (user, password) by HTTP
/// Basic authentication when one is given (its htpasswd made with Apache's `htpasswd -B`).
pub fn start_registry_with(dir: &Path, login: Option<(&str, &str)>) -> Result<Registry, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    let mut text = format!("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n", dir.join("blobs").display());
    if let Some((user, password)) = login {
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().map_err(|e| format!("htpasswd (apache2-utils): {e}"))?;
        if !out.status.success() {
            return Err(format!("htpasswd: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        std::fs::write(&htpasswd, &out.stdout).map_err(|e| e.to_string())?;
        text.push_str(&format!("auth:\n  htpasswd:\n    realm: tidepool-test\n    path: {}\n", htpasswd.display()));
    }
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let log = dir.join("registry.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("docker-registry").arg("serve").arg(&config).stdout(out).stderr(err).spawn().map_err(|e| format!("docker-registry: {e}"))?;
    let registry = Registry { child, address, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&registry.address).is_err() {
        if Instant::now() > deadline {
            return Err("docker-registry did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(registry)
}

/// Builds an image of busybox (and, when `ballast_mb` > 0, a file of that many MB of random
/// bytes, which no compression shrinks), pushes it as `tidepool-bench/NAME:1`; its reference.
pub fn push_image(dir: &Path, registry: &str, name: &str, ballast_mb: usize) -> Result<String, String> {
    push_image_as(dir, registry, name, ballast_mb, None)
}

/// [`push_image`] to a registry that asks for `login` (`USER:PASSWORD`).
pub fn push_image_as(dir: &Path, registry: &str, name: &str, ballast_mb: usize, login: Option<&str>) -> Result<String, String> {
    let layout = dir.join(format!("layout-{name}"));
    let bundle = dir.join(format!("bundle-{name}"));
    let image = format!("{}:1", layout.display());
    run_tool("umoci", &["init", "--layout", &layout.display().to_string()])?;
    run_tool("umoci", &["new", "--image", &image])?;
    run_tool("umoci", &["unpack", "--image", &image, &bundle.display().to_string()])?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    let busybox = which("busybox").ok_or("busybox is not installed")?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "id", "cat", "df", "echo", "ls", "sleep", "touch", "tail", "test", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    if ballast_mb > 0 {
        let mut bytes = vec![0u8; ballast_mb << 20];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(bundle.join("rootfs/ballast"), bytes).map_err(|e| e.to_string())?;
    }
    run_tool("umoci", &["repack", "--image", &image, &bundle.display().to_string()])?;
    run_tool("umoci", &["config", "--image", &image, "--config.env", "PATH=/bin"])?;
    let reference = format!("{registry}/tidepool-bench/{name}:1");
    let source = format!("oci:{image}");
    let destination = format!("docker://{reference}");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if let Some(login) = login {
        args.extend(["--dest-creds", login]);
    }
    args.extend([source.as_str(), destination.as_str()]);
    run_tool("skopeo", &args)?;
    Ok(reference)
}

/// Each task's run time (ms) of a job, as its node measured it.
fn task_run_ms(tp: &Tidepool, job: &str) -> Result<Vec<f64>, String> {
    let (_, text) = timed(&mut tp.command(&["show", job, "--tasks", "--json"]))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
    Ok(tasks
        .iter()
        .filter_map(|t| Some((t["ended_ms"].as_u64()? - t["started_ms"].as_u64()?) as f64))
        .collect())
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// Submits `n` tasks of `args`, waits for them all; tasks per second from submit to the last end.
async fn drain(tp: &Tidepool, client: &reqwest::Client, token: &str, n: u32, args: &[&str]) -> Result<(String, f64), String> {
    let started = Instant::now();
    let range = format!("0-{}", n - 1);
    let (_, out) = timed(&mut tp.as_submitter(&[&["submit", "--array", &range, "-o", "/dev/null", "-e", "/dev/null"], args].concat()))?;
    let job = out.trim().to_string();
    while tp.ended(client, token, &job).await? < u64::from(n) {
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("job {job} did not end within 30 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((job, f64::from(n) / started.elapsed().as_secs_f64()))
}

/// `podman run` of `image` per task, `n` in a row; tasks per second, or why podman does not run.
fn podman(image: &str, n: u32) -> Result<f64, String> {
    which("podman").ok_or("not installed")?;
    let pull = Command::new("podman").args(["pull", "--tls-verify=false", image]).output().map_err(|e| e.to_string())?;
    if !pull.status.success() {
        return Err(first_line(&pull.stderr));
    }
    let started = Instant::now();
    for _ in 0..n {
        let out = Command::new("podman").args(["run", "--rm", "--network", "host", image, "true"]).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(first_line(&out.stderr));
        }
    }
    Ok(f64::from(n) / started.elapsed().as_secs_f64())
}

/// The runtime the node's launcher picks (crun or runc).
fn runtime_name() -> &'static str {
    tidepool_agent::images::runtime().map_or("no runtime", |r| r.name)
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim().chars().take(200).collect()
}

/// Runs the benchmark and prints a table or one JSON object.
pub async fn run(json_out: bool, tasks: u32) -> Result<u8, String> {
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err("containers: runc runs tasks' bundles as root: run this as root".into());
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        return Err(format!("containers: needs {missing:?} (apt-get install runc umoci skopeo docker-registry busybox-static)"));
    }
    let dir = std::env::temp_dir().join(format!("tidepool-bench-containers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let registry = start_registry(&dir)?;
    let small = push_image(&dir, &registry.address, "busybox", 0)?;
    let big = push_image(&dir, &registry.address, "ballast", 100)?;
    let mut tp = Tidepool::start()?;
    tp.submit_as_project(5001)?;
    let token = std::fs::read_to_string(tp.data_dir().join("admin.token")).map_err(|e| e.to_string())?;
    let token = token.trim();
    let client = reqwest::Client::new();
    let mut report: BTreeMap<String, Value> = BTreeMap::new();

    // The small image is pulled once before anything is timed: what follows is warm.
    drain(&tp, &client, token, 1, &["--image", &small, "--", "true"]).await?;
    let (bare_job, bare_rate) = drain(&tp, &client, token, tasks, &["--", "true"]).await?;
    let (image_job, image_rate) = drain(&tp, &client, token, tasks, &["--image", &small, "--", "true"]).await?;
    let mut bare_ms = task_run_ms(&tp, &bare_job)?;
    let mut image_ms = task_run_ms(&tp, &image_job)?;
    let bare_p50 = percentile(&mut bare_ms, 0.5);
    report.insert("tasks".into(), json!(tasks));
    report.insert("runtime".into(), json!(runtime_name()));
    report.insert("bare_tasks_per_s".into(), json!(bare_rate));
    report.insert("container_tasks_per_s".into(), json!(image_rate));
    report.insert("container_vs_bare".into(), json!(image_rate / bare_rate.max(1e-9)));
    // A task in an image that ran no slower than a bare one had no overhead.
    report.insert("warm_start_overhead_p50_ms".into(), json!((percentile(&mut image_ms, 0.5) - bare_p50).max(0.0)));
    report.insert("warm_start_overhead_p99_ms".into(), json!((percentile(&mut image_ms, 0.99) - bare_p50).max(0.0)));

    // A cold pull: one task of a 100 MB image, against one of the warm small image.
    let warm_started = Instant::now();
    drain(&tp, &client, token, 1, &["--image", &small, "--", "true"]).await?;
    let warm_s = warm_started.elapsed().as_secs_f64();
    let cold_started = Instant::now();
    drain(&tp, &client, token, 1, &["--image", &big, "--", "true"]).await?;
    report.insert("cold_pull_s".into(), json!((cold_started.elapsed().as_secs_f64() - warm_s).max(0.0)));
    report.insert("cold_pull_mb".into(), json!(100));
    let log = std::fs::read_to_string(&registry.log).unwrap_or_default();
    let ballast_pulls = log.lines().filter(|l| l.contains("GET /v2/tidepool-bench/ballast/blobs/") && l.contains("\" 200 ")).count();
    report.insert("cold_pull_blob_gets".into(), json!(ballast_pulls));

    let mut notes = Vec::new();
    match podman(&small, 20.min(tasks)) {
        Ok(rate) => {
            report.insert("podman_tasks_per_s".into(), json!(rate));
        }
        Err(e) => notes.push(format!("podman: not measured: {e}")),
    }
    drop(tp);
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);

    if json_out {
        line(&serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    let get = |k: &str| report.get(k).and_then(Value::as_f64);
    let cell = |k: &str| get(k).map_or("-".to_string(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") });
    line(&format!("{tasks} tasks of `true`, one node, tasks as uid 5001; {} makes one container for the job, its tasks start inside", runtime_name()));
    line(&format!("{:<44} {:>12} {:>12} {:>12}", "", "in an image", "bare", "podman run"));
    line(&format!("{:<44} {:>12} {:>12} {:>12}", "tasks finished per second", cell("container_tasks_per_s"), cell("bare_tasks_per_s"), cell("podman_tasks_per_s")));
    line(&format!("{:<44} {:>12}", "warm start overhead per task, p50 (ms)", cell("warm_start_overhead_p50_ms")));
    line(&format!("{:<44} {:>12}", "warm start overhead per task, p99 (ms)", cell("warm_start_overhead_p99_ms")));
    line(&format!("{:<44} {:>12}", "cold pull of a 100 MB image (s)", cell("cold_pull_s")));
    if let Some(r) = get("container_vs_bare") {
        line(&format!("tasks per second in an image: {r:.2} of bare (goal 0.5)"));
    }
    if let Some(p50) = get("warm_start_overhead_p50_ms") {
        line(&format!("warm start overhead p50: {p50:.1} ms (goal under 20 ms)"));
    }
    for n in notes {
        line(&n);
    }
    Ok(0)
}
